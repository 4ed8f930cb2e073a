"""What a database failure means for the caller: worth retrying at once (a lock conflict), or a
sign that the server cannot take writes now (failover, restart, lost connection; decisions 0050
and 0051). Shared by the unit of work (``db``) and the one-round-trip writes
(``write_combiner``)."""

from __future__ import annotations

from psycopg import errors
from sqlalchemy.exc import DBAPIError, OperationalError

_RETRYABLE_PG_STATES = {"40001", "40P01"}  # serialization_failure, deadlock_detected


def is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError):
        orig = exc.orig
        sqlstate = getattr(orig, "sqlstate", None)
        if sqlstate in _RETRYABLE_PG_STATES:
            return True
        if isinstance(exc, OperationalError) and "database is locked" in str(orig):
            return True
    return False


# Failures that mean the server cannot take our writes now (decisions 0050, 0051): it shut down
# or is starting (57P01-57P03), it is a standby (25006: a server demoted under a connection that
# was made to a primary), or the connection broke (class 08). An error without a SQLSTATE is
# the client's own report of a connection that could not be made or was lost mid-statement (a
# pool that gave no connection in time raises one too).
_SERVER_LOST_PG_STATES = {"57P01", "57P02", "57P03", "25006"}
_TOO_MANY_CONNECTIONS = "53300"


def _driver_error(exc: BaseException) -> BaseException:
    return exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc


def server_lost(exc: BaseException) -> bool:
    """The connection's server is gone, restarting or read-only: connections to it are useless."""
    orig = _driver_error(exc)
    if not isinstance(orig, errors.Error):
        return False
    state = orig.sqlstate
    if state is None:
        # libpq's own reports carry no SQLSTATE; a lost connection's comes as a bare
        # DatabaseError from a failed result ("server closed the connection unexpectedly").
        return isinstance(orig, errors.OperationalError) or type(orig) is errors.DatabaseError
    return state in _SERVER_LOST_PG_STATES or state.startswith("08")


def classify_database_failure(exc: BaseException) -> str | None:
    """``database_unavailable`` when the database cannot take the request now (failover,
    restart, lost connection, no connection to be had), ``database_busy`` when lock conflicts
    outlasted their retries, None for any other error. Either code is worth a retry with the
    same idempotency key (decision 0050)."""
    if server_lost(exc):
        return "database_unavailable"
    state = getattr(_driver_error(exc), "sqlstate", None)
    if state == _TOO_MANY_CONNECTIONS:
        return "database_unavailable"
    if state in _RETRYABLE_PG_STATES or is_retryable(exc):
        return "database_busy"
    return None

"""Test fixtures: a migrated database per test process (SQLite file or PostgreSQL database),
a manual clock, and the ledger invariants verified once more when the session ends.

``CHRONOTE_DATABASE_URL`` picks the database, as it does for the service. Tests marked
``postgres`` need PostgreSQL; with ``CHRONOTE_REQUIRE_POSTGRES=1`` their skipping is an error.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from chronote_billing.access.service import Principal
from chronote_billing.accounts.service import AccountService
from chronote_billing.config import normalize_database_url
from chronote_billing.core import migrate
from chronote_billing.core.clock import ManualClock
from chronote_billing.core.db import Database, recreate_postgres_database, set_database
from chronote_billing.ledger.service import LedgerService
from chronote_billing.ledger.verify import verify
from tests.factories import snowflake

BASE_URL = normalize_database_url(os.environ.get("CHRONOTE_DATABASE_URL", ""))
IS_POSTGRES = BASE_URL.startswith("postgresql")
REQUIRE_POSTGRES = os.environ.get("CHRONOTE_REQUIRE_POSTGRES") == "1"


# Two checkouts testing against one PostgreSQL server at once must not drop each other's databases.
CHECKOUT_TAG = hashlib.sha1(str(Path(__file__).resolve().parent).encode()).hexdigest()[:6]


# A principal allowed everywhere, for tests of rules other than access (which have their own).
OPERATOR = Principal(kind="service", scopes=frozenset({"operator"}))


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


def create_database(suffix: str) -> str:
    """A new empty database for this test process; returns its URL."""
    if IS_POSTGRES:
        return recreate_postgres_database(
            BASE_URL, f"chronote_test_{CHECKOUT_TAG}_{_worker()}_{suffix}".lower()
        )
    directory = Path(tempfile.mkdtemp(prefix=f"chronote-{_worker()}-"))
    return f"sqlite:///{directory / (suffix + '.db')}"


def fresh_database(suffix: str) -> Database:
    db = Database(create_database(suffix))
    migrate.upgrade(db.engine)
    return db


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if IS_POSTGRES:
        return
    if REQUIRE_POSTGRES:
        raise pytest.UsageError("CHRONOTE_REQUIRE_POSTGRES=1 but CHRONOTE_DATABASE_URL is not PostgreSQL")
    skip = pytest.mark.skip(reason="needs PostgreSQL: set CHRONOTE_DATABASE_URL=postgresql://...")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def db() -> Iterator[Database]:
    """The shared test database. Tests create their own accounts, so they never collide; the
    ledger invariants are verified over everything they left behind when the session ends."""
    database = fresh_database("main")
    set_database(database)
    yield database
    with database.session(readonly=True) as session:
        violations = verify(session, first_only=False)
    database.dispose()
    set_database(None)
    assert not violations, "ledger invariants violated after the test session:\n" + "\n".join(
        map(str, violations)
    )


@pytest.fixture
def scratch_db() -> Iterator[Database]:
    """A database of its own, for tests that corrupt data on purpose or count global rows."""
    database = fresh_database("scratch_" + secrets.token_hex(3))
    yield database
    database.dispose()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def ledger(clock: ManualClock) -> LedgerService:
    return LedgerService(clock)


@pytest.fixture
def accounts(clock: ManualClock, ledger: LedgerService) -> AccountService:
    return AccountService(clock, ledger)


@pytest.fixture
def make_account(db: Database, accounts: AccountService):  # type: ignore[no-untyped-def]
    def _make(kind: str = "personal", owner_ref: str | None = None, name: str | None = None) -> str:
        ref = owner_ref or (snowflake() if kind != "organization" else "org_" + secrets.token_hex(6))
        return db.write(lambda s: accounts.get_or_create(s, kind, ref, name).id)

    return _make


@pytest.fixture(scope="session")
def _stripe_local_server() -> Iterator[object]:
    """One local Stripe stand-in per test process; `stripe_local` resets it for each test."""
    from chronote_stripe_local.server import start_in_thread

    stand_in = start_in_thread(
        port=0, webhook_secret="whsec_test_stripe_local", backoff=0.05, max_backoff=0.5
    )
    yield stand_in
    stand_in.stop()


@pytest.fixture
def stripe_local(_stripe_local_server):  # type: ignore[no-untyped-def]
    """The local Stripe stand-in, empty, reached through the real `stripe` SDK.

    - ``stripe_local.url``: its base URL; ``stripe_local.client``: a ``stripe.StripeClient``
      configured with ``base_addresses`` pointing at it (any ``sk_test_`` key works);
      ``stripe_local.webhook_secret``: the endpoint secret its webhooks are signed with.
    - Webhooks: by default every event is verified with ``stripe.Webhook.construct_event`` and
      collected in ``stripe_local.received`` (``received_types()`` lists their types), before the
      API call that caused it returns. ``stripe_local.send_webhooks_to(target)`` sends them to a
      URL (background thread with retries; ``wait_for_webhooks()`` waits for first attempts) or
      to a callable ``(payload: bytes, headers: dict) -> status``, e.g. an in-process app:
      ``stripe_local.send_webhooks_to(lambda body, headers: api.post("/webhooks/stripe",
      content=body, headers=headers).status_code)``. ``stripe_local.events(type)`` lists every
      event the stand-in created.
    - People and time: ``pay_checkout(session, card=...)`` pays on the hosted page (cards in
      ``chronote_stripe_local.testing``: ``CARD_OK``, ``CARD_DECLINES_RENEWALS``,
      ``CARD_DECLINED``); ``portal(portal_session, action, subscription, price=...)`` uses the
      billing portal page; ``advance_clock(clock_id, seconds=...)`` advances a Stripe test clock
      (create the customer with ``test_clock``); ``advance_time(seconds)`` moves time for objects
      not on a test clock (stand-in only); ``dispute(charge_id)`` opens a dispute (stand-in only).

    State is per test: the stand-in is shared by the tests of a process and emptied before each.
    """
    from chronote_stripe_local.testing import StripeLocalHarness

    harness = StripeLocalHarness(_stripe_local_server)
    yield harness
    harness.close()
    _stripe_local_server.set_webhook_target(None)

"""The recording path as writes of their own (decision 0031): what the HTTP API calls.

Each operation is a transaction of its own. On PostgreSQL the common case is the facts in one
statement (``usage_facts``), the pure decision in Python, and the write in one statement
(``usage_try_*``, migration 0008), committed by the server; a write of one payer shares its
commit with concurrent writes of the same payer (decision 0028). Whatever a function declines
(returns NULL for, before writing anything) is answered by the Python path in a transaction, which
holds every error and every rare rule. SQLite always takes the Python path.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from chronote_billing.access.service import Principal
from chronote_billing.catalog.service import Catalog
from chronote_billing.core import idempotency
from chronote_billing.core.clock import month_bounds, month_key
from chronote_billing.core.db import Database
from chronote_billing.core.ids import new_id
from chronote_billing.core.write_combiner import ServerStatement, text_argument

from . import facts, records
from .attribution import MONTHLY_QUOTAS, Decline, Snapshot, decide, payer_chain
from .errors import RecordingInProgress, UsageDeclined, payer_attempts
from .events import EventService, event_where
from .recordings import RecordingService, write_or_record_decline
from .requests import check_event, check_minutes, check_request, check_seconds, event_ask, recording_ask
from .schemas import EventRequest, RecordingView, UsageRequest

# Argument names and SQL types of the functions, in order (migration 0008).
_ARGS: dict[str, tuple[tuple[str, str], ...]] = {
    "usage_facts": (
        ("context", "text"),
        ("user", "text"),
        ("guild", "text"),
        ("meeting", "text"),
        ("event_type", "text"),
        ("quota_cap", "bigint"),
        ("now", "timestamptz"),
        ("period", "text"),
        ("month_start", "timestamptz"),
        ("scope_prefix", "text"),
        ("key", "text"),
    ),
    "usage_try_start": (
        ("requester", "text"),
        ("scope", "text"),
        ("key", "text"),
        ("hash", "text"),
        ("meeting_id", "text"),
        ("now", "timestamptz"),
        ("payer", "text"),
        ("amount", "bigint"),
        ("expires_at", "timestamptz"),
        ("cap_id", "text"),
        ("cap_limit", "bigint"),
        ("cap_period", "text"),
        ("hold_scope", "text"),
        ("hold_key", "text"),
        ("hold_hash", "text"),
        ("hold_result", "jsonb"),
        ("hold_id", "text"),
        ("hold_reason", "text"),
        ("hold_metadata", "jsonb"),
        ("transfer_reason", "text"),
        ("record", "jsonb"),
        ("attribution", "jsonb"),
        ("result", "jsonb"),
    ),
    "usage_try_event": (
        ("requester", "text"),
        ("scope", "text"),
        ("key", "text"),
        ("hash", "text"),
        ("now", "timestamptz"),
        ("quota_event_type", "text"),
        ("quota_limit", "bigint"),
        ("month_start", "timestamptz"),
        ("payer", "text"),
        ("amount", "bigint"),
        ("cap_id", "text"),
        ("cap_limit", "bigint"),
        ("cap_period", "text"),
        ("debit_scope", "text"),
        ("debit_key", "text"),
        ("debit_hash", "text"),
        ("debit_result", "jsonb"),
        ("debit_id", "text"),
        ("debit_reason", "text"),
        ("debit_metadata", "jsonb"),
        ("transfer_reason", "text"),
        ("record", "jsonb"),
        ("result", "jsonb"),
    ),
    "usage_try_extend": (
        ("recording", "text"),
        ("user", "text"),
        ("guilds", "text[]"),
        ("auto", "boolean"),
        ("scope", "text"),
        ("key", "text"),
        ("hash", "text"),
        ("minutes", "integer"),
        ("allow_partial", "boolean"),
        ("unit", "bigint"),
        ("now", "timestamptz"),
        ("expires_at", "timestamptz"),
        ("expires_text", "text"),
        ("hold_key", "text"),
    ),
    "usage_try_finish": (
        ("recording", "text"),
        ("user", "text"),
        ("guilds", "text[]"),
        ("auto", "boolean"),
        ("scope", "text"),
        ("key", "text"),
        ("hash", "text"),
        ("seconds", "jsonb"),
        ("wall", "integer"),
        ("cost", "bigint"),
        ("minutes", "integer"),
        ("now", "timestamptz"),
        ("capture_key", "text"),
    ),
}
STATEMENTS = {
    name: ServerStatement(
        f"chronote_{name}",
        f"SELECT {name}({', '.join(f'${n}::{sql_type}' for n, (_, sql_type) in enumerate(args, 1))})",
    )
    for name, args in _ARGS.items()
}


def call(db: Database, function: str, args: dict[str, Any], group: str | None = None) -> Any:
    """One function call as a statement of its own; its JSON result, or None when it declined."""
    values = [text_argument(_jsonable(args[name]), sql_type) for name, sql_type in _ARGS[function]]
    done = db.run_autocommit(STATEMENTS[function], values, group=group)
    return None if done is None else json.loads(done)


def _jsonable(value: Any) -> Any:
    """Rows passed as JSON: their times as ISO text, which PostgreSQL reads back as timestamptz."""
    if isinstance(value, dict):
        return json.loads(json.dumps(value, default=lambda v: v.isoformat()))
    return value


def gather(db: Database, where: facts.Where, now: Any, catalog: Catalog) -> facts.Gathered:
    """The facts of a request in one statement (the twin of :func:`facts.gather`)."""
    raw = call(
        db,
        "usage_facts",
        {
            "context": where.context,
            "user": where.user_id,
            "guild": where.guild_id,
            "meeting": where.meeting_id,
            "event_type": where.event_type,
            "quota_cap": where.quota_cap,
            "now": now,
            "period": month_key(now),
            "month_start": month_bounds(now)[0],
            "scope_prefix": where.scope_prefix,
            "key": where.key,
        },
    )
    return facts.gathered_of(raw, where, now, catalog)


def _settling_elsewhere(snapshot: Snapshot) -> bool:
    """Something fell due on a wallet of the chain: the Python path settles it first (0015)."""
    return snapshot.requester.wallet.due or any(a.org_wallet.due for a in snapshot.authorizations)


class CommittedWrites:
    """The usage writes the API makes, each a transaction of its own."""

    def __init__(self, db: Database, recordings: RecordingService, events: EventService) -> None:
        self.db = db
        self.recordings = recordings
        self.events = events

    @property
    def fast(self) -> bool:
        return self.db.dialect == "postgresql" and self.recordings.ledger.db_functions

    def _or_python(self, fast: Any, python: Any) -> Any:
        r = self.recordings
        if self.fast:
            try:
                done = fast()
            except UsageDeclined as exc:
                declined = exc
                if declined.notify:
                    self.db.write(lambda s: r.record_decline(s, declined))
                raise
            if done is not None:
                return done
        return write_or_record_decline(self.db, r, python)

    # ------------------------------------------------------------------ start

    def start(self, request: UsageRequest, idempotency_key: str) -> RecordingView:
        result: RecordingView = self._or_python(
            lambda: self._start(request, idempotency_key),
            lambda s: self.recordings.start(s, request, idempotency_key),
        )
        return result

    def _start(self, request: UsageRequest, idempotency_key: str) -> RecordingView | None:
        r = self.recordings
        now = r.clock.now()
        key = idempotency.check_key(idempotency_key)
        req = check_request(request)
        params = req.model_dump()
        where = facts.Where(req.context, req.user_id, req.guild_id, req.meeting_id, None, "usage.start", key)
        gathered = gather(self.db, where, now, r.catalog)
        if gathered.requester_id is None:
            return None  # first use: the Python path creates the account
        scope = idempotency.scope_of("usage.start", gathered.requester_id)
        prior = idempotency.replay(gathered.prior, scope, key, params)
        if prior is not None:
            return RecordingView.model_validate(prior)
        if gathered.open_recording is not None:
            raise RecordingInProgress(
                f"Meeting {req.meeting_id} already has a recording in progress.", meeting_id=req.meeting_id
            )
        if _settling_elsewhere(gathered.snapshot):
            return None
        ask = recording_ask(req, r.catalog.rate_card)
        verdict = decide(ask, payer_chain(ask, gathered.snapshot), r.unit)
        if isinstance(verdict, Decline):
            raise r.declined(verdict, req, f"{scope}:{key}", "recording", ask.minutes)
        payer_id = verdict.payer.account.id
        if payer_id is None or verdict.payer.account.wallet.allowance_due:
            return None  # the allowance is issued first, by the Python path
        if any(a.code == "cap_reached" for a in verdict.attempts):
            return None  # its cap-reached notice is written with the start, by the Python path
        record_id = new_id("rec")
        hold = r.ledger.plan_place_hold(**r.hold_request(req, verdict, record_id, payer_id, now))
        values = r.start_values(req, ask, verdict, record_id, hold.args["hold_id"], now)
        view = records.view_from(values, hold.args["expires_at"], payer_attempts(verdict.attempts))
        done = call(
            self.db,
            "usage_try_start",
            {
                "requester": gathered.requester_id,
                "scope": scope,
                "key": key,
                "hash": idempotency.request_fingerprint(params),
                "meeting_id": req.meeting_id,
                "now": now,
                "payer": payer_id,
                "amount": hold.args["amount"],
                "expires_at": hold.args["expires_at"],
                "cap_id": hold.args["cap_id"],
                "cap_limit": hold.args["cap_limit"],
                "cap_period": hold.args["cap_period"],
                "hold_scope": hold.args["scope"],
                "hold_key": hold.args["key"],
                "hold_hash": hold.args["hash"],
                "hold_result": hold.args["result"],
                "hold_id": hold.args["hold_id"],
                "hold_reason": hold.args["reason"],
                "hold_metadata": hold.args["metadata"],
                "transfer_reason": hold.args["transfer_reason"],
                "record": values,
                "attribution": r.attribution_values(req, verdict, record_id, now) if req.meeting_id else None,
                "result": view,
            },
            group=payer_id,
        )
        return None if done is None else RecordingView.model_validate(done["view"])

    # ------------------------------------------------------------------ metered events

    def charge(self, request: EventRequest) -> RecordingView:
        result: RecordingView = self._or_python(
            lambda: self._charge(request), lambda s: self.events.charge(s, request)
        )
        return result

    def _charge(self, request: EventRequest) -> RecordingView | None:
        r, e = self.recordings, self.events
        now = r.clock.now()
        rate = r.catalog.rate_card
        req = check_event(request, rate)
        params = req.model_dump()
        where = event_where(req, r.catalog, "usage.event")
        gathered = gather(self.db, where, now, r.catalog)
        if gathered.requester_id is None or _settling_elsewhere(gathered.snapshot):
            return None
        scope = idempotency.scope_of("usage.event", gathered.requester_id)
        prior = idempotency.replay(gathered.prior, scope, req.event_id, params)
        if prior is not None:
            return RecordingView.model_validate(prior)
        ask = event_ask(req, rate)
        verdict = decide(ask, payer_chain(ask, gathered.snapshot), r.unit)
        if isinstance(verdict, Decline):
            raise r.declined(verdict, req, f"{scope}:{req.event_id}", req.event_type, None)
        payer = verdict.payer
        if payer.account.id is None or payer.account.wallet.allowance_due:
            return None
        if any(a.code == "cap_reached" for a in verdict.attempts):
            return None
        limit = payer.features.get(MONTHLY_QUOTAS.get(req.event_type, ""))
        quota = limit if isinstance(limit, int) and payer.authorization is None else None
        record_id = new_id("use")
        debit = r.ledger.plan_debit(**e.debit_request(req, verdict, record_id, payer.account.id))
        values = e.event_values(req, verdict, record_id, debit.args["debit_id"], now)
        view = records.view_from(values, None, payer_attempts(verdict.attempts))
        done = call(
            self.db,
            "usage_try_event",
            {
                "requester": gathered.requester_id,
                "scope": scope,
                "key": req.event_id,
                "hash": idempotency.request_fingerprint(params),
                "now": now,
                "quota_event_type": req.event_type,
                "quota_limit": quota,
                "month_start": month_bounds(now)[0],
                "payer": payer.account.id,
                "amount": debit.args["amount"],
                "cap_id": debit.args["cap_id"],
                "cap_limit": debit.args["cap_limit"],
                "cap_period": debit.args["cap_period"],
                "debit_scope": debit.args["scope"],
                "debit_key": debit.args["key"],
                "debit_hash": debit.args["hash"],
                "debit_result": debit.args["result"],
                "debit_id": debit.args["debit_id"],
                "debit_reason": debit.args["reason"],
                "debit_metadata": debit.args["metadata"],
                "transfer_reason": debit.args["transfer_reason"],
                "record": values,
                "result": view,
            },
            group=payer.account.id,
        )
        return None if done is None else self._after(done)

    # ------------------------------------------------------------------ extend and finish

    def extend(
        self,
        principal: Principal,
        recording_id: str,
        additional_minutes: int,
        idempotency_key: str,
        allow_partial: bool = False,
    ) -> RecordingView:
        r = self.recordings
        result: RecordingView = self._or_python(
            lambda: self._extend(principal, recording_id, additional_minutes, idempotency_key, allow_partial),
            lambda s: r.extend(
                s, principal, recording_id, additional_minutes, idempotency_key, allow_partial
            ),
        )
        return result

    def _extend(
        self, principal: Principal, recording_id: str, minutes: int, idempotency_key: str, allow_partial: bool
    ) -> RecordingView | None:
        if principal.is_operator:
            return None  # the functions do not know operators; the Python path allows them
        r = self.recordings
        now = r.clock.now()
        key = idempotency.check_key(idempotency_key)
        minutes = check_minutes(minutes, "additional_minutes")
        params = {"recording_id": recording_id, "minutes": minutes, "allow_partial": allow_partial}
        expires = now + timedelta(minutes=r.catalog.rate_card.hold_grace_minutes)
        done = call(
            self.db,
            "usage_try_extend",
            {
                **self._who(principal, recording_id),
                "scope": idempotency.scope_of("usage.extend", recording_id),
                "key": key,
                "hash": idempotency.request_fingerprint(params),
                "minutes": minutes,
                "allow_partial": allow_partial,
                "unit": r.unit,
                "now": now,
                "expires_at": expires,
                "expires_text": expires.isoformat(),
                "hold_key": idempotency.compose_key("usage", recording_id, "extend", key),
            },
        )
        return None if done is None else RecordingView.model_validate(done["view"])

    def finish(
        self, principal: Principal, recording_id: str, seconds_by_source: dict[str, int], idempotency_key: str
    ) -> RecordingView:
        r = self.recordings
        result: RecordingView = self._or_python(
            lambda: self._finish(principal, recording_id, seconds_by_source, idempotency_key),
            lambda s: r.finish(s, principal, recording_id, seconds_by_source, idempotency_key),
        )
        return result

    def _finish(
        self, principal: Principal, recording_id: str, seconds_by_source: dict[str, int], idempotency_key: str
    ) -> RecordingView | None:
        if principal.is_operator:
            return None
        r = self.recordings
        now = r.clock.now()
        key = idempotency.check_key(idempotency_key)
        seconds = check_seconds(seconds_by_source)
        wall = max(seconds.values())
        params = {"recording_id": recording_id, "seconds_by_source": seconds}
        done = call(
            self.db,
            "usage_try_finish",
            {
                **self._who(principal, recording_id),
                "scope": idempotency.scope_of("usage.finish", recording_id),
                "key": key,
                "hash": idempotency.request_fingerprint(params),
                "seconds": seconds,
                "wall": wall,
                "cost": r.catalog.rate_card.meeting_cost(wall),
                "minutes": -(-wall // 60),
                "now": now,
                "capture_key": idempotency.compose_key("usage", recording_id, "capture"),
            },
        )
        return None if done is None else self._after(done)

    @staticmethod
    def _who(principal: Principal, recording_id: str) -> dict[str, Any]:
        return {
            "recording": recording_id,
            "user": principal.user_id,
            "guilds": sorted(principal.managed_guilds),
            "auto": principal.is_auto_recorder,
        }

    def _after(self, done: dict[str, Any]) -> RecordingView:
        """A charge committed: the payer's balance thresholds, when it has any, are checked in a
        short transaction of its own (a crash before it only delays the alert to the next change)."""
        view = RecordingView.model_validate(done["view"])
        if done.get("alerts"):
            notifications = self.recordings.notifications
            self.db.write(lambda s: notifications.after_balance_change(s, view.payer_account_id))
        return view

"""The delivery worker: sends outbox events to Chronote and runs outbox jobs, at least once.

One pass:

1. **claim** due rows in a short transaction (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so
   several workers share the work; SQLite's ``BEGIN IMMEDIATE`` already serializes), counting
   the attempt and leasing the row (``next_attempt_at`` = now + lease) so no other worker takes
   it while it is in flight;
2. **send** each one with no transaction open (a signed POST, or the job's work);
3. **record** the outcome in a second short transaction: delivered on a 2xx, otherwise due
   again after an exponential backoff with jitter, and dead after ``max_attempts``.

A worker that dies between 2 and 3 leaves the lease to run out, and the row is sent again: the
same event id may arrive twice, never zero times. Receivers dedupe by id.
"""

from __future__ import annotations

import functools
import json
import random
import threading
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import httpx
import structlog
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from chronote_billing import __version__
from chronote_billing.config import Settings
from chronote_billing.core.clock import Clock
from chronote_billing.core.db import Database, classify_database_failure
from chronote_billing.core.errors import BillingError, ExternalServiceError

from .models import OutboxEntry
from .service import JOB_AUTO_RECHARGE, NotificationService
from .signing import SIGNATURE_HEADER, sign

log = structlog.get_logger(__name__)

DEFAULT_MAX_ATTEMPTS = 15  # about two days with the default backoff
DEFAULT_BASE_DELAY = timedelta(seconds=30)
DEFAULT_MAX_DELAY = timedelta(hours=6)
DEFAULT_LEASE = timedelta(minutes=5)
DEFAULT_TIMEOUT_SECONDS = 10.0
MAX_ERROR_LENGTH = 1000


@dataclass(frozen=True)
class Claimed:
    id: str
    kind: str
    type: str
    account_id: str | None
    data: dict[str, Any]
    created_at: datetime
    attempts: int


@dataclass
class Outcome:
    ok: bool
    error: str | None = None
    # Events to emit in the transaction that records the outcome (e.g. auto_recharge.failed),
    # and events to emit only if the entry turns out dead.
    follow_ups: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    on_dead: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    final: bool = False  # a failure that retrying cannot fix: dead at once
    # For an auto-recharge job: how its purchase ended, recorded with the outcome (decision 0045).
    purchase: tuple[bool, str | None] | None = None  # (succeeded, the refusal's code)


@dataclass
class DeliveryReport:
    delivered: int = 0
    retrying: int = 0
    dead: int = 0

    @property
    def attempted(self) -> int:
        return self.delivered + self.retrying + self.dead


def event_body(entry: Claimed) -> bytes:
    """The JSON body Chronote receives (compact, keys sorted: the signed bytes)."""
    document = {
        "id": entry.id,
        "type": entry.type,
        "created": int(entry.created_at.timestamp()),
        "account_id": entry.account_id,
        "data": entry.data,
    }
    return json.dumps(document, separators=(",", ":"), sort_keys=True).encode()


class PackBuyer(Protocol):
    def buy_pack_off_session(self, account_id: str, pack_id: str, idempotency_key: str) -> Any: ...


class DeliveryServices(Protocol):
    """What the worker uses of the container (the container itself, in the service)."""

    @property
    def db(self) -> Database: ...
    @property
    def clock(self) -> Clock: ...
    @property
    def settings(self) -> Settings: ...
    @property
    def notifications(self) -> NotificationService: ...
    @property
    def billing(self) -> PackBuyer: ...


class DeliveryWorker:
    def __init__(
        self,
        container: DeliveryServices,
        *,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
        base_delay: timedelta = DEFAULT_BASE_DELAY,
        max_delay: timedelta = DEFAULT_MAX_DELAY,
        lease: timedelta = DEFAULT_LEASE,
        batch_size: int = 20,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        account_ids: Collection[str] | None = None,
        http: httpx.Client | None = None,
    ) -> None:
        if max_attempts < 1 or base_delay <= timedelta(0) or max_delay < base_delay:
            raise ValueError("max_attempts >= 1 and 0 < base_delay <= max_delay")
        self.container = container
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.lease = lease
        self.batch_size = batch_size
        self.account_ids = list(account_ids) if account_ids is not None else None
        self._http = http or httpx.Client(timeout=timeout, follow_redirects=False)
        self._owns_http = http is None
        self._warned_no_url = False

    @property
    def notifications(self) -> NotificationService:
        return self.container.notifications

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    # ------------------------------------------------------------------ the loop

    def run_once(self, max_batches: int = 100) -> DeliveryReport:
        """Deliver everything due now; returns what happened."""
        report = DeliveryReport()
        for _ in range(max_batches):
            claimed = self.container.db.write(self._claim)
            if not claimed:
                break
            for entry in claimed:
                outcome = self._attempt(entry)
                status = self.container.db.write(
                    functools.partial(self._record, entry=entry, outcome=outcome)
                )
                if status == "delivered":
                    report.delivered += 1
                elif status == "dead":
                    report.dead += 1
                elif status == "retrying":
                    report.retrying += 1
        return report

    def run(self, stop_event: threading.Event, poll_interval: float = 1.0) -> None:
        """Deliver until ``stop_event`` is set, checking for due rows every ``poll_interval``."""
        while not stop_event.is_set():
            try:
                self.run_once()
            except Exception as exc:  # a database outage must not kill the worker; try again later
                if reason := classify_database_failure(exc):
                    log.warning("notification_delivery_paused", reason=reason)  # no traceback: expected
                else:
                    log.exception("notification_delivery_pass_failed")
            stop_event.wait(poll_interval)

    # ------------------------------------------------------------------ claim / record

    def _claim(self, session: Session) -> list[Claimed]:
        now = self.container.clock.now()
        query = select(OutboxEntry).where(
            OutboxEntry.next_attempt_at <= now,
            OutboxEntry.delivered_at.is_(None),
            OutboxEntry.dead_at.is_(None),
        )
        if not self.container.settings.chronote_webhook_url:
            if not self._warned_no_url:
                log.warning("chronote_webhook_url_not_set", detail="events stay pending; jobs still run")
                self._warned_no_url = True
            query = query.where(OutboxEntry.kind == "job")
        if self.account_ids is not None:
            query = query.where(OutboxEntry.account_id.in_(self.account_ids))
        rows = list(
            session.execute(
                query.order_by(OutboxEntry.next_attempt_at, OutboxEntry.id)
                .limit(self.batch_size)
                .with_for_update(skip_locked=True)
            ).scalars()
        )
        claimed = [
            Claimed(
                id=row.id,
                kind=row.kind,
                type=row.type,
                account_id=row.account_id,
                data=dict(row.data or {}),
                created_at=row.created_at,
                attempts=row.attempts + 1,
            )
            for row in rows
        ]
        for entry in claimed:
            session.execute(
                update(OutboxEntry)
                .where(OutboxEntry.id == entry.id)
                .values(attempts=entry.attempts, next_attempt_at=now + self.lease)
            )
        return claimed

    def _record(self, session: Session, entry: Claimed, outcome: Outcome) -> str:
        now = self.container.clock.now()
        row = session.execute(
            select(OutboxEntry).where(OutboxEntry.id == entry.id).with_for_update()
        ).scalar_one()
        if row.delivered_at is not None or row.dead_at is not None:
            return "skipped"  # another worker finished it after our lease ran out
        if row.attempts != entry.attempts and not outcome.ok:
            return "skipped"  # re-claimed after our lease ran out: that attempt decides
        notifications = self.notifications
        if outcome.ok:
            row.delivered_at = now
            row.next_attempt_at = None
            row.last_error = outcome.error
            status = "delivered"
        elif outcome.final or entry.attempts >= self.max_attempts:
            row.dead_at = now
            row.next_attempt_at = None
            row.last_error = _clip(outcome.error)
            status = "dead"
            for event_type, data in outcome.on_dead:
                notifications.emit(
                    session, event_type, entry.account_id, data, dedupe_key=f"{event_type}:{entry.id}"
                )
            log.warning("notification_dead", id=entry.id, type=entry.type, error=outcome.error)
        else:
            row.next_attempt_at = now + self.backoff(entry.attempts)
            row.last_error = _clip(outcome.error)
            status = "retrying"
        for event_type, data in outcome.follow_ups:
            notifications.emit(
                session, event_type, entry.account_id, data, dedupe_key=f"{event_type}:{entry.id}"
            )
        if entry.type == JOB_AUTO_RECHARGE and status != "retrying":
            succeeded, refusal = outcome.purchase or (False, None)
            account_id = str(entry.data.get("account_id") or entry.account_id)
            notifications.settle_auto_recharge(session, entry.id, account_id, succeeded, refusal)
        return status

    def backoff(self, attempts: int) -> timedelta:
        """Exponential, capped, with 'equal jitter': between half and all of the step."""
        step = min(self.max_delay, self.base_delay * 2 ** min(attempts - 1, 30))
        return step / 2 + step / 2 * random.random()

    # ------------------------------------------------------------------ attempts

    def _attempt(self, entry: Claimed) -> Outcome:
        try:
            if entry.kind == "event":
                return self._send(entry)
            if entry.type == JOB_AUTO_RECHARGE:
                return self._auto_recharge(entry)
            return Outcome(ok=False, error=f"unknown job type '{entry.type}'", final=True)
        except Exception as exc:  # anything unexpected is retried, then dead, and stays visible
            log.exception("notification_attempt_failed", id=entry.id, type=entry.type)
            return Outcome(ok=False, error=f"{exc.__class__.__name__}: {exc}")

    def _send(self, entry: Claimed) -> Outcome:
        settings = self.container.settings
        body = event_body(entry)
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"ChronoteBilling/{__version__}",
            SIGNATURE_HEADER: sign(body, settings.chronote_webhook_secret),
            "Chronote-Event-Id": entry.id,
        }
        try:
            response = self._http.post(settings.chronote_webhook_url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return Outcome(ok=False, error=f"{exc.__class__.__name__}: {exc}")
        if 200 <= response.status_code < 300:
            return Outcome(ok=True)
        return Outcome(ok=False, error=f"HTTP {response.status_code}: {response.text[:200]}")

    def _auto_recharge(self, entry: Claimed) -> Outcome:
        """Buy the chosen pack off-session. Stripe's idempotency key is derived from the job id,
        so a job run twice (at least once) buys once. Credits are granted by the Stripe webhook
        when the payment succeeds."""
        account_id = str(entry.data.get("account_id") or entry.account_id)
        pack_id = str(entry.data.get("pack_id"))
        base = {"account_id": account_id, "recharge_id": entry.id, "pack_id": pack_id}
        notifications = self.notifications
        still_on = self.container.db.read(
            lambda s: notifications.auto_recharge_enabled(s, account_id, pack_id)
        )
        if not still_on:
            return Outcome(
                ok=True,
                error="auto-recharge was turned off or changed before the purchase; nothing bought",
                follow_ups=[("auto_recharge.failed", {**base, "reason": "auto_recharge_disabled"})],
            )
        failed_later = [("auto_recharge.failed", {**base, "reason": "payment_provider_unavailable"})]
        try:
            result = self.container.billing.buy_pack_off_session(
                account_id, pack_id, idempotency_key=f"auto_recharge:{entry.id}"
            )
        except ExternalServiceError as exc:
            if exc.details.get("stripe_code") is None:  # an outage, not a refusal: try again
                return Outcome(ok=False, error=exc.message, on_dead=failed_later)
            return _purchase_refused(entry, base, exc)
        except BillingError as exc:
            return _purchase_refused(entry, base, exc)
        payment = _payment_summary(result)
        if payment.get("status") in ("requires_action", "requires_payment_method", "canceled", "failed"):
            return Outcome(
                ok=True,
                error=f"payment {payment.get('status')}",
                follow_ups=[
                    (
                        "auto_recharge.failed",
                        {**base, "reason": str(payment.get("status")), "payment": payment},
                    )
                ],
                purchase=(False, str(payment.get("status"))),
            )
        return Outcome(
            ok=True,
            follow_ups=[("auto_recharge.succeeded", {**base, "payment": payment})],
            purchase=(True, None),
        )


def _purchase_refused(entry: Claimed, base: dict[str, Any], exc: BillingError) -> Outcome:
    """A refusal (a declined card, no payment method): final for this crossing."""
    return Outcome(
        ok=True,
        error=f"{exc.code}: {exc.message}",
        purchase=(False, str(exc.details.get("stripe_code") or exc.code)),
        follow_ups=[
            (
                "auto_recharge.failed",
                {
                    **base,
                    "reason": str(exc.details.get("stripe_code") or exc.code),
                    "message": exc.message,
                },
            )
        ],
    )


def _payment_summary(result: Any) -> dict[str, Any]:
    """What the purchase returned, as plain JSON: a dict, a pydantic model or an object."""
    if result is None:
        return {}
    if hasattr(result, "model_dump"):
        data = result.model_dump(mode="json")
    elif isinstance(result, dict):
        data = dict(result)
    else:
        data = {k: getattr(result, k) for k in ("id", "status", "amount", "currency") if hasattr(result, k)}
    try:
        return dict(json.loads(json.dumps(data, default=str)))
    except (TypeError, ValueError):
        return {}


def _clip(text: str | None) -> str | None:
    return None if text is None else text[:MAX_ERROR_LENGTH]


def start_delivery_thread(
    container: DeliveryServices,
    stop_event: threading.Event,
    poll_interval: float = 1.0,
    **worker_options: Any,
) -> threading.Thread:
    """Run a delivery worker in a daemon thread until ``stop_event`` is set (serve and demo).

    ``worker_options`` go to :class:`DeliveryWorker` (``max_attempts``, ``account_ids``, ...).
    """
    worker = DeliveryWorker(container, **worker_options)

    def _run() -> None:
        try:
            worker.run(stop_event, poll_interval)
        finally:
            worker.close()

    thread = threading.Thread(target=_run, name="chronote-notification-delivery", daemon=True)
    thread.start()
    return thread

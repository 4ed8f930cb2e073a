"""What a declined usage request leaves behind (decision 0019): the decline it raises, the
``hold.declined`` notification and a cap-reached alert per authorization whose cap stopped it,
written in a committed transaction of their own while the declined write itself rolls back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from sqlalchemy.orm import Session

from chronote_billing.core import idempotency
from chronote_billing.core.clock import Clock, month_key
from chronote_billing.core.db import Database
from chronote_billing.ledger.service import LedgerService
from chronote_billing.notifications.service import NotificationService
from chronote_billing.orgs.service import OrgService

from .attribution import Decline
from .errors import UsageDeclined, payer_attempts
from .schemas import PayerAttempt

T = TypeVar("T")


class DeclineNotices:
    """The recording service's declines, shared with metered events and the fast path."""

    clock: Clock
    ledger: LedgerService
    orgs: OrgService
    notifications: NotificationService

    def declined(
        self, verdict: Decline, req: Any, dedupe: str, kind: str, minutes: int | None
    ) -> UsageDeclined:
        attempts = payer_attempts(verdict.attempts)
        exc = UsageDeclined(verdict.message, attempts, requested_minutes=minutes)
        first = next((a.account_id for a in attempts if a.account_id), None)
        exc.notice = {
            "account_id": first,
            "dedupe_key": f"hold.declined:{dedupe}",
            "data": {
                "kind": kind,
                "context": req.context,
                "capture_source": getattr(req, "capture_source", None) or None,
                "user_id": req.user_id,
                "guild_id": req.guild_id,
                "meeting_id": req.meeting_id,
                "requested_minutes": minutes,
                "reason": exc.message,
            },
            "caps_reached": [
                a.authorization_id for a in attempts if a.code == "cap_reached" and a.authorization_id
            ],
        }
        return exc

    def emit_caps_reached(self, session: Session, attempts: list[PayerAttempt]) -> None:
        for a in attempts:
            if a.code == "cap_reached" and a.authorization_id:
                self._emit_cap_reached(session, a.authorization_id)

    def _emit_cap_reached(self, session: Session, auth_id: str) -> None:
        auth = self.orgs.get_authorization(session, auth_id)
        org = self.orgs.get_org(session, auth.org_id)
        period = month_key(self.clock.now())
        usage = self.ledger.cap_usage(session, auth.id, period)
        self.notifications.emit(
            session,
            "authorization.cap_reached",
            org.billing_account_id,
            {
                "authorization_id": auth.id,
                "org_id": org.id,
                "subject_type": auth.subject_type,
                "subject_id": auth.subject_id,
                "period": period,
                "monthly_cap": auth.monthly_cap,
                "used": usage.used,
                "held": usage.held,
            },
            dedupe_key=f"authorization.cap_reached:{auth.id}:{period}",
        )

    def record_decline(self, session: Session, declined: UsageDeclined) -> None:
        """The committed write of a decline: its notification, and a cap-reached alert per
        authorization whose cap stopped it."""
        notice = declined.notice
        if not notice:
            return
        self.notifications.emit(
            session,
            "hold.declined",
            notice["account_id"],
            notice["data"] | {"code": declined.code, "attempts": [a.model_dump() for a in declined.attempts]},
            dedupe_key=idempotency.bounded(notice["dedupe_key"], 255),
        )
        for auth_id in notice.get("caps_reached", []):
            self._emit_cap_reached(session, auth_id)


class DeclineRecorder(Protocol):
    def record_decline(self, session: Session, declined: UsageDeclined) -> None: ...


def write_or_record_decline(db: Database, recordings: DeclineRecorder, work: Callable[[Session], T]) -> T:
    """Run a usage write; when it is declined, record the decline notification in a committed
    transaction of its own (the failed write itself is rolled back), then re-raise."""
    try:
        return db.write(work)
    except UsageDeclined as exc:
        declined = exc
        if declined.notify:
            db.write(lambda s: recordings.record_decline(s, declined))
        raise

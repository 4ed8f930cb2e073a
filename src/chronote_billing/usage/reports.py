"""Usage reports per paying account: by day, capture source, member, server or context.

Built only from non-content fields (amounts, times, sources, context, ids, reason lines): an
organization's admins see who used what and where, never what a meeting was about.
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from chronote_billing.core.clock import as_utc
from chronote_billing.core.errors import ValidationFailed

from .models import UsageRecord
from .schemas import UsageReport, UsageReportRow

GROUPS = ("day", "source", "member", "server", "context")
COUNTED = ("open", "finished", "charged")
LINE_FIELDS = (
    "id",
    "created_at",
    "finished_at",
    "kind",
    "status",
    "context",
    "source",
    "user_id",
    "guild_id",
    "meeting_id",
    "authorization_id",
    "minutes",
    "held_credits",
    "charged_credits",
    "shortfall_credits",
    "reason",
)


def _key(rec: UsageRecord, group_by: str) -> str:
    if group_by == "day":
        return as_utc(rec.created_at).strftime("%Y-%m-%d")
    if group_by == "source":
        return rec.capture_source or rec.event_type or "none"
    if group_by == "member":
        return rec.user_id or "auto-record"
    if group_by == "server":
        return rec.guild_id or "personal"
    return rec.context


def _records(
    session: Session, account_id: str, since: datetime | None, until: datetime | None
) -> list[UsageRecord]:
    # Times without a zone are UTC; compared only once both are aware.
    since = as_utc(since) if since is not None else None
    until = as_utc(until) if until is not None else None
    if since and until and until <= since:
        raise ValidationFailed("until must be after since.", field="until")
    query = select(UsageRecord).where(
        UsageRecord.payer_account_id == account_id, UsageRecord.status.in_(COUNTED)
    )
    if since is not None:
        query = query.where(UsageRecord.created_at >= since)
    if until is not None:
        query = query.where(UsageRecord.created_at < until)
    return list(session.execute(query.order_by(UsageRecord.created_at, UsageRecord.id)).scalars())


def _minutes(rec: UsageRecord) -> int:
    if rec.kind == "event":
        return 0
    if rec.wall_clock_seconds is not None:
        return -(-rec.wall_clock_seconds // 60)
    return rec.approved_minutes


def usage_report(
    session: Session,
    account_id: str,
    group_by: str = "day",
    since: datetime | None = None,
    until: datetime | None = None,
) -> UsageReport:
    """Totals of what an account paid (charged) and has held, grouped one way."""
    if group_by not in GROUPS:
        raise ValidationFailed(f"group_by must be one of {', '.join(GROUPS)}.", field="group_by")
    totals: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0, 0])
    for rec in _records(session, account_id, since, until):
        row = totals[_key(rec, group_by)]
        row[0] += 1
        row[1] += _minutes(rec)
        row[2] += rec.held if rec.status == "open" else 0
        row[3] += rec.charged
    rows = [
        UsageReportRow(key=k, count=v[0], minutes=v[1], held=v[2], charged=v[3])
        for k, v in sorted(totals.items())
    ]
    return UsageReport(
        account_id=account_id,
        group_by=group_by,
        since=since,
        until=until,
        rows=rows,
        total_charged=sum(r.charged for r in rows),
    )


def _credits(mc: int) -> str:
    whole, frac = divmod(mc, 1000)
    return f"{whole}" + (f".{frac:03d}".rstrip("0") if frac else "")


def usage_csv(
    session: Session,
    account_id: str,
    group_by: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> str:
    """CSV: one line per usage record (with its reason), or grouped totals when ``group_by``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    if group_by:
        report = usage_report(session, account_id, group_by, since, until)
        writer.writerow([group_by, "count", "minutes", "held_credits", "charged_credits"])
        for r in report.rows:
            writer.writerow([r.key, r.count, r.minutes, _credits(r.held), _credits(r.charged)])
        return out.getvalue()
    writer.writerow(LINE_FIELDS)
    for rec in _records(session, account_id, since, until):
        writer.writerow(
            [
                rec.id,
                as_utc(rec.created_at).isoformat(),
                as_utc(rec.finished_at).isoformat() if rec.finished_at else "",
                rec.kind,
                rec.status,
                rec.context,
                rec.capture_source or rec.event_type or "",
                rec.user_id or "",
                rec.guild_id or "",
                rec.meeting_id or "",
                rec.authorization_id or "",
                _minutes(rec),
                _credits(rec.held if rec.status == "open" else 0),
                _credits(rec.charged),
                _credits(rec.shortfall),
                rec.reason,
            ]
        )
    return out.getvalue()

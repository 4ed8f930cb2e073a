"""Everything kept about a person (decision 0047), as one JSON document or as CSV rows.

Read inside one read transaction. The sections are the places a person's Discord id is kept:
their name, their personal account and what it holds, the usage they started whoever paid,
their meetings, organizations, authorizations, audit entries, notifications and checkouts.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import datetime
from typing import Any

from sqlalchemy import String, cast, or_, select
from sqlalchemy.orm import Session

from chronote_billing.access.service import Principal
from chronote_billing.accounts.models import AccountKind, BillingAccount
from chronote_billing.core.clock import Clock
from chronote_billing.core.errors import NotFound, PermissionDenied
from chronote_billing.ledger.service import LedgerService

from .models import Person


class UnknownPerson(NotFound):
    code = "unknown_person"
    title = "Nothing is kept about this person"


def require_self_or_operator(principal: Principal, user_id: str) -> None:
    """A person's data is for that person (a client acting for them) and for operators."""
    if principal.is_operator or (principal.user_id is not None and principal.user_id == user_id):
        return
    raise PermissionDenied(
        f"Only Discord user {user_id} (or an operator) may read their data.",
        missing_permission="the person themselves",
    )


def _row(obj: Any, *skip: str) -> dict[str, Any]:
    return {c.key: getattr(obj, c.key) for c in obj.__table__.columns if c.key not in skip}


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def collect(session: Session, clock: Clock, ledger: LedgerService, user_id: str) -> dict[str, Any]:
    """The export document; `UnknownPerson` when nothing at all is kept about `user_id`."""
    from chronote_billing.notifications.models import AutoRechargePurchase, NotificationSettings, OutboxEntry
    from chronote_billing.orgs.models import Organization, OrgAuditEntry, OrgMember, SpendAuthorization
    from chronote_billing.plans.models import PlanSubscription, PlanTrial
    from chronote_billing.stripe_sync.models import StripeCheckoutSession
    from chronote_billing.usage.models import FundingPreference, MeetingAttribution, MeetingShare, UsageRecord

    person = session.get(Person, user_id)
    account = session.execute(
        select(BillingAccount).where(
            BillingAccount.kind == AccountKind.PERSONAL, BillingAccount.owner_ref == user_id
        )
    ).scalar()
    usage = list(
        session.execute(
            select(UsageRecord).where(UsageRecord.user_id == user_id).order_by(UsageRecord.created_at)
        ).scalars()
    )
    memberships = list(session.execute(select(OrgMember).where(OrgMember.user_id == user_id)).scalars())
    if person is None and account is None and not usage and not memberships:
        raise UnknownPerson(f"Nothing is kept about Discord user {user_id}.", user_id=user_id)
    document: dict[str, Any] = {
        "object": "person_export",
        "discord_user_id": user_id,
        "exported_at": clock.now(),
        "name": {"display_name": person.display_name, "updated_at": person.updated_at} if person else None,
        "personal_account": None,
    }
    if account is not None:
        lines: list[Any] = []
        cursor = None
        while True:
            page = ledger.statement(session, account.id, limit=500, starting_after=cursor)
            lines += [line.model_dump() for line in page.data]
            if not page.has_more:
                break
            cursor = page.next_cursor
        sub = session.get(PlanSubscription, account.id)
        settings = session.get(NotificationSettings, account.id)
        document["personal_account"] = {
            **_row(account),
            "subscription": _row(sub) if sub else None,
            "grants": [g.model_dump() for g in ledger.list_grants(session, account.id)],
            "statement": lines,
            "notification_settings": _row(settings) if settings else None,
            "auto_recharge_purchases": [
                _row(p)
                for p in session.execute(
                    select(AutoRechargePurchase).where(AutoRechargePurchase.account_id == account.id)
                ).scalars()
            ],
            "notifications": [
                {"id": e.id, "type": e.type, "created_at": e.created_at, "data": e.data}
                for e in session.execute(
                    select(OutboxEntry)
                    .where(OutboxEntry.account_id == account.id, OutboxEntry.kind == "event")
                    .order_by(OutboxEntry.created_at)
                ).scalars()
            ],
        }
    trial = session.get(PlanTrial, ("personal", user_id))
    preference = session.get(FundingPreference, user_id)
    orgs = {
        o.id: o.name
        for o in session.execute(
            select(Organization).where(Organization.id.in_([m.org_id for m in memberships]))
        ).scalars()
    }
    document.update(
        trial=_row(trial) if trial else None,
        usage=[_row(r) for r in usage],
        meetings=[
            _row(m)
            for m in session.execute(
                select(MeetingAttribution).where(MeetingAttribution.owner_user_id == user_id)
            ).scalars()
        ],
        meeting_shares=[
            _row(m)
            for m in session.execute(select(MeetingShare).where(MeetingShare.shared_by == user_id)).scalars()
        ],
        funding_order=preference.source_order if preference else None,
        organizations=[
            {"org_id": m.org_id, "org_name": orgs.get(m.org_id), "role": m.role, "since": m.created_at}
            for m in memberships
        ],
        authorizations=[
            _row(a)
            for a in session.execute(
                select(SpendAuthorization).where(
                    SpendAuthorization.subject_type == "member", SpendAuthorization.subject_id == user_id
                )
            ).scalars()
        ],
        audit_entries=[
            _row(e)
            for e in session.execute(
                select(OrgAuditEntry)
                .where(
                    or_(
                        OrgAuditEntry.actor == user_id,
                        OrgAuditEntry.target.contains(user_id),
                        cast(OrgAuditEntry.before, String).contains(user_id),
                        cast(OrgAuditEntry.after, String).contains(user_id),
                    )
                )
                .order_by(OrgAuditEntry.id)
            ).scalars()
        ],
        checkouts=[
            _row(cs)
            for cs in session.execute(
                select(StripeCheckoutSession).where(StripeCheckoutSession.created_by == user_id)
            ).scalars()
        ],
    )
    result: dict[str, Any] = _jsonable(document)
    return result


def to_json(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=2, sort_keys=False, default=str)


def to_csv(document: dict[str, Any]) -> str:
    """One value per row: section, record (its position in a list), field (a dotted path), value."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["section", "record", "field", "value"])

    def walk(section: str, record: str, path: str, value: Any) -> None:
        if isinstance(value, dict):
            if not value:
                writer.writerow([section, record, path, ""])
            for key, item in value.items():
                walk(section, record, f"{path}.{key}" if path else str(key), item)
        elif isinstance(value, list) and path == "" and section != "funding_order":
            for i, item in enumerate(value):
                walk(section, str(i), "", item)
        elif isinstance(value, list):
            writer.writerow([section, record, path, json.dumps(value, default=str)])
        else:
            writer.writerow([section, record, path, "" if value is None else value])

    for section, value in document.items():
        if isinstance(value, dict) and section == "personal_account":
            for key, item in value.items():
                if isinstance(item, list):
                    for i, entry in enumerate(item):
                        walk(f"personal_account.{key}", str(i), "", entry)
                else:
                    walk(section, "", key, item)
        else:
            walk(section, "", "", value)
    return out.getvalue()

"""Gathering the facts a payer decision needs (decisions 0030, 0031).

Two twins produce the same raw document: :func:`gather_raw` with ORM queries (SQLite, and the
Python path on PostgreSQL) and the PostgreSQL function ``usage_facts`` in one statement (the
fast path). :func:`snapshot_of` turns either into the :class:`~.attribution.Snapshot` the pure
decision reads, applying the plan rules (which plan is in force, which allowance is still to
issue) in Python for both. A differential test requires the twins to agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from chronote_billing.accounts.models import AccountKind, BillingAccount
from chronote_billing.catalog.service import Catalog
from chronote_billing.core import idempotency
from chronote_billing.core.clock import as_utc, month_bounds, month_key
from chronote_billing.ledger.models import CapUsage, Grant
from chronote_billing.ledger.service import LedgerService
from chronote_billing.orgs.models import Organization, OrgMember, OrgServer, SpendAuthorization
from chronote_billing.people.models import Person
from chronote_billing.plans.models import ComplimentaryPlan, PlanSubscription
from chronote_billing.plans.rules import (
    CompRow,
    SubscriptionRow,
    best_complimentary,
    due_allowance,
    plan_in_force,
)

from .attribution import (
    MONTHLY_QUOTAS,
    AccountFacts,
    AuthorizationFacts,
    OrganizationLimits,
    OriginalPayer,
    Snapshot,
    WalletFacts,
)
from .models import FundingPreference, MeetingAttribution, UsageRecord

# Grants that carry a plan's allowance: the one in force is looked for among them.
ALLOWANCE_CAUSES = ("free_plan", "complimentary_plan", "subscription")


@dataclass(frozen=True)
class Where:
    """Whose facts: the request's context, people and meeting."""

    context: str
    user_id: str | None
    guild_id: str | None
    meeting_id: str | None = None
    # A metered event limited per month by some plan: its count this month is a fact, up to
    # ``quota_cap`` (the highest such limit: enough to compare with any plan's).
    event_type: str | None = None
    # An idempotent write: its earlier result under this scope prefix + requester id and key.
    scope_prefix: str | None = None
    key: str | None = None
    quota_cap: int = 0

    @property
    def requester_kind(self) -> str:
        return AccountKind.SERVER if self.context == "server" else AccountKind.PERSONAL

    @property
    def requester_ref(self) -> str:
        ref = self.guild_id if self.context == "server" else self.user_id
        assert ref is not None
        return ref


@dataclass(frozen=True)
class Gathered:
    snapshot: Snapshot
    requester_id: str | None  # None: the requester's account does not exist yet
    prior: tuple[str, Any] | None = None  # (request hash, first response) of the key
    open_recording: str | None = None
    payer_due: dict[str, bool] = field(default_factory=dict)


# ------------------------------------------------------------------------------ raw facts


def gather_raw(session: Session, ledger: LedgerService, where: Where, now: datetime) -> dict[str, Any]:
    """The raw facts document, read with ORM queries (the Python twin of ``usage_facts``)."""
    account = session.execute(
        select(BillingAccount).where(
            BillingAccount.kind == str(where.requester_kind), BillingAccount.owner_ref == where.requester_ref
        )
    ).scalar()
    raw: dict[str, Any] = {
        "requester": _raw_account(session, ledger, account, where, now) if account else None,
        "authorizations": [],
        "preferred_order": [],
        "original": None,
        "open_recording": None,
        "prior": None,
    }
    if where.context == "server":
        link = session.get(OrgServer, where.requester_ref)
        auth = None
        if link is not None:
            auth = (
                session.execute(
                    select(SpendAuthorization)
                    .where(
                        SpendAuthorization.org_id == link.org_id,
                        SpendAuthorization.subject_type == "server",
                        SpendAuthorization.subject_id == where.requester_ref,
                        SpendAuthorization.revoked_at.is_(None),
                    )
                    .order_by(SpendAuthorization.created_at.desc())
                )
                .scalars()
                .first()
            )
        name = account.display_name if account else f"Server {where.requester_ref}"
        if auth is not None:
            raw["authorizations"] = [_raw_authorization(session, ledger, auth, name, None, now)]
    elif where.user_id is not None:
        rows = session.execute(
            select(SpendAuthorization, OrgMember.role)
            .outerjoin(
                OrgMember,
                (OrgMember.org_id == SpendAuthorization.org_id)
                & (OrgMember.user_id == SpendAuthorization.subject_id),
            )
            .where(
                SpendAuthorization.subject_type == "member", SpendAuthorization.subject_id == where.user_id
            )
            .order_by(SpendAuthorization.created_at, SpendAuthorization.id)
        ).all()
        person = session.get(Person, where.user_id)
        name = person.display_name if person else where.user_id
        raw["authorizations"] = [_raw_authorization(session, ledger, a, name, role, now) for a, role in rows]
        pref = session.get(FundingPreference, where.user_id)
        raw["preferred_order"] = list(pref.source_order) if pref else []
    if where.meeting_id:
        original = session.get(MeetingAttribution, where.meeting_id)
        if original is not None:
            raw["original"] = {
                "context": original.context,
                "owner_user_id": original.owner_user_id,
                "payer_account_id": original.payer_account_id,
                "authorization_id": original.authorization_id,
            }
        raw["open_recording"] = session.execute(
            select(UsageRecord.id).where(
                UsageRecord.meeting_id == where.meeting_id,
                UsageRecord.status == "open",
                UsageRecord.kind != "event",
            )
        ).scalar()
    if account is not None and where.scope_prefix and where.key:
        found = idempotency.find(session, f"{where.scope_prefix}:{account.id}", where.key)
        raw["prior"] = {"request_hash": found[0], "response": found[1]} if found else None
    return raw


def _raw_account(
    session: Session, ledger: LedgerService, account: BillingAccount, where: Where, now: datetime
) -> dict[str, Any]:
    sub = session.get(PlanSubscription, account.id)
    comps = session.execute(
        select(ComplimentaryPlan).where(
            ComplimentaryPlan.account_id == account.id, ComplimentaryPlan.starts_at <= now
        )
    ).scalars()
    available, due = ledger.spendable(session, account.id, now)
    allowances = session.execute(
        # By wallet: its index finds the account's few grants, where a cause lookup would read
        # every account's allowances of the kind.
        select(Grant.cause_type, Grant.cause_id).where(
            Grant.wallet_account_id == account.wallet_account_id,
            Grant.cause_type.in_(ALLOWANCE_CAUSES),
            Grant.expires_at > now,
        )
    ).all()
    quota_used = 0
    if where.event_type:
        charged = (
            select(UsageRecord.id)
            .where(
                UsageRecord.payer_account_id == account.id,
                UsageRecord.event_type == where.event_type,
                UsageRecord.status == "charged",
                UsageRecord.created_at >= month_bounds(now)[0],
            )
            .limit(where.quota_cap)
            .subquery()
        )
        quota_used = int(session.execute(select(func.count()).select_from(charged)).scalar() or 0)
    return {
        "id": account.id,
        "kind": account.kind,
        "owner_ref": account.owner_ref,
        "display_name": account.display_name,
        "subscription": None
        if sub is None
        else {
            "stripe_subscription_id": sub.stripe_subscription_id,
            "plan_id": sub.plan_id,
            "interval": sub.interval,
            "status": sub.status,
            "current_period_start": sub.current_period_start,
            "current_period_end": sub.current_period_end,
            "payment_failed_at": sub.payment_failed_at,
            "updated_at": sub.updated_at,
            "pending_plan_id": sub.pending_plan_id,
        },
        "comps": [
            {"id": c.id, "plan_id": c.plan_id, "starts_at": c.starts_at, "ends_at": c.ends_at}
            for c in sorted(comps, key=lambda c: c.id)
        ],
        "available": available,
        "due": due,
        "allowances": sorted([t, c] for t, c in allowances),
        "quota_used": quota_used,
    }


def _raw_authorization(
    session: Session,
    ledger: LedgerService,
    auth: SpendAuthorization,
    subject_name: str,
    role: str | None,
    now: datetime,
) -> dict[str, Any]:
    period = month_key(now)
    org = session.get(Organization, auth.org_id)
    assert org is not None
    usage = session.get(CapUsage, (auth.id, period))
    available, due = ledger.spendable(session, org.billing_account_id, now)
    return {
        "id": auth.id,
        "org_id": org.id,
        "org_name": org.name,
        "org_account_id": org.billing_account_id,
        "subject_type": auth.subject_type,
        "subject_id": auth.subject_id,
        "subject_name": subject_name,
        "monthly_cap": auth.monthly_cap,
        "capture_sources": auth.capture_sources,
        "valid_from": auth.valid_from,
        "valid_until": auth.valid_until,
        "revoked_at": auth.revoked_at,
        "created_at": auth.created_at,
        "member_role": role,
        "cap_used": usage.used if usage else 0,
        "cap_held": usage.held if usage else 0,
        "org_available": available,
        "org_due": due,
    }


# ------------------------------------------------------------------------------ the snapshot


def _at(value: Any) -> datetime | None:
    if value is None:
        return None
    return as_utc(value if isinstance(value, datetime) else datetime.fromisoformat(value))


def _when(value: Any) -> datetime:
    moment = _at(value)
    assert moment is not None
    return moment


def gathered_of(raw: dict[str, Any], where: Where, now: datetime, catalog: Catalog) -> Gathered:
    """The snapshot and the write's own facts (its key's earlier use, the meeting's open
    recording) from a raw facts document of either twin."""
    requester = raw["requester"]
    if requester is None:
        # First use: the account is created with the request; its plan is the free one.
        kind = where.requester_kind
        plan = catalog.free_plan(kind)
        default = (
            f"Server {where.requester_ref}" if kind == AccountKind.SERVER else f"User {where.requester_ref}"
        )
        allowance = plan.included_millicredits if plan is not None and plan.is_free else 0
        account = AccountFacts(
            None, str(kind), where.requester_ref, default, plan, WalletFacts(0, allowance, False)
        )
    else:
        account = _account_facts(requester, now, catalog)
    auths = tuple(
        AuthorizationFacts(
            id=a["id"],
            org_id=a["org_id"],
            org_name=a["org_name"],
            org_account_id=a["org_account_id"],
            subject_type=a["subject_type"],
            subject_id=a["subject_id"],
            subject_name=a["subject_name"],
            monthly_cap=a["monthly_cap"],
            capture_sources=tuple(a["capture_sources"]) if a["capture_sources"] is not None else None,
            valid_from=_when(a["valid_from"]),
            valid_until=_at(a["valid_until"]),
            revoked_at=_at(a["revoked_at"]),
            created_at=_when(a["created_at"]),
            member_role=a["member_role"],
            cap_used=int(a["cap_used"]),
            cap_held=int(a["cap_held"]),
            org_wallet=WalletFacts(int(a["org_available"]), 0, bool(a["org_due"])),
        )
        for a in raw["authorizations"]
    )
    original = raw["original"]
    org = catalog.organization
    snapshot = Snapshot(
        now=now,
        requester=account,
        authorizations=auths,
        preferred_order=tuple(raw["preferred_order"] or ()),
        original=OriginalPayer(**original) if original else None,
        organization=OrganizationLimits(
            int(org.get("max_recording_minutes", 0)), dict(org.get("features", {}))
        ),
    )
    prior = raw["prior"]
    return Gathered(
        snapshot,
        requester["id"] if requester else None,
        (prior["request_hash"], prior["response"]) if prior else None,
        raw["open_recording"],
    )


def _account_facts(raw: dict[str, Any], now: datetime, catalog: Catalog) -> AccountFacts:
    s = raw["subscription"]
    sub = (
        None
        if s is None
        else SubscriptionRow(
            s["stripe_subscription_id"],
            s["plan_id"],
            s["interval"],
            s["status"],
            _when(s["current_period_start"]),
            _when(s["current_period_end"]),
            _at(s["payment_failed_at"]),
            _when(s["updated_at"]),
            s["pending_plan_id"],
        )
    )
    comps = [CompRow(c["id"], c["plan_id"], _when(c["starts_at"]), _at(c["ends_at"])) for c in raw["comps"]]
    comp = best_complimentary(comps, raw["kind"], now, catalog)
    plan = plan_in_force(raw["kind"], sub, comp, now, catalog)
    due = due_allowance(plan, sub, comp, now, catalog)
    issued = {(t, c) for t, c in raw["allowances"]}
    allowance = due.amount if due is not None and (due.cause_type, due.cause_id) not in issued else 0
    return AccountFacts(
        raw["id"],
        raw["kind"],
        raw["owner_ref"],
        raw["display_name"],
        plan,
        WalletFacts(int(raw["available"]), allowance, bool(raw["due"])),
        int(raw["quota_used"]),
    )


def quota_cap(event_type: str, catalog: Catalog) -> int:
    """The highest monthly limit any plan sets on ``event_type``; 0 when none limits it."""
    feature = MONTHLY_QUOTAS.get(event_type)
    limits = [p.features.get(feature) for p in catalog.plans.values()] if feature else []
    return max([n for n in limits if isinstance(n, int)], default=0)


def gather(
    session: Session, ledger: LedgerService, where: Where, now: datetime, catalog: Catalog
) -> Gathered:
    return gathered_of(gather_raw(session, ledger, where, now), where, now, catalog)

"""`import-chronote`: today's guild subscriptions and manual comps become server accounts.

The file format is documented in docs/import-format.md. The whole file is validated before
anything is written; every imported item leaves a record keyed by its source id, so running the
import again adds nothing. A dry run reports the same plan and writes nothing.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from chronote_billing.accounts.models import AccountKind, BillingAccount
from chronote_billing.accounts.service import AccountService, check_snowflake
from chronote_billing.catalog.service import load_catalog
from chronote_billing.core.clock import Clock, as_utc
from chronote_billing.core.db import Database
from chronote_billing.core.errors import ValidationFailed
from chronote_billing.core.ids import new_id
from chronote_billing.ledger.service import LedgerService
from chronote_billing.plans.models import ComplimentaryPlan
from chronote_billing.plans.periods import allowance_slice

from .models import ChronoteImport, StripeSubscription
from .plan_subscriptions import ENDED_STATUSES, plan_for_lookup_key, refresh_plan_subscription
from .timestamps import to_ts

log = structlog.get_logger(__name__)

TIER_PLANS = {"basic": "server_basic", "pro": "server_pro"}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class ExportedSubscription(_Strict):
    guild_id: str = Field(alias="guildId")
    guild_name: str | None = Field(default=None, alias="guildName")
    tier: Literal["basic", "pro"]
    status: str = Field(min_length=1, max_length=24)
    stripe_customer_id: str = Field(alias="stripeCustomerId", pattern=r"^cus_[A-Za-z0-9]+$")
    stripe_subscription_id: str = Field(alias="stripeSubscriptionId", pattern=r"^sub_[A-Za-z0-9]+$")
    price_lookup_key: str | None = Field(default=None, alias="priceLookupKey")
    current_period_start: datetime = Field(alias="currentPeriodStart")
    current_period_end: datetime = Field(alias="currentPeriodEnd")
    cancel_at_period_end: bool = Field(default=False, alias="cancelAtPeriodEnd")
    payer_discord_id: str | None = Field(default=None, alias="payerDiscordId")

    @field_validator("guild_id")
    @classmethod
    def _guild(cls, value: str) -> str:
        return check_snowflake(value, "guildId")


class ExportedComp(_Strict):
    guild_id: str = Field(alias="guildId")
    tier: Literal["basic", "pro"]
    granted_at: datetime = Field(alias="grantedAt")
    expires_at: datetime | None = Field(default=None, alias="expiresAt")
    granted_by: str | None = Field(default=None, alias="grantedBy")
    reason: str = Field(default="", max_length=500)

    @field_validator("guild_id")
    @classmethod
    def _guild(cls, value: str) -> str:
        return check_snowflake(value, "guildId")


class ChronoteExport(_Strict):
    format: Literal["chronote-guild-billing-export"]
    version: Literal[1]
    exported_at: datetime = Field(alias="exportedAt")
    guild_subscriptions: list[ExportedSubscription] = Field(default_factory=list, alias="guildSubscriptions")
    comp_grants: list[ExportedComp] = Field(default_factory=list, alias="compGrants")


@dataclass
class ImportReport:
    dry_run: bool
    actions: list[tuple[str, str, str]] = field(default_factory=list)  # (action, key, detail)
    warnings: list[str] = field(default_factory=list)

    def add(self, action: str, key: str, detail: str) -> None:
        self.actions.append((action, key, detail))

    def count(self, action: str) -> int:
        return sum(1 for a, _, _ in self.actions if a == action)


def load_export(path: Path) -> ChronoteExport:
    try:
        raw = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValidationFailed(f"Cannot read '{path}': {exc.strerror or exc}.", field="file") from exc
    except ValueError as exc:
        raise ValidationFailed(f"'{path}' is not JSON: {exc}.", field="file") from exc
    try:
        return ChronoteExport.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise ValidationFailed(
            f"'{path}' is not a Chronote export: {where}: {first.get('msg')} ({exc.error_count()} problem(s)).",
            field=where,
        ) from exc


class ChronoteImporter:
    def __init__(self, db: Database, clock: Clock, ledger: LedgerService, accounts: AccountService) -> None:
        self.db = db
        self.clock = clock
        self.ledger = ledger
        self.accounts = accounts

    def run(self, path: Path, dry_run: bool = False) -> ImportReport:
        export = load_export(path)
        report = ImportReport(dry_run=dry_run)
        guilds_per_customer = Counter(
            s.stripe_customer_id
            for s in {(s.stripe_customer_id, s.guild_id): s for s in export.guild_subscriptions}.values()
        )
        if dry_run:
            self.db.read(lambda s: self._plan(s, export, guilds_per_customer, report, apply=False))
        else:
            self.db.write(lambda s: self._plan(s, export, guilds_per_customer, report, apply=True))
        return report

    def _plan(
        self,
        session: Session,
        export: ChronoteExport,
        guilds_per_customer: Counter[str],
        report: ImportReport,
        apply: bool,
    ) -> None:
        catalog = load_catalog()
        now = self.clock.now()
        for sub in export.guild_subscriptions:
            key = f"subscription:{sub.stripe_subscription_id}"
            if session.get(ChronoteImport, key) is not None:
                report.add("skip", key, "already imported")
                continue
            plan = catalog.plans[TIER_PLANS[sub.tier]]
            interval = "month"
            priced = plan_for_lookup_key(catalog, sub.price_lookup_key)
            if sub.price_lookup_key and priced is None:
                # Not a plan price (a credit pack's, or unknown): the tier decides, monthly.
                report.warnings.append(
                    f"{key}: price '{sub.price_lookup_key}' is not a plan price; "
                    f"imported as {plan.id} monthly"
                )
            elif priced is not None:
                if priced[0].id != plan.id:
                    report.warnings.append(
                        f"{key}: tier '{sub.tier}' but price '{sub.price_lookup_key}'; the price decides"
                    )
                plan, interval = priced[0], priced[1].interval
            lookup_key = plan.price(interval).lookup_key
            account = self._account(session, sub.guild_id, sub.guild_name, apply)
            account_ref = account.id if account else f"(new server account for guild {sub.guild_id})"
            shared = guilds_per_customer[sub.stripe_customer_id] > 1
            link = "customer shared with other guilds: not linked (offer 'Move billing to this server')"
            if not shared:
                owner = session.execute(
                    select(BillingAccount.id).where(
                        BillingAccount.stripe_customer_id == sub.stripe_customer_id
                    )
                ).scalar()
                if account is not None and account.stripe_customer_id not in (None, sub.stripe_customer_id):
                    link = f"account already has customer {account.stripe_customer_id}: not linked"
                elif owner is not None and (account is None or owner != account.id):
                    link = f"customer already belongs to {owner}: not linked"
                else:
                    link = f"customer {sub.stripe_customer_id} linked"
                    if apply and account is not None:
                        account.stripe_customer_id = sub.stripe_customer_id
            report.add(
                "import",
                key,
                f"guild {sub.guild_id} -> {account_ref}: {plan.id} ({interval}ly, {sub.status}); {link}",
            )
            live = sub.status not in ENDED_STATUSES
            start, end = as_utc(sub.current_period_start), as_utc(sub.current_period_end)
            allowance = None
            if live and sub.status in ("active", "trialing", "past_due") and end > now:
                _, slice_start, slice_end = allowance_slice(start, end, max(now, start))
                allowance = (slice_start, slice_end)
                report.add(
                    "grant",
                    key,
                    f"{plan.included_credits:,} credits of {plan.name} until {slice_end.date()} (source migration)",
                )
            if not apply or account is None:
                continue
            if session.get(StripeSubscription, sub.stripe_subscription_id) is None:
                session.add(
                    StripeSubscription(
                        id=sub.stripe_subscription_id,
                        account_id=account.id,
                        customer_id=sub.stripe_customer_id,
                        status=sub.status,
                        plan_id=plan.id,
                        price_lookup_key=lookup_key,
                        interval=interval,
                        pending_plan_id=None,
                        current_period_start=start,
                        current_period_end=end,
                        cancel_at_period_end=sub.cancel_at_period_end,
                        stripe_created=to_ts(start),
                        # Any real Stripe event about this subscription supersedes the import.
                        last_event_created=0,
                        last_event_rank="",
                        deleted=sub.status in ENDED_STATUSES,
                        updated_at=now,
                    )
                )
                session.flush()
                refresh_plan_subscription(session, account.id)
            if allowance is not None:
                self.ledger.issue_grant(
                    session,
                    account_id=account.id,
                    amount=plan.included_millicredits,
                    source="migration",
                    idempotency_key=f"import:{key}:allowance",
                    cause_type="import",
                    cause_id=key,
                    priority=10,
                    effective_at=allowance[0],
                    expires_at=allowance[1],
                    description=f"{plan.name} allowance carried over from today's Chronote",
                )
            session.add(
                ChronoteImport(
                    key=key,
                    account_id=account.id,
                    kind="subscription",
                    detail=sub.model_dump(mode="json"),
                    imported_at=now,
                )
            )
            session.flush()

        live_by_guild = Counter(
            s.guild_id for s in export.guild_subscriptions if s.status not in ENDED_STATUSES
        )
        for guild, count in live_by_guild.items():
            if count > 1:
                report.warnings.append(
                    f"guild {guild} has {count} live subscriptions (today's upgrade defect): "
                    "the newest is the plan in force; cancel the others in Stripe"
                )

        for comp in export.comp_grants:
            key = f"comp:{comp.guild_id}:{comp.tier}:{to_ts(comp.granted_at)}"
            if session.get(ChronoteImport, key) is not None:
                report.add("skip", key, "already imported")
                continue
            if comp.expires_at is not None and as_utc(comp.expires_at) <= now:
                report.add("skip", key, f"expired on {as_utc(comp.expires_at).date()}")
                if apply:
                    account = self._account(session, comp.guild_id, None, apply)
                    assert account is not None
                    session.add(
                        ChronoteImport(
                            key=key,
                            account_id=account.id,
                            kind="comp",
                            detail=comp.model_dump(mode="json"),
                            imported_at=now,
                        )
                    )
                    session.flush()
                continue
            plan_id = TIER_PLANS[comp.tier]
            account = self._account(session, comp.guild_id, None, apply)
            until = f"until {as_utc(comp.expires_at).date()}" if comp.expires_at else "without end"
            report.add(
                "comp",
                key,
                f"guild {comp.guild_id} -> {account.id if account else '(new server account)'}: complimentary {plan_id} {until}",
            )
            if not apply or account is None:
                continue
            session.add(
                ComplimentaryPlan(
                    id=new_id("comp"),
                    account_id=account.id,
                    plan_id=plan_id,
                    starts_at=as_utc(comp.granted_at),
                    ends_at=as_utc(comp.expires_at) if comp.expires_at else None,
                    reason=comp.reason
                    or f"Manual comp imported from today's Chronote (by {comp.granted_by or 'unknown'})",
                    created_at=now,
                )
            )
            session.add(
                ChronoteImport(
                    key=key,
                    account_id=account.id,
                    kind="comp",
                    detail=comp.model_dump(mode="json"),
                    imported_at=now,
                )
            )
            session.flush()

    def _account(
        self, session: Session, guild_id: str, name: str | None, apply: bool
    ) -> BillingAccount | None:
        if apply:
            return self.accounts.get_or_create(session, AccountKind.SERVER, guild_id, name)
        return self.accounts.find(session, AccountKind.SERVER, guild_id)


__all__ = ["ChronoteImporter", "ImportReport", "load_export"]

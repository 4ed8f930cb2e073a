"""Reads the facts the runway projection needs (decision 0046) and hands them to the pure
functions of `projection`: the wallet's spending of the last 14 days (consumption transfers, by
the wallet's transfer index), its first spending ever, its spendable grants in burn order, the
next allowance of its plan, and for an organization what each authorization spent under its cap.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date, datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from chronote_billing.accounts.models import AccountKind, BillingAccount
from chronote_billing.catalog.service import Catalog, load_catalog
from chronote_billing.core.clock import Clock, as_utc, month_bounds
from chronote_billing.ledger.models import Transfer
from chronote_billing.ledger.service import LedgerService, burn_order_key
from chronote_billing.usage.models import UsageRecord

from . import projection
from .projection import WINDOW, Lot, Pace
from .schemas import AuthorizationRunway, DailySpend, RunwayView

CONSUMPTION = "la_system_consumption"
SPENT_PHASES = ("posted", "post")


class RunwayService:
    def __init__(self, clock: Clock, ledger: LedgerService, catalog: Catalog | None = None) -> None:
        self.clock = clock
        self.ledger = ledger
        # The container passes its catalog; the low-balance alert builds a runway without one.
        self.catalog = catalog if catalog is not None else load_catalog()

    def runway(self, session: Session, account: BillingAccount) -> RunwayView:
        now = self.clock.now()
        since = projection.window_start(now)
        spent_by_day = self._spent_by_day(session, account.wallet_account_id, since)
        spent = sum(spent_by_day.values())
        p = projection.pace(now, spent, self._first_spend(session, account.wallet_account_id))
        balance = self.ledger.balance(session, account.id)
        lots = [
            Lot(g.available, g.expires_at)
            for g in sorted(
                (g for g in balance.grants if g.available > 0),
                key=lambda g: burn_order_key(g.expires_at, g.priority, g.created_at, g.id),
            )
        ]
        runs_out = projection.runs_out_at(now, lots, p)
        renews = self._renews_at(session, account, now)
        return RunwayView(
            account_id=account.id,
            as_of=now,
            observed_seconds=p.observed_seconds,
            spent_in_window=spent,
            daily_rate=p.daily_rate,
            available=balance.available,
            cold_start=p.cold_start,
            status=p.reason,
            runs_out_at=runs_out,
            renews_at=renews,
            sentence=projection.account_sentence(p, balance.available, runs_out, renews),
            daily=[
                DailySpend(day=day, spent=spent_by_day.get(day, 0))
                for day in (since.date() + timedelta(days=i) for i in range(WINDOW.days))
            ],
            authorizations=self._authorizations(session, account, now)
            if account.kind == AccountKind.ORGANIZATION
            else [],
        )

    # ------------------------------------------------------------------ facts

    @staticmethod
    def _consumption(wallet_id: str):  # type: ignore[no-untyped-def]
        return (
            Transfer.wallet_account_id == wallet_id,
            Transfer.credit_account_id == CONSUMPTION,
            Transfer.phase.in_(SPENT_PHASES),
        )

    def _spent_by_day(self, session: Session, wallet_id: str, since: datetime) -> dict[date, int]:
        """Summed per UTC day by the database: 14 rows back, however busy the wallet."""
        if session.get_bind().dialect.name == "postgresql":
            day = func.date(func.timezone("UTC", Transfer.created_at))
        else:
            day = func.date(Transfer.created_at)  # stored as UTC text
        rows = session.execute(
            select(day, func.sum(Transfer.amount))
            .where(*self._consumption(wallet_id), Transfer.created_at >= since)
            .group_by(day)
        )
        out: dict[date, int] = defaultdict(int)
        for key, amount in rows:
            out[key if isinstance(key, date) else date.fromisoformat(str(key))] += int(amount or 0)
        return out

    def _first_spend(self, session: Session, wallet_id: str) -> datetime | None:
        first = session.execute(
            select(Transfer.created_at).where(*self._consumption(wallet_id)).order_by(Transfer.id).limit(1)
        ).scalar()
        return as_utc(first) if first is not None else None

    def _renews_at(self, session: Session, account: BillingAccount, now: datetime) -> datetime | None:
        """The next allowance: the next calendar month on a free plan, the next monthly slice of
        a paid plan."""
        from chronote_billing.plans.service import next_allowance

        return next_allowance(session, account, now, self.catalog)

    def _authorizations(
        self, session: Session, account: BillingAccount, now: datetime
    ) -> list[AuthorizationRunway]:
        from chronote_billing.accounts.service import AccountService
        from chronote_billing.orgs.models import Organization
        from chronote_billing.orgs.service import OrgService

        org = session.execute(
            select(Organization).where(Organization.billing_account_id == account.id)
        ).scalar()
        if org is None:
            return []
        orgs = OrgService(self.clock, self.ledger, AccountService(self.clock, self.ledger))
        views = orgs.list_authorizations(session, org.id)
        since = projection.window_start(now)
        month_end = month_bounds(now)[1]
        out = []
        for auth in views:
            if auth.status not in ("active", "scheduled"):
                continue
            spent, first = self._spent_under(session, auth.id, since)
            p: Pace = projection.pace(now, spent, first)
            outlook = projection.cap_outlook(now, auth.monthly_cap, auth.used, auth.held, p, month_end)
            out.append(
                AuthorizationRunway(
                    authorization_id=auth.id,
                    subject_type=auth.subject_type,
                    subject_id=auth.subject_id,
                    monthly_cap=auth.monthly_cap,
                    used=auth.used,
                    held=auth.held,
                    spent_in_window=spent,
                    daily_rate=p.daily_rate,
                    cold_start=p.cold_start,
                    status=outlook.status,
                    reaches_cap_at=outlook.reaches_cap_at,
                    sentence=projection.cap_sentence(outlook),
                )
            )
        return out

    @staticmethod
    def _spent_under(session: Session, authorization_id: str, since: datetime) -> tuple[int, datetime | None]:
        """What was charged under an authorization since `since`, and its first charge ever, from
        the usage records (indexed by authorization)."""
        when = func.coalesce(UsageRecord.finished_at, UsageRecord.created_at)
        charged = (
            UsageRecord.authorization_id == authorization_id,
            UsageRecord.charged > 0,
            UsageRecord.status.in_(("finished", "charged")),
        )
        spent = session.execute(
            select(func.coalesce(func.sum(UsageRecord.charged), 0)).where(*charged, when >= since)
        ).scalar()
        first = session.execute(select(func.min(UsageRecord.created_at)).where(*charged)).scalar()
        return int(spent or 0), as_utc(first) if first is not None else None

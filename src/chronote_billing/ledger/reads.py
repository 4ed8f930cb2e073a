"""Reads of the ledger: balances (time-aware, decision 0015), grants, holds, cap usage, the
transfer log and the economic statement (decision 0038)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from chronote_billing.core.clock import as_utc, month_key
from chronote_billing.core.errors import (
    NotFound,
    ValidationFailed,
)

from .models import CapUsage, Grant, GrantFreeze, Hold, Transfer
from .repository import _BALANCE_QUERY, _HOLD_IS_OPEN, LedgerRepository, _conn, _Wallet
from .rules import (
    GrantStatus,
    burn_order_key,
)
from .schemas import (
    BalanceView,
    CapUsageView,
    EconomicLineView,
    EconomicStatementPage,
    GrantView,
    HoldView,
    ReservedView,
    StatementLine,
    StatementPage,
)
from .statement import (
    MOVING_PHASES,
    FreezeFact,
    TransferFact,
    economic_lines,
    group_transfers,
    parse_cursor,
    signed_raw_amount,
)


class Reads(LedgerRepository):
    """Balances, grants, holds, caps and statements, read without locks."""

    def balance(self, session: Session, account_id: str) -> BalanceView:
        return self._balance(session, account_id)[0]

    def spendable(self, session: Session, account_id: str, at: datetime | None = None) -> tuple[int, bool]:
        """What the wallet can spend at ``at`` (now), and whether an expired hold or grant waits
        to be settled (decision 0015): the facts a payer decision needs of a wallet."""
        view, next_due_at = self._balance(session, account_id, at)
        return view.available, next_due_at is not None and next_due_at <= view.as_of

    def _balance(
        self, session: Session, account_id: str, at: datetime | None = None
    ) -> tuple[BalanceView, datetime | None]:
        now = at or self.clock.now()
        # The wallet's counters and its active grants in one statement (one round trip).
        rows = _conn(session).execute(_BALANCE_QUERY, {"account_id": account_id}).all()
        if not rows:
            raise NotFound(f"No billing account '{account_id}'.", account_id=account_id)
        first = rows[0]
        wallet = _Wallet(
            id=first.w_id,
            billing_account_id=account_id,
            credits_posted=first.w_credits_posted,
            debits_posted=first.w_debits_posted,
            debits_pending=first.w_debits_pending,
            next_due_at=as_utc(first.w_next_due_at) if first.w_next_due_at else None,
        )
        stale = self._stale_held_by_grant(session, wallet.id, now, wallet.next_due_at)
        grants: list[GrantView] = []
        available = frozen = 0
        for g in rows:
            if g.id is None:  # a wallet without active grants: the one row is the wallet alone
                continue
            view = self._grant_to_view(g, now, stale.get(g.id, 0))
            available += view.available
            if g.frozen_at is not None:
                frozen += g.remaining - view.held
            grants.append(view)
        grants.sort(key=lambda v: burn_order_key(v.expires_at, v.priority, v.created_at, v.id))
        balance = BalanceView(
            account_id=account_id,
            available=available,
            held=wallet.debits_pending - sum(stale.values()),
            posted=wallet.posted,
            frozen=frozen,
            grants=grants,
            as_of=now,
        )
        return balance, wallet.next_due_at

    def list_grants(self, session: Session, account_id: str, include_closed: bool = True) -> list[GrantView]:
        now = self.clock.now()
        wallet = self._wallet(session, account_id)
        stale = self._stale_held_by_grant(session, wallet.id, now, wallet.next_due_at)
        query = select(Grant).where(Grant.wallet_account_id == wallet.id)
        if not include_closed:
            query = query.where(Grant.status == GrantStatus.ACTIVE)
        rows = session.execute(query.order_by(Grant.created_at.desc(), Grant.id.desc())).scalars()
        return [self._grant_to_view(g, now, stale.get(g.id, 0)) for g in rows]

    def get_grant(self, session: Session, grant_id: str) -> GrantView:
        return self._grant_view(session, grant_id, self.clock.now())

    def get_hold(self, session: Session, hold_id: str) -> HoldView:
        return self._hold_view(session, hold_id)

    def statement(
        self, session: Session, account_id: str, limit: int = 50, starting_after: int | None = None
    ) -> StatementPage:
        if not 1 <= limit <= 500:
            raise ValidationFailed("limit must be from 1 to 500.", field="limit")
        wallet = self._wallet(session, account_id)
        query = select(*Transfer.__table__.c).where(Transfer.wallet_account_id == wallet.id)
        if starting_after is not None:
            query = query.where(Transfer.id < starting_after)
        rows = list(_conn(session).execute(query.order_by(Transfer.id.desc()).limit(limit + 1)))
        lines = [_statement_line(t, wallet.id) for t in rows[:limit]]
        has_more = len(rows) > limit
        return StatementPage(
            account_id=account_id,
            data=lines,
            has_more=has_more,
            next_cursor=lines[-1].id if has_more and lines else None,
        )

    def economic_statement(
        self, session: Session, account_id: str, limit: int = 50, starting_after: str | None = None
    ) -> EconomicStatementPage:
        """One line per economic event, newest first (decision 0038); holds in progress are
        reported beside the lines as reserved. ``starting_after``: a line id (the cursor)."""
        if not 1 <= limit <= 500:
            raise ValidationFailed("limit must be from 1 to 500.", field="limit")
        after = parse_cursor(starting_after)
        if starting_after is not None and after is None:
            raise ValidationFailed("starting_after must be a statement line id.", field="starting_after")
        wallet = self._wallet(session, account_id)
        newest = after[0] if after else None
        # Moving transfers, newest first, in chunks until limit + 1 whole events are known: the
        # oldest group of a chunk may continue in the next one, so it waits for it.
        facts: list[TransferFact] = []
        chunk = limit * 3 + 8
        lowest: int | None = None
        while True:
            query = select(*Transfer.__table__.c).where(
                Transfer.wallet_account_id == wallet.id, Transfer.phase.in_(MOVING_PHASES)
            )
            if newest is not None:
                query = query.where(Transfer.id <= newest)
            if lowest is not None:
                query = query.where(Transfer.id < lowest)
            rows = list(_conn(session).execute(query.order_by(Transfer.id.desc()).limit(chunk)))
            facts.extend(_transfer_fact(t, wallet.id) for t in rows)
            exhausted = len(rows) < chunk
            if rows:
                lowest = rows[-1].id
            groups = group_transfers(facts)
            complete = groups if exhausted else groups[:-1]
            if exhausted or len(complete) > limit:
                break
        floor = min((t.id for g in complete for t in g), default=0) if not exhausted else -1
        freeze_query = select(GrantFreeze).where(
            GrantFreeze.wallet_account_id == wallet.id, GrantFreeze.after_transfer_id >= floor
        )
        if newest is not None:
            freeze_query = freeze_query.where(GrantFreeze.after_transfer_id <= newest)
        freezes = [
            FreezeFact(
                id=f.id,
                created_at=f.created_at,
                grant_id=f.grant_id,
                frozen=f.frozen,
                amount=f.amount,
                reason=f.reason,
                balance_after=f.balance_after,
                after_transfer_id=f.after_transfer_id,
            )
            for f in session.execute(freeze_query).scalars()
        ]
        lines = [
            line
            for line in economic_lines(complete, freezes)
            if after is None or (line.position, line.rank) < after
        ]
        page = lines[:limit]
        has_more = len(lines) > limit or not exhausted
        balance = self.balance(session, account_id)
        now = self.clock.now()
        open_holds = session.execute(
            select(Hold)
            .where(Hold.wallet_account_id == wallet.id, _HOLD_IS_OPEN, Hold.expires_at > now)
            .order_by(Hold.created_at.desc(), Hold.id.desc())
        ).scalars()
        return EconomicStatementPage(
            account_id=account_id,
            available=balance.available,
            reserved=balance.held,
            in_progress=[
                ReservedView(
                    hold_id=h.id,
                    created_at=h.created_at,
                    amount=h.amount_held,
                    expires_at=h.expires_at,
                    description=h.reason,
                )
                for h in open_holds
            ],
            data=[
                EconomicLineView(
                    id=line.id,
                    created_at=line.at,
                    type=line.type,
                    amount=line.amount,
                    frozen_amount=line.frozen_amount,
                    balance_after=line.balance_after,
                    description=line.description,
                    grant_id=line.grant_id,
                    hold_id=line.hold_id,
                    debit_id=line.debit_id,
                )
                for line in page
            ],
            has_more=has_more and bool(page),
            next_cursor=page[-1].id if has_more and page else None,
        )

    def cap_usage(self, session: Session, cap_id: str, period: str) -> CapUsageView:
        row = session.get(CapUsage, (cap_id, period))
        return CapUsageView(
            cap_id=cap_id, period=period, held=row.held if row else 0, used=row.used if row else 0
        )

    def cap_usage_many(
        self, session: Session, cap_ids: Sequence[str], period: str
    ) -> dict[str, CapUsageView]:
        result = {c: CapUsageView(cap_id=c, period=period, held=0, used=0) for c in cap_ids}
        if cap_ids:
            for row in session.execute(
                select(CapUsage).where(CapUsage.cap_id.in_(list(cap_ids)), CapUsage.period == period)
            ).scalars():
                result[row.cap_id] = CapUsageView(
                    cap_id=row.cap_id, period=period, held=row.held, used=row.used
                )
        return result

    def cap_room(
        self, session: Session, cap_id: str, limit: int | None, now: datetime | None = None
    ) -> int | None:
        """Millicredits still allowed under a cap this month (None: no limit).

        Holds that ran past expiry but are not swept yet are still counted: the next write on
        the wallet settles them.
        """
        if limit is None:
            return None
        usage = self.cap_usage(session, cap_id, month_key(now or self.clock.now()))
        return max(0, limit - usage.used - usage.held)


def _transfer_fact(t: Any, wallet_id: str) -> TransferFact:
    return TransferFact(
        id=t.id,
        created_at=t.created_at,
        kind=t.kind,
        phase=t.phase,
        amount=t.amount,
        into_wallet=t.credit_account_id == wallet_id,
        balance_after=t.balance_after,
        grant_id=t.grant_id,
        hold_id=t.hold_id,
        debit_id=t.debit_id,
        reason=t.reason,
    )


def _statement_line(t: Any, wallet_id: str) -> StatementLine:
    """A line of the transfer log (operators): signed by what its phase does (decision 0038)."""
    return StatementLine(
        id=t.id,
        created_at=t.created_at,
        kind=t.kind,
        phase=t.phase,
        amount=signed_raw_amount(_transfer_fact(t, wallet_id)),
        balance_after=t.balance_after,
        grant_id=t.grant_id,
        hold_id=t.hold_id,
        debit_id=t.debit_id,
        reason=t.reason,
    )

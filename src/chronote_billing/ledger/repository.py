"""The ledger's SQL: wallets (locked or not), lots, transfers, counters, cap usage and the
views built from their rows. The operations (grants, holds, debits, expiry, reads) build on
:class:`LedgerRepository`; statements on the hot path go straight to the session's connection,
skipping the ORM."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, literal_column, select, update
from sqlalchemy.orm import Session

from chronote_billing.core.clock import Clock, as_utc
from chronote_billing.core.errors import (
    NotFound,
)
from chronote_billing.core.ids import new_id

from .models import CapUsage, Grant, Hold, LedgerAccount, Transfer
from .rules import (
    GrantStatus,
    Lot,
    Phase,
    SystemAccount,
    lot_order_key,
    shown_grant_status,
)
from .schemas import (
    GrantView,
    HoldView,
)

SYSTEM_ACCOUNTS = tuple(SystemAccount)


@dataclass
class _Wallet:
    id: str
    billing_account_id: str
    credits_posted: int
    debits_posted: int
    debits_pending: int
    next_due_at: datetime | None

    @property
    def posted(self) -> int:
        return self.credits_posted - self.debits_posted


class LedgerRepository:
    """Rows and statements the ledger's operations share."""

    clock: Clock
    db_functions: bool

    def ensure_system_accounts(self, session: Session) -> dict[str, str]:
        existing = dict(
            session.execute(
                select(LedgerAccount.system_code, LedgerAccount.id).where(LedgerAccount.kind == "system")
            ).all()
        )
        for code in SYSTEM_ACCOUNTS:
            if code not in existing:
                account_id = f"la_system_{code}"
                session.execute(
                    insert(LedgerAccount).values(
                        id=account_id,
                        kind="system",
                        system_code=code,
                        credits_posted=0,
                        debits_posted=0,
                        debits_pending=0,
                        created_at=self.clock.now(),
                    )
                )
                existing[code] = account_id
        return {str(k): v for k, v in existing.items()}

    def open_wallet(self, session: Session, billing_account_id: str) -> str:
        self.ensure_system_accounts(session)
        wallet_id = new_id("la")
        session.execute(
            insert(LedgerAccount).values(
                id=wallet_id,
                kind="wallet",
                billing_account_id=billing_account_id,
                credits_posted=0,
                debits_posted=0,
                debits_pending=0,
                created_at=self.clock.now(),
            )
        )
        return wallet_id

    @staticmethod
    def system_account_id(code: str) -> str:
        return f"la_system_{code}"

    def lock_wallet(self, session: Session, account_id: str) -> None:
        """Take an account's wallet lock, as every ledger write does first: work that reads a
        balance or decides whether to write (a payer choice, a purchase not yet recorded) and
        the write it leads to then form one step."""
        self._lock_wallet(session, account_id)

    def _wallet(
        self, session: Session, account_id: str | None = None, lock: bool = False, hold_id: str | None = None
    ) -> _Wallet:
        """The wallet of an account, or of the account a hold belongs to."""
        query = select(
            LedgerAccount.id,
            LedgerAccount.billing_account_id,
            LedgerAccount.credits_posted,
            LedgerAccount.debits_posted,
            LedgerAccount.debits_pending,
            LedgerAccount.next_due_at,
        )
        if hold_id is not None:
            query = query.join(Hold, Hold.wallet_account_id == LedgerAccount.id).where(Hold.id == hold_id)
        else:
            query = query.where(LedgerAccount.billing_account_id == account_id)
        if lock:
            query = query.with_for_update(of=LedgerAccount)
        row = _conn(session).execute(query).first()
        if row is None and hold_id is not None:
            raise NotFound(f"No hold '{hold_id}'.", hold_id=hold_id)
        if row is None:
            raise NotFound(f"No billing account '{account_id}'.", account_id=account_id)
        return _Wallet(
            id=row.id,
            billing_account_id=row.billing_account_id,
            credits_posted=row.credits_posted,
            debits_posted=row.debits_posted,
            debits_pending=row.debits_pending,
            next_due_at=as_utc(row.next_due_at) if row.next_due_at else None,
        )

    def _lock_wallet(self, session: Session, account_id: str) -> _Wallet:
        return self._wallet(session, account_id, lock=True)

    def _lock_hold(self, session: Session, hold_id: str) -> tuple[_Wallet, Hold]:
        # The hold's wallet, locked in the same statement (a hold never changes wallet); the hold
        # itself is read after the lock, so it reflects every write that held the lock before.
        wallet = self._wallet(session, hold_id=hold_id, lock=True)
        hold = session.execute(
            select(Hold).where(Hold.id == hold_id).execution_options(populate_existing=True)
        ).scalar_one()
        return wallet, hold

    def _lots(
        self,
        session: Session,
        wallet_id: str,
        spendable_at: datetime | None = None,
        ids: Sequence[str] | None = None,
    ) -> list[Lot]:
        query = select(
            Grant.id, Grant.remaining, Grant.held, Grant.priority, Grant.expires_at, Grant.created_at
        ).where(Grant.wallet_account_id == wallet_id)
        if ids is not None:
            query = query.where(Grant.id.in_(list(ids)))
        else:
            query = query.where(Grant.status == GrantStatus.ACTIVE)
        if spendable_at is not None:
            query = query.where(
                Grant.frozen_at.is_(None),
                Grant.effective_at <= spendable_at,
                (Grant.expires_at.is_(None)) | (Grant.expires_at > spendable_at),
            )
        lots = [
            Lot(
                id=r.id,
                remaining=r.remaining,
                held=r.held,
                priority=r.priority,
                expires_at=as_utc(r.expires_at) if r.expires_at else None,
                created_at=as_utc(r.created_at),
            )
            for r in _conn(session).execute(query)
        ]
        lots.sort(key=lot_order_key)
        return lots

    def _stale_held_by_grant(
        self, session: Session, wallet_id: str, now: datetime, next_due_at: Any = ...
    ) -> dict[str, int]:
        """Held amounts of open holds past their expiry (not swept yet), per grant.

        ``next_due_at``: the wallet's, when the caller has it. It is never later than any open
        hold's expiry, so while it lies in the future no hold can be stale and nothing is read.
        """
        if next_due_at is None or (isinstance(next_due_at, datetime) and next_due_at > now):
            return {}
        rows = (
            _conn(session)
            .execute(
                select(Transfer.grant_id, func.sum(Transfer.amount))
                .join(Hold, Hold.id == Transfer.hold_id)
                .where(
                    Hold.wallet_account_id == wallet_id,
                    _HOLD_IS_OPEN,
                    Hold.expires_at <= now,
                    Transfer.phase == Phase.PENDING,
                )
                .group_by(Transfer.grant_id)
            )
            .all()
        )
        return {r[0]: int(r[1]) for r in rows}

    def _bump_cap(self, session: Session, cap_id: str, period: str, held: int = 0, used: int = 0) -> None:
        changed = (
            _conn(session)
            .execute(
                update(CapUsage)
                .where(CapUsage.cap_id == cap_id, CapUsage.period == period)
                .values(held=CapUsage.held + held, used=CapUsage.used + used)
            )
            .rowcount
        )  # type: ignore[attr-defined]
        if not changed:
            _conn(session).execute(
                insert(CapUsage).values(cap_id=cap_id, period=period, held=held, used=used)
            )

    def _transfer(
        self,
        now: datetime,
        *,
        debit: str,
        credit: str,
        wallet: _Wallet,
        amount: int,
        phase: str,
        kind: str,
        grant_id: str,
        reason: str,
        hold_id: str | None = None,
        debit_id: str | None = None,
        pending_id: int | None = None,
    ) -> dict[str, Any]:
        # Pending and void rows do not move posted balances; the running balance is the wallet's
        # posted balance after the counters above were applied by the caller.
        return {
            "debit_account_id": debit,
            "credit_account_id": credit,
            "wallet_account_id": wallet.id,
            "amount": amount,
            "phase": phase,
            "pending_id": pending_id,
            "kind": kind,
            "grant_id": grant_id,
            "hold_id": hold_id,
            "debit_id": debit_id,
            "balance_after": wallet.posted,
            "reason": reason[:500],
            "created_at": now,
        }

    @staticmethod
    def _insert_transfers(session: Session, rows: list[dict[str, Any]]) -> None:
        if rows:
            _conn(session).execute(insert(Transfer), rows)

    @staticmethod
    def _save_lots(session: Session, lots: Sequence[Lot]) -> None:
        for lot in lots:
            _conn(session).execute(
                update(Grant)
                .where(Grant.id == lot.id)
                .values(
                    remaining=lot.remaining,
                    held=lot.held,
                    status=GrantStatus.ACTIVE if lot.remaining > 0 else GrantStatus.CLOSED,
                )
            )

    @staticmethod
    def _save_wallet(session: Session, wallet: _Wallet) -> None:
        _conn(session).execute(
            update(LedgerAccount)
            .where(LedgerAccount.id == wallet.id)
            .values(
                credits_posted=wallet.credits_posted,
                debits_posted=wallet.debits_posted,
                debits_pending=wallet.debits_pending,
                next_due_at=wallet.next_due_at,
            )
        )

    def _grant_view(self, session: Session, grant_id: str, now: datetime) -> GrantView:
        grant = session.execute(
            select(Grant).where(Grant.id == grant_id).execution_options(populate_existing=True)
        ).scalar()
        if grant is None:
            raise NotFound(f"No grant '{grant_id}'.", grant_id=grant_id)
        stale = self._stale_held_by_grant(session, grant.wallet_account_id, now)
        return self._grant_to_view(grant, now, stale.get(grant.id, 0))

    @staticmethod
    def _grant_to_view(g: Any, now: datetime, stale_held: int) -> GrantView:
        """``g``: a Grant, or a row with its columns."""
        held = g.held - stale_held
        spendable = (
            g.status == GrantStatus.ACTIVE
            and g.frozen_at is None
            and g.effective_at <= now
            and (g.expires_at is None or g.expires_at > now)
        )
        return GrantView(
            id=g.id,
            account_id=g.billing_account_id,
            source=g.source,
            amount=g.amount,
            remaining=g.remaining,
            held=held,
            available=(g.remaining - held) if spendable else 0,
            priority=g.priority,
            effective_at=g.effective_at,
            expires_at=g.expires_at,
            frozen=g.frozen_at is not None,
            status=str(shown_grant_status(g.status, g.expires_at, now)),
            cause_type=g.cause_type,
            cause_id=g.cause_id,
            description=g.description,
            created_at=g.created_at,
        )

    def _hold_view(self, session: Session, hold_id: str) -> HoldView:
        hold = session.execute(
            select(Hold).where(Hold.id == hold_id).execution_options(populate_existing=True)
        ).scalar()
        if hold is None:
            raise NotFound(f"No hold '{hold_id}'.", hold_id=hold_id)
        return self._hold_to_view(hold)

    @staticmethod
    def _hold_to_view(hold: Hold) -> HoldView:
        return HoldView(
            id=hold.id,
            account_id=hold.billing_account_id,
            status=hold.status,
            amount_requested=hold.amount_requested,
            amount_held=hold.amount_held,
            amount_captured=hold.amount_captured,
            partial=hold.amount_held < hold.amount_requested,
            expires_at=hold.expires_at,
            reason=hold.reason,
            metadata=dict(hold.metadata_ or {}),
            cap_id=hold.cap_id,
            cap_period=hold.cap_period,
            created_at=hold.created_at,
            settled_at=hold.settled_at,
        )


def _conn(session: Session) -> Connection:
    """The session's connection: statements on the hot path skip the ORM layer."""
    return session.connection()


# Built once: a balance read is on the hot path and statement construction costs more than the
# compiled-statement cache saves.
_BALANCE_QUERY = (
    select(
        LedgerAccount.id.label("w_id"),
        LedgerAccount.credits_posted.label("w_credits_posted"),
        LedgerAccount.debits_posted.label("w_debits_posted"),
        LedgerAccount.debits_pending.label("w_debits_pending"),
        LedgerAccount.next_due_at.label("w_next_due_at"),
        *Grant.__table__.c,
    )
    .select_from(LedgerAccount)
    .outerjoin(Grant, (Grant.wallet_account_id == LedgerAccount.id) & (Grant.status == GrantStatus.ACTIVE))
    .where(LedgerAccount.billing_account_id == bindparam("account_id"))
)

# Written as a literal so that both databases match it to the partial index of open holds (a
# bound parameter would not prove the index's condition in a generic or SQLite plan).
_HOLD_IS_OPEN = Hold.status == literal_column("'open'")

"""Settling what fell due on a wallet (decision 0015, docs/ledger.md): closing a hold (capture,
release or expiry all void or post its pending transfers), moving expired grant remainders to
breakage, the wallet's next due time, and the sweep of idle wallets."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from chronote_billing.core.clock import as_utc

from .models import Grant, Hold, LedgerAccount, Transfer
from .repository import _HOLD_IS_OPEN, LedgerRepository, _conn, _Wallet
from .rules import (
    GrantStatus,
    HoldStatus,
    Lot,
    Phase,
    SystemAccount,
    TransferKind,
    burn_order_key,
    earliest,
    lot_has_expired,
    split_capture,
    void_kind,
)


class Settling(LedgerRepository):
    """Settling what fell due, and closing a hold, on a locked wallet."""

    def sweep(self, session: Session, account_id: str) -> int:
        """Settle what has fallen due on one wallet; returns the number of items settled."""
        wallet = self._lock_wallet(session, account_id)
        settled = self._settle_due(session, wallet, self.clock.now(), force=True)
        self._save_wallet(session, wallet)
        return settled

    def wallets_due(self, session: Session, limit: int = 500) -> list[str]:
        now = self.clock.now()
        rows = session.execute(
            select(LedgerAccount.billing_account_id)
            .where(LedgerAccount.kind == "wallet", LedgerAccount.next_due_at <= now)
            .order_by(LedgerAccount.next_due_at)
            .limit(limit)
        ).scalars()
        return [r for r in rows if r]

    def _settle_due(self, session: Session, wallet: _Wallet, now: datetime, force: bool = False) -> int:
        """Void expired holds and move expired grant remainders to breakage on this wallet."""
        if not force and (wallet.next_due_at is None or wallet.next_due_at > now):
            return 0
        settled = 0
        expired_holds = session.execute(
            select(Hold)
            .where(Hold.wallet_account_id == wallet.id, _HOLD_IS_OPEN, Hold.expires_at <= now)
            .execution_options(populate_existing=True)
        ).scalars()
        for hold in list(expired_holds):
            self._resolve_hold(session, wallet, hold, 0, HoldStatus.EXPIRED, now, "hold expired unsettled")
            settled += 1
        lots = [lot for lot in self._lots(session, wallet.id) if lot_has_expired(lot, now)]
        if lots:
            self._insert_transfers(session, [self._expire_lot(wallet, lot, now) for lot in lots])
            self._save_lots(session, lots)
            settled += len(lots)
        next_hold = (
            _conn(session)
            .execute(
                select(func.min(Hold.expires_at)).where(Hold.wallet_account_id == wallet.id, _HOLD_IS_OPEN)
            )
            .scalar()
        )
        next_grant = (
            _conn(session)
            .execute(
                select(func.min(Grant.expires_at)).where(
                    Grant.wallet_account_id == wallet.id,
                    Grant.status == GrantStatus.ACTIVE,
                    Grant.expires_at > now,
                )
            )
            .scalar()
        )
        wallet.next_due_at = earliest(
            as_utc(next_hold) if next_hold else None, as_utc(next_grant) if next_grant else None
        )
        return settled

    def _expire_lot(self, wallet: _Wallet, lot: Lot, now: datetime) -> dict[str, Any]:
        amount = lot.free
        lot.remaining -= amount
        wallet.debits_posted += amount
        return self._transfer(
            now,
            debit=wallet.id,
            credit=self.system_account_id(SystemAccount.BREAKAGE),
            wallet=wallet,
            amount=amount,
            phase=Phase.POSTED,
            kind=TransferKind.EXPIRY,
            grant_id=lot.id,
            reason=f"expired credits (expired {lot.expires_at:%Y-%m-%d %H:%M} UTC)"
            if lot.expires_at
            else "expired credits",
        )

    def _resolve_hold(
        self,
        session: Session,
        wallet: _Wallet,
        hold: Hold,
        capture: int,
        status: HoldStatus,
        now: datetime,
        reason: str | None,
    ) -> None:
        pending = (
            _conn(session)
            .execute(
                select(Transfer.id, Transfer.amount, Transfer.grant_id).where(
                    Transfer.hold_id == hold.id, Transfer.phase == Phase.PENDING
                )
            )
            .all()
        )
        lots = {
            lot.id: lot for lot in self._lots(session, wallet.id, ids=sorted({p.grant_id for p in pending}))
        }
        ordered = sorted(
            pending,
            key=lambda p: (
                burn_order_key(
                    lots[p.grant_id].expires_at,
                    lots[p.grant_id].priority,
                    lots[p.grant_id].created_at,
                    p.grant_id,
                ),
                p.id,
            ),
        )
        transfers = []
        label = reason or hold.reason
        takes = split_capture(capture, [p.amount for p in ordered])
        for p, take in zip(ordered, takes, strict=True):
            lot = lots[p.grant_id]
            lot.held -= p.amount
            lot.remaining -= take
            wallet.debits_pending -= p.amount
            wallet.debits_posted += take
            if take > 0:
                transfers.append(
                    self._transfer(
                        now,
                        debit=wallet.id,
                        credit=self.system_account_id(SystemAccount.CONSUMPTION),
                        wallet=wallet,
                        amount=take,
                        phase=Phase.POST,
                        pending_id=p.id,
                        kind=TransferKind.CAPTURE,
                        grant_id=p.grant_id,
                        hold_id=hold.id,
                        reason=label or "capture",
                    )
                )
            else:
                transfers.append(
                    self._transfer(
                        now,
                        debit=wallet.id,
                        credit=self.system_account_id(SystemAccount.CONSUMPTION),
                        wallet=wallet,
                        amount=p.amount,
                        phase=Phase.VOID,
                        pending_id=p.id,
                        kind=void_kind(status),
                        grant_id=p.grant_id,
                        hold_id=hold.id,
                        reason=label or status,
                    )
                )
        # Part of a grant that expired while this hold reserved it is now free: it is breakage.
        for lot in lots.values():
            if lot_has_expired(lot, now):
                transfers.append(self._expire_lot(wallet, lot, now))
        self._insert_transfers(session, transfers)
        self._save_lots(session, list(lots.values()))
        _conn(session).execute(
            update(Hold)
            .where(Hold.id == hold.id)
            .values(status=status, amount_captured=capture, settled_at=now)
        )
        if hold.cap_id and hold.cap_period:
            self._bump_cap(session, hold.cap_id, hold.cap_period, held=-hold.amount_held, used=capture)

"""What holds and debits share: approval under the wallet's credits and the cap (the rule is
``rules.approve``), drawing lots in burn order, the refusals of a hold that is no longer open,
and running a write through the PostgreSQL fast path or the Python path."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from chronote_billing.core.clock import month_key
from chronote_billing.core.db import Database
from chronote_billing.core.errors import (
    CapReached,
    Conflict,
    HoldAlreadySettled,
    HoldExpired,
    InsufficientCredits,
)

from .checks import CapSpec
from .expiry import Settling
from .fast_path import _FUNCTION_SQL, _FUNCTION_STATEMENTS, _LedgerWrite
from .models import CapUsage, Hold
from .repository import _conn, _Wallet
from .rules import (
    HoldStatus,
    Lot,
    Phase,
    Refusal,
    SystemAccount,
    approve,
    draw,
    hold_refusal,
)


class Spending(Settling):
    """Approval and drawing for holds and debits, and how a planned write runs."""

    @staticmethod
    def _check_open(hold: Hold, now: datetime, action: str) -> None:
        refusal = hold_refusal(hold.status, hold.expires_at, now)
        if refusal == HoldStatus.EXPIRED:
            raise HoldExpired(
                f"Cannot {action} hold '{hold.id}': it expired at {hold.expires_at.isoformat()}.",
                hold_id=hold.id,
                expired_at=hold.expires_at.isoformat(),
            )
        if refusal is not None:
            raise HoldAlreadySettled(
                f"Cannot {action} hold '{hold.id}': it is already {hold.status}.",
                hold_id=hold.id,
                status=hold.status,
            )

    def _approvable(
        self,
        session: Session,
        wallet: _Wallet,
        lots: list[Lot],
        amount: int,
        allow_partial: bool,
        cap: CapSpec | None,
        now: datetime,
        cap_period: str | None = None,
    ) -> int:
        available = sum(lot.free for lot in lots)
        room: int | None = None
        if cap is not None and cap.limit is not None:
            period = cap_period or month_key(now)
            usage = (
                _conn(session)
                .execute(
                    select(CapUsage.held, CapUsage.used)
                    .where(CapUsage.cap_id == cap.cap_id, CapUsage.period == period)
                    .with_for_update()
                )
                .first()
            )
            room = max(0, cap.limit - ((usage.held + usage.used) if usage else 0))
        decision = approve(amount, available, room, allow_partial)
        if not isinstance(decision, Refusal):
            return decision
        if decision == Refusal.CAP_REACHED:
            raise CapReached(
                f"The spend cap allows {room} more millicredits this month; {amount} were requested.",
                requested=amount,
                cap_remaining=room,
                available=available,
                cap_id=cap.cap_id if cap else None,
            )
        raise InsufficientCredits(
            f"The wallet has {available} millicredits available; {amount} were requested.",
            requested=amount,
            available=available,
            cap_remaining=room,
        )

    def _reserve(
        self,
        wallet: _Wallet,
        lots: list[Lot],
        amount: int,
        hold_id: str,
        kind: str,
        reason: str,
        now: datetime,
    ) -> tuple[list[tuple[Lot, int]], list[dict[str, Any]]]:
        """Draw ``amount`` from the lots in burn order as pending transfers of one hold."""
        draws = _draw(lots, amount)
        transfers = []
        for lot, take in draws:
            lot.held += take
            transfers.append(
                self._transfer(
                    now,
                    debit=wallet.id,
                    credit=self.system_account_id(SystemAccount.CONSUMPTION),
                    wallet=wallet,
                    amount=take,
                    phase=Phase.PENDING,
                    kind=kind,
                    grant_id=lot.id,
                    hold_id=hold_id,
                    reason=reason,
                )
            )
        wallet.debits_pending += amount
        return draws, transfers

    def _run(self, session: Session, write: _LedgerWrite) -> Any:
        """Inside the caller's transaction: the database function first, else the Python path."""
        if self.db_functions and _conn(session).dialect.name == "postgresql":
            done = _conn(session).exec_driver_sql(_FUNCTION_SQL[write.function], write.driver_args()).scalar()
            if done is not None:
                return write.result_type.model_validate(done)
        return write.python(session)

    def _commit(self, db: Database, write: _LedgerWrite, group: str | None) -> Any:
        if self.db_functions and db.dialect == "postgresql":
            done = db.run_autocommit(_FUNCTION_STATEMENTS[write.function], write.text_args(), group=group)
            if done is not None:
                return write.result_type.model_validate_json(done)
        # Declined (nothing was written): the Python path, in a transaction, answers.
        return db.write(write.python)


def _draw(lots: list[Lot], amount: int) -> list[tuple[Lot, int]]:
    """Split ``amount`` over lots in burn order (lots are already sorted); the caller approved
    the amount under the wallet's lock, so a shortfall means the wallet changed meanwhile."""
    draws = draw(lots, amount)
    if draws is None:
        raise Conflict("The wallet changed while the hold was being placed.")
    return draws

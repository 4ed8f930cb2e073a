"""One-step debits: charge at once, all or nothing, in burn order."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from chronote_billing.core import idempotency
from chronote_billing.core.clock import month_key
from chronote_billing.core.db import Database
from chronote_billing.core.ids import new_id

from .checks import CapSpec, _check_amount
from .fast_path import _LedgerWrite
from .models import Debit
from .repository import _conn
from .rules import (
    Phase,
    SystemAccount,
    TransferKind,
)
from .schemas import (
    DebitView,
)
from .spending import Spending, _draw


class Debits(Spending):
    """One-step debits."""

    def debit(
        self,
        session: Session,
        *,
        account_id: str,
        amount: int,
        idempotency_key: str,
        reason: str = "",
        metadata: dict[str, Any] | None = None,
        cap: CapSpec | None = None,
    ) -> DebitView:
        """Charge at once (a metered event): all or nothing."""
        return self._run(
            session,
            self.plan_debit(
                account_id=account_id,
                amount=amount,
                idempotency_key=idempotency_key,
                reason=reason,
                metadata=metadata,
                cap=cap,
            ),
        )

    def plan_debit(
        self,
        *,
        account_id: str,
        amount: int,
        idempotency_key: str,
        reason: str = "",
        metadata: dict[str, Any] | None = None,
        cap: CapSpec | None = None,
    ) -> _LedgerWrite:
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        _check_amount(amount)
        metadata = dict(metadata or {})
        params = {
            "account_id": account_id,
            "amount": amount,
            "cap_id": cap.cap_id if cap else None,
            "cap_limit": cap.limit if cap else None,
            "metadata": metadata,
            "reason": reason,
        }
        debit_id = new_id("deb")
        period = month_key(now) if cap else None
        view = DebitView(
            id=debit_id,
            account_id=account_id,
            amount=amount,
            reason=reason,
            metadata=metadata,
            cap_id=cap.cap_id if cap else None,
            cap_period=period,
            created_at=now,
        )

        def python(session: Session) -> DebitView:
            wallet = self._lock_wallet(session, account_id)
            prior = idempotency.lookup(session, f"ledger.debit:{account_id}", key, params)
            if prior is not None:
                return DebitView.model_validate(prior)
            self._settle_due(session, wallet, now)
            lots = self._lots(session, wallet.id, spendable_at=now)
            self._approvable(session, wallet, lots, amount, False, cap, now)
            draws = _draw(lots, amount)
            transfers = []
            for lot, take in draws:
                lot.remaining -= take
                wallet.debits_posted += take
                transfers.append(
                    self._transfer(
                        now,
                        debit=wallet.id,
                        credit=self.system_account_id(SystemAccount.CONSUMPTION),
                        wallet=wallet,
                        amount=take,
                        phase=Phase.POSTED,
                        kind=TransferKind.DEBIT,
                        grant_id=lot.id,
                        debit_id=debit_id,
                        reason=reason or "debit",
                    )
                )
            _conn(session).execute(
                insert(Debit).values(
                    id=debit_id,
                    wallet_account_id=wallet.id,
                    billing_account_id=account_id,
                    amount=amount,
                    reason=reason,
                    metadata=metadata,
                    cap_id=cap.cap_id if cap else None,
                    cap_period=period,
                    created_at=now,
                )
            )
            self._insert_transfers(session, transfers)
            self._save_lots(session, [lot for lot, _ in draws])
            if cap is not None and period is not None:
                self._bump_cap(session, cap.cap_id, period, used=amount)
            self._save_wallet(session, wallet)
            idempotency.remember(
                session,
                f"ledger.debit:{account_id}",
                key,
                params,
                view.model_dump(mode="json"),
                now,
                debit_id,
            )
            return view

        return _LedgerWrite(
            "ledger_try_debit",
            dict(
                account=account_id,
                amount=amount,
                now=now,
                cap_id=cap.cap_id if cap else None,
                cap_limit=cap.limit if cap else None,
                cap_period=period,
                scope=f"ledger.debit:{account_id}",
                key=key,
                hash=idempotency.request_fingerprint(params),
                result=view,
                debit_id=debit_id,
                reason=reason,
                metadata=metadata,
                transfer_reason=(reason or "debit")[:500],
            ),
            DebitView,
            python,
        )

    def commit_debit(self, db: Database, **request: Any) -> DebitView:
        """``debit`` in a transaction of its own, committed before it returns."""
        return self._commit(db, self.plan_debit(**request), group=request["account_id"])  # type: ignore[no-any-return]

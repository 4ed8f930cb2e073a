"""Grants: issuing one (credits into a wallet), reversing part of one (a refund, a lost dispute,
a correction) and freezing one (a dispute in progress)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from chronote_billing.core import idempotency
from chronote_billing.core.clock import as_utc
from chronote_billing.core.errors import (
    NotFound,
    ValidationFailed,
)
from chronote_billing.core.ids import new_id

from .checks import GRANT_SOURCES, _check_amount
from .expiry import Settling
from .models import Grant, GrantFreeze, Transfer
from .repository import _conn
from .rules import (
    GrantStatus,
    Phase,
    SystemAccount,
    TransferKind,
    earliest,
)
from .schemas import (
    GrantView,
    ReversalView,
)


class Grants(Settling):
    """Grant issuance, reversal and freezing."""

    def issue_grant(
        self,
        session: Session,
        *,
        account_id: str,
        amount: int,
        source: str,
        idempotency_key: str,
        cause_type: str,
        cause_id: str | None = None,
        priority: int = 50,
        effective_at: datetime | None = None,
        expires_at: datetime | None = None,
        description: str = "",
    ) -> GrantView:
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        _check_amount(amount)
        if source not in GRANT_SOURCES:
            raise ValidationFailed(
                f"Unknown grant source '{source}'; expected one of {', '.join(GRANT_SOURCES)}.",
                field="source",
            )
        if isinstance(priority, bool) or not isinstance(priority, int) or not 0 <= priority <= 100:
            raise ValidationFailed("priority must be a whole number from 0 to 100.", field="priority")
        effective = as_utc(effective_at) if effective_at else now
        expires = as_utc(expires_at) if expires_at else None
        if expires is not None and effective_at is not None and expires <= effective:
            raise ValidationFailed("A grant must expire after it becomes effective.", field="expires_at")
        params = {
            "account_id": account_id,
            "amount": amount,
            "source": source,
            "cause_type": cause_type,
            "cause_id": cause_id,
            "priority": priority,
            "effective_at": effective.isoformat() if effective_at else None,
            "expires_at": expires.isoformat() if expires else None,
        }
        wallet = self._lock_wallet(session, account_id)
        prior = idempotency.lookup(session, f"ledger.grant:{account_id}", key, params)
        if prior is not None:
            return GrantView.model_validate(prior)
        # Checked after the key: a retry returns the first result however late it comes.
        if expires is not None and expires <= now:
            raise ValidationFailed("A grant cannot expire in the past.", field="expires_at")
        self._settle_due(session, wallet, now)

        grant_id = new_id("grt")
        _conn(session).execute(
            insert(Grant).values(
                id=grant_id,
                wallet_account_id=wallet.id,
                billing_account_id=account_id,
                source=source,
                amount=amount,
                remaining=amount,
                held=0,
                priority=priority,
                effective_at=effective,
                expires_at=expires,
                frozen_at=None,
                status=GrantStatus.ACTIVE,
                cause_type=cause_type,
                cause_id=cause_id,
                description=description,
                created_at=now,
            )
        )
        wallet.credits_posted += amount
        self._insert_transfers(
            session,
            [
                self._transfer(
                    now,
                    debit=self.system_account_id(SystemAccount.ISSUANCE),
                    credit=wallet.id,
                    wallet=wallet,
                    amount=amount,
                    phase=Phase.POSTED,
                    kind=TransferKind.GRANT,
                    grant_id=grant_id,
                    reason=description or f"{source.replace('_', ' ')} grant",
                )
            ],
        )
        if expires is not None:
            wallet.next_due_at = earliest(wallet.next_due_at, expires)
        self._save_wallet(session, wallet)
        view = self._grant_view(session, grant_id, now)
        idempotency.remember(
            session, f"ledger.grant:{account_id}", key, params, view.model_dump(mode="json"), now, grant_id
        )
        return view

    def reverse_grant(
        self,
        session: Session,
        *,
        grant_id: str,
        amount: int,
        idempotency_key: str,
        reason: str,
        kind: str = TransferKind.REVERSAL,
    ) -> ReversalView:
        """Take back up to ``amount`` of a grant's unspent, unheld credits (a refund, a correction).

        Never overdraws: what was spent or is held stays; the result says how much was reversed.
        """
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        _check_amount(amount)
        params = {"grant_id": grant_id, "amount": amount, "kind": kind}
        grant_row = session.get(Grant, grant_id)
        if grant_row is None:
            raise NotFound(f"No grant '{grant_id}'.", grant_id=grant_id)
        wallet = self._lock_wallet(session, grant_row.billing_account_id)
        prior = idempotency.lookup(session, f"ledger.reverse_grant:{wallet.billing_account_id}", key, params)
        if prior is not None:
            return ReversalView.model_validate(prior)
        self._settle_due(session, wallet, now)
        lot = self._lots(session, wallet.id, ids=[grant_id])[0]
        take = min(amount, lot.free)
        if take > 0:
            lot.remaining -= take
            wallet.debits_posted += take
            self._insert_transfers(
                session,
                [
                    self._transfer(
                        now,
                        debit=wallet.id,
                        credit=self.system_account_id(SystemAccount.REVERSAL),
                        wallet=wallet,
                        amount=take,
                        phase=Phase.POSTED,
                        kind=kind,
                        grant_id=grant_id,
                        reason=reason,
                    )
                ],
            )
            self._save_lots(session, [lot])
        # Saved even when nothing was reversed: settling above may have moved the counters.
        self._save_wallet(session, wallet)
        view = ReversalView(
            grant_id=grant_id,
            account_id=wallet.billing_account_id,
            requested=amount,
            reversed=take,
            remaining=lot.remaining,
            kind=kind,
        )
        idempotency.remember(
            session,
            f"ledger.reverse_grant:{wallet.billing_account_id}",
            key,
            params,
            view.model_dump(mode="json"),
            now,
        )
        return view

    def set_grant_frozen(
        self, session: Session, *, grant_id: str, frozen: bool, idempotency_key: str, reason: str = ""
    ) -> GrantView:
        """Freeze (a dispute) or unfreeze a grant: frozen credit cannot back new holds or debits."""
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        params = {"grant_id": grant_id, "frozen": frozen}
        grant_row = session.get(Grant, grant_id)
        if grant_row is None:
            raise NotFound(f"No grant '{grant_id}'.", grant_id=grant_id)
        self._lock_wallet(session, grant_row.billing_account_id)
        prior = idempotency.lookup(
            session, f"ledger.freeze_grant:{grant_row.billing_account_id}", key, params
        )
        if prior is not None:
            return GrantView.model_validate(prior)
        was_frozen = grant_row.frozen_at is not None
        session.execute(update(Grant).where(Grant.id == grant_id).values(frozen_at=now if frozen else None))
        session.expire_all()
        view = self._grant_view(session, grant_id, now)
        if was_frozen != frozen:
            self._record_freeze(session, view, frozen, reason, now)
        idempotency.remember(
            session,
            f"ledger.freeze_grant:{grant_row.billing_account_id}",
            key,
            params,
            view.model_dump(mode="json"),
            now,
        )
        return view

    def _record_freeze(
        self, session: Session, grant: GrantView, frozen: bool, reason: str, now: datetime
    ) -> None:
        wallet = self._wallet(session, grant.account_id)
        newest = (
            _conn(session)
            .execute(select(func.max(Transfer.id)).where(Transfer.wallet_account_id == wallet.id))
            .scalar()
        )
        _conn(session).execute(
            insert(GrantFreeze).values(
                wallet_account_id=wallet.id,
                grant_id=grant.id,
                frozen=frozen,
                amount=max(0, grant.remaining - grant.held),
                reason=reason[:500],
                after_transfer_id=int(newest or 0),
                balance_after=wallet.posted,
                created_at=now,
            )
        )

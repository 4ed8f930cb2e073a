"""Two-phase holds (decision 0006, docs/ledger.md): place, extend, capture (posts the used part,
voids the rest) and release. Each write is planned once and runs as the PostgreSQL function or
the Python path."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, update
from sqlalchemy.orm import Session

from chronote_billing.core import idempotency
from chronote_billing.core.clock import month_key
from chronote_billing.core.db import Database
from chronote_billing.core.errors import (
    HoldAlreadySettled,
    ValidationFailed,
)
from chronote_billing.core.ids import new_id

from .checks import CapSpec, CaptureExceedsHold, _check_amount, _expiry
from .fast_path import _LedgerWrite
from .models import Hold
from .repository import _conn
from .rules import (
    HoldStatus,
    TransferKind,
    earliest,
    hold_closing_status,
)
from .schemas import (
    HoldView,
)
from .spending import Spending


class Holds(Spending):
    """Place, extend, capture and release a hold."""

    def place_hold(
        self,
        session: Session,
        *,
        account_id: str,
        amount: int,
        idempotency_key: str,
        expires_at: datetime | None = None,
        ttl_seconds: int | None = None,
        allow_partial: bool = False,
        reason: str = "",
        metadata: dict[str, Any] | None = None,
        cap: CapSpec | None = None,
    ) -> HoldView:
        return self._run(
            session,
            self.plan_place_hold(
                account_id=account_id,
                amount=amount,
                expires_at=expires_at,
                ttl_seconds=ttl_seconds,
                idempotency_key=idempotency_key,
                allow_partial=allow_partial,
                reason=reason,
                metadata=metadata,
                cap=cap,
            ),
        )

    def plan_place_hold(
        self,
        *,
        account_id: str,
        amount: int,
        idempotency_key: str,
        expires_at: datetime | None = None,
        ttl_seconds: int | None = None,
        allow_partial: bool = False,
        reason: str = "",
        metadata: dict[str, Any] | None = None,
        cap: CapSpec | None = None,
    ) -> _LedgerWrite:
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        _check_amount(amount)
        expires, expiry_as_sent = _expiry(now, expires_at, ttl_seconds)
        if expires is None:
            raise ValidationFailed("A hold needs expires_at or ttl_seconds.", field="expires_at")
        metadata = dict(metadata or {})
        params = {
            "account_id": account_id,
            "amount": amount,
            "allow_partial": allow_partial,
            **expiry_as_sent,
            "cap_id": cap.cap_id if cap else None,
            "cap_limit": cap.limit if cap else None,
            "metadata": metadata,
            "reason": reason,
        }
        hold_id = new_id("hold")
        period = month_key(now) if cap else None
        # The result as if fully approved; the function corrects it for a partial hold.
        full = HoldView(
            id=hold_id,
            account_id=account_id,
            status=HoldStatus.OPEN,
            amount_requested=amount,
            amount_held=amount,
            amount_captured=0,
            partial=False,
            expires_at=expires,
            reason=reason,
            metadata=metadata,
            cap_id=cap.cap_id if cap else None,
            cap_period=period,
            created_at=now,
            settled_at=None,
        )

        def python(session: Session) -> HoldView:
            wallet = self._lock_wallet(session, account_id)
            prior = idempotency.lookup(session, f"ledger.hold:{account_id}", key, params)
            if prior is not None:
                return HoldView.model_validate(prior)
            # Checked after the key: a retry returns the first result however late it comes.
            if expires <= now:
                raise ValidationFailed("A hold must expire in the future.", field="expires_at")
            self._settle_due(session, wallet, now)

            lots = self._lots(session, wallet.id, spendable_at=now)
            approved = self._approvable(session, wallet, lots, amount, allow_partial, cap, now)
            draws, transfers = self._reserve(
                wallet, lots, approved, hold_id, TransferKind.HOLD, reason or "hold", now
            )
            _conn(session).execute(
                insert(Hold).values(
                    id=hold_id,
                    wallet_account_id=wallet.id,
                    billing_account_id=account_id,
                    amount_requested=amount,
                    amount_held=approved,
                    amount_captured=0,
                    status=HoldStatus.OPEN,
                    expires_at=expires,
                    reason=reason,
                    metadata=metadata,
                    cap_id=cap.cap_id if cap else None,
                    cap_period=period,
                    created_at=now,
                    settled_at=None,
                )
            )
            self._insert_transfers(session, transfers)
            self._save_lots(session, [lot for lot, _ in draws])
            if cap is not None and period is not None:
                self._bump_cap(session, cap.cap_id, period, held=approved)
            wallet.next_due_at = earliest(wallet.next_due_at, expires)
            self._save_wallet(session, wallet)
            view = full.model_copy(update={"amount_held": approved, "partial": approved < amount})
            idempotency.remember(
                session, f"ledger.hold:{account_id}", key, params, view.model_dump(mode="json"), now, hold_id
            )
            return view

        return _LedgerWrite(
            "ledger_try_place_hold",
            dict(
                account=account_id,
                amount=amount,
                allow_partial=allow_partial,
                expires_at=expires,
                now=now,
                cap_id=cap.cap_id if cap else None,
                cap_limit=cap.limit if cap else None,
                cap_period=period,
                scope=f"ledger.hold:{account_id}",
                key=key,
                hash=idempotency.request_fingerprint(params),
                result=full,
                hold_id=hold_id,
                reason=reason,
                metadata=metadata,
                transfer_reason=(reason or "hold")[:500],
            ),
            HoldView,
            python,
        )

    def extend_hold(
        self,
        session: Session,
        *,
        hold_id: str,
        idempotency_key: str,
        amount: int = 0,
        expires_at: datetime | None = None,
        ttl_seconds: int | None = None,
        allow_partial: bool = False,
        cap_limit: int | None = None,
    ) -> HoldView:
        """Reserve ``amount`` more and/or move the expiry later, while the hold is open."""
        return self._run(
            session,
            self.plan_extend_hold(
                hold_id=hold_id,
                idempotency_key=idempotency_key,
                amount=amount,
                expires_at=expires_at,
                ttl_seconds=ttl_seconds,
                allow_partial=allow_partial,
                cap_limit=cap_limit,
            ),
        )

    def plan_extend_hold(
        self,
        *,
        hold_id: str,
        idempotency_key: str,
        amount: int = 0,
        expires_at: datetime | None = None,
        ttl_seconds: int | None = None,
        allow_partial: bool = False,
        cap_limit: int | None = None,
    ) -> _LedgerWrite:
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        _check_amount(amount, allow_zero=True)
        new_expiry, expiry_as_sent = _expiry(now, expires_at, ttl_seconds)
        if amount == 0 and new_expiry is None:
            raise ValidationFailed("Extend needs an amount, a later expiry, or both.", field="amount")
        params = {
            "hold_id": hold_id,
            "amount": amount,
            "expires_at": None,
            **expiry_as_sent,
            "allow_partial": allow_partial,
            "cap_limit": cap_limit,
        }

        def python(session: Session) -> HoldView:
            wallet, hold = self._lock_hold(session, hold_id)
            scope = f"ledger.hold_extend:{wallet.billing_account_id}"
            prior = idempotency.lookup(session, scope, key, params)
            if prior is not None:
                return HoldView.model_validate(prior)
            self._check_open(hold, now, "extend")
            if new_expiry is not None and new_expiry <= now:
                raise ValidationFailed("The new expiry must be in the future.", field="expires_at")
            self._settle_due(session, wallet, now)

            added = 0
            if amount > 0:
                lots = self._lots(session, wallet.id, spendable_at=now)
                cap = CapSpec(hold.cap_id, cap_limit) if hold.cap_id else None
                added = self._approvable(
                    session, wallet, lots, amount, allow_partial, cap, now, cap_period=hold.cap_period
                )
                draws, transfers = self._reserve(
                    wallet,
                    lots,
                    added,
                    hold_id,
                    TransferKind.HOLD_EXTEND,
                    hold.reason or "hold extended",
                    now,
                )
                self._insert_transfers(session, transfers)
                self._save_lots(session, [lot for lot, _ in draws])
                if hold.cap_id and hold.cap_period:
                    self._bump_cap(session, hold.cap_id, hold.cap_period, held=added)
            expires = max(hold.expires_at, new_expiry) if new_expiry else hold.expires_at
            _conn(session).execute(
                update(Hold)
                .where(Hold.id == hold_id)
                .values(
                    amount_held=hold.amount_held + added,
                    amount_requested=hold.amount_requested + amount,
                    expires_at=expires,
                )
            )
            wallet.next_due_at = earliest(wallet.next_due_at, expires)
            self._save_wallet(session, wallet)
            view = self._hold_view(session, hold_id)
            view.partial = added < amount
            idempotency.remember(session, scope, key, params, view.model_dump(mode="json"), now)
            return view

        return _LedgerWrite(
            "ledger_try_extend_hold",
            dict(
                hold_id=hold_id,
                amount=amount,
                expires_at=new_expiry,
                allow_partial=allow_partial,
                cap_limit=cap_limit,
                now=now,
                scope_prefix="ledger.hold_extend:",
                key=key,
                hash=idempotency.request_fingerprint(params),
            ),
            HoldView,
            python,
        )

    def capture_hold(
        self, session: Session, *, hold_id: str, amount: int, idempotency_key: str, reason: str | None = None
    ) -> HoldView:
        """Charge ``amount`` (at most what is held) and return the rest, in one step."""
        return self._run(
            session,
            self.plan_capture_hold(
                hold_id=hold_id, amount=amount, idempotency_key=idempotency_key, reason=reason
            ),
        )

    def plan_capture_hold(
        self, *, hold_id: str, amount: int, idempotency_key: str, reason: str | None = None
    ) -> _LedgerWrite:
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        _check_amount(amount, allow_zero=True)
        params = {"hold_id": hold_id, "amount": amount}

        def python(session: Session) -> HoldView:
            wallet, hold = self._lock_hold(session, hold_id)
            scope = f"ledger.hold_capture:{wallet.billing_account_id}"
            prior = idempotency.lookup(session, scope, key, params)
            if prior is not None:
                return HoldView.model_validate(prior)
            self._check_open(hold, now, "capture")
            if amount > hold.amount_held:
                raise CaptureExceedsHold(
                    f"Cannot capture {amount} millicredits: the hold has {hold.amount_held}.",
                    field="amount",
                    amount_held=hold.amount_held,
                )
            self._resolve_hold(session, wallet, hold, amount, HoldStatus.CAPTURED, now, reason)
            self._settle_due(session, wallet, now)
            self._save_wallet(session, wallet)
            view = self._hold_to_view(hold).model_copy(
                update={"status": HoldStatus.CAPTURED, "amount_captured": amount, "settled_at": now}
            )
            idempotency.remember(session, scope, key, params, view.model_dump(mode="json"), now)
            return view

        return _LedgerWrite(
            "ledger_try_capture_hold",
            dict(
                hold_id=hold_id,
                amount=amount,
                now=now,
                scope_prefix="ledger.hold_capture:",
                key=key,
                hash=idempotency.request_fingerprint(params),
                reason=reason,
            ),
            HoldView,
            python,
        )

    def release_hold(
        self, session: Session, *, hold_id: str, idempotency_key: str, reason: str | None = None
    ) -> HoldView:
        now = self.clock.now()
        key = idempotency.check_key(idempotency_key)
        params = {"hold_id": hold_id}
        wallet, hold = self._lock_hold(session, hold_id)
        prior = idempotency.lookup(session, f"ledger.hold_release:{wallet.billing_account_id}", key, params)
        if prior is not None:
            return HoldView.model_validate(prior)
        if hold.status != HoldStatus.OPEN:
            raise HoldAlreadySettled(
                f"Hold '{hold_id}' is already {hold.status}.", hold_id=hold_id, status=hold.status
            )
        # Releasing a hold that ran past its expiry is harmless: it frees the same credits the
        # sweep would, so it is allowed and recorded as an expiry.
        status = hold_closing_status(hold.expires_at, now)
        self._resolve_hold(session, wallet, hold, 0, status, now, reason)
        self._settle_due(session, wallet, now)
        self._save_wallet(session, wallet)
        view = self._hold_to_view(hold).model_copy(
            update={"status": status, "amount_captured": 0, "settled_at": now}
        )
        idempotency.remember(
            session,
            f"ledger.hold_release:{wallet.billing_account_id}",
            key,
            params,
            view.model_dump(mode="json"),
            now,
        )
        return view

    # A caller whose unit of work is the ledger write alone (the HTTP API, the benchmark) uses
    # these: on PostgreSQL the write and its commit are one round trip, so the wallet's lock is
    # held only while the database works, never while the client does.

    # Concurrent writes to one account from this process share one commit (decision 0028): the
    # account is the group.
    def commit_place_hold(self, db: Database, **request: Any) -> HoldView:
        """``place_hold`` in a transaction of its own, committed before it returns."""
        return self._commit(db, self.plan_place_hold(**request), group=request["account_id"])  # type: ignore[no-any-return]

    def commit_capture_hold(self, db: Database, account_id: str | None = None, **request: Any) -> HoldView:
        """``capture_hold`` in a transaction of its own, committed before it returns.

        ``account_id`` is the account the hold is on, when the caller knows it. The capture then
        shares a commit with concurrent writes to that account. Without it the capture commits
        alone; a wrong one only costs that sharing, since the hold decides the wallet.
        """
        return self._commit(db, self.plan_capture_hold(**request), group=account_id)  # type: ignore[no-any-return]

"""Ledger rules: grants, two-phase holds, debits, reversals, expiry and balances.

Every money write follows the same order, which is what keeps it race-free:

1. lock the wallet row (``SELECT ... FOR UPDATE``; SQLite's ``BEGIN IMMEDIATE`` already holds
   the database write lock);
2. look the idempotency key up (a duplicate now finds the first request's record);
3. settle what fell due on this wallet (expired holds, expired grant remainders);
4. validate against the maintained counters, then write transfers and counters together.

A validation failure raises before anything is written.

Over 600 lines: the pure rules are in ``rules.py`` and the semantics in docs/ledger.md, but the
operations, their SQL statements and their PostgreSQL fast path are still one class here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, func, insert, literal_column, select, update
from sqlalchemy.orm import Session

from chronote_billing.core import idempotency
from chronote_billing.core.clock import Clock, as_utc, month_key, system_clock
from chronote_billing.core.db import Database
from chronote_billing.core.errors import (
    CapReached,
    Conflict,
    HoldAlreadySettled,
    HoldExpired,
    InsufficientCredits,
    NotFound,
    ValidationFailed,
)
from chronote_billing.core.ids import new_id
from chronote_billing.core.write_combiner import ServerStatement, json_argument, text_argument

from .models import CapUsage, Debit, Grant, GrantFreeze, Hold, LedgerAccount, Transfer
from .rules import (
    GrantStatus,
    HoldStatus,
    Lot,
    Phase,
    Refusal,
    SystemAccount,
    TransferKind,
    approve,
    burn_order_key,
    draw,
    earliest,
    hold_closing_status,
    hold_refusal,
    lot_has_expired,
    lot_order_key,
    shown_grant_status,
    split_capture,
    void_kind,
)
from .schemas import (
    BalanceView,
    CapUsageView,
    DebitView,
    EconomicLineView,
    EconomicStatementPage,
    GrantView,
    HoldView,
    ReservedView,
    ReversalView,
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

SYSTEM_ACCOUNTS = tuple(SystemAccount)
GRANT_SOURCES = (
    "plan_allowance",
    "free_allowance",
    "purchase",
    "promotional",
    "migration",
    "comp",
    "adjustment",
    "trial",
)
MAX_AMOUNT = 10**15  # millicredits; far above any real balance, below BIGINT's limit


class CaptureExceedsHold(ValidationFailed):
    code = "capture_exceeds_hold"
    title = "Capture above the held amount"


@dataclass(frozen=True)
class CapSpec:
    """A spend cap to count a hold or debit against (an authorization's monthly cap).

    ``limit`` is the cap in millicredits for the calendar month, or None to count usage
    without limiting it.
    """

    cap_id: str
    limit: int | None


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


def _check_amount(amount: Any, field: str = "amount", allow_zero: bool = False) -> int:
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise ValidationFailed(f"{field} must be a whole number of millicredits.", field=field)
    if amount < 0 or (amount == 0 and not allow_zero):
        raise ValidationFailed(f"{field} must be {'zero or ' if allow_zero else ''}positive.", field=field)
    if amount > MAX_AMOUNT:
        raise ValidationFailed(f"{field} is larger than any balance can be.", field=field)
    return amount


class LedgerService:
    def __init__(self, clock: Clock = system_clock, db_functions: bool = True) -> None:
        self.clock = clock
        # On PostgreSQL, debits, holds and captures first try the database's one-round-trip
        # functions (docs/decisions/0023); they decline anything but the common case.
        self.db_functions = db_functions

    # ------------------------------------------------------------------ accounts

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

    # ------------------------------------------------------------------ grants

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

    # ------------------------------------------------------------------ holds

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

    def get_hold(self, session: Session, hold_id: str) -> HoldView:
        return self._hold_view(session, hold_id)

    # ------------------------------------------------------------------ debits

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

    # ------------------------------------------------------------------ expiry

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

    # ------------------------------------------------------------------ reads

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

    def lock_wallet(self, session: Session, account_id: str) -> None:
        """Take an account's wallet lock, as every ledger write does first: work that reads a
        balance or decides whether to write (a payer choice, a purchase not yet recorded) and
        the write it leads to then form one step."""
        self._lock_wallet(session, account_id)

    # ------------------------------------------------------------------ writes of their own

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

    def commit_debit(self, db: Database, **request: Any) -> DebitView:
        """``debit`` in a transaction of its own, committed before it returns."""
        return self._commit(db, self.plan_debit(**request), group=request["account_id"])  # type: ignore[no-any-return]

    # ------------------------------------------------------------------ internals

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

# Argument names and SQL types of the fast-path functions (migration 0005), in order.
_FUNCTION_ARGS: dict[str, tuple[tuple[str, str], ...]] = {
    "ledger_try_debit": (
        ("account", "text"),
        ("amount", "bigint"),
        ("now", "timestamptz"),
        ("cap_id", "text"),
        ("cap_limit", "bigint"),
        ("cap_period", "text"),
        ("scope", "text"),
        ("key", "text"),
        ("hash", "text"),
        ("result", "jsonb"),
        ("debit_id", "text"),
        ("reason", "text"),
        ("metadata", "jsonb"),
        ("transfer_reason", "text"),
    ),
    "ledger_try_place_hold": (
        ("account", "text"),
        ("amount", "bigint"),
        ("allow_partial", "boolean"),
        ("expires_at", "timestamptz"),
        ("now", "timestamptz"),
        ("cap_id", "text"),
        ("cap_limit", "bigint"),
        ("cap_period", "text"),
        ("scope", "text"),
        ("key", "text"),
        ("hash", "text"),
        ("result", "jsonb"),
        ("hold_id", "text"),
        ("reason", "text"),
        ("metadata", "jsonb"),
        ("transfer_reason", "text"),
    ),
    "ledger_try_extend_hold": (
        ("hold_id", "text"),
        ("amount", "bigint"),
        ("expires_at", "timestamptz"),
        ("allow_partial", "boolean"),
        ("cap_limit", "bigint"),
        ("now", "timestamptz"),
        ("scope_prefix", "text"),
        ("key", "text"),
        ("hash", "text"),
    ),
    "ledger_try_capture_hold": (
        ("hold_id", "text"),
        ("amount", "bigint"),
        ("now", "timestamptz"),
        ("scope_prefix", "text"),
        ("key", "text"),
        ("hash", "text"),
        ("reason", "text"),
    ),
}
_FUNCTION_SQL = {
    name: f"SELECT {name}({', '.join(f'%({arg})s::{sql_type}' for arg, sql_type in args)})"
    for name, args in _FUNCTION_ARGS.items()
}

# The same calls for Database.run_autocommit: prepared once per connection, arguments as text.
_FUNCTION_STATEMENTS = {
    name: ServerStatement(
        f"chronote_{name}",
        f"SELECT {name}({', '.join(f'${n}::{sql_type}' for n, (_, sql_type) in enumerate(args, 1))})",
    )
    for name, args in _FUNCTION_ARGS.items()
}


@dataclass
class _LedgerWrite:
    """One validated ledger write, ready to run either way: the database function's arguments,
    and the Python path (a closure over the same ids, timestamps and fingerprint)."""

    function: str
    args: dict[str, Any]
    result_type: type[HoldView] | type[DebitView]
    python: Callable[[Session], Any]

    def driver_args(self) -> dict[str, Any]:
        return {
            name: json_argument(self.args[name]) if sql_type == "jsonb" else self.args[name]
            for name, sql_type in _FUNCTION_ARGS[self.function]
        }

    def text_args(self) -> list[str | None]:
        """The arguments in order, as PostgreSQL's text input for their types."""
        return [text_argument(self.args[name], sql_type) for name, sql_type in _FUNCTION_ARGS[self.function]]


def _expiry(
    now: datetime, expires_at: datetime | None, ttl_seconds: int | None
) -> tuple[datetime | None, dict[str, Any]]:
    """The absolute expiry, and the expiry as the client sent it for the request's fingerprint:
    a TTL stays a TTL, so a retry of the same request seconds later is the same request (0033)."""
    if ttl_seconds is not None:
        if expires_at is not None:
            raise ValidationFailed("Give expires_at or ttl_seconds, not both.", field="ttl_seconds")
        return now + timedelta(seconds=ttl_seconds), {"ttl_seconds": ttl_seconds}
    if expires_at is None:
        return None, {}
    expires = as_utc(expires_at)
    return expires, {"expires_at": expires.isoformat()}


def _draw(lots: list[Lot], amount: int) -> list[tuple[Lot, int]]:
    """Split ``amount`` over lots in burn order (lots are already sorted); the caller approved
    the amount under the wallet's lock, so a shortfall means the wallet changed meanwhile."""
    draws = draw(lots, amount)
    if draws is None:
        raise Conflict("The wallet changed while the hold was being placed.")
    return draws


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

"""Notification rules: the transactional outbox, low-balance alerts and auto-recharge triggers.

Everything here runs inside the caller's transaction and makes no network call. An event is an
outbox row (:mod:`.outbox`) written with the business change it reports, so it exists if and
only if that change committed; the delivery worker (``delivery.py``) sends it afterwards, at
least once.

Thresholds fire once per downward crossing: a threshold state row is *armed* while the balance
is at or above the threshold, and firing disarms it with a conditional update (``... WHERE
armed``), so of two concurrent spends only one can fire. Seeing the balance at or above the
threshold again (after a purchase or any grant) re-arms it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from chronote_billing.accounts.models import BillingAccount
from chronote_billing.catalog.service import MILLICREDITS_PER_CREDIT, Catalog, UnknownPlan
from chronote_billing.core import idempotency
from chronote_billing.core.clock import Clock, month_key
from chronote_billing.core.errors import NotFound, ValidationFailed
from chronote_billing.ledger.service import LedgerService

from . import auto_recharge as recharge
from .models import NotificationSettings, ThresholdState
from .outbox import Outbox
from .schemas import (
    AlertSettingsView,
    AutoRechargeView,
    NotificationSettingsView,
)

JOB_AUTO_RECHARGE = "auto_recharge.purchase"


MAX_THRESHOLD_CREDITS = 10**12  # 10**15 millicredits, the ledger's largest amount


class InvalidThreshold(ValidationFailed):
    code = "invalid_threshold"
    title = "Invalid threshold"


class UnknownPack(ValidationFailed):
    code = "unknown_pack"
    title = "Unknown credit pack"


def _check_threshold(value: Any, field: str, allow_none: bool) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidThreshold(f"{field} must be a whole number of credits.", field=field)
    if not 1 <= value <= MAX_THRESHOLD_CREDITS:
        raise InvalidThreshold(
            f"{field} must be from 1 to {MAX_THRESHOLD_CREDITS:,} credits, got {value}.", field=field
        )
    return value


def _credits(millicredits: int | None) -> int | None:
    return None if millicredits is None else millicredits // MILLICREDITS_PER_CREDIT


class NotificationService(Outbox):
    """Alerts and auto-recharge over the outbox (:mod:`.outbox`); the container wires it."""

    def __init__(self, clock: Clock, ledger: LedgerService, catalog: Catalog) -> None:
        self.clock = clock
        self.ledger = ledger
        self.catalog = catalog

    # ------------------------------------------------------------------ thresholds

    def after_balance_change(self, session: Session, account_id: str) -> None:
        """Compare the available balance with the account's thresholds, in the caller's
        transaction: fire what was crossed downwards (once per crossing), re-arm what the
        balance is back above. Call it after every capture, debit and grant."""
        settings = self._settings_row(session, account_id)
        if settings is None:
            return
        low = settings.low_balance_threshold_millicredits
        recharge_at = (
            settings.auto_recharge_threshold_millicredits
            if settings.auto_recharge_enabled and settings.auto_recharge_pack_id
            else None
        )
        if low is None and recharge_at is None:
            return
        available = self.ledger.balance(session, account_id).available
        now = self.clock.now()
        if low is not None:
            if available < low:
                crossing = self._fire(session, account_id, "low_balance", now)
                if crossing is not None:
                    self.emit(
                        session,
                        "wallet.balance_low",
                        account_id,
                        {
                            "account_id": account_id,
                            "available_millicredits": available,
                            "threshold_credits": _credits(low),
                            "threshold_millicredits": low,
                            "crossing": crossing,
                            "runway": self._runway(session, account_id),
                        },
                        dedupe_key=f"wallet.balance_low:{account_id}:{crossing}",
                    )
            else:
                self._rearm(session, account_id, "low_balance", now)
        if recharge_at is not None:
            if available < recharge_at:
                crossing = self._fire(session, account_id, "auto_recharge", now)
                if crossing is not None:
                    self._start_auto_recharge(session, settings, recharge_at, available, crossing)
            else:
                self._rearm(session, account_id, "auto_recharge", now)

    def _runway(self, session: Session, account_id: str) -> dict[str, Any]:
        """When the credits run out at the last 14 days' pace (decision 0046), for the alert."""
        from chronote_billing.runway.service import RunwayService

        view = RunwayService(self.clock, self.ledger).runway(session, session.get(BillingAccount, account_id))  # type: ignore[arg-type]
        return {
            "runs_out_at": view.runs_out_at,
            "daily_rate_millicredits": view.daily_rate,
            "cold_start": view.cold_start,
            "sentence": view.sentence,
        }

    def _start_auto_recharge(
        self,
        session: Session,
        settings: NotificationSettings,
        threshold: int,
        available: int,
        crossing: int,
    ) -> None:
        account_id = settings.account_id
        pack_id = settings.auto_recharge_pack_id or ""
        try:
            pack = self.catalog.pack(pack_id)
        except UnknownPlan:
            # The pack left the catalog after it was chosen: never fail the spend over it.
            self.emit(
                session,
                "auto_recharge.failed",
                account_id,
                {"account_id": account_id, "pack_id": pack_id, "reason": "unknown_pack"},
                dedupe_key=f"auto_recharge.failed:{account_id}:{crossing}",
            )
            return
        now = self.clock.now()
        month = month_key(now)
        usage = recharge.month_usage(session, account_id, month)
        limit_count, limit_amount = settings.auto_recharge_limit_count, settings.auto_recharge_limit_amount
        if not recharge.within_limit(usage, limit_count, limit_amount, pack.unit_amount):
            # Under the wallet lock: no concurrent crossing of this account can pass the same check.
            self.emit(
                session,
                "auto_recharge.stopped",
                account_id,
                {
                    "account_id": account_id,
                    "reason": "monthly_limit",
                    "month": month,
                    "purchases_this_month": usage.count,
                    "amount_this_month": usage.amount,
                    "monthly_limit_count": limit_count,
                    "monthly_limit_amount": limit_amount,
                    "currency": pack.currency,
                    "pack_id": pack.id,
                },
                dedupe_key=f"auto_recharge.stopped:{account_id}:{month}:monthly_limit",
            )
            return
        job_id = self._enqueue(
            session,
            "job",
            JOB_AUTO_RECHARGE,
            account_id,
            {"account_id": account_id, "pack_id": pack_id, "crossing": crossing},
            dedupe_key=f"auto_recharge:{account_id}:{crossing}",
        )
        if job_id is None:
            return
        recharge.record_start(session, job_id, account_id, month, pack, now)
        self.emit(
            session,
            "auto_recharge.started",
            account_id,
            {
                "account_id": account_id,
                "recharge_id": job_id,
                "pack_id": pack_id,
                "pack_credits": pack.credits,
                "amount": pack.unit_amount,
                "currency": pack.currency,
                "available_millicredits": available,
                "threshold_credits": _credits(threshold),
                "threshold_millicredits": threshold,
            },
            dedupe_key=f"auto_recharge.started:{job_id}",
        )

    def _fire(self, session: Session, account_id: str, kind: str, now: datetime) -> int | None:
        """Disarm the threshold if it is armed; returns the crossing number if this call fired it."""
        result = session.execute(
            update(ThresholdState)
            .where(
                ThresholdState.account_id == account_id,
                ThresholdState.kind == kind,
                ThresholdState.armed.is_(True),
            )
            .values(armed=False, crossings=ThresholdState.crossings + 1, last_fired_at=now, updated_at=now)
        )
        if not result.rowcount:  # type: ignore[attr-defined]
            return None
        return int(
            session.execute(
                select(ThresholdState.crossings).where(
                    ThresholdState.account_id == account_id, ThresholdState.kind == kind
                )
            ).scalar_one()
        )

    @staticmethod
    def _rearm(session: Session, account_id: str, kind: str, now: datetime) -> None:
        session.execute(
            update(ThresholdState)
            .where(
                ThresholdState.account_id == account_id,
                ThresholdState.kind == kind,
                ThresholdState.armed.is_(False),
            )
            .values(armed=True, updated_at=now)
        )

    # ------------------------------------------------------------------ settings

    def set_alert_settings(
        self,
        session: Session,
        *,
        account_id: str,
        low_balance_threshold_credits: int | None,
        idempotency_key: str,
    ) -> AlertSettingsView:
        """Set (or, with None, turn off) the low-balance alert threshold, in credits.

        Setting a threshold arms it: if the balance is already below it, the next balance
        change sends the alert.
        """
        key = idempotency.check_key(idempotency_key)
        threshold = _check_threshold(low_balance_threshold_credits, "low_balance_threshold_credits", True)
        params = {"account_id": account_id, "low_balance_threshold_credits": threshold}
        self._lock_account(session, account_id)
        now = self.clock.now()
        once = idempotency.Once(
            AlertSettingsView,
            idempotency.scope_of("notifications.alert_settings", account_id),
            key,
            params,
            now,
        )
        if (prior := once.prior(session)) is not None:
            return prior
        settings = self._ensure_settings(session, account_id, now)
        settings.low_balance_threshold_millicredits = (
            None if threshold is None else threshold * MILLICREDITS_PER_CREDIT
        )
        settings.updated_at = now
        self._arm(session, account_id, "low_balance", now)
        session.flush()
        return once.remember(session, self._alert_view(session, account_id))

    def check_auto_recharge(
        self,
        enabled: bool,
        threshold_credits: int,
        pack_id: str,
        monthly_limit_count: int | None,
        monthly_limit_amount: int | None,
    ) -> tuple[int, int | None, int | None]:
        """Auto-recharge settings as they will be saved (threshold in millicredits, limits), or
        the refusal; no database: callers check them before asking Stripe anything."""
        if not isinstance(enabled, bool):
            raise ValidationFailed("enabled must be true or false.", field="enabled")
        threshold = _check_threshold(threshold_credits, "threshold_credits", False)
        assert threshold is not None
        if not isinstance(pack_id, str) or not pack_id.strip():
            raise UnknownPack("pack_id must name a credit pack.", field="pack_id")
        try:
            pack = self.catalog.pack(pack_id)
        except UnknownPlan as exc:
            raise UnknownPack(exc.message, field="pack_id", pack_id=pack_id) from exc
        limit_count, limit_amount = recharge.check_limits(
            enabled, monthly_limit_count, monthly_limit_amount, pack
        )
        return threshold, limit_count, limit_amount

    def set_auto_recharge(
        self,
        session: Session,
        *,
        account_id: str,
        enabled: bool,
        threshold_credits: int,
        pack_id: str,
        idempotency_key: str,
        monthly_limit_count: int | None = None,
        monthly_limit_amount: int | None = None,
    ) -> AutoRechargeView:
        """Turn auto-recharge on or off for any account: buy ``pack_id`` through Stripe when the
        available balance falls below ``threshold_credits``, once per crossing, within a monthly
        limit of purchases and/or money (decision 0045), required to turn it on.

        Saving the settings arms the trigger (if the balance is already below the threshold, the
        next balance change starts a purchase) and turns back on what a declined card stopped.
        """
        key = idempotency.check_key(idempotency_key)
        threshold, limit_count, limit_amount = self.check_auto_recharge(
            enabled, threshold_credits, pack_id, monthly_limit_count, monthly_limit_amount
        )
        self._lock_account(session, account_id)
        params = {
            "account_id": account_id,
            "enabled": enabled,
            "threshold_credits": threshold,
            "pack_id": pack_id,
            "monthly_limit_count": limit_count,
            "monthly_limit_amount": limit_amount,
        }
        now = self.clock.now()
        once = idempotency.Once(
            AutoRechargeView,
            idempotency.scope_of("notifications.auto_recharge", account_id),
            key,
            params,
            now,
        )
        if (prior := once.prior(session)) is not None:
            return prior
        settings = self._ensure_settings(session, account_id, now)
        settings.auto_recharge_enabled = enabled
        settings.auto_recharge_threshold_millicredits = threshold * MILLICREDITS_PER_CREDIT
        settings.auto_recharge_pack_id = pack_id
        settings.auto_recharge_limit_count = limit_count
        settings.auto_recharge_limit_amount = limit_amount
        settings.auto_recharge_stopped_reason = None
        settings.auto_recharge_stopped_at = None
        settings.updated_at = now
        self._arm(session, account_id, "auto_recharge", now)
        session.flush()
        return once.remember(session, self._auto_recharge_view(session, account_id))

    def get_settings(self, session: Session, account_id: str) -> NotificationSettingsView:
        if session.get(BillingAccount, account_id) is None:
            raise NotFound(f"No billing account '{account_id}'.", account_id=account_id)
        return NotificationSettingsView(
            account_id=account_id,
            alerts=self._alert_view(session, account_id),
            auto_recharge=self._auto_recharge_view(session, account_id),
        )

    def settle_auto_recharge(
        self, session: Session, job_id: str, account_id: str, succeeded: bool, refusal: str | None = None
    ) -> None:
        """Record how a purchase ended (decision 0045). A refusal on the payer's side (a
        declined card, no card) turns auto-recharge off and says so once."""
        now = self.clock.now()
        recharge.settle(session, job_id, "succeeded" if succeeded else "failed", now)
        reason = recharge.STOPPING_REASONS.get(refusal or "")
        if succeeded or reason is None:
            return
        settings = self._settings_row(session, account_id)
        if settings is None or not settings.auto_recharge_enabled:
            return
        settings.auto_recharge_enabled = False
        settings.auto_recharge_stopped_reason = reason
        settings.auto_recharge_stopped_at = now
        settings.updated_at = now
        self.emit(
            session,
            "auto_recharge.stopped",
            account_id,
            {
                "account_id": account_id,
                "reason": reason,
                "recharge_id": job_id,
                "pack_id": settings.auto_recharge_pack_id,
            },
            dedupe_key=f"auto_recharge.stopped:{job_id}",
        )

    def auto_recharge_enabled(self, session: Session, account_id: str, pack_id: str) -> bool:
        """Whether the account still wants ``pack_id`` bought automatically (checked by the
        worker right before it buys)."""
        settings = self._settings_row(session, account_id)
        return bool(
            settings is not None
            and settings.auto_recharge_enabled
            and settings.auto_recharge_pack_id == pack_id
        )

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _settings_row(session: Session, account_id: str) -> NotificationSettings | None:
        return session.execute(
            select(NotificationSettings).where(NotificationSettings.account_id == account_id)
        ).scalar()

    def _lock_account(self, session: Session, account_id: str) -> BillingAccount:
        """Lock the account's wallet row, as every balance write does first, so a settings change
        and a spend on the same account serialize."""
        account = session.get(BillingAccount, account_id)
        if account is None:
            raise NotFound(f"No billing account '{account_id}'.", account_id=account_id)
        self.ledger.lock_wallet(session, account_id)
        return account

    def _ensure_settings(self, session: Session, account_id: str, now: datetime) -> NotificationSettings:
        settings = self._settings_row(session, account_id)
        if settings is None:
            settings = NotificationSettings(
                account_id=account_id,
                low_balance_threshold_millicredits=None,
                auto_recharge_enabled=False,
                auto_recharge_threshold_millicredits=None,
                auto_recharge_pack_id=None,
                updated_at=now,
            )
            session.add(settings)
        return settings

    @staticmethod
    def _arm(session: Session, account_id: str, kind: str, now: datetime) -> None:
        changed = session.execute(
            update(ThresholdState)
            .where(ThresholdState.account_id == account_id, ThresholdState.kind == kind)
            .values(armed=True, updated_at=now)
        ).rowcount  # type: ignore[attr-defined]
        if not changed:
            session.execute(
                insert(ThresholdState).values(
                    account_id=account_id, kind=kind, armed=True, crossings=0, updated_at=now
                )
            )

    @staticmethod
    def _states(session: Session, account_id: str) -> dict[str, ThresholdState]:
        rows: Iterable[ThresholdState] = session.execute(
            select(ThresholdState).where(ThresholdState.account_id == account_id)
        ).scalars()
        return {r.kind: r for r in rows}

    def _alert_view(self, session: Session, account_id: str) -> AlertSettingsView:
        settings = self._settings_row(session, account_id)
        state = self._states(session, account_id).get("low_balance")
        return AlertSettingsView(
            account_id=account_id,
            low_balance_threshold_credits=_credits(settings.low_balance_threshold_millicredits)
            if settings
            else None,
            armed=state.armed if state else True,
            alerts_sent=state.crossings if state else 0,
            last_alert_at=state.last_fired_at if state else None,
            updated_at=settings.updated_at if settings else None,
        )

    def _auto_recharge_view(self, session: Session, account_id: str) -> AutoRechargeView:
        settings = self._settings_row(session, account_id)
        state = self._states(session, account_id).get("auto_recharge")
        usage = recharge.month_usage(session, account_id, month_key(self.clock.now()))
        return AutoRechargeView(
            account_id=account_id,
            enabled=bool(settings and settings.auto_recharge_enabled),
            threshold_credits=_credits(settings.auto_recharge_threshold_millicredits) if settings else None,
            pack_id=settings.auto_recharge_pack_id if settings else None,
            monthly_limit_count=settings.auto_recharge_limit_count if settings else None,
            monthly_limit_amount=settings.auto_recharge_limit_amount if settings else None,
            currency=self.catalog.currency,
            purchases_this_month=usage.count,
            amount_this_month=usage.amount,
            stopped_reason=settings.auto_recharge_stopped_reason if settings else None,
            stopped_at=settings.auto_recharge_stopped_at if settings else None,
            armed=state.armed if state else True,
            recharges_started=state.crossings if state else 0,
            last_started_at=state.last_fired_at if state else None,
            updated_at=settings.updated_at if settings else None,
        )

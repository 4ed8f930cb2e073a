"""Bounded auto-recharge (decision 0045): the monthly limit, decided in the crossing's
transaction under the wallet lock, and the record of every purchase that counts against it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import Session

from chronote_billing.catalog.service import CreditPack
from chronote_billing.core.errors import ValidationFailed

from .models import AutoRechargePurchase

COUNTED = ("started", "succeeded")
MAX_LIMIT_COUNT = 1000
MAX_LIMIT_AMOUNT = 10**12  # minor units
# Purchases that ended on the payer's side: auto-recharge stops until the settings are saved again.
STOPPING_REASONS = {
    "payment_failed": "card_declined",
    "card_declined": "card_declined",
    "no_stripe_customer": "no_payment_method",
    "requires_action": "payment_needs_customer",
    "requires_payment_method": "card_declined",
}


class InvalidAutoRechargeLimit(ValidationFailed):
    code = "invalid_auto_recharge_limit"
    title = "Invalid auto-recharge limit"


def check_limits(
    enabled: bool, count: object, amount: object, pack: CreditPack
) -> tuple[int | None, int | None]:
    """A monthly limit by number of purchases and/or money; required to turn auto-recharge on,
    never zero, never below one pack."""
    for value, name in ((count, "monthly_limit_count"), (amount, "monthly_limit_amount")):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise InvalidAutoRechargeLimit(f"{name} must be a whole number.", field=name)
    assert count is None or isinstance(count, int)
    assert amount is None or isinstance(amount, int)
    if enabled and count is None and amount is None:
        raise InvalidAutoRechargeLimit(
            "Give a monthly limit: a number of purchases (monthly_limit_count) or an amount "
            "(monthly_limit_amount), so auto-recharge can never buy without end.",
            field="monthly_limit_count",
        )
    if count is not None and not 1 <= count <= MAX_LIMIT_COUNT:
        raise InvalidAutoRechargeLimit(
            f"monthly_limit_count must be from 1 to {MAX_LIMIT_COUNT} purchases, got {count}.",
            field="monthly_limit_count",
        )
    if amount is not None and not pack.unit_amount <= amount <= MAX_LIMIT_AMOUNT:
        raise InvalidAutoRechargeLimit(
            f"monthly_limit_amount must be at least one {pack.name} pack ({pack.unit_amount} in "
            f"{pack.currency.upper()} minor units), got {amount}.",
            field="monthly_limit_amount",
        )
    return count, amount


@dataclass(frozen=True)
class MonthUsage:
    count: int
    amount: int


def month_usage(session: Session, account_id: str, month: str) -> MonthUsage:
    row = session.execute(
        select(func.count(), func.coalesce(func.sum(AutoRechargePurchase.amount), 0)).where(
            AutoRechargePurchase.account_id == account_id,
            AutoRechargePurchase.month == month,
            AutoRechargePurchase.status.in_(COUNTED),
        )
    ).one()
    return MonthUsage(count=int(row[0]), amount=int(row[1]))


def within_limit(usage: MonthUsage, limit_count: int | None, limit_amount: int | None, price: int) -> bool:
    """Whether one more purchase at `price` stays within the month's limits. Settings saved
    before limits existed (neither set) are held to one purchase a month."""
    if limit_count is None and limit_amount is None:
        limit_count = 1
    if limit_count is not None and usage.count + 1 > limit_count:
        return False
    return limit_amount is None or usage.amount + price <= limit_amount


def record_start(
    session: Session, job_id: str, account_id: str, month: str, pack: CreditPack, now: datetime
) -> None:
    session.execute(
        insert(AutoRechargePurchase).values(
            id=job_id,
            account_id=account_id,
            month=month,
            pack_id=pack.id,
            amount=pack.unit_amount,
            currency=pack.currency,
            status="started",
            created_at=now,
        )
    )


def settle(session: Session, job_id: str, status: str, now: datetime) -> bool:
    """Mark a started purchase succeeded or failed; False when it was settled already."""
    result = session.execute(
        update(AutoRechargePurchase)
        .where(AutoRechargePurchase.id == job_id, AutoRechargePurchase.status == "started")
        .values(status=status, settled_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]

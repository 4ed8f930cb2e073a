"""What the billing pages' extra panels show (their templates are `_trial.html`, ...), read
inside the page's transaction like the rest of the page. One call per billing page:
`**page_extras(c, session, account)`."""

from __future__ import annotations

from typing import Any

from babel.numbers import get_currency_precision
from sqlalchemy.orm import Session

from chronote_billing.accounts.models import AccountKind, BillingAccount
from chronote_billing.container import Container
from chronote_billing.core.errors import ValidationFailed
from chronote_billing.stripe_sync.entitlements import plan_subscription
from chronote_billing.stripe_sync.plan_subscriptions import ENDED_STATUSES
from chronote_billing.stripe_sync.trials import trial_offer, trial_view

from .forms import Form
from .presenters import bar_chart


def trial_part(c: Container, session: Session, account: BillingAccount) -> dict[str, Any]:
    """The trial running now, and the trials this account may still start (decision 0044)."""
    if account.kind == AccountKind.ORGANIZATION:
        return {"trial_now": None, "trial_offers": []}
    sub = plan_subscription(session, account.id)
    subscribed = sub is not None and sub.status not in ENDED_STATUSES
    offers = [
        plan for plan in c.catalog.plans.values() if not subscribed and trial_offer(session, account, plan)
    ]
    return {"trial_now": trial_view(session, account, c.clock.now()), "trial_offers": offers}


def auto_recharge_part(c: Container, session: Session, account: BillingAccount) -> dict[str, Any]:
    """Auto-recharge settings with this month's purchases (decision 0045), for every payer."""
    view = c.notifications.get_settings(session, account.id).auto_recharge
    amount = view.monthly_limit_amount
    return {
        "auto_recharge": view,
        "auto_recharge_limit_major": None
        if amount is None
        else amount // 10 ** get_currency_precision(view.currency.upper()),
    }


def auto_recharge_request(form: Form, currency: str) -> dict[str, Any]:
    """The auto-recharge form as the notification service's arguments; money in whole units."""
    threshold = form.whole("threshold_credits", "Recharge threshold")
    major = form.whole("monthly_limit_money", "Spending limit a month", required=False)
    if major is not None and major < 0:
        raise ValidationFailed("Spending limit a month cannot be negative.", field="monthly_limit_money")
    return {
        "enabled": form.checked("enabled"),
        "threshold_credits": threshold,
        "pack_id": form.text("pack", "Credit pack"),
        "monthly_limit_count": form.whole("monthly_limit_count", "Purchases a month", required=False),
        "monthly_limit_amount": None
        if major is None
        else major * 10 ** get_currency_precision(currency.upper()),
    }


def runway_part(c: Container, session: Session, account: BillingAccount) -> dict[str, Any]:
    """The runway sentence and the chart of the last 14 days' spending (decision 0046)."""
    view = c.runway.runway(session, account)
    points = [(f"{d.day:%m-%d}", d.spent) for d in view.daily]
    return {"runway": view, "runway_chart": bar_chart(points) if view.spent_in_window else None}


def page_extras(c: Container, session: Session, account: BillingAccount) -> dict[str, Any]:
    return {
        **trial_part(c, session, account),
        **auto_recharge_part(c, session, account),
        **runway_part(c, session, account),
    }

"""What the billing pages' extra panels show (their templates are `_trial.html`, ...), read
inside the page's transaction like the rest of the page. One call per billing page:
`**page_extras(c, session, account)`."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from chronote_billing.accounts.models import AccountKind, BillingAccount
from chronote_billing.catalog.service import load_catalog
from chronote_billing.container import Container
from chronote_billing.stripe_sync.entitlements import plan_subscription
from chronote_billing.stripe_sync.trials import trial_offer, trial_view
from chronote_billing.stripe_sync.webhooks import ENDED_STATUSES


def trial_part(c: Container, session: Session, account: BillingAccount) -> dict[str, Any]:
    """The trial running now, and the trials this account may still start (decision 0044)."""
    if account.kind == AccountKind.ORGANIZATION:
        return {"trial_now": None, "trial_offers": []}
    sub = plan_subscription(session, account.id)
    subscribed = sub is not None and sub.status not in ENDED_STATUSES
    offers = [
        plan
        for plan in load_catalog().plans.values()
        if not subscribed and trial_offer(session, account, plan)
    ]
    return {"trial_now": trial_view(session, account, c.clock.now()), "trial_offers": offers}


def page_extras(c: Container, session: Session, account: BillingAccount) -> dict[str, Any]:
    return {**trial_part(c, session, account)}

"""A Stripe customer portal session on the account's own customer (decision 0025)."""

from __future__ import annotations

from typing import Any

import structlog
from sqlalchemy.orm import Session

from chronote_billing.access.service import Principal, require_manage
from chronote_billing.integrations.stripe.client import call, idempotent, stripe_key

from .catalog_sync import find_portal_configuration
from .dependencies import BillingDependencies, get_account
from .errors import NoStripeCustomer
from .operation import StripeWrite
from .schemas import PortalSessionView

log = structlog.get_logger(__name__)


def open_customer_portal(
    billing: BillingDependencies,
    principal: Principal,
    account_id: str,
    *,
    idempotency_key: str,
    return_url: str | None = None,
) -> PortalSessionView:
    """A Stripe customer portal session on THIS account's own customer, nobody else's.

    Our own idempotency record answers a retry (decision 0033): the same key with another
    return URL is our conflict, and Stripe is not asked again."""
    write = StripeWrite.of(
        "portal", account_id, idempotency_key, {"return_url": return_url}, PortalSessionView
    )

    def check(session: Session) -> tuple[str, PortalSessionView | None]:
        account = get_account(session, account_id)
        require_manage(session, principal, account)
        first = write.first_answer(session)
        if not account.stripe_customer_id:
            raise NoStripeCustomer(
                f"Account '{account.id}' has no Stripe customer yet: nothing has been bought.",
                account_id=account.id,
            )
        return account.stripe_customer_id, first

    customer, first = billing.db.read(check)
    if first is not None:
        return first
    base = billing.settings.public_base_url.rstrip("/")
    params: dict[str, Any] = {"customer": customer, "return_url": return_url or f"{base}/portal"}
    configuration = portal_configuration(billing)
    if configuration is not None:
        params["configuration"] = configuration
    ps = call(
        "open the customer portal",
        lambda: billing.client.v1.billing_portal.sessions.create(
            params=params,  # type: ignore[arg-type]
            options=idempotent(stripe_key("portal", account_id, write.key)),
        ),
    )
    answer = PortalSessionView(account_id=account_id, customer=customer, url=ps.url)
    return write.answered(billing.db, answer, billing.clock.now())


def portal_configuration(billing: BillingDependencies) -> str | None:
    """Our portal configuration (made by `catalog sync`), looked up once per process."""
    if billing.portal_configuration_id is None:
        found = find_portal_configuration(billing.client)
        if found is None:
            # Stripe's default then applies: whatever its dashboard allows (decision 0025).
            log.warning("stripe_portal_configuration_missing", detail="run 'chronote-billing catalog sync'")
            return None
        billing.portal_configuration_id = str(found["id"])
    return billing.portal_configuration_id

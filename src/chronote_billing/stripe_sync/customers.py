"""An account's own Stripe customer: created at its first purchase (never found by email), its
saved card, and the details an erasure removes from it (decision 0047)."""

from __future__ import annotations

from typing import Any

import structlog
from sqlalchemy import select
from sqlalchemy.orm import Session

from chronote_billing.accounts.models import BillingAccount
from chronote_billing.integrations.stripe.client import call, expandable_id, idempotent, stripe_key, to_dict

from .dependencies import AccountSnapshot, BillingDependencies, get_account
from .errors import NoSavedCard
from .metadata import account_metadata

log = structlog.get_logger(__name__)


def ensure_customer(billing: BillingDependencies, account_id: str) -> str:
    """The account's own Stripe customer, created at first purchase (never found by email)."""
    acct = billing.db.read(lambda s: AccountSnapshot.of(get_account(s, account_id)))
    if acct.customer:
        return acct.customer
    params: dict[str, Any] = {
        "name": acct.display_name,
        "description": f"Chronote {acct.kind} billing account {acct.id}",
        "metadata": account_metadata(acct),
    }
    customer = call(
        "create a customer",
        lambda: billing.client.v1.customers.create(
            params=params,  # type: ignore[arg-type]
            options=idempotent(stripe_key("customer", acct.id)),
        ),
    )

    def save(session: Session) -> str:
        account = session.execute(
            select(BillingAccount).where(BillingAccount.id == account_id).with_for_update()
        ).scalar_one()
        if account.stripe_customer_id is None:
            account.stripe_customer_id = customer.id
        elif account.stripe_customer_id != customer.id:
            log.warning("stripe_customer_race", account=account_id, kept=account.stripe_customer_id)
        return account.stripe_customer_id

    return billing.db.write(save)


def saved_card(billing: BillingDependencies, customer_id: str) -> str | None:
    """The customer's default card, else its first saved card (one Stripe read or two)."""
    customer = to_dict(call("read the customer", lambda: billing.client.v1.customers.retrieve(customer_id)))
    method = expandable_id((customer.get("invoice_settings") or {}).get("default_payment_method"))
    if method:
        return method
    methods = call(
        "list payment methods",
        lambda: billing.client.v1.payment_methods.list(
            params={"customer": customer_id, "type": "card", "limit": 1}
        ),
    )
    return str(methods.data[0].id) if methods.data else None


def require_saved_card(billing: BillingDependencies, account_id: str) -> None:
    """Refuse, in words, what needs a card saved with Stripe (auto-recharge) when there is none."""
    acct = billing.db.read(lambda s: AccountSnapshot.of(get_account(s, account_id)))
    if acct.customer is None or saved_card(billing, acct.customer) is None:
        raise NoSavedCard(
            f"Auto-recharge needs a card saved with Stripe for {acct.display_name}: buy a credit pack "
            "here once (its card is kept for later), then switch auto-recharge on.",
            field="enabled",
            account_id=account_id,
        )


def forget_customer(billing: BillingDependencies, customer_id: str, pseudonym: str, erasure_id: str) -> None:
    """Replace what we set on an erased person's customer: their Discord id and name."""
    call(
        "remove our details from the customer",
        lambda: billing.client.v1.customers.update(
            customer_id,
            params={
                "name": pseudonym,
                "description": "Chronote personal billing account (erased)",
                "metadata": {"discord_user_id": "", "chronote_erased": pseudonym},
            },
            options=idempotent(stripe_key("erase", erasure_id)),
        ),
    )

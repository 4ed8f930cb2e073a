"""What every billing operation that calls Stripe works with: the container's services, one
Stripe client built on first use, the webhook inbox the operations apply Stripe's answers
through (decision 0040), and the reads they share (an account, a price)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from sqlalchemy.orm import Session

from chronote_billing.accounts.models import BillingAccount
from chronote_billing.catalog.service import Catalog
from chronote_billing.config import Settings
from chronote_billing.core.clock import Clock
from chronote_billing.core.db import Database
from chronote_billing.core.errors import NotFound
from chronote_billing.integrations.stripe.client import StripeClient, make_client
from chronote_billing.ledger.service import LedgerService
from chronote_billing.notifications.service import NotificationService

from .errors import missing_price
from .prices import fetch_prices
from .webhooks.context import HandlerServices
from .webhooks.inbox import WebhookInbox


@dataclass(eq=False)
class BillingDependencies:
    db: Database
    clock: Clock
    ledger: LedgerService
    settings: Settings
    catalog: Catalog
    notifications: NotificationService
    # Builds the Stripe client on first use (the settings' client unless told otherwise).
    client_factory: Callable[[], StripeClient] | None = None
    portal_configuration_id: str | None = None  # found once per process

    @cached_property
    def client(self) -> StripeClient:
        return self.client_factory() if self.client_factory else make_client(self.settings)

    @cached_property
    def webhooks(self) -> WebhookInbox:
        return WebhookInbox(
            self.db,
            HandlerServices(self.ledger, self.clock, self.catalog),
            self.notifications,
            self.settings.stripe_webhook_secret,
            lambda: self.client,
        )

    def price(self, lookup_key: str) -> dict[str, Any]:
        """Stripe's active price of a catalog lookup key."""
        prices = fetch_prices(self.client, [lookup_key])
        if lookup_key not in prices:
            raise missing_price(lookup_key)
        return dict(prices[lookup_key])

    def price_id(self, lookup_key: str) -> str:
        return str(self.price(lookup_key)["id"])


@dataclass(frozen=True)
class AccountSnapshot:
    """What an operation keeps of an account between its transactions (Stripe is called in
    between, with no transaction open)."""

    id: str
    kind: str
    owner_ref: str
    display_name: str
    customer: str | None

    @classmethod
    def of(cls, account: BillingAccount) -> AccountSnapshot:
        return cls(
            account.id, account.kind, account.owner_ref, account.display_name, account.stripe_customer_id
        )


def get_account(session: Session, account_id: str) -> BillingAccount:
    account = session.get(BillingAccount, account_id)
    if account is None:
        raise NotFound(f"No billing account '{account_id}'.", account_id=account_id)
    return account

"""What a webhook handler is given (the event, typed hints read from Stripe beforehand, the
container's services) and what it reports (an outcome and notes), and how it finds the billing
account a Stripe object belongs to."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from chronote_billing.accounts.models import BillingAccount
from chronote_billing.catalog.service import Catalog
from chronote_billing.core.clock import Clock
from chronote_billing.integrations.stripe.objects import OwnedObject, Subscription
from chronote_billing.ledger.service import LedgerService

from ..grant_rules import PurchaseGrant
from ..purchases import issue_purchase


@dataclass(frozen=True)
class HandlerServices:
    """The container's services a handler writes through (never built again here)."""

    ledger: LedgerService
    clock: Clock
    catalog: Catalog


@dataclass(frozen=True)
class EventRef:
    """The event being applied: its id, type and Stripe's `created` (seconds), the ordering key."""

    id: str
    type: str
    created: int


@dataclass(frozen=True)
class Hints:
    """What was read from Stripe before the transaction, when our own records could not say."""

    subscription: Subscription | None = None  # Stripe's current state, for a same-second tie
    payment_intent: str | None = None  # what a charge paid for
    invoice: str | None = None
    tie: bool = False  # applying the current state of a tie: it wins the tie


@dataclass
class Outcome:
    outcome: str = "applied"  # applied, stale, ignored, unhandled, unknown_account
    account_id: str | None = None
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.notes.append(text)

    def ignored(self, text: str) -> None:
        self.outcome = "ignored"
        self.notes.append(text)

    def stale(self, text: str) -> None:
        self.outcome = "stale"
        self.notes.append(text)


@dataclass
class Applying:
    """One event being applied: the container's services, its transaction, the event, what was
    read from Stripe beforehand, and the outcome the handler reports."""

    services: HandlerServices
    session: Session
    event: EventRef
    hints: Hints
    result: Outcome

    def account(self, obj: OwnedObject) -> BillingAccount | None:
        """The billing account the object belongs to (None, reported, when it is nobody's)."""
        return resolve_account(self.session, obj, self.result)

    def grant(self, account: BillingAccount, grant: PurchaseGrant | None) -> None:
        """Write what a payment grants, once per cause (nothing when the rules said nothing)."""
        if grant is not None:
            services = self.services
            issue_purchase(
                self.session,
                services.ledger,
                services.clock,
                account,
                grant,
                self.result.notes,
                services.catalog,
            )


@dataclass
class WebhookResult:
    event_id: str
    type: str
    outcome: str  # applied, stale, ignored, unhandled, unknown_account, duplicate
    account_id: str | None = None
    note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "received": True,
            "event_id": self.event_id,
            "type": self.type,
            "outcome": self.outcome,
            "account_id": self.account_id,
            "note": self.note,
        }


def resolve_account(session: Session, obj: OwnedObject, result: Outcome) -> BillingAccount | None:
    """Through the customer first (0009: never dropped for lack of metadata), then the account
    ids the object names, then today's `guild_id` metadata."""
    if obj.customer:
        account = session.execute(
            select(BillingAccount).where(BillingAccount.stripe_customer_id == obj.customer)
        ).scalar()
        if account is not None:
            result.account_id = account.id
            return account
    for candidate in obj.account_ids():
        account = session.get(BillingAccount, candidate)
        if account is not None and account.stripe_customer_id in (None, obj.customer):
            result.account_id = account.id
            return account
    # Today's subscriptions carry only `guild_id` (imported server accounts, shared customers).
    guilds = obj.guild_ids()
    if guilds:
        account = session.execute(
            select(BillingAccount).where(
                BillingAccount.kind == "server", BillingAccount.owner_ref == guilds[0]
            )
        ).scalar()
        if account is not None:
            result.account_id = account.id
            return account
    result.outcome = "unknown_account"
    result.note(f"no billing account for customer '{obj.customer}'; acknowledged without effect")
    return None

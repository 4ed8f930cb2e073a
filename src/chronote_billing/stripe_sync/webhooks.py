"""Stripe webhooks: verified, stored by event id, applied exactly once and never backwards (0009).

`WebhookProcessor.handle` verifies the signature (5-minute tolerance), then stores the event and
applies its effect in ONE transaction: a redelivery finds the stored event and changes nothing.

Ordering. Stripe does not deliver in order, so every effect is written to be independent of it:

- subscriptions: each subscription keeps the ordering key of the newest event applied to it
  (`created`, then period start, status and event id); an older event is stored and not applied,
  and `customer.subscription.deleted` is terminal for that subscription id. The account's plan
  subscription is derived from the newest state of each of its subscriptions;
- invoices: paid is terminal, the first failure starts the grace, allowances are unique per
  invoice (ledger keys derived from the invoice id);
- charges: the cumulative refunded amount and the dispute state only move forward; a refund or
  dispute that arrives before the purchase it concerns is applied when the purchase is recorded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import stripe
import structlog
from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from chronote_billing.accounts.models import BillingAccount
from chronote_billing.catalog.service import CreditPack, Plan, PlanPrice, load_catalog
from chronote_billing.core.clock import Clock, as_utc
from chronote_billing.core.db import Database
from chronote_billing.core.errors import BillingError, ExternalServiceError
from chronote_billing.core.ids import new_id
from chronote_billing.ledger.service import LedgerService
from chronote_billing.notifications.service import NotificationService

from . import trials
from .client import expandable_id, to_dict
from .models import (
    PlanSubscription,
    StripeCharge,
    StripeEvent,
    StripeInvoice,
    StripePurchase,
    StripeSubscription,
)
from .periods import add_months, allowance_slice, from_ts, to_ts

log = structlog.get_logger(__name__)

SIGNATURE_TOLERANCE_SECONDS = 300
LIVE_STATUSES = ("active", "trialing", "past_due", "unpaid", "incomplete", "paused")
ENDED_STATUSES = ("canceled", "incomplete_expired")
_STATUS_RANK = {
    "incomplete": 0,
    "trialing": 1,
    "active": 2,
    "past_due": 3,
    "unpaid": 4,
    "paused": 4,
    "canceled": 9,
    "incomplete_expired": 9,
}
ALLOWANCE_PRIORITY = 10
PACK_PRIORITY = 50


class WebhookSignatureInvalid(BillingError):
    code = "invalid_signature"
    status = 400
    title = "Invalid webhook signature"


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


@dataclass
class _Outcome:
    outcome: str = "applied"
    account_id: str | None = None
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        self.notes.append(text)


def _meta(obj: dict[str, Any]) -> dict[str, str]:
    return {str(k): str(v) for k, v in (obj.get("metadata") or {}).items()}


_CUSTOMER_OWN_EVENTS = ("customer.created", "customer.updated", "customer.deleted")


def stored_payload(event: dict[str, Any]) -> dict[str, Any]:
    """What is kept of an event. A customer's earlier values (`previous_attributes`) are never
    used, and after an erasure they would bring the erased name back (decision 0047)."""
    if event.get("type") not in _CUSTOMER_OWN_EVENTS or "previous_attributes" not in (
        event.get("data") or {}
    ):
        return event
    data = {k: v for k, v in event["data"].items() if k != "previous_attributes"}
    return {**event, "data": data}


def verify_event(payload: bytes, sig_header: str | None, secret: str) -> dict[str, Any]:
    """Verify Stripe's signature (older than 5 minutes is refused) and parse the event."""
    try:
        stripe.Webhook.construct_event(payload, sig_header, secret, tolerance=SIGNATURE_TOLERANCE_SECONDS)
    except stripe.SignatureVerificationError as exc:
        raise WebhookSignatureInvalid(
            f"Stripe signature check failed: {exc.user_message or str(exc)}".strip()
        ) from exc
    except ValueError as exc:
        raise WebhookSignatureInvalid(f"Webhook body is not a Stripe event: {exc}") from exc
    try:
        event = json.loads(payload)
    except ValueError as exc:  # pragma: no cover - construct_event parsed it already
        raise WebhookSignatureInvalid("Webhook body is not JSON.") from exc
    if not isinstance(event, dict) or not event.get("id") or not event.get("type"):
        raise WebhookSignatureInvalid("Webhook body is not a Stripe event (no id or type).")
    return event


def plan_for_lookup_key(lookup_key: str | None) -> tuple[Plan, PlanPrice] | None:
    if not lookup_key:
        return None
    catalog = load_catalog()
    found = catalog.price_by_lookup_key(lookup_key)
    if isinstance(found, PlanPrice):
        return catalog.plans[found.plan_id], found
    return None


class WebhookProcessor:
    def __init__(
        self,
        db: Database,
        clock: Clock,
        ledger: LedgerService,
        webhook_secret: str,
        client_factory: Callable[[], stripe.StripeClient] | None = None,
    ) -> None:
        self.db = db
        self.clock = clock
        self.ledger = ledger
        self.webhook_secret = webhook_secret
        self.client_factory = client_factory
        self.notifications = NotificationService(clock, ledger)

    # ------------------------------------------------------------------ entry point

    def handle(self, payload: bytes, sig_header: str | None) -> WebhookResult:
        event = verify_event(payload, sig_header, self.webhook_secret)
        return self.process(event)

    def process(self, event: dict[str, Any]) -> WebhookResult:
        """Store and apply one verified event (a redelivery returns `duplicate`)."""
        hints = self._prefetch(event)
        for attempt in range(3):
            try:
                return self.db.write(lambda s: self._store_and_apply(s, event, hints))
            except IntegrityError:
                # A concurrent delivery of the same event (or a row it creates) won the race:
                # run again and find its result.
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def apply_fetched(
        self,
        *,
        checkout_session: dict[str, Any] | None = None,
        subscription: dict[str, Any] | None = None,
        invoice: dict[str, Any] | None = None,
    ) -> WebhookResult:
        """Apply objects just read from Stripe (a checkout return, a plan change's answer) through
        the same handlers as their webhooks, in one transaction (decision 0040).

        No event is stored: the webhooks still are when they arrive, and find the effects done
        (grants are keyed by the Stripe object). A subscription is applied as Stripe's current
        state at the time of the newest event already applied to it (a tie, which the handler
        settles with the state it is given), or at its creation when none was, so any later
        event still applies after it.
        """

        def work(session: Session) -> WebhookResult:
            result = _Outcome()
            if subscription is not None:
                newest = session.execute(
                    select(StripeSubscription.last_event_created).where(
                        StripeSubscription.id == subscription["id"]
                    )
                ).scalar()
                created = newest if newest is not None else int(subscription.get("created") or 0)
                event = {
                    "id": f"fetched_{subscription['id']}",
                    "type": "customer.subscription.updated",
                    "created": created,
                }
                hints = {"subscription": subscription} if newest is not None else {}
                self.on_subscription(session, event, subscription, hints, result)
            if invoice is not None and invoice.get("status") == "paid":
                paid = (invoice.get("status_transitions") or {}).get("paid_at") or invoice.get("created")
                event = {"id": f"fetched_{invoice['id']}", "type": "invoice.paid", "created": int(paid or 0)}
                self.on_invoice_paid(session, event, invoice, {}, result)
            if checkout_session is not None:
                pi = checkout_session.get("payment_intent")
                at = (pi.get("created") if isinstance(pi, dict) else None) or to_ts(self.clock.now())
                event = {
                    "id": f"fetched_{checkout_session['id']}",
                    "type": "checkout.session.completed",
                    "created": int(at),
                }
                self.on_checkout_completed(session, event, checkout_session, {}, result)
            if result.account_id is not None and result.outcome not in ("stale", "unknown_account"):
                self.notifications.after_balance_change(session, result.account_id)
            return WebhookResult(
                "fetched", "fetched", result.outcome, result.account_id, "; ".join(result.notes)
            )

        return self.db.write(work)

    # ------------------------------------------------------------------ network, before the transaction

    def _prefetch(self, event: dict[str, Any]) -> dict[str, Any]:
        """Ask Stripe what a charge paid for when our own records cannot say (never inside a
        transaction). The answer only adds links; ordering does not depend on it."""
        etype = event.get("type", "")
        if etype.startswith("customer.subscription."):
            return self._prefetch_subscription_tie(event)
        if not (etype == "charge.refunded" or etype.startswith("charge.dispute.")):
            return {}
        obj = (event.get("data") or {}).get("object") or {}
        charge_id = obj.get("id") if etype == "charge.refunded" else expandable_id(obj.get("charge"))
        pi = expandable_id(obj.get("payment_intent"))
        if not charge_id:
            return {}

        def known(session: Session) -> tuple[bool, bool]:
            charge = session.get(StripeCharge, charge_id)
            linked = charge is not None and (
                charge.invoice_id is not None or charge.payment_intent_id is not None
            )
            purchase = (
                pi is not None
                and session.execute(
                    select(StripePurchase.id).where(StripePurchase.payment_intent_id == pi)
                ).first()
                is not None
            )
            return linked, purchase

        linked, purchase = self.db.read(known)
        if purchase or (linked and pi is None):
            return {}
        if self.client_factory is None:
            return {}
        client = self.client_factory()
        hints: dict[str, Any] = {}
        try:
            if pi is None:
                charge = to_dict(client.v1.charges.retrieve(charge_id))
                pi = expandable_id(charge.get("payment_intent"))
                hints["payment_intent"] = pi
            if pi:
                payments = client.v1.invoice_payments.list(
                    params={"payment": {"type": "payment_intent", "payment_intent": pi}, "limit": 1}
                )
                if payments.data:
                    hints["invoice"] = expandable_id(to_dict(payments.data[0]).get("invoice"))
        except stripe.InvalidRequestError as exc:
            log.info("stripe_charge_link_unavailable", charge=charge_id, error=str(exc))
        except stripe.StripeError as exc:
            raise ExternalServiceError(f"Could not read charge '{charge_id}' from Stripe: {exc}") from exc
        return hints

    def _prefetch_subscription_tie(self, event: dict[str, Any]) -> dict[str, Any]:
        """Stripe's `created` has one-second resolution: two changes to a subscription in the
        same second cannot be ordered from the events alone. When this event ties with the
        newest one applied, ask Stripe for the subscription as it is now and apply that."""
        obj = (event.get("data") or {}).get("object") or {}
        sub_id = obj.get("id")
        if not sub_id or self.client_factory is None or event["type"] == "customer.subscription.deleted":
            return {}
        newest = self.db.read(
            lambda s: s.execute(
                select(StripeSubscription.last_event_created).where(StripeSubscription.id == sub_id)
            ).scalar()
        )
        if newest is None or int(event.get("created") or 0) != newest:
            return {}
        try:
            current = to_dict(self.client_factory().v1.subscriptions.retrieve(sub_id))
        except stripe.StripeError as exc:
            raise ExternalServiceError(f"Could not read subscription '{sub_id}' from Stripe: {exc}") from exc
        return {"subscription": current}

    # ------------------------------------------------------------------ the transaction

    def _store_and_apply(
        self, session: Session, event: dict[str, Any], hints: dict[str, Any]
    ) -> WebhookResult:
        event_id = str(event["id"])
        etype = str(event["type"])
        existing = session.get(StripeEvent, event_id)
        if existing is not None:
            return WebhookResult(event_id, etype, "duplicate", existing.account_id, existing.outcome)
        obj = (event.get("data") or {}).get("object") or {}
        row = StripeEvent(
            id=event_id,
            type=etype,
            created=int(event.get("created") or 0),
            livemode=bool(event.get("livemode", False)),
            object_id=expandable_id(obj) if isinstance(obj, dict) else None,
            account_id=None,
            outcome="received",
            note="",
            payload=stored_payload(event),
            received_at=self.clock.now(),
        )
        session.add(row)
        session.flush()  # the unique event id is claimed before any effect

        result = _Outcome()
        handler = _HANDLERS.get(etype)
        if handler is None:
            result.outcome = "unhandled"
            result.note(f"event type '{etype}' is stored and acknowledged; it has no effect")
        else:
            handler(self, session, event, obj, hints, result)
        row.outcome = result.outcome
        row.account_id = result.account_id
        self._notify(session, event, obj, result)
        row.note = "; ".join(result.notes)[:2000]
        log_fn = log.warning if result.outcome == "unknown_account" else log.info
        log_fn("stripe_event", event_id=event_id, type=etype, outcome=result.outcome, note=row.note)
        return WebhookResult(event_id, etype, result.outcome, result.account_id, row.note)

    def _notify(self, session: Session, event: dict[str, Any], obj: dict[str, Any], result: _Outcome) -> None:
        """Tell Chronote about failed payments, and re-arm low-balance alerts after credit arrives,
        in the same transaction as the effect (the outbox commits with it or not at all)."""
        if result.account_id is None or result.outcome in ("stale", "unknown_account", "unhandled"):
            return
        etype = str(event["type"])
        if etype == "invoice.payment_failed":
            self.notifications.emit(
                session,
                "payment.failed",
                result.account_id,
                {
                    "invoice": obj.get("id"),
                    "subscription": _invoice_subscription(obj),
                    "amount_due": obj.get("amount_due"),
                    "currency": obj.get("currency"),
                    "attempt_count": obj.get("attempt_count"),
                },
                dedupe_key=f"payment.failed:{event['id']}",
            )
        elif etype in _CREDIT_EVENTS:
            self.notifications.after_balance_change(session, result.account_id)

    # ------------------------------------------------------------------ resolution

    def _account(self, session: Session, obj: dict[str, Any], result: _Outcome) -> BillingAccount | None:
        """Through the customer first (0009: never dropped for lack of metadata), then metadata."""
        customer = expandable_id(obj.get("customer"))
        if customer:
            account = session.execute(
                select(BillingAccount).where(BillingAccount.stripe_customer_id == customer)
            ).scalar()
            if account is not None:
                result.account_id = account.id
                return account
        candidates = [_meta(obj).get("chronote_account_id"), obj.get("client_reference_id")]
        details = (obj.get("parent") or {}).get("subscription_details") or {}
        candidates.append(_meta(details).get("chronote_account_id"))
        for candidate in candidates:
            if not candidate:
                continue
            account = session.get(BillingAccount, str(candidate))
            if account is not None and account.stripe_customer_id in (None, customer):
                result.account_id = account.id
                return account
        # Today's subscriptions carry only `guild_id` (imported server accounts, shared customers).
        guild = _meta(obj).get("guild_id") or _meta(details).get("guild_id")
        if guild:
            account = session.execute(
                select(BillingAccount).where(
                    BillingAccount.kind == "server", BillingAccount.owner_ref == str(guild)
                )
            ).scalar()
            if account is not None:
                result.account_id = account.id
                return account
        result.outcome = "unknown_account"
        result.note(f"no billing account for customer '{customer}'; acknowledged without effect")
        return None

    # ------------------------------------------------------------------ subscriptions

    def on_subscription(
        self,
        session: Session,
        event: dict[str, Any],
        sub: dict[str, Any],
        hints: dict[str, Any],
        result: _Outcome,
    ) -> None:
        account = self._account(session, sub, result)
        if account is None:
            return
        sub_id = str(sub["id"])
        items = ((sub.get("items") or {}).get("data")) or []
        item = items[0] if items else {}
        price = item.get("price") or {}
        found = plan_for_lookup_key(price.get("lookup_key"))
        if found is None:
            result.outcome = "ignored"
            result.note(f"subscription {sub_id} has no catalog plan price ({price.get('lookup_key')!r})")
            return
        plan, plan_price = found
        if plan.scope != account.kind:
            result.outcome = "ignored"
            result.note(f"plan {plan.id} is not for a {account.kind} account; subscription {sub_id} ignored")
            return
        start_ts = (
            item.get("current_period_start") or sub.get("current_period_start") or sub.get("start_date")
        )
        end_ts = item.get("current_period_end") or sub.get("current_period_end")
        if not start_ts or not end_ts:
            result.outcome = "ignored"
            result.note(f"subscription {sub_id} carries no current period")
            return
        status = str(sub.get("status") or "incomplete")
        deleted = event["type"] == "customer.subscription.deleted"
        if deleted and status not in ENDED_STATUSES:
            status = "canceled"
        created = int(event.get("created") or 0)
        rank = f"{int(start_ts):012d}:{_STATUS_RANK.get(status, 5)}:{event['id']}"

        row = session.execute(
            select(StripeSubscription).where(StripeSubscription.id == sub_id).with_for_update()
        ).scalar()
        if row is not None:
            if row.deleted:
                result.outcome = "stale"
                result.note(f"subscription {sub_id} was already deleted; a deletion is final")
                return
            current = hints.get("subscription")
            if not deleted and created == row.last_event_created and current is not None:
                # A same-second tie: Stripe's current state of the subscription decides.
                return self.on_subscription(
                    session, {**event, "created": created}, current, {"tie": True}, result
                )
            if (
                not deleted
                and not hints.get("tie")
                and (created, rank) <= (row.last_event_created, row.last_event_rank)
            ):
                result.outcome = "stale"
                result.note(f"older than the newest event applied to {sub_id}; stored, not applied")
                return

        # A downgrade keeps the plan paid for until the period ends (0018): the subscription
        # carries the plan it came from and until when.
        meta = _meta(sub)
        plan_in_force, pending = plan.id, None
        until = meta.get("chronote_downgrade_until")
        previous = meta.get("chronote_downgrade_from")
        if (
            previous
            and until
            and until.isdigit()
            and int(until) == int(end_ts)
            and status not in ENDED_STATUSES
        ):
            previous_plan = load_catalog().plans.get(previous)
            if (
                previous_plan is not None
                and previous_plan.rank > plan.rank
                and previous_plan.scope == plan.scope
            ):
                plan_in_force, pending = previous_plan.id, plan.id

        now = self.clock.now()
        values = dict(
            account_id=account.id,
            customer_id=expandable_id(sub.get("customer")) or "",
            status=status,
            plan_id=plan_in_force,
            price_lookup_key=plan_price.lookup_key,
            interval=plan_price.interval,
            pending_plan_id=pending,
            current_period_start=from_ts(start_ts),
            current_period_end=from_ts(end_ts),
            cancel_at_period_end=bool(sub.get("cancel_at_period_end")) or bool(sub.get("cancel_at")),
            stripe_created=int(sub.get("created") or created),
            last_event_created=max(created, row.last_event_created if row else 0),
            last_event_rank=rank,
            deleted=deleted,
            updated_at=now,
        )
        if row is None:
            session.add(StripeSubscription(id=sub_id, **values))
            session.flush()
        else:
            for key, value in values.items():
                setattr(row, key, value)
        trial_note = trials.observe_subscription(session, account, sub, status, now)
        if trial_note:
            result.note(trial_note)
        refresh_plan_subscription(session, account.id)

    # ------------------------------------------------------------------ invoices

    def on_invoice_paid(
        self,
        session: Session,
        event: dict[str, Any],
        inv: dict[str, Any],
        hints: dict[str, Any],
        result: _Outcome,
    ) -> None:
        account = self._account(session, inv, result)
        if account is None:
            return
        inv_id = str(inv["id"])
        sub_id = _invoice_subscription(inv)
        paid_ts = ((inv.get("status_transitions") or {}).get("paid_at")) or event.get("created")
        row = self._invoice_row(session, inv, account.id, sub_id)
        row.status = "paid"
        row.amount_paid = int(inv.get("amount_paid") or 0)
        row.paid_at = row.paid_at or (from_ts(paid_ts) if paid_ts else self.clock.now())
        session.flush()

        pack_id = _meta(inv).get("chronote_pack_id")
        if sub_id is None and _meta(inv).get("chronote_kind") == "credit_pack_checkout":
            result.note(f"invoice {inv_id} is the receipt of a pack checkout; its checkout grants the pack")
            return
        if sub_id is None and pack_id:
            pack = load_catalog().credit_packs.get(pack_id)
            if pack is None:
                result.outcome = "ignored"
                result.note(f"invoice {inv_id} names unknown pack {pack_id!r}")
                return
            self._grant_pack(
                session,
                account,
                pack,
                result,
                at=from_ts(paid_ts or event["created"]),
                cause_type="invoice",
                cause_id=inv_id,
                payment_intent=None,
                invoice_id=inv_id,
            )
            return
        if sub_id is None:
            result.outcome = "ignored"
            result.note(f"invoice {inv_id} is neither a plan nor a pack invoice")
            return
        reason = inv.get("billing_reason") or ""
        if reason == "subscription_update":
            self._grant_upgrade(session, account, inv, result)
        elif reason in (
            "subscription_create",
            "subscription_cycle",
            "subscription",
            "subscription_threshold",
        ):
            self._grant_allowance(session, account, inv, sub_id, result)
        else:
            result.note(f"invoice {inv_id} ({reason or 'manual'}) grants nothing")
        refresh_plan_subscription(session, account.id)

    def on_invoice_failed(
        self,
        session: Session,
        event: dict[str, Any],
        inv: dict[str, Any],
        hints: dict[str, Any],
        result: _Outcome,
    ) -> None:
        account = self._account(session, inv, result)
        if account is None:
            return
        sub_id = _invoice_subscription(inv)
        row = self._invoice_row(session, inv, account.id, sub_id)
        failed_at = from_ts(event.get("created") or 0)
        if row.status != "paid":
            row.status = "failed"
            row.first_failed_at = (
                min(as_utc(row.first_failed_at), failed_at) if row.first_failed_at else failed_at
            )
            result.note(f"payment failed; the 7-day grace runs from {row.first_failed_at.isoformat()}")
        else:
            result.outcome = "stale"
            result.note(f"invoice {inv['id']} is already paid")
        session.flush()
        refresh_plan_subscription(session, account.id)

    def _invoice_row(
        self, session: Session, inv: dict[str, Any], account_id: str, sub_id: str | None
    ) -> StripeInvoice:
        row = session.execute(
            select(StripeInvoice).where(StripeInvoice.id == inv["id"]).with_for_update()
        ).scalar()
        if row is None:
            row = StripeInvoice(
                id=str(inv["id"]),
                account_id=account_id,
                subscription_id=sub_id,
                billing_reason=inv.get("billing_reason"),
                status="open",
                amount_paid=0,
                first_failed_at=None,
                paid_at=None,
                updated_at=self.clock.now(),
            )
            session.add(row)
        row.updated_at = self.clock.now()
        return row

    def _grant_allowance(
        self, session: Session, account: BillingAccount, inv: dict[str, Any], sub_id: str, result: _Outcome
    ) -> None:
        inv_id = str(inv["id"])
        line = _subscription_line(inv)
        found = _invoice_plan(session, inv, line, sub_id)
        if found is None:
            result.outcome = "ignored"
            result.note(f"invoice {inv_id}: no catalog plan found; no allowance")
            return
        plan = found
        if plan.scope != account.kind or plan.included_credits <= 0:
            result.outcome = "ignored"
            result.note(f"invoice {inv_id}: plan {plan.id} grants nothing to a {account.kind} account")
            return
        period = (line or {}).get("period") or {}
        start_ts = period.get("start") or inv.get("period_start")
        end_ts = period.get("end") or inv.get("period_end")
        details = (inv.get("parent") or {}).get("subscription_details") or {}
        trial_plan = trials.trial_invoice_plan(inv, line, _meta(details))
        if trial_plan is not None and trial_plan.trial is not None and start_ts and end_ts:
            # The trial's own credits, spendable until it ends (0044); never the full allowance.
            if trial_plan.trial.credits > 0:
                self._issue_purchase(
                    session,
                    account,
                    result,
                    cause_key=f"invoice:{inv_id}:trial",
                    kind="allowance",
                    product_ref=trial_plan.id,
                    amount=trial_plan.trial.millicredits,
                    source="trial",
                    cause_type="invoice",
                    cause_id=inv_id,
                    effective_at=from_ts(start_ts),
                    expires_at=from_ts(end_ts),
                    payment_intent=None,
                    invoice_id=inv_id,
                    priority=ALLOWANCE_PRIORITY,
                    description=f"{trial_plan.name} trial credits until {from_ts(end_ts).date()}",
                )
            return
        if not start_ts or not end_ts or int(end_ts) <= int(start_ts):
            sub_row = session.get(StripeSubscription, sub_id)
            if sub_row is None:
                result.outcome = "ignored"
                result.note(f"invoice {inv_id}: no service period")
                return
            start, end = sub_row.current_period_start, sub_row.current_period_end
        else:
            start, end = from_ts(start_ts), from_ts(end_ts)
        # A yearly price still issues its credits monthly (0002): the invoice pays for the first
        # month; the others are issued on first need in their month (entitlements).
        _, slice_start, slice_end = allowance_slice(start, end, start)
        self._issue_purchase(
            session,
            account,
            result,
            cause_key=f"invoice:{inv_id}:allowance",
            kind="allowance",
            product_ref=plan.id,
            amount=plan.included_millicredits,
            source="plan_allowance",
            cause_type="invoice",
            cause_id=inv_id,
            effective_at=slice_start,
            expires_at=slice_end,
            payment_intent=None,
            invoice_id=inv_id,
            priority=ALLOWANCE_PRIORITY,
            description=f"{plan.name} allowance {slice_start.date()} to {slice_end.date()}",
        )

    def _grant_upgrade(
        self, session: Session, account: BillingAccount, inv: dict[str, Any], result: _Outcome
    ) -> None:
        """The prorated difference of included credits for the rest of the current allowance
        period (0018), from what our plan change wrote on the subscription."""
        inv_id = str(inv["id"])
        details = (inv.get("parent") or {}).get("subscription_details") or {}
        meta = _meta(details)
        catalog = load_catalog()
        new, old = (
            catalog.plans.get(meta.get("chronote_plan_id", "")),
            catalog.plans.get(meta.get("chronote_previous_plan_id", "")),
        )
        try:
            changed = from_ts(int(meta["chronote_changed_at"]))
            start = from_ts(int(meta["chronote_period_start"]))
            end = from_ts(int(meta["chronote_period_end"]))
        except (KeyError, ValueError):
            new = None
        if new is None or old is None:
            result.outcome = "ignored"
            result.note(f"invoice {inv_id}: plan change not made through Chronote; no prorated credits")
            return
        diff = new.included_millicredits - old.included_millicredits
        _, slice_start, slice_end = allowance_slice(start, end, changed)
        # Whole seconds and integer division: credits never pass through a float.
        total = int((slice_end - slice_start).total_seconds())
        left = max(0, int((slice_end - max(changed, slice_start)).total_seconds()))
        amount = diff * left // total if total > 0 else 0
        if amount <= 0:
            result.note(f"invoice {inv_id}: upgrade {old.id} to {new.id} leaves no credits to add")
            return
        self._issue_purchase(
            session,
            account,
            result,
            cause_key=f"invoice:{inv_id}:upgrade",
            kind="upgrade",
            product_ref=new.id,
            amount=amount,
            source="plan_allowance",
            cause_type="invoice",
            cause_id=inv_id,
            effective_at=changed,
            expires_at=slice_end,
            payment_intent=None,
            invoice_id=inv_id,
            priority=ALLOWANCE_PRIORITY,
            description=f"Upgrade {old.name} to {new.name}: prorated allowance until {slice_end.date()}",
        )

    # ------------------------------------------------------------------ packs

    def on_checkout_completed(
        self,
        session: Session,
        event: dict[str, Any],
        cs: dict[str, Any],
        hints: dict[str, Any],
        result: _Outcome,
    ) -> None:
        from .models import StripeCheckoutSession

        account = self._account(session, cs, result)
        if account is None:
            return
        ref = cs.get("client_reference_id")
        if ref and ref != account.id:
            result.outcome = "ignored"
            result.note(f"session {cs['id']} names account {ref} but its customer is {account.id}'s")
            return
        local = session.get(StripeCheckoutSession, cs["id"])
        if local is not None and local.status != "complete" and event["type"] != "checkout.session.expired":
            local.status = "complete"
            local.completed_at = from_ts(event.get("created") or 0)
        if event["type"] == "checkout.session.expired":
            if local is not None and local.status == "open":
                local.status = "expired"
            result.note("checkout expired")
            if trials.release_offer(session, str(cs["id"])):
                result.note("its trial reservation was released")
            return
        if cs.get("mode") != "payment":
            result.note("subscription checkout: the subscription and invoice events carry its effect")
            return
        if cs.get("payment_status") not in ("paid", "no_payment_required"):
            result.outcome = "ignored"
            result.note(f"session {cs['id']} is not paid yet ({cs.get('payment_status')})")
            return
        pack_id = _meta(cs).get("chronote_pack_id") or (local.pack_id if local else None)
        pack = load_catalog().credit_packs.get(pack_id or "")
        if pack is None:
            result.outcome = "ignored"
            result.note(f"session {cs['id']} names no known credit pack ({pack_id!r})")
            return
        self._grant_pack(
            session,
            account,
            pack,
            result,
            at=from_ts(event.get("created") or 0),
            cause_type="checkout_session",
            cause_id=str(cs["id"]),
            payment_intent=expandable_id(cs.get("payment_intent")),
            invoice_id=expandable_id(cs.get("invoice")),
        )

    def on_payment_intent_succeeded(
        self,
        session: Session,
        event: dict[str, Any],
        pi: dict[str, Any],
        hints: dict[str, Any],
        result: _Outcome,
    ) -> None:
        meta = _meta(pi)
        if meta.get("chronote_kind") != "credit_pack_off_session":
            result.outcome = "ignored"
            result.note("payment intent of a checkout or invoice: their own events carry the effect")
            return
        account = self._account(session, pi, result)
        if account is None:
            return
        pack = load_catalog().credit_packs.get(meta.get("chronote_pack_id", ""))
        if pack is None:
            result.outcome = "ignored"
            result.note(f"payment intent {pi['id']} names no known credit pack")
            return
        self._grant_pack(
            session,
            account,
            pack,
            result,
            # The payment's own time, as the auto-recharge purchase uses: both ask for one grant.
            at=from_ts(pi.get("created") or event.get("created") or 0),
            cause_type="payment_intent",
            cause_id=str(pi["id"]),
            payment_intent=str(pi["id"]),
            invoice_id=None,
        )

    def _grant_pack(
        self,
        session: Session,
        account: BillingAccount,
        pack: CreditPack,
        result: _Outcome,
        *,
        at: datetime,
        cause_type: str,
        cause_id: str,
        payment_intent: str | None,
        invoice_id: str | None,
    ) -> None:
        grant_pack(
            session,
            self.ledger,
            self.clock,
            account,
            pack,
            at=at,
            cause_type=cause_type,
            cause_id=cause_id,
            payment_intent=payment_intent,
            invoice_id=invoice_id,
            notes=result.notes,
        )

    def _issue_purchase(
        self, session: Session, account: BillingAccount, result: _Outcome, **kwargs: Any
    ) -> None:
        issue_purchase(session, self.ledger, self.clock, account, notes=result.notes, **kwargs)

    # ------------------------------------------------------------------ charges

    def on_charge_refunded(
        self,
        session: Session,
        event: dict[str, Any],
        ch: dict[str, Any],
        hints: dict[str, Any],
        result: _Outcome,
    ) -> None:
        charge = self._charge_row(session, str(ch["id"]), ch, hints, result)
        refunded = int(ch.get("amount_refunded") or 0)
        if refunded <= charge.amount_refunded:
            result.outcome = "stale"
            result.note(f"charge {ch['id']}: refunds up to {charge.amount_refunded} already applied")
            return
        charge.amount_refunded = refunded
        session.flush()
        applied = apply_charge_effects(session, self.ledger, charge, result.notes)
        if not applied:
            result.note(
                f"charge {ch['id']}: refund recorded; no purchase of ours yet, applied when it arrives"
            )

    def on_dispute(
        self,
        session: Session,
        event: dict[str, Any],
        dp: dict[str, Any],
        hints: dict[str, Any],
        result: _Outcome,
    ) -> None:
        charge_id = expandable_id(dp.get("charge"))
        if not charge_id:
            result.outcome = "ignored"
            result.note("dispute names no charge")
            return
        charge = self._charge_row(
            session,
            charge_id,
            {"amount": dp.get("amount"), "payment_intent": dp.get("payment_intent"), "customer": None},
            hints,
            result,
        )
        if event["type"] == "charge.dispute.created":
            new_state = "open"
        else:
            new_state = {"won": "won", "lost": "lost"}.get(str(dp.get("status")), "open")
        order = {"none": 0, "open": 1, "won": 2, "lost": 2}
        if order[new_state] <= order.get(charge.dispute_status, 0):
            result.outcome = "stale"
            result.note(f"charge {charge_id}: dispute already {charge.dispute_status}")
            return
        charge.dispute_status = new_state
        session.flush()
        if not apply_charge_effects(session, self.ledger, charge, result.notes):
            result.note(f"charge {charge_id}: dispute recorded; no purchase of ours yet")

    def _charge_row(
        self, session: Session, charge_id: str, ch: dict[str, Any], hints: dict[str, Any], result: _Outcome
    ) -> StripeCharge:
        row = session.execute(
            select(StripeCharge).where(StripeCharge.id == charge_id).with_for_update()
        ).scalar()
        pi = expandable_id(ch.get("payment_intent")) or hints.get("payment_intent")
        if row is None:
            row = StripeCharge(
                id=charge_id,
                account_id=None,
                payment_intent_id=pi,
                invoice_id=hints.get("invoice"),
                amount=int(ch.get("amount") or 0),
                amount_refunded=0,
                dispute_status="none",
                updated_at=self.clock.now(),
            )
            session.add(row)
        else:
            row.payment_intent_id = row.payment_intent_id or pi
            row.invoice_id = row.invoice_id or hints.get("invoice")
            if ch.get("amount") and (not row.amount or ch.get("customer") is not None):
                row.amount = int(ch["amount"])
            row.updated_at = self.clock.now()
        customer = expandable_id(ch.get("customer"))
        if customer and row.account_id is None:
            acct = session.execute(
                select(BillingAccount.id).where(BillingAccount.stripe_customer_id == customer)
            ).scalar()
            row.account_id = acct
        if row.account_id is None and customer:
            result.note(f"charge {charge_id}: customer {customer} is not ours")
        result.account_id = row.account_id
        session.flush()
        return row


# ---------------------------------------------------------------------- shared effects


def issue_purchase(
    session: Session,
    ledger: LedgerService,
    clock: Clock,
    account: BillingAccount,
    *,
    cause_key: str,
    kind: str,
    product_ref: str,
    amount: int,
    source: str,
    cause_type: str,
    cause_id: str,
    effective_at: datetime,
    expires_at: datetime,
    payment_intent: str | None,
    invoice_id: str | None,
    priority: int,
    description: str,
    notes: list[str],
) -> StripePurchase | None:
    """Grant credits bought with money, once per cause, and apply any refund or dispute that
    reached us before the purchase did."""
    # Under the wallet lock: the auto-recharge purchase and its payment_intent.succeeded webhook
    # can record the same purchase at once; the second must find the first's, not race it.
    ledger.lock_wallet(session, account.id)
    existing = session.execute(select(StripePurchase).where(StripePurchase.cause_key == cause_key)).scalar()
    if existing is not None:
        notes.append(f"{cause_key} already granted ({existing.grant_id})")
        return existing
    now = clock.now()
    if as_utc(expires_at) <= now:
        notes.append(
            f"{cause_key}: its period ended on {expires_at.isoformat()} before delivery; nothing granted"
        )
        return None
    effective = min(as_utc(effective_at), now) if as_utc(effective_at) < as_utc(expires_at) else now
    grant = ledger.issue_grant(
        session,
        account_id=account.id,
        amount=amount,
        source=source,
        idempotency_key=cause_key,
        cause_type=cause_type,
        cause_id=cause_id,
        priority=priority,
        effective_at=effective,
        expires_at=expires_at,
        description=description,
    )
    purchase = StripePurchase(
        id=new_id("pur"),
        cause_key=cause_key,
        account_id=account.id,
        kind=kind,
        product_ref=product_ref,
        payment_intent_id=payment_intent,
        invoice_id=invoice_id,
        grant_id=grant.id,
        credits=amount,
        refund_target=0,
        reversed=0,
        frozen=False,
        created_at=now,
    )
    session.add(purchase)
    session.flush()
    notes.append(f"granted {amount} millicredits ({cause_key})")
    for charge in _charges_for(session, purchase):
        apply_charge_effects(session, ledger, charge, notes, only=purchase)
    return purchase


def grant_pack(
    session: Session,
    ledger: LedgerService,
    clock: Clock,
    account: BillingAccount,
    pack: CreditPack,
    *,
    at: datetime,
    cause_type: str,
    cause_id: str,
    payment_intent: str | None,
    invoice_id: str | None,
    notes: list[str],
) -> StripePurchase | None:
    """A paid credit pack: its credits, usable for 12 months from payment."""
    key = f"pack:{payment_intent}" if payment_intent else f"{cause_type}:{cause_id}:pack"
    expires = add_months(at, pack.expires_after_months)
    return issue_purchase(
        session,
        ledger,
        clock,
        account,
        cause_key=key,
        kind="pack",
        product_ref=pack.id,
        amount=pack.millicredits,
        source="purchase",
        cause_type=cause_type,
        cause_id=cause_id,
        effective_at=at,
        expires_at=expires,
        payment_intent=payment_intent,
        invoice_id=invoice_id,
        priority=PACK_PRIORITY,
        description=f"{pack.name} pack, usable until {expires.date()}",
        notes=notes,
    )


def _charges_for(session: Session, purchase: StripePurchase) -> list[StripeCharge]:
    conds = []
    if purchase.payment_intent_id:
        conds.append(StripeCharge.payment_intent_id == purchase.payment_intent_id)
    if purchase.invoice_id:
        conds.append(StripeCharge.invoice_id == purchase.invoice_id)
    if not conds:
        return []
    return list(session.execute(select(StripeCharge).where(or_(*conds)).order_by(StripeCharge.id)).scalars())


def _purchases_for(session: Session, charge: StripeCharge) -> list[StripePurchase]:
    conds = []
    if charge.payment_intent_id:
        conds.append(StripePurchase.payment_intent_id == charge.payment_intent_id)
    if charge.invoice_id:
        conds.append(StripePurchase.invoice_id == charge.invoice_id)
    if not conds:
        return []
    return list(
        session.execute(
            select(StripePurchase).where(or_(*conds)).order_by(StripePurchase.cause_key)
        ).scalars()
    )


def apply_charge_effects(
    session: Session,
    ledger: LedgerService,
    charge: StripeCharge,
    notes: list[str],
    only: StripePurchase | None = None,
) -> bool:
    """Bring the purchases a charge paid for in line with its refunds and dispute.

    Refund: the refunded fraction (cumulative) of the credits bought, taken from what is neither
    spent nor held; never overdraws. Dispute: frozen while open; lost takes back what is left.
    Returns False when no purchase of ours is linked to the charge yet.
    """
    purchases = [only] if only is not None else _purchases_for(session, charge)
    if not purchases:
        return False
    for purchase in purchases:
        if charge.amount > 0 and charge.amount_refunded > 0:
            target = min(purchase.credits, purchase.credits * charge.amount_refunded // charge.amount)
            delta = target - purchase.refund_target
            if delta > 0:
                view = ledger.reverse_grant(
                    session,
                    grant_id=purchase.grant_id,
                    amount=delta,
                    idempotency_key=f"charge:{charge.id}:refund:{charge.amount_refunded}:{purchase.id}",
                    reason=f"Refund of {_share(charge.amount_refunded, charge.amount)} of the "
                    f"{_product_name(purchase)} payment (charge {charge.id})",
                    kind="refund",
                )
                purchase.refund_target = target
                purchase.reversed += view.reversed
                notes.append(
                    f"refund took back {view.reversed} of {delta} millicredits from {purchase.grant_id}"
                )
                if view.reversed < delta:
                    log.warning(
                        "refund_exceeds_unspent",
                        charge=charge.id,
                        grant=purchase.grant_id,
                        asked=delta,
                        reversed=view.reversed,
                    )
                    notes.append("the rest was already spent, held or expired: nothing is overdrawn")
        if charge.dispute_status == "open" and not purchase.frozen:
            ledger.set_grant_frozen(
                session,
                grant_id=purchase.grant_id,
                frozen=True,
                idempotency_key=f"charge:{charge.id}:dispute:freeze:{purchase.id}",
                reason=f"Frozen while the {_product_name(purchase)} payment is disputed (charge {charge.id})",
            )
            purchase.frozen = True
            notes.append(f"froze {purchase.grant_id} (dispute)")
        elif charge.dispute_status == "won" and purchase.frozen:
            ledger.set_grant_frozen(
                session,
                grant_id=purchase.grant_id,
                frozen=False,
                idempotency_key=f"charge:{charge.id}:dispute:won:{purchase.id}",
                reason=f"Released: the dispute on the {_product_name(purchase)} payment was won "
                f"(charge {charge.id})",
            )
            purchase.frozen = False
            notes.append(f"unfroze {purchase.grant_id} (dispute won)")
        elif charge.dispute_status == "lost":
            left = ledger.get_grant(session, purchase.grant_id).remaining
            if left > 0:
                view = ledger.reverse_grant(
                    session,
                    grant_id=purchase.grant_id,
                    amount=left,
                    idempotency_key=f"charge:{charge.id}:dispute:lost:{purchase.id}",
                    reason=f"Taken back: the dispute on the {_product_name(purchase)} payment was lost "
                    f"(charge {charge.id})",
                    kind="dispute_lost",
                )
                purchase.reversed += view.reversed
                notes.append(f"dispute lost: took back {view.reversed} millicredits")
    session.flush()
    return True


def _product_name(purchase: StripePurchase) -> str:
    catalog = load_catalog()
    product = catalog.credit_packs.get(purchase.product_ref) or catalog.plans.get(purchase.product_ref)
    return product.name if product is not None else purchase.product_ref


def _share(part: int, whole: int) -> str:
    """'all' or a whole percentage, rounded down (what was refunded, in words)."""
    if whole <= 0 or part >= whole:
        return "all"
    return f"{part * 100 // whole}%"


_CREDIT_EVENTS = ("invoice.paid", "checkout.session.completed", "payment_intent.succeeded")


def _invoice_subscription(inv: dict[str, Any]) -> str | None:
    details = (inv.get("parent") or {}).get("subscription_details") or {}
    return expandable_id(details.get("subscription")) or expandable_id(inv.get("subscription"))


def _subscription_line(inv: dict[str, Any]) -> dict[str, Any] | None:
    lines = ((inv.get("lines") or {}).get("data")) or []
    best = None
    for line in lines:
        parent = line.get("parent") or {}
        details = parent.get("subscription_item_details") or {}
        if details.get("proration") or line.get("proration"):
            continue
        if best is None or int(line.get("amount") or 0) > int(best.get("amount") or 0):
            best = line
    return best


def _invoice_plan(
    session: Session, inv: dict[str, Any], line: dict[str, Any] | None, sub_id: str
) -> Plan | None:
    catalog = load_catalog()
    if line:
        price = line.get("price") or ((line.get("pricing") or {}).get("price_details") or {}).get("price")
        if isinstance(price, dict):
            found = plan_for_lookup_key(price.get("lookup_key"))
            if found:
                return found[0]
    details = (inv.get("parent") or {}).get("subscription_details") or {}
    plan_id = _meta(details).get("chronote_plan_id")
    if plan_id and plan_id in catalog.plans:
        return catalog.plans[plan_id]
    row = session.get(StripeSubscription, sub_id)
    if row is not None:
        return catalog.plans.get(row.pending_plan_id or row.plan_id)
    return None


def refresh_plan_subscription(session: Session, account_id: str) -> PlanSubscription | None:
    """Derive the account's one plan subscription from the newest state of each subscription.

    A live subscription wins over ended ones (the newest live one if Stripe somehow has two);
    with none live, the most recently ended one is kept so the history shows why.
    """
    subs = list(
        session.execute(
            select(StripeSubscription).where(StripeSubscription.account_id == account_id)
        ).scalars()
    )
    if not subs:
        return None
    chosen = max(subs, key=lambda s: (s.status in LIVE_STATUSES and not s.deleted, s.stripe_created, s.id))
    failures = [
        as_utc(f)
        for f in session.execute(
            select(StripeInvoice.first_failed_at).where(
                StripeInvoice.subscription_id == chosen.id,
                StripeInvoice.status == "failed",
                StripeInvoice.first_failed_at.is_not(None),
            )
        ).scalars()
        if f is not None
    ]
    failed_at = min(failures) if failures else None
    status = chosen.status
    # Stripe's subscription.updated may still be on its way after an invoice event.
    if status in ("active", "trialing") and failed_at is not None:
        status = "past_due"
    elif status == "past_due" and failed_at is None:
        paid_since = session.execute(
            select(StripeInvoice.id).where(
                StripeInvoice.subscription_id == chosen.id,
                StripeInvoice.status == "paid",
                StripeInvoice.paid_at >= from_ts(chosen.last_event_created),
            )
        ).first()
        if paid_since is not None:
            status = "active"
    row = session.execute(
        select(PlanSubscription).where(PlanSubscription.account_id == account_id).with_for_update()
    ).scalar()
    values = dict(
        stripe_subscription_id=chosen.id,
        stripe_customer_id=chosen.customer_id,
        plan_id=chosen.plan_id,
        price_lookup_key=chosen.price_lookup_key,
        interval=chosen.interval,
        status=status,
        current_period_start=chosen.current_period_start,
        current_period_end=chosen.current_period_end,
        cancel_at_period_end=chosen.cancel_at_period_end,
        payment_failed_at=failed_at if status == "past_due" else None,
        last_event_created=chosen.last_event_created,
        updated_at=from_ts(chosen.last_event_created) if chosen.last_event_created else chosen.updated_at,
        pending_plan_id=chosen.pending_plan_id,
    )
    if row is None:
        row = PlanSubscription(account_id=account_id, **values)
        session.add(row)
    else:
        for key, value in values.items():
            setattr(row, key, value)
    session.flush()
    return row


_Handler = Callable[
    [WebhookProcessor, Session, dict[str, Any], dict[str, Any], dict[str, Any], _Outcome], None
]

_HANDLERS: dict[str, _Handler] = {
    "checkout.session.completed": WebhookProcessor.on_checkout_completed,
    "checkout.session.async_payment_succeeded": WebhookProcessor.on_checkout_completed,
    "checkout.session.expired": WebhookProcessor.on_checkout_completed,
    "customer.subscription.created": WebhookProcessor.on_subscription,
    "customer.subscription.updated": WebhookProcessor.on_subscription,
    "customer.subscription.deleted": WebhookProcessor.on_subscription,
    "invoice.paid": WebhookProcessor.on_invoice_paid,
    "invoice.payment_failed": WebhookProcessor.on_invoice_failed,
    "payment_intent.succeeded": WebhookProcessor.on_payment_intent_succeeded,
    "charge.refunded": WebhookProcessor.on_charge_refunded,
    "charge.dispute.created": WebhookProcessor.on_dispute,
    "charge.dispute.closed": WebhookProcessor.on_dispute,
}

__all__ = [
    "WebhookProcessor",
    "WebhookResult",
    "WebhookSignatureInvalid",
    "refresh_plan_subscription",
    "grant_pack",
    "verify_event",
]

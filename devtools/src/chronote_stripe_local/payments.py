"""Payment intents, charges, refunds and disputes.

A card's behaviour decides what a charge does: `succeeds`; `declines`; or
`declines_off_session` (the stand-in's "succeeds now, declines renewals" card, number
4000 0000 0000 0341, like Stripe's `pm_card_chargeCustomerFail`): charges with the person present
(the hosted Checkout page, a payment intent confirmed without `off_session`) succeed, charges
Stripe makes on its own (renewals, retries, `off_session=true`) decline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chronote_stripe_local import objects
from chronote_stripe_local.errors import StripeError, invalid_param, missing_param
from chronote_stripe_local.params import Params, apply_metadata

if TYPE_CHECKING:
    from chronote_stripe_local.engine import Engine

MINIMUM_AMOUNT = {"usd": 50, "eur": 50, "gbp": 30, "cad": 50, "aud": 50, "jpy": 50}
DISPUTE_TEST_EVIDENCE = {"winning_evidence": "won", "losing_evidence": "lost"}


class CardDeclined(Exception):
    """A declined charge; the API turns it into Stripe's 402 `card_error`."""

    def __init__(self, error: StripeError) -> None:
        super().__init__(error.message)
        self.error = error


class Payments:
    def __init__(self, engine: Engine) -> None:
        self.e = engine
        self.store = engine.store

    # --- charging --------------------------------------------------------------------------

    def would_succeed(self, pm: dict[str, Any] | None, off_session: bool) -> bool:
        if pm is None:
            return False
        behaviour = self.e.behaviour(pm)
        return behaviour == "succeeds" or (behaviour == "declines_off_session" and not off_session)

    def new_intent(
        self,
        *,
        amount: int,
        currency: str,
        customer_id: str | None,
        description: str | None,
        metadata: dict[str, str],
        pm: dict[str, Any] | None,
        setup_future_usage: str | None = None,
        receipt_email: str | None = None,
        statement_descriptor: str | None = None,
    ) -> dict[str, Any]:
        pi = objects.payment_intent(
            id=objects.new_id("pi_3"),
            created=self.e.now(customer_id),
            amount=amount,
            currency=currency,
            customer=customer_id,
            description=description,
            metadata=metadata,
            payment_method=pm["id"] if pm else None,
            setup_future_usage=setup_future_usage,
            receipt_email=receipt_email,
            statement_descriptor=statement_descriptor,
        )
        self.store.add(pi)
        self.e.emit("payment_intent.created", pi)
        return pi

    def confirm(self, pi: dict[str, Any], pm: dict[str, Any], *, off_session: bool) -> StripeError | None:
        """Charge the intent's card once; returns the decline, if any (state is updated either way)."""
        pi["payment_method"] = pm["id"]
        succeeded = self.would_succeed(pm, off_session)
        decline_code = None if succeeded else "generic_decline"
        ch = objects.charge(
            id=objects.new_id("ch_3"),
            created=self.e.now(pi["customer"]),
            amount=pi["amount"],
            currency=pi["currency"],
            customer=pi["customer"],
            description=pi["description"],
            metadata=dict(pi["metadata"]),
            payment_intent=pi["id"],
            pm=pm,
            succeeded=succeeded,
            failure_code=None if succeeded else "card_declined",
            failure_message=None if succeeded else "Your card was declined.",
            decline_code=decline_code,
            receipt_base=self.e.base_url,
        )
        self.store.add(ch)
        pi["latest_charge"] = ch["id"]
        if succeeded:
            pi["status"] = "succeeded"
            pi["amount_received"] = pi["amount"]
            pi["last_payment_error"] = None
            if pi["setup_future_usage"] and pi["customer"] and pm["customer"] is None:
                self.e.attach_payment_method(pm["id"], pi["customer"])
            self.e.emit("charge.succeeded", ch)
            self.e.emit("payment_intent.succeeded", pi)
            return None
        error = StripeError(
            402,
            "Your card was declined.",
            type="card_error",
            code="card_declined",
            decline_code=decline_code,
            charge=ch["id"],
        )
        pi["status"] = "requires_payment_method"
        pi["last_payment_error"] = {
            "advice_code": "try_again_later",
            "charge": ch["id"],
            "code": "card_declined",
            "decline_code": decline_code,
            "doc_url": "https://stripe.com/docs/error-codes/card-declined",
            "message": "Your card was declined.",
            "network_advice_code": None,
            "network_decline_code": None,
            "param": None,
            "payment_method": self.e.render(pm),
            "payment_method_type": "card",
            "type": "card_error",
        }
        self.e.emit("charge.failed", ch)
        self.e.emit("payment_intent.payment_failed", pi)
        error.extra["payment_intent"] = self.e.render(pi)
        error.extra["payment_method"] = self.e.render(pm)
        return error

    # --- payment intents API ---------------------------------------------------------------

    def _resolve_pm(self, pm_id: str | None, customer_id: str | None) -> dict[str, Any] | None:
        if not pm_id:
            return None
        pm = self.e.payment_method(pm_id)
        if pm["customer"] is not None and pm["customer"] != customer_id:
            raise invalid_param(
                "payment_method",
                f"The provided PaymentMethod ({pm['id']}) is attached to another customer"
                if customer_id
                else "The provided PaymentMethod was previously used with a PaymentIntent without Customer "
                "attachment, shared with a connected account without Customer attachment, or was detached "
                "from a Customer. It may not be used again. To use a PaymentMethod multiple times, you must "
                "attach it to a Customer first.",
                "payment_intent_invalid_parameter",
            )
        return pm

    def create_intent(self, p: Params) -> dict[str, Any]:
        amount = p.req_integer("amount", minimum=1)
        currency = p.req_text("currency").lower()
        if amount < MINIMUM_AMOUNT.get(currency, 1):
            raise invalid_param(
                "amount",
                f"Amount must be at least {objects.money(MINIMUM_AMOUNT[currency], currency)} {currency}",
                "amount_too_small",
            )
        customer_id = p.text("customer")
        if customer_id:
            self.e.customer(customer_id)
        confirm = bool(p.flag("confirm", False))
        off_session = _off_session(p)
        if off_session and not confirm:
            raise invalid_param(
                "off_session", "off_session can only be used when confirm=true.", "parameter_invalid_empty"
            )
        pm = self._resolve_pm(p.text("payment_method"), customer_id)
        sfu = p.choice("setup_future_usage", ("on_session", "off_session"))
        pi = self.new_intent(
            amount=amount,
            currency=currency,
            customer_id=customer_id,
            description=p.text("description"),
            metadata=apply_metadata({}, p.raw("metadata")),
            pm=pm,
            setup_future_usage=sfu,
            receipt_email=p.text("receipt_email"),
            statement_descriptor=p.text("statement_descriptor"),
        )
        if confirm:
            self._confirm_or_raise(pi, pm, off_session)
        return pi

    def _confirm_or_raise(self, pi: dict[str, Any], pm: dict[str, Any] | None, off_session: bool) -> None:
        if pm is None:
            who = f" with {pi['customer']}" if pi["customer"] else ""
            raise StripeError(
                400,
                f"You cannot confirm this PaymentIntent because it's missing a payment method. To confirm the "
                f"PaymentIntent{who}, specify a payment method attached to this customer along with the "
                "customer ID.",
                code="payment_intent_unexpected_state",
                param="payment_method",
            )
        error = self.confirm(pi, pm, off_session=off_session)
        if error is not None:
            raise CardDeclined(error)

    def update_intent(self, pi_id: str, p: Params) -> dict[str, Any]:
        pi = self.store.get("payment_intent", pi_id)
        if pi["status"] in ("succeeded", "canceled") and set(p.data) - {"metadata", "description", "expand"}:
            raise StripeError(
                400,
                f"This PaymentIntent's amount could not be updated because it has a status of {pi['status']}.",
                code="payment_intent_unexpected_state",
            )
        if p.has("metadata"):
            pi["metadata"] = apply_metadata(pi["metadata"], p.raw("metadata"))
        if p.has("description"):
            pi["description"] = p.text("description")
        if p.has("amount"):
            pi["amount"] = p.req_integer("amount", minimum=1)
        if p.has("payment_method"):
            pm = self._resolve_pm(p.text("payment_method"), pi["customer"])
            pi["payment_method"] = pm["id"] if pm else None
            pi["status"] = "requires_confirmation" if pm else "requires_payment_method"
        return pi  # Stripe has no `payment_intent.updated` event

    def confirm_intent(self, pi_id: str, p: Params) -> dict[str, Any]:
        pi = self.store.get("payment_intent", pi_id)
        if pi["status"] not in ("requires_payment_method", "requires_confirmation", "requires_action"):
            raise StripeError(
                400,
                f"You cannot confirm this PaymentIntent because it has a status of {pi['status']}.",
                code="payment_intent_unexpected_state",
            )
        pm_id = p.text("payment_method") or pi["payment_method"]
        pm = self._resolve_pm(pm_id, pi["customer"])
        self._confirm_or_raise(pi, pm, _off_session(p))
        return pi

    def cancel_intent(self, pi_id: str, p: Params) -> dict[str, Any]:
        pi = self.store.get("payment_intent", pi_id)
        if pi["status"] in ("succeeded", "canceled"):
            raise StripeError(
                400,
                f"You cannot cancel this PaymentIntent because it has a status of {pi['status']}.",
                code="payment_intent_unexpected_state",
            )
        pi["status"] = "canceled"
        pi["canceled_at"] = self.e.now(pi["customer"])
        pi["cancellation_reason"] = p.text("cancellation_reason", "requested_by_customer")
        self.e.emit("payment_intent.canceled", pi)
        return pi

    def list_intents(self, p: Params) -> dict[str, Any]:
        items = self.store.all("payment_intent")
        customer = p.text("customer")
        if customer:
            items = [i for i in items if i["customer"] == customer]
        return self.e.paginate(items, p, "/v1/payment_intents")

    def list_charges(self, p: Params) -> dict[str, Any]:
        items = self.store.all("charge")
        for field in ("customer", "payment_intent"):
            value = p.text(field)
            if value:
                items = [i for i in items if i[field] == value]
        return self.e.paginate(items, p, "/v1/charges")

    # --- refunds ---------------------------------------------------------------------------

    def create_refund(self, p: Params) -> dict[str, Any]:
        charge_id = p.text("charge")
        pi_id = p.text("payment_intent")
        if not charge_id and not pi_id:
            raise missing_param("charge")
        if pi_id:
            pi = self.store.get("payment_intent", pi_id, "payment_intent")
            if pi["status"] != "succeeded" or not pi["latest_charge"]:
                raise StripeError(
                    400,
                    f"This PaymentIntent ({pi_id}) does not have a successful charge to refund.",
                    param="payment_intent",
                )
            charge_id = pi["latest_charge"]
        ch = self.store.get("charge", charge_id, "charge")
        if ch["status"] != "succeeded":
            raise StripeError(
                400, f"Charge {ch['id']} has not succeeded; it cannot be refunded.", param="charge"
            )
        dispute = self.open_dispute_of(ch["id"])
        if dispute is not None:
            raise StripeError(
                400,
                f"Charge {ch['id']} has been charged back; cannot issue a refund.",
                code="charge_disputed",
                param="charge",
            )
        remaining = ch["amount"] - ch["amount_refunded"]
        if remaining <= 0:
            raise StripeError(
                400,
                f"Charge {ch['id']} has already been refunded.",
                code="charge_already_refunded",
                param="charge",
            )
        amount = p.integer("amount", remaining, minimum=1) or remaining
        if amount > remaining:
            raise StripeError(
                400,
                f"Refund amount ({objects.money(amount, ch['currency'])}) is greater than unrefunded amount on "
                f"charge ({objects.money(remaining, ch['currency'])})",
                code="amount_too_large",
                param="amount",
            )
        reason = p.choice("reason", ("duplicate", "fraudulent", "requested_by_customer"))
        before = self.e.render(ch)
        ref = objects.refund(
            id=objects.new_id("re_3"),
            created=self.e.now(ch["customer"]),
            amount=amount,
            currency=ch["currency"],
            charge=ch["id"],
            payment_intent=ch["payment_intent"],
            customer=ch["customer"],
            payment_method=ch["payment_method"],
            reason=reason,
            metadata=apply_metadata({}, p.raw("metadata")),
        )
        self.store.add(ref)
        ch["amount_refunded"] += amount
        ch["refunded"] = ch["amount_refunded"] >= ch["amount"]
        ch["refunds"]["data"].insert(0, self.e.render(ref))
        previous = {
            k: v for k, v in before.items() if k in ("amount_refunded", "refunded", "refunds") and v != ch[k]
        }
        self.e.emit("charge.refunded", ch, previous)
        self.e.emit("refund.created", ref)
        return ref

    def update_refund(self, refund_id: str, p: Params) -> dict[str, Any]:
        ref = self.store.get("refund", refund_id)
        before = self.e.render(ref)
        if p.has("metadata"):
            ref["metadata"] = apply_metadata(ref["metadata"], p.raw("metadata"))
        self.e.emit_updated("refund.updated", ref, before)
        return ref

    def list_refunds(self, p: Params) -> dict[str, Any]:
        items = self.store.all("refund")
        for field in ("charge", "payment_intent"):
            value = p.text(field)
            if value:
                items = [i for i in items if i[field] == value]
        return self.e.paginate(items, p, "/v1/refunds")

    # --- disputes --------------------------------------------------------------------------

    def open_dispute_of(self, charge_id: str) -> dict[str, Any] | None:
        for d in self.store.all("dispute"):
            if d["charge"] == charge_id and d["status"] in (
                "needs_response",
                "under_review",
                "warning_needs_response",
                "warning_under_review",
            ):
                return d
        return None

    def create_dispute(self, charge_id: str, p: Params) -> dict[str, Any]:
        """Stand-in helper (Stripe disputes a test charge paid with card 4000 0000 0000 0259)."""
        ch = self.store.get("charge", charge_id, "charge")
        if ch["status"] != "succeeded":
            raise StripeError(
                400, f"Charge {ch['id']} has not succeeded; it cannot be disputed.", param="charge"
            )
        if any(d["charge"] == ch["id"] for d in self.store.all("dispute")):
            raise StripeError(400, f"Charge {ch['id']} has already been disputed.", param="charge")
        amount = p.integer("amount", ch["amount"], minimum=1) or ch["amount"]
        if amount > ch["amount"]:
            raise invalid_param("amount", "The dispute amount cannot exceed the charge amount.")
        now = self.e.now(ch["customer"])
        dp = objects.dispute(
            id=objects.new_id("dp_1"),
            created=now,
            amount=amount,
            currency=ch["currency"],
            charge=ch,
            reason=p.choice(
                "reason",
                (
                    "fraudulent",
                    "duplicate",
                    "product_not_received",
                    "subscription_canceled",
                    "general",
                    "unrecognized",
                ),
                "fraudulent",
            )
            or "fraudulent",
            due_by=now + 7 * 86400,
        )
        dp["metadata"] = apply_metadata({}, p.raw("metadata"))
        self.store.add(dp)
        before = self.e.render(ch)
        ch["disputed"] = True
        self.e.emit("charge.dispute.created", dp)
        self.e.emit_updated("charge.updated", ch, before)
        self.e.emit("charge.dispute.funds_withdrawn", dp)
        return dp

    def update_dispute(self, dispute_id: str, p: Params) -> dict[str, Any]:
        dp = self.store.get("dispute", dispute_id)
        if dp["status"] in ("won", "lost"):
            raise StripeError(400, f"This dispute is already closed ({dp['status']}).")
        before = self.e.render(dp)
        if p.has("metadata"):
            dp["metadata"] = apply_metadata(dp["metadata"], p.raw("metadata"))
        evidence = p.sub("evidence")
        for name in objects.EVIDENCE_FIELDS:
            if evidence.has(name):
                dp["evidence"][name] = evidence.text(name)
        if evidence.data:
            dp["evidence_details"]["has_evidence"] = True
        outcome = None
        if p.flag("submit", True) and evidence.data:
            dp["evidence_details"]["submission_count"] += 1
            dp["status"] = "under_review"
            outcome = DISPUTE_TEST_EVIDENCE.get(dp["evidence"]["uncategorized_text"] or "")
        self.e.emit_updated("charge.dispute.updated", dp, before)
        if outcome is not None:
            self._close(dp, outcome)
        return dp

    def close_dispute(self, dispute_id: str) -> dict[str, Any]:
        """Accept the dispute: it is lost."""
        dp = self.store.get("dispute", dispute_id)
        if dp["status"] in ("won", "lost"):
            raise StripeError(400, f"This dispute is already closed ({dp['status']}).")
        self._close(dp, "lost")
        return dp

    def _close(self, dp: dict[str, Any], status: str) -> None:
        dp["status"] = status
        self.e.emit("charge.dispute.closed", dp)
        if status == "won":
            self.e.emit("charge.dispute.funds_reinstated", dp)

    def list_disputes(self, p: Params) -> dict[str, Any]:
        items = self.store.all("dispute")
        for field in ("charge", "payment_intent"):
            value = p.text(field)
            if value:
                items = [i for i in items if i[field] == value]
        return self.e.paginate(items, p, "/v1/disputes")


def _off_session(p: Params) -> bool:
    value = p.raw("off_session")
    if value in (None, "", "false"):
        return False
    if value in ("true", "one_off", "recurring"):
        return True
    raise invalid_param("off_session", f"Invalid off_session: {value}", "parameter_invalid_boolean")

"""Subscriptions, invoices, invoice items and time (test clocks and renewals).

How the stand-in bills, as Stripe does by default (API version of the installed SDK):
- A subscription's period lives on its items (`items.data[].current_period_start|end`); the
  billing cycle is anchored at its start (or trial end) and counted in whole intervals from the
  anchor, so a subscription started on Jan 31 renews on Feb 28, then Mar 31.
- The first invoice (`billing_reason=subscription_create`) bills the first period; at each
  period end a `subscription_cycle` invoice bills the next period plus pending invoice items
  (such as prorations made with `proration_behavior=create_prorations`). Like Stripe, a cycle
  invoice's own `period_start|end` is the period that just ended; its lines carry the new period.
- Subscription invoices are finalized and paid at once (Stripe waits about an hour before
  finalizing a renewal invoice; nothing observable through the API depends on that hour).
- A renewal that fails makes the subscription `past_due`; Stripe's retries are made 3, 5 and 7
  days after the first failure; when the last one fails the subscription is canceled
  (Stripe's default "cancel the subscription" setting).
- A plan change prorates by the second: credit for the unused time of the old price, charge for
  the remaining time of the new one. A change of interval (monthly to yearly) restarts the cycle
  and invoices at once.
- Invoices apply the customer's credit balance; a negative total becomes customer credit.

Why one module of some 1,450 lines: subscriptions, invoices and time are one state machine
here, as in Stripe. Starting, changing or cancelling a subscription creates, finalizes and
collects invoices; collecting an invoice that fails ends or pauses its subscription; renewals
and retries (time) do both. Split by resource family, each part would call the others both
ways through the shared engine, so the split would hide that cycle rather than remove it. The
class is read by its three sections: subscriptions, invoices, time.
"""

from __future__ import annotations

import calendar
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from chronote_stripe_local import amounts, documents, objects
from chronote_stripe_local.errors import StripeError, invalid_param, missing_param
from chronote_stripe_local.params import Params, apply_metadata
from chronote_stripe_local.payments import CardDeclined

if TYPE_CHECKING:
    from chronote_stripe_local.engine import Engine

RETRY_DAYS = (3, 2, 2)  # after the 1st, 2nd and 3rd failure: retries on days 3, 5 and 7
INCOMPLETE_EXPIRES = 23 * 3600
LIVE_STATUSES = ("active", "trialing", "past_due", "unpaid")


def add_intervals(anchor: int, interval: str, count: int, n: int) -> int:
    """The `n`-th period boundary after `anchor` (calendar months keep the anchor's day)."""
    if interval in ("day", "week"):
        days = count * n * (7 if interval == "week" else 1)
        return anchor + days * 86400
    start = datetime.fromtimestamp(anchor, UTC)
    months = count * n * (12 if interval == "year" else 1)
    total = start.month - 1 + months
    year, month = start.year + total // 12, total % 12 + 1
    day = min(start.day, calendar.monthrange(year, month)[1])
    return int(start.replace(year=year, month=month, day=day).timestamp())


def fmt_date(ts: int) -> str:
    moment = datetime.fromtimestamp(ts, UTC)
    return f"{moment.day} {moment.strftime('%b %Y')}"


def interval_label(price: dict[str, Any]) -> str:
    rec = price["recurring"]
    if not rec:
        return ""
    if rec["interval_count"] == 1:
        return f" / {rec['interval']}"
    return f" every {rec['interval_count']} {rec['interval']}s"


class Billing:
    def __init__(self, engine: Engine) -> None:
        self.e = engine
        self.store = engine.store

    # --- helpers ---------------------------------------------------------------------------

    def product_name(self, price: dict[str, Any]) -> str:
        prod = self.store.find(price["product"])
        return str(prod["name"]) if prod else str(price["product"])

    def period(self, sub: dict[str, Any]) -> tuple[int, int]:
        item = sub["items"]["data"][0]
        return int(item["current_period_start"]), int(item["current_period_end"])

    def _boundary(self, sub: dict[str, Any], k: int) -> int:
        private = self.store.private[sub["id"]]
        return add_intervals(private["anchor"], private["interval"], private["interval_count"], k)

    def _set_period(self, sub: dict[str, Any], start: int, end: int) -> None:
        for item in sub["items"]["data"]:
            item["current_period_start"] = start
            item["current_period_end"] = end

    def _pm_for(
        self, sub: dict[str, Any] | None, inv: dict[str, Any] | None, customer: dict[str, Any]
    ) -> dict[str, Any] | None:
        for pm_id in (
            inv["default_payment_method"] if inv else None,
            sub["default_payment_method"] if sub else None,
            customer["invoice_settings"]["default_payment_method"],
        ):
            if pm_id:
                pm = self.store.find(pm_id)
                if pm is not None and pm["customer"] == customer["id"]:
                    return pm
        return None

    def _items_from_params(
        self, p: Params, key: str = "items"
    ) -> list[tuple[dict[str, Any], int, dict[str, str]]]:
        lines = []
        for item in p.subarray(key):
            price = self._price_from_item(item)
            lines.append(
                (price, item.integer("quantity", 1, minimum=1) or 1, apply_metadata({}, item.raw("metadata")))
            )
        return lines

    def _price_from_item(self, item: Params) -> dict[str, Any]:
        if item.has("price_data"):
            pd = item.sub("price_data")
            if pd.has("product_data"):
                product = objects.product(
                    id=objects.new_id("prod_", 14),
                    created=self.e.now(),
                    name=pd.sub("product_data").req_text("name"),
                    description=pd.sub("product_data").text("description"),
                    active=False,
                    metadata=apply_metadata({}, pd.sub("product_data").raw("metadata")),
                )
                self.store.add(product)
                product_id = product["id"]
            else:
                product_id = pd.req_text("product")
                self.store.get("product", product_id, f"{pd.prefix}[product]")
            price = objects.price(
                id=objects.new_id("price_1"),
                created=self.e.now(),
                product=product_id,
                currency=pd.req_text("currency").lower(),
                unit_amount=pd.req_integer("unit_amount", minimum=0),
                recurring=objects.recurring(
                    pd.sub("recurring").text("interval") or "month",
                    pd.sub("recurring").integer("interval_count", 1) or 1,
                )
                if pd.has("recurring")
                else None,
                lookup_key=None,
                nickname=None,
                active=False,
                metadata={},
            )
            self.store.add(price)
            return price
        price_id = item.text("price") or item.text("plan")
        if not price_id:
            raise missing_param(f"{item.prefix}[price]")
        price = self.e.price(price_id, f"{item.prefix}[price]")
        if not price["active"]:
            raise invalid_param(
                f"{item.prefix}[price]",
                "The price specified is inactive. This field only accepts active prices.",
                "resource_missing",
            )
        return price

    def _check_recurring(
        self, lines: list[tuple[dict[str, Any], int, dict[str, str]]], param: str
    ) -> tuple[str, int, str]:
        if not lines:
            raise missing_param(param)
        intervals = set()
        currencies = set()
        for price, _qty, _md in lines:
            if not price["recurring"]:
                raise invalid_param(
                    param,
                    "The price specified is set to `type=one_time` but this field only accepts prices with `type=recurring`.",
                )
            intervals.add((price["recurring"]["interval"], price["recurring"]["interval_count"]))
            currencies.add(price["currency"])
        if len(intervals) > 1:
            raise invalid_param(
                param,
                "All prices on a subscription must have the same `recurring.interval` and `recurring.interval_count`.",
            )
        if len(currencies) > 1:
            raise invalid_param(param, "All prices on a subscription must have the same currency.")
        (interval, count), currency = intervals.pop(), currencies.pop()
        return interval, count, currency

    # --- subscriptions ---------------------------------------------------------------------

    def start_subscription(
        self,
        *,
        customer: dict[str, Any],
        lines: list[tuple[dict[str, Any], int, dict[str, str]]],
        one_time: list[tuple[dict[str, Any], int]],
        metadata: dict[str, str],
        pm: dict[str, Any] | None,
        trial_end: int | None,
        description: str | None,
        off_session: bool,
        payment_behavior: str,
        discount: tuple[dict[str, Any], dict[str, Any] | None] | None = None,
        automatic_tax: bool = False,
        missing_payment_method: str = "create_invoice",
    ) -> tuple[dict[str, Any], dict[str, Any], StripeError | None]:
        """Create a subscription and its first invoice, and collect that invoice.

        `discount` (a coupon and the code that named it) is redeemed and stays on the
        subscription as its coupon's duration says; `automatic_tax` taxes its invoices;
        `missing_payment_method` says what a trial ending without a card does (Stripe's
        `trial_settings[end_behavior][missing_payment_method]`: `cancel` or `create_invoice`).
        """
        interval, count, currency = self._check_recurring(lines, "items")
        now = self.e.now(customer["id"])
        if trial_end is not None and trial_end <= now:
            raise invalid_param(
                "trial_end", "Invalid timestamp: must be an integer Unix timestamp in the future."
            )
        sub = objects.subscription(
            id=objects.new_id("sub_1"),
            created=now,
            customer=customer["id"],
            currency=currency,
            metadata=metadata,
            default_payment_method=pm["id"] if pm else None,
            test_clock=customer["test_clock"],
            description=description,
        )
        anchor = trial_end or now
        self.store.private[sub["id"]].update(
            anchor=anchor, interval=interval, interval_count=count, cycle=0 if trial_end else 1
        )
        sub["billing_cycle_anchor"] = anchor
        period_end = trial_end or add_intervals(anchor, interval, count, 1)
        for price, qty, md in lines:
            sub["items"]["data"].append(
                objects.subscription_item(
                    id=objects.new_id("si_", 14),
                    created=now,
                    subscription=sub["id"],
                    price=price,
                    quantity=qty,
                    metadata=md,
                    period_start=now,
                    period_end=period_end,
                )
            )
        if trial_end:
            sub["trial_start"], sub["trial_end"] = now, trial_end
        sub["automatic_tax"] = {
            "disabled_reason": None,
            "enabled": automatic_tax,
            "liability": {"type": "self"} if automatic_tax else None,
        }
        sub["trial_settings"] = {"end_behavior": {"missing_payment_method": missing_payment_method}}
        self.store.add(sub)
        applied = None
        if discount is not None:
            applied = self.e.coupons.attach_to_subscription(sub, discount[0], discount[1], now)

        inv = self.new_invoice(
            customer, billing_reason="subscription_create", subscription=sub, period=(now, now)
        )
        for item in sub["items"]["data"]:
            price, qty = item["price"], item["quantity"]
            name = self.product_name(price)
            if trial_end:
                desc, amount = f"Trial period for {name}", 0
            else:
                desc = _line_description(qty, name, price)
                amount = price["unit_amount"] * qty
            self.add_line(
                inv,
                price=price,
                quantity=qty,
                amount=amount,
                description=desc,
                period=(now, period_end),
                sub=sub,
                item=item,
            )
        for price, qty in one_time:
            ii = self._new_invoice_item(
                customer,
                price=price,
                quantity=qty,
                amount=price["unit_amount"] * qty,
                description=self.product_name(price),
                period=(now, now),
                sub=sub,
                item=None,
                proration=False,
                metadata={},
            )
            self._attach_item(inv, ii)
        sub["latest_invoice"] = inv["id"]

        amount_due = max(0, inv["total"] + customer["balance"])
        will_pay = amount_due == 0 or (
            payment_behavior != "default_incomplete" and self.e.payments.would_succeed(pm, off_session)
        )
        if not will_pay and payment_behavior == "error_if_incomplete":
            self.store.remove(sub["id"])
            self.store.remove(inv["id"])
            if applied is not None:
                self.store.remove(applied["id"])
            raise CardDeclined(
                StripeError(
                    402,
                    "Your card was declined.",
                    type="card_error",
                    code="card_declined",
                    decline_code="generic_decline",
                )
            )
        sub["status"] = ("trialing" if trial_end else "active") if will_pay else "incomplete"
        self.e.emit("customer.subscription.created", sub)
        if applied is not None and discount is not None:
            self.e.coupons.redeem(discount[0], discount[1])
            self.e.emit("customer.discount.created", applied)
        self.e.emit("invoice.created", inv)
        error = None
        if payment_behavior == "default_incomplete" and amount_due > 0:
            self.finalize(inv)
            self._intent_for(inv, customer, pm)
        else:
            error = self.collect(inv, pm=pm, off_session=off_session)
        return sub, inv, error

    def create_subscription_api(self, p: Params) -> dict[str, Any]:
        customer = self.e.customer(p.req_text("customer"))
        lines = self._items_from_params(p)
        one_time = [(price, qty) for price, qty, _ in self._items_from_params(p, "add_invoice_items")]
        collection = p.choice(
            "collection_method", ("charge_automatically", "send_invoice"), "charge_automatically"
        )
        if collection != "charge_automatically":
            raise invalid_param(
                "collection_method",
                "The local Stripe stand-in only supports collection_method=charge_automatically.",
            )
        pm_id = p.text("default_payment_method")
        pm = None
        if pm_id:
            pm = self.e.payment_method(pm_id, "default_payment_method")
            if pm["customer"] != customer["id"]:
                raise invalid_param(
                    "default_payment_method",
                    f"The customer does not have a payment method with the ID {pm_id}. The payment method must be attached to the customer.",
                    "resource_missing",
                )
        else:
            pm = self._pm_for(None, None, customer)
        now = self.e.now(customer["id"])
        trial_end = p.text("trial_end")
        trial_ts: int | None = None
        if trial_end and trial_end != "now":
            trial_ts = p.integer("trial_end")
        elif p.has("trial_period_days"):
            days = p.integer("trial_period_days", 0, minimum=0) or 0
            trial_ts = now + days * 86400 if days else None
        behaviour = (
            p.choice(
                "payment_behavior",
                ("allow_incomplete", "default_incomplete", "error_if_incomplete", "pending_if_incomplete"),
                "allow_incomplete",
            )
            or "allow_incomplete"
        )
        if behaviour == "pending_if_incomplete":
            raise invalid_param(
                "payment_behavior", "pending_if_incomplete is only used when updating a subscription."
            )
        discount = self.e.coupons.resolve(p)
        if discount is not None:
            self.e.coupons.check(
                discount[0],
                discount[1],
                customer=customer["id"],
                lines=[(price["unit_amount"] * qty, price["product"]) for price, qty, _ in lines],
                currency=lines[0][0]["currency"] if lines else "usd",
                param="discounts[0]",
            )
        end_behavior = p.sub("trial_settings").sub("end_behavior")
        sub, _inv, _error = self.start_subscription(
            customer=customer,
            lines=lines,
            one_time=one_time,
            metadata=apply_metadata({}, p.raw("metadata")),
            pm=pm,
            trial_end=trial_ts,
            description=p.text("description"),
            off_session=bool(p.flag("off_session", False)),
            payment_behavior=behaviour,
            discount=discount,
            automatic_tax=bool(p.sub("automatic_tax").flag("enabled", False)),
            missing_payment_method=end_behavior.choice(
                "missing_payment_method", ("cancel", "create_invoice", "pause"), "create_invoice"
            )
            or "create_invoice",
        )
        return sub

    def list_subscriptions(self, p: Params) -> dict[str, Any]:
        items = self.store.all("subscription")
        status = p.text("status")
        if status is None:
            items = [s for s in items if s["status"] not in ("canceled", "incomplete_expired")]
        elif status == "ended":
            items = [s for s in items if s["status"] in ("canceled", "incomplete_expired")]
        elif status != "all":
            items = [s for s in items if s["status"] == status]
        for field in ("customer", "test_clock"):
            value = p.text(field)
            if value:
                items = [s for s in items if s[field] == value]
        price = p.text("price")
        if price:
            items = [s for s in items if any(i["price"]["id"] == price for i in s["items"]["data"])]
        return self.e.paginate(items, p, "/v1/subscriptions")

    def list_subscription_items(self, p: Params) -> dict[str, Any]:
        sub = self.store.get("subscription", p.req_text("subscription"), "subscription")
        rendered = self.e.render(sub)
        return self.e.paginate(
            list(rendered["items"]["data"]), p, f"/v1/subscription_items?subscription={sub['id']}"
        )

    def update_subscription(self, sub_id: str, p: Params) -> dict[str, Any]:
        sub = self.store.get("subscription", sub_id)
        ended = sub["status"] in ("canceled", "incomplete_expired")
        if ended and set(p.data) - {"metadata", "cancellation_details", "expand"}:
            raise StripeError(
                400, "A canceled subscription can only update its cancellation_details and metadata."
            )
        customer = self.e.customer(sub["customer"])
        proration = (
            p.choice(
                "proration_behavior", ("create_prorations", "always_invoice", "none"), "create_prorations"
            )
            or "create_prorations"
        )
        behaviour = (
            p.choice(
                "payment_behavior",
                ("allow_incomplete", "default_incomplete", "error_if_incomplete", "pending_if_incomplete"),
                "allow_incomplete",
            )
            or "allow_incomplete"
        )
        if behaviour == "pending_if_incomplete":
            raise invalid_param(
                "payment_behavior",
                "The local Stripe stand-in does not support payment_behavior=pending_if_incomplete.",
            )
        changes = []
        for item in p.subarray("items"):
            changes.append(item)
        before = self.e.render(sub)
        if p.has("default_payment_method"):
            pm_id = p.text("default_payment_method")
            if pm_id:
                pm = self.e.payment_method(pm_id, "default_payment_method")
                if pm["customer"] != customer["id"]:
                    raise invalid_param(
                        "default_payment_method",
                        f"The customer does not have a payment method with the ID {pm_id}.",
                        "resource_missing",
                    )
                sub["default_payment_method"] = pm["id"]
            else:
                sub["default_payment_method"] = None
        if p.has("metadata"):
            sub["metadata"] = apply_metadata(sub["metadata"], p.raw("metadata"))
        if p.has("description"):
            sub["description"] = p.text("description")
        details = p.sub("cancellation_details")
        for field in ("comment", "feedback"):
            if details.has(field):
                sub["cancellation_details"][field] = details.text(field)
        if p.has("cancel_at_period_end"):
            self._set_cancel_at_period_end(sub, bool(p.flag("cancel_at_period_end")))
        if p.has("cancel_at"):
            cancel_at = p.integer("cancel_at")
            sub["cancel_at"] = cancel_at
            sub["cancel_at_period_end"] = False
            sub["canceled_at"] = self.e.now(customer["id"]) if cancel_at else None
        invoice = None
        if changes or p.text("billing_cycle_anchor") == "now" or p.text("trial_end") == "now":
            invoice = self._change_items(
                sub,
                customer,
                changes,
                proration=proration,
                behaviour=behaviour,
                proration_date=p.integer("proration_date"),
                reset_anchor=p.text("billing_cycle_anchor") == "now",
                end_trial=p.text("trial_end") == "now",
            )
        self.e.emit_updated("customer.subscription.updated", sub, before)
        if invoice is not None:
            self.e.emit("invoice.created", invoice)
            if behaviour == "default_incomplete":
                self.finalize(invoice)
                if invoice["status"] == "open":
                    self._intent_for(invoice, customer, self._pm_for(sub, invoice, customer))
            else:
                self.collect(invoice, pm=self._pm_for(sub, invoice, customer), off_session=True)
        return sub

    def _set_cancel_at_period_end(self, sub: dict[str, Any], flag: bool) -> None:
        now = self.e.now(sub["customer"])
        sub["cancel_at_period_end"] = flag
        if flag:
            sub["cancel_at"] = self.period(sub)[1]
            sub["canceled_at"] = now
            sub["cancellation_details"]["reason"] = "cancellation_requested"
        else:
            sub["cancel_at"] = None
            sub["canceled_at"] = None
            sub["cancellation_details"]["reason"] = None

    def set_cancel_at_period_end(self, sub: dict[str, Any], flag: bool) -> None:
        """The billing portal's "cancel at period end" and "don't cancel"."""
        before = self.e.render(sub)
        self._set_cancel_at_period_end(sub, flag)
        self.e.emit_updated("customer.subscription.updated", sub, before)

    def _change_items(
        self,
        sub: dict[str, Any],
        customer: dict[str, Any],
        changes: list[Params],
        *,
        proration: str,
        behaviour: str,
        proration_date: int | None,
        reset_anchor: bool,
        end_trial: bool,
    ) -> dict[str, Any] | None:
        """Apply item changes; returns the invoice to collect at once, if any."""
        now = self.e.now(customer["id"])
        start, end = self.period(sub)
        old_end = end
        when = proration_date if proration_date is not None else now
        when = min(max(when, start), end)
        old_items = [(i["id"], i["price"], i["quantity"]) for i in sub["items"]["data"]]
        items = {i["id"]: i for i in sub["items"]["data"]}
        new_items: list[dict[str, Any]] = list(sub["items"]["data"])
        for change in changes:
            item_id = change.text("id")
            if item_id:
                if item_id not in items:
                    raise invalid_param(
                        f"{change.prefix}[id]", f"Invalid subscription_item id: {item_id}", "resource_missing"
                    )
                item = items[item_id]
                if change.flag("deleted", False):
                    new_items = [i for i in new_items if i["id"] != item_id]
                    continue
                if change.has("price") or change.has("price_data") or change.has("plan"):
                    price = self._price_from_item(change)
                    item["price"], item["plan"] = price, objects.plan_from_price(price)
                if change.has("quantity"):
                    item["quantity"] = change.integer("quantity", 1, minimum=0)
                if change.has("metadata"):
                    item["metadata"] = apply_metadata(item["metadata"], change.raw("metadata"))
            else:
                price = self._price_from_item(change)
                new_items.append(
                    objects.subscription_item(
                        id=objects.new_id("si_", 14),
                        created=now,
                        subscription=sub["id"],
                        price=price,
                        quantity=change.integer("quantity", 1, minimum=1) or 1,
                        metadata=apply_metadata({}, change.raw("metadata")),
                        period_start=start,
                        period_end=end,
                    )
                )
        interval, count, _currency = self._check_recurring(
            [(i["price"], i["quantity"], {}) for i in new_items], "items"
        )
        private = self.store.private[sub["id"]]
        interval_changed = (interval, count) != (private["interval"], private["interval_count"])
        trialing = sub["status"] == "trialing"
        reset = interval_changed or reset_anchor or (end_trial and trialing)

        # What the change costs, decided before anything is applied, so that
        # payment_behavior=error_if_incomplete can refuse it with nothing changed.
        credits: list[tuple[str | None, dict[str, Any], int, int]] = []
        debits: list[tuple[dict[str, Any], dict[str, Any], int, int]] = []
        new_by_id = {i["id"]: i for i in new_items}
        if not trialing and proration != "none" and end > start:
            fraction = (end - when) / (end - start)
            for item_id, price, qty in old_items:
                new = new_by_id.get(item_id)
                if new is None or new["price"]["id"] != price["id"] or new["quantity"] != qty:
                    credits.append((item_id, price, qty, -round(price["unit_amount"] * qty * fraction)))
            if not reset:
                old_by_id = {i: (pr, q) for i, pr, q in old_items}
                for new in new_items:
                    old = old_by_id.get(new["id"])
                    if old is None or old[0]["id"] != new["price"]["id"] or old[1] != new["quantity"]:
                        debits.append(
                            (
                                new,
                                new["price"],
                                new["quantity"],
                                round(new["price"]["unit_amount"] * new["quantity"] * fraction),
                            )
                        )
        immediate = reset or proration == "always_invoice"
        if immediate and behaviour == "error_if_incomplete":
            total = sum(c[3] for c in credits) + sum(d[3] for d in debits)
            if reset:
                total += sum(i["price"]["unit_amount"] * i["quantity"] for i in new_items)
            if total + customer["balance"] > 0 and not self.e.payments.would_succeed(
                self._pm_for(sub, None, customer), True
            ):
                # Nothing applied: restore the items exactly as they were.
                for item_id, price, qty in old_items:
                    items[item_id]["price"], items[item_id]["plan"], items[item_id]["quantity"] = (
                        price,
                        objects.plan_from_price(price),
                        qty,
                    )
                raise CardDeclined(
                    StripeError(
                        402,
                        "Your card was declined.",
                        type="card_error",
                        code="card_declined",
                        decline_code="generic_decline",
                    )
                )

        sub["items"]["data"] = new_items
        if reset:
            private.update(anchor=now, interval=interval, interval_count=count, cycle=1)
            sub["billing_cycle_anchor"] = now
            start, end = now, add_intervals(now, interval, count, 1)
            self._set_period(sub, start, end)
            if trialing:
                sub["trial_end"] = now
                sub["status"] = "active"
        else:
            for item in new_items:
                item["current_period_start"], item["current_period_end"] = start, end

        pending = []
        for item_id, price, qty, amount in credits:
            pending.append(
                self._new_invoice_item(
                    customer,
                    price=price,
                    quantity=qty,
                    amount=amount,
                    description=f"Unused time on {_qty(qty)}{self.product_name(price)} after {fmt_date(when)}",
                    period=(when, old_end),
                    sub=sub,
                    item=item_id if item_id in new_by_id else None,
                    proration=True,
                    metadata={},
                )
            )
        for item, price, qty, amount in debits:
            pending.append(
                self._new_invoice_item(
                    customer,
                    price=price,
                    quantity=qty,
                    amount=amount,
                    description=f"Remaining time on {_qty(qty)}{self.product_name(price)} after {fmt_date(when)}",
                    period=(when, end),
                    sub=sub,
                    item=item["id"],
                    proration=True,
                    metadata={},
                )
            )
        if not immediate:
            return None
        inv = self.new_invoice(
            customer, billing_reason="subscription_update", subscription=sub, period=(now, now)
        )
        for ii in pending:
            self._attach_item(inv, ii)
        if reset:
            for item in new_items:
                price, qty = item["price"], item["quantity"]
                self.add_line(
                    inv,
                    price=price,
                    quantity=qty,
                    amount=price["unit_amount"] * qty,
                    description=_line_description(qty, self.product_name(price), price),
                    period=(start, end),
                    sub=sub,
                    item=item,
                )
        if not inv["lines"]["data"]:
            self.store.remove(inv["id"])
            return None
        sub["latest_invoice"] = inv["id"]
        return inv

    def change_price(self, sub: dict[str, Any], price_id: str, proration: str) -> dict[str, Any]:
        """The billing portal's plan switch: the subscription's single item moves to `price_id`."""
        params = Params(
            {
                "items": [{"id": sub["items"]["data"][0]["id"], "price": price_id}],
                "proration_behavior": proration,
            }
        )
        return self.update_subscription(sub["id"], params)

    def cancel_subscription(self, sub_id: str, p: Params) -> dict[str, Any]:
        sub = self.store.get("subscription", sub_id)
        if sub["status"] in ("canceled", "incomplete_expired"):
            raise StripeError(
                400,
                f"No such subscription: '{sub_id}' is already canceled; it cannot be canceled again.",
                code="resource_missing",
                param="id",
            )
        details = p.sub("cancellation_details")
        for field in ("comment", "feedback"):
            if details.has(field):
                sub["cancellation_details"][field] = details.text(field)
        if p.flag("prorate", False):
            customer = self.e.customer(sub["customer"])
            start, end = self.period(sub)
            now = self.e.now(customer["id"])
            if end > start and sub["status"] == "active":
                fraction = (end - now) / (end - start)
                for item in sub["items"]["data"]:
                    price, qty = item["price"], item["quantity"]
                    self._new_invoice_item(
                        customer,
                        price=price,
                        quantity=qty,
                        amount=-round(price["unit_amount"] * qty * fraction),
                        description=f"Unused time on {_qty(qty)}{self.product_name(price)} after {fmt_date(now)}",
                        period=(now, end),
                        sub=None,
                        item=None,
                        proration=True,
                        metadata={},
                    )
        self.end_subscription(sub, reason="cancellation_requested")
        if p.flag("invoice_now", False):
            customer = self.e.customer(sub["customer"])
            inv = self.new_invoice(
                customer, billing_reason="manual", subscription=None, period=(self.e.now(customer["id"]),) * 2
            )
            for ii in self.pending_items(customer["id"], sub["id"]):
                self._attach_item(inv, ii)
            if inv["lines"]["data"]:
                self.e.emit("invoice.created", inv)
                self.collect(inv, pm=self._pm_for(sub, inv, customer), off_session=True)
            else:
                self.store.remove(inv["id"])
        return sub

    def end_subscription(self, sub: dict[str, Any], *, reason: str) -> None:
        """The subscription ends now: `customer.subscription.deleted`."""
        now = self.e.now(sub["customer"])
        sub["status"] = "canceled"
        sub["ended_at"] = now
        sub["canceled_at"] = sub["canceled_at"] or now
        sub["cancel_at_period_end"] = (
            sub["cancel_at_period_end"] and sub["cancel_at"] is not None and sub["cancel_at"] <= now
        )
        sub["cancellation_details"]["reason"] = reason
        self.e.emit("customer.subscription.deleted", sub)

    # --- invoices --------------------------------------------------------------------------

    def new_invoice(
        self,
        customer: dict[str, Any],
        *,
        billing_reason: str,
        subscription: dict[str, Any] | None,
        period: tuple[int, int],
        description: str | None = None,
        metadata: dict[str, str] | None = None,
        auto_advance: bool = True,
        currency: str | None = None,
    ) -> dict[str, Any]:
        inv = objects.invoice(
            id=objects.new_id("in_1"),
            created=self.e.now(customer["id"]),
            customer=customer,
            currency=currency or (subscription["currency"] if subscription else "usd"),
            billing_reason=billing_reason,
            subscription=subscription,
            description=description,
            metadata=metadata or {},
            period_start=period[0],
            period_end=period[1],
            auto_advance=auto_advance,
        )
        self.store.add(inv)
        if subscription is not None:
            inv["discounts"] = self.e.coupons.for_invoice(subscription, inv["created"])
            self.store.private[inv["id"]]["automatic_tax"] = bool(subscription["automatic_tax"]["enabled"])
        return inv

    def add_line(
        self,
        inv: dict[str, Any],
        *,
        price: dict[str, Any],
        quantity: int,
        amount: int,
        description: str,
        period: tuple[int, int],
        sub: dict[str, Any],
        item: dict[str, Any],
    ) -> None:
        inv["lines"]["data"].append(
            objects.invoice_line(
                id=objects.new_id("il_1"),
                invoice=inv["id"],
                amount=amount,
                currency=inv["currency"],
                description=description,
                quantity=quantity,
                period_start=period[0],
                period_end=period[1],
                price=price,
                metadata=dict(sub["metadata"]),
                subscription=sub["id"],
                subscription_item=item["id"],
                invoice_item=None,
                proration=False,
            )
        )
        self._totals(inv)

    def _new_invoice_item(
        self,
        customer: dict[str, Any],
        *,
        price: dict[str, Any],
        quantity: int,
        amount: int,
        description: str,
        period: tuple[int, int],
        sub: dict[str, Any] | None,
        item: str | None,
        proration: bool,
        metadata: dict[str, str],
    ) -> dict[str, Any]:
        ii = objects.invoice_item(
            id=objects.new_id("ii_1"),
            created=self.e.now(customer["id"]),
            customer=customer,
            amount=amount,
            currency=price["currency"],
            description=description,
            quantity=quantity,
            period_start=period[0],
            period_end=period[1],
            price=price,
            metadata=metadata,
            subscription=sub["id"] if sub else None,
            subscription_item=item,
            proration=proration,
        )
        self.store.add(ii)
        self.e.emit("invoiceitem.created", ii)
        return ii

    def _attach_item(self, inv: dict[str, Any], ii: dict[str, Any]) -> None:
        ii["invoice"] = inv["id"]
        details = ii["parent"]["subscription_details"] if ii["parent"] else None
        price = self.store.find(ii["pricing"]["price_details"]["price"]) or {
            "id": ii["pricing"]["price_details"]["price"],
            "product": ii["pricing"]["price_details"]["product"],
            "unit_amount_decimal": ii["pricing"]["unit_amount_decimal"],
        }
        inv["lines"]["data"].append(
            objects.invoice_line(
                id=objects.new_id("il_1"),
                invoice=inv["id"],
                amount=ii["amount"],
                currency=ii["currency"],
                description=ii["description"],
                quantity=ii["quantity"],
                period_start=ii["period"]["start"],
                period_end=ii["period"]["end"],
                price=price,
                metadata=dict(ii["metadata"]),
                subscription=details["subscription"] if details else None,
                subscription_item=details["subscription_item"] if details else None,
                invoice_item=ii["id"],
                proration=ii["proration"],
            )
        )
        self._totals(inv)

    def pending_items(self, customer_id: str, sub_id: str | None) -> list[dict[str, Any]]:
        """The customer's invoice items not yet on an invoice (oldest first)."""
        out = []
        for ii in reversed(self.store.all("invoiceitem")):
            if ii["customer"] != customer_id or ii["invoice"] is not None:
                continue
            owner = ii["parent"]["subscription_details"]["subscription"] if ii["parent"] else None
            if owner is None or owner == sub_id:
                out.append(ii)
        return out

    def _totals(self, inv: dict[str, Any]) -> None:
        amounts.invoice_totals(self.e, inv)

    def finalize(self, inv: dict[str, Any]) -> None:
        """Draft to open (or straight to paid when nothing is due), applying the customer's balance."""
        if inv["status"] != "draft":
            return
        customer = self.e.customer(inv["customer"])
        now = self.e.now(customer["id"])
        self._totals(inv)  # tax follows the customer's address as it is now
        balance = customer["balance"]
        due = inv["total"] + balance
        inv["starting_balance"] = balance
        inv["ending_balance"] = due if due < 0 else 0
        inv["amount_due"] = inv["amount_remaining"] = max(0, due)
        if balance != inv["ending_balance"]:
            before = self.e.render(customer)
            customer["balance"] = inv["ending_balance"]
            self.e.emit_updated("customer.updated", customer, before)
        inv["number"] = f"{customer['invoice_prefix']}-{customer['next_invoice_sequence']:04d}"
        customer["next_invoice_sequence"] += 1
        inv["status"] = "open"
        inv["effective_at"] = now
        inv["status_transitions"]["finalized_at"] = now
        inv["customer_address"] = customer["address"]
        inv["customer_name"] = customer["name"]
        inv["customer_tax_ids"] = [
            {"type": t["type"], "value": t["value"]} for t in self.e.tax.tax_ids_of(customer["id"])
        ]
        documents.publish_invoice(self.e, inv)
        self.e.coupons.applied_to_invoice(self._sub_of(inv), inv)
        self.e.emit("invoice.finalized", inv)
        if inv["amount_due"] == 0:
            self._mark_paid(inv, amount=0)

    def _mark_paid(self, inv: dict[str, Any], amount: int) -> None:
        now = self.e.now(inv["customer"])
        inv["status"] = "paid"
        inv["amount_paid"] = amount
        inv["amount_remaining"] = 0
        inv["next_payment_attempt"] = None
        inv["status_transitions"]["paid_at"] = now
        inv["webhooks_delivered_at"] = inv["webhooks_delivered_at"] or now
        self.e.emit("invoice.paid", inv)
        self.e.emit("invoice.payment_succeeded", inv)
        sub = self._sub_of(inv)
        owed = sub is not None and any(
            i["status"] == "open" for i in self.store.all("invoice") if self._sub_of(i) is sub
        )
        if sub is not None and sub["status"] in ("past_due", "unpaid", "incomplete") and not owed:
            before = self.e.render(sub)
            sub["status"] = "trialing" if sub["trial_end"] and sub["trial_end"] > now else "active"
            self.e.emit_updated("customer.subscription.updated", sub, before)

    def _sub_of(self, inv: dict[str, Any]) -> dict[str, Any] | None:
        parent = inv["parent"]
        if parent and parent["subscription_details"]:
            return self.store.find(parent["subscription_details"]["subscription"])
        return None

    def _intent_for(
        self, inv: dict[str, Any], customer: dict[str, Any], pm: dict[str, Any] | None
    ) -> dict[str, Any]:
        """The invoice's payment intent and its `invoice_payment` (created on first use)."""
        for ip in self.store.all("invoice_payment"):
            if ip["invoice"] == inv["id"] and ip["status"] == "open":
                pi = self.store.get("payment_intent", ip["payment"]["payment_intent"])
                if pi["status"] in ("requires_payment_method", "requires_confirmation"):
                    return pi
        reason = {"subscription_create": "Subscription creation"}.get(
            inv["billing_reason"], "Subscription update"
        )
        pi = self.e.payments.new_intent(
            amount=inv["amount_remaining"],
            currency=inv["currency"],
            customer_id=customer["id"],
            description=reason if inv["billing_reason"].startswith("subscription") else inv["description"],
            metadata={},
            pm=pm,
        )
        ip = objects.invoice_payment(
            id=objects.new_id("inpay_1"),
            created=self.e.now(customer["id"]),
            invoice=inv["id"],
            amount=inv["amount_remaining"],
            currency=inv["currency"],
            payment_intent=pi["id"],
        )
        self.store.add(ip)
        return pi

    def collect(
        self, inv: dict[str, Any], *, pm: dict[str, Any] | None, off_session: bool
    ) -> StripeError | None:
        """Finalize if needed and charge the invoice once; returns the decline, if any."""
        self.finalize(inv)
        if inv["status"] != "open":
            return None
        customer = self.e.customer(inv["customer"])
        now = self.e.now(customer["id"])
        inv["attempted"] = True
        inv["attempt_count"] += 1
        error: StripeError | None
        if pm is None:
            error = StripeError(
                402,
                "The customer has no default payment method to charge.",
                type="invalid_request_error",
                code="invoice_no_payment_method_types",
            )
        else:
            pi = self._intent_for(inv, customer, pm)
            error = self.e.payments.confirm(pi, pm, off_session=off_session)
            if error is None:
                for ip in self.store.all("invoice_payment"):
                    if ip["payment"]["payment_intent"] == pi["id"]:
                        ip["status"] = "paid"
                        ip["amount_paid"] = pi["amount"]
                        ip["status_transitions"]["paid_at"] = now
                        self.e.emit("invoice_payment.paid", ip)
                self._mark_paid(inv, amount=inv["amount_due"])
                return None
        failures = inv["attempt_count"]
        private = self.store.private[inv["id"]]
        private.setdefault("first_failure", now)
        if failures <= len(RETRY_DAYS) and inv["billing_reason"] != "subscription_create":
            inv["next_payment_attempt"] = now + RETRY_DAYS[failures - 1] * 86400
        else:
            inv["next_payment_attempt"] = None
        self.e.emit("invoice.payment_failed", inv)
        sub = self._sub_of(inv)
        if (
            sub is not None
            and sub["status"] in ("active", "trialing")
            and inv["billing_reason"] != "subscription_create"
        ):
            before = self.e.render(sub)
            sub["status"] = "past_due"
            self.e.emit_updated("customer.subscription.updated", sub, before)
        if sub is not None and inv["next_payment_attempt"] is None and sub["status"] == "past_due":
            self.end_subscription(sub, reason="payment_failed")
        return error

    def pay_invoice_api(self, inv_id: str, p: Params) -> dict[str, Any]:
        inv = self.store.get("invoice", inv_id)
        if inv["status"] == "paid":
            raise StripeError(400, "Invoice is already paid")
        if inv["status"] in ("void", "uncollectible"):
            raise StripeError(400, f"You cannot pay an invoice with a status of {inv['status']}.")
        customer = self.e.customer(inv["customer"])
        if p.flag("paid_out_of_band", False):
            self.finalize(inv)
            if inv["status"] == "open":
                self._mark_paid(inv, amount=0)
            return inv
        pm_id = p.text("payment_method")
        pm = None
        if pm_id:
            pm = self.e.payment_method(pm_id)
            if pm["customer"] is None:
                self.e.attach_payment_method(pm["id"], customer["id"])
        else:
            pm = self._pm_for(self._sub_of(inv), inv, customer)
        error = self.collect(inv, pm=pm, off_session=bool(p.flag("off_session", True)))
        if error is not None:
            raise CardDeclined(error) if error.status == 402 and error.type == "card_error" else error
        return inv

    def create_invoice_api(self, p: Params) -> dict[str, Any]:
        customer = self.e.customer(p.req_text("customer"))
        collection = p.choice(
            "collection_method", ("charge_automatically", "send_invoice"), "charge_automatically"
        )
        if collection != "charge_automatically":
            raise invalid_param(
                "collection_method",
                "The local Stripe stand-in only supports collection_method=charge_automatically.",
            )
        sub = None
        if p.text("subscription"):
            sub = self.store.get("subscription", p.text("subscription"), "subscription")
        now = self.e.now(customer["id"])
        inv = self.new_invoice(
            customer,
            billing_reason="manual",
            subscription=sub,
            period=(now, now),
            description=p.text("description"),
            metadata=apply_metadata({}, p.raw("metadata")),
            auto_advance=bool(p.flag("auto_advance", False)),
            currency=(p.text("currency") or "usd").lower(),
        )
        if p.has("automatic_tax"):
            self.store.private[inv["id"]]["automatic_tax"] = bool(
                p.sub("automatic_tax").flag("enabled", False)
            )
            inv["automatic_tax"] = self.e.tax.automatic_tax(
                bool(self.store.private[inv["id"]]["automatic_tax"]), "requires_location_inputs", invoice=True
            )
        pm_id = p.text("default_payment_method")
        if pm_id:
            pm = self.e.payment_method(pm_id, "default_payment_method")
            if pm["customer"] != customer["id"]:
                raise invalid_param(
                    "default_payment_method",
                    f"The customer does not have a payment method with the ID {pm_id}.",
                    "resource_missing",
                )
            inv["default_payment_method"] = pm["id"]
        if p.choice("pending_invoice_items_behavior", ("exclude", "include"), "exclude") == "include":
            for ii in self.pending_items(customer["id"], sub["id"] if sub else None):
                self._attach_item(inv, ii)
        self.e.emit("invoice.created", inv)
        return inv

    def create_invoice_item_api(self, p: Params) -> dict[str, Any]:
        customer = self.e.customer(p.req_text("customer"))
        quantity = p.integer("quantity", 1, minimum=1) or 1
        priced = p.sub("pricing").text("price")  # since API version 2025-03-31: `pricing[price]`
        if priced or p.has("price_data"):
            price = (
                self._price_from_item(p) if p.has("price_data") else self.e.price(priced, "pricing[price]")
            )
            if price["recurring"]:
                raise invalid_param(
                    "pricing[price]",
                    "The price specified is a recurring price; invoice items take one-time prices.",
                )
            amount = price["unit_amount"] * quantity
        else:
            amount = p.req_integer("amount")
            currency = p.req_text("currency").lower()
            price = objects.price(
                id=objects.new_id("price_1"),
                created=self.e.now(customer["id"]),
                product=objects.new_id("prod_", 14),
                currency=currency,
                unit_amount=amount,
                recurring=None,
                lookup_key=None,
                nickname=None,
                active=False,
                metadata={},
            )
            quantity = 1
        now = self.e.now(customer["id"])
        inv = None
        if p.text("invoice"):
            inv = self.store.get("invoice", p.text("invoice"), "invoice")
            if inv["status"] != "draft":
                raise invalid_param("invoice", "You can only add invoice items to draft invoices.")
        sub = (
            self.store.get("subscription", p.text("subscription"), "subscription")
            if p.text("subscription")
            else None
        )
        period = p.sub("period")
        ii = self._new_invoice_item(
            customer,
            price=price,
            quantity=quantity,
            amount=amount,
            description=p.text("description") or (self.product_name(price) if priced else "Invoice item"),
            period=(period.integer("start", now) or now, period.integer("end", now) or now),
            sub=sub,
            item=None,
            proration=False,
            metadata=apply_metadata({}, p.raw("metadata")),
        )
        if inv is not None:
            self._attach_item(inv, ii)
            self.e.emit("invoice.updated", inv)
        return ii

    def finalize_api(self, inv_id: str, p: Params) -> dict[str, Any]:
        inv = self.store.get("invoice", inv_id)
        if inv["status"] != "draft":
            raise StripeError(
                400, "This invoice is already finalized, you can't re-finalize a non-draft invoice."
            )
        if p.has("auto_advance"):
            inv["auto_advance"] = bool(p.flag("auto_advance"))
        self.finalize(inv)
        if inv["status"] == "open" and inv["auto_advance"]:
            # Stripe collects an auto-advancing invoice about an hour after finalizing it.
            inv["next_payment_attempt"] = self.e.now(inv["customer"]) + 3600
        return inv

    def void_api(self, inv_id: str) -> dict[str, Any]:
        inv = self.store.get("invoice", inv_id)
        if inv["status"] != "open":
            raise StripeError(400, f"You can only void an open invoice (this one is {inv['status']}).")
        inv["status"] = "void"
        inv["next_payment_attempt"] = None
        inv["status_transitions"]["voided_at"] = self.e.now(inv["customer"])
        self.e.emit("invoice.voided", inv)
        return inv

    def list_invoices(self, p: Params) -> dict[str, Any]:
        items = self.store.all("invoice")
        customer = p.text("customer")
        if customer:
            items = [i for i in items if i["customer"] == customer]
        sub = p.text("subscription")
        if sub:
            items = [
                i for i in items if i["parent"] and i["parent"]["subscription_details"]["subscription"] == sub
            ]
        status = p.text("status")
        if status:
            items = [i for i in items if i["status"] == status]
        return self.e.paginate(items, p, "/v1/invoices")

    def list_invoice_lines(self, inv_id: str, p: Params) -> dict[str, Any]:
        inv = self.store.get("invoice", inv_id)
        return self.e.paginate(list(inv["lines"]["data"]), p, f"/v1/invoices/{inv_id}/lines")

    def list_invoice_items(self, p: Params) -> dict[str, Any]:
        items = self.store.all("invoiceitem")
        customer = p.text("customer")
        if customer:
            items = [i for i in items if i["customer"] == customer]
        inv = p.text("invoice")
        if inv:
            items = [i for i in items if i["invoice"] == inv]
        pending = p.flag("pending")
        if pending is not None:
            items = [i for i in items if (i["invoice"] is None) == pending]
        return self.e.paginate(items, p, "/v1/invoiceitems", created_field="date")

    def list_invoice_payments(self, p: Params) -> dict[str, Any]:
        items = self.store.all("invoice_payment")
        inv = p.text("invoice")
        if inv:
            items = [i for i in items if i["invoice"] == inv]
        payment = p.sub("payment")
        pi = payment.text("payment_intent")
        if pi:
            items = [i for i in items if i["payment"]["payment_intent"] == pi]
        status = p.text("status")
        if status:
            items = [i for i in items if i["status"] == status]
        return self.e.paginate(items, p, "/v1/invoice_payments")

    # --- time ------------------------------------------------------------------------------

    def renew(self, sub: dict[str, Any]) -> None:
        """The current period of `sub` has ended (now is its end)."""
        customer = self.e.customer(sub["customer"])
        old_start, old_end = self.period(sub)
        if sub["cancel_at"] is not None and sub["cancel_at"] <= old_end:
            self.end_subscription(
                sub, reason=sub["cancellation_details"]["reason"] or "cancellation_requested"
            )
            return
        end_behavior = sub["trial_settings"]["end_behavior"]["missing_payment_method"]
        if (
            sub["status"] == "trialing"
            and end_behavior == "cancel"
            and self._pm_for(sub, None, customer) is None
        ):
            # The trial ends without a card to charge: Stripe cancels instead of invoicing.
            self.end_subscription(sub, reason="cancellation_requested")
            return
        private = self.store.private[sub["id"]]
        private["cycle"] += 1
        new_end = self._boundary(sub, private["cycle"])
        before = self.e.render(sub)
        self._set_period(sub, old_end, new_end)
        if sub["status"] == "trialing":
            sub["status"] = "active"
        self.e.emit_updated("customer.subscription.updated", sub, before)
        inv = self.new_invoice(
            customer, billing_reason="subscription_cycle", subscription=sub, period=(old_start, old_end)
        )
        for item in sub["items"]["data"]:
            price = self.store.find(item["price"]["id"]) or item["price"]
            qty = item["quantity"]
            self.add_line(
                inv,
                price=price,
                quantity=qty,
                amount=price["unit_amount"] * qty,
                description=_line_description(qty, self.product_name(price), price),
                period=(old_end, new_end),
                sub=sub,
                item=item,
            )
        for ii in self.pending_items(customer["id"], sub["id"]):
            self._attach_item(inv, ii)
        sub["latest_invoice"] = inv["id"]
        self.e.emit("invoice.created", inv)
        self.collect(inv, pm=self._pm_for(sub, inv, customer), off_session=True)

    def _due(self, clock_id: str | None) -> tuple[int, int, str, dict[str, Any]] | None:
        """The earliest thing that happens on a clock: (when, order, action, object)."""
        best: tuple[int, int, str, dict[str, Any]] | None = None

        def consider(when: int | None, action: str, obj: dict[str, Any]) -> None:
            nonlocal best
            if when is None:
                return
            key = (int(when), self.store.seq(obj["id"]), action, obj)
            if best is None or key[:2] < best[:2]:
                best = key

        for sub in self.store.all("subscription"):
            if self.store.clock_of(sub) != clock_id:
                continue
            if sub["status"] in LIVE_STATUSES:
                end = self.period(sub)[1]
                if sub["cancel_at"] is not None and sub["cancel_at"] < end:
                    consider(sub["cancel_at"], "cancel", sub)
                else:
                    consider(end, "renew", sub)
            elif sub["status"] == "incomplete":
                consider(sub["created"] + INCOMPLETE_EXPIRES, "expire", sub)
        for inv in self.store.all("invoice"):
            if (
                inv["status"] == "open"
                and inv["next_payment_attempt"]
                and self.store.clock_of(inv) == clock_id
            ):
                consider(inv["next_payment_attempt"], "retry", inv)
        for cs in self.store.all("checkout.session"):
            if cs["status"] == "open" and self.store.clock_of(cs) == clock_id:
                consider(cs["expires_at"], "expire_session", cs)
        return best

    def process_due(self, clock_id: str | None, target: int) -> None:
        """Run everything due on a clock up to `target`, each at its own moment."""
        clock = self.store.find(clock_id) if clock_id else None
        for _ in range(10_000):
            due = self._due(clock_id)
            if due is None or due[0] > target:
                break
            when, _order, action, obj = due
            if clock is not None:
                clock["frozen_time"] = max(int(clock["frozen_time"]), when)
            else:
                self.store.set_global_override(max(when, self.store.global_now()))
            if action == "renew":
                self.renew(obj)
            elif action == "cancel":
                self.end_subscription(
                    obj, reason=obj["cancellation_details"]["reason"] or "cancellation_requested"
                )
            elif action == "expire":
                before = self.e.render(obj)
                obj["status"] = "incomplete_expired"
                obj["ended_at"] = when
                for inv in self.store.all("invoice"):
                    if self._sub_of(inv) is obj and inv["status"] == "open":
                        self.void_api(inv["id"])
                self.e.emit_updated("customer.subscription.updated", obj, before)
            elif action == "retry":
                customer = self.e.customer(obj["customer"])
                obj["next_payment_attempt"] = None
                self.collect(obj, pm=self._pm_for(self._sub_of(obj), obj, customer), off_session=True)
            elif action == "expire_session":
                self.e.checkout.expire(obj)
        if clock is None:
            self.store.set_global_override(None)

    def tick(self) -> None:
        """Let wall-clock time pass for objects on the stand-in's own clock."""
        self.process_due(None, self.store.global_now())

    def advance_global(self, p: Params) -> dict[str, Any]:
        """Stand-in only: move the clock of every object not on a test clock forward."""
        now = self.store.global_now()
        seconds = p.integer("seconds", minimum=1)
        target = p.integer("to")
        if (seconds is None) == (target is None):
            raise invalid_param("seconds", "Pass exactly one of `seconds` or `to`.")
        if target is None:
            target = now + int(seconds or 0)
        if target <= now:
            raise invalid_param("to", "The new time must be after the current time.")
        self.process_due(None, target)
        self.store.clock_offset += target - self.store.global_now()
        return {"object": "stand_in.clock", "now": self.store.global_now(), "offset": self.store.clock_offset}

    def create_clock(self, p: Params) -> dict[str, Any]:
        frozen = p.req_integer("frozen_time")
        clock = objects.test_clock(
            id=objects.new_id("clock_1"),
            created=self.store.global_now(),
            frozen_time=frozen,
            name=p.text("name"),
        )
        self.store.add(clock)
        self.e.emit("test_helpers.test_clock.created", clock)
        return clock

    def advance_clock(self, clock_id: str, p: Params) -> dict[str, Any]:
        clock = self.store.get("test_helpers.test_clock", clock_id)
        target = p.req_integer("frozen_time")
        if target <= clock["frozen_time"]:
            raise invalid_param(
                "frozen_time",
                "The frozen time must be after the test clock's current frozen time.",
                "parameter_invalid_integer",
            )
        clock["status"] = "advancing"
        clock["status_details"] = {"advancing": {"target_frozen_time": target}}
        self.e.emit("test_helpers.test_clock.advancing", clock)
        self.process_due(clock["id"], target)
        clock["frozen_time"] = target
        clock["status"] = "ready"
        clock["status_details"] = {}
        self.e.emit("test_helpers.test_clock.ready", clock)
        return clock

    def delete_clock(self, clock_id: str) -> dict[str, Any]:
        clock = self.store.get("test_helpers.test_clock", clock_id)
        # Stripe deletes every object on a test clock with it.
        for kind in ("subscription", "invoice", "invoiceitem"):
            for obj in self.store.all(kind):
                if obj.get("test_clock") == clock["id"]:
                    self.store.remove(obj["id"])
        for cust in self.store.all("customer"):
            if cust.get("test_clock") == clock["id"]:
                cust_id = cust["id"]
                cust.clear()
                cust.update(objects.deleted("customer", cust_id))
        self.store.remove(clock["id"])
        self.e.emit("test_helpers.test_clock.deleted", clock)
        return objects.deleted("test_helpers.test_clock", clock_id)


def _line_description(qty: int, name: str, price: dict[str, Any]) -> str:
    """An invoice line for a subscription item, as Stripe words it: `1 × Pro (at $9.00 / month)`."""
    amount = objects.money(int(price["unit_amount"]), str(price["currency"]))
    return f"{qty} × {name} (at {amount}{interval_label(price)})"


def _qty(qty: int) -> str:
    return "" if qty == 1 else f"{qty} × "

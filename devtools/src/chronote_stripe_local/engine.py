"""The stand-in's behaviour: what each API call does to the state, and the events it emits.

`Engine` owns the store and the shared machinery (events, rendering, `expand`, pagination) and
the catalog (customers, products, prices, payment methods). Payments, billing (subscriptions,
invoices, test clocks) and checkout (Checkout and billing portal sessions) are its parts.
Every public method is called with `engine.store.lock` held (the API layer takes it).
"""

from __future__ import annotations

import copy
import re
import threading
from collections.abc import Callable
from typing import Any

from chronote_stripe_local import objects
from chronote_stripe_local.errors import StripeError, invalid_param, missing_param, resource_missing
from chronote_stripe_local.params import Params, apply_metadata
from chronote_stripe_local.state import Store, diff_previous

# How an id's prefix names the kind of object, for `expand`.
EXPANDABLE_PREFIXES = (
    ("cus_", "customer"),
    ("prod_", "product"),
    ("price_", "price"),
    ("sub_", "subscription"),
    ("in_", "invoice"),
    ("ii_", "invoiceitem"),
    ("pi_", "payment_intent"),
    ("ch_", "charge"),
    ("py_", "charge"),
    ("re_", "refund"),
    ("dp_", "dispute"),
    ("pm_", "payment_method"),
    ("cs_", "checkout.session"),
    ("clock_", "test_helpers.test_clock"),
    ("inpay_", "invoice_payment"),
    ("evt_", "event"),
    ("di_", "discount"),
    ("promo_", "promotion_code"),
    ("txr_", "tax_rate"),
    ("txi_", "tax_id"),
)


class RequestContext(threading.local):
    """The API request being served on this thread (events name it in `request`)."""

    request_id: str | None = None
    idempotency_key: str | None = None
    base_url: str = "http://127.0.0.1:12111"


class Engine:
    def __init__(self, base_url: str = "http://127.0.0.1:12111") -> None:
        from chronote_stripe_local.billing import Billing
        from chronote_stripe_local.checkout import Checkout
        from chronote_stripe_local.coupons import Coupons
        from chronote_stripe_local.payments import Payments
        from chronote_stripe_local.tax import Tax

        self.store = Store()
        self.request = RequestContext()
        self.default_base_url = base_url
        self.on_event: Callable[[dict[str, Any]], None] | None = None
        self.webhook_endpoints: Callable[[], int] = lambda: 0
        self.payments = Payments(self)
        self.billing = Billing(self)
        self.checkout = Checkout(self)
        self.coupons = Coupons(self)
        self.tax = Tax(self)
        self.portal_configuration_id = objects.new_id("bpc_1")

    @property
    def base_url(self) -> str:
        return self.request.base_url or self.default_base_url

    # --- events ----------------------------------------------------------------------------

    def emit(self, type: str, obj: dict[str, Any], previous: dict[str, Any] | None = None) -> dict[str, Any]:
        event = objects.event(
            id=objects.new_id("evt_1"),
            created=self.store.now_for(obj),
            type=type,
            obj=self.render(obj),
            previous_attributes=previous,
            request_id=self.request.request_id,
            idempotency_key=self.request.idempotency_key,
            pending_webhooks=self.webhook_endpoints(),
        )
        self.store.add(event)
        if self.on_event is not None:
            self.on_event(event)
        return event

    def emit_updated(self, type: str, obj: dict[str, Any], before: dict[str, Any]) -> dict[str, Any] | None:
        """Emit `*.updated` with `previous_attributes`, if anything visible changed."""
        previous = diff_previous(before, self.render(obj))
        if not previous:
            return None
        return self.emit(type, obj, previous)

    # --- rendering, expand, lists ----------------------------------------------------------

    def render(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A copy of an object as the API shows it now (embedded prices are the current ones)."""
        out = copy.deepcopy(obj)
        if out.get("object") == "subscription":
            for item in out["items"]["data"]:
                current = self.store.find(item["price"]["id"])
                if current is not None:
                    item["price"] = copy.deepcopy(current)
                    item["plan"] = objects.plan_from_price(current)
        return out

    def render_expanded(self, obj: dict[str, Any], expand: list[str]) -> dict[str, Any]:
        out = self.render(obj)
        for path in expand:
            self._expand(out, [p for p in path.split(".") if p], path)
        return out

    def _expand(self, obj: dict[str, Any], path: list[str], full: str) -> None:
        if not path:
            return
        key, rest = path[0], path[1:]
        if obj.get("object") in ("list", "search_result") and key == "data":
            for item in obj["data"]:
                self._expand(item, rest, full)
            return
        if key not in obj:
            included = self._includable(obj, key)
            if included is None:
                raise StripeError(400, f"This property cannot be expanded ({full}).", param="expand")
            obj[key] = included
        value = obj[key]
        if isinstance(value, str):
            target = self.store.find(value)
            kind = _kind_of(value)  # coupons have ids of their own choosing, without a prefix
            if target is None or target.get("deleted") or (kind is not None and target.get("object") != kind):
                raise StripeError(400, f"This property cannot be expanded ({full}).", param="expand")
            obj[key] = value = self.render(target)
        if isinstance(value, dict):
            self._expand(value, rest, full)
        elif isinstance(value, list):
            for i, entry in enumerate(value):
                if isinstance(entry, str) and not rest:  # a list of ids, such as `discounts`
                    target = self.store.find(entry)
                    if target is None or target.get("object") != _kind_of(entry):
                        raise StripeError(400, f"This property cannot be expanded ({full}).", param="expand")
                    value[i] = self.render(target)
                elif isinstance(entry, dict):
                    self._expand(entry, rest, full)
        elif value is not None:
            raise StripeError(400, f"This property cannot be expanded ({full}).", param="expand")

    def _includable(self, obj: dict[str, Any], key: str) -> Any:
        """Fields Stripe leaves out unless expanded."""
        kind = obj.get("object")
        if kind == "invoice" and key == "payments":
            payments = [
                self.render(p) for p in self.store.all("invoice_payment") if p["invoice"] == obj["id"]
            ]
            return objects.list_object(f"/v1/invoice_payments?invoice={obj['id']}", payments)
        if kind == "checkout.session" and key == "line_items":
            return self.checkout.line_items_list(obj["id"])
        if kind == "customer" and key == "subscriptions":
            subs = [
                self.render(s)
                for s in self.store.all("subscription")
                if s["customer"] == obj["id"] and s["status"] != "canceled"
            ]
            return objects.list_object(f"/v1/customers/{obj['id']}/subscriptions", subs)
        if kind == "customer" and key == "tax_ids":
            ids = [self.render(t) for t in self.tax.tax_ids_of(obj["id"])]
            return objects.list_object(f"/v1/customers/{obj['id']}/tax_ids", ids)
        if kind == "coupon" and key == "applies_to":
            return self.coupons.applies_to(obj)
        return None

    def paginate(
        self, items: list[dict[str, Any]], p: Params, url: str, *, created_field: str = "created"
    ) -> dict[str, Any]:
        """Stripe's cursor pagination over objects listed newest first."""
        created = p.raw("created")
        if isinstance(created, dict):
            bounds = p.sub("created")
            for op, test in (
                ("gt", lambda a, b: a > b),
                ("gte", lambda a, b: a >= b),
                ("lt", lambda a, b: a < b),
                ("lte", lambda a, b: a <= b),
            ):
                bound = bounds.integer(op)
                if bound is not None:
                    items = [i for i in items if test(i[created_field], bound)]
        elif created not in (None, ""):
            exact = p.integer("created")
            items = [i for i in items if i[created_field] == exact]
        limit = p.integer("limit", 10, minimum=1) or 10
        if limit > 100:
            raise invalid_param(
                "limit", "This value must be less than or equal to 100.", "parameter_invalid_integer"
            )
        after = p.text("starting_after")
        before = p.text("ending_before")
        ids = [i["id"] for i in items]
        if after:
            if after not in ids:
                raise resource_missing("object", after, "starting_after")
            start = ids.index(after) + 1
            window = items[start : start + limit]
            has_more = start + limit < len(items)
        elif before:
            if before not in ids:
                raise resource_missing("object", before, "ending_before")
            end = ids.index(before)
            window = items[max(0, end - limit) : end]
            has_more = end - limit > 0
        else:
            window = items[:limit]
            has_more = len(items) > limit
        expand = [e[len("data.") :] for e in p.expand() if e.startswith("data.")]
        data = [self.render_expanded(i, expand) for i in window]
        return objects.list_object(url, data, has_more)

    # --- helpers ---------------------------------------------------------------------------

    def now(self, customer_id: str | None = None) -> int:
        return self.store.now_for_customer(customer_id)

    def customer(self, customer_id: str | None, param: str = "customer") -> dict[str, Any]:
        cust = self.store.get("customer", customer_id, param)
        if cust.get("deleted"):
            raise resource_missing("customer", str(customer_id), param)
        return cust

    def price(self, price_id: str | None, param: str = "price") -> dict[str, Any]:
        return self.store.get("price", price_id, param)

    # --- customers -------------------------------------------------------------------------

    def create_customer(self, p: Params) -> dict[str, Any]:
        clock_id = p.text("test_clock")
        if clock_id:
            self.store.get("test_helpers.test_clock", clock_id, "test_clock")
        cust_id = objects.new_id("cus_", 14)
        cust = objects.customer(
            id=cust_id,
            created=self.store.clock_now(clock_id),
            email=p.text("email"),
            name=p.text("name"),
            description=p.text("description"),
            phone=p.text("phone"),
            metadata=apply_metadata({}, p.raw("metadata")),
            test_clock=clock_id,
            invoice_prefix=objects.random_token(8).upper(),
        )
        if p.has("address") and p.raw("address") != "":
            self.tax.set_address(cust, p.sub("address"))
        self.store.add(cust)
        self.emit("customer.created", cust)
        pm_id = p.text("payment_method")
        if pm_id:
            self.attach_payment_method(pm_id, cust["id"])
        default_pm = p.sub("invoice_settings").text("default_payment_method")
        if default_pm:
            self._set_default_payment_method(cust, default_pm)
        return cust

    def _set_default_payment_method(self, cust: dict[str, Any], pm_id: str) -> None:
        pm = self.payment_method(pm_id, "invoice_settings[default_payment_method]")
        if pm["customer"] != cust["id"]:
            raise invalid_param(
                "invoice_settings[default_payment_method]",
                f"The PaymentMethod provided ({pm_id}) is not attached to this customer.",
                "resource_missing",
            )
        cust["invoice_settings"]["default_payment_method"] = pm["id"]

    def update_customer(self, customer_id: str, p: Params) -> dict[str, Any]:
        cust = self.customer(customer_id, "id")
        before = self.render(cust)
        for field in ("email", "name", "description", "phone"):
            if p.has(field):
                cust[field] = p.text(field)
        if p.has("metadata"):
            cust["metadata"] = apply_metadata(cust["metadata"], p.raw("metadata"))
        if p.has("balance"):
            cust["balance"] = p.integer("balance", 0)
        if p.has("address"):
            if p.raw("address") == "":
                cust["address"] = None
            else:
                self.tax.set_address(cust, p.sub("address"))
        settings = p.sub("invoice_settings")
        if settings.has("default_payment_method"):
            pm_id = settings.text("default_payment_method")
            if pm_id:
                self._set_default_payment_method(cust, pm_id)
            else:
                cust["invoice_settings"]["default_payment_method"] = None
        self.emit_updated("customer.updated", cust, before)
        return cust

    def delete_customer(self, customer_id: str) -> dict[str, Any]:
        cust = self.customer(customer_id, "id")
        for sub in self.store.all("subscription"):
            if sub["customer"] == cust["id"] and sub["status"] not in ("canceled", "incomplete_expired"):
                self.billing.end_subscription(sub, reason="cancellation_requested")
        self.emit("customer.deleted", cust)
        cust.clear()
        cust.update(objects.deleted("customer", customer_id))
        return cust

    def list_customers(self, p: Params) -> dict[str, Any]:
        items = [c for c in self.store.all("customer") if not c.get("deleted")]
        email = p.text("email")
        if email:
            items = [c for c in items if c["email"] == email]
        clock = p.text("test_clock")
        if clock:
            items = [c for c in items if c["test_clock"] == clock]
        return self.paginate(items, p, "/v1/customers")

    def search_customers(self, p: Params) -> dict[str, Any]:
        query = p.req_text("query")
        clauses = _parse_search(query)
        items = [c for c in self.store.all("customer") if not c.get("deleted")]
        for field, key, value in clauses:
            if field == "metadata":
                items = [c for c in items if c["metadata"].get(key or "") == value]
            elif field in ("email", "name", "phone", "description"):
                items = [c for c in items if c.get(field) == value]
            else:
                raise invalid_param(
                    "query", f"Field `{field}` is not a supported search field for customers."
                )
        limit = p.integer("limit", 10, minimum=1) or 10
        data = [self.render(c) for c in items[:limit]]
        return {
            "object": "search_result",
            "data": data,
            "has_more": len(items) > limit,
            "next_page": None,
            "url": "/v1/customers/search",
        }

    # --- products and prices ---------------------------------------------------------------

    def create_product(self, p: Params) -> dict[str, Any]:
        product_id = p.text("id") or objects.new_id("prod_", 14)
        if self.store.find(product_id) is not None:
            raise StripeError(400, "Product already exists.", code="resource_already_exists", param="id")
        prod = objects.product(
            id=product_id,
            created=self.now(),
            name=p.req_text("name"),
            description=p.text("description"),
            active=bool(p.flag("active", True)),
            metadata=apply_metadata({}, p.raw("metadata")),
            unit_label=p.text("unit_label"),
            statement_descriptor=p.text("statement_descriptor"),
        )
        self.store.add(prod)
        self.emit("product.created", prod)
        if p.has("default_price_data"):
            dp = p.sub("default_price_data")
            price = self._new_price(dp, prod["id"], lookup_key=None, nickname=None, metadata={})
            prod["default_price"] = price["id"]
        return prod

    def update_product(self, product_id: str, p: Params) -> dict[str, Any]:
        prod = self.store.get("product", product_id)
        before = self.render(prod)
        for field in ("name", "description", "unit_label", "statement_descriptor"):
            if p.has(field):
                prod[field] = p.text(field) if field != "name" else p.req_text("name")
        if p.has("active"):
            prod["active"] = bool(p.flag("active"))
        if p.has("metadata"):
            prod["metadata"] = apply_metadata(prod["metadata"], p.raw("metadata"))
        if p.has("default_price"):
            default = p.text("default_price")
            if default:
                price = self.price(default, "default_price")
                if price["product"] != prod["id"]:
                    raise invalid_param("default_price", "The price must belong to this product.")
            prod["default_price"] = default
        prod["updated"] = self.now()
        self.emit_updated("product.updated", prod, before)
        return prod

    def delete_product(self, product_id: str) -> dict[str, Any]:
        prod = self.store.get("product", product_id)
        if any(pr["product"] == product_id for pr in self.store.all("price")):
            raise StripeError(
                400, "This product cannot be deleted because it has one or more user-created prices."
            )
        self.store.remove(product_id)
        self.emit("product.deleted", prod)
        return objects.deleted("product", product_id)

    def list_products(self, p: Params) -> dict[str, Any]:
        items = self.store.all("product")
        active = p.flag("active")
        if active is not None:
            items = [i for i in items if i["active"] == active]
        ids = [str(i) for i in p.array("ids")]
        if ids:
            items = [i for i in items if i["id"] in ids]
        return self.paginate(items, p, "/v1/products")

    def _new_price(
        self,
        p: Params,
        product_id: str,
        *,
        lookup_key: str | None,
        nickname: str | None,
        metadata: dict[str, str],
    ) -> dict[str, Any]:
        currency = p.req_text("currency").lower()
        if p.has("unit_amount_decimal") and not p.has("unit_amount"):
            unit_amount = p.decimal_amount("unit_amount_decimal")
        else:
            unit_amount = p.req_integer("unit_amount", minimum=0)
        rec = None
        if p.has("recurring"):
            r = p.sub("recurring")
            interval = r.choice("interval", ("day", "week", "month", "year"))
            if interval is None:
                raise missing_param(f"{r.prefix}[interval]")
            rec = objects.recurring(
                interval, r.integer("interval_count", 1, minimum=1) or 1, r.integer("trial_period_days")
            )
        price = objects.price(
            id=objects.new_id("price_1"),
            created=self.now(),
            product=product_id,
            currency=currency,
            unit_amount=unit_amount,
            recurring=rec,
            lookup_key=lookup_key,
            nickname=nickname,
            active=bool(p.flag("active", True)),
            metadata=metadata,
            tax_behavior=p.text("tax_behavior", "unspecified") or "unspecified",
        )
        self.store.add(price)
        self.emit("price.created", price)
        return price

    def _claim_lookup_key(self, lookup_key: str, transfer: bool, price_id: str | None) -> None:
        for other in self.store.all("price"):
            if other["lookup_key"] == lookup_key and other["id"] != price_id:
                if not transfer:
                    raise StripeError(
                        400,
                        f"A price (`{other['id']}`) already uses the lookup key `{lookup_key}`. Pass "
                        "`transfer_lookup_key=true` to move it to the new price.",
                        param="lookup_key",
                    )
                before = self.render(other)
                other["lookup_key"] = None
                self.emit_updated("price.updated", other, before)

    def create_price(self, p: Params) -> dict[str, Any]:
        if p.has("product_data"):
            pd = p.sub("product_data")
            prod = objects.product(
                id=pd.text("id") or objects.new_id("prod_", 14),
                created=self.now(),
                name=pd.req_text("name"),
                description=None,
                active=bool(pd.flag("active", True)),
                metadata=apply_metadata({}, pd.raw("metadata")),
                unit_label=pd.text("unit_label"),
            )
            self.store.add(prod)
            self.emit("product.created", prod)
            product_id = prod["id"]
        else:
            product_id = p.req_text("product")
            self.store.get("product", product_id, "product")
        lookup_key = p.text("lookup_key")
        if lookup_key:
            self._claim_lookup_key(lookup_key, bool(p.flag("transfer_lookup_key", False)), None)
        return self._new_price(
            p,
            product_id,
            lookup_key=lookup_key,
            nickname=p.text("nickname"),
            metadata=apply_metadata({}, p.raw("metadata")),
        )

    def update_price(self, price_id: str, p: Params) -> dict[str, Any]:
        price = self.price(price_id, "id")
        before = self.render(price)
        if p.has("active"):
            price["active"] = bool(p.flag("active"))
        if p.has("nickname"):
            price["nickname"] = p.text("nickname")
        if p.has("metadata"):
            price["metadata"] = apply_metadata(price["metadata"], p.raw("metadata"))
        if p.has("tax_behavior"):
            price["tax_behavior"] = p.text("tax_behavior")
        if p.has("lookup_key"):
            lookup_key = p.text("lookup_key")
            if lookup_key:
                self._claim_lookup_key(lookup_key, bool(p.flag("transfer_lookup_key", False)), price["id"])
            price["lookup_key"] = lookup_key
        self.emit_updated("price.updated", price, before)
        return price

    def list_prices(self, p: Params) -> dict[str, Any]:
        items = self.store.all("price")
        active = p.flag("active")
        if active is not None:
            items = [i for i in items if i["active"] == active]
        product = p.text("product")
        if product:
            items = [i for i in items if i["product"] == product]
        kind = p.choice("type", ("one_time", "recurring"))
        if kind:
            items = [i for i in items if i["type"] == kind]
        currency = p.text("currency")
        if currency:
            items = [i for i in items if i["currency"] == currency.lower()]
        keys = [str(k) for k in p.array("lookup_keys")]
        if keys:
            items = [i for i in items if i["lookup_key"] in keys]
        interval = p.sub("recurring").text("interval")
        if interval:
            items = [i for i in items if i["recurring"] and i["recurring"]["interval"] == interval]
        return self.paginate(items, p, "/v1/prices")

    # --- payment methods -------------------------------------------------------------------

    def payment_method(self, pm_id: str | None, param: str = "payment_method") -> dict[str, Any]:
        """A payment method by id; Stripe's test ids (`pm_card_visa`, ...) make a new one."""
        if pm_id in objects.TEST_PAYMENT_METHODS:
            return self.new_payment_method(objects.TEST_PAYMENT_METHODS[str(pm_id)], None, None, None)
        return self.store.get("payment_method", pm_id, param)

    def new_payment_method(
        self, card_number: str, customer_id: str | None, email: str | None, name: str | None
    ) -> dict[str, Any]:
        pm = objects.payment_method(
            id=objects.new_id("pm_1"),
            created=self.now(customer_id),
            card_number=card_number,
            customer=None,
            email=email,
            name=name,
        )
        self.store.private[pm["id"]]["behaviour"] = objects.CARDS[card_number]["behaviour"]
        self.store.add(pm)
        if customer_id:
            self.attach_payment_method(pm["id"], customer_id)
        return pm

    def attach_payment_method(self, pm_id: str, customer_id: str) -> dict[str, Any]:
        pm = self.payment_method(pm_id)
        cust = self.customer(customer_id)
        if pm["customer"] == cust["id"]:
            return pm
        if pm["customer"] is not None:
            raise StripeError(
                400,
                "The payment method you provided has already been attached to a customer.",
                code="payment_method_unexpected_state",
                param="payment_method",
            )
        pm["customer"] = cust["id"]
        self.emit("payment_method.attached", pm)
        return pm

    def detach_payment_method(self, pm_id: str) -> dict[str, Any]:
        pm = self.store.get("payment_method", pm_id)
        if pm["customer"] is None:
            raise StripeError(
                400,
                "The payment method you provided is not attached to a customer so detachment is impossible.",
                code="payment_method_unexpected_state",
            )
        cust = self.store.find(pm["customer"])
        if cust and cust.get("invoice_settings", {}).get("default_payment_method") == pm["id"]:
            cust["invoice_settings"]["default_payment_method"] = None
        pm["customer"] = None
        self.emit("payment_method.detached", pm)
        return pm

    def list_payment_methods(self, p: Params, customer_id: str | None = None) -> dict[str, Any]:
        customer_id = customer_id or p.text("customer")
        if customer_id:
            self.customer(customer_id)
        items = [
            m for m in self.store.all("payment_method") if customer_id is None or m["customer"] == customer_id
        ]
        kind = p.text("type")
        if kind:
            items = [m for m in items if m["type"] == kind]
        url = f"/v1/customers/{customer_id}/payment_methods" if customer_id else "/v1/payment_methods"
        return self.paginate(items, p, url)

    def behaviour(self, pm: dict[str, Any]) -> str:
        return str(self.store.private[pm["id"]].get("behaviour", "succeeds"))


def _kind_of(object_id: str) -> str | None:
    for prefix, kind in EXPANDABLE_PREFIXES:
        if object_id.startswith(prefix):
            return kind
    return None


_CLAUSE = re.compile(r"""^\s*(\w+)(?:\[['"]([^'"]+)['"]\])?\s*:\s*['"]([^'"]*)['"]\s*$""")


def _parse_search(query: str) -> list[tuple[str, str | None, str]]:
    """The exact-match subset of Stripe's search language: `metadata['k']:'v' AND email:'x'`."""
    clauses = []
    for part in re.split(r"\s+AND\s+", query.strip(), flags=re.IGNORECASE):
        match = _CLAUSE.match(part)
        if match is None:
            raise invalid_param(
                "query", f"The stand-in supports only exact-match clauses joined by AND: {query}"
            )
        clauses.append((match.group(1), match.group(2), match.group(3)))
    return clauses

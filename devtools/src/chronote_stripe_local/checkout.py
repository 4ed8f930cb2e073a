"""Checkout sessions (hosted payment page) and billing portal sessions (hosted self-service page).

Paying a session does what Stripe does when a person pays on its hosted page:
- `mode=subscription`: the card becomes a payment method of the customer (created now if the
  session named none), a subscription starts with that card as its default payment method, its
  first invoice is paid (payment intent and charge), then `checkout.session.completed`.
- `mode=payment`: a payment intent is confirmed with the card (a charge), then
  `checkout.session.completed`. With `payment_intent_data[setup_future_usage]` the card is saved
  on the customer for later off-session payments.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chronote_stripe_local import amounts, checkout_details, objects
from chronote_stripe_local.errors import StripeError, invalid_param, missing_param
from chronote_stripe_local.params import Params, apply_metadata

if TYPE_CHECKING:
    from chronote_stripe_local.engine import Engine


class PaymentFailed(Exception):
    """The card chosen on the hosted page was declined; the session stays open."""


class Checkout:
    def __init__(self, engine: Engine) -> None:
        self.e = engine
        self.store = engine.store

    # --- checkout sessions -----------------------------------------------------------------

    def create(self, p: Params) -> dict[str, Any]:
        mode = p.choice("mode", ("payment", "subscription", "setup"))
        if mode is None:
            raise missing_param("mode")
        if mode == "setup":
            raise invalid_param(
                "mode", "The local Stripe stand-in supports mode=payment and mode=subscription."
            )
        ui_mode = p.text("ui_mode", "hosted_page")
        if ui_mode != "hosted_page":
            raise invalid_param(
                "ui_mode",
                "The local Stripe stand-in serves only the hosted Checkout page (ui_mode=hosted_page).",
            )
        success_url = p.text("success_url")
        if not success_url:
            raise missing_param("success_url")
        customer_id = p.text("customer")
        customer = self.e.customer(customer_id) if customer_id else None
        if customer is not None and p.text("customer_email"):
            raise invalid_param(
                "customer_email", "You may only specify one of these parameters: customer, customer_email."
            )
        lines = []
        for item in p.subarray("line_items"):
            price = self.e.billing._price_from_item(item)
            quantity = item.integer("quantity")
            if quantity is None:
                raise missing_param(f"{item.prefix}[quantity]")
            lines.append((price, quantity))
        if not lines:
            raise missing_param("line_items")
        currencies = {price["currency"] for price, _ in lines}
        if len(currencies) > 1:
            raise invalid_param("line_items", "All line items must use the same currency.")
        if mode == "payment" and any(price["recurring"] for price, _ in lines):
            raise invalid_param(
                "line_items",
                "You specified `payment` mode but passed a recurring price. Either switch to `subscription` "
                "mode or use only one-time prices.",
            )
        if mode == "subscription" and not any(price["recurring"] for price, _ in lines):
            raise invalid_param(
                "line_items",
                "You must provide at least one recurring price in `subscription` mode when using prices.",
            )
        sub_data = p.sub("subscription_data")
        pi_data = p.sub("payment_intent_data")
        if mode == "subscription" and p.has("payment_intent_data"):
            raise invalid_param(
                "payment_intent_data", "You can not pass `payment_intent_data` in `subscription` mode."
            )
        if mode == "payment" and p.has("subscription_data"):
            raise invalid_param(
                "subscription_data", "You can not pass `subscription_data` in `payment` mode."
            )
        now = self.e.now(customer_id)
        trial_end = sub_data.integer("trial_end")
        if trial_end is not None and trial_end < now + 48 * 3600:
            raise invalid_param(
                "subscription_data[trial_end]",
                "The `trial_end` date has to be at least 2 days in the future.",
            )
        trial_days = sub_data.integer("trial_period_days", minimum=1)
        amount = sum(
            price["unit_amount"] * qty
            for price, qty in lines
            if not (price["recurring"] and (trial_end or trial_days))
        )
        currency = next(iter(currencies))
        discount = self._discount(p, customer_id, lines, currency)
        tax_on, tax_ids_on, customer_update = self._tax_options(p, customer)
        method_collection = p.choice("payment_method_collection", ("always", "if_required"), "always")
        if mode != "subscription" and p.has("payment_method_collection"):
            raise invalid_param(
                "payment_method_collection",
                "`payment_method_collection` is only used in `subscription` mode.",
            )
        invoice_creation = p.sub("invoice_creation")
        if mode != "payment" and p.has("invoice_creation"):
            raise invalid_param("invoice_creation", "`invoice_creation` can only be used in `payment` mode.")
        end_behavior = sub_data.sub("trial_settings").sub("end_behavior")
        session_id = objects.new_id("cs_test_a1", 56)
        cs = objects.checkout_session(
            id=session_id,
            created=now,
            mode=mode,
            url=f"{self.e.base_url}/pay/{session_id}",
            success_url=success_url,
            cancel_url=p.text("cancel_url"),
            customer=customer_id,
            customer_email=p.text("customer_email"),
            client_reference_id=p.text("client_reference_id"),
            metadata=apply_metadata({}, p.raw("metadata")),
            currency=currencies.pop(),
            amount_subtotal=amount,
            amount_total=amount,
            allow_promotion_codes=p.flag("allow_promotion_codes"),
            customer_creation=p.choice("customer_creation", ("always", "if_required"))
            if mode == "payment"
            else None,
            locale=p.text("locale"),
            submit_type=p.text("submit_type"),
            billing_address_collection=p.choice("billing_address_collection", ("auto", "required")),
            payment_method_collection=method_collection if mode == "subscription" else None,
        )
        if p.has("expires_at"):
            cs["expires_at"] = p.req_integer("expires_at")
        cs["tax_id_collection"] = {"enabled": tax_ids_on, "required": "never"}
        if cs["invoice_creation"] is not None:
            cs["invoice_creation"]["enabled"] = bool(invoice_creation.flag("enabled", False))
            data = invoice_creation.sub("invoice_data")
            cs["invoice_creation"]["invoice_data"]["metadata"] = apply_metadata({}, data.raw("metadata"))
            cs["invoice_creation"]["invoice_data"]["description"] = data.text("description")
        self.store.add(cs)
        self.store.private[cs["id"]].update(
            lines=[
                objects.checkout_line_item(
                    id=objects.new_id("li_1"),
                    price=price,
                    quantity=qty,
                    description=self.e.billing.product_name(price),
                )
                for price, qty in lines
            ],
            subscription_metadata=apply_metadata({}, sub_data.raw("metadata")),
            subscription_description=sub_data.text("description"),
            trial_end=trial_end,
            trial_period_days=trial_days,
            payment_intent_metadata=apply_metadata({}, pi_data.raw("metadata")),
            payment_intent_description=pi_data.text("description"),
            setup_future_usage=pi_data.choice("setup_future_usage", ("on_session", "off_session")),
            statement_descriptor=pi_data.text("statement_descriptor"),
            discount=(discount[0]["id"], discount[1]["id"] if discount[1] else None) if discount else None,
            automatic_tax=tax_on,
            customer_update=customer_update,
            address=None,
            missing_payment_method=end_behavior.choice(
                "missing_payment_method", ("cancel", "create_invoice", "pause"), "create_invoice"
            )
            or "create_invoice",
        )
        amounts.session_totals(self.e, cs)
        return cs

    def _discount(
        self, p: Params, customer_id: str | None, lines: list[tuple[dict[str, Any], int]], currency: str
    ) -> tuple[dict[str, Any], dict[str, Any] | None] | None:
        discount = self.e.coupons.resolve(p)
        if discount is None:
            return None
        if p.flag("allow_promotion_codes"):
            raise invalid_param(
                "allow_promotion_codes",
                "You may only specify one of these parameters: allow_promotion_codes, discounts.",
            )
        self.e.coupons.check(
            discount[0],
            discount[1],
            customer=customer_id,
            lines=[(price["unit_amount"] * qty, price["product"]) for price, qty in lines],
            currency=currency,
            param="discounts[0]",
        )
        return discount

    def _tax_options(self, p: Params, customer: dict[str, Any] | None) -> tuple[bool, bool, dict[str, str]]:
        """`automatic_tax`, `tax_id_collection` and `customer_update`, refused as Stripe refuses
        them when the details Checkout collects could not be saved on an existing customer."""
        tax_on = bool(p.sub("automatic_tax").flag("enabled", False))
        tax_ids_on = bool(p.sub("tax_id_collection").flag("enabled", False))
        update = p.sub("customer_update")
        customer_update = {
            key: update.choice(key, ("auto", "never"), "never") or "never" for key in ("address", "name")
        }
        if (
            customer is not None
            and tax_on
            and not customer["address"]
            and customer_update["address"] != "auto"
        ):
            raise invalid_param(
                "automatic_tax[enabled]",
                "Automatic tax calculation in Checkout requires a valid address on the Customer. Add a valid "
                "address to the Customer or set `customer_update[address]` to 'auto' to save the address "
                "entered in Checkout to the Customer.",
            )
        if customer is not None and tax_ids_on and customer_update["name"] != "auto":
            raise invalid_param(
                "tax_id_collection[enabled]",
                "tax_id_collection requires updating business name on the customer. To enable tax id "
                "collection for an existing customer, please set `customer_update[name]` to `auto`.",
            )
        return tax_on, tax_ids_on, customer_update

    def line_items_list(self, session_id: str, p: Params | None = None) -> dict[str, Any]:
        cs = self.store.get("checkout.session", session_id)
        lines = [self.e.render(li) for li in self.store.private[cs["id"]]["lines"]]
        url = f"/v1/checkout/sessions/{session_id}/line_items"
        if p is None:
            return objects.list_object(url, lines)
        return self.e.paginate(lines, p, url)

    def list(self, p: Params) -> dict[str, Any]:
        items = self.store.all("checkout.session")
        for field in ("customer", "payment_intent", "subscription", "status", "payment_link"):
            value = p.text(field)
            if value:
                items = [i for i in items if i.get(field) == value]
        return self.e.paginate(items, p, "/v1/checkout/sessions")

    def expire_api(self, session_id: str) -> dict[str, Any]:
        cs = self.store.get("checkout.session", session_id)
        if cs["status"] != "open":
            raise StripeError(
                400,
                f'Only Checkout Sessions with a status in ["open"] can be expired. This Checkout Session has a status of "{cs["status"]}".',
                code="checkout_session_not_open" if cs["status"] else None,
            )
        self.expire(cs)
        return cs

    def expire(self, cs: dict[str, Any]) -> None:
        cs["status"] = "expired"
        cs["url"] = None
        self.e.emit("checkout.session.expired", cs)

    def complete(
        self,
        session_id: str,
        *,
        card: str | None,
        email: str | None,
        name: str | None,
        details: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """A person paid on the hosted page with test card `card` (a number from `objects.CARDS`,
        or None where nothing is due and the session does not need a card, e.g. a trial), after
        typing what the session asks for (`details`: a promotion code, a billing address, a tax
        id; see `checkout_details`)."""
        cs = self.store.get("checkout.session", session_id)
        if cs["status"] != "open":
            raise StripeError(400, f"This Checkout Session is no longer open (status {cs['status']}).")
        if card is not None and card not in objects.CARDS:
            raise invalid_param("card", "Unknown test card.")
        private = self.store.private[cs["id"]]
        # Checked before anything is saved: a bad code or a missing address changes nothing.
        checkout_details.check(self.e, cs, details or {})
        if card is None and not checkout_details.card_optional(cs):
            raise PaymentFailed("Choose a card: this checkout needs a payment method.")
        if card is not None and objects.CARDS[card]["behaviour"] == "declines":
            raise PaymentFailed("Your card was declined. Try another card.")
        email = email or cs["customer_email"]
        # A customer deleted since the session was made is Stripe's resource_missing, not a crash.
        customer = self.e.customer(cs["customer"]) if cs["customer"] else None
        if customer is None and (cs["mode"] == "subscription" or cs["customer_creation"] == "always"):
            customer = self.e.create_customer(Params({"email": email or "", "name": name or ""}))
            cs["customer"] = customer["id"]
        if customer is not None:
            email = email or customer["email"]
            name = name or customer["name"]
        collected = checkout_details.save(self.e, cs, customer, details or {})
        save = cs["mode"] == "subscription" or private["setup_future_usage"] is not None
        pm = (
            self.e.new_payment_method(card, customer["id"] if customer and save else None, email, name)
            if card is not None
            else None
        )
        lines = private["lines"]
        discount = checkout_details.discount_of(self.e, cs)
        if cs["mode"] == "subscription":
            assert customer is not None
            now = self.e.now(customer["id"])
            trial_end = private["trial_end"] or (
                now + private["trial_period_days"] * 86400 if private["trial_period_days"] else None
            )
            sub, inv, error = self.e.billing.start_subscription(
                customer=customer,
                lines=[(li["price"], li["quantity"], {}) for li in lines if li["price"]["recurring"]],
                one_time=[(li["price"], li["quantity"]) for li in lines if not li["price"]["recurring"]],
                metadata=dict(private["subscription_metadata"]),
                pm=pm,
                trial_end=trial_end,
                description=private["subscription_description"],
                off_session=False,
                payment_behavior="allow_incomplete",
                discount=discount,
                automatic_tax=bool(private.get("automatic_tax")),
                missing_payment_method=private.get("missing_payment_method") or "create_invoice",
            )
            if error is not None:
                raise PaymentFailed(error.message)
            cs["subscription"] = sub["id"]
            cs["invoice"] = inv["id"]
            cs["payment_status"] = "paid" if inv["amount_paid"] > 0 else "no_payment_required"
        else:
            pi = None
            if cs["amount_total"] > 0:
                assert pm is not None
                pi = self.e.payments.new_intent(
                    amount=cs["amount_total"],
                    currency=cs["currency"],
                    customer_id=customer["id"] if customer else None,
                    description=private["payment_intent_description"],
                    metadata=dict(private["payment_intent_metadata"]),
                    pm=pm,
                    setup_future_usage=private["setup_future_usage"],
                    statement_descriptor=private["statement_descriptor"],
                )
                error = self.e.payments.confirm(pi, pm, off_session=False)
                if error is not None:
                    raise PaymentFailed(error.message)
                cs["payment_intent"] = pi["id"]
            cs["payment_status"] = "paid" if pi is not None else "no_payment_required"
            if discount is not None:
                self.e.coupons.redeem(*discount)
            if cs["invoice_creation"] and cs["invoice_creation"]["enabled"] and customer is not None:
                cs["invoice"] = checkout_details.post_payment_invoice(self.e, cs, customer, pi)["id"]
        cs["status"] = "complete"
        cs["url"] = None
        cs["customer_details"] = {
            "address": collected["address"],
            "business_name": collected["business_name"],
            "email": email,
            "individual_name": None,
            "name": name,
            "phone": None,
            "tax_exempt": "none",
            "tax_ids": collected["tax_ids"],
        }
        cs["collected_information"] = {
            "business_name": collected["business_name"],
            "individual_name": None,
            "shipping_details": None,
        }
        self.e.emit("checkout.session.completed", cs)
        return cs

    def success_redirect(self, cs: dict[str, Any]) -> str:
        return str(cs["success_url"]).replace("{CHECKOUT_SESSION_ID}", cs["id"])

    # --- billing portal --------------------------------------------------------------------

    # --- customer portal configurations ----------------------------------------------------

    def default_portal_configuration(self) -> dict[str, Any]:
        """What a dashboard's saved default allows: everything the portal page can do (switching
        among the prices of the subscribed product, cancelling either way)."""
        found = self.store.find(self.e.portal_configuration_id)
        if found is not None:
            return found
        return self.store.add(
            objects.portal_configuration(
                id=self.e.portal_configuration_id,
                created=self.store.global_now(),
                features=objects.portal_features(
                    customer_update=(True, ["email", "name"]),
                    invoice_history=True,
                    payment_method_update=True,
                    subscription_cancel=(True, "immediately"),
                    subscription_update=True,
                ),
                business_profile={"headline": None, "privacy_policy_url": None, "terms_of_service_url": None},
                default_return_url=None,
                is_default=True,
                metadata={},
                name=None,
            )
        )

    def create_portal_configuration(self, p: Params) -> dict[str, Any]:
        self.default_portal_configuration()  # the account's default exists before any other
        config = objects.portal_configuration(
            id=objects.new_id("bpc_1"),
            created=self.store.global_now(),
            features=objects.portal_features(),
            business_profile={"headline": None, "privacy_policy_url": None, "terms_of_service_url": None},
            default_return_url=None,
            is_default=False,
            metadata={},
            name=None,
        )
        if not p.has("features"):
            raise missing_param("features")
        self._apply_portal_configuration(config, p)
        return self.store.add(config)

    def update_portal_configuration(self, config_id: str, p: Params) -> dict[str, Any]:
        config = self.store.get("billing_portal.configuration", config_id)
        self._apply_portal_configuration(config, p)
        config["updated"] = self.store.global_now()
        return config

    def list_portal_configurations(self, p: Params) -> dict[str, Any]:
        self.default_portal_configuration()
        items = self.store.all("billing_portal.configuration")
        for field in ("active", "is_default"):
            wanted = p.flag(field)
            if wanted is not None:
                items = [c for c in items if c[field] == wanted]
        return self.e.paginate(items, p, "/v1/billing_portal/configurations")

    def _apply_portal_configuration(self, config: dict[str, Any], p: Params) -> None:
        if p.has("active"):
            config["active"] = bool(p.flag("active"))
        if p.has("name"):
            config["name"] = p.text("name")
        if p.has("default_return_url"):
            config["default_return_url"] = p.text("default_return_url")
        if p.has("metadata"):
            config["metadata"] = apply_metadata(config["metadata"], p.raw("metadata"))
        if p.has("business_profile"):
            bp = p.sub("business_profile")
            for key in ("headline", "privacy_policy_url", "terms_of_service_url"):
                if bp.has(key):
                    config["business_profile"][key] = bp.text(key)
        if not p.has("features"):
            return
        f = p.sub("features")
        features = config["features"]
        if f.has("customer_update"):
            cu = f.sub("customer_update")
            if cu.has("enabled"):
                features["customer_update"]["enabled"] = bool(cu.flag("enabled"))
            if cu.has("allowed_updates"):
                allowed = ("address", "email", "name", "phone", "shipping", "tax_id")
                values = [str(v) for v in cu.array("allowed_updates")]
                bad = [v for v in values if v not in allowed]
                if bad:
                    raise invalid_param(
                        "features[customer_update][allowed_updates]", f"Invalid value: {bad[0]}"
                    )
                features["customer_update"]["allowed_updates"] = values
        for name in ("invoice_history", "payment_method_update"):
            if f.has(name) and f.sub(name).has("enabled"):
                features[name]["enabled"] = bool(f.sub(name).flag("enabled"))
        if f.has("subscription_cancel"):
            sc = f.sub("subscription_cancel")
            if sc.has("enabled"):
                features["subscription_cancel"]["enabled"] = bool(sc.flag("enabled"))
            mode = sc.choice("mode", ("at_period_end", "immediately"))
            if mode:
                features["subscription_cancel"]["mode"] = mode
        if f.has("subscription_update"):
            su = f.sub("subscription_update")
            if su.has("enabled"):
                enabled = bool(su.flag("enabled"))
                features["subscription_update"]["enabled"] = enabled
                features["subscription_update"]["default_allowed_updates"] = ["price"] if enabled else []
            behavior = su.choice("proration_behavior", ("always_invoice", "create_prorations", "none"))
            if behavior:
                features["subscription_update"]["proration_behavior"] = behavior

    # --- customer portal sessions ----------------------------------------------------------

    def create_portal_session(self, p: Params) -> dict[str, Any]:
        customer = self.e.customer(p.req_text("customer"))
        session_id = objects.new_id("bps_1")
        token = objects.random_token(32)
        ps = objects.portal_session(
            id=session_id,
            created=self.e.now(customer["id"]),
            customer=customer["id"],
            return_url=p.text("return_url"),
            url=f"{self.e.base_url}/portal/{token}",
            configuration=self._session_configuration(p.text("configuration")),
            locale=p.text("locale"),
        )
        # Portal sessions cannot be retrieved through Stripe's API: they live only behind their URL.
        self.store.private["portal_tokens"][token] = ps
        return ps

    def _session_configuration(self, config_id: str | None) -> str:
        if not config_id:
            return str(self.default_portal_configuration()["id"])
        config = self.store.get("billing_portal.configuration", config_id, "configuration")
        if not config["active"]:
            raise invalid_param("configuration", f"The configuration {config_id} is not active.")
        return str(config["id"])

    def portal_configuration_of(self, session: dict[str, Any]) -> dict[str, Any]:
        found = self.store.find(session["configuration"])
        return found if found is not None else self.default_portal_configuration()

    def portal_session(self, token: str) -> dict[str, Any] | None:
        session = self.store.private["portal_tokens"].get(token)
        return session if isinstance(session, dict) else None

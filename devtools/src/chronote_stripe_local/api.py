"""The stand-in's HTTP app: Stripe's `/v1` API (form-encoded requests, JSON answers, Stripe's
errors, idempotency keys, secret-key auth) and the hosted pages.

Stand-in-only endpoints, which real Stripe does not have, live under `/v1/test_helpers/` next
to Stripe's own test helpers:
- `POST /v1/test_helpers/charges/{charge}/dispute` (`amount`, `reason`): the card holder
  disputes a charge (`charge.dispute.created`). Stripe does this for charges paid with the test
  card 4000 0000 0000 0259.
- `POST /v1/test_helpers/advance_time` (`seconds` or `to`): moves the clock of every object
  that is not on a test clock, running the renewals and retries that fall due.
"""

from __future__ import annotations

import base64
import json
import logging
import traceback
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qsl

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from chronote_stripe_local import documents, objects, pages, validation
from chronote_stripe_local.checkout import PaymentFailed
from chronote_stripe_local.engine import Engine
from chronote_stripe_local.errors import (
    StripeError,
    idempotency_in_flight,
    idempotency_mismatch,
    unauthorized,
)
from chronote_stripe_local.params import Params, parse_pairs
from chronote_stripe_local.payments import CardDeclined
from chronote_stripe_local.state import IdempotencyKeys, IdempotentResult
from chronote_stripe_local.webhooks import WebhookDispatcher

log = logging.getLogger("chronote_stripe_local")

Handler = Callable[..., dict[str, Any]]


def _retrieve(kind: str) -> Handler:
    return lambda e, p, id: e.store.get(kind, id)


def _events(e: Engine, p: Params) -> dict[str, Any]:
    items = e.store.all("event")
    kinds = [str(t) for t in p.array("types")]
    kind = p.text("type")
    if kind:
        kinds.append(kind)
    if kinds:

        def matches(t: str) -> bool:
            return any(t == k or (k.endswith("*") and t.startswith(k[:-1])) for k in kinds)

        items = [ev for ev in items if matches(ev["type"])]
    delivered = p.flag("delivery_success")
    if delivered is not None:
        items = [ev for ev in items if (ev["pending_webhooks"] == 0) == delivered]
    return e.paginate(items, p, "/v1/events")


# (method, path, handler(engine, params, **path_params))
ROUTES: list[tuple[str, str, Handler]] = [
    ("POST", "/v1/customers", lambda e, p: e.create_customer(p)),
    ("GET", "/v1/customers", lambda e, p: e.list_customers(p)),
    ("GET", "/v1/customers/search", lambda e, p: e.search_customers(p)),
    ("GET", "/v1/customers/{id}", _retrieve("customer")),
    ("POST", "/v1/customers/{id}", lambda e, p, id: e.update_customer(id, p)),
    ("DELETE", "/v1/customers/{id}", lambda e, p, id: e.delete_customer(id)),
    ("GET", "/v1/customers/{id}/payment_methods", lambda e, p, id: e.list_payment_methods(p, id)),
    ("POST", "/v1/products", lambda e, p: e.create_product(p)),
    ("GET", "/v1/products", lambda e, p: e.list_products(p)),
    ("GET", "/v1/products/{id}", _retrieve("product")),
    ("POST", "/v1/products/{id}", lambda e, p, id: e.update_product(id, p)),
    ("DELETE", "/v1/products/{id}", lambda e, p, id: e.delete_product(id)),
    ("POST", "/v1/prices", lambda e, p: e.create_price(p)),
    ("GET", "/v1/prices", lambda e, p: e.list_prices(p)),
    ("GET", "/v1/prices/{id}", _retrieve("price")),
    ("POST", "/v1/prices/{id}", lambda e, p, id: e.update_price(id, p)),
    ("GET", "/v1/payment_methods", lambda e, p: e.list_payment_methods(p)),
    ("GET", "/v1/payment_methods/{id}", _retrieve("payment_method")),
    (
        "POST",
        "/v1/payment_methods/{id}/attach",
        lambda e, p, id: e.attach_payment_method(id, p.req_text("customer")),
    ),
    ("POST", "/v1/payment_methods/{id}/detach", lambda e, p, id: e.detach_payment_method(id)),
    ("POST", "/v1/checkout/sessions", lambda e, p: e.checkout.create(p)),
    ("GET", "/v1/checkout/sessions", lambda e, p: e.checkout.list(p)),
    ("GET", "/v1/checkout/sessions/{id}", _retrieve("checkout.session")),
    ("POST", "/v1/checkout/sessions/{id}/expire", lambda e, p, id: e.checkout.expire_api(id)),
    ("GET", "/v1/checkout/sessions/{id}/line_items", lambda e, p, id: e.checkout.line_items_list(id, p)),
    ("POST", "/v1/billing_portal/sessions", lambda e, p: e.checkout.create_portal_session(p)),
    ("POST", "/v1/billing_portal/configurations", lambda e, p: e.checkout.create_portal_configuration(p)),
    ("GET", "/v1/billing_portal/configurations", lambda e, p: e.checkout.list_portal_configurations(p)),
    ("GET", "/v1/billing_portal/configurations/{id}", _retrieve("billing_portal.configuration")),
    (
        "POST",
        "/v1/billing_portal/configurations/{id}",
        lambda e, p, id: e.checkout.update_portal_configuration(id, p),
    ),
    ("POST", "/v1/subscriptions", lambda e, p: e.billing.create_subscription_api(p)),
    ("GET", "/v1/subscriptions", lambda e, p: e.billing.list_subscriptions(p)),
    ("GET", "/v1/subscriptions/{id}", _retrieve("subscription")),
    ("POST", "/v1/subscriptions/{id}", lambda e, p, id: e.billing.update_subscription(id, p)),
    ("DELETE", "/v1/subscriptions/{id}", lambda e, p, id: e.billing.cancel_subscription(id, p)),
    ("GET", "/v1/subscription_items", lambda e, p: e.billing.list_subscription_items(p)),
    ("POST", "/v1/invoices", lambda e, p: e.billing.create_invoice_api(p)),
    ("GET", "/v1/invoices", lambda e, p: e.billing.list_invoices(p)),
    ("GET", "/v1/invoices/{id}", _retrieve("invoice")),
    ("GET", "/v1/invoices/{id}/lines", lambda e, p, id: e.billing.list_invoice_lines(id, p)),
    ("POST", "/v1/invoices/{id}/finalize", lambda e, p, id: e.billing.finalize_api(id, p)),
    ("POST", "/v1/invoices/{id}/pay", lambda e, p, id: e.billing.pay_invoice_api(id, p)),
    ("POST", "/v1/invoices/{id}/void", lambda e, p, id: e.billing.void_api(id)),
    ("POST", "/v1/invoiceitems", lambda e, p: e.billing.create_invoice_item_api(p)),
    ("GET", "/v1/invoiceitems", lambda e, p: e.billing.list_invoice_items(p)),
    ("GET", "/v1/invoiceitems/{id}", _retrieve("invoiceitem")),
    ("GET", "/v1/invoice_payments", lambda e, p: e.billing.list_invoice_payments(p)),
    ("GET", "/v1/invoice_payments/{id}", _retrieve("invoice_payment")),
    ("POST", "/v1/payment_intents", lambda e, p: e.payments.create_intent(p)),
    ("GET", "/v1/payment_intents", lambda e, p: e.payments.list_intents(p)),
    ("GET", "/v1/payment_intents/{id}", _retrieve("payment_intent")),
    ("POST", "/v1/payment_intents/{id}", lambda e, p, id: e.payments.update_intent(id, p)),
    ("POST", "/v1/payment_intents/{id}/confirm", lambda e, p, id: e.payments.confirm_intent(id, p)),
    ("POST", "/v1/payment_intents/{id}/cancel", lambda e, p, id: e.payments.cancel_intent(id, p)),
    ("GET", "/v1/charges", lambda e, p: e.payments.list_charges(p)),
    ("GET", "/v1/charges/{id}", _retrieve("charge")),
    ("POST", "/v1/refunds", lambda e, p: e.payments.create_refund(p)),
    ("GET", "/v1/refunds", lambda e, p: e.payments.list_refunds(p)),
    ("GET", "/v1/refunds/{id}", _retrieve("refund")),
    ("POST", "/v1/refunds/{id}", lambda e, p, id: e.payments.update_refund(id, p)),
    ("GET", "/v1/disputes", lambda e, p: e.payments.list_disputes(p)),
    ("GET", "/v1/disputes/{id}", _retrieve("dispute")),
    ("POST", "/v1/disputes/{id}", lambda e, p, id: e.payments.update_dispute(id, p)),
    ("POST", "/v1/disputes/{id}/close", lambda e, p, id: e.payments.close_dispute(id)),
    ("POST", "/v1/coupons", lambda e, p: e.coupons.create_coupon(p)),
    ("GET", "/v1/coupons", lambda e, p: e.coupons.list_coupons(p)),
    ("GET", "/v1/coupons/{id}", lambda e, p, id: e.coupons.coupon(id, "id")),
    ("POST", "/v1/coupons/{id}", lambda e, p, id: e.coupons.update_coupon(id, p)),
    ("DELETE", "/v1/coupons/{id}", lambda e, p, id: e.coupons.delete_coupon(id)),
    ("POST", "/v1/promotion_codes", lambda e, p: e.coupons.create_promotion_code(p)),
    ("GET", "/v1/promotion_codes", lambda e, p: e.coupons.list_promotion_codes(p)),
    ("GET", "/v1/promotion_codes/{id}", _retrieve("promotion_code")),
    ("POST", "/v1/promotion_codes/{id}", lambda e, p, id: e.coupons.update_promotion_code(id, p)),
    ("GET", "/v1/tax_rates", lambda e, p: e.tax.list_rates(p)),
    ("GET", "/v1/tax_rates/{id}", _retrieve("tax_rate")),
    ("POST", "/v1/customers/{id}/tax_ids", lambda e, p, id: e.tax.create_tax_id(id, p)),
    ("GET", "/v1/customers/{id}/tax_ids", lambda e, p, id: e.tax.list_tax_ids(id, p)),
    ("GET", "/v1/customers/{id}/tax_ids/{tax_id}", lambda e, p, id, tax_id: e.tax.get_tax_id(id, tax_id)),
    (
        "DELETE",
        "/v1/customers/{id}/tax_ids/{tax_id}",
        lambda e, p, id, tax_id: e.tax.delete_tax_id(id, tax_id),
    ),
    ("GET", "/v1/events", _events),
    ("GET", "/v1/events/{id}", _retrieve("event")),
    ("POST", "/v1/test_helpers/test_clocks", lambda e, p: e.billing.create_clock(p)),
    (
        "GET",
        "/v1/test_helpers/test_clocks",
        lambda e, p: e.paginate(e.store.all("test_helpers.test_clock"), p, "/v1/test_helpers/test_clocks"),
    ),
    ("GET", "/v1/test_helpers/test_clocks/{id}", _retrieve("test_helpers.test_clock")),
    ("DELETE", "/v1/test_helpers/test_clocks/{id}", lambda e, p, id: e.billing.delete_clock(id)),
    ("POST", "/v1/test_helpers/test_clocks/{id}/advance", lambda e, p, id: e.billing.advance_clock(id, p)),
    # Stand-in only (see the module docstring).
    ("POST", "/v1/test_helpers/charges/{id}/dispute", lambda e, p, id: e.payments.create_dispute(id, p)),
    ("POST", "/v1/test_helpers/advance_time", lambda e, p: e.billing.advance_global(p)),
]

# The SDK parameter type of each Stripe call: unknown parameters are refused (validation.py).
PARAMS: dict[tuple[str, str], str] = {
    ("POST", "/v1/customers"): "CustomerCreateParams",
    ("GET", "/v1/customers"): "CustomerListParams",
    ("GET", "/v1/customers/search"): "CustomerSearchParams",
    ("GET", "/v1/customers/{id}"): "CustomerRetrieveParams",
    ("POST", "/v1/customers/{id}"): "CustomerUpdateParams",
    ("DELETE", "/v1/customers/{id}"): "CustomerDeleteParams",
    ("GET", "/v1/customers/{id}/payment_methods"): "CustomerListPaymentMethodsParams",
    ("POST", "/v1/products"): "ProductCreateParams",
    ("GET", "/v1/products"): "ProductListParams",
    ("GET", "/v1/products/{id}"): "ProductRetrieveParams",
    ("POST", "/v1/products/{id}"): "ProductUpdateParams",
    ("DELETE", "/v1/products/{id}"): "ProductDeleteParams",
    ("POST", "/v1/prices"): "PriceCreateParams",
    ("GET", "/v1/prices"): "PriceListParams",
    ("GET", "/v1/prices/{id}"): "PriceRetrieveParams",
    ("POST", "/v1/prices/{id}"): "PriceUpdateParams",
    ("GET", "/v1/payment_methods"): "PaymentMethodListParams",
    ("GET", "/v1/payment_methods/{id}"): "PaymentMethodRetrieveParams",
    ("POST", "/v1/payment_methods/{id}/attach"): "PaymentMethodAttachParams",
    ("POST", "/v1/payment_methods/{id}/detach"): "PaymentMethodDetachParams",
    ("POST", "/v1/checkout/sessions"): "checkout:SessionCreateParams",
    ("GET", "/v1/checkout/sessions"): "checkout:SessionListParams",
    ("GET", "/v1/checkout/sessions/{id}"): "checkout:SessionRetrieveParams",
    ("POST", "/v1/checkout/sessions/{id}/expire"): "checkout:SessionExpireParams",
    ("GET", "/v1/checkout/sessions/{id}/line_items"): "checkout:SessionListLineItemsParams",
    ("POST", "/v1/billing_portal/sessions"): "billing_portal:SessionCreateParams",
    ("POST", "/v1/billing_portal/configurations"): "billing_portal:ConfigurationCreateParams",
    ("GET", "/v1/billing_portal/configurations"): "billing_portal:ConfigurationListParams",
    ("GET", "/v1/billing_portal/configurations/{id}"): "billing_portal:ConfigurationRetrieveParams",
    ("POST", "/v1/billing_portal/configurations/{id}"): "billing_portal:ConfigurationUpdateParams",
    ("POST", "/v1/subscriptions"): "SubscriptionCreateParams",
    ("GET", "/v1/subscriptions"): "SubscriptionListParams",
    ("GET", "/v1/subscriptions/{id}"): "SubscriptionRetrieveParams",
    ("POST", "/v1/subscriptions/{id}"): "SubscriptionUpdateParams",
    ("DELETE", "/v1/subscriptions/{id}"): "SubscriptionCancelParams",
    ("GET", "/v1/subscription_items"): "SubscriptionItemListParams",
    ("POST", "/v1/invoices"): "InvoiceCreateParams",
    ("GET", "/v1/invoices"): "InvoiceListParams",
    ("GET", "/v1/invoices/{id}"): "InvoiceRetrieveParams",
    ("GET", "/v1/invoices/{id}/lines"): "InvoiceListLinesParams",
    ("POST", "/v1/invoices/{id}/finalize"): "InvoiceFinalizeInvoiceParams",
    ("POST", "/v1/invoices/{id}/pay"): "InvoicePayParams",
    ("POST", "/v1/invoices/{id}/void"): "InvoiceVoidInvoiceParams",
    ("POST", "/v1/invoiceitems"): "InvoiceItemCreateParams",
    ("GET", "/v1/invoiceitems"): "InvoiceItemListParams",
    ("GET", "/v1/invoiceitems/{id}"): "InvoiceItemRetrieveParams",
    ("GET", "/v1/invoice_payments"): "InvoicePaymentListParams",
    ("GET", "/v1/invoice_payments/{id}"): "InvoicePaymentRetrieveParams",
    ("POST", "/v1/payment_intents"): "PaymentIntentCreateParams",
    ("GET", "/v1/payment_intents"): "PaymentIntentListParams",
    ("GET", "/v1/payment_intents/{id}"): "PaymentIntentRetrieveParams",
    ("POST", "/v1/payment_intents/{id}"): "PaymentIntentUpdateParams",
    ("POST", "/v1/payment_intents/{id}/confirm"): "PaymentIntentConfirmParams",
    ("POST", "/v1/payment_intents/{id}/cancel"): "PaymentIntentCancelParams",
    ("GET", "/v1/charges"): "ChargeListParams",
    ("GET", "/v1/charges/{id}"): "ChargeRetrieveParams",
    ("POST", "/v1/refunds"): "RefundCreateParams",
    ("GET", "/v1/refunds"): "RefundListParams",
    ("GET", "/v1/refunds/{id}"): "RefundRetrieveParams",
    ("POST", "/v1/refunds/{id}"): "RefundUpdateParams",
    ("GET", "/v1/disputes"): "DisputeListParams",
    ("GET", "/v1/disputes/{id}"): "DisputeRetrieveParams",
    ("POST", "/v1/disputes/{id}"): "DisputeUpdateParams",
    ("POST", "/v1/disputes/{id}/close"): "DisputeCloseParams",
    ("POST", "/v1/coupons"): "CouponCreateParams",
    ("GET", "/v1/coupons"): "CouponListParams",
    ("GET", "/v1/coupons/{id}"): "CouponRetrieveParams",
    ("POST", "/v1/coupons/{id}"): "CouponUpdateParams",
    ("DELETE", "/v1/coupons/{id}"): "CouponDeleteParams",
    ("POST", "/v1/promotion_codes"): "PromotionCodeCreateParams",
    ("GET", "/v1/promotion_codes"): "PromotionCodeListParams",
    ("GET", "/v1/promotion_codes/{id}"): "PromotionCodeRetrieveParams",
    ("POST", "/v1/promotion_codes/{id}"): "PromotionCodeUpdateParams",
    ("GET", "/v1/tax_rates"): "TaxRateListParams",
    ("GET", "/v1/tax_rates/{id}"): "TaxRateRetrieveParams",
    ("POST", "/v1/customers/{id}/tax_ids"): "CustomerTaxIdCreateParams",
    ("GET", "/v1/customers/{id}/tax_ids"): "CustomerTaxIdListParams",
    ("GET", "/v1/customers/{id}/tax_ids/{tax_id}"): "CustomerTaxIdRetrieveParams",
    ("DELETE", "/v1/customers/{id}/tax_ids/{tax_id}"): "CustomerTaxIdDeleteParams",
    ("GET", "/v1/events"): "EventListParams",
    ("GET", "/v1/events/{id}"): "EventRetrieveParams",
    ("POST", "/v1/test_helpers/test_clocks"): "test_helpers:TestClockCreateParams",
    ("GET", "/v1/test_helpers/test_clocks"): "test_helpers:TestClockListParams",
    ("GET", "/v1/test_helpers/test_clocks/{id}"): "test_helpers:TestClockRetrieveParams",
    ("DELETE", "/v1/test_helpers/test_clocks/{id}"): "test_helpers:TestClockDeleteParams",
    ("POST", "/v1/test_helpers/test_clocks/{id}/advance"): "test_helpers:TestClockAdvanceParams",
}

NOT_SAVED = {400, 401, 404, 409, 429}


class StripeLocalApp:
    """Builds the Starlette app around an engine and a webhook dispatcher."""

    def __init__(self, engine: Engine, webhooks: WebhookDispatcher, public_url: str | None = None) -> None:
        self.engine = engine
        self.webhooks = webhooks
        self.public_url = public_url
        self.idempotency = IdempotencyKeys()
        engine.on_event = webhooks.enqueue
        engine.webhook_endpoints = webhooks.endpoints
        webhooks.on_delivered = self._delivered

    def _tick(self) -> None:
        """Let time pass before serving; a failure here is logged, never the request's failure."""
        try:
            self.engine.billing.tick()
        except Exception:
            log.error("stand-in error while processing what fell due:\n%s", traceback.format_exc())

    def _delivered(self, event_id: str) -> None:
        with self.engine.store.lock:
            event = self.engine.store.find(event_id)
            if event is not None:
                event["pending_webhooks"] = 0

    def build(self) -> Starlette:
        routes = [
            Route(path, self._endpoint(handler, PARAMS.get((method, path))), methods=[method])
            for method, path, handler in ROUTES
        ]
        routes += [
            Route("/", self._index, methods=["GET"]),
            Route("/pay/{id}", self._checkout_page, methods=["GET", "POST"]),
            Route("/portal/{token}", self._portal_page, methods=["GET", "POST"]),
            Route("/invoices/{token}", self._invoice_page, methods=["GET"]),
            Route("/invoices/{token}/pdf", self._invoice_pdf, methods=["GET"]),
            Route("/receipts/{charge}", self._receipt_page, methods=["GET"]),
            Route("/v1/{rest:path}", self._unknown, methods=["GET", "POST", "DELETE"]),
        ]
        return Starlette(routes=routes)

    def _base_url(self, request: Request) -> str:
        return self.public_url or str(request.base_url).rstrip("/")

    # --- the API ---------------------------------------------------------------------------

    def _endpoint(self, handler: Handler, params_ref: str | None) -> Callable[[Request], Any]:
        params_type = validation.params_class(params_ref) if params_ref else None

        async def endpoint(request: Request) -> Response:
            request_id = objects.new_id("req_", 14)
            headers = {
                "Request-Id": request_id,
                "Stripe-Version": request.headers.get("stripe-version", objects.API_VERSION),
            }
            api_key = _api_key(request)
            if isinstance(api_key, StripeError):
                return _json(api_key.status, api_key.body(), headers)
            body = await request.body()
            pairs = parse_qsl(request.url.query, keep_blank_values=True)
            if request.method == "POST":
                pairs += parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True)
            key = request.headers.get("idempotency-key") if request.method == "POST" else None
            base_url = self._base_url(request)
            if key is None:
                status, payload = await run_in_threadpool(
                    self._run, handler, params_type, pairs, request.path_params, request_id, None, base_url
                )
                return Response(payload, status, headers, media_type="application/json")
            headers["Idempotency-Key"] = key
            scope = f"{api_key}:{key}"
            fingerprint = IdempotencyKeys.fingerprint(request.method, request.url.path, pairs)
            stored = self.idempotency.begin(scope)
            if stored is False:
                err = idempotency_in_flight(key)
                return _json(err.status, err.body(), headers)
            if isinstance(stored, IdempotentResult):
                if stored.fingerprint != fingerprint:
                    err = idempotency_mismatch(key)
                    return _json(err.status, err.body(), headers)
                headers["Idempotent-Replayed"] = "true"
                return Response(stored.body, stored.status, headers, media_type="application/json")
            result = None
            try:
                status, payload = await run_in_threadpool(
                    self._run, handler, params_type, pairs, request.path_params, request_id, key, base_url
                )
                if status not in NOT_SAVED:
                    result = IdempotentResult(fingerprint, status, payload)
            finally:
                self.idempotency.finish(scope, result)
            return Response(payload, status, headers, media_type="application/json")

        return endpoint

    def _run(
        self,
        handler: Handler,
        params_type: Any,
        pairs: list[tuple[str, str]],
        path: dict[str, Any],
        request_id: str,
        key: str | None,
        base_url: str,
    ) -> tuple[int, bytes]:
        engine = self.engine
        try:
            with engine.store.lock:
                engine.request.request_id = request_id
                engine.request.idempotency_key = key
                engine.request.base_url = base_url
                try:
                    self._tick()
                    decoded = parse_pairs(pairs)
                    if params_type is not None:
                        validation.check(decoded, params_type)
                    params = Params(decoded)
                    result = handler(engine, params, **path)
                    if result.get("object") not in ("list", "search_result"):
                        result = engine.render_expanded(result, params.expand())
                    status, payload = 200, result
                finally:
                    engine.request.request_id = None
                    engine.request.idempotency_key = None
        except CardDeclined as declined:
            status, payload = declined.error.status, declined.error.body()
        except StripeError as err:
            status, payload = err.status, err.body()
        except Exception:  # a bug in the stand-in: Stripe's 500 shape, and the traceback in the log
            log.error("stand-in error:\n%s", traceback.format_exc())
            status, payload = (
                500,
                {
                    "error": {
                        "type": "api_error",
                        "message": "An unknown error occurred in the local Stripe stand-in.",
                    }
                },
            )
        self.webhooks.drain_sync()
        return status, json.dumps(payload, indent=2).encode()

    async def _unknown(self, request: Request) -> Response:
        api_key = _api_key(request)
        if isinstance(api_key, StripeError):
            return _json(api_key.status, api_key.body(), {})
        err = StripeError(
            404,
            f"Unrecognized request URL ({request.method}: {request.url.path}). The local Stripe stand-in serves "
            "only the part of Stripe's API that Chronote Billing uses.",
        )
        return _json(404, err.body(), {})

    # --- hosted pages ----------------------------------------------------------------------

    async def _index(self, request: Request) -> Response:
        target = self.webhooks.target
        label = target if isinstance(target, str) else ("a Python callable" if target else "nowhere")
        with self.engine.store.lock:
            html = pages.index_page(self.engine, label)
        return HTMLResponse(html)

    async def _checkout_page(self, request: Request) -> Response:
        session_id = request.path_params["id"]
        form = {}
        if request.method == "POST":
            form = {k: v for k, v in parse_qsl((await request.body()).decode(), keep_blank_values=True)}
        base_url = self._base_url(request)
        return await run_in_threadpool(self._checkout_sync, session_id, request.method, form, base_url)

    def _checkout_sync(self, session_id: str, method: str, form: dict[str, str], base_url: str) -> Response:
        engine = self.engine
        try:
            with engine.store.lock:
                engine.request.base_url = base_url
                self._tick()
                cs = engine.store.find(session_id)
                if cs is None or cs["object"] != "checkout.session":
                    return HTMLResponse(
                        pages._page(
                            "Not found", "<section><h1>This checkout link is not valid.</h1></section>", True
                        ),
                        404,
                    )
                if method == "GET":
                    return HTMLResponse(pages.checkout_page(engine, cs))
                card = form.get("card", "4242424242424242").replace(" ", "")
                try:
                    engine.checkout.complete(
                        session_id,
                        card=None if card in ("", "none") else card,
                        email=form.get("email") or None,
                        name=form.get("name") or None,
                        details=form,
                    )
                except PaymentFailed as failed:
                    return HTMLResponse(pages.checkout_page(engine, cs, error=str(failed)), 402)
                except StripeError as err:
                    return HTMLResponse(pages.checkout_page(engine, cs, error=err.message), err.status)
                return RedirectResponse(engine.checkout.success_redirect(cs), 303)
        finally:
            self.webhooks.drain_sync()

    async def _invoice_page(self, request: Request) -> Response:
        with self.engine.store.lock:
            inv = documents.invoice_for(self.engine, request.path_params["token"])
            if inv is None:
                return HTMLResponse(
                    pages._page("Not found", "<section><h1>No such invoice.</h1></section>", True), 404
                )
            return HTMLResponse(documents.invoice_page(self.engine, inv))

    async def _invoice_pdf(self, request: Request) -> Response:
        with self.engine.store.lock:
            inv = documents.invoice_for(self.engine, request.path_params["token"])
            if inv is None:
                return Response(b"No such invoice.", 404, media_type="text/plain")
            body = documents.pdf(documents.invoice_lines(self.engine, inv))
            name = f"invoice-{inv['number'] or inv['id']}.pdf"
        return Response(
            body, 200, {"Content-Disposition": f'inline; filename="{name}"'}, media_type="application/pdf"
        )

    async def _receipt_page(self, request: Request) -> Response:
        with self.engine.store.lock:
            charge = self.engine.store.find(request.path_params["charge"])
            if charge is None or charge["object"] != "charge" or charge["status"] != "succeeded":
                return HTMLResponse(
                    pages._page("Not found", "<section><h1>No such receipt.</h1></section>", True), 404
                )
            return HTMLResponse(documents.receipt_page(self.engine, charge))

    async def _portal_page(self, request: Request) -> Response:
        token = request.path_params["token"]
        form = {}
        if request.method == "POST":
            form = {k: v for k, v in parse_qsl((await request.body()).decode(), keep_blank_values=True)}
        message = request.query_params.get("message")
        base_url = self._base_url(request)
        return await run_in_threadpool(self._portal_sync, token, request.method, form, message, base_url)

    def _portal_sync(
        self, token: str, method: str, form: dict[str, str], message: str | None, base_url: str
    ) -> Response:
        engine = self.engine
        try:
            with engine.store.lock:
                engine.request.base_url = base_url
                self._tick()
                session = engine.checkout.portal_session(token)
                if session is None:
                    return HTMLResponse(
                        pages._page(
                            "Not found", "<section><h1>This billing link is not valid.</h1></section>", True
                        ),
                        404,
                    )
                if method == "GET":
                    return HTMLResponse(pages.portal_page(engine, token, session, message))
                try:
                    done = self._portal_action(session, form)
                except StripeError as err:
                    return HTMLResponse(pages.portal_page(engine, token, session, err.message), err.status)
                except CardDeclined as declined:
                    return HTMLResponse(
                        pages.portal_page(engine, token, session, declined.error.message), 402
                    )
                from urllib.parse import quote

                return RedirectResponse(f"/portal/{token}?message={quote(done)}", 303)
        finally:
            self.webhooks.drain_sync()

    def _portal_action(self, session: dict[str, Any], form: dict[str, str]) -> str:
        engine = self.engine
        action = form.get("action", "")
        customer = engine.customer(session["customer"])
        allowed = pages.portal_actions(engine.checkout.portal_configuration_of(session))
        if action in pages.PORTAL_ACTIONS and action not in allowed:
            raise StripeError(400, "This portal does not allow that.")
        if action == "use_card":
            card = form.get("card", "4242424242424242")
            if card not in objects.CARDS:
                raise StripeError(400, "Unknown test card.")
            pm = engine.new_payment_method(card, customer["id"], customer["email"], customer["name"])
            engine.update_customer(
                customer["id"], Params({"invoice_settings": {"default_payment_method": pm["id"]}})
            )
            for sub in engine.store.all("subscription"):
                if sub["customer"] == customer["id"] and sub["status"] not in (
                    "canceled",
                    "incomplete_expired",
                ):
                    engine.billing.update_subscription(
                        sub["id"], Params({"default_payment_method": pm["id"]})
                    )
            paid = 0
            for inv in engine.store.all("invoice"):
                if inv["customer"] == customer["id"] and inv["status"] == "open":
                    inv["next_payment_attempt"] = None
                    if engine.billing.collect(inv, pm=pm, off_session=False) is None:
                        paid += 1
            return "Card updated." + (f" {paid} open invoice(s) paid." if paid else "")
        sub = engine.store.get("subscription", form.get("subscription"), "subscription")
        if sub["customer"] != customer["id"]:
            raise StripeError(404, "No such subscription for this customer.")
        if action == "switch":
            engine.billing.change_price(sub, form.get("price", ""), "always_invoice")
            return "Your plan was updated."
        if action == "cancel_at_period_end":
            engine.billing.set_cancel_at_period_end(sub, True)
            return "Your subscription will be canceled at the end of the period."
        if action == "resume":
            engine.billing.set_cancel_at_period_end(sub, False)
            return "Your subscription will renew."
        if action == "cancel_now":
            engine.billing.cancel_subscription(sub["id"], Params({}))
            return "Your subscription was canceled."
        raise StripeError(400, f"Unknown action: {action}")


def _json(status: int, payload: dict[str, Any], headers: dict[str, str]) -> Response:
    return Response(json.dumps(payload, indent=2).encode(), status, headers, media_type="application/json")


def _api_key(request: Request) -> str | StripeError:
    header = request.headers.get("authorization", "")
    key = ""
    if header.lower().startswith("bearer "):
        key = header[7:].strip()
    elif header.lower().startswith("basic "):
        try:
            key = base64.b64decode(header[6:].strip()).decode().split(":", 1)[0]
        except (ValueError, UnicodeDecodeError):
            key = ""
    if not key:
        return unauthorized(
            "You did not provide an API key. You need to provide your API key in the Authorization header, "
            "using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication "
            "for details, or we can help at https://support.stripe.com/."
        )
    if not key.startswith(("sk_test_", "rk_test_")):
        shown = key[:8] + "*" * max(0, len(key) - 12) + key[-4:] if len(key) > 12 else "*" * len(key)
        return unauthorized(f"Invalid API Key provided: {shown}")
    return key

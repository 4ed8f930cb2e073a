"""The hosted pages a person (or a test) uses: Checkout (`/pay/cs_...`), the billing portal
(`/portal/<token>`) and a small index of what the stand-in holds (`/`). Plain server-rendered
HTML forms; every value is escaped."""

from __future__ import annotations

from html import escape
from typing import Any

from chronote_stripe_local import checkout_details, objects
from chronote_stripe_local.billing import fmt_date, interval_label
from chronote_stripe_local.engine import Engine
from chronote_stripe_local.objects import money
from chronote_stripe_local.tax import TAX_ID_TYPES

STYLE = """
*{box-sizing:border-box}body{margin:0;font:15px/1.5 system-ui,-apple-system,Segoe UI,sans-serif;color:#1a1f36;background:#f6f9fc}
header{background:#fff;border-bottom:1px solid #e3e8ee;padding:14px 32px;display:flex;gap:12px;align-items:center}
header b{font-size:17px}.badge{font-size:11px;font-weight:700;letter-spacing:.04em;text-transform:uppercase;background:#ffde92;color:#983705;border-radius:4px;padding:2px 6px}
main{max-width:960px;margin:32px auto;padding:0 24px;display:grid;gap:32px;grid-template-columns:1fr 1fr}
main.single{grid-template-columns:1fr}
section{background:#fff;border:1px solid #e3e8ee;border-radius:8px;padding:24px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:0 0 12px}.total{font-size:34px;font-weight:700;margin:4px 0 16px}
.muted{color:#697386}.small{font-size:13px}table{width:100%;border-collapse:collapse}td,th{padding:8px 4px;border-bottom:1px solid #eef1f5;text-align:left}td.num,th.num{text-align:right}
label{display:block;font-weight:600;margin:12px 0 4px}input[type=text],input[type=email],select{width:100%;padding:9px 10px;border:1px solid #cfd7df;border-radius:6px;font:inherit}
.cards label{font-weight:400;border:1px solid #cfd7df;border-radius:6px;padding:10px;margin:8px 0;display:flex;gap:10px;align-items:flex-start;cursor:pointer}
.cards code{font-weight:600}button{font:inherit;font-weight:600;border:0;border-radius:6px;padding:11px 16px;cursor:pointer;background:#635bff;color:#fff}
button.full{width:100%;margin-top:18px}button.secondary{background:#fff;color:#1a1f36;border:1px solid #cfd7df}button.danger{background:#fff;color:#c0123c;border:1px solid #f1b6c3}
.error{background:#fff0f3;color:#c0123c;border:1px solid #f1b6c3;border-radius:6px;padding:10px;margin:12px 0}
.notice{background:#edfaf3;color:#0e6245;border:1px solid #a8e3c5;border-radius:6px;padding:10px;margin-bottom:16px}
.status{font-size:12px;font-weight:700;border-radius:4px;padding:2px 6px;background:#eef1f5}.status.active,.status.trialing{background:#d7f7c2;color:#05690d}
.status.past_due,.status.incomplete{background:#ffe7f2;color:#b3093c}.status.canceled{background:#eef1f5;color:#697386}
.actions{display:flex;flex-wrap:wrap;gap:8px;margin-top:12px}.actions form{display:flex;gap:8px;align-items:center}.actions select{width:auto}button{white-space:nowrap}
.sub{border:1px solid #e3e8ee;border-radius:8px;padding:16px;margin-bottom:16px}a{color:#635bff}
"""

CARD_CHOICES = (
    ("4242424242424242", "Succeeds", "Every payment succeeds."),
    (
        "4000000000000341",
        "Succeeds now, declines renewals",
        "This payment succeeds; later off-session payments (renewals, retries, auto-recharge) are declined.",
    ),
    ("4000000000000002", "Declined", "The payment is declined; nothing is created."),
)


def _page(title: str, body: str, single: bool = False) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>"
        "<header><b>Chronote</b><span class=badge>Test mode · local Stripe</span></header>"
        f'<main class="{"single" if single else ""}">{body}</main></body></html>'
    )


def _card_label(pm: dict[str, Any] | None) -> str:
    if pm is None:
        return "No card on file"
    return f"{pm['card']['brand'].title()} •••• {pm['card']['last4']}"


# --- checkout --------------------------------------------------------------------------------


def checkout_page(engine: Engine, cs: dict[str, Any], error: str | None = None) -> str:
    lines = engine.store.private[cs["id"]]["lines"]
    private = engine.store.private[cs["id"]]
    title = "Subscribe" if cs["mode"] == "subscription" else "Pay"
    rows = []
    for li in lines:
        price = li["price"]
        per = interval_label(price)
        rows.append(
            f"<tr><td>{escape(li['description'])}<div class='muted small'>Qty {li['quantity']}</div></td>"
            f"<td class=num>{escape(money(price['unit_amount'] * li['quantity'], price['currency']))}"
            f"<span class='muted small'>{escape(per)}</span></td></tr>"
        )
    trial = ""
    if private.get("trial_end") or private.get("trial_period_days"):
        trial = "<p class=muted>Starts with a free trial; the first payment is due when the trial ends.</p>"
    details = cs["total_details"] or {}
    if details.get("amount_discount"):
        code = ""
        if cs["discounts"] and cs["discounts"][0].get("promotion_code"):
            promo = engine.store.find(cs["discounts"][0]["promotion_code"])
            code = f" ({promo['code']})" if promo else ""
        rows.append(
            f"<tr><td>Discount{escape(code)}</td>"
            f"<td class=num>-{escape(money(details['amount_discount'], cs['currency']))}</td></tr>"
        )
    if cs["automatic_tax"]["enabled"]:
        tax_text = (
            money(details.get("amount_tax") or 0, cs["currency"])
            if cs["automatic_tax"]["status"] == "complete"
            else "calculated from your address"
        )
        rows.append(f"<tr><td>Tax</td><td class=num id=tax>{escape(tax_text)}</td></tr>")
    summary = (
        f"<section><div class=muted>{escape(title)} to Chronote</div>"
        f"<div class=total>{escape(money(cs['amount_total'], cs['currency']))}</div>{trial}"
        f"<table>{''.join(rows)}</table>"
        f"<p class='muted small'>Session <code>{escape(cs['id'][:24])}…</code></p></section>"
    )
    if cs["status"] != "open":
        done = (
            "This checkout session is complete."
            if cs["status"] == "complete"
            else "This checkout session has expired."
        )
        link = ""
        if cs["status"] == "complete" and cs["success_url"]:
            link = f"<p><a href='{escape(engine.checkout.success_redirect(cs))}'>Continue</a></p>"
        return _page(title, summary + f"<section><h2>{escape(done)}</h2>{link}</section>")
    customer = engine.store.find(cs["customer"]) if cs["customer"] else None
    email = cs["customer_email"] or (customer or {}).get("email") or ""
    name = (customer or {}).get("name") or ""
    choices = "".join(
        f"<label><input type=radio name=card value={number} {'checked' if i == 0 else ''}>"
        f"<span><code>{number[:4]} {number[4:8]} {number[8:12]} {number[12:]}</code> · {escape(label)}"
        f"<div class='muted small'>{escape(hint)}</div></span></label>"
        for i, (number, label, hint) in enumerate(CARD_CHOICES)
    )
    if checkout_details.card_optional(cs):
        choices += (
            "<label><input type=radio name=card value=none><span>No card now"
            "<div class='muted small'>Nothing is due today; add a card before the trial ends.</div></span></label>"
        )
    cancel = ""
    if cs["cancel_url"]:
        cancel = f"<p class=small><a id=cancel href='{escape(cs['cancel_url'])}'>← Cancel and go back</a></p>"
    err = f"<div class=error role=alert>{escape(error)}</div>" if error else ""
    form = (
        f"<section><h2>Pay with card</h2>{err}<form method=post action='/pay/{escape(cs['id'])}'>"
        f"<label for=email>Email</label><input type=email id=email name=email value='{escape(email)}'>"
        f"<label for=name>Name on card</label><input type=text id=name name=name value='{escape(name)}'>"
        f"{_detail_fields(engine, cs)}"
        f"<label>Test card</label><div class=cards>{choices}</div>"
        f"<button class=full type=submit id=pay>{'Subscribe' if cs['mode'] == 'subscription' else 'Pay'} "
        f"{escape(money(cs['amount_total'], cs['currency']))}</button></form>{cancel}</section>"
    )
    return _page(title, summary + form)


def _detail_fields(engine: Engine, cs: dict[str, Any]) -> str:
    """A promotion code, a billing address and a tax id, when the session asks for them."""
    out = []
    if cs["allow_promotion_codes"]:
        out.append(
            "<label for=promotion_code>Promotion code</label><input type=text id=promotion_code name=promotion_code>"
        )
    address = engine.store.private[cs["id"]].get("address") or {}
    if checkout_details.needs_address(engine, cs) or cs["billing_address_collection"] == "auto":
        for key, label in (
            ("line1", "Address"),
            ("postal_code", "Postal code"),
            ("city", "City"),
            ("country", "Country (two letters, e.g. DE)"),
        ):
            out.append(
                f"<label for={key}>{escape(label)}</label>"
                f"<input type=text id={key} name={key} value='{escape(address.get(key) or '')}'>"
            )
    if cs.get("tax_id_collection", {}).get("enabled"):
        options = "".join(f"<option value={t}>{t}</option>" for t in TAX_ID_TYPES)
        out.append(
            "<label for=business_name>Business name (optional)</label><input type=text id=business_name name=business_name>"
            f"<label for=tax_id_value>Tax ID (optional)</label><select name=tax_id_type aria-label='Tax ID type'>{options}</select>"
            "<input type=text id=tax_id_value name=tax_id_value>"
        )
    return "".join(out)


# --- billing portal --------------------------------------------------------------------------


PORTAL_ACTIONS = ("use_card", "switch", "cancel_at_period_end", "resume", "cancel_now")


def portal_actions(config: dict[str, Any]) -> set[str]:
    """What a portal configuration lets the customer do on the page.

    The account's default (as saved in a dashboard) offers both ways to cancel; a configuration
    made through the API offers the one its `mode` names.
    """
    features = config["features"]
    allowed = set()
    if features["payment_method_update"]["enabled"]:
        allowed.add("use_card")
    if features["subscription_update"]["enabled"]:
        allowed.add("switch")
    cancel = features["subscription_cancel"]
    if cancel["enabled"]:
        allowed.add("resume")
        if cancel["mode"] == "at_period_end" or config["is_default"]:
            allowed.add("cancel_at_period_end")
        if cancel["mode"] == "immediately" or config["is_default"]:
            allowed.add("cancel_now")
    return allowed


def portal_page(engine: Engine, token: str, session: dict[str, Any], message: str | None = None) -> str:
    store = engine.store
    allowed = portal_actions(engine.checkout.portal_configuration_of(session))
    customer = store.find(session["customer"]) or {}
    subs = [
        s
        for s in store.all("subscription")
        if s["customer"] == session["customer"] and s["status"] not in ("canceled", "incomplete_expired")
    ]
    parts = []
    if message:
        parts.append(f"<div class=notice role=status>{escape(message)}</div>")
    back = ""
    if session["return_url"]:
        back = f"<p><a id=return href='{escape(session['return_url'])}'>← Return to Chronote</a></p>"
    parts.append(
        f"<section><h1>Billing</h1><p class=muted>{escape(customer.get('name') or '')} "
        f"{escape(customer.get('email') or '')}</p>{back}</section>"
    )
    sub_html = []
    for sub in subs:
        item = sub["items"]["data"][0]
        price = store.find(item["price"]["id"]) or item["price"]
        product = store.find(price["product"]) or {"name": price["product"]}
        end = item["current_period_end"]
        if sub["cancel_at"]:
            when = f"Cancels on {fmt_date(sub['cancel_at'])}"
        elif sub["status"] == "trialing":
            when = f"Trial ends on {fmt_date(end)}"
        else:
            when = f"Renews on {fmt_date(end)}"
        action = f"/portal/{escape(token)}"
        hidden = f"<input type=hidden name=subscription value='{escape(sub['id'])}'>"
        options = [
            p
            for p in store.all("price")
            if p["product"] == price["product"] and p["active"] and p["recurring"] and p["id"] != price["id"]
        ]
        forms = []
        if options and "switch" in allowed:
            opts = "".join(
                f"<option value='{escape(p['id'])}'>{escape(p['nickname'] or p['lookup_key'] or p['id'])} · "
                f"{escape(money(p['unit_amount'], p['currency']))}{escape(interval_label(p))}</option>"
                for p in sorted(options, key=lambda p: p["unit_amount"])
            )
            forms.append(
                f"<form method=post action='{action}'>{hidden}<input type=hidden name=action value=switch>"
                f"<select name=price aria-label='New plan'>{opts}</select>"
                f"<button type=submit class=secondary>Switch plan</button></form>"
            )
        if sub["cancel_at_period_end"] and "resume" in allowed:
            forms.append(
                f"<form method=post action='{action}'>{hidden}<input type=hidden name=action value=resume>"
                f"<button type=submit class=secondary>Don't cancel</button></form>"
            )
        elif not sub["cancel_at_period_end"] and "cancel_at_period_end" in allowed:
            forms.append(
                f"<form method=post action='{action}'>{hidden}<input type=hidden name=action value=cancel_at_period_end>"
                f"<button type=submit class=danger>Cancel at period end</button></form>"
            )
        if "cancel_now" in allowed:
            forms.append(
                f"<form method=post action='{action}'>{hidden}<input type=hidden name=action value=cancel_now>"
                f"<button type=submit class=danger>Cancel now</button></form>"
            )
        warn = ""
        if sub["status"] in ("past_due", "incomplete"):
            warn = "<div class=error>The last payment failed. Update your card to pay the open invoice.</div>"
        sub_html.append(
            f"<div class=sub data-subscription='{escape(sub['id'])}'><b>{escape(product['name'])}</b> "
            f"<span class='status {escape(sub['status'])}'>{escape(sub['status'].replace('_', ' '))}</span>"
            f"<div>{escape(money(price['unit_amount'] * item['quantity'], price['currency']))}{escape(interval_label(price))}"
            f" · <span class=muted>{escape(when)}</span></div>{warn}<div class=actions>{''.join(forms)}</div></div>"
        )
    parts.append(
        "<section><h2>Subscriptions</h2>"
        + ("".join(sub_html) or "<p class=muted>No active subscriptions.</p>")
        + "</section>"
    )
    default_pm = (
        store.find(customer.get("invoice_settings", {}).get("default_payment_method")) if customer else None
    )
    if default_pm is None:
        for sub in subs:
            default_pm = store.find(sub["default_payment_method"])
            if default_pm:
                break
    card_opts = "".join(
        f"<option value={n}>{n[:4]} … {n[-4:]} · {escape(label)}</option>" for n, label, _ in CARD_CHOICES
    )
    card_form = (
        f"<form method=post action='/portal/{escape(token)}' class=actions><input type=hidden name=action value=use_card>"
        f"<select name=card aria-label='Test card'>{card_opts}</select><button type=submit class=secondary>Use this card</button></form>"
        if "use_card" in allowed
        else ""
    )
    parts.append(
        f"<section><h2>Payment method</h2><p>{escape(_card_label(default_pm))}</p>{card_form}</section>"
    )
    invoices = [
        i for i in store.all("invoice") if i["customer"] == session["customer"] and i["status"] != "draft"
    ]
    rows = "".join(
        f"<tr><td>{fmt_date(i['created'])}</td><td>{escape(i['number'] or i['id'])}</td>"
        f"<td class=num>{escape(money(i['total'], i['currency']))}</td><td><span class='status {escape(i['status'])}'>{escape(i['status'])}</span></td></tr>"
        for i in invoices[:24]
    )
    parts.append(
        "<section><h2>Invoice history</h2>"
        + (
            f"<table><tr><th>Date</th><th>Number</th><th class=num>Amount</th><th>Status</th></tr>{rows}</table>"
            if rows
            else "<p class=muted>No invoices yet.</p>"
        )
        + "</section>"
    )
    return _page("Billing", "".join(parts), single=True)


# --- index -----------------------------------------------------------------------------------


def index_page(engine: Engine, webhook_target: str) -> str:
    store = engine.store
    counts = "".join(
        f"<tr><td>{escape(kind)}</td><td class=num>{len(store.all(kind))}</td></tr>"
        for kind in (
            "customer",
            "product",
            "price",
            "checkout.session",
            "subscription",
            "invoice",
            "payment_intent",
            "charge",
            "refund",
            "dispute",
            "event",
        )
    )
    events = "".join(
        f"<tr><td>{fmt_date(e['created'])}</td><td><code>{escape(e['type'])}</code></td><td class=small>{escape(e['id'])}</td></tr>"
        for e in store.all("event")[:30]
    )
    open_sessions = "".join(
        f"<li><a href='{escape(cs['url'])}'>{escape(cs['id'][:28])}…</a> ({escape(cs['mode'])}, {escape(money(cs['amount_total'], cs['currency']))})</li>"
        for cs in store.all("checkout.session")
        if cs["status"] == "open" and cs["url"]
    )
    body = (
        f"<section><h1>Local Stripe</h1><p class=muted>API {escape(objects.API_VERSION)} at this address; "
        f"webhooks to {escape(webhook_target)}.</p><table>{counts}</table></section>"
        f"<section><h2>Open checkout sessions</h2><ul>{open_sessions or '<li class=muted>none</li>'}</ul>"
        f"<h2>Recent events</h2><table>{events}</table></section>"
    )
    return _page("Local Stripe", body)

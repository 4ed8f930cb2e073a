"""What a customer reads after paying: the hosted invoice page and its PDF (`hosted_invoice_url`,
`invoice_pdf`, set when an invoice is finalized), and a charge's receipt (`receipt_url`).

Like Stripe's, the links are unguessable and need no API key. The PDF is a real one-page PDF
document with the invoice's text, so a link to it can be opened and saved.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

from chronote_stripe_local import objects

if TYPE_CHECKING:
    from chronote_stripe_local.engine import Engine


def publish_invoice(engine: Engine, inv: dict[str, Any]) -> None:
    token = objects.random_token(32)
    engine.store.private["invoice_tokens"][token] = inv["id"]
    inv["hosted_invoice_url"] = f"{engine.base_url}/invoices/{token}"
    inv["invoice_pdf"] = f"{engine.base_url}/invoices/{token}/pdf"


def invoice_for(engine: Engine, token: str) -> dict[str, Any] | None:
    invoice_id = engine.store.private["invoice_tokens"].get(token)
    return engine.store.find(invoice_id) if isinstance(invoice_id, str) else None


def _date(ts: int | None) -> str:
    from chronote_stripe_local.billing import fmt_date

    return fmt_date(ts) if ts else "—"


def invoice_lines(engine: Engine, inv: dict[str, Any]) -> list[str]:
    """The invoice as lines of text: who, what, discounts, tax, total, status."""
    cur = inv["currency"]
    out = [
        f"Invoice {inv['number'] or inv['id']}",
        f"{inv['account_name']} · issued {_date(inv['status_transitions']['finalized_at'] or inv['created'])}",
        f"Billed to {inv['customer_name'] or inv['customer_email'] or inv['customer']}",
    ]
    address = inv.get("customer_address") or {}
    if address.get("country"):
        parts = [address.get(k) for k in ("line1", "postal_code", "city", "country")]
        out.append("Address: " + ", ".join(str(p) for p in parts if p))
    for tax_id in inv.get("customer_tax_ids") or []:
        out.append(f"Tax ID: {tax_id['type']} {tax_id['value']}")
    for line in inv["lines"]["data"]:
        out.append(f"{line['description']}: {objects.money(line['amount'], cur)}")
    for entry in inv["total_discount_amounts"] or []:
        coupon = engine.coupons.coupon_of(entry["discount"])
        name = (coupon or {}).get("name") or (coupon or {}).get("id") or "Discount"
        out.append(f"Discount ({name}): -{objects.money(entry['amount'], cur)}")
    out.append(f"Subtotal: {objects.money(inv['subtotal'], cur)}")
    for tax in inv["total_taxes"] or []:
        rate = engine.store.find((tax["tax_rate_details"] or {}).get("tax_rate"))
        label = f"{rate['display_name']} {rate['percentage']}% ({rate['country']})" if rate else "Tax"
        if tax["taxability_reason"] == "reverse_charge":
            label = "Tax (reverse charge: the customer accounts for it)"
        out.append(f"{label}: {objects.money(tax['amount'], cur)}")
    out.append(f"Total: {objects.money(inv['total'], cur)}")
    out.append(f"Amount paid: {objects.money(inv['amount_paid'], cur)}")
    out.append(f"Status: {inv['status']}")
    return out


def invoice_page(engine: Engine, inv: dict[str, Any]) -> str:
    from chronote_stripe_local.pages import _page

    lines = invoice_lines(engine, inv)
    rows = "".join(f"<tr><td>{escape(text)}</td></tr>" for text in lines[1:])
    body = (
        f"<section><h1>{escape(lines[0])}</h1><table>{rows}</table>"
        f"<p><a href='{escape(inv['invoice_pdf'] or '')}'>Download PDF</a></p></section>"
    )
    return _page(lines[0], body, single=True)


def receipt_page(engine: Engine, charge: dict[str, Any]) -> str:
    from chronote_stripe_local.pages import _page

    card = charge["payment_method_details"]["card"]
    rows = [
        f"Receipt for {charge['description'] or 'a payment'}",
        f"Paid {_date(charge['created'])} with {card['brand'].title()} •••• {card['last4']}",
        f"Amount: {objects.money(charge['amount'], charge['currency'])}",
    ]
    if charge["amount_refunded"]:
        rows.append(f"Refunded: {objects.money(charge['amount_refunded'], charge['currency'])}")
    body = (
        "<section><h1>Receipt</h1><table>"
        + "".join(f"<tr><td>{escape(r)}</td></tr>" for r in rows)
        + "</table></section>"
    )
    return _page("Receipt", body, single=True)


def pdf(lines: list[str]) -> bytes:
    """A one-page PDF (Helvetica, A4) with one line of text per entry."""

    def text(value: str) -> str:
        safe = value.encode("latin-1", "replace").decode("latin-1")
        return safe.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    ops = ["BT", "/F1 11 Tf", "14 TL", "56 790 Td"]
    for i, line in enumerate(lines):
        ops.append(f"({text(line)}) {'Tj' if i == 0 else chr(39)}")
    ops.append("ET")
    stream = "\n".join(ops).encode("latin-1")
    bodies = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length " + str(len(stream)).encode() + b" >>\nstream\n" + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(bodies, start=1):
        offsets.append(len(out))
        out += f"{number} 0 obj\n".encode() + body + b"\nendobj\n"
    xref = len(out)
    out += f"xref\n0 {len(bodies) + 1}\n0000000000 65535 f \n".encode()
    for offset in offsets:
        out += f"{offset:010d} 00000 n \n".encode()
    out += f"trailer\n<< /Size {len(bodies) + 1} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n".encode()
    return bytes(out)

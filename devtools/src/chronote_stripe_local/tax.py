"""Stripe Tax, offline: `automatic_tax` computed from a small table of rates by country, and the
customer details it needs (address, tax ids).

Stripe Tax decides the rate from the customer's location, the product's tax code and the
seller's registrations. The stand-in keeps that shape with a fixed table: the seller (the
stand-in's account, in the US) is registered in the countries below, prices are tax-exclusive
(tax is added on top), and a business customer with an EU or UK VAT number outside the seller's
country is reverse charged. Anywhere else nothing is collected (`not_collecting`).

Each rate used becomes a `tax_rate` object (`txr_...`, retrievable) that invoice lines and
`total_taxes` name in `tax_rate_details`, as Stripe does for automatic tax.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from chronote_stripe_local import objects
from chronote_stripe_local.coupons import percent_of
from chronote_stripe_local.errors import StripeError, invalid_param
from chronote_stripe_local.params import Params

if TYPE_CHECKING:
    from chronote_stripe_local.engine import Engine

# country: (percentage, tax type, display name, description)
RATES: dict[str, tuple[str, str, str, str]] = {
    "DE": ("19", "vat", "VAT", "VAT Germany"),
    "FR": ("20", "vat", "VAT", "VAT France"),
    "NL": ("21", "vat", "VAT", "VAT Netherlands"),
    "IE": ("23", "vat", "VAT", "VAT Ireland"),
    "GB": ("20", "vat", "VAT", "VAT United Kingdom"),
    "AU": ("10", "gst", "GST", "GST Australia"),
    "NZ": ("15", "gst", "GST", "GST New Zealand"),
    "CA": ("5", "gst", "GST", "GST Canada"),
}
REVERSE_CHARGE_ID_TYPES = ("eu_vat", "gb_vat")
TAX_ID_TYPES = ("eu_vat", "gb_vat", "au_abn", "ca_bn", "nz_gst", "us_ein")
ACCOUNT_COUNTRY = "US"


def tax_rate_object(*, id: str, created: int, country: str) -> dict[str, Any]:
    percentage, tax_type, display, description = RATES[country]
    pct: float | int = int(percentage) if percentage.isdigit() else float(percentage)
    return {
        "id": id,
        "object": "tax_rate",
        "active": True,
        "country": country,
        "created": created,
        "description": description,
        "display_name": display,
        "effective_percentage": pct,
        "flat_amount": None,
        "inclusive": False,
        "jurisdiction": country,
        "jurisdiction_level": "country",
        "livemode": False,
        "metadata": {},
        "percentage": pct,
        "rate_type": "percentage",
        "state": None,
        "tax_type": tax_type,
    }


def tax_id_object(*, id: str, created: int, customer: str, type: str, value: str) -> dict[str, Any]:
    return {
        "id": id,
        "object": "tax_id",
        "country": value[:2].upper() if type in ("eu_vat", "gb_vat") else None,
        "created": created,
        "customer": customer,
        "customer_account": None,
        "livemode": False,
        "owner": {"customer": customer, "customer_account": None, "type": "customer"},
        "type": type,
        "value": value,
        "verification": {"status": "pending", "verified_address": None, "verified_name": None},
    }


class Tax:
    def __init__(self, engine: Engine) -> None:
        self.e = engine
        self.store = engine.store

    # --- tax rates -------------------------------------------------------------------------

    def rate_for(self, country: str) -> dict[str, Any]:
        """The tax rate object of a country in the table (one per country, made on first use)."""
        rates: dict[str, str] = self.store.private["tax_rates"]
        if country not in rates:
            rate = tax_rate_object(
                id=objects.new_id("txr_1"), created=self.store.global_now(), country=country
            )
            self.store.add(rate)
            rates[country] = rate["id"]
        found = self.store.find(rates[country])
        assert found is not None
        return found

    def list_rates(self, p: Params) -> dict[str, Any]:
        return self.e.paginate(self.store.all("tax_rate"), p, "/v1/tax_rates")

    # --- customer details ------------------------------------------------------------------

    def set_address(self, customer: dict[str, Any], address: Params) -> None:
        country = (address.text("country") or "").upper() or None
        if country is not None and (len(country) != 2 or not country.isalpha()):
            raise invalid_param("address[country]", "Country must be a two-letter ISO code.")
        customer["address"] = {
            "city": address.text("city"),
            "country": country,
            "line1": address.text("line1"),
            "line2": address.text("line2"),
            "postal_code": address.text("postal_code"),
            "state": address.text("state"),
        }

    def create_tax_id(self, customer_id: str, p: Params) -> dict[str, Any]:
        customer = self.e.customer(customer_id, "customer")
        kind = p.choice("type", TAX_ID_TYPES)
        if kind is None:
            raise invalid_param("type", "Missing required param: type.", "parameter_missing")
        value = (p.req_text("value") or "").replace(" ", "").upper()
        if kind in REVERSE_CHARGE_ID_TYPES and (len(value) < 4 or not value[:2].isalpha()):
            raise StripeError(400, f"Invalid value for {kind}.", code="tax_id_invalid", param="value")
        tax_id = tax_id_object(
            id=objects.new_id("txi_1"),
            created=self.e.now(customer_id),
            customer=customer["id"],
            type=kind,
            value=value,
        )
        self.store.add(tax_id)
        self.e.emit("customer.tax_id.created", tax_id)
        return tax_id

    def tax_ids_of(self, customer_id: str) -> list[dict[str, Any]]:
        return [t for t in self.store.all("tax_id") if t["customer"] == customer_id and not t.get("deleted")]

    def list_tax_ids(self, customer_id: str, p: Params) -> dict[str, Any]:
        self.e.customer(customer_id, "customer")
        return self.e.paginate(self.tax_ids_of(customer_id), p, f"/v1/customers/{customer_id}/tax_ids")

    def get_tax_id(self, customer_id: str, tax_id: str) -> dict[str, Any]:
        found = self.store.get("tax_id", tax_id)
        if found.get("deleted") or found["customer"] != customer_id:
            raise StripeError(404, f"No such tax id: '{tax_id}'", code="resource_missing", param="id")
        return found

    def delete_tax_id(self, customer_id: str, tax_id: str) -> dict[str, Any]:
        found = self.get_tax_id(customer_id, tax_id)
        self.e.emit("customer.tax_id.deleted", found)
        found.clear()
        found.update(objects.deleted("tax_id", tax_id))
        found["customer"] = customer_id
        return objects.deleted("tax_id", tax_id)

    # --- computing tax ---------------------------------------------------------------------

    def decide(self, customer: dict[str, Any] | None) -> tuple[str, dict[str, Any] | None]:
        """(taxability reason, tax rate or None) for a customer, by their address and tax ids."""
        address = (customer or {}).get("address") or {}
        country = address.get("country")
        if not country:
            return "requires_location_inputs", None
        if country not in RATES:
            return "not_collecting", None
        ids = self.tax_ids_of(customer["id"]) if customer and customer.get("id") else []
        if country != ACCOUNT_COUNTRY and any(t["type"] in REVERSE_CHARGE_ID_TYPES for t in ids):
            return "reverse_charge", None
        return "standard_rated", self.rate_for(country)

    def line_taxes(self, reason: str, rate: dict[str, Any] | None, taxable: int) -> list[dict[str, Any]]:
        if reason == "requires_location_inputs":
            return []
        amount = percent_of(taxable, rate["percentage"]) if rate is not None else 0
        return [
            {
                "amount": amount,
                "tax_behavior": "exclusive",
                "tax_rate_details": {"tax_rate": rate["id"]} if rate is not None else None,
                "taxability_reason": reason,
                "taxable_amount": taxable if rate is not None else 0,
                "type": "tax_rate_details",
            }
        ]

    @staticmethod
    def automatic_tax(enabled: bool, status: str | None, *, invoice: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "enabled": enabled,
            "liability": {"type": "self"} if enabled else None,
            "provider": "stripe" if enabled else None,
            "status": status if enabled else None,
        }
        if invoice:
            out["disabled_reason"] = None
        return out

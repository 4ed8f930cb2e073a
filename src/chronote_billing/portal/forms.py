"""Reading portal forms: text fields, whole numbers, credit amounts, and the idempotency key.

Every portal form carries a hidden ``nonce`` made when the form was rendered; the idempotency
key of the service call is derived from it, so submitting the same form twice acts once.
Parsing errors are ``ValidationFailed`` with a message a person can act on.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time

from starlette.datastructures import FormData

from chronote_billing.core.errors import BillingError, ValidationFailed
from chronote_billing.core.validation import printable, text_problem

NONCE = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


class Form:
    def __init__(self, data: FormData, action: str, user_id: str) -> None:
        self.data = data
        self.action = action
        self.user_id = user_id
        nonce = str(data.get("nonce") or "")
        if not NONCE.match(nonce):
            raise ValidationFailed("This form is missing its one-time token. Reload the page and try again.")
        self.nonce = nonce
        # The label each field was read with, so an error names the field as the page does.
        self.labels: dict[str, str] = {}

    def key(self, part: str = "") -> str:
        """The idempotency key of this submission (one per rendered form, action and user)."""
        suffix = f":{part}" if part else ""
        return f"portal:{self.action}:{self.user_id}:{self.nonce}{suffix}"

    def text(self, name: str, label: str | None = None, required: bool = True, max_length: int = 200) -> str:
        if label:
            self.labels[name] = label
        value = str(self.data.get(name) or "").strip()
        what = label or name.replace("_", " ").capitalize()
        if required and not value:
            raise ValidationFailed(f"{what} is required.", field=name)
        if len(value) > max_length:
            raise ValidationFailed(f"{what} is at most {max_length} characters.", field=name)
        problem = text_problem(value)
        if problem is not None:
            raise ValidationFailed(f"{what} {problem}.", field=name)
        return value

    def choice(self, name: str, options: tuple[str, ...] | list[str], label: str | None = None) -> str:
        value = self.text(name, label)
        if value not in options:
            raise ValidationFailed(
                f"{label or name.replace('_', ' ').capitalize()} must be one of: {', '.join(options)}.",
                field=name,
            )
        return value

    def values(self, name: str, max_items: int = 100, max_length: int = 64) -> list[str]:
        values = [str(v).strip() for v in self.data.getlist(name) if str(v).strip()]
        what = name.replace("_", " ").capitalize()
        if len(values) > max_items:
            raise ValidationFailed(f"{what}: at most {max_items} choices.", field=name)
        for value in values:
            problem = text_problem(value) or (
                f"is at most {max_length} characters" if len(value) > max_length else None
            )
            if problem is not None:
                raise ValidationFailed(f"{what} {problem}.", field=name)
        return values

    def checked(self, name: str) -> bool:
        return str(self.data.get(name) or "").lower() in ("1", "on", "true", "yes")

    def whole(self, name: str, label: str, required: bool = True) -> int | None:
        """A whole number of 0 or more (credits, thresholds): every such field counts something."""
        self.labels[name] = label
        raw = str(self.data.get(name) or "").strip().replace(",", "")
        if not raw:
            if required:
                raise ValidationFailed(f"{label} is required.", field=name)
            return None
        if re.fullmatch(r"-[0-9]{1,15}", raw):
            raise ValidationFailed(f"{label} must be 0 or more, not {raw}.", field=name)
        if not re.fullmatch(r"[0-9]{1,15}", raw):
            raise ValidationFailed(f"{label} must be a whole number, not '{printable(raw, 20)}'.", field=name)
        return int(raw)

    def readable(self, exc: BillingError) -> str:
        """The error's message with any internal field name replaced by the label this form shows."""
        message = exc.message
        for name, label in self.labels.items():
            if "_" in name:  # internal names only; a plain word may be the message's own
                message = re.sub(rf"\b{re.escape(name)}\b", label, message)
        return message

    def day(self, name: str, label: str, end_of_day: bool = False) -> datetime | None:
        """A date field (YYYY-MM-DD) as a UTC moment: the start of that day, or its end."""
        self.labels[name] = label
        raw = str(self.data.get(name) or "").strip()
        if not raw:
            return None
        day = parse_day(raw, label, name)
        moment = datetime.combine(day, time(0, 0), tzinfo=UTC)
        if end_of_day:
            moment = datetime.combine(day, time(23, 59, 59), tzinfo=UTC)
        return moment


def parse_day(raw: str, label: str, field: str) -> date:
    """A date field (YYYY-MM-DD); the last representable day is refused, since pages add a day
    to make an end exclusive."""
    try:
        day = datetime.strptime(raw.strip(), "%Y-%m-%d").date()
    except ValueError:
        raise ValidationFailed(
            f"{label} must be a date (YYYY-MM-DD), got '{printable(raw, 20)}'.", field=field
        ) from None
    if day >= date.max:
        raise ValidationFailed(f"{label} is too far in the future.", field=field)
    return day

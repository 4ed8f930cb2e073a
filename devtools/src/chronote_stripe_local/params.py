"""Stripe's request encoding: form fields with bracket notation, decoded into nested dicts and lists.

`metadata[plan]=pro` becomes `{"metadata": {"plan": "pro"}}`; `items[0][price]=p` and
`expand[]=x` become lists. Values stay strings; the helpers below coerce and validate them and raise
Stripe's own 400 errors. An empty string means "unset" as in Stripe (`metadata[k]=` deletes `k`).
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from chronote_stripe_local.errors import StripeError, invalid_param, missing_param

_SEGMENT = re.compile(r"\[([^\]]*)\]")
# Keys of free-form hashes: their children are never turned into lists.
_HASH_KEYS = {"metadata"}


def _split_key(key: str) -> list[str]:
    head, _, rest = key.partition("[")
    segments = [head]
    if rest:
        segments.extend(_SEGMENT.findall("[" + rest))
    return segments


def parse_pairs(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Decode form pairs into nested structures, as Stripe's API does."""
    root: dict[str, Any] = {}
    append_counter = 0
    for key, value in pairs:
        segments = _split_key(key)
        node = root
        for i, segment in enumerate(segments):
            if segment == "":
                append_counter += 1
                segment = f"{10**9 + append_counter}"  # `a[]`: appended after any indexed entries
            last = i == len(segments) - 1
            if last:
                node[segment] = value
            else:
                child = node.get(segment)
                if not isinstance(child, dict):
                    child = {}
                    node[segment] = child
                node = child
    # The root is always a hash: a body like `0=x` must reach validation as an unknown parameter.
    return {k: _listify(v, k) for k, v in root.items()}


def _listify(node: Any, parent_key: str | None) -> Any:
    if not isinstance(node, dict):
        return node
    if parent_key not in _HASH_KEYS and node and all(k.isdigit() for k in node):
        return [_listify(node[k], None) for k in sorted(node, key=int)]
    return {k: _listify(v, k) for k, v in node.items()}


class Params:
    """Typed access to decoded parameters; every failure is Stripe's 400 error."""

    def __init__(self, data: dict[str, Any], prefix: str = "") -> None:
        self.data = data
        self.prefix = prefix

    def _name(self, key: str) -> str:
        return f"{self.prefix}[{key}]" if self.prefix else key

    def has(self, key: str) -> bool:
        return key in self.data

    def raw(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def text(self, key: str, default: str | None = None, *, required: bool = False) -> str | None:
        value = self.data.get(key)
        if value is None or value == "":
            if required:
                raise missing_param(self._name(key))
            return default
        if not isinstance(value, str):
            raise invalid_param(self._name(key), f"Invalid string: {value!r}", "parameter_invalid_string")
        return value

    def req_text(self, key: str) -> str:
        value = self.text(key, required=True)
        assert value is not None
        return value

    def integer(
        self, key: str, default: int | None = None, *, required: bool = False, minimum: int | None = None
    ) -> int | None:
        value = self.data.get(key)
        if value is None or value == "":
            if required:
                raise missing_param(self._name(key))
            return default
        try:
            number = int(str(value))
        except ValueError:
            raise invalid_param(
                self._name(key), f"Invalid integer: {value}", "parameter_invalid_integer"
            ) from None
        if minimum is not None and number < minimum:
            raise invalid_param(
                self._name(key),
                f"This value must be greater than or equal to {minimum}.",
                "parameter_invalid_integer",
            )
        return number

    def decimal_amount(self, key: str) -> int:
        """A required `*_decimal` amount in minor units, truncated to whole units as we store them."""
        raw = self.req_text(key)
        try:
            value = Decimal(raw)
        except InvalidOperation:
            value = Decimal("NaN")
        if not value.is_finite() or value < 0:
            raise invalid_param(self._name(key), f"Invalid decimal: {raw}", "parameter_invalid_decimal")
        return int(value)

    def req_integer(self, key: str, minimum: int | None = None) -> int:
        value = self.integer(key, required=True, minimum=minimum)
        assert value is not None
        return value

    def flag(self, key: str, default: bool | None = None) -> bool | None:
        value = self.data.get(key)
        if value is None or value == "":
            return default
        if value in ("true", True):
            return True
        if value in ("false", False):
            return False
        raise invalid_param(self._name(key), f"Invalid boolean: {value}", "parameter_invalid_boolean")

    def choice(self, key: str, choices: tuple[str, ...], default: str | None = None) -> str | None:
        value = self.text(key, default)
        if value is not None and value not in choices:
            raise invalid_param(
                self._name(key),
                f"Invalid {key}: must be one of {', '.join(choices)}",
                "parameter_invalid_string",
            )
        return value

    def sub(self, key: str) -> Params:
        value = self.data.get(key)
        if value is None or value == "":
            return Params({}, self._name(key))
        if not isinstance(value, dict):
            raise invalid_param(self._name(key), f"Invalid hash: {self._name(key)}", "parameter_invalid_hash")
        return Params(value, self._name(key))

    def array(self, key: str) -> list[Any]:
        value = self.data.get(key)
        if value is None or value == "":
            return []
        if isinstance(value, list):
            return value
        if isinstance(value, dict):  # `items[x][price]`: Stripe rejects non-integer indexes
            raise invalid_param(
                self._name(key), f"Invalid array: {self._name(key)}", "parameter_invalid_array"
            )
        return [value]

    def subarray(self, key: str) -> list[Params]:
        out = []
        for i, entry in enumerate(self.array(key)):
            if not isinstance(entry, dict):
                raise invalid_param(f"{self._name(key)}[{i}]", "Invalid hash", "parameter_invalid_hash")
            out.append(Params(entry, f"{self._name(key)}[{i}]"))
        return out

    def expand(self) -> list[str]:
        return [str(e) for e in self.array("expand")]


def apply_metadata(current: dict[str, str], update: Any, name: str = "metadata") -> dict[str, str]:
    """Merge a metadata update like Stripe: `""` clears all, a key set to `""` is deleted."""
    if update is None:
        return current
    if update == "":
        return {}
    if not isinstance(update, dict):
        raise invalid_param(name, f"Invalid hash: {name}", "parameter_invalid_hash")
    merged = dict(current)
    for key, value in update.items():
        if value == "" or value is None:
            merged.pop(key, None)
        else:
            if len(str(key)) > 40:
                raise invalid_param(f"{name}[{key}]", "Metadata keys can have up to 40 characters.")
            if len(str(value)) > 500:
                raise invalid_param(f"{name}[{key}]", "Metadata values can have up to 500 characters.")
            merged[str(key)] = str(value)
    if len(merged) > 50:
        raise StripeError(
            400, "You can have up to 50 metadata keys.", code="parameter_invalid_hash", param=name
        )
    return merged

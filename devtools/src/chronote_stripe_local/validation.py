"""Unknown parameters are refused, as Stripe refuses them (`Received unknown parameter: x`).

What a call accepts is read from the installed `stripe` SDK's own parameter types
(`stripe.params.CustomerCreateParams` and the TypedDicts nested in it), which are generated from
Stripe's API specification. So a misspelt or removed parameter fails here as it would against
Stripe, while a valid parameter the stand-in does not act on is accepted (and ignored).
"""

from __future__ import annotations

import importlib
import re
import sys
from functools import cache
from typing import Any

from stripe._request_options import RequestOptions
from typing_extensions import is_typeddict

from chronote_stripe_local.errors import StripeError

_REQUEST_OPTIONS = frozenset(RequestOptions.__annotations__)
_CLASS_NAME = re.compile(r"\b([A-Z]\w*Params\w*)\b")


@cache
def params_class(ref: str) -> Any:
    """`"checkout:SessionCreateParams"` -> `stripe.params.checkout.SessionCreateParams`."""
    package, _, name = ref.rpartition(":")
    module = importlib.import_module("stripe.params" + (f".{package}" if package else ""))
    cls = getattr(module, name)
    if not is_typeddict(cls):
        raise TypeError(f"{ref} is not a parameter type")
    return cls


def _nested(cls: Any, annotation: Any) -> Any:
    """The parameter type nested in an annotation such as `NotRequired[List['XParamsLineItem']]`."""
    module = sys.modules[cls.__module__]
    for name in _CLASS_NAME.findall(repr(annotation)):
        candidate = getattr(module, name, None)
        if candidate is not None and is_typeddict(candidate):
            return candidate
    return None


def check(data: dict[str, Any], cls: Any, prefix: str = "") -> None:
    annotations = cls.__annotations__
    for key, value in data.items():
        name = f"{prefix}[{key}]" if prefix else key
        if key not in annotations or (not prefix and key in _REQUEST_OPTIONS):
            raise StripeError(
                400, f"Received unknown parameter: {name}", code="parameter_unknown", param=name
            )
        annotation = annotations[key]
        if isinstance(value, dict):
            if "Dict[" in repr(annotation):
                continue  # a free-form hash such as metadata
            nested = _nested(cls, annotation)
            if nested is not None:
                check(value, nested, name)
        elif isinstance(value, list):
            nested = _nested(cls, annotation)
            if nested is not None:
                for i, element in enumerate(value):
                    if isinstance(element, dict):
                        check(element, nested, f"{name}[{i}]")

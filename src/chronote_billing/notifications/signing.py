"""Signatures of the webhooks sent to Chronote, in Stripe's scheme.

Header: ``Chronote-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``.
The receiver recomputes the HMAC over the raw request body and checks the timestamp is recent,
so a captured request cannot be replayed later. This module has no dependency on the rest of
the service: Chronote's side may import or copy it.
"""

from __future__ import annotations

import hashlib
import hmac
import time

SIGNATURE_HEADER = "Chronote-Signature"
DEFAULT_TOLERANCE_SECONDS = 300


class InvalidSignature(ValueError):
    """The signature header is missing, malformed, stale or does not match the payload."""


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode()


def compute_signature(payload: bytes | str, secret: str, timestamp: int) -> str:
    signed = str(timestamp).encode() + b"." + _as_bytes(payload)
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def sign(payload: bytes | str, secret: str, timestamp: int | None = None) -> str:
    """The ``Chronote-Signature`` header value for ``payload`` (the exact bytes sent)."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={t},v1={compute_signature(payload, secret, t)}"


def verify_signature(
    payload: bytes | str,
    header: str | None,
    secret: str,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> None:
    """Check a webhook from Chronote Billing; raises :class:`InvalidSignature` if it is not
    genuine or older (or newer) than ``tolerance`` seconds. ``payload`` is the raw body.

    Several ``v1`` entries may be present (while a secret is rotated); one match is enough.
    """
    if not header:
        raise InvalidSignature(f"missing {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if name == "t":
            try:
                timestamp = int(value)
            except ValueError as exc:
                raise InvalidSignature("malformed timestamp in signature header") from exc
        elif name == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        raise InvalidSignature("signature header needs t=<timestamp> and v1=<signature>")
    current = time.time() if now is None else now
    if tolerance > 0 and abs(current - timestamp) > tolerance:
        raise InvalidSignature(f"timestamp outside the {tolerance}s tolerance")
    expected = compute_signature(payload, secret, timestamp)
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise InvalidSignature("signature does not match the payload")

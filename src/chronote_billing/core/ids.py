"""Prefixed, time-ordered identifiers (``hold_01J...``) in the style of Stripe's object ids.

Time-ordered ids keep B-tree inserts at the right edge of the index on PostgreSQL.
"""

from __future__ import annotations

import base64
import secrets
import time

_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"  # Crockford base32, lower case
# The standard library encodes base32 in C with RFC 4648's alphabet; map it onto Crockford's.
_FROM_RFC4648 = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", _ALPHABET)


def new_id(prefix: str) -> str:
    """``prefix_`` + 26 characters: 50 bits of milliseconds since the epoch, then 80 random bits.

    Sortable by creation time (to the millisecond) as plain strings.
    """
    number = (int(time.time() * 1000) << 80) | secrets.randbits(80)
    # 130 bits, shifted into 17 whole bytes; the first 26 base32 digits are exactly those bits.
    digits = base64.b32encode((number << 6).to_bytes(17, "big"))[:26].decode("ascii")
    return f"{prefix}_{digits.translate(_FROM_RFC4648)}"

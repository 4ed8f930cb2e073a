"""Object ids: prefixed, Crockford base32, ordered by creation time."""

from __future__ import annotations

import time

from chronote_billing.core.ids import new_id

CROCKFORD = set("0123456789abcdefghjkmnpqrstvwxyz")


def test_ids_are_prefixed_crockford_base32_and_unique() -> None:
    ids = [new_id("hold") for _ in range(2_000)]
    assert len(set(ids)) == len(ids)
    for value in ids:
        prefix, digits = value.split("_")
        assert prefix == "hold" and len(digits) == 26 and set(digits) <= CROCKFORD


def test_ids_sort_by_creation_time_and_encode_it() -> None:
    first = new_id("deb")
    time.sleep(0.003)
    second = new_id("deb")
    assert first < second
    millis = 0
    for char in second[4:14]:  # the first ten digits: milliseconds since the epoch
        millis = millis * 32 + "0123456789abcdefghjkmnpqrstvwxyz".index(char)
    assert abs(millis - time.time() * 1000) < 5_000

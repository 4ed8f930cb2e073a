"""In-memory state of the stand-in: every object by id, in creation order, behind one lock.

Time: objects of a customer attached to a test clock live at that clock's `frozen_time`;
everything else lives at the stand-in's own clock, which is the wall clock plus an offset that
only the stand-in's helper `POST /v1/test_helpers/advance_time` moves (not a Stripe API).
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from chronote_stripe_local.errors import resource_missing

# Names Stripe uses in "No such ..." messages.
KIND_NAMES = {
    "checkout.session": "checkout.session",
    "billing_portal.session": "billing portal session",
    "billing_portal.configuration": "configuration",
    "test_helpers.test_clock": "test clock",
    "invoiceitem": "invoiceitem",
    "payment_intent": "payment_intent",
    "payment_method": "PaymentMethod",
}


class Store:
    """Objects by id, plus private per-object data that Stripe would not show."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.reset()

    def reset(self) -> None:
        """Forget everything (tests reuse one stand-in)."""
        self._objects: dict[str, dict[str, Any]] = {}
        self._by_kind: dict[str, list[str]] = defaultdict(list)
        self._seq: dict[str, int] = {}
        self._counter = 0
        self.private: dict[str, dict[str, Any]] = defaultdict(dict)
        self.clock_offset = 0
        self._global_override: int | None = None

    # --- objects ---------------------------------------------------------------------------

    def add(self, obj: dict[str, Any]) -> dict[str, Any]:
        self._counter += 1
        self._objects[obj["id"]] = obj
        self._by_kind[obj["object"]].append(obj["id"])
        self._seq[obj["id"]] = self._counter
        return obj

    def remove(self, object_id: str) -> None:
        obj = self._objects.pop(object_id, None)
        if obj is not None:
            self._by_kind[obj["object"]].remove(object_id)

    def find(self, object_id: str | None) -> dict[str, Any] | None:
        if not object_id:
            return None
        return self._objects.get(object_id)

    def get(self, kind: str, object_id: str | None, param: str = "id") -> dict[str, Any]:
        obj = self.find(object_id)
        if obj is None or obj["object"] != kind:
            raise resource_missing(KIND_NAMES.get(kind, kind), str(object_id or ""), param)
        return obj

    def all(self, kind: str) -> list[dict[str, Any]]:
        """Objects of a kind, newest first, as Stripe lists them."""
        return [self._objects[i] for i in reversed(self._by_kind[kind])]

    def seq(self, object_id: str) -> int:
        return self._seq.get(object_id, 0)

    # --- time ------------------------------------------------------------------------------

    def global_now(self) -> int:
        if self._global_override is not None:
            return self._global_override
        return int(time.time()) + self.clock_offset

    def clock_now(self, clock_id: str | None) -> int:
        if clock_id:
            clock = self.find(clock_id)
            if clock is not None:
                return int(clock["frozen_time"])
        return self.global_now()

    def clock_of(self, obj: dict[str, Any] | None) -> str | None:
        """The test clock an object lives on: its own, or its customer's."""
        if obj is None:
            return None
        if obj.get("object") == "test_helpers.test_clock":
            return str(obj["id"])
        if "test_clock" in obj and obj["object"] in ("customer", "subscription", "invoice", "invoiceitem"):
            return obj["test_clock"]
        customer = obj.get("customer")
        if isinstance(customer, dict):
            customer = customer.get("id")
        cust = self.find(customer) if isinstance(customer, str) else None
        return cust.get("test_clock") if cust else None

    def now_for(self, obj: dict[str, Any] | None) -> int:
        return self.clock_now(self.clock_of(obj))

    def now_for_customer(self, customer_id: str | None) -> int:
        cust = self.find(customer_id)
        return self.clock_now(cust.get("test_clock") if cust else None)

    def set_global_override(self, moment: int | None) -> None:
        self._global_override = moment


def diff_previous(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """`data.previous_attributes` of an `*.updated` event: the earlier values of changed fields.

    Like Stripe, a changed `metadata` shows only its changed keys (an added key shows as `null`);
    other changed values appear whole.
    """
    previous: dict[str, Any] = {}
    for key, old in before.items():
        new = after.get(key)
        if old == new:
            continue
        if key == "metadata" and isinstance(old, dict) and isinstance(new, dict):
            previous[key] = {k: old.get(k) for k in set(old) | set(new) if old.get(k) != new.get(k)}
        else:
            previous[key] = old
    return previous


@dataclass
class IdempotentResult:
    fingerprint: str
    status: int
    body: bytes
    created: float = field(default_factory=time.time)


class IdempotencyKeys:
    """Stripe's idempotency: the first response to a key is replayed for 24 hours."""

    TTL = 24 * 3600

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._done: dict[str, IdempotentResult] = {}
        self._running: set[str] = set()

    @staticmethod
    def fingerprint(method: str, path: str, pairs: list[tuple[str, str]]) -> str:
        canonical = method.upper() + " " + path + "?" + "&".join(f"{k}={v}" for k, v in sorted(pairs))
        return hashlib.sha256(canonical.encode()).hexdigest()

    def clear(self) -> None:
        with self._lock:
            self._done.clear()

    def begin(self, scope: str) -> IdempotentResult | None | bool:
        """The stored result, False if a request with this key is still running, else None
        (and the key is now marked as running)."""
        with self._lock:
            done = self._done.get(scope)
            if done is not None and time.time() - done.created < self.TTL:
                return done
            if scope in self._running:
                return False
            self._running.add(scope)
            return None

    def finish(self, scope: str, result: IdempotentResult | None) -> None:
        with self._lock:
            self._running.discard(scope)
            if result is not None:
                self._done[scope] = result

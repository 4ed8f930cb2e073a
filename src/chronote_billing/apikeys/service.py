"""API key rules: create (the secret is shown once), authenticate, revoke.

Keys look like ``cbk_<id>_<secret>``; the stored hash is SHA-256 of the whole key. A fast hash
is right here: the secret is 160 random bits, so there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from chronote_billing.core.clock import Clock, system_clock
from chronote_billing.core.errors import NotFound, Unauthenticated, ValidationFailed
from chronote_billing.core.ids import new_id

from .models import ApiKey

# What each scope lets a service client do. `operator` is every scope (Chronote's staff tools).
SCOPES: dict[str, str] = {
    "accounts:read": "read balances, statements, grants, usage and entitlements",
    "holds:write": "place, extend, capture and release holds; start and finish recordings",
    "usage:write": "charge metered events and record shared meetings",
    "billing:write": "start checkouts, change plans, open customer portals",
    "orgs:read": "read organizations, members and authorizations",
    "orgs:write": "manage organizations, members, linked servers and authorizations",
    "grants:write": "issue promotional grants (operator tools)",
    "recordings:auto": "start and settle a server's auto-recorded meetings without an acting user",
    "operator": "everything, including other payers' accounts",
}


@dataclass(frozen=True)
class CreatedKey:
    id: str
    name: str
    scopes: list[str]
    secret: str


def hash_key(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


# How long a key found in the database is trusted without reading it again (decision 0031): a
# key revoked by another process stops working within this time.
CACHE_SECONDS = 10.0
CACHE_ENTRIES = 10_000


@dataclass(frozen=True)
class KnownKey:
    id: str
    scopes: tuple[str, ...]


class ApiKeyService:
    def __init__(self, clock: Clock = system_clock) -> None:
        self.clock = clock
        # secret hash -> (monotonic deadline, key); unknown and revoked keys are never kept.
        self._cache: dict[str, tuple[float, KnownKey]] = {}
        self._lock = threading.Lock()

    def create(self, session: Session, name: str, scopes: list[str]) -> CreatedKey:
        name = name.strip()
        if not name or len(name) > 100:
            raise ValidationFailed("A key needs a name of 1 to 100 characters.", field="name")
        cleaned = sorted({s.strip() for s in scopes if s.strip()})
        unknown = [s for s in cleaned if s not in SCOPES]
        if unknown or not cleaned:
            raise ValidationFailed(
                f"Unknown or missing scopes {unknown or '[]'}; choose from {', '.join(SCOPES)}.",
                field="scopes",
            )
        key_id = new_id("key")
        secret = f"cbk_{key_id.split('_', 1)[1]}_{secrets.token_urlsafe(20)}"
        session.add(
            ApiKey(
                id=key_id,
                name=name,
                secret_hash=hash_key(secret),
                scopes=cleaned,
                created_at=self.clock.now(),
            )
        )
        session.flush()
        return CreatedKey(id=key_id, name=name, scopes=cleaned, secret=secret)

    def authenticate(self, session: Session, raw: str) -> ApiKey:
        key = session.execute(select(ApiKey).where(ApiKey.secret_hash == hash_key(raw.strip()))).scalar()
        if key is None or key.revoked_at is not None:
            raise Unauthenticated("The API key is unknown or revoked.")
        return key

    def cached(self, raw: str) -> KnownKey | None:
        """The key from this process's cache while fresh; None when it must be read."""
        with self._lock:
            hit = self._cache.get(hash_key(raw.strip()))
        return hit[1] if hit is not None and hit[0] > time.monotonic() else None

    def known(self, raw: str, read: Callable[[Callable[[Session], KnownKey]], KnownKey]) -> KnownKey:
        """The key a request presents, from this process's cache while fresh, else read with
        ``read`` (a database read) and kept for ``CACHE_SECONDS``; raises when unknown or revoked."""
        hit = self.cached(raw)
        if hit is not None:
            return hit
        digest = hash_key(raw.strip())
        now = time.monotonic()

        def lookup(session: Session) -> KnownKey:
            key = self.authenticate(session, raw)
            return KnownKey(key.id, tuple(key.scopes))

        found = read(lookup)
        with self._lock:
            if len(self._cache) >= CACHE_ENTRIES:
                self._cache.clear()  # rare: a fresh start costs one read per key in use
            self._cache[digest] = (now + CACHE_SECONDS, found)
        return found

    def forget(self, key_id: str) -> None:
        """Drop a key from this process's cache (it was revoked here)."""
        with self._lock:
            for digest in [d for d, (_, k) in self._cache.items() if k.id == key_id]:
                del self._cache[digest]

    def revoke(self, session: Session, key_id: str) -> ApiKey:
        key = session.get(ApiKey, key_id)
        if key is None:
            raise NotFound(f"No API key '{key_id}'.", key_id=key_id)
        if key.revoked_at is None:
            key.revoked_at = self.clock.now()
        self.forget(key_id)
        return key

    def list(self, session: Session) -> list[ApiKey]:
        return list(session.execute(select(ApiKey).order_by(ApiKey.created_at)).scalars())

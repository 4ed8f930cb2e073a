"""API key rules: create (the secret is shown once), authenticate, revoke.

Keys look like ``cbk_<id>_<secret>``; the stored hash is SHA-256 of the whole key. A fast hash
is right here: the secret is 160 random bits, so there is nothing to brute-force.
"""

from __future__ import annotations

import hashlib
import secrets
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


class ApiKeyService:
    def __init__(self, clock: Clock = system_clock) -> None:
        self.clock = clock

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

    def revoke(self, session: Session, key_id: str) -> ApiKey:
        key = session.get(ApiKey, key_id)
        if key is None:
            raise NotFound(f"No API key '{key_id}'.", key_id=key_id)
        if key.revoked_at is None:
            key.revoked_at = self.clock.now()
        return key

    def list(self, session: Session) -> list[ApiKey]:
        return list(session.execute(select(ApiKey).order_by(ApiKey.created_at)).scalars())

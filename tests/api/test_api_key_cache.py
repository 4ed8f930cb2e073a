"""API keys are cached per process for a few seconds (decision 0031): a request costs no database
read for its key, and a revocation takes effect at once here and within the cache's life elsewhere."""

from __future__ import annotations

import pytest

from chronote_billing.apikeys import service as apikeys
from chronote_billing.apikeys.service import ApiKeyService
from chronote_billing.core.db import Database
from chronote_billing.core.errors import Unauthenticated


def test_a_key_is_read_once_then_served_from_the_cache_until_revoked(
    db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    here, elsewhere = ApiKeyService(), ApiKeyService()  # two processes' caches
    created = db.write(lambda s: here.create(s, "bot", ["holds:write"]))
    reads: list[int] = []

    def read(work):  # type: ignore[no-untyped-def]
        reads.append(1)
        return db.read(work)

    assert here.known(created.secret, read).scopes == ("holds:write",)
    assert elsewhere.known(created.secret, read).id == created.id
    assert here.known(created.secret, read).id == created.id
    assert len(reads) == 2  # the third call was served from the cache
    with pytest.raises(Unauthenticated):
        here.known("cbk_unknown_key", read)
    with pytest.raises(Unauthenticated):  # unknown keys are never cached
        here.known("cbk_unknown_key", read)
    assert len(reads) == 4

    db.write(lambda s: here.revoke(s, created.id))
    with pytest.raises(Unauthenticated):  # revoked in this process: at once
        here.known(created.secret, read)
    assert elsewhere.known(created.secret, read).id == created.id  # the other process: for now
    clock = [0.0]
    monkeypatch.setattr(apikeys.time, "monotonic", lambda: clock[0] + 10**6)
    with pytest.raises(Unauthenticated):  # and no longer once its cache entry is stale
        elsewhere.known(created.secret, read)

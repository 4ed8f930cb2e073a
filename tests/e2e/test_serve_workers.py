"""`serve --workers N` (decision 0031): several processes, each with its own pools, write combiner
and key cache, serve one database correctly. Duplicates of one request sent at the same moment
to the workers get one answer and one effect; mixed load leaves every acknowledged operation
exactly once, and `verify` passes."""

from __future__ import annotations

import secrets
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from chronote_billing.core import migrate
from chronote_billing.core.db import Database
from chronote_billing.usage.models import UsageRecord
from tests.conftest import create_database
from tests.e2e.service_under_load import Load, ServiceProcess, check_exactly_once, prepare_payers, run_verify

pytestmark = pytest.mark.postgres


def test_two_workers_serve_one_database_exactly_once(tmp_path: Path) -> None:
    url = create_database("workers")
    db = Database(url)
    migrate.upgrade(db.engine)
    payers = prepare_payers(db, 6)  # the mixed load's
    others = prepare_payers(db, 6)  # the duplicates'
    keys = [f"dup-{n}-{secrets.token_hex(3)}" for n in range(len(others))]
    service = ServiceProcess(url, tmp_path / "serve.log", workers=2)
    service.start()
    try:
        # The same request, four times at once, on four connections: one recording.
        answers: list[list[Any]] = [[] for _ in others]

        def send(n: int) -> None:
            payer = others[n]
            headers = {
                "Authorization": f"Bearer {payer.secret}",
                "Chronote-Acting-User": payer.user_id,
                "Idempotency-Key": keys[n],
            }
            body = {"context": "personal", "capture_source": "desktop", "requested_minutes": 5}
            with httpx.Client(base_url=service.base_url, timeout=30) as client:
                response = client.post("/v1/recordings", json=body, headers=headers)
                answers[n].append((response.status_code, response.json()))

        threads = [threading.Thread(target=send, args=(n,)) for n in range(len(others)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        for per_payer in answers:
            assert len(per_payer) == 4 and {status for status, _ in per_payer} == {201}, per_payer
            assert len({body["id"] for _, body in per_payer}) == 1, per_payer
        recordings = db.read(lambda s: s.execute(select(func.count()).select_from(UsageRecord)).scalar())
        assert recordings == len(others)

        with Load(service.base_url, payers) as load:
            load.wait_for_answers(after=0, count=60)
            time.sleep(1.0)
            load.stop()
        assert not load.problems(), "\n".join(load.problems()[:20])
        counts = check_exactly_once(db, payers, load.acked())
    finally:
        service.stop()
    log = service.log_text()
    assert "Started parent process" in log and log.count("Started server process") == 2, log[-2000:]
    assert "Traceback" not in log
    verified = run_verify(url)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    db.dispose()
    assert counts["recordings"] > 5, counts

"""kill -9 of the service under load loses and duplicates nothing (decisions 0013, 0050).

`chronote-billing serve` runs on PostgreSQL with a database of its own. Eight clients start,
extend and finish recordings and place, capture and release ledger holds over HTTP, two clients
per wallet so that writes to one wallet share commits (decision 0028). The process is killed
three times and started again; every unanswered request is sent again with its key and body
until answered. Afterwards every acknowledged operation exists exactly once, no hold is left
that no client knows of, the wallets hold exactly what the answers say, and `verify` passes.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from chronote_billing.core import migrate
from chronote_billing.core.db import Database
from tests.conftest import create_database
from tests.e2e.service_under_load import (
    Load,
    ServiceProcess,
    check_exactly_once,
    measure,
    prepare_payers,
    run_verify,
)

pytestmark = pytest.mark.postgres

KILLS = 3


def test_kill_9_under_load_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    url = create_database("crash")
    db = Database(url)
    migrate.upgrade(db.engine)
    payers = prepare_payers(db, 4)
    service = ServiceProcess(url, tmp_path / "serve.log")
    service.start()
    rng = random.Random(7)
    disturbances = []
    try:
        with Load(service.base_url, payers) as load:
            load.wait_for_answers(after=0, count=40)
            for n in range(KILLS):
                time.sleep(rng.uniform(0.5, 1.5))  # anywhere in the flows, commits included
                killed_at = time.monotonic()
                service.kill()
                service.start()
                load.wait_for_answers(after=time.monotonic(), count=16)
                disturbances.append(measure(load, f"kill {n + 1}", killed_at, time.monotonic()))
            load.stop()
        assert not load.problems(), "\n".join(load.problems()[:20])
        counts = check_exactly_once(db, payers, load.acked())
    finally:
        service.stop()
    assert "Traceback" not in service.log_text()
    verified = run_verify(url)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    db.dispose()
    assert service.starts == KILLS + 1
    assert all(d.requests_failed > 0 for d in disturbances), disturbances  # the kills hit traffic
    assert counts["holds"] > 50 and counts["recordings"] > 20, counts
    print("crash:", counts, disturbances)

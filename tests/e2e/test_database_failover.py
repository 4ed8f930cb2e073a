"""The service through a PostgreSQL restart and a failover, under load (decisions 0050, 0051).

A primary with a synchronous standby runs on this machine (`replicated_postgres.py`), and
`chronote-billing serve` is pointed at both with `target_session_attrs=read-write`. Under eight
clients of mixed recordings and ledger holds: the primary is restarted, then killed with
kill -9 and the standby promoted. The service is never restarted. Meanwhile it answers 503
problem+json with Retry-After, never a 500 or a traceback. Afterwards every acknowledged
operation exists exactly once on the promoted server and `verify` passes there.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from chronote_billing.config import normalize_database_url
from chronote_billing.core import migrate
from chronote_billing.core.db import Database
from tests.e2e.replicated_postgres import PG_BIN, ReplicatedPostgres
from tests.e2e.service_under_load import (
    Disturbance,
    Load,
    ServiceProcess,
    check_exactly_once,
    measure,
    prepare_payers,
    run_verify,
)

pytestmark = pytest.mark.postgres


@pytest.fixture
def pair() -> Iterator[ReplicatedPostgres]:
    if not (PG_BIN / "initdb").exists() or (os.geteuid() == 0 and shutil.which("runuser") is None):
        pytest.fail(f"needs PostgreSQL's server programs in {PG_BIN} (and runuser, as root)")
    replicated = ReplicatedPostgres()
    try:
        replicated.start()
        yield replicated
    finally:
        replicated.stop()  # both clusters and their directory, whatever happened


def test_restart_and_failover_under_load_lose_nothing(pair: ReplicatedPostgres, tmp_path: Path) -> None:
    pair.create_database("chronote")
    url = pair.url("chronote")
    setup = Database(normalize_database_url(url))
    migrate.upgrade(setup.engine)  # the migration runner takes the multi-host URL too
    payers = prepare_payers(setup, 4)
    setup.dispose()
    service = ServiceProcess(url, tmp_path / "serve.log")
    service.start()
    disturbances: list[Disturbance] = []
    try:
        with Load(service.base_url, payers) as load:
            load.wait_for_answers(after=0, count=40)
            time.sleep(1)

            began = time.monotonic()
            pair.primary.pg_ctl("restart", "-m", "fast", "-w", "-t", "30")
            load.wait_for_answers(after=time.monotonic(), count=16)
            disturbances.append(measure(load, "restart", began, time.monotonic()))
            pair.wait_synchronous()
            # Acknowledged before the failover, so the promoted server must have them.
            time.sleep(1)
            before_failover = len(load.acked())

            began = time.monotonic()
            pair.fail_over()
            load.wait_for_answers(after=time.monotonic(), count=16)
            disturbances.append(measure(load, "failover", began, time.monotonic()))
            load.stop()
        assert not load.problems(), "\n".join(load.problems()[:20])
        assert service.process is not None and service.process.poll() is None, "the service died"
        after = Database(normalize_database_url(url))  # connects to whichever server took over
        counts = check_exactly_once(after, payers, load.acked())
        after.dispose()
    finally:
        service.stop()
    log = service.log_text()
    assert "Traceback" not in log, service.log_tail()
    assert service.starts == 1  # it reconnected on its own
    verified = run_verify(url)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    restart, failover = disturbances
    # Both faults were felt, as 503 answers from a service that stayed up.
    assert restart.answered_503 > 0 and failover.answered_503 > 0, disturbances
    assert before_failover > 40, before_failover
    print("failover:", counts, disturbances)

"""A PostgreSQL primary with a synchronous streaming standby, in a directory of its own.

The failover test runs it; it can also be run by hand to try the service against a pair:

    python tests/e2e/replicated_postgres.py up var/pgpair     # prints the service's database URL
    python tests/e2e/replicated_postgres.py down var/pgpair

Both clusters listen on 127.0.0.1 on free ports, with their sockets in the directory. Commits on
the primary wait until the standby has flushed them (``synchronous_standby_names`` naming the
standby, ``synchronous_commit=on``), so every acknowledged write is on both. The standby's own
configuration names no synchronous standby, so once promoted it commits alone instead of
waiting for a standby it does not have. PostgreSQL refuses to run as root: when this runs as
root, every server command runs as the ``postgres`` user.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

PG_BIN = Path(os.environ.get("CHRONOTE_PG_BIN", "/usr/lib/postgresql/15/bin"))
SERVICE_USER = "postgres"
STANDBY_NAME = "standby1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_server_user(args: list[str]) -> list[str]:
    return ["runuser", "-u", SERVICE_USER, "--", *args] if os.geteuid() == 0 else args


def _run(args: list[str], timeout: float = 60) -> str:
    done = subprocess.run(_as_server_user(args), capture_output=True, text=True, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr or done.stdout}")
    return done.stdout


@dataclass
class Node:
    name: str
    port: int
    data: Path

    @property
    def log(self) -> Path:
        return self.data.parent / f"{self.name}.log"

    def pg_ctl(self, *args: str, timeout: float = 60) -> str:
        return _run([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), *args], timeout)

    def psql(self, sql: str, database: str = "postgres") -> str:
        return _run(
            [
                str(PG_BIN / "psql"),
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-U",
                "postgres",
                "-d",
                database,
                "-c",
                sql,
            ]
        ).strip()

    def start(self) -> None:
        self.pg_ctl("start", "-w", "-t", "30")

    def postmaster_pid(self) -> int | None:
        try:
            return int((self.data / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None

    def kill(self) -> None:
        """kill -9 the postmaster and every process it started, as a lost machine would."""
        pid = self.postmaster_pid()
        if pid is None:
            return
        children = subprocess.run(
            ["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False
        ).stdout.split()
        for target in [pid, *map(int, children)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGKILL)
        # The postmaster's children notice its death on their own; wait until none is left.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(p) for p in [pid, *map(int, children)]):
            time.sleep(0.02)

    def stop_now(self) -> None:
        """Stop whatever runs, as fast as possible (cleanup)."""
        if self.postmaster_pid() is None:
            return
        try:
            self.pg_ctl("stop", "-m", "immediate", "-w", "-t", "10", timeout=20)
        except (RuntimeError, subprocess.TimeoutExpired):
            self.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers the signal: it is gone for our purposes.
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    return False


class ReplicatedPostgres:
    """A primary and its synchronous standby under ``root``; ``stop()`` removes everything."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root).resolve() if root else Path(tempfile.mkdtemp(prefix="chronote-pgpair-"))
        self.primary = Node("primary", free_port(), self.root / "primary")
        self.standby = Node("standby", free_port(), self.root / "standby")

    def url(self, database: str) -> str:
        """The service's URL: both hosts, and only a server that accepts writes will do."""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in (self.primary, self.standby))
        return f"postgresql://postgres@{hosts}/{database}?target_session_attrs=read-write&connect_timeout=2"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            shutil.chown(self.root, SERVICE_USER)
        _run(
            [
                str(PG_BIN / "initdb"),
                "-D",
                str(self.primary.data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-instructions",
                "--no-sync",
            ]
        )
        self._configure(
            self.primary,
            {
                "wal_level": "replica",
                "max_wal_senders": "4",
                "synchronous_commit": "on",
                "max_connections": "200",
            },
        )
        with (self.primary.data / "pg_hba.conf").open("a") as hba:
            hba.write("host replication all 127.0.0.1/32 trust\n")
        self.primary.start()
        _run(
            [
                str(PG_BIN / "pg_basebackup"),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.primary.port),
                "-U",
                "postgres",
                "-D",
                str(self.standby.data),
                "-X",
                "stream",
                "--no-sync",
            ]
        )
        self._configure(
            self.standby,
            {
                "port": str(self.standby.port),
                "primary_conninfo": (
                    f"host=127.0.0.1 port={self.primary.port} user=postgres application_name={STANDBY_NAME}"
                ),
                # Reconnect to a restarted primary at once (commits wait for the standby meanwhile).
                "wal_retrieve_retry_interval": "100ms",
                "hot_standby": "on",
            },
        )
        (self.standby.data / "standby.signal").touch()
        self.standby.start()
        # Synchronous only now: the standby's copy of the configuration must not name a standby.
        self.primary.psql(f"ALTER SYSTEM SET synchronous_standby_names = '{STANDBY_NAME}'")
        self.primary.psql("SELECT pg_reload_conf()")
        self.wait_synchronous()

    def _configure(self, node: Node, settings: dict[str, str]) -> None:
        lines = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(node.port),
            "unix_socket_directories": f"'{self.root}'",
            "fsync": "on",
            "logging_collector": "off",
        }
        lines.update({k: (v if v.isdigit() else f"'{v}'") for k, v in settings.items()})
        with (node.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# replicated_postgres\n")
            conf.writelines(f"{key} = {value}\n" for key, value in lines.items())

    def wait_synchronous(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            state = self.primary.psql(
                f"SELECT sync_state FROM pg_stat_replication WHERE application_name = '{STANDBY_NAME}'"
            )
            if state == "sync":
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the standby is not synchronous (state {state!r})")
            time.sleep(0.05)

    def create_database(self, name: str) -> None:
        self.primary.psql(f'CREATE DATABASE "{name}"')

    def fail_over(self) -> None:
        """The primary dies (kill -9); the standby is promoted and takes writes."""
        self.primary.kill()
        self.standby.pg_ctl("promote", "-w", "-t", "30")

    def stop(self) -> None:
        for node in (self.standby, self.primary):
            node.stop_now()
        shutil.rmtree(self.root, ignore_errors=True)


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[1] not in ("up", "down"):
        print(__doc__)
        return 2
    pair = ReplicatedPostgres(Path(argv[2]))
    if argv[1] == "down":
        pair.stop()  # the data directories are found under the root; ports do not matter
        return 0
    pair.start()
    pair.create_database("chronote")
    print(pair.url("chronote"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

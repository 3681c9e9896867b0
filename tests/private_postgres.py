"""A PostgreSQL server of a test's own: made with initdb in a temporary directory,
started on a free port, restarted or stopped at will, and removed at teardown.

For what must not be done to the shared server (restart it, change its logins).
It runs as the `postgres` OS user, so it needs root (runuser) and PostgreSQL's
binaries; without them a test is skipped on a developer's machine and FAILS under
CI (CI set), as with the shared server (tests/postgres_server.py).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

USER = "postgres"  # the OS user the server runs as, and its superuser role
DATABASE = "test"
WAIT = 60  # seconds pg_ctl may take to start or stop the server


def unavailable(reason: str) -> None:
    """Skip the test (locally) or fail it (CI): it cannot have its own server."""
    message = f"cannot start a private PostgreSQL server: {reason}"
    if os.environ.get("CI"):
        pytest.fail(message + "; CI needs one", pytrace=False)
    pytest.skip(message)


def version(initdb: str) -> list[int]:
    """The PostgreSQL version in a path /usr/lib/postgresql/VERSION/bin/initdb."""
    return [int(part) for part in initdb.split("/")[4].split(".") if part.isdigit()]


def bindir() -> Path | None:
    """Where initdb and pg_ctl are (the newest PostgreSQL installed), if anywhere."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=version)
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def free_port() -> int:
    """A local TCP port nothing listens on (just freed by the OS)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateServer:
    """One PostgreSQL cluster in a temporary directory, owned by the `postgres` user.

    Logins: the `postgres` role is trusted (over TCP from 127.0.0.1 and on the Unix
    socket); any other role must give its password (scram-sha-256) over TCP.
    """

    def __init__(self, bin_dir: Path) -> None:
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="ce-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sock"
        self.logfile = self.root / "server.log"
        self.port = free_port()
        self.running = False
        self.restarts = 0

    # -- addresses --------------------------------------------------------------

    def url(self, user: str = USER, database: str = DATABASE) -> str:
        """Its URL over TCP on 127.0.0.1."""
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def socket_url(self, user: str = USER, database: str = DATABASE) -> str:
        """Its URL over the Unix socket (reachable from another network namespace)."""
        return f"postgresql://{user}@/{database}?host={self.sockets}&port={self.port}"

    # -- life -------------------------------------------------------------------

    def _as_postgres(self, *args: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["runuser", "-u", USER, "--", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=WAIT + 30,
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}\n"
                f"{self.log()}"
            )
        return done

    def create(self) -> None:
        """initdb the cluster (no fsync: a test's server never outlives a power cut)."""
        uid = pwd.getpwnam(USER).pw_uid
        for path in (self.root, self.sockets):
            path.mkdir(exist_ok=True)
            os.chown(path, uid, -1)
        self._as_postgres(
            str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, "-A", "trust",
            "-E", "UTF8", "--no-sync", "--no-instructions",
        )  # fmt: skip
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"host all {USER} 127.0.0.1/32 trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n",
            encoding="utf-8",
        )
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(
                f"port = {self.port}\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.sockets}'\n"
                # The data is thrown away: commits need not reach the disk (a restart
                # of the server still keeps every commit: the kernel has them).
                "fsync = off\n"
                "full_page_writes = off\n"
                "max_connections = 200\n"
            )

    def start(self) -> None:
        """Start the server and wait until it accepts connections."""
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.logfile),
            "-w", "-t", str(WAIT), "start",
        )  # fmt: skip
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (fast: every session is ended, open transactions roll back)."""
        if not self.running:
            return
        self._as_postgres(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-w", "-t", str(WAIT),
            "-m", mode, "stop",
        )  # fmt: skip
        self.running = False

    def restart(self, down_for: float = 0.0, mode: str = "fast") -> None:
        """Stop the server, leave it down for a while, and start it again."""
        self.stop(mode)
        time.sleep(down_for)
        self.start()
        self.restarts += 1

    def sql(self, statement: str, database: str = DATABASE) -> None:
        """Run one statement as the superuser (autocommit)."""
        import psycopg

        with psycopg.connect(self.url(database=database), autocommit=True) as conn:
            conn.execute(statement)

    def log(self) -> str:
        """The server's log so far (for failure messages)."""
        try:
            return self.logfile.read_text(errors="replace")
        except OSError:
            return ""

    def remove(self) -> None:
        """Stop the server if it runs and delete its directory."""
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def private_server() -> PrivateServer:
    """A new running server with a database `test` (skip or fail if there can be none)."""
    if os.geteuid() != 0:
        unavailable("it runs as the postgres user, which needs root")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        unavailable(f"there is no {USER!r} OS user")
    bin_dir = bindir()
    if bin_dir is None or not (bin_dir / "pg_ctl").exists():
        unavailable("initdb and pg_ctl are not installed")
    assert bin_dir is not None
    server = PrivateServer(bin_dir)
    try:
        server.create()
        server.start()
        server.sql(f"CREATE DATABASE {DATABASE}", database="postgres")
    except BaseException:
        server.remove()
        raise
    return server


@pytest.fixture
def private_postgres() -> Iterator[PrivateServer]:
    """A PostgreSQL server of this test's own, stopped and deleted after it."""
    server = private_server()
    try:
        yield server
    finally:
        server.remove()

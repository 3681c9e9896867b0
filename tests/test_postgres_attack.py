"""The PostgreSQL store attacked as a user, an operator and an attacker would: secrets
in URLs, a schema that does not exist, a damaged meta table, odd names and values, a
worker frozen past its lease, and the server's own limits.

Each test uses a fresh schema on the shared test server (tests/postgres_server.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import psycopg
import pytest
from postgres_server import fresh_schema, pg_schemas, server_url

import contengine as ce
from contengine.store.base import RunRow
from contengine.store.postgres import PostgresStore
from contengine.store.postgres.url import redacted

__all__ = ["pg_schemas"]  # fixtures

WAIT = 60.0  # seconds any one thing may take before the test gives up


@pytest.fixture
def url() -> str:
    """The shared test server's URL."""
    return server_url()


@pytest.fixture
def schema(pg_schemas: list[str]) -> str:
    """A fresh schema name, dropped after the test."""
    return fresh_schema(pg_schemas)


def unused_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(db: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`contengine --db db args...` in a child process."""
    return subprocess.run(
        [sys.executable, "-m", "contengine", "--db", db, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=WAIT,
        env={**os.environ, **(env or {})},
    )


def schema_exists(url: str, name: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (name,))
        return row.fetchone() == (1,)


# -- secrets in the URL ----------------------------------------------------------------

SECRET = "p@ss:w/rd%40"  # as typed; percent-encoded in the URL below
ENCODED = "p%40ss%3Aw%2Frd%2540"
# Every form of it that must never be shown (and its telling pieces).
SHOWN_NEVER = (SECRET, ENCODED, "w/rd", "w%2Frd", "rd%40", "rd%2540", "p%40ss")


def assert_hidden(text: str) -> None:
    for form in SHOWN_NEVER:
        assert form not in text, f"{form!r} shown in {text!r}"


@pytest.mark.parametrize(
    "target",
    [
        # Percent-encoded as it should be, the server down.
        f"postgresql://postgres:{ENCODED}@127.0.0.1:{{port}}/test",
        # In the query (libpq's ?password= and ?sslpassword=).
        f"postgresql://postgres@127.0.0.1:{{port}}/test?password={ENCODED}",
        f"postgresql://postgres@127.0.0.1:{{port}}/test?sslpassword={ENCODED}&sslmode=disable",
        # Written as typed, not encoded: libpq would cut it at its first "@" or "/".
        f"postgresql://postgres:{SECRET}@127.0.0.1:{{port}}/test",
        # A bad escape: libpq's own message would quote the whole token.
        "postgresql://postgres:p%40ss%3Aw%2Frd%ZZ40@127.0.0.1:{port}/test",
        "postgresql://postgres@127.0.0.1:{port}/test?password=p%40ss%3Aw%2Frd%ZZ40",
    ],
)
def test_a_password_is_never_shown_in_an_engine_error(target: str) -> None:
    with pytest.raises((ce.DatabaseError, ValueError)) as caught:
        ce.Engine(target.format(port=unused_port()))
    assert_hidden(str(caught.value))
    assert "127.0.0.1" in str(caught.value)  # it still says which server


def test_redacted_hides_every_form_of_a_password() -> None:
    for target in (
        f"postgresql://postgres:{ENCODED}@h:5/db",
        f"postgresql://postgres:{SECRET}@h:5/db",
        f"postgresql://postgres@h:5/db?sslpassword={ENCODED}",
        f"postgresql://postgres@h:5/db?password={ENCODED}&sslpassword={ENCODED}",
        "postgresql://postgres:p?ss#w/rd%40@h:5/db",
    ):
        shown = redacted(target)
        assert_hidden(shown)
        assert "p?ss" not in shown and "h:5" in shown, shown
    assert redacted("postgresql://u@h/db?sslpassword=x&sslmode=require") == (
        "postgresql://u@h/db?sslpassword=***&sslmode=require"
    )


def test_a_password_with_special_characters_still_connects(url: str, schema: str) -> None:
    """A percent-encoded password is passed on as written (the server here trusts)."""
    target = url.replace("postgresql://postgres@", f"postgresql://postgres:{ENCODED}@")
    store = PostgresStore(f"{target}?schema={schema}")
    try:
        assert_hidden(store.shown)
        assert store.list_runs() == []
    finally:
        store.close()


def test_the_cli_never_shows_a_password_in_its_one_line_error() -> None:
    for target in (
        f"postgresql://postgres:{ENCODED}@127.0.0.1:{unused_port()}/test",
        f"postgresql://postgres:{SECRET}@127.0.0.1:{unused_port()}/test",
        f"postgresql://postgres@127.0.0.1:{unused_port()}/test?sslpassword={ENCODED}",
    ):
        for command in (["runs"], ["show", "r"], ["gc", "--older-than", "1d"]):
            done = cli(target, *command)
            assert done.returncode != 0
            assert len(done.stderr.strip().splitlines()) == 1, done.stderr
            assert "Traceback" not in done.stderr
            assert_hidden(done.stderr + done.stdout)
            # The same from the environment.
            done = cli("", *command, env={"CONTENGINE_DB": target})
            assert done.returncode != 0
            assert_hidden(done.stderr + done.stdout)


# -- a schema that does not exist ---------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["runs"],
        ["show", "r1"],
        ["signal", "r1", "go", "{}"],
        ["cancel", "r1"],
        ["retry", "r1"],
        ["fork", "r1", "--at", "0"],
        ["gc", "--older-than", "1d"],
        ["export", "r1"],
        ["backup", "{tmp}/copy.db"],
    ],
)
def test_a_command_on_a_missing_schema_says_so_and_creates_nothing(
    url: str, schema: str, command: list[str], tmp_path: Any
) -> None:
    target = url.replace("postgresql://postgres@", "postgresql://postgres:hunter2@")
    done = cli(f"{target}?schema={schema}", *[c.replace("{tmp}", str(tmp_path)) for c in command])
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "no contengine database" in lines[0] and repr(schema) in lines[0]
    assert "127.0.0.1:5432/test" in lines[0] and "hunter2" not in lines[0]
    assert not schema_exists(url, schema)
    assert not (tmp_path / "copy.db").exists()


def test_import_and_an_engine_create_a_missing_schema(
    url: str, pg_schemas: list[str], tmp_path: Any
) -> None:
    first, second = fresh_schema(pg_schemas), fresh_schema(pg_schemas)
    with ce.Engine(url, schema=first) as engine:
        engine.store.insert_run(RunRow("r1", "flow", None, "pending", b"\x00", None, 1.0, 1.0))
    done = cli(f"{url}?schema={first}", "export", "r1")
    assert done.returncode == 0, done.stderr
    (tmp_path / "r1.json").write_text(done.stdout)
    done = cli(f"{url}?schema={second}", "import", str(tmp_path / "r1.json"))
    assert done.returncode == 0, done.stderr
    assert schema_exists(url, second)
    done = cli(f"{url}?schema={second}", "runs")
    assert done.returncode == 0 and "r1" in done.stdout


def test_an_empty_schema_is_not_a_contengine_database_for_a_command(url: str, schema: str) -> None:
    """A schema made by hand (no tables yet) is no contengine database either."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    done = cli(f"{url}?schema={schema}", "runs")
    assert done.returncode == 1 and "no contengine database" in done.stderr
    with psycopg.connect(url, autocommit=True) as conn:
        tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname = %s", (schema,))
        assert tables.fetchone() == (0,)


# -- a damaged meta table -------------------------------------------------------------------


@pytest.mark.parametrize("value", ["banana", "", " 1x", "1.5", "-1"])
def test_a_version_that_is_not_a_number_is_refused_clearly(
    url: str, schema: str, value: str
) -> None:
    PostgresStore(url, schema=schema).close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"UPDATE \"{schema}\".meta SET value = %s WHERE key = 'version'", (value,))
    with pytest.raises(ce.DatabaseError) as caught:
        PostgresStore(url, schema=schema)
    message = str(caught.value)
    assert f"schema {schema!r}" in message and repr(value) in message
    assert "left it untouched" in message
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(f"SELECT value FROM \"{schema}\".meta WHERE key = 'version'")
        assert row.fetchone() == (value,)
    done = cli(f"{url}?schema={schema}", "runs")
    assert done.returncode == 1 and len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr and "left it untouched" in done.stderr


@pytest.mark.parametrize(
    "target",
    [
        "postgresql+psycopg://u:hunter2@127.0.0.1/test",  # SQLAlchemy's spelling
        "POSTGRESQL://u:hunter2@127.0.0.1/test",
        "sqlite://u:hunter2@host/app.db",
    ],
)
def test_a_url_of_another_kind_is_not_taken_for_a_file_and_hides_its_password(target: str) -> None:
    with pytest.raises(ValueError, match="URL contengine does not know") as caught:
        ce.Engine(target)
    assert "hunter2" not in str(caught.value) and "postgresql://" in str(caught.value)
    for argv in (["runs"], ["replay"], ["gc", "--older-than", "1d"]):
        done = cli(target, *argv)
        assert done.returncode == 2, done
        assert "URL contengine does not know" in done.stderr
        assert "hunter2" not in done.stderr + done.stdout
    # replay naming two databases shows neither password.
    done = subprocess.run(
        [sys.executable, "-m", "contengine", "replay", target, "--db", "postgresql://u:pw2@h/db"],
        capture_output=True,
        text=True,
        check=False,
        timeout=WAIT,
    )
    assert done.returncode == 2 and "two databases" in done.stderr
    assert "hunter2" not in done.stderr and "pw2" not in done.stderr


def test_a_meta_table_without_a_version_is_refused_not_created_over(url: str, schema: str) -> None:
    PostgresStore(url, schema=schema).close()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f'DELETE FROM "{schema}".meta')
    with pytest.raises(ce.DatabaseError, match="version is missing.*left it untouched"):
        PostgresStore(url, schema=schema)


# -- NUL characters and odd text -------------------------------------------------------------


@ce.step
def nul_attack_fail(message: str) -> None:
    raise ValueError(message)


@ce.workflow
def nul_attack_flow(message: str) -> Any:
    yield nul_attack_fail(message)


@ce.workflow
def nul_attack_raises(message: str) -> Any:
    raise RuntimeError(message)
    yield  # a generator


@ce.workflow
def nul_attack_echo(value: Any) -> Any:
    return value
    yield  # a generator


@ce.workflow
def nul_attack_waits() -> Any:
    return (yield ce.wait("go"))


@ce.step
def nul_attack_one() -> int:
    return 1


@ce.workflow
def nul_attack_flow_two() -> Any:
    yield nul_attack_one()
    return (yield ce.wait("never"))


def test_an_exception_text_with_a_nul_is_stored_and_the_exception_kept_whole(
    url: str, schema: str
) -> None:
    """PostgreSQL text refuses NUL: the error text keeps it as \\x00; the exception
    itself (pickled) is raised with its message as it was."""
    with ce.Engine(url, schema=schema) as engine:
        with pytest.raises(ValueError) as caught:
            engine.run(nul_attack_flow, "bad\x00byte", id="step-nul")
        assert caught.value.args == ("bad\x00byte",)
        with pytest.raises(RuntimeError) as raised:
            engine.run(nul_attack_raises, "x\x00y", id="run-nul")
        assert raised.value.args == ("x\x00y",)
        assert engine.get_run("step-nul").status == "failed"
        assert engine.get_run("run-nul").status == "failed"
        failed = [e for e in engine.history("step-nul") if e.status == "failed"]
        assert failed and "bad\\x00byte" in (failed[0].error_text or "")
        # Text and bytes with NUL, unicode and lone surrogates are values: kept whole.
        for value in ("a\x00b", "\ud800", "é\u2028漢\U0001f600", b"\x00\xff"):
            assert engine.run(nul_attack_echo, value) == value
        engine.store.set_note("run-nul", "see\x00this")
        assert engine.get_run("run-nul").note == "see\\x00this"
    # A second engine (another process would be the same) reads it all back.
    with ce.Engine(url, schema=schema) as engine:
        assert engine.get_run("step-nul").status == "failed"
        with pytest.raises(ValueError, match="bad\x00byte"):
            engine.get_run("step-nul").result()


def test_a_name_with_a_nul_is_refused_before_anything_is_written(url: str, schema: str) -> None:
    with ce.Engine(url, schema=schema) as engine:
        for make in (
            lambda: ce.step(name="st\x00ep")(lambda: 1),
            lambda: ce.workflow(name="wf\x00")(nul_attack_echo.fn),
            lambda: engine.start(nul_attack_echo, 1, tags=["a\x00b"]),
            lambda: engine.start(nul_attack_echo, 1, queue="q\x00"),
            lambda: engine.set_queue("q\x00", concurrency=1),
            lambda: ce.wait("s\x00"),
            lambda: ce.publish("k\x00", 1),
            lambda: ce.patched("c\x00"),
        ):
            with pytest.raises(ValueError, match="contains a NUL character"):
                make()
        assert engine.runs() == []
        engine.start(nul_attack_waits, id="w")
        engine.run_until_idle()
        with pytest.raises(ValueError, match="NUL"):
            engine.signal("w", "g\x00o", 1)
        assert engine.store.mailbox("w") == []
        done = cli(f"{url}?schema={schema}", "signal", "w", "g\x01o", "1")
        assert done.returncode == 0, done.stderr  # other control characters are fine


def test_ids_and_names_past_what_postgresql_indexes_are_refused_up_front(
    url: str, schema: str
) -> None:
    """An index row holds at most 2,704 bytes: an id or name is at most 1,000 (UTF-8)."""
    longest = "é" * 500  # 1,000 bytes
    with ce.Engine(url, schema=schema) as engine:
        assert engine.run(nul_attack_echo, 1, id=longest) == 1
        engine.start(nul_attack_waits, id="w" * 1000, queue="q" * 1000, tags=["t" * 1000])
        engine.signal("w" * 1000, "s" * 1000, 1)
        for make in (
            lambda: engine.start(nul_attack_echo, 1, id=longest + "x"),
            lambda: engine.start(nul_attack_echo, 1, queue="q" * 1001),
            lambda: engine.start(nul_attack_echo, 1, tags=["t" * 1001]),
            lambda: engine.signal("w" * 1000, "s" * 1001, 1),
            lambda: ce.wait("s" * 1001),
            lambda: ce.publish("k" * 1001, 1),
        ):
            with pytest.raises(ValueError, match="bytes long .* at most 1000"):
                make()
        assert len(engine.runs()) == 2
    done = cli(f"{url}?schema={schema}", "signal", "w" * 1000, "s" * 2000, "1")
    assert done.returncode != 0 and "at most 1000" in done.stderr


def test_a_lock_or_statement_timeout_says_which_setting_and_the_connection_goes_on(
    url: str, schema: str
) -> None:
    """lock_timeout/statement_timeout as an operator may set them on the role (here
    through the URL's options, which sets them the same way for the session). The
    statements that time out wait for a lock held here, however long; the others must
    not, even on a loaded machine: hence seconds, not milliseconds."""
    options = "options=-c%20lock_timeout%3D3s%20-c%20statement_timeout%3D0"
    with ce.Engine(f"{url}?{options}&schema={schema}") as engine:
        engine.start(nul_attack_waits, id="w")
        with psycopg.connect(url) as holder:
            holder.execute(f'SELECT 1 FROM "{schema}".runs WHERE id = %s FOR UPDATE', ("w",))
            with pytest.raises(ce.DatabaseError) as caught:
                engine.cancel("w")
        message = str(caught.value)
        assert "lock_timeout" in message and "options=-c%20lock_timeout%3D0" in message
        assert "connection was lost" not in message
        assert engine.cancel("w")  # the lock is gone: the same engine goes on
    options = "options=-c%20lock_timeout%3D0%20-c%20statement_timeout%3D3s"
    with ce.Engine(f"{url}?{options}&schema={schema}") as engine:
        with psycopg.connect(url) as holder:
            holder.execute(f'LOCK TABLE "{schema}".runs IN ACCESS EXCLUSIVE MODE')
            with pytest.raises(ce.DatabaseError) as caught:
                engine.runs()
        message = str(caught.value)
        assert "statement_timeout" in message and "ALTER ROLE" in message
        assert "connection was lost" not in message
        assert [r.id for r in engine.runs()] == ["w"]


# -- a worker frozen past its lease ----------------------------------------------------------

TESTS = os.path.dirname(os.path.abspath(__file__))


def _wait(condition: Any, what: str, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        for proc in procs:
            if proc.poll() is not None and proc.returncode not in (0, -signal.SIGKILL):
                pytest.fail(f"worker {proc.pid} exited with {proc.returncode} waiting for {what}")
        time.sleep(0.02)


def _in_transaction(url: str, pid: int) -> bool:
    """Whether a session of the process pid is inside a transaction or a statement (the
    server knows its sessions by client port, found among the process's sockets)."""
    ports = _local_ports(pid)
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT client_port FROM pg_stat_activity WHERE state LIKE 'idle in transaction%' "
            "OR (state = 'active' AND backend_type = 'client backend' AND pid <> "
            "pg_backend_pid())"
        ).fetchall()
    return any(port in ports for (port,) in rows)


def _local_ports(pid: int) -> set[int]:
    """The local ports of pid's TCP connections (from /proc/net/tcp)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table, encoding="ascii") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if fields[9] in inodes:
                    found.add(int(fields[1].rsplit(":", 1)[1], 16))
    return found


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs POSIX signals")
@pytest.mark.skipif(not os.path.exists("/proc/net/tcp"), reason="needs /proc")
def test_a_worker_frozen_past_its_lease_has_its_late_write_refused(
    url: str, schema: str, tmp_path: Any
) -> None:
    """SIGSTOP a worker process (lease 1 s) inside a step; a second worker takes the
    run over once the lease lapsed and finishes it; SIGCONT the first: its step ends
    and its write is refused (fencing), the second's outcome stays."""
    import worker_child as wc

    db = f"{url}?schema={schema}"
    ledger, marks = str(tmp_path / "ledger"), str(tmp_path / "marks")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")])}
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(lease: float) -> subprocess.Popen[bytes]:
        n = len(procs)
        proc = subprocess.Popen(
            [sys.executable, "-c", "import worker_child; worker_child.main()", db, "1",
             str(lease), "10"],
            stdout=open(tmp_path / f"w{n}.out", "wb"),  # noqa: SIM115 - the child's
            stderr=open(tmp_path / f"w{n}.err", "wb"),  # noqa: SIM115 - the child's
            env=env,
        )  # fmt: skip
        procs.append(proc)
        return proc

    def mark(word: str, proc: subprocess.Popen[bytes], attempt: int) -> bool:
        return any(m[:3] == [word, str(proc.pid), str(attempt)] for m in wc.read_lines(marks))

    engine = ce.Engine(db)
    try:
        run = engine.start(wc.held, ledger, marks, id="held")
        first = spawn(lease=1.0)
        _wait(lambda: mark("started", first, 1), "the first worker to start the step", procs)
        for _ in range(50):  # frozen outside a transaction (it would hold row locks)
            os.kill(first.pid, signal.SIGSTOP)
            if not _in_transaction(url, first.pid):
                break
            os.kill(first.pid, signal.SIGCONT)
            time.sleep(0.03)
        else:
            pytest.fail("the first worker was always inside a transaction")
        second = spawn(lease=10.0)
        _wait(lambda: run.status == "completed", "the second worker to finish", procs)
        assert run.result() == f"held by {second.pid}"
        assert not mark("finished", first, 1)
        before = [(e.status, e.attempts, e.value) for e in engine.history("held")]

        os.kill(first.pid, signal.SIGCONT)
        _wait(lambda: mark("finished", first, 1), "the first worker's step to end", procs)
        first.send_signal(signal.SIGTERM)
        assert first.wait(WAIT) == 0
        err = (tmp_path / "w0.err").read_text()
        assert "taken over by another worker" in err, err
        assert [(e.status, e.attempts, e.value) for e in engine.history("held")] == before
        assert run.result() == f"held by {second.pid}"
        assert [r[:3] for r in wc.read_lines(ledger)] == [
            ["held", "0", str(first.pid)],
            ["held", "0", str(second.pid)],
        ]
    finally:
        engine.close()
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            proc.wait(WAIT)


# -- export, import and backup on odd input -----------------------------------------------


@pytest.mark.parametrize(
    ("where", "value"),
    [
        (("run", "workflow"), "w\x00x"),
        (("run", "tags"), ["a\x00"]),
        (("run", "queue"), "q\x00"),
        (("mailbox", 0, "name"), "g\x00o"),
        (("log", 0, "name"), "s\x00"),
    ],
)
def test_an_export_with_a_nul_in_a_name_is_refused_before_anything_is_written(
    url: str, schema: str, tmp_path: Any, where: tuple[Any, ...], value: Any
) -> None:
    with ce.Engine(url, schema=schema) as engine:
        engine.start(nul_attack_flow_two, id="r1")
        engine.run_until_idle()
        engine.signal("r1", "go", 1)
        data = engine.export_run("r1")
    data["run"]["id"] = "r2"
    *path, last = where
    target = data
    for part in path:
        target = target[part]
    target[last] = value
    (tmp_path / "r2.json").write_text(json.dumps(data))
    done = cli(f"{url}?schema={schema}", "import", str(tmp_path / "r2.json"))
    assert done.returncode == 1, done
    assert "contains a NUL character" in done.stderr and "Traceback" not in done.stderr
    # Prose keeps it: a note or error text with a NUL is imported (shown as \x00).
    data = json.loads(json.dumps(data).replace("\\u0000", ""))
    data["run"]["note"] = "n\x00"
    (tmp_path / "r3.json").write_text(json.dumps(data))
    done = cli(f"{url}?schema={schema}", "import", str(tmp_path / "r3.json"), "--id", "r3")
    assert done.returncode == 0, done.stderr
    with ce.Engine(url, schema=schema) as engine:
        assert {r.id for r in engine.runs()} == {"r1", "r3"}
        assert engine.get_run("r3").note == "n\\x00"


def test_replay_on_a_missing_schema_says_so_and_creates_nothing(url: str, schema: str) -> None:
    target = url.replace("postgresql://postgres@", "postgresql://postgres:hunter2@")
    done = cli(f"{target}?schema={schema}", "replay")
    assert done.returncode == 2, done  # bad input, as replay's other refusals
    assert "no contengine database" in done.stderr and "hunter2" not in done.stderr
    assert not schema_exists(url, schema)

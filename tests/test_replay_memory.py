"""Replay in constant memory, and a live cache that counts what it holds.

Bounds are checked by counting (rows the streamed log holds at once, entries a drive
keeps) or with tracemalloc and generous margins; never by wall-clock time.
"""

from __future__ import annotations

import gc
import tracemalloc
from collections.abc import Generator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from postgres_server import fresh_schema, pg_schemas, server_url

import contengine as ce
from contengine.core.requests import StepCall
from contengine.core.serde import Serde
from contengine.drive import runner as runner_module
from contengine.drive.live import BASE_BYTES
from contengine.drive.log import StreamedLog
from contengine.store.base import INLINE_OUTCOME
from contengine.store.postgres import PostgresStore
from contengine.testing import VirtualClock

__all__ = ["pg_schemas"]  # a fixture

START = 1_700_000_000.0
STATE = {"crash": False}
LOGS: list[StreamedLog] = []


class Crash(BaseException):
    """Leaves the step in flight, as a killed process would."""


@ce.step(name="mem.inc")
def inc(x: int) -> int:
    return x + 1


@ce.step(name="mem.blob")
def blob(i: int, size: int) -> bytes:
    return str(i).encode().ljust(size, b".")


@ce.step(name="mem.halt")
def halt() -> None:
    if STATE["crash"]:
        raise Crash


@ce.workflow(name="mem.long")
def long_run(n: int, size: int, hold: int) -> Generator[Any, Any, int]:
    """n steps (of size bytes each, or counting), a halt, then a nap; holds `hold` strings."""
    held = [str(i) * 10 for i in range(hold)]
    x = 0
    for i in range(n):
        if size:
            x += len((yield blob(i, size)))
        else:
            x = yield inc(x)
    yield halt()
    yield ce.sleep(60)
    return x + len(held)


class CountingLog(StreamedLog):
    """A StreamedLog that is remembered, to read its counters afterwards."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        LOGS.append(self)


def crashed(path: Path, n: int, size: int = 0, hold: int = 0) -> None:
    """A run of n steps whose halt is left in flight."""
    STATE["crash"] = True
    try:
        with (
            ce.Engine(path, durability="normal", clock=VirtualClock(START)) as engine,
            pytest.raises(Crash),
        ):
            engine.run(long_run, n, size, hold, id="r")
    finally:
        STATE["crash"] = False


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[StreamedLog]:
    LOGS.clear()
    monkeypatch.setattr(runner_module, "StreamedLog", CountingLog)
    return LOGS


def test_replay_holds_one_chunk_of_the_log_at_a_time(
    tmp_path: Path, counted: list[StreamedLog]
) -> None:
    n = StreamedLog.FIRST_CHUNK + 2 * StreamedLog.CHUNK + 10
    crashed(tmp_path / "a.db", n)
    counted.clear()
    with ce.Engine(tmp_path / "a.db", clock=VirtualClock(START)) as engine:
        engine.run_until_idle(until=START)
        assert engine.get_run("r").status == "sleeping"
        (log,) = counted
        assert log.most == StreamedLog.CHUNK  # never more than one chunk held
        assert log.window() == []  # past the log: let go
        kept = engine._runner.live._kept["r"]
        assert kept.drive.driver.held()[-1] == set()  # no log among what the driver keeps
        engine.run_until_idle()
        assert engine.get_run("r").result() == n


def test_long_outcomes_are_read_one_at_a_time(tmp_path: Path, counted: list[StreamedLog]) -> None:
    """Outcomes over INLINE_OUTCOME are left out of a chunk; chunks of mid-sized ones
    hold about CHUNK_BYTES of them."""
    big, mid = INLINE_OUTCOME + 1000, INLINE_OUTCOME // 2
    for name, size, n in (("big.db", big, 12), ("mid.db", mid, 200)):
        crashed(tmp_path / name, n, size)
        counted.clear()
        with ce.Engine(tmp_path / name, clock=VirtualClock(START)) as engine:
            engine.run_until_idle()
            assert engine.get_run("r").result() == n * size
            (log,) = counted
            rows = engine.store.replay_rows("r", 0, 3)
            if size > INLINE_OUTCOME:
                assert [r.outcome for r in rows] == [b"", b"", b""]
            else:
                assert all(r.outcome is not None and len(r.outcome) > size for r in rows)
                most_bytes = StreamedLog.CHUNK_BYTES + StreamedLog.FIRST_CHUNK * size
                assert log.most * size <= most_bytes


def _traced_peak(path: Path) -> tuple[int, str]:
    with ce.Engine(path, clock=VirtualClock(START)) as engine:
        gc.collect()
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            engine.run_until_idle(until=START)
            peak = tracemalloc.get_traced_memory()[1] - base
        finally:
            tracemalloc.stop()
        return peak, engine.get_run("r").status


def test_replay_memory_does_not_grow_with_the_log(tmp_path: Path) -> None:
    """The peak traced while replaying a run of 20,000 steps, and one of 24 outcomes of
    1 MB: a few chunks' worth, not the log (which was 0.5 KB per entry and every
    outcome at once)."""
    crashed(tmp_path / "long.db", 20_000)
    peak, status = _traced_peak(tmp_path / "long.db")
    assert status == "sleeping"
    assert peak < 5_000_000  # the whole log read as rows: over 10 MB
    crashed(tmp_path / "big.db", 24, 1 << 20)
    peak, status = _traced_peak(tmp_path / "big.db")
    assert status == "sleeping"
    assert peak < 8 << 20  # every outcome held: over 24 MB


def _cache_held(engine: ce.Engine) -> tuple[int, int, int]:
    """(runs kept, bytes counted, bytes tracemalloc sees freed when they are let go)."""
    live = engine._runner.live
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    kept, counted = len(live), live.bytes
    live.clear()
    gc.collect()
    return kept, counted, before - tracemalloc.get_traced_memory()[0]


@pytest.mark.parametrize(
    ("runs", "steps", "hold", "replayed"),
    [(50, 1, 0, False), (1, 1, 100_000, False), (1, 3000, 0, False), (1, 3000, 0, True)],
    ids=["small-runs", "large-local", "long-live-run", "long-replayed-run"],
)
def test_the_live_cache_counts_what_it_holds(
    tmp_path: Path, runs: int, steps: int, hold: int, replayed: bool
) -> None:
    """Counted within a factor of two of what letting the runs go frees (tracemalloc),
    where that is large enough to be seen past other threads' allocations; a long run
    alone, live or replayed, holds and counts a few KB (it held its log, or an entry
    per position: over 200 KB)."""
    path = tmp_path / "a.db"
    if replayed:
        crashed(path, steps)
    with ce.Engine(path, clock=VirtualClock(START)) as engine:
        if not replayed:
            for i in range(runs):
                engine.start(long_run, steps, 0, hold, id=f"r{i}" if i else "r")
        tracemalloc.start()
        try:
            engine.run_until_idle(until=START)
            kept, counted, freed = _cache_held(engine)
        finally:
            tracemalloc.stop()
    assert kept == runs
    assert counted >= runs * BASE_BYTES
    if runs * steps > 1000:
        assert freed < 30_000 and counted < 30_000, (counted, freed)
    else:
        assert freed / 2 <= counted <= freed * 2, (counted, freed)


def test_the_cache_bytes_bound_holds_for_what_runs_really_hold(tmp_path: Path) -> None:
    """Runs holding about 1 MB each under a 3 MB bound: what stays kept frees <= 3 MB."""
    bound = 3_000_000
    with ce.Engine(tmp_path / "a.db", clock=VirtualClock(START), cache_bytes=bound) as engine:
        for i in range(6):
            engine.start(long_run, 1, 0, 20_000, id=f"r{i}")
        tracemalloc.start()
        try:
            engine.run_until_idle(until=START)
            kept, counted, freed = _cache_held(engine)
        finally:
            tracemalloc.stop()
    assert 1 <= kept < 6 and counted <= bound
    assert freed <= bound * 1.2, freed


def test_a_long_live_run_keeps_no_entry_per_position(tmp_path: Path) -> None:
    """The attempts a drive fences its writes with are kept for entries in flight only."""
    with ce.Engine(tmp_path / "a.db", clock=VirtualClock(START)) as engine:
        engine.start(long_run, 2_000, 0, 0, id="r")
        engine.run_until_idle(until=START)
        kept = engine._runner.live._kept["r"]
        assert len(kept.drive.stored) <= 2  # was one per position: 2,002


@pytest.mark.parametrize(
    "args",
    [(1,), ("a",), (None,), (1.5,), (b"x",), (1, 2), ([1, {"b": 2, "a": 1}],), ("x" * 300,)],
)
def test_a_step_calls_quick_key_check_answers_as_the_whole_one(args: tuple[Any, ...]) -> None:
    """StepCall.same_key (replay's check) says what Request.same_key says, for the key
    of these arguments, of others, and for keys not comparable (None)."""
    call = inc(*args)
    other = inc(*args, 0)  # never the same arguments
    for logged in (call.key, other.key, None, "1", "'a'", "#" + "0" * 32):
        fresh = inc(*args)
        whole = logged is None or fresh.key is None or fresh.key == logged
        whole = whole or fresh.accepts(logged)  # type: ignore[arg-type]
        assert inc(*args).same_key(logged) == whole
    assert not isinstance(call, StepCall) or call.same_key(call.key)


def test_payloads_decode_in_place_signed_or_not() -> None:
    """Short and long payloads, signed and not, read back equal (views, not copies)."""
    for serde in (Serde(), Serde(secret=b"k")):
        for value in (1, "x" * 10, b"y" * 100_000, list(range(5000))):
            data = serde.dumps(value, "v")
            assert serde.loads(data, "v") == value
            assert serde.loads(bytearray(data), "v") == value


def test_replay_on_postgresql_holds_one_chunk(
    pg_schemas: list[str], counted: list[StreamedLog]
) -> None:
    """The same stream on PostgreSQL: one chunk at a time, long outcomes read alone."""
    url, schema = server_url(), fresh_schema(pg_schemas)
    n = StreamedLog.FIRST_CHUNK + StreamedLog.CHUNK + 10
    big = INLINE_OUTCOME + 10
    STATE["crash"] = True
    try:
        with ce.Engine(store=PostgresStore(url, schema=schema)) as engine:
            with pytest.raises(Crash):
                engine.run(long_run, n, 0, 0, id="r")
            with pytest.raises(Crash):
                engine.run(long_run, 3, big, 0, id="big")
    finally:
        STATE["crash"] = False
    counted.clear()
    with ce.Engine(store=PostgresStore(url, schema=schema), clock=VirtualClock(START)) as engine:
        engine.run_until_idle(until=START)
        assert engine.get_run("r").status == engine.get_run("big").status == "sleeping"
        assert max(log.most for log in counted) == StreamedLog.CHUNK
        assert all(log.window() == [] for log in counted)
        assert [r.outcome for r in engine.store.replay_rows("big", 0, 3)] == [b"", b"", b""]
        assert engine._runner.live._kept["big"].drive.driver.held()[-1] == set()


_READ_LONG_OUTCOME = """
import resource, sys
from contengine.store.postgres import PostgresStore
store = PostgresStore(sys.argv[1], schema=sys.argv[2])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
(entry,) = store.load_log("r", 0, 1)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
assert entry.outcome == bytes(range(256)) * (int(sys.argv[3]) // 256)
print((after - before) * 1024)
"""


def test_a_long_outcome_on_postgresql_is_read_without_its_hex_text(
    pg_schemas: list[str],
) -> None:
    """A long outcome (read alone by replay) comes from PostgreSQL in binary: its text
    form is hex, twice its size, held by the client library and then unescaped, so a
    64-MB outcome cost nearly 4 times its size in memory to read; in binary, about
    its size."""
    import subprocess
    import sys

    url, schema = server_url(), fresh_schema(pg_schemas)
    size = 64 << 20
    store = PostgresStore(url, schema=schema)
    try:
        with psycopg.connect(url) as conn:
            conn.execute(f'SET search_path TO "{schema}"')
            conn.execute(
                "INSERT INTO log (run_id, position, kind, name, text, status, attempts, "
                "crashes, started_at, outcome) VALUES ('r', 0, 'step', 's', '', 'completed', "
                "1, 0, 0, %s)",
                (bytes(range(256)) * (size // 256),),
            )
    finally:
        store.close()
    out = subprocess.run(
        [sys.executable, "-c", _READ_LONG_OUTCOME, url, schema, str(size)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert int(out) < 2 * size

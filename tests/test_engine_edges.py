"""Edge cases of driving runs: fencing, argument copies, nesting, timeouts, methods."""

from __future__ import annotations

from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest
from stores import current

import contengine as ce

pytestmark = pytest.mark.both_stores

Flow = Generator[Any, Any, Any]


class FakeClock:
    """A clock whose sleeps only move time forward."""

    def __init__(self) -> None:
        self.t = 1_000_000.0
        self.slept: list[float] = []

    def now(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += max(seconds, 0.0)


def test_arguments_without_a_repr_are_logged_without_comparison(tmp_path: Path) -> None:
    """Arguments whose repr() fails get no comparison key and a fallback display text."""
    ran: list[str] = []

    @ce.step(name="edges.a")
    def a() -> int:
        ran.append("a")
        return 1

    class Explosive:
        def __repr__(self) -> str:
            raise RuntimeError("no repr for you")

        def __reduce__(self) -> Any:
            raise RuntimeError("no pickling either")

    @ce.step(name="edges.b")
    def b(x: object) -> int:
        ran.append("b")
        return 2

    @ce.workflow(name="edges.outcome_kept")
    def wf() -> Flow:
        yield a()
        # A huge int has no repr() (Python limits int->str conversion): the request
        # has no canonical text, and its display falls back to the type name.
        yield b(10**5000)
        yield b(Explosive())
        return "done"

    engine = ce.Engine(tmp_path / "e.db")
    assert engine.run(wf, id="r") == "done"
    assert ran == ["a", "b", "b"]
    history = engine.history("r")
    assert [e.status for e in history] == ["completed"] * 3
    assert history[1].key is None and history[1].text == "<int>"
    assert history[2].key is None and history[2].text.startswith("<Explosive")


def test_an_engine_error_after_a_step_keeps_the_steps_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The outcome of a step that ran is committed even if the engine fails on the next one."""
    import contengine.core.requests as requests

    ran: list[str] = []

    @ce.step(name="edges.first")
    def first() -> int:
        ran.append("first")
        return 1

    @ce.step(name="edges.second")
    def second(x: int, by: int) -> int:
        ran.append("second")
        return x + by

    @ce.workflow(name="edges.engine_error")
    def wf() -> Flow:
        x = yield first()
        return (yield second(x, 1))  # two arguments: a call canonical_call makes the key of

    real = requests.canonical_call

    def broken(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        if args == (1, 1):
            raise RuntimeError("engine bug")
        return real(args, kwargs)

    path = tmp_path / "e.db"
    monkeypatch.setattr(requests, "canonical_call", broken)
    # The run is set aside as stuck, its note naming the error (not driven again and again).
    with pytest.raises(ce.ContengineError, match="RuntimeError: engine bug") as info:
        ce.Engine(path).run(wf, id="r")
    assert isinstance(info.value.__cause__, RuntimeError)
    (entry,) = ce.Engine(path).history("r")
    assert (entry.status, entry.value) == ("completed", 1)
    assert "engine bug" in (ce.Engine(path).get_run("r").note or "")
    monkeypatch.setattr(requests, "canonical_call", real)
    assert ce.Engine(path).run(wf, id="r") == 2
    assert ce.Engine(path).get_run("r").note is None
    assert ran == ["first", "second"]


def test_a_second_engine_leaves_a_leased_run_alone(tmp_path: Path) -> None:
    """While one engine drives a run, another engine on the file does not touch it."""
    path = tmp_path / "e.db"
    calls: list[str] = []
    seen: dict[str, Any] = {}

    @ce.step(name="edges.slow")
    def slow() -> str:
        calls.append("ran")
        other = ce.Engine(path)
        seen["report"] = other.run_until_idle()
        seen["status"] = other.get_run("r").status
        other.close()
        return "only"

    @ce.workflow(name="edges.leased")
    def wf() -> Flow:
        return (yield slow())

    with ce.Engine(path) as engine:
        assert engine.run(wf, id="r") == "only"
    assert calls == ["ran"]
    assert seen["report"].driven == 0 and seen["status"] == "running"


def test_a_driver_whose_lease_was_taken_cannot_commit(tmp_path: Path) -> None:
    """Fencing by lease: once another worker holds the run, the old driver writes nothing."""
    path = tmp_path / "e.db"
    calls: list[str] = []

    @ce.step(name="edges.slow_leased")
    def slow() -> str:
        who = "inner" if calls else "outer"
        calls.append(who)
        if who == "outer":
            # While this attempt runs, another worker takes the run over (its lease
            # number moves on); that worker then vanishes without a trace.
            with current().sql(path) as conn:
                conn.execute("UPDATE runs SET owner = 'thief', lease = lease + 1 WHERE id = 'r'")
        return who

    @ce.workflow(name="edges.fenced")
    def wf() -> Flow:
        return (yield slow())

    engine = ce.Engine(path)
    # The outer attempt's outcome is refused; the run is claimed again (the thief is
    # no live worker) and the step, logged in flight, runs again as after a crash.
    assert engine.run(wf, id="r") == "inner"
    assert calls == ["outer", "inner"]
    (entry,) = engine.history("r")
    assert (entry.status, entry.value, entry.attempts, entry.crashes) == (
        "completed",
        "inner",
        2,
        1,
    )
    assert engine.get_run("r").result() == "inner"


def test_steps_get_copies_of_their_arguments_so_live_equals_replay(tmp_path: Path) -> None:
    """A step that mutates its argument cannot make the live run differ from its replay."""
    path = tmp_path / "e.db"

    class Crash(BaseException):
        pass

    state = {"crash": True}

    @ce.step(name="edges.append")
    def append(items: list[int]) -> int:
        items.append(1)  # changes the step's copy only
        return len(items)

    @ce.step(name="edges.record")
    def record(n: int) -> int:
        if state["crash"]:
            raise Crash
        return n

    @ce.workflow(name="edges.mutating")
    def wf() -> Flow:
        items: list[int] = []
        inside = yield append(items)
        outside = yield record(len(items))
        return inside, outside

    with pytest.raises(Crash):
        ce.Engine(path).run(wf, id="r")
    state["crash"] = False
    assert ce.Engine(path).run(wf, id="r") == (1, 0)


def test_a_step_cannot_wait_for_its_own_run_and_idle_skips_it(tmp_path: Path) -> None:
    engine = ce.Engine(tmp_path / "e.db")
    seen: dict[str, Any] = {}

    @ce.step(name="edges.nested")
    def nested() -> int:
        seen["report"] = engine.run_until_idle()
        with pytest.raises(ce.ContengineError, match="cannot wait for the run it belongs to"):
            engine.get_run(ce.current_step().run_id).result()
        return 7

    @ce.workflow(name="edges.self_waiting")
    def wf() -> Flow:
        return (yield nested())

    assert engine.run(wf, id="r") == 7
    assert seen["report"].driven == 0
    (entry,) = engine.history("r")
    assert (entry.attempts, entry.crashes) == (1, 0)


def test_the_newest_definition_of_a_workflow_is_the_one_run() -> None:
    engine = ce.Engine()

    def make(i: int) -> ce.Workflow[[], int]:
        @ce.workflow(name="edges.redefined")
        def wf() -> Generator[Any, Any, int]:
            return i
            yield

        return wf

    assert [engine.run(make(i)) for i in range(3)] == [0, 1, 2]


def test_arguments_that_cannot_be_read_back_are_refused_at_start() -> None:
    class OneWay:
        def __init__(self, x: int) -> None:
            self.x = x

        def __reduce__(self) -> Any:
            return (OneWay, ())  # unpickling calls OneWay() without x: TypeError

    @ce.workflow(name="edges.one_way")
    def wf(v: OneWay) -> Flow:
        return v.x
        yield

    engine = ce.Engine()
    with pytest.raises(ce.SerializationError, match="argument 0"):
        engine.start(wf, OneWay(1), id="r")
    assert engine.runs() == []


def test_steps_defined_as_methods_bind_their_instance() -> None:
    class Shop:
        def __init__(self) -> None:
            self.charged: list[int] = []

        @ce.step(name="edges.Shop.charge")
        def charge(self, cents: int) -> str:
            self.charged.append(cents)
            return f"ch-{cents}"

    shop = Shop()

    @ce.workflow(name="edges.method_steps")
    def wf() -> Flow:
        return (yield shop.charge(500))

    engine = ce.Engine()
    assert engine.run(wf, id="r") == "ch-500"
    assert shop.charged == [500]
    assert engine.history("r")[0].name == "edges.Shop.charge"
    assert engine.history("r")[0].text == "500"


def test_a_call_with_wrong_arguments_is_not_retried() -> None:
    ran: list[int] = []

    @ce.step(name="edges.strict", retries=5, backoff=0)
    def strict(a: int) -> int:
        ran.append(a)
        return a

    @ce.workflow(name="edges.wrong_args")
    def wf() -> Flow:
        try:
            yield strict(1, 2)  # type: ignore[call-arg]
        except TypeError as exc:
            return "".join(getattr(exc, "__notes__", []))

    engine = ce.Engine()
    assert "does not accept" in engine.run(wf, id="r")
    assert ran == []
    assert engine.history("r")[0].attempts == 1


def test_result_timeout_is_kept_when_the_next_attempt_is_later() -> None:
    clock = FakeClock()

    @ce.step(name="edges.later", retries=1, backoff=60)
    def later() -> str:
        if not clock.slept:
            raise ConnectionError("down")
        return "up"

    @ce.workflow(name="edges.timeout_kept")
    def wf() -> Flow:
        return (yield later())

    engine = ce.Engine(clock=clock)
    run = engine.start(wf, id="r")
    with pytest.raises(ce.Timeout, match="within 5 s"):
        run.result(timeout=5)
    assert clock.slept == [5]  # waited out the timeout, not the 60 s backoff
    assert run.status == "running"
    assert run.result() == "up"
    assert clock.slept == [5, 55]


def test_a_stuck_note_is_cleared_once_the_run_moves_again(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "e.db"
    attempts: list[float] = []

    @ce.step(name="edges.flaky", retries=2, backoff=10)
    def flaky() -> str:
        attempts.append(clock.t)
        if len(attempts) < 3:
            raise ConnectionError("down")
        return "ok"

    @ce.workflow(name="edges.note_cleared")
    def wf() -> Flow:
        return (yield flaky())

    engine = ce.Engine(path, clock=clock)
    engine.start(wf, id="r")
    assert engine.run_until_idle().finished == []
    with current().sql(path) as conn:
        conn.execute("UPDATE runs SET note = 'old trouble' WHERE id = 'r'")
    assert engine.get_run("r").note == "old trouble"
    clock.t += 10
    report = engine.run_until_idle()  # attempt 2 fails and waits again: the run moved
    assert report.finished == [] and len(attempts) == 2
    assert engine.get_run("r").note is None
    assert engine.get_run("r").result() == "ok"


def test_a_long_log_is_replayed_in_chunks_and_the_body_starts_first(tmp_path: Path) -> None:
    """Replay reads the log as it goes: the workflow runs before most of the log is read."""
    from contengine.drive.log import StreamedLog

    path = tmp_path / "e.db"
    steps = StreamedLog.FIRST_CHUNK + StreamedLog.CHUNK + 10  # crosses two chunk edges

    class Crash(BaseException):
        pass

    state = {"crash": True, "reads_at_start": -1}
    ran: list[int] = []

    @ce.step(name="edges.inc")
    def inc(i: int) -> int:
        ran.append(i)
        return i + 1

    @ce.step(name="edges.tail")
    def tail() -> str:
        if state["crash"]:
            raise Crash
        return "end"

    engine = ce.Engine(path, durability="normal")
    reads: list[tuple[int, int | None]] = []
    real_load = engine.store.replay_rows

    def counting_load(run_id: str, start: int, limit: int) -> Any:
        reads.append((start, limit))
        return real_load(run_id, start, limit)

    @ce.workflow(name="edges.long")
    def wf() -> Flow:
        state["reads_at_start"] = len(reads)
        total = 0
        for i in range(steps):
            total = yield inc(i)
        return total, (yield tail())

    with pytest.raises(Crash):
        engine.run(wf, id="r")
    assert len(ran) == steps
    engine.close()

    state["crash"] = False
    resumed = ce.Engine(path, durability="normal")
    real_load = resumed.store.replay_rows
    resumed.store.replay_rows = counting_load  # type: ignore[method-assign]
    assert resumed.run(wf, id="r") == (steps, "end")
    assert len(ran) == steps  # nothing ran again
    assert state["reads_at_start"] == 0  # the body began before any row was read
    assert reads[:3] == [
        (0, StreamedLog.FIRST_CHUNK),
        (StreamedLog.FIRST_CHUNK, StreamedLog.CHUNK),
        (StreamedLog.FIRST_CHUNK + StreamedLog.CHUNK, StreamedLog.CHUNK),
    ]


def test_a_call_with_wrong_arguments_is_not_retried_with_a_timeout_either() -> None:
    ran: list[int] = []

    @ce.step(name="edges.strict_timed", retries=3, backoff=0, timeout=5)
    def strict(a: int) -> int:
        ran.append(a)
        return a

    @ce.workflow(name="edges.wrong_args_timed")
    def wf() -> Flow:
        try:
            yield strict(1, 2)  # type: ignore[call-arg]
        except TypeError:
            return "refused"

    engine = ce.Engine()
    assert engine.run(wf, id="r") == "refused"
    assert ran == [] and engine.history("r")[0].attempts == 1


def test_a_type_error_inside_the_step_is_retried() -> None:
    calls: list[int] = []

    @ce.step(name="edges.typo", retries=2, backoff=0)
    def typo(a: int) -> int:
        calls.append(a)
        if len(calls) < 3:
            raise TypeError("a bug inside the step, fixed by the third attempt")
        return a

    @ce.workflow(name="edges.inner_type_error")
    def wf() -> Flow:
        return (yield typo(4))

    assert ce.Engine().run(wf, id="r") == 4
    assert calls == [4, 4, 4]


def test_runs_carry_tags_and_are_found_by_tag(tmp_path: Path) -> None:
    @ce.workflow(name="edges.tagged")
    def wf(n: int) -> Flow:
        return n
        yield

    engine = ce.Engine(tmp_path / "e.db")
    engine.start(wf, 1, id="a", tags=["eu", "vip"])
    engine.start(wf, 2, id="b", tags=("eu",))
    engine.start(wf, 3, id="c")
    engine.start(wf, 4, id="d", tags=["eu_west"])  # "_" is not a wildcard
    assert engine.get_run("a").tags == ("eu", "vip")
    assert engine.get_run("c").tags == ()
    assert [r.id for r in engine.runs(tag="eu")] == ["a", "b"]
    assert [r.id for r in engine.runs(tag="vip")] == ["a"]
    assert [r.id for r in engine.runs(tag="eu_west")] == ["d"]
    assert engine.runs(tag="e") == []
    engine.run_until_idle()
    assert [r.id for r in engine.runs(status="completed", tag="eu")] == ["a", "b"]
    for bad in (["a,b"], [""], [3]):
        with pytest.raises(ValueError, match="tag"):
            engine.start(wf, 5, id="bad", tags=bad)  # type: ignore[list-item]
    with pytest.raises(TypeError, match="list of strings"):
        engine.start(wf, 5, id="bad", tags="eu")
    assert [r.id for r in engine.runs()] == ["a", "b", "c", "d"]

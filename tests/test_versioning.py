"""Changing code under runs in flight: patches, step names, argument binding, diffs.

Crashes here are simulated in-process where only the replay matters: a step raises a
BaseException, which leaves its entry in flight, and a new Engine on the same file
rebuilds the run from its log with the code registered now.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Crash

import contengine as ce
from contengine.core.driver import Driver, Pending, Returned
from contengine.core.outcome import Outcome
from contengine.testing import VirtualClock

pytestmark = pytest.mark.both_stores

START = 1_767_225_600.0  # 2026-01-01 00:00:00 UTC
Body = Callable[..., Generator[Any, Any, Any]]

EXECUTED: list[str] = []  # every step execution that got past its crash check, in order
ARMED: set[str] = set()  # steps that crash (once) on their next execution


@pytest.fixture(autouse=True)
def _fresh_world() -> Iterator[None]:
    EXECUTED.clear()
    ARMED.clear()
    yield
    EXECUTED.clear()
    ARMED.clear()


def enter(name: str) -> None:
    """Crash here if this step is armed; otherwise record that it ran."""
    if name in ARMED:
        ARMED.discard(name)
        raise Crash
    EXECUTED.append(name)


@ce.step(name="versioning.work")
def work(label: str) -> str:
    """A step that records that it ran."""
    enter(label)
    return label.upper()


def define(name: str, body: Body) -> ce.Workflow[..., Any]:
    """Register body as the current code of workflow `name`, as a redeploy would."""

    @ce.workflow(name=name)
    def flow(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        return (yield from body(*args, **kwargs))

    return flow


def engine_on(path: Path, wf: ce.Workflow[..., Any]) -> ce.Engine:
    """A fresh engine on the file, as a restarted process would open it."""
    return ce.Engine(str(path), clock=VirtualClock(START), workflows=[wf])


# -- a changed sleep shows both durations ----------------------------------------------


@ce.step(name="versioning.noop")
def noop() -> None:
    """Nothing; gives a run a first position."""


def test_a_changed_sleep_shows_both_durations_exactly_in_the_replay_diff(tmp_path: Path) -> None:
    def v1() -> Generator[Any, Any, str]:
        yield ce.sleep(7200.0)
        return "up"

    def v2() -> Generator[Any, Any, str]:
        yield ce.sleep(7200.4)
        return "up"

    name = "versioning.sleep-diff"
    engine = engine_on(tmp_path / "s.db", define(name, v1))
    engine.start(engine_wf(name), id="r")
    engine.run_until_idle(until=START + 10)  # asleep, its wake time logged
    engine.close()
    engine = engine_on(tmp_path / "s.db", define(name, v2))
    with pytest.raises(ce.NonDeterminismError) as info:
        engine.run(engine_wf(name), id="r")
    assert info.value.recorded == "sleep (2h)"  # exactly two hours
    assert info.value.replayed == "sleep (2h (7200.4s))"


def engine_wf(name: str) -> ce.Workflow[..., Any]:
    """The workflow registered under name now."""
    from contengine.core.workflow import lookup

    return lookup(name, None, {})


def test_a_logged_sleep_text_that_hides_the_difference_is_shown_with_its_key() -> None:
    # Logs written before durations were shown exactly hold `2h` for 7200.4 s too.
    logged = ce.sleep(7200.4)

    class Old:
        position, kind, name, key, text = 0, "sleep", "", logged.key, "2h"

        def outcome(self) -> Outcome | None:
            return Outcome(True, None)

    def wf() -> Generator[Any, Any, None]:
        yield ce.sleep(7200.0)

    with pytest.raises(ce.NonDeterminismError) as info:
        Driver(wf(), [Old()]).start()
    assert info.value.recorded == "sleep (2h) [key 7200.4]"
    assert info.value.replayed == "sleep (2h) [key 7200.0]"


SECONDS = itertools.cycle([7200.0, 7200.4])


@ce.workflow(name="versioning.sleepy")
def sleepy() -> Generator[Any, Any, str]:
    """Sleeps for a duration that changes from one run to the next (a bug on purpose)."""
    yield ce.sleep(next(SECONDS))
    return "up"


def test_check_shows_a_changed_sleep_with_both_durations() -> None:
    with pytest.raises(AssertionError) as info:
        ce.testing.check(sleepy)
    text = str(info.value)
    assert "recorded: sleep (2h)\n" in text
    assert "replayed: sleep (2h (7200.4s))\n" in text


def test_sleep_and_wait_texts_are_exact_and_stay_readable() -> None:
    assert ce.sleep(7200).text == "2h"
    assert ce.sleep(90).text == "1m30s"
    assert ce.sleep(0.25).text == "0.25s"
    assert ce.sleep(7200.4).text == "2h (7200.4s)"
    assert ce.sleep(0.1234567).text == "0.1234567s"
    assert ce.wait("x", timeout=7200.4).text == "timeout=2h (7200.4s)"
    assert ce.wait("x", timeout=60).text == "timeout=1m"


# -- ce.race names itself --------------------------------------------------------------


@ce.workflow(name="versioning.kid")
def kid() -> Generator[Any, Any, int]:
    """A child workflow."""
    return 1
    yield  # a generator


def test_race_refusing_a_member_names_ce_race() -> None:
    with pytest.raises(TypeError) as info:
        ce.race(ce.start_child(kid), ce.sleep(5))
    assert str(info.value).startswith("ce.race()")
    assert "ce.gather" not in str(info.value)
    with pytest.raises(TypeError) as gathered:
        ce.gather(ce.start_child(kid), ce.sleep(5))
    assert str(gathered.value).startswith("ce.gather()")


# -- Backoff(initial > cap) ------------------------------------------------------------


def test_a_backoff_whose_first_delay_is_above_its_cap_is_refused() -> None:
    with pytest.raises(ValueError) as info:
        ce.Backoff(initial=600, cap=300)
    message = str(info.value)
    assert "600" in message and "300" in message and "cap" in message
    with pytest.raises(ValueError):
        ce.step(backoff=ce.Backoff(10, cap=5))


def test_a_backoff_without_a_cap_never_waits_less_than_its_first_delay() -> None:
    assert ce.Backoff(initial=600).delay(1) == 600
    assert ce.Backoff(initial=600).cap == 600
    assert ce.Backoff(initial=1).cap == 300  # the default cap, when it is above initial
    assert ce.Backoff(initial=1).delay(20) == 300
    step = ce.step(retries=2, backoff=900.0)(noop.fn)
    assert step.options_.backoff.delay(1) == 900.0
    assert step.options_.backoff.delay(2) == 900.0


# -- ce.patched: one answer per change for the whole run ---------------------------------


class Logged:
    """A log entry as the driver sees it, with a fixed outcome (None: in flight)."""

    def __init__(self, position: int, request: ce.Request, outcome: Outcome | None) -> None:
        self.position = position
        self.kind, self.name = request.kind, request.name
        self.key, self.text = request.key, request.text
        self._outcome = outcome

    def outcome(self) -> Outcome | None:
        """The recorded outcome."""
        return self._outcome


def twice_patched() -> Generator[Any, Any, Any]:
    """Asks about one change before and after a step, and takes a path by each answer."""
    first = yield ce.patched("p")
    yield work("one")
    second = yield ce.patched("p")
    yield work("two-new" if second else "two-old")
    return first, second


def test_a_change_told_false_stays_false_at_later_live_calls() -> None:
    # The run logged `one` before the change: the first call is False, and so is the
    # second, which comes after the end of the log (live).
    log = [Logged(0, work("one"), Outcome(True, "ONE"))]
    nxt = Driver(twice_patched(), log).start()
    assert isinstance(nxt, Pending)
    assert (nxt.position, nxt.request.describe()) == (1, "step versioning.work('two-old')")


def test_a_change_told_false_replays_false_once_its_old_path_is_logged() -> None:
    log = [
        Logged(0, work("one"), Outcome(True, "ONE")),
        Logged(1, work("two-old"), Outcome(True, "TWO-OLD")),
    ]
    nxt = Driver(twice_patched(), log).start()
    assert isinstance(nxt, Returned) and nxt.value == (False, False)


def test_a_new_run_is_told_true_at_every_call() -> None:
    driver = Driver(twice_patched(), [])
    nxt = driver.start()
    assert isinstance(nxt, Pending) and nxt.request.kind == "patched"
    nxt = driver.send(Outcome(True, True))
    nxt = driver.send(Outcome(True, "ONE"))
    assert isinstance(nxt, Pending) and nxt.request.kind == "patched"  # asked again, logged
    nxt = driver.send(Outcome(True, True))
    assert isinstance(nxt, Pending) and nxt.request.describe() == "step versioning.work('two-new')"


def test_a_marker_logged_after_a_false_answer_is_replayed_as_logged() -> None:
    # A log written by a version that told an old run False, then True at a later call:
    # the log is what the run did, so it keeps replaying.
    log = [
        Logged(0, work("one"), Outcome(True, "ONE")),
        Logged(1, ce.patched("p"), Outcome(True, True)),
        Logged(2, work("two-new"), Outcome(True, "TWO-NEW")),
    ]
    nxt = Driver(twice_patched(), log).start()
    assert isinstance(nxt, Returned) and nxt.value == (False, True)


def v1_two_steps() -> Generator[Any, Any, Any]:
    """The code before the change."""
    yield work("one")
    yield work("two-old")
    return None


def test_an_old_run_takes_the_old_path_at_every_patch_live_and_after_a_crash(
    tmp_path: Path,
) -> None:
    name = "versioning.patched-twice"
    path = tmp_path / "p.db"
    ARMED.add("one")  # v1 dies in its first step: only `one` is logged, in flight
    engine = engine_on(path, define(name, v1_two_steps))
    with pytest.raises(Crash):
        engine.run(engine_wf(name), id="old")
    engine.close()

    ARMED.add("two-old")  # v2 replays `one`, goes live, and dies in `two-old`
    engine = engine_on(path, define(name, twice_patched))
    with pytest.raises(Crash):
        engine.run(engine_wf(name), id="old")
    assert [(e.kind, e.name) for e in engine.history("old")] == [
        ("step", "versioning.work"),
        ("step", "versioning.work"),
    ]
    engine.close()

    engine = engine_on(path, define(name, twice_patched))  # rebuilt from the file
    assert engine.run(engine_wf(name), id="old") == (False, False)
    assert EXECUTED == ["one", "two-old"]
    assert [e.kind for e in engine.history("old")] == ["step", "step"]


def continuing(n: int) -> Generator[Any, Any, Any]:
    """Asks about the change, then continues as new once."""
    told = yield ce.patched("p")
    yield work(f"gen{n}-{'new' if told else 'old'}")
    if n == 0:
        return ce.continue_as_new(1)
    return told


def v1_continuing(n: int) -> Generator[Any, Any, Any]:
    """The code before the change."""
    yield work(f"gen{n}-old")
    if n == 0:
        return ce.continue_as_new(1)
    return None


def test_a_new_generation_after_continue_as_new_takes_the_new_path(tmp_path: Path) -> None:
    name = "versioning.patched-generations"
    path = tmp_path / "g.db"
    ARMED.add("gen0-old")
    engine = engine_on(path, define(name, v1_continuing))
    with pytest.raises(Crash):
        engine.run(engine_wf(name), 0, id="old")
    engine.close()
    engine = engine_on(path, define(name, continuing))
    assert engine.run(engine_wf(name), 0, id="old") is True
    assert EXECUTED == ["gen0-old", "gen1-new"]


# -- a call by position and by keyword is one request ------------------------------------


@ce.step(name="versioning.charge")
def charge(order_id: str, cents: Any, currency: str = "EUR") -> str:
    """Pretend to charge."""
    EXECUTED.append(f"charge {order_id}")
    return f"r-{order_id}"


@ce.step(name="versioning.only")
def only(order_id: str, /, cents: int, *, note: str = "") -> str:
    """A positional-only and a keyword-only parameter."""
    return order_id


def replays(logged: ce.Request, replayed: ce.Request) -> bool:
    """Whether a replay yielding `replayed` accepts a log that recorded `logged`."""

    def wf() -> Generator[Any, Any, Any]:
        return (yield replayed)

    entry = Logged(0, logged, Outcome(True, "r"))
    try:
        return isinstance(Driver(wf(), [entry]).start(), Returned)
    except ce.NonDeterminismError:
        return False


def old_key(logged: ce.StepCall[Any]) -> Logged:
    """A log entry keyed the way logs were before arguments were bound: as written."""
    from contengine.core.canonical import canonical_call, key_of

    entry = Logged(0, logged, Outcome(True, "r"))
    entry.key = key_of(canonical_call(logged.args, logged.kwargs))
    return entry


def test_a_call_by_position_and_by_keyword_has_one_key() -> None:
    key = charge("o-1", 500).key
    assert key == "'o-1', 500"
    assert charge("o-1", cents=500).key == key
    assert charge(cents=500, order_id="o-1").key == key
    assert charge("o-1", 500, currency="USD").key == charge("o-1", 500, "USD").key
    # What the workflow passed is compared, not what the step receives: a default is
    # the step's code, so passing it or leaving it out are two requests.
    assert charge("o-1", 500, "EUR").key != key
    assert only("o-1", cents=5).key == only("o-1", 5).key
    assert only("o-1", 5, note="x").key == "'o-1', 5, note='x'"
    # Text shows the call as written.
    assert charge("o-1", cents=500).text == "'o-1', cents=500"


def test_replay_accepts_a_call_moved_between_position_and_keyword() -> None:
    assert replays(charge("o-1", 500), charge("o-1", cents=500))
    assert replays(charge("o-1", cents=500), charge("o-1", 500))
    assert replays(charge(order_id="o-1", cents=500), charge("o-1", 500))


def test_replay_still_flags_real_changes_of_arguments() -> None:
    assert not replays(charge("o-1", 500), charge("o-1", cents=600))
    assert not replays(charge("o-1", cents=500), charge("o-2", 500))
    assert not replays(charge("o-1", 500), charge("o-1", 500, currency="USD"))
    assert not replays(charge("o-1", 500, currency="USD"), charge("o-1", 500))
    assert not replays(charge("o-1", 500), charge("o-1", 500, "EUR"))  # see the key test
    assert not replays(only("o-1", 5), only("o-1", 5, note="x"))


def wrote(entry: Logged, replayed: ce.StepCall[Any]) -> bool:
    """Whether a replay yielding `replayed` accepts this (old) log entry."""

    def wf() -> Generator[Any, Any, Any]:
        return (yield replayed)

    try:
        return isinstance(Driver(wf(), [entry]).start(), Returned)
    except ce.NonDeterminismError:
        return False


def test_logs_keyed_as_written_keep_replaying_either_way() -> None:
    long_list = list(range(100))  # a key this long is stored as a hash
    for logged in (
        charge("o-1", cents=500),
        charge(order_id="o-1", cents=500),
        charge("o-1", cents=long_list),
        charge(cents=long_list, order_id="o-1"),
        charge("o-1", 500, currency="USD"),
    ):
        entry = old_key(logged)
        args, kwargs = (logged.kwargs.get("order_id", "o-1"),), dict(logged.kwargs)
        kwargs.pop("order_id", None)
        cents = kwargs.pop("cents", None)
        positional = charge(*args, *(logged.args[1:] or [cents]), **kwargs)
        assert wrote(entry, positional), (logged.text, positional.text)
        assert wrote(entry, logged)  # the same call as written, as before
        assert not wrote(entry, charge("o-2", cents=500))
    assert not wrote(old_key(charge("o-1", cents=long_list)), charge("o-1", long_list[:-1]))


@ce.workflow(name="versioning.keyword-log")
def keyword_log() -> Generator[Any, Any, Any]:
    """The code of tests/data/keyword_calls.db, every call now written by position."""
    a = yield charge("o-1", 500)
    b = yield charge("o-2", list(range(100)))
    c = yield charge("o-3", cents=700, currency="USD")
    go = yield ce.wait("go")
    return a, b, c, go


@pytest.mark.sqlite_only(reason="replays a database file written by older code")
def test_a_log_written_before_binding_replays_with_calls_written_otherwise(
    tmp_path: Path,
) -> None:
    # keyword_calls.db was written by the code before arguments were bound (commit
    # 9d86cb6) from `charge("o-1", cents=500)`, `charge(order_id="o-2",
    # cents=list(range(100)))` (a key stored as a hash) and `charge("o-3", 700,
    # currency="USD")`; the run waits for the signal `go`.
    path = tmp_path / "keyword_calls.db"
    path.write_bytes((Path(__file__).parent / "data" / "keyword_calls.db").read_bytes())
    engine = ce.Engine(str(path), workflows=[keyword_log])
    engine.signal("old", "go", True)
    assert engine.run(keyword_log, id="old") == ("r-o-1", "r-o-2", "r-o-3", True)
    assert EXECUTED == []  # all three were replayed from the log, none ran again


# -- step names are unique in a process ---------------------------------------------------

STEP_SOURCE = """
import contengine as ce

@ce.step{options}
def {fn}(order_id: str) -> str:
    return "{module}:" + order_id
"""


def load(tmp_path: Path, module: str, fn: str = "versioning_charge", options: str = "") -> Any:
    """Import a module named `module` that defines one step, from a file of that name."""
    import importlib.util
    import sys

    path = tmp_path / f"{module}.py"
    path.write_text(STEP_SOURCE.format(module=module, fn=fn, options=options))
    spec = importlib.util.spec_from_file_location(module, path)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[module] = mod
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[module]
        raise
    return mod


def test_two_steps_of_one_name_from_different_functions_are_refused(tmp_path: Path) -> None:
    first = load(tmp_path, "versioning_billing")
    with pytest.raises(ce.WorkflowDefinitionError) as info:
        load(tmp_path, "versioning_shop")
    message = str(info.value)
    assert "'versioning_charge'" in message
    assert "versioning_billing:versioning_charge" in message
    assert "versioning_shop:versioning_charge" in message
    assert "@ce.step(name=...)" in message
    assert first.versioning_charge.name == "versioning_charge"  # the first keeps its name
    # Named apart, both are fine.
    other = load(tmp_path, "versioning_shop2", options='(name="shop.charge")')
    assert other.versioning_charge.name == "shop.charge"


def test_the_same_step_registered_again_is_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store_kind: str
) -> None:
    import importlib
    import shutil

    # Step names are registered process-wide: one of its own for each store's run.
    fn = f"reloaded_charge_{store_kind}"
    monkeypatch.syspath_prepend(str(tmp_path))  # so that reload() finds the module
    mod = load(tmp_path, "versioning_reloaded", fn=fn)
    assert getattr(importlib.reload(mod), fn).name == fn  # a module reload
    # The same file imported under another module name (a script run as __main__ and
    # imported by its workers, a test module imported twice): the same function.
    load(tmp_path, "versioning_reloaded", fn=fn)
    spec_path = tmp_path / "versioning_reloaded.py"
    import importlib.util

    spec = importlib.util.spec_from_file_location("versioning_alias", spec_path)
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))
    # A copy of the file elsewhere is another function.
    shutil.copy(spec_path, tmp_path / "versioning_copy.py")
    with pytest.raises(ce.WorkflowDefinitionError):
        load(tmp_path, "versioning_copy", fn=fn)


def test_a_step_defined_again_in_a_loop_is_no_error() -> None:
    made = []
    for i in range(3):

        @ce.step(name="versioning.made-in-a-loop")
        def made_step(x: int, i: int = i) -> int:
            return x + i

        made.append(made_step)
    assert {m.name for m in made} == {"versioning.made-in-a-loop"}

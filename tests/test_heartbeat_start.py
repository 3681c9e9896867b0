"""A heartbeat thread that starts late (a busy machine) still stops when the engine closes:
it is handed its stop event when it is made, not left to read it once it runs, after
close() may have swapped in a fresh one (a close that then waited forever)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_until

import contengine as ce
from contengine.engine import leases

WAIT = 30.0  # a bound against hanging, never reached when things work


def test_a_late_heartbeat_thread_stops_on_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = threading.Event()
    real_thread = threading.Thread

    class LateThread(real_thread):
        """Runs its target only once the gate opens."""

        def run(self) -> None:
            gate.wait(WAIT)
            super().run()

    engine = ce.Engine(tmp_path / "late.db")
    holder = engine._holder
    made: list[Any] = []

    def late(*args: Any, **kwargs: Any) -> threading.Thread:
        made.append(LateThread(*args, **kwargs))
        return made[-1]  # type: ignore[no-any-return]

    monkeypatch.setattr(leases.threading, "Thread", late)
    holder._start_heartbeat()
    monkeypatch.setattr(leases.threading, "Thread", real_thread)
    assert len(made) == 1 and made[0].is_alive()
    first_stop = holder._stop

    closing = real_thread(target=engine.close, daemon=True)
    closing.start()
    # close() has swapped in a fresh stop event and now waits for the thread.
    assert wait_until(lambda: holder._stop is not first_stop, timeout=WAIT)
    gate.set()
    closing.join(WAIT)
    assert not closing.is_alive(), "close() waited for a heartbeat that never stops"
    assert not made[0].is_alive()

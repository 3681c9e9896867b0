"""Shared test setup: hypothesis profiles (fast by default, thorough on CI), and the two
stores engine-level tests run on."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

import contengine as ce

settings.register_profile(
    "dev", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "ci",
    max_examples=500,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


# Engine-level modules run on both stores (pytestmark = pytest.mark.both_stores): the
# marker, the [sqlite]/[postgres] parametrisation and the fixtures live in stores.py.
from stores import pytest_configure, pytest_generate_tests, store_kind, stores  # noqa: E402

__all__ = ["pytest_configure", "pytest_generate_tests", "store_kind", "stores"]


# Engines a test leaves open (a simulated crash abandons its engine; a helper returns one
# the test never closes) keep a heartbeat and a cancel-watch thread each, and their store
# connections, for the rest of the session: hundreds of them cost a core by the end of a
# run and slow every later test. Each is closed when the test that made it ends. Held
# strongly: an engine nobody refers to any more is collected, but its threads are not.
_OPEN_ENGINES: list[ce.Engine] = []
_engine_init = ce.Engine.__init__


@functools.wraps(_engine_init)
def _tracked_init(self: ce.Engine, *args: Any, **kwargs: Any) -> None:
    _engine_init(self, *args, **kwargs)
    _OPEN_ENGINES.append(self)


ce.Engine.__init__ = _tracked_init  # type: ignore[method-assign]


@pytest.fixture(autouse=True)
def _close_engines_left_open() -> Iterator[None]:
    yield
    engines = list(_OPEN_ENGINES)
    _OPEN_ENGINES.clear()
    for engine in engines:
        try:
            engine.close()
        except KeyboardInterrupt:
            raise
        except BaseException:  # noqa: BLE001 - a crashed engine may fail to close; it is let go
            pass


# The longest modules first (measured with --durations): on two workers that take whole
# modules, the run then ends on short ones instead of one worker finishing a long module
# alone. Tests keep their order within a module.
SLOW_FIRST = (
    "test_signals", "test_time_and_values", "test_replay_properties", "test_workers_processes",
    "test_postgres_attack", "test_queues", "test_postgres_batch", "test_commit_later",
    "test_store_contract", "test_lock_stalls", "test_replay_memory", "test_cli_json",
    "test_testing_strategies", "test_bench", "test_race", "test_engine",
    "test_dashboard_browser", "test_bench_pg", "test_dashboard", "test_many_hosts",
)  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Put the slow modules first (a stable sort: the rest keep their order)."""
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.module.__name__ if item.module else "", len(rank)))

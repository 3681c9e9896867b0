"""Shared test setup: hypothesis profiles (fast by default, thorough on CI), and the two
stores engine-level tests run on."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

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

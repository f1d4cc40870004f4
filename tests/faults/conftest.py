"""Fault-suite fixtures shared by every module in tests/faults: the long tier switch and the figure recorder."""

from __future__ import annotations

import os

import pytest

# RINGBUS_FULL=1 runs the long tier (tests marked `full`); the normal run keeps only the fast tier.
FULL = os.environ.get("RINGBUS_FULL") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    skip = pytest.mark.skip(reason="long fault tier: runs only with RINGBUS_FULL=1")
    for item in items:
        if not FULL and str(item.path).startswith(here) and item.get_closest_marker("full") is not None:
            item.add_marker(skip)

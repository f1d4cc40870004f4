"""Fault-suite hooks shared by every module in tests/faults.

The long tier (marker `full`) runs only with RINGBUS_FULL=1.
"""

from __future__ import annotations

import os

import pytest

from .tiers import FULL


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    here = os.path.dirname(__file__)
    skip = pytest.mark.skip(reason="long fault tier: runs only with RINGBUS_FULL=1")
    for item in items:
        if not FULL and str(item.path).startswith(here) and item.get_closest_marker("full") is not None:
            item.add_marker(skip)

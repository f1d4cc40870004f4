"""The fast and the long tier of a fault test: one parametrized test, the long case marked `full`."""

from __future__ import annotations

import os
from typing import Any

import pytest

# RINGBUS_FULL=1 runs the long tier (cases marked `full`); the normal run keeps only the fast tier.
FULL = os.environ.get("RINGBUS_FULL") == "1"


def tiers(fast: int, full: int, name: str = "runs") -> Any:
    """Parametrize ``name`` with ``fast`` (always) and ``full`` (marked `full`: only with RINGBUS_FULL=1)."""
    return pytest.mark.parametrize(name, [pytest.param(fast, id=f"{fast}-{name}"),
                                          pytest.param(full, id=f"{full}-{name}", marks=pytest.mark.full)])

"""Picks the native queues, histogram and checksum, or their pure-Python twins where the extension is missing.

Set RINGBUS_PURE_PYTHON=1 to force the twins (the reference model the tests
compare against). ``IMPLEMENTATION`` says which one is in use: "c" or "py".
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # type checkers read the native classes' .pyi stubs; the twins have the same API
    from ringbus._core._array_ring import ArrayRing
    from ringbus._core._crc32c import crc32c
    from ringbus._core._histogram import Histogram
    from ringbus._core._priority_queue import PriorityQueue
    from ringbus._core._ring import Ring

    IMPLEMENTATION: str
elif os.environ.get("RINGBUS_PURE_PYTHON", "") not in ("", "0"):
    from ringbus._core._array_ring_py import ArrayRing
    from ringbus._core._crc32c_py import crc32c
    from ringbus._core._histogram_py import Histogram
    from ringbus._core._priority_queue_py import PriorityQueue
    from ringbus._core._ring_py import Ring

    IMPLEMENTATION = "py"
else:
    try:
        from ringbus._core._array_ring import ArrayRing
        from ringbus._core._crc32c import crc32c
        from ringbus._core._histogram import Histogram
        from ringbus._core._priority_queue import PriorityQueue
        from ringbus._core._ring import Ring

        IMPLEMENTATION = "c"
    except ImportError:  # the extension did not build here: stay usable, just slower
        from ringbus._core._array_ring_py import ArrayRing
        from ringbus._core._crc32c_py import crc32c
        from ringbus._core._histogram_py import Histogram
        from ringbus._core._priority_queue_py import PriorityQueue
        from ringbus._core._ring_py import Ring

        IMPLEMENTATION = "py"

from ringbus._core._stats import QueueStatistics

try:  # shared memory needs the native core whatever the queues use: there is no twin
    from ringbus._core._shm_channel import ShmChannel
except ImportError:
    from ringbus._core._shm_missing import ShmChannel  # type: ignore[assignment]  # a stand-in that says why

__all__ = [
    "ArrayRing", "Histogram", "PriorityQueue", "QueueStatistics", "Ring", "ShmChannel", "crc32c", "IMPLEMENTATION",
]

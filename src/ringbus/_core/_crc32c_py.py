"""Pure-Python twin of the native crc32c: the reference model for tests and the fallback build."""

from __future__ import annotations

import operator
from typing import Any

__all__ = ["crc32c"]


def _table() -> tuple[int, ...]:
    rows = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        rows.append(c)
    return tuple(rows)


_TABLE = _table()


def crc32c(data: Any, value: int = 0) -> int:
    """Return the CRC-32C of data's bytes (any C-contiguous buffer), continuing from value (0 to start)."""
    start = operator.index(value)
    if not 0 <= start <= 0xFFFFFFFF:
        raise ValueError(f"value must be a CRC-32C between 0 and 2**32 - 1, got {value!r}")
    if isinstance(data, str):
        raise TypeError("data must be a bytes-like buffer, not str: encode it first")
    with memoryview(data) as view:
        if not view.c_contiguous:
            raise BufferError("data must be a C-contiguous buffer")
        with view.cast("B") as octets:
            table = _TABLE
            crc = start ^ 0xFFFFFFFF
            for b in octets:
                crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF

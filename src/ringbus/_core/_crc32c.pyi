"""Type stubs for ringbus._core._crc32c (the native crc32c); the twin _crc32c_py has the same API."""

from typing_extensions import Buffer  # collections.abc.Buffer is 3.12+

def crc32c(data: Buffer, value: int = 0) -> int:
    """The CRC-32C of data's bytes, continuing from value (0 to start)."""

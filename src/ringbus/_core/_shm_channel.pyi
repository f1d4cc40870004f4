"""Type stubs for ringbus._core._shm_channel (the native ShmChannel)."""

from collections.abc import Iterator, Sequence
from typing import final

from typing_extensions import Buffer, Self  # collections.abc.Buffer is 3.12+

@final
class ShmChannel:
    """A one-way channel of byte messages between processes on one host."""

    spin: float
    @staticmethod
    def create(name: str, size_bytes: int) -> ShmChannel:
        """Create a channel whose ring holds size_bytes of data (rounded up to a power of two)."""
    @staticmethod
    def attach(name: str) -> ShmChannel:
        """Attach to a channel another process created."""
    @staticmethod
    def remove(name: str) -> None:
        """Unlink a segment by name; no error if absent."""
    def send(self, data: Buffer, timeout: float | None = None) -> None:
        """Copy one message into the ring; Full on timeout, PeerGone if the receiver left."""
    def send_many(self, messages: Sequence[Buffer], timeout: float | None = None) -> int:
        """Send messages in order; returns how many (fewer only when timeout expired)."""
    def recv(self, timeout: float | None = None) -> bytes:
        """Remove and return the oldest message; Empty on timeout, PeerGone once the sender left."""
    def recv_view(self, timeout: float | None = None) -> memoryview:
        """Like recv, zero-copy: a read-only view valid until the next recv or close."""
    def recv_many(self, max_messages: int, timeout: float | None = None) -> list[bytes]:
        """Wait for at least one message, then return up to max_messages."""
    def __iter__(self) -> Iterator[bytes]: ...
    def close(self) -> None:
        """Mark this side closed, unmap, and unlink the name if this object created it."""
    def unlink(self) -> None:
        """Remove the name now; peers keep their mappings."""
    def __enter__(self) -> Self: ...
    def __exit__(self, *exc_info: object) -> None: ...
    @property
    def name(self) -> str: ...
    @property
    def closed(self) -> bool: ...
    @property
    def capacity(self) -> int: ...
    @property
    def max_message(self) -> int: ...
    def bytes_used(self) -> int: ...

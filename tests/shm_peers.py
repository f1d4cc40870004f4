"""Child-process bodies for the ShmChannel tests (importable, so spawned children can run them)."""

from __future__ import annotations

import os
import signal
import time

from ringbus._core._shm_channel import ShmChannel


def receive_all(name: str, results) -> None:  # type: ignore[no-untyped-def]
    """Attach, take every message until the sender closes, report (count, in_order, checksum)."""
    ch = ShmChannel.attach(name)
    count, expected, in_order, checksum = 0, 0, True, 0
    for message in ch:
        seq = int.from_bytes(message[:8], "little")
        in_order &= seq == expected
        expected = seq + 1
        checksum = (checksum + sum(message[8:16])) % 1_000_003
        count += 1
    ch.close()
    results.put((count, in_order, checksum))


def send_numbered(name: str, n: int, size: int, batch: int) -> None:
    """Attach and send n numbered messages of size bytes (in batches when batch > 1), then close."""
    ch = ShmChannel.attach(name)
    body = bytes(range(8, 16)) + bytes(size - 16)
    messages = [i.to_bytes(8, "little") + body for i in range(n)]
    if batch > 1:
        for start in range(0, n, batch):
            assert ch.send_many(messages[start : start + batch], timeout=60) == len(messages[start : start + batch])
    else:
        for m in messages:
            ch.send(m, timeout=60)
    ch.close()


def send_then_die(name: str, n: int) -> None:
    """Send n messages, then die without closing (as a crashed producer would)."""
    ch = ShmChannel.attach(name)
    for i in range(n):
        ch.send(i.to_bytes(8, "little"))
    os.kill(os.getpid(), signal.SIGKILL)


def receive_one_then_die(name: str) -> None:
    """Receive one message, then die without closing (a crashed consumer)."""
    ch = ShmChannel.attach(name)
    ch.recv(timeout=30)
    os.kill(os.getpid(), signal.SIGKILL)


def create_and_exit(name: str, close: bool) -> None:
    """Create a channel and exit normally, closing it or not: either way the name must go."""
    ch = ShmChannel.create(name, 4096)
    ch.send(b"x")
    if close:
        ch.close()


def sleep_forever() -> None:
    time.sleep(3600)

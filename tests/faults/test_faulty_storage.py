"""The fault-injecting storage itself: what a power loss keeps, and faults at the Nth call."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from .faulty_storage import FaultyStorage, PowerLost, write_image


def _create(storage: FaultyStorage, path: Path) -> int:
    return storage.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND)


def test_only_what_was_fsynced_survives_a_drop(tmp_path: Path) -> None:
    storage = FaultyStorage(1)
    storage.makedirs(str(tmp_path))
    synced, unsynced = tmp_path / "a.log", tmp_path / "b.log"
    fd = _create(storage, synced)
    storage.write(fd, memoryview(b"durable"))
    storage.fsync(fd)
    storage.fsync_dir(str(tmp_path))
    storage.write(fd, memoryview(b" lost"))  # after the fsync: page cache only
    other = _create(storage, unsynced)  # its directory entry was never fsynced
    storage.write(other, memoryview(b"x"))
    storage.fsync(other)
    image = storage.power_loss("drop")
    assert image == {str(synced): b"durable"}
    with pytest.raises(PowerLost):
        storage.write(fd, memoryview(b"after"))
    storage.close(fd)
    storage.close(other)
    write_image(tmp_path, image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.log"]


def test_keep_is_a_process_crash_and_an_unsynced_unlink_comes_back(tmp_path: Path) -> None:
    (tmp_path / "old.log").write_bytes(b"old")  # there before: durable
    storage = FaultyStorage(2)
    storage.makedirs(str(tmp_path))
    fd = _create(storage, tmp_path / "new.log")
    storage.write(fd, memoryview(b"new"))
    storage.unlink(str(tmp_path / "old.log"))
    assert storage.power_loss("keep") == {str(tmp_path / "new.log"): b"new"}
    again = FaultyStorage(3)
    again.makedirs(str(tmp_path))
    again.unlink(str(tmp_path / "new.log"))
    assert again.power_loss("drop") == {str(tmp_path / "new.log"): b"new"}


def test_random_losses_tear_and_reorder(tmp_path: Path) -> None:
    """Over many seeds a later write survives an earlier one (a hole of zeros) and writes are torn."""
    seen = set()
    for seed in range(200):
        storage = FaultyStorage(seed)
        directory = tmp_path / str(seed)
        storage.makedirs(str(directory))
        fd = _create(storage, directory / "s.log")
        storage.fsync_dir(str(directory))
        for chunk in (b"A" * 600, b"B" * 600, b"C" * 600):
            storage.write(fd, memoryview(chunk))
        data = storage.power_loss("random")[str(directory / "s.log")]
        storage.close(fd)
        if b"\x00" in data:  # a hole: a later write (or sector) landed, an earlier one did not
            seen.add("reordered")
        if data and len(data) % 600:
            seen.add("torn")
        assert set(data) <= {0, ord("A"), ord("B"), ord("C")}
    assert seen == {"reordered", "torn"}


def test_the_kernel_writes_back_what_is_older_than_the_window(tmp_path: Path) -> None:
    now = [0.0]
    storage = FaultyStorage(4, writeback_after=5.0, clock=lambda: now[0])
    storage.makedirs(str(tmp_path))
    fd = _create(storage, tmp_path / "s.log")
    storage.write(fd, memoryview(b"old "))
    now[0] = 10.0
    storage.write(fd, memoryview(b"new"))
    assert storage.power_loss("drop") == {str(tmp_path / "s.log"): b"old "}
    storage.close(fd)


def test_a_fault_at_the_nth_call_once_or_for_good(tmp_path: Path) -> None:
    storage = FaultyStorage(5)
    storage.makedirs(str(tmp_path))
    fd = _create(storage, tmp_path / "s.log")
    storage.fail("write", 2, errno.ENOSPC, sticky=True, tear=3)
    storage.write(fd, memoryview(b"first"))
    for _ in range(2):
        with pytest.raises(OSError) as raised:
            storage.write(fd, memoryview(b"second"))
        assert raised.value.errno == errno.ENOSPC
    assert (tmp_path / "s.log").read_bytes() == b"firstsecsec"  # each failing write let 3 bytes through
    storage.fail("fsync", 1)
    with pytest.raises(OSError):
        storage.fsync(fd)
    storage.fsync(fd)  # once: the next works
    assert storage.failures == {"write": 2, "fsync": 1}
    with pytest.raises(ValueError, match="op must be one of"):
        storage.fail("chmod")
    storage.close(fd)

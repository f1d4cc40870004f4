"""SegmentedLog: round trips, segment rolls, recovery from torn and corrupt data, the lock, fsync policies, faults."""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import ringbus
from ringbus._core import crc32c
from ringbus.broker.log import FILE_HEADER, RECORD_HEADER, SegmentedLog, Storage

Record = tuple[int, int, bytes]  # (lsn, kind, payload)


class FaultyStorage(Storage):
    """Counts every call and fails, tears or shortens the ones a test arms."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self.fail: dict[str, OSError] = {}  # method name -> error it raises while armed
        self.tear_after: int | None = None  # with fail["write"]: bytes let through before the error
        self.max_write: int | None = None  # short writes: at most this many bytes a call

    def _enter(self, name: str) -> None:
        self.calls[name] += 1
        if name in self.fail and not (name == "write" and self.tear_after is not None):
            raise self.fail[name]

    def write(self, fd: int, data: memoryview) -> int:
        self._enter("write")
        if "write" in self.fail:  # tearing: part of the data reaches the file, then the error
            super().write(fd, data[: self.tear_after])
            raise self.fail["write"]
        return super().write(fd, data[: self.max_write] if self.max_write else data)

    def fsync(self, fd: int) -> None:
        self._enter("fsync")
        super().fsync(fd)

    def fsync_dir(self, path: str) -> None:
        self._enter("fsync_dir")
        super().fsync_dir(path)

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        self._enter("open")
        return super().open(path, flags, mode)

    def unlink(self, path: str) -> None:
        self._enter("unlink")
        super().unlink(path)


def abandon(log: SegmentedLog) -> None:
    """What a crash leaves: the kernel closes the files and drops the lock; the buffer is lost."""
    log._release()


def write_records(log: SegmentedLog, rng: random.Random, count: int, max_size: int = 300) -> list[Record]:
    out = []
    for _ in range(count):
        kind = rng.randrange(256)
        payload = rng.randbytes(rng.choice((0, 1, rng.randrange(max_size + 1))))
        out.append((log.append(kind, payload), kind, payload))
    return out


def replayed(directory: Path, **options) -> tuple[list[Record], dict]:
    with SegmentedLog(directory, **options) as log:
        return list(log.replay()), log.stats()


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.log"))


def parse_segment(path: Path) -> list[tuple[int, int, int]]:
    """(offset, kind, payload length) of every record, by an independent reading of the format."""
    data = path.read_bytes()
    assert data[:8] == FILE_HEADER
    off, out = 8, []
    while off < len(data):
        n, crc, kind = RECORD_HEADER.unpack_from(data, off)
        assert off + 9 + n <= len(data), f"{path.name}: record at {off} straddles the end of the file"
        assert crc == crc32c(data[off + 8 : off + 9 + n])
        out.append((off, kind, n))
        off += 9 + n
    return out


# -- round trips ------------------------------------------------------------------------


def test_round_trip_and_lsns_continue_after_reopen(tmp_path: Path, rng: random.Random) -> None:
    with SegmentedLog(tmp_path) as log:
        assert list(log.replay()) == []
        first = write_records(log, rng, 300)
        log.commit()
        assert list(log.replay()) == first
    assert first[0][0] == 8  # an empty directory starts at LSN 0; the file header comes first
    assert [lsn for lsn, _, _ in first] == sorted({lsn for lsn, _, _ in first})
    with SegmentedLog(tmp_path) as log:
        assert list(log.replay()) == first
        lsn, _, payload = first[-1]
        more = write_records(log, rng, 50)
        assert more[0][0] == lsn + 9 + len(payload)
        log.commit()
    records, stats = replayed(tmp_path)
    assert records == first + more
    assert stats["torn_records_cut"] == stats["corrupt_records"] == 0


def test_replay_may_stop_early_and_its_payloads_outlive_it(tmp_path: Path) -> None:
    records = build(tmp_path, [10, 20, 30])
    with SegmentedLog(tmp_path) as log:
        replay = log.replay()
        first = next(replay)
        replay.close()  # unmaps while the caller still holds a payload: payloads are bytes copies
        assert first == records[0] and type(first[2]) is bytes
        assert list(log.replay()) == records


def test_payload_may_be_any_buffer_or_a_sequence_of_them(tmp_path: Path) -> None:
    import numpy as np

    with SegmentedLog(tmp_path) as log:
        log.append(1, bytearray(b"abc"))
        log.append(2, memoryview(b"xxdefxx")[2:5])
        log.append(3, [b"gh", memoryview(b"ij"), bytearray(b"k")])
        log.append(4, (b"",))
        log.append(5, np.arange(3, dtype=np.uint16))
        assert log.pending == 5 * 9 + 3 + 3 + 5 + 0 + 6
    assert [(k, p) for _, k, p in replayed(tmp_path)[0]] == [
        (1, b"abc"), (2, b"def"), (3, b"ghijk"), (4, b""), (5, np.arange(3, dtype=np.uint16).tobytes())]


def test_append_refuses_bad_input(tmp_path: Path) -> None:
    with SegmentedLog(tmp_path, max_record=10) as log:
        for kind in (-1, 256, 1.0, "1", None):
            with pytest.raises(ringbus.ProtocolError):
                log.append(kind, b"x")
        with pytest.raises(ringbus.ProtocolError) as raised:
            log.append(1, bytes(11))
        assert isinstance(raised.value, ValueError)
        with pytest.raises(ringbus.ProtocolError):
            log.append(1, [bytes(6), bytes(5)])
        with pytest.raises(TypeError):
            log.append(1, "text")
        log.append(1, bytes(10))
        assert log.stats()["records_appended"] == 1
    with pytest.raises(ValueError):
        SegmentedLog(tmp_path / "other", fsync="sometimes")


def test_uncommitted_records_are_lost_in_a_crash_and_their_lsns_reused(tmp_path: Path) -> None:
    log = SegmentedLog(tmp_path)
    kept = log.append(1, b"kept")
    log.commit()
    lost = log.append(2, b"lost")
    assert log.pending == 9 + 4
    abandon(log)
    with SegmentedLog(tmp_path) as log:
        assert list(log.replay()) == [(kept, 1, b"kept")]
        assert log.append(3, b"next") == lost


@pytest.mark.integration
def test_committed_records_survive_kill_9_without_fsync(tmp_path: Path) -> None:
    script = (
        "import os, sys\n"
        "from ringbus.broker.log import SegmentedLog\n"
        "log = SegmentedLog(sys.argv[1], fsync='never')\n"
        "log.append(1, b'committed'); log.commit()\n"
        "log.append(2, b'pending')\n"
        "os.kill(os.getpid(), 9)\n"
    )
    result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, timeout=60)
    assert result.returncode == -9, result.stderr
    assert [(k, p) for _, k, p in replayed(tmp_path)[0]] == [(1, b"committed")]


# -- segments ---------------------------------------------------------------------------


def test_roll_across_segments_never_straddles(tmp_path: Path, rng: random.Random) -> None:
    with SegmentedLog(tmp_path, segment_bytes=400) as log:
        records = write_records(log, rng, 200, max_size=120)
        records += [(log.append(9, bytes(1000)), 9, bytes(1000))]  # larger than a segment: one of its own
        records += write_records(log, rng, 20, max_size=120)
        log.commit()
        segments = log.segments()
    files = segment_files(tmp_path)
    assert [Path(s.path) for s in segments] == files
    assert len(files) > 10
    seen = []
    for i, (seg, path) in enumerate(zip(segments, files, strict=True)):
        assert path.name == f"{seg.base_lsn:020d}.log"
        assert seg.size == path.stat().st_size
        if i + 1 < len(segments):
            assert segments[i + 1].base_lsn == seg.base_lsn + seg.size
        parsed = parse_segment(path)
        assert parsed, "a rolled segment holds at least one record"
        assert seg.size <= 400 or len(parsed) == 1
        seen += [(seg.base_lsn + off, kind, n) for off, kind, n in parsed]
    assert seen == [(lsn, kind, len(p)) for lsn, kind, p in records]
    assert replayed(tmp_path, segment_bytes=400)[0] == records


def test_delete_segments_before(tmp_path: Path, rng: random.Random) -> None:
    storage = FaultyStorage()
    with SegmentedLog(tmp_path, segment_bytes=300, storage=storage) as log:
        records = write_records(log, rng, 60, max_size=100)
        log.commit()
        segments = log.segments()
        assert len(segments) >= 4
        assert log.delete_segments_before(segments[0].base_lsn + segments[0].size - 1) == 0
        dir_syncs = storage.calls["fsync_dir"]
        cut = segments[2].base_lsn + 1  # inside the third segment: only the first two go
        assert log.delete_segments_before(cut) == 2
        assert storage.calls["fsync_dir"] == dir_syncs + 1
        assert log.segments() == segments[2:]
        assert log.delete_segments_before(2**62) == len(segments) - 3  # never the active one
        assert [Path(s.path) for s in log.segments()] == segment_files(tmp_path) == [Path(segments[-1].path)]
    assert replayed(tmp_path)[0] == [r for r in records if r[0] >= segments[-1].base_lsn]


# -- recovery ---------------------------------------------------------------------------


def build(directory: Path, sizes: list[int], **options) -> list[Record]:
    with SegmentedLog(directory, **options) as log:
        records = [(log.append(i % 256, bytes([i % 256]) * n), i % 256, bytes([i % 256]) * n)
                   for i, n in enumerate(sizes)]
        log.commit()
    return records


def test_cut_at_every_byte_of_the_last_two_records(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    original = tmp_path / "original"
    records = build(original, [30, 40, 3, 23], segment_bytes=100)  # the last two open the second segment
    last = segment_files(original)[-1]
    base = int(last.stem)
    assert records[-2][0] == base + 8
    ends = [r[0] - base + 9 + len(r[2]) for r in records]
    caplog.set_level(logging.WARNING, logger="ringbus.broker.log")
    for cut in range(8, last.stat().st_size):
        work = tmp_path / f"cut{cut}"
        shutil.copytree(original, work)
        os.truncate(work / last.name, cut)
        caplog.clear()
        got, stats = replayed(work, segment_bytes=100)
        complete = [r for r, end in zip(records, ends, strict=True) if end <= cut]
        good_end = max([8] + [end for end in ends if 8 < end <= cut])
        assert got == complete, cut
        torn = cut != good_end
        assert stats["torn_records_cut"] == int(torn)
        assert (f"{last.name}: " in caplog.text and f"at byte offset {good_end}:" in caplog.text) == torn
        assert (work / last.name).stat().st_size == good_end
        with SegmentedLog(work, segment_bytes=100) as log:
            lsn = log.append(7, b"after the cut")
        assert lsn == base + good_end
        assert replayed(work, segment_bytes=100)[0] == complete + [(lsn, 7, b"after the cut")]
        shutil.rmtree(work)


def test_garbage_at_the_tail_is_cut(tmp_path: Path) -> None:
    records = build(tmp_path, [10, 20, 30])
    path = segment_files(tmp_path)[-1]
    size = path.stat().st_size
    with path.open("ab") as f:
        f.write(b"\x07garbage that is not a record")
    got, stats = replayed(tmp_path)
    assert got == records
    assert stats["torn_records_cut"] == 1
    assert stats["bytes_dropped"] == 29
    assert path.stat().st_size == size


def test_a_damaged_length_field_of_the_last_segment_ends_the_log_there(tmp_path: Path) -> None:
    records = build(tmp_path, [10, 20, 30, 40, 50])
    path = segment_files(tmp_path)[-1]
    victim = records[2][0]
    data = bytearray(path.read_bytes())
    data[victim + 1] ^= 0x30  # two bits: the record's end moves, where the next one starts is unknown - a torn tail
    path.write_bytes(bytes(data))
    got, stats = replayed(tmp_path)
    assert got == records[:2]
    assert stats["torn_records_cut"] == 1
    assert stats["bytes_dropped"] == len(data) - victim
    assert [(k, p) for _, k, p in replayed(tmp_path)[0]] == [(k, p) for _, k, p in records[:2]]


@pytest.mark.parametrize("where", ["length", "crc", "kind", "payload"])
def test_a_flipped_bit_in_the_last_segment_costs_at_most_that_record(tmp_path: Path, where: str) -> None:
    """A header bit is repaired (the CRC holds with it flipped back); a payload bit costs its record alone."""
    records = build(tmp_path, [10, 20, 30, 40, 50])
    path = segment_files(tmp_path)[-1]
    victim = records[2][0]
    data = bytearray(path.read_bytes())
    data[victim + {"length": 1, "crc": 6, "kind": 8, "payload": 9 + 17}[where]] ^= 0x10
    path.write_bytes(bytes(data))
    kept = records[:2] + records[3:] if where == "payload" else records
    for _ in range(2):  # the file is left as it is: the damage is reported again at each open
        got, stats = replayed(tmp_path)
        assert got == kept
        assert (stats["corrupt_records"], stats["torn_records_cut"]) == (1, 0)
        assert stats["bytes_dropped"] == (9 + 30 if where == "payload" else 0)
        assert path.read_bytes() == bytes(data)
    with SegmentedLog(tmp_path) as log:
        lsn = log.append(9, b"after")
    assert lsn == len(data)
    assert replayed(tmp_path)[0] == kept + [(lsn, 9, b"after")]


@pytest.mark.parametrize("where", ["payload", "length"])
def test_damage_in_an_older_segment_skips_the_record_or_the_rest_of_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, where: str) -> None:
    records = build(tmp_path, [40] * 12, segment_bytes=200)
    files = segment_files(tmp_path)
    assert len(files) >= 3
    victim = files[1]
    base = int(victim.stem)
    inside = [r for r in records if base <= r[0] < int(files[2].stem)]
    assert len(inside) >= 3
    data = bytearray(victim.read_bytes())
    if where == "payload":
        data[inside[1][0] - base + 20] ^= 0x01
    else:
        data[inside[1][0] - base] ^= 0x03  # two bits of the length: not repairable
    victim.write_bytes(bytes(data))
    caplog.set_level(logging.WARNING, logger="ringbus.broker.log")
    with SegmentedLog(tmp_path, segment_bytes=200) as log:
        got = list(log.replay())
        lost = [inside[1]] if where == "payload" else inside[1:]  # a length hit hides where the next record starts
        assert got == [r for r in records if r not in lost]
        assert log.stats()["corrupt_records"] == 1
        what = "skipping this record" if where == "payload" else "skipping the rest of this segment"
        assert f"{victim}: CRC mismatch at byte offset {inside[1][0] - base}: {what}" in caplog.text
        assert list(log.replay()) == got
        assert log.stats()["corrupt_records"] == 1  # reported once
    assert victim.read_bytes() == bytes(data)  # an older segment is never cut


def test_a_bad_file_header_skips_the_segment(tmp_path: Path) -> None:
    records = build(tmp_path, [40] * 12, segment_bytes=200)
    files = segment_files(tmp_path)
    with files[0].open("r+b") as f:
        f.write(b"RBLOG\x02")  # a version this code does not know
    got, stats = replayed(tmp_path, segment_bytes=200)
    assert got == [r for r in records if r[0] >= int(files[1].stem)]
    assert stats["corrupt_records"] == 1


def test_a_foreign_last_segment_is_kept_and_the_log_goes_on_after_it(tmp_path: Path) -> None:
    records = build(tmp_path, [40] * 12, segment_bytes=200)
    files = segment_files(tmp_path)
    foreign = files[-1].read_bytes().replace(b"RBLOG", b"XXXXX", 1)
    files[-1].write_bytes(foreign)
    with SegmentedLog(tmp_path, segment_bytes=200) as log:
        assert list(log.replay()) == [r for r in records if r[0] < int(files[-1].stem)]
        lsn = log.append(1, b"new")
    assert files[-1].read_bytes() == foreign
    assert lsn == int(files[-1].stem) + len(foreign) + 8
    assert replayed(tmp_path, segment_bytes=200)[0][-1] == (lsn, 1, b"new")


@pytest.mark.parametrize("left", range(8))
def test_a_segment_torn_while_being_created_replays_as_empty(tmp_path: Path, left: int) -> None:
    records = build(tmp_path, [40, 40])
    end = records[-1][0] + 9 + 40
    (tmp_path / f"{end:020d}.log").write_bytes(FILE_HEADER[:left])
    with SegmentedLog(tmp_path) as log:
        assert list(log.replay()) == records
        assert log.stats()["torn_records_cut"] == int(left > 0)
        lsn = log.append(1, b"x")
    assert lsn == end + 8
    assert replayed(tmp_path)[0] == records + [(lsn, 1, b"x")]


def test_a_header_only_segment_replays_as_empty(tmp_path: Path) -> None:
    (tmp_path / f"{0:020d}.log").write_bytes(FILE_HEADER)
    assert replayed(tmp_path)[0] == []


# -- the lock ---------------------------------------------------------------------------


def test_the_lock_refuses_a_second_open(tmp_path: Path) -> None:
    with SegmentedLog(tmp_path):
        with pytest.raises(ringbus.RingbusError, match=str(tmp_path)):
            SegmentedLog(tmp_path)
    with SegmentedLog(tmp_path) as log:  # released by close
        log.close()
        log.close()  # idempotent
        with pytest.raises(ringbus.Closed):
            log.append(1, b"x")
        with pytest.raises(ringbus.Closed):
            log.commit()


@pytest.mark.integration
def test_the_lock_refuses_another_process(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from ringbus import RingbusError\n"
        "from ringbus.broker.log import SegmentedLog\n"
        "try:\n    SegmentedLog(sys.argv[1])\nexcept RingbusError as exc:\n    print(exc)\n    sys.exit(3)\n"
    )
    with SegmentedLog(tmp_path):
        result = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True,
                                timeout=60)
    assert result.returncode == 3, result.stderr
    assert str(tmp_path) in result.stdout


# -- fsync policies and faults ------------------------------------------------------------


@pytest.mark.parametrize("policy, file_syncs, dir_syncs", [("batch", 3, 1), ("always", 3, 1), ("never", 0, 0)])
def test_fsync_policies(tmp_path: Path, policy: str, file_syncs: int, dir_syncs: int) -> None:
    storage = FaultyStorage()
    with SegmentedLog(tmp_path, fsync=policy, storage=storage) as log:
        for _ in range(3):  # three batches of ten records: one fsync each
            for i in range(10):
                log.append(1, b"%d" % i)
            log.commit()
        log.commit()  # nothing new: no fsync
        assert storage.calls["fsync"] == file_syncs
        assert storage.calls["fsync_dir"] == dir_syncs  # the new segment's directory entry, once
        assert log.stats()["fsyncs"] == file_syncs + dir_syncs
        assert log.stats()["commits"] == 4


def test_a_roll_fsyncs_the_old_segment_at_commit(tmp_path: Path) -> None:
    storage = FaultyStorage()
    with SegmentedLog(tmp_path, segment_bytes=100, storage=storage) as log:
        log.commit()
        before = Counter(storage.calls)
        for _ in range(5):
            log.append(1, bytes(30))  # two a segment: three segments
        assert storage.calls["fsync"] == before["fsync"]  # nothing is synced before commit
        log.commit()
        assert storage.calls["fsync"] - before["fsync"] == 3
        assert storage.calls["fsync_dir"] - before["fsync_dir"] == 1


@pytest.mark.parametrize("fault", ["fsync", "fsync_dir", "write"])
def test_a_failed_write_or_fsync_fails_the_log_for_good(tmp_path: Path, fault: str) -> None:
    storage = FaultyStorage()
    log = SegmentedLog(tmp_path, storage=storage, segment_bytes=100)
    confirmed = log.append(1, b"confirmed")
    log.commit()
    code = errno.ENOSPC if fault == "write" else errno.EIO
    storage.fail[fault] = OSError(code, os.strerror(code))
    log.append(2, b"doomed")
    if fault == "fsync_dir":
        log.append(3, bytes(80))  # rolls: the new segment must reach the directory
    with pytest.raises(ringbus.RingbusError) as raised:
        log.commit()
    assert isinstance(raised.value.__cause__, OSError)
    del storage.fail[fault]  # the disk recovers: the log must not
    for attempt in (lambda: log.append(4, b"x"), log.commit):
        with pytest.raises(ringbus.RingbusError, match="refuses"):
            attempt()
    assert log.stats()["failed"] is True
    assert (confirmed, 1, b"confirmed") in list(log.replay())  # readers still work
    log.close()
    assert replayed(tmp_path, segment_bytes=100)[0][0] == (confirmed, 1, b"confirmed")


def test_a_torn_write_is_cut_when_reopened(tmp_path: Path) -> None:
    storage = FaultyStorage()
    log = SegmentedLog(tmp_path, storage=storage)
    kept = [(log.append(1, b"a" * 30), 1, b"a" * 30)]
    log.commit()
    log.append(2, b"b" * 30)
    log.append(3, b"c" * 30)
    storage.fail["write"] = OSError(errno.ENOSPC, "No space left on device")
    storage.tear_after = 39 + 12  # the first record and part of the second reach the file
    with pytest.raises(ringbus.RingbusError):
        log.commit()
    log.close()
    got, stats = replayed(tmp_path)
    assert [(k, p) for _, k, p in got] == [(1, b"a" * 30), (2, b"b" * 30)]
    assert got[0] == kept[0]
    assert stats["torn_records_cut"] == 1


def test_short_writes_are_completed(tmp_path: Path, rng: random.Random) -> None:
    storage = FaultyStorage()
    storage.max_write = 7
    with SegmentedLog(tmp_path, storage=storage, segment_bytes=500) as log:
        records = write_records(log, rng, 40, max_size=80)
    assert replayed(tmp_path, segment_bytes=500)[0] == records


@pytest.mark.parametrize("fault", ["open", "torn header"])
def test_a_failed_segment_creation_leaves_a_recoverable_directory(tmp_path: Path, fault: str) -> None:
    storage = FaultyStorage()
    log = SegmentedLog(tmp_path, storage=storage, segment_bytes=100)
    records = [(log.append(1, bytes(40)), 1, bytes(40))]
    log.commit()
    if fault == "open":
        storage.fail["open"] = OSError(errno.ENOSPC, "No space left on device")
    else:
        storage.fail["write"] = OSError(errno.ENOSPC, "No space left on device")
        storage.tear_after = 3
    with pytest.raises(ringbus.RingbusError):
        log.append(2, bytes(40))  # does not fit: rolls to a new segment
    storage.fail.clear()
    log.close()
    assert len(segment_files(tmp_path)) == (1 if fault == "open" else 2)
    with SegmentedLog(tmp_path, segment_bytes=100) as log:
        assert list(log.replay()) == records
        assert log.stats()["torn_records_cut"] == (fault != "open")
        lsn = log.append(3, b"x")
    end = records[0][0] + 49
    assert lsn == (end if fault == "open" else end + 8)  # the old segment, or after the new one's header
    assert replayed(tmp_path, segment_bytes=100)[0] == records + [(lsn, 3, b"x")]


def test_close_commits_what_is_pending(tmp_path: Path) -> None:
    with SegmentedLog(tmp_path) as log:
        lsn = log.append(5, b"pending at close")
    assert replayed(tmp_path)[0] == [(lsn, 5, b"pending at close")]


# -- stateful: crashes, reopens and rolls against a model -------------------------------


class LogMachine(RuleBasedStateMachine):
    """Committed records survive any crash; uncommitted ones vanish; LSNs only grow."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="ringbus-log-"))
        self.log = SegmentedLog(self.dir, segment_bytes=256, fsync="never")
        self.committed: list[Record] = []
        self.pending: list[Record] = []

    @rule(kind=st.integers(0, 255), payload=st.binary(max_size=300))
    def append(self, kind: int, payload: bytes) -> None:
        lsn = self.log.append(kind, payload)
        last = (self.pending or self.committed or [(0, 0, b"")])[-1]
        assert lsn > last[0]
        self.pending.append((lsn, kind, payload))

    @rule()
    def commit(self) -> None:
        self.log.commit()
        self.committed += self.pending
        self.pending = []

    @rule()
    def crash(self) -> None:
        abandon(self.log)
        self.pending = []
        self.reopen()

    @rule()
    def close(self) -> None:
        self.log.close()
        self.committed += self.pending
        self.pending = []
        self.reopen()

    @precondition(lambda self: self.committed)
    @rule(data=st.data())
    def delete_old(self, data: st.DataObject) -> None:
        lsn = data.draw(st.sampled_from([r[0] for r in self.committed]))
        self.log.delete_segments_before(lsn)
        first = self.log.segments()[0].base_lsn
        assert all(r[0] >= first for r in self.committed if r[0] >= lsn)
        self.committed = [r for r in self.committed if r[0] >= first]

    def reopen(self) -> None:
        self.log = SegmentedLog(self.dir, segment_bytes=256, fsync="never")
        assert list(self.log.replay()) == self.committed

    @invariant()
    def pending_bytes(self) -> None:
        assert self.log.pending == sum(9 + len(p) for _, _, p in self.pending)

    def teardown(self) -> None:
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


TestLogMachine = LogMachine.TestCase

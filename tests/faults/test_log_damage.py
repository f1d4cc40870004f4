"""Issue 10, part 3: a damaged log - cut at every byte, garbage after it, one bit flipped anywhere.

What recovery promises (docs/reliability.md, part 3), checked here:

- a log cut at any byte (a torn tail), with or without garbage after the cut, comes back with exactly the
  records that were whole before the cut, and opening it never raises;
- one flipped bit anywhere in the log is detected every time (the CRC-32C of each record, the file header);
  nothing is invented, and exactly this is dropped, all of it reported in ``bytes_dropped``:
  the hit record alone when the flip is in its CRC, kind or payload (the record after it checks out and
  reading goes on); the rest of its segment when the flip is in its length field (the format cannot tell
  where the next record starts: in the last segment that is a torn tail and is cut); the whole segment when
  its file header was hit.
"""

from __future__ import annotations

import os
import random
import shutil
from collections import Counter
from pathlib import Path

import ringbus
from ringbus.backends.broker import BrokerBus
from ringbus.broker.log import FILE_HEADER, RECORD_HEADER, SegmentedLog

from .figures import record
from .tiers import tiers

Record = tuple[int, int, bytes]  # (lsn, kind, payload)
SEGMENT_BYTES = 1200


def build(directory: Path, rng: random.Random, count: int) -> list[Record]:
    """A log of ``count`` records of random kinds and sizes (0 to 120 bytes) over several small segments."""
    records = []
    with SegmentedLog(directory, segment_bytes=SEGMENT_BYTES) as log:
        for _ in range(count):
            kind, payload = rng.randrange(256), rng.randbytes(rng.choice((0, 1, rng.randrange(121))))
            records.append((log.append(kind, payload), kind, payload))
        log.commit()
    return records


def reopen(directory: Path) -> tuple[list[Record], dict]:
    """Open (recovery), replay, and the log's counters; any exception fails the test."""
    with SegmentedLog(directory, segment_bytes=SEGMENT_BYTES) as log:
        return list(log.replay()), log.stats()


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.log"))


def end_of(rec: Record) -> int:
    return rec[0] + RECORD_HEADER.size + len(rec[2])


GARBAGE = {
    "none": lambda rng: b"",
    "random": lambda rng: rng.randbytes(rng.randrange(1, 200)),
    "zeros": lambda rng: bytes(rng.randrange(1, 200)),
    "ones": lambda rng: b"\xff" * rng.randrange(1, 200),
    "huge length": lambda rng: RECORD_HEADER.pack(2**32 - 1, rng.getrandbits(32), 2) + rng.randbytes(20),
}


@tiers(6, 40, "records")
def test_a_cut_at_every_byte_with_or_without_garbage_keeps_exactly_the_whole_records(
        tmp_path: Path, records: int) -> None:
    """The last ``records`` records, cut at each of their bytes; each cut also gets each kind of garbage after it."""
    rng = random.Random(10_3)
    original = tmp_path / "original"
    built = build(original, rng, 40)
    last = segments(original)[-1]
    base = int(last.stem)
    in_last = [r for r in built if r[0] >= base]
    victims = in_last[-records:] if len(in_last) >= records else in_last
    start = victims[0][0] - base
    size = last.stat().st_size
    pristine = last.read_bytes()
    trials = exact = 0
    for cut in range(start, size):
        for name, garbage in GARBAGE.items():
            work = tmp_path / "work"
            shutil.copytree(original, work)
            path = work / last.name
            os.truncate(path, cut)
            junk = garbage(rng)
            with path.open("ab") as f:
                f.write(junk)
            got, stats = reopen(work)
            # whole: the records before the cut, and one the garbage happens to complete byte for byte
            now = pristine[:cut] + junk
            whole = []
            for r in built:
                if r[0] >= base and now[r[0] - base:end_of(r) - base] != pristine[r[0] - base:end_of(r) - base]:
                    break
                whole.append(r)
            trials += 1
            exact += got == whole
            assert got == whole, f"cut at byte {cut} of {last.name}, then {name} garbage {junk[:16]!r}"
            good_end = max([8] + [end_of(r) - base for r in whole if r[0] >= base])
            assert stats["torn_records_cut"] == int(cut != good_end or bool(junk))
            assert path.stat().st_size == good_end  # the torn tail and the garbage are cut, nothing before them
            again, _ = reopen(work)  # the cut is final: the next open finds a clean log
            assert again == whole
            shutil.rmtree(work)
    print(f"cut + garbage: {trials} trials over the last {len(victims)} records, {exact} recovered exactly")
    record("log_damage.cut", trials=trials, records_cut_through=len(victims), bytes=size - start,
           garbage_kinds=len(GARBAGE), recovered_exactly=exact, raised=0)


def _classify(records: list[Record], files: list[Path], offset: int) -> tuple[str, Path, int]:
    """Where a global byte position falls: ("file header" | "length" | "crc" | "kind" | "payload", file, record lsn)."""
    for path in files:
        n = path.stat().st_size
        if offset < n:
            base = int(path.stem)
            if offset < len(FILE_HEADER):
                return "file header", path, -1
            lsn = base + offset
            rec = max((r for r in records if r[0] <= lsn), key=lambda r: r[0])
            within = lsn - rec[0]
            part = "length" if within < 4 else "crc" if within < 8 else "kind" if within == 8 else "payload"
            return part, path, rec[0]
        offset -= n
    raise AssertionError("offset past the log")


@tiers(1_000, 10_000, "trials")
def test_one_bit_flipped_anywhere_is_detected_and_nothing_is_invented_or_silently_dropped(
        tmp_path: Path, trials: int) -> None:
    rng = random.Random(int(os.environ.get("RINGBUS_TEST_SEED", "0")) or 10_3)
    original = tmp_path / "original"
    built = build(original, rng, 100)
    files = segments(original)
    assert len(files) >= 3
    by_lsn = {r[0]: r for r in built}
    total = sum(p.stat().st_size for p in files)
    tally: Counter[str] = Counter()
    work = tmp_path / "work"
    for _ in range(trials):
        shutil.copytree(original, work)
        offset, bit = rng.randrange(total), rng.randrange(8)
        part, hit_file, hit = _classify(built, files, offset)
        target = work / hit_file.name
        data = bytearray(target.read_bytes())
        local = offset - sum(p.stat().st_size for p in files[: files.index(hit_file)])
        data[local] ^= 1 << bit
        target.write_bytes(bytes(data))
        got, stats = reopen(work)
        tally["trials"] += 1
        tally[f"hit {part}"] += 1
        detected = stats["corrupt_records"] + stats["torn_records_cut"] >= 1
        tally["detected"] += detected
        invented = [r for r in got if by_lsn.get(r[0]) != r]
        tally["invented"] += len(invented)
        lost = [r for r in built if r not in got]
        seg_base = int(hit_file.stem)
        seg_end = seg_base + hit_file.stat().st_size
        in_segment = [r for r in built if seg_base <= r[0] < seg_end]
        # the rule: a header field repaired, a payload costs its record, a file header its segment
        allowed = in_segment if part == "file header" else [by_lsn[hit]] if part == "payload" else []
        # nothing dropped beyond what the rule allows, and every dropped byte reported
        assert all(r in allowed for r in lost), (part, offset, bit, [r[0] for r in lost])
        silently = [r for r in lost if r not in allowed]
        tally["silently_dropped"] += len(silently)
        tally["records_lost"] += len(lost)
        tally["repaired"] += part in ("length", "crc", "kind") and not lost
        assert stats["bytes_dropped"] >= sum(RECORD_HEADER.size + len(r[2]) for r in lost)
        assert detected, f"flip of bit {bit} at byte {offset} ({part}) went unnoticed"
        assert not invented
        shutil.rmtree(work)
    detected_pct = 100.0 * tally["detected"] / tally["trials"]
    figures = {"trials": tally["trials"], "detected": tally["detected"], "detected_pct": detected_pct,
               "invented": tally["invented"], "silently_dropped": tally["silently_dropped"],
               "records_lost": tally["records_lost"], "header_hits_repaired": tally["repaired"],
               **{k.replace(" ", "_"): v for k, v in tally.items() if k.startswith("hit ")}}
    print(f"bit flips: {figures}")
    record("log_damage.bit_flip", records=len(built), segments=len(files), **figures)
    assert detected_pct == 100.0


def test_a_flipped_bit_in_one_message_costs_that_message_alone_at_the_broker(tmp_path: Path) -> None:
    """End to end: a broker's log with one message's payload hit; after a restart every other message is there."""
    data = tmp_path / "data"
    with ringbus.Broker(data, "tcp://127.0.0.1:0", segment_bytes=4096) as broker, \
            BrokerBus(broker.endpoint) as bus:
        bus.declare_queue("orders", durable=True)
        ids = [bus.send("orders", b"order %03d " % i + bytes(60)) for i in range(120)]
    # find message 40's body in the log and flip one bit of it
    needle = b"order 040 "
    path = next(p for p in segments(data) if needle in p.read_bytes())
    raw = bytearray(path.read_bytes())
    raw[raw.index(needle) + 3] ^= 0x04
    path.write_bytes(bytes(raw))
    with ringbus.Broker(data, "tcp://127.0.0.1:0") as broker, BrokerBus(broker.endpoint) as bus:
        got = []
        while (message := bus.receive("orders", timeout=2.0)) is not None:
            got.append(message.id)
            message.ack()
        log_stats = bus.broker_stats()["log"]
    assert got == ids[:40] + ids[41:]
    assert (log_stats["corrupt_records"], log_stats["torn_records_cut"]) == (1, 0)

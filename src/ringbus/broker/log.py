"""The broker's durable storage: a segmented, append-only log of checksummed records.

Layout
------
A data directory holds segment files and a ``LOCK`` file. A segment is named
by its base LSN as 20 zero-padded decimal digits plus ``.log``, like Kafka's
(``00000000000000000000.log``). An LSN is a global byte offset: a record's LSN
is its segment's base plus the record's offset in that file, and a new
segment's base is the LSN where the previous one ended, so LSNs only grow.
A new directory's first segment has base 0; its first record has LSN 8 (the
file header comes first). A record never straddles two segments.

On disk (all integers little-endian)::

    segment  = file header, then records back to back
    header   = b"RBLOG" | u8 version (1) | 2 zero bytes            (8 bytes)
    record   = u32 payload length | u32 CRC-32C of (kind + payload) | u8 kind | payload

Durability
----------
``append`` only buffers in memory; ``commit`` writes the buffer and, under the
``"always"`` and ``"batch"`` policies, fsyncs it (and the directory, after a
segment was created) before it returns, so a record is durable once the commit
after it returned. Under ``"never"`` a commit leaves the data in the OS page
cache: it survives a kill -9 of the process, not a power loss. The two fsync
policies behave alike here: how often the broker commits (after each command,
or once per batch) is what tells them apart.

A failed write, fsync or segment creation puts the log in a failed state for
good (``failed``): the kernel may already have dropped the dirty pages it
could not write, so a retried fsync could succeed without the data
(PostgreSQL's "fsyncgate"). Every later append and commit raises a
RingbusError naming the error (``ENOSPC``: the disk is full); reading goes on.
Reopen the directory to recover from what is really on disk. The log never
renames a file: a segment is created in place (``O_EXCL``), written only at its
end, and deleted whole.

Recovery
--------
A record is good when it is whole and its CRC holds. A bad record (short
header, length past the end of the file, CRC mismatch) is dealt with in this
order, and reading goes on after it; the file is left as it is, and the
damage is reported again at each open:

1. one flipped bit in its header (length, CRC or kind): with that bit
   flipped back the CRC holds over the untouched payload (and the next record
   is good) - the record is kept;
2. its own length field leads to a good record - a flipped bit in its CRC,
   kind or payload, or a torn write the disk kept a later write after: the
   record alone is skipped;
3. anything else ends the segment's readable part: in the last segment it is
   a torn tail, and opening the directory truncates the file before it, so
   appends follow the last good record; in an older segment ``replay`` skips
   the rest of that segment.

A segment whose 8-byte file header is not ours is skipped whole. Every case
is logged with the file and byte offset on ``ringbus.broker.log`` and
counted in ``stats()`` (``corrupt_records``, ``torn_records_cut``,
``bytes_dropped``); none raises.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import re
import struct
from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Any, NamedTuple

from ringbus._core import crc32c
from ringbus.errors import Closed, ProtocolError, RingbusError

__all__ = ["SegmentInfo", "SegmentedLog", "Storage", "FILE_HEADER", "RECORD_HEADER"]

_log = logging.getLogger("ringbus.broker.log")

FILE_HEADER = b"RBLOG\x01\x00\x00"
RECORD_HEADER = struct.Struct("<IIB")  # payload length, CRC-32C of kind + payload, kind

_HEADER_LEN = len(FILE_HEADER)
_REC_LEN = RECORD_HEADER.size
_PACK = RECORD_HEADER.pack
_UNPACK_FROM = RECORD_HEADER.unpack_from
_SEGMENT_NAME = re.compile(r"\d{20}\.log")
_POLICIES = ("always", "batch", "never")
# CRC-32C of the kind byte alone: a record's checksum continues from it over the payload
_KIND_CRC = {kind: crc32c(bytes((kind,))) for kind in range(256)}


class SegmentInfo(NamedTuple):
    """One segment file: its base LSN, path, and size in bytes on disk."""

    base_lsn: int
    path: str
    size: int


class Storage:
    """Every file operation the log makes, so that tests can fail or tear any of them.

    The default is a thin layer over ``os``; a subclass overrides what it
    wants to break. ``write`` may write less than asked (the log loops).
    """

    def makedirs(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)

    def listdir(self, path: str) -> list[str]:
        return os.listdir(path)

    def size(self, path: str) -> int:
        return os.stat(path).st_size

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        return os.open(path, flags, mode)

    def close(self, fd: int) -> None:
        os.close(fd)

    def lock(self, fd: int) -> None:
        """Take an exclusive lock on fd without waiting; BlockingIOError when another holds it."""
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def write(self, fd: int, data: memoryview) -> int:
        return os.write(fd, data)

    def fsync(self, fd: int) -> None:
        # fdatasync still flushes the file size, which an appended file needs
        _fdatasync(fd)

    def fsync_dir(self, path: str) -> None:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def ftruncate(self, fd: int, length: int) -> None:
        os.ftruncate(fd, length)

    def map(self, fd: int, length: int) -> mmap.mmap:
        """A read-only mapping of the first length bytes of fd (length > 0)."""
        mapped = mmap.mmap(fd, length, access=mmap.ACCESS_READ)
        if hasattr(mapped, "madvise"):
            mapped.madvise(mmap.MADV_SEQUENTIAL)
        return mapped

    def unlink(self, path: str) -> None:
        os.unlink(path)


_fdatasync = getattr(os, "fdatasync", os.fsync)

_DISK_FULL = {errno.ENOSPC, errno.EDQUOT}


def _describe(exc: OSError) -> str:
    """"ENOSPC: No space left on device - the disk is full": the error's name, its text, and what it means."""
    name = errno.errorcode.get(exc.errno or 0, "OSError")
    text = f"{name}: {exc.strerror or exc}"
    if exc.errno in _DISK_FULL:
        return f"{text} - the disk is full"
    if exc.errno == errno.EIO:
        return f"{text} - the disk or its file system reported an I/O error"
    return text


def _good(mapped: mmap.mmap, view: memoryview, off: int, size: int) -> bool:
    """Whether a whole record starts at off and its CRC holds."""
    if size - off < _REC_LEN:
        return False
    n, crc, _ = _UNPACK_FROM(mapped, off)
    end: int = off + _REC_LEN + n
    return end <= size and crc32c(view[off + 8:end]) == crc


def _repair(mapped: mmap.mmap, view: memoryview, off: int, size: int, n: int, crc: int,
            kind: int) -> tuple[int, int, str] | None:
    """(kind, end, which field) of the record at off if one flipped bit of its header is all that is wrong.

    The CRC decides, over a payload no repair touches: it must hold with the bit flipped back (in the length,
    the kind, or the CRC itself), and the record after it, if any, must be good. A record damaged some other
    way passes by chance with odds of about 41 in 2**32.
    """
    def fits(end: int) -> bool:
        return end == size or _good(mapped, view, end, size)

    end = off + _REC_LEN + n
    if end <= size:
        payload = view[off + _REC_LEN:end]
        wrong = crc32c(payload, _KIND_CRC[kind]) ^ crc
        if wrong & (wrong - 1) == 0 and fits(end):
            return kind, end, "CRC field"
        for bit in range(8):
            if crc32c(payload, _KIND_CRC[kind ^ (1 << bit)]) == crc and fits(end):
                return kind ^ (1 << bit), end, "kind byte"
    for bit in range(32):
        end = off + _REC_LEN + (n ^ (1 << bit))
        if end <= size and crc32c(view[off + 8:end]) == crc and fits(end):
            return kind, end, "length field"
    return None


def _walk(mapped: mmap.mmap, view: memoryview, size: int, outcome: list[Any],
          skipped: list[tuple[int, int, str]]) -> Iterator[tuple[int, int, int]]:
    """Yields (offset, kind, end) of each good record after the file header.

    A record with one flipped bit in its header (length, CRC or kind) is
    repaired (its CRC holds with the bit flipped back) and yielded: (offset,
    0, reason) goes to ``skipped``. A damaged record whose own length field leads to a good record
    (a flipped bit in its CRC, kind or payload; a torn write followed by a later
    write the disk kept) is skipped alone: (offset, bytes, reason) goes to
    ``skipped`` and the walk goes on. Any other damage ends the walk - a torn
    tail - and outcome becomes [offset where the good records end, reason or None].
    """
    off = _HEADER_LEN
    reason = None
    while off < size:
        if size - off >= _REC_LEN:
            n, crc, kind = _UNPACK_FROM(mapped, off)
            end = off + _REC_LEN + n
            # A length over max_record is not damage by itself: a good record
            # written under a larger limit passes the two checks below, and
            # garbage fails them (the mapping bounds the CRC's work by the file's size).
            if end <= size and crc32c(view[off + 8:end]) == crc:
                yield off, kind, end
                off = end
                continue
            reason = "CRC mismatch" if end <= size else f"record length {n} runs past the end of the file"
            repaired = _repair(mapped, view, off, size, n, crc, kind)
            if repaired is not None:
                kind, end, field = repaired
                skipped.append((off, 0, f"{reason} (one bit of its {field} flipped)"))
                reason = None
                yield off, kind, end
                off = end
                continue
        else:
            reason, end = "short record header", size
        if end >= size or not _good(mapped, view, end, size):
            break
        skipped.append((off, end - off, reason))
        reason = None
        off = end
    outcome[:] = [off, reason]


class SegmentedLog:
    """A durable, segmented, append-only log of (kind, payload) records.

    Parameters
    ----------
    directory : str or os.PathLike
        The data directory; created if missing. One log at a time may open it.
    fsync : {"batch", "always", "never"}
        Whether ``commit`` fsyncs ("always", "batch") or leaves the data in
        the OS page cache ("never"). See the module docstring.
    segment_bytes : int
        A new segment starts when a record would take the current one past
        this size (a record larger than that gets a segment of its own).
    max_record : int
        Largest payload ``append`` accepts, in bytes.
    storage : Storage, optional
        The file operations to use (tests pass one that injects faults).

    Raises
    ------
    RingbusError
        When another log holds the directory, or the directory cannot be
        opened or recovered.

    Notes
    -----
    Single-threaded by design, like the broker: append records, ``commit()``
    once, and only then confirm them. Also a context manager that closes.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        fsync: str = "batch",
        segment_bytes: int = 64 * 1024 * 1024,
        max_record: int = 64 * 1024 * 1024 + 4096,
        storage: Storage | None = None,
    ) -> None:
        if fsync not in _POLICIES:
            raise ValueError(f"fsync must be one of {_POLICIES}, got {fsync!r}")
        if segment_bytes < _HEADER_LEN + _REC_LEN:
            raise ValueError(f"segment_bytes must be at least {_HEADER_LEN + _REC_LEN}, got {segment_bytes}")
        if not 0 <= max_record < 2**32:
            raise ValueError(f"max_record must be between 0 and 2**32 - 1, got {max_record}")
        self._dir = os.fspath(directory)
        self._storage = storage if storage is not None else Storage()
        self._sync = fsync != "never"
        self._segment_bytes = segment_bytes
        self._max_record = max_record
        self._sealed: list[SegmentInfo] = []  # older segments, oldest first; never written again
        self._base = 0  # the active segment: its base LSN, path and write fd
        self._path = ""
        self._fd = -1
        self._written = 0  # bytes in the active file
        self._size = 0  # _written plus the buffer: where the next record goes
        self._buf = bytearray()
        self._mark = 0  # the LSN the last commit reached, plus the headers of segments made since
        self._appended = 0
        self._unsynced: list[int] = []  # fds of segments rolled away from, to fsync and close at commit
        self._dirty = False  # the active fd was written since its last fsync
        self._dir_dirty = False  # a segment file was created since the last directory fsync
        self._failure: OSError | None = None
        self._failed_at = "an earlier write or fsync"
        self._closed = False
        self._refused = False  # failed or closed: append() tests this one flag
        self._reported: set[tuple[str, int]] = set()  # damage already logged and counted: (file, offset)
        self._counts = dict.fromkeys(
            ("commits", "fsyncs", "torn_records_cut", "corrupt_records", "bytes_dropped"), 0)
        self._lock_fd = self._take_lock()
        try:
            self._recover()
        except BaseException:
            self._release()
            raise
        self._mark = self._base + self._size

    # -- opening -----------------------------------------------------------------------

    def _take_lock(self) -> int:
        st = self._storage
        try:
            st.makedirs(self._dir)
            fd = st.open(os.path.join(self._dir, "LOCK"), os.O_RDWR | os.O_CREAT)
        except OSError as exc:
            raise RingbusError(f"cannot open the log directory {self._dir!r}: {exc}") from exc
        try:
            st.lock(fd)
        except OSError as exc:
            st.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RingbusError(f"the log directory {self._dir!r} is in use by another broker "
                                   "(its LOCK is held)") from exc
            raise RingbusError(f"cannot lock the log directory {self._dir!r}: {exc}") from exc
        return fd

    def _recover(self) -> None:
        st = self._storage
        try:
            found = []
            for name in sorted(n for n in st.listdir(self._dir) if _SEGMENT_NAME.fullmatch(n)):
                path = os.path.join(self._dir, name)
                found.append(SegmentInfo(int(name[:-4]), path, st.size(path)))
            if not found:
                self._create_segment(0)
                return
            *self._sealed, last = found
            if last.size < _HEADER_LEN:
                # a crash while a segment was being created: it holds no record yet
                if last.size:
                    self._torn(last.path, 0, "partial file header", last.size)
                self._fd = st.open(last.path, os.O_WRONLY | os.O_APPEND)
                self._base, self._path = last.base_lsn, last.path
                st.ftruncate(self._fd, 0)
                self._write_all(FILE_HEADER)
                self._written = self._size = _HEADER_LEN
                self._dirty = True
                return
            checked = self._check_last(last)
            if checked is None:
                # not ours to cut (maybe a newer format): leave it and start after it
                self._sealed.append(last)
                self._create_segment(last.base_lsn + last.size)
                return
            end, reason = checked
            self._fd = st.open(last.path, os.O_WRONLY | os.O_APPEND)
            self._base, self._path = last.base_lsn, last.path
            if reason is not None:
                st.ftruncate(self._fd, end)
                self._torn(last.path, end, reason, last.size - end)
                self._dirty = True
            self._written = self._size = end
        except OSError as exc:  # the caller's _release() closes what was opened
            raise RingbusError(f"cannot recover the log in {self._dir!r}: {exc}") from exc

    def _check_last(self, seg: SegmentInfo) -> tuple[int, str | None] | None:
        """Where the good records of the last segment end and why there (None: at the file's end).

        None when the file header is not ours.
        """
        mapped = self._map_segment(seg.path, seg.size)
        if mapped is None:
            return None
        try:
            outcome: list[Any] = []
            skipped: list[tuple[int, int, str]] = []
            with memoryview(mapped) as view:
                for _ in _walk(mapped, view, seg.size, outcome, skipped):
                    pass
            self._skipped(seg.path, skipped)
            return outcome[0], outcome[1]
        finally:
            mapped.close()

    def _map_segment(self, path: str, size: int) -> mmap.mmap | None:
        """A read-only mapping of a segment's first size bytes; None (reported) when its file header is not ours."""
        if size < _HEADER_LEN:
            self._corrupt(path, 0, "partial file header", size)
            return None
        st = self._storage
        fd = st.open(path, os.O_RDONLY)
        try:
            mapped = st.map(fd, size)
        finally:
            st.close(fd)
        if mapped[:_HEADER_LEN] != FILE_HEADER:
            mapped.close()
            self._corrupt(path, 0, "bad file header", size)
            return None
        return mapped

    def _torn(self, path: str, offset: int, reason: str, dropped: int) -> None:
        _log.warning("%s: %s at byte offset %d: the log ends there (%d bytes cut)", path, reason, offset, dropped)
        self._counts["torn_records_cut"] += 1
        self._counts["bytes_dropped"] += dropped

    def _corrupt(self, path: str, offset: int, reason: str, dropped: int, *, alone: bool = False) -> None:
        if (path, offset) in self._reported:
            return
        self._reported.add((path, offset))
        if not alone:
            what = "skipping the rest of this segment"
        elif dropped:
            what = "skipping this record; the one after it is good"
        else:
            what = "kept: its CRC holds with that bit flipped back"
        _log.warning("%s: %s at byte offset %d: %s (%d bytes)", path, reason, offset, what, dropped)
        self._counts["corrupt_records"] += 1
        self._counts["bytes_dropped"] += dropped

    def _skipped(self, path: str, skipped: list[tuple[int, int, str]]) -> None:
        for offset, length, reason in skipped:
            self._corrupt(path, offset, reason, length, alone=True)

    def _create_segment(self, base: int) -> None:
        """Make base the active segment; the caller has flushed and let go of the old one."""
        path = os.path.join(self._dir, f"{base:020d}.log")
        # A crash anywhere in here leaves no file, an empty one or a partial
        # header, which the next open turns back into a header-only segment.
        self._fd = self._storage.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND)
        self._base, self._path = base, path
        self._written = self._size = 0
        self._dir_dirty = self._dirty = True
        self._write_all(FILE_HEADER)
        self._written = self._size = _HEADER_LEN

    # -- writing -----------------------------------------------------------------------

    def append(self, kind: int,
               payload: bytes | bytearray | memoryview | Sequence[bytes | bytearray | memoryview]) -> int:
        """Buffer one record; return its LSN. Durable only after the next ``commit()``.

        Parameters
        ----------
        kind : int
            The record's type, 0 to 255; the log stores it, the broker gives it meaning.
        payload : bytes-like or sequence of bytes-like
            The record's bytes; a list or tuple of buffers is stored as their
            concatenation (no join needed).

        Raises
        ------
        ProtocolError
            When kind is out of range or the payload is larger than max_record.
        RingbusError
            When the log failed (a write or fsync error); Closed once closed.
        """
        if self._refused:
            raise self._refusal()
        kind_crc = _KIND_CRC.get(kind) if type(kind) is int else None
        if type(payload) is bytes and kind_crc is not None:
            n = len(payload)
            if n > self._max_record:
                raise self._too_large(n)
            header = _PACK(n, crc32c(payload, kind_crc), kind)
            parts = None
        else:
            n, header, parts = self._prepare(kind, kind_crc, payload)
        size = self._size
        end = size + _REC_LEN + n
        if end > self._segment_bytes and size > _HEADER_LEN:
            self._roll()
            size = self._size
            end = size + _REC_LEN + n
        buf = self._buf
        buf += header
        if parts is None:
            buf += payload  # type: ignore[arg-type]  # parts is None only for a bytes payload
        else:
            for part in parts:
                buf += part
        self._size = end
        self._appended += 1
        return self._base + size

    def _prepare(self, kind: Any, kind_crc: int | None, payload: Any) -> tuple[int, bytes, list[memoryview]]:
        """append() past its fast path: checks, then length, record header and byte views of the payload."""
        if kind_crc is None:
            raise ProtocolError(f"record kind must be an int from 0 to 255, got {kind!r}")
        if isinstance(payload, str):
            raise TypeError("record payload must be bytes-like, not str: encode it first")
        pieces = payload if isinstance(payload, (list, tuple)) else (payload,)
        parts = [memoryview(p).cast("B") for p in pieces]
        n = sum(len(p) for p in parts)
        if n > self._max_record:
            raise self._too_large(n)
        crc = kind_crc
        for p in parts:
            crc = crc32c(p, crc)
        return n, _PACK(n, crc, kind), parts

    def _too_large(self, n: int) -> ProtocolError:
        return ProtocolError(f"record payload of {n} bytes exceeds max_record ({self._max_record})")

    def _roll(self) -> None:
        """Flush the buffer into the current segment and start the next one where it ends."""
        try:
            self._flush()
            if self._sync:
                self._unsynced.append(self._fd)  # commit fsyncs it before it confirms anything
            else:
                self._storage.close(self._fd)
            self._sealed.append(SegmentInfo(self._base, self._path, self._written))
            self._fd = -1
            self._dirty = False
            self._mark += _HEADER_LEN
            self._create_segment(self._base + self._written)
        except OSError as exc:
            raise self._fail("starting a new segment", exc) from exc

    def _flush(self) -> None:
        if self._buf:
            self._write_all(self._buf)
            self._written += len(self._buf)
            self._buf.clear()
            self._dirty = True

    def _write_all(self, data: bytes | bytearray) -> None:
        with memoryview(data) as view:
            done = 0
            while done < len(view):
                wrote = self._storage.write(self._fd, view[done:])
                if wrote <= 0:  # a regular file never does this; a broken device might, forever
                    raise OSError(errno.EIO, f"write to {self._path} made no progress")
                done += wrote

    def commit(self, *, sync: bool = True) -> None:
        """Write what was appended and, unless the policy is "never" or ``sync`` is false, fsync it.

        ``sync=False`` hands the bytes to the OS only (they survive a crash of the process, not of the
        machine); the next commit with ``sync`` fsyncs them with its own.

        Once this returns, every record appended before it is durable (under
        "always"/"batch"); only then may the broker confirm them.

        Raises
        ------
        RingbusError
            When a write or fsync fails (chained to the OSError); the log
            then refuses every later append and commit.
        """
        if self._refused:
            raise self._refusal()
        st = self._storage
        try:
            self._flush()
            if self._sync and sync:
                while self._unsynced:
                    fd = self._unsynced[0]
                    st.fsync(fd)
                    self._counts["fsyncs"] += 1
                    del self._unsynced[0]
                    st.close(fd)
                if self._dirty:
                    st.fsync(self._fd)
                    self._counts["fsyncs"] += 1
                if self._dir_dirty:
                    st.fsync_dir(self._dir)
                    self._counts["fsyncs"] += 1
                self._dirty = self._dir_dirty = False
        except OSError as exc:
            raise self._fail("commit", exc) from exc
        self._mark = self._base + self._size
        self._counts["commits"] += 1

    def _fail(self, what: str, exc: OSError) -> RingbusError:
        self._failure = exc
        self._refused = True
        self._buf = bytearray()  # not clear(): the failed write's traceback may still hold a view of it
        refusal = self._refusal(what)
        _log.error("%s", refusal)
        return refusal

    def _refusal(self, what: str | None = None) -> RingbusError:
        if self._closed:
            return Closed(f"the log in {self._dir!r} is closed")
        exc = self._failure
        assert exc is not None
        if what is not None:
            self._failed_at = what
        return RingbusError(f"the log in {self._dir!r} refuses appends and commits: {self._failed_at} failed "
                            f"({_describe(exc)}); what it confirmed is safe; reopen it to recover")

    @property
    def failed(self) -> bool:
        """True once a write, fsync or segment creation failed: appends and commits raise from then on."""
        return self._failure is not None

    def check_writable(self) -> None:
        """Raise the RingbusError ``append`` would (failed or closed); return if it would take a record."""
        if self._refused:
            raise self._refusal()

    @property
    def pending(self) -> int:
        """Bytes appended (record headers included) and not yet committed."""
        return self._base + self._size - self._mark

    # -- reading and upkeep ------------------------------------------------------------

    def replay(self) -> Iterator[tuple[int, int, bytes]]:
        """Yield (lsn, kind, payload) of every good record on disk, oldest first.

        Meant once after opening, before appending. Payloads are ``bytes``
        copies, so they outlive the read. Damage in an older segment is
        logged, counted, and skipped to the next segment; bad data never
        raises. Reads each segment through a read-only mmap, so a large log
        streams through the page cache without being held in memory.
        """
        if self._closed:
            raise self._refusal()
        segments = self.segments()
        for i, seg in enumerate(segments):
            # a segment must end where the next begins, or LSNs would repeat
            limit = segments[i + 1].base_lsn - seg.base_lsn if i + 1 < len(segments) else seg.size
            yield from self._replay_segment(seg, min(seg.size, limit))

    def _replay_segment(self, seg: SegmentInfo, size: int) -> Iterator[tuple[int, int, bytes]]:
        try:
            mapped = self._map_segment(seg.path, size)
        except FileNotFoundError:  # deleted since replay began
            return
        except OSError as exc:
            raise RingbusError(f"cannot read the log segment {seg.path}: {exc}") from exc
        if mapped is None:
            return
        try:
            base = seg.base_lsn
            outcome: list[Any] = []
            skipped: list[tuple[int, int, str]] = []
            with memoryview(mapped) as view:
                for off, kind, end in _walk(mapped, view, size, outcome, skipped):
                    yield base + off, kind, mapped[off + _REC_LEN:end]
            self._skipped(seg.path, skipped)
            stop, reason = outcome
            if reason is not None:
                self._corrupt(seg.path, stop, reason, seg.size - stop)
            elif size < seg.size:
                self._corrupt(seg.path, size, "data past the next segment's base LSN", seg.size - size)
        finally:
            mapped.close()

    def segments(self) -> list[SegmentInfo]:
        """The segment files, oldest first; the active one's size counts only what was written to it."""
        return [*self._sealed, SegmentInfo(self._base, self._path, self._written)]

    def delete_segments_before(self, lsn: int) -> int:
        """Delete the oldest segments whose every record has an LSN below lsn; return how many.

        The active segment is never deleted. Unless the policy is "never",
        the directory is fsynced afterwards.
        """
        if self._closed:
            raise self._refusal()
        count = 0
        error = None
        while self._sealed and self._sealed[0].base_lsn + self._sealed[0].size <= lsn:
            try:
                self._storage.unlink(self._sealed[0].path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                error = exc
                break
            del self._sealed[0]
            count += 1
        if count and self._sync and self._failure is None:
            try:
                self._storage.fsync_dir(self._dir)
                self._counts["fsyncs"] += 1
            except OSError as exc:
                raise self._fail("fsync of the directory", exc) from exc
        if error is not None:
            raise RingbusError(f"cannot delete the log segment {self._sealed[0].path}: {error}") from error
        return count

    def stats(self) -> dict[str, Any]:
        """Counters and sizes.

        Keys: ``segments``, ``bytes`` (on disk), ``pending``, ``records_appended``,
        ``commits``, ``fsyncs`` (files and directory), ``torn_records_cut``
        (damaged tails cut off the last segment when opening),
        ``corrupt_records`` (damaged records skipped alone, damage that ends
        an older segment, bad file headers), ``bytes_dropped`` (by both),
        ``failed`` and ``failure`` (what failed and why, or "").
        """
        segments = self.segments()
        return {
            "segments": len(segments),
            "bytes": sum(s.size for s in segments),
            "pending": self.pending,
            "records_appended": self._appended,
            **self._counts,
            "failed": self._failure is not None,
            "failure": "" if self._failure is None else f"{self._failed_at} failed ({_describe(self._failure)})",
        }

    def close(self) -> None:
        """Commit what is pending (best effort), close the files and release the directory. Idempotent."""
        if self._closed:
            return
        if self._failure is None and (self._buf or self._dirty or self._unsynced or self._dir_dirty):
            try:
                self.commit()
            except RingbusError:
                _log.exception("closing the log in %r: the final commit failed", self._dir)
        self._closed = self._refused = True
        self._release()

    def _release(self) -> None:
        st = self._storage
        for fd in (*self._unsynced, self._fd, self._lock_fd):
            if fd >= 0:
                try:
                    st.close(fd)
                except OSError:
                    pass
        self._unsynced.clear()
        self._fd = self._lock_fd = -1

    def __enter__(self) -> SegmentedLog:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "failed" if self._failure is not None else "open"
        return f"<SegmentedLog {self._dir!r} {state} next_lsn={self._base + self._size}>"

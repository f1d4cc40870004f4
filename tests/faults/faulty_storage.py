"""A fault-injecting Storage for the broker's log: simulated power loss and I/O errors at any call.

The files are real (the log reads them back through mmap); beside them the storage keeps a model of what a
power loss would leave, like SQLite's crash-test VFS:

- every file has a *durable image* (its bytes as of its last fsync) and the writes and truncations made
  since (pending); every directory has its durable names and the creations and unlinks since its last fsync;
- :meth:`power_loss` computes what survives - a pending write is kept, dropped, torn to a prefix, or kept
  sector by sector, each independently (so a later write can land while an earlier one does not: reordered);
  holes read back as zeros - and from then on every call fails with EIO, as on a machine that lost power;
- ``writeback_after`` models the kernel writing dirty data back on its own after that many seconds (Linux:
  ``vm.dirty_expire_centisecs``): what is older than that at the loss is durable without an fsync;
- ``fail`` arms an OSError at the Nth call of one operation (write, fsync, fsync_dir, open, ftruncate, unlink,
  rename), once or for good (a full disk stays full); a failing write first lets a prefix through.
"""

from __future__ import annotations

import errno
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ringbus.broker.log import Storage

SECTOR = 512
MODES = ("drop", "keep", "prefix", "random")  # what a power loss does to the pending writes (see _fate)
FAULT_OPS = ("write", "fsync", "fsync_dir", "open", "ftruncate", "unlink", "rename")


@dataclass
class _Op:
    at: float  # clock time of the call
    kind: str  # "write" (offset, data) or "truncate" (offset = new length)
    offset: int
    data: bytes = b""


@dataclass
class _File:
    durable: bytearray  # the bytes a power loss keeps for sure
    pending: list[_Op] = field(default_factory=list)


@dataclass
class _Armed:
    nth: int  # fail the call with this number (1 = the next one)
    error: int
    sticky: bool  # every later call fails too
    tear: int | None  # a failing write lets this many bytes through first (None: a random prefix)
    seen: int = 0


class PowerLost(OSError):
    """Every call after the simulated power loss fails with this (errno EIO)."""


class FaultyStorage(Storage):
    """Storage over real files that can lose power (:meth:`power_loss`) and fail any call (:meth:`fail`).

    Parameters
    ----------
    seed : int
        Seeds every random choice (fates of pending writes, tear lengths): a run is replayed exactly.
    writeback_after : float or None
        Seconds after which the modelled kernel has written a pending change back by itself; None: never
        (only fsync makes data durable - the harshest case, the one the "always" and "batch" policies promise).
    clock : callable
        Time source for ``writeback_after`` (time.monotonic).
    lose_power_at : int or None
        Lose power just before the mutating call with this number (1-based; writes, fsyncs, creations,
        truncations, unlinks) - a crash at an exact step. ``mutations`` counts them.
    loss_mode : str
        The mode of that automatic loss (see :data:`MODES`).
    """

    def __init__(self, seed: int = 0, *, writeback_after: float | None = None,
                 clock: Callable[[], float] = time.monotonic, lose_power_at: int | None = None,
                 loss_mode: str = "random") -> None:
        if loss_mode not in MODES:
            raise ValueError(f"loss_mode must be one of {MODES}, got {loss_mode!r}")
        self.rng = random.Random(seed)
        self.writeback_after = writeback_after
        self.clock = clock
        self.lose_power_at = lose_power_at
        self.loss_mode = loss_mode
        self.calls: Counter[str] = Counter()
        self.mutations = 0
        self.steps: list[str] = []  # the operation of each mutating call, in order
        self.image: dict[str, bytes] | None = None  # what survived, once power was lost
        self.lost_at: float | None = None  # clock time of the loss
        self._lock = threading.RLock()
        self._fds: dict[int, str] = {}
        self._files: dict[str, _File] = {}
        self._names: dict[str, set[str]] = {}  # directory -> durable names
        self._dir_ops: dict[str, list[_Op]] = {}  # directory -> pending "create"/"unlink" (offset unused, data=name)
        self._armed: dict[str, _Armed] = {}
        self.failures: Counter[str] = Counter()  # errors injected, by operation

    # -- arming faults ---------------------------------------------------------------------------------------
    def fail(self, op: str, nth: int = 1, error: int = errno.EIO, *, sticky: bool = False,
             tear: int | None = None) -> None:
        """Make the nth next call of ``op`` raise OSError(error); ``sticky``: and every call after it."""
        if op not in FAULT_OPS:
            raise ValueError(f"op must be one of {FAULT_OPS}, got {op!r}")
        if nth < 1:
            raise ValueError(f"nth must be >= 1, got {nth}")
        self._armed[op] = _Armed(nth, error, sticky, tear)

    def disarm(self) -> None:
        """The disk works again (the log that saw an error must not trust it: it stays failed)."""
        self._armed.clear()

    def _enter(self, op: str, *, mutating: bool = True) -> None:
        """Count the call; raise if power is lost or a fault is armed for it."""
        self.calls[op] += 1
        if self.image is not None:
            raise PowerLost(errno.EIO, "simulated power loss: the machine is off")
        if mutating:
            self.mutations += 1
            self.steps.append(op)
            if self.lose_power_at is not None and self.mutations >= self.lose_power_at:
                self.power_loss(self.loss_mode)
                raise PowerLost(errno.EIO, "simulated power loss: the machine is off")
        armed = self._armed.get(op)
        if armed is None:
            return
        armed.seen += 1
        if armed.seen == armed.nth or (armed.sticky and armed.seen > armed.nth):
            self.failures[op] += 1
            raise OSError(armed.error, f"injected: {os.strerror(armed.error)}")

    # -- the model -------------------------------------------------------------------------------------------
    def _file(self, path: str) -> _File:
        """The model of path; a file met for the first time is taken as durable (it predates this boot)."""
        known = self._files.get(path)
        if known is None:
            try:
                data = Path(path).read_bytes()
            except FileNotFoundError:
                data = b""
            known = self._files[path] = _File(bytearray(data))
        return known

    def _dir_names(self, directory: str) -> set[str]:
        names = self._names.get(directory)
        if names is None:
            try:
                names = set(os.listdir(directory))
            except FileNotFoundError:
                names = set()
            self._names[directory] = names
            for name in names:
                self._file(os.path.join(directory, name))
        return names

    # -- Storage ---------------------------------------------------------------------------------------------
    def makedirs(self, path: str) -> None:
        with self._lock:
            self._enter("makedirs", mutating=False)
            os.makedirs(path, exist_ok=True)
            self._dir_names(path)  # a directory that holds the log is taken as durable itself

    def listdir(self, path: str) -> list[str]:
        with self._lock:
            self._enter("listdir", mutating=False)
            self._dir_names(path)
            return os.listdir(path)

    def size(self, path: str) -> int:
        with self._lock:
            self._enter("size", mutating=False)
            return super().size(path)

    def open(self, path: str, flags: int, mode: int = 0o644) -> int:
        with self._lock:
            creates = bool(flags & os.O_CREAT) and not os.path.exists(path)
            self._enter("open", mutating=creates)
            directory = os.path.dirname(path)
            self._dir_names(directory)
            if not creates:
                self._file(path)
            fd = super().open(path, flags, mode)
            if creates:
                self._files[path] = _File(bytearray())
                self._dir_ops.setdefault(directory, []).append(_Op(self.clock(), "create", 0, path.encode()))
            self._fds[fd] = path
            return fd

    def close(self, fd: int) -> None:
        with self._lock:
            self.calls["close"] += 1  # closing always works, even with the power off (the process ends)
            self._fds.pop(fd, None)
            super().close(fd)

    def lock(self, fd: int) -> None:
        with self._lock:
            self._enter("lock", mutating=False)
            super().lock(fd)

    def write(self, fd: int, data: memoryview) -> int:
        with self._lock:
            path = self._fds[fd]
            offset = os.fstat(fd).st_size  # the log opens its segments O_APPEND
            try:
                self._enter("write")
            except PowerLost:
                raise
            except OSError:
                armed = self._armed["write"]
                keep = armed.tear if armed.tear is not None else self.rng.randrange(len(data) + 1)
                if keep:  # a short write reached the file before the error (a disk that filled up mid-write)
                    done = os.write(fd, data[:keep])
                    self._file(path).pending.append(_Op(self.clock(), "write", offset, bytes(data[:done])))
                raise
            done = super().write(fd, data)
            self._file(path).pending.append(_Op(self.clock(), "write", offset, bytes(data[:done])))
            return done

    def fsync(self, fd: int) -> None:
        with self._lock:
            self._enter("fsync")
            super().fsync(fd)
            model = self._file(self._fds[fd])
            for op in model.pending:
                _apply(model.durable, op)
            model.pending.clear()

    def fsync_dir(self, path: str) -> None:
        with self._lock:
            self._enter("fsync_dir")
            super().fsync_dir(path)
            names = self._dir_names(path)
            for op in self._dir_ops.pop(path, []):
                _apply_name(names, op)

    def ftruncate(self, fd: int, length: int) -> None:
        with self._lock:
            self._enter("ftruncate")
            super().ftruncate(fd, length)
            self._file(self._fds[fd]).pending.append(_Op(self.clock(), "truncate", length))

    def map(self, fd: int, length: int):  # type: ignore[no-untyped-def]
        with self._lock:
            self._enter("map", mutating=False)
            return super().map(fd, length)

    def unlink(self, path: str) -> None:
        with self._lock:
            self._enter("unlink")
            super().unlink(path)
            directory = os.path.dirname(path)
            self._dir_names(directory)
            self._dir_ops.setdefault(directory, []).append(_Op(self.clock(), "unlink", 0, path.encode()))

    def rename(self, src: str, dst: str) -> None:
        """Not part of Storage: the log never renames. Here so that a test can arm it and see it never called."""
        with self._lock:
            self._enter("rename")
            os.rename(src, dst)

    # -- power loss ------------------------------------------------------------------------------------------
    def power_loss(self, mode: str = "random") -> dict[str, bytes]:
        """Cut the power now: compute what the disk keeps (path -> bytes) and fail every later call.

        ``mode``: "drop" loses every pending change, "keep" keeps them all (like a crash of the process
        alone), "prefix" keeps each file's and directory's changes in order up to a random point (the one
        there torn), "random" gives each change its own fate - kept, dropped, torn or kept sector by sector -
        so later writes may survive earlier ones. Changes older than ``writeback_after`` are kept first.
        """
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        with self._lock:
            if self.image is not None:
                return self.image
            now = self.clock()
            self.lost_at = now
            horizon = None if self.writeback_after is None else now - self.writeback_after
            image: dict[str, bytes] = {}
            for directory in list(self._names) + [d for d in self._dir_ops if d not in self._names]:
                names = set(self._dir_names(directory))
                ops = self._dir_ops.get(directory, [])
                for op, fate in zip(ops, self._fates(ops, mode, horizon), strict=True):
                    if fate != "drop":
                        _apply_name(names, op)
                for name in sorted(names):
                    path = os.path.join(directory, name)
                    image[path] = self._survivor(self._file(path), mode, horizon)
            self.image = image
            return image

    def _fates(self, ops: list[_Op], mode: str, horizon: float | None) -> list[str]:
        """What becomes of each pending change: "keep", "drop", "tear" or "sectors"."""
        rng = self.rng
        fates = []
        cut = rng.randrange(len(ops) + 1)  # "prefix": the first change not kept whole
        for i, op in enumerate(ops):
            if horizon is not None and op.at <= horizon:
                fates.append("keep")  # the kernel wrote it back on its own
            elif mode == "keep":
                fates.append("keep")
            elif mode == "drop":
                fates.append("drop")
            elif mode == "prefix":
                fates.append("keep" if i < cut else "tear" if i == cut else "drop")
            else:
                fates.append(rng.choice(("keep", "drop", "tear", "sectors")))
        return fates

    def _survivor(self, model: _File, mode: str, horizon: float | None) -> bytes:
        data = bytearray(model.durable)
        for op, fate in zip(model.pending, self._fates(model.pending, mode, horizon), strict=True):
            if fate == "drop":
                continue
            if op.kind == "truncate" or fate == "keep":
                _apply(data, op)
            elif fate == "tear":
                _apply(data, _Op(op.at, "write", op.offset, op.data[: self.rng.randrange(len(op.data) + 1)]))
            else:  # each sector of the write on its own (a disk writes sectors, not writes)
                start = op.offset
                while start < op.offset + len(op.data):
                    end = min(op.offset + len(op.data), (start // SECTOR + 1) * SECTOR)
                    if self.rng.random() < 0.5:
                        _apply(data, _Op(op.at, "write", start, op.data[start - op.offset:end - op.offset]))
                    start = end
        return bytes(data)

    def unsynced(self) -> int:
        """Bytes written and not yet made durable, over every file."""
        with self._lock:
            return sum(len(op.data) for model in self._files.values() for op in model.pending)


def _apply(data: bytearray, op: _Op) -> None:
    if op.kind == "truncate":
        del data[op.offset:]
        return
    end = op.offset + len(op.data)
    if len(data) < end:
        data.extend(bytes(end - len(data)))  # a hole before the write reads back as zeros
    data[op.offset:end] = op.data


def _apply_name(names: set[str], op: _Op) -> None:
    name = os.path.basename(op.data.decode())
    if op.kind == "create":
        names.add(name)
    else:
        names.discard(name)


def write_image(directory: str | os.PathLike[str], image: dict[str, bytes]) -> None:
    """Make directory hold exactly what the power loss left (the machine boots again)."""
    directory = os.fspath(directory)
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    for path, data in image.items():
        if os.path.dirname(path) == directory:
            with open(path, "wb") as f:
                f.write(data)

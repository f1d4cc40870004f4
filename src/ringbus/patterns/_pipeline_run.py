"""One :meth:`Pipeline.run <ringbus.patterns.pipeline.Pipeline.run>` in processes: the channels, the stage
processes, the source thread and the sink."""

from __future__ import annotations

import functools
import itertools
import logging
import multiprocessing
import operator
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ringbus.errors import Closed, PeerGone
from ringbus.patterns._pipeline_stage import (
    COUNTERS,
    DONE,
    EMITTED,
    FAILED,
    FLUSH,
    READY,
    RECEIVED,
    DeadLetter,
    PipelineError,
    Stage,
    WorkerSpec,
    process_main,
)
from ringbus.patterns._pipeline_wire import (
    DATA,
    DEAD,
    POLL,
    FrameTooLarge,
    Reorderer,
    ShmInlet,
    ShmOutlet,
    Stopped,
    ZmqInlet,
    ZmqOutlet,
    closed_quietly,
    decode,
    pack,
    pack_seq,
    seq_items,
)

if TYPE_CHECKING:
    from ringbus.patterns.pipeline import Pipeline

__all__ = ["Run", "log"]

log = logging.getLogger("ringbus.pipeline")

_SPAWN = multiprocessing.get_context("spawn")
START_TIMEOUT = 60.0  # seconds for every stage process to start and attach
JOIN_TIMEOUT = 10.0  # seconds a stage process has to exit after its end of stream


class Run:
    """The stage processes, channels, source thread and sink of one :meth:`Pipeline.run`."""

    def __init__(self, pipeline: Pipeline, items: Iterator[Any], specs: list[tuple[Stage, bytes]]) -> None:
        self.p = pipeline
        self.items = items
        self.specs = specs
        self.token = uuid.uuid4().hex[:12]
        self.stopping = threading.Event()
        self.source_error: BaseException | None = None
        self.source: threading.Thread | None = None
        self.workers: list[tuple[Stage, int, Any]] = []  # (stage, index, process)
        self.slots: list[list[int]] = []  # per stage: counter slots of its processes
        width = len(COUNTERS)
        total = sum(stage.processes for stage in pipeline.stages)
        self.counts: Any = _SPAWN.RawArray("q", total * width)
        self.errors: Any = _SPAWN.SimpleQueue()
        self.reported: list[tuple[str, int, str, bool]] = []  # (stage, process, error, secondary)
        self.flags: Any = _SPAWN.RawArray("b", 1)  # [0]: the sink has everything (stage processes may exit)
        self.channels: list[Any] = []  # every ShmChannel we created (shm)
        self.zdir: str | None = None
        self.zcontext: Any = None
        self.sink: Any = None
        self.reorder = Reorderer() if pipeline.ordered else None
        pipeline._reorder = self.reorder
        self.widths = [1] + [stage.processes for stage in pipeline.stages] + [1]  # source, stages, sink

    # link k joins level k's senders to level k + 1's receivers (level 0 = the source, the last = the sink)
    def _shm_names(self, link: int, sender: int) -> list[str]:
        return [f"rbpipe-{self.token}-{link}-{sender}-{r}" for r in range(self.widths[link + 1])]

    def _shm_inputs(self, link: int, receiver: int) -> list[str]:
        return [f"rbpipe-{self.token}-{link}-{s}-{receiver}" for s in range(self.widths[link])]

    def _endpoint(self, level: int, receiver: int) -> str:
        assert self.zdir is not None
        return f"ipc://{self.zdir}/{level}-{receiver}"

    def start(self) -> None:
        p = self.p
        levels = len(self.widths)
        if p.transport == "shm":
            from ringbus import ShmChannel

            self.by_name = {}
            for link in range(levels - 1):
                for sender in range(self.widths[link]):
                    for name in self._shm_names(link, sender):
                        ch = ShmChannel.create(name, p.channel_bytes)
                        self.channels.append(ch)
                        self.by_name[name] = ch
            limit = min(ch.max_message for ch in self.channels)
        else:
            import zmq

            self.zdir = tempfile.mkdtemp(prefix="rbpipe-")
            self.zcontext = zmq.Context()
            limit = p.channel_bytes // 2 - 8
        self.limit = limit
        slot = 0
        for s, (stage, pickled) in enumerate(self.specs):
            level = s + 1
            slots = []
            for index in range(stage.processes):
                if p.transport == "shm":
                    inlet: tuple[Any, ...] = ("shm", self._shm_inputs(level - 1, index))
                    outlet: tuple[Any, ...] = ("shm", self._shm_names(level, index))
                else:
                    inlet = ("zmq", self._endpoint(level, index), self.widths[level - 1], p.hwm)
                    outlet = ("zmq", [self._endpoint(level + 1, r) for r in range(self.widths[level + 1])], p.hwm,
                              limit)
                spec = WorkerSpec(stage.name, pickled, stage.stream, stage.fan_out, index, slot, inlet, outlet,
                                  p.ordered, p.batch)
                process = _SPAWN.Process(target=process_main, args=(spec, self.counts, self.errors, self.flags),
                                         daemon=True,
                                         name=f"ringbus-pipe-{stage.name}-{index}")
                process.start()
                self.workers.append((stage, index, process))
                slots.append(slot)
                slot += len(COUNTERS)
            self.slots.append(slots)
        self._wait_ready()
        for ch in self.channels:  # every process has attached: a crash of ours can no longer leave names behind
            ch.unlink()
        self.source = threading.Thread(target=self._feed, name="ringbus-pipe-source", daemon=True)
        self.source.start()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while not all(self.counts[slot + READY] for slots in self.slots for slot in slots):
            self._check_workers()
            if time.monotonic() > deadline:
                raise PipelineError(f"the stage processes did not all start within {START_TIMEOUT:g} s")
            time.sleep(0.01)
        log.info("pipeline %s: %d stage processes started", self.token, len(self.workers))

    def _check_workers(self) -> None:
        """Raise PipelineError if a stage process ended badly, naming the one that failed first."""
        if any(process.exitcode not in (None, 0) for _, _, process in self.workers):
            raise PipelineError(self._reason())

    def _reason(self) -> str:
        while not self.errors.empty():
            self.reported.append(self.errors.get())
        reported = self.reported
        # A stage that raised, or a process that died without a word (killed), is the cause; the processes
        # that reported losing a neighbour (secondary) only saw it go.
        primary = [r for r in reported if not r[3]]
        if primary:
            name, index, text, _ = primary[0]
            return f"stage {name!r} (process {index}) failed: {text}"
        said = {(r[0], r[1]) for r in reported}
        for stage, index, process in self.workers:
            code = process.exitcode
            if code not in (None, 0) and (stage.name, index) not in said:
                how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
                return f"stage {stage.name!r} (process {index}) {how}"
        name, index, text, _ = reported[0]
        return f"stage {name!r} (process {index}) failed: {text}"

    def check_sink(self) -> None:
        if self.source_error is not None:
            raise self.source_error
        self._check_workers()
        if self.stopping.is_set():
            raise Stopped("pipeline stopped")

    # -- the source (a thread) ------------------------------------------------------------------------------------
    def _feed(self) -> None:
        p = self.p
        outlet: Any = None

        def check() -> None:
            if self.stopping.is_set():
                raise Stopped("pipeline stopped")

        try:
            if p.transport == "shm":
                outlet = ShmOutlet([self.by_name[n] for n in self._shm_names(0, 0)], -1, ordered=p.ordered,
                                   check=check)
            else:
                outlet = ZmqOutlet([self._endpoint(1, r) for r in range(self.widths[1])], -1, ordered=p.ordered,
                                   check=check, hwm=p.hwm, limit=self.limit, context=self.zcontext)
            self._feed_items(outlet)
            if p.transport == "zmq":  # keep the sockets until the sink has it all (see ZmqOutlet.end)
                outlet.end()
                while not self.flags[0] and not self.stopping.wait(0.05):
                    pass
                out, outlet = outlet, None
                out.close(clean=False)
            else:
                out, outlet = outlet, None
                out.close(clean=True)
        except BaseException as exc:  # noqa: BLE001 - raised again by the sink, in the caller's thread
            if not isinstance(exc, (Stopped, Closed)):
                self.source_error = exc
            closed_quietly(outlet)

    def _feed_items(self, outlet: Any) -> None:
        """Send the items in frames of ``batch`` (fewer where the source yields FLUSH, and at its end)."""
        p = self.p
        batch, limit, ordered, items = p.batch, self.limit, p.ordered, self.items
        not_flush = functools.partial(operator.is_not, FLUSH)
        end = object()
        seq = 0
        head: list[Any] = []
        while not self.stopping.is_set():
            # takewhile stops at (and swallows) a FLUSH; islice at a full batch. Both run in C.
            chunk = head + list(itertools.islice(itertools.takewhile(not_flush, items), batch - len(head)))
            head = []
            if chunk:
                try:
                    frames = pack_seq(seq, None, chunk, limit) if ordered else pack(DATA, chunk, limit)
                except FrameTooLarge as exc:
                    raise FrameTooLarge(f"the source's {exc}") from None
                except (TypeError, OverflowError, ValueError) as exc:
                    raise TypeError(f"an item from the source cannot be encoded ({exc}): items are msgpack types "
                                    "(None, bool, int, float, str, bytes, list, dict)") from None
                for frame in frames:
                    outlet.send(frame)
                seq += len(chunk)
                p._sent += len(chunk)
            if len(chunk) < batch:  # a FLUSH, or the end
                after = next(items, end)
                if after is end:
                    return
                if after is not FLUSH:
                    head = [after]
        raise Stopped("pipeline stopped")

    # -- the sink (the caller's thread) ---------------------------------------------------------------------------
    def outputs(self) -> Iterator[Any]:
        p = self.p
        if p.transport == "shm":
            names = self._shm_inputs(len(self.widths) - 2, 0)
            self.sink = ShmInlet([self.by_name[n] for n in names], check=self.check_sink)
        else:
            self.sink = ZmqInlet(self._endpoint(len(self.widths) - 1, 0), self.widths[-2], check=self.check_sink,
                                 hwm=p.hwm, context=self.zcontext)
        reorder = self.reorder
        try:
            for frames in self.sink.batches():
                for frame in frames:
                    kind = frame[1]
                    if kind == DEAD:
                        for record in decode(frame)[1]:
                            p._deliver_dead(DeadLetter(*record))
                    elif reorder is not None:
                        _, first, items_per_seq, flat = decode(frame)
                        for run in reorder.push(first, seq_items(items_per_seq, flat), flat):
                            p._delivered += len(run)
                            yield from run
                    else:
                        outs = decode(frame)[1]
                        p._delivered += len(outs)
                        yield from outs
        except PeerGone:
            self._check_workers_after_end()
            raise
        if self.source_error is not None:
            raise self.source_error
        self.flags[0] = 1
        self._join()
        if reorder is not None and reorder.held:
            raise PipelineError(f"{reorder.held} outputs were still waiting for an earlier item at the end")

    def _check_workers_after_end(self) -> None:
        deadline = time.monotonic() + 2.0  # the process that lost our channel is exiting: let it say why
        while time.monotonic() < deadline:
            if any(proc.exitcode not in (None, 0) for _, _, proc in self.workers):
                self._check_workers()
            time.sleep(0.02)

    def _join(self) -> None:
        deadline = time.monotonic() + JOIN_TIMEOUT
        for _, _, process in self.workers:
            process.join(max(0.0, deadline - time.monotonic()))
        self._check_workers()

    # -- counts and teardown --------------------------------------------------------------------------------------
    def stage_counts(self) -> list[tuple[int, int, int, int]]:
        """Per stage: received, done, emitted, failed (summed over its processes)."""
        counts = self.counts
        rows = []
        for slots in self.slots:
            rows.append(tuple(sum(counts[s + f] for s in slots) for f in (RECEIVED, DONE, EMITTED, FAILED)))
        while len(rows) < len(self.p.stages):
            rows.append((0, 0, 0, 0))
        return rows

    def snapshot(self) -> list[tuple[int, int, int, int]]:
        return self.stage_counts()

    def close(self) -> None:
        self.stopping.set()
        if self.source is not None:
            self.source.join(2 * POLL + 5.0)
        closed_quietly(self.sink)
        for _, _, process in self.workers:
            if process.is_alive():
                process.join(0.5 if self.source_error is None else 0.0)
            if process.is_alive():
                process.terminate()
        for _, _, process in self.workers:
            process.join(5.0)
            if process.is_alive():
                process.kill()
                process.join(5.0)
        for ch in self.channels:
            try:
                ch.close()
            except (Closed, OSError):
                pass
        if self.zcontext is not None:
            self.zcontext.destroy(linger=0)
        if self.zdir is not None:
            shutil.rmtree(self.zdir, ignore_errors=True)
        self.errors.close()

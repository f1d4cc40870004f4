"""Pipes and filters: a chain of stages, each in one or more processes, joined by bounded shared-memory channels.

A stage is a plain function (``item -> output | None | iterator of outputs``) or a generator over the whole
stream (``Stage(fn, stream=True)``). :meth:`Pipeline.run` starts every stage in processes of its own (``spawn``)
connected by :class:`ringbus.ShmChannel` (or ZeroMQ PUSH/PULL sockets with ``transport="zmq"``), feeds the items from a thread of the calling process and
yields what the last stage returns. The channels are bounded, so a slow stage slows the source: memory stays
bounded end to end. A failing item goes to the dead-letter sink with its stage's name and error while the rest
flow on. ``ordered=True`` brings the outputs back in source order. :meth:`Pipeline.run_inline` chains the same
stages in the calling thread, for light work; :class:`BusPipeline` (and :meth:`Pipeline.from_kafka_json`)
chains stages through Bus queues when every hop must be durable.

Items travel as msgpack (msgspec): None, bool, int (64-bit), float, str, bytes, list, dict (and tuple, set,
bytearray, memoryview, datetime, dataclasses, which arrive as list, list, bytes, bytes, datetime, dict). Bytes
pass as they are. :meth:`Pipeline.run_inline` passes objects untouched.

``python -m ringbus.patterns.pipeline --stage module:function ...`` runs a pipeline as a Unix filter from
standard input to standard output (see :func:`main`).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import multiprocessing
import os
import select
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Literal, Sequence

from ringbus.errors import Closed, PeerGone, RingbusError
from ringbus.patterns._lifecycle import check_count
from ringbus.patterns._pipeline_bus import BusPipeline, DeadLetterQueue, parse_kafka_json
from ringbus.patterns._pipeline_stage import (
    COUNTERS,
    DONE,
    EMITTED,
    FAILED,
    READY,
    RECEIVED,
    DeadLetter,
    Stage,
    StageFailed,
    WorkerSpec,
    apply_item,
    error_text,
    process_main,
)
from ringbus.patterns._pipeline_wire import (
    DATA,
    DEAD,
    POLL,
    SEQ,
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
)
from ringbus.patterns._stats import PatternStats, StatsCounter

__all__ = ["Pipeline", "Stage", "DeadLetter", "DeadLetterQueue", "PipelineError", "PipelineStats", "StageStats",
           "BusPipeline", "main", "FLUSH"]

log = logging.getLogger("ringbus.pipeline")

_SPAWN = multiprocessing.get_context("spawn")
Transport = Literal["shm", "zmq"]
START_TIMEOUT = 60.0  # seconds for every stage process to start and attach
JOIN_TIMEOUT = 10.0  # seconds a stage process has to exit after its end of stream


class _Flush:
    def __repr__(self) -> str:
        return "ringbus.patterns.pipeline.FLUSH"


FLUSH: Any = _Flush()
"""Yield this from a live source to send the items batched so far now (a source that waits for input)."""


class PipelineError(RingbusError):
    """A run could not finish: a stage process died or a stream stage raised; names the stage and the reason."""


@dataclass(frozen=True)
class StageStats:
    """One stage's counts, summed over its processes."""

    name: str
    processes: int
    received: int  # items taken from the channel
    emitted: int  # outputs passed on
    failed: int  # items dead-lettered (and outputs that could not be encoded)


@dataclass(frozen=True)
class PipelineStats(PatternStats):
    """:class:`PatternStats` plus a pipeline's own counts.

    ``processed`` counts outputs delivered by the last stage, ``failed`` and ``dead_lettered`` the items sent to
    the dead-letter sink, ``in_flight`` items a stage has taken and not finished; ``retried`` is always 0.
    """

    sent: int  # items the source put into the pipeline
    stages: tuple[StageStats, ...]
    reorder_held: int  # ordered runs: outputs waiting at the sink for an earlier one now
    reorder_peak: int  # ... and the most that ever waited


def _check_stage(stage: object, index: int) -> Stage:
    if isinstance(stage, Stage):
        return stage
    if callable(stage):
        return Stage(stage)
    raise TypeError(f"stages[{index}] must be a callable or a Stage, not {type(stage).__name__}")


class Pipeline:
    """Stages chained in order: each stage's outputs are the next one's items.

    Parameters
    ----------
    stages : sequence of callables or :class:`Stage`
        At least one. A bare callable is ``Stage(fn)``: one process, one output per item (None drops it, an
        iterator gives several).
    ordered : bool
        Yield outputs in the order of the items that made them (sequence numbers and a reorder buffer at the
        sink). Without it a stage of several processes may reorder. A stream stage in an ordered pipeline
        must have one process.
    dead_letter : callable or None
        Called with a :class:`DeadLetter` for each item a stage raised on (from the thread that iterates
        :meth:`run`); a :class:`DeadLetterQueue` sends them to a Bus queue. None: they are logged and counted.
        An exception from it stops the run.
    transport : {"shm", "zmq"}
        ShmChannel between the processes (the default), or ZeroMQ PUSH/PULL over ``ipc://`` sockets. Both
        stay on one host; for stages on several hosts use :class:`BusPipeline` on the broker.
    channel_bytes : int
        Capacity of each channel (each pair of a sender and a receiver has one); the largest frame is half of
        it. This is what bounds memory: at most about ``channel_bytes`` per link and pair is in flight.
        With ``transport="zmq"``, frames queue by count instead (``hwm`` per socket and direction).
    batch : int
        Items per frame from the source (and from a stream stage). Larger batches cost fewer system calls.
    linger : float
        Seconds the source holds a part-filled batch when its items come slowly (checked at each item; yield
        :data:`FLUSH` from a source that blocks).
    hwm : int
        ZeroMQ high-water mark in frames (``transport="zmq"``).
    """

    FLUSH = FLUSH

    def __init__(self, stages: Sequence[Callable[..., Any] | Stage], *, ordered: bool = False,
                 dead_letter: Callable[[DeadLetter], Any] | None = None, transport: Transport = "shm",
                 channel_bytes: int = 1 << 20, batch: int = 256, linger: float = 0.05, hwm: int = 16) -> None:
        if isinstance(stages, (str, bytes)) or not isinstance(stages, Sequence):
            raise TypeError(f"stages must be a list of callables or Stage objects, not {type(stages).__name__}")
        if not stages:
            raise ValueError("stages must hold at least one stage")
        checked = [_check_stage(stage, i) for i, stage in enumerate(stages)]
        seen: dict[str, int] = {}
        for i, stage in enumerate(checked):  # names label dead letters and stats: make them unique
            if stage.name in seen:
                seen[stage.name] += 1
                checked[i] = Stage(stage.fn, processes=stage.processes, name=f"{stage.name}#{seen[stage.name]}",
                                   stream=stage.stream, fan_out=stage.fan_out)
            else:
                seen[stage.name] = 1
        if ordered:
            for stage in checked:
                if stage.stream and stage.processes > 1:
                    raise ValueError(f"stage {stage.name!r}: a stream stage in an ordered pipeline must have one "
                                     f"process (it sees the items in order), not {stage.processes}")
        if dead_letter is not None and not callable(dead_letter):
            raise TypeError(f"dead_letter must be callable (or a DeadLetterQueue) or None, not "
                            f"{type(dead_letter).__name__}")
        if transport not in ("shm", "zmq"):
            raise ValueError(f"transport must be 'shm' or 'zmq', got {transport!r}")
        check_count("channel_bytes", channel_bytes, minimum=256)
        check_count("batch", batch)
        check_count("hwm", hwm)
        if isinstance(linger, bool) or not isinstance(linger, (int, float)) or not 0 <= linger < float("inf"):
            raise ValueError(f"linger must be a finite number of seconds >= 0, got {linger!r}")
        self.stages = tuple(checked)
        self.ordered = bool(ordered)
        self.dead_letter = dead_letter
        self.transport = transport
        self.channel_bytes = channel_bytes
        self.batch = batch
        self.linger = float(linger)
        self.hwm = hwm
        self._run: _Run | None = None
        self._inline: list[list[int]] | None = None
        self._counter = StatsCounter()
        self._delivered = 0
        self._dead = 0
        self._sent = 0
        self._reorder: Reorderer | None = None
        self._final: list[tuple[int, int, int, int]] | None = None

    # -- running --------------------------------------------------------------------------------------------------
    def run(self, items: Iterable[Any]) -> Iterator[Any]:
        """Start the stage processes, feed ``items`` and yield the last stage's outputs until all are through.

        Nothing starts until the first ``next()``. Stopping the iteration early (``break``, ``close()``) stops
        the stage processes. Stage functions must be importable (module-level), since processes are spawned.

        Raises
        ------
        PipelineError
            A stage process died, a stream stage raised, or the processes did not start.
        TypeError
            An item (from ``items``) is not a msgpack type, or a stage function cannot be sent to a process.
        """
        specs = [(stage, stage.pickled()) for stage in self.stages]  # TypeError now, naming the stage
        if self._run is not None:
            raise RuntimeError("this pipeline is running already; make another Pipeline for a second run")
        return self._running(iter(items), specs)

    def _running(self, items: Iterator[Any], specs: list[tuple[Stage, bytes]]) -> Iterator[Any]:
        self._reset()
        run = _Run(self, items, specs)
        self._run = run
        try:
            run.start()
            yield from run.outputs()
        finally:
            run.close()
            self._run = None
            self._final = run.snapshot()

    def run_inline(self, items: Iterable[Any]) -> Iterator[Any]:
        """Chain the stages in the calling thread: no processes, no encoding (objects pass untouched).

        Same results as :meth:`run` with ``ordered=True`` (stage processes are ignored); failing items go to
        the dead-letter sink the same way.
        """
        counts = [[0, 0, 0] for _ in self.stages]
        self._inline = counts
        self._reset()
        stream: Iterator[Any] = self._counting_source(iter(items))
        for stage, count in zip(self.stages, counts):
            stream = self._inline_stream(stage, stream, count) if stage.stream else \
                self._inline_items(stage, stream, count)
        for out in stream:
            self._delivered += 1
            yield out

    def _counting_source(self, items: Iterator[Any]) -> Iterator[Any]:
        for item in items:
            if item is FLUSH:
                continue
            self._sent += 1
            yield item

    def _inline_items(self, stage: Stage, upstream: Iterator[Any], count: list[int]) -> Iterator[Any]:
        fn, fan_out, name = stage.fn, stage.fan_out, stage.name
        for item in upstream:
            count[0] += 1
            out: list[Any] = []
            try:
                apply_item(fn, fan_out, item, out)
            except Exception as exc:  # noqa: BLE001 - a failing item is dead-lettered, the rest flow
                count[2] += 1
                self._deliver_dead(DeadLetter(name, type(exc).__name__, error_text(exc), item))
                continue
            count[1] += len(out)
            yield from out

    def _inline_stream(self, stage: Stage, upstream: Iterator[Any], count: list[int]) -> Iterator[Any]:
        def taken() -> Iterator[Any]:
            for item in upstream:
                count[0] += 1
                yield item

        try:
            for out in stage.fn(taken()):
                count[1] += 1
                yield out
        except Exception as exc:
            raise PipelineError(f"stream stage {stage.name!r} raised {error_text(exc)}; a stream stage keeps "
                                "state, so it is not restarted: catch per-item errors inside it") from exc

    def _reset(self) -> None:
        self._counter = StatsCounter()
        self._delivered = self._dead = self._sent = 0
        self._reorder = None
        self._final = None

    def _deliver_dead(self, letter: DeadLetter) -> None:
        self._dead += 1
        if self.dead_letter is not None:
            self.dead_letter(letter)
        elif self._dead & (self._dead - 1) == 0:  # 1, 2, 4, ...: a flood logs O(log n) lines
            log.warning("stage %r dead-lettered an item (%d so far; pass dead_letter= to keep them): %s",
                        letter.stage, self._dead, letter.error)

    # -- looking at it --------------------------------------------------------------------------------------------
    def stats(self) -> PipelineStats:
        """Counts of the current run (or of the last one, once it ended)."""
        run = self._run
        if run is not None:
            rows = run.stage_counts()
        elif self._final is not None:
            rows = self._final
        elif self._inline is not None:
            rows = [(c[0], c[0], c[1], c[2]) for c in self._inline]
        else:
            rows = [(0, 0, 0, 0) for _ in self.stages]
        delta = self._delivered - self._counter.processed
        if delta:
            self._counter.add(processed=delta)
        base = self._counter.snapshot()
        stages = tuple(StageStats(s.name, s.processes, r[0], r[2], r[3]) for s, r in zip(self.stages, rows))
        reorder = self._reorder
        return PipelineStats(
            processed=self._delivered, failed=self._dead, retried=0, dead_lettered=self._dead,
            in_flight=sum(r[0] - r[1] for r in rows), rate=base.rate, sent=self._sent, stages=stages,
            reorder_held=reorder.held if reorder else 0, reorder_peak=reorder.peak if reorder else 0)

    def __repr__(self) -> str:
        return f"<Pipeline {' -> '.join(repr(s) for s in self.stages)}{' ordered' if self.ordered else ''}>"

    # -- durable pipelines ------------------------------------------------------------------------------------------
    @staticmethod
    def from_kafka_json(doc: str | bytes | dict[str, Any], registry: dict[str, Callable[[Any], Any]], bus: Any, *,
                        workers: int = 1, max_attempts: int = 1) -> BusPipeline:
        """A durable pipeline from the Kafka-style description users already write; topics become queues.

        ``{"input_topic": "raw_orders", "filters": [{"name": "validateOrder", "output_topic":
        "validated_orders"}, ...]}``: each filter consumes the previous topic's queue and sends to its
        ``output_topic``'s queue (ack after send). ``registry`` maps filter names to functions; ``bus`` is a
        Bus (its url is used: each worker opens its own) or a url. Optional fields: ``"workers"`` per filter,
        ``"dead_letter_topic"`` at the top (default ``"<input_topic>.dlq"``).

        Raises
        ------
        ValueError
            An unknown or missing field (named), a filter name missing from ``registry`` (named), bad JSON.
        """
        return parse_kafka_json(doc, registry, bus, workers=workers, max_attempts=max_attempts)


# --- one run in processes ----------------------------------------------------------------------------------------

class _Run:
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
        """Raise PipelineError if a stage process ended badly (with the first reason it reported)."""
        for stage, index, process in self.workers:
            code = process.exitcode
            if code is not None and code != 0:
                raise PipelineError(self._reason(stage, index, code))

    def _reason(self, stage: Stage, index: int, code: int) -> str:
        reported = []
        while not self.errors.empty():
            reported.append(self.errors.get())
        # The first stage process to fail is the cause; the others saw their neighbour go (secondary).
        primary = [r for r in reported if not r[3]] or reported
        if primary:
            name, idx, text, _ = primary[0]
            return f"stage {name!r} (process {idx}) failed: {text}"
        return f"stage {stage.name!r} (process {index}) exited with code {code} without saying why"

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
        p = self.p
        batch, linger, limit, ordered = p.batch, p.linger, self.limit, p.ordered
        buf: list[Any] = []
        started = 0.0
        seq = 0
        clock = time.monotonic

        def flush() -> None:
            nonlocal seq
            try:
                frames = pack(SEQ, [[x] for x in buf], limit, seq) if ordered else pack(DATA, buf, limit)
            except FrameTooLarge as exc:
                raise FrameTooLarge(f"the source's {exc}") from None
            except (TypeError, OverflowError, ValueError) as exc:
                raise TypeError(f"an item from the source cannot be encoded ({exc}): items are msgpack types "
                                "(None, bool, int, float, str, bytes, list, dict)") from None
            for frame in frames:
                outlet.send(frame)
            seq += len(buf)
            p._sent += len(buf)
            buf.clear()

        for item in self.items:
            if self.stopping.is_set():
                raise Stopped("pipeline stopped")
            if item is FLUSH:
                if buf:
                    flush()
                continue
            if not buf:
                started = clock()
            buf.append(item)
            if len(buf) >= batch or (linger and clock() - started >= linger):
                flush()
        if buf:
            flush()

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
                        _, first, lists = decode(frame)
                        for run in reorder.push(first, lists):
                            for outs in run:
                                if outs:
                                    p._delivered += len(outs)
                                    yield from outs
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
        return rows  # type: ignore[return-value]

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


# --- the Unix filter ---------------------------------------------------------------------------------------------

def _resolve(ref: str) -> Callable[..., Any]:
    module_name, sep, qualname = ref.partition(":")
    if not sep or not module_name or not qualname:
        raise ValueError(f"--stage {ref!r}: expected module:function, e.g. mypkg.filters:parse")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--stage {ref!r}: cannot import {module_name!r}: {exc}") from None
    for part in qualname.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"--stage {ref!r}: {module_name!r} has no {qualname!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"--stage {ref!r}: {qualname!r} is not callable")
    return obj  # type: ignore[no-any-return]


def _chunks(fd: int) -> Iterator[Any]:
    """Chunks of bytes read from ``fd`` until its end, with FLUSH whenever no more input is ready now."""
    while True:
        ready, _, _ = select.select([fd], [], [], 0)
        if not ready:
            yield FLUSH
            select.select([fd], [], [])
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            return
        yield chunk


def _read_lines(fd: int) -> Iterator[Any]:
    """Lines of ``fd`` as str (undecodable bytes kept as surrogates), and FLUSH when input pauses."""
    pending = b""
    for chunk in _chunks(fd):
        if chunk is FLUSH:
            yield FLUSH
            continue
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", "surrogateescape")
    if pending:
        yield pending.decode("utf-8", "surrogateescape")


def _msgpack_end(buf: bytes | bytearray, pos: int) -> int | None:
    """Offset just past the msgpack object at ``pos``, or None if ``buf`` ends inside it."""
    need = 1
    n = len(buf)
    while need:
        if pos >= n:
            return None
        b = buf[pos]
        need -= 1
        if b <= 0x7f or b >= 0xe0:
            pos += 1
        elif b <= 0x8f:
            need += 2 * (b & 0x0f)
            pos += 1
        elif b <= 0x9f:
            need += b & 0x0f
            pos += 1
        elif b <= 0xbf:
            pos += 1 + (b & 0x1f)
        elif b in _MSGPACK_FIXED:
            pos += _MSGPACK_FIXED[b]
        elif b in _MSGPACK_SIZED:
            width, ext = _MSGPACK_SIZED[b]
            if pos + 1 + width > n:
                return None
            pos += 1 + width + ext + int.from_bytes(buf[pos + 1:pos + 1 + width], "big")
        elif b in _MSGPACK_COUNTED:
            width, per = _MSGPACK_COUNTED[b]
            if pos + 1 + width > n:
                return None
            need += per * int.from_bytes(buf[pos + 1:pos + 1 + width], "big")
            pos += 1 + width
        else:
            raise ValueError(f"byte 0x{b:02x} at offset {pos} does not start a msgpack object")
    return pos if pos <= n else None


# msgpack type bytes: whole length; (length width, extension type bytes) of str/bin/ext; (count width,
# objects per count) of array/map.
_MSGPACK_FIXED = {0xc0: 1, 0xc2: 1, 0xc3: 1, 0xca: 5, 0xcb: 9, 0xcc: 2, 0xcd: 3, 0xce: 5, 0xcf: 9, 0xd0: 2, 0xd1: 3,
                  0xd2: 5, 0xd3: 9, 0xd4: 3, 0xd5: 4, 0xd6: 6, 0xd7: 10, 0xd8: 18}
_MSGPACK_SIZED = {0xc4: (1, 0), 0xc5: (2, 0), 0xc6: (4, 0), 0xc7: (1, 1), 0xc8: (2, 1), 0xc9: (4, 1), 0xd9: (1, 0),
                  0xda: (2, 0), 0xdb: (4, 0)}
_MSGPACK_COUNTED = {0xdc: (2, 1), 0xdd: (4, 1), 0xde: (2, 2), 0xdf: (4, 2)}


def _read_msgpack(fd: int) -> Iterator[Any]:
    """msgpack objects read one after another from ``fd``, and FLUSH when input pauses."""
    buf = bytearray()
    for chunk in _chunks(fd):
        if chunk is FLUSH:
            yield FLUSH
            continue
        buf += chunk
        pos = 0
        while (end := _msgpack_end(buf, pos)) is not None:
            yield decode(bytes(buf[pos:end]))
            pos = end
        del buf[:pos]
    if buf:
        raise ValueError(f"standard input ends inside a msgpack object ({len(buf)} bytes left over)")


def _write_line(out: Any, value: Any) -> None:
    if isinstance(value, str):
        out.write(value.encode("utf-8", "surrogateescape") + b"\n")
    elif isinstance(value, (bytes, bytearray, memoryview)):
        out.write(bytes(value) + b"\n")
    else:
        out.write(json.dumps(value, default=repr).encode() + b"\n")


class _StageAction(argparse.Action):
    """``--stage`` and ``--stream`` append to one list, so the stages keep the order they were given in."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        stages = getattr(namespace, self.dest, None) or []
        stages.append(("stream" if option_string == "--stream" else "stage", values))
        setattr(namespace, self.dest, stages)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ringbus.patterns.pipeline --stage module:function ...``: a pipeline as a Unix filter.

    ``--stage module:function[@N]`` adds a per-item stage (in N processes), ``--stream module:function`` a
    stream stage (a generator over all the items), in the order given. Reads items from standard input (``--lines``: each line, without its newline, as a str - the default;
    ``--msgpack``: a stream of msgpack objects), writes the last stage's outputs to standard output (a str or
    bytes output as one line, anything else as one line of JSON; msgpack objects with ``--msgpack``), and each
    dead letter to standard error as one line of JSON. Output keeps input order unless ``--unordered``.
    Exit status: 0, or 1 if any item was dead-lettered, 2 for bad arguments, 3 if the run failed (a stage
    process died or a stream stage raised).
    """
    parser = argparse.ArgumentParser(prog="python -m ringbus.patterns.pipeline",
                                     description="Run a pipeline of stages as a Unix filter (stdin -> stdout).")
    parser.add_argument("--stage", action=_StageAction, dest="stages", metavar="MODULE:FUNCTION[@N]",
                        help="a per-item stage function, in order; @N runs it in N processes (repeat per stage)")
    parser.add_argument("--stream", action=_StageAction, dest="stages", metavar="MODULE:FUNCTION",
                        help="a stream stage: a generator function over all the items (e.g. an aggregate)")
    parser.add_argument("--processes", type=int, default=1, metavar="N",
                        help="processes per stage without @N (default: 1)")
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--lines", dest="format", action="store_const", const="lines",
                     help="items are lines of text (the default)")
    fmt.add_argument("--msgpack", dest="format", action="store_const", const="msgpack",
                     help="items are msgpack objects, one after another")
    parser.add_argument("--unordered", action="store_true", help="let outputs of several processes interleave")
    parser.add_argument("--inline", action="store_true", help="run every stage in this process (no processes)")
    parser.add_argument("--batch", type=int, default=256, help="items per frame (default: 256)")
    args = parser.parse_args(argv)
    if not args.stages:
        parser.error("give at least one --stage or --stream")
    sys.path.insert(0, os.getcwd())  # like `python -m`: stage modules next to the caller are found
    try:
        stages = []
        for kind, ref in args.stages:
            ref, at, count = ref.partition("@")
            processes = 1 if kind == "stream" else args.processes
            if at:
                if not count.isdigit() or int(count) < 1:
                    raise ValueError(f"--{kind} {ref}@{count}: N must be a whole number >= 1")
                processes = int(count)
            stages.append(Stage(_resolve(ref), processes=processes, stream=kind == "stream"))
        dead: list[DeadLetter] = []
        err = sys.stderr

        def to_stderr(letter: DeadLetter) -> None:
            dead.append(letter)
            err.write(json.dumps({"stage": letter.stage, "error": letter.error, "item": letter.item},
                                 default=repr) + "\n")
            err.flush()

        pipeline = Pipeline(stages, ordered=not args.unordered, dead_letter=to_stderr, batch=args.batch)
    except (ValueError, TypeError) as exc:
        parser.error(str(exc))
    fd = sys.stdin.fileno()
    source = _read_msgpack(fd) if args.format == "msgpack" else _read_lines(fd)
    out = sys.stdout.buffer
    outputs = pipeline.run_inline(source) if args.inline else pipeline.run(source)
    try:
        if args.format == "msgpack":
            from ringbus.patterns._pipeline_wire import encode

            for value in outputs:
                out.write(encode(value))
        else:
            for value in outputs:
                _write_line(out, value)
        out.flush()
    except BrokenPipeError:  # `... | head`: the reader left, nothing is wrong
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        return 0
    except (PipelineError, StageFailed) as exc:
        err.write(f"pipeline: {exc}\n")
        return 3
    return 1 if dead else 0


if __name__ == "__main__":
    sys.exit(main())

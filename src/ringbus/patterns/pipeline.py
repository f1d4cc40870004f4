"""Pipes and filters: a chain of stages, each in one or more processes, joined by bounded shared-memory channels.

A stage is a plain function (``item -> output | None | iterator of outputs``) or a generator over the whole
stream (``Stage(fn, stream=True)``). :meth:`Pipeline.run` starts every stage in processes of its own (``spawn``)
connected by :class:`ringbus.ShmChannel` (or ZeroMQ PUSH/PULL sockets with ``transport="zmq"``), feeds the
items from a thread of the calling process and yields what the last stage returns. The channels are bounded,
so a slow stage slows the source: memory stays bounded end to end. A failing item goes to the dead-letter
sink with its stage's name and error while the rest flow on. ``ordered=True`` brings the outputs back in
source order. :meth:`Pipeline.run_inline` chains the same stages in the calling thread, for light work;
:class:`BusPipeline` (and :meth:`Pipeline.from_kafka_json`) chains stages through Bus queues when every hop
must be durable.

Items travel as msgpack (msgspec): None, bool, int (64-bit), float, str, bytes, list, dict (and tuple, set,
bytearray, memoryview, datetime, dataclasses, which arrive as list, list, bytes, bytes, datetime, dict). Bytes
pass as they are. :meth:`Pipeline.run_inline` passes objects untouched.

``python -m ringbus.patterns.pipeline --stage module:function ...`` runs a pipeline as a Unix filter from
standard input to standard output (see :func:`main`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ringbus.patterns._lifecycle import check_count
from ringbus.patterns._pipeline_bus import BusPipeline, DeadLetterQueue, parse_kafka_json
from ringbus.patterns._pipeline_run import Run, log
from ringbus.patterns._pipeline_stage import (
    FLUSH,
    DeadLetter,
    PipelineError,
    Stage,
    apply_item,
    error_text,
)
from ringbus.patterns._pipeline_wire import Reorderer
from ringbus.patterns._stats import PatternStats, StatsCounter

__all__ = ["Pipeline", "Stage", "DeadLetter", "DeadLetterQueue", "PipelineError", "PipelineStats", "StageStats",
           "BusPipeline", "main", "FLUSH"]

Transport = Literal["shm", "zmq"]


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
        The source waits for a full batch: a source whose items come slowly (a socket, a tail of a file)
        yields :data:`FLUSH` when it has nothing ready, to send what it has (the stdin filter does).
    hwm : int
        ZeroMQ high-water mark in frames (``transport="zmq"``).
    """

    FLUSH = FLUSH

    def __init__(self, stages: Sequence[Callable[..., Any] | Stage], *, ordered: bool = False,
                 dead_letter: Callable[[DeadLetter], Any] | None = None, transport: Transport = "shm",
                 channel_bytes: int = 1 << 20, batch: int = 256, hwm: int = 16) -> None:
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
        self.stages = tuple(checked)
        self.ordered = bool(ordered)
        self.dead_letter = dead_letter
        self.transport = transport
        self.channel_bytes = channel_bytes
        self.batch = batch
        self.hwm = hwm
        self._run: Run | None = None
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
        run = Run(self, items, specs)
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
        for stage, count in zip(self.stages, counts, strict=True):
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
        stages = tuple(StageStats(s.name, s.processes, r[0], r[2], r[3])
                       for s, r in zip(self.stages, rows, strict=True))
        reorder = self._reorder
        return PipelineStats(
            processed=self._delivered, failed=self._dead, retried=0, dead_lettered=self._dead,
            in_flight=sum(r[0] - r[1] for r in rows), rate=base.rate, sent=self._sent, stages=stages,
            reorder_held=reorder.held if reorder else 0, reorder_peak=reorder.peak if reorder else 0)

    @property
    def pids(self) -> dict[str, list[int]]:
        """Process ids of the current run's stage processes, by stage name ({} when not running)."""
        run = self._run
        if run is None:
            return {}
        pids: dict[str, list[int]] = {}
        for stage, _, process in run.workers:
            pids.setdefault(stage.name, []).append(process.pid)
        return pids

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


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m ringbus.patterns.pipeline``: a pipeline as a Unix filter (see ``_pipeline_cli.main``)."""
    from ringbus.patterns._pipeline_cli import main as filter_main

    return filter_main(argv)


if __name__ == "__main__":
    sys.exit(main())

"""A pipeline stage: what it is (:class:`Stage`), how it turns items into outputs, and the worker process that runs it.

Shared by the in-process chaining and the stage processes, so both apply a stage function the same way.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec

from ringbus.errors import RingbusError
from ringbus.patterns._pipeline_wire import (
    DATA,
    DEAD,
    FrameTooLarge,
    Reorderer,
    Stopped,
    ZmqOutlet,
    closed_quietly,
    decode,
    encode,
    inlet_for,
    outlet_for,
    pack,
    pack_seq,
    seq_items,
)

__all__ = ["Stage", "DeadLetter", "StageFailed", "PipelineError", "FLUSH", "apply_item", "apply_batch", "spread",
           "dead_record", "error_text", "ENCODE_ERRORS",
           "COUNTERS", "RECEIVED", "DONE", "EMITTED", "FAILED", "READY", "WorkerSpec", "worker_main",
           "process_main"]

MAX_ERROR_TEXT = 2000  # characters of an error kept in a dead letter
MAX_REPR = 200  # characters of an item that could not be encoded, kept in its dead letter instead
ENCODE_ERRORS = (TypeError, OverflowError, ValueError, msgspec.EncodeError)
# Per worker process, in the run's shared counters: items taken, items finished, outputs sent, items
# dead-lettered, attached.
COUNTERS = ("received", "done", "emitted", "failed", "ready")
RECEIVED, DONE, EMITTED, FAILED, READY = range(len(COUNTERS))


class _Flush:
    def __repr__(self) -> str:
        return "ringbus.patterns.pipeline.FLUSH"


FLUSH: Any = _Flush()
"""Yield this from a live source to send the items batched so far now (a source that waits for input)."""


class PipelineError(RingbusError):
    """A run could not finish: a stage process died or a stream stage raised; names the stage and the reason."""


class StageFailed(Exception):
    """A stream stage raised: it holds state, so it is not restarted and the run stops."""


@dataclass(frozen=True)
class DeadLetter:
    """An item a stage could not handle: what the dead-letter sink receives.

    Attributes
    ----------
    stage : str
        The stage's name.
    error_type : str
        The exception's class name, e.g. ``"ValueError"``.
    error : str
        ``"ValueError: bad line"`` (at most 2,000 characters).
    item : object
        The item the stage was given (as decoded from the channel), or, when the stage *returned* something
        that cannot be encoded, the ``repr`` of that output (at most 200 characters).
    """

    stage: str
    error_type: str
    error: str
    item: Any


class Stage:
    """One step of a :class:`~ringbus.patterns.pipeline.Pipeline`.

    Parameters
    ----------
    fn : callable
        ``fn(item)`` returns one output, ``None`` to drop the item, or an iterator (a generator) of several
        outputs. A returned list or tuple is *one* output unless ``fan_out=True``. With ``stream=True``,
        ``fn(items)`` takes an iterator over all of the stage's items and yields outputs (for stages that keep
        state, such as an aggregate). For stage processes ``fn`` must be importable: a module-level function
        (or a picklable callable object), because each process is started with ``spawn``.
    processes : int
        Processes that run this stage side by side (each takes a share of the items). 1 by default.
    name : str or None
        The stage's name in dead letters and stats; ``fn.__name__`` by default.
    stream : bool
        ``fn`` is a generator over the whole stream (see above). An exception it raises stops the run
        (:class:`~ringbus.patterns.pipeline.PipelineError`): its state would be lost with a restart.
    fan_out : bool
        Spread a returned list or tuple into separate outputs too (iterators always are).
    """

    __slots__ = ("fn", "processes", "name", "stream", "fan_out")

    def __init__(self, fn: Callable[..., Any], *, processes: int = 1, name: str | None = None, stream: bool = False,
                 fan_out: bool = False) -> None:
        if not callable(fn):
            raise TypeError(f"stage fn must be callable, not {type(fn).__name__}")
        if isinstance(processes, bool) or not isinstance(processes, int):
            raise TypeError(f"processes must be an int, not {type(processes).__name__}")
        if processes < 1:
            raise ValueError(f"processes must be >= 1, got {processes!r}")
        if name is None:
            name = getattr(fn, "__name__", None) or type(fn).__name__
        if not isinstance(name, str) or not name:
            raise ValueError(f"stage name must be a non-empty str, got {name!r}")
        self.fn = fn
        self.processes = processes
        self.name = name
        self.stream = bool(stream)
        self.fan_out = bool(fan_out)

    def pickled(self) -> bytes:
        """``fn`` pickled for a stage process; TypeError naming the stage if it cannot be imported there."""
        fn = self.fn
        qualname = getattr(fn, "__qualname__", "")
        if "<lambda>" in qualname or "<locals>" in qualname:
            raise TypeError(f"stage {self.name!r}: {qualname} cannot run in a stage process: processes are started "
                            "with spawn and import the function by name, so it must be defined at module level "
                            "(not a lambda or a nested function); or use run_inline()")
        main = sys.modules.get("__main__")
        if getattr(fn, "__module__", None) == "__main__" and not getattr(main, "__file__", None):
            raise TypeError(f"stage {self.name!r}: {qualname} is defined in an interactive session, which a "
                            "spawned stage process cannot import; move it to a module or use run_inline()")
        try:
            return pickle.dumps(fn)
        except Exception as exc:  # noqa: BLE001 - any pickling failure means the same thing here
            raise TypeError(f"stage {self.name!r}: {fn!r} cannot be sent to a stage process (spawn): {exc}; "
                            "use a module-level function, or run_inline()") from None

    def __repr__(self) -> str:
        extra = "".join([", stream=True" if self.stream else "", ", fan_out=True" if self.fan_out else ""])
        return f"Stage({self.name!r}, processes={self.processes}{extra})"


def error_text(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text if len(text) <= MAX_ERROR_TEXT else text[:MAX_ERROR_TEXT - 3] + "..."


def dead_record(stage: str, exc: BaseException, item: Any) -> list[Any]:
    """A dead letter as it travels in a DEAD frame."""
    return [stage, type(exc).__name__, error_text(exc), item]


def spread(result: Any, fan_out: bool, out: list[Any]) -> None:
    """Append what one call of a stage returned to ``out``: nothing for None, every value of an iterator
    (drained first, so a generator that fails half way adds none), each value of a list or tuple with
    ``fan_out``, else the value itself."""
    if result is None:
        return
    if isinstance(result, (list, tuple)):
        if fan_out:
            out.extend(result)
        else:
            out.append(result)
    elif isinstance(result, (str, bytes, bytearray, memoryview, dict)):
        out.append(result)
    elif hasattr(result, "__next__"):
        out.extend(list(result))
    else:
        out.append(result)


def apply_item(fn: Callable[[Any], Any], fan_out: bool, item: Any, out: list[Any]) -> None:
    """Append what ``fn(item)`` makes of ``item`` to ``out`` (see :func:`spread`)."""
    spread(fn(item), fan_out, out)


# Result types that are one output each as they are (the fast path of apply_batch).
_ONE = frozenset({int, float, str, bytes, bool, dict, list, tuple})
_ONE_FAN_OUT = _ONE - {list, tuple}


def apply_batch(fn: Callable[[Any], Any], fan_out: bool, name: str, items: list[Any],
                dead: list[list[Any]]) -> tuple[list[Any], list[int] | None]:
    """``fn`` on every item: the outputs, and how many each item gave (None: exactly one each).

    A failing item becomes a dead letter in ``dead`` and gives none; the rest go on. The calls run in
    ``map`` (C) and the common case - one plain value per item - is recognised from the set of result types,
    which keeps a trivial stage's cost per item to the call itself.
    """
    results: list[Any] = []
    failed: list[int] = []
    source = iter(items)
    total = len(items)
    while True:
        try:
            results.extend(map(fn, source))
        except Exception as exc:  # noqa: BLE001 - a failing item is dead-lettered, the rest flow
            pos = len(results) + len(failed)
            failed.append(pos)
            dead.append(dead_record(name, exc, items[pos]))
            continue
        pos = len(results) + len(failed)
        if pos == total:
            break
        # map stops quietly when fn raises StopIteration: that item failed too
        failed.append(pos)
        dead.append(dead_record(name, RuntimeError(f"stage {name!r} raised StopIteration"), items[pos]))
    if not failed and set(map(type, results)) <= (_ONE_FAN_OUT if fan_out else _ONE):
        return results, None
    outs: list[Any] = []
    counts: list[int] = []
    failed_at = set(failed)
    taken = iter(results)
    for pos, item in enumerate(items):
        if pos in failed_at:
            counts.append(0)
            continue
        before = len(outs)
        try:
            spread(next(taken), fan_out, outs)
        except Exception as exc:  # noqa: BLE001 - a generator that fails half way: the item is dead-lettered
            del outs[before:]
            dead.append(dead_record(name, exc, item))
        counts.append(len(outs) - before)
    return outs, counts


def per_item(counts: list[int] | None, size: int) -> list[int]:
    return [1] * size if counts is None else counts


def outputs_per_seq(items_per_seq: list[int] | None, outs_per_item: list[int] | None) -> list[int] | None:
    """Outputs per source item, from items per source item and outputs per item (None: one each)."""
    if outs_per_item is None:
        result = items_per_seq
    elif items_per_seq is None:
        result = outs_per_item
    else:
        result = []
        i = 0
        for c in items_per_seq:
            result.append(sum(outs_per_item[i:i + c]))
            i += c
    return None if result is None or all(c == 1 for c in result) else result


def pack_outputs(stage: str, outs: list[Any], limit: int, dead: list[list[Any]],
                 seq: tuple[int, list[int] | None] | None = None) -> list[bytes]:
    """Frames of a stage's outputs (DATA, or SEQ from ``seq = (first, counts)``); outputs that cannot travel
    (not msgpack, or too large) go to ``dead`` and the rest on."""
    try:
        return pack(DATA, outs, limit) if seq is None else pack_seq(seq[0], seq[1], outs, limit)
    except (FrameTooLarge, *ENCODE_ERRORS):
        pass

    def fits(value: Any) -> bool:
        try:
            size = len(encode(value))
            if size + 32 > limit:
                raise FrameTooLarge(f"{size} bytes (encoded) is more than the pipeline's largest message, "
                                    f"{limit} bytes: raise channel_bytes")
            return True
        except (FrameTooLarge, *ENCODE_ERRORS) as exc:
            dead.append([stage, type(exc).__name__, f"stage {stage!r} returned a value that cannot be sent "
                         f"({error_text(exc)}); items are msgpack types", repr(value)[:MAX_REPR]])
            return False

    if seq is None:
        return pack(DATA, [v for v in outs if fits(v)], limit)
    kept: list[Any] = []
    counts: list[int] = []
    i = 0
    for c in per_item(seq[1], len(outs)):
        group = [v for v in outs[i:i + c] if fits(v)]
        i += c
        if len(group) > 1 and not fits(group):  # one item's outputs must travel in one frame
            group = []
        kept += group
        counts.append(len(group))
    return pack_seq(seq[0], counts, kept, limit)


# --- the worker process ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class WorkerSpec:
    """What one stage process needs (picklable)."""

    name: str
    fn: bytes  # Stage.pickled()
    stream: bool
    fan_out: bool
    index: int  # this process among the stage's
    slot: int  # its first counter in the run's shared counters
    inlet: tuple[Any, ...]  # see _pipeline_wire.inlet_for
    outlet: tuple[Any, ...]  # see _pipeline_wire.outlet_for
    ordered: bool
    batch: int


def process_main(spec: WorkerSpec, counts: Any, errors: Any, flags: Any) -> None:
    """Body of a spawned stage process; ``flags[0]`` is set by the pipeline once the sink has everything."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the process group; the pipeline decides
    worker_main(spec, counts, errors, lambda: bool(flags[0]))


def worker_main(spec: WorkerSpec, counts: Any, errors: Any, finished: Callable[[], bool]) -> None:
    """Attach, run the stage until end-of-stream, pass end-of-stream on; a failure is put to ``errors``, then
    SystemExit(1).

    Over ZeroMQ the sockets stay open after end-of-stream until ``finished()``: libzmq drops what a closing
    PUSH socket still holds for a receiver that lags at its high-water mark, whatever the linger.
    """
    parent = os.getppid()

    def check() -> None:
        if os.getppid() != parent:
            raise Stopped("the pipeline's process is gone")

    context = None
    inlet = outlet = None
    try:
        if spec.inlet[0] == "zmq":
            import zmq

            context = zmq.Context()
        fn = pickle.loads(spec.fn)
        inlet = inlet_for(spec.inlet, check=check, context=context)
        outlet = outlet_for(spec.outlet, spec.slot, ordered=spec.ordered, check=check, context=context)
        counts[spec.slot + READY] = 1
        if spec.stream:
            _run_stream(spec, fn, inlet, outlet, counts)
        else:
            _run_items(spec, fn, inlet, outlet, counts)
        if isinstance(outlet, ZmqOutlet):  # the zmq transport (context is set)
            outlet.end()
            while not finished():
                check()
                time.sleep(0.05)
        out, outlet = outlet, None
        out.close(clean=context is None)
        inlet.close()
        if context is not None:
            context.term()
    except BaseException as exc:  # noqa: BLE001 - reported to the pipeline, which stops the run
        errors.put((spec.name, spec.index, error_text(exc), isinstance(exc, (Stopped, ConnectionError))))
        closed_quietly(outlet, inlet)
        if context is not None:
            context.destroy(linger=0)
        raise SystemExit(1) from None


def _run_items(spec: WorkerSpec, fn: Callable[[Any], Any], inlet: Any, outlet: Any, counts: Any) -> None:
    name, fan_out, limit, slot, ordered = spec.name, spec.fan_out, outlet.limit, spec.slot, spec.ordered
    send = outlet.send
    for frames in inlet.batches():
        decoded = []
        for frame in frames:
            if frame[1] == DEAD:
                send(frame, dead=True)
            else:
                decoded.append(decode(frame))
        if not decoded:
            continue
        taken = sum(len(d[-1]) for d in decoded)
        counts[slot + RECEIVED] += taken
        dead: list[list[Any]] = []
        out_frames: list[bytes] = []
        emitted = 0
        if ordered:
            for _, first, items_per_seq, flat in decoded:
                outs, outs_per_item = apply_batch(fn, fan_out, name, flat, dead)
                emitted += len(outs)
                out_frames += pack_outputs(name, outs, limit, dead,
                                           (first, outputs_per_seq(items_per_seq, outs_per_item)))
        else:
            items = decoded[0][1] if len(decoded) == 1 else [x for d in decoded for x in d[1]]
            outs, _ = apply_batch(fn, fan_out, name, items, dead)
            emitted = len(outs)
            if outs:
                out_frames = pack_outputs(name, outs, limit, dead)
        _send_out(outlet, dead, out_frames, counts, slot, emitted)
        counts[slot + DONE] += taken


def _send_out(outlet: Any, dead: list[list[Any]], frames: list[bytes], counts: Any, slot: int, emitted: int) -> None:
    """Send a batch's dead letters, then its output frames; count both."""
    if dead:
        for frame in pack(DEAD, dead, outlet.limit):
            outlet.send(frame, dead=True)
        counts[slot + FAILED] += len(dead)
    for frame in frames:
        outlet.send(frame)
    counts[slot + EMITTED] += emitted


def _run_stream(spec: WorkerSpec, fn: Callable[[Iterator[Any]], Iterable[Any]], inlet: Any, outlet: Any,
                counts: Any) -> None:
    name, limit, slot, ordered, batch = spec.name, outlet.limit, spec.slot, spec.ordered, spec.batch
    send = outlet.send
    pending: list[Any] = []
    seq = 0

    def flush() -> None:
        nonlocal seq
        if not pending:
            return
        dead: list[list[Any]] = []
        if ordered:
            frames = pack_outputs(name, pending, limit, dead, (seq, None))
            seq += len(pending)
        else:
            frames = pack_outputs(name, pending, limit, dead)
        _send_out(outlet, dead, frames, counts, slot, len(pending))
        pending.clear()

    def inputs() -> Iterator[Any]:
        reorder = Reorderer()
        for frames in inlet.batches():
            for frame in frames:
                if frame[1] == DEAD:
                    send(frame, dead=True)
                    continue
                decoded = decode(frame)
                if ordered:
                    _, first, items_per_seq, flat = decoded
                    for run in reorder.push(first, seq_items(items_per_seq, flat), flat):
                        counts[slot + RECEIVED] += len(run)
                        counts[slot + DONE] += len(run)
                        yield from run
                else:
                    counts[slot + RECEIVED] += len(decoded[1])
                    counts[slot + DONE] += len(decoded[1])
                    yield from decoded[1]
            flush()  # nothing more is here yet: send what the stage made before waiting

    try:
        for out in fn(inputs()):
            pending.append(out)
            if len(pending) >= batch:
                flush()
    except (Stopped, ConnectionError):
        raise
    except Exception as exc:
        raise StageFailed(f"stream stage {name!r} raised {error_text(exc)}; a stream stage keeps state, so it is "
                          "not restarted: catch per-item errors inside it") from exc
    flush()

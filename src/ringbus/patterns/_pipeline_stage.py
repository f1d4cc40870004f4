"""A pipeline stage: what it is (:class:`Stage`), how it turns items into outputs, and the worker process that runs it.

Shared by the in-process chaining and the stage processes, so both apply a stage function the same way.
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import msgspec

from ringbus.patterns._pipeline_wire import (
    DATA,
    DEAD,
    SEQ,
    FrameTooLarge,
    Reorderer,
    Stopped,
    closed_quietly,
    decode,
    encode,
    inlet_for,
    outlet_for,
    pack,
)

__all__ = ["Stage", "DeadLetter", "StageFailed", "apply_item", "dead_record", "error_text", "ENCODE_ERRORS",
           "COUNTERS", "RECEIVED", "DONE", "EMITTED", "FAILED", "READY", "WorkerSpec", "worker_main",
           "process_main"]

MAX_ERROR_TEXT = 2000  # characters of an error kept in a dead letter
MAX_REPR = 200  # characters of an item that could not be encoded, kept in its dead letter instead
ENCODE_ERRORS = (TypeError, OverflowError, ValueError, msgspec.EncodeError)
# Per worker process, in the run's shared counters: items taken, items finished, outputs sent, items
# dead-lettered, attached.
COUNTERS = ("received", "done", "emitted", "failed", "ready")
RECEIVED, DONE, EMITTED, FAILED, READY = range(len(COUNTERS))
# A value of one of these types is one output even though Python can iterate over some of them.
_ONE = (str, bytes, bytearray, memoryview, dict, int, float, bool, list, tuple)


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


def apply_item(fn: Callable[[Any], Any], fan_out: bool, item: Any, out: list[Any]) -> None:
    """Append what ``fn(item)`` makes of ``item`` to ``out``: nothing, one value, or every value of an iterator.

    An iterator is drained before anything is appended, so an item whose generator fails half way gives none.
    """
    result = fn(item)
    if result is None:
        return
    if isinstance(result, _ONE):
        if fan_out and isinstance(result, (list, tuple)):
            out.extend(result)
        else:
            out.append(result)
    elif hasattr(result, "__next__"):
        out.extend(list(result))
    else:
        out.append(result)


def apply_all(fn: Callable[[Any], Any], fan_out: bool, name: str, items: Iterable[Any], out: list[Any],
              dead: list[list[Any]]) -> None:
    """:func:`apply_item` on each item; a failing one becomes a dead letter in ``dead`` and the rest go on."""
    for item in items:
        try:
            apply_item(fn, fan_out, item, out)
        except Exception as exc:  # noqa: BLE001 - a failing item is dead-lettered, the rest flow
            dead.append(dead_record(name, exc, item))


def encodable(stage: str, items: list[Any], limit: int, dead: list[list[Any]], *, nested: bool) -> list[Any]:
    """``items`` without the outputs that cannot travel (not msgpack, or too large); those become dead letters."""
    def fits(value: Any) -> bool:
        try:
            size = len(encode(value))
            if size + 16 > limit:
                raise FrameTooLarge(f"an output of {size} bytes (encoded) is larger than the pipeline's largest "
                                    f"message, {limit} bytes: raise channel_bytes")
            return True
        except (FrameTooLarge, *ENCODE_ERRORS) as exc:
            dead.append([stage, type(exc).__name__, f"stage {stage!r} returned a value that cannot be sent "
                         f"({error_text(exc)}); items are msgpack types", repr(value)[:MAX_REPR]])
            return False

    if nested:
        return [[v for v in sub if fits(v)] for sub in items]
    return [v for v in items if fits(v)]


def pack_outputs(stage: str, kind: int, items: list[Any], limit: int, dead: list[list[Any]],
                 first: int = 0) -> list[bytes]:
    """Frames of a stage's outputs; outputs that cannot be encoded go to ``dead`` and the rest on."""
    try:
        return pack(kind, items, limit, first)
    except (FrameTooLarge, *ENCODE_ERRORS):
        return pack(kind, encodable(stage, items, limit, dead, nested=kind == SEQ), limit, first)


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
        if context is not None:
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
    name, fan_out, limit, slot = spec.name, spec.fan_out, outlet.limit, spec.slot
    send = outlet.send
    for frames in inlet.batches():
        dead: list[list[Any]] = []
        if spec.ordered:
            runs = []
            taken = 0
            for frame in frames:
                if frame[1] == DEAD:
                    send(frame, dead=True)
                    continue
                _, first, lists = decode(frame)
                taken += sum(map(len, lists))
                runs.append((first, lists))
            counts[slot + RECEIVED] += taken
            emitted = 0
            out_frames = []
            for first, lists in runs:
                new = []
                for sub in lists:
                    out: list[Any] = []
                    apply_all(fn, fan_out, name, sub, out, dead)
                    emitted += len(out)
                    new.append(out)
                out_frames += pack_outputs(name, SEQ, new, limit, dead, first)
        else:
            items: list[Any] = []
            for frame in frames:
                if frame[1] == DEAD:
                    send(frame, dead=True)
                else:
                    items += decode(frame)[1]
            counts[slot + RECEIVED] += len(items)
            outs: list[Any] = []
            apply_all(fn, fan_out, name, items, outs, dead)
            out_frames = pack_outputs(name, DATA, outs, limit, dead) if outs else []
            emitted = len(outs)
            taken = len(items)
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
            frames = pack_outputs(name, SEQ, [[out] for out in pending], limit, dead, seq)
            seq += len(pending)
        else:
            frames = pack_outputs(name, DATA, pending, limit, dead)
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
                    for run in reorder.push(decoded[1], decoded[2]):
                        for sub in run:
                            counts[slot + RECEIVED] += len(sub)
                            counts[slot + DONE] += len(sub)
                            yield from sub
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

"""``python -m ringbus.patterns.pipeline``: a pipeline as a Unix filter, from standard input to standard output."""

from __future__ import annotations

import argparse
import importlib
import json
import os
import select
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ringbus.patterns._pipeline_stage import FLUSH, DeadLetter, PipelineError, Stage, StageFailed
from ringbus.patterns._pipeline_wire import decode, encode
from ringbus.patterns.pipeline import Pipeline

__all__ = ["main"]


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
    stage: Callable[..., Any] = obj
    return stage


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
    stream stage (a generator over all the items), in the order given. Reads items from standard input
    (``--lines``: each line, without its newline, as a str - the default; ``--msgpack``: a stream of msgpack
    objects), writes the last stage's outputs to standard output (a str or bytes output as one line, anything
    else as one line of JSON; msgpack objects with ``--msgpack``), and each dead letter to standard error as
    one line of JSON. Output keeps input order unless ``--unordered``.
    Exit status: 0, or 1 if any item was dead-lettered, 2 for bad arguments, 3 if the run failed (a stage
    process died or a stream stage raised).
    """
    parser = argparse.ArgumentParser(prog="ringbus pipe",
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
    # Outputs of a live input (`tail -f | ...`) must not wait in the buffer: flush a few times a second.
    done = threading.Event()
    flusher = threading.Thread(target=_flush_until, args=(out, done), daemon=True, name="ringbus-pipe-flush")
    flusher.start()
    try:
        if args.format == "msgpack":
            for value in outputs:
                out.write(encode(value))
        else:
            for value in outputs:
                _write_line(out, value)
        done.set()
        flusher.join()
        out.flush()
    except BrokenPipeError:  # `... | head`: the reader left, nothing is wrong
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, out.fileno())
        return 0
    except (PipelineError, StageFailed) as exc:
        err.write(f"pipeline: {exc}\n")
        return 3
    finally:
        done.set()
    return 1 if dead else 0


def _flush_until(out: Any, done: threading.Event) -> None:
    while not done.wait(0.2):
        try:
            out.flush()
        except (BrokenPipeError, ValueError):  # the reader left, or the stream was closed: the main loop says so
            return

"""Frames and links of a process pipeline: batches of items as msgpack frames over ShmChannel or ZeroMQ.

A frame is one msgpack array whose first element is its kind, so ``frame[1]`` tells the kind without decoding:

- ``[DATA, items]``: items of an unordered pipeline;
- ``[SEQ, first, counts, flat]``: an ordered pipeline's items ``first, first + 1, ...``: ``flat`` holds the
  values they have become so far, ``counts[i]`` of them for the i-th item (0 once filtered or dead-lettered),
  or exactly one each when ``counts`` is None (the common case, kept cheap);
- ``[DEAD, records]``: dead letters ``[stage, error_type, error, item]``, passed on unchanged to the sink;
- ``[EOS, sender]``: the sender has sent everything.

A link joins the N senders of one stage to the M receivers of the next: with ShmChannel one channel per pair
(a ShmChannel has one writer and one reader), with ZeroMQ one PULL socket bound per receiver and, in each
sender, one PUSH socket per receiver (so that an end-of-stream reaches every receiver).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import msgspec

from ringbus.errors import Closed, Empty, Full, PeerGone, RingbusError

__all__ = ["DATA", "SEQ", "DEAD", "EOS", "POLL", "encode", "decode", "pack", "pack_seq", "seq_items", "ShmOutlet",
           "ShmInlet", "ZmqOutlet", "ZmqInlet", "Reorderer", "Stopped", "outlet_for", "inlet_for"]

DATA, SEQ, DEAD, EOS = 0, 1, 2, 3
POLL = 0.2  # seconds a blocked send or receive waits before it checks whether it should stop
READER_BUFFER = 4  # received batches a reader thread may hold per upstream, when a worker has several

encode = msgspec.msgpack.Encoder().encode
decode = msgspec.msgpack.Decoder().decode

Check = Callable[[], None]  # raises Stopped (or the reason) when the caller should give up waiting


class Stopped(RingbusError):
    """The run is being torn down: a blocked send or receive gives up."""


class FrameTooLarge(ValueError):
    """One item, encoded, is larger than the link's largest message."""


def pack(kind: int, items: list[Any], limit: int) -> list[bytes]:
    """DATA or DEAD frames holding ``items`` (split in halves until each fits in ``limit`` bytes), in order.

    Raises FrameTooLarge for an item that alone does not fit, TypeError (or OverflowError) for one msgpack
    cannot encode.
    """
    frame = encode([kind, items])
    if len(frame) <= limit:
        return [frame]
    if len(items) == 1:
        raise FrameTooLarge(f"an item of {len(frame)} bytes (encoded) is larger than the pipeline's largest "
                            f"message, {limit} bytes: raise channel_bytes (a message may use half a channel)")
    half = len(items) // 2
    return pack(kind, items[:half], limit) + pack(kind, items[half:], limit)


def pack_seq(first: int, counts: list[int] | None, flat: list[Any], limit: int) -> list[bytes]:
    """SEQ frames: items ``first, first + 1, ...`` whose outputs are ``flat``, ``counts[i]`` of them for the
    i-th (None: exactly one each); split between items until each frame fits in ``limit`` bytes."""
    frame = encode([SEQ, first, counts, flat])
    if len(frame) <= limit:
        return [frame]
    items = len(flat) if counts is None else len(counts)
    if items == 1:
        raise FrameTooLarge(f"the outputs of one item take {len(frame)} bytes (encoded), more than the "
                            f"pipeline's largest message, {limit} bytes: raise channel_bytes")
    half = items // 2
    if counts is None:
        return pack_seq(first, None, flat[:half], limit) + pack_seq(first + half, None, flat[half:], limit)
    split = sum(counts[:half])
    return (pack_seq(first, counts[:half], flat[:split], limit)
            + pack_seq(first + half, counts[half:], flat[split:], limit))


def seq_items(counts: list[int] | None, flat: list[Any]) -> int:
    """How many source items a SEQ frame stands for."""
    return len(flat) if counts is None else len(counts)


class Reorderer:
    """Puts the SEQ frames of an ordered pipeline back in order of their first item.

    ``push`` returns the output lists that are next in line. ``held`` counts the outputs waiting for an
    earlier item; ``peak`` the most that ever waited (bounded by what the channels hold in flight: every
    sender of an ordered pipeline deals its frames round-robin and blocks on a full channel).
    """

    def __init__(self) -> None:
        self.next = 0
        self.pending: dict[int, tuple[int, list[Any]]] = {}
        self.held = 0
        self.peak = 0

    def push(self, first: int, items: int, flat: list[Any]) -> list[list[Any]]:
        if first != self.next:
            self.pending[first] = (items, flat)
            self.held += len(flat)
            if self.held > self.peak:
                self.peak = self.held
            return []
        ready = [flat]
        self.next = first + items
        pending = self.pending
        while self.next in pending:
            items, flat = pending.pop(self.next)
            self.held -= len(flat)
            ready.append(flat)
            self.next += items
        return ready


def send_blocking(target: Any, frame: Any, check: Check) -> None:
    """``target.send(frame)``, waiting in slices of POLL seconds and calling ``check`` between them."""
    while True:
        try:
            target.send(frame, POLL)
            return
        except Full:
            check()


# --- shared memory --------------------------------------------------------------------------------------------

class ShmOutlet:
    """A sender's side of a link over ShmChannel: one channel to each receiver of the next stage.

    Frames are dealt round-robin. Unordered pipelines pass over a receiver whose channel is full (so a slow
    receiver gets less) and wait only when every channel is full; ordered ones wait for the receiver whose
    turn it is, which keeps how far receivers drift apart within what the channels hold. Either way the
    sender blocks while it has no room: back-pressure.
    """

    def __init__(self, channels: Sequence[Any], sender: int, *, ordered: bool, check: Check) -> None:
        self.channels = list(channels)
        self.sender = sender
        self.ordered = ordered
        self.check = check
        self.limit = min(ch.max_message for ch in self.channels)
        self._next = 0

    def send(self, frame: bytes | memoryview, *, dead: bool = False) -> None:
        channels = self.channels
        n = len(channels)
        if n == 1:
            send_blocking(channels[0], frame, self.check)
            return
        if dead and self.ordered:  # dead letters need no order: they do not take a turn
            send_blocking(channels[0], frame, self.check)
            return
        turn = self._next
        if not self.ordered:
            for i in range(n):
                try:
                    channels[(turn + i) % n].send(frame, 0)
                    self._next = (turn + i + 1) % n
                    return
                except Full:
                    continue
        self._next = (turn + 1) % n
        send_blocking(channels[turn], frame, self.check)

    def close(self, *, clean: bool = True) -> None:
        """Send end-of-stream on every channel (when ``clean``), then close them."""
        eos = encode([EOS, self.sender])
        try:
            if clean:
                for ch in self.channels:
                    send_blocking(ch, eos, self.check)
        finally:
            for ch in self.channels:
                ch.close()


class ShmInlet:
    """A receiver's side of a link over ShmChannel: one channel from each sender of the previous stage.

    :meth:`batches` yields lists of frames until every sender has sent end-of-stream. With several channels a
    reader thread per channel blocks on it (a ShmChannel cannot be waited on together with others) and hands
    its batches over through a bounded :class:`ringbus.Ring`.
    """

    def __init__(self, channels: Sequence[Any], *, check: Check, max_batch: int = 64) -> None:
        self.channels = list(channels)
        self.check = check
        self.max_batch = max_batch
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def batches(self) -> Iterator[list[bytes]]:
        if len(self.channels) == 1:
            yield from self._read_one(self.channels[0], self.check)
            return
        yield from self._read_many()

    def _read_one(self, ch: Any, check: Check) -> Iterator[list[bytes]]:
        max_batch = self.max_batch
        while True:
            try:
                frames = ch.recv_many(max_batch, POLL)
            except Empty:
                check()
                continue
            except PeerGone:
                raise PeerGone(f"the sender of {ch.name} stopped before the end of the stream") from None
            if frames[-1][1] == EOS or any(f[1] == EOS for f in frames):
                data = [f for f in frames if f[1] != EOS]
                if data:
                    yield data
                return
            yield frames

    def _read_many(self) -> Iterator[list[bytes]]:
        from ringbus import Ring

        ring: Any = Ring(READER_BUFFER * len(self.channels))
        done = object()
        stop = self._stop

        def check() -> None:
            if stop.is_set():
                raise Stopped("pipeline stopped")

        def reader(ch: Any) -> None:
            try:
                for frames in self._read_one(ch, check):
                    while True:
                        try:
                            ring.put(frames, timeout=POLL)
                            break
                        except Full:
                            check()
                result: Any = done
            except BaseException as exc:  # noqa: BLE001 - handed to the consuming thread, which raises it
                result = exc
            while not stop.is_set():
                try:
                    ring.put(result, timeout=POLL)
                    return
                except Full:
                    continue

        self._threads = [threading.Thread(target=reader, args=(ch,), daemon=True, name=f"ringbus-pipe-{ch.name}")
                         for ch in self.channels]
        for thread in self._threads:
            thread.start()
        open_readers = len(self._threads)
        try:
            while open_readers:
                try:
                    got = ring.get(timeout=POLL)
                except Empty:
                    self.check()
                    continue
                if got is done:
                    open_readers -= 1
                elif isinstance(got, BaseException):
                    raise got
                else:
                    yield got
        finally:
            stop.set()
            for thread in self._threads:
                thread.join(2 * POLL + 1.0)

    def close(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(2 * POLL + 1.0)
        for ch in self.channels:
            ch.close()


# --- ZeroMQ ---------------------------------------------------------------------------------------------------

class ZmqOutlet:
    """A sender's side of a link over ZeroMQ: a PUSH socket connected to each receiver's bound PULL socket."""

    def __init__(self, endpoints: Sequence[str], sender: int, *, ordered: bool, check: Check, hwm: int,
                 limit: int, context: Any) -> None:
        from ringbus.transport import Pusher

        # A long linger: the frames still queued when the stage ends must reach a receiver that lags behind
        # (the owner terms ``context``, which waits for them; an aborted run destroys it with linger 0).
        self.pushers = [Pusher(e, bind=False, hwm=hwm, linger=3600.0, context=context) for e in endpoints]
        self.sender = sender
        self.ordered = ordered
        self.check = check
        self.limit = limit
        self._next = 0

    def send(self, frame: bytes | memoryview, *, dead: bool = False) -> None:
        from ringbus.message import Message

        message = Message(bytes(frame) if isinstance(frame, memoryview) else frame)
        pushers = self.pushers
        n = len(pushers)
        if not self.ordered or dead:  # any receiver with room now; else wait on the next in turn
            for i in range(n):
                pusher = pushers[(self._next + i) % n]
                try:
                    pusher.send(message, 0)
                    self._next = (self._next + i + 1) % n
                    return
                except Full:
                    continue
        pusher = pushers[self._next]
        self._next = (self._next + 1) % n
        send_blocking(pusher, message, self.check)

    def end(self) -> None:
        """Send end-of-stream to every receiver. Keep the sockets open until the receivers have it all: libzmq
        drops what a closing PUSH socket still holds for a lagging receiver."""
        from ringbus.message import Message

        eos = Message(encode([EOS, self.sender]))
        for pusher in self.pushers:
            send_blocking(pusher, eos, self.check)

    def close(self, *, clean: bool = True) -> None:
        """Close the sockets (after :meth:`end` when ``clean``)."""
        try:
            if clean:
                self.end()
        finally:
            for pusher in self.pushers:
                pusher.close()


class ZmqInlet:
    """A receiver's side of a link over ZeroMQ: one bound PULL socket, fair-queued across ``senders`` pushers."""

    def __init__(self, endpoint: str, senders: int, *, check: Check, hwm: int, context: Any,
                 max_batch: int = 64) -> None:
        from ringbus.transport import Puller

        self.puller = Puller(endpoint, bind=True, hwm=hwm, linger=0.0, context=context)
        self.senders = senders
        self.check = check
        self.max_batch = max_batch

    def batches(self) -> Iterator[list[Any]]:
        left = self.senders
        while left:
            try:
                messages = self.puller.recv_many(self.max_batch, POLL)
            except Empty:
                self.check()
                continue
            frames = []
            for message in messages:
                body = message.body
                if body[1] == EOS:
                    left -= 1
                else:
                    frames.append(body)
            if frames:
                yield frames

    def close(self) -> None:
        self.puller.close()


# --- building links from their descriptions (picklable tuples) -------------------------------------------------

def outlet_for(spec: tuple[Any, ...], sender: int, *, ordered: bool, check: Check,
               context: Any = None) -> ShmOutlet | ZmqOutlet:
    """``("shm", names)`` or ``("zmq", endpoints, hwm, limit)`` -> the sender's side (ZeroMQ: in ``context``)."""
    if spec[0] == "shm":
        from ringbus import ShmChannel

        return ShmOutlet([ShmChannel.attach(name) for name in spec[1]], sender, ordered=ordered, check=check)
    return ZmqOutlet(spec[1], sender, ordered=ordered, check=check, hwm=spec[2], limit=spec[3], context=context)


def inlet_for(spec: tuple[Any, ...], *, check: Check, context: Any = None) -> ShmInlet | ZmqInlet:
    """``("shm", names)`` or ``("zmq", endpoint, senders, hwm)`` -> the receiver's side (ZeroMQ: in ``context``)."""
    if spec[0] == "shm":
        from ringbus import ShmChannel

        return ShmInlet([ShmChannel.attach(name) for name in spec[1]], check=check)
    return ZmqInlet(spec[1], spec[2], check=check, hwm=spec[3], context=context)


def closed_quietly(*links: Any) -> None:
    """Close links, ignoring a channel already gone."""
    for link in links:
        if link is None:
            continue
        try:
            link.close(clean=False) if hasattr(link, "sender") else link.close()
        except (Closed, PeerGone, OSError, RuntimeError, Stopped):
            pass

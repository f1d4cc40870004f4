"""``ringbus bench ipc``: process-to-process messaging against multiprocessing, faster-fifo and raw pyzmq."""

from __future__ import annotations

import multiprocessing
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import repeat
from typing import Any

import numpy as np
import zmq

from ringbus._core._shm_channel import ShmChannel
from ringbus.bench._harness import Case, timed
from ringbus.errors import Empty
from ringbus.message import Message
from ringbus.transport import Puller, Pusher, Replier, Requester

try:
    import faster_fifo
except ImportError:  # an optional peer: its rows are left out, and the CLI says so
    faster_fifo = None

FORK = multiprocessing.get_context("fork")  # children inherit the set-up; nothing of theirs is timed
BATCH = 100
BIG = 4 * 1024 * 1024


def _in_child(body: Callable[[], None]) -> Any:
    """Run body in a forked child; an exception there is printed and makes its exit code 1."""
    child = FORK.Process(target=body)
    child.start()
    return child


class _Drained:
    """The parent sets it once it has read everything: a ZeroMQ sender that closes
    earlier can take the unread tail with it (libzmq drops what is still in the
    socket buffer of a peer that disconnects while the reader is at its HWM)."""

    def __init__(self) -> None:
        self.event = FORK.Event()

    def wait(self) -> None:
        self.event.wait(120)

    def set(self) -> None:
        self.event.set()


@contextmanager
def _running(body: Callable[[], None], drained: _Drained | None = None) -> Iterator[None]:
    """Run body in a forked child for the duration of the block; join it after."""
    child = _in_child(body)
    try:
        yield
    finally:
        if drained is not None:
            drained.set()
        child.join()


def _channel_name() -> str:
    return f"rbbench-{os.getpid()}-{uuid.uuid4().hex[:8]}"


# Messages a peer lost in this run: "label: k of n" (raw pyzmq PUSH/PULL between
# forked processes drops a few hundred of 20,000 in about one run in ten here).
LOSSES: list[str] = []


def _receive_timed(n: int, recv_one: Callable[[], Any], who: str = "") -> float:
    """Time n-1 receptions after the first (so the child's start-up is not counted).

    A receive that times out ends the run: the time up to the last message
    received is scaled to n messages and the loss is recorded in LOSSES.
    """
    if n < 2:
        return timed(recv_one)
    recv_one()
    got = 1
    start = last = time.perf_counter()
    try:
        for _ in repeat(None, n - 1):
            recv_one()
            got += 1
        last = time.perf_counter()
    except (zmq.Again, Empty):
        LOSSES.append(f"{who or 'a peer'} lost {n - got:,} of {n:,} messages in one run")
    else:
        return (last - start) * n / (n - 1)
    return (last - start) * n / max(1, got - 1)


# --- throughput, one message per call -------------------------------------------------

def shm_single(size: int) -> Callable[[int], float]:
    def run(n: int) -> float:
        name = _channel_name()
        rx = ShmChannel.create(name, 1 << 22)
        payload = bytes(size)

        def produce() -> None:
            tx = ShmChannel.attach(name)
            send = tx.send
            for _ in repeat(None, n):
                send(payload)
            tx.close()

        try:
            with _running(produce):
                return _receive_timed(n, lambda: rx.recv(60))
        finally:
            rx.close()

    return run


def shm_batch(size: int) -> Callable[[int], float]:
    def run(n: int) -> float:
        name = _channel_name()
        rx = ShmChannel.create(name, 1 << 22)
        batch = [bytes(size)] * BATCH

        def produce() -> None:
            tx = ShmChannel.attach(name)
            for _ in repeat(None, n // BATCH):
                tx.send_many(batch)
            tx.close()

        try:
            with _running(produce):
                got = len(rx.recv_many(BATCH, 60))
                start = time.perf_counter()
                while got < n // BATCH * BATCH:
                    got += len(rx.recv_many(BATCH, 60))
                return time.perf_counter() - start
        finally:
            rx.close()

    return run


def mp_queue(size: int) -> Callable[[int], float]:
    def run(n: int) -> float:
        q: Any = FORK.Queue()
        payload = bytes(size)

        def produce() -> None:
            for _ in repeat(None, n):
                q.put(payload)
            q.close()
            q.join_thread()

        with _running(produce):
            return _receive_timed(n, lambda: q.get(timeout=60))

    return run


def mp_pipe(size: int) -> Callable[[int], float]:
    def run(n: int) -> float:
        rx, tx = FORK.Pipe(duplex=False)
        payload = bytes(size)

        def produce() -> None:
            for _ in repeat(None, n):
                tx.send_bytes(payload)

        with _running(produce):
            return _receive_timed(n, rx.recv_bytes)

    return run


def ff_single(size: int) -> Callable[[int], float]:
    def run(n: int) -> float:
        q = faster_fifo.Queue(max_size_bytes=1 << 22)
        payload = bytes(size)

        def produce() -> None:
            for _ in repeat(None, n):
                q.put(payload, timeout=60)

        with _running(produce):
            return _receive_timed(n, lambda: q.get(timeout=60))

    return run


def ff_batch(size: int) -> Callable[[int], float]:
    def run(n: int) -> float:
        q = faster_fifo.Queue(max_size_bytes=1 << 22)
        batch = [bytes(size)] * BATCH

        def produce() -> None:
            for _ in repeat(None, n // BATCH):
                q.put_many(batch, timeout=60)

        with _running(produce):
            got = len(q.get_many(timeout=60, max_messages_to_get=BATCH))
            start = time.perf_counter()
            while got < n // BATCH * BATCH:
                got += len(q.get_many(timeout=60, max_messages_to_get=BATCH))
            return time.perf_counter() - start

    return run


def zmq_push_pull(size: int, copy: bool = True) -> Callable[[int], float]:
    def run(n: int) -> float:
        endpoint = f"ipc:///tmp/{_channel_name()}"
        ctx = zmq.Context()
        pull = ctx.socket(zmq.PULL)
        pull.linger = 0
        pull.rcvtimeo = 3_000  # a lost message ends the run instead of hanging it
        pull.bind(endpoint)
        payload = bytes(size)

        def produce() -> None:
            cctx = zmq.Context()
            push = cctx.socket(zmq.PUSH)
            push.linger = -1  # deliver everything before exit
            push.connect(endpoint)
            send = push.send
            for _ in repeat(None, n):
                send(payload, 0, copy=copy)
            drained.wait()
            push.close()
            cctx.term()

        drained = _Drained()
        try:
            with _running(produce, drained):
                return _receive_timed(n, lambda: pull.recv(copy=copy), "pyzmq PUSH/PULL")
        finally:
            pull.close()
            ctx.term()

    return run


# --- the ZeroMQ transport: Messages with the envelope --------------------------------

def transport_push_pull(size: int, batch: int = 1) -> Callable[[int], float]:
    def run(n: int) -> float:
        endpoint = f"ipc:///tmp/{_channel_name()}"
        ctx = zmq.Context()
        puller = Puller(endpoint, bind=True, linger=0, context=ctx)
        body = bytes(size)

        def produce() -> None:
            cctx = zmq.Context()
            pusher = Pusher(endpoint, bind=False, linger=5.0, context=cctx)
            if batch > 1:
                for _ in repeat(None, n // batch):
                    pusher.send_many([Message(body) for _ in repeat(None, batch)])
            else:
                send = pusher.send
                for _ in repeat(None, n):
                    send(Message(body))
            drained.wait()
            pusher.close()
            cctx.term()

        drained = _Drained()
        try:
            with _running(produce, drained):
                if batch > 1:
                    got = len(puller.recv_many(batch, timeout=60))
                    start = time.perf_counter()
                    while got < n // batch * batch:
                        got += len(puller.recv_many(batch, timeout=60))
                    return time.perf_counter() - start
                recv = puller.recv
                return _receive_timed(n, lambda: recv(60), "ringbus Puller")
        finally:
            puller.close()
            ctx.term()

    return run


def transport_case(size: int, n: int) -> Case:
    return Case(
        f"ZeroMQ transport, {size} B Message",
        "message",
        n,
        ("Pusher.send / Puller.recv (envelope)", transport_push_pull(size)),
        [("pyzmq PUSH/PULL ipc (raw bytes)", zmq_push_pull(size)),
         (f"Pusher.send_many / Puller.recv_many x{BATCH}", transport_push_pull(size, BATCH))],
        target={"pyzmq PUSH/PULL ipc (raw bytes)": 0.8},
    )


def transport_array(n: int) -> float:
    endpoint = f"ipc:///tmp/{_channel_name()}"
    ctx = zmq.Context()
    puller = Puller(endpoint, bind=True, linger=0, context=ctx)
    arr = np.ones(BIG // 8, np.float64)

    def produce() -> None:
        cctx = zmq.Context()
        pusher = Pusher(endpoint, bind=False, linger=5.0, context=cctx)
        for _ in repeat(None, n):
            pusher.send(Message.of(arr))
        drained.wait()
        pusher.close()
        cctx.term()

    drained = _Drained()
    try:
        with _running(produce, drained):
            return _receive_timed(n, lambda: puller.recv(60).value()[-1])
    finally:
        puller.close()
        ctx.term()


def transport_req_rep(n: int) -> list[float]:
    endpoint = f"ipc:///tmp/{_channel_name()}"
    ctx = zmq.Context()
    requester = Requester(endpoint, bind=True, linger=0, context=ctx)

    def echo() -> None:
        cctx = zmq.Context()
        replier = Replier(endpoint, bind=False, linger=0, context=cctx)
        for _ in repeat(None, n + 1):
            handle, message = replier.recv(60)
            replier.reply(handle, Message(message.body))
        replier.close()
        cctx.term()

    try:
        with _running(echo):
            payload = bytes(64)
            return _round_trips(n, lambda: requester.request(Message(payload), timeout=60))
    finally:
        requester.close()
        ctx.term()


def throughput_case(size: int, n: int) -> Case:
    peers: list[tuple[str, Callable[[int], float]]] = [
        ("multiprocessing.Queue", mp_queue(size)),
        ("multiprocessing.Pipe", mp_pipe(size)),
        ("pyzmq PUSH/PULL ipc", zmq_push_pull(size)),
        (f"ShmChannel send_many/recv_many x{BATCH}", shm_batch(size)),
    ]
    if faster_fifo is not None:
        peers[1:1] = [("faster_fifo put/get", ff_single(size)),
                      (f"faster_fifo put_many/get_many x{BATCH}", ff_batch(size))]
    return Case(
        f"process -> process, {size} B",
        "message",
        n,
        ("ShmChannel send/recv", shm_single(size)),
        peers,
        target={"multiprocessing.Queue": 10.0, "pyzmq PUSH/PULL ipc": 1.5},
    )


def batch_case(size: int, n: int) -> Case:
    peers: list[tuple[str, Callable[[int], float]]] = [("pyzmq PUSH/PULL ipc", zmq_push_pull(size))]
    if faster_fifo is not None:
        peers.append((f"faster_fifo put_many/get_many x{BATCH}", ff_batch(size)))
    return Case(
        f"process -> process, {size} B, batches",
        "message",
        n,
        (f"ShmChannel send_many/recv_many x{BATCH}", shm_batch(size)),
        peers,
        target={"pyzmq PUSH/PULL ipc": 3.0},
    )


# --- a large numpy array --------------------------------------------------------------

def shm_array(n: int) -> float:
    name = _channel_name()
    rx = ShmChannel.create(name, 4 * BIG)
    arr = np.ones(BIG // 8, np.float64).data  # the array's buffer (ndarray is typed as one only from Python 3.12)

    def produce() -> None:
        tx = ShmChannel.attach(name)
        for _ in repeat(None, n):
            tx.send(arr)
        tx.close()

    try:
        with _running(produce):
            return _receive_timed(n, lambda: np.frombuffer(rx.recv_view(60), np.float64)[-1])
    finally:
        rx.close()


def zmq_array(n: int) -> float:
    endpoint = f"ipc:///tmp/{_channel_name()}"
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.linger = 0
    pull.rcvtimeo = 60_000
    pull.bind(endpoint)
    arr = np.ones(BIG // 8, np.float64).data  # the array's buffer (ndarray is typed as one only from Python 3.12)

    def produce() -> None:
        cctx = zmq.Context()
        push = cctx.socket(zmq.PUSH)
        push.linger = -1
        push.connect(endpoint)
        for _ in repeat(None, n):
            push.send(arr, copy=False)
        drained.wait()
        push.close()
        cctx.term()

    drained = _Drained()
    try:
        with _running(produce, drained):
            return _receive_timed(n, lambda: np.frombuffer(pull.recv(copy=False).buffer, np.float64)[-1])
    finally:
        pull.close()
        ctx.term()


def array_case(n: int) -> Case:
    return Case(
        "4 MiB float64 array, process -> process",
        "array",
        n,
        ("ShmChannel send + recv_view", shm_array),
        [("pyzmq send(copy=False) ipc", zmq_array)],
        target={"pyzmq send(copy=False) ipc": 2.0},
        bytes_per_op=BIG,
    )


# --- round trips ----------------------------------------------------------------------

def _round_trips(n: int, round_trip: Callable[[], Any]) -> list[float]:
    """One warm-up round trip, then the seconds of each of n more."""
    round_trip()
    samples = []
    for _ in repeat(None, n):
        t = time.perf_counter()
        round_trip()
        samples.append(time.perf_counter() - t)
    return samples


def shm_ping_pong(n: int) -> list[float]:
    there, back = _channel_name(), _channel_name()
    out = ShmChannel.create(there, 1 << 16)
    inp = ShmChannel.create(back, 1 << 16)

    def echo() -> None:
        rx, tx = ShmChannel.attach(there), ShmChannel.attach(back)
        for _ in repeat(None, n + 1):
            tx.send(rx.recv_view())
        tx.close()

    try:
        with _running(echo):
            payload = bytes(64)

            def round_trip() -> None:
                out.send(payload)
                inp.recv(60)

            return _round_trips(n, round_trip)
    finally:
        out.close()
        inp.close()


def pipe_ping_pong(n: int) -> list[float]:
    a, b = FORK.Pipe()

    def echo() -> None:
        for _ in repeat(None, n + 1):
            b.send_bytes(b.recv_bytes())

    with _running(echo):
        payload = bytes(64)

        def round_trip() -> None:
            a.send_bytes(payload)
            a.recv_bytes()

        return _round_trips(n, round_trip)


def zmq_req_rep(n: int) -> list[float]:
    endpoint = f"ipc:///tmp/{_channel_name()}"
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.linger = 0
    req.rcvtimeo = 60_000
    req.bind(endpoint)

    def echo() -> None:
        cctx = zmq.Context()
        rep = cctx.socket(zmq.REP)
        rep.linger = 0
        rep.connect(endpoint)
        for _ in repeat(None, n + 1):
            rep.send(rep.recv())
        rep.close()
        cctx.term()

    try:
        with _running(echo):
            payload = bytes(64)
            return _round_trips(n, lambda: (req.send(payload), req.recv()))
    finally:
        req.close()
        ctx.term()


def round_trip_case(n: int) -> Case:
    return Case(
        "round trip, 64 B (p50 compared)",
        "round trip",
        n,
        ("ShmChannel pair", shm_ping_pong),
        [("multiprocessing.Pipe", pipe_ping_pong), ("pyzmq REQ/REP ipc", zmq_req_rep)],
        target={"multiprocessing.Pipe": 1.0},
        latency=True,
        latency_stat=50,
    )


def transport_array_case(n: int) -> Case:
    return Case(
        "4 MiB float64 array, ZeroMQ transport",
        "array",
        n,
        ("Pusher/Puller Message.of(array)", transport_array),
        [("pyzmq send(copy=False) ipc", zmq_array)],
        target={"pyzmq send(copy=False) ipc": 0.8},
        bytes_per_op=BIG,
    )


def transport_round_trip_case(n: int) -> Case:
    return Case(
        "request-reply, 64 B (p99 compared)",
        "round trip",
        n,
        ("Requester/Replier (DEALER/ROUTER, envelope)", transport_req_rep),
        [("pyzmq REQ/REP ipc", zmq_req_rep)],
        target={"pyzmq REQ/REP ipc": 1 / 1.3},
        latency=True,
    )


def cases(scale: float = 1.0, seed: int = 0) -> list[Case]:
    """The cross-process comparisons; scale < 1 shortens every case."""

    def n(base: int) -> int:
        return max(BATCH * 2, int(base * scale))

    return [
        throughput_case(64, n(200_000)),
        throughput_case(1024, n(200_000)),
        batch_case(64, n(500_000)),
        batch_case(1024, n(200_000)),
        array_case(max(4, int(200 * scale))),
        round_trip_case(n(20_000)),
        transport_case(64, n(200_000)),
        transport_case(1024, n(200_000)),
        transport_array_case(max(4, int(200 * scale))),
        transport_round_trip_case(n(20_000)),
    ]


def missing_peers() -> list[str]:
    """Notes for the table: peers not installed, and messages a peer lost."""
    notes = [] if faster_fifo is not None else [
        "faster_fifo (pip install faster-fifo) is not installed: its rows are left out"]
    return notes + LOSSES

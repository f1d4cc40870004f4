"""``ringbus bench ipc``: process-to-process messaging against multiprocessing, faster-fifo and raw pyzmq."""

from __future__ import annotations

import multiprocessing
import os
import time
import uuid
from itertools import repeat
from typing import Any, Callable

import numpy as np
import zmq

from ringbus._core._shm_channel import ShmChannel
from ringbus.bench._harness import Case

try:
    import faster_fifo
except ImportError:  # an optional peer: its rows are left out, and the CLI says so
    faster_fifo = None

FORK = multiprocessing.get_context("fork")  # children inherit the set-up; nothing of theirs is timed
BATCH = 100
BIG = 4 * 1024 * 1024


def _in_child(body: Callable[[], None]) -> Any:
    """Run body in a forked child that exits hard (no atexit, no inherited finalizers)."""

    def main() -> None:
        try:
            body()
        finally:
            os._exit(0)

    child = FORK.Process(target=main, daemon=True)
    child.start()
    return child


def _channel_name() -> str:
    return f"rbbench-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _receive_timed(n: int, recv_one: Callable[[], Any]) -> float:
    """Time n-1 receptions after the first (so the child's start-up is not counted)."""
    recv_one()
    start = time.perf_counter()
    for _ in repeat(None, n - 1):
        recv_one()
    return (time.perf_counter() - start) * n / (n - 1)


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

        child = _in_child(produce)
        try:
            return _receive_timed(n, rx.recv)
        finally:
            child.join()
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

        child = _in_child(produce)
        try:
            got = len(rx.recv_many(BATCH))
            start = time.perf_counter()
            while got < n // BATCH * BATCH:
                got += len(rx.recv_many(BATCH))
            return time.perf_counter() - start
        finally:
            child.join()
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

        child = _in_child(produce)
        try:
            return _receive_timed(n, q.get)
        finally:
            child.join()

    return run


def mp_pipe(size: int) -> Callable[[int], float]:
    def run(n: int) -> float:
        rx, tx = FORK.Pipe(duplex=False)
        payload = bytes(size)

        def produce() -> None:
            for _ in repeat(None, n):
                tx.send_bytes(payload)

        child = _in_child(produce)
        try:
            return _receive_timed(n, rx.recv_bytes)
        finally:
            child.join()

    return run


def ff_single(size: int) -> Callable[[int], float]:
    def run(n: int) -> float:
        q = faster_fifo.Queue(max_size_bytes=1 << 22)
        payload = bytes(size)

        def produce() -> None:
            for _ in repeat(None, n):
                q.put(payload, timeout=60)

        child = _in_child(produce)
        try:
            return _receive_timed(n, lambda: q.get(timeout=60))
        finally:
            child.join()

    return run


def ff_batch(size: int) -> Callable[[int], float]:
    def run(n: int) -> float:
        q = faster_fifo.Queue(max_size_bytes=1 << 22)
        batch = [bytes(size)] * BATCH

        def produce() -> None:
            for _ in repeat(None, n // BATCH):
                q.put_many(batch, timeout=60)

        child = _in_child(produce)
        try:
            got = len(q.get_many(timeout=60, max_messages_to_get=BATCH))
            start = time.perf_counter()
            while got < n // BATCH * BATCH:
                got += len(q.get_many(timeout=60, max_messages_to_get=BATCH))
            return time.perf_counter() - start
        finally:
            child.join()

    return run


def zmq_push_pull(size: int, copy: bool = True) -> Callable[[int], float]:
    def run(n: int) -> float:
        endpoint = f"ipc:///tmp/{_channel_name()}"
        ctx = zmq.Context()
        pull = ctx.socket(zmq.PULL)
        pull.linger = 0
        pull.bind(endpoint)
        payload = bytes(size)

        def produce() -> None:
            cctx = zmq.Context()
            push = cctx.socket(zmq.PUSH)
            push.linger = -1  # deliver everything before exit
            push.connect(endpoint)
            send = push.send
            for _ in repeat(None, n):
                send(payload, copy=copy)
            push.close()
            cctx.term()

        child = _in_child(produce)
        try:
            return _receive_timed(n, lambda: pull.recv(copy=copy))
        finally:
            child.join()
            pull.close()
            ctx.term()

    return run


def throughput_case(size: int, n: int) -> Case:
    peers: list[tuple[str, Callable[[int], float]]] = [
        ("multiprocessing.Queue", mp_queue(size)),
        ("multiprocessing.Pipe", mp_pipe(size)),
        ("pyzmq PUSH/PULL ipc", zmq_push_pull(size)),
        (f"ShmChannel send_many/recv_many x{BATCH}", shm_batch(size)),
    ]
    if faster_fifo is not None:
        peers[1:1] = [("faster_fifo put/get", ff_single(size)), (f"faster_fifo put_many/get_many x{BATCH}", ff_batch(size))]
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
    arr = np.ones(BIG // 8, np.float64)

    def produce() -> None:
        tx = ShmChannel.attach(name)
        for _ in repeat(None, n):
            tx.send(arr)
        tx.close()

    child = _in_child(produce)
    try:
        return _receive_timed(n, lambda: np.frombuffer(rx.recv_view(), np.float64)[-1])
    finally:
        child.join()
        rx.close()


def zmq_array(n: int) -> float:
    endpoint = f"ipc:///tmp/{_channel_name()}"
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.linger = 0
    pull.bind(endpoint)
    arr = np.ones(BIG // 8, np.float64)

    def produce() -> None:
        cctx = zmq.Context()
        push = cctx.socket(zmq.PUSH)
        push.linger = -1
        push.connect(endpoint)
        for _ in repeat(None, n):
            push.send(arr, copy=False)
        push.close()
        cctx.term()

    child = _in_child(produce)
    try:
        return _receive_timed(n, lambda: np.frombuffer(pull.recv(copy=False).buffer, np.float64)[-1])
    finally:
        child.join()
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

def shm_ping_pong(n: int) -> list[float]:
    there, back = _channel_name(), _channel_name()
    out = ShmChannel.create(there, 1 << 16)
    inp = ShmChannel.create(back, 1 << 16)

    def echo() -> None:
        rx, tx = ShmChannel.attach(there), ShmChannel.attach(back)
        for _ in repeat(None, n + 1):
            tx.send(rx.recv_view())
        tx.close()

    child = _in_child(echo)
    try:
        payload = bytes(64)
        samples = []
        out.send(payload)
        inp.recv()
        for _ in repeat(None, n):
            t = time.perf_counter()
            out.send(payload)
            inp.recv()
            samples.append(time.perf_counter() - t)
        return samples
    finally:
        child.join()
        out.close()
        inp.close()


def pipe_ping_pong(n: int) -> list[float]:
    a, b = FORK.Pipe()

    def echo() -> None:
        for _ in repeat(None, n + 1):
            b.send_bytes(b.recv_bytes())

    child = _in_child(echo)
    try:
        payload = bytes(64)
        samples = []
        a.send_bytes(payload)
        a.recv_bytes()
        for _ in repeat(None, n):
            t = time.perf_counter()
            a.send_bytes(payload)
            a.recv_bytes()
            samples.append(time.perf_counter() - t)
        return samples
    finally:
        child.join()


def zmq_req_rep(n: int) -> list[float]:
    endpoint = f"ipc:///tmp/{_channel_name()}"
    ctx = zmq.Context()
    req = ctx.socket(zmq.REQ)
    req.linger = 0
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

    child = _in_child(echo)
    try:
        payload = bytes(64)
        samples = []
        req.send(payload)
        req.recv()
        for _ in repeat(None, n):
            t = time.perf_counter()
            req.send(payload)
            req.recv()
            samples.append(time.perf_counter() - t)
        return samples
    finally:
        child.join()
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
    ]


def missing_peers() -> list[str]:
    return [] if faster_fifo is not None else ["faster_fifo (pip install faster-fifo) is not installed: its rows are left out"]

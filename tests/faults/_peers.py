"""Child processes of the process-fault tests (consumers that die, subscribers that freeze, clients that ride
broker restarts, a garbage flood) and the small measurements those tests share.

Each child writes what it saw with one ``os.write`` per line (unbuffered: a line written before a SIGKILL is
kept). Times are ``time.monotonic()``, which on Linux is one clock for every process of the machine, so the
test compares them across processes.

As a script: ``python _peers.py ROLE ARGS...`` with ROLE one of ``consumers``, ``subscriber``, ``clients``,
``flood``.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ringbus
from ringbus.message import Message

HERE = Path(__file__).resolve().parent
QUIET = 3.0  # seconds without a message after which a subscriber that was told the end stops


# -- measurements --------------------------------------------------------------------------------------------------

def proc_status_mib(pid: int, field: str = "VmRSS") -> float:
    """A size field of /proc/PID/status (VmRSS, VmHWM, VmPeak ...) in MiB."""
    with open(f"/proc/{pid}/status") as status:
        kib = next(int(line.split()[1]) for line in status if line.startswith(field + ":"))
    return kib / 1024.0


def growth_per_minute(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB) samples, in MiB per minute."""
    n = len(samples)
    if n < 2:
        return 0.0
    mean_t = sum(t for t, _ in samples) / n
    mean_v = sum(v for _, v in samples) / n
    var = sum((t - mean_t) ** 2 for t, _ in samples)
    if var == 0.0:
        return 0.0
    return 60.0 * sum((t - mean_t) * (v - mean_v) for t, v in samples) / var


def free_tcp_endpoint() -> str:
    """A loopback endpoint with a port free now (a broker restarted on it must find the same address)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{probe.getsockname()[1]}"


@contextlib.contextmanager
def peer(role: str, *args: object) -> Iterator[subprocess.Popen[str]]:
    """``python _peers.py ROLE ARGS...`` with its standard output piped; killed (if still running) on exit."""
    child = subprocess.Popen([sys.executable, str(HERE / "_peers.py"), role, *map(str, args)],
                             stdout=subprocess.PIPE, text=True)
    try:
        yield child
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()


def finish(child: subprocess.Popen[str], timeout: float = 60.0) -> str:
    """SIGTERM ``child`` (SIGCONT first, in case it is stopped) and return the rest of its output."""
    child.send_signal(signal.SIGCONT)
    child.send_signal(signal.SIGTERM)
    out, _ = child.communicate(timeout=timeout)
    return out


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


class Lines:
    """Appends lines to a file with one ``os.write`` each (atomic between processes, kept across SIGKILL)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    def write(self, *fields: object) -> None:
        os.write(self.fd, (" ".join(str(f) for f in fields) + "\n").encode())


def read_lines(directory: str | os.PathLike[str]) -> list[list[str]]:
    """Every line of every ``*.log`` in ``directory``, split into fields."""
    out: list[list[str]] = []
    for path in Path(directory).glob("*.log"):
        out.extend(line.split() for line in path.read_text().splitlines() if line)
    return out


# -- handlers of WorkerPool worker processes (spawned: importable by module name) ----------------------------------

def poison_handler(directory: str, message: Message) -> None:
    """``H id attempts`` per call; ``poison-raise`` raises, ``poison-kill`` SIGKILLs its own worker process."""
    Lines(Path(directory) / f"{os.getpid()}.log").write("H", message.id, message.attempts, bytes(message.body).decode())
    body = bytes(message.body)
    if body.startswith(b"poison-raise"):
        raise ValueError(f"cannot parse order {body.decode()!r}")
    if body.startswith(b"poison-kill"):
        os.kill(os.getpid(), signal.SIGKILL)


# -- roles ---------------------------------------------------------------------------------------------------------

def _consume_until_killed(url: str, queue: str, directory: str) -> None:
    """One forked consumer: ``D id attempts t`` per delivery; a ``die-`` body on its first delivery SIGKILLs
    this process before the ack; anything else is acked (``A id``)."""
    lines = Lines(Path(directory) / f"{os.getpid()}.log")
    with ringbus.connect(url) as bus:
        for message in bus.consume(queue, prefetch=1):
            lines.write("D", message.id, message.attempts, repr(time.monotonic()))
            if bytes(message.body).startswith(b"die-") and message.attempts == 0:
                os.kill(os.getpid(), signal.SIGKILL)
            message.ack()
            lines.write("A", message.id)


def _die_with_parent() -> None:
    """A forked child gets SIGKILL when its parent dies (Linux prctl PR_SET_PDEATHSIG): no orphans."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


def consumers(url: str, queue: str, directory: str, count: str) -> None:
    """Keeps ``count`` forked consumers alive (a dead one is replaced at once) until SIGTERM.

    Forked from a process that imported ringbus but never opened a socket, so a new consumer costs
    milliseconds, not an interpreter start: a thousand deaths fit in a fast test.
    """
    class Stop(Exception):
        pass

    def on_term(signum: int, frame: Any) -> None:
        raise Stop  # out of waitpid (PEP 475 would resume it after a handler that returns)

    signal.signal(signal.SIGTERM, on_term)
    children: set[int] = set()
    deaths = 0

    def fork_one() -> None:
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            _die_with_parent()
            try:
                _consume_until_killed(url, queue, directory)
            finally:
                os._exit(0)
        children.add(pid)

    try:
        for _ in range(int(count)):
            fork_one()
        print("ready", flush=True)
        while True:
            pid, status = os.waitpid(-1, 0)
            children.discard(pid)
            if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
                deaths += 1
            fork_one()
    except Stop:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    for pid in children:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    print(f"deaths {deaths}", flush=True)


def subscriber(url: str, pattern: str, expected: str, done: str) -> None:
    """Counts what an ephemeral subscription gets until ``expected`` are accounted for (received, or dropped
    and counted), or the file ``done`` exists and nothing came for ``QUIET`` s after; prints
    ``got N dropped D in_order 0|1``.

    Quiet alone cannot end it: a subscriber that was SIGSTOPped finds every timeout long past when it runs
    again, with its backlog still to come.
    """
    with ringbus.connect(url) as bus:
        subscription = bus.subscribe(pattern)
        print("ready", flush=True)
        want = int(expected)
        got, last, in_order = 0, -1, True
        last_seen = time.monotonic()
        while True:
            message = subscription.receive(timeout=0.5)
            if message is not None:
                seq = int(message.headers["seq"])  # type: ignore[arg-type]
                in_order = in_order and seq > last
                last, got, last_seen = seq, got + 1, time.monotonic()
                if got < want:
                    continue
            if got + subscription.dropped >= want:
                break
            if os.path.exists(done) and time.monotonic() - last_seen > QUIET:
                break
        print(f"got {got} dropped {subscription.dropped} in_order {int(in_order)}", flush=True)


def clients(url: str, first: str, count: str) -> None:
    """``count`` consumers in threads, each with its own bus on queue ``c-<i>``, until SIGTERM.

    Prints ``M i body t reconnects`` for each message (acked): when it came, and how many times that client's
    connection to the broker had come back by then.
    """
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    out = sys.stdout.fileno()

    def run(i: int) -> None:
        with ringbus.connect(url, timeout=5.0) as bus:
            for message in bus.consume(f"c-{i}", prefetch=8, timeout=None):
                message.ack()
                line = f"M {i} {bytes(message.body).decode()} {time.monotonic()!r} {bus.reconnects}\n"  # type: ignore[attr-defined]
                os.write(out, line.encode())

    for i in range(int(first), int(first) + int(count)):
        threading.Thread(target=run, args=(i,), daemon=True).start()
    os.write(out, b"ready\n")
    stop.wait()  # the consumer threads end with the process


def flood(url: str, count: str, seed: str, burst: str, pause: str) -> None:
    """``count`` malformed multipart messages of every kind on one DEALER, ``burst`` at a time back to back
    with ``pause`` seconds between bursts; prints ``sent N``."""
    import msgspec
    import zmq

    from ringbus.broker.protocol import SIGNATURE, Command, pack

    rng = random.Random(int(seed))
    kinds = [
        lambda: [os.urandom(rng.randrange(0, 64)) for _ in range(rng.randrange(1, 6))],  # raw garbage
        lambda: [b"RBB9", Command.QUEUES, b"1", pack({})],  # another protocol version
        lambda: [SIGNATURE, os.urandom(4), b"1", pack({})],  # unknown command
        lambda: [SIGNATURE, Command.SEND, b"1", b"\xc1" + os.urandom(8)],  # arguments not msgpack
        lambda: [SIGNATURE, Command.SEND, b"1", msgspec.msgpack.encode([1, 2])],  # arguments not a map
        lambda: [SIGNATURE, Command.SEND, b"1", pack({"queue": "flood"}), b"RB\x01\x00" + os.urandom(16)],
        lambda: [SIGNATURE, Command.SEND_MANY, b"1", pack({"queue": "flood", "frames": [2**30]}), b"x"],
        lambda: [SIGNATURE, Command.FETCH, b"1", pack({"queue": "flood", "session": "", "max": 10**9})],
        lambda: [SIGNATURE, Command.ACK, b"1", pack({"queue": "flood", "tags": "all"})],
        lambda: [SIGNATURE, Command.DECLARE, b"1", pack({"name": "../../etc", "options": {"nope": 1}})],
    ]
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 5000)  # every message leaves before the process ends
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.connect(url)
    for i in range(1, int(count) + 1):
        sock.send_multipart(rng.choice(kinds)())
        if i % int(burst) == 0:
            while sock.poll(0):  # the error replies: read, so they do not pile up
                sock.recv_multipart()
            time.sleep(float(pause))
    sock.close()
    print(f"sent {count}", flush=True)


if __name__ == "__main__":
    roles = {"consumers": consumers, "subscriber": subscriber, "clients": clients, "flood": flood}
    roles[sys.argv[1]](*sys.argv[2:])

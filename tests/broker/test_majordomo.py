"""Majordomo (RFC 7 MDP/0.1, RFC 8 MMI): the broker core, our client and worker, and raw RFC 7 peers."""

from __future__ import annotations

import itertools
import math
import random
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from hypothesis import given
from hypothesis import strategies as st

from conftest import WAIT_TIMEOUT as T
from conftest import ThreadGroup, wait_until
from ringbus import Closed, Empty, RingbusError
from ringbus.broker.majordomo import (
    C_CLIENT,
    ERROR_FRAME,
    W_DISCONNECT,
    W_HEARTBEAT,
    W_READY,
    W_REPLY,
    W_REQUEST,
    W_WORKER,
    Majordomo,
)
from ringbus.broker.mdp_client import MajordomoClient, MajordomoWorker, ServiceError

# Short heartbeats so that a dead peer is noticed quickly; a liveness of 6 leaves
# room for a busy 2-core machine before a live peer is taken for dead.
HB = 0.05
LIVENESS = 6
FAST = {"heartbeat_interval": HB, "liveness": LIVENESS}

READY = [b"", W_WORKER, W_READY]
HEARTBEAT = [b"", W_WORKER, W_HEARTBEAT]
DISCONNECT = [b"", W_WORKER, W_DISCONNECT]


# --- the harness: a ROUTER thread feeding the core, as the embedded broker does --------------


class Broker:
    """A ROUTER bound on its own thread whose poll loop feeds Majordomo.handle and tick."""

    def __init__(self, endpoint: str, **options: Any) -> None:
        self.endpoint = endpoint
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._started: list[BaseException | Majordomo] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(options,), name="mdp-broker", daemon=True)
        self._thread.start()
        if not self._ready.wait(T) or isinstance(self._started[0], BaseException):
            pytest.fail(f"the broker did not start: {self._started}")
        self.mdp: Majordomo = self._started[0]  # type: ignore[assignment]

    def _run(self, options: dict[str, Any]) -> None:
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.ROUTER)
        sock.linger = 0
        sock.router_mandatory = True  # a reply to a peer that left raises: the core must count it, not die
        try:
            sock.bind(self.endpoint)
            mdp = Majordomo(lambda frames: sock.send_multipart(frames, zmq.NOBLOCK), **options)
        except BaseException as exc:  # reported to the test by __init__
            self._started.append(exc)
            self._ready.set()
            sock.close(0)
            return
        self._started.append(mdp)
        self._ready.set()
        try:
            while not self._stop.is_set():
                with self._lock:
                    wait = mdp.tick()
                if not sock.poll(min(50, math.ceil(wait * 1000))):
                    continue
                while True:
                    try:
                        msg = sock.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    with self._lock:
                        mdp.handle(msg[0], msg[1:])
        finally:
            sock.close(0)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return self.mdp.stats()

    def services(self) -> list[str]:
        with self._lock:
            return self.mdp.services()

    def service(self, name: str) -> dict[str, int]:
        return self.stats()["services"].get(name, {"workers": 0, "waiting_workers": 0, "pending_requests": 0})

    def close(self) -> None:
        self._stop.set()
        self._thread.join(T)


class Rig:
    """One broker, and the workers, clients and raw sockets of a test; all stopped and closed at its end."""

    def __init__(self, tmp_path: Path, threads: ThreadGroup) -> None:
        self.endpoint = f"ipc://{tmp_path}/mdp.sock"
        self._threads = threads
        self._brokers: list[Broker] = []
        self._stops: list[threading.Event] = []
        self._closers: list[Callable[[], None]] = []

    def broker(self, **options: Any) -> Broker:
        broker = Broker(self.endpoint, **{**FAST, **options})
        self._brokers.append(broker)
        return broker

    def worker(self, service: str, handler: Callable[[list[bytes]], Any], **options: Any) -> MajordomoWorker:
        """A MajordomoWorker serving on a thread of its own until the test ends."""
        worker = MajordomoWorker(self.endpoint, service, linger=0, **{**FAST, **options})
        stop = threading.Event()
        self._stops.append(stop)
        self._threads.start(lambda: worker.serve(handler, stop=stop, poll_interval=0.02),
                            name=f"worker-{service}-{len(self._stops)}")
        return worker

    def client(self) -> MajordomoClient:
        client = MajordomoClient(self.endpoint)
        self._closers.append(client.close)
        return client

    def raw(self, kind: int, *, bind: bool = False) -> zmq.Socket[bytes]:
        """A plain pyzmq socket (linger 0) connected to the broker's endpoint, or bound to it."""
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(kind)
        sock.linger = 0
        self._closers.append(sock.close)
        (sock.bind if bind else sock.connect)(self.endpoint)
        return sock

    def close(self) -> None:
        for stop in self._stops:
            stop.set()
        for close in self._closers:
            close()
        for broker in self._brokers:
            broker.close()


@pytest.fixture
def rig(tmp_path: Path, threads: ThreadGroup) -> Iterator[Rig]:
    made = Rig(tmp_path, threads)
    yield made
    made.close()  # before `threads` joins the workers: their stop events are set here


def recv(sock: zmq.Socket[bytes], timeout: float = T) -> list[bytes]:
    """One multipart message, or fail the test (never hang)."""
    if not sock.poll(int(timeout * 1000)):
        pytest.fail(f"nothing received within {timeout} s")
    return sock.recv_multipart()


def recv_skipping_heartbeats(sock: zmq.Socket[bytes]) -> list[bytes]:
    """The next worker-side message that is not a HEARTBEAT (DEALER framing: [b"", b"MDPW01", command, ...])."""
    until = time.monotonic() + T
    while time.monotonic() < until:
        frames = recv(sock)
        if frames[:3] != HEARTBEAT:
            return frames
    pytest.fail("only heartbeats arrived")


def echo(body: list[bytes]) -> list[bytes]:
    return [b"echo", *body]


_client_names = itertools.count()


def ask_in_thread(threads: ThreadGroup, endpoint: str, service: str, *body: bytes) -> Callable[[], list[bytes]]:
    """Send a request from a client of its own on a thread; the returned callable waits for the reply."""
    name = f"client-{service}-{next(_client_names)}"

    def ask() -> list[bytes]:
        with MajordomoClient(endpoint) as client:
            return client.request(service, *body, timeout=T)

    thread = threads.start(ask, name=name)

    def result() -> Any:
        thread.join(T)
        if thread.is_alive():
            pytest.fail(f"{name} did not finish")
        for who, exc in threads.errors:
            if who == name:
                raise exc
        return threads.results[name]

    return result


# --- through sockets: our client and worker ----------------------------------------------


def test_request_reply_between_our_client_and_worker(rig: Rig) -> None:
    broker = rig.broker()
    rig.worker("echo", echo)
    client = rig.client()
    assert client.request("echo", b"a", b"b", timeout=T) == [b"echo", b"a", b"b"]
    assert client.request(b"echo", timeout=T) == [b"echo"]  # no body frames at all
    for i in range(20):
        assert client.request("echo", str(i).encode(), timeout=T) == [b"echo", str(i).encode()]
    stats = broker.stats()
    assert stats["requests"] == stats["replies"] == 22
    assert stats["malformed"] == stats["dropped"] == stats["internal_errors"] == 0
    assert broker.services() == ["echo"]


def test_two_workers_share_the_load(rig: Rig) -> None:
    broker = rig.broker()
    for name in (b"w1", b"w2"):
        rig.worker("work", lambda body, name=name: [name])
    wait_until(lambda: broker.service("work")["waiting_workers"] == 2, "both workers ready")
    client = rig.client()
    served = [client.request("work", b"x", timeout=T)[0] for _ in range(20)]
    assert set(served) == {b"w1", b"w2"}
    assert broker.stats()["services"]["work"]["workers"] == 2


def test_a_request_sent_before_any_worker_is_served_when_one_comes(rig: Rig, threads: ThreadGroup) -> None:
    broker = rig.broker()
    result = ask_in_thread(threads, rig.endpoint, "late", b"hello")
    wait_until(lambda: broker.service("late")["pending_requests"] == 1, "the request queued")
    assert broker.stats()["workers"] == 0
    rig.worker("late", echo)
    assert result() == [b"echo", b"hello"]
    assert broker.stats()["services"]["late"]["pending_requests"] == 0


def test_a_dead_worker_is_purged_and_its_request_goes_to_the_next(rig: Rig, threads: ThreadGroup) -> None:
    broker = rig.broker()
    result = ask_in_thread(threads, rig.endpoint, "job", b"payload")
    wait_until(lambda: broker.service("job")["pending_requests"] == 1, "the request queued")
    doomed = rig.raw(zmq.DEALER)  # a raw worker that never heartbeats: it is given the request at READY
    doomed.send_multipart([*READY, b"job"])
    request = recv_skipping_heartbeats(doomed)
    assert request[:3] == [b"", W_WORKER, W_REQUEST] and request[4:] == [b"", b"payload"]
    doomed.close(0)  # dies with the request in hand, no DISCONNECT

    wait_until(lambda: broker.stats()["requeued"] == 1, "the silent worker purged")
    assert broker.service("job") == {"workers": 0, "waiting_workers": 0, "pending_requests": 1}
    rig.worker("job", echo)
    assert result() == [b"echo", b"payload"]  # re-queued once, at the front: served by the next worker
    stats = broker.stats()
    assert stats["dropped"] == 0 and stats["replies"] == 1


def test_mmi_service_answers_200_404_and_501(rig: Rig) -> None:
    broker = rig.broker()
    rig.worker("echo", echo)
    wait_until(lambda: broker.service("echo")["workers"] == 1, "the worker registered")
    client = rig.client()
    assert client.request("mmi.service", b"echo", timeout=T) == [b"200"]
    assert client.request("mmi.service", b"nobody", timeout=T) == [b"404"]
    assert client.request("mmi.service", timeout=T) == [b"404"]  # names no service
    assert client.request("mmi.unheard-of", b"x", timeout=T) == [b"501"]
    assert client.available("echo", timeout=T) is True
    assert client.available("nobody", timeout=T) is False
    assert "nobody" not in broker.stats()["services"]  # asking about it creates nothing


def test_a_handler_exception_reaches_the_client_as_ringbus_error(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    def handler(body: list[bytes]) -> bytes:
        if body == [b"boom"]:
            raise ValueError("cannot take boom")
        return b"fine"

    rig.broker()
    worker = rig.worker("fragile", handler)
    client = rig.client()
    with caplog.at_level("ERROR", logger="ringbus.broker.majordomo"):
        with pytest.raises(RingbusError, match="ValueError: cannot take boom") as info:
            client.request("fragile", b"boom", timeout=T)
    assert isinstance(info.value, ServiceError)
    assert info.value.service == "fragile" and info.value.reason == "ValueError: cannot take boom"
    assert any(r.name == "ringbus.broker.majordomo" and r.exc_info for r in caplog.records)
    assert client.request("fragile", b"ok", timeout=T) == [b"fine"]  # the worker goes on
    wait_until(lambda: worker.stats()["errors"] == 1, "the error counted")


def test_a_handler_that_returns_no_bytes_is_an_error_too(rig: Rig) -> None:
    rig.broker()
    rig.worker("sloppy", lambda body: "text, not bytes")
    with pytest.raises(ServiceError, match="TypeError"):
        rig.client().request("sloppy", timeout=T)


def test_malformed_input_is_counted_and_the_broker_keeps_serving(rig: Rig, rng: random.Random) -> None:
    broker = rig.broker()
    bad = rig.raw(zmq.DEALER)
    garbage = [[rng.randbytes(rng.randint(1, 32)) for _ in range(rng.randint(1, 4))] for _ in range(20)]
    wrong = [
        [b""],  # nothing after the delimiter
        [b"", C_CLIENT],  # no service
        [b"", b"MDPX01", b"echo", b"x"],  # unknown header
        [b"", C_CLIENT, b"", b"x"],  # empty service name
        [b"", C_CLIENT, b"\xff\xfe", b"x"],  # service name not UTF-8
    ]
    disconnecting = [
        [b"", W_WORKER, b"\x09"],  # unknown command
        [b"", W_WORKER, W_REQUEST, b"x", b"", b"y"],  # a broker-to-worker command
        [b"", W_WORKER, W_REPLY, b"someone", b"", b"x"],  # REPLY without READY
        [b"", W_WORKER, W_HEARTBEAT],  # HEARTBEAT without READY
        [*READY],  # READY without a service
        [*READY, b"mmi.service"],  # READY for a reserved service
    ]
    for frames in garbage + wrong + disconnecting:
        bad.send_multipart(frames)
    expected = len(garbage) + len(wrong) + len(disconnecting)
    wait_until(lambda: broker.stats()["malformed"] == expected, f"{expected} malformed messages counted")
    # RFC 7: a worker that breaks the protocol is sent DISCONNECT
    assert [recv(bad) for _ in disconnecting] == [DISCONNECT] * len(disconnecting)

    rig.worker("echo", echo)
    assert rig.client().request("echo", b"still here", timeout=T) == [b"echo", b"still here"]
    stats = broker.stats()
    assert stats["internal_errors"] == 0 and stats["workers"] == 1 and stats["replies"] == 1


def test_a_long_handler_keeps_its_worker_alive(rig: Rig) -> None:
    broker = rig.broker()

    def slow(body: list[bytes]) -> bytes:
        time.sleep(4 * HB * LIVENESS)  # longer than the broker waits for a silent worker
        return b"done"

    worker = rig.worker("slow", slow)
    assert rig.client().request("slow", timeout=T) == [b"done"]
    assert broker.stats()["requeued"] == 0 and worker.stats()["reconnects"] == 0


def test_a_timed_out_request_never_takes_a_late_reply(rig: Rig) -> None:
    rig.broker()
    gate = threading.Event()

    def held(body: list[bytes]) -> list[bytes]:
        if body == [b"first"]:
            gate.wait(T)
        return [b"reply to", *body]

    rig.worker("held", held)
    client = rig.client()
    with pytest.raises(Empty):
        client.request("held", b"first", timeout=0.2)
    gate.set()
    assert client.request("held", b"second", timeout=T) == [b"reply to", b"second"]


# --- interop: raw pyzmq peers that follow RFC 7 to the letter -----------------------------


def test_raw_rfc7_client_and_worker_work_with_the_core(rig: Rig, threads: ThreadGroup) -> None:
    # A long heartbeat: the raw worker does not heartbeat, and must not be purged mid-test.
    broker = rig.broker(heartbeat_interval=1.0, liveness=5)
    worker = rig.raw(zmq.DEALER)  # mdwrkapi: a DEALER with the empty frame written out
    worker.send_multipart([b"", W_WORKER, W_READY, b"echo"])
    wait_until(lambda: broker.service("echo")["workers"] == 1, "the raw worker registered")

    client = rig.raw(zmq.REQ)  # mdcliapi: a REQ socket, which adds the empty delimiter itself
    client.send_multipart([C_CLIENT, b"echo", b"hello", b"world"])
    request = recv_skipping_heartbeats(worker)
    assert request[:3] == [b"", W_WORKER, W_REQUEST] and request[4:] == [b"", b"hello", b"world"]
    worker.send_multipart([b"", W_WORKER, W_REPLY, request[3], b"", b"HELLO", b"WORLD"])
    assert recv(client) == [C_CLIENT, b"echo", b"HELLO", b"WORLD"]

    # a raw REQ client served by our worker, and our client served by the raw worker
    rig.worker("ours", echo)
    client.send_multipart([C_CLIENT, b"ours", b"x"])
    assert recv(client) == [C_CLIENT, b"ours", b"echo", b"x"]
    client.send_multipart([C_CLIENT, b"mmi.service", b"ours"])
    assert recv(client) == [C_CLIENT, b"mmi.service", b"200"]

    result = ask_in_thread(threads, rig.endpoint, "echo", b"ping")
    got = recv_skipping_heartbeats(worker)
    worker.send_multipart([b"", W_WORKER, W_REPLY, got[3], b"", b"raw:" + got[-1]])
    assert result() == [b"raw:ping"]

    worker.send_multipart([b"", W_WORKER, W_DISCONNECT])
    wait_until(lambda: broker.service("echo")["workers"] == 0, "the raw worker's DISCONNECT")
    client.send_multipart([C_CLIENT, b"mmi.service", b"echo"])
    assert recv(client) == [C_CLIENT, b"mmi.service", b"404"]


def test_our_worker_reconnects_when_the_broker_is_silent(rig: Rig) -> None:
    router = rig.raw(zmq.ROUTER, bind=True)  # a "broker" that never answers
    worker = rig.worker("lonely", echo)
    first = recv(router)
    assert first[1:] == [*READY, b"lonely"]
    until = time.monotonic() + T
    while True:  # heartbeats from the first connection, then READY from a new one
        frames = recv(router)
        if frames[1:] == [*READY, b"lonely"]:
            break
        assert frames[1:] == HEARTBEAT and frames[0] == first[0]
        assert time.monotonic() < until, "no reconnect"
    assert frames[0] != first[0]
    assert worker.stats()["reconnects"] >= 1


def test_a_stopping_worker_finishes_its_request_and_sends_disconnect(rig: Rig, threads: ThreadGroup) -> None:
    router = rig.raw(zmq.ROUTER, bind=True)
    stop = threading.Event()
    gate = threading.Event()

    def handler(body: list[bytes]) -> bytes:
        gate.wait(T)
        return b"finished"

    worker = MajordomoWorker(rig.endpoint, "bye", heartbeat_interval=30.0, linger=0)
    threads.start(lambda: worker.serve(handler, stop=stop, poll_interval=0.02), name="leaving-worker")
    identity, *ready = recv(router)
    assert ready == [*READY, b"bye"]
    router.send_multipart([identity, b"", W_WORKER, W_REQUEST, b"client-1", b"", b"job"])
    wait_until(lambda: worker.stats()["requests"] == 1, "the request taken")
    stop.set()
    gate.set()
    assert recv(router) == [identity, b"", W_WORKER, W_REPLY, b"client-1", b"", b"finished"]
    assert recv(router) == [identity, *DISCONNECT]


def test_close_stops_serve_and_closed_peers_refuse_calls(rig: Rig, threads: ThreadGroup) -> None:
    router = rig.raw(zmq.ROUTER, bind=True)
    worker = MajordomoWorker(rig.endpoint, "brief", heartbeat_interval=30.0, linger=0)
    serving = threads.start(lambda: worker.serve(echo, poll_interval=0.02), name="closing-worker")
    identity, *_ = recv(router)
    worker.close()  # from another thread than the one serving
    assert recv(router) == [identity, *DISCONNECT]
    serving.join(T)
    assert not serving.is_alive()
    with pytest.raises(Closed):
        worker.serve(echo)

    client = MajordomoClient(rig.endpoint)
    elsewhere = threads.start(lambda: client.request("x", timeout=0), name="foreign-client")
    elsewhere.join(T)
    assert [type(exc) for who, exc in threads.errors if who == "foreign-client"] == [RuntimeError]
    threads.errors.clear()
    client.close()
    client.close()
    with pytest.raises(Closed):
        client.request("x")
    with pytest.raises(ValueError, match="reserved"):
        MajordomoWorker(rig.endpoint, "mmi.service")


# --- the core alone: a fake clock and a list for a socket ----------------------------------


class Core:
    """Majordomo with a steerable clock; what it sends is collected in .sent."""

    def __init__(self, **options: Any) -> None:
        self.now = 1000.0
        self.sent: list[list[bytes]] = []
        self.unreachable: set[bytes] = set()
        self.mdp = Majordomo(self._send, clock=lambda: self.now, **{**FAST, **options})

    def _send(self, frames: list[bytes]) -> None:
        if frames[0] in self.unreachable:
            raise zmq.ZMQError(zmq.EHOSTUNREACH)
        self.sent.append(frames)

    def take(self) -> list[list[bytes]]:
        sent, self.sent = self.sent, []
        return sent

    def ready(self, worker: bytes, service: bytes) -> None:
        self.mdp.handle(worker, [*READY, service])

    def ask(self, client: bytes, service: bytes, *body: bytes) -> None:
        self.mdp.handle(client, [b"", C_CLIENT, service, *body])

    def reply(self, worker: bytes, client: bytes, *body: bytes) -> None:
        self.mdp.handle(worker, [b"", W_WORKER, W_REPLY, client, b"", *body])

    def later(self, seconds: float) -> float:
        self.now += seconds
        return self.mdp.tick()

    def check_every_request_accounted(self) -> None:
        s = self.mdp.stats()
        pending = sum(v["pending_requests"] for v in s["services"].values())
        assert s["requests"] == s["replies"] + s["dropped"] + s["expired"] + pending + s["in_progress"], s
        assert s["internal_errors"] == 0


LIFETIME = HB * LIVENESS


def test_core_purges_a_silent_worker_and_requeues_its_request_once() -> None:
    core = Core()
    core.ready(b"w1", b"svc")
    core.ask(b"c1", b"svc", b"job")
    assert core.take() == [[b"w1", b"", W_WORKER, W_REQUEST, b"c1", b"", b"job"]]
    core.later(LIFETIME + HB)  # w1 silent: purged, its request back in front
    assert core.mdp.stats()["requeued"] == 1
    assert core.mdp.stats()["services"]["svc"] == {"workers": 0, "waiting_workers": 0, "pending_requests": 1}
    core.take()
    core.ready(b"w2", b"svc")
    assert core.take() == [[b"w2", b"", W_WORKER, W_REQUEST, b"c1", b"", b"job"]]
    core.later(LIFETIME + HB)  # w2 dies on it too: the request is dropped, not tried forever
    stats = core.mdp.stats()
    assert stats["requeued"] == 1 and stats["dropped"] == 1 and stats["services"] == {}
    core.check_every_request_accounted()


def test_core_heartbeats_every_worker_and_keeps_those_that_answer() -> None:
    core = Core()
    core.ready(b"busy", b"svc")  # the longest idle: it gets the request
    core.ready(b"idle", b"svc")
    core.ask(b"c1", b"svc", b"job")
    assert core.take() == [[b"busy", b"", W_WORKER, W_REQUEST, b"c1", b"", b"job"]]
    assert core.later(HB / 2) == pytest.approx(HB / 2)  # nothing due yet: tells how long to wait
    assert core.take() == []
    for _ in range(3 * LIVENESS):
        assert core.later(HB) == pytest.approx(HB)
        assert sorted(core.take()) == [[b"busy", *HEARTBEAT], [b"idle", *HEARTBEAT]]
        core.mdp.handle(b"idle", HEARTBEAT)
        core.mdp.handle(b"busy", HEARTBEAT)
    assert core.mdp.stats()["workers"] == 2
    core.reply(b"busy", b"c1", b"done")
    assert core.take() == [[b"c1", b"", C_CLIENT, b"svc", b"done"]]
    core.check_every_request_accounted()


def test_core_bounds_and_expires_pending_requests() -> None:
    core = Core(max_pending_per_service=3, max_pending=5, request_expiry=10.0)
    for i in range(4):
        core.ask(b"c", b"a", bytes([i]))
    for i in range(3):
        core.ask(b"c", b"b", bytes([i]))
    stats = core.mdp.stats()
    assert stats["services"]["a"]["pending_requests"] == 3 and stats["services"]["b"]["pending_requests"] == 2
    assert stats["dropped"] == 2
    core.later(5.0)
    core.ask(b"c", b"c", b"young")  # refused: all queues together are full
    core.later(6.0)  # the first seven have waited 11 s
    stats = core.mdp.stats()
    assert stats["expired"] == 5 and stats["dropped"] == 3 and stats["services"] == {}  # forgotten when empty
    core.ask(b"c", b"a", b"fresh")
    core.ready(b"w", b"a")
    assert core.take() == [[b"w", b"", W_WORKER, W_REQUEST, b"c", b"", b"fresh"]]
    core.check_every_request_accounted()


def test_core_disconnects_workers_that_break_the_protocol() -> None:
    core = Core()
    core.ready(b"w", b"svc")
    core.ready(b"w", b"svc")  # READY twice
    assert core.take() == [[b"w", *DISCONNECT]] and core.mdp.stats()["workers"] == 0
    core.ready(b"w", b"svc")
    core.ask(b"c", b"svc", b"job")
    core.take()
    core.mdp.handle(b"w", [b"", W_WORKER, W_REPLY, b"c"])  # REPLY without its delimiter, mid-request
    assert core.take() == [[b"w", *DISCONNECT]]
    assert core.mdp.stats()["requeued"] == 1 and core.mdp.stats()["services"]["svc"]["pending_requests"] == 1
    core.mdp.handle(b"stranger", DISCONNECT)  # nothing to forget: ignored
    assert core.take() == [] and core.mdp.stats()["malformed"] == 2
    core.ready(b"w2", b"svc")
    assert core.take() == [[b"w2", b"", W_WORKER, W_REQUEST, b"c", b"", b"job"]]
    core.check_every_request_accounted()


def test_core_forwards_only_the_reply_to_the_request_in_progress() -> None:
    core = Core()
    core.ready(b"w", b"svc")
    core.reply(b"w", b"c", b"unasked")  # nothing in progress: stale
    assert core.take() == [] and core.mdp.stats()["stale_replies"] == 1
    core.ask(b"c1", b"svc", b"one")
    core.ask(b"c2", b"svc", b"two")
    assert core.take() == [[b"w", b"", W_WORKER, W_REQUEST, b"c1", b"", b"one"]]
    core.reply(b"w", b"c9", b"wrong")  # answers someone else: c1's request is dropped, w is free again
    assert core.take() == [[b"w", b"", W_WORKER, W_REQUEST, b"c2", b"", b"two"]]
    core.reply(b"w", b"c2", b"TWO")
    assert core.take() == [[b"c2", b"", C_CLIENT, b"svc", b"TWO"]]
    stats = core.mdp.stats()
    assert stats["stale_replies"] == 2 and stats["dropped"] == 1 and stats["replies"] == 1
    core.check_every_request_accounted()


def test_core_forgets_an_unreachable_worker_and_keeps_the_request() -> None:
    core = Core()
    core.ready(b"gone", b"svc")
    core.ready(b"here", b"svc")
    core.unreachable.add(b"gone")
    core.ask(b"c", b"svc", b"job")
    assert core.take() == [[b"here", b"", W_WORKER, W_REQUEST, b"c", b"", b"job"]]
    stats = core.mdp.stats()
    assert stats["unroutable"] == 1 and stats["workers"] == 1 and stats["requeued"] == 0
    core.unreachable.add(b"c")
    core.reply(b"here", b"c", b"lost")  # the client left: counted, and the worker is free again
    stats = core.mdp.stats()
    assert stats["dropped"] == 1 and stats["unroutable"] == 2
    assert stats["services"]["svc"]["waiting_workers"] == 1
    core.check_every_request_accounted()


def test_core_takes_zmq_frames_and_memoryviews() -> None:
    core = Core()
    core.mdp.handle(zmq.Frame(b"w"), [zmq.Frame(b""), zmq.Frame(W_WORKER), memoryview(W_READY), bytearray(b"svc")])
    core.ask(b"c", b"svc", b"job")
    assert core.take() == [[b"w", b"", W_WORKER, W_REQUEST, b"c", b"", b"job"]]
    core.mdp.handle(b"c", [b"", C_CLIENT, "svc", b"x"])  # a str frame is not bytes: malformed
    assert core.mdp.stats()["malformed"] == 1 and core.mdp.stats()["requests"] == 1


def test_core_refuses_bad_parameters() -> None:
    with pytest.raises(TypeError, match="send"):
        Majordomo(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="heartbeat_interval"):
        Majordomo(print, heartbeat_interval=0)
    with pytest.raises(TypeError, match="liveness"):
        Majordomo(print, liveness=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_pending_per_service"):
        Majordomo(print, max_pending_per_service=0)


_TOKENS = [b"", C_CLIENT, W_WORKER, W_READY, W_REQUEST, W_REPLY, W_HEARTBEAT, W_DISCONNECT, b"svc", b"mmi.service",
           b"mmi.x", b"a", b"b", ERROR_FRAME, b"\xff"]
_frames = st.lists(st.sampled_from(_TOKENS) | st.binary(max_size=4) | st.text(max_size=2) | st.none() | st.integers(),
                   max_size=7)
_peers = st.sampled_from([b"a", b"b", b"c"]) | st.binary(max_size=2) | st.text(max_size=1) | st.none()
_wellformed = st.tuples(st.sampled_from([b"a", b"b", b"c"]), st.sampled_from([
    [*READY, b"svc"], [b"", C_CLIENT, b"svc", b"x"], [b"", W_WORKER, W_REPLY, b"a", b"", b"y"],
    [b"", W_WORKER, W_REPLY, b"b", b"", b"y"], HEARTBEAT, DISCONNECT, [b"", C_CLIENT, b"mmi.service", b"svc"],
]))
_steps = st.lists(
    st.one_of(
        st.tuples(_peers, _frames),
        _wellformed,
        st.floats(0, 3 * LIFETIME),  # time passes, then tick
        st.sets(st.sampled_from([b"a", b"b", b"c"])),  # who is unreachable from now on
    ),
    max_size=60,
)


@given(steps=_steps)
def test_core_never_raises_and_accounts_for_every_request(steps: list[Any]) -> None:
    core = Core(max_pending_per_service=3, max_pending=4, request_expiry=2 * LIFETIME)
    for step in steps:
        if isinstance(step, float):
            assert 0 < core.later(step) <= HB
        elif isinstance(step, (set, frozenset)):
            core.unreachable = set(step)
        else:
            core.mdp.handle(*step)
        for frames in core.take():
            assert frames[1:3] in ([b"", C_CLIENT], [b"", W_WORKER]) and all(type(f) is bytes for f in frames)
        core.check_every_request_accounted()

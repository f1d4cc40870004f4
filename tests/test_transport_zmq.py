"""ZeroMQ transport helpers: push/pull, pub/sub, request-reply, CURVE and bad input, over ipc and tcp."""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq
from zmq.utils import z85
from zmq.utils.monitor import recv_monitor_message

import zmq_peers
from conftest import ThreadGroup, wait_until
from ringbus import Closed, Empty, Full, PeerGone, ProtocolError
from ringbus.codec import decode, encode
from ringbus.message import Message
from ringbus.transport import (
    CurveClient,
    CurveServer,
    Publisher,
    Puller,
    Pusher,
    Replier,
    ReplyHandle,
    Requester,
    Subscriber,
    curve_keypair,
)

SPAWN = multiprocessing.get_context("spawn")
LOCAL = "tcp://127.0.0.1:*"
T = 5.0  # generous bound for a wait that should end almost at once; never reached when passing


@pytest.fixture(params=["ipc", "tcp"])
def new_endpoint(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], str]:
    """Makes endpoints to bind: a fresh ipc path in tmp_path, or a random 127.0.0.1 port."""
    counter = itertools.count()
    if request.param == "tcp":
        return lambda: LOCAL
    return lambda: f"ipc://{tmp_path}/{next(counter)}.sock"


@pytest.fixture
def raw() -> Iterator[Callable[[int], zmq.Socket[bytes]]]:
    """Makes plain pyzmq sockets (linger=0), closed at the end: a peer that need not follow the protocol."""
    made: list[zmq.Socket[bytes]] = []

    def make(kind: int) -> zmq.Socket[bytes]:
        sock: zmq.Socket[bytes] = zmq.Context.instance().socket(kind)
        sock.linger = 0
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close(0)


def bound(sock: zmq.Socket[bytes]) -> str:
    """Where a plain pyzmq socket bound (its wildcard port resolved)."""
    return str(sock.get(zmq.LAST_ENDPOINT).decode())  # type: ignore[union-attr]


def pair(endpoint: str, **options: Any) -> tuple[Puller, Pusher]:
    rx = Puller(endpoint, bind=True, linger=0, **options)
    return rx, Pusher(rx.endpoint, bind=False, linger=0, **options)


def sync_subscriber(pub: Publisher, sub: Subscriber, topic: str) -> None:
    """Publish probes until the subscriber gets one: its subscription has reached the publisher."""
    for _ in range(int(T / 0.01)):
        pub.publish(topic, Message(b"probe"))
        try:
            got, _ = sub.recv(timeout=0.01)
            assert got == topic
            break
        except Empty:
            continue
    else:
        pytest.fail("the subscription never reached the publisher")
    while True:  # drop the probes still in flight
        try:
            sub.recv(timeout=0.05)
        except Empty:
            return


def serve_in_thread(threads: ThreadGroup, handler: Any, stop: threading.Event, endpoint: str = LOCAL,
                    **options: Any) -> tuple[str, Replier]:
    """Start Replier.serve on a thread that owns the socket; return its endpoint and the Replier (for statistics)."""
    started: queue.Queue[Any] = queue.Queue()

    def run() -> int:
        try:
            rep = Replier(endpoint, linger=0, **options)
        except BaseException as exc:
            started.put(exc)
            raise
        with rep:
            started.put(rep)
            return rep.serve(handler, stop_event=stop, poll_interval=0.02)

    threads.start(run, name="replier")
    rep = started.get(timeout=T)
    if isinstance(rep, BaseException):
        raise rep
    return rep.endpoint, rep


def echo(request: Message) -> Message:
    return Message(request.body, headers={"echo": True})


# --- push/pull ---------------------------------------------------------------------------------


def test_messages_keep_every_field_and_value(new_endpoint: Callable[[], str]) -> None:
    sent = [
        Message(b"raw bytes", key="order-42", priority=7, headers={"a": 1, "b": "x", "c": None, "d": 1.5},
                reply_to="replies", correlation_id="c-1", attempts=2),
        Message(b""),
        Message.of("text ünïcode"),
        Message.of({"k": [1, 2, 3]}),
        Message.of(np.arange(12, dtype=np.int32).reshape(3, 4)),
        Message(bytearray(b"mutable")),
        Message(memoryview(b"a view")),
    ]
    rx, tx = pair(new_endpoint())
    with rx, tx:
        for m in sent:
            tx.send(m, timeout=T)
        got = [rx.recv(timeout=T) for _ in sent]
        assert got == sent
        assert got[2].value() == "text ünïcode"
        assert got[3].value() == {"k": [1, 2, 3]}
        assert np.array_equal(got[4].value(), np.arange(12, dtype=np.int32).reshape(3, 4))
        assert rx.statistics().received == len(sent) == tx.statistics().sent
        assert rx.endpoint.startswith(("tcp://127.0.0.1:", "ipc://")) and not rx.endpoint.endswith("*")


def test_large_bodies_are_received_zero_copy(new_endpoint: Callable[[], str]) -> None:
    array = np.random.default_rng(7).random((256, 512))  # 1 MiB, above copy_threshold
    rx, tx = pair(new_endpoint())
    with rx, tx:
        for _ in range(3):
            tx.send(Message.of(array), timeout=T)
            tx.send(Message(b"small"), timeout=T)
        tx.send(Message.of(array), timeout=T)
        tx.send(Message.of(array), timeout=T)
        got = [rx.recv(timeout=T) for _ in range(8)]
    for m in got[0:6:2] + got[6:]:
        assert np.array_equal(m.value(), array)
    for m in got[1:6:2]:
        assert type(m.body) is bytes and m.body == b"small"  # small bodies always arrive as bytes
    # A large body after a large one is a view over the ZeroMQ frame, and so is the array.
    last = got[7]
    assert isinstance(last.body, memoryview) and last.body.readonly
    assert not last.value().flags.owndata


def test_copy_threshold_zero_makes_every_body_zero_copy(new_endpoint: Callable[[], str]) -> None:
    rx, tx = pair(new_endpoint(), copy_threshold=0)
    with rx, tx:
        tx.send(Message(b"tiny"), timeout=T)
        tx.send(Message(b"tiny too"), timeout=T)
        bodies = [rx.recv(timeout=T).body for _ in range(2)]
    assert all(isinstance(b, memoryview) for b in bodies) and bodies == [b"tiny", b"tiny too"]


def test_send_many_and_recv_many_keep_order(new_endpoint: Callable[[], str]) -> None:
    messages = [zmq_peers.numbered(0, i) for i in range(3000)]
    rx, tx = pair(new_endpoint())
    with rx, tx:
        got: list[Message] = []
        start = 0
        while start < len(messages):  # interleave: the HWM would otherwise stop the sender
            start += tx.send_many(messages[start : start + 700], timeout=0.5)
            got.extend(rx.recv_many(400, timeout=T))
        while len(got) < len(messages):
            got.extend(rx.recv_many(400, timeout=T))
        assert [m.id for m in got] == [m.id for m in messages]
        with pytest.raises(Empty):
            rx.recv_many(10, timeout=0.02)
        with pytest.raises(ValueError, match="max_messages"):
            rx.recv_many(0)


def test_timeouts_raise_empty_and_full(tmp_path: Path) -> None:
    with Puller(LOCAL, bind=True, linger=0) as rx:
        with pytest.raises(Empty, match="timeout"):
            rx.recv(timeout=0.02)
        with pytest.raises(Empty):
            rx.recv_nowait()
        for bad in (-1, float("nan"), float("inf")):
            with pytest.raises(ValueError, match="timeout"):
                rx.recv(timeout=bad)
    # A bound Pusher with no puller has nowhere to send: it blocks, then Full.
    with Pusher(LOCAL, bind=True, linger=0) as tx:
        with pytest.raises(Full, match="no peer"):
            tx.send(Message(b"x"), timeout=0.02)
        with pytest.raises(Full):
            tx.send_nowait(Message(b"x"))
        assert tx.send_many([Message(b"x")] * 3, timeout=0.02) == 0
    # A connecting Pusher queues up to its HWM for the peer it has not reached, then Full.
    with Pusher(f"ipc://{tmp_path}/nobody.sock", bind=False, hwm=3, linger=0) as tx:
        sent = 0
        with pytest.raises(Full):
            for sent in range(1, 1000):  # noqa: B007 - read after the loop: the attempt that raised Full
                tx.send(Message(b"x"), timeout=0.02)
        assert 1 < sent < 1000


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="endpoint"):
        Puller("http://127.0.0.1:80", bind=True)
    with pytest.raises(TypeError, match="endpoint"):
        Puller(5555, bind=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="hwm"):
        Puller(LOCAL, bind=True, hwm=0)
    with pytest.raises(ValueError, match="linger"):
        Puller(LOCAL, bind=True, linger=-1)
    with pytest.raises(ValueError, match="max_message_size"):
        Puller(LOCAL, bind=True, max_message_size=0)
    with pytest.raises(TypeError, match="curve"):
        Puller(LOCAL, bind=True, curve="secret")  # type: ignore[arg-type]
    with Pusher(LOCAL, bind=True, linger=0) as tx:
        with pytest.raises(TypeError, match="Message"):
            tx.send(b"bytes are not a Message")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="Message"):
            tx.send_many([Message(b"ok"), "no"])  # type: ignore[list-item]
        assert tx.statistics().sent == 0  # nothing of a bad batch was sent


def test_close_is_idempotent_and_calls_after_it_raise_closed() -> None:
    with Puller(LOCAL, bind=True, linger=0) as rx:
        tx = Pusher(rx.endpoint, bind=False, linger=0)
        tx.send(Message(b"x"), timeout=T)
        assert rx.recv(timeout=T).body == b"x"
    tx.close()
    tx.close()
    assert tx.closed and rx.closed and "closed" in repr(tx)
    with pytest.raises(Closed):
        tx.send(Message(b"x"))
    with pytest.raises(Closed):
        rx.recv(timeout=0)
    assert tx.statistics().sent == 1


def test_a_helper_refuses_other_threads(threads: ThreadGroup) -> None:
    with Puller(LOCAL, bind=True, linger=0) as rx:
        errors: list[BaseException] = []

        def use() -> None:
            for call in (lambda: rx.recv(timeout=0), rx.close):
                try:
                    call()
                except RuntimeError as exc:
                    errors.append(exc)

        threads.start(use)
        threads.join()
        assert len(errors) == 2 and all("thread" in str(e) for e in errors)
        assert rx.statistics().received == 0  # statistics() is fine from anywhere
        assert not rx.closed


@pytest.mark.integration
@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_two_processes_move_100k_messages_in_order(transport: str, tmp_path: Path) -> None:
    n = 100_000
    bind = LOCAL if transport == "tcp" else f"ipc://{tmp_path}/100k.sock"
    done = SPAWN.Event()
    with Puller(bind, bind=True, linger=0) as rx:
        producer = SPAWN.Process(target=zmq_peers.send_numbered, args=(rx.endpoint, 0, n, done))
        producer.start()
        try:
            expected = 0
            while expected < n:
                for m in rx.recv_many(1000, timeout=60):
                    assert m.key == "p0"
                    assert int.from_bytes(m.body, "little") == expected, "lost or reordered"
                    expected += 1
            with pytest.raises(Empty):
                rx.recv(timeout=0.1)  # and nothing beyond
        finally:
            done.set()
            producer.join(30)
            if producer.is_alive():
                producer.kill()
    assert producer.exitcode == 0
    assert rx.statistics().received == n


@pytest.mark.integration
def test_fan_out_to_four_workers_processes_each_message_once(tmp_path: Path) -> None:
    n, workers = 20_000, 4
    ready, stop = SPAWN.Queue(), SPAWN.Event()
    with Pusher(f"ipc://{tmp_path}/tasks.sock", bind=True, linger=0) as tasks, \
            Puller(f"ipc://{tmp_path}/results.sock", bind=True, linger=0) as results:
        procs = [SPAWN.Process(target=zmq_peers.work, args=(tasks.endpoint, results.endpoint, w, ready, stop))
                 for w in range(workers)]
        for p in procs:
            p.start()
        try:
            assert sorted(ready.get(timeout=60) for _ in procs) == list(range(workers))
            todo = [zmq_peers.numbered(0, i) for i in range(n)]
            seen: dict[int, str] = {}
            sent = 0
            # One thread owns both sockets: interleave sending and collecting so
            # neither side's high-water mark can stall the other.
            for _ in range(100_000):
                if sent < n:
                    sent += tasks.send_many(todo[sent : sent + 500], timeout=0.05)
                try:
                    for r in results.recv_many(1000, timeout=0 if sent < n else 10):
                        seq = int.from_bytes(r.body, "little")
                        assert seq not in seen, f"task {seq} processed twice ({seen[seq]} and {r.key})"
                        seen[seq] = r.key or ""
                except Empty:
                    if sent == n:
                        break
                if len(seen) == n:
                    break
            assert sorted(seen) == list(range(n)), "tasks lost"
            with pytest.raises(Empty):
                results.recv(timeout=0.2)  # no duplicate turns up late
            per_worker = {w: list(seen.values()).count(w) for w in set(seen.values())}
            print(f"tasks per worker: {per_worker}")
            assert len(per_worker) >= 2, f"the work was not shared: {per_worker}"
        finally:
            stop.set()
            for p in procs:
                p.join(30)
                if p.is_alive():
                    p.kill()
    assert [p.exitcode for p in procs] == [0] * workers


# --- pub/sub -----------------------------------------------------------------------------------


def test_subscribers_match_topic_prefixes(new_endpoint: Callable[[], str]) -> None:
    with Publisher(new_endpoint(), linger=0) as pub, \
            Subscriber(pub.endpoint, topics=["order.", "audit", "sync"], linger=0) as sub:
        sync_subscriber(pub, sub, "sync")
        topics = ["order.placed", "orders", "audit", "auditor", "order.paid", "other", ""]
        for i, topic in enumerate(topics):
            pub.publish(topic, Message(bytes([i])))
        got = []
        while True:
            try:
                got.append(sub.recv(timeout=0.2))
            except Empty:
                break
        assert [(t, m.body) for t, m in got] == [
            ("order.placed", b"\0"), ("audit", b"\2"), ("auditor", b"\3"), ("order.paid", b"\4")
        ]
        sub.unsubscribe("audit")
        sub.subscribe("sync2")
        assert sub.topics == ["order.", "sync", "sync2"]
        # Subscriptions travel in order: once sync2 works, the unsubscription arrived too.
        sync_subscriber(pub, sub, "sync2")
        pub.publish("audit", Message(b"gone"))
        pub.publish("order.x", Message(b"kept"))
        topic, m = sub.recv(timeout=T)
        assert (topic, m.body) == ("order.x", b"kept")
        with pytest.raises(ValueError, match="not subscribed"):
            sub.unsubscribe("nope")
        with pytest.raises(TypeError, match="single str"):
            Subscriber(pub.endpoint, topics="order.")
        with pytest.raises(TypeError, match="topic"):
            pub.publish(b"bytes", Message(b"x"))  # type: ignore[arg-type]


def test_publisher_drops_for_a_slow_subscriber_instead_of_blocking(tmp_path: Path) -> None:
    n = 2000
    with Publisher(f"ipc://{tmp_path}/pub.sock", hwm=5, linger=0) as pub, \
            Subscriber(pub.endpoint, topics=["sync", "data"], hwm=5, linger=0) as sub:
        sync_subscriber(pub, sub, "sync")
        body = bytes(16 * 1024)
        for i in range(n):  # far more than both queues and the kernel buffers hold; never blocks
            pub.publish("data", Message(body, headers={"seq": i}))
        assert pub.statistics().sent >= n
        seqs: list[int] = []
        while True:
            try:
                seqs.append(int(sub.recv(timeout=0.3)[1].headers["seq"] or 0))
            except Empty:
                break
    print(f"the slow subscriber got {len(seqs)} of {n}")
    assert 0 < len(seqs) < n
    assert seqs == sorted(seqs)


# --- request-reply -----------------------------------------------------------------------------


def test_request_reply_through_serve(new_endpoint: Callable[[], str], threads: ThreadGroup) -> None:
    stop = threading.Event()
    endpoint, rep = serve_in_thread(threads, echo, stop, endpoint=new_endpoint())
    try:
        with Requester(endpoint, linger=0) as a, Requester(endpoint, linger=0) as b:
            for i in range(20):
                for req in (a, b):
                    request = Message(f"{id(req)}-{i}".encode())
                    reply = req.request(request, timeout=T)
                    assert reply.correlation_id == request.id
                    assert reply.body == request.body and reply.headers == {"echo": True}
            assert a.statistics().received == 20 and a.statistics().stale_replies == 0
    finally:
        stop.set()
        threads.join()
    assert threads.results["replier"] == 40
    assert rep.statistics().received == 40 and rep.statistics().sent == 40


def test_a_late_reply_to_a_timed_out_request_is_discarded(raw: Callable[[int], zmq.Socket[bytes]]) -> None:
    router = raw(zmq.ROUTER)
    router.bind(LOCAL)
    with Requester(bound(router), linger=0) as req:
        first, second = Message(b"first"), Message(b"second")
        with pytest.raises(Empty, match="no reply"):
            req.request(first, timeout=0.05)
        assert router.poll(int(T * 1000))
        envelope = router.recv_multipart()[:2]
        # The server answers late: the reply to the timed-out request, one that
        # answers nothing, then the reply to the next request.
        router.send_multipart([*envelope, *encode(Message(b"late", correlation_id=first.id))])
        router.send_multipart([*envelope, *encode(Message(b"uncorrelated"))])
        router.send_multipart([*envelope, *encode(Message(b"on time", correlation_id=second.id))])
        reply = req.request(second, timeout=T)
        assert reply.body == b"on time" and reply.correlation_id == second.id
        stats = req.statistics()
        assert stats.stale_replies == 2 and stats.received == 1


def test_recv_and_reply_by_hand(raw: Callable[[int], zmq.Socket[bytes]]) -> None:
    with Replier(LOCAL, linger=0) as rep, Requester(rep.endpoint, linger=0):
        # A plain REQ socket speaks to the Replier too.
        plain = raw(zmq.REQ)
        plain.connect(rep.endpoint)
        plain.send_multipart(encode(Message(b"from REQ")))
        handle, request = rep.recv(timeout=T)
        assert isinstance(handle, ReplyHandle) and handle.identity == handle.envelope[0]
        answer = Message(b"to REQ")
        rep.reply(handle, answer, timeout=T)
        assert answer.correlation_id is None  # the caller's message is not changed
        assert plain.poll(int(T * 1000))
        assert decode(plain.recv_multipart()).correlation_id == request.id

        with pytest.raises(Empty):
            rep.recv(timeout=0.02)
        with pytest.raises(TypeError, match="ReplyHandle"):
            rep.reply(b"id", Message(b"x"))  # type: ignore[arg-type]


def test_reply_to_a_requester_that_left_raises_peer_gone() -> None:
    with Replier(LOCAL, linger=0) as rep:
        req = Requester(rep.endpoint, linger=0)
        with pytest.raises(Empty):
            req.request(Message(b"bye"), timeout=0.02)
        handle, _ = rep.recv(timeout=T)
        req.close()

        def gone() -> bool:
            try:
                rep.reply(handle, Message(b"too late"), timeout=0.05)
            except PeerGone:
                return True
            return False

        wait_until(gone, "the Replier to notice the requester left")
        assert rep.statistics().unroutable >= 1


def test_serve_counts_handler_errors_and_keeps_serving(threads: ThreadGroup, caplog: pytest.LogCaptureFixture) -> None:
    def handler(request: Message) -> Message | None:
        if request.body == b"boom":
            raise RuntimeError("handler bug")
        if request.body == b"silent":
            return None
        return echo(request)

    stop = threading.Event()
    with caplog.at_level(logging.ERROR, logger="ringbus.transport"):
        endpoint, rep = serve_in_thread(threads, handler, stop)
        try:
            with Requester(endpoint, linger=0) as req:
                for body in (b"boom", b"silent"):
                    with pytest.raises(Empty):
                        req.request(Message(body), timeout=0.2)
                assert req.request(Message(b"fine"), timeout=T).body == b"fine"
        finally:
            stop.set()
            threads.join()
    assert rep.statistics().handler_errors == 1
    assert "handler bug" in caplog.text


def test_serve_stops_after_max_messages() -> None:
    with Replier(LOCAL, linger=0) as rep, Requester(rep.endpoint, linger=0) as req:
        for body in (b"1", b"2"):
            with pytest.raises(Empty):
                req.request(Message(body), timeout=0)  # queued: served below, after the requester gave up
        assert rep.serve(echo, max_messages=2) == 2
        with pytest.raises(Empty):
            req.request(Message(b"3"), timeout=0.2)  # nobody serves it; the two late replies are discarded
        assert req.statistics().stale_replies == 2
        assert rep.serve(echo, max_messages=0) == 0
        with pytest.raises(ValueError, match="poll_interval"):
            rep.serve(echo, max_messages=1, poll_interval=0)
        with pytest.raises(TypeError, match="is_set"):
            rep.serve(echo, stop_event=True)


# --- bad input ---------------------------------------------------------------------------------

GOOD = encode(Message(b"good", id="good-id"), inline_max=-1)  # header and body frames, to break apart
HEADER = bytes(GOOD[0])
BAD_INPUTS = {
    "garbage": ([b"garbage!", b"body"], "magic"),
    "truncated header": ([HEADER[:3], b"body"], "truncated"),
    "cut msgpack": ([HEADER[:10], b"body"], "header"),
    "wrong version": ([HEADER[:2] + b"\x09" + HEADER[3:], b"body"], "version"),
    "missing body frame": ([HEADER], "frame count"),
    "extra frame": ([HEADER, b"body", b"more"], "frame count"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_puller_raises_protocol_error_and_goes_on(name: str, raw: Callable[[int], zmq.Socket[bytes]],
                                                  new_endpoint: Callable[[], str]) -> None:
    frames, match = BAD_INPUTS[name]
    with Puller(new_endpoint(), bind=True, linger=0) as rx:
        peer = raw(zmq.PUSH)
        peer.connect(rx.endpoint)
        peer.send_multipart(frames)
        peer.send_multipart(GOOD)
        with pytest.raises(ProtocolError, match=match):
            rx.recv(timeout=T)
        assert rx.recv(timeout=T).id == "good-id"
        assert rx.statistics().malformed == 1 and rx.statistics().received == 1


def test_recv_many_returns_good_messages_before_raising(raw: Callable[[int], zmq.Socket[bytes]]) -> None:
    with Puller(LOCAL, bind=True, linger=0) as rx:
        peer = raw(zmq.PUSH)
        peer.connect(rx.endpoint)
        for frames in (encode(Message(b"1")), [b"junk"], encode(Message(b"2")), encode(Message(b"end"))):
            peer.send_multipart(frames)
        bodies: list[bytes | bytearray | memoryview] = []
        errors = 0
        while b"end" not in bodies:
            try:
                bodies.extend(m.body for m in rx.recv_many(10, timeout=T))
            except ProtocolError:
                errors += 1
        assert bodies == [b"1", b"2", b"end"] and errors == 1


def test_oversized_frame_drops_that_peer_only(raw: Callable[[int], zmq.Socket[bytes]],
                                              new_endpoint: Callable[[], str]) -> None:
    with Puller(new_endpoint(), bind=True, linger=0, max_message_size=4096) as rx, \
            Pusher(rx.endpoint, bind=False, linger=0) as good:
        big = raw(zmq.PUSH)
        monitor = big.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        monitor.linger = 0
        try:
            big.connect(rx.endpoint)
            big.send_multipart([HEADER, bytes(8192)])
            assert monitor.poll(int(T * 1000)), "libzmq did not drop the peer that sent an oversized frame"
            assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
        finally:
            big.disable_monitor()
            monitor.close(0)
        good.send(Message(b"still served"), timeout=T)
        assert rx.recv(timeout=T).body == b"still served"
        with pytest.raises(Empty):
            rx.recv(timeout=0.1)


def test_subscriber_and_requester_raise_protocol_error(raw: Callable[[int], zmq.Socket[bytes]]) -> None:
    pub = raw(zmq.PUB)
    pub.bind(LOCAL)
    with Subscriber(bound(pub), topics=[""], linger=0) as sub:
        for _ in range(int(T / 0.01)):  # slow joiner: until the subscription arrives
            pub.send_multipart([b"t", *GOOD])
            try:
                sub.recv(timeout=0.01)
                break
            except Empty:
                pass
        while True:
            try:
                sub.recv(timeout=0.05)
            except Empty:
                break
        pub.send_multipart([b"topic only"])
        pub.send_multipart([b"\xff\xfe", *GOOD])
        pub.send_multipart([b"t", *GOOD])
        with pytest.raises(ProtocolError, match="frames"):
            sub.recv(timeout=T)
        with pytest.raises(ProtocolError, match="UTF-8"):
            sub.recv(timeout=T)
        assert sub.recv(timeout=T)[0] == "t"
        assert sub.statistics().malformed == 2

    router = raw(zmq.ROUTER)
    router.bind(LOCAL)
    with Requester(bound(router), linger=0) as req:
        with pytest.raises(Empty):
            req.request(Message(b"q"), timeout=0)
        assert router.poll(int(T * 1000))
        identity = router.recv_multipart()[0]
        router.send_multipart([identity, b"no delimiter", *GOOD])
        router.send_multipart([identity, b"", b"RB\x01\x00 broken"])
        with pytest.raises(ProtocolError, match="delimiter"):
            req.request(Message(b"again"), timeout=T)
        with pytest.raises(ProtocolError, match="header"):
            req.request(Message(b"again"), timeout=T)
        assert req.statistics().malformed == 2


def test_serve_counts_and_drops_bad_requests(raw: Callable[[int], zmq.Socket[bytes]], threads: ThreadGroup,
                                             caplog: pytest.LogCaptureFixture) -> None:
    stop = threading.Event()
    with caplog.at_level(logging.WARNING, logger="ringbus.transport"):
        endpoint, rep = serve_in_thread(threads, echo, stop, max_message_size=4096)
        try:
            dealer = raw(zmq.DEALER)
            dealer.connect(endpoint)
            bad = [[b"", *frames] for frames, _ in BAD_INPUTS.values()] + [[HEADER, b"no delimiter"]]
            for frames in bad:
                dealer.send_multipart(frames)
            wait_until(lambda: rep.statistics().malformed == len(bad), "the bad requests to be counted")
            # The same peer, then another, are still served.
            dealer.send_multipart([b"", *GOOD])
            assert dealer.poll(int(T * 1000))
            assert dealer.recv_multipart()[0] == b""
            big = raw(zmq.DEALER)
            big.connect(endpoint)
            big.send_multipart([b"", HEADER, bytes(8192)])  # over max_message_size: libzmq drops big
            with Requester(endpoint, linger=0) as req:
                assert req.request(Message(b"still"), timeout=T).body == b"still"
        finally:
            stop.set()
            threads.join()
    stats = rep.statistics()
    assert stats.malformed == len(bad) and stats.received == 2 and stats.handler_errors == 0
    assert "malformed" in caplog.text


# --- CURVE -------------------------------------------------------------------------------------


def test_curve_serves_authorised_clients_only(threads: ThreadGroup, caplog: pytest.LogCaptureFixture) -> None:
    server, client, intruder = curve_keypair(), curve_keypair(), curve_keypair()
    stop = threading.Event()
    with caplog.at_level(logging.WARNING, logger="ringbus.transport"):
        endpoint, rep = serve_in_thread(threads, echo, stop,
                                        curve=CurveServer(server.secret, server.public, [client.public]))
        try:
            with Requester(endpoint, linger=0, curve=CurveClient(client.secret, client.public, server.public)) as ok:
                assert ok.request(Message(b"let me in"), timeout=T).body == b"let me in"
            intruder_curve = CurveClient(intruder.secret, intruder.public, server.public)
            with Requester(endpoint, linger=0, curve=intruder_curve) as bad:
                with pytest.raises(Empty):
                    bad.request(Message(b"intruder"), timeout=0.3)
            wait_until(lambda: rep.statistics().auth_refused >= 1, "the authenticator to count the refusal")
            with Requester(endpoint, linger=0) as plain:  # no CURVE at all: the handshake fails
                with pytest.raises(Empty):
                    plain.request(Message(b"plain"), timeout=0.3)
        finally:
            stop.set()
            threads.join()
    assert threads.results["replier"] == 1
    assert rep.statistics().received == 1
    assert rep.statistics().auth_refused >= 1  # kept after close
    assert intruder.public.decode() in caplog.text and "refused" in caplog.text


def test_curve_push_pull_round_trip() -> None:
    server, client = curve_keypair(), curve_keypair()
    server_curve = CurveServer(server.secret, server.public, [client.public])
    client_curve = CurveClient(client.secret, client.public, server.public)
    with Puller(LOCAL, bind=True, linger=0, curve=server_curve) as rx, \
            Pusher(rx.endpoint, bind=False, linger=0, curve=client_curve) as tx:
        tx.send(Message(b"secret"), timeout=T)
        assert rx.recv(timeout=T).body == b"secret"


def test_curve_server_without_authorised_keys_refuses_to_start() -> None:
    server, client = curve_keypair(), curve_keypair()
    with pytest.raises(ValueError, match="at least one authorised client"):
        CurveServer(server.secret, server.public, [])
    with pytest.raises(TypeError, match="single"):
        CurveServer(server.secret, server.public, client.public)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="does not belong"):
        CurveServer(server.secret, client.public, [client.public])
    with pytest.raises(ValueError, match="40 Z85 characters"):
        CurveClient(client.secret, client.public, b"short")
    config = CurveServer(server.secret.decode(), server.public.decode(), [client.public.decode()])
    assert server.secret.decode() not in repr(config)
    assert CurveServer(z85.decode(server.secret), server.public, [client.public]).public_key == server.public
    # One authenticator per context: a second CURVE server on the same context is a clear error.
    ctx = zmq.Context()
    try:
        with Puller(LOCAL, bind=True, linger=0, context=ctx, curve=config):
            with pytest.raises(RuntimeError, match="ZAP authenticator"):
                Puller(LOCAL, bind=True, linger=0, context=ctx, curve=config)
    finally:
        ctx.term()

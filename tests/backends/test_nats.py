"""The nats:// backend beyond the contract suite: ack waits, dead letters, wildcards, services, large bodies,
expiry nobody receives, and a kill -9 of a NATS server of its own mid-stream (issue 8, item 6)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import ringbus
from ringbus.backends._nats_base import HEARTBEAT_WINDOW
from ringbus.backends._nats_wire import subject_filters
from ringbus.bus import TOPIC_HEADER, connect, topic_matcher
from ringbus.message import Message

pytest.importorskip("nats")

NATS_ADDRESS = ("127.0.0.1", 4222)
WAIT = 10.0
QUIET = 0.3

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def shared_server() -> str:
    """The shared NATS (with JetStream) at 127.0.0.1:4222; touched only under a prefix of each test's own."""
    try:
        socket.create_connection(NATS_ADDRESS, timeout=2.0).close()
    except OSError as exc:
        message = (f"no NATS answers at nats://{NATS_ADDRESS[0]}:{NATS_ADDRESS[1]} ({exc}); start one with "
                   "JetStream (nats-server -js) to run the nats backend's tests")
        (pytest.fail if os.environ.get("RINGBUS_REQUIRE_SERVICES") == "1" else pytest.skip)(message)
    return f"nats://{NATS_ADDRESS[0]}:{NATS_ADDRESS[1]}"


@pytest.fixture
def url(shared_server: str) -> Iterator[str]:
    url = f"{shared_server}?prefix=rbtest-{uuid.uuid4().hex[:12]}."
    yield url
    with connect(url) as bus:
        bus.drop_namespace()  # type: ignore[attr-defined]


def dead_letter(bus: ringbus.Bus, queue: str) -> Message:
    letter = bus.receive(f"{queue}.dlq", timeout=WAIT)
    assert letter is not None, f"no dead letter of {queue!r} within {WAIT}s"
    return letter


# -- names ---------------------------------------------------------------------------------------------------------
def test_connect_picks_nats_and_every_stream_is_under_the_prefix(url):
    with connect(url) as bus:
        assert type(bus).__name__ == "NatsBus"
        bus.declare_queue("orders.eu")  # a dotted name is one subject token: it never overlaps 'orders'
        bus.declare_queue("orders")
        bus.publish("order.placed", b"x")
        prefix = url.rpartition("prefix=")[2]
        streams = bus._run(bus._core.js.stream_names(">"))
        mine = [name for name in streams if name.startswith(prefix.replace(".", "~"))]
        assert len(mine) == 5  # orders, orders.dlq, orders.eu, orders.eu.dlq, topics
        assert sorted(bus.queues()) == ["orders", "orders.dlq", "orders.eu", "orders.eu.dlq"]
    with pytest.raises(ValueError, match="prefix"):
        connect(url.replace("prefix=rbtest-", "prefix=bad*"))


# -- ack wait and attempts ----------------------------------------------------------------------------------------
def test_an_unacked_message_is_redelivered_after_the_ack_wait_with_the_attempt_counted(url):
    with connect(url) as bus:
        bus.declare_queue("jobs", visibility_timeout=0.3)
        message_id = bus.send("jobs", b"work")
        first = bus.receive("jobs", timeout=WAIT)
        assert (first.id, first.attempts) == (message_id, 0)
        again = bus.receive("jobs", timeout=WAIT)  # NATS redelivers once the ack wait ran out
        assert (again.id, again.attempts) == (message_id, 1)
        with pytest.raises(ringbus.RingbusError, match="visibility timeout"):
            first.ack()  # stale: NATS would accept it and drop the copy being worked on
        again.ack()
        assert bus.receive("jobs", timeout=QUIET) is None


def test_a_dead_consumer_s_message_comes_back_within_the_heartbeat_window_not_its_visibility_timeout(url):
    crashed = connect(url)
    crashed.declare_queue("tasks", visibility_timeout=3600.0)
    message_id = crashed.send("tasks", b"long step")
    assert crashed.receive("tasks", timeout=WAIT).id == message_id
    crashed._run(crashed._core.nc.close())  # the process dies: no close(), no nak, no more in-progress acks
    with connect(url) as survivor:
        again = survivor.receive("tasks", timeout=HEARTBEAT_WINDOW + WAIT)
        assert again is not None and (again.id, again.attempts) == (message_id, 1)
        again.ack()
    crashed.close()


def test_a_live_holder_keeps_its_message_past_the_ack_wait(url):
    with connect(url) as holder, connect(url) as other:
        holder.declare_queue("tasks", visibility_timeout=60.0)
        holder.send("tasks", b"long step")
        held = holder.receive("tasks", timeout=WAIT)
        assert other.receive("tasks", timeout=HEARTBEAT_WINDOW + 1.5) is None  # in-progress acks kept it
        held.ack()
        assert other.queue_stats("tasks").in_flight == 0


def test_out_of_attempts_a_message_is_dead_lettered_with_the_reason(url):
    with connect(url) as bus:
        bus.declare_queue("jobs", max_attempts=2, visibility_timeout=0.2)
        message_id = bus.send("jobs", b"poison", headers={"mine": "kept"})
        assert bus.receive("jobs", timeout=WAIT).attempts == 0
        assert bus.receive("jobs", timeout=WAIT).attempts == 1
        assert bus.receive("jobs", timeout=0.6) is None  # the third delivery is dead-lettered, not handed out
        letter = dead_letter(bus, "jobs")
        assert (letter.id, letter.attempts, bytes(letter.body)) == (message_id, 0, b"poison")
        assert letter.headers["ringbus-dead-reason"] == "max_attempts"
        assert (letter.headers["ringbus-dead-from"], letter.headers["mine"]) == ("jobs", "kept")
        stats = bus.queue_stats("jobs")
        assert (stats.dead_lettered, stats.depth, stats.in_flight) == (1, 0, 0)


def test_nack_puts_the_message_behind_waiting_ones_and_a_sent_message_starts_at_attempt_zero(url):
    with connect(url) as bus:
        bus.declare_queue("jobs")
        first = bus.send("jobs", b"first")
        second = bus.send("jobs", b"second")
        got = bus.receive("jobs", timeout=WAIT)
        assert got.id == first
        got.nack(requeue=True)
        assert [bus.receive("jobs", timeout=WAIT).id for _ in range(2)] == [second, first]
        bus.send("jobs", Message(b"resent", attempts=4))  # a copy of a delivered message, say
        assert bus.receive("jobs", timeout=WAIT).attempts == 0


def test_a_delayed_message_waits_on_its_own_subject_and_counts_as_delayed(url):
    with connect(url) as bus:
        bus.declare_queue("jobs")
        message_id = bus.send("jobs", b"later", delay=0.4, priority=3)
        stats = bus.queue_stats("jobs")
        assert (stats.delayed, stats.ready) == (1, 0)
        assert bus.receive("jobs", timeout=0.1) is None
        got = bus.receive("jobs", timeout=WAIT)
        assert (got.id, got.priority, got.attempts) == (message_id, 3, 0)


def test_a_message_nobody_receives_expires_to_the_dead_letter_queue(url):
    with connect(url) as bus:
        bus.declare_queue("jobs")
        message_id = bus.send("jobs", b"stale soon", ttl=0.2)
        letter = dead_letter(bus, "jobs")  # no receive on "jobs": the sender's bus expired it
        assert (letter.id, letter.headers["ringbus-dead-reason"]) == (message_id, "expired")
        assert bus.queue_stats("jobs").depth == 0


def test_a_repeat_after_the_original_was_consumed_returns_the_original_id(url):
    with connect(url) as bus, connect(url) as other:
        bus.declare_queue("jobs")
        first = bus.send("jobs", b"once", dedup_id="order-42")
        bus.receive("jobs", timeout=WAIT).ack()  # the original is gone from the stream
        assert other.send("jobs", b"once again", dedup_id="order-42") == first
        assert bus.receive("jobs", timeout=QUIET) is None


def test_a_body_over_max_payload_goes_through_the_object_store_and_is_deleted_with_its_ack(url):
    with connect(url) as bus:
        bus.declare_queue("blobs")
        body = os.urandom(3 << 20)  # three times the server's default max_payload
        message_id = bus.send("blobs", body)
        got = bus.receive("blobs", timeout=WAIT)
        assert (got.id, bytes(got.body) == body) == (message_id, True)
        got.ack()
        bucket = bus._core.bodies
        chunks = bus._run(bus._core.js.stream_state(f"OBJ_{bucket}", f"$O.{bucket}.C.>"))
        assert not chunks.subjects  # the stored chunks went with the ack


# -- topics --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern, subjects, exact", [
    ("a.b", ["a.b"], True),
    ("a.*", ["a.*"], True),
    ("a.#", ["a.>", "a"], True),
    ("#", [">"], True),
    ("a.#.z", ["a.>"], False),
    ("#.z", [">"], False),
    ("a.*.#", ["a.*.>", "a.*"], True),
])
def test_hash_becomes_nats_subjects_that_cover_it(pattern, subjects, exact):
    assert subject_filters(pattern) == (subjects, exact)


def test_hash_matches_zero_words_and_a_hash_inside_is_filtered(url):
    topics = ["a", "a.z", "a.b.z", "a.b", "b.z"]
    with connect(url) as bus:
        with bus.subscribe("a.#") as tail, bus.subscribe("a.#.z") as inside:
            for topic in topics:
                bus.publish(topic, topic.encode())
            got_tail = sorted(tail.receive(WAIT).headers[TOPIC_HEADER] for _ in range(4))
            got_inside = sorted(inside.receive(WAIT).headers[TOPIC_HEADER] for _ in range(2))
            assert tail.receive(QUIET) is None and inside.receive(QUIET) is None
    assert got_tail == ["a", "a.b", "a.b.z", "a.z"]
    assert got_inside == ["a.b.z", "a.z"] == [t for t in sorted(topics) if topic_matcher("a.#.z")(t)]


def test_a_durable_group_with_a_trailing_hash_gets_the_bare_prefix_and_skips_the_over_match(url):
    with connect(url) as bus:
        with bus.subscribe("a.#", group="g", durable=True) as group:
            for topic in ("a", "ab", "a.b", "b"):
                bus.publish(topic, topic.encode())
            got = [group.receive(WAIT) for _ in range(2)]
            assert group.receive(QUIET) is None
            for message in got:
                message.ack()
        assert sorted(bytes(m.body) for m in got) == [b"a", b"a.b"]
        with pytest.raises(ValueError, match="bound to pattern"):
            bus.subscribe("b.#", group="g", durable=True)


# -- services ------------------------------------------------------------------------------------------------------
def test_a_request_waits_for_a_server_that_starts_later(url):
    with connect(url) as bus, connect(url) as server_bus:
        stop = threading.Event()

        def serve_later() -> None:
            time.sleep(0.5)  # "no responders" until then: the request is sent again
            server_bus.serve("pricing", lambda m: b"price of " + bytes(m.body), stop=stop)

        thread = threading.Thread(target=serve_later, daemon=True)
        thread.start()
        try:
            reply = bus.request("pricing", b"apples", timeout=WAIT)
        finally:
            stop.set()
            thread.join(WAIT)
        assert bytes(reply.body) == b"price of apples"
        with pytest.raises(ringbus.Empty):
            bus.request("pricing", b"pears", timeout=0.3)  # its server stopped


# -- kill -9 and restart (issue 8, item 6) -------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_nats(port: int, store: Path) -> subprocess.Popen[bytes]:
    server = shutil.which("nats-server") or ("/usr/sbin/nats-server" if Path("/usr/sbin/nats-server").exists()
                                             else None)
    if server is None:
        pytest.skip("nats-server is not installed: the restart test runs a NATS server of its own")
    process = subprocess.Popen([server, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + WAIT
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"nats-server on port {port} did not start within {WAIT}s")
            time.sleep(0.05)


def test_confirmed_sends_survive_a_nats_kill_and_the_bus_reconnects(tmp_path):
    """Kill -9 a NATS server of our own (JetStream, file storage) while a thread sends, restart it on the same
    port and store: every send confirmed or raised, every confirmed one is consumed afterwards, and the same Bus
    goes on working."""
    port = _free_port()
    process = _start_nats(port, tmp_path)
    confirmed: list[str] = []
    raised: list[str] = []
    stop = threading.Event()
    try:
        with connect(f"nats://127.0.0.1:{port}?prefix=restart.", timeout=1.0) as bus:
            bus.declare_queue("jobs")

            def sender() -> None:
                i = 0
                while not stop.is_set():
                    message = Message(b"%d" % i)
                    i += 1
                    try:
                        bus.send("jobs", message)
                        confirmed.append(message.id)
                    except ringbus.RingbusError:
                        raised.append(message.id)

            thread = threading.Thread(target=sender, daemon=True)
            thread.start()
            deadline = time.monotonic() + WAIT
            while len(confirmed) < 100 and time.monotonic() < deadline:
                time.sleep(0.01)
            process.kill()  # SIGKILL, mid-stream
            process.wait()
            time.sleep(1.5)  # longer than the bus timeout: a send in flight now raises
            process = _start_nats(port, tmp_path)
            before = len(confirmed)
            deadline = time.monotonic() + 3 * WAIT
            while len(confirmed) < before + 100 and time.monotonic() < deadline:
                time.sleep(0.05)
            stop.set()
            thread.join(WAIT)
            assert not thread.is_alive()
            assert len(confirmed) >= before + 100, "no sends confirmed after the restart: the bus did not reconnect"
            assert raised, "no send was in flight while the server was down"
            received = []
            while (message := bus.receive("jobs", timeout=2.0)) is not None:
                received.append(message.id)
                message.ack()
        assert set(confirmed) <= set(received)  # nothing confirmed is lost
        assert set(received) <= set(confirmed) | set(raised)  # a send that raised may or may not have been stored
        assert len(received) == len(set(received))
        print(f"confirmed {len(confirmed)}, raised {len(raised)}, raised but stored "
              f"{len(set(received) & set(raised))}")
    finally:
        stop.set()
        process.kill()
        process.wait()

"""The redis:// backend beyond the contract suite: dead consumers, key turns across delayed nacks, key cleanup."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

import ringbus
from ringbus.bus import connect

redis = pytest.importorskip("redis")

REDIS_URL = "redis://127.0.0.1:6379/0"
WAIT = 10.0

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2.0)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        message = f"no Redis answers at {REDIS_URL} ({exc}); start one (redis-server --daemonize yes)"
        if os.environ.get("RINGBUS_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    yield client
    client.close()


@pytest.fixture
def prefix(client) -> Iterator[str]:
    """A key prefix of this test's own; its keys are deleted afterwards (never FLUSHDB: the Redis is shared)."""
    prefix = f"rbtest-{uuid.uuid4().hex}:"
    yield prefix
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.unlink(*keys)


@pytest.fixture
def url(prefix) -> str:
    return f"{REDIS_URL}?prefix={prefix}"


def test_connect_picks_redis_and_keys_stay_under_the_prefix(client, url, prefix):
    with connect(url) as bus:
        assert type(bus).__name__ == "RedisBus"
        bus.declare_queue("jobs")
        bus.send("jobs", b"x", priority=3)
        bus.receive("jobs", timeout=WAIT).ack()
        keys = [key.decode() for key in client.scan_iter(match=f"{prefix}*", count=1000)]
        assert keys and all(key.startswith(prefix) for key in keys)
        # the priority level's stream goes once it is empty
        assert not [key for key in keys if ":s:3" in key], keys


def test_a_dead_consumer_s_message_comes_back_after_the_visibility_timeout(url):
    crashed = connect(url)
    crashed.declare_queue("jobs", visibility_timeout=0.3)
    message_id = crashed.send("jobs", b"work")
    assert crashed.receive("jobs", timeout=WAIT).id == message_id
    crashed._redis.close()  # the process dies: no close(), nothing given back
    with connect(url) as survivor:
        again = survivor.receive("jobs", timeout=WAIT)
        assert (again.id, again.attempts) == (message_id, 1)
        again.ack()
        assert survivor.queue_stats("jobs").in_flight == 0
    crashed._closed = True  # its connection is gone already


def test_a_delayed_nack_keeps_its_key_s_turn(url):
    with connect(url) as bus:
        bus.declare_queue("ordered", ordered_by_key=True)
        first = bus.send("ordered", b"1", key="k")
        second = bus.send("ordered", b"2", key="k")
        bus.receive("ordered", timeout=WAIT).nack(delay=0.3)
        assert bus.receive("ordered", timeout=0.1) is None  # the second waits for the first, even while delayed
        again = bus.receive("ordered", timeout=WAIT)
        assert (again.id, again.attempts) == (first, 1)
        again.ack()
        assert bus.receive("ordered", timeout=WAIT).id == second


def test_a_blocked_message_counts_as_waiting_and_against_max_length(url):
    with connect(url) as bus:
        bus.declare_queue("ordered", ordered_by_key=True, max_length=2)
        bus.send("ordered", b"1", key="k")
        bus.send("ordered", b"2", key="k")
        stats = bus.queue_stats("ordered")
        assert (stats.depth, stats.ready) == (2, 2)
        with pytest.raises(ringbus.Full):
            bus.send("ordered", b"3", key="j")


def test_drop_oldest_drops_a_delayed_message_when_none_is_ready(url):
    with connect(url) as bus:
        bus.declare_queue("small", max_length=1, overflow="drop_oldest")
        old = bus.send("small", b"old", delay=60)
        bus.send("small", b"new")
        letter = bus.receive("small.dlq", timeout=WAIT)
        assert (letter.id, letter.headers["ringbus-dead-reason"]) == (old, "overflow")


def test_a_message_behind_higher_priorities_expires_in_time(url):
    """A fetch reads from the highest priority down: the low message is never read while highs keep coming, yet
    its ttl sends it to the dead-letter queue (the expiry index), not only once the highs run out."""
    with connect(url) as bus:
        bus.declare_queue("jobs")
        low = bus.send("jobs", b"low", ttl=0.2)
        for n in range(3):  # a high always waits when a fetch comes, while the low one's ttl runs out
            bus.send("jobs", b"high", priority=5)
            if n == 1:
                time.sleep(0.3)
            high = bus.receive("jobs", timeout=WAIT)
            assert bytes(high.body) == b"high"
            high.ack()
        letter = bus.receive("jobs.dlq", timeout=0)
        assert (letter.id, letter.headers["ringbus-dead-reason"]) == (low, "expired")
        assert bus.queue_stats("jobs").expired == 1


def test_an_expired_message_leaves_a_queue_whose_consumers_are_all_busy(url):
    """Nobody fetches from "jobs" (its one consumer is busy with a message): a fetch elsewhere under the prefix
    expires what waits there past its ttl."""
    with connect(url) as bus:
        bus.declare_queue("jobs")
        bus.send("jobs", b"long job")
        busy = bus.receive("jobs", timeout=WAIT)
        doomed = bus.send("jobs", b"short-lived", ttl=0.2)
        letter = bus.receive("jobs.dlq", timeout=WAIT)
        assert (letter.id, letter.headers["ringbus-dead-reason"]) == (doomed, "expired")
        busy.ack()


def test_a_durable_group_is_bound_to_one_pattern(url):
    with connect(url) as bus:
        bus.subscribe("a.*", group="billing", durable=True).close()
        with pytest.raises(ValueError, match="a.\\*"):
            bus.subscribe("b.*", group="billing", durable=True)
        assert "@billing" not in bus.queues()


def test_a_side_dead_letter_queue_can_be_declared_later_with_options(url):
    with connect(url) as bus:
        bus.declare_queue("orders")
        bus.declare_queue("orders.dlq", max_attempts=2)  # was created on the side with defaults
        with pytest.raises(ValueError, match="max_attempts"):
            bus.declare_queue("orders.dlq", max_attempts=3)


def test_a_request_whose_caller_gave_up_is_not_handled(url):
    handled = []
    with connect(url) as bus:
        with pytest.raises(ringbus.Empty):
            bus.request("late", b"x", timeout=0.1)
        time.sleep(0.2)
        stop = threading.Event()

        def serve() -> None:
            with connect(url) as server:
                server.serve("late", lambda m: handled.append(m) or b"", stop=stop)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        assert bytes(bus.request("late", b"fresh", timeout=WAIT).body) == b""
        stop.set()
        thread.join(WAIT)
    assert [bytes(m.body) for m in handled] == [b"fresh"]


def test_subscription_pattern_glob_over_match_is_filtered(url):
    with connect(url) as bus, bus.subscribe("order.#") as sub:
        bus.publish("orders.x", b"no")
        bus.publish("order", b"yes")
        assert bytes(sub.receive(timeout=WAIT).body) == b"yes"
        assert sub.receive(timeout=0.2) is None


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_redis(port: int, data) -> object:
    import shutil
    import subprocess

    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed: the restart test runs a Redis of its own")
    process = subprocess.Popen([server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
                                "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    probe = redis.Redis(port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + WAIT
    while True:
        try:
            probe.ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline:
                process.kill()
                pytest.fail(f"redis-server on port {port} did not start within {WAIT}s")
            time.sleep(0.05)
    probe.close()
    return process


def test_confirmed_sends_survive_a_redis_kill_and_the_bus_reconnects(tmp_path):
    """Issue 8, item 6: kill -9 a Redis of our own (appendonly, fsync always) mid-stream and restart it: every
    send either confirmed or raised, every confirmed one is still there, and the same Bus goes on working."""
    port = _free_port()
    process = _start_redis(port, tmp_path)
    try:
        with connect(f"redis://127.0.0.1:{port}/0?prefix=restart:", reconnect=0.2) as bus:
            bus.declare_queue("jobs")
            confirmed = [bus.send("jobs", b"%d" % i) for i in range(50)]
            process.kill()
            process.wait()
            with pytest.raises(ringbus.PeerGone):
                bus.send("jobs", b"lost")
            process = _start_redis(port, tmp_path)
            deadline = time.monotonic() + WAIT
            while True:  # the client reconnects on its next command
                try:
                    confirmed.append(bus.send("jobs", b"after"))
                    break
                except ringbus.PeerGone:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            got = []
            while (message := bus.receive("jobs", timeout=0.5)) is not None:
                got.append(message.id)
                message.ack()
            assert got == confirmed
    finally:
        process.kill()
        process.wait()

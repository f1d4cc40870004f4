"""redis:// through connection loss (issue 8, item 6), on a Redis of the test's own (append-only, fsync always).

- kill -9 and restart mid-stream: a producer and a consumer keep their Bus; sends in flight confirm once Redis is
  back (or, past the ``reconnect`` budget, raise ringbus.PeerGone - never a raw redis exception); every confirmed
  send is consumed; none is enqueued twice.
- a reply lost on the wire (a proxy drops it after Redis ran the command): redis-py retries, and the journal of
  send, settle and publish makes the retry return the first result instead of running again.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

import ringbus
from ringbus.bus import Bus, connect
from ringbus.message import Message, new_id

pytest.importorskip("redis")
from servers import HOST, free_port, kill, start_redis  # noqa: E402

WAIT = 15.0
VISIBILITY = 1.0  # seconds: a delivery whose ack was lost comes back this soon

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[dict]:
    """A private redis-server; ``server["restart"]()`` kills it (-9) and starts it again on the same port and dir."""
    port = free_port()
    state = {"port": port, "process": start_redis(port, tmp_path)}

    def restart(down_for: float) -> None:
        kill(state["process"])
        time.sleep(down_for)
        state["process"] = start_redis(port, tmp_path)

    state["restart"] = restart
    try:
        yield state
    finally:
        kill(state["process"])


class Producer(threading.Thread):
    """Sends numbered messages until stopped, recording which confirmed and which raised (and what)."""

    def __init__(self, url: str, **options: object) -> None:
        super().__init__(name="producer", daemon=True)
        self.bus: Bus = connect(url, **options)
        self.stop = threading.Event()
        self.confirmed: list[tuple[str, float]] = []  # (id, when it returned)
        self.raised: list[tuple[str, BaseException]] = []

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            message = Message(b"%d" % n, id=new_id())
            try:
                assert self.bus.send("jobs", message) == message.id
                self.confirmed.append((message.id, time.monotonic()))
            except Exception as exc:  # recorded: the test checks what kind
                self.raised.append((message.id, exc))
                time.sleep(0.01)
            n += 1


class Consumer(threading.Thread):
    """Consumes and acks until stopped; after a PeerGone (past its reconnect budget) it consumes again."""

    def __init__(self, url: str, **options: object) -> None:
        super().__init__(name="consumer", daemon=True)
        self.bus: Bus = connect(url, **options)
        self.stop = threading.Event()
        self.deliveries: list[tuple[str, int]] = []  # (id, attempts)
        self.delivered: set[str] = set()
        self.errors: list[BaseException] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                for message in self.bus.consume("jobs", prefetch=16, timeout=0.2):
                    self.deliveries.append((message.id, message.attempts))
                    self.delivered.add(message.id)
                    message.ack()  # an ack that raised may or may not have taken effect: delivered is what counts
                    if self.stop.is_set():
                        break
            except Exception as exc:  # recorded: the test checks what kind
                self.errors.append(exc)
                time.sleep(0.05)


def wait_for(condition, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def ride_through_a_restart(url: str, restart, down_for: float, producer_options: dict,
                           consumer_options: dict) -> tuple[Producer, Consumer, float]:
    with connect(url) as setup:
        setup.declare_queue("jobs", visibility_timeout=VISIBILITY)
    producer, consumer = Producer(url, **producer_options), Consumer(url, **consumer_options)
    producer.start()
    consumer.start()
    try:
        wait_for(lambda: len(producer.confirmed) >= 200, "200 sends before the kill")
        restart(down_for)
        back = time.monotonic()
        # the same Bus objects go on: no new connect
        wait_for(lambda: sum(when > back for _, when in producer.confirmed) >= 200, "200 sends after the restart")
        producer.stop.set()
        producer.join(WAIT)
        confirmed = {message_id for message_id, _ in producer.confirmed}
        wait_for(lambda: confirmed <= consumer.delivered, "every confirmed send to be consumed")
    finally:
        producer.stop.set()
        consumer.stop.set()
        producer.join(WAIT)
        consumer.join(WAIT)
        producer.bus.close()
        consumer.bus.close()
    return producer, consumer, back


def check_nothing_confirmed_lost_nothing_doubled(producer: Producer, consumer: Consumer) -> None:
    confirmed = {message_id for message_id, _ in producer.confirmed}
    maybe = {message_id for message_id, _ in producer.raised}  # may or may not have been enqueued
    assert confirmed <= consumer.delivered
    assert consumer.delivered <= confirmed | maybe, "delivered a message nobody sent"
    first_deliveries = Counter(message_id for message_id, attempts in consumer.deliveries if attempts == 0)
    assert first_deliveries.most_common(1)[0][1] == 1, "a send was enqueued twice"


def test_a_short_outage_is_ridden_through_without_errors(redis_server):
    url = f"redis://{HOST}:{redis_server['port']}/0?prefix=restart:"
    producer, consumer, back = ride_through_a_restart(url, redis_server["restart"], 0.5, {}, {})
    assert producer.raised == [] and consumer.errors == []  # within the 10 s reconnect budget: every call waited
    assert any(when > back for _, when in producer.confirmed)
    check_nothing_confirmed_lost_nothing_doubled(producer, consumer)
    print(f"\nconfirmed {len(producer.confirmed)}, deliveries {len(consumer.deliveries)} "
          f"(redelivered {sum(1 for _, a in consumer.deliveries if a)})")


def test_past_the_reconnect_budget_sends_raise_peer_gone_and_the_bus_recovers(redis_server):
    url = f"redis://{HOST}:{redis_server['port']}/0?prefix=restart:"
    producer, consumer, back = ride_through_a_restart(url, redis_server["restart"], 1.5, {"reconnect": 0.2},
                                                      {"reconnect": 0.2})
    assert producer.raised, "no send raised while Redis was down for 1.5 s with a 0.2 s reconnect budget"
    assert all(isinstance(exc, ringbus.PeerGone) for _, exc in producer.raised), producer.raised[:3]
    assert all(isinstance(exc, ringbus.PeerGone) for exc in consumer.errors), consumer.errors[:3]
    assert any(when > back for _, when in producer.confirmed)
    check_nothing_confirmed_lost_nothing_doubled(producer, consumer)


# -- a reply lost on the wire ------------------------------------------------------------------------------------------
class LossyProxy:
    """A TCP proxy to Redis that can drop the reply to the next command holding ``marker``: Redis runs the
    command, then the client's connection closes without its answer (what a crash right after a write does)."""

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server((HOST, 0))
        self.port = self.listener.getsockname()[1]
        self.marker: bytes | None = None
        self.dropped = 0
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def drop_next_reply(self, marker: bytes) -> None:
        with self.lock:
            self.marker = marker

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection((HOST, self.target))
            armed = threading.Event()
            threading.Thread(target=self._up, args=(client, server, armed), daemon=True).start()
            threading.Thread(target=self._down, args=(server, client, armed), daemon=True).start()

    def _up(self, client: socket.socket, server: socket.socket, armed: threading.Event) -> None:
        try:
            while data := client.recv(65536):
                with self.lock:
                    if self.marker is not None and self.marker in data:
                        self.marker = None
                        armed.set()
                server.sendall(data)
        except OSError:
            pass

    def _down(self, server: socket.socket, client: socket.socket, armed: threading.Event) -> None:
        try:
            while data := server.recv(65536):
                if armed.is_set():  # Redis ran it: swallow the answer and cut the client off
                    self.dropped += 1
                    break
                client.sendall(data)
        except OSError:
            pass
        for sock in (client, server):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self) -> None:
        self.listener.close()


@pytest.fixture
def lossy(redis_server) -> Iterator[tuple[LossyProxy, Bus]]:
    proxy = LossyProxy(redis_server["port"])
    bus = connect(f"redis://{HOST}:{proxy.port}/0?prefix=lossy:")
    bus.declare_queue("jobs")
    bus.receive("jobs", timeout=0)  # the scripts are loaded: a dropped reply is the script's own
    try:
        yield proxy, bus
    finally:
        bus.close()
        proxy.close()


def test_a_send_whose_reply_was_lost_is_not_enqueued_twice(lossy):
    proxy, bus = lossy
    bus.send("jobs", b"warm-up")
    proxy.drop_next_reply(b"EVALSHA")
    once = bus.send("jobs", b"once")
    assert proxy.dropped == 1
    assert bus.queue_stats("jobs").depth == 2
    got = [bus.receive("jobs", timeout=WAIT) for _ in range(2)]
    assert bytes(got[1].body) == b"once" and got[1].id == once
    assert bus.receive("jobs", timeout=0.1) is None


def test_a_pipelined_send_many_whose_replies_were_lost_is_not_enqueued_twice(lossy):
    proxy, bus = lossy
    proxy.drop_next_reply(b"EVALSHA")
    ids = bus.send_many("jobs", [b"%d" % i for i in range(100)])
    assert proxy.dropped == 1
    assert bus.queue_stats("jobs").depth == 100
    assert [bus.receive("jobs", timeout=WAIT).id for _ in ids] == ids


def test_an_ack_whose_reply_was_lost_is_not_reported_stale(lossy):
    proxy, bus = lossy
    bus.send("jobs", b"x")
    message = bus.receive("jobs", timeout=WAIT)
    proxy.drop_next_reply(b"EVALSHA")
    message.ack()  # without the journal the retry finds the entry gone and raises "visibility timeout ran out"
    assert proxy.dropped == 1
    stats = bus.queue_stats("jobs")
    assert (stats.acked, stats.in_flight, stats.depth) == (1, 0, 0)


def test_a_publish_whose_reply_was_lost_reaches_a_durable_group_once(lossy):
    proxy, bus = lossy
    with bus.subscribe("sensor.*", group="climate", durable=True) as sub:
        proxy.drop_next_reply(b"EVALSHA")
        bus.publish("sensor.t1", b"21.5")
        assert proxy.dropped == 1
        assert bytes(sub.receive(timeout=WAIT).body) == b"21.5"
        assert sub.receive(timeout=0.2) is None


def test_journals_go_with_their_bus(redis_server):
    import redis

    url = f"redis://{HOST}:{redis_server['port']}/0?prefix=journal:"
    with connect(url) as bus:
        bus.declare_queue("jobs")
        bus.send("jobs", b"x")
    client = redis.Redis(port=redis_server["port"])
    try:
        assert list(client.scan_iter(match="journal:journal:*")) == []
    finally:
        client.close()


def test_an_ephemeral_subscription_subscribes_again_after_a_restart(redis_server):
    url = f"redis://{HOST}:{redis_server['port']}/0?prefix=pubsub:"
    with connect(url) as bus, bus.subscribe("sensor.#") as sub:
        bus.publish("sensor.t1", b"before")
        assert bytes(sub.receive(timeout=WAIT).body) == b"before"
        redis_server["restart"](0.3)
        deadline = time.monotonic() + WAIT
        while True:  # what is published while it reconnects is gone (ephemeral); later publications arrive
            bus.publish("sensor.t1", b"after")
            message = sub.receive(timeout=0.5)
            if message is not None:
                assert bytes(message.body) == b"after"
                break
            assert time.monotonic() < deadline, "the subscription did not come back"


def test_a_subscription_past_its_reconnect_budget_raises_peer_gone(redis_server):
    url = f"redis://{HOST}:{redis_server['port']}/0?prefix=pubsub:"
    with connect(url, reconnect=0.2) as bus, bus.subscribe("sensor.#") as sub:
        kill(redis_server["process"])
        with pytest.raises(ringbus.PeerGone, match="still after retrying"):
            sub.receive(timeout=WAIT)
        with pytest.raises(ringbus.PeerGone):
            bus.publish("sensor.t1", b"nobody")

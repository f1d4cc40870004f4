"""The amqp:// backend beyond the contract suite: RabbitMQ's own dead letters, its redeliveries, its arguments."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

import ringbus
from ringbus.bus import connect

pika = pytest.importorskip("pika")

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"
WAIT = 10.0

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def rabbit() -> None:
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=2.0).close()
    except OSError as exc:
        message = f"no RabbitMQ answers at {AMQP_URL} ({exc}); start one (rabbitmq-server -detached)"
        if os.environ.get("RINGBUS_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
def prefix(rabbit) -> str:
    return f"rbtest-{uuid.uuid4().hex[:12]}."


@pytest.fixture
def url(prefix) -> Iterator[str]:
    """A namespace of this test's own; its queues, exchange and catalog are deleted afterwards."""
    url = f"{AMQP_URL}?prefix={prefix}"
    yield url
    with connect(url) as bus:
        bus.drop_namespace()


@pytest.fixture
def raw() -> Iterator[object]:
    """A plain pika channel on the same RabbitMQ."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    yield connection.channel()
    connection.close()


def test_connect_picks_amqp_and_names_carry_the_prefix(url, prefix, raw):
    with connect(url) as bus:
        assert type(bus).__name__ == "AmqpBus"
        bus.declare_queue("jobs", max_length=5)
        raw.queue_declare(f"{prefix}jobs", passive=True)
        raw.queue_declare(f"{prefix}jobs.dlq", passive=True)
        assert {"jobs", "jobs.dlq"} <= set(bus.queues())


def test_rabbitmq_expiry_while_nobody_reads_arrives_as_an_expired_dead_letter(url):
    with connect(url) as bus:
        bus.declare_queue("jobs")
        message_id = bus.send("jobs", b"stale", ttl=0.05)  # RabbitMQ expires it at ttl + TTL_GRACE
        time.sleep(1.6)
        assert bus.queue_stats("jobs").ready == 0  # gone without a client looking
        letter = bus.receive("jobs.dlq", timeout=WAIT)
        assert letter is not None and letter.id == message_id
        assert (letter.headers["ringbus-dead-reason"], letter.headers["ringbus-dead-from"]) == ("expired", "jobs")
        assert "x-death" not in letter.headers


def test_a_consumer_that_dies_gives_its_message_back_with_one_more_attempt(url, prefix):
    with connect(url) as bus:
        bus.declare_queue("jobs")
        message_id = bus.send("jobs", b"x")
        dying = connect(url)
        held = dying.receive("jobs", timeout=WAIT)
        assert held is not None and held.attempts == 0
        dying._io.conn._impl._transport._sock.close()  # no close handshake: RabbitMQ sees the socket go
        again = bus.receive("jobs", timeout=WAIT)
        assert again is not None and (again.id, again.attempts) == (message_id, 1)
        again.ack()


def test_settle_from_another_thread_and_float_headers(url):
    with connect(url) as bus:
        bus.declare_queue("jobs")
        bus.send("jobs", b"x", headers={"f": 0.25, "i": 3, "b": False, "n": None}, priority=50)
        message = bus.receive("jobs", timeout=WAIT)
        assert message.headers == {"f": 0.25, "i": 3, "b": False, "n": None}
        assert message.priority == 50  # ordered as 10, kept as sent
        worker = threading.Thread(target=message.ack)
        worker.start()
        worker.join(WAIT)
        assert bus.queue_stats("jobs").acked == 1
        with pytest.raises(ringbus.RingbusError):
            message.ack()


def test_queue_with_other_rabbitmq_arguments_is_a_value_error(url, prefix, raw):
    raw.queue_declare(f"{prefix}theirs", durable=True, arguments={"x-max-length": 7})
    with connect(url) as bus:
        with pytest.raises(ValueError, match="x-dead-letter-exchange .ringbus option dead_letter"):
            bus.declare_queue("theirs")


def test_group_is_bound_to_one_pattern_and_unsupported_features_say_why(url):
    with connect(url) as bus:
        bus.subscribe("order.*", group="billing", durable=True).close()
        with pytest.raises(ValueError, match="pattern"):
            bus.subscribe("order.#", group="billing", durable=True)
        with pytest.raises(ringbus.Unsupported, match="ordered_by_key"):
            bus.declare_queue("keyed", ordered_by_key=True)
        bus.declare_queue("plain")
        with pytest.raises(ringbus.Unsupported, match="dedup"):
            bus.send("plain", b"x", dedup_id="d")
        with pytest.raises(ringbus.Unsupported, match="replay"):
            bus.subscribe("order.*", group="audit", durable=True, start="earliest")

"""The mqtt:// backend beyond the contract suite: wildcard translation, QoS 1 on the wire, persistent sessions,
interplay with plain MQTT clients, refused topics and queue methods, and reconnection to a restarted broker."""

from __future__ import annotations

import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import ringbus
from ringbus.bus import TOPIC_HEADER, connect
from ringbus.message import Message

paho = pytest.importorskip("paho.mqtt.client")
# below the skip: paho and ringbus.backends._mqtt_wire need paho-mqtt
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.subscribeoptions import SubscribeOptions  # noqa: E402
from servers import answers, free_port, kill, missing, start_mosquitto  # noqa: E402

from ringbus.backends._mqtt_wire import mqtt_filter, ringbus_topic  # noqa: E402

HOST, PORT = "127.0.0.1", 1883
WAIT = 10.0
QUIET = 0.3

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def broker() -> None:
    if not answers(PORT):
        missing(f"no Mosquitto answers at mqtt://{HOST}:{PORT}; start one (mosquitto -d) to run these tests")


@pytest.fixture
def prefix(broker) -> str:
    return f"rbtest-{uuid.uuid4().hex[:12]}/"


@pytest.fixture
def url(prefix) -> str:
    return f"mqtt://{HOST}:{PORT}?prefix={prefix}&session_expiry=60"


@pytest.fixture
def bus(url) -> Iterator[ringbus.bus.Bus]:
    with connect(url) as connection:
        yield connection


def drain(sub, timeout: float = QUIET) -> list[Message]:
    got = []
    while (message := sub.receive(timeout=timeout)) is not None:
        got.append(message)
    return got


def plain_client(on_message=None) -> paho.Client:
    """A paho client that knows nothing of ringbus (a device, a dashboard)."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"plain-{uuid.uuid4().hex[:8]}",
                         protocol=paho.MQTTv5)
    connected = threading.Event()
    client.on_connect = lambda *args: connected.set()
    if on_message is not None:
        client.on_message = on_message
    client.connect(HOST, PORT)
    client.loop_start()
    assert connected.wait(WAIT)
    return client


def stop(client: paho.Client) -> None:
    client.disconnect()
    client.loop_stop()


# -- topics and patterns --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("pattern, expected", [
    ("order.placed", "p/order/placed"),
    ("order.*", "p/order/+"),
    ("order.#", "p/order/#"),  # both match 'order' itself: no difference
    ("#", "p/#"),
    ("*.placed.#", "p/+/placed/#"),
    ("#.eu", "p/#"),  # no MQTT form: over-match, filtered by the subscriber
    ("order.#.eu", "p/order/#"),
])
def test_patterns_become_mqtt_filters(pattern, expected):
    assert mqtt_filter("p/", pattern) == expected


def test_mqtt_topic_names_map_back_under_the_prefix():
    assert ringbus_topic("p/", "p/order/placed") == "order.placed"
    assert ringbus_topic("p/", "q/order") is None
    assert ringbus_topic("p/", "p/") is None
    assert ringbus_topic("", "order/placed") == "order.placed"


def test_hash_matches_zero_words_at_the_end_and_in_the_middle(bus):
    topics = ["order", "order.eu", "order.placed.eu", "order.placed", "orders.eu", "eu"]
    with bus.subscribe("order.#") as tail, bus.subscribe("order.#.eu") as middle, bus.subscribe("#.eu") as head:
        for topic in topics:
            bus.publish(topic, topic.encode())
        assert sorted(m.headers[TOPIC_HEADER] for m in drain(tail)) == sorted(
            ["order", "order.eu", "order.placed.eu", "order.placed"])
        assert sorted(m.headers[TOPIC_HEADER] for m in drain(middle)) == ["order.eu", "order.placed.eu"]
        assert sorted(m.headers[TOPIC_HEADER] for m in drain(head)) == ["eu", "order.eu", "order.placed.eu",
                                                                          "orders.eu"]


@pytest.mark.parametrize("topic, char", [("sensors/room1", "'/'"), ("sensors.room+1", "'\\+'"),
                                         ("sensors.room#", "'#'")])
def test_topics_with_mqtt_characters_are_refused_naming_them(bus, topic, char):
    with pytest.raises(ValueError, match=char):
        bus.publish(topic, b"x")


@pytest.mark.parametrize("pattern, char", [("sensors/#", "'/'"), ("sensors.+", "'\\+'"), ("sensors.a#", "'#'")])
def test_patterns_with_mqtt_characters_are_refused_naming_them(bus, pattern, char):
    with pytest.raises(ValueError, match=char):
        bus.subscribe(pattern)


@pytest.mark.parametrize("query, error", [
    ("prefix=plant", "ending with '/'"), ("prefix=a/%2B/", "ending with '/'"), ("prefix=%24SYS/", "'\\$'"),
    ("qos=2", "unknown option 'qos'"), ("inflight=0", "inflight"), ("session_expiry=-1", "session_expiry"),
])
def test_bad_url_options_are_named(broker, query, error):
    with pytest.raises(ValueError, match=error):
        connect(f"mqtt://{HOST}:{PORT}?{query}")


def test_no_broker_is_a_clear_peer_gone():
    with pytest.raises(ringbus.PeerGone, match="mosquitto"):
        connect(f"mqtt://{HOST}:{free_port()}")


# -- what MQTT cannot give -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("call", [
    lambda bus: bus.declare_queue("jobs"),
    lambda bus: bus.send("jobs", b"x"),
    lambda bus: bus.send_many("jobs", [b"x"]),
    lambda bus: bus.receive("jobs", timeout=0),
    lambda bus: bus.consume("jobs"),
    lambda bus: bus.queue_stats("jobs"),
], ids=["declare_queue", "send", "send_many", "receive", "consume", "queue_stats"])
def test_queue_methods_raise_unsupported_naming_queues_and_where_to_go(bus, call):
    with pytest.raises(ringbus.Unsupported, match=r"queues .*amqp:// or nats://"):
        call(bus)


def test_request_reply_and_replay_raise_unsupported(bus):
    with pytest.raises(ringbus.Unsupported, match="request/reply"):
        bus.request("pricing", b"x", timeout=0.1)
    with pytest.raises(ringbus.Unsupported, match="request/reply"):
        bus.serve("pricing", lambda m: b"", stop=threading.Event())
    with pytest.raises(ringbus.Unsupported, match="retained"):
        bus.subscribe("a.*", group="audit", durable=True, start="earliest")
    assert {"queues", "request_reply", "replay"} <= bus.unsupported_features
    assert "durable_subscription" not in bus.unsupported_features


def test_bad_queue_options_are_still_value_errors(bus):
    with pytest.raises(ValueError, match="max_attempts"):
        bus.declare_queue("jobs", max_attempts=0)


# -- QoS 1 and plain MQTT clients -------------------------------------------------------------------------------------
def test_publish_is_qos_1_with_headers_as_user_properties(bus, prefix):
    got: list[paho.MQTTMessage] = []
    arrived = threading.Event()

    def on_message(client, userdata, message):
        got.append(message)
        arrived.set()

    client = plain_client(on_message)
    try:
        subscribed = threading.Event()
        client.on_subscribe = lambda *args: subscribed.set()
        client.subscribe(f"{prefix}sensors/#", options=SubscribeOptions(qos=1))
        assert subscribed.wait(WAIT)
        message_id = bus.publish("sensors.room1.temp", b"21.5", headers={"unit": "C", "scale": 10}, key="room1")
        assert arrived.wait(WAIT)
    finally:
        stop(client)
    (raw,) = got
    props = dict(raw.properties.UserProperty)
    assert (raw.topic, raw.payload, raw.qos, raw.retain) == (f"{prefix}sensors/room1/temp", b"21.5", 1, False)
    assert (props["unit"], props["scale"], props["ringbus-id"], props["ringbus-key"]) == ("C", "10", message_id,
                                                                                          "room1")
    assert raw.properties.ContentType == "application/octet-stream"


def test_a_plain_device_s_publication_reaches_a_subscriber(bus, prefix):
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    client = plain_client()
    try:
        with bus.subscribe("sensors.*.temp") as sub:
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = [("unit", "C")]
            client.publish(f"{prefix}sensors/room2/temp", b"19.0", qos=1, properties=props).wait_for_publish(WAIT)
            client.publish(f"{prefix}sensors/room2/temp", b"19.5", qos=0).wait_for_publish(WAIT)
            first, second = sub.receive(timeout=WAIT), sub.receive(timeout=WAIT)
    finally:
        stop(client)
    assert (bytes(first.body), first.headers, first.attempts) == (
        b"19.0", {"unit": "C", TOPIC_HEADER: "sensors.room2.temp"}, 0)
    assert bytes(second.body) == b"19.5" and first.id != second.id and len(first.id) == 32


def test_message_fields_and_typed_headers_survive(bus):
    sent = Message.of({"celsius": 21.5}, key="dev-1", priority=3, headers={"n": 1, "f": 0.5, "b": False, "z": None,
                                                                            "s": "1"},
                      reply_to="ack-queue", correlation_id="req-9")
    with bus.subscribe("readings") as sub:
        bus.publish("readings", sent)
        got = sub.receive(timeout=WAIT)
    assert got.value() == {"celsius": 21.5}
    assert (got.id, got.key, got.priority, got.timestamp, got.reply_to, got.correlation_id, got.content_type) == (
        sent.id, "dev-1", 3, sent.timestamp, "ack-queue", "req-9", sent.content_type)
    assert got.headers == {**sent.headers, TOPIC_HEADER: "readings"}


def test_reserved_header_names_are_refused(bus):
    with pytest.raises(ValueError, match="ringbus-id"):
        bus.publish("readings", b"x", headers={"ringbus-id": "mine"})


# -- durable groups: persistent sessions ---------------------------------------------------------------------------
def test_a_durable_group_catches_up_at_qos_1_after_being_away(url):
    with connect(url) as service, connect(url) as device:
        service.subscribe("sensors.#", group="climate", durable=True).close()  # the session exists, the group is away
        ids = [device.publish(f"sensors.room{i % 3}.temp", b"%d" % i) for i in range(30)]
        with service.subscribe("sensors.#", group="climate", durable=True) as back:
            got = [back.receive(timeout=WAIT) for _ in ids]
            assert [m.id for m in got] == ids and {m.attempts for m in got} == {0}
            for message in got[:10]:
                message.ack()
        # the 20 unacked ones come back, marked as delivered before (MQTT's DUP flag), in order
        with service.subscribe("sensors.#", group="climate", durable=True) as again:
            rest = drain(again, timeout=1.0)
            assert [(m.id, m.attempts) for m in rest] == [(i, 1) for i in ids[10:]]
            for message in rest:
                message.ack()
        with service.subscribe("sensors.#", group="climate", durable=True) as empty:
            assert empty.receive(timeout=QUIET) is None
        service.drop_group("climate")


def test_drop_group_removes_the_session_and_what_waits_for_it(url):
    with connect(url) as bus:
        bus.subscribe("a.b", group="gone", durable=True).close()
        bus.publish("a.b", b"waiting")
        with pytest.raises(ringbus.RingbusError, match="live subscription"), \
                bus.subscribe("a.b", group="gone", durable=True):
            bus.drop_group("gone")
        bus.drop_group("gone")
        with bus.subscribe("a.b", group="gone", durable=True) as fresh:
            assert fresh.receive(timeout=QUIET) is None  # the unacked 'waiting' went with the old session
        bus.drop_group("gone")


def test_one_live_member_per_durable_group(url):
    with connect(url) as one, connect(url) as other:
        with one.subscribe("a.*", group="solo", durable=True), \
                pytest.raises(ringbus.Unsupported, match="several live members"):
            other.subscribe("a.*", group="solo", durable=True)
        with other.subscribe("a.*", group="solo", durable=True):
            pass  # free again once the first closed
        one.drop_group("solo")


def test_nack_delivers_again_here_and_reject_is_unsupported(url):
    with connect(url) as bus, bus.subscribe("jobs.*", group="worker", durable=True) as sub:
        bus.publish("jobs.a", b"a")
        first = sub.receive(timeout=WAIT)
        first.nack()
        again = sub.receive(timeout=WAIT)
        assert (again.id, again.attempts) == (first.id, 1)
        with pytest.raises(ringbus.RingbusError, match="already settled"):
            first.ack()
        again.nack(delay=0.2)
        assert sub.receive(timeout=0.05) is None
        late = sub.receive(timeout=WAIT)
        assert (late.id, late.attempts) == (first.id, 2)
        with pytest.raises(ringbus.Unsupported, match="dead letters"):
            late.reject()
        late.nack(requeue=False)  # dropped: acked at the broker
        assert sub.receive(timeout=QUIET) is None
    with connect(url) as bus:
        with bus.subscribe("jobs.*", group="worker", durable=True) as back:
            assert back.receive(timeout=QUIET) is None
        bus.drop_group("worker")


def test_ack_after_close_is_closed(url):
    with connect(url) as bus:
        sub = bus.subscribe("x", group="late-ack", durable=True)
        bus.publish("x", b"x")
        message = sub.receive(timeout=WAIT)
        sub.close()
        with pytest.raises(ringbus.Closed, match="delivers it again"):
            message.ack()
        bus.drop_group("late-ack")


# -- the IoT flow -----------------------------------------------------------------------------------------------------
def test_device_readings_example_flow(url):
    sys.path.insert(0, str(Path(__file__).parents[2] / "examples"))
    try:
        import iot_sensors
    finally:
        sys.path.pop(0)
    climate, seen = iot_sensors.run(url, devices=2, readings=10)
    assert seen == 2 * 2 * 10 * 2  # the live display saw temperature and humidity of every device
    assert climate.count == {f"{site}/dev-{d}": 10 for site in iot_sensors.SITES for d in range(2)}
    for site in iot_sensors.SITES:
        for d in range(2):
            expected = sum(iot_sensors.reading(d, n) for n in range(10)) / 10
            assert climate.mean(f"{site}/dev-{d}") == pytest.approx(expected)


# -- a broker that dies and comes back ------------------------------------------------------------------------------
def test_the_bus_reconnects_to_a_restarted_broker(tmp_path):
    """kill -9 a Mosquitto of our own: a publish in flight waits for the broker to come back and confirms (or
    raises PeerGone after its timeout), and an ephemeral subscription subscribes again by itself."""
    port = free_port()
    process = start_mosquitto(port, tmp_path)
    try:
        with connect(f"mqtt://{HOST}:{port}?timeout=15") as bus, bus.subscribe("sensors.#") as sub:
            bus.publish("sensors.a", b"before")
            assert bytes(sub.receive(timeout=WAIT).body) == b"before"
            kill(process)
            outcome: list[object] = []
            sender = threading.Thread(target=lambda: outcome.append(bus.publish("sensors.a", b"during")))
            sender.start()
            time.sleep(0.5)
            process = start_mosquitto(port, tmp_path)
            sender.join(WAIT + 15)
            assert len(outcome) == 1 and isinstance(outcome[0], str)  # confirmed once the broker was back
            # the subscription's own connection is back too, subscribed again (its clean session was lost):
            deadline = time.monotonic() + WAIT
            while True:
                bus.publish("sensors.a", b"after")
                message = sub.receive(timeout=0.5)
                if message is not None and bytes(message.body) == b"after":
                    break
                assert time.monotonic() < deadline, "the subscription did not come back"
        with connect(f"mqtt://{HOST}:{port}?timeout=1") as short:
            kill(process)
            with pytest.raises(ringbus.PeerGone, match="no PUBACK"):
                short.publish("sensors.a", b"nobody")
    finally:
        kill(process)

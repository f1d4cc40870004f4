"""Fixtures of the contract suite: one ``bus`` per test, parametrized over every backend in ``BACKENDS``.

Adding a backend: write a factory ``def name_backend(tmp_path_factory) -> ContextManager[str]`` that starts what
the backend needs and yields a url for ``ringbus.bus.connect``, and register it in ``BACKENDS``. A ``shared``
backend is started once for the whole session (a broker is slow to start); tests on it stay apart because each
test uses fresh uuid-suffixed queue, topic, group and service names (the ``names`` fixture). A backend that is
not shared is started again for every test.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from ringbus.bus import Bus, connect

from .support import Names, unsupported

# A test of this suite that has not finished by then is hung, not slow.
CONTRACT_TIMEOUT = 90


@dataclass(frozen=True)
class Backend:
    start: Callable[[pytest.TempPathFactory], AbstractContextManager[str]]
    shared: bool  # True: one start for the session; False: one start per test


@contextmanager
def memory_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A memory:// name of its own: connections to the same name share queues, other names are isolated."""
    yield f"memory://contract-{uuid.uuid4().hex}"


@contextmanager
def broker_tcp_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An embedded broker in a thread of this process, on a free loopback port, its log in a fresh directory."""
    from ringbus.broker.server import Broker

    with Broker(tmp_path_factory.mktemp("broker-tcp"), "tcp://127.0.0.1:0") as broker:
        yield broker.endpoint


@contextmanager
def broker_ipc_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An embedded broker on a unix socket (ipc://)."""
    from ringbus.broker.server import Broker

    data = tmp_path_factory.mktemp("broker-ipc")
    with Broker(data, f"ipc://{data}/broker.sock") as broker:
        yield broker.endpoint


REDIS_URL = "redis://127.0.0.1:6379/0"


@contextmanager
def redis_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Redis at 127.0.0.1:6379, every key under a prefix of this session's own (deleted at the end).

    Other users share that Redis: no FLUSHDB, only our prefix is touched. Without a Redis there the tests skip,
    unless RINGBUS_REQUIRE_SERVICES=1 (CI), where that is a failure.
    """
    import os

    import redis

    prefix = f"rbtest-{uuid.uuid4().hex}:"
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2.0, socket_timeout=10.0)
    try:
        client.ping()
    except redis.RedisError as exc:
        client.close()
        message = (f"no Redis answers at {REDIS_URL} ({exc}); start one (redis-server --daemonize yes) to run "
                   "the redis backend's tests")
        if os.environ.get("RINGBUS_REQUIRE_SERVICES") == "1":
            pytest.fail(message)
        pytest.skip(message)
    try:
        yield f"{REDIS_URL}?prefix={prefix}"
    finally:
        keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
        for start in range(0, len(keys), 500):
            client.unlink(*keys[start:start + 500])
        client.close()


AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


@contextmanager
def amqp_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The RabbitMQ at 127.0.0.1:5672 (guest/guest), every queue and exchange under a prefix of this session's own
    (deleted at the end).

    Without a RabbitMQ there (or without pika) the tests skip, unless RINGBUS_REQUIRE_SERVICES=1 (CI), where that
    is a failure.
    """
    import os
    import socket

    try:
        import pika  # noqa: F401
        socket.create_connection(("127.0.0.1", 5672), timeout=2.0).close()
        problem = None
    except (ImportError, OSError) as exc:
        problem = (f"no RabbitMQ answers at {AMQP_URL} ({exc}); start one (rabbitmq-server -detached) and "
                   "pip install 'pika>=1.3' to run the amqp backend's tests")
    if problem is not None:
        if os.environ.get("RINGBUS_REQUIRE_SERVICES") == "1":
            pytest.fail(problem)
        pytest.skip(problem)
    url = f"{AMQP_URL}?prefix=rbtest-{uuid.uuid4().hex[:12]}."
    try:
        yield url
    finally:
        with connect(url) as bus:
            bus.drop_namespace()  # type: ignore[attr-defined]


MQTT_ADDRESS = ("127.0.0.1", 1883)


@contextmanager
def mqtt_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The Mosquitto at 127.0.0.1:1883, every topic under a prefix of this session's own; durable groups' sessions
    expire a minute after their last disconnect (nothing else stays on the broker).

    Without a Mosquitto there (or without paho-mqtt) the tests skip, unless RINGBUS_REQUIRE_SERVICES=1 (CI), where
    that is a failure.
    """
    import os
    import socket

    try:
        import paho.mqtt  # noqa: F401
        socket.create_connection(MQTT_ADDRESS, timeout=2.0).close()
    except (ImportError, OSError) as exc:
        message = (f"no Mosquitto answers at mqtt://{MQTT_ADDRESS[0]}:{MQTT_ADDRESS[1]} ({exc}); start one "
                   "(mosquitto -d) and pip install 'paho-mqtt>=2.0' to run the mqtt backend's tests")
        (pytest.fail if os.environ.get("RINGBUS_REQUIRE_SERVICES") == "1" else pytest.skip)(message)
    yield f"mqtt://{MQTT_ADDRESS[0]}:{MQTT_ADDRESS[1]}?prefix=rbtest-{uuid.uuid4().hex[:12]}/&session_expiry=60"


NATS_ADDRESS = ("127.0.0.1", 4222)


@contextmanager
def nats_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The NATS server (with JetStream) at 127.0.0.1:4222, every subject and stream under a prefix of this
    session's own (deleted at the end).

    Without a NATS there (or without nats-py) the tests skip, unless RINGBUS_REQUIRE_SERVICES=1 (CI), where that is
    a failure.
    """
    import os
    import socket

    try:
        import nats  # noqa: F401
        socket.create_connection(NATS_ADDRESS, timeout=2.0).close()
    except (ImportError, OSError) as exc:
        message = (f"no NATS answers at nats://{NATS_ADDRESS[0]}:{NATS_ADDRESS[1]} ({exc}); start one with "
                   "JetStream (nats-server -js) and pip install 'nats-py>=2.6' to run the nats backend's tests")
        (pytest.fail if os.environ.get("RINGBUS_REQUIRE_SERVICES") == "1" else pytest.skip)(message)
    url = f"nats://{NATS_ADDRESS[0]}:{NATS_ADDRESS[1]}?prefix=rbtest-{uuid.uuid4().hex[:12]}."
    try:
        yield url
    finally:
        with connect(url) as bus:
            bus.drop_namespace()  # type: ignore[attr-defined]


BACKENDS: dict[str, Backend] = {
    "memory": Backend(memory_backend, shared=False),
    "broker-tcp": Backend(broker_tcp_backend, shared=True),
    "broker-ipc": Backend(broker_ipc_backend, shared=True),
    "redis": Backend(redis_backend, shared=True),
    "amqp": Backend(amqp_backend, shared=True),
    "mqtt": Backend(mqtt_backend, shared=True),
    "nats": Backend(nats_backend, shared=True),
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(CONTRACT_TIMEOUT))


@pytest.fixture(scope="session")
def _shared_backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], str]]:
    """Starts each shared backend on first use and stops them all when the session ends."""
    with ExitStack() as stack:
        urls: dict[str, str] = {}

        def url_of(name: str) -> str:
            if name not in urls:
                urls[name] = stack.enter_context(BACKENDS[name].start(tmp_path_factory))
            return urls[name]

        yield url_of


@pytest.fixture(params=sorted(BACKENDS))
def url(request: pytest.FixtureRequest, _shared_backends: Callable[[str], str],
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The url of one backend (the test runs once per backend, with its name as id)."""
    backend = BACKENDS[request.param]
    if backend.shared:
        yield _shared_backends(request.param)
    else:
        with backend.start(tmp_path_factory) as fresh:
            yield fresh


@pytest.fixture
def bus(url: str) -> Iterator[Bus]:
    """A connection for the test's main thread; closed after the test."""
    with connect(url) as connection:
        yield connection


@pytest.fixture
def second_bus(url: str) -> Iterator[Bus]:
    """Another connection to the same backend as ``bus`` (same queues, topics and services)."""
    with connect(url) as connection:
        yield connection


@pytest.fixture
def names() -> Names:
    """Fresh names for this test: ``names.queue()``, ``names.topic("order", "placed")``, ``names.group()``..."""
    return Names()


@pytest.fixture
def queue(bus: Bus, names: Names) -> Callable[..., str | None]:
    """``queue(**options)`` declares a fresh queue on ``bus`` and returns its name.

    ``queue(needs="ordered_by_key", ordered_by_key=True)``: when ``bus`` declares that feature unsupported, checks
    that the declaration raises ringbus.Unsupported and returns None (the test then returns). A backend without
    queues at all must refuse every declaration; the test is then skipped, saying so.
    """

    def declare(needs: str | None = None, **options: object) -> str | None:
        name = names.queue()
        if unsupported(bus, "queues", lambda: bus.declare_queue(name, **options)):
            pytest.skip("the backend declares no queues (declare_queue raised Unsupported, as it must)")
        if needs is not None and unsupported(bus, needs, lambda: bus.declare_queue(name, **options)):
            return None
        bus.declare_queue(name, **options)
        return name

    return declare

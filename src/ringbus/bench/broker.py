"""``ringbus bench broker``: the embedded broker beside Redis Streams and RabbitMQ, end to end.

Four comparisons (issue 4, "Targets"), every peer measured in the same run:

1. throughput with the best batching each system offers: one producer
   process, one consumer process, 64-byte messages, timed from the first send
   to the last ack the server has applied;
2. one durable send at a time, each confirmed before the next;
3. ``memory://`` between two threads against a ``queue.Queue`` hand-off;
4. request/reply round trips through the broker (p50/p99).

Every ZeroMQ endpoint here is TCP on loopback, like Redis (127.0.0.1:6379) and
RabbitMQ (127.0.0.1:5672). Child processes come from the ``spawn`` context
and never outlive a run: each run joins them, and kills what did not leave.
A peer whose library is missing or whose server does not answer is left out
with a note (:func:`missing_peers`).
"""

from __future__ import annotations

import functools
import multiprocessing
import queue as queue_module
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from itertools import repeat
from typing import Any

import zmq

from ringbus.bench._harness import Case
from ringbus.broker.process import BrokerProcess
from ringbus.bus import connect
from ringbus.message import Message

try:
    import pika as pika  # re-exported: bench.patterns shares this optional import
except ImportError:  # an optional peer: its rows are left out, and the CLI says so
    pika = None

try:
    import redis
except ImportError:
    redis = None  # type: ignore[assignment]  # an optional peer, looked at by redis_missing() before use

SPAWN = multiprocessing.get_context("spawn")
SIZE = 64  # bytes per message body
BATCH = 100  # send_many, Redis pipelines, RabbitMQ confirm window
PREFETCH = 1000  # ringbus consumer credit
RABBIT_PREFETCH = 100  # RabbitMQ basic.qos, as the issue specifies
CHILD_TIMEOUT = 120.0  # seconds a child may take before the run is abandoned
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
RABBIT_HOST, RABBIT_PORT = "127.0.0.1", 5672

# Sentences for the table: peers left out, server settings changed for the run.
NOTES: dict[str, None] = {}

# The monotonic clock (CLOCK_MONOTONIC) is one clock for every process on the
# machine, so a producer's first send and a consumer's last ack compare.
now = time.monotonic


def _note(text: str) -> None:
    NOTES.setdefault(text, None)


def _name(kind: str) -> str:
    return f"rbbench-{kind}-{uuid.uuid4().hex[:10]}"


# --- child processes ------------------------------------------------------------------

Ready = Callable[[], None]


def _child_main(label: str, fn: Callable[..., Any], kwargs: dict[str, Any], results: Any, go: Any,
                stop: Any) -> None:
    """Body of a spawned child: ``fn(ready, stop, **kwargs)``; its result or traceback goes to ``results``.

    ``fn`` sets itself up, calls ``ready()`` (which waits for the parent's
    go, so every child starts its timed part together) and returns a figure.
    A server child keeps serving until ``stop`` is set.
    """

    def ready() -> None:
        results.put(("ready", label, None))
        if not go.wait(CHILD_TIMEOUT):
            raise TimeoutError("the parent never said go")

    try:
        value = fn(ready, stop, **kwargs)
    except BaseException:  # noqa: BLE001 - the parent reports it
        results.put(("error", label, traceback.format_exc()))
    else:
        results.put(("done", label, value))


class _Children:
    """The spawned children of one run; leaving the block stops, joins and if need be kills them."""

    def __init__(self) -> None:
        self.results = SPAWN.Queue()
        self.go = SPAWN.Event()
        self.stop = SPAWN.Event()
        self.procs: dict[str, Any] = {}
        self._done: dict[str, Any] = {}

    def start(self, label: str, fn: Callable[..., Any], **kwargs: Any) -> None:
        proc = SPAWN.Process(target=_child_main, name=f"rbbench-{label}", daemon=True,
                             args=(label, fn, kwargs, self.results, self.go, self.stop))
        self.procs[label] = proc
        proc.start()

    def _expect(self, kind: str, labels: set[str]) -> None:
        deadline = now() + CHILD_TIMEOUT
        while labels:
            try:
                what, label, value = self.results.get(timeout=0.5)
            except queue_module.Empty:
                for name in labels:
                    code = self.procs[name].exitcode
                    if code is not None:  # died without a word (a crash, a kill)
                        raise RuntimeError(f"bench child {name!r} exited with code {code} "
                                           f"before it was {kind}") from None
                if now() > deadline:
                    raise TimeoutError(f"bench children {sorted(labels)} not {kind} within {CHILD_TIMEOUT:g} s") \
                        from None
                continue
            if what == "error":
                raise RuntimeError(f"bench child {label!r} failed:\n{value}")
            if what == kind:
                labels.discard(label)
                if kind == "done":
                    self._done[label] = value
            elif what == "done":  # finished before the parent asked (a server stopped by stop)
                self._done[label] = value

    def release(self) -> None:
        """Wait until every child is set up, then let them all go."""
        self._expect("ready", set(self.procs))
        self.go.set()

    def collect(self, *labels: str) -> dict[str, Any]:
        """Wait for the results of ``labels`` (default: every child)."""
        wanted = set(labels or self.procs) - set(self._done)
        self._expect("done", wanted)
        return dict(self._done)

    def __enter__(self) -> _Children:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.go.set()  # a child still waiting for go leaves at once
        deadline = now() + 10.0
        for proc in self.procs.values():
            proc.join(max(0.1, deadline - now()))
        for proc in self.procs.values():
            if proc.is_alive():
                proc.kill()
                proc.join(5.0)
        self.results.close()
        self.results.join_thread()


def _run_pair(producer: tuple[Callable[..., Any], dict[str, Any]],
              consumer: tuple[Callable[..., Any], dict[str, Any]]) -> float:
    """Producer and consumer in two processes; seconds from the first send to the last ack."""
    with _Children() as children:
        children.start("consumer", consumer[0], **consumer[1])
        children.start("producer", producer[0], **producer[1])
        children.release()
        out = children.collect()
    return float(out["consumer"] - out["producer"])


@contextmanager
def _broker() -> Iterator[str]:
    """A ``ringbus broker`` child process (fsync=batch, TCP loopback, a fresh data directory)."""
    with tempfile.TemporaryDirectory(prefix="rbbench-broker-") as data:
        process = BrokerProcess(data, "tcp://127.0.0.1:0", fsync="batch", extra=["--log-level", "warning"])
        try:
            process.start()
            yield process.endpoint
        finally:
            if process.process is not None:
                if process.process.poll() is None:
                    process.stop()
                else:
                    process.kill()


# --- peers: are they here? -------------------------------------------------------------

@functools.cache
def redis_missing() -> str | None:
    """Why the Redis rows are left out, or None if Redis is usable."""
    if redis is None:
        return "redis-py (pip install redis) is not installed: the Redis Streams rows are left out"
    try:
        client = _redis()
        client.ping()
        client.close()
    except Exception as exc:  # noqa: BLE001 - any failure means: no Redis here
        return f"Redis at {REDIS_HOST}:{REDIS_PORT} does not answer ({type(exc).__name__}): its rows are left out"
    return None


@functools.cache
def rabbit_missing() -> str | None:
    """Why the RabbitMQ rows are left out, or None if RabbitMQ is usable."""
    if pika is None:
        return "pika (pip install pika) is not installed: the RabbitMQ rows are left out"
    try:
        _rabbit().close()
    except Exception as exc:  # noqa: BLE001
        return f"RabbitMQ at {RABBIT_HOST}:{RABBIT_PORT} does not answer ({type(exc).__name__}): its rows are left out"
    return None


def missing_peers() -> list[str]:
    """Notes for the table: peers left out, and what was changed on a server for the run."""
    notes = [reason for reason in (redis_missing(), rabbit_missing()) if reason]
    return notes + list(NOTES)


# --- Redis -----------------------------------------------------------------------------

def _redis() -> Any:
    return redis.Redis(host=REDIS_HOST, port=REDIS_PORT, socket_connect_timeout=1.0, socket_timeout=CHILD_TIMEOUT)


@contextmanager
def _redis_stream() -> Iterator[str]:
    """A fresh stream with a consumer group, on a Redis with appendonly yes + appendfsync everysec.

    The two settings are set with CONFIG SET for the run and put back as they
    were afterwards; the stream is deleted.
    """
    client = _redis()
    before = client.config_get("append*")
    stream = _name("stream")
    try:
        client.config_set("appendfsync", "everysec")
        client.config_set("appendonly", "yes")
        _wait_aof(client)
        _note(f"Redis: appendonly yes and appendfsync everysec were set with CONFIG SET for each Redis run and put "
              f"back afterwards (they were appendonly {before.get('appendonly')}, appendfsync "
              f"{before.get('appendfsync')}); everysec acknowledges a write before its fsync")
        client.xgroup_create(stream, "bench", id="0", mkstream=True)
        yield stream
    finally:
        client.delete(stream)
        client.config_set("appendonly", before.get("appendonly", "no"))
        client.config_set("appendfsync", before.get("appendfsync", "everysec"))
        client.close()


def _wait_aof(client: Any) -> None:
    """Turning appendonly on starts a rewrite of the AOF; wait until it is done and AOF is on."""
    deadline = now() + 30.0
    while now() < deadline:
        info = client.info("persistence")
        rewriting = info.get("aof_rewrite_in_progress") or info.get("aof_rewrite_scheduled")
        if info.get("aof_enabled") and not rewriting:
            return
        time.sleep(0.01)
    raise TimeoutError("Redis did not finish enabling its AOF within 30 s")


def _redis_producer(ready: Ready, stop: Any, stream: str, n: int) -> float:
    client = _redis()
    fields = {"b": bytes(SIZE)}
    ready()
    t0 = now()
    left = n
    while left:
        k = min(BATCH, left)
        pipe = client.pipeline(transaction=False)
        for _ in repeat(None, k):
            pipe.xadd(stream, fields)
        pipe.execute()
        left -= k
    client.close()
    return t0


def _redis_consumer(ready: Ready, stop: Any, stream: str, n: int) -> float:
    client = _redis()
    ready()
    got = 0
    while got < n:
        reply = client.xreadgroup("bench", "c1", {stream: ">"}, count=BATCH, block=int(CHILD_TIMEOUT * 1000))
        if not reply:
            raise TimeoutError(f"Redis: no message for {CHILD_TIMEOUT:g} s after {got} of {n}")
        entries = reply[0][1]
        pipe = client.pipeline(transaction=False)
        for entry_id, _fields in entries:
            pipe.xack(stream, "bench", entry_id)  # one XACK per message, like one ack per message elsewhere
        pipe.execute()
        got += len(entries)
    t1 = now()
    client.close()
    return t1


def redis_throughput(n: int) -> float:
    with _redis_stream() as stream:
        return _run_pair((_redis_producer, {"stream": stream, "n": n}),
                         (_redis_consumer, {"stream": stream, "n": n}))


def redis_single(n: int) -> float:
    with _redis_stream() as stream:
        client = _redis()
        fields = {"b": bytes(SIZE)}
        xadd = client.xadd
        try:
            t0 = now()
            for _ in repeat(None, n):
                xadd(stream, fields)
            return now() - t0
        finally:
            client.close()


# --- RabbitMQ --------------------------------------------------------------------------

def _rabbit_parameters() -> Any:
    return pika.ConnectionParameters(RABBIT_HOST, RABBIT_PORT, credentials=pika.PlainCredentials("guest", "guest"),
                                     socket_timeout=5.0, blocked_connection_timeout=CHILD_TIMEOUT)


def _rabbit() -> Any:
    return pika.BlockingConnection(_rabbit_parameters())


@contextmanager
def _rabbit_queue(durable: bool = True) -> Iterator[str]:
    """A fresh queue (durable unless said otherwise), deleted afterwards."""
    name = _name("queue")
    connection = _rabbit()
    try:
        connection.channel().queue_declare(name, durable=durable)
        yield name
    finally:
        try:
            connection.channel().queue_delete(name)
        finally:
            connection.close()


def _rabbit_producer(ready: Ready, stop: Any, queue: str, n: int) -> float:
    """Persistent publishes with confirms, a window of BATCH: publish BATCH, wait for all their confirms, repeat.

    pika's BlockingConnection waits for each confirm before the next publish;
    the asynchronous SelectConnection lets a window of publishes share the
    broker's (multiple=True) confirms, the best batching pika offers.
    """
    properties = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
    body = bytes(SIZE)
    state: dict[str, Any] = {"t0": None, "left": n, "next": 1, "outstanding": set(), "error": None}

    def fail(message: str) -> None:
        state["error"] = message
        connection.ioloop.stop()

    def publish_window() -> None:
        k = min(BATCH, state["left"])
        if k == 0:
            connection.close()
            return
        channel = state["channel"]
        first = state["next"]
        for _ in repeat(None, k):
            channel.basic_publish("", queue, body, properties)
        state["outstanding"].update(range(first, first + k))
        state["next"] = first + k
        state["left"] -= k

    def on_confirm(frame: Any) -> None:
        method = frame.method
        if isinstance(method, pika.spec.Basic.Nack):
            fail(f"RabbitMQ refused publish {method.delivery_tag}")
            return
        outstanding = state["outstanding"]
        if method.multiple:
            outstanding.difference_update([tag for tag in outstanding if tag <= method.delivery_tag])
        else:
            outstanding.discard(method.delivery_tag)
        if not outstanding:
            publish_window()

    def on_select_ok(frame: Any) -> None:
        ready()
        state["t0"] = now()
        publish_window()

    def on_channel(channel: Any) -> None:
        state["channel"] = channel
        channel.confirm_delivery(on_confirm, callback=on_select_ok)

    connection = pika.SelectConnection(
        _rabbit_parameters(),
        on_open_callback=lambda c: c.channel(on_open_callback=on_channel),
        on_open_error_callback=lambda c, exc: fail(f"cannot connect to RabbitMQ: {exc!r}"),
        on_close_callback=lambda c, reason: c.ioloop.stop(),
    )
    connection.ioloop.start()
    if state["error"] is not None:
        raise RuntimeError(state["error"])
    if state["left"] or state["outstanding"]:
        raise RuntimeError(f"RabbitMQ connection closed with {state['left'] + len(state['outstanding'])} "
                           "publishes unconfirmed")
    return float(state["t0"])


def _rabbit_consumer(ready: Ready, stop: Any, queue: str, n: int) -> float:
    connection = _rabbit()
    channel = connection.channel()
    channel.basic_qos(prefetch_count=RABBIT_PREFETCH)
    got = [0]

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        ch.basic_ack(method.delivery_tag)
        got[0] += 1

    channel.basic_consume(queue, on_message, auto_ack=False)
    ready()
    deadline = now() + CHILD_TIMEOUT
    while got[0] < n:
        connection.process_data_events(time_limit=0.5)
        if now() > deadline:
            raise TimeoutError(f"RabbitMQ: {got[0]} of {n} messages within {CHILD_TIMEOUT:g} s")
    # A synchronous call on the channel: RabbitMQ has applied every ack sent before it.
    channel.queue_declare(queue, passive=True)
    t1 = now()
    connection.close()
    return t1


def rabbit_throughput(n: int) -> float:
    with _rabbit_queue() as queue:
        return _run_pair((_rabbit_producer, {"queue": queue, "n": n}), (_rabbit_consumer, {"queue": queue, "n": n}))


def rabbit_single(n: int) -> float:
    """BlockingConnection with confirm_delivery: each persistent publish returns once RabbitMQ confirmed it."""
    with _rabbit_queue() as queue:
        connection = _rabbit()
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            properties = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
            body = bytes(SIZE)
            publish = channel.basic_publish
            t0 = now()
            for _ in repeat(None, n):
                publish("", queue, body, properties)
            return now() - t0
        finally:
            connection.close()


def _rabbit_rpc_server(ready: Ready, stop: Any, queue: str) -> int:
    connection = _rabbit()
    channel = connection.channel()
    channel.basic_qos(prefetch_count=1)
    served = [0]

    def on_request(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        ch.basic_publish("", properties.reply_to, body, pika.BasicProperties(correlation_id=properties.correlation_id))
        ch.basic_ack(method.delivery_tag)
        served[0] += 1

    channel.basic_consume(queue, on_request)
    ready()
    while not stop.is_set():
        connection.process_data_events(time_limit=0.1)
    connection.close()
    return served[0]


def rabbit_rpc(n: int) -> list[float]:
    """RabbitMQ RPC with direct reply-to (amq.rabbitmq.reply-to): a server process answers, pika waits."""
    with _rabbit_queue(durable=False) as queue, _Children() as children:
        children.start("server", _rabbit_rpc_server, queue=queue)
        children.release()
        connection = _rabbit()
        try:
            channel = connection.channel()
            reply: list[Any] = [None]

            def on_reply(ch: Any, method: Any, properties: Any, body: bytes) -> None:
                reply[0] = properties.correlation_id

            channel.basic_consume("amq.rabbitmq.reply-to", on_reply, auto_ack=True)
            body = bytes(SIZE)
            counter = iter(range(1 << 62))

            def round_trip() -> None:
                correlation = str(next(counter))
                reply[0] = None
                channel.basic_publish("", queue, body, pika.BasicProperties(
                    reply_to="amq.rabbitmq.reply-to", correlation_id=correlation))
                deadline = now() + 30.0
                while reply[0] != correlation:
                    connection.process_data_events(time_limit=None)
                    if now() > deadline:
                        raise TimeoutError("RabbitMQ RPC: no reply within 30 s")

            return _round_trips(n, round_trip)
        finally:
            connection.close()


# --- ringbus ---------------------------------------------------------------------------

def _ringbus_producer(ready: Ready, stop: Any, url: str, queue: str, n: int) -> float:
    bus = connect(url)
    bodies = [bytes(SIZE)] * BATCH
    ready()
    t0 = now()
    left = n
    while left:
        k = min(BATCH, left)
        bus.send_many(queue, bodies[:k])
        left -= k
    bus.close()
    return t0


def _ringbus_consumer(ready: Ready, stop: Any, url: str, queue: str, n: int) -> float:
    bus = connect(url)
    messages = bus.consume(queue, prefetch=PREFETCH, timeout=CHILD_TIMEOUT)
    ready()
    got = 0
    for message in messages:
        message.ack()
        got += 1
        if got == n:
            break
    if got < n:
        raise TimeoutError(f"ringbus: {got} of {n} messages within {CHILD_TIMEOUT:g} s")
    # Acks need no reply; a call after them returns once the broker has applied every one (one socket, in order).
    stats = bus.queue_stats(queue)
    t1 = now()
    if stats.acked < n:
        raise RuntimeError(f"ringbus: the broker counts {stats.acked} acks of {n}")
    bus.close()
    return t1


def ringbus_throughput(n: int) -> float:
    with _broker() as url:
        with connect(url) as bus:
            bus.declare_queue("bench")
        return _run_pair((_ringbus_producer, {"url": url, "queue": "bench", "n": n}),
                         (_ringbus_consumer, {"url": url, "queue": "bench", "n": n}))


def ringbus_single(n: int) -> float:
    with _broker() as url, connect(url) as bus:
        bus.declare_queue("bench")
        send = bus.send
        body = bytes(SIZE)
        t0 = now()
        for _ in repeat(None, n):
            send("bench", body)
        return now() - t0


def _ringbus_server(ready: Ready, stop: Any, url: str) -> None:
    bus = connect(url)
    ready()
    try:
        bus.serve("echo", lambda message: message.body, stop=stop)
    finally:
        bus.close()


def _round_trips(n: int, round_trip: Callable[[], Any], warm_up: int = 100) -> list[float]:
    """``warm_up`` untimed round trips (connections, first dispatch), then the seconds of each of n more."""
    for _ in repeat(None, warm_up):
        round_trip()
    samples: list[float] = []
    append = samples.append
    for _ in repeat(None, n):
        t = time.perf_counter()
        round_trip()
        append(time.perf_counter() - t)
    return samples


def ringbus_request(n: int) -> list[float]:
    with _broker() as url, _Children() as children:
        children.start("server", _ringbus_server, url=url)
        children.release()
        with connect(url) as bus:
            body = bytes(SIZE)
            request = bus.request
            # the first request waits in the broker until the worker's READY arrives
            return _round_trips(n, lambda: request("echo", body, timeout=30.0))


def _zmq_rep(ready: Ready, stop: Any, endpoint: str) -> int:
    context = zmq.Context()
    rep = context.socket(zmq.REP)
    rep.linger = 0
    rep.connect(endpoint)
    served = 0
    ready()
    try:
        while not stop.is_set():
            if rep.poll(100):
                rep.send(rep.recv())
                served += 1
    finally:
        rep.close()
        context.term()
    return served


def zmq_req_rep(n: int) -> list[float]:
    context = zmq.Context()
    req = context.socket(zmq.REQ)
    req.linger = 0
    req.rcvtimeo = 30_000
    try:
        port = req.bind_to_random_port("tcp://127.0.0.1")
        with _Children() as children:
            children.start("server", _zmq_rep, endpoint=f"tcp://127.0.0.1:{port}")
            children.release()
            body = bytes(SIZE)
            send, recv = req.send, req.recv
            return _round_trips(n, lambda: (send(body), recv()))
    finally:
        req.close()
        context.term()


# --- memory:// between two threads -----------------------------------------------------

def _two_threads(n: int, consume: Callable[[list[Message], dict[str, float]], None],
                 produce: Callable[[list[Message]], None]) -> float:
    """``consume`` in a thread of its own (it records ``t1`` after its last ack), ``produce`` here; seconds."""
    messages = [Message(bytes(SIZE)) for _ in repeat(None, n)]
    out: dict[str, float] = {}
    failure: list[BaseException] = []

    def run() -> None:
        try:
            consume(messages, out)
        except BaseException as exc:  # noqa: BLE001 - raised in the caller
            failure.append(exc)

    thread = threading.Thread(target=run, name="rbbench-consumer", daemon=True)
    thread.start()
    t0 = now()
    produce(messages)
    thread.join(CHILD_TIMEOUT)
    if failure:
        raise failure[0]
    if thread.is_alive() or "t1" not in out:
        raise TimeoutError("the consumer thread did not finish")
    return out["t1"] - t0


def _memory(n: int, take_all: Callable[[Any, int], None]) -> float:
    """A producer bus here, a consumer bus in a thread on the same ``memory://`` name; ``take_all`` acks n."""
    url = f"memory://{_name('memory')}"
    producer = connect(url)
    producer.declare_queue("bench", durable=False)

    def consume(messages: list[Message], out: dict[str, float]) -> None:
        with connect(url) as bus:
            take_all(bus, len(messages))
            out["t1"] = now()

    def produce(messages: list[Message]) -> None:
        send = producer.send
        for message in messages:
            send("bench", message)

    try:
        return _two_threads(n, consume, produce)
    finally:
        producer.close()


def _receive_all(bus: Any, n: int) -> None:
    receive = bus.receive
    for _ in repeat(None, n):
        receive("bench", 30.0).ack()


def _consume_all(bus: Any, n: int) -> None:
    for message in bus.consume("bench", prefetch=PREFETCH, timeout=30.0):
        message.ack()
        n -= 1
        if not n:
            return


def memory_receive(n: int) -> float:
    return _memory(n, _receive_all)


def memory_consume(n: int) -> float:
    return _memory(n, _consume_all)


def queue_hand_off(n: int) -> float:
    """queue.Queue between the threads; the consumer keeps each message in a dict of in-flight ones until its ack."""
    q: queue_module.Queue[Message] = queue_module.Queue()

    def consume(messages: list[Message], out: dict[str, float]) -> None:
        in_flight: dict[str, Message] = {}
        get = q.get
        for _ in repeat(None, len(messages)):
            message = get(timeout=30.0)
            in_flight[message.id] = message  # delivered, not yet settled
            in_flight.pop(message.id)  # the ack
        out["t1"] = now()

    def produce(messages: list[Message]) -> None:
        put = q.put
        for message in messages:
            put(message)

    return _two_threads(n, consume, produce)


# --- the cases -------------------------------------------------------------------------

REDIS_PIPELINED = f"Redis Streams XADD/XREADGROUP/XACK pipelined x{BATCH}"
RABBIT_CONFIRMS = f"RabbitMQ pika, confirms per window of {BATCH}"
RABBIT_SINGLE = "RabbitMQ pika BlockingConnection, confirm per publish"
RABBIT_RPC = "RabbitMQ RPC (pika, direct reply-to)"
ZMQ_REQ_REP = "pyzmq REQ/REP tcp (one hop)"
QUEUE_HAND_OFF = "queue.Queue + dict of in-flight"


def throughput_case(n: int) -> Case:
    peers: list[tuple[str, Callable[[int], float]]] = []
    if redis_missing() is None:
        peers.append((REDIS_PIPELINED, redis_throughput))
    if rabbit_missing() is None:
        peers.append((RABBIT_CONFIRMS, rabbit_throughput))
    return Case(
        f"producer -> broker -> consumer, {SIZE} B",
        "message",
        n,
        (f"ringbus broker send_many x{BATCH}, consume({PREFETCH})", ringbus_throughput),
        peers,
        target={REDIS_PIPELINED: 2.0, RABBIT_CONFIRMS: 10.0},
    )


def single_send_case(n: int) -> Case:
    peers: list[tuple[str, Callable[[int], float]]] = []
    if rabbit_missing() is None:
        peers.append((RABBIT_SINGLE, rabbit_single))
    if redis_missing() is None:
        peers.append(("Redis XADD, one at a time (AOF everysec)", redis_single))
    return Case(
        f"one durable send at a time, {SIZE} B",
        "confirmed send",
        n,
        ("ringbus broker send (fsync=batch)", ringbus_single),
        peers,
        target={RABBIT_SINGLE: 3.0},
    )


def memory_case(n: int) -> Case:
    return Case(
        f"memory:// two threads, {SIZE} B Message",
        "send+receive+ack",
        n,
        ("memory:// send / receive + ack", memory_receive),
        [(QUEUE_HAND_OFF, queue_hand_off), (f"memory:// send / consume({PREFETCH}) + ack", memory_consume)],
        target={QUEUE_HAND_OFF: 10.0},
    )


def request_case(n: int) -> Case:
    peers: list[tuple[str, Callable[[int], list[float]]]] = [(ZMQ_REQ_REP, zmq_req_rep)]
    if rabbit_missing() is None:
        peers.append((RABBIT_RPC, rabbit_rpc))
    return Case(
        f"request/reply through the broker, {SIZE} B (p99 compared)",
        "round trip",
        n,
        ("ringbus bus.request -> broker -> bus.serve (tcp)", ringbus_request),
        peers,
        target={ZMQ_REQ_REP: 0.5, RABBIT_RPC: 2.0},
        latency=True,
    )


def cases(scale: float = 1.0, seed: int = 0) -> list[Case]:
    """The broker comparisons; scale < 1 shortens every case."""

    def n(base: int) -> int:
        return max(BATCH * 2, int(base * scale) // BATCH * BATCH)

    return [
        throughput_case(n(100_000)),
        single_send_case(n(5_000)),
        memory_case(n(200_000)),
        request_case(n(10_000)),
    ]

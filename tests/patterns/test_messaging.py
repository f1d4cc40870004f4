"""Messaging quick path: Producer and Consumer give the same results on memory:// and on the broker."""

from __future__ import annotations

import threading

import pytest

import ringbus
from ringbus.message import Message
from ringbus.patterns import RetryPolicy
from ringbus.patterns.messaging import Consumer, Producer

from .bus_fixtures import WAIT, run_example, wait_until

pytestmark = pytest.mark.timeout(60)


def test_producer_to_consumer_in_order_each_acked(url: str, queue: str) -> None:
    with Producer(url, queue, durable=True) as producer:
        ids = [producer.send(f"task {i}") for i in range(100)]
        ids += producer.send_many([b"task 100", "task 101"])
    seen: list[bytes] = []
    with Consumer(url, queue, durable=True) as consumer:
        handled = consumer.run(lambda m: seen.append(bytes(m.body)), max_messages=102)
        stats = consumer.stats()
        q = consumer.bus.queue_stats(queue)
    assert handled == 102 and len(ids) == 102
    assert seen == [f"task {i}".encode() for i in range(102)]  # one consumer: send order
    assert (stats.processed, stats.failed, stats.in_flight) == (102, 0, 0)
    assert (q.acked, q.depth, q.in_flight) == (102, 0, 0)


def test_a_failed_task_is_retried_then_done(url: str, queue: str) -> None:
    attempts: list[int] = []

    def flaky(message: Message) -> None:
        attempts.append(message.attempts)
        if message.attempts < 2:
            raise ConnectionError("try again")

    with Producer(url, queue) as producer:
        producer.send(b"resize photo 42")
    with Consumer(url, queue, retry=RetryPolicy(base=0.01, jitter=False)) as consumer:
        consumer.run(flaky, idle_timeout=1.0)
        stats = consumer.stats()
    assert attempts == [0, 1, 2]
    assert (stats.processed, stats.failed, stats.retried, stats.dead_lettered) == (1, 2, 2, 0)


def test_last_attempt_dead_letters_with_the_error(url: str, queue: str) -> None:
    def broken(message: Message) -> None:
        raise KeyError("sku-9")

    with Producer(url, queue, max_attempts=2) as producer:
        producer.send(b"order")
        with Consumer(producer.bus, queue, max_attempts=2, retry=RetryPolicy(base=0.01)) as consumer:
            consumer.run(broken, max_messages=2)
            dead = producer.bus.receive(f"{queue}.dlq", timeout=WAIT)
        assert not producer.bus.closed  # a Bus passed in stays open
    assert dead is not None and dead.headers["ringbus-error"] == "KeyError: 'sku-9'"
    assert dead.headers["ringbus-attempts"] == 2


def test_iterate_and_ack_by_hand(url: str, queue: str) -> None:
    with Producer(url, queue) as producer:
        producer.send_many([b"a", b"b", b"c"])
    with Consumer(url, queue, prefetch=2) as consumer:
        got = []
        for message in consumer:
            got.append(bytes(message.body))
            message.ack()
            if len(got) == 3:
                break
        assert consumer.receive(timeout=0.1) is None
        assert consumer.bus.queue_stats(queue).acked == 3
    assert got == [b"a", b"b", b"c"]


def test_stop_event_ends_run(url: str, queue: str) -> None:
    stop = threading.Event()
    handled: list[int] = []

    def consume() -> None:
        with Consumer(url, queue) as consumer:  # its own bus, in its own thread
            handled.append(consumer.run(lambda m: None, stop=stop))

    with Producer(url, queue) as producer:
        producer.send(b"x")
    thread = threading.Thread(target=consume)
    thread.start()
    with ringbus.connect(url) as bus:
        wait_until(lambda: bus.queue_stats(queue).acked == 1, "the message acked")
    stop.set()
    thread.join(WAIT)
    assert not thread.is_alive() and handled == [1]


def test_declare_options_are_checked(url: str, queue: str) -> None:
    with pytest.raises(TypeError):
        Producer(url, queue, durabel=True)
    with pytest.raises(ValueError, match="max_attempts"):
        Consumer(url, queue, max_attempts=0)
    with pytest.raises(ValueError, match="prefetch"):
        Consumer(url, queue, prefetch=0)
    with pytest.raises(TypeError, match="bus"):
        Producer(42, queue)  # type: ignore[arg-type]
    with Consumer(url, queue) as consumer:
        with pytest.raises(ValueError, match="idle_timeout"):
            consumer.run(print, idle_timeout=-1)
        with pytest.raises(ValueError, match="max_messages"):
            consumer.run(print, max_messages=0)
        with pytest.raises(TypeError, match="handler"):
            consumer.run("print")  # type: ignore[arg-type]
    queue = queue + "-2"
    Producer(url, queue, max_attempts=3).close()
    with pytest.raises(ValueError, match="max_attempts"):  # the queue exists with other options
        Consumer(url, queue, max_attempts=4)


@pytest.mark.integration
def test_task_queue_example_runs() -> None:
    output = run_example("task_queue.py")
    assert "acked 10 of 10, 0 left in the queue" in output, output
    assert "exit codes [0, 0]" in output

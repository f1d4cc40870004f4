"""consume(): prefetch bounds what is unsettled, the idle timeout ends it, competing consumers share a queue."""

from __future__ import annotations

import collections
import threading
import time

from ringbus.bus import connect

from .support import WAIT, bodies

N_COMPETING = 200


def test_prefetch_bounds_unsettled_messages(bus, queue):
    q = queue()
    bus.send_many(q, [b"%d" % i for i in range(5)])
    got = list(bus.consume(q, prefetch=2, timeout=0.3))
    assert bodies(got) == [b"0", b"1"]


def test_ack_lets_the_next_message_through(bus, queue):
    q = queue()
    bus.send_many(q, [b"%d" % i for i in range(5)])
    stream = bus.consume(q, prefetch=2, timeout=2.0)
    first, second = next(stream), next(stream)
    first.ack()
    third = next(stream)
    assert bodies([first, second, third]) == [b"0", b"1", b"2"]
    assert next(stream, None) is None  # `second` and `third` unsettled: nothing more within the timeout
    stream.close()


def test_consume_with_acks_gets_everything_then_ends_when_idle(bus, queue):
    q = queue()
    bus.send_many(q, [b"%d" % i for i in range(5)])
    got = []
    for message in bus.consume(q, prefetch=2, timeout=0.3):
        got.append(message)
        message.ack()
    assert bodies(got) == [b"%d" % i for i in range(5)]
    assert list(bus.consume(q, timeout=0.2)) == []


def test_competing_consumers_share_every_message_once(bus, url, queue, threads):
    q = queue()
    lock = threading.Lock()
    seen: collections.Counter[str] = collections.Counter()
    done = threading.Event()

    def consumer() -> None:
        deadline = time.monotonic() + 4 * WAIT
        with connect(url) as own:  # one bus per thread
            while not done.is_set() and time.monotonic() < deadline:
                for message in own.consume(q, prefetch=8, timeout=0.1):
                    message.ack()
                    with lock:
                        seen[message.id] += 1
                        if sum(seen.values()) >= N_COMPETING:
                            done.set()
                    if done.is_set():
                        break

    threads.start(consumer)
    threads.start(consumer)
    sent = [bus.send(q, b"%d" % i) for i in range(N_COMPETING)]
    threads.join()
    assert set(seen) == set(sent)
    assert max(seen.values()) == 1, [i for i, n in seen.items() if n > 1]

"""Sequential convoy: per key in send order, one at a time; keys in parallel; retries; dead-letter and hold policies.

Every property is shown with counts, orders and sets (never wall-clock time). The big run is the issue's: 10,000
messages over 100 keys, 4 workers (a few seconds per backend).
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import ringbus
from ringbus.message import Message
from ringbus.patterns import PatternStats, RetryPolicy
from ringbus.patterns.convoy import (
    CONTROL_HEADER,
    ERROR_HEADER,
    ConvoyStats,
    Reject,
    SequentialConvoy,
    _key_of,
    held_queue_name,
)

from .bus_fixtures import WAIT, run_example, wait_until

pytestmark = pytest.mark.timeout(120)

N = 10_000
KEYS = 100
FAST_RETRY = RetryPolicy(base=0.002, factor=2.0, max_delay=0.01)

Case = tuple[str, int]  # (key, seq): seq counts the key's messages in send order from 0


class Recorder:
    """A handler that records what it did: successes per key in the order they happened, overlaps of a key.

    ``transient[case]`` calls of a case fail before it succeeds; a case in ``broken`` always fails; one in
    ``rejected`` raises :class:`Reject`.
    """

    def __init__(self, seed: int, *, delay_ms: float = 1.0, transient: dict[Case, int] | None = None,
                 broken: set[Case] | None = None, rejected: set[Case] | None = None) -> None:
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        self.delay = delay_ms / 1000.0
        self.transient = transient or {}
        self.broken = broken or set()
        self.rejected = rejected or set()
        self.calls: defaultdict[Case, int] = defaultdict(int)
        self.done: defaultdict[str, list[int]] = defaultdict(list)
        self.log: list[tuple[str, int, bool]] = []  # (key, seq, succeeded) in the order handlers finished
        self.active: set[str] = set()
        self.overlaps = 0  # a handler started on a key another handler was still on
        self.most_active = 0  # most keys in handlers at once

    def __call__(self, message: Message) -> None:
        case = (message.key, int(message.body))
        with self.lock:
            if case[0] in self.active:
                self.overlaps += 1
            self.active.add(case[0])
            self.most_active = max(self.most_active, len(self.active))
            self.calls[case] += 1
            calls = self.calls[case]
            delay = self.rng.random() * self.delay
        ok = False
        try:
            if delay:
                time.sleep(delay)
            if case in self.broken:
                raise RuntimeError(f"permanent failure of {case[0]}/{case[1]}")
            if case in self.rejected:
                raise Reject(f"{case[0]}/{case[1]} can never succeed")
            if calls <= self.transient.get(case, 0):
                raise ConnectionError(f"transient failure of {case[0]}/{case[1]} (call {calls})")
            ok = True
        finally:
            with self.lock:
                self.active.discard(case[0])
                self.log.append((case[0], case[1], ok))
                if ok:
                    self.done[case[0]].append(case[1])

    def handled(self) -> int:
        with self.lock:
            return sum(len(seqs) for seqs in self.done.values())


def interleaved(n: int, keys: int, seed: int) -> tuple[list[Message], dict[str, int]]:
    """``n`` messages over ``keys`` keys in random interleaving; each body is its seq within its key."""
    rng = random.Random(seed)
    counts: dict[str, int] = defaultdict(int)
    messages = []
    for _ in range(n):
        key = f"k{rng.randrange(keys)}"
        messages.append(Message(b"%d" % counts[key], key=key))
        counts[key] += 1
    return messages, dict(counts)


def send(url: str, queue: str, messages: list[Message]) -> None:
    with ringbus.connect(url) as bus:
        bus.send_many(queue, messages)


def drain(url: str, queue: str) -> list[Message]:
    got = []
    with ringbus.connect(url) as bus:
        while (message := bus.receive(queue, timeout=0.2)) is not None:
            message.ack()
            got.append(message)
    return got


def depth(url: str, queue: str) -> int:
    with ringbus.connect(url) as bus:
        stats = bus.queue_stats(queue)
        return stats.depth + stats.in_flight


# -- the defining property ------------------------------------------------------------------------------------------
def test_order_per_key_one_at_a_time_with_retries_and_dead_letters(url: str, queue: str) -> None:
    """N messages, 100 keys, 4 workers, random 0-1 ms handler delays, ~5% transient failures, 0.3% permanent."""
    messages, counts = interleaved(N, KEYS, seed=5)
    rng = random.Random(6)
    cases = [(m.key, int(m.body)) for m in messages]
    transient = {case: rng.choice((1, 2)) for case in rng.sample(cases, N // 20)}
    broken = set(rng.sample([c for c in cases if c not in transient], N // 300))
    recorder = Recorder(7, transient=transient, broken=broken)
    convoy = SequentialConvoy(url, queue, recorder, workers=4, retry=FAST_RETRY, max_attempts=4)
    with convoy:
        send(url, queue, messages)
        wait_until(lambda: recorder.handled() == N - len(broken) and convoy.stats().dead_lettered == len(broken),
                   "every message handled or dead-lettered")
        assert convoy.wait_idle(WAIT)
        stats = convoy.stats()

    # Every key's successes are exactly its messages in send order, less the dead-lettered ones.
    for key, count in counts.items():
        assert recorder.done[key] == [s for s in range(count) if (key, s) not in broken], key
    assert recorder.overlaps == 0  # never two messages of one key in handlers at once
    assert recorder.most_active >= 2  # ... while different keys were
    # Transient failures succeeded on a retry, in their place; permanent ones are in the DLQ with their error.
    dead = drain(url, f"{queue}.dlq")
    assert {(m.key, int(m.body)) for m in dead} == broken
    # The attempts it had travel in ringbus-attempts (docs/patterns/sequential-convoy.md): the dead letter is a
    # new send, whose own delivery count starts again on engines that count deliveries per queue (Redis).
    assert all(m.headers["ringbus-dead-reason"] == "max_attempts" and m.headers["ringbus-dead-from"] == queue
               and "permanent failure" in str(m.headers[ERROR_HEADER]) and m.headers["ringbus-attempts"] == 4
               for m in dead)
    assert all(recorder.calls[case] == 4 for case in broken)
    assert isinstance(stats, ConvoyStats) and isinstance(stats, PatternStats)
    assert stats.processed == N - len(broken)
    assert stats.dead_lettered == len(broken)
    assert stats.failed == sum(transient.values()) + 4 * len(broken)
    assert stats.retried == sum(transient.values()) + 3 * len(broken)
    assert (stats.in_flight, stats.held_keys, stats.parked) == (0, 0, 0)


def test_backoff_keeps_the_key_blocked_while_other_keys_move(url: str, queue: str) -> None:
    """A nack with delay leaves the message the key's unsettled one: nothing behind it runs in the meantime."""
    messages = [Message(b"%d" % seq, key=key) for seq in range(5) for key in ("a", "b")]
    recorder = Recorder(1, delay_ms=0, transient={("a", 0): 2})
    retry = RetryPolicy(base=0.2, factor=1.0, jitter=False)  # two backoffs of 0.2 s
    with SequentialConvoy(url, queue, recorder, workers=2, retry=retry, max_attempts=5) as convoy:
        send(url, queue, messages)
        wait_until(lambda: recorder.handled() == 10, "all ten handled")
        assert convoy.wait_idle(WAIT)
    a_calls = [(seq, ok) for key, seq, ok in recorder.log if key == "a"]
    assert a_calls == [(0, False), (0, False), (0, True), (1, True), (2, True), (3, True), (4, True)]
    first_failure = recorder.log.index(("a", 0, False))
    success = recorder.log.index(("a", 0, True))
    assert sum(1 for key, _, _ in recorder.log[first_failure:success] if key == "b") >= 1  # b moved meanwhile
    assert recorder.done["b"] == [0, 1, 2, 3, 4]


def test_messages_without_a_key_are_handled_and_dead_lettered_freely(url: str, queue: str) -> None:
    recorder = Recorder(2, delay_ms=0, broken={(None, 3)})  # type: ignore[arg-type]
    with SequentialConvoy(url, queue, recorder, workers=2, retry=FAST_RETRY, max_attempts=2,
                          on_failure="hold") as convoy:
        send(url, queue, [Message(b"%d" % i) for i in range(20)])
        wait_until(lambda: recorder.handled() == 19 and convoy.stats().dead_lettered == 1, "19 handled, 1 dead")
        assert convoy.held_keys() == []  # no key to hold: a keyless message is dead-lettered under either policy
    assert sorted(recorder.done[None]) == [i for i in range(20) if i != 3]  # type: ignore[index]
    assert [int(m.body) for m in drain(url, f"{queue}.dlq")] == [3]


def test_reject_dead_letters_at_once_and_the_key_goes_on_under_hold(url: str, queue: str) -> None:
    recorder = Recorder(5, delay_ms=0, rejected={("a", 2)})
    with SequentialConvoy(url, queue, recorder, workers=2, retry=FAST_RETRY, max_attempts=3,
                          on_failure="hold") as convoy:
        send(url, queue, [Message(b"%d" % seq, key="a") for seq in range(5)])
        wait_until(lambda: recorder.handled() == 4 and convoy.stats().dead_lettered == 1, "4 handled, 1 rejected")
        assert convoy.held_keys() == []
    assert recorder.done["a"] == [0, 1, 3, 4]
    assert recorder.calls[("a", 2)] == 1  # no retries
    (dead,) = drain(url, f"{queue}.dlq")
    assert (int(dead.body), dead.headers["ringbus-dead-reason"]) == (2, "rejected")


# -- hold policy ----------------------------------------------------------------------------------------------------
def test_hold_stops_one_key_and_release_resumes_it_in_order(url: str, queue: str) -> None:
    messages, counts = interleaved(2_000, KEYS, seed=11)
    held, bad = "k7", 3
    recorder = Recorder(12, delay_ms=0.5, broken={(held, bad)})
    holding = held_queue_name(queue, held)
    convoy = SequentialConvoy(url, queue, recorder, workers=4, retry=FAST_RETRY, max_attempts=3,
                              on_failure="hold", drain_batch=7)  # several release markers per backlog
    with convoy:
        send(url, queue, messages)
        others = 2_000 - counts[held]
        wait_until(lambda: recorder.handled() == others + bad, "every other key done, k7 up to its bad message")
        assert convoy.wait_idle(WAIT)
        # The key is held at its failed message; every later one of the key waits, in order, in its holding queue.
        assert convoy.held_keys() == [held]
        assert "permanent failure of k7/3" in str(convoy.hold_reason(held))
        assert recorder.done[held] == [0, 1, 2]
        assert recorder.calls[(held, bad)] == 3
        assert all(recorder.calls[(held, s)] == 0 for s in range(bad + 1, counts[held]))
        for key, count in counts.items():
            if key != held:
                assert recorder.done[key] == list(range(count)), key
        assert depth(url, holding) == counts[held] - bad
        assert convoy.stats().parked == counts[held] - bad

        # More of the held key (and of another) while it is held: the other key proceeds, the held one is parked.
        more = [Message(b"%d" % (counts[held] + i), key=held) for i in range(5)]
        more += [Message(b"%d" % (counts["k8"] + i), key="k8") for i in range(5)]
        send(url, queue, more)
        wait_until(lambda: len(recorder.done["k8"]) == counts["k8"] + 5, "k8 carries on")
        assert convoy.wait_idle(WAIT)
        assert recorder.done[held] == [0, 1, 2]
        assert depth(url, holding) == counts[held] + 5 - bad

        # A release while still broken: the failed message runs max_attempts times again and the key is held again,
        # nothing lost or reordered.
        assert convoy.release(held)
        wait_until(lambda: recorder.calls[(held, bad)] == 6, "three more attempts")
        assert convoy.wait_idle(WAIT)
        wait_until(lambda: depth(url, holding) == counts[held] + 5 - bad, "the failed message back in its place")
        assert convoy.held_keys() == [held]
        assert recorder.done[held] == [0, 1, 2]

        # The fix, then release: the held messages run in order, then the key is free again.
        recorder.broken.clear()
        assert convoy.release(held)
        total = counts[held] + 5
        wait_until(lambda: len(recorder.done[held]) == total, "the held backlog worked off")
        wait_until(lambda: convoy.held_keys() == [], "the hold lifted")
        send(url, queue, [Message(b"%d" % total, key=held)])
        wait_until(lambda: len(recorder.done[held]) == total + 1, "a new message of the key runs directly")
        assert convoy.wait_idle(WAIT)
        stats = convoy.stats()
        assert not convoy.release(held)  # not held any more
    assert recorder.done[held] == list(range(total + 1))
    assert recorder.overlaps == 0
    assert depth(url, holding) == 0
    assert (stats.held_keys, stats.released, stats.dead_lettered) == (0, 1, 0)
    assert stats.parked == total - bad
    assert depth(url, f"{queue}.dlq") == 0


@pytest.fixture(params=["memory", "broker-restarted"])
def restart_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Callable[[], None]]]:
    """A url, and a function that restarts what holds the queues (the broker; memory:// lives in this process)."""
    if request.param == "memory":
        yield f"memory://convoy-{uuid.uuid4().hex}", lambda: None
        return
    endpoint = f"ipc://{tmp_path}/broker.sock"
    brokers = [ringbus.Broker(tmp_path / "data", endpoint).start()]

    def restart() -> None:
        brokers[-1].stop()
        brokers.append(ringbus.Broker(tmp_path / "data", endpoint).start())

    try:
        yield endpoint, restart
    finally:
        brokers[-1].stop()


@pytest.mark.parametrize("policy_after", ["hold", "dead_letter"])
def test_holds_survive_a_restart(restart_url: tuple[str, Callable[[], None]], queue: str, policy_after: str) -> None:
    """A new convoy (after a broker restart, on the broker) finds the held keys in their holding queues, also when
    it runs with the dead_letter policy: held messages keep their order until released."""
    url, restart = restart_url
    plain, odd, long = "order-1", "order/ü 2", "o" * 300  # the three ways a key is put in a queue name
    assert [_key_of(queue, held_queue_name(queue, k)) for k in (plain, odd, long)] == [plain, odd, None]
    messages = [Message(b"%d" % seq, key=key) for seq in range(6) for key in (plain, odd, long, "free")]
    recorder = Recorder(3, delay_ms=0, broken={(plain, 1), (odd, 2), (long, 0)})
    with SequentialConvoy(url, queue, recorder, workers=3, retry=FAST_RETRY, max_attempts=2,
                          on_failure="hold") as convoy:
        send(url, queue, messages)
        wait_until(lambda: len(convoy.held_keys()) == 3 and len(recorder.done["free"]) == 6, "three keys held")
        assert convoy.wait_idle(WAIT)
    restart()
    # Fixed - but under the dead_letter policy one held message still fails: it goes to the DLQ, its key goes on.
    still_broken = {(odd, 2)} if policy_after == "dead_letter" else set()
    recorder.broken = set(still_broken)
    with SequentialConvoy(url, queue, recorder, workers=3, retry=FAST_RETRY, max_attempts=2,
                          on_failure=policy_after) as again:  # type: ignore[arg-type]
        assert again.held_keys() == sorted([plain, odd, long])
        assert "before this convoy started" in str(again.hold_reason(odd))
        for key in (plain, odd, long):
            assert again.release(key)
        wait_until(lambda: again.held_keys() == [], "all three released")
        assert again.wait_idle(WAIT)
    for key in (plain, odd, long, "free"):
        assert recorder.done[key] == [s for s in range(6) if (key, s) not in still_broken], key
    assert {(m.key, int(m.body)) for m in drain(url, f"{queue}.dlq")} == still_broken


def test_a_release_marker_of_an_unheld_key_is_just_acked(url: str, queue: str) -> None:
    recorder = Recorder(4, delay_ms=0)
    with SequentialConvoy(url, queue, recorder, workers=1, on_failure="hold") as convoy:
        assert not convoy.release("nobody")
        send(url, queue, [Message(b"", key="k", headers={CONTROL_HEADER: "release"}), Message(b"0", key="k")])
        wait_until(lambda: recorder.done["k"] == [0], "the message behind the marker")
        assert convoy.wait_idle(WAIT)
    assert recorder.calls == {("k", 0): 1}  # the marker never reached the handler


# -- API ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("kwargs", "error", "names"), [
    ({"workers": 0}, ValueError, "workers"),
    ({"max_attempts": 0}, ValueError, "max_attempts"),
    ({"prefetch": True}, ValueError, "prefetch"),
    ({"drain_batch": 0}, ValueError, "drain_batch"),
    ({"on_failure": "drop"}, ValueError, "on_failure"),
    ({"retry": 3}, TypeError, "retry"),
    ({"visibility_timeout": 0}, ValueError, "visibility_timeout"),
    ({"poll": -1}, ValueError, "poll"),
    ({"dead_letter": "bad name!"}, ValueError, "dead_letter"),
])
def test_bad_arguments_are_named(kwargs: dict[str, object], error: type[Exception], names: str) -> None:
    with pytest.raises(error, match=names):
        SequentialConvoy("memory://", "q", lambda m: None, **kwargs)  # type: ignore[arg-type]


def test_bad_queue_handler_and_url() -> None:
    with pytest.raises(ValueError, match="queue name"):
        SequentialConvoy("memory://", "", lambda m: None)
    with pytest.raises(TypeError, match="handler"):
        SequentialConvoy("memory://", "q", "not callable")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="url"):
        SequentialConvoy(None, "q", lambda m: None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="too long for on_failure='hold'"):
        SequentialConvoy("memory://", "q" * 160, lambda m: None, on_failure="hold")
    with pytest.raises(TypeError, match="key"):
        SequentialConvoy("memory://", "q", lambda m: None).release(42)  # type: ignore[arg-type]


def test_declare_false_needs_the_queue(queue: str) -> None:
    convoy = SequentialConvoy(f"memory://convoy-{uuid.uuid4().hex}", queue, lambda m: None, declare=False)
    with pytest.raises(ringbus.NotFound):
        convoy.start()


def test_holding_queue_names() -> None:
    assert held_queue_name("orders", "order-42") == "orders.held.k.order-42"
    assert held_queue_name("orders", "a b") == "orders.held.x.612062"
    hashed = held_queue_name("orders", "x" * 250)
    assert hashed.startswith("orders.held.h.") and len(hashed) <= 200
    for key in ("order-42", "a b", "ü/€", "", "k.dlq"):
        assert _key_of("orders", held_queue_name("orders", key)) == key
    assert _key_of("orders", hashed) is None
    assert _key_of("orders", "payments.held.k.x") is None


# -- example and benchmark ------------------------------------------------------------------------------------------
def test_example_runs() -> None:
    out = run_example("order_events_convoy.py")
    assert "every order's events in order: 50/50" in out
    assert "held: ['order-17']" in out
    assert "other orders complete meanwhile: 49/49" in out


def test_bench_cases_at_tiny_scale() -> None:
    from ringbus.bench import convoy as bench

    cases = bench.cases(scale=0.001, seed=1)
    assert len(cases) == 4
    for case in cases:
        assert case.n >= 40
        labels = {label for label, _ in case.peers}
        assert set(case.target) <= labels
    # The contenders run and time themselves (memory:// only here: no broker child in the test run).
    assert 0.0 < bench.convoy_run(f"memory://bench-{uuid.uuid4().hex}", 40, workers=2, io_seconds=0.0) < 30.0
    assert 0.0 < bench.pool_run(f"memory://bench-{uuid.uuid4().hex}", 40, workers=2, io_seconds=0.0) < 30.0

"""Per-queue counters and latency histograms (QueueBook, broker STATS, memory://), the Prometheus endpoint
scraped over real HTTP, and ``ringbus stats`` / ``ringbus broker --metrics-port`` as commands."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

import ringbus
from ringbus.broker.metrics import (
    PROMETHEUS_BUCKETS,
    STAGES,
    SUMMARY_KEYS,
    WINDOW,
    SnapshotExchange,
)
from ringbus.broker.process import BrokerProcess
from ringbus.broker.queues import QueueBook
from ringbus.broker.server import Broker
from ringbus.broker.stats_view import print_queues
from ringbus.bus import QueueOptions
from ringbus.message import Message

PRECISION = 1 / 64  # half a bucket of the default histogram (precision_bits=5)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def book(clock: Clock) -> QueueBook:
    book = QueueBook(clock=clock)
    book.declare("q", QueueOptions(durable=False, visibility_timeout=60.0))
    return book


def close(ms: float, expected: float) -> bool:
    return abs(ms - expected) <= expected * PRECISION + 0.001


def latency(book: QueueBook, queue: str = "q") -> dict[str, dict[str, float]]:
    stats = book.stats(queue)
    assert stats.latency_ms is not None
    assert set(stats.latency_ms) == set(STAGES)
    for summary in stats.latency_ms.values():
        assert tuple(summary) == SUMMARY_KEYS
    return {k: dict(v) for k, v in stats.latency_ms.items()}


def test_three_stages_measure_what_they_name(book: QueueBook, clock: Clock) -> None:
    book.send("q", Message(b"a"))
    clock.now += 0.010
    [(tag, _, _)] = book.fetch("q", "consumer", 1)
    clock.now += 0.025
    book.ack("q", tag)
    lat = latency(book)
    assert lat["queue_wait"]["count"] == lat["processing"]["count"] == lat["end_to_end"]["count"] == 1
    assert close(lat["queue_wait"]["p50"], 10.0) and close(lat["queue_wait"]["max"], 10.0)
    assert close(lat["processing"]["p99"], 25.0)
    assert close(lat["end_to_end"]["p90"], 35.0)


def test_a_delay_is_not_queue_wait_but_is_end_to_end(book: QueueBook, clock: Clock) -> None:
    book.send("q", Message(b"a"), delay=5.0)
    clock.now += 5.002  # deliverable for 2 ms
    book.tick()
    [(tag, _, _)] = book.fetch("q", "c", 1)
    book.ack("q", tag)
    lat = latency(book)
    assert close(lat["queue_wait"]["max"], 2.0)
    assert close(lat["end_to_end"]["max"], 5002.0)


def test_counters_and_which_settles_count(book: QueueBook, clock: Clock) -> None:
    for body in (b"a", b"b", b"c", b"d"):
        book.send("q", Message(body))
    tags = [tag for tag, _, _ in book.fetch("q", "c", 4)]
    clock.now += 0.001
    book.nack("q", tags[0], requeue=True)  # processing, no end_to_end
    book.nack("q", tags[1], requeue=False)  # dead-lettered
    book.reject("q", tags[2])
    book.unfetch("q", tags[3])  # never looked at: not processing
    [(again, _, _)] = book.fetch("q", "c", 1)
    book.ack("q", again)
    stats = book.stats("q")
    assert (stats.sent, stats.delivered, stats.nacked, stats.acked, stats.dead_lettered, stats.redelivered) == \
        (4, 5, 2, 1, 2, 1)
    assert stats.latency_ms is not None
    assert stats.latency_ms["processing"]["count"] == 4  # two nacks, a reject, an ack
    assert stats.latency_ms["end_to_end"]["count"] == 1
    assert stats.latency_ms["queue_wait"]["count"] == 5  # every delivery, the redelivery too


def test_an_expired_lease_is_no_settle(book: QueueBook, clock: Clock) -> None:
    book.send("q", Message(b"a"))
    book.fetch("q", "c", 1)
    clock.now += 61.0
    book.tick()  # the lease ran out: back to waiting, nothing processed
    assert latency(book)["processing"]["count"] == 0
    assert book.stats("q").ready == 1


def test_windows_age_out_of_latency_ms_but_not_out_of_the_cumulative_counts(book: QueueBook, clock: Clock) -> None:
    book.send("q", Message(b"a"))
    clock.now += 0.002
    book.fetch("q", "c", 1)
    assert latency(book)["queue_wait"]["count"] == 1
    clock.now += WINDOW + 1  # the next window: the last one still shows
    assert latency(book)["queue_wait"]["count"] == 1
    clock.now += WINDOW + 1
    assert latency(book)["queue_wait"] == {"count": 0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}
    metrics = book.get("q").metrics
    assert metrics is not None
    counts, count, total = metrics.cumulative(clock.now)["queue_wait"]
    assert count == 1 and abs(total - 0.002) < 1e-4
    assert counts[PROMETHEUS_BUCKETS.index(0.001)] == 0 and counts[PROMETHEUS_BUCKETS.index(0.0025)] == 1


def test_a_long_idle_gap_shows_no_stale_window(book: QueueBook, clock: Clock) -> None:
    book.send("q", Message(b"a"))
    book.fetch("q", "c", 1)
    clock.now += 10 * WINDOW
    book.send("q", Message(b"b"))
    clock.now += 0.004
    book.fetch("q", "c", 1)  # rolls here: the first delivery is long gone from latency_ms
    lat = latency(book)["queue_wait"]
    assert lat["count"] == 1 and close(lat["max"], 4.0)


def test_metrics_off_keeps_counters_and_no_histograms(clock: Clock) -> None:
    book = QueueBook(clock=clock, metrics=False)
    book.declare("q", QueueOptions(durable=False))
    book.send("q", Message(b"a"))
    [(tag, _, _)] = book.fetch("q", "c", 1)
    book.nack("q", tag)
    stats = book.stats("q")
    assert stats.latency_ms is None and book.get("q").metrics is None
    assert (stats.delivered, stats.nacked) == (1, 1)


def test_memory_backend_reports_latency() -> None:
    with ringbus.connect("memory://test-metrics-latency") as bus:
        bus.declare_queue("m", durable=False)
        for _ in range(10):
            bus.send("m", b"x")
        for _ in range(10):
            message = bus.receive("m", timeout=1.0)
            assert message is not None
            message.ack()
        stats = bus.queue_stats("m")
        assert stats.latency_ms is not None and stats.latency_ms["end_to_end"]["count"] == 10
        assert stats.delivered == 10 and stats.nacked == 0


# -- the broker --------------------------------------------------------------------------------------------------
@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(tmp_path / "data", "tcp://127.0.0.1:0", metrics_port=0) as running:
        yield running


def traffic(endpoint: str, queue: str, n: int, *, nack_every: int = 0) -> None:
    with ringbus.connect(endpoint) as bus:
        bus.declare_queue(queue)
        bus.send_many(queue, [b"m%d" % i for i in range(n)])
        for i, message in zip(range(n), bus.consume(queue, timeout=10.0), strict=False):  # the first n
            if nack_every and i % nack_every == 0:
                message.nack(requeue=False)
            else:
                message.ack()


def test_stats_reply_carries_latency_and_counters(broker: Broker) -> None:
    traffic(broker.endpoint, "orders", 40, nack_every=4)
    with ringbus.connect(broker.endpoint) as bus:
        stats = bus.queue_stats("orders")
        whole = bus.broker_stats()  # type: ignore[attr-defined]
    assert (stats.sent, stats.delivered, stats.acked, stats.nacked, stats.dead_lettered) == (40, 40, 30, 10, 10)
    assert stats.latency_ms is not None
    assert {s: stats.latency_ms[s]["count"] for s in STAGES} == {"queue_wait": 40, "processing": 40, "end_to_end": 30}
    for summary in stats.latency_ms.values():
        assert list(summary) == list(SUMMARY_KEYS)
        assert 0.0 <= summary["p50"] <= summary["p90"] <= summary["p99"] <= summary["max"]
    assert whole["queues"]["orders"]["latency_ms"]["end_to_end"]["count"] == 30
    assert whole["queues"]["orders.dlq"]["sent"] == 10


def test_broker_without_metrics(tmp_path: Path) -> None:
    with Broker(tmp_path / "data", "tcp://127.0.0.1:0", metrics=False) as broker:
        traffic(broker.endpoint, "q", 5)
        with ringbus.connect(broker.endpoint) as bus:
            stats = bus.queue_stats("q")
    assert stats.latency_ms is None and stats.delivered == 5 and broker.metrics_url is None


@pytest.mark.parametrize("port", [-1, 70000, "9100", True])
def test_bad_metrics_port(tmp_path: Path, port: object) -> None:
    with pytest.raises(ValueError, match="metrics_port"):
        Broker(tmp_path, metrics_port=port)  # type: ignore[arg-type]


def scrape(url: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """GET /metrics and parse it: {sample name: {sorted labels: value}}."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def test_prometheus_endpoint_over_http(broker: Broker) -> None:
    assert broker.metrics_url is not None and broker.metrics_url.startswith("http://127.0.0.1:")
    traffic(broker.endpoint, "jobs", 30, nack_every=3)
    with ringbus.connect(broker.endpoint) as bus:
        bus.send("jobs", b"waiting")
        expected = bus.queue_stats("jobs")
    samples = scrape(broker.metrics_url)
    assert samples["ringbus_broker_up"][()] == 1.0
    assert samples["ringbus_queue_depth"][(("queue", "jobs"),)] == expected.depth == 1
    messages = samples["ringbus_queue_messages_total"]
    for event in ("sent", "delivered", "acked", "nacked", "dead_lettered"):
        assert messages[(("event", event), ("queue", "jobs"))] == getattr(expected, event), event
    counts = samples["ringbus_queue_latency_seconds_count"]
    assert counts[(("queue", "jobs"), ("stage", "end_to_end"))] == expected.acked == 20
    assert counts[(("queue", "jobs"), ("stage", "processing"))] == 30
    buckets = samples["ringbus_queue_latency_seconds_bucket"]
    series = [buckets[(("le", le), ("queue", "jobs"), ("stage", "queue_wait"))]
              for le in [repr(float(b)) for b in PROMETHEUS_BUCKETS] + ["+Inf"]]
    assert series == sorted(series) and series[-1] == 30  # cumulative, ending at the count
    assert samples["ringbus_queue_latency_seconds_sum"][(("queue", "jobs"), ("stage", "queue_wait"))] > 0.0
    assert samples["ringbus_broker_events_total"][(("event", "commands"),)] > 0


def test_scrapes_while_the_loop_is_busy(broker: Broker) -> None:
    """The collector reads snapshots the loop hands over, never the loop's own structures."""
    assert broker.metrics_url is not None
    errors: list[BaseException] = []

    def keep_scraping(stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                scrape(broker.metrics_url)  # type: ignore[arg-type]
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)  # reported by the test's thread

    stop = threading.Event()
    scraper = threading.Thread(target=keep_scraping, args=(stop,))
    scraper.start()
    try:
        for i in range(5):
            traffic(broker.endpoint, f"busy{i}", 50)  # declares queues while the scraper reads
    finally:
        stop.set()
        scraper.join(30)
    assert not errors, errors
    final = scrape(broker.metrics_url)
    acked = {final["ringbus_queue_messages_total"][(("event", "acked"), ("queue", f"busy{i}"))] for i in range(5)}
    assert acked == {50}


def test_metrics_server_stops_with_the_broker(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "data", "tcp://127.0.0.1:0", metrics_port=0).start()
    url = broker.metrics_url
    assert url is not None
    scrape(url)
    broker.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(url, timeout=5)


def test_a_snapshot_request_without_an_answer_returns_the_last_one() -> None:
    exchange = SnapshotExchange()
    assert exchange.request(timeout=0.01) is None and exchange.wanted
    exchange.publish({"queues": {}})
    assert not exchange.wanted
    assert exchange.request(timeout=0.01) == {"queues": {}}  # nobody answered: the last one
    exchange.close()
    assert exchange.request(timeout=5.0) == {"queues": {}}  # closed: at once


# -- the commands ------------------------------------------------------------------------------------------------
def ringbus_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ringbus", *args], check=False, capture_output=True, text=True,
                          timeout=60)


def test_broker_command_metrics_port_and_stats_command(tmp_path: Path) -> None:
    with BrokerProcess(tmp_path / "data", extra=["--metrics-port", "0"]) as process:
        traffic(process.endpoint, "cli", 12)
        stats = ringbus_cli("stats", "--url", process.endpoint)
        assert stats.returncode == 0, stats.stderr
        lines = stats.stdout.splitlines()
        latency = [line.split() for line in lines[lines.index("latency (ms, last 30-60 s)") + 2:]
                   if line.startswith("cli ")]
        assert [row[1] for row in latency] == list(STAGES)
        assert [int(row[2]) for row in latency] == [12, 12, 12]
        as_json = ringbus_cli("stats", "--url", process.endpoint, "--json")
        assert as_json.returncode == 0, as_json.stderr
        assert json.loads(as_json.stdout)["queues"]["cli"]["latency_ms"]["end_to_end"]["count"] == 12


def test_broker_command_no_metrics(tmp_path: Path) -> None:
    with BrokerProcess(tmp_path / "data", extra=["--no-metrics"]) as process:
        traffic(process.endpoint, "plain", 3)
        stats = ringbus_cli("stats", "--url", process.endpoint)
        assert stats.returncode == 0, stats.stderr
        assert "latency: not measured (broker started with --no-metrics)" in stats.stdout


def test_stats_view_rich_and_plain(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    monkeypatch.setenv("COLUMNS", "200")  # rich's width off a terminal

    queues = {"q": {"depth": 1, "in_flight": 0, "consumers": 2, "sent": 5, "delivered": 4, "acked": 4, "nacked": 0,
                    "dead_lettered": 0, "send_rate": 0.5, "ack_rate": 0.4,
                    "latency_ms": {"queue_wait": {"count": 4, "p50": 1.5, "p90": 2.0, "p99": 2.5, "max": 3.0},
                                   "processing": {"count": 0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0}}},
              "old": {"depth": 0, "sent": 1}}  # a broker of an older release: no delivered, no latency_ms
    for use_rich in (False, True):
        out = io.StringIO()
        print_queues(queues, out=out, use_rich=use_rich)
        text = out.getvalue()
        assert "queue_wait" in text and "2.500" in text and "processing" not in text, text
        assert "old" in text


def test_bench_metrics_cases_run_tiny() -> None:
    """The bench's contenders do their work at a tiny scale (timing is the bench's business, not a test's)."""
    from ringbus.bench.metrics import TARGET, cases

    found = cases(scale=0.001)
    assert [case.target for case in found] == [{"metrics off": TARGET}] * 3
    for case in found:
        for _, contender in (case.ours, *case.peers):
            seconds = contender(200)
            assert isinstance(seconds, float) and seconds > 0.0

"""Latency histograms per queue, and the broker's Prometheus endpoint (``/metrics``).

A :class:`QueueMetrics` belongs to one queue of a :class:`~ringbus.broker.queues.QueueBook` and is touched
only by whoever owns the book (the broker's loop thread, or memory://'s lock). It keeps three stages in the
native :class:`ringbus._core.Histogram` (O(1) per record, fixed memory):

- ``queue_wait``: from when a message became deliverable (its send, or the end of its delay or nack
  backoff) to a delivery; every delivery counts.
- ``processing``: from a delivery to its ack, nack or reject.
- ``end_to_end``: from the send the broker accepted to the ack.

Each stage has two windows of ``WINDOW`` seconds: ``latency_ms`` reports the last 30-60 s, so a chart of
p99 moves when latency does. Windows that age out are folded into cumulative bucket counts for Prometheus,
whose histograms must only grow.

The Prometheus collector runs in the HTTP server's thread and must not read what the loop is changing: it
asks the loop for a snapshot (:class:`SnapshotExchange`); the loop builds one at its next turn (within
0.1 s) and hands it over under a lock.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from ringbus._latency import PROMETHEUS_BUCKETS, STAGES, SUMMARY_KEYS, WINDOW, StageWindows

if TYPE_CHECKING:
    from ringbus.broker.queues import Queue

__all__ = ["QueueMetrics", "SnapshotExchange", "BrokerCollector", "MetricsServer", "STAGES", "WINDOW",
           "PROMETHEUS_BUCKETS", "SUMMARY_KEYS"]

log = logging.getLogger("ringbus.broker.metrics")

SNAPSHOT_TIMEOUT = 2.0  # seconds a scrape waits for the loop before it answers with the last snapshot


class QueueMetrics(StageWindows):
    """Latency histograms of one queue, fed by its :class:`QueueBook`.

    The hot path is one native call per sample: ``record_processing`` and ``record_end_to_end`` are the
    current windows' ``record_seconds``, kept bound; :meth:`deliveries` hands out the queue-wait one. The
    windows roll when a batch is delivered or the numbers are read (settles follow deliveries, so they
    cannot lag a roll by more than a batch).
    """

    __slots__ = ("_wait", "record_processing", "record_end_to_end")

    def _bind(self) -> None:
        self._wait = self.queue_wait.recent.record_seconds
        self.record_processing = self.processing.recent.record_seconds  # seconds from delivery to settle
        self.record_end_to_end = self.end_to_end.recent.record_seconds  # seconds from send to ack

    def deliveries(self, now: float) -> Callable[[float], None]:
        """What records the queue waits (seconds) of the deliveries made ``now`` (monotonic seconds)."""
        if now >= self._roll_at:
            self.roll(now)
        return self._wait


# -- the snapshot the loop hands to the scraping thread -----------------------------------------------------------
class SnapshotExchange:
    """Another thread asks (:meth:`request`); the owner of the data answers at its next turn (:meth:`publish`).

    ``wanted`` is a plain attribute the owner reads each turn: a bool read costs nothing next to a turn.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._snapshot: dict[str, Any] | None = None
        self._version = 0
        self.wanted = False
        self.closed = False

    def request(self, timeout: float = SNAPSHOT_TIMEOUT) -> dict[str, Any] | None:
        """A fresh snapshot, or the last one if the owner did not answer within ``timeout`` (None: never any)."""
        with self._cond:
            if self.closed:
                return self._snapshot
            version = self._version
            self.wanted = True
            self._cond.wait_for(lambda: self._version != version or self.closed, timeout)
            return self._snapshot

    def publish(self, snapshot: dict[str, Any]) -> None:
        with self._cond:
            self._snapshot = snapshot
            self._version += 1
            self.wanted = False
            self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


def queue_snapshot(queues: dict[str, Queue], now: float) -> dict[str, dict[str, Any]]:
    """Per queue: sizes, counters and cumulative latency buckets (None with metrics off). Owner's thread only."""
    out = {}
    for name, queue in queues.items():
        metrics = queue.metrics
        out[name] = {
            "depth": queue.depth, "ready": queue.ready, "delayed": len(queue._delayed), "in_flight": queue.in_flight,
            "consumers": queue.consumers,
            "messages": {"sent": queue.sent, "delivered": queue.delivered, "acked": queue.acked,
                         "nacked": queue.nacked, "redelivered": queue.redelivered,
                         "dead_lettered": queue.dead_lettered, "expired": queue.expired,
                         "deduplicated": queue.deduplicated},
            "latency": None if metrics is None else metrics.cumulative(now),
        }
    return out


# -- Prometheus ----------------------------------------------------------------------------------------------------
class BrokerCollector:
    """A prometheus_client collector over the snapshots a broker publishes into a :class:`SnapshotExchange`."""

    def __init__(self, exchange: SnapshotExchange) -> None:
        self._exchange = exchange

    def describe(self) -> list[Any]:
        return []  # registering must not ask the loop for a snapshot (it may be the loop registering)

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        snapshot = self._exchange.request()
        up = GaugeMetricFamily("ringbus_broker_up", "1 while the broker's loop answers scrapes")
        up.add_metric([], 0.0 if snapshot is None or self._exchange.closed else 1.0)
        yield up
        if snapshot is None:
            return
        gauges = {key: GaugeMetricFamily(f"ringbus_queue_{key}", text, labels=["queue"]) for key, text in (
            ("depth", "messages waiting (ready + delayed)"), ("ready", "messages deliverable now"),
            ("delayed", "messages waiting for their delay or backoff"),
            ("in_flight", "messages delivered and not yet settled"), ("consumers", "consumers attached"))}
        messages = CounterMetricFamily("ringbus_queue_messages", "messages by what happened to them",
                                       labels=["queue", "event"])
        latency = HistogramMetricFamily("ringbus_queue_latency_seconds", "queue_wait: deliverable to delivered; "
                                        "processing: delivered to settled; end_to_end: sent to acked",
                                        labels=["queue", "stage"])
        for name, queue in sorted(snapshot["queues"].items()):
            for key, family in gauges.items():
                family.add_metric([name], queue[key])
            for event, count in queue["messages"].items():
                messages.add_metric([name, event], count)
            for stage, (counts, count, total) in (queue["latency"] or {}).items():
                buckets = [(_le(bound), float(n)) for bound, n in zip(PROMETHEUS_BUCKETS, counts, strict=True)]
                latency.add_metric([name, stage], buckets + [("+Inf", float(count))], total)
        yield from gauges.values()
        yield messages
        yield latency
        broker = snapshot["broker"]
        events = CounterMetricFamily("ringbus_broker_events", "broker counters: commands, malformed input, "
                                     "confirms, sessions expired ...", labels=["event"])
        for event, count in sorted(broker["counters"].items()):
            events.add_metric([event], count)
        yield events
        topics = CounterMetricFamily("ringbus_topic_messages", "publications and their copies to subscribers",
                                     labels=["event"])
        for event in ("published", "delivered", "dropped"):
            topics.add_metric([event], broker["topics"].get(event, 0))
        yield topics
        for key, text in (("sessions", "client sessions alive"), ("log_bytes", "bytes in the durable log"),
                          ("log_segments", "segment files of the durable log")):
            gauge = GaugeMetricFamily(f"ringbus_broker_{key}", text)
            gauge.add_metric([], broker[key])
            yield gauge


def _le(bound: float) -> str:
    return repr(float(bound))


class MetricsServer:
    """``/metrics`` over HTTP (prometheus_client's server) for one broker; :meth:`close` stops it."""

    def __init__(self, exchange: SnapshotExchange, port: int, host: str = "127.0.0.1") -> None:
        try:
            from prometheus_client import CollectorRegistry, start_http_server
        except ImportError as exc:  # pragma: no cover - prometheus-client is in the test extra
            raise RuntimeError("the broker's metrics port needs prometheus-client: pip install prometheus-client") \
                from exc
        self.exchange = exchange
        registry = CollectorRegistry(auto_describe=False)
        registry.register(BrokerCollector(exchange))
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.host = host
        self.port = int(self._server.server_address[1])

    @property
    def url(self) -> str:
        """Where Prometheus scrapes: ``http://host:port/metrics``."""
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self.exchange.close()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


def broker_snapshot(queues: dict[str, Queue], now: float, numbers: dict[str, Any]) -> dict[str, Any]:
    """What the loop publishes for a scrape: :func:`queue_snapshot` and the broker-wide ``numbers`` (BROKER's)."""
    log_stats = numbers.get("log", {})
    return {
        "queues": queue_snapshot(queues, now),
        "broker": {"counters": numbers["counters"], "topics": numbers["topics"], "sessions": numbers["sessions"],
                   "log_bytes": log_stats.get("bytes", 0), "log_segments": log_stats.get("segments", 0)},
    }

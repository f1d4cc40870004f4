"""OpenTelemetry trace context across Bus connections: producer and consumer spans of one flow share a trace
(memory://, the embedded broker, a consumer in another process), spans end on settle, and without
opentelemetry ``traced`` is a no-op."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path

import pytest

pytest.importorskip("opentelemetry.sdk",
                    reason="the otel extra (opentelemetry-api, opentelemetry-sdk) is not installed")

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

import ringbus
from ringbus.broker.server import Broker
from ringbus.tracing import TRACEPARENT, TracedBus, extract, inject, traced


class Spans:
    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        self.provider = TracerProvider()
        self.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.tracer = self.provider.get_tracer("test")

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.exporter.get_finished_spans() if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, (name, [s.name for s in self.exporter.get_finished_spans()])
        return found[0]


@pytest.fixture
def spans() -> Iterator[Spans]:
    s = Spans()
    yield s
    s.provider.shutdown()


@pytest.fixture
def memory_url(request: pytest.FixtureRequest) -> str:
    return f"memory://tracing-{request.node.name}"


def connect(url: str, spans: Spans) -> ringbus.Bus:
    bus = traced(ringbus.connect(url), tracer_provider=spans.provider)
    assert isinstance(bus, TracedBus)
    return bus


def assert_child(child: ReadableSpan, parent: ReadableSpan) -> None:
    assert child.context.trace_id == parent.context.trace_id
    assert child.parent is not None and child.parent.span_id == parent.context.span_id


def test_producer_and_consumer_on_two_connections_share_the_trace(spans: Spans, memory_url: str) -> None:
    with connect(memory_url, spans) as producer, connect(memory_url, spans) as consumer:
        producer.declare_queue("orders", durable=False)
        with spans.tracer.start_as_current_span("checkout"):
            mid = producer.send("orders", b"order-1", headers={"tenant": "a"})
        message = consumer.receive("orders", timeout=5.0)
        assert message is not None and message.id == mid
        assert message.headers["tenant"] == "a" and TRACEPARENT in message.headers
        message.ack()
    checkout, send, process = spans.one("checkout"), spans.one("send orders"), spans.one("process orders")
    assert_child(send, checkout)
    assert_child(process, send)
    assert (send.kind, process.kind) == (SpanKind.PRODUCER, SpanKind.CONSUMER)
    assert send.attributes["messaging.destination.name"] == "orders"
    assert send.attributes["messaging.message.id"] == process.attributes["messaging.message.id"] == mid
    assert process.attributes["ringbus.settle"] == "ack"


def test_a_handler_s_sends_join_the_flow(spans: Spans, memory_url: str) -> None:
    """orders -> (handler sends) -> invoices: one trace of five spans, each the child of the one before."""
    with connect(memory_url, spans) as a, connect(memory_url, spans) as b, connect(memory_url, spans) as c:
        for q in ("orders", "invoices"):
            a.declare_queue(q, durable=False)
        a.send("orders", b"1")
        for message in b.consume("orders", timeout=0.5):
            b.send("invoices", b"for " + bytes(message.body))  # the process span is current here
            message.ack()
        invoice = c.receive("invoices", timeout=5.0)
        assert invoice is not None
        invoice.ack()
    chain = [spans.one(n) for n in ("send orders", "process orders", "send invoices", "process invoices")]
    for parent, child in pairwise(chain):
        assert_child(child, parent)


def test_across_the_broker_and_a_consumer_in_another_process(spans: Spans, tmp_path: Path) -> None:
    consumer = textwrap.dedent("""
        import json, sys
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        import ringbus
        from ringbus.tracing import traced
        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        with traced(ringbus.connect(sys.argv[1]), tracer_provider=provider) as bus:
            message = bus.receive("jobs", timeout=30.0)
            message.ack()
        [span] = exporter.get_finished_spans()
        print(json.dumps({"name": span.name, "trace": span.context.trace_id, "parent": span.parent.span_id}))
    """)
    with Broker(tmp_path / "data", "tcp://127.0.0.1:0") as broker, connect(broker.endpoint, spans) as producer:
        producer.declare_queue("jobs")
        with spans.tracer.start_as_current_span("upload"):
            producer.send("jobs", b"resize photo 7")
        child = subprocess.run([sys.executable, "-c", consumer, broker.endpoint], check=False, capture_output=True,
                               text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    seen = json.loads(child.stdout)
    send = spans.one("send jobs")
    assert seen == {"name": "process jobs", "trace": send.context.trace_id, "parent": send.context.span_id}
    assert spans.one("upload").context.trace_id == send.context.trace_id


def test_send_many_and_nack_and_an_unsettled_message(spans: Spans, memory_url: str) -> None:
    with connect(memory_url, spans) as bus:
        bus.declare_queue("q", durable=False)
        bus.send_many("q", [b"a", ringbus.Message(b"b", headers={"keep": 1})])
        got = []
        for message in bus.consume("q", timeout=0.3):
            got.append(message)
            if message.body == b"a":
                message.nack(requeue=False)
            # b is left unsettled: its span ends when the loop asks for more
        assert {m.headers[TRACEPARENT] for m in got} == {got[0].headers[TRACEPARENT]}
        assert got[1].headers["keep"] == 1
    send = spans.one("send q")
    assert send.attributes["messaging.batch.message_count"] == 2
    processed = spans.named("process q")
    assert len(processed) == 2
    assert sorted(s.attributes.get("ringbus.settle", "-") for s in processed) == ["-", "nack"]
    for span in processed:
        assert_child(span, send)


def test_publish_subscribe(spans: Spans, memory_url: str) -> None:
    with connect(memory_url, spans) as bus, connect(memory_url, spans) as other:
        durable = other.subscribe("order.*", group="billing", durable=True)
        ephemeral = other.subscribe("order.#")
        bus.publish("order.placed", b"x")
        message = durable.receive(timeout=5.0)
        assert message is not None
        message.ack()
        assert ephemeral.receive(timeout=5.0) is not None
        assert ephemeral.receive(timeout=0.05) is None  # leaves the last one: its span ends here
        durable.close()
        ephemeral.close()
    publish = spans.one("publish order.placed")
    processed = spans.named("process order.placed")
    assert len(processed) == 2
    for span in processed:
        assert_child(span, publish)


def test_request_and_serve(spans: Spans, memory_url: str) -> None:
    stop = threading.Event()
    with connect(memory_url, spans) as server, connect(memory_url, spans) as client:
        thread = threading.Thread(target=server.serve, args=("pricing", lambda m: b"42"), kwargs={"stop": stop})
        thread.start()
        try:
            with spans.tracer.start_as_current_span("quote"):
                assert client.request("pricing", b"item 1", timeout=10.0).body == b"42"
        finally:
            stop.set()
            thread.join(10.0)
    request, serve = spans.one("request pricing"), spans.one("serve pricing")
    assert (request.kind, serve.kind) == (SpanKind.CLIENT, SpanKind.SERVER)
    assert_child(request, spans.one("quote"))
    assert_child(serve, request)


def test_the_wrapper_passes_the_rest_through(spans: Spans, tmp_path: Path) -> None:
    with Broker(tmp_path / "data", "tcp://127.0.0.1:0") as broker, connect(broker.endpoint, spans) as bus:
        bus.declare_queue("q")
        assert "q" in bus.broker_stats()["queues"]  # type: ignore[attr-defined]
        assert bus.queue_stats("q").sent == 0 and "q" in bus.queues()
        assert traced(bus) is bus
        assert repr(bus).startswith("<TracedBus")
    assert bus.closed


def test_inject_and_extract_without_a_span(spans: Spans) -> None:
    assert inject({"a": 1}) == {"a": 1}  # no current span: nothing to carry
    with spans.tracer.start_as_current_span("outer") as outer:
        headers = inject()
    context = extract(ringbus.Message(b"", headers=headers))
    from opentelemetry import trace

    assert trace.get_current_span(context).get_span_context().trace_id == outer.get_span_context().trace_id
    bogus = ringbus.Message(b"", headers={TRACEPARENT: 7})  # not a str: ignored, not an error
    assert not trace.get_current_span(extract(bogus)).get_span_context().is_valid


def test_without_opentelemetry_traced_is_the_bus_itself() -> None:
    script = textwrap.dedent("""
        import sys
        sys.modules["opentelemetry"] = None  # as if it were not installed
        import ringbus
        from ringbus import tracing
        bus = ringbus.connect("memory://no-otel")
        assert tracing.traced(bus) is bus and not tracing.available()
        assert tracing.inject({"a": "b"}) == {"a": "b"} and tracing.extract(ringbus.Message(b"")) is None
        try:
            tracing.TracedBus(bus)
        except RuntimeError as exc:
            assert "opentelemetry" in str(exc)
        else:
            raise AssertionError("TracedBus without opentelemetry must refuse")
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_consume_raises_at_the_call_like_the_backends(spans: Spans, memory_url: str) -> None:
    with connect(memory_url, spans) as bus:
        with pytest.raises(ringbus.NotFound):
            bus.consume("missing")
        with pytest.raises(ValueError, match="prefetch"):
            bus.consume("missing", prefetch=0)



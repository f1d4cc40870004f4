"""OpenTelemetry trace context in message headers, so a flow across services is one trace.

``traced(bus)`` wraps any :class:`~ringbus.Bus` (memory, broker, Redis, RabbitMQ: one wrapper, no backend
code) when opentelemetry is installed, and returns the bus itself when it is not - no cost, no error:

- ``send``/``send_many``/``publish``/``publish_many`` run in a PRODUCER span (``send orders``,
  ``publish order.placed``) whose W3C ``traceparent``/``tracestate`` go into the message headers (with the
  global propagator: whatever ``opentelemetry.propagate`` is set to);
- every message from ``receive``, ``consume`` or a subscription gets a CONSUMER span (``process orders``)
  whose parent is the context in its headers. It is the current span while the caller handles the message
  (until the next ``receive`` or the loop's next message, in that thread), so spans and sends made by the
  handler join the trace. It ends when the message is settled (ack, nack, reject) or at that next call;
- ``request`` is a CLIENT span, ``serve`` runs each call of the handler in a SERVER span.

Why a wrapper and not a hook in each backend or pattern: the Bus contract is the one seam every backend
and every pattern goes through, so a middleware Bus covers them all once (the house style: cross-cutting
behaviour as middleware). Code that connects by URL gets it where ``connect`` returns ``traced(...)``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from ringbus.backends._common import as_message
from ringbus.bus import TOPIC_HEADER, Bus, Handler, QueueStats, Start, Subscription
from ringbus.message import HeaderValue, Message

if TYPE_CHECKING:
    from opentelemetry.context import Context
    from opentelemetry.trace import Span, Tracer

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
except ImportError:  # the otel extra is not installed: traced() hands the bus back untouched
    trace = None  # type: ignore[assignment]

__all__ = ["traced", "TracedBus", "inject", "extract", "available", "TRACEPARENT", "TRACESTATE"]

TRACEPARENT = "traceparent"  # W3C Trace Context header names, as they travel in Message.headers
TRACESTATE = "tracestate"
SYSTEM = "ringbus"  # messaging.system


def available() -> bool:
    """True when opentelemetry (the API) can be imported."""
    return trace is not None


def traced(bus: Bus, *, tracer_provider: Any = None) -> Bus:
    """``bus`` with trace context carried in message headers; ``bus`` itself when opentelemetry is missing."""
    if trace is None or isinstance(bus, TracedBus):
        return bus
    return TracedBus(bus, tracer_provider=tracer_provider)


def inject(headers: dict[str, HeaderValue] | None = None) -> dict[str, HeaderValue]:
    """``headers`` plus the current trace context's ``traceparent``/``tracestate`` (unchanged without otel)."""
    out: dict[str, HeaderValue] = dict(headers or {})
    if trace is not None:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        out.update(carrier)
    return out


def extract(message: Message) -> Context | None:
    """The trace context a message carries in its headers (None without otel)."""
    if trace is None:
        return None
    headers = message.headers
    fields = propagate.get_global_textmap().fields
    return propagate.extract({k: v for k, v in headers.items() if k in fields and isinstance(v, str)})


def _attributes(operation: str, destination: str, **more: Any) -> dict[str, Any]:
    return {"messaging.system": SYSTEM, "messaging.operation.type": operation,
            "messaging.operation.name": operation, "messaging.destination.name": destination, **more}


class _SpanSettle:
    """A message's settle handle that also ends its CONSUMER span; anything else goes to the backend's handle."""

    __slots__ = ("inner", "span")

    def __init__(self, inner: Any, span: Span) -> None:
        self.inner = inner
        self.span = span

    def _end(self, outcome: str) -> None:
        if self.span.is_recording():
            self.span.set_attribute("ringbus.settle", outcome)
            self.span.end()

    def ack(self, message: Message) -> None:
        try:
            self.inner.ack(message)
        finally:
            self._end("ack")

    def nack(self, message: Message, requeue: bool, delay: float | None) -> None:
        try:
            self.inner.nack(message, requeue, delay)
        finally:
            self._end("nack")

    def reject(self, message: Message) -> None:
        try:
            self.inner.reject(message)
        finally:
            self._end("reject")

    def __getattr__(self, name: str) -> Any:  # e.g. a backend reading its own handle's tag
        if name == "inner":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


class _Current:
    """The span of the message a loop is handling, attached as the current context until the next one."""

    __slots__ = ("span", "token")

    def __init__(self) -> None:
        self.span: Span | None = None
        self.token: object = None

    def enter(self, span: Span) -> None:
        self.span = span
        self.token = otel_context.attach(trace.set_span_in_context(span))

    def leave(self) -> None:
        if self.token is not None:
            otel_context.detach(self.token)  # type: ignore[arg-type]
            self.token = None
        if self.span is not None:
            if self.span.is_recording():  # not settled yet: the handler is done with it anyway
                self.span.end()
            self.span = None


class _Tracing:
    """Spans for one bus; shared by TracedBus and its subscriptions."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self._local = threading.local()  # each thread's _Current of receive(): attach and detach in one thread

    def received(self, receive: Callable[[], Message | None], destination: Callable[[Message], str]) -> Message | None:
        """``receive()`` with the previous message's span left first and the new one's made current."""
        current: _Current | None = getattr(self._local, "current", None)
        if current is None:
            current = self._local.current = _Current()
        current.leave()  # the caller is back for more: done with the last one
        message = receive()
        if message is not None:
            current.enter(self.consumed(message, destination(message)))
        return message

    def leave(self) -> None:
        current: _Current | None = getattr(self._local, "current", None)
        if current is not None:
            current.leave()

    def consumed(self, message: Message, destination: str) -> Span:
        """Start the CONSUMER span of a delivered message and hang it on the message's settle handle."""
        span = self.tracer.start_span(
            f"process {destination}", context=extract(message), kind=trace.SpanKind.CONSUMER,
            attributes=_attributes("process", destination, **{"messaging.message.id": message.id,
                                                               "ringbus.attempts": message.attempts}))
        if message._settle is not None:
            message._settle = _SpanSettle(message._settle, span)
        return span

    def loop(self, messages: Iterator[Message],
             destination: Callable[[Message], str]) -> Generator[Message, None, None]:
        """Yield ``messages``, each with its span current while the caller handles it."""
        current = _Current()
        try:
            for message in messages:
                current.leave()
                current.enter(self.consumed(message, destination(message)))
                yield message
        finally:
            current.leave()
            close = getattr(messages, "close", None)
            if close is not None:
                close()


def _topic_of(pattern: str) -> Callable[[Message], str]:
    def topic(message: Message) -> str:
        value = message.headers.get(TOPIC_HEADER)
        return value if isinstance(value, str) else pattern
    return topic


class _TracedSubscription(Subscription):
    def __init__(self, inner: Subscription, tracing: _Tracing) -> None:
        self._inner = inner
        self._tracing = tracing
        self.pattern, self.group, self.durable = inner.pattern, inner.group, inner.durable
        self._topic = _topic_of(inner.pattern)

    def receive(self, timeout: float | None = None) -> Message | None:
        return self._tracing.received(lambda: self._inner.receive(timeout), self._topic)

    def __iter__(self) -> Iterator[Message]:
        return self._tracing.loop(iter(self._inner), self._topic)

    @property
    def dropped(self) -> int:
        return self._inner.dropped

    def close(self) -> None:
        self._tracing.leave()
        self._inner.close()


class TracedBus(Bus):
    """A Bus that carries OpenTelemetry trace context in message headers (see the module docstring).

    Methods and attributes beyond the Bus contract (``broker_stats``, ...) pass through to the wrapped bus.
    """

    def __init__(self, bus: Bus, *, tracer_provider: Any = None) -> None:
        if trace is None:
            raise RuntimeError("ringbus.tracing needs opentelemetry-api: pip install 'ringbus[otel]'")
        from ringbus import __version__

        self._bus = bus
        self.url = bus.url
        self._tracing = _Tracing(trace.get_tracer("ringbus", __version__, tracer_provider=tracer_provider))

    @property
    def wrapped(self) -> Bus:
        """The bus underneath."""
        return self._bus

    def __getattr__(self, name: str) -> Any:
        if name == "_bus":  # not set yet: no recursion
            raise AttributeError(name)
        return getattr(self._bus, name)

    def _producing(self, operation: str, destination: str, kind: Any = None, **more: Any) -> Any:
        return self._tracing.tracer.start_as_current_span(
            f"{operation} {destination}", kind=kind or trace.SpanKind.PRODUCER,
            attributes=_attributes(operation, destination, **more))

    # -- queues -------------------------------------------------------------------------------------------------
    def declare_queue(self, name: str, **options: Any) -> None:
        self._bus.declare_queue(name, **options)

    def send(self, queue: str, body: bytes | bytearray | memoryview | Message, *, key: str | None = None,
             priority: int | None = None, headers: dict[str, HeaderValue] | None = None,
             delay: float | None = None, ttl: float | None = None, dedup_id: str | None = None) -> str:
        with self._producing("send", queue) as span:
            mid = self._bus.send(queue, body, key=key, priority=priority, headers=inject(headers), delay=delay,
                                 ttl=ttl, dedup_id=dedup_id)
            span.set_attribute("messaging.message.id", mid)
            return mid

    def send_many(self, queue: str, bodies: Iterable[bytes | bytearray | memoryview | Message]) -> list[str]:
        items = list(bodies)
        with self._producing("send", queue, **{"messaging.batch.message_count": len(items)}):
            headers = inject()
            return self._bus.send_many(queue, [as_message(body, headers=headers) for body in items])

    def receive(self, queue: str, timeout: float | None = None) -> Message | None:
        return self._tracing.received(lambda: self._bus.receive(queue, timeout), lambda message: queue)

    def consume(self, queue: str, *, prefetch: int = 64,
                timeout: float | None = None) -> Generator[Message, None, None]:
        messages = self._bus.consume(queue, prefetch=prefetch, timeout=timeout)  # bad arguments raise here
        return self._tracing.loop(messages, lambda message: queue)

    def queue_stats(self, queue: str) -> QueueStats:
        return self._bus.queue_stats(queue)

    def queues(self) -> list[str]:
        return self._bus.queues()

    # -- topics -------------------------------------------------------------------------------------------------
    def publish(self, topic: str, body: bytes | bytearray | memoryview | Message, *,
                headers: dict[str, HeaderValue] | None = None, key: str | None = None) -> str:
        with self._producing("publish", topic) as span:
            mid = self._bus.publish(topic, body, headers=inject(headers), key=key)
            span.set_attribute("messaging.message.id", mid)
            return mid

    def publish_many(self, topic: str, bodies: Iterable[bytes | bytearray | memoryview | Message]) -> list[str]:
        items = list(bodies)
        with self._producing("publish", topic, **{"messaging.batch.message_count": len(items)}):
            headers = inject()
            return self._bus.publish_many(topic, [as_message(body, headers=headers) for body in items])

    def subscribe(self, pattern: str, *, group: str | None = None, durable: bool = False,
                  start: Start = "latest") -> Subscription:
        return _TracedSubscription(self._bus.subscribe(pattern, group=group, durable=durable, start=start),
                                   self._tracing)

    # -- services -----------------------------------------------------------------------------------------------
    def request(self, service: str, body: bytes | bytearray | memoryview | Message, *,
                timeout: float | None = 5.0) -> Message:
        with self._producing("request", service, kind=trace.SpanKind.CLIENT):
            return self._bus.request(service, as_message(body, headers=inject()), timeout=timeout)

    def serve(self, service: str, handler: Handler, *, stop: threading.Event | None = None) -> None:
        tracer = self._tracing.tracer

        def traced_handler(message: Message) -> Any:
            with tracer.start_as_current_span(f"serve {service}", context=extract(message),
                                              kind=trace.SpanKind.SERVER,
                                              attributes=_attributes("process", service,
                                                                     **{"messaging.message.id": message.id})):
                return handler(message)

        self._bus.serve(service, traced_handler, stop=stop)

    # -- lifetime -----------------------------------------------------------------------------------------------
    def close(self) -> None:
        self._tracing.leave()
        self._bus.close()

    @property
    def closed(self) -> bool:
        return self._bus.closed

    def __repr__(self) -> str:
        return f"<TracedBus {self._bus!r}>"

"""Durable pipes and filters: each stage consumes a Bus queue and sends its outputs to the next (ack after send).

Also the Kafka-style description (``input_topic`` + ``filters``) that :meth:`Pipeline.from_kafka_json` reads.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from ringbus.bus import Bus, check_name, connect
from ringbus.errors import RingbusError
from ringbus.message import Message
from ringbus.patterns._handling import (
    ATTEMPTS_HEADER,
    DEAD_FROM,
    DEAD_REASON,
    ERROR_HEADER,
    ERROR_TYPE_HEADER,
    send_deduplicated,
)
from ringbus.patterns._lifecycle import check_count
from ringbus.patterns._pipeline_stage import DeadLetter, Stage, apply_item, error_text
from ringbus.patterns._retry import RetryPolicy
from ringbus.patterns._stats import PatternStats, StatsCounter

__all__ = ["BusPipeline", "DeadLetterQueue", "STAGE_HEADER", "parse_kafka_json", "to_message"]

log = logging.getLogger("ringbus.pipeline")

STAGE_HEADER = "ringbus-stage"  # on a dead letter: the stage that failed
POLL = 0.25  # seconds a stage worker waits for a message before it looks at stop again
SEND_CHUNK = 256


def to_message(value: Any, parent: Message | None = None) -> Message:
    """A value as a message: bytes as they are, str as text, anything else as msgpack; ``parent``'s key,
    headers and correlation id carried over."""
    fields: dict[str, Any] = {}
    if parent is not None:
        fields = {"key": parent.key, "headers": dict(parent.headers), "correlation_id": parent.correlation_id}
    if isinstance(value, Message):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return Message(bytes(value), **fields)
    if isinstance(value, str):
        return Message.of(value, "str", **fields)
    return Message.of(value, "msgpack", **fields)


class DeadLetterQueue:
    """A dead-letter sink that sends each :class:`DeadLetter` to a Bus queue.

    The body is the item (bytes as they are, str as text, else msgpack); the headers name the stage
    (``ringbus-stage``) and the error (``ringbus-error``, ``ringbus-error-type``). Call it from the thread that
    owns ``bus`` (a Pipeline calls its dead-letter sink from the thread iterating ``run``).
    """

    def __init__(self, bus: Bus, queue: str) -> None:
        if not isinstance(bus, Bus):
            raise TypeError(f"bus must be a ringbus Bus, not {type(bus).__name__}")
        self.bus = bus
        self.queue = check_name("queue", queue)

    def __call__(self, letter: DeadLetter) -> None:
        message = to_message(letter.item)
        headers = {STAGE_HEADER: letter.stage, ERROR_HEADER: letter.error, ERROR_TYPE_HEADER: letter.error_type,
                   DEAD_REASON: "rejected"}
        self.bus.send(self.queue, message, headers={**message.headers, **headers})

    def __repr__(self) -> str:
        return f"DeadLetterQueue({self.bus.url!r}, {self.queue!r})"


class BusPipeline:
    """Stages joined by durable Bus queues: stage i consumes ``queues[i]`` and sends to ``queues[i + 1]``.

    Each stage's outputs are sent before its input is acked, so a crash between the two delivers the input
    again (at-least-once: a stage may see an item twice after a crash). A failing item is nacked with backoff
    until it has had ``max_attempts`` deliveries, then sent to ``dead_letter_queue`` with the stage and error
    in its headers (``ringbus-stage``, ``ringbus-error``, ``ringbus-error-type``) and acked.

    Parameters
    ----------
    bus : Bus or str
        A url, or a Bus whose url is used (each worker thread opens its own Bus: a Bus belongs to one thread).
    input_queue : str
        The first stage's queue.
    stages : sequence of (stage, output_queue)
        A function or :class:`Stage` and the queue its outputs go to. ``Stage.processes`` is the number of
        consumer *threads* here; for more processes, start the same BusPipeline in several processes (or
        hosts): their workers compete for the queues.
    dead_letter_queue : str or None
        Where failed items go; default ``<input_queue>.dlq``.
    max_attempts : int
        Deliveries of an item before it is dead-lettered (1: at once on the first error).
    retry : RetryPolicy or None
        Backoff between attempts.
    prefetch : int
        Messages each worker holds unacked.
    declare : dict or None
        Extra ``declare_queue`` options for every queue (e.g. ``{"max_length": 10000}`` for bounded queues:
        a full queue refuses the send, the stage retries it, so a slow stage slows the ones before it).

    Items are decoded by content type (``Message.value()``: bytes as they are, text, JSON, msgpack); outputs
    are encoded by :func:`to_message`.
    """

    def __init__(self, bus: Bus | str, input_queue: str, stages: Sequence[tuple[Callable[..., Any] | Stage, str]], *,
                 dead_letter_queue: str | None = None, max_attempts: int = 1, retry: RetryPolicy | None = None,
                 prefetch: int = 16, declare: dict[str, Any] | None = None) -> None:
        if isinstance(bus, Bus):
            url = bus.url
        elif isinstance(bus, str):
            url = bus
        else:
            raise TypeError(f"bus must be a Bus or a url such as 'tcp://127.0.0.1:5555', not {type(bus).__name__}")
        check_name("input_queue", input_queue)
        if isinstance(stages, (str, bytes)) or not isinstance(stages, Sequence) or not stages:
            raise ValueError("stages must be a non-empty list of (function or Stage, output_queue) pairs")
        checked: list[tuple[Stage, str, str]] = []
        previous = input_queue
        for i, pair in enumerate(stages):
            if not isinstance(pair, tuple) or len(pair) != 2:
                raise TypeError(f"stages[{i}] must be a (function or Stage, output_queue) pair, got {pair!r}")
            fn, out = pair
            stage = fn if isinstance(fn, Stage) else Stage(fn)
            if stage.stream:
                raise ValueError(f"stages[{i}] ({stage.name!r}): a stream stage cannot run on a queue (each item "
                                 "is acked on its own); use a per-item function")
            check_name(f"stages[{i}] output queue", out)
            checked.append((stage, previous, out))
            previous = out
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, not {type(retry).__name__}")
        self.url = url
        self.input_queue = input_queue
        self.stages = tuple(checked)
        self.dead_letter_queue = check_name("dead_letter_queue", dead_letter_queue or f"{input_queue}.dlq")
        self.max_attempts = check_count("max_attempts", max_attempts)
        self.retry = retry or RetryPolicy()
        self.prefetch = check_count("prefetch", prefetch)
        self.declare = dict(declare or {})
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._counts = [[0, 0, 0] for _ in checked]  # received, emitted, failed
        self._counter = StatsCounter()
        self._lock = threading.Lock()
        self._ready = 0
        self._errors: list[BaseException] = []

    @property
    def queues(self) -> list[str]:
        """Every queue of the pipeline, in order: the input, then each stage's output."""
        return [self.input_queue] + [out for _, _, out in self.stages]

    def start(self, timeout: float = 30.0) -> BusPipeline:
        """Declare the queues, start every stage's worker threads; return once each one consumes."""
        if self._threads:
            raise RingbusError("this BusPipeline was started already; make another")
        # A queue's own limit is for redeliveries after a crashed worker; the pipeline dead-letters failures.
        options = {"max_attempts": self.max_attempts + 3, "dead_letter": self.dead_letter_queue, **self.declare}
        with connect(self.url) as bus:
            bus.declare_queue(self.dead_letter_queue, **{k: v for k, v in self.declare.items()
                                                         if k not in ("max_length", "overflow")})
            for queue in self.queues:
                bus.declare_queue(queue, **options)
        wanted = 0
        for s, (stage, _, _) in enumerate(self.stages):
            for index in range(stage.processes):
                thread = threading.Thread(target=self._work, args=(s, index), daemon=True,
                                          name=f"ringbus-pipe-{stage.name}-{index}")
                self._threads.append(thread)
                thread.start()
                wanted += 1
        deadline = time.monotonic() + timeout
        while self._ready < wanted:
            if self._errors:
                self.stop(5.0)
                raise RingbusError(f"a stage worker failed to start: {error_text(self._errors[0])}")
            if time.monotonic() > deadline:
                self.stop(5.0)
                raise RingbusError(f"the stage workers were not all consuming within {timeout:g} s")
            time.sleep(0.01)
        log.info("durable pipeline %s at %s: %d workers", " -> ".join(self.queues), self.url, wanted)
        return self

    def _work(self, s: int, index: int) -> None:
        stage, in_queue, out_queue = self.stages[s]
        counts = self._counts[s]
        ready = False
        failures = 0
        while not self._stop.is_set():
            try:
                with connect(self.url) as bus:
                    while not self._stop.is_set():
                        messages = bus.consume(in_queue, prefetch=self.prefetch, timeout=POLL)
                        if not ready:
                            ready = True
                            with self._lock:
                                self._ready += 1
                        failures = 0
                        try:
                            for message in messages:
                                self._handle(bus, stage, in_queue, out_queue, message, counts)
                                if self._stop.is_set():
                                    break
                        finally:
                            messages.close()  # prefetched and not handed out: back to the queue
            except Exception as exc:  # noqa: BLE001 - the broker went away, say: reconnect with backoff
                if self._stop.is_set():
                    break
                if not ready:
                    self._errors.append(exc)
                    return
                failures += 1
                delay = self.retry.delay(failures)
                log.exception("stage %r worker %d failed; reconnecting in %.2f s", stage.name, index, delay)
                self._stop.wait(delay)

    def _handle(self, bus: Bus, stage: Stage, in_queue: str, out_queue: str, message: Message,
                counts: list[int]) -> None:
        with self._lock:
            counts[0] += 1
        try:
            outs: list[Any] = []
            apply_item(stage.fn, stage.fan_out, message.value(), outs)
            bodies = [to_message(out, message) for out in outs]
        except Exception as exc:  # noqa: BLE001 - retried, then dead-lettered; the rest flow on
            failures = message.attempts + 1
            if failures < self.max_attempts:
                message.nack(requeue=True, delay=self.retry.delay(failures))
                self._counter.add(failed=1, retried=1)
                return
            headers = {**message.headers, STAGE_HEADER: stage.name, ERROR_HEADER: error_text(exc),
                       ERROR_TYPE_HEADER: type(exc).__name__, DEAD_FROM: in_queue,
                       DEAD_REASON: "max_attempts" if self.max_attempts > 1 else "rejected",
                       ATTEMPTS_HEADER: failures}
            copy = Message(message.body, key=message.key, headers=headers, content_type=message.content_type,
                           meta=message.meta, correlation_id=message.correlation_id)
            send_deduplicated(bus, self.dead_letter_queue, copy, f"dead-letter:{message.id}")
            message.ack()
            with self._lock:
                counts[2] += 1
            self._counter.add(failed=1, dead_lettered=1)
            log.warning("stage %r dead-lettered message %s: %s", stage.name, message.id, error_text(exc))
            return
        for start in range(0, len(bodies), SEND_CHUNK):
            bus.send_many(out_queue, bodies[start:start + SEND_CHUNK])
        message.ack()  # after the send: a crash in between delivers the input again, nothing is lost
        with self._lock:
            counts[1] += len(bodies)
        self._counter.add(processed=1)

    def send(self, items: Iterable[Any], bus: Bus | None = None) -> int:
        """Send ``items`` to the input queue (with ``bus``, or a Bus opened for the call); how many were sent."""
        def chunks(target: Bus) -> int:
            sent = 0
            chunk: list[Message] = []
            for item in items:
                chunk.append(to_message(item))
                if len(chunk) >= SEND_CHUNK:
                    sent += len(target.send_many(self.input_queue, chunk))
                    chunk = []
            if chunk:
                sent += len(target.send_many(self.input_queue, chunk))
            return sent

        if bus is not None:
            return chunks(bus)
        with connect(self.url) as own:
            return chunks(own)

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop taking messages, finish the ones in hand; True if every worker ended within ``timeout``."""
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        return not any(t.is_alive() for t in self._threads)

    def stats(self) -> Any:
        """A :class:`~ringbus.patterns.pipeline.PipelineStats`: ``processed`` counts items a stage finished."""
        from ringbus.patterns.pipeline import PipelineStats, StageStats

        base: PatternStats = self._counter.snapshot()
        with self._lock:
            rows = [list(c) for c in self._counts]
        stages = tuple(StageStats(stage.name, stage.processes, r[0], r[1], r[2])
                       for (stage, _, _), r in zip(self.stages, rows, strict=True))
        return PipelineStats(base.processed, base.failed, base.retried, base.dead_lettered, base.in_flight,
                             base.rate, sent=rows[0][0] if rows else 0, stages=stages, reorder_held=0,
                             reorder_peak=0)

    def __enter__(self) -> BusPipeline:
        return self.start() if not self._threads else self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"<BusPipeline {' -> '.join(self.queues)} at {self.url!r}>"


_TOP_FIELDS = ("input_topic", "filters", "dead_letter_topic")
_FILTER_FIELDS = ("name", "output_topic", "workers")


def parse_kafka_json(doc: str | bytes | dict[str, Any], registry: dict[str, Callable[[Any], Any]], bus: Bus | str, *,
                     workers: int = 1, max_attempts: int = 1) -> BusPipeline:
    """Build a :class:`BusPipeline` from ``{"input_topic": ..., "filters": [{"name", "output_topic"}, ...]}``."""
    if isinstance(doc, (str, bytes, bytearray)):
        try:
            doc = json.loads(doc)
        except ValueError as exc:
            raise ValueError(f"the pipeline document is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"the pipeline document must be a JSON object, not {type(doc).__name__}")
    if not isinstance(registry, dict):
        raise TypeError(f"registry must be a dict of filter name -> function, not {type(registry).__name__}")
    for field in doc:
        if field not in _TOP_FIELDS:
            raise ValueError(f"unknown field {field!r} in the pipeline document (known: {', '.join(_TOP_FIELDS)})")
    for field in ("input_topic", "filters"):
        if field not in doc:
            raise ValueError(f"the pipeline document has no {field!r} field")
    input_topic = doc["input_topic"]
    if not isinstance(input_topic, str):
        raise ValueError(f"input_topic must be a string, got {input_topic!r}")
    check_name("input_topic", input_topic)
    filters = doc["filters"]
    if not isinstance(filters, list) or not filters:
        raise ValueError(f"filters must be a non-empty list, got {filters!r}")
    stages: list[tuple[Stage, str]] = []
    for i, spec in enumerate(filters):
        if not isinstance(spec, dict):
            raise ValueError(f"filters[{i}] must be an object, got {spec!r}")
        for field in spec:
            if field not in _FILTER_FIELDS:
                raise ValueError(f"unknown field {field!r} in filters[{i}] (known: {', '.join(_FILTER_FIELDS)})")
        for field in ("name", "output_topic"):
            if not isinstance(spec.get(field), str):
                raise ValueError(f"filters[{i}] needs a string {field!r} field, got {spec.get(field)!r}")
        name = spec["name"]
        if name not in registry:
            known = ", ".join(sorted(registry)) or "nothing"
            raise ValueError(f"filter {name!r} (filters[{i}]) is not in the registry (it holds: {known})")
        fn = registry[name]
        if not callable(fn):
            raise TypeError(f"registry[{name!r}] must be callable, not {type(fn).__name__}")
        count = spec.get("workers", workers)
        check_count(f"filters[{i}].workers", count)
        check_name(f"filters[{i}].output_topic", spec["output_topic"])
        stages.append((Stage(fn, processes=count, name=name), spec["output_topic"]))
    dead = doc.get("dead_letter_topic")
    if dead is not None and not isinstance(dead, str):
        raise ValueError(f"dead_letter_topic must be a string, got {dead!r}")
    return BusPipeline(bus, input_topic, stages, dead_letter_queue=dead, max_attempts=max_attempts)

"""Claim check: a large payload goes to a payload store and the message carries only a claim to it.

Queues are for small messages: a 200 MiB body would sit in the broker's log,
its memory and every client buffer on the way. :class:`ClaimCheck` streams a
payload above ``threshold`` bytes to a :class:`~ringbus.patterns.payload_stores.PayloadStore`
(a local directory by default, Redis, or S3-compatible storage) and sends a
message with an empty body whose headers hold the claim: the store's URL,
the key, the size and the SHA-256. Payloads within the threshold travel
inline, untouched, and the store never hears of them::

    claims = ClaimCheck(LocalStore("/var/spool/claims"), threshold=256 * 1024)
    claims.send(bus, "images", Path("scan-0042.tiff"))         # streamed to the store, never read whole
    claims.consume(bus, "images", lambda message, payload: process(payload.read(1 << 20)), timeout=5)

The consumer side opens the claim as a stream that hashes what it reads and
raises :class:`ClaimIntegrityError` at the end if the bytes are not the ones
claimed; :meth:`ClaimCheck.consume` acks a message after its handler, then
deletes its payload, and dead-letters a message whose claim is missing,
tampered with, or names a key or store it must not touch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, BinaryIO

from ringbus.bus import Bus
from ringbus.errors import Closed, RingbusError
from ringbus.message import HeaderValue, Message
from ringbus.patterns._handling import (
    ATTEMPTS_HEADER,
    DEAD_FROM,
    DEAD_REASON,
    ERROR_HEADER,
    ERROR_TYPE_HEADER,
    send_deduplicated,
)
from ringbus.patterns._retry import RetryPolicy
from ringbus.patterns._stats import PatternStats, StatsCounter
from ringbus.patterns.payload_stores import (
    CHUNK_SIZE,
    ClaimCheckError,
    ClaimIntegrityError,
    ClaimNotFound,
    InvalidClaim,
    InvalidClaimKey,
    LocalStore,
    PayloadReader,
    PayloadStore,
    ReadStream,
    RedisStore,
    S3Store,
    StoreStats,
    StoreUsage,
    UnknownClaimStore,
    check_key,
)

__all__ = [
    "ClaimCheck", "Claim", "ClaimReader", "ClaimCheckStats",
    "ClaimCheckError", "ClaimNotFound", "ClaimIntegrityError", "InvalidClaimKey", "InvalidClaim", "UnknownClaimStore",
    "PayloadStore", "LocalStore", "RedisStore", "S3Store", "StoreStats", "StoreUsage", "check_key",
    "CLAIM_URL", "CLAIM_KEY", "CLAIM_SIZE", "CLAIM_SHA256", "CLAIM_ERROR",
]

log = logging.getLogger("ringbus.claim_check")

# The claim, in the message's headers.
CLAIM_URL = "ringbus-claim-url"
CLAIM_KEY = "ringbus-claim-key"
CLAIM_SIZE = "ringbus-claim-size"
CLAIM_SHA256 = "ringbus-claim-sha256"
_CLAIM_HEADERS = (CLAIM_URL, CLAIM_KEY, CLAIM_SIZE, CLAIM_SHA256)
# What a dead letter sent by ClaimCheck.consume carries besides the other patterns' ringbus-error headers.
CLAIM_ERROR = "ringbus-claim-error"  # the ClaimCheckError's reason: missing, hash_mismatch, ...

_SHA256 = re.compile(r"[0-9a-f]{64}\Z")
Payload = bytes | bytearray | memoryview | BinaryIO | os.PathLike[str] | Message
Handler = Callable[[Message, Any], Any]


@dataclass(frozen=True)
class Claim:
    """Where a payload is and how to know it is the right one: the headers of a claim-check message."""

    url: str
    key: str
    size: int
    sha256: str

    def headers(self) -> dict[str, HeaderValue]:
        return {CLAIM_URL: self.url, CLAIM_KEY: self.key, CLAIM_SIZE: self.size, CLAIM_SHA256: self.sha256}

    @classmethod
    def of(cls, message: Message) -> Claim | None:
        """The claim ``message`` carries, or None for a message with its payload inline.

        Raises :class:`InvalidClaim` when the claim headers are there but incomplete or of the wrong type.
        The key is not checked here: the store checks it before any use (:func:`check_key`).
        """
        headers = message.headers
        present = [name for name in _CLAIM_HEADERS if name in headers]
        if not present:
            return None
        missing = [name for name in _CLAIM_HEADERS if name not in headers]
        if missing:
            raise InvalidClaim(f"message {message.id} has claim headers {present} but not {missing}")
        url, key, size, digest = (headers[name] for name in _CLAIM_HEADERS)
        if not isinstance(url, str) or not url:
            raise InvalidClaim(f"message {message.id}: {CLAIM_URL} must be a non-empty str, got {url!r}")
        if not isinstance(key, str):
            raise InvalidClaimKey(f"message {message.id}: {CLAIM_KEY} must be a str, got {key!r}")
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise InvalidClaim(f"message {message.id}: {CLAIM_SIZE} must be an int >= 0, got {size!r}")
        if not isinstance(digest, str) or not _SHA256.match(digest):
            raise InvalidClaim(f"message {message.id}: {CLAIM_SHA256} must be 64 lowercase hex digits, "
                               f"got {digest!r}")
        return cls(url, key, size, digest)


class ClaimReader(ReadStream):
    """A claimed payload as a binary stream that checks its size and SHA-256 as it is read.

    Reading past the claimed size, or reaching the end with another size or hash, raises
    :class:`ClaimIntegrityError` (and every read after it raises it again). :attr:`verified` is True once the
    end was reached with the bytes claimed. Bytes are handed out before the end is checked: a handler that
    must not act on unverified bytes reads everything first (``ClaimCheck.fetch`` or ``as_bytes=True``).
    """

    def __init__(self, raw: PayloadReader, claim: Claim, on_verified: Callable[[int], None] | None = None,
                 on_error: Callable[[ClaimCheckError], None] | None = None) -> None:
        super().__init__()
        self.claim = claim
        self.verified = False
        self._raw = raw
        self._hash = hashlib.sha256()
        self._seen = 0
        self._error: ClaimIntegrityError | None = None
        self._on_verified = on_verified
        self._on_error = on_error

    def _fail(self, reason: str, text: str) -> None:
        claim = self.claim
        self._error = ClaimIntegrityError(f"payload {claim.key!r} in {claim.url}: {text}", key=claim.key,
                                          url=claim.url, reason=reason)
        if self._on_error is not None:
            self._on_error(self._error)
        raise self._error

    def _account(self, data: Any, asked: int) -> None:
        if self._error is not None:
            raise self._error
        if data:
            self._seen += len(data)
            if self._seen > self.claim.size:
                self._fail("size_mismatch", f"more than the {self.claim.size} bytes claimed")
            self._hash.update(data)
        elif asked and not self.verified:  # the end
            if self._seen != self.claim.size:
                self._fail("size_mismatch", f"{self._seen} bytes stored, {self.claim.size} claimed")
            if self._hash.hexdigest() != self.claim.sha256:
                self._fail("hash_mismatch", f"SHA-256 {self._hash.hexdigest()} stored, {self.claim.sha256} claimed")
            self.verified = True
            if self._on_verified is not None:
                self._on_verified(self._seen)

    def readinto(self, buffer: Any) -> int:
        if self._error is not None:
            raise self._error
        view = memoryview(buffer).cast("B")
        n = self._raw.readinto(view) if not self.verified else 0
        self._account(view[:n], len(view))
        return n

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        if self._error is not None:
            raise self._error
        data = self._raw.read(size) if size and not self.verified else b""
        self._account(data, size)
        return data

    def verify(self) -> None:
        """Read what is left (discarding it) so that the size and hash are checked; raise if they are wrong."""
        while self.read(CHUNK_SIZE):
            pass

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


@dataclass(frozen=True)
class ClaimCheckStats(PatternStats):
    """:class:`PatternStats` of :meth:`ClaimCheck.consume` (processed, failed, retried, dead-lettered, in flight,
    rate) and what the claim check did on both sides."""

    inline: int  # messages sent with the payload in the body
    claimed: int  # messages sent with a claim
    bytes_stored: int  # payload bytes put in the store
    fetched: int  # claims read to the end and verified
    bytes_fetched: int
    released: int  # payloads deleted after their message was acked (or by release())
    errors: dict[str, int]  # ClaimCheckErrors by reason: missing, hash_mismatch, size_mismatch, invalid_key, ...


class _Counter(StatsCounter):
    def __init__(self) -> None:
        super().__init__()
        self.inline = self.claimed = self.bytes_stored = self.fetched = self.bytes_fetched = self.released = 0
        self.errors: dict[str, int] = {}

    def error(self, reason: str) -> None:
        with self._lock:
            self.errors[reason] = self.errors.get(reason, 0) + 1

    def snapshot(self) -> ClaimCheckStats:
        base = super().snapshot()
        with self._lock:
            return ClaimCheckStats(**dataclasses.asdict(base), inline=self.inline, claimed=self.claimed,
                                   bytes_stored=self.bytes_stored, fetched=self.fetched,
                                   bytes_fetched=self.bytes_fetched, released=self.released, errors=dict(self.errors))


def _read_up_to(file: Any, limit: int) -> bytes:
    """Up to ``limit`` bytes of ``file``: fewer only at its end (a pipe or socket may return short reads)."""
    parts, got = [], 0
    while got < limit:
        data = file.read(limit - got)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"payload file must be opened in binary mode (its read returned {type(data).__name__})")
        if not data:
            break
        parts.append(data)
        got += len(data)
    return b"".join(parts)


def _file_chunks(head: bytes, file: Any) -> Iterator[Any]:
    yield head
    while data := file.read(CHUNK_SIZE):
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"payload file must be opened in binary mode (its read returned {type(data).__name__})")
        yield data


class _Hashing:
    """Passes chunks through, counting and hashing them on the way to the store."""

    def __init__(self, chunks: Iterable[Any]) -> None:
        self.chunks = chunks
        self.size = 0
        self.digest = hashlib.sha256()

    def __iter__(self) -> Iterator[Any]:
        for chunk in self.chunks:
            self.digest.update(chunk)
            self.size += memoryview(chunk).nbytes
            yield chunk


def _settle(message: Message, queue: str, action: str, delay: float | None = None) -> bool:
    """Ack, nack or reject; False (logged) if the delivery is no longer ours: its visibility timeout ran out and
    it went back to the queue, so it comes again (keep handler time below the queue's visibility_timeout)."""
    try:
        if action == "ack":
            message.ack()
        elif action == "nack":
            message.nack(requeue=True, delay=delay)
        else:
            message.reject()
    except Closed:
        raise
    except RingbusError as exc:
        log.warning("could not %s message %s of %r: %s", action, message.id, queue, exc)
        return False
    return True


class ClaimCheck:
    """Sends payloads above ``threshold`` bytes through ``store`` and reads them back on the consumer side.

    Parameters
    ----------
    store : PayloadStore, str, os.PathLike or None
        Where large payloads go: a store, or a directory for a :class:`LocalStore`; None (the default) is a
        LocalStore in :func:`~ringbus.patterns.payload_stores.default_directory`.
    threshold : int
        Largest payload (bytes) sent inline; larger ones are claimed. Default 256 KiB.
    stores : iterable of PayloadStore
        More stores whose claims this side may read (a consumer of several producers). A claim naming any
        other URL raises :class:`UnknownClaimStore`: stores are never opened from what a message says.
    retry : RetryPolicy
        Backoff of :meth:`consume` when a handler raises (not for claim errors, which cannot heal).

    One instance may be used from many threads; a Bus passed to its methods belongs to the calling thread.
    """

    def __init__(self, store: PayloadStore | str | os.PathLike[str] | None = None, *, threshold: int = 256 * 1024,
                 stores: Iterable[PayloadStore] = (), retry: RetryPolicy | None = None) -> None:
        if store is None or isinstance(store, (str, os.PathLike)):
            store = LocalStore(store)
        if not isinstance(store, PayloadStore):
            raise TypeError(f"store must be a PayloadStore, a directory or None, not {type(store).__name__}")
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold < 0:
            raise ValueError(f"threshold must be an int number of bytes >= 0, got {threshold!r}")
        if retry is not None and not isinstance(retry, RetryPolicy):
            raise TypeError(f"retry must be a RetryPolicy, not {type(retry).__name__}")
        self.store = store
        self.threshold = threshold
        self.retry = retry or RetryPolicy()
        self._stores: dict[str, PayloadStore] = {store.url: store}
        for other in stores:
            if not isinstance(other, PayloadStore):
                raise TypeError(f"stores must hold PayloadStores, not {type(other).__name__}")
            self._stores.setdefault(other.url, other)
        self._counter = _Counter()

    # -- producer side ---------------------------------------------------------------------------------------------
    def check_in(self, payload: Payload, **fields: Any) -> Message:
        """The message to send for ``payload``: inline within the threshold, else a claim to the stored payload.

        ``payload`` is bytes-like, a binary file object (read in chunks from where it is), an
        :class:`os.PathLike` to a file, or a :class:`Message` whose body is the payload (its other fields kept).
        ``fields`` are :class:`Message` fields (``key``, ``priority``, ``headers``, ``content_type``, ...).
        Sending the message is up to the caller (``bus.send`` or ``bus.publish``); a claim whose message is
        never sent stays in the store until a sweep.
        """
        if isinstance(payload, Message):
            base = {name: getattr(payload, name) for name in ("key", "priority", "headers", "reply_to",
                                                              "correlation_id", "content_type", "meta")}
            fields = {**base, **fields}
            payload = payload.body
        headers = fields.get("headers") or {}
        clash = [name for name in _CLAIM_HEADERS if name in headers]
        if clash:
            raise ValueError(f"headers must not set the claim check's own headers {clash}")
        if isinstance(payload, (bytes, bytearray, memoryview)):
            view = memoryview(payload).cast("B")
            if view.nbytes <= self.threshold:
                return self._inline(payload, fields)
            return self._claimed((view[i:i + CHUNK_SIZE] for i in range(0, view.nbytes, CHUNK_SIZE)), fields)
        if isinstance(payload, os.PathLike):
            with open(payload, "rb") as file:
                return self._from_file(file, fields)
        if callable(getattr(payload, "read", None)):
            return self._from_file(payload, fields)
        if isinstance(payload, str):
            raise TypeError("payload must be bytes, a binary file or a pathlib.Path, not str (encode text; wrap a "
                            "file name in pathlib.Path)")
        raise TypeError(f"payload must be bytes, a binary file, an os.PathLike or a Message, "
                        f"not {type(payload).__name__}")

    def _from_file(self, file: Any, fields: dict[str, Any]) -> Message:
        head = _read_up_to(file, self.threshold + 1)
        if len(head) <= self.threshold:
            return self._inline(head, fields)
        return self._claimed(_file_chunks(head, file), fields)

    def _inline(self, body: Any, fields: dict[str, Any]) -> Message:
        self._counter.add(inline=1)
        return Message(body, **fields)

    def _claimed(self, chunks: Iterable[Any], fields: dict[str, Any]) -> Message:
        hashing = _Hashing(chunks)
        key = self.store.put(hashing)
        claim = Claim(self.store.url, key, hashing.size, hashing.digest.hexdigest())
        self._counter.add(claimed=1, bytes_stored=claim.size)
        log.debug("stored %d bytes as %s in %s", claim.size, key, claim.url)
        headers = {**(fields.get("headers") or {}), **claim.headers()}
        return Message(b"", **{**fields, "headers": headers})

    def send(self, bus: Bus, queue: str, payload: Payload, *, key: str | None = None, priority: int | None = None,
             headers: dict[str, HeaderValue] | None = None, delay: float | None = None, ttl: float | None = None,
             dedup_id: str | None = None, content_type: str | None = None) -> str:
        """Send ``payload`` to ``queue`` (claimed above the threshold, see :meth:`check_in`); return the message id.

        If the send fails, the payload just stored is deleted again; so is it when the send was a repeat of a
        ``dedup_id`` the queue already holds (the id returned is then the first message's, whose claim stands).
        """
        if not isinstance(bus, Bus):
            raise TypeError(f"bus must be a ringbus.Bus, not {type(bus).__name__}")
        given = {"key": key, "priority": priority, "headers": headers, "content_type": content_type}
        fields = {name: value for name, value in given.items() if value is not None}
        message = self.check_in(payload, **fields)
        try:
            sent = bus.send(queue, message, delay=delay, ttl=ttl, dedup_id=dedup_id)
        except BaseException:
            self._forget(message)
            raise
        if sent != message.id:  # deduplicated: nothing will ever claim what was just stored
            self._forget(message)
        return sent

    def _forget(self, message: Message) -> None:
        claim = Claim.of(message)
        if claim is not None:
            self.store.delete(claim.key)

    # -- consumer side ---------------------------------------------------------------------------------------------
    @staticmethod
    def claim_of(message: Message) -> Claim | None:
        """The claim ``message`` carries, or None when its payload is inline (see :meth:`Claim.of`)."""
        return Claim.of(message)

    def _store_for(self, claim: Claim) -> PayloadStore:
        store = self._stores.get(claim.url)
        if store is None:
            raise UnknownClaimStore(f"claim {claim.key!r} names store {claim.url!r}, which is not one of this claim "
                                    f"check's stores {sorted(self._stores)}", key=claim.key, url=claim.url)
        return store

    def _on_verified(self, size: int) -> None:
        self._counter.add(fetched=1, bytes_fetched=size)

    def _on_error(self, exc: ClaimCheckError) -> None:
        self._counter.error(exc.reason)

    def open(self, message: Message) -> BinaryIO:
        """The payload of ``message`` as a binary stream: its body, or the claimed payload read from the store
        in chunks (a :class:`ClaimReader`, which checks size and SHA-256 as it goes). Close it after use.

        Raises
        ------
        ClaimCheckError
            :class:`InvalidClaim`, :class:`UnknownClaimStore`, :class:`InvalidClaimKey`, :class:`ClaimNotFound`,
            or :class:`ClaimIntegrityError` if the store's size is not the claimed one.
        """
        try:
            claim = Claim.of(message)
            if claim is None:
                return io.BytesIO(message.body)
            raw = self._store_for(claim).open(claim.key)
            if raw.size is not None and raw.size != claim.size:
                raw.close()
                raise ClaimIntegrityError(f"payload {claim.key!r} in {claim.url}: {raw.size} bytes stored, "
                                          f"{claim.size} claimed", key=claim.key, url=claim.url,
                                          reason="size_mismatch")
        except ClaimCheckError as exc:
            self._on_error(exc)
            raise
        # a file-like reader (read, readinto, close...) that checks as it goes, not an io.IOBase subclass
        return ClaimReader(raw, claim, self._on_verified, self._on_error)  # type: ignore[return-value]

    def fetch(self, message: Message) -> bytes:
        """The whole payload of ``message``, verified; for large payloads prefer :meth:`open` (this holds it in
        memory). Raises the errors of :meth:`open`, and :class:`ClaimIntegrityError` on a size or hash mismatch."""
        with self.open(message) as stream:
            if not isinstance(stream, ClaimReader):
                return stream.read()
            parts, got = [], 0
            while chunk := stream.read(max(1, stream.claim.size + 1 - got)):  # +1: the end is read and checked
                parts.append(chunk)
                got += len(chunk)
            return parts[0] if len(parts) == 1 else b"".join(parts)  # one read (a local file): no second copy

    def release(self, message: Message) -> bool:
        """Delete the payload ``message`` claims (call it after the message is acked); whether there was one.

        False for an inline message. Raises the claim errors of :meth:`open` (except a missing payload: False).
        """
        claim = Claim.of(message)
        if claim is None:
            return False
        deleted = self._store_for(claim).delete(claim.key)
        if deleted:
            self._counter.add(released=1)
        return deleted

    def handle(self, bus: Bus, queue: str, message: Message, handler: Handler, *, dead_letter: str | None = None,
               as_bytes: bool = False) -> bool:
        """Run ``handler(message, payload)`` on one delivered message and settle it; True if it was acked.

        ``payload`` is a stream (:meth:`open`), or the verified bytes when ``as_bytes``. After the handler
        returns, what it left unread is read to check the hash (unless it closed the stream); then the message
        is acked and its payload deleted (ack first: a crash in between leaves a payload for the sweep, never a
        message without one).

        A :class:`ClaimCheckError` (missing payload, size or hash mismatch, a key or store it must not touch)
        cannot heal with retries: a copy of the message goes to ``dead_letter`` (default ``<queue>.dlq``) with
        headers ``ringbus-dead-reason: rejected``, ``ringbus-claim-error: <reason>`` and ``ringbus-error``, the
        original is acked, the reason is logged and counted in :meth:`stats`; the payload stays for inspection
        until a sweep. Any other handler error nacks the message with the retry policy's backoff; the queue's
        ``max_attempts`` dead-letters it in the end (its payload then left to the sweep too).
        """
        counter = self._counter
        counter.add(in_flight=1)
        try:
            try:
                if as_bytes:
                    handler(message, self.fetch(message))
                else:
                    with self.open(message) as stream:
                        handler(message, stream)
                        if isinstance(stream, ClaimReader) and not stream.closed:
                            stream.verify()
            except ClaimCheckError as exc:
                counter.add(failed=1)
                self._dead_letter(bus, queue, message, exc, dead_letter)
                return False
            except Exception as exc:  # noqa: BLE001 - the handler's failure: retried, then the queue's dead letter
                counter.add(failed=1)
                delay = self.retry.delay(message.attempts + 1)
                log.info("message %s of %r failed (attempt %d), retrying in %.3f s: %s: %s", message.id, queue,
                         message.attempts + 1, delay, type(exc).__name__, exc)
                if _settle(message, queue, "nack", delay):
                    counter.add(retried=1)
                return False
            if not _settle(message, queue, "ack"):
                return False  # it comes again: its payload must stay
            counter.add(processed=1)
            claim = Claim.of(message)  # valid: open() read it
            if claim is not None:
                try:
                    if self._store_for(claim).delete(claim.key):
                        counter.add(released=1)
                except Exception as exc:  # noqa: BLE001 - acked already; the sweep collects what is left
                    log.warning("message %s acked but its payload %s in %s was not deleted (the sweep will): %s",
                                message.id, claim.key, claim.url, exc)
            return True
        finally:
            counter.add(in_flight=-1)

    def _dead_letter(self, bus: Bus, queue: str, message: Message, exc: ClaimCheckError,
                     dead_letter: str | None) -> None:
        target = dead_letter or f"{queue}.dlq"
        text = f"{type(exc).__name__}: {exc}"
        headers = {**message.headers, DEAD_REASON: "rejected", DEAD_FROM: queue, CLAIM_ERROR: exc.reason,
                   ERROR_HEADER: text if len(text) <= 2000 else text[:1997] + "...",
                   ERROR_TYPE_HEADER: type(exc).__name__, ATTEMPTS_HEADER: message.attempts + 1}
        copy = Message(message.body, id=message.id, key=message.key, priority=message.priority, headers=headers,
                       timestamp=message.timestamp, attempts=message.attempts + 1, reply_to=message.reply_to,
                       correlation_id=message.correlation_id, content_type=message.content_type, meta=message.meta)
        try:
            # The copy first: a crash before the ack delivers the original again, never loses it; the dedup id
            # keeps a second copy out of the dead-letter queue.
            send_deduplicated(bus, target, copy, f"dead-letter:{message.id}")
        except (RingbusError, ValueError, TypeError) as send_error:
            log.error("cannot send message %s to dead-letter queue %r (%s); rejecting it to the queue's own",
                      message.id, target, send_error)
            if not _settle(message, queue, "reject"):
                return
        else:
            if not _settle(message, queue, "ack"):
                return
        self._counter.add(dead_lettered=1)
        log.warning("message %s of %r dead-lettered to %r: claim %s: %s", message.id, queue, target, exc.reason, exc)

    def consume(self, bus: Bus, queue: str, handler: Handler, *, prefetch: int = 1, timeout: float | None = None,
                max_messages: int | None = None, stop: threading.Event | None = None,
                dead_letter: str | None = None, as_bytes: bool = False) -> int:
        """:meth:`handle` each message of ``queue``; return how many were handled (acked or dead-lettered).

        Returns when no message came for ``timeout`` seconds (None: never), after ``max_messages``, when
        ``stop`` is set, or when the bus closes.
        """
        if isinstance(prefetch, bool) or not isinstance(prefetch, int) or prefetch < 1:
            raise ValueError(f"prefetch must be an int >= 1, got {prefetch!r}")
        if max_messages is not None and (isinstance(max_messages, bool) or not isinstance(max_messages, int)
                                         or max_messages < 1):
            raise ValueError(f"max_messages must be an int >= 1 or None, got {max_messages!r}")
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        handled = 0
        idle = 0.0
        while not (stop is not None and stop.is_set()):
            if stop is None:
                wait = timeout
            else:  # wake up this often to look at stop
                wait = 0.25 if timeout is None else max(0.0, min(0.25, timeout - idle))
            messages = bus.consume(queue, prefetch=prefetch, timeout=wait)
            got = False
            try:
                for message in messages:
                    got = True
                    self.handle(bus, queue, message, handler, dead_letter=dead_letter, as_bytes=as_bytes)
                    handled += 1
                    if (max_messages is not None and handled >= max_messages) or (stop is not None and stop.is_set()):
                        return handled
            finally:
                messages.close()
            if stop is None or bus.closed:
                break
            idle = 0.0 if got else idle + (wait or 0.0)
            if timeout is not None and idle >= timeout:
                break
        return handled

    # -- garbage collection and stats ------------------------------------------------------------------------------
    def sweep(self, older_than: float, *, now: float | None = None) -> int:
        """Delete payloads of this claim check's store older than ``older_than`` seconds (see
        :meth:`PayloadStore.sweep` for who calls it and how to choose the age); how many."""
        return self.store.sweep(older_than, now=now)

    def stats(self) -> ClaimCheckStats:
        """Counts of both sides: sent inline or claimed, fetched, released, dead-lettered, errors by reason."""
        return self._counter.snapshot()


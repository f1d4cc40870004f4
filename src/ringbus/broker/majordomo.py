"""Majordomo (ZeroMQ RFC 7, MDP/0.1, with RFC 8 MMI) for the embedded broker: the socket-free routing core."""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence

from ringbus.errors import ProtocolError

__all__ = [
    "Majordomo",
    "C_CLIENT",
    "W_WORKER",
    "W_READY",
    "W_REQUEST",
    "W_REPLY",
    "W_HEARTBEAT",
    "W_DISCONNECT",
    "MMI_SERVICE",
    "ERROR_FRAME",
]

log = logging.getLogger("ringbus.broker.majordomo")

# --- the wire: RFC 7 ------------------------------------------------------------------------
C_CLIENT = b"MDPC01"
W_WORKER = b"MDPW01"
W_READY = b"\x01"
W_REQUEST = b"\x02"
W_REPLY = b"\x03"
W_HEARTBEAT = b"\x04"
W_DISCONNECT = b"\x05"

# --- service discovery: RFC 8 -------------------------------------------------------------
MMI_PREFIX = b"mmi."
MMI_SERVICE = b"mmi.service"
MMI_FOUND = b"200"
MMI_NOT_FOUND = b"404"
MMI_NOT_IMPLEMENTED = b"501"

ERROR_FRAME = b"\x00ringbus-error"
"""First body frame of a reply that reports a failed handler (a ringbus convention: MDP/0.1 has none).

The second frame is the failure as UTF-8 text. ringbus workers send it, the
ringbus client raises it; a NUL byte never starts a printable reply, so an
ordinary body is not taken for it.
"""


def _frame(value: object, what: str) -> bytes:
    """``value`` as bytes: bytes as is, other buffers (zmq.Frame, memoryview) copied, anything else refused."""
    if type(value) is bytes:
        return value
    try:
        return bytes(memoryview(value))  # type: ignore[arg-type]  # any object: TypeError below if not a buffer
    except TypeError:
        raise ProtocolError(f"{what} is a {type(value).__name__}, not bytes") from None


def _service_name(value: object) -> bytes:
    name = _frame(value, "the service name")
    if not name:
        raise ProtocolError("the service name is empty")
    return name


class _Request:
    """One client request: where its reply goes, and until when it may wait for a worker."""

    __slots__ = ("client", "body", "expires_at", "requeued")

    def __init__(self, client: bytes, body: list[bytes], expires_at: float) -> None:
        self.client = client  # routing identity of the client's connection
        self.body = body  # the request's body frames, passed to the worker as they came
        self.expires_at = expires_at  # purged from the queue, unanswered, after this
        self.requeued = False  # was put back once already, after its worker died


class _Service:
    """One named service: its queued requests and its workers, the waiting ones longest-idle first."""

    __slots__ = ("name", "label", "pending", "waiting", "workers")

    def __init__(self, name: bytes) -> None:
        try:
            self.label = name.decode("utf-8")  # RFC 7 names are printable strings
        except UnicodeDecodeError:
            raise ProtocolError(f"the service name {name[:64]!r} is not UTF-8") from None
        self.name = name
        self.pending: deque[_Request] = deque()
        # An OrderedDict: O(1) to take the longest-idle worker and to forget any one of them.
        self.waiting: OrderedDict[bytes, _Worker] = OrderedDict()
        self.workers = 0  # registered, waiting or busy


class _Worker:
    """One registered worker: its service, when it counts as dead, and the request it is serving."""

    __slots__ = ("identity", "service", "expires_at", "request")

    def __init__(self, identity: bytes, service: _Service, expires_at: float) -> None:
        self.identity = identity
        self.service = service
        self.expires_at = expires_at  # purged if nothing is heard from it by then
        self.request: _Request | None = None  # in progress; None while waiting


def _log_sparsely(count: int) -> bool:
    """True for counts 1, 2, 4, 8, ...: a flood of bad input logs O(log n) lines, not n."""
    return count & (count - 1) == 0


def check_seconds(value: object, name: str) -> float:
    """``value`` as float seconds, finite and > 0, else ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ValueError(f"{name} must be a finite number of seconds > 0, not {value!r}")
    return float(value)


def check_count(value: object, name: str) -> int:
    """``value`` if it is an int >= 1, else TypeError or ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, not {value}")
    return value


class Majordomo:
    """The Majordomo Protocol (MDP/0.1) broker logic, without a socket: feed it messages, it calls ``send``.

    The embedded broker owns one ROUTER socket; every message whose frames after
    the routing identity start ``[b"", b"MDPC01", ...]`` (a client) or
    ``[b"", b"MDPW01", ...]`` (a worker) goes to :meth:`handle`, and :meth:`tick`
    is called at least as often as its return value asks. Clients written for
    RFC 7 (a REQ socket sending ``[b"MDPC01", service, body...]``, or a DEALER
    putting ``b""`` first) and workers written for it work unchanged.

    Parameters
    ----------
    send : callable
        ``send(frames)`` sends one multipart message on the ROUTER; ``frames[0]``
        is the destination identity. If it raises, the message is counted as
        unroutable; a worker it cannot reach is forgotten as if it had died.
    heartbeat_interval : float
        Seconds between heartbeats to each worker; workers must use the same.
    liveness : int
        A worker silent for ``liveness * heartbeat_interval`` seconds is purged
        (by the first :meth:`tick` after that, or at once if a request would go to it).
    max_pending_per_service : int
        Requests one service may queue while it has no waiting worker; more are dropped.
    max_pending : int
        Requests all services together may queue; more are dropped.
    request_expiry : float
        Seconds a request may wait in its queue for a worker; then it is purged
        unanswered (the client has given up long before: MDP clients retry).
    clock : callable
        Monotonic seconds; ``time.monotonic`` unless a test steers time.

    Notes
    -----
    Rules beyond the letter of RFC 7, chosen for a broker that must not wedge:

    * One request per worker at a time; waiting workers are served longest-idle
      first, so a service's workers share its load.
    * A worker that breaks the protocol - any command but READY before READY,
      READY twice, READY for an ``mmi.*`` service, an unknown command or a
      malformed command - is sent DISCONNECT and forgotten, as RFC 7 says (an
      RFC 7 worker then reconnects). A stray DISCONNECT is ignored.
    * The request a worker was serving when it died (went silent, sent
      DISCONNECT, broke the protocol or became unreachable) is put back at the
      front of its queue **once**, so an idempotent service answers it without
      the client noticing more than a delay. If the worker that took it again
      dies too, the request is dropped (counted): a request that kills workers
      must not kill them all. The request keeps its expiry. Non-idempotent
      services should make the request carry its own deduplication key; MDP
      clients retry on timeout anyway.
    * Silence kills busy workers too (the only sign of a crashed peer), so a
      worker must heartbeat while its handler runs, as
      :class:`~ringbus.broker.mdp_client.MajordomoWorker` does. An RFC 7 worker
      that heartbeats only between requests (the zguide's mdwrkapi) must answer
      within ``liveness * heartbeat_interval``, or its request is given to
      another worker and its late REPLY is refused with DISCONNECT.
    * A REPLY is forwarded only when it answers the request the worker is
      serving (same client address); any other is counted as stale and
      dropped, and a REPLY naming another client also ends the request in
      progress (dropped), so the worker is never stuck busy.
    * Heartbeats go to every worker, busy ones included: a worker may watch
      for the broker while its handler runs (RFC 7 workers that only read
      between requests just find them queued). Any command from a worker
      counts as its heartbeat.
    * ``mmi.service`` answers ``200`` when the service named by the first body
      frame has at least one worker, ``404`` otherwise; other ``mmi.*`` names
      answer ``501``. Workers cannot register ``mmi.*`` services.
    * Pending requests are bounded per service, in total, and in time, and a
      service is forgotten once it has neither workers nor pending requests:
      memory stays bounded whatever clients send.

    Malformed input (too few frames, no empty delimiter, an unknown header or
    command, an empty or non-UTF-8 service name, frames that are not bytes) is
    counted and dropped; :meth:`handle` never raises. Not thread-safe: call
    every method from the broker's thread.
    """

    def __init__(
        self,
        send: Callable[[list[bytes]], None],
        *,
        heartbeat_interval: float = 2.5,
        liveness: int = 3,
        max_pending_per_service: int = 10_000,
        max_pending: int = 100_000,
        request_expiry: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not callable(send):
            raise TypeError(f"send must be a callable taking a list of frames, not {type(send).__name__}")
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds, not {type(clock).__name__}")
        self._send_frames = send
        self._clock = clock
        self._interval = check_seconds(heartbeat_interval, "heartbeat_interval")
        self._lifetime = self._interval * check_count(liveness, "liveness")
        self._max_per_service = check_count(max_pending_per_service, "max_pending_per_service")
        self._max_pending = check_count(max_pending, "max_pending")
        self._request_expiry = check_seconds(request_expiry, "request_expiry")

        self._services: dict[bytes, _Service] = {}
        self._workers: dict[bytes, _Worker] = {}
        self._pending = 0  # requests queued over all services
        self._next_tick = clock() + self._interval
        self._worker_commands: dict[bytes, Callable[[bytes, _Worker | None, Sequence[object]], None]] = {
            W_READY: self._on_ready,
            W_REPLY: self._on_reply,
            W_HEARTBEAT: self._on_heartbeat,
            W_DISCONNECT: self._on_disconnect,
        }
        # counters: see stats()
        self._requests = 0
        self._replies = 0
        self._malformed = 0
        self._dropped = 0
        self._expired = 0
        self._requeued = 0
        self._stale = 0
        self._unroutable = 0
        self._internal_errors = 0

    # --- input ----------------------------------------------------------------------------

    def handle(self, identity: bytes, frames: list[bytes]) -> None:
        """Take one message from a client or a worker.

        Parameters
        ----------
        identity : bytes
            The routing identity the ROUTER put first.
        frames : list of bytes
            Every frame after it: ``[b"", b"MDPC01", service, body...]`` or
            ``[b"", b"MDPW01", command, ...]``. Other buffers (``zmq.Frame``,
            memoryview) are accepted and copied.

        Never raises: malformed input is counted (``stats()["malformed"]``),
        logged sparsely and dropped.
        """
        try:
            peer = _frame(identity, "the routing identity")
            if not peer:
                raise ProtocolError("the routing identity is empty")
            if not isinstance(frames, (list, tuple)):
                raise ProtocolError(f"frames must be a list, not {type(frames).__name__}")
            if len(frames) < 3:
                raise ProtocolError(f"{len(frames)} frames after the routing identity; MDP needs 3 or more")
            if _frame(frames[0], "the delimiter") != b"":
                raise ProtocolError("the first frame after the routing identity is not the empty delimiter")
            header = _frame(frames[1], "the protocol header")
            if header == C_CLIENT:
                self._on_client(peer, frames)
            elif header == W_WORKER:
                self._on_worker(peer, frames)
            else:
                raise ProtocolError(f"unknown protocol header {header[:16]!r} (expected MDPC01 or MDPW01)")
        except ProtocolError as exc:
            self._malformed += 1
            if _log_sparsely(self._malformed):
                log.warning("Majordomo: dropped a malformed message: %s (%d so far)", exc, self._malformed)
        except Exception:  # a bug here must not take the broker down with it
            self._internal_errors += 1
            log.exception("Majordomo: failed on a message; dropped it (%d so far)", self._internal_errors)

    def _on_client(self, client: bytes, frames: Sequence[object]) -> None:
        name = _service_name(frames[2])
        body = [_frame(f, "a body frame") for f in frames[3:]]
        if name.startswith(MMI_PREFIX):
            self._requests += 1
            self._on_mmi(client, name, body)
            return
        service = self._services.get(name)
        if service is None:
            service = _Service(name)  # checks the name before the request counts
        self._requests += 1
        if not service.waiting:
            queued = len(service.pending)
            if queued >= self._max_per_service or self._pending >= self._max_pending:
                self._dropped += 1
                if _log_sparsely(self._dropped):
                    log.warning("Majordomo: dropped a request for %r: %d queued for it, %d in all (%d dropped so far)",
                                name[:64], queued, self._pending, self._dropped)
                return
            self._services.setdefault(name, service)
        service.pending.append(_Request(client, body, self._clock() + self._request_expiry))
        self._pending += 1
        self._dispatch(service)

    def _on_mmi(self, client: bytes, name: bytes, body: list[bytes]) -> None:
        if name == MMI_SERVICE:
            service = self._services.get(body[0]) if body else None
            code = MMI_FOUND if service is not None and service.workers else MMI_NOT_FOUND
        else:
            code = MMI_NOT_IMPLEMENTED
        self._reply(client, name, [code])

    def _on_worker(self, identity: bytes, frames: Sequence[object]) -> None:
        command = _frame(frames[2], "the worker command")
        worker = self._workers.get(identity)
        on_command = self._worker_commands.get(command)
        try:
            if on_command is None:
                raise ProtocolError(f"unknown worker command {command[:16]!r}")
            on_command(identity, worker, frames)
        except ProtocolError:
            # RFC 7: a worker that breaks the protocol is disconnected (and may start over with READY).
            if worker is not None:
                self._remove_worker(worker, "broke the protocol")
            self._send([identity, b"", W_WORKER, W_DISCONNECT])
            raise

    def _on_ready(self, identity: bytes, worker: _Worker | None, frames: Sequence[object]) -> None:
        if worker is not None:
            raise ProtocolError("READY from a worker that is already registered")
        if len(frames) < 4:
            raise ProtocolError("READY without a service name")
        name = _service_name(frames[3])
        if name.startswith(MMI_PREFIX):
            raise ProtocolError(f"a worker cannot offer {name[:64]!r}: mmi.* services belong to the broker")
        service = self._services.get(name)
        if service is None:
            service = self._services[name] = _Service(name)
        worker = self._workers[identity] = _Worker(identity, service, self._clock() + self._lifetime)
        service.workers += 1
        log.debug("Majordomo: worker %r ready for %r", identity, name)
        service.waiting[identity] = worker
        self._dispatch(service)

    def _on_reply(self, identity: bytes, worker: _Worker | None, frames: Sequence[object]) -> None:
        if worker is None:
            raise ProtocolError("REPLY from a worker that has not sent READY")
        if len(frames) < 5 or _frame(frames[4], "the delimiter") != b"":
            raise ProtocolError("REPLY must be [client address, empty frame, body...]")
        client = _frame(frames[3], "the client address")
        body = [_frame(f, "a body frame") for f in frames[5:]]
        worker.expires_at = self._clock() + self._lifetime
        request = worker.request
        if request is None:
            self._stale += 1
            log.debug("Majordomo: worker %r replied with no request in progress; dropped", identity)
            return
        worker.request = None
        if request.client == client:
            self._reply(client, worker.service.name, body)
        else:
            # It answered someone else: its own request will get no answer.
            self._stale += 1
            self._dropped += 1
            log.debug("Majordomo: worker %r replied to %r while serving %r; dropped", identity, client, request.client)
        service = worker.service
        service.waiting[identity] = worker
        self._dispatch(service)

    def _on_heartbeat(self, identity: bytes, worker: _Worker | None, frames: Sequence[object]) -> None:
        if worker is None:
            raise ProtocolError("HEARTBEAT from a worker that has not sent READY")
        worker.expires_at = self._clock() + self._lifetime

    def _on_disconnect(self, identity: bytes, worker: _Worker | None, frames: Sequence[object]) -> None:
        if worker is not None:
            self._remove_worker(worker, "sent DISCONNECT")

    # --- routing --------------------------------------------------------------------------

    def _dispatch(self, service: _Service) -> None:
        """Give queued requests to waiting workers, oldest request to longest-idle worker."""
        pending, waiting = service.pending, service.waiting
        if not (pending and waiting):
            return
        now = self._clock()
        while pending and waiting:
            request = pending[0]
            if request.expires_at <= now:
                pending.popleft()
                self._pending -= 1
                self._expired += 1
                continue
            identity, worker = waiting.popitem(last=False)
            if worker.expires_at <= now:
                log.info("Majordomo: worker %r of %r went silent; purged", identity, service.name)
                self._unregister(worker)
                continue
            pending.popleft()
            self._pending -= 1
            worker.request = request
            if not self._send([identity, b"", W_WORKER, W_REQUEST, request.client, b"", *request.body]):
                # Unreachable: forget the worker; the request was never delivered, so it keeps its place.
                worker.request = None
                self._unregister(worker)
                pending.appendleft(request)
                self._pending += 1
        self._forget_if_idle(service)

    def _reply(self, client: bytes, name: bytes, body: list[bytes]) -> None:
        if self._send([client, b"", C_CLIENT, name, *body]):
            self._replies += 1
        else:
            self._dropped += 1

    def _send(self, frames: list[bytes]) -> bool:
        try:
            self._send_frames(frames)
        except Exception as exc:  # noqa: BLE001 - whatever the socket raises, the broker goes on
            self._unroutable += 1
            if _log_sparsely(self._unroutable):
                log.warning("Majordomo: could not send to %r: %r (%d unroutable so far)",
                            frames[0], exc, self._unroutable)
            return False
        return True

    # --- workers' life --------------------------------------------------------------------

    def _unregister(self, worker: _Worker) -> _Request | None:
        """Forget a worker; return the request it was serving, if any."""
        del self._workers[worker.identity]
        service = worker.service
        service.workers -= 1
        service.waiting.pop(worker.identity, None)
        request, worker.request = worker.request, None
        return request

    def _remove_worker(self, worker: _Worker, why: str) -> None:
        """Forget a worker that is gone, and put the request it was serving back in front, once."""
        service = worker.service
        request = self._unregister(worker)
        if request is None:
            log.info("Majordomo: worker %r of %r %s; forgotten", worker.identity, service.name, why)
        elif request.requeued:
            self._dropped += 1
            log.warning("Majordomo: worker %r of %r %s while serving a request that had already lost a worker; "
                        "the request is dropped", worker.identity, service.name, why)
        else:
            request.requeued = True
            self._requeued += 1
            service.pending.appendleft(request)
            self._pending += 1
            log.info("Majordomo: worker %r of %r %s; its request goes back to the front of the queue",
                     worker.identity, service.name, why)
        self._dispatch(service)
        self._forget_if_idle(service)

    def _forget_if_idle(self, service: _Service) -> None:
        if not service.workers and not service.pending and self._services.get(service.name) is service:
            del self._services[service.name]

    # --- time -----------------------------------------------------------------------------

    def tick(self) -> float:
        """Heartbeat workers, purge silent workers and expired requests, when due.

        Cheap when nothing is due: call it after every poll. Once every
        ``heartbeat_interval`` it sends HEARTBEAT to every worker, purges the
        workers silent for ``liveness * heartbeat_interval`` (their request in
        progress goes back to the front of its queue, once: see the class
        notes), and purges requests queued for longer than ``request_expiry``.

        Returns
        -------
        float
            Seconds until the next call is needed (a poll timeout).
        """
        now = self._clock()
        if now < self._next_tick:
            return self._next_tick - now
        self._next_tick = now + self._interval
        for worker in [w for w in self._workers.values() if w.expires_at <= now]:
            if self._workers.get(worker.identity) is worker:
                self._remove_worker(worker, f"was silent for {self._lifetime:g} s")
        for identity in list(self._workers):
            if not self._send([identity, b"", W_WORKER, W_HEARTBEAT]):
                unreachable = self._workers.get(identity)
                if unreachable is not None:
                    self._remove_worker(unreachable, "is unreachable")
        for service in list(self._services.values()):
            pending = service.pending
            while pending and pending[0].expires_at <= now:
                pending.popleft()
                self._pending -= 1
                self._expired += 1
            self._forget_if_idle(service)
        return self._interval

    # --- what it knows --------------------------------------------------------------------

    def services(self) -> list[str]:
        """Names of the services that have at least one worker, sorted (what ``mmi.service`` answers 200 for)."""
        return sorted(s.label for s in self._services.values() if s.workers)

    def stats(self) -> dict[str, object]:
        """A snapshot of the broker's state and counters.

        Returns
        -------
        dict
            ``services``: ``{name: {"workers", "waiting_workers", "pending_requests"}}``
            for every service with workers or queued requests; ``workers``: registered
            workers; ``in_progress``: requests being served; and the counters since
            creation: ``requests`` (client requests taken, ``mmi.*`` included),
            ``replies`` (sent to clients, ``mmi.*`` included), ``malformed``,
            ``dropped`` (requests given up without a reply: refused at a full queue,
            lost with a second worker, answered for another client, or whose reply
            could not be sent), ``expired`` (purged after ``request_expiry``),
            ``requeued`` (put back after their worker died), ``stale_replies``,
            ``unroutable`` (messages ``send`` raised on) and ``internal_errors``.
            Every request is counted once as replied, dropped, expired, pending or
            in progress.
        """
        return {
            "services": {
                s.label: {"workers": s.workers, "waiting_workers": len(s.waiting), "pending_requests": len(s.pending)}
                for s in self._services.values()
            },
            "workers": len(self._workers),
            "in_progress": sum(1 for w in self._workers.values() if w.request is not None),
            "requests": self._requests,
            "replies": self._replies,
            "malformed": self._malformed,
            "dropped": self._dropped,
            "expired": self._expired,
            "requeued": self._requeued,
            "stale_replies": self._stale,
            "unroutable": self._unroutable,
            "internal_errors": self._internal_errors,
        }

    def __repr__(self) -> str:
        return f"<Majordomo {len(self._services)} services, {len(self._workers)} workers, {self._pending} queued>"

"""Asynchronous request-reply over HTTP: the Starlette app, a uvicorn runner, a client, and ``ringbus serve-http``.

``POST /jobs`` answers ``202 Accepted`` at once with ``Location: /jobs/{id}`` and
``Retry-After``; ``GET /jobs/{id}`` reports the status (``queued``, ``running``,
``succeeded``, ``failed``, ``cancelled``) with progress, and ``303 See Other`` to
``/jobs/{id}/result`` once it succeeded; ``DELETE /jobs/{id}`` cancels;
``GET /jobs/{id}/events`` streams server-sent events until a terminal state.
The jobs themselves run on a Bus queue (:mod:`ringbus.patterns.async_request_reply`).

Starlette and uvicorn (the ``http`` extra) and httpx are imported when used,
so this module imports without them.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import email.utils
import hmac
import importlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ringbus.errors import Full, RingbusError
from ringbus.patterns._jobstore import TERMINAL, JobRecord
from ringbus.patterns.async_request_reply import Job, JobManager, JobWorker
from ringbus.patterns.webhooks import WebhookPolicy

__all__ = ["create_app", "JobServer", "JobClient", "JobOutcome", "Submission", "JobClientError", "JobTimeout",
           "demo_handler", "main"]

log = logging.getLogger("ringbus.http")

DEFAULT_BIND = "127.0.0.1:8080"
MAX_BODY = 1024 * 1024
_SUBMIT_FIELDS = frozenset({"input", "callback_url", "priority"})
_NEEDS_EXTRA = "needs the http extra (Starlette, uvicorn, httpx): pip install 'ringbus[http]'"


class JobClientError(RingbusError):
    """The job server answered with an error status; ``status_code`` and ``body`` say which."""

    def __init__(self, status_code: int, body: Any, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.body = body


class JobTimeout(RingbusError, TimeoutError):
    """A job did not finish within the time :meth:`JobClient.wait` was given."""


# --- the app ----------------------------------------------------------------------------------------------------

class _HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers or {}
        self.extra = extra  # more fields of the JSON error body


class _Hub:
    """Wakes the server-sent event streams of a job when this process's manager changes it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiters: dict[str, set[tuple[asyncio.AbstractEventLoop, asyncio.Event]]] = {}
        self.closing = False

    def register(self, job_id: str) -> tuple[asyncio.AbstractEventLoop, asyncio.Event]:
        waiter = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters.setdefault(job_id, set()).add(waiter)
        return waiter

    def unregister(self, job_id: str, waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event]) -> None:
        with self._lock:
            waiters = self._waiters.get(job_id)
            if waiters is not None:
                waiters.discard(waiter)
                if not waiters:
                    del self._waiters[job_id]

    def notify(self, record: JobRecord) -> None:
        with self._lock:
            waiters = list(self._waiters.get(record.id, ()))
        self._wake(waiters)

    def close(self) -> None:
        self.closing = True
        with self._lock:
            waiters = [w for ws in self._waiters.values() for w in ws]
        self._wake(waiters)

    @staticmethod
    def _wake(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Event]]) -> None:
        for loop, event in waiters:
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # that loop has closed: its stream is gone
                pass


class _BearerAuth:
    """ASGI middleware: every request but ``/healthz`` needs ``Authorization: Bearer <token>`` (401 otherwise).

    ``tokens`` maps each accepted token to its tenant (None: no tenants); the request's tenant goes into the
    ASGI scope as ``"ringbus.tenant"``.
    """

    def __init__(self, app: Any, tokens: dict[str, str | None]) -> None:
        self.app = app
        self._tokens = [(token.encode("utf-8"), tenant) for token, tenant in tokens.items()]

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, root = scope["path"], scope.get("root_path", "")
        if root and path.startswith(root):
            path = path[len(root):]
        if path == "/healthz":
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        given = header[7:].strip() if header is not None and header[:7].lower() == b"bearer " else b""
        # compare_digest takes the same time wherever the first difference is, and every token is compared:
        # a token cannot be guessed byte by byte from response times.
        matches = [tenant for token, tenant in self._tokens if hmac.compare_digest(given, token)]
        if given and matches:
            scope["ringbus.tenant"] = matches[0]
            await self.app(scope, receive, send)
            return
        from starlette.responses import JSONResponse

        challenge = 'Bearer realm="ringbus"' + (', error="invalid_token"' if header is not None else "")
        response = JSONResponse({"error": "a valid bearer token is required (Authorization: Bearer <token>)"},
                                status_code=401, headers={"WWW-Authenticate": challenge})
        await response(scope, receive, send)


def create_app(manager: JobManager, *, token: str | None = None, tokens: Mapping[str, str] | None = None,
               max_body: int = MAX_BODY, retry_after: int = 1, sse_poll: float = 1.0,
               sse_keepalive: float = 15.0) -> Any:
    """The Starlette app serving ``manager``'s jobs (start the manager yourself; the app does not own it).

    Parameters
    ----------
    manager : JobManager
        Started; shared by every request.
    token : str or None
        When set, every request but ``GET /healthz`` needs ``Authorization: Bearer <token>``.
    tokens : mapping of str to str, optional
        Instead of ``token``: bearer tokens and the tenant each one acts for. A job belongs to the tenant that
        submitted it; every other tenant gets 404 for it, as for a job that does not exist.
    max_body : int
        Largest request body in bytes; a bigger one gets 413 before it is read.
    retry_after : int
        Seconds a client should wait before polling again (the ``Retry-After`` of 202 and running jobs).
    sse_poll : float
        Seconds an event stream waits for a change before it reads the store again (changes made by other
        processes sharing the store are seen this way).
    sse_keepalive : float
        Seconds of silence after which an event stream sends a comment line, keeping proxies from closing it.
    """
    try:
        from contextlib import asynccontextmanager

        from starlette.applications import Starlette
        from starlette.concurrency import run_in_threadpool
        from starlette.middleware import Middleware
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response, StreamingResponse
        from starlette.routing import Route
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(f"ringbus.http.create_app {_NEEDS_EXTRA}") from exc

    if not isinstance(manager, JobManager):
        raise TypeError(f"manager must be a JobManager, not {type(manager).__name__}")
    if token is not None and (not isinstance(token, str) or not token):
        raise ValueError("token must be a non-empty str or None")
    if tokens is not None:
        if token is not None:
            raise ValueError("give token (one client) or tokens (token -> tenant), not both")
        if not isinstance(tokens, Mapping) or not tokens or not all(
                isinstance(k, str) and k and isinstance(v, str) and v for k, v in tokens.items()):
            raise ValueError("tokens must be a non-empty mapping of bearer token -> tenant name (non-empty strs)")
    accepted: dict[str, str | None] | None = (dict(tokens) if tokens is not None
                                              else {token: None} if token is not None else None)
    if isinstance(max_body, bool) or not isinstance(max_body, int) or max_body < 1:
        raise ValueError(f"max_body must be a positive int, got {max_body!r}")
    if isinstance(retry_after, bool) or not isinstance(retry_after, int) or retry_after < 0:
        raise ValueError(f"retry_after must be an int of seconds >= 0 (HTTP sends whole seconds), got {retry_after!r}")
    hub = _Hub()

    def base(request: Request) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def error(status: int, message: str, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
        return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)

    async def read_body(request: Request) -> bytes:
        length = request.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise _HTTPError(400, "Content-Length must be a number")
            if int(length) > max_body:
                raise _HTTPError(413, f"request body of {int(length)} bytes exceeds the limit of {max_body}")
        chunks, size = [], 0
        async for chunk in request.stream():  # a chunked body has no Content-Length: count as it comes
            size += len(chunk)
            if size > max_body:
                raise _HTTPError(413, f"request body exceeds the limit of {max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def job_or_404(request: Request) -> JobRecord:
        job_id = request.path_params["job_id"]
        record = await run_in_threadpool(manager.get, job_id) if len(job_id) <= 64 else None
        # Another tenant's job is answered exactly like a missing one: its existence is not theirs to learn.
        if record is None or record.tenant != request.scope.get("ringbus.tenant"):
            raise _HTTPError(404, f"no job {job_id!r}")
        return record

    async def submit(request: Request) -> Response:
        content_type = request.headers.get("content-type", "application/json").split(";")[0].strip().lower()
        if content_type != "application/json":
            raise _HTTPError(415, "send the job as application/json: {\"input\": ..., \"callback_url\": ...}")
        body = await read_body(request)
        try:
            fields = json.loads(body) if body.strip() else {}
        except ValueError as exc:
            raise _HTTPError(400, f"the body is not JSON: {exc}") from None
        if not isinstance(fields, dict):
            raise _HTTPError(400, "the body must be a JSON object: {\"input\": ..., \"callback_url\": ...}")
        unknown = sorted(set(fields) - _SUBMIT_FIELDS)
        if unknown:
            raise _HTTPError(400, f"unknown field(s) {', '.join(unknown)}; "
                                  f"expected {', '.join(sorted(_SUBMIT_FIELDS))}")
        try:
            record = await run_in_threadpool(lambda: manager.submit(fields.get("input"),
                                                                    callback_url=fields.get("callback_url"),
                                                                    priority=fields.get("priority"),
                                                                    tenant=request.scope.get("ringbus.tenant")))
        except (TypeError, ValueError) as exc:
            raise _HTTPError(400, str(exc)) from None
        except Full:
            raise _HTTPError(503, "too many jobs waiting; try again later",
                             {"Retry-After": str(max(1, retry_after) * 5)}) from None
        doc = record.as_dict(base(request))
        return JSONResponse(doc, status_code=202, headers={"Location": doc["links"]["self"],
                                                           "Retry-After": str(retry_after)})

    async def status(request: Request) -> Response:
        record = await job_or_404(request)
        doc = record.as_dict(base(request))
        if record.status == "succeeded":
            return JSONResponse(doc, status_code=303, headers={"Location": doc["links"]["result"]})
        if record.terminal:
            return JSONResponse(doc)
        return JSONResponse(doc, headers={"Retry-After": str(retry_after)})

    async def result(request: Request) -> Response:
        record = await job_or_404(request)
        found = await run_in_threadpool(manager.result, record.id)
        if found is None:
            what = "has no result" if record.terminal else "has not finished"
            raise _HTTPError(409, f"job {record.id} is {record.status}: it {what}", job=record.as_dict(base(request)))
        body, media_type = found
        return Response(body, media_type=media_type or "application/octet-stream")

    async def cancel(request: Request) -> Response:
        job_id = (await job_or_404(request)).id
        outcome, record = await run_in_threadpool(manager.cancel, job_id)
        if record is None:
            raise _HTTPError(404, f"no job {job_id!r}")
        doc = record.as_dict(base(request))
        if outcome == "cancelled":
            return JSONResponse(doc)
        if outcome == "requested":  # the running handler is told at its next progress report
            return JSONResponse(doc, status_code=202)
        raise _HTTPError(409, f"job {job_id} is {record.status} already", job=doc)

    async def events(request: Request) -> Response:
        record = await job_or_404(request)
        prefix = base(request)

        async def stream() -> Any:
            loop, wake = waiter = hub.register(record.id)
            try:
                last_rev, last_sent = -1, loop.time()
                while not hub.closing:
                    current = await run_in_threadpool(manager.get, record.id)
                    if current is None:
                        yield "event: error\ndata: {\"error\": \"job purged\"}\n\n"
                        return
                    if current.rev != last_rev:
                        last_rev, last_sent = current.rev, loop.time()
                        data = json.dumps(current.as_dict(prefix), separators=(",", ":"))
                        yield f"id: {current.rev}\nevent: status\ndata: {data}\n\n"
                        if current.terminal:
                            return
                    try:
                        await asyncio.wait_for(wake.wait(), sse_poll)
                    except asyncio.TimeoutError:
                        if loop.time() - last_sent >= sse_keepalive:
                            last_sent = loop.time()
                            yield ": keep-alive\n\n"
                    wake.clear()
            finally:
                hub.unregister(record.id, waiter)

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def stats(request: Request) -> Response:
        snapshot = await run_in_threadpool(manager.stats)
        return JSONResponse(dataclasses.asdict(snapshot))

    async def health(request: Request) -> Response:
        return JSONResponse({"ok": True})

    def handled(endpoint: Callable[[Request], Awaitable[Response]]) -> Callable[[Request], Awaitable[Response]]:
        async def wrapper(request: Request) -> Response:
            try:
                return await endpoint(request)
            except _HTTPError as exc:
                return error(exc.status, str(exc), exc.headers, **exc.extra)
            except RingbusError as exc:  # the bus is away: the job was not accepted
                log.warning("%s %s failed: %s", request.method, request.url.path, exc)
                return error(503, f"the job service is unavailable: {exc}", {"Retry-After": "5"})
        return wrapper

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        manager.add_listener(hub.notify)
        try:
            yield
        finally:
            hub.close()
            manager.remove_listener(hub.notify)

    routes = [
        Route("/jobs", handled(submit), methods=["POST"]),
        Route("/jobs/{job_id}", handled(status), methods=["GET"]),
        Route("/jobs/{job_id}", handled(cancel), methods=["DELETE"]),
        Route("/jobs/{job_id}/result", handled(result), methods=["GET"]),
        Route("/jobs/{job_id}/events", handled(events), methods=["GET"]),
        Route("/stats", handled(stats), methods=["GET"]),
        Route("/healthz", health, methods=["GET"]),
    ]
    middleware = [Middleware(_BearerAuth, tokens=accepted)] if accepted is not None else []
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan)
    app.state.manager = manager
    return app


# --- serving ----------------------------------------------------------------------------------------------------

def _split_bind(bind: str) -> tuple[str, int]:
    host, sep, port = bind.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535 or not host:
        raise ValueError(f"--bind must be host:port (e.g. {DEFAULT_BIND} or [::1]:8080), got {bind!r}")
    return host.strip("[]"), int(port)


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        # listening now, not when uvicorn's startup gets to it: a client told the port (the "listening on" line)
        # may connect at once, and a bound socket that does not listen refuses it
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


class JobServer:
    """Serve an ASGI app with uvicorn on a thread of this process (tests, examples, embedding).

    ``port=0`` takes a free port; :attr:`url` says which. Leaves logging alone (no uvicorn log config).
    """

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0, *, log_level: str = "warning",
                 graceful: float = 2.0) -> None:
        try:
            import uvicorn
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError(f"ringbus.http.JobServer {_NEEDS_EXTRA}") from exc
        self._sock = _listen(host, port)
        self.host = host
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(app, log_level=log_level, log_config=None, access_log=False, loop="asyncio",
                                # uvicorn annotates an int, and uses it as an asyncio timeout: a float works
                                lifespan="on", timeout_graceful_shutdown=graceful)  # type: ignore[arg-type]
        self._server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 10.0) -> JobServer:
        """Start serving; return once uvicorn accepts connections (RuntimeError if not within ``timeout``)."""
        self._thread = threading.Thread(target=self._run, name=f"ringbus-http-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop(1.0)
                raise RuntimeError(f"uvicorn did not start serving on {self.url} within {timeout} s "
                                   "(the app's startup failed, or the machine is very busy)")
            time.sleep(0.01)
        return self

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except SystemExit as exc:  # uvicorn exits when the app's startup fails; start() reports it
            log.error("uvicorn on %s stopped (exit %s)", self.url, exc.code)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let requests in progress finish (event streams get ``graceful`` seconds), join."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self._sock.close()

    def __enter__(self) -> JobServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- the client -------------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Submission:
    """What ``POST /jobs`` answered."""

    id: str
    location: str  # the job's status URL (absolute)
    retry_after: float | None  # seconds the server asked us to wait before the first poll
    document: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class JobOutcome:
    """A finished job as :meth:`JobClient.wait` saw it."""

    id: str
    status: str  # succeeded, failed or cancelled
    result: Any  # decoded JSON, or bytes; None unless it succeeded
    error: str | None
    attempts: int
    document: dict[str, Any]
    polls: int  # status requests made
    waits: tuple[float, ...]  # seconds slept before each poll (the server's Retry-After)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class JobClient:
    """Submit jobs to a ringbus job server over HTTP and wait for them, honouring ``Retry-After``.

    Parameters
    ----------
    base_url : str
        The server, e.g. ``http://127.0.0.1:8080``.
    token : str or None
        Sent as ``Authorization: Bearer <token>``.
    timeout : float
        Seconds one HTTP request may take.
    sleep : callable
        How to wait between polls (``time.sleep``; tests pass a recorder).
    min_poll, max_poll : float
        Bounds on the wait between polls whatever ``Retry-After`` says (``Retry-After: 0`` must not spin).
    """

    def __init__(self, base_url: str, token: str | None = None, *, timeout: float = 10.0,
                 sleep: Callable[[float], None] = time.sleep, min_poll: float = 0.05, max_poll: float = 60.0,
                 transport: Any = None) -> None:
        try:
            import httpx
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError("ringbus.http.JobClient needs httpx: pip install httpx") from exc
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._httpx = httpx
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout,
                                  transport=transport, follow_redirects=False)
        self._sleep = sleep
        self.min_poll = min_poll
        self.max_poll = max_poll

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> JobClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def _fail(response: Any) -> JobClientError:
        try:
            body = response.json()
        except ValueError:
            body = response.text
        message = body.get("error") if isinstance(body, dict) else body
        return JobClientError(response.status_code, body,
                              f"{response.request.method} {response.url} -> {response.status_code}: {message}")

    def submit(self, input: Any = None, *, callback_url: str | None = None,
               priority: int | None = None) -> Submission:
        """``POST /jobs``; raises :class:`JobClientError` unless the server answered 202."""
        fields: dict[str, Any] = {"input": input}
        if callback_url is not None:
            fields["callback_url"] = callback_url
        if priority is not None:
            fields["priority"] = priority
        response = self._http.post("/jobs", json=fields)
        if response.status_code != 202:
            raise self._fail(response)
        doc = response.json()
        return Submission(doc["id"], str(response.url.join(response.headers["location"])),
                          _retry_after(response.headers.get("retry-after")), doc)

    def status(self, job_id: str) -> dict[str, Any]:
        """The job's document (``GET /jobs/{id}``, the 303 not followed)."""
        response = self._http.get(f"/jobs/{job_id}")
        if response.status_code not in (200, 303):
            raise self._fail(response)
        doc: dict[str, Any] = response.json()
        return doc

    def result(self, job_id: str) -> Any:
        """The result of a job that succeeded: decoded JSON, or bytes."""
        return self._fetch_result(f"/jobs/{job_id}/result")

    def _fetch_result(self, url: str) -> Any:
        response = self._http.get(url)
        if response.status_code != 200:
            raise self._fail(response)
        if response.headers.get("content-type", "").startswith("application/json"):
            return response.json()
        return response.content

    def cancel(self, job_id: str) -> dict[str, Any]:
        """``DELETE /jobs/{id}``: the job's document (status ``cancelled``, or ``cancel_requested`` if running)."""
        response = self._http.delete(f"/jobs/{job_id}")
        if response.status_code not in (200, 202):
            raise self._fail(response)
        doc: dict[str, Any] = response.json()
        return doc

    def wait(self, job: str | Submission, timeout: float = 60.0) -> JobOutcome:
        """Poll until the job finishes, sleeping what each answer's ``Retry-After`` asks; follow the 303.

        Raises
        ------
        JobTimeout
            If it is still queued or running after ``timeout`` seconds.
        """
        if isinstance(job, Submission):
            job_id, delay, url = job.id, job.retry_after, job.location
        else:
            job_id, delay, url = job, None, f"/jobs/{job}"
        deadline = time.monotonic() + timeout
        polls, waits = 0, []
        while True:
            if delay is not None:
                pause = min(max(delay, self.min_poll), self.max_poll, max(0.0, deadline - time.monotonic()))
                waits.append(pause)
                self._sleep(pause)
            response = self._http.get(url)
            polls += 1
            if response.status_code == 303:
                doc = response.json()
                value = self._fetch_result(str(response.url.join(response.headers["location"])))
                return JobOutcome(job_id, "succeeded", value, None, doc["attempts"], doc, polls, tuple(waits))
            if response.status_code != 200:
                raise self._fail(response)
            doc = response.json()
            if doc["status"] in TERMINAL:
                value = self._fetch_result(doc["links"]["result"]) if doc["status"] == "succeeded" else None
                return JobOutcome(job_id, doc["status"], value, doc.get("error"), doc["attempts"], doc, polls,
                                  tuple(waits))
            if time.monotonic() >= deadline:
                raise JobTimeout(f"job {job_id} still {doc['status']} after {timeout} s")
            delay = _retry_after(response.headers.get("retry-after"))
            if delay is None:
                delay = 1.0

    def run(self, input: Any = None, *, timeout: float = 60.0, callback_url: str | None = None,
            priority: int | None = None) -> JobOutcome:
        """Submit and wait."""
        return self.wait(self.submit(input, callback_url=callback_url, priority=priority), timeout)

    def events(self, job_id: str, timeout: float = 60.0) -> Iterator[dict[str, Any]]:
        """The job's documents as the server streams them (``GET /jobs/{id}/events``), until a terminal one.

        ``timeout`` bounds the wait for each event (the server sends a keep-alive comment while idle).
        """
        httpx = self._httpx
        with self._http.stream("GET", f"/jobs/{job_id}/events", timeout=httpx.Timeout(timeout)) as response:
            if response.status_code != 200:
                response.read()
                raise self._fail(response)
            name = "message"
            data: list[str] = []
            for line in response.iter_lines():
                if line == "":
                    if data and name == "status":
                        yield json.loads("\n".join(data))
                    name, data = "message", []
                elif line.startswith(":"):
                    continue
                else:
                    field, _, value = line.partition(":")
                    value = value[1:] if value.startswith(" ") else value
                    if field == "event":
                        name = value
                    elif field == "data":
                        data.append(value)


# --- ringbus serve-http -----------------------------------------------------------------------------------------

def demo_handler(job: Job, progress: Callable[..., None]) -> dict[str, Any]:
    """The handler ``ringbus serve-http`` runs unless told otherwise: ``{"steps": 5, "delay": 0.2}`` takes
    ``steps`` steps of ``delay`` seconds, reporting progress after each; ``"fail": true`` raises."""
    spec = job.input if isinstance(job.input, dict) else {}
    steps = max(1, min(int(spec.get("steps", 5)), 1000))
    delay = max(0.0, min(float(spec.get("delay", 0.2)), 10.0))
    for step in range(1, steps + 1):
        time.sleep(delay)
        if spec.get("fail") and step == steps:
            raise RuntimeError("failed on purpose (\"fail\": true)")
        progress(step / steps, f"step {step} of {steps}")
    return {"steps": steps, "input": job.input, "attempt": job.attempt}


def _load_handler(spec: str) -> Callable[..., Any]:
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"--handler must be module:function, got {spec!r}")
    handler: Callable[..., Any] = getattr(importlib.import_module(module), name)
    if not callable(handler):
        raise ValueError(f"--handler {spec} is not callable")
    return handler


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ringbus serve-http",
        description="Serve asynchronous request-reply over HTTP: POST /jobs answers 202 at once, the job runs on "
                    "a bus queue, GET /jobs/{id} polls it (303 to the result), /jobs/{id}/events streams it.")
    parser.add_argument("--bind", default=DEFAULT_BIND, help=f"host:port to listen on (default {DEFAULT_BIND}; "
                        "port 0 takes a free one)")
    parser.add_argument("--url", help="the bus (tcp://host:port of a running `ringbus broker`); default: an "
                        "embedded broker in this process, with in-process workers")
    parser.add_argument("--data", help="directory of the job store (jobs.sqlite3) and of the embedded broker's "
                        "log; default: a temporary directory removed at exit")
    parser.add_argument("--token", default=os.environ.get("RINGBUS_HTTP_TOKEN"),
                        help="require Authorization: Bearer <token> (default: $RINGBUS_HTTP_TOKEN; none = open)")
    parser.add_argument("--webhook-secret", default=os.environ.get("RINGBUS_WEBHOOK_SECRET"),
                        help="HMAC-SHA256 key of webhook signatures (default: $RINGBUS_WEBHOOK_SECRET; none = "
                             "jobs cannot ask for webhooks)")
    parser.add_argument("--allow-http-webhooks", action="store_true", help="accept http:// callback URLs too")
    parser.add_argument("--allow-loopback-webhooks", action="store_true", help="accept callbacks to loopback")
    parser.add_argument("--allow-private-webhooks", action="store_true",
                        help="accept callbacks to private (RFC 1918, ULA, CGNAT) addresses")
    parser.add_argument("--workers", type=int, help="worker threads in this process (default: 2 with the embedded "
                        "broker, 0 with --url: run JobWorker processes against the same bus)")
    parser.add_argument("--handler", default="ringbus.http:demo_handler",
                        help="module:function the in-process workers run (default: ringbus.http:demo_handler)")
    parser.add_argument("--queue", default="jobs", help="the job queue (default: jobs)")
    parser.add_argument("--max-body", type=int, default=MAX_BODY, help=f"largest request body in bytes "
                        f"(default {MAX_BODY}; bigger gets 413)")
    parser.add_argument("--retry-after", type=int, default=1, help="seconds clients should wait between polls")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """``ringbus serve-http``: run the job server in the foreground until SIGINT or SIGTERM."""
    args = build_parser().parse_args(argv)
    try:
        import uvicorn
    except ImportError:
        print(f"ringbus serve-http {_NEEDS_EXTRA}", file=sys.stderr)
        return 2
    try:
        host, port = _split_bind(args.bind)
        handler = _load_handler(args.handler)
        if args.workers is not None and args.workers < 0:
            raise ValueError("--workers must be >= 0")
    except (ValueError, ImportError, AttributeError) as exc:
        print(f"ringbus serve-http: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    temp = None if args.data else tempfile.mkdtemp(prefix="ringbus-http-")
    data = Path(temp if temp is not None else args.data)
    broker = manager = worker = None
    try:
        url = args.url
        if url is None:
            import ringbus

            broker = ringbus.Broker(data / "broker", "tcp://127.0.0.1:0").start()
            url = broker.endpoint
        webhooks = None
        if args.webhook_secret:
            webhooks = WebhookPolicy(secret=args.webhook_secret, allow_http=args.allow_http_webhooks,
                                     allow_loopback=args.allow_loopback_webhooks,
                                     allow_private=args.allow_private_webhooks)
        manager = JobManager(url, queue=args.queue, store=data / "jobs.sqlite3", webhooks=webhooks).start()
        workers = args.workers if args.workers is not None else (0 if args.url else 2)
        if workers:
            worker = JobWorker(url, handler, queue=args.queue, threads=workers).start()
        app = create_app(manager, token=args.token, max_body=args.max_body, retry_after=args.retry_after)
        sock = _listen(host, port)
        shown = f"[{host}]" if ":" in host else host
        print(f"ringbus serve-http: listening on http://{shown}:{sock.getsockname()[1]} (bus {url}, store "
              f"{manager.store.path}, {workers} worker thread(s), auth {'bearer token' if args.token else 'off'}, "
              f"webhooks {'on' if webhooks else 'off'})", flush=True)
        server = uvicorn.Server(uvicorn.Config(app, log_level=args.log_level, access_log=False, lifespan="on",
                                               timeout_graceful_shutdown=3))
        # uvicorn turns SIGINT/SIGTERM into a graceful stop, then raises the signal again for the handler it
        # found; ours only notes it, so that the workers, the manager and the broker are closed below (the
        # default SIGTERM action would end the process before they are) and a requested stop exits 0.
        stopped_by: list[int] = []
        previous = {sig: signal.signal(sig, lambda signum, frame: stopped_by.append(signum))
                    for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            server.run(sockets=[sock])
        finally:
            for sig, previous_handler in previous.items():
                signal.signal(sig, previous_handler)
            sock.close()
        log.info("stopped by %s", ", ".join(signal.Signals(s).name for s in stopped_by) or "the server")
        return 0
    except RingbusError as exc:
        print(f"ringbus serve-http: {exc}", file=sys.stderr)
        return 1
    finally:
        if worker is not None:
            worker.stop()
        if manager is not None:
            manager.close()
        if broker is not None:
            broker.stop()
        if temp is not None:
            shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

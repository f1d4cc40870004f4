"""A live web dashboard of a bus's queues: the Starlette app :func:`dashboard_app` and ``ringbus dashboard``.

One sampler thread owns the Bus (a Bus belongs to the thread that opened it) and, every ``interval`` seconds,
reads every queue's :class:`~ringbus.bus.QueueStats` through the public API (``queues()``, ``queue_stats()``).
Rates are computed here from successive snapshots; a bounded history per queue feeds the page's charts.
Requests only read what the sampler holds, so any number of viewers costs the broker one sample per interval.

``GET /`` the page (its script and style are served by this app too: no external assets), ``GET /api/queues``
the latest snapshot as JSON (503 while the bus cannot be read, with the reason in ``error``), ``GET
/api/history`` the per-queue series the charts draw. Starlette and uvicorn (the ``http`` extra) are imported
when used.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import logging
import math
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from ringbus.bus import Bus, QueueStats, check_seconds, connect
from ringbus.errors import NotFound

__all__ = ["DEFAULT_HOST", "DEFAULT_PORT", "DashboardSampler", "dashboard_app", "serve"]

log = logging.getLogger("ringbus.dashboard")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
LATENCY_KINDS = ("queue_wait", "processing", "end_to_end")
LATENCY_FIELDS = ("count", "p50", "p90", "p99", "max")
# The backends whose connect() takes a timeout: without one an unreachable broker is reported only after the
# backend's default (30 s).
_TIMEOUT_SCHEMES = frozenset({"tcp", "ipc", "redis", "rediss"})
_COUNTERS = ("sent", "acked", "dead_lettered")  # the rates the dashboard derives, messages per second
_NOT_PLAIN = ("send_rate", "ack_rate", "latency_ms")  # QueueStats fields a row carries in its own shape
_SERIES = ("depth", "in_flight", "dead_lettered", "send_rate", "ack_rate", "queue_wait_p99", "end_to_end_p99")
_ASSETS = {  # file in dashboard_static/ -> media type; nothing else is served from there
    "index.html": "text/html; charset=utf-8",
    "dashboard.js": "text/javascript; charset=utf-8",
    "dashboard.css": "text/css; charset=utf-8",
}
_SECURITY_HEADERS = {
    # Only this app's own script and style run: a queue name that slipped past the page's escaping still
    # could not load or execute anything.
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
                               "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
_NEEDS_EXTRA = "needs the http extra (Starlette, uvicorn): pip install 'ringbus[http]'"


def _number(value: Any) -> float | None:
    """A finite number for JSON, or None (JSON has no NaN, and a missing figure must not break the page)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def _seconds(name: str, value: float) -> float:
    seconds = check_seconds(name, value, allow_zero=False)
    if seconds is None:
        raise TypeError(f"{name} must be a number of seconds > 0, not None")
    return seconds


def _latency(raw: Any) -> dict[str, dict[str, float | None]] | None:
    """``QueueStats.latency_ms`` reduced to the kinds and fields the page knows, or None when the backend has none.

    A kind with no samples (count 0) has no percentiles: they become None rather than a misleading 0.
    """
    if not isinstance(raw, Mapping):
        return None
    kinds = {}
    for kind in LATENCY_KINDS:
        figures = raw.get(kind)
        if isinstance(figures, Mapping):
            kinds[kind] = {f: _number(figures.get(f)) for f in LATENCY_FIELDS}
            if kinds[kind]["count"] == 0:
                kinds[kind].update(dict.fromkeys(LATENCY_FIELDS[1:]))
    return kinds or None


class DashboardSampler:
    """Reads every queue of the bus at ``url`` each ``interval`` seconds on a thread of its own.

    Parameters
    ----------
    url : str
        The bus, as for :func:`ringbus.connect`.
    interval : float
        Seconds between snapshots.
    history : int
        Snapshots kept per queue for the charts (300 at 1 s: the last five minutes).
    timeout : float
        Seconds to wait for the broker per call (``tcp://``, ``ipc://``, ``redis://``); an unreachable broker is
        reported after this long.
    max_queues : int
        Most queues read per snapshot (each is one round trip); the rest are counted, not shown.
    bus_factory : callable or None
        Opens the Bus to read, on the sampler's thread (for connection options such as keys or a prefix);
        default: ``connect(url)`` with ``timeout``. Called again after a failure.
    """

    def __init__(self, url: str, *, interval: float = 1.0, history: int = 300, timeout: float = 5.0,
                 max_queues: int = 200, bus_factory: Callable[[], Bus] | None = None) -> None:
        if not isinstance(url, str) or not url:
            raise TypeError(f"url must be a bus url such as 'tcp://127.0.0.1:5555', not {url!r}")
        self.url = url
        self.interval = _seconds("interval", interval)
        self.timeout = _seconds("timeout", timeout)
        for name, value in (("history", history), ("max_queues", max_queues)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self.history = history
        self.max_queues = max_queues
        self._bus_factory = bus_factory
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._snapshot: dict[str, Any] = {"url": url, "status": "connecting", "error": None, "updated": None,
                                          "checked": None, "interval": self.interval, "history_points": history,
                                          "queues": [], "total_queues": 0}
        self._series: dict[str, deque[tuple[float | None, ...]]] = {}
        self._previous: dict[str, tuple[float, dict[str, int]]] = {}  # queue -> (monotonic time, counters)
        self._last_error: str | None = None

    # -- lifetime -----------------------------------------------------------------------------------------------
    def start(self) -> DashboardSampler:
        """Start sampling on a daemon thread; returns at once (the first snapshot follows within a moment)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="ringbus-dashboard-sampler", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop sampling and close the bus; waits up to ``timeout`` for a snapshot in progress."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # -- what requests read -------------------------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """The latest snapshot: ``status`` (connecting, ok, error), ``error``, ``queues`` (the last read, which is
        stale while ``status`` is error), ``updated`` and ``checked`` (epoch seconds)."""
        with self._lock:
            return dict(self._snapshot)

    def history_doc(self) -> dict[str, Any]:
        """Per queue, one list per series (``t`` in epoch seconds, depth, rates, latency p99s), oldest first."""
        with self._lock:
            series = {name: list(points) for name, points in self._series.items()}
        queues = {name: {key: [p[i] for p in points] for i, key in enumerate(("t", *_SERIES))}
                  for name, points in series.items()}
        return {"url": self.url, "interval": self.interval, "history_points": self.history, "queues": queues}

    # -- the sampler thread -------------------------------------------------------------------------------------
    def _connect(self) -> Bus:
        if self._bus_factory is not None:
            return self._bus_factory()
        scheme = urlsplit(self.url).scheme
        return connect(self.url, timeout=self.timeout) if scheme in _TIMEOUT_SCHEMES else connect(self.url)

    def _run(self) -> None:
        bus: Bus | None = None
        try:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    if bus is None:
                        bus = self._connect()
                    self._read(bus)
                # Whatever stops a snapshot (a bad url, a broker away, a backend error) is shown on the page and
                # retried next interval; the dashboard itself keeps serving.
                except Exception as exc:  # noqa: BLE001
                    self._failed(exc)
                    self._close(bus)
                    bus = None
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - started)))
        finally:
            self._close(bus)

    @staticmethod
    def _close(bus: Bus | None) -> None:
        if bus is not None:
            try:
                bus.close()
            except Exception:  # a bus that failed may fail to close too; it is dropped either way
                log.debug("closing the bus failed", exc_info=True)

    def _read(self, bus: Bus) -> None:
        names = sorted(bus.queues())
        now, wall = time.monotonic(), time.time()
        rows = []
        for name in names[:self.max_queues]:
            try:
                stats = bus.queue_stats(name)
            except NotFound:  # deleted between queues() and queue_stats()
                continue
            rows.append(self._row(stats, now))
        with self._lock:
            shown = {row["name"] for row in rows}
            for gone in set(self._series) - shown:
                del self._series[gone]
                self._previous.pop(gone, None)
            for row in rows:
                latency = row["latency_ms"] or {}
                point = (wall, row["depth"], row["in_flight"], row["dead_lettered"], row["rates"]["sent"],
                         row["rates"]["acked"], latency.get("queue_wait", {}).get("p99"),
                         latency.get("end_to_end", {}).get("p99"))
                self._series.setdefault(row["name"], deque(maxlen=self.history)).append(point)
            self._snapshot.update(status="ok", error=None, updated=wall, checked=wall, queues=rows,
                                  total_queues=len(names))
        if self._last_error is not None:
            log.info("reading %s again", self.url)
            self._last_error = None

    def _row(self, stats: QueueStats, now: float) -> dict[str, Any]:
        # Shallow: a backend's figures may be read-only mappings that asdict's deep copy cannot take.
        fields = {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats)}
        counters = {c: int(fields[c]) for c in _COUNTERS}
        rates: dict[str, float | None] = dict.fromkeys(_COUNTERS)
        previous = self._previous.get(stats.name)
        if previous is not None and now > previous[0]:
            elapsed = now - previous[0]
            for c in _COUNTERS:
                delta = counters[c] - previous[1][c]
                # A counter that went down means the broker restarted: no rate across that gap.
                rates[c] = round(delta / elapsed, 3) if delta >= 0 else None
        self._previous[stats.name] = (now, counters)
        # Every plain figure QueueStats has (and fields a newer backend adds), as long as JSON can carry it.
        row: dict[str, Any] = {
            key: _number(value) if isinstance(value, float) else value for key, value in fields.items()
            if key not in _NOT_PLAIN and (value is None or isinstance(value, (str, int, float)))}
        row["rates"] = rates
        row["broker_rates"] = {"sent": _number(stats.send_rate), "acked": _number(stats.ack_rate)}
        row["latency_ms"] = _latency(fields.get("latency_ms"))
        return row

    def _failed(self, exc: Exception) -> None:
        message = f"cannot read the bus at {self.url}: {type(exc).__name__}: {exc}"
        if message != self._last_error:  # once per distinct failure, not once per second
            log.warning("%s", message)
            self._last_error = message
        with self._lock:
            self._snapshot.update(status="error", error=message, checked=time.time())


def _asset(name: str) -> bytes:
    return importlib.resources.files("ringbus").joinpath("dashboard_static", name).read_bytes()


def dashboard_app(url: str, *, interval: float = 1.0, history: int = 300, timeout: float = 5.0,
                  max_queues: int = 200, bus_factory: Callable[[], Bus] | None = None) -> Any:
    """The dashboard of the bus at ``url`` as a Starlette app; its sampler runs while the app is served.

    The parameters are those of :class:`DashboardSampler`; ``app.state.sampler`` is it. A url that is malformed
    or a broker that does not answer is shown on the page and in ``/api/queues`` (503), never a traceback.
    """
    try:
        from contextlib import asynccontextmanager

        from starlette.applications import Starlette
        from starlette.concurrency import run_in_threadpool
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ImportError(f"ringbus.dashboard_app {_NEEDS_EXTRA}") from exc

    sampler = DashboardSampler(url, interval=interval, history=history, timeout=timeout, max_queues=max_queues,
                               bus_factory=bus_factory)
    assets = {name: _asset(name) for name in _ASSETS}  # read once: a broken install fails here, not per request

    def static(name: str) -> Any:
        async def endpoint(request: Request) -> Response:
            return Response(assets[name], media_type=_ASSETS[name], headers=_SECURITY_HEADERS)
        return endpoint

    async def queues(request: Request) -> Response:
        doc = sampler.snapshot()
        ok = doc["status"] == "ok"
        headers = {**_SECURITY_HEADERS, **({} if ok else {"Retry-After": str(max(1, round(sampler.interval)))})}
        return JSONResponse(doc, status_code=200 if ok else 503, headers=headers)

    async def history_series(request: Request) -> Response:
        return JSONResponse(await run_in_threadpool(sampler.history_doc), headers=_SECURITY_HEADERS)

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        sampler.start()
        try:
            yield
        finally:
            await run_in_threadpool(sampler.stop)

    app = Starlette(routes=[Route("/", static("index.html")),
                            Route("/dashboard.js", static("dashboard.js")),
                            Route("/dashboard.css", static("dashboard.css")),
                            Route("/api/queues", queues),
                            Route("/api/history", history_series)], lifespan=lifespan)
    app.state.sampler = sampler
    return app


def serve(url: str, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, interval: float = 1.0,
          timeout: float = 5.0, log_level: str = "info") -> int:
    """``ringbus dashboard``: serve the dashboard of ``url`` in the foreground until SIGINT or SIGTERM.

    Returns the exit code: 0 after a requested stop, 2 when it cannot start (bad arguments, port in use, no
    Starlette/uvicorn). The bus itself may be away: the page says so and keeps trying.
    """
    try:
        # uvicorn on a thread (it serves any ASGI app); this thread waits for a signal
        from ringbus.http import JobServer

        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, got {port!r}")
        server = JobServer(dashboard_app(url, interval=interval, timeout=timeout), host, port, log_level=log_level)
    except ImportError:
        print(f"ringbus dashboard {_NEEDS_EXTRA}", file=sys.stderr)
        return 2
    except (TypeError, ValueError, OSError) as exc:  # bad flags, a port in use, an address not on this machine
        print(f"ringbus dashboard: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        server.start()
        print(f"ringbus dashboard: {server.url}/ (bus {url}, a snapshot every {interval:g} s)", flush=True)
        if host not in ("127.0.0.1", "::1", "localhost"):
            print(f"ringbus dashboard: warning: listening on {host}, reachable beyond this machine; the page has "
                  "no authentication", file=sys.stderr)
        while not stop.wait(0.5):
            pass
        return 0
    except RuntimeError as exc:  # uvicorn did not start serving
        print(f"ringbus dashboard: {exc}", file=sys.stderr)
        return 1
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)

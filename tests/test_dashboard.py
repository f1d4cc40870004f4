"""The dashboard: its JSON API over real HTTP (httpx, uvicorn, an embedded broker) and its page in Debian's headless
Chromium driven by selenium through chromedriver.

The browser tests skip with a sentence when chromium, chromedriver or selenium is missing, and fail instead when
RINGBUS_REQUIRE_SERVICES=1 (CI). RINGBUS_DASHBOARD_SCREENSHOT=/path.png saves what the browser showed.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import socket
import time
import types
import uuid
from collections.abc import Callable, Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from ringbus.backends.memory import MemoryBus
from ringbus.broker.server import Broker
from ringbus.bus import QueueStats, connect
from ringbus.dashboard import (
    LATENCY_FIELDS,
    LATENCY_KINDS,
    DashboardSampler,
    dashboard_app,
)
from ringbus.http import JobServer

httpx = pytest.importorskip("httpx", reason="the dashboard tests need httpx (the http extra)")
pytest.importorskip("starlette", reason="the dashboard needs Starlette (the http extra)")
pytest.importorskip("uvicorn", reason="the dashboard needs uvicorn (the http extra)")

pytestmark = pytest.mark.integration

INTERVAL = 0.2  # seconds between the dashboard's snapshots in these tests
WAIT = 30.0  # bound of every wait for the dashboard or the page to catch up; a passing test never takes it
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# Without the background-networking flags Chromium keeps trying to reach Google's hosts, which this closed
# network refuses; --no-sandbox because CI runs as root.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,1100")
Wait = Callable[..., Any]  # the eventually fixture: eventually(check, what) -> what check gave
HOSTILE = "<img src=x onerror=\"window.__xss=1\">&amp;"  # a queue name only a foreign backend could list


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with Broker(tmp_path_factory.mktemp("dashboard-broker"), "tcp://127.0.0.1:0") as running:
        yield running.endpoint


@pytest.fixture(scope="module")
def dashboard(broker: str) -> Iterator[str]:
    with JobServer(dashboard_app(broker, interval=INTERVAL)) as server:
        yield server.url


@pytest.fixture
def bus(broker: str) -> Iterator[Any]:
    client = connect(broker, timeout=10.0)
    yield client
    client.close()


@pytest.fixture
def queue(bus: Any) -> str:
    name = f"dash-{uuid.uuid4().hex[:10]}"
    bus.declare_queue(name, visibility_timeout=60.0)
    return name


@pytest.fixture
def eventually(until: Callable[..., None]) -> Wait:
    """``until`` (tests/conftest.py) that also returns the truthy value the check gave last."""
    def wait(check: Callable[[], Any], what: str) -> Any:
        seen: list[Any] = [None]

        def checked() -> bool:
            seen[0] = check()
            return bool(seen[0])

        until(checked, what)
        return seen[0]
    return wait


@pytest.fixture
def http() -> Iterator[Any]:
    with httpx.Client(timeout=10.0) as client:
        yield client


def api_row(http: Any, base: str, name: str) -> dict[str, Any] | None:
    doc = http.get(f"{base}/api/queues").json()
    return next((q for q in doc["queues"] if q["name"] == name), None)


# -- the JSON API -------------------------------------------------------------------------------------------------

def test_api_shows_a_declared_queue_and_follows_its_depth(dashboard: str, bus: Any, queue: str, eventually: Wait,
                                                          http: Any) -> None:
    row = eventually(lambda: api_row(http, dashboard, queue), f"{queue} in /api/queues")
    assert row["depth"] == 0 and row["in_flight"] == 0 and row["dead_lettered"] == 0
    assert set(row["rates"]) == {"sent", "acked", "dead_lettered"}
    assert {"consumers", "ready", "delayed", "sent", "acked", "broker_rates", "latency_ms"} <= set(row)

    for i in range(5):
        bus.send(queue, f"m{i}".encode())
    eventually(lambda: (api_row(http, dashboard, queue) or {}).get("depth") == 5, "depth 5 after five sends")

    held = bus.receive(queue, timeout=10.0)
    assert held is not None
    rejected = bus.receive(queue, timeout=10.0)
    assert rejected is not None
    rejected.reject()
    row = eventually(lambda: (r := api_row(http, dashboard, queue)) and r["dead_lettered"] == r["in_flight"] == 1 and r,
                     "one in flight and one dead-lettered")
    assert row["depth"] == 3 and row["sent"] == 5
    held.ack()
    eventually(lambda: (api_row(http, dashboard, queue) or {}).get("acked") == 1, "the ack counted")


def test_rates_come_from_successive_snapshots(dashboard: str, bus: Any, queue: str, eventually: Wait,
                                              http: Any) -> None:
    eventually(lambda: api_row(http, dashboard, queue), f"{queue} in /api/queues")
    for _ in range(12):
        bus.send(queue, b"x")
    eventually(lambda: (api_row(http, dashboard, queue) or {}).get("sent") == 12, "12 sends counted")
    eventually(lambda: len(http.get(f"{dashboard}/api/history").json()["queues"][queue]["t"]) >= 3,
             "a snapshot after the sends")
    series = http.get(f"{dashboard}/api/history").json()["queues"][queue]
    assert len(series["t"]) == len(series["depth"]) == len(series["send_rate"])
    assert series["send_rate"][0] is None  # no rate before a second snapshot
    assert series["depth"][-1] == 12
    # rate x time between snapshots adds up to what was sent (the broker counted all 12 after the first one)
    sent = sum(rate * (t1 - t0) for rate, (t0, t1) in zip(series["send_rate"][1:], pairwise(series["t"]), strict=True))
    assert sent == pytest.approx(12, rel=0.05)
    assert all(rate is None or rate >= 0 for rate in series["send_rate"])


def test_api_snapshot_is_json_without_nan_and_latency_is_well_formed(dashboard: str, queue: str, eventually: Wait,
                                                                     http: Any) -> None:
    eventually(lambda: api_row(http, dashboard, queue), f"{queue} in /api/queues")
    response = http.get(f"{dashboard}/api/queues")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    doc = response.json()
    assert doc["status"] == "ok" and doc["error"] is None and doc["total_queues"] >= 1
    assert "NaN" not in response.text and "Infinity" not in response.text
    for row in doc["queues"]:
        latency = row["latency_ms"]
        if latency is not None:  # present once the broker reports latency
            assert set(latency) <= set(LATENCY_KINDS)
            for figures in latency.values():
                assert set(figures) == set(LATENCY_FIELDS)
                assert all(v is None or (isinstance(v, (int, float)) and math.isfinite(v)) for v in figures.values())


def test_unreachable_broker_is_a_message_not_a_traceback(eventually: Wait, http: Any) -> None:
    url = f"tcp://127.0.0.1:{closed_port()}"
    with JobServer(dashboard_app(url, interval=INTERVAL, timeout=0.3)) as server:
        response = eventually(lambda: (r := http.get(f"{server.url}/api/queues")).json()["status"] == "error" and r,
                            "the sampler to give up on the broker")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        doc = response.json()
        assert url in doc["error"] and "did not answer" in doc["error"] and doc["queues"] == []
        page = http.get(f"{server.url}/")
        assert page.status_code == 200 and "Traceback" not in page.text


def test_reads_again_when_the_broker_comes_back(tmp_path: Path, eventually: Wait, http: Any) -> None:
    endpoint = f"tcp://127.0.0.1:{closed_port()}"
    first = Broker(tmp_path / "data", endpoint).start()
    with connect(endpoint, timeout=10.0) as bus:
        bus.declare_queue("kept")
        bus.send("kept", b"x")
    with JobServer(dashboard_app(endpoint, interval=INTERVAL, timeout=0.3)) as server:
        eventually(lambda: (api_row(http, server.url, "kept") or {}).get("depth") == 1, "kept at depth 1")
        first.stop()
        doc = eventually(lambda: (d := http.get(f"{server.url}/api/queues").json())["status"] == "error" and d,
                       "the dashboard to notice the broker left")
        assert [q["name"] for q in doc["queues"]] == ["kept", "kept.dlq"]  # the last snapshot read stays
        with Broker(tmp_path / "data", endpoint):  # the same log: the message was durable
            eventually(lambda: http.get(f"{server.url}/api/queues").json()["status"] == "ok",
                     "the dashboard to read the broker again")
            assert (api_row(http, server.url, "kept") or {}).get("depth") == 1


def test_malformed_url_is_a_message_not_a_traceback(eventually: Wait, http: Any) -> None:
    with JobServer(dashboard_app("nosuch://x", interval=INTERVAL)) as server:
        doc = eventually(lambda: (d := http.get(f"{server.url}/api/queues").json())["status"] == "error" and d,
                       "the sampler to report the url")
        assert "unknown bus url 'nosuch://x'" in doc["error"]


def test_bad_arguments_raise_naming_them() -> None:
    with pytest.raises(ValueError, match="interval"):
        DashboardSampler("tcp://127.0.0.1:5555", interval=0)
    with pytest.raises(ValueError, match="history"):
        DashboardSampler("tcp://127.0.0.1:5555", history=0)
    with pytest.raises(TypeError, match="url"):
        DashboardSampler(None)  # type: ignore[arg-type]


def test_page_and_assets_are_self_contained(dashboard: str, http: Any) -> None:
    page = http.get(f"{dashboard}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    texts = [page.text]
    for asset, kind in (("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")):
        response = http.get(f"{dashboard}/{asset}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
        texts.append(response.text)
    for text in texts:  # nothing from another host: this machine, and many a server room, has no internet
        assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", text)
        assert not re.search(r"""url\(\s*["']?(https?:)?//|@import|fetch\(\s*["'`]https?:""", text)
    assert http.get(f"{dashboard}/index.html").status_code == 404  # only the named assets are served


def test_memory_bus_in_the_same_process(eventually: Wait, http: Any) -> None:
    url = f"memory://dashboard-{uuid.uuid4().hex}"
    with MemoryBus(url) as bus, JobServer(dashboard_app(url, interval=INTERVAL)) as server:
        bus.declare_queue("work")
        bus.send("work", b"x")
        eventually(lambda: (api_row(http, server.url, "work") or {}).get("depth") == 1, "work at depth 1")


# -- the page in a real browser ----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _StatsWithLatency(QueueStats):
    latency_ms: dict[str, dict[str, float]] | None = None


class _ForeignBus(MemoryBus):
    """A memory bus reporting what a foreign backend or a newer broker could: its queue ``work`` listed again under
    a name with markup in it (ringbus's own names never have any), and the latency figures ``latency`` makes."""

    def __init__(self, url: str, latency: Callable[[QueueStats], Any]) -> None:
        super().__init__(url)
        self._latency = latency

    def queues(self) -> list[str]:
        return [*super().queues(), HOSTILE]

    def queue_stats(self, queue: str) -> QueueStats:
        stats = super().queue_stats("work" if queue == HOSTILE else queue)
        figures = {f.name: getattr(stats, f.name) for f in dataclasses.fields(stats) if f.name != "latency_ms"}
        return _StatsWithLatency(**{**figures, "name": queue}, latency_ms=self._latency(stats))


def moving_latency(stats: QueueStats) -> dict[str, dict[str, float]]:
    """Figures that move as messages are sent, so the latency chart has a line."""
    p99 = 2.0 + stats.sent
    return {"queue_wait": {"count": stats.sent, "p50": 0.4, "p90": 1.1, "p99": p99 / 2, "max": p99},
            "end_to_end": {"count": stats.sent, "p50": 0.9, "p90": 2.5, "p99": p99, "max": p99 * 2}}


def test_latency_figures_are_passed_on_defensively(eventually: Wait, http: Any) -> None:
    """Read-only mappings are read, NaN and unknown kinds dropped, and a kind without samples has no percentiles."""
    def odd(stats: QueueStats) -> Any:
        return types.MappingProxyType({
            "queue_wait": types.MappingProxyType({"count": 4, "p50": 1.5, "p90": float("nan"), "p99": 3, "max": 9.0}),
            "processing": {"count": 0, "p50": 0.0, "p90": 0.0, "p99": 0.0, "max": 0.0},
            "end_to_end": "not a mapping",
            "made_up": {"count": 1}})

    url = f"memory://dashboard-{uuid.uuid4().hex}"
    app = dashboard_app(url, interval=INTERVAL, bus_factory=lambda: _ForeignBus(url, odd))
    with MemoryBus(url) as bus, JobServer(app) as server:
        bus.declare_queue("work")
        row = eventually(lambda: api_row(http, server.url, "work"), "work in /api/queues")
        assert row["latency_ms"] == {
            "queue_wait": {"count": 4, "p50": 1.5, "p90": None, "p99": 3, "max": 9.0},
            "processing": {"count": 0, "p50": None, "p90": None, "p99": None, "max": None}}
        assert api_row(http, server.url, HOSTILE) is not None


def _require(message: str) -> None:
    if os.environ.get("RINGBUS_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """A headless Debian Chromium with a fresh profile, driven through Debian's chromedriver."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.path.exists(path)]
    if missing:
        _require(f"{' and '.join(missing)} not found: install Debian's browser (apt-get install -y chromium "
                 "chromium-driver) to run the dashboard's browser test")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.options import Options
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _require("selenium is not installed (pip install selenium): the dashboard's browser test drives Chromium "
                 "with it")
    options = Options()
    options.binary_location = CHROMIUM
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # Both paths given: selenium runs these binaries and never looks for (or downloads) others.
    service = Service(executable_path=CHROMEDRIVER, log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(WAIT)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(tmp_path / "chromium-profile", ignore_errors=True)


_CELL = """
const row = [...document.querySelectorAll('#queue-rows tr')].find(r => r.dataset.queue === arguments[0]);
if (!row) return null;
const cell = row.querySelector('td[data-field="' + arguments[1] + '"]');
return cell ? cell.textContent : null;
"""


def page_cell(driver: Any, queue: str, field: str) -> str | None:
    return driver.execute_script(_CELL, queue, field)  # type: ignore[no-any-return]


def console_errors(driver: Any) -> list[str]:
    """What the page logged as errors (a script error, a blocked resource, a CSP violation)."""
    return [entry["message"] for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


def test_page_shows_the_queue_and_its_depth_changes(browser: Any, dashboard: str, bus: Any, queue: str,
                                                    eventually: Wait) -> None:
    browser.get(f"{dashboard}/")
    assert browser.title == "ringbus dashboard"
    eventually(lambda: page_cell(browser, queue, "depth") == "0", f"the page to list {queue} at depth 0")
    assert page_cell(browser, queue, "name") == queue

    for i in range(7):
        bus.send(queue, f"order-{i}".encode())
    eventually(lambda: page_cell(browser, queue, "depth") == "7", f"the page to show {queue} at depth 7")
    assert browser.execute_script("return document.getElementById('status').textContent") == "live"

    # Chart the queue: click its row; the depth chart draws a line that reaches the new depth.
    browser.execute_script("""[...document.querySelectorAll('#queue-rows tr')]
                              .find(r => r.dataset.queue === arguments[0]).click()""", queue)
    eventually(lambda: browser.execute_script("return document.getElementById('selected-name').textContent") == queue,
             "the charts to follow the clicked queue")
    eventually(lambda: browser.execute_script("return document.querySelectorAll('#chart-depth polyline').length"),
             "a line in the depth chart")
    assert console_errors(browser) == []


def test_page_escapes_queue_names_and_charts_latency(browser: Any, tmp_path: Path, eventually: Wait) -> None:
    url = f"memory://dashboard-{uuid.uuid4().hex}"
    app = dashboard_app(url, interval=INTERVAL, bus_factory=lambda: _ForeignBus(url, moving_latency))
    with MemoryBus(url) as bus, JobServer(app) as server:
        bus.declare_queue("work")
        browser.get(f"{server.url}/")
        eventually(lambda: page_cell(browser, HOSTILE, "name") == HOSTILE, "the page to list the foreign name as text")
        browser.execute_script("""[...document.querySelectorAll('#queue-rows tr')]
                                  .find(r => r.dataset.queue === arguments[0]).click()""", HOSTILE)
        for _ in range(3):
            bus.send("work", b"x")
            time.sleep(INTERVAL * 2)  # spread the sends over snapshots so the latency line has points to join
        eventually(lambda: page_cell(browser, HOSTILE, "depth") == "3", "the foreign name's depth to follow work's")
        eventually(lambda: browser.execute_script("return document.querySelectorAll('#chart-latency polyline').length"),
                 "a line in the latency chart")
        assert browser.execute_script("return document.querySelectorAll('img').length") == 0
        assert browser.execute_script("return window.__xss === undefined")
        assert browser.execute_script("return document.getElementById('latency-table').hidden") is False
        assert browser.execute_script("return document.getElementById('latency-note').hidden") is True
        screenshot = os.environ.get("RINGBUS_DASHBOARD_SCREENSHOT")
        if screenshot:
            browser.save_screenshot(screenshot)
        assert console_errors(browser) == []


def test_page_says_when_the_broker_is_away(browser: Any, eventually: Wait) -> None:
    url = f"tcp://127.0.0.1:{closed_port()}"
    with JobServer(dashboard_app(url, interval=INTERVAL, timeout=0.3)) as server:
        browser.get(f"{server.url}/")
        banner = eventually(lambda: browser.execute_script(
            "const b = document.getElementById('error'); return b.hidden ? null : b.textContent"),
            "the page to show why it cannot read the broker")
        assert url in banner and "did not answer" in banner
        assert browser.execute_script("return document.getElementById('status').textContent") == "not reading"

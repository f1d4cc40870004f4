"""Asynchronous request-reply over HTTP: a real uvicorn server on 127.0.0.1, httpx clients, workers on the Bus."""

from __future__ import annotations

import contextlib
import http.server
import json
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("starlette", reason="the HTTP job server needs starlette (the http extra)")
pytest.importorskip("uvicorn", reason="the HTTP job server needs uvicorn (the http extra)")
httpx = pytest.importorskip("httpx", reason="the HTTP job tests are clients made with httpx")

import ringbus  # noqa: E402
from ringbus.http import JobClient, JobServer, create_app  # noqa: E402
from ringbus.patterns import RetryPolicy  # noqa: E402
from ringbus.patterns.async_request_reply import Job, JobCancelled, JobManager, JobWorker  # noqa: E402
from ringbus.patterns.webhooks import (  # noqa: E402
    ATTEMPT_HEADER,
    JOB_HEADER,
    SIGNATURE_HEADER,
    WebhookPolicy,
    sign,
    verify_signature,
)

from .bus_fixtures import ROOT, python_env, run_example  # noqa: E402

pytestmark = pytest.mark.integration

WAIT = 30.0  # bound on waits that end much sooner when the code works
SECRET = "whsec-test-0123456789"


def wait_until(condition: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll ``condition`` until it returns something true, and return that; fail naming ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g} s: {what}")
        time.sleep(0.02)


@pytest.fixture
def memory_url() -> str:
    return f"memory://http-jobs-{uuid.uuid4().hex}"


class Stack:
    """A manager, its HTTP server and (optionally) workers; everything stopped at teardown."""

    def __init__(self, exits: contextlib.ExitStack, url: str, queue: str) -> None:
        self.exits = exits
        self.url = url
        self.queue = queue

    def serve(self, *, token: str | None = None, webhooks: WebhookPolicy | None = None, retry_after: int = 0,
              max_body: int = 1024 * 1024, **manager_options: Any) -> Stack:
        self.manager = JobManager(self.url, queue=self.queue, webhooks=webhooks, **manager_options).start()
        self.exits.callback(self.manager.close)
        app = create_app(self.manager, token=token, retry_after=retry_after, max_body=max_body, sse_poll=0.5)
        self.server = JobServer(app).start()
        self.exits.callback(self.server.stop)
        self.http = httpx.Client(base_url=self.server.url, timeout=10.0,
                                 headers={"Authorization": f"Bearer {token}"} if token else {})
        self.exits.callback(self.http.close)
        return self

    def worker(self, handler: Callable[..., Any], **options: Any) -> JobWorker:
        options.setdefault("progress_interval", 0.0)
        worker = JobWorker(self.url, handler, queue=self.queue, **options).start()
        self.exits.callback(worker.stop, 5.0)
        return worker

    def client(self, token: str | None = None, **options: Any) -> JobClient:
        client = JobClient(self.server.url, token, **options)
        self.exits.callback(client.close)
        return client

    def doc(self, job_id: str) -> dict[str, Any]:
        record = self.manager.get(job_id)
        assert record is not None
        return record.as_dict()


@pytest.fixture
def stack() -> Iterator[Callable[[str], Stack]]:
    """``stack(url)``: a new Stack on its own job queue."""
    with contextlib.ExitStack() as exits:
        yield lambda url: Stack(exits, url, f"jobs-{uuid.uuid4().hex[:10]}")


def gate() -> threading.Event:
    return threading.Event()


# --- the 202 / poll / 303 flow ----------------------------------------------------------------------------------

def test_submit_poll_and_see_other_to_the_result(url: str, stack: Callable[[str], Stack]) -> None:
    release = gate()

    def add(job: Job, progress: Callable[..., None]) -> dict[str, int]:
        progress(0.5, "summed half")
        assert release.wait(WAIT)
        return {"sum": sum(job.input)}

    s = stack(url).serve(retry_after=1)
    s.worker(add)
    response = s.http.post("/jobs", json={"input": [1, 2, 3, 4]})
    assert response.status_code == 202
    job_id = response.json()["id"]
    assert response.headers["location"] == f"/jobs/{job_id}"
    assert response.headers["retry-after"] == "1"
    assert response.json()["status"] == "queued"

    # Poll: 200 with Retry-After while it runs, progress visible.
    def running_halfway() -> Any:
        r = s.http.get(f"/jobs/{job_id}")
        return r if r.json()["progress"] == {"done": 0.5, "message": "summed half"} else None

    polled = wait_until(running_halfway, "the job running at 50 %")
    assert polled.status_code == 200 and polled.json()["status"] == "running"
    assert polled.headers["retry-after"] == "1"
    assert s.http.get(f"/jobs/{job_id}/result").status_code == 409  # no result yet

    release.set()
    done = wait_until(lambda: (r := s.http.get(f"/jobs/{job_id}")).status_code == 303 and r, "303 See Other")
    assert done.headers["location"] == f"/jobs/{job_id}/result"
    assert "retry-after" not in done.headers
    assert done.json()["status"] == "succeeded" and done.json()["attempts"] == 1
    assert done.json()["progress"]["done"] == 1.0
    result = s.http.get(done.headers["location"])
    assert result.status_code == 200 and result.headers["content-type"] == "application/json"
    assert result.json() == {"sum": 10}
    assert s.http.get(f"/jobs/{uuid.uuid4().hex}").status_code == 404
    stats = s.manager.stats()
    assert (stats.submitted, stats.processed, stats.jobs["succeeded"]) == (1, 1, 1)


def test_failed_job_reports_its_error_and_bytes_results(memory_url: str, stack: Callable[[str], Stack]) -> None:
    def handler(job: Job, progress: Callable[..., None]) -> Any:
        if job.input == "boom":
            raise RuntimeError("no such report")
        return b"\x00raw"

    s = stack(memory_url).serve()
    s.worker(handler)
    client = s.client()
    failed = client.run("boom", timeout=WAIT)
    assert (failed.status, failed.error, failed.result) == ("failed", "RuntimeError: no such report", None)
    assert s.http.get(f"/jobs/{failed.id}").status_code == 200  # terminal but not succeeded: no redirect
    assert s.http.get(f"/jobs/{failed.id}/result").status_code == 409
    raw = client.run("bytes", timeout=WAIT)
    assert (raw.status, raw.result) == ("succeeded", b"\x00raw")


def test_client_sleeps_what_retry_after_says(memory_url: str, stack: Callable[[str], Stack]) -> None:
    release = gate()
    s = stack(memory_url).serve(retry_after=2)
    s.worker(lambda job, progress: release.wait(WAIT) and "done")
    slept: list[float] = []

    def fake_sleep(seconds: float) -> None:  # no real waiting: the third poll finds the job finished
        slept.append(seconds)
        if len(slept) == 3:
            release.set()
            wait_until(lambda: s.manager.get(submission.id).status == "succeeded", "the job finished")

    client = s.client(sleep=fake_sleep)
    submission = client.submit({"report": "q3"})
    assert submission.retry_after == 2.0
    outcome = client.wait(submission, timeout=WAIT)
    assert (outcome.status, outcome.result) == ("succeeded", "done")
    assert outcome.waits == (2.0, 2.0, 2.0) and slept == [2.0, 2.0, 2.0]
    assert outcome.polls == 3


# --- webhooks ---------------------------------------------------------------------------------------------------

class Receiver:
    """A webhook receiver on 127.0.0.1: answers each POST with the next status of ``script`` (then 200)."""

    def __init__(self, script: dict[str, list[int]]) -> None:
        self.calls: list[tuple[str, dict[str, str], bytes, int]] = []
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                answers = script.get(self.path, [])
                status = answers.pop(0) if answers else 200
                receiver.calls.append((self.path, dict(self.headers), body, status))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Callable[[dict[str, list[int]]], Receiver]]:
    made: list[Receiver] = []
    yield lambda script: made.append(Receiver(script)) or made[-1]
    for r in made:
        r.close()


LOOPBACK_HOOKS = dict(secret=SECRET, allow_http=True, allow_loopback=True, max_attempts=3,
                      retry=RetryPolicy(base=0.05, jitter=False))


def test_webhook_is_signed_and_retried_after_a_failing_receiver(memory_url: str, stack: Callable[[str], Stack],
                                                                receiver: Callable[..., Receiver]) -> None:
    hooks = receiver({"/flaky": [500], "/down": [500, 502, 503]})
    s = stack(memory_url).serve(webhooks=WebhookPolicy(**LOOPBACK_HOOKS))  # type: ignore[arg-type]
    s.worker(lambda job, progress: {"rows": job.input["rows"] * 2})
    client = s.client()
    flaky = client.submit({"rows": 21}, callback_url=f"{hooks.url}/flaky")
    down = client.submit({"rows": 1}, callback_url=f"{hooks.url}/down")
    wait_until(lambda: s.doc(flaky.id)["webhook"]["state"] == "delivered", "the flaky webhook delivered")
    wait_until(lambda: s.doc(down.id)["webhook"]["state"] == "failed", "the down webhook given up")

    flaky_calls = [c for c in hooks.calls if c[0] == "/flaky"]
    assert [c[3] for c in flaky_calls] == [500, 200]  # failed once, retried, delivered
    assert [c[1][ATTEMPT_HEADER] for c in flaky_calls] == ["1", "2"]
    for _, headers, body, _ in flaky_calls:
        assert headers[JOB_HEADER] == flaky.id
        assert verify_signature(SECRET, headers[SIGNATURE_HEADER], body)
        assert not verify_signature(SECRET, headers[SIGNATURE_HEADER], body.replace(b"42", b"43"))
        assert not verify_signature("another secret", headers[SIGNATURE_HEADER], body)
    assert flaky_calls[0][2] == flaky_calls[1][2]  # the same document each attempt; only the signature is new
    delivered = json.loads(flaky_calls[1][2])
    assert (delivered["id"], delivered["status"], delivered["result"]) == (flaky.id, "succeeded", {"rows": 42})
    assert s.doc(flaky.id)["webhook"] == {"url": f"{hooks.url}/flaky", "state": "delivered", "attempts": 2,
                                          "error": None}

    down_calls = [c for c in hooks.calls if c[0] == "/down"]
    assert [c[3] for c in down_calls] == [500, 502, 503]  # max_attempts=3, then given up
    assert s.doc(down.id)["webhook"]["error"] == "HTTP 503"
    stats = s.manager.stats()
    assert (stats.webhooks_delivered, stats.webhooks_failed) == (1, 1)


def test_signature_header_format_and_checks() -> None:
    body = b'{"id":"x","status":"succeeded"}'
    header = sign(SECRET, body, timestamp=1_700_000_000)
    t, v1 = header.split(",")
    assert t == "t=1700000000" and v1.startswith("v1=") and len(v1) == 3 + 64
    assert verify_signature(SECRET, header, body, now=1_700_000_100)
    assert not verify_signature(SECRET, header, body, now=1_700_000_000 + 301)  # too old: a replay
    assert verify_signature(SECRET, f"{t},v1={'0' * 64},{v1}", body, now=1_700_000_000)  # rotation: one matches
    assert not verify_signature(SECRET, None, body)
    assert not verify_signature(SECRET, "v1=abc", body)


def public_dns(host: str, port: int) -> list[str]:
    return {"api.example.com": ["93.184.216.34"], "split.example.com": ["93.184.216.34", "10.0.0.7"],
            "localhost": ["127.0.0.1", "::1"]}.get(host, [])


@pytest.mark.parametrize(("callback", "refusal"), [
    ("http://api.example.com/hook", "scheme http:// is not allowed"),
    ("ftp://api.example.com/hook", "scheme ftp:// is not allowed"),
    ("https://127.0.0.1/hook", "a loopback address"),
    ("https://localhost:8443/hook", "a loopback address"),
    ("https://[::ffff:127.0.0.1]/hook", "a loopback address"),
    ("https://10.1.2.3/hook", "a private address"),
    ("https://192.168.0.10/hook", "a private address"),
    ("https://split.example.com/hook", "resolves to 10.0.0.7, a private address"),
    ("https://169.254.169.254/latest/meta-data", "a link-local address"),
    ("https://0.0.0.0/hook", "multicast, unspecified or reserved"),
    ("https://nowhere.example.com/hook", "does not resolve"),
    ("https:///hook", "has no host"),
])
def test_webhook_url_refused(callback: str, refusal: str) -> None:
    policy = WebhookPolicy(secret=SECRET, resolver=public_dns)
    with pytest.raises(ValueError, match=refusal.replace("(", r"\(").replace(".", r"\.")):
        policy.validate(callback)
    assert policy.validate("https://api.example.com/hook") == "https://api.example.com/hook"


def test_webhook_urls_checked_at_submit(memory_url: str, stack: Callable[[str], Stack]) -> None:
    s = stack(memory_url).serve(webhooks=WebhookPolicy(secret=SECRET, resolver=public_dns))
    refused = {url: s.http.post("/jobs", json={"input": 1, "callback_url": url})
               for url in ("http://api.example.com/h", "ftp://api.example.com/h", "https://127.0.0.1/h",
                           "https://10.0.0.1/h", "https://169.254.169.254/")}
    assert {u: r.status_code for u, r in refused.items()} == dict.fromkeys(refused, 400)
    assert "not allowed" in refused["https://127.0.0.1/h"].json()["error"]
    assert s.http.post("/jobs", json={"input": 1, "callback_url": "https://api.example.com/h"}).status_code == 202
    assert s.manager.stats().submitted == 1  # nothing refused reached the queue

    # Loopback over http, allowed explicitly (what the other webhook tests do).
    s2 = stack(memory_url).serve(webhooks=WebhookPolicy(secret=SECRET, allow_http=True, allow_loopback=True))
    assert s2.http.post("/jobs", json={"callback_url": "http://127.0.0.1:9/h"}).status_code == 202
    assert s2.http.post("/jobs", json={"callback_url": "http://10.0.0.1/h"}).status_code == 400  # private still
    # No secret configured: a job cannot ask for a webhook at all.
    s3 = stack(memory_url).serve()
    answer = s3.http.post("/jobs", json={"callback_url": "https://api.example.com/h"})
    assert answer.status_code == 400 and "no webhook secret" in answer.json()["error"]


# --- server-sent events -----------------------------------------------------------------------------------------

def test_events_stream_status_and_progress_until_terminal(memory_url: str, stack: Callable[[str], Stack]) -> None:
    steps = [gate() for _ in range(4)]

    def handler(job: Job, progress: Callable[..., None]) -> str:
        for k in range(3):
            assert steps[k].wait(WAIT)
            progress((k + 1) / 4, f"page {k + 1}")
        assert steps[3].wait(WAIT)
        return "report.pdf"

    s = stack(memory_url).serve()
    s.worker(handler)
    client = s.client()
    job = client.submit({"pages": 4})
    seen = []
    for doc in client.events(job.id, timeout=WAIT):  # ends when the server closes the stream
        if doc["status"] == "queued":
            continue
        done = doc["progress"]["done"] if doc["progress"] else 0.0
        seen.append((doc["status"], done))
        if doc["status"] == "running":
            steps[int(done * 4)].set()  # let the handler take its next step only after we saw this one
    assert seen == [("running", 0.0), ("running", 0.25), ("running", 0.5), ("running", 0.75), ("succeeded", 1.0)]
    # A stream opened on a finished job sends its one terminal event and ends.
    assert [d["status"] for d in client.events(job.id, timeout=WAIT)] == ["succeeded"]
    assert s.http.get(f"/jobs/{uuid.uuid4().hex}/events").status_code == 404


# --- cancellation -----------------------------------------------------------------------------------------------

def test_cancelled_queued_job_never_runs(url: str, stack: Callable[[str], Stack]) -> None:
    s = stack(url).serve()
    client = s.client()
    jobs = [client.submit({"n": n}).id for n in range(3)]  # no worker yet: all three wait in the queue
    cancelled = s.http.delete(f"/jobs/{jobs[1]}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert s.http.delete(f"/jobs/{jobs[1]}").status_code == 409  # already final
    assert s.http.delete(f"/jobs/{uuid.uuid4().hex}").status_code == 404
    ran: list[int] = []
    worker = s.worker(lambda job, progress: ran.append(job.input["n"]) or job.input["n"])
    outcomes = [client.wait(j, timeout=WAIT) for j in jobs]
    assert [o.status for o in outcomes] == ["succeeded", "cancelled", "succeeded"]
    wait_until(lambda: worker.stats().skipped == 1, "the worker skipping the cancelled job's message")
    assert sorted(ran) == [0, 2]  # the cancelled job's handler never ran
    assert outcomes[1].attempts == 0 and outcomes[1].document["started"] is None


def test_cancel_running_job_stops_it_at_a_progress_report(memory_url: str, stack: Callable[[str], Stack]) -> None:
    reports: list[float] = []
    stopped: list[str] = []

    def handler(job: Job, progress: Callable[..., None]) -> str:
        try:
            for i in range(1, 3001):
                reports.append(i / 3000)
                progress(i / 3000)
                time.sleep(0.01)
        except JobCancelled:
            stopped.append(job.id)
            raise
        return "finished anyway"

    s = stack(memory_url).serve()
    worker = s.worker(handler)
    job = s.client().submit("long")
    wait_until(lambda: len(reports) >= 3, "the handler reporting progress")
    answer = s.http.delete(f"/jobs/{job.id}")
    assert answer.status_code == 202 and answer.json()["cancel_requested"] is True
    final = wait_until(lambda: (d := s.doc(job.id))["status"] == "cancelled" and d, "the job cancelled")
    assert stopped == [job.id] and worker.stats().cancelled == 1
    assert final["progress"]["done"] < 1.0 and len(reports) < 3000


def test_higher_priority_jobs_run_first(memory_url: str, stack: Callable[[str], Stack]) -> None:
    s = stack(memory_url).serve()
    client = s.client()
    jobs = [client.submit(f"p{p}", priority=p).id for p in (0, 5, 1, 9)]  # all wait: no worker yet
    order: list[str] = []
    s.worker(lambda job, progress: order.append(job.input))
    for job_id in jobs:
        client.wait(job_id, timeout=WAIT)
    assert order == ["p9", "p5", "p1", "p0"]


def test_full_queue_answers_503(memory_url: str, stack: Callable[[str], Stack]) -> None:
    s = stack(memory_url).serve(max_queued=2)
    codes = [s.http.post("/jobs", json={"input": n}).status_code for n in range(3)]
    assert codes == [202, 202, 503]
    full = s.http.post("/jobs", json={"input": 3})
    assert full.headers["retry-after"] == "5" and "too many jobs" in full.json()["error"]
    assert s.manager.stats().jobs["queued"] == 2  # a refused job leaves no record behind


def test_handler_error_retried_when_allowed(memory_url: str, stack: Callable[[str], Stack]) -> None:
    def flaky(job: Job, progress: Callable[..., None]) -> int:
        if job.attempt == 1:
            raise ConnectionError("warehouse database away")
        return job.attempt

    s = stack(memory_url).serve()
    worker = s.worker(flaky, retries=1, retry=RetryPolicy(base=0.01, jitter=False))
    outcome = s.client().run(None, timeout=WAIT)
    assert (outcome.status, outcome.result, outcome.attempts) == ("succeeded", 2, 2)
    stats = worker.stats()
    assert (stats.failed, stats.retried, stats.processed) == (1, 1, 1)


def test_store_rules(tmp_path: Path) -> None:
    from ringbus.patterns.async_request_reply import JobStore

    store = JobStore(tmp_path / "jobs.sqlite3")
    try:
        store.create("a", None, now=100.0)
        store.create("b", "https://hooks.example.com/x", now=100.0)
        assert store.start("a", 1, now=101.0)[0] is True
        assert store.finish("a", "succeeded", b"1", "application/json", None, now=102.0)[0] is True
        assert store.finish("a", "failed", None, None, "late duplicate", now=103.0)[0] is False  # first wins
        assert store.start("a", 2, now=104.0)[0] is False  # a redelivery of a finished job does not run
        assert store.cancel("b", now=105.0)[0] == "cancelled"
        assert store.start("b", 1, now=106.0)[0] is False  # a cancelled queued job never runs
        assert store.get("b").hook_state == "pending"  # type: ignore[union-attr]  # its webhook is still due
        assert store.purge(finished_before=200.0) == 1  # a is purged; b waits for its webhook
        assert store.get("a") is None and store.get("b") is not None
        assert [r.id for r in store.claim_webhooks(now=200.0, limit=5, lease=30.0)] == ["b"]
        assert store.claim_webhooks(now=201.0, limit=5, lease=30.0) == []  # leased: not claimed twice
    finally:
        store.close()


# --- security ---------------------------------------------------------------------------------------------------

def test_bearer_token_required_when_configured(memory_url: str, stack: Callable[[str], Stack]) -> None:
    s = stack(memory_url).serve(token="s3cr3t-token")
    s.worker(lambda job, progress: "ok")
    anonymous = httpx.Client(base_url=s.server.url, timeout=10.0)
    try:
        missing = anonymous.post("/jobs", json={"input": 1})
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"] == 'Bearer realm="ringbus"'
        wrong = anonymous.get(f"/jobs/{uuid.uuid4().hex}", headers={"Authorization": "Bearer s3cr3t-tokem"})
        assert wrong.status_code == 401 and 'error="invalid_token"' in wrong.headers["www-authenticate"]
        assert anonymous.post("/jobs", headers={"Authorization": "Basic czNjcjN0LXRva2Vu"}).status_code == 401
        assert anonymous.get("/healthz").status_code == 200  # the health check stays open
        assert anonymous.get("/jobs/healthz").status_code == 401  # ... and only it
        assert anonymous.get("/stats").status_code == 401
    finally:
        anonymous.close()
    assert s.manager.stats().submitted == 0
    assert s.client("s3cr3t-token").run(None, timeout=WAIT).result == "ok"
    assert s.http.get("/stats").json()["submitted"] == 1
    with pytest.raises(ringbus.RingbusError, match="401"):
        s.client("wrong").submit(1)


def test_oversized_body_gets_413(memory_url: str, stack: Callable[[str], Stack]) -> None:
    s = stack(memory_url).serve(max_body=1024)
    big = json.dumps({"input": "x" * 2000}).encode()
    assert s.http.post("/jobs", content=big, headers={"Content-Type": "application/json"}).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        for i in range(0, len(big), 256):
            yield big[i:i + 256]

    chunked = s.http.post("/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert chunked.status_code == 413
    assert s.http.post("/jobs", json={"input": "x" * 900}).status_code == 202
    assert s.http.post("/jobs", content=b"x", headers={"Content-Type": "text/plain"}).status_code == 415
    assert s.http.post("/jobs", json={"input": 1, "callbak_url": "typo"}).status_code == 400
    assert s.http.post("/jobs", content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 400
    assert s.manager.stats().submitted == 1


# --- crashed workers --------------------------------------------------------------------------------------------

class Crash(BaseException):
    """What a handler raises to kill its worker thread without settling the job (as a crash would)."""


def test_job_of_a_crashed_worker_thread_is_retried(memory_url: str, stack: Callable[[str], Stack]) -> None:
    def handler(job: Job, progress: Callable[..., None]) -> dict[str, int]:
        progress(0.5, f"attempt {job.attempt}")
        if job.attempt == 1:
            raise Crash("the worker dies here")
        return {"attempt": job.attempt}

    s = stack(memory_url).serve()
    worker = s.worker(handler, threads=2)
    outcome = s.client().run({"report": "daily"}, timeout=WAIT)
    assert (outcome.status, outcome.result, outcome.attempts) == ("succeeded", {"attempt": 2}, 2)
    assert worker.stats().crashed == 1 and worker.alive == 1
    assert s.manager.stats().retried == 1


WORKER_PROCESS = """
import sys, time
from ringbus.patterns.async_request_reply import JobWorker

def handler(job, progress):
    progress(0.5, "halfway, then hangs")
    time.sleep(120)

JobWorker(sys.argv[1], handler, queue=sys.argv[2], progress_interval=0).run()
"""


def test_job_of_a_killed_worker_process_is_retried(thread_broker: str, stack: Callable[[str], Stack]) -> None:
    s = stack(thread_broker).serve()
    child = subprocess.Popen([sys.executable, "-c", WORKER_PROCESS, thread_broker, s.queue], env=python_env())
    try:
        job = s.client().submit({"report": "monthly"})
        wait_until(lambda: (s.doc(job.id)["progress"] or {}).get("done") == 0.5, "the worker process halfway")
        assert s.doc(job.id)["attempts"] == 1
        child.send_signal(signal.SIGKILL)
        assert child.wait(10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
    s.worker(lambda job, progress: {"attempt": job.attempt})  # the broker sees the dead consumer and redelivers
    outcome = s.client().wait(job.id, timeout=WAIT)
    assert (outcome.status, outcome.result, outcome.attempts) == ("succeeded", {"attempt": 2}, 2)


def test_job_that_kills_every_worker_fails_after_max_attempts(memory_url: str,
                                                              stack: Callable[[str], Stack]) -> None:
    calls: list[int] = []

    def handler(job: Job, progress: Callable[..., None]) -> None:
        calls.append(job.attempt)
        raise Crash("dies every time")

    s = stack(memory_url).serve(max_attempts=2)
    s.worker(handler, threads=2)
    outcome = s.client().wait(s.client().submit("poison").id, timeout=WAIT)
    assert outcome.status == "failed" and "dead-lettered (max_attempts)" in (outcome.error or "")
    assert calls == [1, 2] and outcome.attempts == 2
    assert s.manager.stats().dead_lettered == 1


# --- the command and the example --------------------------------------------------------------------------------

def test_serve_http_command_runs_jobs(tmp_path: Path) -> None:
    command = [sys.executable, "-c", "import sys; from ringbus.http import main; sys.exit(main(sys.argv[1:]))",
               "--bind", "127.0.0.1:0", "--token", "cli-token", "--retry-after", "0", "--log-level", "warning",
               "--data", str(tmp_path / "data")]
    with open(tmp_path / "stderr.txt", "w+") as errors, \
            subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True, env=python_env()) as child:
        try:
            assert child.stdout is not None
            ready = child.stdout.readline()
            assert ready.startswith("ringbus serve-http: listening on http://127.0.0.1:"), ready
            base = ready.split("listening on ")[1].split()[0]
            with JobClient(base, "cli-token") as client:
                outcome = client.run({"steps": 3, "delay": 0.01}, timeout=WAIT)
            assert (outcome.status, outcome.result["steps"], outcome.document["progress"]["done"]) == \
                ("succeeded", 3, 1.0)
            child.send_signal(signal.SIGTERM)
            assert child.wait(20) == 0  # a graceful stop: workers, manager and broker closed, then exit 0
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(10)
            errors.seek(0)
            print(errors.read())
    assert (tmp_path / "data" / "jobs.sqlite3").exists() and (tmp_path / "data" / "broker").is_dir()


def test_doc_sample_runs() -> None:
    doc = (ROOT / "docs" / "patterns" / "async-request-reply.md").read_text()
    sample = doc.split("## A short example", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(sample, "async-request-reply.md", "exec"), {})  # it asserts its own outcome


def test_report_jobs_example_runs() -> None:
    output = run_example("report_jobs_http.py")
    assert "POST /jobs -> 202 Accepted" in output and "-> 303 See Other" in output
    assert "webhook signature verified: 3 of 3" in output

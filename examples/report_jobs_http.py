"""Report jobs over HTTP: asynchronous request-reply with ringbus (202 Accepted, poll, 303 See Other, webhook).

A reporting service takes a few seconds to build a sales report, too long for
one HTTP request. Clients POST the request and get 202 Accepted at once with
the job's URL; workers on a Bus queue build the report, reporting progress; the
client polls (waiting what Retry-After says) until 303 See Other points at the
result, and a webhook receiver gets the finished report pushed to it, signed
with HMAC-SHA256.

Everything runs in this process: an embedded broker in a thread (temporary
data directory), the job server on a free port of 127.0.0.1, two worker
threads, and the webhook receiver. Run: python examples/report_jobs_http.py
"""

from __future__ import annotations

import http.server
import json
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

import ringbus
from ringbus.http import JobClient, JobServer, create_app
from ringbus.patterns import RetryPolicy
from ringbus.patterns.async_request_reply import JobManager, JobWorker
from ringbus.patterns.webhooks import SIGNATURE_HEADER, WebhookPolicy, verify_signature

SECRET = "report-hooks-secret"
STORES = 6


def build_report(job, progress):
    """The slow part: aggregate each store's orders for the month, reporting progress after each store."""
    spec = job.input
    rng = random.Random(f"{spec['region']}/{spec['month']}")
    orders = revenue = 0
    for store in range(1, STORES + 1):
        time.sleep(0.25)  # reading the store's ledger
        n = rng.randint(150, 400)
        orders += n
        revenue += round(sum(rng.uniform(5, 120) for _ in range(n)), 2)
        progress(store / STORES, f"aggregated {store} of {STORES} stores")
    return {"region": spec["region"], "month": spec["month"], "stores": STORES, "orders": orders,
            "revenue": round(revenue, 2)}


class WebhookReceiver:
    """The client's own endpoint that the job server calls when a report is ready."""

    def __init__(self) -> None:
        self.received: list[tuple[bool, dict]] = []
        self.done = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers["Content-Length"]))
                verified = verify_signature(SECRET, self.headers.get(SIGNATURE_HEADER), body)
                self.send_response(204 if verified else 401)
                self.end_headers()
                with receiver.done:
                    receiver.received.append((verified, json.loads(body)))
                    receiver.done.notify_all()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/report-ready"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True).start()

    def wait_for(self, count: int, timeout: float) -> None:
        with self.done:
            self.done.wait_for(lambda: len(self.received) >= count, timeout)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def main() -> int:
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ringbus-reports-") as tmp, \
            ringbus.Broker(Path(tmp) / "broker", "tcp://127.0.0.1:0") as broker:
        # Webhooks to 127.0.0.1 over http are refused by default; this demo's receiver lives there.
        hooks = WebhookPolicy(secret=SECRET, allow_http=True, allow_loopback=True,
                              retry=RetryPolicy(base=0.2, max_delay=2.0))
        manager = JobManager(broker.endpoint, queue="reports", store=Path(tmp) / "jobs.sqlite3",
                             webhooks=hooks).start()
        workers = JobWorker(broker.endpoint, build_report, queue="reports", threads=3).start()
        server = JobServer(create_app(manager, token="demo-token", retry_after=1)).start()
        receiver = WebhookReceiver()
        print(f"embedded broker {broker.endpoint}; job server {server.url}; 3 worker threads; webhook receiver "
              f"{receiver.url}")
        try:
            # 1. The protocol by hand, with plain httpx: 202, polls, 303, result.
            with httpx.Client(base_url=server.url, headers={"Authorization": "Bearer demo-token"}) as http:
                answer = http.post("/jobs", json={"input": {"region": "emea", "month": "2024-05"}})
                print(f"POST /jobs -> {answer.status_code} {answer.reason_phrase}; Location: "
                      f"{answer.headers['location']}; Retry-After: {answer.headers['retry-after']}")
                location = answer.headers["location"]
                while True:
                    time.sleep(int(answer.headers.get("retry-after", 1)))
                    answer = http.get(location)
                    doc = answer.json()
                    progress = doc["progress"] or {}
                    print(f"GET {location} -> {answer.status_code} {answer.reason_phrase}; status {doc['status']}"
                          + (f", {progress['done']:.0%} ({progress['message']})" if progress else ""))
                    if answer.status_code == 303:
                        break
                result = http.get(answer.headers["location"])
                print(f"GET {answer.headers['location']} -> {result.status_code}: {result.json()}")

            # 2. The client helper, with webhooks: submit three reports, then wait for them.
            with JobClient(server.url, token="demo-token") as client:
                regions = ["amer", "apac", "latam"]
                submitted = [client.submit({"region": r, "month": "2024-05"}, callback_url=receiver.url)
                             for r in regions]
                with ThreadPoolExecutor(len(submitted)) as pool:  # one client, waited on from three threads
                    outcomes = list(pool.map(lambda s: client.wait(s, timeout=30), submitted))
            for outcome in outcomes:
                r = outcome.result
                print(f"JobClient: {r['region']} report {outcome.status} after {outcome.polls} poll(s), slept "
                      f"{list(outcome.waits)} s as Retry-After asked: {r['orders']} orders, {r['revenue']:,.2f} EUR")
            receiver.wait_for(len(submitted), timeout=20)
            for verified, body in receiver.received:
                print(f"webhook: job {body['id'][:8]} {body['status']}, signature "
                      f"{'verified' if verified else 'BAD'}, {body['result']['region']} revenue "
                      f"{body['result']['revenue']:,.2f}")
            good = sum(verified for verified, _ in receiver.received)
            print(f"webhook signature verified: {good} of {len(submitted)}")
            stats = manager.stats()
            print(f"summary: {stats.jobs['succeeded']} jobs succeeded, {stats.jobs['failed']} failed; "
                  f"{stats.webhooks_delivered} webhook(s) delivered; {time.monotonic() - started:.1f} s")
            ok = good == len(submitted) and stats.jobs["succeeded"] == len(submitted) + 1
        finally:
            receiver.close()
            server.stop()
            workers.stop()
            manager.close()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

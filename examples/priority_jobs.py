"""Priority queue: one-time-password messages must not wait behind the nightly report jobs.

A batch of report jobs (6 ms of work each) lands at once; meanwhile users log
in and each login needs an OTP code sent now (1 ms of work, 100 per second).
One worker handles both. The script runs the same traffic three ways and
prints how long each class waited (p50, p99, max):

- fifo:       one plain queue - an OTP waits behind every report queued before it;
- priorities: design (a), one queue, OTPs at a higher priority, reports aged after --max-wait seconds;
- weighted:   design (b), a queue per class, served 8:1 (OTP:report), never idle while either has work.

    python examples/priority_jobs.py                     # embedded broker in a temp dir
    python examples/priority_jobs.py --url memory://     # or in this process only
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from contextlib import ExitStack
from typing import Callable

import ringbus
from ringbus.patterns.priority import (LEVEL_HEADER, SENT_AT_HEADER, PriorityConsumer, PrioritySender,
                                       WeightedConsumer)

WORK = {"otp": 0.001, "report": 0.006}  # seconds of work per message


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="bus url (default: an embedded broker in a temporary directory)")
    parser.add_argument("--seconds", type=float, default=3.0, help="how long logins keep coming, per design")
    parser.add_argument("--otp-rate", type=float, default=100.0, help="OTP messages per second")
    parser.add_argument("--reports", type=int, default=0, help="report jobs in the batch (default 100 x seconds)")
    parser.add_argument("--max-wait", type=float, default=10.0, help="seconds before a report is aged (design a)")
    args = parser.parse_args()
    args.reports = args.reports or int(100 * args.seconds)
    with ExitStack() as stack:
        url = args.url
        if url is None:
            data = stack.enter_context(tempfile.TemporaryDirectory(prefix="ringbus-broker-"))
            url = stack.enter_context(ringbus.Broker(data, "tcp://127.0.0.1:0")).endpoint
        print(f"{args.reports} report jobs at once, then OTP codes at {args.otp_rate:g}/s for {args.seconds:g} s; "
              f"one worker; waits in ms")
        print(f"{'design':<11} {'class':<7} {'count':>5} {'p50':>8} {'p99':>8} {'max':>8}")
        for design in (fifo, priorities, weighted):
            waits, note = design(url, args)
            for level in ("otp", "report"):
                values = sorted(waits[level])
                p50 = statistics.median(values) * 1000
                p99 = values[max(0, round(0.99 * len(values)) - 1)] * 1000
                print(f"{design.__name__:<11} {level:<7} {len(values):>5} {p50:>8.1f} {p99:>8.1f} "
                      f"{values[-1] * 1000:>8.1f}")
            if note:
                print(f"{'':<11} {note}")


class Recorder:
    """The worker's handler: does the work, records each message's wait by class."""

    def __init__(self, expected: int) -> None:
        self.waits: dict[str, list[float]] = {"otp": [], "report": []}
        self.expected = expected
        self.done = threading.Event()

    def __call__(self, message: ringbus.Message) -> None:
        level = str(message.headers[LEVEL_HEADER])
        self.waits[level].append(time.time() - float(message.headers[SENT_AT_HEADER]))  # type: ignore[arg-type]
        time.sleep(WORK[level])
        if sum(map(len, self.waits.values())) == self.expected:
            self.done.set()


def traffic(send: Callable[[bytes, str], object], args: argparse.Namespace) -> None:
    """The report batch, then logins at ``otp_rate`` for ``seconds``."""
    for i in range(args.reports):
        send(b'{"report": %d}' % i, "report")
    start = time.monotonic()
    for i in range(int(args.otp_rate * args.seconds)):
        time.sleep(max(0.0, start + i / args.otp_rate - time.monotonic()))
        send(b'{"user": %d, "code": "%06d"}' % (i, i * 7919 % 1_000_000), "otp")


def expected(args: argparse.Namespace) -> int:
    return args.reports + int(args.otp_rate * args.seconds)


def fifo(url: str, args: argparse.Namespace) -> tuple[dict[str, list[float]], str]:
    queue = f"jobs-{uuid.uuid4().hex[:8]}"
    recorder = Recorder(expected(args))
    stop = threading.Event()

    def worker() -> None:
        with ringbus.connect(url) as own:
            while not stop.is_set():
                for message in own.consume(queue, prefetch=1, timeout=0.25):
                    recorder(message)
                    message.ack()

    with ringbus.connect(url) as bus:
        bus.declare_queue(queue)
        thread = threading.Thread(target=worker, daemon=True)
        thread.start()
        traffic(lambda body, level: bus.send(queue, body, headers={LEVEL_HEADER: level,
                                                                   SENT_AT_HEADER: time.time()}), args)
        recorder.done.wait(60.0)
        stop.set()
        thread.join(5.0)
    return recorder.waits, ""


def priorities(url: str, args: argparse.Namespace) -> tuple[dict[str, list[float]], str]:
    queue = f"jobs-{uuid.uuid4().hex[:8]}"
    levels = {"otp": 2, "report": 0}
    recorder = Recorder(expected(args))
    with ringbus.connect(url) as bus:
        sender = PrioritySender(bus, queue, levels=levels, max_wait=args.max_wait)
        sender.declare(max_length=100_000)
        with PriorityConsumer(url, queue, recorder, levels=levels) as consumer:
            traffic(sender.send, args)
            recorder.done.wait(60.0)
    return recorder.waits, f"(reports aged past {args.max_wait:g} s: {consumer.stats().aged})"


def weighted(url: str, args: argparse.Namespace) -> tuple[dict[str, list[float]], str]:
    prefix = f"jobs-{uuid.uuid4().hex[:8]}"
    queues = {"otp": f"{prefix}.otp", "report": f"{prefix}.report"}
    recorder = Recorder(expected(args))
    with ringbus.connect(url) as bus:
        sender = PrioritySender(bus, queues)
        sender.declare(max_length=100_000)
        with WeightedConsumer(url, {queues["otp"]: 8, queues["report"]: 1}, recorder, max_wait=args.max_wait):
            traffic(sender.send, args)
            recorder.done.wait(60.0)
    return recorder.waits, "(OTP:report turns 8:1 while both have work)"


if __name__ == "__main__":
    main()

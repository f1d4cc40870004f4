"""Queue-based load leveling: order-confirmation emails at most 50/s while a flash sale bursts 500 orders/s.

The mail provider allows 50 messages per second. Checkout puts one "send the
confirmation" message per order on a bounded queue and returns at once; a
LevelledConsumer sends the emails at no more than 50/s, 4 at a time. The
flash sale's burst waits in the queue and drains after it.

Every quarter second the script records the arrival rate (orders/s), the
processing rate (emails/s) and the queue depth, prints them, and plots the
three series to a PNG (matplotlib, if installed).

    python examples/load_leveling.py                      # embedded broker in a temp dir
    python examples/load_leveling.py --url memory://      # or in this process only
    python examples/load_leveling.py --out levelling.png --burst-seconds 2
"""

from __future__ import annotations

import argparse
import bisect
import os
import tempfile
import threading
import time
from contextlib import ExitStack

import ringbus
from ringbus.patterns.load_leveling import LevelledConsumer, LevelledProducer

SAMPLE = 0.25  # seconds between two samples of the three series


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="bus url (default: an embedded broker in a temporary directory)")
    parser.add_argument("--rate", type=float, default=50.0, help="emails per second the provider allows")
    parser.add_argument("--concurrency", type=int, default=4, help="emails being sent at once")
    parser.add_argument("--base-rate", type=float, default=10.0, help="orders per second outside the sale")
    parser.add_argument("--burst-rate", type=float, default=500.0, help="orders per second during the sale")
    parser.add_argument("--burst-seconds", type=float, default=1.2, help="length of the burst")
    parser.add_argument("--max-length", type=int, default=2000, help="most emails the queue holds")
    parser.add_argument("--out", help="PNG to write (default: in a new temporary directory)")
    args = parser.parse_args()
    out = args.out or os.path.join(tempfile.mkdtemp(prefix="ringbus-levelling-"), "load_leveling.png")

    with ExitStack() as stack:
        url = args.url
        if url is None:
            data = stack.enter_context(tempfile.TemporaryDirectory(prefix="ringbus-broker-"))
            url = stack.enter_context(ringbus.Broker(data, "tcp://127.0.0.1:0")).endpoint
        run(url, args, out)


def run(url: str, args: argparse.Namespace, out: str) -> None:
    queue = "order-emails"
    bus = ringbus.connect(url)
    bus.declare_queue(queue, max_length=args.max_length)  # the memory bound: senders get ringbus.Full beyond it

    sent_at: list[float] = []  # when each email went out (monotonic)
    lock = threading.Lock()

    def send_email(message: ringbus.Message) -> None:
        time.sleep(0.004)  # the provider's API call
        with lock:
            sent_at.append(time.monotonic())

    consumer = LevelledConsumer(url, queue, send_email, rate=args.rate, concurrency=args.concurrency).start()
    t0 = time.monotonic()
    burst = (1.0, 1.0 + args.burst_seconds)
    drained = threading.Event()
    accepted = [0]
    backoffs = [0]

    def checkout() -> None:
        """Orders at base rate, then the flash sale, then base rate again until the backlog is gone."""
        with ringbus.connect(url) as own:
            producer = LevelledProducer(own, queue, timeout=10.0)
            due = 0.0
            last = t0
            while not drained.is_set():
                now = time.monotonic()
                t = now - t0
                due += (now - last) * (args.burst_rate if burst[0] <= t < burst[1] else args.base_rate)
                last = now
                while due >= 1.0:
                    producer.send(b'{"order": %d, "email": "buyer@example.com"}' % accepted[0])
                    accepted[0] += 1
                    due -= 1.0
                time.sleep(0.002)
            backoffs[0] = producer.backoffs

    producer_thread = threading.Thread(target=checkout, daemon=True)
    producer_thread.start()

    samples: list[tuple[float, int, int, int]] = []  # t, orders accepted, emails sent, depth
    print(f"orders at {args.base_rate:g}/s, a flash sale of {args.burst_rate:g}/s for {args.burst_seconds:g} s "
          f"from t=1 s; emails at most {args.rate:g}/s, {args.concurrency} at a time; queue bound {args.max_length}")
    print(f"{'t (s)':>6} {'orders/s':>9} {'emails/s':>9} {'depth':>6}")
    try:
        while True:
            time.sleep(SAMPLE)
            t = time.monotonic() - t0
            depth = bus.queue_stats(queue).depth
            with lock:
                emails = len(sent_at)
            samples.append((t, accepted[0], emails, depth))
            if len(samples) % 4 == 0:
                arrivals, processed = rates(samples, 4)
                print(f"{t:6.2f} {arrivals:9.1f} {processed:9.1f} {depth:6d}")
            if t > burst[1] + 1.0 and depth == 0 and emails >= accepted[0] - args.concurrency:
                drained.set()
                break
            if t > 120:
                raise SystemExit("the queue did not drain within 120 s")
    finally:
        drained.set()
        producer_thread.join(15.0)
        deadline = time.monotonic() + 10.0
        while len(sent_at) < accepted[0] and time.monotonic() < deadline:  # the last few orders
            time.sleep(0.05)
        consumer.stop()
        bus.close()

    with lock:
        times = sorted(sent_at)
    stats = consumer.stats()
    peak_1s = max(bisect.bisect_right(times, t + 1.0) - i for i, t in enumerate(times)) if times else 0
    peak_depth = max(s[3] for s in samples)
    peak_arrivals = max(rates(samples[: i + 1], 4)[0] for i in range(4, len(samples)))
    drained_at = next(s[0] for s in samples if s[0] > burst[1] and s[3] == 0)
    print(f"{accepted[0]} orders accepted (peak {peak_arrivals:.0f}/s over 1 s), {stats.processed} emails sent; "
          f"most emails in any 1 s: {peak_1s} (limit {args.rate:g}/s + burst {consumer.bucket.burst:g}); "
          f"at most {stats.peak_concurrency} at once (limit {args.concurrency})")
    print(f"queue depth peaked at {peak_depth} of {args.max_length}; the backlog drained at t={drained_at:.1f} s; "
          f"producer waits on a full queue: {backoffs[0]}; throttled: {stats.throttled}")
    plot(samples, out, args)


def rates(samples: list[tuple[float, int, int, int]], span: int) -> tuple[float, float]:
    """Arrivals and emails per second over the last ``span`` samples."""
    (t_a, a_a, e_a, _), (t_b, a_b, e_b, _) = samples[max(0, len(samples) - 1 - span)], samples[-1]
    dt = t_b - t_a or SAMPLE
    return (a_b - a_a) / dt, (e_b - e_a) / dt


def plot(samples: list[tuple[float, int, int, int]], out: str, args: argparse.Namespace) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed, so no plot was drawn (pip install matplotlib, or the 'examples' extra)")
        return
    t = [s[0] for s in samples[1:]]
    arrivals = [(b[1] - a[1]) / (b[0] - a[0]) for a, b in zip(samples, samples[1:])]
    processed = [(b[2] - a[2]) / (b[0] - a[0]) for a, b in zip(samples, samples[1:])]
    depth = [s[3] for s in samples[1:]]
    fig, left = plt.subplots(figsize=(9, 4.5))
    left.plot(t, arrivals, label="arrivals (orders/s)", color="tab:orange")
    left.plot(t, processed, label="processing (emails/s)", color="tab:blue")
    left.axhline(args.rate, color="tab:blue", linestyle=":", linewidth=1, label=f"rate limit {args.rate:g}/s")
    left.set_xlabel("time (s)")
    left.set_ylabel("messages per second")
    right = left.twinx()
    right.plot(t, depth, label="queue depth", color="tab:green")
    right.set_ylabel("queue depth (messages)")
    lines = left.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
    left.legend(lines, [line.get_label() for line in lines], loc="upper right")
    left.set_title("Queue-based load leveling: a flash sale drained at the provider's rate")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    print(f"plot saved to {out}")


if __name__ == "__main__":
    main()

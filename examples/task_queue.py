"""Work queues, the classic "task_queue": a producer sends tasks, worker processes share them, ack after work.

Each dot in a task's text stands for a tenth of a second of work. The queue is
durable, each worker takes one task at a time (``prefetch=1``: a busy worker
is not handed more) and acks it only when done, so a worker killed mid-task
leaves its task to the other.

    python examples/task_queue.py                              # the whole demo: broker, 2 workers, 10 tasks

    ringbus broker                                             # or by hand: terminal 1
    python examples/task_queue.py worker                       # terminals 2 and 3 (Ctrl-C stops one)
    python examples/task_queue.py send "First task." "Second task.."   # terminal 4

The code is the same on ``memory://`` (threads of one process) - only the url changes.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import ringbus
from ringbus.message import Message
from ringbus.patterns.messaging import Consumer, Producer

QUEUE = "task_queue"
DOT = 0.1  # seconds of work per dot
URL = "tcp://127.0.0.1:5555"  # where `ringbus broker` listens by default


def send(url: str, tasks: list[str]) -> None:
    """new_task.py: one durable message per task."""
    with Producer(url, QUEUE, durable=True) as producer:
        for task in tasks:
            producer.send(task)
            print(f" [x] Sent {task!r}", flush=True)


def worker(url: str) -> None:
    """worker.py: take a task, do it, ack it; until Ctrl-C or SIGTERM (the task in hand is finished first)."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.set())

    def callback(message: Message) -> None:
        task = bytes(message.body).decode()
        print(f" [x] Received {task!r}", flush=True)
        time.sleep(task.count(".") * DOT)
        print(" [x] Done", flush=True)

    with Consumer(url, QUEUE, prefetch=1, durable=True) as consumer:
        print(" [*] Waiting for messages. To exit press CTRL+C", flush=True)
        done = consumer.run(callback, stop=stop)
    print(f" [*] worker {os.getpid()} stopped after {done} task(s)", flush=True)


def demo() -> int:
    """A broker in a thread (temporary data directory), two worker processes, ten tasks."""
    tasks = [f"Task {i} " + "." * (1 + i % 3) for i in range(1, 11)]
    with tempfile.TemporaryDirectory(prefix="task-queue-") as data, \
            ringbus.Broker(data, "tcp://127.0.0.1:0") as broker:
        url = broker.endpoint
        workers = [subprocess.Popen([sys.executable, __file__, "worker", "--url", url], stdout=subprocess.PIPE,
                                    text=True) for _ in range(2)]
        outputs: list[list[str]] = [[] for _ in workers]
        waiting = threading.Semaphore(0)

        def read(i: int) -> None:
            for line in workers[i].stdout:  # type: ignore[union-attr]
                outputs[i].append(line.rstrip())
                print(f"worker {i + 1}: {line.rstrip()}", flush=True)
                if "Waiting for messages" in line:
                    waiting.release()

        readers = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(len(workers))]
        for reader in readers:
            reader.start()
        try:
            for _ in workers:  # both consume before the first task goes out: then they share them
                if not waiting.acquire(timeout=20.0):
                    raise RuntimeError("a worker did not start within 20 s")
            send(url, tasks)
            with ringbus.connect(url) as bus:
                deadline = time.monotonic() + 25.0
                while (stats := bus.queue_stats(QUEUE)).acked < len(tasks) and time.monotonic() < deadline:
                    time.sleep(0.05)
        finally:
            for process in workers:
                process.send_signal(signal.SIGTERM)
            codes = [process.wait(10.0) for process in workers]
            for reader in readers:
                reader.join(5.0)
        done = [sum(line == " [x] Done" for line in lines) for lines in outputs]
        print(f"sent {len(tasks)} tasks; acked {stats.acked} of {len(tasks)}, {stats.depth} left in the queue, "
              f"{stats.redelivered} redelivered")
        print("tasks per worker: " + ", ".join(f"worker {i + 1} did {n}" for i, n in enumerate(done))
              + f"; exit codes {codes}")
        return 0 if stats.acked == len(tasks) and codes == [0, 0] else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    run = commands.add_parser("worker", help="work tasks until Ctrl-C")
    run.add_argument("--url", default=URL, help=f"the broker (default {URL})")
    new = commands.add_parser("send", help="send tasks")
    new.add_argument("--url", default=URL, help=f"the broker (default {URL})")
    new.add_argument("tasks", nargs="*", default=["Hello World..."], help="task texts; each dot is 0.1 s of work")
    args = parser.parse_args()
    if args.command == "worker":
        worker(args.url)
        return 0
    if args.command == "send":
        send(args.url, args.tasks)
        return 0
    return demo()


if __name__ == "__main__":
    sys.exit(main())

"""A durable subscriber in a process of its own, for the kill -9 test of test_pubsub.

``python pubsub_child.py URL PATTERN GROUP OUT``: appends ``<topic> <seq>`` of every event it handles to OUT
(flushed before the event is acked), prints ``ready`` once attached, and runs until killed or its stdin closes.
"""

from __future__ import annotations

import sys

from ringbus.patterns.pubsub import SEQUENCE_HEADER, Subscriber, topic_of


def main(url: str, pattern: str, group: str, out: str) -> None:
    with open(out, "a", buffering=1) as file:
        def handle(message: object) -> None:
            file.write(f"{topic_of(message)} {message.headers[SEQUENCE_HEADER]}\n")  # type: ignore[attr-defined]
            file.flush()

        subscriber = Subscriber(url, pattern, handle, group=group, durable=True).start()
        print("ready", flush=True)
        sys.stdin.read()
        subscriber.stop()


if __name__ == "__main__":
    main(*sys.argv[1:5])

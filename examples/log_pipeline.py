"""Pipes and filters: web-server access logs through parse -> enrich -> aggregate, with parse in 2 processes.

A day of synthetic access-log lines (Apache "combined" format, about 1% of them torn or garbled, as real
logs have) goes through three stages, each in processes of its own joined by shared-memory channels:

- parse (2 processes): a line -> a record, or an exception for a malformed line, which goes to the
  dead-letter sink with the stage's name and the error while the rest flow on;
- enrich: status class, site section, client network;
- aggregate: a stream stage that counts everything and yields one summary at the end.

Run: python examples/log_pipeline.py [lines]
"""

from __future__ import annotations

import random
import re
import sys
import time
from collections import Counter
from typing import Any, Iterator

from ringbus.patterns.pipeline import DeadLetter, Pipeline, Stage

LINE = re.compile(r'^(\S+) \S+ \S+ \[([^\]]+)\] "(\S+) (\S+) HTTP/[\d.]+" (\d{3}) (\d+|-) "[^"]*" "([^"]*)"$')
PATHS = ["/", "/products/42", "/products/7", "/cart", "/checkout", "/api/search", "/api/stock", "/static/app.js",
         "/static/logo.png", "/login"]
AGENTS = ["Mozilla/5.0 (X11; Linux x86_64)", "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0)", "curl/8.4.0",
          "Googlebot/2.1"]


def synthetic_log(n: int, seed: int = 7) -> Iterator[str]:
    """``n`` access-log lines; about 1 in 100 is malformed (cut short, or with a bad status)."""
    rng = random.Random(seed)
    for i in range(n):
        ip = f"10.{rng.randrange(4)}.{rng.randrange(256)}.{rng.randrange(1, 255)}"
        status = rng.choices([200, 301, 304, 404, 500, 503], weights=[80, 3, 8, 6, 2, 1])[0]
        size = rng.randrange(200, 50_000) if status == 200 else 0
        line = (f'{ip} - - [12/Mar/2025:10:{i // 6000 % 60:02d}:{i // 100 % 60:02d} +0000] "GET {rng.choice(PATHS)} '
                f'HTTP/1.1" {status} {size or "-"} "-" "{rng.choice(AGENTS)}"')
        fault = rng.random()
        if fault < 0.006:
            line = line[: rng.randrange(10, len(line) - 10)]  # torn write
        elif fault < 0.01:
            line = line.replace(f'" {status} ', '" 2OO ')  # garbled status
        yield line


# The stages are module-level functions: each stage process is spawned and imports them by name.
def parse(line: str) -> dict[str, Any]:
    match = LINE.match(line)
    if match is None:
        raise ValueError("not a combined-log line")
    ip, when, method, path, status, size, agent = match.groups()
    return {"ip": ip, "time": when, "method": method, "path": path, "status": int(status),
            "bytes": 0 if size == "-" else int(size), "bot": "bot" in agent.lower()}


def enrich(record: dict[str, Any]) -> dict[str, Any]:
    path = record["path"]
    return {**record, "class": f"{record['status'] // 100}xx",
            "section": path.split("/")[1] or "home" if path != "/" else "home",
            "network": ".".join(record["ip"].split(".")[:2]) + ".0.0/16"}


def aggregate(records: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    by_class: Counter[str] = Counter()
    by_section: Counter[str] = Counter()
    by_network: Counter[str] = Counter()
    total_bytes = bots = count = 0
    for r in records:
        count += 1
        by_class[r["class"]] += 1
        by_section[r["section"]] += 1
        by_network[r["network"]] += 1
        total_bytes += r["bytes"]
        bots += r["bot"]
    yield {"requests": count, "bytes": total_bytes, "bots": bots, "by_class": dict(by_class),
           "by_section": dict(by_section.most_common(5)), "by_network": dict(by_network)}


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    dead: list[DeadLetter] = []
    pipeline = Pipeline([Stage(parse, processes=2), enrich, Stage(aggregate, stream=True)], dead_letter=dead.append)
    started = time.perf_counter()
    [summary] = list(pipeline.run(synthetic_log(n)))
    seconds = time.perf_counter() - started
    stats = pipeline.stats()

    print(f"{n:,} log lines through parse (2 processes) -> enrich -> aggregate in {seconds:.2f} s")
    for stage in stats.stages:
        print(f"  stage {stage.name:<9} processes={stage.processes}  received={stage.received:>7,}  "
              f"emitted={stage.emitted:>7,}  dead-lettered={stage.failed:,}")
    print(f"requests counted: {summary['requests']:,}   bytes served: {summary['bytes']:,}   "
          f"bot requests: {summary['bots']:,}")
    print("by status class: " + ", ".join(f"{k} {v:,}" for k, v in sorted(summary["by_class"].items())))
    print("top sections:    " + ", ".join(f"{k} {v:,}" for k, v in summary["by_section"].items()))
    print("by network:      " + ", ".join(f"{k} {v:,}" for k, v in sorted(summary["by_network"].items())))
    print(f"dead-lettered malformed lines: {len(dead):,}")
    for letter in dead[:5]:
        print(f"  [{letter.stage}] {letter.error}: {letter.item[:70]!r}")
    if len(dead) > 5:
        print(f"  ... and {len(dead) - 5:,} more")
    lost = n - summary["requests"] - len(dead)
    print(f"lines accounted for: {summary['requests'] + len(dead):,} of {n:,} (lost: {lost})")
    return 0 if lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

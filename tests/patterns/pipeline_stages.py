"""Stage functions of the pipeline tests: stage processes are spawned and import them by name, so they live here."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any


def inc(x: int) -> int:
    return x + 1


def double(x: int) -> int:
    return x * 2


def square(x: int) -> int:
    return x * x


def tag(b: bytes) -> bytes:
    return b + b"!"


def slow_tag(b: bytes) -> bytes:
    time.sleep(0.0005)
    return b + b"!"


def fail_every_tenth(x: int) -> int:
    if x % 10 == 3:
        raise ValueError(f"bad item {x}")
    return x


def split_words(line: str) -> Iterator[str]:
    yield from line.split()


def fan_then_fail(x: int) -> Iterator[int]:
    yield x
    if x % 7 == 0:
        raise RuntimeError(f"half way through {x}")
    yield -x


def drop_odd(x: int) -> int | None:
    return x if x % 2 == 0 else None


def pair(x: int) -> tuple[int, int]:
    return (x, x)


def unencodable(x: int) -> Any:
    return object() if x == 5 else x


def upper(line: str) -> str:
    return line.upper()


def reject_x(word: str) -> str:
    if "X" in word:
        raise ValueError(f"no X allowed: {word}")
    return word


def count(items: Iterator[Any]) -> Iterator[int]:
    total = 0
    for _ in items:
        total += 1
    yield total


def running_sum(items: Iterator[int]) -> Iterator[int]:
    total = 0
    for x in items:
        total += x
        yield total


def fail_at_hundred(items: Iterator[int]) -> Iterator[int]:
    for x in items:
        if x == 100:
            raise KeyError("the aggregate lost its key")
        yield x


def pid_of(x: int) -> list[int]:
    return [x, os.getpid()]


def hang(x: int) -> int:
    if x == 1000:
        time.sleep(600)
    return x


def busy(x: int) -> int:
    total = 0
    for i in range(2000):
        total += i * x
    return total % 1000


def slow_int(x: int) -> int:
    time.sleep(0.005)
    return x

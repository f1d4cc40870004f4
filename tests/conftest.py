"""Shared fixtures: every core test runs on the native extension ("c") and its pure-Python twin ("py")."""

from __future__ import annotations

import importlib
import os
import random
import threading
import time
import types
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

# Thread scheduling on a shared 2-core machine makes single examples slow now and
# then; hypothesis must judge behaviour, not speed.
# RINGBUS_HYPOTHESIS_PROFILE=thorough runs ten times the examples.
_quiet = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
settings.register_profile("ringbus", deadline=None, max_examples=100, suppress_health_check=_quiet)
settings.register_profile("thorough", deadline=None, max_examples=1000, suppress_health_check=_quiet)
settings.load_profile(os.environ.get("RINGBUS_HYPOTHESIS_PROFILE", "ringbus"))

_MODULES = {
    "c": ("ringbus._core._ring", "ringbus._core._priority_queue", "ringbus._core._array_ring"),
    "py": ("ringbus._core._ring_py", "ringbus._core._priority_queue_py", "ringbus._core._array_ring_py"),
}


def load_impl(name: str) -> types.SimpleNamespace:
    """The three core classes of one implementation, imported directly (never through the env switch)."""
    ring_mod, pq_mod, ar_mod = (importlib.import_module(m) for m in _MODULES[name])
    return types.SimpleNamespace(
        name=name,
        Ring=ring_mod.Ring,
        PriorityQueue=pq_mod.PriorityQueue,
        ArrayRing=ar_mod.ArrayRing,
    )


@pytest.fixture(params=["c", "py"], scope="session")
def impl(request: pytest.FixtureRequest) -> types.SimpleNamespace:
    """Namespace with Ring, PriorityQueue, ArrayRing of the native core (c) or the twin (py)."""
    try:
        return load_impl(request.param)
    except ImportError as exc:  # pragma: no cover - only when the extension was not built
        pytest.skip(f"native core not built ({exc}); run `python setup.py build_ext --inplace`")


@pytest.fixture(scope="session")
def c_and_py() -> tuple[types.SimpleNamespace, types.SimpleNamespace]:
    """Both implementations at once, for tests that compare them call for call."""
    try:
        c = load_impl("c")
    except ImportError as exc:  # pragma: no cover - only when the extension was not built
        pytest.skip(f"native core not built ({exc}); run `python setup.py build_ext --inplace`")
    return c, load_impl("py")


@pytest.fixture
def rng() -> random.Random:
    """A seeded random.Random; the seed is printed so a failure can be replayed with RINGBUS_TEST_SEED."""
    seed = int(os.environ.get("RINGBUS_TEST_SEED", "0")) or random.SystemRandom().randrange(1, 2**32)
    print(f"random seed: {seed} (replay with RINGBUS_TEST_SEED={seed})")
    return random.Random(seed)


# Generous bounds for waits that should end almost at once: a failing test takes
# this long, a passing one never does. Tests never assert on how long anything took.
JOIN_TIMEOUT = 60.0
WAIT_TIMEOUT = 30.0


class ThreadGroup:
    """Starts worker threads, records their results and exceptions, and joins them with a bound."""

    def __init__(self) -> None:
        self._threads: list[threading.Thread] = []
        self.results: dict[str, Any] = {}
        self.errors: list[tuple[str, BaseException]] = []
        self._lock = threading.Lock()

    def start(self, fn: Callable[..., Any], *args: Any, name: str | None = None) -> threading.Thread:
        name = name or f"worker-{len(self._threads)}"

        def run() -> None:
            try:
                result = fn(*args)
            except BaseException as exc:  # noqa: BLE001 - reported to the test by join()
                with self._lock:
                    self.errors.append((name, exc))
            else:
                with self._lock:
                    self.results[name] = result

        t = threading.Thread(target=run, name=name, daemon=True)
        self._threads.append(t)
        t.start()
        return t

    def join(self, timeout: float = JOIN_TIMEOUT) -> dict[str, Any]:
        """Waits for every thread; fails if one hangs, re-raises the first error. Returns results by name."""
        until = time.monotonic() + timeout
        for t in self._threads:
            t.join(max(0.0, until - time.monotonic()))
        hung = [t.name for t in self._threads if t.is_alive()]
        if hung:
            pytest.fail(f"threads still running after {timeout}s: {hung}")
        if self.errors:
            name, exc = self.errors[0]
            raise AssertionError(f"thread {name} raised {exc!r}") from exc
        return self.results


@pytest.fixture
def threads() -> Any:
    """A ThreadGroup whose threads must all have finished when the test ends."""
    group = ThreadGroup()
    yield group
    group.join()


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT_TIMEOUT) -> None:
    """Polls predicate until true; fails the test (instead of hanging) if it never becomes true."""
    until = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > until:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.001)


@pytest.fixture
def until() -> Callable[..., None]:
    """wait_until as a fixture: until(lambda: cond, "what we wait for")."""
    return wait_until

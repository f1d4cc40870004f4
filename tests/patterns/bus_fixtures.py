"""Fixtures of the messaging and competing-consumers tests: each test runs on memory:// and on the broker.

tests/patterns/conftest.py imports the fixtures (``queue``, ``thread_broker``, ``url``), so every test module
here has them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import ringbus

WAIT = 60.0  # bound on waits that should end much sooner: a failing test takes this long, a passing one never


@pytest.fixture(scope="module")
def thread_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An embedded broker in a thread of this process, shared by the module's tests (they use fresh queues)."""
    with ringbus.Broker(tmp_path_factory.mktemp("broker"), "tcp://127.0.0.1:0") as broker:
        yield broker.endpoint


# Engines beyond one machine, on the servers at loopback (see tests/contract/conftest.py, whose factories start
# and clean them up): the patterns run on them unchanged. A pattern needing a feature one of them lacks gets
# ringbus.Unsupported, which tests/patterns/conftest.py reports as a skip naming the feature.
REMOTE_BACKENDS = ("redis", "amqp", "nats")  # started by tests/patterns/conftest.py's remote_backend


@pytest.fixture(params=["memory", "broker", *REMOTE_BACKENDS])
def url(request: pytest.FixtureRequest) -> str:
    """A fresh memory:// name, the module's broker, or a namespace on Redis, RabbitMQ or NATS."""
    if request.param == "memory":
        return f"memory://patterns-{uuid.uuid4().hex}"
    if request.param in REMOTE_BACKENDS:
        return str(request.getfixturevalue("remote_backend")(request.param))
    return str(request.getfixturevalue("thread_broker"))


@pytest.fixture
def queue() -> str:
    """A queue name no other test uses."""
    return f"jobs-{uuid.uuid4().hex[:12]}"


def wait_until(condition: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` if it does not within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not within {timeout:g} s: {what}")
        time.sleep(0.02)


ROOT = Path(__file__).resolve().parents[2]


def python_env() -> dict[str, str]:
    """The environment for a child ``python``: this checkout's src first on its path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}


def run_python(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``python args...`` with this checkout's src on the path; its output captured."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, env=python_env())


def run_example(name: str) -> str:
    """Run ``examples/<name>``; fail unless it exits 0; its standard output."""
    result = run_python(str(ROOT / "examples" / name))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout

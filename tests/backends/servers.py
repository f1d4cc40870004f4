"""Private servers for the restart tests: a Redis or a Mosquitto of the test's own, on a free loopback port.

The shared servers (6379, 1883) are never stopped; a test that kills a server kills one of these.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

HOST = "127.0.0.1"
START_WAIT = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def answers(port: int) -> bool:
    try:
        socket.create_connection((HOST, port), timeout=1.0).close()
        return True
    except OSError:
        return False


def missing(message: str) -> None:
    """Skip the test for want of a server or program, saying which - a failure under RINGBUS_REQUIRE_SERVICES=1."""
    if os.environ.get("RINGBUS_REQUIRE_SERVICES") == "1":
        pytest.fail(message)
    pytest.skip(message)


def _program(name: str) -> str:
    found = shutil.which(name) or next((p for p in (f"/usr/sbin/{name}", f"/usr/bin/{name}") if os.path.exists(p)),
                                       None)
    if found is None:
        missing(f"{name} is not installed: this test runs a {name} of its own (install it, e.g. apt-get install "
                f"{name})")
    assert found is not None
    return found


def _started(command: list[str], port: int, probe) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + START_WAIT
    while not probe(port):
        if time.monotonic() > deadline or process.poll() is not None:
            process.kill()
            process.wait()
            pytest.fail(f"{command[0]} on port {port} did not start within {START_WAIT}s")
        time.sleep(0.02)
    return process


def _redis_ready(port: int) -> bool:
    """Answers PING (not only accepts connections: a Redis loading its append-only file answers LOADING)."""
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def start_redis(port: int, data: Path) -> subprocess.Popen[bytes]:
    """A redis-server that fsyncs every write to its append-only file in ``data`` (nothing confirmed is lost)."""
    return _started([_program("redis-server"), "--port", str(port), "--bind", HOST, "--dir", str(data),
                     "--appendonly", "yes", "--appendfsync", "always", "--save", ""], port, _redis_ready)


def start_mosquitto(port: int, data: Path) -> subprocess.Popen[bytes]:
    config = data / "mosquitto.conf"
    config.write_text(f"listener {port} {HOST}\nallow_anonymous true\npersistence false\n")
    return _started([_program("mosquitto"), "-c", str(config)], port, answers)


def kill(process: subprocess.Popen[bytes]) -> None:
    """kill -9, and reap it."""
    process.kill()
    process.wait()

"""Run the embedded broker in a child process (``ringbus broker``) and know when it is up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ringbus.errors import RingbusError

__all__ = ["BrokerProcess"]

READY_PREFIX = "ringbus broker listening on "


class BrokerProcess:
    """``ringbus broker`` as a child process: :meth:`start` returns once it listens; kill it for real in tests.

    Parameters are those of the command (``--data``, ``--bind``, ``--fsync``, ``--heartbeat``).
    """

    def __init__(self, data: str | os.PathLike[str], bind: str = "tcp://127.0.0.1:0", *, fsync: str = "batch",
                 heartbeat: float = 1.0, extra: list[str] | None = None) -> None:
        self.data = Path(data)
        self.bind = bind
        self.fsync = fsync
        self.heartbeat = heartbeat
        self.extra = extra or []
        self.endpoint = ""
        self.process: subprocess.Popen[str] | None = None

    def start(self, timeout: float = 30.0) -> BrokerProcess:
        command = [sys.executable, "-m", "ringbus", "broker", "--data", str(self.data), "--bind", self.bind,
                   "--fsync", self.fsync, "--heartbeat", str(self.heartbeat), *self.extra]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        # The broker prints its endpoint once it recovered its log and bound its socket.
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                code = self.process.wait()
                raise RingbusError(f"ringbus broker exited with {code} before listening ({' '.join(command)})")
            if line.startswith(READY_PREFIX):
                self.endpoint = line[len(READY_PREFIX):].split()[0]
                return self
        self.kill()
        raise RingbusError(f"ringbus broker did not listen within {timeout} s")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: no chance to flush or close anything - a crash."""
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            if self.process.stdout is not None:
                self.process.stdout.close()

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM and wait: a clean shutdown. Returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        return self.process.returncode

    def __enter__(self) -> BrokerProcess:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.kill()

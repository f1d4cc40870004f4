"""Start, run, stop and report errors of a consumer that works in a thread of its own (shared by the patterns).

A subclass writes ``_run(stop, ready)``: it opens its own Bus (a Bus belongs to the thread that opened it),
calls ``ready()`` once it is attached to its queues, and returns soon after ``stop`` is set.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from typing import Any, Literal, overload

__all__ = ["BackgroundConsumer", "check_positive", "check_count"]


@overload
def check_positive(name: str, value: object, *, allow_none: Literal[False] = False) -> float: ...
@overload
def check_positive(name: str, value: object, *, allow_none: bool) -> float | None: ...
def check_positive(name: str, value: object, *, allow_none: bool = False) -> float | None:
    """``value`` as a float if it is a finite number > 0 (or None when allowed); else TypeError/ValueError naming it."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_count(name: str, value: object, *, minimum: int = 1) -> int:
    """``value`` if it is an int >= ``minimum``; else TypeError/ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return value


class BackgroundConsumer:
    """``start()`` runs :meth:`run` in a daemon thread; ``stop()`` asks it to finish and joins it.

    An exception that ends :meth:`run` in the background thread is logged, kept in :attr:`error`, and raised
    again by ``start()`` (if it happened before the consumer was ready) or ``stop()``.
    """

    _log: logging.Logger = logging.getLogger("ringbus.patterns")

    def __init__(self, url: str, handler: Callable[..., Any]) -> None:
        if not isinstance(url, str):
            raise TypeError(f"url must be a str such as 'memory://' or 'tcp://127.0.0.1:5555', "
                            f"not {type(url).__name__}")
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        self.url = url
        self.handler = handler
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None

    # -- to write in a subclass ----------------------------------------------------------------------------------
    def _run(self, stop: threading.Event, ready: Callable[[], None]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Consume in the calling thread until :meth:`stop` is called (from another thread or a signal handler)."""
        self._stop.clear()
        self._ready.clear()
        self._body()

    def _body(self) -> None:
        self.error = None
        try:
            self._run(self._stop, self._ready.set)
        except BaseException as exc:
            self.error = exc
            raise
        finally:
            self._ready.set()  # nobody waits in start() for a consumer that is gone

    def _background(self) -> None:
        try:
            self._body()
        except BaseException:  # noqa: BLE001 - kept in self.error, raised again by start() or stop()
            self._log.exception("%s stopped by an error", type(self).__name__)

    def start(self, timeout: float = 30.0) -> Any:
        """Run in a background thread; return ``self`` once attached to its queue(s).

        Raises the error that stopped it if it failed while starting (an undeclared queue, an unreachable
        broker), and TimeoutError if it was not ready within ``timeout`` seconds.
        """
        if self._thread is not None and self._thread.is_alive():
            raise RuntimeError(f"{type(self).__name__} is already running")
        self._stop.clear()
        self._ready.clear()
        self._thread = threading.Thread(target=self._background, name=f"ringbus-{type(self).__name__}", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            self.stop(timeout=1.0)
            raise TimeoutError(f"{type(self).__name__} on {self.url} was not ready within {timeout} s")
        if self.error is not None:
            error, self.error = self.error, None
            self._thread.join(1.0)
            raise error
        return self

    def stop(self, timeout: float = 30.0) -> bool:
        """Stop taking messages, finish the ones in hand, and join; True if it ended within ``timeout`` seconds.

        Raises the error that stopped the background thread, if one did.
        """
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                return False
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return True

    @property
    def running(self) -> bool:
        """True while the background thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> Any:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

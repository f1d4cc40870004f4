"""Fixtures of the asyncio contract suite: the contract suite's backends (imported, not copied), an AsyncBus per
test, and the event loops to run on (asyncio everywhere; uvloop too for the modules in ``UVLOOP_MODULES``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import pytest_asyncio

import ringbus
import ringbus.aio

# The backends, their factories and the session-wide start of the shared ones (a broker per transport, the
# Redis and RabbitMQ prefixes) come from the sync contract suite: one list of backends for both.
from contract.conftest import BACKENDS, _shared_backends, url  # noqa: F401 - fixtures, used by name
from contract.support import Names
from ringbus.aio import AsyncBus

HERE = Path(__file__).parent
# Backends with a native asyncio client; the others of BACKENDS run through ringbus.aio.threaded.
NATIVE = frozenset({"memory", "broker-tcp", "broker-ipc"})
# A test of this suite that has not finished by then is hung, not slow.
AIO_TIMEOUT = 60
# Modules whose tests run on uvloop as well as on asyncio's own loop: the waits and the cancellations, where
# loops differ.
UVLOOP_MODULES = frozenset({"test_core.py", "test_cancel.py"})


def _uvloop_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:
        pytest.skip("uvloop is not installed (pip install uvloop, the 'uvloop' extra): its runs are skipped")
    return uvloop.new_event_loop()  # type: ignore[no-any-return]


def pytest_asyncio_loop_factories(config: pytest.Config,
                                  item: pytest.Item) -> dict[str, Callable[[], asyncio.AbstractEventLoop]] | None:
    if HERE not in item.path.parents:
        return None  # another directory's asyncio tests: not ours to parametrize
    factories: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop}
    if item.path.name in UVLOOP_MODULES:
        factories["uvloop"] = _uvloop_loop
    return factories


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "adapters: run on the backends served by the asyncio adapter too "
                                       "(redis, amqp, ...); other tests of tests/aio run on the native clients only")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Time limits; and the adapter backends only for tests marked ``adapters``.

    Through the adapter every backend's own behaviour is its sync Bus's, which tests/contract checks in full;
    here a representative subset checks what the adapter adds (threads, slices, credit, cancellation).
    """
    keep, drop = [], []
    for item in items:
        if HERE in item.path.parents:
            if item.get_closest_marker("timeout") is None:
                item.add_marker(pytest.mark.timeout(AIO_TIMEOUT))
            backend = getattr(item, "callspec", None) and item.callspec.params.get("url")  # type: ignore[attr-defined]
            if backend and backend not in NATIVE and item.get_closest_marker("adapters") is None:
                drop.append(item)
                continue
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest_asyncio.fixture
async def bus(url: str) -> AsyncIterator[AsyncBus]:  # noqa: F811 - ``url`` is the imported fixture
    """An AsyncBus on the test's backend, connected; closed after the test."""
    async with ringbus.aio.connect(url) as connection:
        yield connection


@pytest_asyncio.fixture
async def second_bus(url: str) -> AsyncIterator[AsyncBus]:  # noqa: F811
    """Another AsyncBus on the same backend (same queues, topics and services)."""
    async with ringbus.aio.connect(url) as connection:
        yield connection


@pytest.fixture
def names() -> Names:
    """Fresh names for this test: ``names.queue()``, ``names.topic("order", "placed")``, ``names.service()``..."""
    return Names()


@pytest.fixture
def queue(bus: AsyncBus, names: Names) -> Callable[..., Awaitable[str | None]]:
    """``await queue(**options)`` declares a fresh queue on ``bus`` and returns its name.

    ``await queue(needs="ttl", ttl=1.0)``: if ``bus`` declares that feature unsupported, checks that declaring
    raises ringbus.Unsupported and returns None (the test then returns). A backend without queues skips.
    """

    async def declare(needs: str | None = None, **options: object) -> str | None:
        name = names.queue()
        declared = bus.unsupported_features
        if "queues" in declared or (needs is not None and needs in declared):
            with pytest.raises(ringbus.Unsupported):
                await bus.declare_queue(name, **options)  # type: ignore[arg-type]
            if "queues" in declared:
                pytest.skip("the backend declares no queues (declare_queue raised Unsupported, as it must)")
            return None
        await bus.declare_queue(name, **options)  # type: ignore[arg-type]
        return name

    return declare

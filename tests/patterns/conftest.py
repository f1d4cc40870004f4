"""The patterns' tests run on memory:// and the broker, and on Redis, RabbitMQ and NATS (the remote backends).

The remote runs take as long as the rest of the suite together, so the README's test command leaves them out;
``RINGBUS_PATTERN_BACKENDS=all`` (or ``RINGBUS_FULL=1``) puts them in, and CI runs them as a second step
(``.ci/run``: ``pytest tests/patterns -m remote_backend``). A pattern that needs a feature the backend under test
lacks fails with ringbus.Unsupported naming it (the contract): on a remote backend that is reported as a skip
with that sentence, not as a failure.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

import ringbus

# the fixtures every test module here runs on (memory://, the broker, the remote backends), found by pytest here
from .bus_fixtures import REMOTE_BACKENDS, queue, thread_broker, url  # noqa: F401

HERE = Path(__file__).parent


def _remote_runs_wanted() -> bool:
    return os.environ.get("RINGBUS_PATTERN_BACKENDS") == "all" or os.environ.get("RINGBUS_FULL") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Marks every pattern test on a remote backend ``remote_backend``; leaves them out unless asked for.

    The hook sees the whole session's items: only those of this directory are touched (tests/contract and tests/aio
    run on the remote backends in the README's command)."""
    keep, left_out = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        if (HERE in item.path.parents and callspec is not None
                and callspec.params.get("url") in REMOTE_BACKENDS):
            item.add_marker(pytest.mark.remote_backend)
            if not _remote_runs_wanted():
                left_out.append(item)
                continue
        keep.append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = keep


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, Any, None]:
    outcome = yield
    excinfo = outcome.excinfo
    callspec = getattr(item, "callspec", None)
    backend = callspec.params.get("url") if callspec is not None else None
    if backend in REMOTE_BACKENDS and excinfo is not None and issubclass(excinfo[0], ringbus.Unsupported):
        outcome.force_exception(pytest.skip.Exception(f"{backend}: {excinfo[1]}", _use_item_location=True))


@pytest.fixture(scope="module")
def remote_backend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[str], str]]:
    """Starts (once per module) the contract suite's factory for a remote backend; ``remote_backend("redis")``."""
    from contract.conftest import BACKENDS  # tests/ is on sys.path (rootdir conftest import mode)

    with ExitStack() as stack:
        urls: dict[str, str] = {}

        def url_of(name: str) -> str:
            if name not in BACKENDS:
                pytest.skip(f"the {name} backend is not in this checkout's contract suite")
            if name not in urls:
                urls[name] = stack.enter_context(BACKENDS[name].start(tmp_path_factory))
            return urls[name]

        yield url_of

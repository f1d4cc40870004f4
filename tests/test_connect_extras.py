"""Without an engine's client installed, connect() says which extra to install (ringbus.Unsupported), not an
ImportError from deep inside a backend; an unknown scheme names the ones there are."""

from __future__ import annotations

import sys

import pytest

import ringbus


@pytest.mark.parametrize(("url", "client", "backend", "extra"), [
    ("redis://127.0.0.1:6379/0", "redis", "ringbus.backends.redis", "ringbus[redis]"),
    ("mqtt://127.0.0.1:1883", "paho", "ringbus.backends.mqtt", "ringbus[mqtt]"),
])
def test_missing_client_names_the_extra(monkeypatch: pytest.MonkeyPatch, url: str, client: str, backend: str,
                                        extra: str) -> None:
    for name in [n for n in sys.modules if n == client or n.startswith(client + ".") or n.startswith(backend)]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, client, None)  # import of it now raises ImportError
    with pytest.raises(ringbus.Unsupported, match=extra.replace("[", r"\[").replace("]", r"\]")):
        ringbus.connect(url)


def test_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="nats:// or mqtt://"):
        ringbus.connect("kafka://127.0.0.1:9092")

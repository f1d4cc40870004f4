"""`ringbus curve-keypair` and `ringbus broker --curve-secret-key-file/--authorized-keys-file`: the keys the
command prints run a CURVE broker that serves exactly the clients the keys file names."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

import ringbus
from ringbus.errors import PeerGone
from ringbus.transport import CurveClient
from test_cli import clean_env, free_port, one_error_line  # tests/ is on sys.path
from test_cli import ringbus as run_ringbus

pytestmark = pytest.mark.integration


def keypair(tmp_path: Path) -> tuple[str, str]:
    result = run_ringbus(tmp_path, "curve-keypair")
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert set(lines) == {"public", "secret"} and all(len(key) == 40 for key in lines.values())
    return lines["public"], lines["secret"]


def test_keypair_prints_two_fresh_z85_keys(tmp_path: Path) -> None:
    first, second = keypair(tmp_path), keypair(tmp_path)
    assert first != second
    import zmq

    assert zmq.curve_public(first[1].encode()) == first[0].encode()  # the public key belongs to the secret one


def test_broker_with_an_empty_key_list_refuses_to_start(tmp_path: Path) -> None:
    _, secret = keypair(tmp_path)
    (tmp_path / "broker.key").write_text(secret + "\n")
    (tmp_path / "clients.keys").write_text("# nobody yet\n\n")
    result = run_ringbus(tmp_path, "broker", "--data", "d", "--bind", f"tcp://127.0.0.1:{free_port()}",
                         "--curve-secret-key-file", "broker.key", "--authorized-keys-file", "clients.keys")
    assert result.returncode == 2
    assert "refusing to start" in one_error_line(result)


def test_one_curve_flag_without_the_other_is_a_usage_error(tmp_path: Path) -> None:
    _, secret = keypair(tmp_path)
    (tmp_path / "broker.key").write_text(secret + "\n")
    result = run_ringbus(tmp_path, "broker", "--data", "d", "--curve-secret-key-file", "broker.key")
    assert result.returncode == 2
    assert "go together" in one_error_line(result)


def test_curve_broker_serves_the_listed_client_and_refuses_another(tmp_path: Path) -> None:
    server_public, server_secret = keypair(tmp_path)
    client_public, client_secret = keypair(tmp_path)
    other_public, other_secret = keypair(tmp_path)
    (tmp_path / "broker.key").write_text(server_secret + "\n")
    (tmp_path / "clients.keys").write_text(f"# the order service\n{client_public}\n")
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    broker = subprocess.Popen(
        [sys.executable, "-m", "ringbus", "broker", "--data", "d", "--bind", endpoint,
         "--curve-secret-key-file", "broker.key", "--authorized-keys-file", "clients.keys"],
        cwd=tmp_path, env=clean_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert broker.stdout is not None
        assert "listening on" in broker.stdout.readline()
        queue = f"curve-{uuid.uuid4().hex[:8]}"
        listed = CurveClient(client_secret, client_public, server_public)
        with ringbus.connect(endpoint, curve=listed, timeout=10.0) as bus:
            bus.declare_queue(queue)
            bus.send(queue, b"order 42")
            assert bus.queue_stats(queue).depth == 1
        stranger = CurveClient(other_secret, other_public, server_public)
        with pytest.raises(PeerGone):
            with ringbus.connect(endpoint, curve=stranger, timeout=2.0) as bus:
                bus.send(queue, b"let me in")
    finally:
        broker.terminate()
        _, errors = broker.communicate(timeout=30)  # also closes the pipes
    assert broker.returncode == 0, errors

"""ShmChannel: byte messages between processes through shared memory."""

from __future__ import annotations

import multiprocessing
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import shm_peers
from ringbus import Closed, Empty, Full, PeerGone
from ringbus._core._shm_channel import ShmChannel

SPAWN = multiprocessing.get_context("spawn")


def shm_names() -> set[str]:
    return {n for n in os.listdir("/dev/shm") if n.startswith("rbt-")}


@pytest.fixture
def name() -> Iterator[str]:
    before = shm_names()
    n = f"rbt-{uuid.uuid4().hex[:12]}"
    yield n
    ShmChannel.remove(n)
    assert shm_names() <= before, "a test left a segment in /dev/shm"


@pytest.fixture
def channel(name: str) -> Iterator[ShmChannel]:
    ch = ShmChannel.create(name, 1 << 16)
    yield ch
    ch.close()


def test_round_trip_of_every_buffer_kind(name: str) -> None:
    with ShmChannel.create(name, 1 << 16) as tx, ShmChannel.attach(name) as rx:
        arr = np.arange(10, dtype=np.float64)
        for data in (b"bytes", bytearray(b"bytearray"), memoryview(b"view"), arr, b""):
            tx.send(data)
        assert rx.recv(timeout=1) == b"bytes"
        assert rx.recv(timeout=1) == b"bytearray"
        assert rx.recv(timeout=1) == b"view"
        assert np.array_equal(np.frombuffer(rx.recv(timeout=1), np.float64), arr)
        assert rx.recv(timeout=1) == b""


def test_str_and_non_contiguous_buffers_are_refused(channel: ShmChannel) -> None:
    with pytest.raises(TypeError, match="str"):
        channel.send("text")  # type: ignore[arg-type]
    with pytest.raises((TypeError, ValueError, BufferError)):
        channel.send(np.arange(10)[::2])
    with pytest.raises(TypeError):
        channel.send(12)  # type: ignore[arg-type]


def test_recv_view_lends_the_ring_until_the_next_recv(channel: ShmChannel) -> None:
    channel.send(b"first")
    channel.send(b"second")
    view = channel.recv_view(timeout=1)
    assert bytes(view) == b"first" and view.readonly
    used_while_lent = channel.bytes_used()
    assert channel.recv(timeout=1) == b"second"
    assert channel.bytes_used() == 0 < used_while_lent


def test_message_larger_than_half_the_ring_is_a_clear_error(channel: ShmChannel) -> None:
    channel.send(bytes(channel.max_message))
    with pytest.raises(ValueError, match="exceeds"):
        channel.send(bytes(channel.max_message + 1))
    with pytest.raises(ValueError, match="exceeds"):
        channel.send_many([b"ok", bytes(channel.max_message + 1)])


def test_timeouts_raise_empty_and_full(channel: ShmChannel) -> None:
    with pytest.raises(Empty):
        channel.recv(timeout=0.05)
    chunk = bytes(1000)
    sent = 0
    with pytest.raises(Full):
        while True:
            channel.send(chunk, timeout=0.05)
            sent += 1
    assert sent > 0
    assert channel.send_many([chunk] * 10, timeout=0.05) == 0
    with pytest.raises(ValueError, match="timeout"):
        channel.recv(timeout=-1)


def test_wrap_around_keeps_records_whole_and_in_order(channel: ShmChannel) -> None:
    sizes = [1, 7, 8, 9, 1000, 4095, 3, 30000, 17] * 50
    for i, size in enumerate(sizes):
        data = bytes([i % 251]) * size
        channel.send(data, timeout=1)
        assert channel.recv(timeout=1) == data


def test_send_many_and_recv_many_keep_order(channel: ShmChannel) -> None:
    messages = [i.to_bytes(4, "little") * 4 for i in range(5000)]
    got: list[bytes] = []
    start = 0
    while start < len(messages):
        start += channel.send_many(messages[start : start + 300], timeout=1)
        got.extend(channel.recv_many(1000, timeout=1))
    while len(got) < len(messages):
        got.extend(channel.recv_many(1000, timeout=1))
    assert got == messages


def test_closed_channel_refuses_calls(channel: ShmChannel) -> None:
    channel.close()
    assert channel.closed
    with pytest.raises(Closed):
        channel.send(b"x")
    with pytest.raises(Closed):
        channel.recv(timeout=0)
    channel.close()  # idempotent


def test_bad_names_and_sizes(name: str) -> None:
    for bad in ("", "a/b", "/", "x" * 300):
        with pytest.raises(ValueError, match="name"):
            ShmChannel.create(bad, 4096)
    with pytest.raises(TypeError, match="name"):
        ShmChannel.create(b"bytes", 4096)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="size_bytes"):
        ShmChannel.create(name, 10)
    with pytest.raises(FileNotFoundError):
        ShmChannel.attach(name)
    with ShmChannel.create(name, 4096):
        with pytest.raises(FileExistsError):
            ShmChannel.create(name, 4096)


def test_attach_refuses_a_segment_that_is_not_a_channel(name: str) -> None:
    Path("/dev/shm", name).write_bytes(b"\0" * 8192)
    with pytest.raises(ValueError, match="no ShmChannel header"):
        ShmChannel.attach(name)


@pytest.mark.integration
@pytest.mark.parametrize("batch", [1, 100], ids=["send", "send_many"])
def test_two_processes_move_100k_messages_in_order(name: str, batch: int) -> None:
    n = 100_000
    with ShmChannel.create(name, 1 << 16):
        results = SPAWN.Queue()
        receiver = SPAWN.Process(target=shm_peers.receive_all, args=(name, results))
        sender = SPAWN.Process(target=shm_peers.send_numbered, args=(name, n, 64, batch))
        receiver.start()
        sender.start()
        count, in_order, checksum = results.get(timeout=120)
        sender.join(30)
        receiver.join(30)
    assert (count, in_order) == (n, True)
    assert checksum == (n * sum(range(8, 16))) % 1_000_003
    assert sender.exitcode == 0 and receiver.exitcode == 0


@pytest.mark.integration
def test_receiver_sees_peer_gone_when_the_sender_dies(name: str) -> None:
    with ShmChannel.create(name, 1 << 16) as rx:
        sender = SPAWN.Process(target=shm_peers.send_then_die, args=(name, 3))
        sender.start()
        sender.join(60)
        assert sender.exitcode == -9
        assert [rx.recv(timeout=5) for _ in range(3)] == [i.to_bytes(8, "little") for i in range(3)]
        with pytest.raises(PeerGone, match="died"):
            rx.recv(timeout=30)


@pytest.mark.integration
def test_sender_sees_peer_gone_when_the_receiver_dies(name: str) -> None:
    with ShmChannel.create(name, 4096) as tx:
        receiver = SPAWN.Process(target=shm_peers.receive_one_then_die, args=(name,))
        receiver.start()
        tx.send(b"first")
        receiver.join(60)
        assert receiver.exitcode == -9
        with pytest.raises(PeerGone, match="died"):
            while True:  # fills the ring, then must notice the dead receiver instead of blocking
                tx.send(bytes(512), timeout=30)


def test_sender_close_ends_iteration_after_the_drain(name: str) -> None:
    with ShmChannel.create(name, 4096) as tx, ShmChannel.attach(name) as rx:
        tx.send(b"a")
        tx.send(b"b")
        tx.close()
        assert list(rx) == [b"a", b"b"]
        with pytest.raises(PeerGone, match="closed"):
            rx.recv(timeout=1)


def test_receiver_close_fails_the_sender(name: str) -> None:
    with ShmChannel.create(name, 4096) as tx, ShmChannel.attach(name) as rx:
        tx.send(b"a")
        rx.recv(timeout=1)
        rx.close()
        with pytest.raises(PeerGone, match="closed"):
            tx.send(b"b")


@pytest.mark.integration
@pytest.mark.parametrize("close", [True, False], ids=["closed", "not-closed"])
def test_creator_exit_removes_the_segment(name: str, close: bool) -> None:
    child = SPAWN.Process(target=shm_peers.create_and_exit, args=(name, close))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    assert name not in os.listdir("/dev/shm")


def test_without_the_extension_every_use_says_why() -> None:
    from ringbus import Unsupported
    from ringbus._core._shm_missing import ShmChannel as Missing

    for call in (lambda: Missing.create("x", 4096), lambda: Missing.attach("x"), lambda: Missing()):
        with pytest.raises(Unsupported, match="native extension"):
            call()


def test_a_recv_view_outliving_its_channel_stays_readable(name: str) -> None:
    with ShmChannel.create(name, 4096) as tx:
        rx = ShmChannel.attach(name)
        tx.send(b"x" * 100)
        view = rx.recv_view(timeout=1)
        del rx  # the mapping must stay while the view lives
        assert bytes(view[:4]) == b"xxxx"
        view.release()


def test_close_from_another_thread_wakes_a_blocked_recv_with_closed(name: str) -> None:
    import threading
    import time

    with ShmChannel.create(name, 4096):
        rx = ShmChannel.attach(name)
        outcome: list[BaseException] = []

        def receive() -> None:
            try:
                rx.recv(timeout=30)
            except BaseException as exc:  # noqa: BLE001 - the test inspects it
                outcome.append(exc)

        waiter = threading.Thread(target=receive)
        waiter.start()
        time.sleep(0.2)  # let it block (if it has not, recv sees the close: Closed all the same)
        rx.close()
        waiter.join(30)
        assert not waiter.is_alive()
        assert len(outcome) == 1 and isinstance(outcome[0], Closed)


def test_a_forked_child_closing_its_inherited_copy_leaves_the_parent_alone(name: str) -> None:
    with ShmChannel.create(name, 4096) as tx, ShmChannel.attach(name) as rx:
        tx.send(b"before")
        pid = os.fork()
        if pid == 0:  # the child: close the inherited objects, then leave at once
            tx.close()
            rx.close()
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert status == 0
        assert name in os.listdir("/dev/shm")
        tx.send(b"after")
        assert rx.recv(timeout=1) == b"before"
        assert rx.recv(timeout=1) == b"after"

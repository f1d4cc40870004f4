"""Claim check: large payloads go through a store (local directory, Redis, S3 on a local moto server) and come back
verified; small ones pass inline untouched; tampered, missing and forged claims are dead-lettered with the reason;
payloads are deleted after the ack or by a TTL sweep; a 200 MiB payload streams with bounded memory."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ringbus
from ringbus.message import Message
from ringbus.patterns import RetryPolicy
from ringbus.patterns.claim_check import (
    CLAIM_ERROR,
    CLAIM_KEY,
    CLAIM_SHA256,
    CLAIM_SIZE,
    CLAIM_URL,
    ClaimCheck,
    ClaimCheckError,
    ClaimIntegrityError,
    ClaimNotFound,
    InvalidClaimKey,
    UnknownClaimStore,
)
from ringbus.patterns.payload_stores import LocalStore, PayloadStore, RedisStore, S3Store, check_key

from .bus_fixtures import python_env, run_example, run_python

pytestmark = pytest.mark.timeout(120)

MiB = 1 << 20
THRESHOLD = 64 * 1024
REQUIRE_SERVICES = os.environ.get("RINGBUS_REQUIRE_SERVICES") == "1"
FULL = os.environ.get("RINGBUS_FULL") == "1"


# -- buses: memory:// and the broker (url, thread_broker) -------------------------------------------------------------
@pytest.fixture
def bus(url: str) -> Iterator[ringbus.Bus]:
    with ringbus.connect(url) as bus:
        yield bus


@pytest.fixture
def queue(bus: ringbus.Bus) -> str:
    name = f"claims-{uuid.uuid4().hex[:12]}"
    bus.declare_queue(name, max_attempts=5)
    return name


# -- stores -----------------------------------------------------------------------------------------------------------
def redis_client() -> Any:
    """A client of the Redis at 127.0.0.1:6379, or a skip (a failure with RINGBUS_REQUIRE_SERVICES=1)."""
    try:
        import redis
    except ImportError:
        if REQUIRE_SERVICES:
            raise
        pytest.skip("redis-py is not installed (pip install redis), so the Redis store cannot be tested")
    client = redis.Redis(host="127.0.0.1", port=6379, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.ConnectionError:
        client.close()
        if REQUIRE_SERVICES:
            pytest.fail("RINGBUS_REQUIRE_SERVICES=1 but Redis does not answer at 127.0.0.1:6379")
        pytest.skip("Redis does not answer at 127.0.0.1:6379; start redis-server to test the Redis store")
    return client


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A moto S3 server in a thread of this process, on a free port of 127.0.0.1."""
    pytest.importorskip("boto3", reason="boto3 is not installed (pip install boto3), so the S3 store cannot be tested")
    server_module = pytest.importorskip(
        "moto.server", reason="moto[server] is not installed (pip install 'moto[server]'), so no local S3 server")
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
    yield f"http://{host}:{port}"
    server.stop()


S3_CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing", "region_name": "us-east-1"}


def make_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> PayloadStore:
    if kind == "local":
        return LocalStore(tmp_path / "claims")
    if kind == "redis":
        client = redis_client()
        prefix = f"ringbus-test:{uuid.uuid4().hex[:12]}:"

        def cleanup() -> None:
            names = list(client.scan_iter(match=prefix + "*"))
            if names:
                client.delete(*names)
            client.close()

        request.addfinalizer(cleanup)
        return RedisStore(client, prefix=prefix, chunk_size=256 * 1024)
    endpoint = request.getfixturevalue("s3_endpoint")
    return S3Store(f"claims-{uuid.uuid4().hex[:12]}", endpoint_url=endpoint, create_bucket=True,
                   part_size=5 * MiB, **S3_CREDENTIALS)


@pytest.fixture(params=["local", "redis", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[PayloadStore]:
    store = make_store(request.param, request, tmp_path)
    yield store
    store.close()


def rewrite(store: PayloadStore, key: str, data: bytes) -> None:
    """Replace the stored bytes under ``key`` behind the store's back (what an attacker or a bad disk does)."""
    if isinstance(store, LocalStore):
        (store.directory / key).write_bytes(data)
    elif isinstance(store, RedisStore):
        name = store._name(key)
        store.client.delete(name)
        pieces = [data[i:i + store.chunk_size] for i in range(0, len(data), store.chunk_size)]
        store.client.hset(name, mapping={"size": len(data), "chunks": len(pieces),
                                         **{f"c{i}": piece for i, piece in enumerate(pieces)}})
    else:
        assert isinstance(store, S3Store)
        store.client.put_object(Bucket=store.bucket, Key=store.prefix + key, Body=data)


def drain(bus: ringbus.Bus, queue: str, count: int) -> list[Message]:
    """The ``count`` messages waiting in ``queue`` (acked), checking that no more wait."""
    out = []
    for _ in range(count):
        message = bus.receive(queue, timeout=30.0)
        assert message is not None, f"{queue}: {len(out)} messages, not {count}"
        message.ack()
        out.append(message)
    assert bus.queue_stats(queue).depth == 0
    return out


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- round trip and inline --------------------------------------------------------------------------------------------
def test_round_trip(store: PayloadStore, bus: ringbus.Bus, queue: str, tmp_path: Path) -> None:
    rng = random.Random(7)
    big = rng.randbytes(12 * MiB + 1)  # S3: a multipart upload of 3 parts
    from_file = rng.randbytes(300_000)
    path = tmp_path / "scan.bin"
    path.write_bytes(rng.randbytes(THRESHOLD + 1))
    claims = ClaimCheck(store, threshold=THRESHOLD)
    claims.send(bus, queue, big, key="a", headers={"n": 1}, priority=3)
    claims.send(bus, queue, io.BytesIO(from_file), key="b", headers={"n": 2})
    claims.send(bus, queue, path, key="c", headers={"n": 3})
    claims.send(bus, queue, b"tiny", key="d", headers={"n": 4})
    assert store.usage().objects == 3

    got: dict[int, tuple[str | None, str, int]] = {}

    def handler(message: Message, payload: Any) -> None:
        digest, size = hashlib.sha256(), 0
        while chunk := payload.read(777_777):  # odd sizes: chunks do not line up with the store's
            digest.update(chunk)
            size += len(chunk)
        got[int(message.headers["n"])] = (message.key, digest.hexdigest(), size)  # type: ignore[arg-type]

    assert claims.consume(bus, queue, handler, max_messages=4, prefetch=4) == 4
    assert got == {1: ("a", sha(big), len(big)), 2: ("b", sha(from_file), len(from_file)),
                   3: ("c", sha(path.read_bytes()), THRESHOLD + 1), 4: ("d", sha(b"tiny"), 4)}
    stats = claims.stats()
    assert (stats.processed, stats.inline, stats.claimed, stats.fetched, stats.released, stats.dead_lettered) == \
           (4, 1, 3, 3, 3, 0)
    assert stats.bytes_stored == stats.bytes_fetched == len(big) + len(from_file) + THRESHOLD + 1
    assert store.usage().objects == 0  # deleted after the ack
    assert (store.stats().puts, store.stats().deletes) == (3, 3)


def test_small_payloads_pass_inline_untouched(store: PayloadStore, bus: ringbus.Bus, queue: str) -> None:
    claims = ClaimCheck(store, threshold=THRESHOLD)
    rng = random.Random(3)
    sent = [rng.randbytes(size) for size in [0, 1, 100, 4096, THRESHOLD - 1, THRESHOLD]]
    for i, payload in enumerate(sent):
        claims.send(bus, queue, payload, headers={"i": i, "kind": "thumbnail"}, content_type="image/png")
    messages = drain(bus, queue, len(sent))
    assert [bytes(m.body) for m in messages] == sent
    assert [m.headers for m in messages] == [{"i": i, "kind": "thumbnail"} for i in range(len(sent))]
    assert {m.content_type for m in messages} == {"image/png"}
    assert [claims.fetch(m) for m in messages] == sent
    assert store.stats() == type(store.stats())(puts=0, bytes_put=0, opens=0, deletes=0, swept=0)  # never asked
    assert store.usage().objects == 0
    assert (claims.stats().inline, claims.stats().claimed) == (len(sent), 0)
    # one byte more and it is claimed
    claims.send(bus, queue, bytes(THRESHOLD + 1))
    [message] = drain(bus, queue, 1)
    assert message.body == b"" and message.headers[CLAIM_SIZE] == THRESHOLD + 1
    assert store.stats().puts == 1


# -- bad input: dead-lettered with the reason -------------------------------------------------------------------------
@pytest.mark.parametrize("tamper", ["flip", "append"])
def test_tampered_payload_is_dead_lettered(store: PayloadStore, bus: ringbus.Bus, queue: str, tamper: str,
                                           caplog: pytest.LogCaptureFixture) -> None:
    claims = ClaimCheck(store, threshold=THRESHOLD)
    payload = random.Random(5).randbytes(3 * MiB)
    claims.send(bus, queue, payload, key="order-1")
    [message] = drain(bus, queue, 1)
    key = str(message.headers[CLAIM_KEY])
    bad = payload[:MiB] + bytes([payload[MiB] ^ 1]) + payload[MiB + 1:] if tamper == "flip" else payload + b"!"
    rewrite(store, key, bad)
    reason = "hash_mismatch" if tamper == "flip" else "size_mismatch"
    with pytest.raises(ClaimIntegrityError) as error:
        claims.fetch(message)
    assert error.value.reason == reason and isinstance(error.value, ringbus.RingbusError)

    bus.send(queue, message)  # again, through the consumer
    seen: list[int] = []
    with caplog.at_level(logging.WARNING, logger="ringbus.claim_check"):
        handled = claims.consume(bus, queue, lambda m, p: seen.append(len(p.read())), max_messages=1)
    assert handled == 1 and seen == []  # the handler's read raised
    [dead] = drain(bus, f"{queue}.dlq", 1)
    assert dead.id == message.id and dead.key == "order-1"
    assert (dead.headers[CLAIM_ERROR], dead.headers["ringbus-dead-reason"], dead.headers["ringbus-dead-from"]) == \
           (reason, "rejected", queue)
    assert dead.headers[CLAIM_KEY] == key  # the claim stays for inspection ...
    assert store.usage().objects == 1  # ... and so does the payload, until a sweep
    assert bus.queue_stats(queue).depth == 0 and bus.queue_stats(queue).in_flight == 0
    stats = claims.stats()
    assert (stats.processed, stats.dead_lettered, stats.errors) == (0, 1, {reason: 2})  # fetch above, consume here
    assert [r for r in caplog.records if reason in r.getMessage() and "dead-lettered" in r.getMessage()]


def test_missing_payload_is_dead_lettered(store: PayloadStore, bus: ringbus.Bus, queue: str) -> None:
    claims = ClaimCheck(store, threshold=THRESHOLD)
    for i in range(3):
        claims.send(bus, queue, bytes([i]) * (THRESHOLD + 10), headers={"i": i})
    messages = drain(bus, queue, 3)
    assert store.delete(str(messages[1].headers[CLAIM_KEY])) is True
    with pytest.raises(ClaimNotFound, match="no payload"):
        claims.fetch(messages[1])
    for message in messages:
        bus.send(queue, message)
    done: list[Any] = []
    assert claims.consume(bus, queue, lambda m, p: done.append(m.headers["i"]), max_messages=3) == 3
    assert done == [0, 2]
    [dead] = drain(bus, f"{queue}.dlq", 1)
    assert (dead.headers["i"], dead.headers[CLAIM_ERROR]) == (1, "missing")
    assert claims.stats().errors == {"missing": 2} and claims.stats().dead_lettered == 1
    assert store.usage().objects == 0


BAD_KEYS = {"../x": "parent-directory", "/etc/passwd": "absolute path", "a/b": "path separator", "\0": "NUL",
            "..": "parent-directory", "a\\b": "path separator", "": "empty", ".hidden": "not a store key",
            "x" * 200: "not a store key"}


def test_traversal_keys_are_refused(store: PayloadStore, tmp_path: Path) -> None:
    secret = tmp_path / "x"
    secret.write_bytes(b"outside the store")
    for key, why in BAD_KEYS.items():
        with pytest.raises(InvalidClaimKey, match=why):
            store.open(key)
        with pytest.raises(InvalidClaimKey, match=why):
            store.delete(key)
        with pytest.raises(InvalidClaimKey):
            check_key(key)
    assert secret.read_bytes() == b"outside the store"
    assert store.stats().opens == store.stats().deletes == 0


def test_local_store_refuses_links_out(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "claims")
    (tmp_path / "secret").write_bytes(b"outside")
    link = uuid.uuid4().hex
    (store.directory / link).symlink_to(tmp_path / "secret")
    with pytest.raises(InvalidClaimKey, match="symbolic link"):
        store.open(link)
    assert store.usage().objects == 0  # a link is not a payload; the sweep leaves it alone too
    assert store.sweep(0, now=time.time() + 10) == 0 and (store.directory / link).is_symlink()


def forged(message_id: str, **claim: Any) -> Message:
    headers = {CLAIM_URL: claim.get("url"), CLAIM_KEY: claim.get("key"), CLAIM_SIZE: claim.get("size", 17),
               CLAIM_SHA256: claim.get("sha", "0" * 64)}
    return Message(b"", id=message_id, headers=headers)


def test_forged_claims_are_dead_lettered_without_touching_anything(bus: ringbus.Bus, queue: str,
                                                                    tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "claims")
    claims = ClaimCheck(store, threshold=THRESHOLD)
    secret = b"outside the store"
    (tmp_path / "x").write_bytes(secret)
    sent = {f"key-{i}": forged(f"key-{i}", url=store.url, key=key, size=len(secret), sha=sha(secret))
            for i, key in enumerate(["../x", "/etc/passwd", "a/b", "\0"])}
    sent["store"] = forged("store", url=(tmp_path / "elsewhere").as_uri(), key=uuid.uuid4().hex)
    partial = forged("partial", url=store.url, key=uuid.uuid4().hex)
    del partial.headers[CLAIM_SHA256]
    sent["partial"] = partial
    bus.send_many(queue, list(sent.values()))
    handler_calls: list[str] = []
    assert claims.consume(bus, queue, lambda m, p: handler_calls.append(m.id), max_messages=6) == 6
    assert handler_calls == []
    dead = {m.id: m.headers[CLAIM_ERROR] for m in drain(bus, f"{queue}.dlq", 6)}
    assert dead == {"key-0": "invalid_key", "key-1": "invalid_key", "key-2": "invalid_key", "key-3": "invalid_key",
                    "store": "unknown_store", "partial": "invalid_claim"}
    assert claims.stats().errors == {"invalid_key": 4, "unknown_store": 1, "invalid_claim": 1}
    assert store.stats().opens == 0
    with pytest.raises(UnknownClaimStore, match="not one of this claim check's stores") as error:
        claims.open(sent["store"])
    assert isinstance(error.value, ClaimCheckError) and isinstance(error.value, ringbus.RingbusError)


# -- garbage collection -----------------------------------------------------------------------------------------------
def test_payloads_are_deleted_after_ack_and_by_ttl_sweep(store: PayloadStore, bus: ringbus.Bus, queue: str) -> None:
    claims = ClaimCheck(store, threshold=THRESHOLD)
    size = THRESHOLD + 1000
    for i in range(5):
        claims.send(bus, queue, bytes([i]) * size)
    assert store.usage() == type(store.usage())(5, 5 * size)
    assert claims.consume(bus, queue, lambda m, p: p.read(), max_messages=3) == 3
    assert store.usage().objects == 2 and claims.stats().released == 3  # deleted right after each ack
    assert claims.sweep(older_than=3600) == 0  # nothing is an hour old
    assert claims.sweep(older_than=3600, now=time.time() + 7200) == 2  # two hours later, the TTL takes the rest
    assert store.usage().objects == 0 and store.stats().swept == 2
    # which is why older_than must outlast any wait in the queue: the two messages left lost their payloads
    assert claims.consume(bus, queue, lambda m, p: p.read(), max_messages=2) == 2
    assert claims.stats().errors == {"missing": 2}
    # a send that fails leaves no payload behind
    with pytest.raises(ringbus.NotFound):
        claims.send(bus, f"undeclared-{uuid.uuid4().hex[:8]}", bytes(size))
    assert store.usage().objects == 0 and store.stats().puts == 6


def test_sweep_command_for_cron(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "claims")
    claims = ClaimCheck(store, threshold=0)
    for i in range(3):
        claims.check_in(bytes([i]) * 100)
    old = time.time() - 7200
    for path in sorted(p for p in store.directory.iterdir() if p.is_file())[:2]:
        os.utime(path, (old, old))
    command = ["-m", "ringbus.patterns.payload_stores", "sweep", str(store.directory), "--older-than", "3600"]
    result = run_python(*command)
    assert result.returncode == 0, result.stderr
    assert "swept 2 payload(s)" in result.stdout and "1 left (100 bytes)" in result.stdout
    assert store.usage().objects == 1
    bad = run_python(*command[:-1], "-5")
    assert bad.returncode == 2 and "older_than must be a number of seconds >= 0" in bad.stderr


def test_a_failing_handler_keeps_the_payload_for_the_retry(bus: ringbus.Bus, queue: str, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "claims")
    claims = ClaimCheck(store, threshold=THRESHOLD, retry=RetryPolicy(base=0.0, jitter=False))
    payload = random.Random(9).randbytes(THRESHOLD * 3)
    claims.send(bus, queue, payload)
    calls: list[int] = []

    def flaky(message: Message, stream: Any) -> None:
        calls.append(message.attempts)
        data = stream.read(1000)  # reads part of it, then fails on the first attempt
        if message.attempts == 0:
            raise RuntimeError("thumbnail service down")
        assert data == payload[:1000]

    assert claims.consume(bus, queue, flaky, max_messages=2) == 2
    stats = claims.stats()
    assert calls == [0, 1]
    assert (stats.processed, stats.failed, stats.retried, stats.fetched, stats.released) == (1, 1, 1, 1, 1)
    assert store.usage().objects == 0 and store.stats().opens == 2


class BrokenUpload(io.RawIOBase):
    """An upload whose connection drops after ``good`` bytes."""

    def __init__(self, good: int) -> None:
        super().__init__()
        self.left = good

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        if self.left <= 0:
            raise ConnectionResetError("client went away mid-upload")
        n = min(self.left, MiB if n is None or n < 0 else n)
        self.left -= n
        return bytes(n)


def leftovers(store: PayloadStore) -> list[str]:
    """What a store keeps besides complete payloads: partial files, Redis keys, S3 multipart uploads."""
    if isinstance(store, LocalStore):
        return [p.name for p in (store.directory / ".incoming").iterdir()]
    if isinstance(store, RedisStore):
        return [k.decode() for k in store.client.scan_iter(match=store.prefix + "partial:*")]
    assert isinstance(store, S3Store)
    return [u["Key"] for u in store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", ())]


def test_a_failed_upload_leaves_nothing(store: PayloadStore, bus: ringbus.Bus, queue: str) -> None:
    claims = ClaimCheck(store, threshold=THRESHOLD)
    with pytest.raises(ConnectionResetError):
        claims.send(bus, queue, BrokenUpload(11 * MiB))  # S3: two 5 MiB parts uploaded, then aborted
    assert store.usage().objects == 0 and leftovers(store) == []
    assert bus.queue_stats(queue).depth == 0 and claims.stats().claimed == 0


def test_as_bytes_hands_over_only_verified_payloads(bus: ringbus.Bus, queue: str, tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "claims")
    claims = ClaimCheck(store, threshold=THRESHOLD)
    payloads = [bytes([i]) * (THRESHOLD * 2) for i in range(3)]
    for payload in payloads:
        claims.send(bus, queue, payload)
    messages = drain(bus, queue, 3)
    rewrite(store, str(messages[1].headers[CLAIM_KEY]), payloads[2])  # right size, wrong bytes
    bus.send_many(queue, messages)
    handed: list[bytes] = []
    assert claims.consume(bus, queue, lambda m, data: handed.append(data), max_messages=3, as_bytes=True) == 3
    assert handed == [payloads[0], payloads[2]]  # the tampered one never reached the handler
    assert claims.stats().errors == {"hash_mismatch": 1} and claims.stats().dead_lettered == 1


# -- 200 MiB, streamed ------------------------------------------------------------------------------------------------
class PatternFile(io.RawIOBase):
    """``size`` deterministic pseudo-random bytes, made as they are read (never all in memory); sha256 as it goes."""

    def __init__(self, size: int, seed: int = 1) -> None:
        super().__init__()
        self.left = size
        self.rng = random.Random(seed)
        self.digest = hashlib.sha256()

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.rng.randbytes(n)
        self.left -= n
        self.digest.update(data)
        return data


BIG = 200 * MiB
LIMIT = 50 * MiB

CHILD = r"""
import hashlib, json, sys, tracemalloc
import ringbus
from ringbus.patterns.claim_check import ClaimCheck
from ringbus.patterns.payload_stores import LocalStore, RedisStore, S3Store

spec = json.loads(sys.argv[1])
if spec["kind"] == "local":
    store = LocalStore(spec["directory"])
elif spec["kind"] == "redis":
    store = RedisStore(prefix=spec["prefix"], chunk_size=spec["chunk_size"])
else:
    store = S3Store(spec["bucket"], endpoint_url=spec["endpoint"], part_size=spec["part_size"], **spec["credentials"])
claims = ClaimCheck(store)

def rss(field):
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith(field + ":"))

result = {}
def handler(message, payload):
    digest, size = hashlib.sha256(), 0
    while chunk := payload.read(1 << 20):
        digest.update(chunk)
        size += len(chunk)
    result.update(sha256=digest.hexdigest(), size=size)

with ringbus.connect(spec["endpoint_bus"]) as bus:
    message = bus.receive(spec["queue"], timeout=60)
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # the peak RSS starts again from here
    before = rss("VmRSS")
    tracemalloc.start()
    claims.handle(bus, spec["queue"], message, handler)
    result["traced_peak"] = tracemalloc.get_traced_memory()[1]
    result["rss_growth"] = rss("VmHWM") - before
    result["stats"] = [claims.stats().processed, claims.stats().released]
print(json.dumps(result))
"""


def traced_peak(action: Any) -> int:
    """Peak bytes the Python allocators held while ``action()`` ran, above what they held before."""
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        action()
        return tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


@pytest.fixture(params=["local", "redis", "s3"])
def big_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, PayloadStore]]:
    if request.param == "s3" and not FULL:
        pytest.skip("the 200 MiB payload through S3 (moto) runs only with RINGBUS_FULL=1")
    store = make_store(request.param, request, tmp_path)
    yield request.param, store
    store.close()


def child_spec(kind: str, store: PayloadStore) -> dict[str, Any]:
    if isinstance(store, LocalStore):
        return {"kind": kind, "directory": str(store.directory)}
    if isinstance(store, RedisStore):
        return {"kind": kind, "prefix": store.prefix, "chunk_size": store.chunk_size}
    assert isinstance(store, S3Store)
    return {"kind": kind, "bucket": store.bucket, "endpoint": store.client.meta.endpoint_url,
            "part_size": store.part_size, "credentials": S3_CREDENTIALS}


def test_200_mib_payload_streams_with_bounded_memory(big_store: tuple[str, PayloadStore], url: str) -> None:
    kind, store = big_store
    if kind == "s3" and url.startswith("memory://"):
        pytest.skip("memory:// cannot cross processes and moto shares this process's heap, so the consumer's "
                    "memory cannot be told apart here (the broker case runs the consumer in a process of its own)")
    claims = ClaimCheck(store)
    queue = f"big-{uuid.uuid4().hex[:8]}"
    source = PatternFile(BIG)
    with ringbus.connect(url) as bus:
        bus.declare_queue(queue)
        if kind == "s3":  # moto keeps the object in this process's heap: measure the consumer only
            claims.send(bus, queue, source)
        else:
            producer_peak = traced_peak(lambda: claims.send(bus, queue, source))
            print(f"producer: traced peak {producer_peak / MiB:.1f} MiB")
            assert producer_peak < LIMIT, f"the producer held {producer_peak / MiB:.1f} MiB"
        assert store.usage() == type(store.usage())(1, BIG)
        if url.startswith("memory://"):
            got: dict[str, Any] = {}

            def handler(message: Message, payload: Any) -> None:
                digest, size = hashlib.sha256(), 0
                while chunk := payload.read(MiB):
                    digest.update(chunk)
                    size += len(chunk)
                got.update(sha256=digest.hexdigest(), size=size)

            consumer_peak = traced_peak(lambda: claims.consume(bus, queue, handler, max_messages=1))
            print(f"consumer: traced peak {consumer_peak / MiB:.1f} MiB")
            assert consumer_peak < LIMIT, f"the consumer held {consumer_peak / MiB:.1f} MiB"
            assert got == {"sha256": source.digest.hexdigest(), "size": BIG}
        else:  # the consumer in a process of its own: its peak RSS, not only what Python allocated
            spec = {**child_spec(kind, store), "endpoint_bus": url, "queue": queue}
            result = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True,
                                    timeout=120, env=python_env())
            assert result.returncode == 0, result.stderr
            got = json.loads(result.stdout)
            print(f"consumer: rss growth {got['rss_growth'] / MiB:.1f} MiB, traced peak "
                  f"{got['traced_peak'] / MiB:.1f} MiB")
            assert got["rss_growth"] < LIMIT and got["traced_peak"] < LIMIT
            assert (got["sha256"], got["size"], got["stats"]) == (source.digest.hexdigest(), BIG, [1, 1])
    assert store.usage().objects == 0  # released after the ack


# -- arguments and the example ----------------------------------------------------------------------------------------
def test_bad_arguments_name_what_is_wrong(tmp_path: Path) -> None:
    store = LocalStore(tmp_path / "claims")
    with pytest.raises(ValueError, match="threshold"):
        ClaimCheck(store, threshold=-1)
    with pytest.raises(TypeError, match="store"):
        ClaimCheck(42)  # type: ignore[arg-type]
    claims = ClaimCheck(store)
    with pytest.raises(TypeError, match="not str"):
        claims.check_in("some text")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="binary mode"):
        claims.check_in(io.StringIO("text"))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="payload must be"):
        claims.check_in(None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="claim check's own headers"):
        claims.check_in(b"x", headers={CLAIM_KEY: "mine"})
    with pytest.raises(ValueError, match="older_than"):
        store.sweep(-1)
    with pytest.raises(FileNotFoundError):
        claims.check_in(tmp_path / "no-such-file")
    with ringbus.connect(f"memory://{uuid.uuid4().hex}") as bus:
        with pytest.raises(ValueError, match="prefetch"):
            claims.consume(bus, "q", lambda m, p: None, prefetch=0)
    assert store.stats().puts == 0


def test_default_store_is_a_local_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RINGBUS_CLAIMS_DIR", str(tmp_path / "default"))
    claims = ClaimCheck(threshold=10)
    message = claims.check_in(b"x" * 11)
    assert isinstance(claims.store, LocalStore) and claims.store.directory == (tmp_path / "default").resolve()
    assert message.headers[CLAIM_URL] == (tmp_path / "default").resolve().as_uri()
    assert claims.fetch(message) == b"x" * 11 and claims.release(message) is True


def test_example_runs() -> None:
    output = run_example("claim_check_images.py")
    assert "sent 6 images of 20.0 MiB through the claim check (120.0 MiB stored) and 20 thumbnail requests" in output
    assert "dead-lettered: 1 (hash_mismatch)" in output
    assert "store after GC: 0 payloads, 0 bytes" in output

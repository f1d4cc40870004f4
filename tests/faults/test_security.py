"""Issue 10, part 10: security - CURVE, pickle, claim-check keys, webhook targets, job ids and tenants.

- CURVE matrix on the broker (Broker(curve=...) / ringbus.connect(url, curve=...)) and on the transport's
  Requester/Replier: the authorised key is served; an unknown key, a client without CURVE and a client that
  expects another server key are refused and reach nothing. A CURVE server cannot be made without keys.
- A pickle crafted to run code (``os.system`` touching a marker file from ``__reduce__``) never runs unless the
  receiver opted in: codec, a Bus on memory:// and on the broker, a bus pipeline stage, the claim check.
- Hostile claim-check keys (``..``, absolute paths, NUL, symlinks out, very long, unicode look-alikes) touch
  nothing outside the store directory, through the store and through a consumer of claim messages.
- Webhooks to loopback, private, link-local (cloud metadata), IPv6 loopback/ULA/link-local, IPv4-mapped, 6to4,
  decimal/octal/hex IPv4 forms are refused; a redirect from the target is never followed (a real server).
- Job ids carry >= 122 random bits (measured over samples); through the real HTTP app, another tenant's job is
  404 on every route.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import pickle
import shlex
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import ringbus
from ringbus import PeerGone, ProtocolError
from ringbus.codec import PICKLE, decode, encode, loads
from ringbus.message import Message, new_id
from ringbus.patterns.claim_check import CLAIM_KEY, ClaimCheck, InvalidClaimKey
from ringbus.patterns.payload_stores import ClaimNotFound, LocalStore, check_key
from ringbus.patterns.webhooks import WebhookPolicy
from ringbus.transport import CurveClient, CurveServer, Requester, curve_keypair

from .figures import record

T = 10.0  # bound on waits that end at once when the code works


def wait_for(condition: Any, what: str, timeout: float = 30.0) -> Any:
    import time

    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.02)
    return value


# -- CURVE -------------------------------------------------------------------------------------------------------

CASES = ("authorised", "unknown key", "no CURVE", "wrong server key")


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {"server": curve_keypair(), "client": curve_keypair(), "intruder": curve_keypair(),
            "impostor": curve_keypair()}


def client_curve(case: str, keys: dict[str, Any]) -> CurveClient | None:
    server, client, intruder, impostor = keys["server"], keys["client"], keys["intruder"], keys["impostor"]
    if case == "authorised":
        return CurveClient(client.secret, client.public, server.public)
    if case == "unknown key":
        return CurveClient(intruder.secret, intruder.public, server.public)
    if case == "wrong server key":  # an authorised key, but it expects another server: it will not talk
        return CurveClient(client.secret, client.public, impostor.public)
    return None


@pytest.fixture(scope="module")
def curve_broker(keys: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[ringbus.Broker]:
    server = keys["server"]
    config = CurveServer(server.secret, server.public, [keys["client"].public])
    with ringbus.Broker(tmp_path_factory.mktemp("curve-broker"), "tcp://127.0.0.1:0", curve=config) as broker:
        yield broker


@pytest.mark.parametrize("case", CASES)
def test_curve_broker_serves_exactly_the_authorised_client(case: str, keys: dict[str, Any],
                                                           curve_broker: ringbus.Broker) -> None:
    queue = f"curve-{uuid.uuid4().hex[:8]}"
    allowed = CurveClient(keys["client"].secret, keys["client"].public, keys["server"].public)
    with ringbus.connect(curve_broker.endpoint, curve=allowed, timeout=T) as owner:
        owner.declare_queue(queue)
    accepted = False
    try:
        with ringbus.connect(curve_broker.endpoint, curve=client_curve(case, keys), timeout=2.0) as bus:
            bus.send(queue, b"knock knock")
            accepted = True
    except PeerGone as exc:
        assert case != "authorised", f"the authorised client was refused: {exc}"
        assert "handshake" in str(exc) or "did not answer" in str(exc)
    with ringbus.connect(curve_broker.endpoint, curve=allowed, timeout=T) as owner:
        depth = owner.queue_stats(queue).depth
    record(f"security.curve.broker.{case.replace(' ', '_')}", accepted=accepted, messages_in=depth)
    assert accepted is (case == "authorised")
    assert depth == (1 if case == "authorised" else 0), "a refused client got a message into the broker"


def test_curve_broker_counts_and_names_unknown_keys(keys: dict[str, Any], curve_broker: ringbus.Broker) -> None:
    with pytest.raises(PeerGone, match="handshake"):
        with ringbus.connect(curve_broker.endpoint, curve=client_curve("unknown key", keys), timeout=2.0) as bus:
            bus.queue_stats("anything")
    assert curve_broker._auth.refused >= 1


@pytest.mark.parametrize("case", CASES)
def test_curve_transport_serves_exactly_the_authorised_client(case: str, keys: dict[str, Any],
                                                              threads: Any) -> None:
    from test_transport_zmq import echo, serve_in_thread  # the transport tests' replier on a thread

    server = keys["server"]
    stop = threading.Event()
    endpoint, replier = serve_in_thread(threads, echo, stop,
                                        curve=CurveServer(server.secret, server.public, [keys["client"].public]))
    try:
        with Requester(endpoint, linger=0, curve=client_curve(case, keys)) as requester:
            try:
                reply = requester.request(Message(b"ping"), timeout=2.0 if case == "authorised" else 0.5)
            except ringbus.Empty:
                reply = None
    finally:
        stop.set()
        threads.join()
    record(f"security.curve.transport.{case.replace(' ', '_')}", accepted=reply is not None,
           served=replier.statistics().received)
    assert (reply is not None) is (case == "authorised")
    assert replier.statistics().received == (1 if case == "authorised" else 0)


def test_curve_without_authorised_keys_refuses_to_start(keys: dict[str, Any], tmp_path: Path) -> None:
    server = keys["server"]
    with pytest.raises(ValueError, match="refusing to start"):
        ringbus.Broker(tmp_path, "tcp://127.0.0.1:0", curve=CurveServer(server.secret, server.public, []))
    with pytest.raises(TypeError, match="list of public keys"):  # one key where a list belongs
        CurveServer(server.secret, server.public, keys["client"].public)
    with pytest.raises(TypeError, match="CurveServer"):
        ringbus.Broker(tmp_path, "tcp://127.0.0.1:0", curve=(server.secret, server.public))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="CurveClient"):
        ringbus.connect("tcp://127.0.0.1:1", curve=server.public)


# -- pickle ------------------------------------------------------------------------------------------------------


class _RunsCode:
    """Unpickling this runs ``touch <marker>`` (through os.system, as a real exploit would)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


@pytest.fixture
def exploit(tmp_path: Path) -> tuple[bytes, Path]:
    marker = tmp_path / "pwned"
    return pickle.dumps(_RunsCode(marker)), marker


def test_the_exploit_is_live_when_the_receiver_opts_in(exploit: tuple[bytes, Path]) -> None:
    body, marker = exploit
    loads(body, PICKLE, allow_pickle=True)  # the control: without it, "never created" would prove nothing
    assert marker.exists()


@pytest.mark.parametrize("content_type", [PICKLE, "APPLICATION/PYTHON-PICKLE", PICKLE + "; protocol=5",
                                          "application/x-python-serialize", "application/octet-stream"])
def test_codec_never_unpickles_unless_asked(content_type: str, exploit: tuple[bytes, Path]) -> None:
    body, marker = exploit
    message = decode(encode(Message(body, content_type=content_type)))
    assert bytes(message.body) == body  # decoding the frames never looks inside the body
    try:
        value = message.value()
    except ProtocolError as exc:
        assert "pickle" in str(exc) or "no serializer" in str(exc)
    else:
        assert value == body  # octet-stream: the bytes as they are
    assert not marker.exists()


@pytest.fixture(scope="module")
def plain_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with ringbus.Broker(tmp_path_factory.mktemp("plain-broker"), "tcp://127.0.0.1:0") as broker:
        yield broker.endpoint


@pytest.fixture(params=["memory", "broker"])
def bus_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return f"memory://security-{uuid.uuid4().hex}"
    return str(request.getfixturevalue("plain_broker"))


def test_a_bus_delivers_a_pickle_without_running_it(bus_url: str, exploit: tuple[bytes, Path]) -> None:
    body, marker = exploit
    queue = f"pickles-{uuid.uuid4().hex[:8]}"
    with ringbus.connect(bus_url) as bus:
        bus.declare_queue(queue)
        bus.send(queue, Message(body, content_type=PICKLE))
        message = bus.receive(queue, timeout=T)
        assert message is not None and bytes(message.body) == body
        with pytest.raises(ProtocolError, match="allow_pickle=True"):
            message.value()
        message.ack()
    assert not marker.exists()


def _never_called(item: Any) -> Any:
    raise AssertionError(f"the stage got {item!r}")


def test_a_pipeline_stage_dead_letters_a_pickle_without_running_it(bus_url: str, exploit: tuple[bytes, Path]) -> None:
    from ringbus.patterns.pipeline import BusPipeline

    body, marker = exploit
    source, sink = f"pipe-in-{uuid.uuid4().hex[:8]}", f"pipe-out-{uuid.uuid4().hex[:8]}"
    with ringbus.connect(bus_url) as bus:
        with BusPipeline(bus_url, source, [(_never_called, sink)]):
            bus.send(source, Message(body, content_type=PICKLE))
            letter = wait_for(lambda: bus.receive(f"{source}.dlq", timeout=0.2), "the pickle's dead letter")
        letter.ack()
    assert letter.headers["ringbus-error-type"] == "ProtocolError"
    assert bytes(letter.body) == body and not marker.exists()


def test_a_claimed_pickle_is_handed_over_as_bytes(tmp_path: Path, exploit: tuple[bytes, Path]) -> None:
    body, marker = exploit
    checks = ClaimCheck(LocalStore(tmp_path / "claims", fsync=False), threshold=16)
    with ringbus.connect(f"memory://claims-{uuid.uuid4().hex}") as bus:
        bus.declare_queue("big")
        checks.send(bus, "big", body, content_type=PICKLE)
        message = bus.receive("big", timeout=T)
        assert message is not None and CLAIM_KEY in message.headers
        assert checks.fetch(message) == body
        message.ack()
    assert not marker.exists()


# -- claim-check keys --------------------------------------------------------------------------------------------

HOSTILE_KEYS = [
    "../outside", "..", ".", "../../etc/passwd", "a/../../outside", "/etc/passwd", "/tmp", "\\\\server\\share",
    "C:\\Windows", "c:outside", "payload\x00", "\x00", "a\x00/../outside", "a" * 129, "a" * 100_000, "",
    ".incoming", ".incoming/x.part", "~root", "%2e%2e%2foutside", "\u2025/outside", "\uff0e\uff0e\uff0foutside",
    "\u2215etc\u2215passwd", "a\u0338", "payload\u200b", "ｐａｙｌｏａｄ", "\udc2e\udc2e", "line\nbreak", " payload",
]


def _snapshot(root: Path, store: Path) -> dict[str, tuple[bytes | str, int]]:
    """Every path under root outside the store: its content (or link target) and mtime."""
    out: dict[str, tuple[bytes | str, int]] = {}
    for path in root.rglob("*"):
        if store in path.parents or path == store:
            continue
        if path.is_symlink():
            out[str(path)] = (os.readlink(path), path.lstat().st_mtime_ns)
        elif path.is_file():
            out[str(path)] = (path.read_bytes(), path.stat().st_mtime_ns)
        else:
            out[str(path)] = ("dir", path.stat().st_mtime_ns)
    return out


@pytest.fixture
def hostile_store(tmp_path: Path) -> tuple[LocalStore, Path]:
    (tmp_path / "outside").write_bytes(b"do not touch")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "passwd").write_bytes(b"root:x:0:0")
    store = LocalStore(tmp_path / "store", fsync=False)
    (store.directory / "escape").symlink_to(tmp_path / "outside")  # a key-shaped name that points outside
    (store.directory / "escapedir").symlink_to(tmp_path / "etc", target_is_directory=True)
    return store, tmp_path


def test_hostile_claim_keys_touch_nothing_outside_the_store(hostile_store: tuple[LocalStore, Path]) -> None:
    store, root = hostile_store
    before = _snapshot(root, store.directory)
    refused = 0
    for key in HOSTILE_KEYS:
        with pytest.raises(InvalidClaimKey):
            check_key(key)
        for operation in (store.open, store.delete):
            with pytest.raises(InvalidClaimKey):
                operation(key)
            refused += 1
    for key in ("escape", "escapedir"):  # valid names, but links: never followed
        with pytest.raises(InvalidClaimKey, match="symbolic link"):
            store.open(key)
        assert store.delete(key)  # removes the link itself, inside the store
    with pytest.raises(ClaimNotFound):
        store.open("escape")
    assert _snapshot(root, store.directory) == before
    record("security.claim_keys", hostile=len(HOSTILE_KEYS), refused_operations=refused, outside_changed=0)


def test_a_consumer_refuses_hostile_keys_in_claim_messages(hostile_store: tuple[LocalStore, Path]) -> None:
    store, root = hostile_store
    checks = ClaimCheck(store, threshold=16)
    before = _snapshot(root, store.directory)
    claim = {"ringbus-claim-url": store.url, "ringbus-claim-size": 12, "ringbus-claim-sha256": "0" * 64}
    for key in HOSTILE_KEYS:
        message = Message(b"", headers={**claim, CLAIM_KEY: key})
        with pytest.raises(InvalidClaimKey):
            checks.fetch(message)
        with pytest.raises(InvalidClaimKey):
            checks.release(message)
    link = Message(b"", headers={**claim, CLAIM_KEY: "escape"})
    with pytest.raises(InvalidClaimKey, match="symbolic link"):
        checks.fetch(link)
    assert checks.release(link)  # the link itself goes, not what it points to
    assert checks.stats().errors.get("invalid_key", 0) >= len(HOSTILE_KEYS)
    assert _snapshot(root, store.directory) == before


# -- webhooks ----------------------------------------------------------------------------------------------------

REFUSED_TARGETS = {
    "loopback": ["127.0.0.1", "127.1", "127.255.255.254", "localhost", "[::1]"],
    "decimal/octal/hex IPv4": ["2130706433", "017700000001", "0177.0.0.1", "0x7f000001", "0x7f.0.0.1",
                               "3232235777", "0xa9fea9fe"],
    "private": ["10.0.0.1", "172.16.0.1", "172.31.255.254", "192.168.1.1", "100.64.0.1", "[fd00::1]",
                "[fc00::1]", "[2001:db8::1]"],
    "link-local": ["169.254.169.254", "169.254.0.1", "[fe80::1]", "[fe80::1%25eth0]"],
    "IPv4-mapped / embedded": ["[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[::ffff:169.254.169.254]",
                               "[::ffff:10.0.0.1]", "[2002:a9fe:a9fe::1]", "[2002:7f00:1::]", "[64:ff9b::a9fe:a9fe]"],
    "unspecified / multicast": ["0.0.0.0", "[::]", "224.0.0.1", "[ff02::1]"],
}


@pytest.mark.parametrize("kind", sorted(REFUSED_TARGETS))
def test_webhooks_to_internal_addresses_are_refused(kind: str) -> None:
    # The real resolver (getaddrinfo): the numeric forms resolve locally, as an HTTP client would resolve them.
    policy = WebhookPolicy(secret="s3cr3t", allow_http=True)
    for host in REFUSED_TARGETS[kind]:
        for scheme in ("http", "https"):
            url = f"{scheme}://{host}:8443/hook?x=1"
            with pytest.raises(ValueError, match="not allowed|does not resolve"):
                policy.validate(url)
    record(f"security.webhooks.{kind.split()[0].replace('/', '_')}", refused=len(REFUSED_TARGETS[kind]) * 2)


def test_a_name_resolving_to_an_internal_address_is_refused() -> None:
    names = {"metadata.example": ["169.254.169.254"], "mixed.example": ["93.184.216.34", "10.0.0.7"],
             "v6.example": ["fd12::1"], "public.example": ["93.184.216.34", "2606:2800:220:1::1"]}
    policy = WebhookPolicy(secret="s", resolver=lambda host, port: names[host])
    for name in ("metadata.example", "mixed.example", "v6.example"):
        with pytest.raises(ValueError, match="not allowed"):
            policy.validate(f"https://{name}/hook")
    assert policy.validate("https://public.example/hook") == "https://public.example/hook"
    assert policy.validate("https://93.184.216.34/hook")  # a public address needs no name at all


class _Recorder(http.server.BaseHTTPRequestHandler):
    """Answers POST with the server's ``answer`` (status, headers) and counts the requests it got."""

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.server.hits += 1  # type: ignore[attr-defined]
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, headers = self.server.answer  # type: ignore[attr-defined]
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@contextlib.contextmanager
def http_server(status: int, headers: dict[str, str] | None = None) -> Iterator[Any]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    server.hits, server.answer = 0, (status, headers or {})  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(T)


@contextlib.contextmanager
def job_service(**app_options: Any) -> Iterator[tuple[Any, str]]:
    """A JobManager on memory://, a worker that answers {"ok": true}, and the HTTP app served by uvicorn."""
    pytest.importorskip("starlette", reason="the HTTP job server needs starlette (the http extra)")
    pytest.importorskip("uvicorn", reason="the HTTP job server needs uvicorn (the http extra)")
    from ringbus.http import JobServer, create_app
    from ringbus.patterns.async_request_reply import JobManager, JobWorker

    webhooks = app_options.pop("webhooks", None)
    url, queue = f"memory://security-jobs-{uuid.uuid4().hex}", f"jobs-{uuid.uuid4().hex[:8]}"
    with contextlib.ExitStack() as exits:
        manager = JobManager(url, queue=queue, webhooks=webhooks).start()
        exits.callback(manager.close)
        worker = JobWorker(url, lambda job, progress: {"ok": True}, queue=queue, progress_interval=0.0).start()
        exits.callback(worker.stop, 5.0)
        server = JobServer(create_app(manager, retry_after=0, sse_poll=0.2, **app_options)).start()
        exits.callback(server.stop)
        yield manager, server.url


def test_a_webhook_redirect_is_never_followed() -> None:
    """A real target answering 307 to another local server: the delivery fails; the second server is never hit.

    An offline test cannot use a public first hop, so the policy allows loopback (the test seam) for both: what
    is tested is that the delivery client does not follow redirects at all, whatever the second hop is."""
    httpx = pytest.importorskip("httpx", reason="webhook deliveries are made with httpx")
    from ringbus.patterns import RetryPolicy

    policy = WebhookPolicy(secret="whsec-test", allow_http=True, allow_loopback=True, max_attempts=2,
                           retry=RetryPolicy(base=0.01, max_delay=0.02), timeout=5.0)
    with http_server(200) as inner, http_server(307, {"Location": ""}) as outer:
        outer.answer = (307, {"Location": f"http://127.0.0.1:{inner.server_port}/stolen"})
        with job_service(webhooks=policy) as (manager, base), httpx.Client(base_url=base, timeout=T) as client:
            job = client.post("/jobs", json={"input": 1, "callback_url": f"http://127.0.0.1:{outer.server_port}/hook"})
            assert job.status_code == 202, job.text
            job_id = job.json()["id"]
            wait_for(lambda: (r := manager.get(job_id)) is not None and r.hook_state == "failed",
                     "the webhook to give up")
            record_ = manager.get(job_id)
        assert outer.hits == 2 and inner.hits == 0, "a redirect was followed"
        assert record_.hook_error == "HTTP 307"
    record("security.webhooks.redirect", deliveries=outer.hits, followed=inner.hits)


# -- job ids and tenants -----------------------------------------------------------------------------------------


def test_job_ids_carry_122_random_bits() -> None:
    """Per-bit frequencies over 20,000 ids: 122 bits vary like fair coins, 6 are fixed (uuid4 version/variant)."""
    import math

    n = 20_000
    samples = [new_id() for _ in range(n)]
    assert len(set(samples)) == n
    assert all(uuid.UUID(s).version == 4 for s in samples[:100])
    ones = [0] * 128
    for s in samples:
        value = int(s, 16)
        for bit in range(128):
            ones[bit] += value >> bit & 1
    frequencies = [c / n for c in ones]
    fixed = [f for f in frequencies if f in (0.0, 1.0)]
    varying = [f for f in frequencies if f not in (0.0, 1.0)]
    sigma = 0.5 / math.sqrt(n)
    entropy = sum(-(f * math.log2(f) + (1 - f) * math.log2(1 - f)) for f in varying)
    record("security.job_ids", samples=n, random_bits=len(varying), fixed_bits=len(fixed),
           entropy_bits=round(entropy, 2), max_bias=round(max(abs(f - 0.5) for f in varying), 4))
    assert len(fixed) == 6 and len(varying) == 122
    assert all(abs(f - 0.5) < 6 * sigma for f in varying), "a bit of the ids is biased"
    assert entropy > 121.9


def test_another_tenants_job_is_404_on_every_route() -> None:
    httpx = pytest.importorskip("httpx", reason="the HTTP tests are clients made with httpx")
    tokens = {"token-of-alpha-0123456789": "alpha", "token-of-beta-0123456789": "beta"}
    with job_service(tokens=tokens) as (manager, base):
        alpha, beta, nobody = (httpx.Client(base_url=base, timeout=T, headers=h) for h in (
            {"Authorization": "Bearer token-of-alpha-0123456789"},
            {"Authorization": "Bearer token-of-beta-0123456789"}, {"Authorization": "Bearer guess"}))
        with alpha, beta, nobody:
            submitted = alpha.post("/jobs", json={"input": [1, 2]})
            assert submitted.status_code == 202
            job_id = submitted.json()["id"]
            assert uuid.UUID(job_id).version == 4
            wait_for(lambda: alpha.get(f"/jobs/{job_id}").status_code == 303, "the job to succeed")
            unknown = beta.get(f"/jobs/{new_id()}")
            answers = {"status": beta.get(f"/jobs/{job_id}"), "result": beta.get(f"/jobs/{job_id}/result"),
                       "events": beta.get(f"/jobs/{job_id}/events"), "cancel": beta.delete(f"/jobs/{job_id}")}
            assert nobody.get(f"/jobs/{job_id}").status_code == 401
            assert alpha.get(f"/jobs/{job_id}/result").json() == {"ok": True}
            theirs = beta.post("/jobs", json={"input": 3}).json()["id"]
            assert alpha.get(f"/jobs/{theirs}").status_code == 404
            after = manager.get(job_id)
    assert unknown.status_code == 404
    for route, answer in answers.items():
        assert answer.status_code == 404, f"{route} of another tenant's job answered {answer.status_code}"
        assert answer.json() == {"error": f"no job {job_id!r}"}, "the answer differs from an unknown job's"
    assert after is not None and after.status == "succeeded"  # beta's DELETE changed nothing
    record("security.tenants", routes_checked=len(answers), answered_404=len(answers))

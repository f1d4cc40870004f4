"""Issue 10, part 9: fuzz targets shared by atheris (coverage-guided, run as a script) and hypothesis (test_fuzz.py).

Every target is ``target(data: bytes) -> None``: it turns the bytes into input for one decoder or validator,
catches only the errors that input is allowed to raise, and checks a property of what came back. Anything else
that escapes (a crash) is a bug: ``test_fuzz.py`` keeps each such input under ``regressions/<target>/``.

Structure comes from the bytes themselves (:class:`Draw`), so libFuzzer's mutations and hypothesis's shrinking
both work on one flat byte string, and a crash input replays through either engine. Run one target by hand::

    python tests/faults/fuzz_targets.py codec_decode -max_total_time=60 /tmp/corpus
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import shutil
import socket
import sys
import tempfile
import uuid
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # under libFuzzer: record coverage of ringbus's own code (imported below)
    import atheris

    _instrumented: Any = atheris.instrument_imports(include=["ringbus"])
else:
    _instrumented = contextlib.nullcontext()

with _instrumented:
    import msgspec
    import zmq

    from ringbus._core import crc32c
    from ringbus.broker.log import FILE_HEADER, RECORD_HEADER, SegmentedLog
    from ringbus.broker.protocol import SIGNATURE, Command, pack
    from ringbus.broker.server import Broker
    from ringbus.broker.store import DECLARE, DELIVERED, ENQUEUE, PUBLISH, REMOVE, REQUEUE
    from ringbus.codec import decode, encode
    from ringbus.errors import ProtocolError
    from ringbus.message import Message
    from ringbus.patterns.payload_stores import ClaimNotFound, InvalidClaimKey, LocalStore, check_key
    from ringbus.patterns.webhooks import WebhookPolicy

__all__ = ["TARGETS", "Draw", "seeds", "join_frames", "split_frames", "close_all"]

# Scratch files go to memory when the machine has it: a target opens a log or a store per input. Under libFuzzer,
# which ends the process without atexit handlers, test_fuzz.py names a directory it removes itself.
SCRATCH = os.environ.get("RINGBUS_FUZZ_SCRATCH") or (
    "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None)


class Draw:
    """Deterministic choices read from fuzzer bytes; past the end every draw is 0 (so short inputs stay valid)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            return 0
        self.pos += 1
        return self.data[self.pos - 1]

    def uint(self, nbytes: int) -> int:
        value = 0
        for _ in range(nbytes):
            value = value << 8 | self.byte()
        return value

    def choice(self, options: Any) -> Any:
        return options[self.byte() % len(options)]

    def blob(self, limit: int = 64) -> bytes:
        n = min(self.byte() % (limit + 1), len(self.data) - self.pos)
        self.pos += n
        return self.data[self.pos - n:self.pos]

    def rest(self) -> bytes:
        out, self.pos = self.data[self.pos:], len(self.data)
        return out

    def text(self, alphabet: str, limit: int = 24) -> str:
        return "".join(self.choice(alphabet) for _ in range(self.byte() % (limit + 1)))

    def number(self) -> Any:
        return self.choice((0, 1, -1, 2**31, 2**63 - 1, -(2**63), 2**64 - 1, 0.5, -0.0, math.inf, -math.inf,
                            math.nan, 1e308, self.uint(2), -self.uint(4), self.uint(8), True, False))

    def value(self, depth: int = 2) -> Any:
        """Something msgpack can carry, biased towards what the broker's records and arguments hold."""
        kind = self.byte() % (9 if depth > 0 else 6)
        if kind == 0:
            return None
        if kind in (1, 2):
            return self.number()
        if kind == 3:
            return self.choice(NAMES)
        if kind == 4:
            return self.text("ab.*#:-_ \x00\u00e9\U0001f600", 12)
        if kind == 5:
            return self.blob(32)
        if kind in (6, 7):
            return [self.value(depth - 1) for _ in range(self.byte() % 5)]
        return {self.choice(ARG_NAMES): self.value(depth - 1) for _ in range(self.byte() % 4)}


NAMES = ("q", "q.dlq", "orders", "@t.g", "a.b", "a.*", "#", "", "-x", "g", "s1", "latest", "earliest", "x" * 300)
ARG_NAMES = ("queue", "name", "options", "tags", "tag", "max", "wait", "frames", "inline", "topic", "pattern",
             "group", "start", "token", "session", "delta", "requeue", "delay", "ttl", "dedup_id", "max_length",
             "overflow", "dead_letter", "max_attempts", "visibility_timeout", "ordered_by_key", "durable",
             "dedup_window", "extra")


# -- framing helpers (a message's frames as one byte string, and back) ------------------------------------------


def join_frames(frames: list[Any]) -> bytes:
    """The inverse of :func:`split_frames`: body frames first, each behind a 2-byte length, the header last."""
    out = bytearray([len(frames) - 1 if frames else 0])
    for frame in frames[1:]:
        body = bytes(frame)[:0xFFFF]
        out += len(body).to_bytes(2, "big") + body
    out += bytes(frames[0]) if frames else b""
    return bytes(out)


def split_frames(data: bytes) -> list[Any]:
    """Frames from fuzzer bytes: the first byte's low 2 bits say how many body frames lead, bit 2 makes every
    frame a memoryview, bit 3 a bytearray (decode takes any buffer); the remainder is the header frame."""
    draw = Draw(data)
    flags = draw.byte()
    bodies = []
    for _ in range(flags & 3):
        n = draw.uint(2)
        bodies.append(draw.data[draw.pos:draw.pos + n])
        draw.pos += n
    frames: list[Any] = [draw.rest(), *bodies]
    if flags & 4:
        frames = [memoryview(f) for f in frames]
    elif flags & 8:
        frames = [bytearray(f) for f in frames]
    return frames


# -- 1. the wire codec ------------------------------------------------------------------------------------------


def codec_decode(data: bytes) -> None:
    """decode() returns a Message or raises ProtocolError; a decoded message encodes and decodes to itself."""
    frames = split_frames(data)
    try:
        message = decode(frames, copy=bool(data[:1]) and data[0] & 16 == 0)
    except ProtocolError:
        return
    assert isinstance(message, Message)
    once = encode(message, inline_max=-1)
    again = encode(decode([bytes(f) for f in once]), inline_max=-1)
    assert [bytes(f) for f in once] == [bytes(f) for f in again], "decode/encode is not a fixed point"


# -- 2. the broker's command decoder ----------------------------------------------------------------------------

_COMMANDS = [v for k, v in vars(Command).items() if k.isupper()] + [b"", b"NOPE", b"HELLO\x00"]


class _BrokerHarness:
    """A real Broker set up (log recovered, ROUTER bound on inproc) but driven from the caller's thread: each
    input is dispatched as the loop would, then one turn of upkeep runs. What escapes is what would have
    killed the broker's thread."""

    def __init__(self, directory: str) -> None:
        self.context: zmq.Context[Any] = zmq.Context()
        self.broker = Broker(directory, bind=f"inproc://fuzz-{uuid.uuid4().hex}", fsync="never", metrics=False,
                             context=self.context, heartbeat=0.5)
        b = self.broker
        b._log = SegmentedLog(b.data, fsync="never", segment_bytes=256 * 1024)  # as serve_forever does
        b._setup()

    def dispatch(self, frames: list[Any]) -> None:
        self.broker._dispatch(frames)

    def turn(self) -> None:
        """The upkeep of one turn of Broker._loop, after its receive."""
        import time

        b = self.broker
        if b._stuck:
            b._retry_stuck()
        b.queues.tick()
        b._serve_waiters()
        b._flush_events()
        now = time.monotonic()
        b._expire_waiters(now)
        b._expire_sessions(now)
        b.majordomo.tick()
        b._commit()

    def close(self) -> None:
        b = self.broker
        b._log.close()
        b._socket.close(linger=0)
        self.context.term()


_harness: dict[str, Any] = {}


def _scratch_dir(prefix: str) -> str:
    path = tempfile.mkdtemp(prefix=f"ringbus-fuzz-{prefix}-", dir=SCRATCH)
    _harness.setdefault("dirs", []).append(path)
    return path


def close_all() -> None:
    """Close the shared broker harness and remove scratch directories (test teardown; atexit for the script)."""
    harness = _harness.pop("broker", None)
    if harness is not None:
        harness.close()
    _harness.pop("claims", None)
    for path in _harness.pop("dirs", []):
        shutil.rmtree(path, ignore_errors=True)


def _message_frames(draw: Draw) -> list[bytes]:
    mode = draw.byte() % 4
    if mode == 0:
        return []
    if mode == 1:
        return [draw.blob(48)]
    body = draw.blob(40)
    message = Message(body, key=draw.choice((None, "k")), priority=draw.choice((0, 5, -3)),
                      headers={"h": draw.choice((1, "v", None))})
    frames = [bytes(f) for f in encode(message, inline_max=draw.choice((-1, 16 * 1024)))]
    if mode == 3 and draw.byte() & 1:
        frames.append(draw.blob(8))  # one frame too many
    return frames


def broker_command(data: bytes) -> None:
    """Up to three commands of the broker protocol, arguments drawn field by field; the broker must answer each
    with OK or ERR (or drop it as malformed) and keep running: nothing may escape dispatch or the turn after."""
    harness = _harness.get("broker")
    if harness is None:
        harness = _harness["broker"] = _BrokerHarness(_scratch_dir("broker"))
    draw = Draw(data)
    for _ in range(1 + draw.byte() % 3):
        style = draw.byte() % 8
        identity = draw.choice((b"client-a", b"client-b", b""))
        if style == 0:  # raw frames, anything at all
            frames = [identity, *(draw.blob(24) for _ in range(draw.byte() % 6))]
        else:
            args: Any = {draw.choice(ARG_NAMES): draw.value() for _ in range(draw.byte() % 6)}
            if style == 1:
                args = draw.value()
            header = pack(args) if isinstance(args, dict) else msgspec.msgpack.encode(args)
            frames = [identity, SIGNATURE, draw.choice(_COMMANDS), draw.choice((b"", b"r1", b"\x00" * 8)), header]
            if style == 2:
                frames[4] = draw.blob(24)
            frames += [f for _ in range(draw.byte() % 3) for f in _message_frames(draw)]
        harness.dispatch(frames)
    harness.turn()
    assert not harness.broker._log.failed, "a command put the broker's log in its failed state"


# -- 3. the log: record decoding and recovery over fuzzed segment files -----------------------------------------


def _fix_crcs(segment: bytearray) -> None:
    """Rewrite the CRC of every record whose length fits, so the fuzzer gets past the checksum to what follows."""
    off = len(FILE_HEADER)
    while len(segment) - off >= RECORD_HEADER.size:
        n, _, kind = RECORD_HEADER.unpack_from(segment, off)
        end = off + RECORD_HEADER.size + n
        if end > len(segment):
            return
        crc = crc32c(bytes(segment[off + 8:end]))
        segment[off + 4:off + 8] = crc.to_bytes(4, "little")
        off = end


def _replay(directory: str) -> list[tuple[int, int, bytes]]:
    with SegmentedLog(directory, fsync="never") as log:
        return list(log.replay())


def log_recovery(data: bytes) -> None:
    """One or two segment files of fuzzed bytes: opening and replaying never raises; every record replayed is
    whole, checks out and is the bytes that were on disk (nothing invented); recovery is idempotent; appends
    land after the last good record."""
    draw = Draw(data)
    flags = draw.byte()
    body = bytearray((FILE_HEADER if flags & 1 else b"") + draw.rest())
    if flags & 2:
        _fix_crcs(body)
    directory = _scratch_dir("log")
    try:
        cut = len(body) if not flags & 4 else (len(body) * (flags >> 4)) // 16
        files = {0: bytes(body[:cut])}
        if cut < len(body):
            files[cut] = FILE_HEADER + bytes(body[cut:])
        for base, content in files.items():
            Path(directory, f"{base:020d}.log").write_bytes(content)
        first = _replay(directory)
        last_end = 0
        for lsn, kind, payload in first:
            assert lsn >= last_end, "records overlap or go back"
            base = max(b for b in files if b <= lsn)
            content = files[base] if base == 0 else FILE_HEADER + files[base][len(FILE_HEADER):]
            off = lsn - base
            n, crc, on_disk_kind = RECORD_HEADER.unpack_from(content, off)
            # Recovery repairs one flipped bit in a record header (the CRC over the payload decides), so the
            # header on disk may differ from the record in one bit; the payload must be the bytes on disk.
            flipped = sum(bin(a ^ b).count("1") for a, b in ((n, len(payload)), (on_disk_kind, kind),
                                                             (crc, crc32c(bytes((kind,)) + payload))))
            assert flipped <= 1, "a replayed record is not the one on disk (or more than one bit from it)"
            assert content[off + 9:off + 9 + len(payload)] == payload, "a replayed payload is not the bytes on disk"
            last_end = lsn + 9 + len(payload)
        assert _replay(directory) == first, "a second recovery found other records than the first"
        with SegmentedLog(directory, fsync="never") as log:
            log.append(7, b"after")
            log.commit()
        assert _replay(directory)[-1][1:] == (7, b"after") and _replay(directory)[:-1] == first, \
            "a record appended after recovery is not read back after the recovered ones"
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        _harness["dirs"].remove(directory)


def _record_payload(draw: Draw, kind: int) -> Any:
    """A log record's msgpack array, shaped like store.py's for its kind, each field sometimes the wrong type."""
    def field(good: Any) -> Any:
        return good if draw.byte() % 4 else draw.value(1)

    header = bytes(encode(Message(draw.blob(8)), inline_max=-1)[0]) if draw.byte() % 3 else draw.blob(24)
    name = field(draw.choice(("q", "q", "@t.g", "other")))
    if kind == DECLARE:
        options = {draw.choice(ARG_NAMES): draw.value(0) for _ in range(draw.byte() % 3)} if draw.byte() & 1 else {}
        return [name, field(options), field(draw.choice((None, "t.*")))]
    if kind == ENQUEUE:
        return [name, field(draw.byte() % 4), field(draw.choice((None, 1.0e9, 4.0e9))),
                field(draw.choice((None, 1.0e9, 4.0e9))), field(draw.choice((None, "d"))), field(draw.byte() % 3),
                field(header), field(draw.choice((None, b"body")))]
    if kind == REMOVE:
        return [name, field([draw.byte() % 4 for _ in range(draw.byte() % 3)])]
    if kind == REQUEUE:
        return [name, field(draw.byte() % 4), field(draw.byte() % 5), field(draw.choice((None, 4.0e9)))]
    if kind == PUBLISH:
        return [field(draw.byte() % 5), field(1.0e9), field(header), field(draw.choice((None, b"b")))]
    if kind == DELIVERED:
        return [name, field([[draw.byte() % 4, draw.byte() % 3] for _ in range(draw.byte() % 3)])]
    return draw.value()


def _open_broker(directory: str) -> dict[str, int]:
    harness = _BrokerHarness(directory)
    try:
        return dict(harness.broker.recovered)
    finally:
        harness.close()


def store_recovery(data: bytes) -> None:
    """Records whose CRC holds but whose content is fuzzed (shaped like the broker's, fields of wrong types):
    a broker starting on them recovers what parses, counts the rest as unreadable, and never fails to start;
    a second start recovers the same."""
    draw = Draw(data)
    segment = bytearray(FILE_HEADER)
    kinds = (DECLARE, DECLARE, ENQUEUE, ENQUEUE, ENQUEUE, REMOVE, REQUEUE, PUBLISH, DELIVERED, 0, 9)
    for _ in range(1 + draw.byte() % 8):
        kind = draw.choice(kinds)
        raw = draw.byte() % 8 == 0
        payload = draw.blob(32) if raw else msgspec.msgpack.encode(_record_payload(draw, kind))
        segment += RECORD_HEADER.pack(len(payload), crc32c(payload, crc32c(bytes((kind,)))), kind) + payload
    directory = _scratch_dir("store")
    try:
        Path(directory, f"{0:020d}.log").write_bytes(bytes(segment))
        first = _open_broker(directory)
        assert _open_broker(directory) == first, "a second start recovered something else"
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        _harness["dirs"].remove(directory)


# -- 4. claim-check keys ----------------------------------------------------------------------------------------

KEY_ALPHABET = ("a", "Z", "0", "_", "-", ".", "/", "\\", "\x00", ":", "~", " ", "%2e", "%2f", "\u2215", "\uff0f",
                "\u2024", "\u202e", "\u0307", "\ufeff", "ǅ", "\udc80", "C:", "..", "\n", "\U0001f600")


def _key_from(draw: Draw) -> str:
    style = draw.byte() % 4
    if style == 0:
        return draw.rest().decode("utf-8", "surrogateescape")
    if style == 1:
        return draw.choice(("../outside", "/etc/passwd", "link", "payload", ".incoming", "..", ".", "a" * 128,
                            "a" * 129, "a" * 5000, "payload\x00.txt", "C:\\x", "\\\\server\\s"))
    return "".join(draw.choice(KEY_ALPHABET) for _ in range(draw.byte() % 40))


def _claim_store() -> tuple[LocalStore, Path]:
    found = _harness.get("claims")
    if found is None:
        root = Path(_scratch_dir("claims"))
        (root / "outside").write_bytes(b"secret")
        store = LocalStore(root / "store", fsync=False)
        (store.directory / "payload").write_bytes(b"ok")
        found = _harness["claims"] = (store, root)
    store, root = found
    link = store.directory / "link"
    if not link.is_symlink():
        link.symlink_to(root / "outside")
    return store, root


def claim_check_key(data: bytes) -> None:
    """check_key accepts only store-made keys; open and delete of any claimed key touch nothing outside the store."""
    store, root = _claim_store()
    key = _key_from(Draw(data))
    try:
        checked = check_key(key)
    except InvalidClaimKey:
        checked = None
    if checked is not None:
        assert checked == key and key.isascii() and key[0].isalnum() and len(key) <= 128
        assert all(c.isalnum() or c in "_-" for c in key), f"check_key accepted {key!r}"
        assert (store.directory / key).parent == store.directory
    try:
        with store.open(key) as reader:
            got = reader.read()
        assert key == "payload" and got == b"ok", f"opened {key!r} and read {got!r}"
    except (InvalidClaimKey, ClaimNotFound):
        pass
    if key != "payload":
        try:
            store.delete(key)
        except InvalidClaimKey:
            pass
    assert (root / "outside").read_bytes() == b"secret", f"the file outside the store changed after {key!r}"
    assert sorted(p.name for p in root.iterdir()) == ["outside", "store"], f"{key!r} made a file outside the store"


# -- 5. webhook URL validation ----------------------------------------------------------------------------------

HOSTS = ("example.com", "93.184.216.34", "127.0.0.1", "localhost", "2130706433", "0x7f.1", "0177.0.0.1", "127.1",
         "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[fe80::1%25eth0]", "[fd00::1]", "169.254.169.254",
         "10.0.0.1", "172.16.0.1", "192.168.1.1", "100.64.0.1", "0.0.0.0", "[::]", "[64:ff9b::7f00:1]",
         "[2002:7f00:1::1]", "xn--fa-hia.de", "faß.de", "EXAMPLE.com.", "a\u3002b", "ex%61mple.com", "")
URL_PARTS = ("@", ":", "/", "\\", "#", "?", "%", "[", "]", ".", "%00", "%2f", "%40", "user", "pass", "80", "8080",
             "99999", "\u3002", "\uff0e", "\u00df", "\t", "127.0.0.1", "evil.com")


def fake_resolver(host: str, port: int) -> list[str]:
    """Name resolution without DNS, faithful where it matters: what inet_aton reads (2130706433, 0x7f.1, 0177.0.0.1)
    resolves as glibc would; any other name maps, by a hash of its IDNA form, to a public or a private address."""
    ascii_host = host.encode("idna")  # what socket.getaddrinfo sends; UnicodeError for a name it cannot encode
    try:
        return [socket.inet_ntoa(socket.inet_aton(ascii_host.decode()))]
    except OSError:
        pass
    if ascii_host.rstrip(b".").lower() in (b"localhost", b""):
        return ["127.0.0.1", "::1"]
    return [("93.184.216.34", "10.1.2.3", "169.254.169.254", "::ffff:192.168.0.1")[zlib.crc32(ascii_host.lower()) % 4]]


_POLICIES = (WebhookPolicy(resolver=fake_resolver), WebhookPolicy(allow_http=True, resolver=fake_resolver))


def _url_from(draw: Draw) -> str:
    if draw.byte() % 4 == 0:
        return draw.rest().decode("utf-8", "replace")
    scheme = draw.choice(("https", "http", "HTTPS", "ftp", "", "https:", "javascript"))
    url = f"{scheme}://" if draw.byte() % 5 else f"{scheme}:"
    for _ in range(draw.byte() % 3):
        url += draw.choice(URL_PARTS)
    url += draw.choice(HOSTS)
    for _ in range(draw.byte() % 6):
        url += draw.choice(URL_PARTS + HOSTS)
    return url


def _httpx_target(url: str) -> tuple[str, int] | None:
    """The host (as httpx would look it up) and port an httpx client would connect to; None if httpx refuses."""
    try:
        import httpx
    except ImportError:  # pragma: no cover - httpx is in the http extra the tests install
        return None
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, UnicodeError):
        return None
    host = parsed.raw_host.decode("ascii")
    if not host:
        return None
    return host, parsed.port or (443 if parsed.scheme == "https" else 80)


def webhook_url(data: bytes) -> None:
    """validate() raises only ValueError/TypeError; a URL it accepts is https (or allowed http), and the host an
    httpx client would connect to resolves only to addresses the policy allows (no parser differential)."""
    draw = Draw(data)
    policy = draw.choice(_POLICIES)
    url = _url_from(draw)
    try:
        policy.validate(url)
    except (ValueError, TypeError):
        return
    assert url.split(":", 1)[0].lower() in policy.schemes
    target = _httpx_target(url)
    if target is None:
        return
    host, port = target
    try:
        addresses = [ipaddress.ip_address(host.strip("[]"))]
    except ValueError:
        addresses = [ipaddress.ip_address(a) for a in fake_resolver(host, port)]
    for address in addresses:
        refused = policy._refusal(address)
        assert refused is None, f"validate accepted {url!r}, but httpx would connect to {address} ({refused})"


TARGETS: dict[str, Callable[[bytes], None]] = {
    "codec_decode": codec_decode,
    "broker_command": broker_command,
    "log_recovery": log_recovery,
    "store_recovery": store_recovery,
    "claim_check_key": claim_check_key,
    "webhook_url": webhook_url,
}


# -- seed inputs --------------------------------------------------------------------------------------------------


def seeds(target: str) -> list[bytes]:
    """A few well-formed inputs for ``target``, so mutation starts from real structure."""
    if target == "codec_decode":
        small = Message(b"hello", key="k", headers={"a": 1, "b": "x"}, meta={"m": [1, 2]})
        return [join_frames(encode(small)), join_frames(encode(small, inline_max=-1)),
                join_frames(encode(Message(b"")))]
    if target == "log_recovery":
        records = b"".join(RECORD_HEADER.pack(len(p), crc32c(p, crc32c(bytes((k,)))), k) + p
                           for k, p in ((2, b"payload-one"), (3, b""), (5, b"x" * 40)))
        return [b"\x00" + FILE_HEADER + records, b"\x01" + records, b"\x03" + records + b"\x05\x00\x00"]
    if target == "webhook_url":
        return [b"\x00\x00\x00\x00https://example.com/hook", b"\x01\x01\x00\x00\x00\x00"]
    return [bytes(range(n, n + 32)) for n in (0, 7, 64)]


def main(argv: list[str]) -> None:
    """``fuzz_targets.py TARGET [libFuzzer flags and corpus directories]``: run TARGET under atheris."""
    import atexit

    if len(argv) < 2 or argv[1] not in TARGETS:
        raise SystemExit(f"usage: {argv[0]} TARGET [libFuzzer options] [corpus dirs]; TARGET one of {sorted(TARGETS)}")
    target = TARGETS[argv[1]]
    atexit.register(close_all)
    atheris.Setup([argv[0], *argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)

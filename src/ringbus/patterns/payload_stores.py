"""Where the claim check keeps large payloads: a local directory (the default), Redis, or S3-compatible storage.

A store holds opaque payloads under keys it generates itself (a uuid4 hex).
Every key that comes back from a message is checked before it is used
(:func:`check_key`), so a message cannot name a file outside the directory,
another Redis key or another S3 prefix. Payloads go in and come out as
streams of chunks: a store never holds a whole payload in memory (the S3
store holds one multipart part, ``part_size`` bytes, at a time).
"""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import stat
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ringbus.errors import RingbusError
from ringbus.message import new_id

__all__ = [
    "ClaimCheckError", "ClaimNotFound", "ClaimIntegrityError", "InvalidClaimKey", "InvalidClaim", "UnknownClaimStore",
    "PayloadStore", "PayloadReader", "StoreStats", "StoreUsage", "LocalStore", "RedisStore", "S3Store",
    "check_key", "default_directory", "CHUNK_SIZE",
]

log = logging.getLogger("ringbus.claim_check")

CHUNK_SIZE = 1 << 20  # bytes read, hashed and written at a time
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}\Z")


# -- errors ---------------------------------------------------------------------------------------------------------
class ClaimCheckError(RingbusError):
    """A payload could not be stored, found or trusted.

    ``reason`` is one short word for logs, stats and the ``ringbus-claim-error`` header of a dead letter:
    ``missing``, ``hash_mismatch``, ``size_mismatch``, ``invalid_key``, ``invalid_claim``, ``unknown_store``.
    """

    reason = "claim_error"

    def __init__(self, message: str, *, key: str | None = None, url: str | None = None,
                 reason: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.url = url
        if reason is not None:
            self.reason = reason


class ClaimNotFound(ClaimCheckError, LookupError):
    """The store has no payload under the claim's key (deleted, swept by its TTL, or never written there)."""

    reason = "missing"


class ClaimIntegrityError(ClaimCheckError, ValueError):
    """The stored bytes are not the ones claimed: their size (``size_mismatch``) or SHA-256 (``hash_mismatch``)."""

    reason = "hash_mismatch"


class InvalidClaimKey(ClaimCheckError, ValueError):
    """A key that a store did not generate: empty, a path, '..', a separator, a NUL, or other characters."""

    reason = "invalid_key"


class InvalidClaim(ClaimCheckError, ValueError):
    """A message's claim headers are incomplete or of the wrong type."""

    reason = "invalid_claim"


class UnknownClaimStore(ClaimCheckError, LookupError):
    """A claim names a store URL this claim check was not given (it never opens stores named by a message)."""

    reason = "unknown_store"


def check_key(key: object) -> str:
    """Return ``key`` if a store could have generated it; else raise :class:`InvalidClaimKey` saying why.

    Keys are 1-128 letters, digits, ``_`` and ``-``, starting with a letter or digit. Whatever else a
    message claims - ``../x``, ``/etc/passwd``, ``a/b``, a NUL - is refused before any store looks at it.
    """
    if not isinstance(key, str):
        raise InvalidClaimKey(f"claim key must be a str, not {type(key).__name__}")
    if not key:
        raise InvalidClaimKey("claim key is empty")
    shown = repr(key) if len(key) <= 80 else repr(key[:77]) + "..."
    if "\0" in key:
        raise InvalidClaimKey(f"claim key {shown} contains a NUL character", key=key)
    if key.startswith(("/", "\\")) or os.path.isabs(key) or re.match(r"[A-Za-z]:", key):
        raise InvalidClaimKey(f"claim key {shown} is an absolute path", key=key)
    if ".." in re.split(r"[/\\]", key):
        raise InvalidClaimKey(f"claim key {shown} is a parent-directory reference ('..')", key=key)
    if "/" in key or "\\" in key:
        raise InvalidClaimKey(f"claim key {shown} contains a path separator", key=key)
    if not _KEY.match(key):
        raise InvalidClaimKey(f"claim key {shown} is not a store key: 1-128 letters, digits, _ and -, "
                              "starting with a letter or digit", key=key)
    return key


def _check_age(older_than: object) -> float:
    if isinstance(older_than, bool) or not isinstance(older_than, (int, float)) or not older_than >= 0:
        raise ValueError(f"older_than must be a number of seconds >= 0, got {older_than!r}")
    return float(older_than)


# -- what every store shares ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoreUsage:
    """What a store holds now."""

    objects: int
    bytes: int


@dataclass(frozen=True)
class StoreStats:
    """What a store was asked to do since it was created (by this process)."""

    puts: int
    bytes_put: int
    opens: int
    deletes: int  # payloads deleted by delete() (not counting keys that were already gone)
    swept: int  # payloads deleted by sweep()


class ReadStream(io.RawIOBase):
    """A read-only binary stream whose ``read(n)`` is the primitive (no copy through ``readinto``)."""

    def readable(self) -> bool:
        return True

    def readall(self) -> bytes:
        parts = []
        while chunk := self.read(CHUNK_SIZE):
            parts.append(chunk)
        return b"".join(parts)


class PayloadReader(ReadStream):
    """A stored payload as a read-only binary stream, ``size`` bytes long when the store knows it.

    ``read_chunk(n)`` returns up to ``n`` bytes, ``b""`` at the end.
    """

    def __init__(self, read_chunk: Callable[[int], bytes], size: int | None,
                 close: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.size = size
        self._read_chunk = read_chunk
        self._close = close
        self._pending = memoryview(b"")

    def readinto(self, buffer: Any) -> int:
        if self.closed:
            raise ValueError("read from a closed payload")
        if not self._pending:
            chunk = self._read_chunk(max(len(buffer), 1))
            if not chunk:
                return 0
            self._pending = memoryview(chunk)
        n = min(len(buffer), len(self._pending))
        memoryview(buffer).cast("B")[:n] = self._pending[:n]
        self._pending = self._pending[n:]
        return n

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        if self.closed:
            raise ValueError("read from a closed payload")
        if not size:
            return b""
        if not self._pending:
            chunk = self._read_chunk(size)
            if len(chunk) <= size:
                return chunk if isinstance(chunk, bytes) else bytes(chunk)  # the common case: no copy
            self._pending = memoryview(chunk)
        piece = self._pending[:size]
        self._pending = self._pending[len(piece):]
        return bytes(piece)

    def close(self) -> None:
        if not self.closed:
            self._pending = memoryview(b"")
            if self._close is not None:
                self._close()
        super().close()


def _rechunk(chunks: Iterable[Any], size: int) -> Iterator[bytes]:
    """The bytes of ``chunks`` again, as pieces of exactly ``size`` bytes (the last one shorter)."""
    buffer = bytearray()
    for chunk in chunks:
        view = memoryview(chunk).cast("B")
        while view:
            take = min(size - len(buffer), len(view))
            buffer += view[:take]
            view = view[take:]
            if len(buffer) == size:
                yield bytes(buffer)
                buffer = bytearray()
    if buffer:
        yield bytes(buffer)


class PayloadStore(ABC):
    """Stores payloads under keys it generates; a subclass writes the ``_put``/``_open``/``_delete`` of its engine.

    Safe to share between threads. ``url`` names the store in claims: a consumer looks a claim's store up by it
    (and only among the stores it was given).
    """

    url: str

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = {"puts": 0, "bytes_put": 0, "opens": 0, "deletes": 0, "swept": 0}

    def _count(self, **deltas: int) -> None:
        with self._lock:
            for name, value in deltas.items():
                self._counts[name] += value

    # -- the public operations ---------------------------------------------------------------------------------------
    def put(self, chunks: Iterable[bytes | bytearray | memoryview]) -> str:
        """Store the concatenation of ``chunks`` (read one at a time) under a new key; return the key.

        The payload becomes visible under its key only when complete: a reader never sees part of it, and a
        writer that fails leaves nothing under the key (a temporary copy at most, which :meth:`sweep` removes).
        """
        key = new_id()
        size = self._put(key, chunks)
        self._count(puts=1, bytes_put=size)
        return key

    def open(self, key: str) -> PayloadReader:
        """The payload under ``key`` as a binary stream (its ``size`` set when known).

        Raises
        ------
        InvalidClaimKey
            If ``key`` is not one this store could have generated.
        ClaimNotFound
            If nothing is stored under ``key``.
        """
        reader = self._open(check_key(key))
        self._count(opens=1)
        return reader

    def delete(self, key: str) -> bool:
        """Delete the payload under ``key``; return whether there was one. Raises InvalidClaimKey like open."""
        deleted = self._delete(check_key(key))
        if deleted:
            self._count(deletes=1)
        return deleted

    def sweep(self, older_than: float, *, now: float | None = None) -> int:
        """Delete the payloads stored more than ``older_than`` seconds before ``now`` (default: the time now).

        The TTL half of garbage collection; the other half is the consumer deleting a claim after its ack.
        Someone must call it periodically (see docs/patterns/claim-check.md): one cron job or maintenance thread
        per store, with ``older_than`` longer than any message can wait in its queue. Returns how many were
        deleted; abandoned partial writes of that age go too (not counted).
        """
        cutoff = (time.time() if now is None else float(now)) - _check_age(older_than)
        swept = self._sweep(cutoff)
        if swept:
            self._count(swept=swept)
            log.info("swept %d payload(s) stored before %.0f from %s", swept, cutoff, self.url)
        return swept

    @abstractmethod
    def usage(self) -> StoreUsage:
        """How many payloads the store holds now, and their bytes."""

    def stats(self) -> StoreStats:
        """What this store object was asked to do: puts, bytes put, opens, deletes, swept."""
        with self._lock:
            return StoreStats(**self._counts)

    def close(self) -> None:  # noqa: B027 - a no-op by default: a store that opened nothing keeps it
        """Release connections the store opened itself; idempotent."""

    def __enter__(self) -> PayloadStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url!r}>"

    # -- to write in a subclass --------------------------------------------------------------------------------------
    @abstractmethod
    def _put(self, key: str, chunks: Iterable[Any]) -> int:
        """Write the payload under ``key`` (atomically); return its size."""

    @abstractmethod
    def _open(self, key: str) -> PayloadReader:
        """A reader of the payload under a checked ``key``; ClaimNotFound if there is none."""

    @abstractmethod
    def _delete(self, key: str) -> bool:
        """Delete the payload under a checked ``key``; whether there was one."""

    @abstractmethod
    def _sweep(self, cutoff: float) -> int:
        """Delete the payloads stored before the unix time ``cutoff``; how many."""


# -- a local directory ----------------------------------------------------------------------------------------------
def default_directory() -> Path:
    """Where :class:`LocalStore` keeps payloads when given no directory: ``$RINGBUS_CLAIMS_DIR``, else
    ``<temp dir>/ringbus-claims`` (shared by the producers and consumers of one host)."""
    return Path(os.environ.get("RINGBUS_CLAIMS_DIR") or Path(tempfile.gettempdir()) / "ringbus-claims")


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_INCOMING = ".incoming"  # partial writes; a dot name, which no key can have


class LocalStore(PayloadStore):
    """Payloads as files in one directory: written to ``.incoming/``, fsynced, then renamed into place.

    Parameters
    ----------
    directory : str or PathLike, optional
        Created if missing; default :func:`default_directory`.
    fsync : bool
        Flush each payload (and the directory entry) to disk before the message that claims it is sent, so a
        crash of the host cannot leave a message whose payload was lost. Off only for scratch data.
    mode : int
        Permission bits of the payload files (default owner-only; 0o644 when consumers run as another user).
    url : str, optional
        The name claims carry; default the directory's ``file://`` URI.
    """

    def __init__(self, directory: str | os.PathLike[str] | None = None, *, fsync: bool = True, mode: int = 0o600,
                 url: str | None = None) -> None:
        super().__init__()
        if directory is not None and not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"directory must be a str or os.PathLike, not {type(directory).__name__}")
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
            raise ValueError(f"mode must be permission bits between 0 and 0o777, got {mode!r}")
        self.directory = Path(directory if directory is not None else default_directory()).resolve()
        (self.directory / _INCOMING).mkdir(parents=True, exist_ok=True)
        self.fsync = bool(fsync)
        self.mode = mode
        self.url = url or self.directory.as_uri()

    def _put(self, key: str, chunks: Iterable[Any]) -> int:
        partial = self.directory / _INCOMING / f"{key}.part"
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, self.mode)
        size = 0
        try:
            with open(fd, "wb", buffering=0) as file:
                for chunk in chunks:
                    view = memoryview(chunk).cast("B")
                    while view:
                        written = file.write(view)
                        size += written
                        view = view[written:]
                if self.fsync:
                    os.fsync(file.fileno())
            os.replace(partial, self.directory / key)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        if self.fsync:
            self._fsync_directory()
        return size

    def _fsync_directory(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _open(self, key: str) -> PayloadReader:
        path = self.directory / key
        try:
            fd = os.open(path, os.O_RDONLY | _NOFOLLOW)
        except FileNotFoundError:
            raise ClaimNotFound(f"no payload {key!r} in {self.url}", key=key, url=self.url) from None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise InvalidClaimKey(f"payload {key!r} in {self.url} is a symbolic link; refused", key=key,
                                      url=self.url) from None
            raise
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            os.close(fd)
            raise InvalidClaimKey(f"payload {key!r} in {self.url} is not a regular file; refused", key=key,
                                  url=self.url)
        file = open(fd, "rb", buffering=0)  # noqa: SIM115 - closed by the reader
        return PayloadReader(file.read, info.st_size, file.close)

    def _delete(self, key: str) -> bool:
        try:
            (self.directory / key).unlink()
        except FileNotFoundError:
            return False
        return True

    def _entries(self) -> Iterator[os.DirEntry[str]]:
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if _KEY.match(entry.name) and entry.is_file(follow_symlinks=False):
                    yield entry

    def _sweep(self, cutoff: float) -> int:
        swept = 0
        for entry in list(self._entries()):
            if entry.stat(follow_symlinks=False).st_mtime < cutoff and self._delete(entry.name):
                swept += 1
        with os.scandir(self.directory / _INCOMING) as partials:  # writers that died mid-payload
            for entry in partials:
                if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    Path(entry.path).unlink(missing_ok=True)
        return swept

    def usage(self) -> StoreUsage:
        sizes = [entry.stat(follow_symlinks=False).st_size for entry in self._entries()]
        return StoreUsage(len(sizes), sum(sizes))


# -- Redis ----------------------------------------------------------------------------------------------------------
class RedisStore(PayloadStore):
    """Payloads in Redis, each a hash of ``chunk_size`` pieces, so no payload needs one huge value.

    A payload is written under a temporary key (which expires by itself if the writer dies) and renamed into
    place with its index entry in one transaction. A sorted set ``<prefix>index`` (key -> time stored) is what
    :meth:`sweep` reads.

    Parameters
    ----------
    client : redis.Redis, optional
        A redis-py client (thread-safe; left open by :meth:`close`). Default: one for ``redis_url``.
    redis_url : str
        Where Redis is when no client is given.
    prefix : str
        Prefix of every Redis key this store writes.
    chunk_size : int
        Bytes per hash field.
    url : str, optional
        The name claims carry; default ``redis://host:port/db?prefix=...`` (never a password).
    partial_ttl : float
        Seconds after which Redis drops a payload whose writer died mid-way.
    """

    def __init__(self, client: Any = None, *, redis_url: str = "redis://127.0.0.1:6379/0",
                 prefix: str = "ringbus:claim:", chunk_size: int = CHUNK_SIZE, url: str | None = None,
                 partial_ttl: float = 3600.0) -> None:
        super().__init__()
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or not 1 <= chunk_size <= 256 << 20:
            raise ValueError(f"chunk_size must be an int of 1 byte to 256 MiB, got {chunk_size!r}")
        if not isinstance(prefix, str) or not prefix:
            raise ValueError(f"prefix must be a non-empty str, got {prefix!r}")
        self._owned = client is None
        if client is None:
            try:
                import redis
            except ImportError as exc:  # pragma: no cover - redis is in the bench extra
                raise ImportError("RedisStore needs redis-py: pip install redis") from exc
            client = redis.Redis.from_url(redis_url)
        self.client = client
        self.prefix = prefix
        self.chunk_size = chunk_size
        self.partial_ttl = max(1, int(partial_ttl))
        self._index = f"{prefix}index"
        kw = client.connection_pool.connection_kwargs
        self.url = url or (f"redis://{kw.get('host', 'localhost')}:{kw.get('port', 6379)}/{kw.get('db', 0)}"
                           f"?prefix={quote(prefix, safe='')}")

    def _name(self, key: str) -> str:
        return f"{self.prefix}obj:{key}"

    def _put(self, key: str, chunks: Iterable[Any]) -> int:
        partial = f"{self.prefix}partial:{key}"
        size = count = 0
        try:
            for piece in _rechunk(chunks, self.chunk_size):
                pipe = self.client.pipeline(transaction=False)
                pipe.hset(partial, f"c{count}", piece)
                pipe.expire(partial, self.partial_ttl)  # a writer that dies leaves nothing for long
                pipe.execute()
                size += len(piece)
                count += 1
            now = time.time()
            pipe = self.client.pipeline(transaction=True)
            pipe.hset(partial, mapping={"size": size, "chunks": count, "stored": repr(now)})
            pipe.persist(partial)
            pipe.rename(partial, self._name(key))
            pipe.zadd(self._index, {key: now})
            pipe.execute()
        except BaseException:
            self.client.delete(partial)
            raise
        return size

    def _open(self, key: str) -> PayloadReader:
        name = self._name(key)
        size, count = self.client.hmget(name, ["size", "chunks"])
        if size is None or count is None:
            raise ClaimNotFound(f"no payload {key!r} in {self.url}", key=key, url=self.url)
        chunks = iter(range(int(count)))

        def read_chunk(_n: int) -> bytes:
            index = next(chunks, None)
            if index is None:
                return b""
            piece: bytes | None = self.client.hget(name, f"c{index}")
            if piece is None:
                raise ClaimNotFound(f"payload {key!r} in {self.url} was deleted while being read", key=key,
                                    url=self.url)
            return piece

        return PayloadReader(read_chunk, int(size))

    def _delete(self, key: str) -> bool:
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(self._name(key))
        pipe.zrem(self._index, key)
        deleted, _ = pipe.execute()
        return bool(deleted)

    def _sweep(self, cutoff: float) -> int:
        swept = 0
        while keys := self.client.zrangebyscore(self._index, "-inf", f"({cutoff!r}", start=0, num=500):
            for key in keys:
                key = key.decode() if isinstance(key, bytes) else key
                if _KEY.match(key):
                    swept += self._delete(key)
                else:  # not ours: drop the index entry only
                    self.client.zrem(self._index, key)
        return swept

    def usage(self) -> StoreUsage:
        keys = [k.decode() if isinstance(k, bytes) else k for k in self.client.zrange(self._index, 0, -1)]
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.hget(self._name(key), "size")
        sizes = [int(s) for s in pipe.execute() if s is not None]
        return StoreUsage(len(sizes), sum(sizes))

    def close(self) -> None:
        if self._owned:
            self.client.close()


# -- S3-compatible object storage -----------------------------------------------------------------------------------
_MIN_PART = 5 << 20  # S3's smallest part of a multipart upload (but the last)


class S3Store(PayloadStore):
    """Payloads as objects in an S3 bucket (AWS S3, MinIO, Ceph, ...) through boto3.

    A payload up to ``part_size`` bytes is one PUT; a larger one a multipart upload of ``part_size`` parts,
    so memory holds one part at a time. A failed upload is aborted; :meth:`sweep` also aborts uploads
    abandoned longer than ``older_than``. On AWS a bucket lifecycle rule (expire objects under ``prefix``
    after N days) can replace :meth:`sweep`.

    Parameters
    ----------
    bucket : str
        The bucket (created at start when ``create_bucket``).
    client : boto3 S3 client, optional
        Default: ``boto3.client("s3", endpoint_url=endpoint_url, **client_options)``.
    prefix : str
        Prefix of the object names.
    part_size : int
        Bytes per multipart part, at least 5 MiB.
    url : str, optional
        The name claims carry; default ``s3://bucket/prefix``.
    """

    def __init__(self, bucket: str, *, client: Any = None, prefix: str = "ringbus-claims/",
                 part_size: int = 8 << 20, endpoint_url: str | None = None, create_bucket: bool = False,
                 url: str | None = None, **client_options: Any) -> None:
        super().__init__()
        if not isinstance(bucket, str) or not bucket:
            raise ValueError(f"bucket must be a non-empty str, got {bucket!r}")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        if isinstance(part_size, bool) or not isinstance(part_size, int) or part_size < _MIN_PART:
            raise ValueError(f"part_size must be an int of at least 5 MiB ({_MIN_PART}), got {part_size!r}")
        if client is None:
            try:
                import boto3
            except ImportError as exc:
                raise ImportError("S3Store needs boto3: pip install boto3") from exc
            client = boto3.client("s3", endpoint_url=endpoint_url, **client_options)
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        self.url = url or f"s3://{bucket}/{prefix}"
        if create_bucket:
            try:
                client.create_bucket(Bucket=bucket)
            except client.exceptions.BucketAlreadyOwnedByYou:
                pass

    def _put(self, key: str, chunks: Iterable[Any]) -> int:
        name = self.prefix + key
        parts = _rechunk(chunks, self.part_size)
        first = next(parts, b"")
        second = next(parts, None)
        if second is None:  # small: one PUT
            self.client.put_object(Bucket=self.bucket, Key=name, Body=first)
            return len(first)
        upload = self.client.create_multipart_upload(Bucket=self.bucket, Key=name)["UploadId"]
        done, size = [], 0
        try:
            for number, part in enumerate(_chain_parts(first, second, parts), 1):
                etag = self.client.upload_part(Bucket=self.bucket, Key=name, UploadId=upload, PartNumber=number,
                                               Body=part)["ETag"]
                done.append({"ETag": etag, "PartNumber": number})
                size += len(part)
            self.client.complete_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload,
                                                  MultipartUpload={"Parts": done})
        except BaseException:
            self.client.abort_multipart_upload(Bucket=self.bucket, Key=name, UploadId=upload)
            raise
        return size

    def _missing(self, exc: Exception) -> bool:
        code = getattr(exc, "response", {}).get("Error", {}).get("Code")
        return code in ("NoSuchKey", "404", "NotFound")

    def _open(self, key: str) -> PayloadReader:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
        except Exception as exc:
            if self._missing(exc):
                raise ClaimNotFound(f"no payload {key!r} in {self.url}", key=key, url=self.url) from None
            raise
        body = response["Body"]
        return PayloadReader(lambda n: body.read(min(n, CHUNK_SIZE)), int(response["ContentLength"]), body.close)

    def _delete(self, key: str) -> bool:
        name = self.prefix + key
        try:  # S3's DELETE succeeds whether or not the object was there; ask first to say which
            self.client.head_object(Bucket=self.bucket, Key=name)
        except Exception as exc:
            if self._missing(exc):
                return False
            raise
        self.client.delete_object(Bucket=self.bucket, Key=name)
        return True

    def _listing(self) -> Iterator[dict[str, Any]]:
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=self.prefix):
            for item in page.get("Contents", ()):
                if _KEY.match(item["Key"][len(self.prefix):]):
                    yield item

    def _sweep(self, cutoff: float) -> int:
        old = [item["Key"] for item in self._listing() if item["LastModified"].timestamp() < cutoff]
        for start in range(0, len(old), 1000):
            batch = [{"Key": name} for name in old[start:start + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        uploads = self.client.list_multipart_uploads(Bucket=self.bucket, Prefix=self.prefix).get("Uploads", ())
        for upload in uploads:
            if upload["Initiated"].timestamp() < cutoff:
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        return len(old)

    def usage(self) -> StoreUsage:
        sizes = [item["Size"] for item in self._listing()]
        return StoreUsage(len(sizes), sum(sizes))


def _chain_parts(first: bytes, second: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield second
    yield from rest


def main(argv: list[str] | None = None) -> int:
    """``python -m ringbus.patterns.payload_stores sweep [DIRECTORY] --older-than SECONDS``: one sweep of a local
    store, for a cron job (Redis and S3 stores: call ``store.sweep`` from your own maintenance job)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m ringbus.patterns.payload_stores",
                                     description="Delete claim-check payloads older than a TTL from a local store.")
    commands = parser.add_subparsers(dest="command", required=True)
    sweep = commands.add_parser("sweep", help="delete payloads older than --older-than seconds")
    sweep.add_argument("directory", nargs="?", default=None, help=f"the store (default {default_directory()})")
    sweep.add_argument("--older-than", type=float, required=True, metavar="SECONDS",
                       help="age after which a payload is deleted; longer than any message waits in its queue")
    args = parser.parse_args(argv)
    store = LocalStore(args.directory)
    try:
        swept = store.sweep(args.older_than)
    except ValueError as exc:
        parser.error(str(exc))
    held = store.usage()
    print(f"swept {swept} payload(s) from {store.directory}; {held.objects} left ({held.bytes} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

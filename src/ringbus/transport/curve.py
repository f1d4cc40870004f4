"""CURVE encryption and client authentication for the ringbus ZeroMQ helpers: keys, server and client configs."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import Any, NamedTuple

import zmq
import zmq.auth.thread
from zmq.utils import z85

from ringbus.transport._zmq_socket import log, log_sparsely

__all__ = ["CurveKeypair", "curve_keypair", "CurveServer", "CurveClient"]

_zap_log = logging.getLogger("ringbus.transport.zap")


class CurveKeypair(NamedTuple):
    """A CURVE key pair, each key as 40 Z85 characters (bytes).

    Keep ``secret`` secret; hand ``public`` to peers (a server's public key to
    its clients, a client's public key to the servers that must authorise it).
    """

    public: bytes
    secret: bytes


def curve_keypair() -> CurveKeypair:
    """Generate a new CURVE key pair (``zmq.curve_keypair``).

    Returns
    -------
    CurveKeypair
        ``(public, secret)``, each 40 Z85 characters as bytes.

    Raises
    ------
    ringbus.Unsupported
        If libzmq was built without CURVE.
    """
    if not zmq.has("curve"):
        from ringbus.errors import Unsupported

        raise Unsupported("CURVE keys cannot be generated: this libzmq was built without CURVE (libsodium)")
    public, secret = zmq.curve_keypair()
    return CurveKeypair(public, secret)


def _key(value: object, name: str) -> bytes:
    """A CURVE key as 40 Z85 bytes, from Z85 text (str or bytes) or the 32 raw key bytes."""
    if isinstance(value, str):
        try:
            value = value.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"{name} is not a CURVE key: Z85 text is ASCII") from None
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{name} must be a CURVE key as str or bytes, not {type(value).__name__}")
    key = bytes(value)
    if len(key) == 32:
        return z85.encode(key)
    if len(key) == 40:
        try:
            z85.decode(key)
        except Exception:  # z85 reports bad text as KeyError, ValueError or struct.error
            raise ValueError(f"{name} is not a CURVE key: it is 40 bytes but not valid Z85 text") from None
        return key
    raise ValueError(f"{name} must be a CURVE key: 40 Z85 characters or 32 raw bytes, got {len(key)} bytes")


def _key_list(keys: Iterable[object], name: str) -> frozenset[bytes]:
    if isinstance(keys, (str, bytes, bytearray, memoryview)):
        # Iterating one key would yield its characters: a silent misconfiguration.
        raise TypeError(f"{name} must be a list of public keys, not a single {type(keys).__name__}")
    return frozenset(_key(k, f"{name} entry") for k in keys)


class CurveServer:
    """CURVE server configuration: encrypt every connection and admit only authorised client keys.

    Give it as ``curve=`` to the helper that clients connect to (usually the one
    that binds). Authorisation runs in a ``zmq.auth.thread.ThreadAuthenticator``
    (a ZAP handler) started with the socket and stopped by its ``close()``.
    Because a context holds one ZAP handler, a helper with a ``CurveServer`` and
    no ``context=`` gets a private ``zmq.Context`` (terminated on close); if you
    pass a context, it must not have another authenticator.

    Parameters
    ----------
    secret_key, public_key : str or bytes
        The server's key pair (40 Z85 characters, or the 32 raw bytes), e.g.
        from :func:`curve_keypair`. The public key must belong to the secret key.
    authorized_clients : iterable of str or bytes
        Public keys of the clients allowed to connect. It must not be empty:
        CURVE with no key list would admit anyone who knows the server's
        public key, so ringbus refuses to start such a server.

    Raises
    ------
    ValueError
        If a key is malformed, the public key does not match the secret key, or
        ``authorized_clients`` is empty.
    TypeError
        If ``authorized_clients`` is a single key rather than a list of keys.

    Notes
    -----
    Each refused key is counted (``statistics().auth_refused``) and logged on
    ``ringbus.transport`` at WARNING (the 1st, 2nd, 4th, 8th, ... refusal, since a
    refused client reconnects every ~100 ms). CURVE is meant for ``tcp://``;
    ``ipc://`` is better protected by file permissions.
    """

    __slots__ = ("_secret", "public_key", "authorized_clients")

    def __init__(self, secret_key: str | bytes, public_key: str | bytes,
                 authorized_clients: Iterable[str | bytes]) -> None:
        secret = _key(secret_key, "secret_key")
        public = _key(public_key, "public_key")
        if zmq.curve_public(secret) != public:
            raise ValueError("public_key does not belong to secret_key (zmq.curve_public(secret_key) differs)")
        clients = _key_list(authorized_clients, "authorized_clients")
        if not clients:
            raise ValueError(
                "CurveServer needs at least one authorised client public key: with none, any client "
                "that knows the server's public key could connect; refusing to start"
            )
        self._secret = secret
        self.public_key: bytes = public
        self.authorized_clients: frozenset[bytes] = clients

    def __repr__(self) -> str:
        # Never the secret key: reprs end up in logs and tracebacks.
        return f"CurveServer(public_key={self.public_key!r}, authorized_clients=<{len(self.authorized_clients)} keys>)"

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` a CURVE server (call before it binds or connects)."""
        sock.curve_server = True
        sock.curve_secretkey = self._secret
        sock.curve_publickey = self.public_key

    def start_authenticator(self, context: zmq.Context[Any]) -> _Authenticator:
        """Start the ZAP handler that admits only ``authorized_clients`` on ``context``."""
        if not self.authorized_clients:  # unreachable through __init__; a last guard
            raise ValueError("CurveServer has no authorised client keys; refusing to start")
        return _Authenticator(context, self.authorized_clients)


class CurveClient:
    """CURVE client configuration: encrypt the connection and prove this client's key to the server.

    Parameters
    ----------
    secret_key, public_key : str or bytes
        This client's key pair (40 Z85 characters, or the 32 raw bytes). The
        server must list ``public_key`` in its ``authorized_clients``.
    server_public_key : str or bytes
        The server's public key; a server that cannot prove it holds the
        matching secret key is not talked to.

    Raises
    ------
    ValueError
        If a key is malformed or the public key does not match the secret key.
    """

    __slots__ = ("_secret", "public_key", "server_public_key")

    def __init__(self, secret_key: str | bytes, public_key: str | bytes, server_public_key: str | bytes) -> None:
        secret = _key(secret_key, "secret_key")
        public = _key(public_key, "public_key")
        if zmq.curve_public(secret) != public:
            raise ValueError("public_key does not belong to secret_key (zmq.curve_public(secret_key) differs)")
        self._secret = secret
        self.public_key: bytes = public
        self.server_public_key: bytes = _key(server_public_key, "server_public_key")

    def __repr__(self) -> str:
        return f"CurveClient(public_key={self.public_key!r}, server_public_key={self.server_public_key!r})"

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` a CURVE client of the server (call before it connects)."""
        sock.curve_secretkey = self._secret
        sock.curve_publickey = self.public_key
        sock.curve_serverkey = self.server_public_key


class _Authenticator:
    """A running ThreadAuthenticator that admits a fixed set of client keys and counts refusals."""

    def __init__(self, context: zmq.Context[Any], keys: frozenset[bytes]) -> None:
        self._keys = keys
        self._lock = threading.Lock()
        self.refused = 0
        self._auth = zmq.auth.thread.ThreadAuthenticator(context, log=_zap_log)
        # The callback is the whole policy: it keeps the keys in memory (no
        # certificate directory) and lets us count what it refuses.
        self._auth.configure_curve_callback("*", credentials_provider=self)
        try:
            self._auth.start()
        except zmq.ZMQError as exc:
            self._auth.stop()
            if exc.errno == zmq.EADDRINUSE:
                raise RuntimeError(
                    "this zmq.Context already has a ZAP authenticator: one CurveServer helper per "
                    "context (leave context=None to give each CURVE server a private context)"
                ) from exc
            raise

    def callback(self, domain: str, client_key: bytes) -> bool:
        """ZAP callback (runs on the authenticator thread): is ``client_key`` (Z85) authorised?"""
        if client_key in self._keys:
            return True
        with self._lock:
            self.refused += 1
            count = self.refused
        if log_sparsely(count):
            log.warning("CURVE: refused a client with unknown public key %s (%d refusals so far)",
                        client_key.decode("ascii", "replace"), count)
        return False

    def stop(self) -> None:
        self._auth.stop()

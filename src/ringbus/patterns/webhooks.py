"""Webhooks of asynchronous request-reply: callback URLs checked at submit, signed deliveries, and their check.

A job submitted with a ``callback_url`` gets its final status document POSTed
there once it finishes. Each delivery carries::

    Ringbus-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>
    Ringbus-Job: <job id>
    Ringbus-Delivery-Attempt: <1, 2, ...>

The receiver recomputes the HMAC over the timestamp, a dot and the raw body
with the shared secret (:func:`verify_signature` does it, constant-time, and
refuses timestamps older than a tolerance so a captured delivery cannot be
replayed later). A delivery that does not answer 2xx is retried with the
policy's backoff until its attempts run out; redirects are not followed.

Callback URLs are checked when the job is submitted and again before each
delivery (a name may resolve elsewhere by then): the scheme must be https
(http only when allowed), and every address the host resolves to must be
public - loopback, private and link-local targets (a cloud metadata service at
169.254.169.254, an admin port on localhost) are refused unless explicitly
allowed, and multicast, unspecified and reserved addresses always.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import re
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ringbus.patterns._retry import RetryPolicy

__all__ = [
    "WebhookPolicy",
    "sign",
    "verify_signature",
    "SIGNATURE_HEADER",
    "JOB_HEADER",
    "ATTEMPT_HEADER",
]

log = logging.getLogger("ringbus.async_request_reply")

SIGNATURE_HEADER = "Ringbus-Signature"
JOB_HEADER = "Ringbus-Job"
ATTEMPT_HEADER = "Ringbus-Delivery-Attempt"
MAX_URL = 2048
_HOST_NAME = re.compile(r"[a-z0-9_-]+(?:\.[a-z0-9_-]+)*\.?\Z")  # urlsplit lowercases the host

Resolver = Callable[[str, int], "list[str]"]


def _secret_bytes(secret: object) -> bytes:
    if isinstance(secret, str):
        secret = secret.encode("utf-8")
    if not isinstance(secret, bytes):
        raise TypeError(f"secret must be str or bytes, not {type(secret).__name__}")
    if not secret:
        raise ValueError("secret must not be empty")
    return secret


def sign(secret: str | bytes, body: bytes, timestamp: int | None = None) -> str:
    """The ``Ringbus-Signature`` header value for ``body``: ``t=<unix>,v1=<hex HMAC-SHA256 of "<t>." + body>``."""
    t = int(time.time()) if timestamp is None else int(timestamp)
    digest = hmac.new(_secret_bytes(secret), f"{t}.".encode() + bytes(body), hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def verify_signature(secret: str | bytes, header: str | None, body: bytes, *, tolerance: float = 300.0,
                     now: float | None = None) -> bool:
    """True if ``header`` (a ``Ringbus-Signature`` value) signs ``body`` with ``secret`` within ``tolerance`` s.

    Use it in the webhook receiver on the raw request body, before parsing it.
    Several ``v1=`` entries are accepted (one matching is enough), so a sender
    may sign with an old and a new secret while a secret is rotated.
    """
    key = _secret_bytes(secret)
    if not header or not isinstance(header, str):
        return False
    timestamp: int | None = None
    candidates = []
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1":
            candidates.append(value)
    if timestamp is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance:
        return False
    expected = hmac.new(key, f"{timestamp}.".encode() + bytes(body), hashlib.sha256).hexdigest()
    # Compare against every candidate (no early exit) so the time taken says nothing about which matched.
    matched = [hmac.compare_digest(expected, candidate) for candidate in candidates]
    return any(matched)


def _getaddrinfo(host: str, port: int) -> list[str]:
    # the address as text (already a str for TCP; typeshed allows an int for other families)
    return [str(info[4][0]) for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


@dataclass(frozen=True)
class WebhookPolicy:
    """Where webhooks may go, how they are signed, and how they are retried.

    Parameters
    ----------
    secret : str or bytes
        The HMAC-SHA256 key shared with receivers; a job may only ask for a webhook when it is set.
    allow_http : bool
        Accept ``http://`` callback URLs as well as ``https://``.
    allow_loopback, allow_private, allow_link_local : bool
        Accept targets that resolve to loopback (127.0.0.0/8, ::1), private (10/8, 172.16/12, 192.168/16,
        100.64/10, fc00::/7 and other non-global ranges) or link-local (169.254/16, fe80::/10) addresses.
    max_attempts : int
        Deliveries tried before the webhook is marked ``failed``.
    retry : RetryPolicy
        Backoff between attempts (exponential, full jitter by default).
    timeout : float
        Seconds one delivery may take (connect, send, answer).
    max_inline_result : int
        A JSON result up to this many bytes rides inside the webhook body as ``"result"``; bigger ones are
        fetched from ``links.result``.
    resolver : callable
        ``resolver(host, port) -> [address, ...]``; ``socket.getaddrinfo`` by default (tests inject names).
    """

    secret: str | bytes | None = field(default=None, repr=False)
    allow_http: bool = False
    allow_loopback: bool = False
    allow_private: bool = False
    allow_link_local: bool = False
    max_attempts: int = 8
    retry: RetryPolicy = field(default_factory=lambda: RetryPolicy(base=1.0, max_delay=600.0))
    timeout: float = 10.0
    max_inline_result: int = 64 * 1024
    resolver: Resolver = field(default=_getaddrinfo, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.secret is not None:
            _secret_bytes(self.secret)
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"WebhookPolicy.max_attempts must be an int >= 1, got {self.max_attempts!r}")
        if not isinstance(self.retry, RetryPolicy):
            raise TypeError(f"WebhookPolicy.retry must be a RetryPolicy, not {type(self.retry).__name__}")
        if isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float)) or not self.timeout > 0:
            raise ValueError(f"WebhookPolicy.timeout must be a number of seconds > 0, got {self.timeout!r}")
        if not callable(self.resolver):
            raise TypeError("WebhookPolicy.resolver must be callable")

    @property
    def schemes(self) -> tuple[str, ...]:
        return ("https", "http") if self.allow_http else ("https",)

    def validate(self, url: object) -> str:
        """Return ``url`` if a webhook may be sent there now; else raise ValueError saying why.

        Resolves the host (a blocking DNS lookup) and checks every address it resolves to.
        """
        if not isinstance(url, str):
            raise TypeError(f"callback_url must be a str, not {type(url).__name__}")
        if len(url) > MAX_URL or any(c.isspace() or ord(c) < 32 for c in url):
            raise ValueError(f"callback_url must be at most {MAX_URL} characters without spaces or control characters")
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in self.schemes:
            allowed = " or ".join(f"{s}://" for s in self.schemes)
            raise ValueError(f"callback_url scheme {parts.scheme + '://' if parts.scheme else '(none)'} is not "
                             f"allowed: use {allowed}")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise ValueError(f"callback_url {url!r} has an invalid port") from None
        host = parts.hostname
        if not host:
            raise ValueError(f"callback_url {url!r} has no host")
        if not host.isascii():
            # The resolver here encodes a name by IDNA 2003, httpx by IDNA 2008: "faß.de" is fass.de to one and
            # xn--fa-hia.de to the other, so the address checked would not be the one connected to.
            raise ValueError(f"callback_url host {host!r} is not ASCII: give an internationalised name in its "
                             "IDNA form (xn--...), so the name checked is the one the webhook connects to")
        try:
            addresses = [ipaddress.ip_address(host)]
        except ValueError:
            if not _HOST_NAME.match(host):
                # Anything else is where URL parsers disagree (found by fuzzing: "https://[::1]x@]" is host "]" to
                # urlsplit and another to httpx): refused, so the host checked is the one connected to.
                raise ValueError(f"callback_url host {host!r} is neither an IP address nor a host name "
                                 "(letters, digits, '-' and '_' in dot-separated labels)") from None
            try:
                addresses = [ipaddress.ip_address(a.split("%", 1)[0]) for a in self.resolver(host, port)]
            except (OSError, UnicodeError) as exc:
                raise ValueError(f"callback_url host {host!r} does not resolve: {exc}") from None
            if not addresses:
                raise ValueError(f"callback_url host {host!r} does not resolve") from None
        for address in addresses:
            refused = self._refusal(address)
            if refused:
                raise ValueError(f"callback_url host {host!r} resolves to {address}, a {refused} address; "
                                 f"webhooks to {refused} targets are not allowed")
        return url

    def _refusal(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        if isinstance(address, ipaddress.IPv6Address):
            # 6to4 and Teredo addresses carry an IPv4 address that their traffic goes through: judged by it too.
            for embedded in (address.sixtofour, *(address.teredo or ())):
                if embedded is not None and (refused := self._refusal(embedded)) is not None:
                    return refused
        if address.is_loopback:
            return None if self.allow_loopback else "loopback"
        if address.is_link_local:
            return None if self.allow_link_local else "link-local"
        if address.is_multicast or address.is_unspecified or address.is_reserved:
            return "multicast, unspecified or reserved"
        if address.is_private or not address.is_global:
            return None if self.allow_private else "private"
        return None

    def deliver(self, client: Any, url: str, body: bytes, *, job_id: str, attempt: int) -> str | None:
        """POST one signed delivery with the httpx ``client``; None if it answered 2xx, else what went wrong."""
        if self.secret is None:
            return "no webhook secret configured"
        try:
            self.validate(url)
        except ValueError as exc:
            return str(exc)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, body),
            JOB_HEADER: job_id,
            ATTEMPT_HEADER: str(attempt),
            "User-Agent": "ringbus-webhooks",
        }
        try:
            response = client.post(url, content=body, headers=headers, timeout=self.timeout)
        except Exception as exc:  # httpx.HTTPError and anything the transport raises: the attempt failed
            return f"{type(exc).__name__}: {exc}"
        if 200 <= response.status_code < 300:
            return None
        return f"HTTP {response.status_code}"

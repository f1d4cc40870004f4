"""How ringbus topics, patterns and messages look on MQTT 5: topic names and filters, user properties.

Topics: a ringbus word is an MQTT level (``order.placed`` -> ``<prefix>order/placed``); ``*`` is ``+``; a ``#``
that ends the pattern is MQTT's ``#`` (both match zero or more levels: ``order/#`` matches ``order`` too). A ``#``
anywhere else has no MQTT form, so the filter stops at it with ``#`` (an over-match) and the subscriber filters
what arrives with :func:`ringbus.bus.topic_matcher`.

Messages: the body is the MQTT payload unchanged and ``content_type`` the MQTT 5 Content Type, so a device or a
tool that knows nothing of ringbus reads and writes them directly. Headers are MQTT 5 user properties of the same
name (a str value as is; other values as JSON, their names listed in ``ringbus-typed``); the envelope (id,
timestamp, key, priority, reply_to, meta) travels in user properties named ``ringbus-*``, and correlation_id in
Correlation Data. A message from a plain MQTT publisher gets a new id and the time it arrived.
"""

from __future__ import annotations

import json
import time
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ringbus.bus import TOPIC_HEADER, check_topic, topic_matcher
from ringbus.message import HeaderValue, Message, new_id

__all__ = ["check_prefix", "mqtt_filter", "mqtt_topic", "properties", "publish_properties", "ringbus_topic",
           "to_message"]

_P_ID = "ringbus-id"
_P_TS = "ringbus-ts"
_P_KEY = "ringbus-key"
_P_PRIORITY = "ringbus-priority"
_P_REPLY_TO = "ringbus-reply-to"
_P_META = "ringbus-meta"
_P_TYPED = "ringbus-typed"  # JSON list of the headers whose value is JSON (not a str)
RESERVED = frozenset({_P_ID, _P_TS, _P_KEY, _P_PRIORITY, _P_REPLY_TO, _P_META, _P_TYPED})
_DEFAULT_CONTENT_TYPE = Message(b"").content_type

_MQTT_SPECIAL = {
    "/": "'/' is MQTT's level separator; ringbus topics separate words with '.' (mqtt:// maps '.' to '/')",
    "+": "'+' is MQTT's one-level wildcard; in a ringbus pattern write '*' as a whole word",
    "#": "'#' is a wildcard only as a whole word of a pattern, never inside a word or in a topic",
}


def _refuse_mqtt_syntax(kind: str, text: object, wildcards: bool) -> None:
    """Raise ValueError naming the MQTT character a ringbus topic or pattern must not hold."""
    if not isinstance(text, str):
        return  # the generic checks name the wrong type
    for char, why in _MQTT_SPECIAL.items():
        if char == "#" and wildcards:
            if any("#" in word and word != "#" for word in text.split(".")):
                raise ValueError(f"{kind} {text!r}: {why}")
        elif char in text:
            raise ValueError(f"{kind} {text!r} holds {char!r}: {why}")


def check_prefix(prefix: object) -> str:
    """Return ``prefix`` if it can start every MQTT topic of a bus: empty, or levels ending with '/'."""
    if not isinstance(prefix, str):
        raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
    if prefix and (not prefix.endswith("/") or prefix.startswith(("$", "/")) or "//" in prefix
                   or any(c in prefix for c in "+#\0")):
        raise ValueError(f"prefix must be MQTT topic levels ending with '/' such as 'plant-7/' (no '+', '#', "
                         f"empty level or leading '$'), got {prefix!r}")
    return prefix


def mqtt_topic(prefix: str, topic: object) -> str:
    """The MQTT topic name of the ringbus ``topic``; ValueError for a topic that is not dot-separated words."""
    _refuse_mqtt_syntax("topic", topic, wildcards=False)
    return prefix + check_topic(topic).replace(".", "/")


def mqtt_filter(prefix: str, pattern: object) -> str:
    """The MQTT topic filter that receives at least every topic ``pattern`` matches (see the module docstring)."""
    _refuse_mqtt_syntax("subscription pattern", pattern, wildcards=True)
    assert isinstance(pattern, str)
    topic_matcher(pattern)  # ValueError for anything else that is not a pattern
    levels = []
    for word in pattern.split("."):
        if word == "#":
            levels.append("#")
            break
        levels.append("+" if word == "*" else word)
    return prefix + "/".join(levels)


def ringbus_topic(prefix: str, name: str) -> str | None:
    """The ringbus topic of an MQTT topic name under ``prefix``; None if it is not under it or has no words."""
    if not name.startswith(prefix) or len(name) == len(prefix):
        return None
    return name[len(prefix):].replace("/", ".")


def properties(packet_type: int) -> Properties:
    """Empty MQTT 5 properties of a packet type (``PacketTypes.CONNECT``, ...)."""
    return Properties(packet_type)  # type: ignore[no-untyped-call]  # paho's Properties is not annotated


def publish_properties(message: Message) -> Properties:
    """The MQTT 5 PUBLISH properties that carry ``message``'s envelope and headers."""
    for name in message.headers:
        if name in RESERVED:
            raise ValueError(f"header {name!r} is reserved by the mqtt:// backend: it carries a message field")
    props = properties(PacketTypes.PUBLISH)
    props.ContentType = message.content_type
    if message.correlation_id is not None:
        props.CorrelationData = message.correlation_id.encode()
    pairs = [(_P_ID, message.id), (_P_TS, repr(message.timestamp))]
    if message.key is not None:
        pairs.append((_P_KEY, message.key))
    if message.priority:
        pairs.append((_P_PRIORITY, str(message.priority)))
    if message.reply_to is not None:
        pairs.append((_P_REPLY_TO, message.reply_to))
    if message.meta:
        pairs.append((_P_META, json.dumps(message.meta)))
    typed = []
    for name, value in message.headers.items():
        if name == TOPIC_HEADER:
            continue  # the subscriber learns the topic from the MQTT topic name
        if isinstance(value, str):
            pairs.append((name, value))
        else:
            typed.append(name)
            pairs.append((name, json.dumps(value)))
    if typed:
        pairs.append((_P_TYPED, json.dumps(typed)))
    props.UserProperty = pairs
    return props


def _json(text: str, default: Any) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return default


def to_message(topic: str, payload: bytes | bytearray, properties: Properties | None, redelivered: bool) -> Message:
    """The Message of a PUBLISH received on the ringbus ``topic``; tolerant of what plain MQTT publishers send."""
    pairs: list[tuple[str, str]] = list(getattr(properties, "UserProperty", None) or ())
    fields = dict(pair for pair in pairs if pair[0] in RESERVED)
    typed = set(_json(fields.get(_P_TYPED, "[]"), []))
    headers: dict[str, HeaderValue] = {}
    for name, value in pairs:
        if name not in RESERVED:
            headers[name] = _json(value, value) if name in typed else value
    headers[TOPIC_HEADER] = topic
    try:
        timestamp = float(fields[_P_TS])
    except (KeyError, ValueError):
        timestamp = time.time()
    try:
        priority = int(fields.get(_P_PRIORITY, "0"))
    except ValueError:
        priority = 0
    correlation = getattr(properties, "CorrelationData", None)
    meta = _json(fields.get(_P_META, "{}"), {})
    return Message(
        payload,
        id=fields.get(_P_ID) or new_id(),
        key=fields.get(_P_KEY),
        priority=priority,
        headers=headers,
        timestamp=timestamp,
        attempts=1 if redelivered else 0,
        reply_to=fields.get(_P_REPLY_TO),
        correlation_id=None if correlation is None else bytes(correlation).decode(errors="replace"),
        content_type=getattr(properties, "ContentType", None) or _DEFAULT_CONTENT_TYPE,
        meta=meta if isinstance(meta, dict) else {},
    )

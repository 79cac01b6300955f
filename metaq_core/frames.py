"""The frames of the MetaQ text protocol (protocol §2–§5) as immutable events, and their encoders.

One class per frame kind (h11 style). Events are plain slotted records, not frozen ones — a
frozen attrs class costs four times as much to build, and two are built per put — so treat them
as immutable by convention. ``encode(event)`` turns any event into the exact bytes a
Java 1.4.4 peer sends; the decoders (``wire_py.FrameDecoder`` and its compiled twin
``_wire.FrameDecoder``) turn bytes into these events. Nothing here touches a socket, a clock or a
thread.
"""

from __future__ import annotations

import attrs

from metaq_core.errors import MetaqError

DEFAULT_OPAQUE = 2147483647
MAX_HEADER = 64 * 1024
LONG_MAX = 9223372036854775807

TX_TYPES = frozenset({
    "BEGIN", "PREPARE", "COMMIT_ONE_PHASE", "COMMIT_TWO_PHASE", "ROLLBACK", "RECOVER", "FORGET", "END",
})


class RemoteProtocolError(MetaqError):
    """The peer sent something the protocol does not allow; the connection must be closed."""

    status = 400


class LocalProtocolError(MetaqError):
    """We were asked to encode something the protocol cannot carry."""

    status = 500


@attrs.define(slots=True)
class Put:
    topic: str
    partition: int
    flag: int
    checksum: int            # -1 when the client sent none (pre-1.4.4 forms)
    tx_key: str | None
    opaque: int
    data: bytes | None       # None: the body was longer than the decoder's max_body and was skipped
    length: int = attrs.field(default=0, eq=False)  # the announced body length


@attrs.define(slots=True)
class Get:
    topic: str
    group: str
    partition: int
    offset: int
    max_size: int
    opaque: int


@attrs.define(slots=True)
class OffsetRequest:
    topic: str
    group: str
    partition: int
    offset: int
    opaque: int


@attrs.define(slots=True)
class Sync:
    topic: str
    partition: int
    flag: int
    msg_id: int
    checksum: int            # -1 for the pre-1.4.4 7-token form
    opaque: int
    data: bytes | None
    length: int = attrs.field(default=0, eq=False)


@attrs.define(slots=True)
class Transaction:
    tx_key: str
    session_id: str
    tx_type: str
    timeout: int             # 0 when absent
    unique_qualifier: str | None
    opaque: int


@attrs.define(slots=True)
class Stats:
    item: str                # "" for the summary
    opaque: int = DEFAULT_OPAQUE


@attrs.define(slots=True)
class Version:
    opaque: int = DEFAULT_OPAQUE


@attrs.define(slots=True)
class Quit:
    pass


@attrs.define(slots=True)
class Result:
    status: int
    body: bytes | None       # None when the length is 0 (the Java decoder reports "absent")
    opaque: int


@attrs.define(slots=True)
class Value:
    data: bytes
    opaque: int


Event = Put | Get | OffsetRequest | Sync | Transaction | Stats | Version | Quit | Result | Value


def _token(value: str, what: str) -> bytes:
    raw = value.encode("utf-8")
    if not raw or b" " in raw or b"\r" in raw or b"\n" in raw:
        raise LocalProtocolError(f"{what} {value!r} cannot be sent as one header token")
    return raw


def _int32(value: int, what: str) -> int:
    if not -(2**31) <= value < 2**31:
        raise LocalProtocolError(f"{what} {value} is outside the int32 range")
    return value


def encode_result(status: int, body: bytes | str | None, opaque: int) -> bytes:
    """``result <status> <length> <opaque>\\r\\n<body>``."""
    if body is None:
        body = b""
    elif isinstance(body, str):
        body = body.encode("utf-8")
    return b"result %d %d %d\r\n" % (status, len(body), opaque) + body


def encode_value_header(length: int, opaque: int) -> bytes:
    """The header of a ``value`` frame; the ``length`` bytes of log data follow it."""
    return b"value %d %d\r\n" % (length, opaque)


def encode(event: Event) -> bytes:
    """The exact bytes of ``event`` as a Java 1.4.4 peer sends them."""
    if isinstance(event, Put):
        data = event.data or b""
        parts = [b"put", _token(event.topic, "topic"), b"%d" % _int32(event.partition, "partition"),
                 b"%d" % len(data), b"%d" % _int32(event.flag, "flag")]
        if event.checksum != -1 or event.tx_key is None:
            parts.append(b"%d" % event.checksum)
        if event.tx_key is not None:
            parts.append(_token(event.tx_key, "transaction key"))
        parts.append(b"%d" % _int32(event.opaque, "opaque"))
        return b" ".join(parts) + b"\r\n" + data
    if isinstance(event, Get):
        return b"get %s %s %d %d %d %d\r\n" % (
            _token(event.topic, "topic"), _token(event.group, "group"),
            _int32(event.partition, "partition"), event.offset, _int32(event.max_size, "maxSize"),
            _int32(event.opaque, "opaque"))
    if isinstance(event, OffsetRequest):
        return b"offset %s %s %d %d %d\r\n" % (
            _token(event.topic, "topic"), _token(event.group, "group"),
            _int32(event.partition, "partition"), event.offset, _int32(event.opaque, "opaque"))
    if isinstance(event, Sync):
        data = event.data or b""
        return b"sync %s %d %d %d %d %d %d\r\n" % (
            _token(event.topic, "topic"), _int32(event.partition, "partition"), len(data),
            _int32(event.flag, "flag"), event.msg_id, event.checksum,
            _int32(event.opaque, "opaque")) + data
    if isinstance(event, Transaction):
        if event.tx_type not in TX_TYPES:
            raise LocalProtocolError(f"unknown transaction type {event.tx_type!r}")
        parts = [b"transaction", _token(event.tx_key, "transaction key"),
                 _token(event.session_id, "session id"), event.tx_type.encode()]
        if event.timeout > 0:
            parts.append(b"%d" % event.timeout)
        if event.unique_qualifier:
            parts.append(_token(event.unique_qualifier, "unique qualifier"))
        parts.append(b"%d" % _int32(event.opaque, "opaque"))
        return b" ".join(parts) + b"\r\n"
    if isinstance(event, Stats):
        item = event.item.encode("utf-8")
        if b" " in item or b"\r" in item or b"\n" in item:
            raise LocalProtocolError(f"stats item {event.item!r} cannot be sent")
        return b"stats %s %d\r\n" % (item, _int32(event.opaque, "opaque"))
    if isinstance(event, Version):
        return b"version %d\r\n" % _int32(event.opaque, "opaque")
    if isinstance(event, Quit):
        return b"quit\r\n"
    if isinstance(event, Result):
        return encode_result(event.status, event.body, event.opaque)
    if isinstance(event, Value):
        return encode_value_header(len(event.data), event.opaque) + event.data
    raise LocalProtocolError(f"not a protocol event: {event!r}")

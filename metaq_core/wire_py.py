"""Pure-Python twin of ``metaq_core._wire``: the sans-I/O frame decoder of the MetaQ protocol.

Feed it bytes with ``receive_data``; ``next_event()`` returns the next complete frame as an event
of ``metaq_core.frames`` or None when it needs more bytes. Malformed input raises
RemoteProtocolError (the caller closes the connection, as Java does, protocol §2.4). Memory is
bounded: a header line may not exceed ``max_header`` bytes, and a body longer than ``max_body`` is
skipped as it arrives (the event then carries ``data=None``) instead of being buffered.

It must stay a plain transcription of the spec: it is the tests' oracle for the compiled decoder.
"""

from __future__ import annotations

import re

from metaq_core.frames import (
    DEFAULT_OPAQUE,
    MAX_HEADER,
    TX_TYPES,
    Get,
    OffsetRequest,
    Put,
    Quit,
    RemoteProtocolError,
    Result,
    Stats,
    Sync,
    Transaction,
    Value,
    Version,
)

_INT = re.compile(r"[+-]?[0-9]+\Z")
_INT32 = (-(2**31), 2**31 - 1)
_INT64 = (-(2**63), 2**63 - 1)


def _number(token: str, bounds: tuple[int, int], what: str) -> int:
    if not _INT.match(token):
        raise RemoteProtocolError(f"{what} {token!r} is not a number")
    value = int(token)
    if not bounds[0] <= value <= bounds[1]:
        raise RemoteProtocolError(f"{what} {token} is out of range")
    return value


def _int(token: str, what: str) -> int:
    return _number(token, _INT32, what)


def _long(token: str, what: str) -> int:
    return _number(token, _INT64, what)


def split_tokens(line: str) -> list[str]:
    """Split a header line like Java's ``split(" ")``: single-space separators, trailing empty
    tokens dropped, a leading empty token kept."""
    tokens = line.split(" ")
    while tokens and tokens[-1] == "":
        tokens.pop()
    return tokens


class FrameDecoder:
    """Incremental decoder of a byte stream into protocol events (both directions)."""

    def __init__(self, *, max_header: int = MAX_HEADER, max_body: int = 64 * 1024 * 1024) -> None:
        self.max_header = max_header
        self.max_body = max_body
        self._buf = bytearray()
        self._pending: tuple | None = None  # a parsed header waiting for its body
        self._skip = 0                       # body bytes still to discard (oversize body)

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def receive_data(self, data: bytes) -> None:
        self._buf += data

    def events(self) -> list:
        """Every complete event in the buffer."""
        out = []
        while True:
            event = self.next_event()
            if event is None:
                return out
            out.append(event)

    def next_raw(self):
        """As ``next_event``, except that a plain put (no transaction key) comes as the tuple
        ``(topic, partition, flag, checksum, opaque, data, length)`` instead of a ``Put``."""
        event = self.next_event()
        if type(event) is Put and event.tx_key is None:
            return (event.topic, event.partition, event.flag, event.checksum, event.opaque,
                    event.data, event.length)
        return event

    def next_event(self):
        buf = self._buf
        if self._pending is not None:
            return self._body()
        end = buf.find(b"\r\n")
        if end < 0:
            if len(buf) > self.max_header:
                raise RemoteProtocolError(f"header line longer than {self.max_header} bytes")
            return None
        if end > self.max_header:
            raise RemoteProtocolError(f"header line longer than {self.max_header} bytes")
        try:
            line = bytes(buf[:end]).decode("utf-8")
        except UnicodeDecodeError:
            raise RemoteProtocolError("header line is not valid UTF-8") from None
        del buf[: end + 2]
        parsed = parse_header(split_tokens(line))
        if type(parsed) is not tuple:
            return parsed
        kind, length, fields = parsed
        # A header that announces a body stays pending until the body is complete.
        oversize = length > self.max_body and kind in ("put", "sync")
        self._pending = (kind, length, fields, oversize)
        self._skip = length if oversize else 0
        return self._body()

    def _body(self):
        kind, length, fields, oversize = self._pending
        buf = self._buf
        if oversize:
            drop = min(self._skip, len(buf))
            del buf[:drop]
            self._skip -= drop
            if self._skip:
                return None
            data = None
        else:
            if len(buf) < length:
                return None
            data = bytes(buf[:length])
            del buf[:length]
        self._pending = None
        if kind == "put":
            topic, partition, flag, checksum, tx_key, opaque = fields
            return Put(topic, partition, flag, checksum, tx_key, opaque, data, length)
        if kind == "sync":
            topic, partition, flag, msg_id, checksum, opaque = fields
            return Sync(topic, partition, flag, msg_id, checksum, opaque, data, length)
        if kind == "result":
            status, opaque = fields
            return Result(status, data if length else None, opaque)
        (opaque,) = fields
        return Value(data, opaque)


def _body_header(kind: str, length: int, fields: tuple) -> tuple:
    if length < 0:
        raise RemoteProtocolError(f"negative body length {length}")
    return kind, length, fields


def parse_header(t: list[str]):
    """The event of a header line without a body, or (kind, body length, fields) for put, sync,
    result and value, whose body follows. Raises RemoteProtocolError on malformed input."""
    if not t or not t[0]:
        raise RemoteProtocolError("empty header line or leading space")
    first = t[0][0]
    n = len(t)
    if first == "p":
        if t[0] != "put":
            raise RemoteProtocolError(f"unknown command {t[0]!r}")
        if n not in (6, 7, 8):
            raise RemoteProtocolError(f"put takes 6, 7 or 8 tokens, not {n}")
        checksum, tx_key = -1, None
        if n == 7:
            if t[5][:1].isdigit() or t[5][:1] == "-":
                checksum = _int(t[5], "checksum")
            else:
                tx_key = t[5]
        elif n == 8:
            checksum, tx_key = _int(t[5], "checksum"), t[6]
        fields = (t[1], _int(t[2], "partition"), _int(t[4], "flag"), checksum, tx_key,
                  _int(t[-1], "opaque"))
        return _body_header("put", _int(t[3], "length"), fields)
    if first == "g":
        if t[0] != "get":
            raise RemoteProtocolError(f"unknown command {t[0]!r}")
        if n < 7:
            raise RemoteProtocolError(f"get takes 7 tokens, not {n}")
        return Get(t[1], t[2], _int(t[3], "partition"), _long(t[4], "offset"),
                   _int(t[5], "maxSize"), _int(t[6], "opaque"))
    if first == "o":
        if t[0] != "offset":
            raise RemoteProtocolError(f"unknown command {t[0]!r}")
        if n < 6:
            raise RemoteProtocolError(f"offset takes 6 tokens, not {n}")
        return OffsetRequest(t[1], t[2], _int(t[3], "partition"), _long(t[4], "offset"),
                             _int(t[5], "opaque"))
    if first == "s":
        if t[0] == "stats":
            item = t[1] if n > 1 else ""
            opaque = _int(t[2], "opaque") if n > 2 else DEFAULT_OPAQUE
            return Stats(item, opaque)
        if t[0] != "sync":
            raise RemoteProtocolError(f"unknown command {t[0]!r}")
        if n not in (7, 8):
            raise RemoteProtocolError(f"sync takes 7 or 8 tokens, not {n}")
        checksum = _int(t[6], "checksum") if n == 8 else -1
        fields = (t[1], _int(t[2], "partition"), _int(t[4], "flag"), _long(t[5], "message id"),
                  checksum, _int(t[-1], "opaque"))
        return _body_header("sync", _int(t[3], "length"), fields)
    if first == "t":
        if t[0] != "transaction":
            raise RemoteProtocolError(f"unknown command {t[0]!r}")
        if n not in (5, 6, 7):
            raise RemoteProtocolError(f"transaction takes 5, 6 or 7 tokens, not {n}")
        if t[3] not in TX_TYPES:
            raise RemoteProtocolError(f"unknown transaction type {t[3]!r}")
        _check_tx_key(t[1])
        timeout, qualifier = 0, None
        if n == 7:
            timeout, qualifier = _int(t[4], "timeout"), t[5]
        elif n == 6:
            if t[4].isascii() and t[4].isdigit():
                timeout = _int(t[4], "timeout")
            else:
                qualifier = t[4]
        return Transaction(t[1], t[2], t[3], timeout, qualifier, _int(t[-1], "opaque"))
    if first == "v":
        if t[0] == "value":
            if n < 3:
                raise RemoteProtocolError(f"value takes 3 tokens, not {n}")
            return _body_header("value", _int(t[1], "length"), (_int(t[2], "opaque"),))
        if t[0] != "version":
            raise RemoteProtocolError(f"unknown command {t[0]!r}")
        return Version(_int(t[1], "opaque") if n > 1 else DEFAULT_OPAQUE)
    if first == "q":
        if t[0] != "quit":
            raise RemoteProtocolError(f"unknown command {t[0]!r}")
        return Quit()
    if first == "r":
        if t[0] != "result":
            raise RemoteProtocolError(f"unknown command {t[0]!r}")
        if n < 4:
            raise RemoteProtocolError(f"result takes 4 tokens, not {n}")
        return _body_header("result", _int(t[2], "length"),
                                 (_int(t[1], "status"), _int(t[3], "opaque")))
    raise RemoteProtocolError(f"unknown command {t[0]!r}")


def _check_tx_key(key: str) -> None:
    """Keys are ``null``, ``TX:<session>:<counter>`` or ``XID:<fmt>:<gtrid>:<bqual>[:<uq>]``."""
    if key == "null":
        return
    parts = key.split(":")
    if parts[0] == "TX" and len(parts) == 3:
        _int(parts[2], "transaction counter")
        return
    if parts[0] == "XID" and len(parts) in (4, 5):
        _int(parts[1], "XID format id")
        for part in parts[2:4]:
            if len(part) % 2 or any(c not in "0123456789abcdefABCDEF" for c in part):
                raise RemoteProtocolError(f"invalid XID hex part {part!r}")
        return
    raise RemoteProtocolError(f"invalid transaction key {key!r}")

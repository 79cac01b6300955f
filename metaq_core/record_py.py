"""Pure-Python twin of ``metaq_core._record`` (and of the checksum in ``_crc``): the same API.

It is the tests' oracle for the compiled codec, and what ``METAQ_PURE_PYTHON=1`` selects. It must
stay a plain, obviously correct transcription of protocol §4, never optimised.
"""

from __future__ import annotations

import struct
import zlib

from metaq_core.errors import InvalidMessageError

HEADER_SIZE_PY = 20
CLEAN = 0
PARTIAL = 1
CORRUPT = 2

_HEADER = struct.Struct(">iiqi")
_INT32 = struct.Struct(">i")


def checksum(data: bytes | bytearray | memoryview) -> int:
    """CRC-32 of ``data`` masked with 0x7FFFFFFF."""
    return zlib.crc32(data) & 0x7FFFFFFF


def crc32_of(data: bytes | bytearray | memoryview) -> int:
    return zlib.crc32(data)


def _to_int32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def _to_int64(value: int) -> int:
    value &= 0xFFFFFFFFFFFFFFFF
    return value - (1 << 64) if value & (1 << 63) else value


def encode_header(msg_id: int, flag: int, data: bytes, checksum: int = -1) -> bytes:  # noqa: F811
    data = bytes(data)
    if len(data) > 0x7FFFFFFF:
        raise InvalidMessageError("message data longer than 2 GiB")
    crc = zlib.crc32(data) & 0x7FFFFFFF if checksum < 0 else checksum
    return _HEADER.pack(len(data), _to_int32(crc), _to_int64(msg_id), _to_int32(flag))


def encode_record(msg_id: int, flag: int, data: bytes) -> bytes:
    return encode_header(msg_id, flag, data) + bytes(data)


def decode_header(buf: bytes, pos: int = 0) -> tuple[int, int, int, int]:
    if pos < 0 or len(buf) - pos < 20:
        raise ValueError("fewer than 20 bytes for a record header")
    return _HEADER.unpack_from(buf, pos)


def _bounds(buf: bytes, start: int, end: int) -> int:
    size = len(buf)
    if end < 0 or end > size:
        end = size
    if start < 0 or start > end:
        raise ValueError(f"start {start} outside the buffer (0..{end})")
    return end


def decode(buf, base_offset: int = 0, start: int = 0, end: int = -1, verify: bool = True):
    buf = bytes(buf)
    end = _bounds(buf, start, end)
    records = []
    pos = start
    status = CLEAN
    while pos < end:
        if end - pos < 20:
            status = PARTIAL
            break
        length, crc, msg_id, flag = _HEADER.unpack_from(buf, pos)
        if length < 0:
            status = CORRUPT
            break
        if length > end - pos - 20:
            status = PARTIAL
            break
        data = buf[pos + 20 : pos + 20 + length]
        if verify and checksum(data) != crc & 0xFFFFFFFF:
            status = CORRUPT
            break
        records.append((base_offset + pos, msg_id, flag, data))
        pos += 20 + length
    return records, pos, status


def scan(buf, start: int = 0, end: int = -1, verify: bool = True) -> tuple[int, int, int]:
    records, pos, status = decode(buf, 0, start, end, verify)
    return len(records), pos, status


def check_data(flag: int, data) -> None:
    if not flag & 1:
        return
    n = len(data)
    if n < 4:
        raise InvalidMessageError(
            f"flag has the attribute bit but the data holds {n} bytes, fewer than an attribute length")
    (attr_len,) = _INT32.unpack_from(data, 0)
    if attr_len < 0 or attr_len > n - 4:
        raise InvalidMessageError(f"attribute length {attr_len} does not fit the {n - 4} bytes after it")


def split_data(flag: int, data) -> tuple[str | None, bytes]:
    check_data(flag, data)
    data = bytes(data)
    if not flag & 1:
        return None, data
    (attr_len,) = _INT32.unpack_from(data, 0)
    try:
        attribute = data[4 : 4 + attr_len].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessageError(f"attribute is not valid UTF-8: {exc}") from None
    return attribute, data[4 + attr_len :]


def make_data(body, attribute: str | None = None) -> tuple[int, bytes]:
    if attribute is None:
        return 0, bytes(body)
    attr = attribute.encode("utf-8")
    return 1, _INT32.pack(len(attr)) + attr + bytes(body)

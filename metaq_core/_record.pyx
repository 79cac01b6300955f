# cython: language_level=3
"""MetaQ message records (protocol §4): encode, decode, validate, and scan buffers of many records.

A record is a 20-byte big-endian header (length, checksum, id, flag) followed by the message data;
the data is an optional attribute block (int32 length + UTF-8) and the body. This module is pure
computation over buffers: no files, no sockets. ``metaq_core.record_py`` is its pure-Python twin
with the same API, used as the tests' oracle.
"""
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memcpy

from metaq_core._crc cimport checksum_raw
from metaq_core.errors import CorruptRecordError, InvalidMessageError

HEADER_SIZE_PY = HEADER_SIZE
CLEAN = SCAN_CLEAN
PARTIAL = SCAN_PARTIAL
CORRUPT = SCAN_CORRUPT

cdef size_t NOGIL_THRESHOLD = 65536
cdef int32_t ATTRIBUTE_FLAG = 1


cdef void write_header(unsigned char* p, int32_t length, uint32_t checksum,
                       int64_t msg_id, int32_t flag) noexcept nogil:
    cdef uint64_t i = <uint64_t>msg_id
    store_be32(p, <uint32_t>length)
    store_be32(p + 4, checksum)
    store_be32(p + 8, <uint32_t>(i >> 32))
    store_be32(p + 12, <uint32_t>i)
    store_be32(p + 16, <uint32_t>flag)


cdef inline int next_record(const unsigned char* buf, size_t pos, size_t end, bint verify,
                            int32_t* length) noexcept nogil:
    """Check the record at ``pos``: SCAN_CLEAN if it is whole and valid (its data length in
    ``length``), SCAN_PARTIAL if it is incomplete, SCAN_CORRUPT if it is invalid."""
    if end - pos < HEADER_SIZE:
        return SCAN_PARTIAL
    length[0] = <int32_t>load_be32(buf + pos)
    if length[0] < 0:
        return SCAN_CORRUPT
    if <size_t>length[0] > end - pos - HEADER_SIZE:
        return SCAN_PARTIAL
    if verify and checksum_raw(buf + pos + HEADER_SIZE, <size_t>length[0]) != load_be32(buf + pos + 4):
        return SCAN_CORRUPT
    return SCAN_CLEAN


cdef int scan_raw(const unsigned char* buf, size_t start, size_t end, bint verify,
                  size_t* out_end, long long* out_count) noexcept nogil:
    """Walk records in buf[start:end]; stop at the first incomplete or invalid one."""
    cdef size_t pos = start
    cdef long long count = 0
    cdef int32_t length = 0
    cdef int status = SCAN_CLEAN
    while pos < end:
        status = next_record(buf, pos, end, verify, &length)
        if status != SCAN_CLEAN:
            break
        pos += HEADER_SIZE + <size_t>length
        count += 1
    out_end[0] = pos
    out_count[0] = count
    return status


cdef inline Py_ssize_t _resolve_end(Py_ssize_t size, Py_ssize_t start, Py_ssize_t end) except -1:
    if end < 0 or end > size:
        end = size
    if start < 0 or start > end:
        raise ValueError(f"start {start} outside the buffer (0..{end})")
    return end


def encode_header(long long msg_id, int flag, data, long long checksum=-1) -> bytes:
    """The 20-byte record header for ``data``; ``checksum`` -1 means compute it."""
    cdef const unsigned char[::1] view = data
    cdef size_t n = view.shape[0]
    cdef uint32_t crc
    if n > 0x7FFFFFFF:
        raise InvalidMessageError("message data longer than 2 GiB")
    if checksum < 0:
        crc = checksum_raw(&view[0], n) if n else 0
    else:
        crc = <uint32_t>checksum
    out = PyBytes_FromStringAndSize(NULL, HEADER_SIZE)
    write_header(<unsigned char*>PyBytes_AS_STRING(out), <int32_t>n, crc, msg_id, flag)
    return out


def encode_record(long long msg_id, int flag, data) -> bytes:
    """A whole record: header + data."""
    cdef const unsigned char[::1] view = data
    cdef size_t n = view.shape[0]
    cdef unsigned char* p
    if n > 0x7FFFFFFF - HEADER_SIZE:
        raise InvalidMessageError("message data longer than 2 GiB")
    out = PyBytes_FromStringAndSize(NULL, HEADER_SIZE + n)
    p = <unsigned char*>PyBytes_AS_STRING(out)
    if n:
        memcpy(p + HEADER_SIZE, &view[0], n)
    write_header(p, <int32_t>n, checksum_raw(p + HEADER_SIZE, n) if n else 0, msg_id, flag)
    return out


def decode_header(buf, Py_ssize_t pos=0) -> tuple:
    """(length, checksum, msg_id, flag) of the header at ``pos``; ValueError if fewer than 20 bytes."""
    cdef const unsigned char[::1] view = buf
    cdef const unsigned char* p
    if pos < 0 or view.shape[0] - pos < HEADER_SIZE:
        raise ValueError("fewer than 20 bytes for a record header")
    p = &view[0] + pos
    return (<int32_t>load_be32(p), <int32_t>load_be32(p + 4),
            <int64_t>((<uint64_t>load_be32(p + 8) << 32) | load_be32(p + 12)),
            <int32_t>load_be32(p + 16))


def scan(buf, Py_ssize_t start=0, Py_ssize_t end=-1, bint verify=True) -> tuple:
    """Walk the records of ``buf[start:end]``: (count, end of the last good record, status).

    Status is CLEAN (the range ends after a record), PARTIAL (an incomplete record follows) or
    CORRUPT (a negative length or a checksum mismatch follows). Never raises on bad data.
    """
    cdef const unsigned char[::1] view = buf
    cdef Py_ssize_t size = view.shape[0]
    cdef size_t out_end = 0
    cdef long long count = 0
    cdef int status
    end = _resolve_end(size, start, end)
    if size == 0:
        return (0, 0, SCAN_CLEAN)
    if end - start >= <Py_ssize_t>NOGIL_THRESHOLD:
        with nogil:
            status = scan_raw(&view[0], start, end, verify, &out_end, &count)
    else:
        status = scan_raw(&view[0], start, end, verify, &out_end, &count)
    return (count, out_end, status)


def decode(buf, long long base_offset=0, Py_ssize_t start=0, Py_ssize_t end=-1,
           bint verify=True) -> tuple:
    """Decode the complete records of ``buf[start:end]``.

    Returns (records, end, status): ``records`` is a list of (offset, msg_id, flag, data) where
    offset = ``base_offset`` + position in ``buf``; ``end`` is the position after the last good
    record; status as for :func:`scan`. Decoding stops at the first incomplete or bad record.
    """
    cdef const unsigned char[::1] view = buf
    cdef Py_ssize_t size = view.shape[0]
    cdef size_t pos
    cdef size_t stop
    cdef const unsigned char* p
    cdef int32_t length = 0
    cdef int status = SCAN_CLEAN
    cdef list records = []
    end = _resolve_end(size, start, end)
    pos = start
    stop = end
    if size == 0:
        return (records, 0, SCAN_CLEAN)
    while pos < stop:
        status = next_record(&view[0], pos, stop, verify, &length)
        if status != SCAN_CLEAN:
            break
        p = &view[0] + pos
        records.append((
            base_offset + <long long>pos,
            <int64_t>((<uint64_t>load_be32(p + 8) << 32) | load_be32(p + 12)),
            <int32_t>load_be32(p + 16),
            PyBytes_FromStringAndSize(<const char*>(p + HEADER_SIZE), length),
        ))
        pos += HEADER_SIZE + <size_t>length
    return (records, pos, status)


def check_data(int flag, data) -> None:
    """Raise InvalidMessageError unless ``data`` is well formed for ``flag`` (attribute block)."""
    cdef const unsigned char[::1] view = data
    cdef Py_ssize_t n = view.shape[0]
    cdef int32_t attr_len
    if not (flag & ATTRIBUTE_FLAG):
        return
    if n < 4:
        raise InvalidMessageError(
            f"flag has the attribute bit but the data holds {n} bytes, fewer than an attribute length")
    attr_len = <int32_t>load_be32(&view[0])
    if attr_len < 0 or attr_len > n - 4:
        raise InvalidMessageError(
            f"attribute length {attr_len} does not fit the {n - 4} bytes after it")


def split_data(int flag, data) -> tuple:
    """(attribute or None, body) of message data; InvalidMessageError if the block is malformed."""
    cdef const unsigned char[::1] view = data
    cdef int32_t attr_len
    check_data(flag, data)
    if not (flag & ATTRIBUTE_FLAG):
        return (None, bytes(data))
    attr_len = <int32_t>load_be32(&view[0])
    try:
        attribute = bytes(view[4:4 + attr_len]).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidMessageError(f"attribute is not valid UTF-8: {exc}") from None
    return (attribute, bytes(view[4 + attr_len:]))


def make_data(body, attribute=None) -> tuple:
    """(flag, data) for a body and an optional attribute (str), as a Java 1.4.4 producer builds it."""
    cdef bytes attr
    cdef const unsigned char[::1] view
    cdef Py_ssize_t n
    cdef unsigned char* p
    if attribute is None and type(body) is bytes:
        return (0, body)
    view = body
    n = view.shape[0]
    if attribute is None:
        return (0, bytes(body))
    attr = attribute.encode("utf-8")
    out = PyBytes_FromStringAndSize(NULL, 4 + len(attr) + n)
    p = <unsigned char*>PyBytes_AS_STRING(out)
    store_be32(p, <uint32_t>len(attr))
    memcpy(p + 4, PyBytes_AS_STRING(attr), len(attr))
    if n:
        memcpy(p + 4 + len(attr), &view[0], n)
    return (ATTRIBUTE_FLAG, out)

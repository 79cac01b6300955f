# cython: language_level=3
"""Compiled twin of ``metaq_core.wire_py``: the sans-I/O frame decoder of the MetaQ protocol.

Same API and behaviour. The frames that carry traffic (``put``, ``get``, ``result``, ``value``,
``version``) are scanned, split and their numbers parsed in C over the receive buffer, with no
Python object per byte or per token; rarer frames are handed to ``wire_py.parse_header``. The
buffer keeps a read position and is compacted lazily, so many pipelined frames cost no copying.
Never touches a socket, a clock or a thread.
"""
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int64_t
from libc.string cimport memchr

from metaq_core.frames import (DEFAULT_OPAQUE, MAX_HEADER, Get, Put, RemoteProtocolError, Result,
                               Sync, Value, Version)
from metaq_core.wire_py import parse_header, split_tokens

cdef enum:
    KIND_PUT = 1
    KIND_SYNC = 2
    KIND_RESULT = 3
    KIND_VALUE = 4

cdef object NOT_FAST = object()  # _fast declines the line: the generic path parses it
cdef int64_t INT32_MIN = -2147483648
cdef int64_t INT32_MAX = 2147483647


cdef int parse_long(const char* p, Py_ssize_t n, int64_t lo, int64_t hi, int64_t* out) noexcept:
    """Decimal [+-]digits within [lo, hi] -> 0; anything else -> -1."""
    cdef Py_ssize_t i = 0
    cdef bint negative = False
    cdef unsigned long long value = 0
    cdef unsigned long long limit
    cdef unsigned char c
    if n <= 0:
        return -1
    if p[0] == b'-' or p[0] == b'+':
        negative = p[0] == b'-'
        i = 1
        if n == 1:
            return -1
    limit = (<unsigned long long>(-(lo + 1)) + 1) if negative else <unsigned long long>hi
    while i < n:
        c = <unsigned char>p[i]
        if c < 48 or c > 57:
            return -1
        if value > (limit - (c - 48)) // 10:
            return -1
        value = value * 10 + (c - 48)
        i += 1
    if negative:
        out[0] = -<int64_t>(value - 1) - 1 if value else 0
    else:
        out[0] = <int64_t>value
    return 0


cdef Py_ssize_t find_line_end(const char* base, Py_ssize_t pos, Py_ssize_t size) noexcept:
    """Index of the CR of the first CR LF at or after ``pos``, or -1."""
    cdef Py_ssize_t i = pos
    cdef const char* hit
    while i < size:
        hit = <const char*>memchr(base + i, b'\r', size - i)
        if hit == NULL:
            return -1
        i = hit - base
        if i + 1 >= size:
            return -1
        if base[i + 1] == b'\n':
            return i
        i += 1
    return -1


cdef class FrameDecoder:
    """Incremental decoder of a byte stream into protocol events (both directions)."""

    # (attributes: see _wire.pxd)

    def __init__(self, *, max_header=MAX_HEADER, max_body=64 * 1024 * 1024):
        self._buf = bytearray()
        self._pos = 0
        self.max_header = max_header
        self.max_body = max_body
        self._kind = 0

    @property
    def buffered(self):
        return PyByteArray_GET_SIZE(self._buf) - self._pos

    def receive_data(self, data):
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0
        self._buf += data

    def events(self):
        """Every complete event in the buffer."""
        cdef list out = []
        while True:
            event = self.next_event()
            if event is None:
                return out
            out.append(event)

    cdef object _int(self, const char* base, int i, str what):
        cdef int v
        if self._int32(base, i, &v) < 0:
            raise RemoteProtocolError(
                f"{what} {self._token_text(base, i)!r} is not an int32 number")
        return v

    cdef object _long(self, const char* base, int i, str what):
        cdef int64_t v
        if parse_long(base + self._starts[i], self._lens[i], -9223372036854775807 - 1,
                      9223372036854775807, &v) < 0:
            raise RemoteProtocolError(
                f"{what} {self._token_text(base, i)!r} is not an int64 number")
        return v

    cdef str _token_text(self, const char* base, int i):
        try:
            return PyUnicode_DecodeUTF8(base + self._starts[i], self._lens[i], NULL)
        except UnicodeDecodeError:
            raise RemoteProtocolError("header line is not valid UTF-8") from None

    cdef bint _is(self, const char* base, int i, const char* word, Py_ssize_t n):
        cdef Py_ssize_t k
        if self._lens[i] != n:
            return False
        for k in range(n):
            if base[self._starts[i] + k] != word[k]:
                return False
        return True

    def next_event(self):
        """The next complete event, or None."""
        self._raw = False
        return self._next()

    def next_raw(self):
        """As ``next_event``, except that a plain put (no transaction key) comes as the tuple
        ``(topic, partition, flag, checksum, opaque, data, length)`` instead of a ``Put``: the
        broker's compiled put path takes it apart without building an event object."""
        self._raw = True
        return self._next()

    cdef Py_ssize_t _split(self, const char* base, Py_ssize_t pos, Py_ssize_t line_end) noexcept:
        """Split the line [pos, line_end) on single spaces into _starts/_lens (Java's
        split(" "): trailing empties dropped); the token count, MAX_TOKENS + 1 if more."""
        cdef Py_ssize_t count = 0
        cdef Py_ssize_t i = pos
        self._starts[0] = pos
        while i < line_end and count < MAX_TOKENS:
            if base[i] == b' ':
                self._lens[count] = i - self._starts[count]
                count += 1
                if count < MAX_TOKENS:
                    self._starts[count] = i + 1
            i += 1
        if count < MAX_TOKENS:
            self._lens[count] = line_end - self._starts[count]
            count += 1
            while count > 0 and self._lens[count - 1] == 0:
                count -= 1
        else:
            count = MAX_TOKENS + 1  # more tokens than the fast path handles
        return count

    cdef int _int32(self, const char* base, int i, int* out) noexcept:
        cdef int64_t v
        if parse_long(base + self._starts[i], self._lens[i], INT32_MIN, INT32_MAX, &v) < 0:
            return -1
        out[0] = <int>v
        return 0

    cdef int _put_checksum_form(self, const char* base, Py_ssize_t count) noexcept:
        """A put line of ``count`` tokens: 1 with a checksum token (7 tokens, the 6th starting
        like a number), 0 without (6 tokens), -1 otherwise (transactional or malformed)."""
        if count == 7 and self._lens[5] > 0 and (base[self._starts[5]] == b'-' or
                                                 b'0' <= base[self._starts[5]] <= b'9'):
            return 1
        return 0 if count == 6 else -1

    cdef int peek_put(self, PutView* out) noexcept:
        """1 and ``out`` filled when the buffer starts with a whole plain put (header and body,
        no transaction key, numbers well formed, body within ``max_body``), consuming nothing;
        0 for anything else — incomplete, another frame, or a line the ordinary path must judge
        (it also raises the protocol errors). ``consume_put`` then moves past it."""
        cdef const char* base
        cdef Py_ssize_t size, pos, line_end
        cdef int length, checksum, form
        if self._kind:
            return 0
        base = PyByteArray_AS_STRING(self._buf)
        size = PyByteArray_GET_SIZE(self._buf)
        pos = self._pos
        if (size - pos < 4 or base[pos] != b'p' or base[pos + 1] != b'u' or base[pos + 2] != b't'
                or base[pos + 3] != b' '):
            return 0
        line_end = find_line_end(base, pos, size)
        if line_end < 0 or line_end - pos > self.max_header:
            return 0
        form = self._put_checksum_form(base, self._split(base, pos, line_end))
        if form < 0:
            return 0
        out.checksum = -1
        if form:
            if self._int32(base, 5, &checksum) < 0:
                return 0
            out.checksum = checksum
        if (self._lens[1] == 0 or self._int32(base, 2, &out.partition) < 0
                or self._int32(base, 3, &length) < 0 or self._int32(base, 4, &out.flag) < 0
                or self._int32(base, 5 + form, &out.opaque) < 0
                or length < 0 or length > self.max_body or line_end + 2 + length > size):
            return 0
        out.topic = base + self._starts[1]
        out.topic_len = self._lens[1]
        out.data = base + line_end + 2
        out.length = length
        out.end = line_end + 2 + length
        return 1

    def take_put(self):
        """``peek_put`` + ``consume_put`` for Python (the tests): the whole plain put at the
        front of the buffer as ``(topic_bytes, partition, flag, checksum, opaque, data)`` and
        moved past, or None (nothing consumed)."""
        cdef PutView view
        if not self.peek_put(&view):
            return None
        put = (PyBytes_FromStringAndSize(view.topic, view.topic_len), view.partition, view.flag,
               view.checksum, view.opaque, PyBytes_FromStringAndSize(view.data, view.length))
        self.consume_put(&view)
        return put

    cdef int consume_put(self, const PutView* view) except -1:
        """Move past the put ``peek_put`` just described."""
        self._pos = view.end
        if self._pos == PyByteArray_GET_SIZE(self._buf):
            del self._buf[:]
            self._pos = 0
        return 0

    cdef object _next(self):
        cdef char* base
        cdef Py_ssize_t size, pos, line_end, count
        if self._kind:
            return self._body()
        base = PyByteArray_AS_STRING(self._buf)
        size = PyByteArray_GET_SIZE(self._buf)
        pos = self._pos
        line_end = find_line_end(base, pos, size)
        if line_end < 0:
            if size - pos > self.max_header:
                raise RemoteProtocolError(f"header line longer than {self.max_header} bytes")
            return None
        if line_end - pos > self.max_header:
            raise RemoteProtocolError(f"header line longer than {self.max_header} bytes")
        count = self._split(base, pos, line_end)
        self._pos = line_end + 2
        if count == 0 or self._lens[0] == 0:
            raise RemoteProtocolError("empty header line or leading space")
        if count <= MAX_TOKENS:
            event = self._fast(base, count)
            if event is not NOT_FAST:
                return event  # an event, or None while a body is incomplete
        # the generic path
        try:
            line = PyUnicode_DecodeUTF8(base + pos, line_end - pos, NULL)
        except UnicodeDecodeError:
            raise RemoteProtocolError("header line is not valid UTF-8") from None
        parsed = parse_header(split_tokens(line))
        if type(parsed) is not tuple:
            return parsed
        kind, length, fields = parsed
        return self._start_body({"put": KIND_PUT, "sync": KIND_SYNC, "result": KIND_RESULT,
                                 "value": KIND_VALUE}[kind], length, fields)

    cdef object _fast(self, const char* base, Py_ssize_t n):
        """put, get, result, value and version in C; NOT_FAST hands the line to the generic path."""
        cdef int64_t checksum
        cdef int form
        if self._is(base, 0, b"put", 3):
            form = self._put_checksum_form(base, n)
            if form < 0:
                return NOT_FAST  # transactional and malformed forms
            checksum = self._int(base, 5, "checksum") if form else -1
            fields = (self._token_text(base, 1), self._int(base, 2, "partition"),
                      self._int(base, 4, "flag"), checksum, None, self._int(base, n - 1, "opaque"))
            return self._start_body(KIND_PUT, self._int(base, 3, "length"), fields)
        if self._is(base, 0, b"get", 3) and n >= 7:
            return Get(self._token_text(base, 1), self._token_text(base, 2),
                       self._int(base, 3, "partition"), self._long(base, 4, "offset"),
                       self._int(base, 5, "maxSize"), self._int(base, 6, "opaque"))
        if self._is(base, 0, b"result", 6) and n >= 4:
            return self._start_body(KIND_RESULT, self._int(base, 2, "length"),
                                    (self._int(base, 1, "status"), self._int(base, 3, "opaque")))
        if self._is(base, 0, b"value", 5) and n >= 3:
            return self._start_body(KIND_VALUE, self._int(base, 1, "length"),
                                    (self._int(base, 2, "opaque"),))
        if self._is(base, 0, b"version", 7):
            return Version(self._int(base, 1, "opaque") if n > 1 else DEFAULT_OPAQUE)
        return NOT_FAST

    cdef object _start_body(self, int kind, length, tuple fields):
        if length < 0:
            raise RemoteProtocolError(f"negative body length {length}")
        self._kind = kind
        self._length = length
        self._fields = fields
        self._oversize = length > self.max_body and (kind == KIND_PUT or kind == KIND_SYNC)
        self._skip = length if self._oversize else 0
        return self._body()

    cdef object _body(self):
        cdef Py_ssize_t available = PyByteArray_GET_SIZE(self._buf) - self._pos
        cdef Py_ssize_t drop
        cdef Py_ssize_t length = self._length
        cdef tuple f = self._fields
        if self._oversize:
            drop = min(self._skip, available)
            self._pos += drop
            self._skip -= drop
            if self._skip:
                return None
            data = None
        else:
            if available < length:
                return None
            data = PyBytes_FromStringAndSize(PyByteArray_AS_STRING(self._buf) + self._pos, length)
            self._pos += length
        kind = self._kind
        self._kind = 0
        self._fields = None
        if self._pos == PyByteArray_GET_SIZE(self._buf):
            del self._buf[:]
            self._pos = 0
        if kind == KIND_PUT:
            if self._raw and f[4] is None:
                return (f[0], f[1], f[2], f[3], f[5], data, length)
            return Put(f[0], f[1], f[2], f[3], f[4], f[5], data, length)
        if kind == KIND_SYNC:
            return Sync(f[0], f[1], f[2], f[3], f[4], f[5], data, length)
        if kind == KIND_RESULT:
            return Result(f[0], data if length else None, f[1])
        return Value(data, f[0])

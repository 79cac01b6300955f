# cython: language_level=3
"""The client's per-message codec, compiled: a whole ``put`` frame (the 7-token 1.4.4 form, with
its checksum) built in one allocation, and the body of a put's ``result 200`` answer parsed into
numbers without splitting it into Python objects; the ``Waiter`` a task awaits, the
``AnswerReader`` that wakes it, and a connection's ``Outbox`` (its queue of frames and table of
requests, which says when to write and leaves the writing to the connection) with the process's
one ``OpaqueCounter``.

Byte for byte what ``metaq_core.frames.encode(Put(...))`` produces. The pure-Python twin is
``metaq_client.codec`` (the one in use with ``METAQ_PURE_PYTHON=1``); import from there. Sans-I/O.
"""
from cpython.bytearray cimport PyByteArray_AS_STRING, PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.buffer cimport PyBUF_SIMPLE, PyBuffer_Release, PyObject_GetBuffer
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF
from libc.stdint cimport int64_t, uint32_t
from libc.stdio cimport snprintf
from libc.string cimport memchr, memcmp, memcpy

from metaq_core._crc cimport crc32_update
from metaq_core._record cimport store_be32

from metaq_core.frames import MAX_HEADER, RemoteProtocolError


def put_frame(bytes topic not None, int partition, bytes body not None, bytes attribute, int opaque):
    """``put <topic> <partition> <length> <flag> <checksum> <opaque>\\r\\n<data>``.

    ``topic``: the topic's UTF-8 bytes, already checked to be one header token; ``attribute``:
    the attribute's UTF-8 bytes, or None for a message without one (flag 0). The data is
    ``[int32 length][attribute][body]`` with an attribute, else the body (protocol §4.1–§4.2)."""
    return _put_frame(topic, partition, body, attribute, opaque)


cdef bytes _put_frame(bytes topic, int partition, bytes body, bytes attribute, int opaque):
    cdef Py_ssize_t ntopic = PyBytes_GET_SIZE(topic)
    cdef Py_ssize_t nbody = PyBytes_GET_SIZE(body)
    cdef Py_ssize_t nattr = 0
    cdef Py_ssize_t ndata = nbody
    cdef int flag = 0
    cdef unsigned char prefix[4]
    cdef uint32_t c = 0
    cdef char head[96]
    cdef int nhead
    cdef char* p
    if attribute is not None:
        nattr = PyBytes_GET_SIZE(attribute)
        if nattr > 0x7FFFFFFF:
            raise OverflowError("attribute longer than 2 GiB")
        flag = 1
        ndata = 4 + nattr + nbody
        store_be32(prefix, <uint32_t>nattr)
        c = crc32_update(c, prefix, 4)
        c = crc32_update(c, <const unsigned char*>PyBytes_AS_STRING(attribute), <size_t>nattr)
    c = crc32_update(c, <const unsigned char*>PyBytes_AS_STRING(body), <size_t>nbody)
    nhead = snprintf(head, sizeof(head), " %d %lld %d %u %d\r\n", partition, <long long>ndata, flag,
                     <unsigned int>(c & 0x7FFFFFFFU), opaque)
    out = PyBytes_FromStringAndSize(NULL, 4 + ntopic + nhead + ndata)
    p = PyBytes_AS_STRING(out)
    memcpy(p, b"put ", 4)
    memcpy(p + 4, PyBytes_AS_STRING(topic), ntopic)
    p += 4 + ntopic
    memcpy(p, head, nhead)
    p += nhead
    if attribute is not None:
        memcpy(p, prefix, 4)
        memcpy(p + 4, PyBytes_AS_STRING(attribute), nattr)
        p += 4 + nattr
    if nbody:
        memcpy(p, PyBytes_AS_STRING(body), nbody)
    return out


cdef int _number(const char* s, Py_ssize_t n, Py_ssize_t* at, int64_t* out) noexcept:
    """One [-]digits token at ``s[at]`` (int64), followed by a space or the end -> 0; else -1."""
    cdef Py_ssize_t i = at[0]
    cdef bint negative = False
    cdef unsigned long long value = 0
    cdef unsigned long long limit = 9223372036854775807ULL
    cdef unsigned char d
    cdef Py_ssize_t first
    if i < n and s[i] == b'-':
        negative = True
        limit += 1
        i += 1
    first = i
    while i < n and s[i] != b' ':
        d = <unsigned char>s[i] - 48
        if d > 9 or value > (limit - d) // 10:
            return -1
        value = value * 10 + d
        i += 1
    if i == first:
        return -1
    at[0] = i
    if negative:
        out[0] = -<int64_t>(value - 1) - 1 if value else 0
    else:
        out[0] = <int64_t>value
    return 0


cdef bint _three_numbers(const char* s, Py_ssize_t n, int64_t* first, int64_t* second,
                         int64_t* third) noexcept:
    """``s[:n]`` is ``<first> <second> <third>``: decimal int64s separated by single spaces."""
    cdef Py_ssize_t at = 0
    if _number(s, n, &at, first) != 0 or at >= n:
        return False
    at += 1
    if _number(s, n, &at, second) != 0 or at >= n:
        return False
    at += 1
    return _number(s, n, &at, third) == 0 and at == n


def put_answer(bytes body):
    """``(message id, partition, offset)`` from the body ``<id> <partition> <offset>`` of a put's
    ``result 200``; ValueError when it is not three decimal numbers separated by single spaces."""
    cdef int64_t msg_id, partition, offset
    if body is None:
        raise ValueError("a put was answered 200 without a body")
    if _three_numbers(PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body), &msg_id, &partition, &offset):
        return (msg_id, partition, offset)
    raise ValueError(f"not the answer to a put: {body!r}")


cdef object _put_result(const char* s, Py_ssize_t n, broker_id, dict partitions, result_type, partition_type,
                        Py_ssize_t max_cached):
    """``put_result`` of the body ``s[:n]``; None when it is not three numbers."""
    cdef int64_t msg_id, number, offset
    if not _three_numbers(s, n, &msg_id, &number, &offset):
        return None
    return _send_result(msg_id, number, offset, broker_id, partitions, result_type, partition_type, max_cached)


cdef object _send_result(int64_t msg_id, int64_t number, int64_t offset, broker_id, dict partitions, result_type,
                         partition_type, Py_ssize_t max_cached):
    key = number
    partition = partitions.get(key)
    if partition is None:
        partition = partition_type(broker_id, key)
        if len(partitions) < max_cached:
            partitions[key] = partition
    return tuple.__new__(result_type, (True, msg_id, partition, offset, None))


def put_result(bytes body, broker_id, dict partitions, result_type, partition_type, Py_ssize_t max_cached):
    """``put_answer`` straight into ``result_type(True, id, partition, offset, None)`` (a tuple
    subclass), the partition ``partition_type(broker_id, number)`` taken from ``partitions``
    (number → partition of that broker; filled while it has fewer than ``max_cached``)."""
    if body is not None:
        result = _put_result(PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body), broker_id, partitions, result_type,
                             partition_type, max_cached)
        if result is not None:
            return result
    raise ValueError(f"not the answer to a put: {body!r}")


cdef class PutAnswers:
    """How the ``result 200`` of one producer's put to one broker becomes its ``SendResult`` (the
    arguments of ``put_result``). A ``Waiter`` whose ``put`` is one gets the ``SendResult`` from
    ``AnswerReader`` instead of the ``Result``."""

    cdef public object broker_id
    cdef public dict partitions
    cdef public object result_type
    cdef public object partition_type
    cdef public Py_ssize_t max_cached

    def __init__(self, broker_id, dict partitions, result_type, partition_type, Py_ssize_t max_cached):
        self.broker_id = broker_id
        self.partitions = partitions
        self.result_type = result_type
        self.partition_type = partition_type
        self.max_cached = max_cached

    def result(self, bytes body):
        """The ``SendResult`` of the body of a ``result 200``, or None when it is not one."""
        if body is None:
            return None
        return _put_result(PyBytes_AS_STRING(body), PyBytes_GET_SIZE(body), self.broker_id, self.partitions,
                           self.result_type, self.partition_type, self.max_cached)


# ----------------------------------------------------------------- the waiting side of a request

cdef extern from *:
    """
    #if PY_VERSION_HEX >= 0x030A0000
    static int metaq_set_am_send(PyTypeObject *type, void *send) {
        if (type->tp_as_async == NULL) return -1;
        type->tp_as_async->am_send = (sendfunc)send;
        PyType_Modified(type);
        return 0;
    }
    #else
    #error "Python 3.10 or later is needed (am_send)"
    #endif
    """
    int metaq_set_am_send(PyTypeObject* type, void* send)


cdef class Waiter:
    """A task waiting for the answer to its request, and the awaitable it waits on.

    The connection keeps it in its table of outstanding requests (``pending[opaque]``) and calls
    ``resolve(answer)`` or ``fail(error)``, which hand the waiter itself to ``wake(task, self)``
    (trio's ``reschedule``) as the task's outcome. ``await waiter`` yields ``trap`` to the event
    loop once (trio: ``WaitTaskRescheduled(waiter.abort)``) and returns the answer or raises the
    error: no coroutine, no outcome object, no exception to return a value (the awaitable
    implements ``am_send``). ``abort`` (the wait was cancelled) forgets the request and returns
    ``aborted`` (trio: ``Abort.SUCCEEDED``). A task reuses its waiter for its next request, so a
    request allocates nothing here. Not meant to be subclassed (a Python subclass would lose the
    ``am_send`` slot).

    The waiter holds its task only while a request is outstanding (``task``, set by the
    ``Outbox`` for each request and dropped once the task is woken); ``owner`` (the task's
    ``id``) tells whose it is. A task keeps its waiter in its context, so a waiter that held its
    task for good would make a reference cycle (task → context → waiter → task) of every task
    that ever sent a request: a task per send then left ten objects per request to the cyclic
    garbage collector, whose full collections stalled a producer process for 10-35 ms."""

    cdef public object task
    cdef public Py_ssize_t owner
    cdef object __weakref__
    cdef public object wake
    cdef public object aborted
    cdef public object trap
    cdef public object answer
    cdef public object error
    cdef public dict pending
    cdef public object opaque
    cdef public PutAnswers put
    cdef bint parked
    cdef bint put_ready          # AnswerReader parsed a put's result 200 into the three numbers
    cdef int64_t put_id, put_number, put_offset

    def __init__(self, task, wake, aborted):
        self.task = task
        self.owner = id(task)
        self.wake = wake
        self.aborted = aborted

    def abort(self, raise_cancel):
        """The wait was cancelled: an answer arriving later finds nobody (``pending`` forgets it)."""
        if self.pending is not None:
            self.pending.pop(self.opaque, None)
        self.task = None
        return self.aborted

    cdef void _wake(self) except *:
        task = self.task
        self.task = None
        self.wake(task, self)

    def resolve(self, answer):
        """The answer came: wake the task (``await`` returns ``answer``)."""
        self.answer = answer
        self.put_ready = False
        self._wake()

    def fail(self, error):
        """The request failed: wake the task (``await`` raises ``error``)."""
        self.answer = None
        self.put_ready = False
        self.error = error
        self._wake()

    def unwrap(self):
        """The outcome protocol: the answer, or raise the error."""
        return self._outcome(self)

    def __await__(self):
        self.parked = False
        return self

    def __iter__(self):
        return self

    def __next__(self):
        return self.send(None)

    def send(self, value):
        """The first step yields ``trap``; the second, resumed with the outcome, ends the await."""
        if not self.parked:
            self.parked = True
            return self.trap
        self.parked = False
        raise StopIteration(self._outcome(value))

    cdef object _outcome(self, object value):
        cdef PutAnswers put
        if value is self:
            if self.put_ready:  # the SendResult is made here, in the task's own step
                self.put_ready = False
                put = self.put
                return _send_result(self.put_id, self.put_number, self.put_offset, put.broker_id, put.partitions,
                                    put.result_type, put.partition_type, put.max_cached)
            answer = self.answer
            if answer is None:
                raise self.error
            return answer
        return value.unwrap()  # whatever else the event loop resumed the task with (Cancelled)


cdef int _waiter_am_send(PyObject* obj, PyObject* value, PyObject** result) except -1:
    """``am_send`` of Waiter: PYGEN_NEXT (1) with the trap, then PYGEN_RETURN (0) with the answer;
    -1 (PYGEN_ERROR) with the exception set."""
    cdef Waiter self = <Waiter>obj
    cdef object out
    if not self.parked:
        self.parked = True
        out = self.trap
        Py_INCREF(out)
        result[0] = <PyObject*>out
        return 1
    self.parked = False
    out = self._outcome(<object>value)
    Py_INCREF(out)
    result[0] = <PyObject*>out
    return 0


cdef int _int32(const char* s, Py_ssize_t n, int* out) noexcept:
    """A header token ``s[:n]``: [-]digits within int32 -> 0, else -1."""
    cdef Py_ssize_t i = 0
    cdef bint negative = False
    cdef int64_t value = 0
    cdef unsigned char d
    if n > 0 and s[0] == b'-':
        negative = True
        i = 1
    if i == n or n > 11:
        return -1
    while i < n:
        d = <unsigned char>s[i] - 48
        if d > 9:
            return -1
        value = value * 10 + d
        i += 1
    if negative:
        value = -value
    if value < -2147483648 or value > 2147483647:
        return -1
    out[0] = <int>value
    return 0


cdef bint _token_is(const char* s, Py_ssize_t n, const char* word, Py_ssize_t k) noexcept:
    return n == k and memcmp(s, word, k) == 0


cdef enum:
    MAX_ANSWER_TOKENS = 5


cdef class AnswerReader:
    """Answers from a broker, matched to the requests waiting for them (protocol §6.3).

    ``feed(data)`` takes what the connection read, parses every complete ``result`` and
    ``value`` frame in it (and in what an earlier call left incomplete), pops the frame's opaque
    from ``pending`` and hands the answer to that entry's ``resolve``: a ``Result`` or ``Value``
    (``result_type(status, body or None, opaque)``, ``value_type(data, opaque)``), or, for a
    ``Waiter`` whose ``put`` is set, the ``SendResult`` of a ``result 200``. Returns how many
    answers it handed over; ``dropped`` counts those nobody waited for (the caller may reset
    it). A frame that is not an answer raises RemoteProtocolError. Sans-I/O."""

    cdef dict _pending
    cdef object _result_type
    cdef object _value_type
    cdef bytearray _rest
    cdef public Py_ssize_t max_header
    cdef public Py_ssize_t dropped

    def __init__(self, dict pending not None, result_type, value_type, *, Py_ssize_t max_header=MAX_HEADER):
        self._pending = pending
        self._result_type = result_type
        self._value_type = value_type
        self._rest = bytearray()
        self.max_header = max_header

    @property
    def buffered(self):
        """Bytes of an incomplete frame kept for the next ``feed``."""
        return PyByteArray_GET_SIZE(self._rest)

    def feed(self, data):
        cdef Py_buffer view
        cdef Py_ssize_t used
        cdef Py_ssize_t delivered = 0
        if PyByteArray_GET_SIZE(self._rest) == 0:
            PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
            try:
                used = self._parse(<const char*>view.buf, view.len, &delivered)
                if used < view.len:
                    self._rest += PyBytes_FromStringAndSize(<const char*>view.buf + used, view.len - used)
            finally:
                PyBuffer_Release(&view)
        else:
            self._rest += data
            used = self._parse(PyByteArray_AS_STRING(self._rest), PyByteArray_GET_SIZE(self._rest), &delivered)
            del self._rest[:used]
        return delivered

    cdef Py_ssize_t _parse(self, const char* base, Py_ssize_t size, Py_ssize_t* delivered) except -1:
        """Dispatch the complete frames of ``base[:size]``; how many bytes they took."""
        cdef Py_ssize_t pos = 0
        cdef Py_ssize_t i, line_end, count, body, length
        cdef const char* hit
        cdef Py_ssize_t starts[MAX_ANSWER_TOKENS]
        cdef Py_ssize_t lens[MAX_ANSWER_TOKENS]
        cdef int status, opaque, number
        cdef bint is_result
        cdef dict pending = self._pending
        cdef Waiter waiter
        while pos < size:
            i = pos
            line_end = -1
            while i < size:
                hit = <const char*>memchr(base + i, b'\r', size - i)
                if hit == NULL or hit - base + 1 >= size:
                    break
                i = hit - base
                if base[i + 1] == b'\n':
                    line_end = i
                    break
                i += 1
            if line_end < 0:
                if size - pos > self.max_header:
                    raise RemoteProtocolError(f"header line longer than {self.max_header} bytes")
                break
            if line_end - pos > self.max_header:
                raise RemoteProtocolError(f"header line longer than {self.max_header} bytes")
            count = 0
            starts[0] = pos
            i = pos
            while i < line_end and count < MAX_ANSWER_TOKENS - 1:
                if base[i] == b' ':
                    lens[count] = i - starts[count]
                    count += 1
                    starts[count] = i + 1
                i += 1
            lens[count] = line_end - starts[count] if count < MAX_ANSWER_TOKENS - 1 else i - starts[count]
            count += 1
            if _token_is(base + starts[0], lens[0], b"result", 6) and count >= 4:
                is_result = True
                if (_int32(base + starts[1], lens[1], &status) or _int32(base + starts[2], lens[2], &number)
                        or _int32(base + starts[3], lens[3], &opaque)):
                    raise RemoteProtocolError(f"malformed answer header {self._line(base, pos, line_end)!r}")
            elif _token_is(base + starts[0], lens[0], b"value", 5) and count >= 3:
                is_result = False
                if _int32(base + starts[1], lens[1], &number) or _int32(base + starts[2], lens[2], &opaque):
                    raise RemoteProtocolError(f"malformed answer header {self._line(base, pos, line_end)!r}")
            else:
                raise RemoteProtocolError(f"not an answer: {self._line(base, pos, line_end)!r}")
            if number < 0:
                raise RemoteProtocolError(f"negative body length {number}")
            length = number
            body = line_end + 2
            if size - body < length:
                break  # the body has not all come yet: parse the header again next time
            pos = body + length
            entry = pending.pop(opaque, None)
            if entry is None:
                self.dropped += 1
                continue
            delivered[0] += 1
            if type(entry) is Waiter:
                waiter = <Waiter>entry
                if (is_result and status == 200 and waiter.put is not None and
                        _three_numbers(base + body, length, &waiter.put_id, &waiter.put_number, &waiter.put_offset)):
                    waiter.put_ready = True  # no object made here: the task makes its SendResult
                else:
                    waiter.put_ready = False
                    waiter.answer = self._answer(is_result, status, base + body, length, opaque)
                waiter._wake()
            else:
                entry.resolve(self._answer(is_result, status, base + body, length, opaque))
        return pos

    cdef object _answer(self, bint is_result, int status, const char* body, Py_ssize_t length, int opaque):
        data = PyBytes_FromStringAndSize(body, length)
        if is_result:
            return self._result_type(status, data if length else None, opaque)
        return self._value_type(data, opaque)

    cdef str _line(self, const char* base, Py_ssize_t start, Py_ssize_t end):
        return PyBytes_FromStringAndSize(base + start, min(end - start, 200)).decode("utf-8", "replace")


if metaq_set_am_send(<PyTypeObject*>Waiter, <void*>_waiter_am_send) != 0:
    raise ImportError("Waiter has no async slots")


# ----------------------------------------------------------------- the sending side of requests

from cpython.contextvars cimport get_value

cdef int64_t OPAQUE_MIN = -2147483648
cdef int64_t OPAQUE_WRAP = 2147483637  # 2**31 - 1 - 10: Java's wrap point


cdef class OpaqueCounter:
    """Java's ``OpaqueGenerator``: starts at -2147483648, +1 per request, and wraps back to
    -2147483648 when it reaches 2147483637. Thread-safe: one step holds the GIL."""

    cdef int64_t _next

    def __init__(self, start=-2147483648):
        self._next = start if OPAQUE_MIN <= start < OPAQUE_WRAP else OPAQUE_MIN

    cdef inline int take(self):
        cdef int64_t value = self._next
        self._next = value + 1 if value + 1 < OPAQUE_WRAP else OPAQUE_MIN
        return <int>value

    def __call__(self):
        return self.take()


#: the process's one counter: every request of every connection takes its opaque here
next_opaque = OpaqueCounter()
cdef OpaqueCounter _opaques = next_opaque


cdef class Outbox:
    """A connection's outgoing side, without I/O: the frames still to write (``out``), the
    outstanding requests (``pending``: opaque → ``Waiter`` or callback object), and when the task
    that queues a frame writes at once: when as many frames have queued since the last read as
    that read delivered answers (``awaited`` reaches 0), no write is in flight (``writing``) and
    the connection can write from any task (``direct``). Then it calls ``write_now()``;
    otherwise it wakes the parked writer task (``writer_task`` set: ``wake_writer()``).

    ``request`` registers the current task's ``Waiter`` (found in the ``waiters`` context
    variable, made by ``new_waiter(task)`` when the task has none yet) and returns it for the
    task to await; ``put`` does the same for a put frame it builds itself with a fresh opaque;
    ``submit`` registers a callback object. Once ``closed``, each raises ``closed_error()``."""

    cdef public list out
    cdef public Py_ssize_t awaited
    cdef public bint writing
    cdef public bint direct
    cdef public object writer_task
    cdef public dict pending
    cdef public Py_ssize_t requests
    cdef public bint closed
    cdef object _write_now, _wake_writer, _current_task, _waiters, _new_waiter, _closed_error

    def __init__(self, dict pending, bint direct, write_now, wake_writer, current_task, waiters, new_waiter,
                 closed_error):
        self.out = []
        self.pending = pending
        self.direct = direct
        self._write_now = write_now
        self._wake_writer = wake_writer
        self._current_task = current_task
        self._waiters = waiters
        self._new_waiter = new_waiter
        self._closed_error = closed_error

    cdef Waiter _waiter(self):
        task = self._current_task()
        waiter = get_value(self._waiters, None)
        if type(waiter) is not Waiter or (<Waiter>waiter).owner != id(task):
            waiter = self._new_waiter(task)
        (<Waiter?>waiter).task = task
        return <Waiter>waiter

    cdef void _queue(self, bytes frame, object opaque, object entry) except *:
        if self.closed:
            raise self._closed_error()
        self.pending[opaque] = entry
        self.requests += 1
        self.out.append(frame)
        self.awaited -= 1
        if self.awaited <= 0 and not self.writing and self.direct:
            self._write_now()
        elif self.writer_task is not None:
            self._wake_writer()

    cdef Waiter _request(self, bytes frame, object opaque, PutAnswers put):
        cdef Waiter waiter = self._waiter()
        waiter.pending = self.pending
        waiter.opaque = opaque
        waiter.put = put
        self._queue(frame, opaque, waiter)
        return waiter

    def request(self, bytes frame not None, opaque, PutAnswers put=None):
        """Queue ``frame`` (its opaque: ``opaque``) for the current task, which must await the
        returned ``Waiter`` right away (with ``put``, a ``result 200`` comes as a ``SendResult``)."""
        return self._request(frame, opaque, put)

    def put(self, bytes topic not None, int partition, bytes body not None, bytes attribute, PutAnswers put):
        """``request`` of ``put_frame(topic, partition, body, attribute, <a fresh opaque>)``."""
        cdef int opaque = _opaques.take()
        return self._request(_put_frame(topic, partition, body, attribute, opaque), opaque, put)

    def submit(self, bytes frame not None, opaque, entry):
        """Queue ``frame`` with ``entry`` (``resolve(answer)``, ``fail(error)``) waiting for it."""
        self._queue(frame, opaque, entry)

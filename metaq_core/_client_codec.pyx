# cython: language_level=3
"""The client's per-message codec, compiled: a whole ``put`` frame (the 7-token 1.4.4 form, with
its checksum) built in one allocation, and the body of a put's ``result 200`` answer parsed into
numbers without splitting it into Python objects.

Byte for byte what ``metaq_core.frames.encode(Put(...))`` produces. The pure-Python twin is
``metaq_client.codec`` (the one in use with ``METAQ_PURE_PYTHON=1``); import from there. Sans-I/O.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.object cimport PyObject, PyTypeObject
from cpython.ref cimport Py_INCREF
from libc.stdint cimport int64_t, uint32_t
from libc.stdio cimport snprintf
from libc.string cimport memcpy

from metaq_core._crc cimport crc32_update
from metaq_core._record cimport store_be32


def put_frame(bytes topic not None, int partition, bytes body not None, bytes attribute, int opaque):
    """``put <topic> <partition> <length> <flag> <checksum> <opaque>\\r\\n<data>``.

    ``topic``: the topic's UTF-8 bytes, already checked to be one header token; ``attribute``:
    the attribute's UTF-8 bytes, or None for a message without one (flag 0). The data is
    ``[int32 length][attribute][body]`` with an attribute, else the body (protocol §4.1–§4.2)."""
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


cdef bint _three_numbers(bytes body, int64_t* first, int64_t* second, int64_t* third) noexcept:
    """``body`` is ``<first> <second> <third>``: decimal int64s separated by single spaces."""
    cdef const char* s = PyBytes_AS_STRING(body)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(body)
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
    if _three_numbers(body, &msg_id, &partition, &offset):
        return (msg_id, partition, offset)
    raise ValueError(f"not the answer to a put: {body!r}")


def put_result(bytes body, broker_id, dict partitions, result_type, partition_type, Py_ssize_t max_cached):
    """``put_answer`` straight into ``result_type(True, id, partition, offset, None)`` (a tuple
    subclass), the partition ``partition_type(broker_id, number)`` taken from ``partitions``
    (number → partition of that broker; filled while it has fewer than ``max_cached``)."""
    cdef int64_t msg_id, number, offset
    if body is not None and _three_numbers(body, &msg_id, &number, &offset):
        key = number
        partition = partitions.get(key)
        if partition is None:
            partition = partition_type(broker_id, key)
            if len(partitions) < max_cached:
                partitions[key] = partition
        return tuple.__new__(result_type, (True, msg_id, partition, offset, None))
    raise ValueError(f"not the answer to a put: {body!r}")


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
    ``am_send`` slot)."""

    cdef public object task
    cdef public object wake
    cdef public object aborted
    cdef public object trap
    cdef public object answer
    cdef public object error
    cdef public dict pending
    cdef public object opaque
    cdef bint parked

    def __init__(self, task, wake, aborted):
        self.task = task
        self.wake = wake
        self.aborted = aborted

    def abort(self, raise_cancel):
        """The wait was cancelled: an answer arriving later finds nobody (``pending`` forgets it)."""
        if self.pending is not None:
            self.pending.pop(self.opaque, None)
        return self.aborted

    def resolve(self, answer):
        """The answer came: wake the task (``await`` returns ``answer``)."""
        self.answer = answer
        self.wake(self.task, self)

    def fail(self, error):
        """The request failed: wake the task (``await`` raises ``error``)."""
        self.answer = None
        self.error = error
        self.wake(self.task, self)

    def unwrap(self):
        """The outcome protocol: the answer, or raise the error."""
        if self.answer is None:
            raise self.error
        return self.answer

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
        if value is self:
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


if metaq_set_am_send(<PyTypeObject*>Waiter, <void*>_waiter_am_send) != 0:
    raise ImportError("Waiter has no async slots")

# cython: language_level=3
"""The broker's compiled put path: plain puts of one receive buffer, checked and batched in C.

``PutIntake.take(decoder)`` pulls frames from a connection's decoder — plain puts straight from
its receive buffer (``FrameDecoder.peek_put``: no event object, no topic string per put). Each plain put to a topic
and partition the broker has already served (a ``Route``) is checked (partition, size, attribute
block, checksum), given its id and CRC, and added to a batch per partition; every other frame —
and every put that needs more than that (an unknown topic, a partition still to be created, a
refusal, a transaction) — is handed back as an event for ``Broker.dispatch``, after the batches
so far are submitted, so per-partition order is request order. One append request per partition
per receive carries the batch to the partition's writer thread, and one ``PutAnswers`` encodes
all its answers into one bytes object when the group commit delivers it. In threshold mode the
batch is written at once from the event loop when the log allows it (``append_nowait``: no fsync
there) and answered on the spot.

It moves no bytes on sockets and knows no file layout: logs are reached through ``submit``.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.unicode cimport PyUnicode_DecodeUTF8
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdio cimport snprintf
from libc.string cimport memcmp, memcpy

from metaq_core._crc cimport checksum_raw
from metaq_core._record cimport HEADER_SIZE, load_be32
from metaq_core._wire cimport FrameDecoder, PutView
from metaq_core.errors import MetaqError
from metaq_core.frames import Put, encode_result

cdef enum:
    ATTRIBUTE_FLAG = 1
    ANSWER_MAX = 96        # "result 200 <len> <opaque>\r\n<id> <partition> <offset>" fits easily


cdef class Route:
    """What the put path needs of an accepted topic: its partition count, the open logs by
    partition (None until the broker has created or opened one) and whether it keeps stats."""

    cdef public int num_partitions
    cdef public list logs
    cdef public bint stat

    def __init__(self, int num_partitions, bint stat):
        self.num_partitions = num_partitions
        self.logs = [None] * num_partitions
        self.stat = stat


cdef class _Batch:
    cdef object plog
    cdef str topic
    cdef int partition
    cdef list items
    cdef list opaques
    cdef bint stat
    cdef Py_ssize_t nbytes


cdef class PutAnswers:
    """The waiter of one batched append: on the trio thread, answers every put of it at once."""

    cdef object broker
    cdef object conn
    cdef str topic
    cdef int partition
    cdef list items
    cdef list opaques
    cdef public object request

    def __init__(self, broker, conn, str topic, int partition, list items, list opaques):
        self.broker = broker
        self.conn = conn
        self.topic = topic
        self.partition = partition
        self.items = items
        self.opaques = opaques
        self.request = None

    def set(self):
        cdef Py_ssize_t n = len(self.opaques)
        if self.request.error is not None:
            self.broker.puts_failed(self.conn, self.topic, self.partition, n, self.request.error)
            self.conn.finish_many(n, b"".join([encode_result(500, "put message failed", opaque)
                                               for opaque in self.opaques]))
            return
        self.conn.finish_many(n, encode_answers(self.items, self.opaques, self.partition,
                                                self.request.offset))


cpdef bytes encode_answers(list items, list opaques, int partition, int64_t offset):
    """``result 200 <len> <opaque>\\r\\n<id> <partition> <offset>`` for each record of a batch
    written contiguously from ``offset`` (the bytes ``encode_result`` gives, one after another)."""
    cdef Py_ssize_t n = len(items)
    cdef Py_ssize_t i, used = 0
    cdef char body[64]
    cdef int blen, hlen
    cdef char* out = <char*>PyMem_Malloc(n * ANSWER_MAX + 1)
    cdef tuple item
    if out == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            item = <tuple>items[i]
            blen = snprintf(body, sizeof(body), "%lld %d %lld", <long long>item[2], partition,
                            <long long>offset)
            hlen = snprintf(out + used, ANSWER_MAX, "result 200 %d %d\r\n", blen,
                            <int>opaques[i])
            used += hlen
            memcpy(out + used, body, blen)
            used += blen
            offset += HEADER_SIZE + PyBytes_GET_SIZE(item[0])
        return PyBytes_FromStringAndSize(out, used)
    finally:
        PyMem_Free(out)


cdef class PutIntake:
    """The put path of one connection (see the module docstring)."""

    cdef object broker
    cdef object conn
    cdef dict routes
    cdef object next_id
    cdef object sink
    cdef object closed
    cdef Py_ssize_t limit
    cdef dict batches
    cdef uint64_t rand_state
    cdef public long long fast_puts
    cdef public long long in_place_puts   # of those, read straight from the buffer
    cdef bytes _topic_key         # the topic of the last put read from a buffer, as bytes,
    cdef str _topic               # and as text,
    cdef Route _route             # and its route (forgotten at each take(): reloads)

    def __init__(self, broker, conn, dict routes, next_id, sink, Py_ssize_t max_transfer_size,
                 uint64_t seed):
        self.broker = broker
        self.conn = conn
        self.routes = routes
        self.next_id = next_id
        self.sink = sink
        self.limit = max_transfer_size
        self.batches = {}
        self.rand_state = seed | 1
        self.fast_puts = 0
        self.in_place_puts = 0

    cdef int _random_below(self, int n) noexcept:
        # xorshift64: partition -1 asks the broker to choose (Java: a random partition)
        cdef uint64_t x = self.rand_state
        x ^= x << 13
        x ^= x >> 7
        x ^= x << 17
        self.rand_state = x
        return <int>(x % <uint64_t>n)

    def take(self, decoder):
        """Batch every plain put at the front of ``decoder``'s buffer; return the first other
        event (the batches are submitted first), or None once the buffer holds no whole frame."""
        cdef object event
        cdef tuple t
        cdef PutView view
        cdef FrameDecoder fast = decoder if type(decoder) is FrameDecoder else None
        cdef bint declined
        self.closed = self.broker.closed_partitions or None
        self._route = None
        while True:
            declined = False
            if fast is not None and fast.peek_put(&view):
                if self._put_view(&view):
                    fast.consume_put(&view)
                    self.in_place_puts += 1
                    continue
                declined = True  # the ordinary path decodes it again and hands it on
            event = decoder.next_raw()
            if event is None:
                self.flush()
                return None
            if type(event) is not tuple:
                self.flush()
                return event
            t = <tuple>event
            if declined or not self._put(self.routes.get(t[0]), t[0], t[1], t[2], t[3], t[4],
                                         t[5], NULL, 0):
                self.flush()
                return Put(t[0], t[1], t[2], t[3], None, t[4], t[5], t[6])

    cdef bint _put_view(self, const PutView* view) except -1:
        """A put read in place: its route from the last topic when it is the same one."""
        cdef bytes key = self._topic_key
        if (self._route is None or PyBytes_GET_SIZE(key) != view.topic_len
                or memcmp(PyBytes_AS_STRING(key), view.topic, view.topic_len) != 0):
            try:
                topic = PyUnicode_DecodeUTF8(view.topic, view.topic_len, NULL)
            except UnicodeDecodeError:
                return False  # the ordinary path answers it
            route = self.routes.get(topic)
            if route is None:
                return False
            self._topic = topic
            self._topic_key = PyBytes_FromStringAndSize(view.topic, view.topic_len)
            self._route = <Route>route
        return self._put(self._route, self._topic, view.partition, view.flag, view.checksum,
                         view.opaque, None, <const unsigned char*>view.data, view.length)

    cdef bint _put(self, Route route, str topic, int partition, int flag, int64_t checksum,
                   int opaque, object data, const unsigned char* p, Py_ssize_t n) except -1:
        """Batch one put to ``topic`` (its route, None if it has none); False hands it to the
        broker's general path (it decides the answer). The body is ``data`` (bytes) or, when
        that is None, the ``n`` bytes at ``p``."""
        cdef int32_t attr_len
        cdef uint32_t crc
        cdef object plog
        cdef _Batch batch
        if route is None:
            return False
        if p == NULL:
            if type(data) is not bytes:
                return False
            p = <const unsigned char*>PyBytes_AS_STRING(data)
            n = PyBytes_GET_SIZE(data)
        if partition == -1:
            partition = self._random_below(route.num_partitions)
        elif partition < 0 or partition >= route.num_partitions:
            return False
        plog = route.logs[partition]
        if plog is None or (self.closed is not None and (topic, partition) in self.closed):
            return False
        if HEADER_SIZE + n > self.limit:
            return False
        if flag & ATTRIBUTE_FLAG:
            if n < 4:
                return False
            attr_len = <int32_t>load_be32(p)
            if attr_len < 0 or attr_len > n - 4:
                return False
        if n >= 65536:
            with nogil:
                crc = checksum_raw(p, <size_t>n)
        else:
            crc = checksum_raw(p, <size_t>n)
        if checksum != -1 and checksum != <int64_t>crc:
            return False
        try:
            msg_id = self.next_id()
        except MetaqError:
            return False  # the general path answers the clock error
        if data is None:
            data = PyBytes_FromStringAndSize(<const char*>p, n)
        batch = self.batches.get(plog)
        if batch is None:
            batch = _Batch()
            batch.plog = plog
            batch.topic = topic
            batch.partition = partition
            batch.items = []
            batch.opaques = []
            batch.stat = route.stat
            batch.nbytes = 0
            self.batches[plog] = batch
        batch.items.append((data, flag, msg_id, crc))
        batch.opaques.append(opaque)
        batch.nbytes += n
        return True

    def flush(self):
        """Submit the batches gathered so far (one append request per partition)."""
        cdef _Batch batch
        cdef Py_ssize_t n
        if not self.batches:
            return
        batches = self.batches
        self.batches = {}
        for batch in batches.values():
            n = len(batch.items)
            self.fast_puts += n
            self.broker.counters.cmd_put += n
            if batch.stat:
                self.broker.record_puts(batch.topic, batch.partition, n, batch.nbytes)
            try:
                # threshold mode: written at once (no fsync due here) and answered now
                offset = batch.plog.append_nowait(batch.items)
                if offset is None:
                    answers = PutAnswers(self.broker, self.conn, batch.topic, batch.partition,
                                         batch.items, batch.opaques)
                    answers.request = batch.plog.submit(batch.items, self.sink, answers)
            except MetaqError as exc:
                self.broker.puts_failed(self.conn, batch.topic, batch.partition, n, exc)
                self.conn.send(b"".join([encode_result(500, f"put message failed: {exc}", opaque)
                                         for opaque in batch.opaques]))
                continue
            if offset is not None:
                self.conn.send(encode_answers(batch.items, batch.opaques, batch.partition, offset))
                continue
            self.conn.begin_many(n)

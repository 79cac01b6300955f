# cython: language_level=3
"""Threshold-mode appends from the calling thread in one C call (the hot path of a blocking
``append`` when ``unflush_threshold > 0``).

``DirectAppender.append`` does, without ever releasing the GIL, exactly what
``PartitionLog._append_here`` does for one record when no upkeep is due: the message id, the
checksum, the header, the write of header and data to the tail segment (``writev``, page cache),
and the partition's bookkeeping (tail length, unflushed count, counters). Holding the GIL from
the first check to the last update makes it atomic for every other Python thread, so it needs no
lock of its own: it only runs while the partition's write lock is free, and declines (returns
None, having touched nothing) whenever the slow path has something to do — an fdatasync or a
roll due, the first unflushed record (the periodic flusher must be told), a closed or failed
log, a malformed attribute block, a large record. The record is in the file when it returns;
nothing is buffered in user space.

It knows the partition's attribute names and nothing else of it; it must not sync, roll, or
touch any file but the tail's descriptor. It remembers the tail of the log's segment view (the
segment, its descriptor, its start) until the view changes (a roll replaces it).
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject
from libc.errno cimport EINTR, errno
from libc.stdint cimport int32_t, int64_t, uint32_t
from libc.string cimport memcpy

from metaq_core._crc cimport checksum_raw
from metaq_core._ids cimport IdGenerator
from metaq_core._record cimport HEADER_SIZE, load_be32, write_header
from metaq_core._segment cimport give_gil_to_writers, wait_while_set

from metaq_core._segment import BatchWriteError

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void* iov_base
        size_t iov_len
    ssize_t writev(int fd, const iovec* iov, int iovcnt)

from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

#: Larger records take the slow path (which writes with the GIL released).
DIRECT_MAX = 64 * 1024

#: Records up to this size are copied behind their header and written with one ``write``.
cdef enum:
    COPY_MAX = 2048

cdef enum:
    HAND_OVER_NS = 200000   # how long an event loop's append waits for a woken writer at most

cdef extern from *:
    """
    /* An instance of the tuple subclass cls holding (a, b, c), allocated as tuple.__new__
       does for a subclass, without the argument tuple it would copy from. */
    static PyObject* metaq_new_triple(PyObject* cls, PyObject* a, PyObject* b, PyObject* c) {
        PyObject* t = ((PyTypeObject*)cls)->tp_alloc((PyTypeObject*)cls, 3);
        if (t == NULL) return NULL;
        Py_INCREF(a); PyTuple_SET_ITEM(t, 0, a);
        Py_INCREF(b); PyTuple_SET_ITEM(t, 1, b);
        Py_INCREF(c); PyTuple_SET_ITEM(t, 2, c);
        return t;
    }
    """
    object new_triple "metaq_new_triple" (object cls, object a, object b, object c)


cdef inline double monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <double>ts.tv_sec + <double>ts.tv_nsec * 1e-9


cdef inline bint data_well_formed(bytes data, int flag):
    """Without an attribute (flag bit 0 clear), any data; with one, the data starts with the
    attribute's int32 length, which fits in what follows. Anything else: the slow path, which
    says what is wrong."""
    cdef Py_ssize_t n = PyBytes_GET_SIZE(data)
    cdef int32_t length
    if not flag & 1:
        return True
    if n < 4:
        return False
    length = <int32_t>load_be32(<const unsigned char*>PyBytes_AS_STRING(data))
    return 0 <= length <= n - 4


cdef int write_record(int fd, unsigned char* header, const char* data, size_t n,
                      size_t* written) noexcept:
    """Write header + data (``header`` has room for COPY_MAX bytes after it), resuming after
    short writes and EINTR; 0 or an errno."""
    cdef iovec iov[2]
    cdef int first = 0
    cdef ssize_t r
    cdef size_t left
    iov[0].iov_base = header
    iov[0].iov_len = HEADER_SIZE
    iov[1].iov_base = <void*>data
    iov[1].iov_len = n
    if n <= COPY_MAX:  # one buffer: the kernel copies one piece
        memcpy(header + HEADER_SIZE, data, n)
        iov[0].iov_len = HEADER_SIZE + n
        iov[1].iov_len = 0
    while first < 2:
        r = writev(fd, iov + first, 2 - first)
        if r < 0:
            if errno == EINTR:
                continue
            return errno
        if r == 0 and iov[first].iov_len + (iov[1].iov_len if first == 0 else 0) > 0:
            return 5  # EIO: no progress possible
        written[0] += <size_t>r
        left = <size_t>r
        while first < 2 and left >= iov[first].iov_len:
            left -= iov[first].iov_len
            first += 1
        if left:
            iov[first].iov_base = <char*>iov[first].iov_base + left
            iov[first].iov_len -= left
    return 0


cdef class DirectAppender:
    """The direct path of one threshold-mode PartitionLog (see the module doc)."""

    cdef object plog
    cdef object lock_locked      # the write lock's bound ``locked``
    cdef object failed           # the log's handler of a write error (raises)
    cdef object kick             # the log's wake-up of its writer thread (``upkeep`` flag)
    cdef object appended         # the Appended class (a tuple subclass)
    cdef object view             # the log's ``_view`` the three below were taken from
    cdef object tail             # its last segment
    cdef int tail_fd             # the tail's descriptor
    cdef long long tail_start    # the tail's start offset
    cdef long long threshold
    cdef long long max_segment
    cdef long long max_record
    cdef double interval         # seconds; <= 0: no interval
    #: Set when an event loop's append woke the writer thread for a due sync; the writer clears
    #: it once it holds the GIL (``PartitionLog._sync_and_roll``). See ``hand_over``.
    cdef public bint writer_due
    #: What this path appended (one record per append and per batch); the log adds these to
    #: its own counters in ``statistics()``.
    cdef readonly long long records
    cdef readonly long long nbytes

    def __init__(self, plog, write_lock, failed, kick, appended, long long threshold,
                 long long max_segment, long long max_record, double interval_s):
        self.plog = plog
        self.lock_locked = write_lock.locked
        self.failed = failed
        self.kick = kick
        self.records = 0
        self.nbytes = 0
        if not issubclass(appended, tuple):
            raise TypeError("appended must be a tuple subclass")
        self.appended = appended
        self.view = None
        self.threshold = threshold
        self.max_segment = max_segment
        self.max_record = max_record if max_record < DIRECT_MAX else DIRECT_MAX
        self.interval = interval_s

    cdef void hand_over(self) noexcept:
        """Release the GIL until the writer woken for a sync has taken it (it clears
        ``writer_due``), for at most HAND_OVER_NS; then it is up to the writer."""
        with nogil:
            wait_while_set(<const int*>&self.writer_due, HAND_OVER_NS)  # (a bint is a C int)
        self.writer_due = False

    def append(self, data, int flag, msg_id, long long checksum, ids, bint defer=False):
        """Write one record now and return its Appended, or None (nothing touched) when the
        slow path must take it. ``msg_id`` None: the next id of ``ids``. A write error is handed
        to the log's handler (BatchWriteError, with the bytes that reached the file), which
        cuts the file back, fails the log and raises.

        ``defer`` (an event loop, which must not wait for the disk): when an fdatasync is due,
        or this is the first unflushed record, write anyway and wake the writer thread for the
        sync (as ``PartitionLog.append_nowait`` does) instead of declining — up to twice the
        threshold of unflushed records, past which it declines."""
        return self.append_one(data, flag, msg_id, checksum, ids, defer)

    cdef object append_one(self, data, int flag, msg_id, long long checksum, ids,
                           bint defer=False):
        cdef unsigned char header[HEADER_SIZE + COPY_MAX]
        cdef Py_ssize_t n
        cdef long long size, before, unflushed, mid
        cdef uint32_t crc
        cdef size_t written = 0
        cdef int fd, err, kick
        if type(data) is not bytes:
            return None
        n = PyBytes_GET_SIZE(data)
        if not data_well_formed(data, flag):
            return None  # a malformed attribute block: the slow path says what is wrong
        size = HEADER_SIZE + n
        if size > self.max_record:
            return None
        if defer:
            # An event loop holds the GIL all but constantly: a writer thread woken for a sync,
            # or back from its fdatasync, would wait for it up to the 5 ms switch interval,
            # while these appends ran on past twice the threshold into the queued path (every
            # task then stalls for a round). A flag and an atomic read when no writer waits.
            if self.writer_due:
                self.hand_over()
            give_gil_to_writers()
        plog = self.plog
        if not plog._accepting or self.lock_locked():
            return None
        unflushed = plog._unflushed
        kick = 0  # 1: wake the writer (it times the periodic sync); 2: a sync is due
        if unflushed == 0:
            kick = 1
        if unflushed + 1 > self.threshold or (
                self.interval > 0 and monotonic() - <double>plog._last_flush >= self.interval):
            kick = 0 if plog._upkeep_due else 2
            if not defer or unflushed + 1 > 2 * self.threshold:
                # Deferred, the writer thread may lag (it needs the GIL); past twice the
                # threshold the caller waits for it (the queued path syncs) instead.
                return None
        elif kick and not defer:
            return None
        view = plog._view
        if view is not self.view and not self.take_tail(view):
            return None
        tail = self.tail
        before = tail.written
        if before + size >= self.max_segment:
            return None
        fd = self.tail_fd
        if msg_id is not None:
            mid = msg_id
        elif isinstance(ids, IdGenerator):  # the store's IdWorker: its compiled next_id
            mid = (<IdGenerator>ids).take()
        else:
            mid = ids.next_id()
        crc = <uint32_t>checksum if checksum >= 0 else checksum_raw(
            <const unsigned char*>PyBytes_AS_STRING(data), <size_t>n)
        write_header(header, <int32_t>n, crc, <int64_t>mid, <int32_t>flag)
        err = write_record(fd, header, PyBytes_AS_STRING(data), <size_t>n, &written)
        if err:
            self.failed(BatchWriteError(err, written))
            raise AssertionError("the write-error handler returned")
        tail.written = before + size
        plog._unflushed = unflushed + 1
        self.records += 1
        self.nbytes += size
        if kick:
            self.kick(kick == 2)
            if kick == 2 and defer:
                self.writer_due = True
        return new_triple(self.appended, self.tail_start + before, mid, size)

    cdef bint take_tail(self, view) except -1:
        """Remember the tail of the log's segment view (it changes only under the write lock,
        which the caller saw free: a roll is either done or not begun). False: no open tail."""
        segments = view[1]
        tail = segments[len(segments) - 1]  # (built without wraparound: no [-1])
        fd = tail._fd
        if fd is None:
            return False
        self.tail = tail
        self.tail_fd = fd
        self.tail_start = tail.start
        self.view = view
        return True


cdef class StoreAppends:
    """``LogStore.append_data`` in one compiled call: the partition looked up, then the direct
    path of a threshold-mode log, or a group-commit log's submit and wait (what
    ``PartitionLog.append_many`` does); anything else goes to ``slow`` (the Python method, same
    arguments)."""

    cdef dict logs
    cdef object ids
    cdef object slow
    cdef object new_latch
    cdef object thread_sink

    def __init__(self, dict logs, ids, slow, new_latch, thread_sink):
        self.logs = logs
        self.ids = ids
        self.slow = slow
        self.new_latch = new_latch
        self.thread_sink = thread_sink

    def append_data(self, topic, partition, data, *, int flag=0, msg_id=None,
                    long long checksum=-1):
        """Append raw message data (attribute block + body, protocol §4.1) with its flag."""
        cdef PyObject* found = PyDict_GetItem(self.logs, (topic, partition))
        if found != NULL:
            plog = <object>found
            direct = plog._direct
            if direct is not None:
                done = (<DirectAppender>direct).append_one(data, flag, msg_id, checksum, self.ids)
                if done is not None:
                    return done
            elif plog.group_commit and type(data) is bytes:
                if data_well_formed(data, flag):
                    # A writer thread back from its fdatasync goes before the appender
                    # threads queued for the GIL: it answers the round sooner (+5 % at 64
                    # threads × 100 B, four pairs of runs).
                    give_gil_to_writers()
                    latch = self.new_latch()
                    request = plog.submit(
                        [(data, flag, self.ids.next_id() if msg_id is None else msg_id, checksum)],
                        self.thread_sink, latch)
                    latch.acquire()
                    return request.first()
        return self.slow(topic, partition, data, flag=flag, msg_id=msg_id, checksum=checksum)

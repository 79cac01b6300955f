# cython: language_level=3
"""The file operations of a segment, each with the GIL released: a batch of records written with
one vectored write, fdatasync, positional reads, and the recovery scan of a file's records.

Works on file descriptors only; knows nothing of segment lists, offsets or flush policies.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.pythread cimport PY_LOCK_ACQUIRED
from libc.errno cimport EINTR, errno
from libc.stdint cimport int32_t, int64_t, uint32_t
from libc.stdlib cimport free, malloc, realloc
from posix.types cimport off_t

from metaq_core._crc cimport checksum_raw
from metaq_core._latch cimport Latch, PyThread_acquire_lock_timed, Wakeups
from metaq_core._record cimport (HEADER_SIZE, SCAN_CLEAN, SCAN_CORRUPT, SCAN_PARTIAL, load_be32,
                                 scan_raw, write_header)

cdef extern from *:
    """
    static int metaq_writers_waiting = 0;
    static inline void metaq_waiting_add(int v) { __atomic_add_fetch(&metaq_writers_waiting, v, __ATOMIC_ACQ_REL); }
    static inline int metaq_waiting(void) { return __atomic_load_n(&metaq_writers_waiting, __ATOMIC_ACQUIRE); }
    static inline int metaq_load(const int* flag) { return __atomic_load_n(flag, __ATOMIC_ACQUIRE); }
    """
    int metaq_writers_waiting
    void metaq_waiting_add(int v) nogil
    int metaq_waiting() nogil
    int metaq_load(const int* flag) nogil

cdef extern from "<sched.h>" nogil:
    int sched_yield()

from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

cdef enum:
    YIELD_LIMIT_NS = 200000   # how long yield_to_writers waits for a writer at most


def yield_to_writers() -> bool:
    """Let a writer thread that waits for the GIL after an fdatasync have it now.

    An event loop thread holds the GIL almost all the time and gives it up only for short
    system calls, which a woken thread rarely catches: a writer thread then waited ~0.1 ms on
    average (up to ~1 ms, or the interpreter's 5 ms switch interval) after each fdatasync before
    it could answer the round and start the next one. A busy event loop calls this at moments
    it can pause (the broker: after each receive; threshold-mode direct appends from an event
    loop: before each write); when a writer is waiting, it releases the GIL until that writer
    has taken it (at most 0.2 ms) and returns True. Without a waiting writer it costs one
    atomic read."""
    return give_gil_to_writers()


cdef bint give_gil_to_writers() noexcept:
    """``yield_to_writers`` for compiled callers (which hold the GIL)."""
    if not metaq_waiting():
        return False
    with nogil:
        wait_while_set(&metaq_writers_waiting, YIELD_LIMIT_NS)
    return True


cdef class WriterLatch(Latch):
    """The latch an idle writer thread sleeps on (``threading.Condition``'s waiter lock, in
    ``partition._WriterCondition``): once woken, the writer is marked as waiting for the GIL
    before it asks for it, so that a busy event loop hands it over (``yield_to_writers``)
    instead of keeping it until the loop goes idle."""

    def acquire(self, bint blocking=True, double timeout=-1) -> bool:
        """Wait until released (at most ``timeout`` seconds when it is not negative; not at
        all unless ``blocking``): True if it was released. Signals are not handled meanwhile
        (writer threads are never the main thread)."""
        cdef long long microseconds = -1 if timeout < 0 else <long long>(timeout * 1e6)
        cdef int r
        if not blocking:
            microseconds = 0
        with nogil:
            r = PyThread_acquire_lock_timed(self.lock, microseconds, 0)
            metaq_waiting_add(1)   # the GIL comes next: see yield_to_writers
        metaq_waiting_add(-1)
        return r == PY_LOCK_ACQUIRED


cdef void wait_while_set(const int* flag, long long limit_ns) noexcept nogil:
    """Yield the CPU while ``*flag`` (set and cleared by other threads) is non-zero, for at most
    ``limit_ns``. For a caller that released the GIL for a thread that is to take it."""
    cdef timespec start, now
    clock_gettime(CLOCK_MONOTONIC, &start)
    while metaq_load(flag):
        sched_yield()
        clock_gettime(CLOCK_MONOTONIC, &now)
        if (now.tv_sec - start.tv_sec) * 1000000000 + (now.tv_nsec - start.tv_nsec) > limit_ns:
            break


cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void* iov_base
        size_t iov_len
    ssize_t writev(int fd, const iovec* iov, int iovcnt)

cdef extern from "<unistd.h>" nogil:
    ssize_t pread(int fd, void* buf, size_t count, off_t offset)
    ssize_t write(int fd, const void* buf, size_t count)
    int fdatasync(int fd)
    int fsync(int fd)

cdef int IOV_BATCH = 1024
cdef size_t SCAN_CHUNK = 4 * 1024 * 1024


class BatchWriteError(OSError):
    """A vectored write failed after ``written`` bytes of the batch reached the file."""

    def __init__(self, err, written):
        super().__init__(err, _strerror(err))
        self.written = written


def _strerror(int err):
    import os
    return os.strerror(err)


cdef int _writev_all(int fd, iovec* iov, int count, size_t* written) noexcept nogil:
    """writev every iovec, resuming after short writes and EINTR. Returns 0 or an errno."""
    cdef int first = 0
    cdef int n
    cdef ssize_t r
    cdef size_t left
    while first < count:
        n = count - first
        if n > IOV_BATCH:
            n = IOV_BATCH
        r = writev(fd, iov + first, n)
        if r < 0:
            if errno == EINTR:
                continue
            return errno
        written[0] += <size_t>r
        left = <size_t>r
        while first < count and left >= iov[first].iov_len:
            left -= iov[first].iov_len
            first += 1
        if left:
            iov[first].iov_base = <char*>iov[first].iov_base + left
            iov[first].iov_len -= left
        elif r == 0 and n > 0:
            # A zero-length write of a non-empty vector: no progress is possible.
            while first < count and iov[first].iov_len == 0:
                first += 1
            if first < count:
                return 5  # EIO
    return 0


def append_records(int fd, list items, bint sync=False, Wakeups wake=None) -> list:
    """Append records to ``fd`` with vectored writes, computing headers and checksums unlocked.

    ``wake``: the latches of the previous round, opened first thing in the GIL-free stretch.

    ``items`` is a list of (data: bytes, flag, msg_id, checksum) — checksum -1 means compute it.
    With ``sync`` the file is also fdatasync'ed in the same unlocked stretch (one GIL hand-off
    per group commit instead of two). Returns the record sizes (20 + len(data)) in order. On a
    write failure raises BatchWriteError carrying how many bytes did reach the file, so the
    caller can cut the file back; a failed fdatasync raises OSError.
    """
    cdef Py_ssize_t n = len(items)
    cdef Py_ssize_t i
    cdef unsigned char* headers
    cdef iovec* iov
    cdef int32_t* lengths
    cdef uint32_t* crcs
    cdef long long* ids
    cdef int32_t* flags
    cdef size_t written = 0
    cdef int err = 0
    cdef int sync_err = 0
    cdef object data
    cdef list sizes = [0] * n
    cdef long long crc
    if n == 0:
        return sizes
    headers = <unsigned char*>PyMem_Malloc(n * HEADER_SIZE)
    iov = <iovec*>PyMem_Malloc(2 * n * sizeof(iovec))
    lengths = <int32_t*>PyMem_Malloc(n * sizeof(int32_t))
    crcs = <uint32_t*>PyMem_Malloc(n * sizeof(uint32_t))
    ids = <long long*>PyMem_Malloc(n * sizeof(long long))
    flags = <int32_t*>PyMem_Malloc(n * sizeof(int32_t))
    cdef char* need = <char*>PyMem_Malloc(n)
    try:
        if not (headers and iov and lengths and crcs and ids and flags and need):
            raise MemoryError()
        for i in range(n):
            item = items[i]
            data = item[0]
            if type(data) is not bytes:
                raise TypeError("record data must be bytes")
            if PyBytes_GET_SIZE(data) > 0x7FFFFFFF - HEADER_SIZE:
                raise ValueError("record data longer than 2 GiB")
            lengths[i] = <int32_t>PyBytes_GET_SIZE(data)
            flags[i] = <int32_t>item[1]
            ids[i] = <long long>item[2]
            crc = item[3]
            need[i] = crc < 0
            crcs[i] = <uint32_t>(crc if crc >= 0 else 0)
            iov[2 * i + 1].iov_base = PyBytes_AS_STRING(data)
            iov[2 * i + 1].iov_len = <size_t>lengths[i]
            iov[2 * i].iov_base = headers + i * HEADER_SIZE
            iov[2 * i].iov_len = HEADER_SIZE
            sizes[i] = HEADER_SIZE + lengths[i]
        # `items` holds a reference to every data object, so the pointers stay valid unlocked.
        with nogil:
            if wake is not None:
                wake.open_all()
            for i in range(n):
                if need[i]:
                    crcs[i] = checksum_raw(<const unsigned char*>iov[2 * i + 1].iov_base,
                                           <size_t>lengths[i])
                write_header(headers + i * HEADER_SIZE, lengths[i], crcs[i], ids[i], flags[i])
            err = _writev_all(fd, iov, <int>(2 * n), &written)
            if sync and not err and fdatasync(fd) != 0:
                sync_err = errno
            if sync:
                metaq_waiting_add(1)   # see yield_to_writers
        if sync:
            metaq_waiting_add(-1)
        if err:
            raise BatchWriteError(err, written)
        if sync_err:
            raise OSError(sync_err, _strerror(sync_err))
        return sizes
    finally:
        PyMem_Free(headers)
        PyMem_Free(iov)
        PyMem_Free(lengths)
        PyMem_Free(crcs)
        PyMem_Free(ids)
        PyMem_Free(flags)
        PyMem_Free(need)


def write_all(int fd, data) -> int:
    """Write every byte of ``data`` (bytes-like) at the file position; GIL released."""
    cdef const unsigned char[::1] view = data
    cdef iovec one
    cdef size_t written = 0
    cdef int err = 0
    if view.shape[0] == 0:
        return 0
    one.iov_base = <void*>&view[0]
    one.iov_len = view.shape[0]
    with nogil:
        err = _writev_all(fd, &one, 1, &written)
    if err:
        raise BatchWriteError(err, written)
    return written


def datasync(int fd) -> None:
    """fdatasync(fd) with the GIL released; OSError on failure."""
    cdef int r
    with nogil:
        r = fdatasync(fd)
        metaq_waiting_add(1)   # the GIL comes next: see yield_to_writers
    metaq_waiting_add(-1)
    if r != 0:
        raise OSError(errno, _strerror(errno))


def fullsync(int fd) -> None:
    """fsync(fd) (data and metadata) with the GIL released; OSError on failure."""
    cdef int r
    with nogil:
        r = fsync(fd)
    if r != 0:
        raise OSError(errno, _strerror(errno))


def read_at(int fd, long long position, Py_ssize_t length) -> bytes:
    """Up to ``length`` bytes at ``position`` (fewer only at end of file); GIL released."""
    cdef Py_ssize_t got = 0
    cdef ssize_t r = 0
    cdef int err = 0
    cdef char* p
    if length <= 0:
        return b""
    out = PyBytes_FromStringAndSize(NULL, length)
    p = PyBytes_AS_STRING(out)
    with nogil:
        while got < length:
            r = pread(fd, p + got, <size_t>(length - got), <off_t>(position + got))
            if r < 0:
                if errno == EINTR:
                    continue
                err = errno
                break
            if r == 0:
                break
            got += r
    if err:
        raise OSError(err, _strerror(err))
    if got == length:
        return out
    return out[:got]


cdef int _pread_full(int fd, unsigned char* buf, size_t n, long long pos, size_t* got) noexcept nogil:
    cdef ssize_t r
    got[0] = 0
    while got[0] < n:
        r = pread(fd, buf + got[0], n - got[0], <off_t>(pos + <long long>got[0]))
        if r < 0:
            if errno == EINTR:
                continue
            return errno
        if r == 0:
            break
        got[0] += <size_t>r
    return 0


def scan_file(int fd, long long start, long long end, bint verify=True) -> tuple:
    """Walk the records of the file between byte ``start`` and ``end``, checking each checksum.

    Returns (count, position after the last good record, status) with the status of
    ``_record.scan``: CLEAN, PARTIAL (a short record at the end) or CORRUPT. Reads in 4 MiB chunks
    with the GIL released; a record larger than a chunk is read whole.
    """
    cdef size_t cap = SCAN_CHUNK
    cdef unsigned char* buf
    cdef unsigned char* grown
    cdef long long pos = start
    cdef long long count = 0
    cdef long long chunk_count
    cdef size_t want, got, scanned_end
    cdef int status = SCAN_CLEAN
    cdef int err = 0
    cdef int32_t length
    if end <= start:
        return (0, start, SCAN_CLEAN)
    buf = <unsigned char*>malloc(cap)
    if buf == NULL:
        raise MemoryError()
    with nogil:
        while pos < end:
            want = cap if <long long>cap < end - pos else <size_t>(end - pos)
            err = _pread_full(fd, buf, want, pos, &got)
            if err:
                break
            if got < want:
                # The file is shorter than `end`: scan what is there, then stop.
                end = pos + <long long>got
            status = scan_raw(buf, 0, got, verify, &scanned_end, &chunk_count)
            count += chunk_count
            pos += <long long>scanned_end
            if status == SCAN_CORRUPT:
                break
            if status == SCAN_CLEAN:
                if pos >= end:
                    break
                continue
            # SCAN_PARTIAL: the next record crosses the chunk's end (or the file's).
            if end - pos < HEADER_SIZE:
                break
            if scanned_end > 0:
                continue  # re-read from the record start: it may fit in a chunk now
            # The record alone is larger than the buffer: grow it to hold the whole record.
            length = <int32_t>load_be32(buf)
            if <long long>length > end - pos - HEADER_SIZE:
                break  # truly incomplete at the end of the file
            cap = HEADER_SIZE + <size_t>length
            grown = <unsigned char*>realloc(buf, cap)
            if grown == NULL:
                err = 12  # ENOMEM
                break
            buf = grown
    free(buf)
    if err:
        raise OSError(err, _strerror(err))
    return (count, pos, status)

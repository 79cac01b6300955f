# cython: language_level=3
"""Latches of blocking appenders, and the wake-ups of an answered round opened without the GIL.

A thread that appends in group-commit mode waits on a ``Latch`` until the writer thread answers
its round (after the fdatasync). Waking a round's threads is one futex wake each: tens of µs for
a round of 20-30 on a VM, which the writer used to spend holding the GIL while every woken
appender queued for it. ``Wakeups`` takes a round's latches (with the GIL) and opens them later
without it — the writer's next vectored write does it first thing in its GIL-free stretch
(``_segment.append_records``), so the woken appenders find the GIL free.

Knows nothing of requests beyond their ``waiter`` attribute; does no I/O.
"""
from cpython.exc cimport PyErr_CheckSignals
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from cpython.pythread cimport (PY_LOCK_ACQUIRED, WAIT_LOCK, PyThread_acquire_lock,
                               PyThread_allocate_lock, PyThread_free_lock, PyThread_release_lock,
                               PyThread_type_lock)


cdef class Latch:
    """A one-shot latch: ``acquire()`` waits, with the GIL released, until ``release()`` (the
    interface of the ``_thread`` lock it replaces: created held, released once)."""

    def __cinit__(self):
        self.lock = PyThread_allocate_lock()
        if self.lock == NULL:
            raise MemoryError()
        PyThread_acquire_lock(self.lock, WAIT_LOCK)  # closed

    def __dealloc__(self):
        if self.lock != NULL:
            PyThread_free_lock(self.lock)

    def acquire(self) -> bool:
        """Wait until released; signal handlers run meanwhile (a KeyboardInterrupt raises)."""
        cdef int r
        while True:
            with nogil:
                r = PyThread_acquire_lock_timed(self.lock, -1, 1)
            if r == PY_LOCK_ACQUIRED:
                return True
            if PyErr_CheckSignals() < 0:
                raise

    def release(self) -> None:
        PyThread_release_lock(self.lock)


cdef class Wakeups:
    """The latches of one answered round, each opened exactly once: by ``open_all`` (without the
    GIL), by ``open()``, or at the latest when this object is freed. Waiters that are not
    ``Latch`` objects are released when it is built."""

    def __cinit__(self, list requests):
        cdef Py_ssize_t n = len(requests)
        self.count = 0
        self.keep = []
        self.locks = <PyThread_type_lock*>PyMem_Malloc((n or 1) * sizeof(PyThread_type_lock))
        if self.locks == NULL:
            raise MemoryError()
        for request in requests:
            waiter = request.waiter
            if type(waiter) is Latch:
                self.locks[self.count] = (<Latch>waiter).lock
                self.count += 1
                self.keep.append(waiter)  # alive until opened
            else:
                waiter.release()

    def __dealloc__(self):
        if self.locks != NULL:
            self.open_all()  # never leave an appender waiting
            PyMem_Free(self.locks)

    cdef void open_all(self) noexcept nogil:
        cdef Py_ssize_t i
        for i in range(self.count):
            PyThread_release_lock(self.locks[i])
        self.count = 0

    def open(self) -> None:
        """Open what is not opened yet, with the GIL released."""
        with nogil:
            self.open_all()
        self.keep = []

    def __len__(self) -> int:
        return self.count

# Latches of blocking appenders; see _latch.pyx.
from cpython.pythread cimport PyThread_type_lock

cdef extern from "pythread.h":  # (not in Cython's cpython.pythread)
    int PyThread_acquire_lock_timed(PyThread_type_lock lock, long long microseconds,
                                    int intr_flag) nogil


cdef class Latch:
    cdef PyThread_type_lock lock


cdef class Wakeups:
    cdef PyThread_type_lock* locks
    cdef Py_ssize_t count
    cdef list keep

    cdef void open_all(self) noexcept nogil

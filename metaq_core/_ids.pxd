# Message ids in C; see _ids.pyx.
from libc.stdint cimport int64_t


cdef class IdGenerator:
    cdef readonly int broker_id
    cdef object _clock
    cdef int64_t _last_ms
    cdef int _sequence

    cdef int64_t _now(self) except? -1
    cdef int64_t take(self) except? -1

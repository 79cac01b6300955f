# File operations of one segment; see _segment.pyx.

cdef bint give_gil_to_writers() noexcept
cdef void wait_while_set(const int* flag, long long limit_ns) noexcept nogil

# File operations of one segment; see _segment.pyx.

cdef bint give_gil_to_writers() noexcept

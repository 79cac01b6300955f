# cython: language_level=3
"""Message ids in C: the 1.4.4 snowflake layout of protocol §4.5 (see ``metaq_core.ids``).

``next_id`` runs start to end without releasing the GIL when it reads the C wall clock, so it is
atomic for Python threads without a lock. An injected Python clock (tests) makes it call back
into Python. Keeps no state on disk.
"""
from libc.stdint cimport int64_t

from metaq_core.errors import ClockBackwardsError

from posix.time cimport CLOCK_REALTIME, clock_gettime, timespec

EPOCH_MS = 1303895660503
cdef int64_t C_EPOCH_MS = 1303895660503


cdef inline int64_t wall_ms() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return <int64_t>ts.tv_sec * 1000 + ts.tv_nsec // 1000000


cdef class IdGenerator:
    """Issues ids for one broker id; ``clock`` (ms, or None for the wall clock) is for tests."""

    def __init__(self, int broker_id, clock=None):
        self.broker_id = broker_id
        self._clock = clock
        self._last_ms = -1
        self._sequence = 0

    cdef int64_t _now(self) except? -1:
        if self._clock is None:
            return wall_ms()
        return self._clock()

    def next_id(self):
        return self.take()

    cdef int64_t take(self) except? -1:
        """``next_id`` for compiled callers."""
        cdef int64_t now = self._now()
        if now < self._last_ms:
            raise ClockBackwardsError(
                f"clock moved backwards by {self._last_ms - now} ms; refusing to issue message ids")
        if now == self._last_ms:
            self._sequence = (self._sequence + 1) & 0xFFF
            if self._sequence == 0:
                while now <= self._last_ms:  # 4096 ids this millisecond: wait for the next one
                    now = self._now()
                    if now < self._last_ms:
                        raise ClockBackwardsError("clock moved backwards while waiting")
        else:
            self._sequence = 0
        self._last_ms = now
        return ((now - C_EPOCH_MS) << 22) | (<int64_t>self.broker_id << 12) | self._sequence

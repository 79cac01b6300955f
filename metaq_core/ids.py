"""Message ids: the 1.4.4 snowflake layout of protocol §4.5.

``((now_ms - 1303895660503) << 22) | (broker_id << 12) | sequence`` — unique and increasing per
broker. A clock that goes backwards is an error (ClockBackwardsError), never a duplicate id. This
module computes ids only; it keeps no state on disk.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from metaq_core.errors import ClockBackwardsError

EPOCH_MS = 1303895660503
MAX_BROKER_ID = 1023
_SEQUENCE_MASK = 0xFFF


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class IdWorker:
    """Issues message ids for one broker. Thread-safe.

    ``clock`` returns wall-clock milliseconds (injectable so tests can turn the clock back).
    """

    def __init__(self, broker_id: int = 0, *, clock: Callable[[], int] = _wall_ms) -> None:
        if isinstance(broker_id, bool) or not isinstance(broker_id, int) or not 0 <= broker_id <= MAX_BROKER_ID:
            raise ValueError(f"broker id must be an integer in 0..{MAX_BROKER_ID}, not {broker_id!r}")
        self.broker_id = broker_id
        self._clock = clock
        self._lock = threading.Lock()
        self._last_ms = -1
        self._sequence = 0

    def next_id(self) -> int:
        with self._lock:
            now = self._clock() if self._clock is not _wall_ms else time.time_ns() // 1_000_000
            if now < self._last_ms:
                raise ClockBackwardsError(
                    f"clock moved backwards by {self._last_ms - now} ms; refusing to issue message ids")
            if now == self._last_ms:
                self._sequence = (self._sequence + 1) & _SEQUENCE_MASK
                if self._sequence == 0:
                    while now <= self._last_ms:  # 4096 ids this millisecond: wait for the next one
                        now = self._clock()
                        if now < self._last_ms:
                            raise ClockBackwardsError("clock moved backwards while waiting")
            else:
                self._sequence = 0
            self._last_ms = now
            return ((now - EPOCH_MS) << 22) | (self.broker_id << 12) | self._sequence

    def next_ids(self, count: int) -> list[int]:
        return [self.next_id() for _ in range(count)]


def split_id(msg_id: int) -> tuple[int, int, int]:
    """(milliseconds since the Unix epoch, broker id, sequence) of an id."""
    return (msg_id >> 22) + EPOCH_MS, (msg_id >> 12) & MAX_BROKER_ID, msg_id & _SEQUENCE_MASK

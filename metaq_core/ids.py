"""Message ids: the 1.4.4 snowflake layout of protocol §4.5.

``((now_ms - 1303895660503) << 22) | (broker_id << 12) | sequence`` — unique and increasing per
broker. A clock that goes backwards is an error (ClockBackwardsError), never a duplicate id. This
module computes ids only; it keeps no state on disk.
"""

from __future__ import annotations

from collections.abc import Callable

from metaq_core._ids import EPOCH_MS, IdGenerator

MAX_BROKER_ID = 1023
_SEQUENCE_MASK = 0xFFF


class IdWorker(IdGenerator):
    """Issues message ids for one broker (0..1023). Thread-safe (the compiled ``next_id`` is
    atomic under the GIL). ``clock`` returns wall-clock milliseconds; tests inject one to turn
    the clock back."""

    def __init__(self, broker_id: int = 0, *, clock: Callable[[], int] | None = None) -> None:
        if isinstance(broker_id, bool) or not isinstance(broker_id, int) or not 0 <= broker_id <= MAX_BROKER_ID:
            raise ValueError(f"broker id must be an integer in 0..{MAX_BROKER_ID}, not {broker_id!r}")
        super().__init__(broker_id, clock)

    def next_ids(self, count: int) -> list[int]:
        return [self.next_id() for _ in range(count)]


def split_id(msg_id: int) -> tuple[int, int, int]:
    """(milliseconds since the Unix epoch, broker id, sequence) of an id."""
    return (msg_id >> 22) + EPOCH_MS, (msg_id >> 12) & MAX_BROKER_ID, msg_id & _SEQUENCE_MASK

"""Partition selection for producers (broker.md §4.10): round robin (the default), random, hash of
a key, or any callable ``(topic, partitions, message) -> Partition``.

``select_partition`` is the one place a selector runs: the message is read-only while it does
(1.4.4) and its previous read-only state is restored afterwards. Selectors choose; they never send.
"""

from __future__ import annotations

import itertools
import random
import zlib
from collections.abc import Callable, Sequence

from metaq_client.errors import NoPartitionError
from metaq_client.message import Message, Partition

PartitionSelector = Callable[[str, Sequence[Partition], Message], Partition]


class RoundRobinSelector:
    """Java's ``RoundRobinPartitionSelector``: one counter, incremented before each choice."""

    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def __call__(self, topic: str, partitions: Sequence[Partition], message: Message) -> Partition:
        return partitions[next(self._counter) % len(partitions)]


class RandomSelector:
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def __call__(self, topic: str, partitions: Sequence[Partition], message: Message) -> Partition:
        return self._rng.choice(partitions)


class HashSelector:
    """The same key always picks the same partition (while the partition list is unchanged):
    CRC-32 of the key's UTF-8 bytes, modulo the number of partitions. ``key(message)`` gives the
    key; by default the message's attribute."""

    def __init__(self, key: Callable[[Message], str | bytes | None] = lambda m: m.attribute) -> None:
        self._key = key

    def __call__(self, topic: str, partitions: Sequence[Partition], message: Message) -> Partition:
        key = self._key(message)
        raw = key.encode("utf-8") if isinstance(key, str) else bytes(key or b"")
        return partitions[zlib.crc32(raw) % len(partitions)]


def select_partition(selector: PartitionSelector, topic: str, partitions: Sequence[Partition],
                     message: Message) -> Partition:
    """Run ``selector`` with ``message`` read-only; refuse an answer that is not a Partition."""
    if not partitions:
        raise NoPartitionError(f"there is no partition for topic {topic!r}")
    was_read_only = message.read_only
    message.read_only = True
    try:
        chosen = selector(topic, partitions, message)
    finally:
        message.read_only = was_read_only
    if not isinstance(chosen, Partition):
        raise NoPartitionError(f"the partition selector chose {chosen!r} for topic {topic!r}, not a Partition")
    return chosen

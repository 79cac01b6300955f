"""Where the brokers and partitions of a topic come from: the ``PartitionSource`` seam.

Producers ask it which partitions to publish to, consumers which partitions to consume, and both
which URL serves a broker id. ``StaticPartitionSource`` is direct-connect mode (one fixed broker
URL, no ZooKeeper). A ``GroupSource`` also has a session to open with the client (``bind``) and
balances consumer groups: ``zk_source.ZkPartitionSource`` is that (discovery through ZooKeeper).
A source answers questions; it never sends messages or keeps offsets.
"""

from __future__ import annotations

import functools

from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import attrs

from metaq_client.connection import ConnectionPool, parse_url
from metaq_client.message import Partition
from metaq_client.stats import broker_stats, parse_offsets

if TYPE_CHECKING:
    from metaq_client.consumer import Consumer
    from metaq_client.offsets import OffsetStorage


class PartitionSource(Protocol):
    def broker_url(self, broker_id: int) -> str:
        """The ``meta://host:port`` URL of a broker."""

    async def publish_partitions(self, topic: str, pool: ConnectionPool) -> list[Partition]:
        """The partitions ``topic`` is published to, sorted; [] when none is known. A single
        partition numbered -1 means "let that broker choose" (Java with a fixed server URL)."""

    async def subscribe_partitions(self, topic: str, pool: ConnectionPool,
                                   numbers: Sequence[int] | None = None) -> list[Partition]:
        """The partitions this client consumes of ``topic``; ``numbers`` are the partition
        numbers the application asked for, when it named them."""


@runtime_checkable
class GroupSource(PartitionSource, Protocol):
    """A source with a session of its own whose consumers balance partitions in their group."""

    def bind(self, pool: ConnectionPool) -> AbstractAsyncContextManager[None]:
        """Open the session for the client that owns ``pool``; close it on exit."""

    def group_member(self, consumer: Consumer) -> Any:
        """The group membership that assigns ``consumer`` its partitions (``rebalance.GroupMember``)."""

    def default_offset_storage(self) -> OffsetStorage:
        """Where this source's consumers keep offsets unless told otherwise."""


@attrs.frozen
class StaticPartitionSource:
    """Direct-connect mode: every topic lives on the one broker at ``url``.

    * Publishing: with no ``topics`` map, every topic is sent with partition -1 and the broker
      picks one at random, exactly as the Java producer does with a fixed server URL (the
      partition selector is not consulted). With a map, a listed topic is published to the
      listed partitions through the selector, and an unlisted topic has no partitions (so the
      producer's default topic applies).
    * Consuming: the partition numbers given to ``subscribe``; else the topic's entry in
      ``topics``; else every partition of the topic the broker reports in ``stats offsets`` at
      subscription time (partitions with a store; one created later is not picked up).
    * ``broker_id`` labels the partitions (``<brokerId>-<partition>``, the key of stored offsets).
    """

    url: str = attrs.field()
    topics: Mapping[str, Sequence[int]] | None = None
    broker_id: int = 0

    @url.validator
    def _check_url(self, attribute: attrs.Attribute, value: str) -> None:
        parse_url(value)

    def broker_url(self, broker_id: int) -> str:
        return self.url

    async def publish_partitions(self, topic: str, pool: ConnectionPool) -> list[Partition]:
        if self.topics is None:
            return _any_partition(self.broker_id)
        return self._partitions(self.topics.get(topic, ()))

    async def subscribe_partitions(self, topic: str, pool: ConnectionPool,
                                   numbers: Sequence[int] | None = None) -> list[Partition]:
        if numbers is None and self.topics is not None:
            numbers = self.topics.get(topic)
        if numbers is None:
            lines = await broker_stats(pool, self.url, "offsets")
            numbers = [p for t, p, _min, _max in parse_offsets(lines) if t == topic]
        return self._partitions(numbers)

    def _partitions(self, numbers: Sequence[int]) -> list[Partition]:
        return [Partition(self.broker_id, n) for n in sorted(set(numbers))]


@functools.lru_cache(maxsize=64)
def _any_partition(broker_id: int) -> list[Partition]:
    """``[<brokerId>--1]``: "the broker picks"; one shared list per broker (callers only read it)."""
    return [Partition(broker_id, -1)]

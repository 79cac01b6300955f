"""``MetaqClient``: what Java calls the message session factory. It owns the connections (one per
broker, shared by everything created from it), knows where partitions come from (a
``PartitionSource``; a ``meta://host:port`` URL means direct-connect mode), keeps the local
recover store, and creates producers and consumers.

    async with MetaqClient("meta://127.0.0.1:8123") as client:
        async with client.producer() as producer:
            result = await producer.send("orders", b"hello")

Leaving the ``async with`` closes every connection. The client never sends or fetches messages
itself; ``stats`` is its one request.
"""

from __future__ import annotations

import os

import trio

from metaq_client.connection import ConnectionPool, ConnectionSettings, ConnectionStatistics
from metaq_client.consumer import Consumer, ConsumerConfig, RejectConsumptionHandler
from metaq_client.lifecycle import NurseryOwner
from metaq_client.offsets import LocalOffsetStorage, OffsetStorage
from metaq_client.producer import Producer
from metaq_client.recover import RecoverStore, local_recover
from metaq_client.selectors import PartitionSelector
from metaq_client.source import PartitionSource, StaticPartitionSource
from metaq_client.stats import broker_stats


class MetaqClient(NurseryOwner):
    def __init__(self, source: str | PartitionSource, *, connection_settings: ConnectionSettings | None = None,
                 recover_path: str | os.PathLike[str] = "~/.meta_recover") -> None:
        self.source: PartitionSource = StaticPartitionSource(source) if isinstance(source, str) else source
        self.connection_settings = connection_settings or ConnectionSettings()
        self.recover_store = RecoverStore(recover_path)
        self._pool: ConnectionPool | None = None

    async def _after_enter(self, nursery: trio.Nursery) -> None:
        self._pool = ConnectionPool(nursery, self.connection_settings)

    @property
    def pool(self) -> ConnectionPool:
        self._open_nursery()
        return self._pool

    def producer(self, *, partition_selector: PartitionSelector | None = None,
                 default_topic: str | None = None) -> Producer:
        return Producer(self.pool, self.source, partition_selector=partition_selector, default_topic=default_topic)

    def consumer(self, group: str, config: ConsumerConfig | None = None, *,
                 offset_storage: OffsetStorage | None = None,
                 reject_handler: RejectConsumptionHandler = local_recover) -> Consumer:
        """A consumer of ``group``; offsets default to ``LocalOffsetStorage()`` (``~/.meta_offsets``)."""
        return Consumer(self.pool, self.source, self.recover_store, group, config,
                        offset_storage=offset_storage or LocalOffsetStorage(), reject_handler=reject_handler)

    async def stats(self, item: str = "", *, broker_id: int = 0) -> list[str]:
        """The lines of a broker's ``stats <item>`` answer (Java ``getStats``)."""
        return await broker_stats(self.pool, self.source.broker_url(broker_id), item)

    def statistics(self) -> ConnectionStatistics:
        return self.pool.statistics()

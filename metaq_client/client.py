"""``MetaqClient``: what Java calls the message session factory. It owns the connections (one per
broker, shared by everything created from it), knows where partitions come from (a
``PartitionSource``; a ``meta://host:port`` URL means direct-connect mode, ``zk_connect=`` means
discovery through ZooKeeper), keeps the local recover store, and creates producers and consumers.

    async with MetaqClient("meta://127.0.0.1:8123") as client:          # one broker, no ZooKeeper
        async with client.producer() as producer:
            result = await producer.send("orders", b"hello")

    async with MetaqClient(zk_connect="zk1:2181,zk2:2181", zk_root="/meta") as client:
        async with client.producer() as producer:                       # partitions from topics-pub
            result = await producer.send("orders", b"hello")
        async with client.consumer("billing") as consumer:              # group balanced in ZooKeeper,
            await consumer.subscribe("orders", listener)                # offsets in ZooKeeper

With ZooKeeper, ``zk_config=ZkConfig(...)`` sets the session timeout, connection timeout and
``zkSyncTimeMs`` too; the client opens one ZooKeeper session when it is entered (``ZkConnectError``
if ZooKeeper cannot be reached within the connection timeout) and closes it on exit.

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
from metaq_client.shared_connections import SharedConnectionPool
from metaq_client.source import GroupSource, PartitionSource, StaticPartitionSource
from metaq_client.stats import broker_stats
from metaq_client.zk_source import ZkConfig, ZkPartitionSource
from zkmeta.paths import DEFAULT_ROOT


def make_source(source: str | PartitionSource | None = None, *, zk_connect: str | None = None,
                zk_root: str = DEFAULT_ROOT, zk_config: ZkConfig | None = None) -> PartitionSource:
    """The source of a client: a broker URL, a ``PartitionSource``, or ZooKeeper (``zk_connect``
    with ``zk_root``, or a whole ``zk_config``) — exactly one of the three."""
    given = [name for name, value in (("source", source), ("zk_connect", zk_connect), ("zk_config", zk_config))
             if value is not None]
    if len(given) != 1:
        raise TypeError("give exactly one of a broker URL / PartitionSource, zk_connect= or zk_config=, "
                        f"not {', '.join(given) or 'none'}")
    if zk_connect is not None:
        zk_config = ZkConfig(zk_connect=zk_connect, zk_root=zk_root)
    if zk_config is not None:
        return ZkPartitionSource(zk_config)
    return StaticPartitionSource(source) if isinstance(source, str) else source


class MetaqClient(NurseryOwner):
    def __init__(self, source: str | PartitionSource | None = None, *, zk_connect: str | None = None,
                 zk_root: str = DEFAULT_ROOT, zk_config: ZkConfig | None = None,
                 connection_settings: ConnectionSettings | None = None,
                 recover_path: str | os.PathLike[str] = "~/.meta_recover") -> None:
        self.source: PartitionSource = make_source(source, zk_connect=zk_connect, zk_root=zk_root,
                                                   zk_config=zk_config)
        self.connection_settings = connection_settings or ConnectionSettings()
        self.recover_store = RecoverStore(recover_path)
        self._pool: ConnectionPool | None = None

    async def _after_enter(self, nursery: trio.Nursery) -> None:
        self._pool = SharedConnectionPool(nursery, self.connection_settings)
        if isinstance(self.source, GroupSource):
            await self._exit_stack.enter_async_context(self.source.bind(self._pool))

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
        """A consumer of ``group``; offsets default to ZooKeeper with a ZooKeeper source, else to
        ``LocalOffsetStorage()`` (``~/.meta_offsets``)."""
        if offset_storage is None:
            source = self.source
            offset_storage = (source.default_offset_storage() if isinstance(source, GroupSource)
                              else LocalOffsetStorage())
        return Consumer(self.pool, self.source, self.recover_store, group, config,
                        offset_storage=offset_storage, reject_handler=reject_handler)

    async def stats(self, item: str = "", *, broker_id: int = 0) -> list[str]:
        """The lines of a broker's ``stats <item>`` answer (Java ``getStats``)."""
        return await broker_stats(self.pool, self.source.broker_url(broker_id), item)

    def statistics(self) -> ConnectionStatistics:
        return self.pool.statistics()

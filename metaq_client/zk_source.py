"""Discovery through ZooKeeper: ``ZkPartitionSource``, the ``PartitionSource`` of a client
created with ``MetaqClient(zk_connect="host:2181", zk_root="/meta")``.

* Publishing (broker.md §3.5): the first send to a topic makes sure ``brokers/topics-pub/<topic>``
  exists and watches its children; ``brokers/ids`` is watched too. On every change the view is
  read again — the ``<id>-m`` children with their ``numParts``, each broker's
  ``ids/<id>/master`` URI (brokers without one are skipped) — and the partitions sorted
  numerically (broker id, then partition). Connections to brokers that appeared are opened and
  awaited *before* the new list is used (1.4.4: sends do not fail during the change); then the
  connections of brokers that left or moved are closed. The producer's selector picks among
  these partitions, so a producer sends explicit partitions, never -1.
* Consuming: consumers join their group through :meth:`group_member` (``rebalance.GroupMember``)
  and keep offsets in ZooKeeper by default (``zk_offsets.ZkOffsetStorage``).

The source owns the client's ZooKeeper session while it is bound (``bind``, entered by
``MetaqClient``). It never sends messages, fetches or commits offsets itself.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

import attrs
import trio

from metaq_client.connection import ConnectionPool
from metaq_client.errors import BrokerUnavailableError, ClientClosedError, MetaqClientError
from metaq_client.message import Partition
from metaq_client.shared_connections import SharedConnectionPool, connect_all
from metaq_client.zk_offsets import ZkOffsetStorage
from zkmeta.balance import partition_strings
from zkmeta.bridge import KazooException, KazooState, TrioZk, ZkSettings, open_zk
from zkmeta.discovery import publish_partitions, read_cluster, read_topic_brokers
from zkmeta.paths import DEFAULT_ROOT, ZkPaths

if TYPE_CHECKING:
    from metaq_client.consumer import Consumer
    from metaq_client.rebalance import GroupMember

log = logging.getLogger("metaq.client.zk")


@attrs.frozen(kw_only=True)
class ZkConfig:
    """Java's ``ZKConfig`` of a client (times in milliseconds, as in Java).

    ``zk_connect``: ``host:port[,host:port…][/chroot]``. ``zk_sync_time_ms``: the pause before a
    coalesced rebalance (a tenth of it) and between failed rebalance attempts (all of it)."""

    zk_connect: str
    zk_root: str = DEFAULT_ROOT
    zk_session_timeout_ms: int = 30_000
    zk_connection_timeout_ms: int = 30_000
    zk_sync_time_ms: int = 5_000

    @property
    def sync_time(self) -> float:
        return self.zk_sync_time_ms / 1000.0

    @property
    def session_timeout(self) -> float:
        return self.zk_session_timeout_ms / 1000.0


@attrs.frozen
class SourceStatistics:
    #: Times the view (brokers and partitions of the published topics) was read and switched.
    refreshes: int
    topics: int
    brokers: int
    connections: int


class ZkPartitionSource:
    """Brokers and partitions from ZooKeeper; see the module docstring."""

    def __init__(self, config: ZkConfig) -> None:
        self.config = config
        self.paths = ZkPaths(config.zk_root)
        self._zk: TrioZk | None = None
        self._pool: SharedConnectionPool | None = None
        self._tasks: trio.Nursery | None = None
        self._masters: dict[int, str] = {}
        self._published: dict[str, list[Partition]] = {}
        self._ready: dict[str, trio.Event] = {}
        self._watched: set[str] = set()
        self._urls: set[str] = set()
        self._wake = trio.Event()
        self._refreshes = 0

    # ------------------------------------------------------------------ the session

    @property
    def zk(self) -> TrioZk:
        """The ZooKeeper session of the bound client."""
        if self._zk is None:
            raise ClientClosedError("the ZooKeeper source is not bound to an open client")
        return self._zk

    @asynccontextmanager
    async def bind(self, pool: ConnectionPool) -> AsyncIterator[None]:
        """Open the ZooKeeper session and follow the cluster until exit (``MetaqClient`` does
        this when it opens). ``ZkConnectError`` when ZooKeeper cannot be reached in time."""
        if not isinstance(pool, SharedConnectionPool):
            raise TypeError("ZooKeeper discovery needs a SharedConnectionPool")
        if self._zk is not None:
            raise RuntimeError("this ZkPartitionSource is already bound to a client")
        settings = ZkSettings(self.config.zk_connect, session_timeout_ms=self.config.zk_session_timeout_ms,
                              connection_timeout_ms=self.config.zk_connection_timeout_ms)
        async with open_zk(settings) as zk, trio.open_nursery() as nursery:
            self._zk, self._pool, self._tasks = zk, pool, nursery
            try:
                await nursery.start(self._maintain)
                yield
            finally:
                nursery.cancel_scope.cancel()
                for url in self._urls:
                    pool.release(url, self)
                self._urls = set()
                self._zk = self._tasks = None

    # ----------------------------------------------------------- PartitionSource

    def broker_url(self, broker_id: int) -> str:
        url = self._masters.get(broker_id)
        if url is None:
            raise BrokerUnavailableError(f"broker {broker_id} has no master registered in ZooKeeper")
        return url

    async def publish_partitions(self, topic: str, pool: ConnectionPool) -> list[Partition]:
        ready = self._ready.get(topic)
        if ready is None:
            if self._tasks is None:
                raise ClientClosedError("the ZooKeeper source is not bound to an open client")
            self.paths.topic_pub(topic)   # ValueError for a name that is no znode name
            ready = self._ready[topic] = trio.Event()
            self._tasks.start_soon(self._watch_topic, topic, name=f"metaq watch topics-pub/{topic}")
        await ready.wait()
        return self._published.get(topic, [])

    async def subscribe_partitions(self, topic: str, pool: ConnectionPool,
                                   numbers: Sequence[int] | None = None) -> list[Partition]:
        """The partitions of ``topics-sub/<topic>`` now (numbers: those partition numbers)."""
        brokers = await read_topic_brokers(self.zk, self.paths.topic_sub(topic))
        found = []
        for name in partition_strings(brokers):
            broker_id, _, number = name.partition("-")
            if broker_id.isdigit() and (numbers is None or int(number) in numbers):
                found.append(Partition(int(broker_id), int(number)))
        return sorted(found)

    # -------------------------------------------------------------- consumer side

    def group_member(self, consumer: Consumer) -> GroupMember:
        """The membership of ``consumer`` in its group (registration, balancing, owners)."""
        from metaq_client.rebalance import GroupMember

        assert self._pool is not None
        return GroupMember(consumer, session=self, pool=self._pool, sync_time=self.config.sync_time,
                           session_timeout=self.config.session_timeout)

    def default_offset_storage(self) -> ZkOffsetStorage:
        return ZkOffsetStorage(self)

    # ------------------------------------------------------------------ the view

    def statistics(self) -> SourceStatistics:
        return SourceStatistics(self._refreshes, len(self._watched), len(self._masters), len(self._urls))

    async def _maintain(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        zk = self.zk
        states = zk.state_changes()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._follow_session, states)
            await nursery.start(self._watch, self.paths.broker_ids)
            await self._refresh_logged()
            task_status.started()
            while True:
                await self._wake.wait()
                self._wake = trio.Event()
                if not await self._refresh_logged():
                    await trio.sleep(0.2)
                    self._wake.set()

    async def _follow_session(self, states: trio.MemoryReceiveChannel[KazooState]) -> None:
        with states:
            async for state in states:
                if state == KazooState.CONNECTED:
                    self._wake.set()   # a new session may have missed changes

    async def _watch(self, path: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        zk = self.zk
        started = False
        while True:
            try:
                await zk.ensure_path(path)
                async with zk.watch_children(path) as changes:
                    async for _ in changes:
                        self._wake.set()
                        if not started:
                            started = True
                            task_status.started()
            except KazooException as exc:
                log.warning("watching %s failed (%r); again in 1 s", path, exc)
            await trio.sleep(1.0 if started else 0.2)

    async def _watch_topic(self, topic: str) -> None:
        zk = self.zk
        path = self.paths.topic_pub(topic)
        while True:
            try:
                await zk.ensure_path(path)
                async with zk.watch_children(path) as changes:
                    async for _ in changes:
                        self._watched.add(topic)
                        self._wake.set()
            except KazooException as exc:
                log.warning("watching %s failed (%r); again in 1 s", path, exc)
            await trio.sleep(1.0)

    async def _refresh_logged(self) -> bool:
        try:
            await self._refresh()
            return True
        except (KazooException, MetaqClientError) as exc:
            log.warning("reading brokers and topics from ZooKeeper failed: %r", exc)
            return False

    async def _refresh(self) -> None:
        """Read the view, connect to new brokers, switch, then close what is no longer used."""
        zk, paths, pool = self.zk, self.paths, self._pool
        assert pool is not None
        cluster = await read_cluster(zk, paths)
        masters = {broker_id: nodes.master for broker_id, nodes in cluster.items() if nodes.master}
        published = {}
        for topic in sorted(self._watched):
            brokers = await read_topic_brokers(zk, paths.topic_pub(topic))
            published[topic] = [Partition(b, p) for b, p in publish_partitions(brokers, masters)]
        wanted = {masters[p.broker_id] for parts in published.values() for p in parts}
        new = wanted - self._urls
        for url in new:
            pool.acquire(url, self)
        await connect_all(pool, new)
        old = self._urls - wanted
        self._masters, self._published, self._urls = masters, published, wanted
        for url in old:
            pool.release(url, self)
        self._refreshes += 1
        for topic, partitions in published.items():
            self._ready[topic].set()
            log.debug("topic %s: publishing to %s", topic, ", ".join(map(str, partitions)) or "nothing")

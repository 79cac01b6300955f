"""A consumer's membership in its group through ZooKeeper (broker.md §3.6, §4.4, §4.5): register,
watch, rebalance, claim and release partitions, re-register after session expiry.

``GroupMember`` runs as one task of its consumer (``run``), with the consumer's watches under it:

* **Registration**: ``consumers/<group>/ids/<consumerId>`` with the topic list (rewritten when a
  topic is added); the group's ``ids`` and each topic's ``brokers/topics-sub/<topic>`` are watched.
* **Triggers are coalesced**: every watch event only sets a flag; one loop waits a tenth of
  ``zkSyncTimeMs`` (a burst settles), then runs one rebalance under the member's lock. Events
  that arrive meanwhile cause exactly one more.
* **One attempt** (§4.4): read the own topic list, the cluster, the consumers and partitions per
  topic; for the topics whose lists changed, stop *all* fetchers and commit their offsets, then
  release the partitions no longer ours and claim the new ones (an owner node held by another
  consumer fails the attempt), load the claimed partitions' offsets, and restart the fetchers,
  each against a random master/async slave of its broker, after the connections are up. Only a
  changed cluster restarts the fetchers without touching ownership.
* **Failure**: stop fetchers, commit, delete every owner node naming us, forget everything,
  sleep ``zkSyncTimeMs``, retry — at most 7 attempts, then "rebalance failed, finally" until
  the next trigger.
* **Session trouble**: a consumer fetches only while its session is known to be alive. When the
  connection is suspended, the fetchers stop (positions and claims are kept) and resume once it
  is back with the same session — ZooKeeper clients see the disconnection before the server can
  expire the session, so no other consumer can have claimed the partitions yet. When the session
  is lost, the positions are dropped uncommitted (another consumer may own those partitions
  now); on the new session the consumer re-registers, clears owner nodes left under its id and
  rebalances. A rebalance interrupted by either is treated as failed: its claims are uncertain.

Ownership therefore only changes hands while the previous owner's fetchers are stopped and its
offsets committed, and a consumer fetches a partition only while its owner node names it.

What this module must not do: fetch or deliver messages (``fetcher``), choose partitions by
itself (``zkmeta.balance``), or call kazoo other than through ``zkmeta``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

import attrs
import trio

from metaq_client.consumer import FetchAssignment
from metaq_client.errors import BrokerUnavailableError
from metaq_client.message import Partition
from metaq_client.offsets import TopicPartitionOffset
from metaq_client.shared_connections import SharedConnectionPool, connect_all
from zkmeta.balance import assignment, consumers_for_topic, partition_strings, registration_topics
from zkmeta.bridge import KazooState, NoNodeError, TrioZk
from zkmeta.discovery import BrokerNodes, read_cluster, read_topic_brokers
from zkmeta.groups import (
    claim_partition, new_consumer_id, owned_partitions, read_registrations, register_consumer,
    release_partition, unregister_consumer,
)
from zkmeta.paths import ZkPaths

if TYPE_CHECKING:
    from metaq_client.consumer import Consumer

log = logging.getLogger("metaq.client.group")

#: Attempts per rebalance (1.4.4; 5 in 1.4.3).
MAX_ATTEMPTS = 7


class _ZkSession(Protocol):
    @property
    def zk(self) -> TrioZk: ...

    @property
    def paths(self) -> ZkPaths: ...


@attrs.frozen
class MemberStatistics:
    consumer_id: str
    registered: bool
    partitions: int
    rebalances: int
    failed_attempts: int
    gave_up: int
    pauses: int


def _partition(name: str) -> Partition:
    broker_id, _, number = name.partition("-")
    return Partition(int(broker_id), int(number))


class GroupMember:
    """One consumer's membership; see the module docstring. Created by the source
    (``ZkPartitionSource.group_member``), run by the consumer."""

    def __init__(self, consumer: Consumer, *, session: _ZkSession, pool: SharedConnectionPool,
                 sync_time: float, session_timeout: float, rng: random.Random | None = None) -> None:
        self._consumer = consumer
        self._session = session
        self._pool = pool
        self.group = consumer.group
        self.consumer_id = new_consumer_id(consumer.group, consumer.config.consumer_id)
        self.strategy = consumer.config.load_balance_strategy
        self.sync_time = sync_time
        self.session_timeout = session_timeout
        self._rng = rng or random.Random()
        self._lock = trio.Lock()
        self._wake = trio.Event()
        self._watchers: trio.Nursery | None = None
        self._rebalancing: trio.CancelScope | None = None
        # what ZooKeeper holds for us
        self._must_register = True
        self._must_clear_owners = False
        self._registered_session: int | None = None
        self._held: dict[str, set[str]] = {}
        self._claimed: dict[tuple[str, str], TopicPartitionOffset] = {}
        # the inputs of the last successful attempt
        self._old_consumers: dict[str, list[str]] = {}
        self._old_partitions: dict[str, list[str]] = {}
        self._old_cluster: dict[int, BrokerNodes] | None = None
        self._urls: set[str] = set()
        self._suspended = False        # no ZooKeeper connection: fetchers stay stopped
        self._must_restart = False     # fetchers were stopped without an ownership change
        self._rebalances = self._failed_attempts = self._gave_up = self._pauses = 0

    # ------------------------------------------------------------------- queries

    @property
    def paths(self) -> ZkPaths:
        return self._session.paths

    def owned(self) -> dict[str, list[str]]:
        """The partitions whose owner node this member created, by topic."""
        return {topic: sorted(held) for topic, held in self._held.items() if held}

    def statistics(self) -> MemberStatistics:
        return MemberStatistics(self.consumer_id, self._registered_session is not None and not self._must_register,
                                sum(map(len, self._held.values())), self._rebalances, self._failed_attempts,
                                self._gave_up, self._pauses)

    # --------------------------------------------------------------- the task

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch the group and the session and rebalance on every change, until cancelled."""
        zk = self._session.zk
        states = zk.state_changes()
        async with trio.open_nursery() as nursery:
            self._watchers = nursery
            nursery.start_soon(self._follow_session, states)
            await nursery.start(self._watch, self.paths.consumer_ids(self.group))
            task_status.started()
            while True:
                await self._wake.wait()
                await trio.sleep(self.sync_time / 10)   # let a burst of changes settle
                self._wake = trio.Event()               # ... and count as one
                async with self._lock:
                    await self._synced_rebalance()

    def trigger(self) -> None:
        """Ask for a rebalance (coalesced with every other request until it starts)."""
        self._wake.set()

    async def subscribe(self, topic: str) -> bool:
        """The consumer subscribed ``topic``: register the new topic list, watch the topic's
        partitions, rebalance. True when the rebalance succeeded (else it is retried on the
        next trigger)."""
        assert self._watchers is not None, "run() must be started first"
        self._must_register = True
        try:
            await self._watchers.start(self._watch, self.paths.topic_sub(topic))
            async with self._lock:
                return await self._synced_rebalance()
        except BaseException:
            self.trigger()
            raise

    async def leave(self) -> None:
        """Unregister at consumer shutdown (§3.6), after the consumer stopped its fetchers and
        committed: delete every owner node naming us, then our ids node. Bounded by one session
        timeout; errors are logged."""
        zk, paths = self._session.zk, self.paths
        with trio.CancelScope(shield=True), trio.move_on_after(max(self.session_timeout, 1.0)):
            try:
                await self._delete_owner_nodes(self._consumer._topics())
                await unregister_consumer(zk, paths, self.group, self.consumer_id)
                log.info("consumer %s left group %s", self.consumer_id, self.group)
            except Exception as exc:
                log.warning("consumer %s: unregistering from ZooKeeper failed: %r", self.consumer_id, exc)
        self._held.clear()
        self._release_urls(self._urls)
        self._urls = set()

    # ----------------------------------------------------------------- watches

    async def _watch(self, path: str, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        zk = self._session.zk
        started = False
        while True:
            try:
                await zk.ensure_path(path)
                async with zk.watch_children(path) as changes:
                    async for _ in changes:
                        if started:
                            self.trigger()
                        else:
                            started = True
                            task_status.started()
            except Exception as exc:   # a ZooKeeper error: watch again shortly
                log.warning("consumer %s: watching %s failed: %r", self.consumer_id, path, exc)
            await trio.sleep(0.2)

    async def _follow_session(self, states: trio.MemoryReceiveChannel[KazooState]) -> None:
        zk = self._session.zk
        with states:
            async for state in states:
                if state == KazooState.SUSPENDED:
                    await self._suspend()
                elif state == KazooState.LOST:
                    await self._lose()
                elif state == KazooState.CONNECTED:
                    self._suspended = False
                    if zk.session_id != self._registered_session:
                        self._must_register = True
                    self.trigger()

    def _interrupt_rebalance(self) -> None:
        if self._rebalancing is not None:
            self._rebalancing.cancel()
            self._must_clear_owners = True   # a claim may have been made without our knowing

    async def _suspend(self) -> None:
        """Connection lost, session maybe alive: stop fetching, keep positions and claims."""
        self._suspended = True
        self._interrupt_rebalance()
        if self._consumer._running:
            log.warning("consumer %s: ZooKeeper connection suspended; fetching stopped until it is back",
                        self.consumer_id)
        await self._consumer._stop_fetchers()
        self._must_restart = True

    async def _lose(self) -> None:
        """The session expired: its owner nodes are gone, so are our claims and positions."""
        self._pauses += 1
        log.warning("consumer %s: the ZooKeeper session expired; re-registering on the new session",
                    self.consumer_id)
        self._interrupt_rebalance()
        await self._consumer._stop_fetchers()
        self._consumer._forget_fetchers()
        self._reset_state()
        self._must_register = True
        self._must_clear_owners = True

    # --------------------------------------------------------------- rebalancing

    async def _synced_rebalance(self) -> bool:
        with trio.CancelScope() as scope:
            self._rebalancing = scope
            try:
                for attempt in range(1, MAX_ATTEMPTS + 1):
                    try:
                        if await self._attempt():
                            self._rebalances += 1
                            return True
                    except Exception as exc:
                        log.warning("consumer %s: rebalance attempt %d failed: %r", self.consumer_id, attempt, exc)
                    self._failed_attempts += 1
                    await self._release_all()
                    await trio.sleep(self.sync_time)
                self._gave_up += 1
                log.error("consumer %s: rebalance failed, finally (after %d attempts); waiting for the next "
                          "change", self.consumer_id, MAX_ATTEMPTS)
                return False
            finally:
                self._rebalancing = None
        return False   # cancelled by a session loss: the next connection triggers a new one

    async def _attempt(self) -> bool:
        zk, paths, group, me = self._session.zk, self.paths, self.group, self.consumer_id
        if self._must_register:
            await register_consumer(zk, paths, group, me, self._consumer._topics())
            self._registered_session = zk.session_id
            self._must_register = False
        if self._must_clear_owners:
            await self._release_all()
            if self._must_clear_owners:
                return False

        try:
            registered = (await zk.get(paths.consumer_id(group, me)))[0]
        except NoNodeError:
            # e.g. "exists with the same data" was a dead predecessor's node, which expired since
            self._must_register = True
            raise
        my_topics = registration_topics(registered.decode("utf-8"))
        cluster = await read_cluster(zk, paths)
        registrations = await read_registrations(zk, paths, group)
        consumers = {topic: consumers_for_topic(registrations, topic) for topic in my_topics}
        partitions = {topic: partition_strings(await read_topic_brokers(zk, paths.topic_sub(topic)))
                      for topic in my_topics}
        changed = [topic for topic in my_topics
                   if consumers[topic] != self._old_consumers.get(topic)
                   or partitions[topic] != self._old_partitions.get(topic)]
        if not changed:
            if cluster != self._old_cluster or self._must_restart:
                log.info("consumer %s: %s; restarting the fetchers", me,
                         "the cluster changed" if cluster != self._old_cluster else "resuming")
                await self._stop_and_commit()
                await self._start_fetchers(cluster)
                self._old_cluster = cluster
            return True

        await self._stop_and_commit()
        for topic in changed:
            held = self._held.setdefault(topic, set())
            if not consumers[topic] or not partitions[topic]:
                for name in sorted(held):
                    await release_partition(zk, paths, group, topic, name, me)
                del self._held[topic]
                continue
            mine = assignment(self.strategy, me, consumers[topic], partitions[topic])
            for name in sorted(held - set(mine)):
                await release_partition(zk, paths, group, topic, name, me)
                held.discard(name)
            for name in mine:
                if name in held:
                    continue
                if not await claim_partition(zk, paths, group, topic, name, me):
                    log.info("consumer %s: partition %s of %s is still owned by another consumer", me, name, topic)
                    return False
                held.add(name)
                self._claimed[(topic, name)] = await self._load_start(topic, name)
            log.info("consumer %s: owns %s of %s", me, ", ".join(sorted(held)) or "nothing", topic)
        await self._start_fetchers(cluster)
        self._old_consumers, self._old_partitions, self._old_cluster = consumers, partitions, cluster
        return True

    async def _load_start(self, topic: str, name: str) -> TopicPartitionOffset:
        consumer = self._consumer
        partition = _partition(name)
        stored = await consumer.offset_storage.load(self.group, topic, partition)
        return stored or TopicPartitionOffset(topic, partition, consumer.config.initial_offset)

    async def _stop_and_commit(self) -> None:
        await self._consumer._stop_fetchers()
        await self._consumer.commit_offsets()

    async def _start_fetchers(self, cluster: dict[int, BrokerNodes]) -> None:
        """§4.4 step 5: a random master/slave per held partition, connections up, fetchers on."""
        plan: dict[str, list[FetchAssignment]] = {}
        urls: set[str] = set()
        for topic in self._consumer._topics():
            running = self._consumer._fetchers_of(topic)
            entries = []
            for name in sorted(self._held.get(topic, ())):
                partition = _partition(name)
                nodes = cluster.get(partition.broker_id)
                candidates = nodes.urls() if nodes is not None else []
                if not candidates:
                    log.error("consumer %s: no broker registered for partition %s of %s", self.consumer_id, name,
                              topic)
                    continue
                url = self._rng.choice(candidates)
                fetcher = running.get(partition)
                if fetcher is not None:
                    entry = FetchAssignment(partition, url, fetcher.position(), fetcher.modified)
                else:
                    start = self._claimed.get((topic, name)) or await self._load_start(topic, name)
                    entry = FetchAssignment(partition, url, start)
                entries.append(entry)
                urls.add(url)
            plan[topic] = entries
        new = urls - self._urls
        for url in new:
            self._pool.acquire(url, self)
        failed = await connect_all(self._pool, new)
        if failed:
            self._release_urls(new)
            raise BrokerUnavailableError(f"cannot connect to {', '.join(failed)}")
        self._release_urls(self._urls - urls)
        self._urls = urls
        if self._suspended:   # resumed on the next connection; positions stay with the fetchers
            self._must_restart = True
            return
        self._claimed.clear()
        self._consumer._assign(plan)
        self._must_restart = False

    async def _release_all(self) -> None:
        """After a failed attempt: stop, commit, delete every owner node naming us, forget all."""
        try:
            await self._stop_and_commit()
        except Exception as exc:
            log.warning("consumer %s: committing offsets before releasing failed: %r", self.consumer_id, exc)
        self._consumer._forget_fetchers()
        try:
            await self._delete_owner_nodes(set(self._consumer._topics()) | set(self._held))
            self._must_clear_owners = False
        except Exception as exc:
            self._must_clear_owners = True
            log.warning("consumer %s: releasing partitions failed: %r", self.consumer_id, exc)
        self._reset_state()

    async def _delete_owner_nodes(self, topics: Iterable[str]) -> None:
        zk, paths = self._session.zk, self.paths
        for topic in sorted(topics):
            for name in await owned_partitions(zk, paths, self.group, topic, self.consumer_id):
                await release_partition(zk, paths, self.group, topic, name, self.consumer_id)

    def _reset_state(self) -> None:
        self._held.clear()
        self._claimed.clear()
        self._old_consumers.clear()
        self._old_partitions.clear()
        self._old_cluster = None

    def _release_urls(self, urls: Iterable[str]) -> None:
        for url in urls:
            self._pool.release(url, self)

"""The consumer: a member of a consumer group that fetches the partitions of the topics it
subscribes to and hands their messages to listeners (protocol §6.2, broker.md §4.5–§4.9).

``subscribe(topic, listener)`` starts one ``PartitionFetcher`` per partition, from the offset the
``OffsetStorage`` holds for the group (or the initial offset: 0, or the end with
``consume_from_max_offset``). A listener is a plain callable (run on the trio thread: it must not
block), an async callable, or absent, in which case the messages go to ``async for message in
consumer``. Offsets are committed every ``commit_offset_period`` (5 s), on ``commit_offsets()``
and when the consumer closes; closing cancels running deliveries first, so messages in flight are
delivered again next time (at-least-once). Messages the reject handler stores for local recovery
are redelivered by a background task. ``get`` is the synchronous pull API by partition and offset.

In direct-connect mode the partitions of a subscription are the ones named in
``subscribe(partitions=[...])``, else the source's list (see ``StaticPartitionSource``). With a
``GroupSource`` (ZooKeeper, ``MetaqClient(zk_connect=...)``) the consumer joins its group instead:
``subscribe`` registers it with the topic and returns after the first rebalance, and from then on
``rebalance.GroupMember`` decides which partitions it fetches (broker.md §3.6, §4.4), stopping the
fetchers and committing their offsets before any ownership change. The consumer itself never talks
to ZooKeeper.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import attrs
import trio

from metaq_client.answers import offset_of, text_of
from metaq_client.connection import ConnectionPool
from metaq_client.errors import (
    BrokerError, ConsumptionInterrupted, InvalidGroupError, InvalidRecordError,
)
from metaq_client.fetcher import PartitionFetcher
from metaq_client.lifecycle import NurseryOwner
from metaq_client.listeners import Listener, MessageQueue, MessageStream, invoke
from metaq_client.message import Message, MessageSet, Partition, decode_message_set
from metaq_client.offsets import OffsetStorage, TopicPartitionOffset
from metaq_client.recover import RecoverStore, local_recover
from metaq_client.source import GroupSource, PartitionSource
from metaq_core.naming import validate_topic
from metaq_core.wire import LONG_MAX, Get, Result
from zkmeta.balance import Strategy

if TYPE_CHECKING:
    from metaq_client.rebalance import GroupMember

log = logging.getLogger("metaq.client")

DEFAULT_MAX_SIZE = 1024 * 1024
_GROUP_FORBIDDEN = frozenset("~!#$%^&*()+=`'\",;/?[]<>.: ")

RejectConsumptionHandler = Callable[[Message, "Consumer"], Awaitable[None] | None]


def validate_group(group: object) -> str:
    """Return ``group`` if the Java client accepts it as a group name (protocol §6.2)."""
    if not isinstance(group, str) or not group:
        raise InvalidGroupError(f"a consumer group is a non-empty string, not {group!r}")
    bad = sorted(set(group) & _GROUP_FORBIDDEN)
    if bad:
        raise InvalidGroupError(f"group {group!r} contains {''.join(bad)!r}; a group name may not contain "
                                f"any of {''.join(sorted(_GROUP_FORBIDDEN))!r}")
    return group


def _strategy(value: Strategy | str) -> Strategy:
    return value if isinstance(value, Strategy) else Strategy.from_name(value)


@attrs.frozen(kw_only=True)
class ConsumerConfig:
    """Java ``ConsumerConfig`` settings (times in seconds)."""

    offset: int = 0
    consume_from_max_offset: bool = False
    #: Java's ``maxDelayFetchTimeInMills`` and its default. After a fetch finds nothing new the
    #: next waits ``max/10``, ``max/10`` more per further miss, up to ``max``; a listener failing
    #: on the first message of a batch is retried after ``retries × max/10`` and goes to the reject
    #: handler after ``max_fetch_retries`` retries (about 10 s with 5 s). So a consumer that has
    #: caught up delivers new messages up to 0.5 s late. Latency-sensitive code sets 0.01 (1 ms
    #: steps, at most 10 ms): an idle partition is then polled 100 times a second, and a failing
    #: listener reaches the reject handler after about 20 ms instead of 10 s — which is why the
    #: default stays Java's.
    max_delay_fetch_time: float = 5.0
    max_fetch_retries: int = 5
    max_increase_fetch_data_retries: int = 5
    commit_offset_period: float = 5.0
    recover_delay: float = 5.0
    recover_interval: float = 300.0
    #: ZooKeeper mode: the consumer id suffix (``<group>_<consumer_id>``); None = 1.4.4's
    #: ``<local IP>-<time ms>-<n>``.
    consumer_id: str | None = None
    #: ZooKeeper mode: ``Strategy.DEFAULT`` or ``Strategy.CONSIST`` (or their Java names).
    load_balance_strategy: Strategy = attrs.field(default=Strategy.DEFAULT, converter=_strategy)

    @property
    def initial_offset(self) -> int:
        """Where a partition without a stored offset starts; the maximum long asks for the end."""
        return LONG_MAX if self.consume_from_max_offset else self.offset


@attrs.define
class _Subscription:
    listener: Listener
    max_size: int = DEFAULT_MAX_SIZE
    fetchers: list[PartitionFetcher] = attrs.Factory(list)


@attrs.frozen
class FetchAssignment:
    """One partition a group member hands to the consumer: fetch it from ``url``, starting at
    ``start``; ``modified`` says that ``start`` has not been committed yet."""

    partition: Partition
    url: str
    start: TopicPartitionOffset
    modified: bool = False


class Consumer(NurseryOwner):
    """``async with client.consumer(group) as consumer``: see the module docstring."""

    def __init__(self, pool: ConnectionPool, source: PartitionSource, recover_store: RecoverStore, group: str,
                 config: ConsumerConfig | None = None, *, offset_storage: OffsetStorage,
                 reject_handler: RejectConsumptionHandler = local_recover) -> None:
        self.group = validate_group(group)
        self.config = config or ConsumerConfig()
        self.offset_storage = offset_storage
        self.recover_store = recover_store
        self._pool = pool
        self._source = source
        self._reject_handler: RejectConsumptionHandler
        self.set_reject_handler(reject_handler)
        self._subscriptions: dict[str, _Subscription] = {}
        self._queue = MessageQueue()
        self._commit_lock = trio.Lock()
        self._running: dict[PartitionFetcher, tuple[trio.CancelScope, trio.Event]] = {}
        self._member: GroupMember | None = None

    @property
    def consumer_id(self) -> str | None:
        """The id under which this consumer is registered in its group (ZooKeeper mode)."""
        return self._member.consumer_id if self._member is not None else None

    @property
    def member(self) -> GroupMember | None:
        """The group membership (ZooKeeper mode), None in direct-connect mode."""
        return self._member

    def set_reject_handler(self, handler: RejectConsumptionHandler) -> None:
        """Who takes a message after ``max_fetch_retries`` failed deliveries (1.4.4); None is refused."""
        if handler is None:
            raise ValueError("the reject consumption handler cannot be None")
        self._reject_handler = handler

    # ---------------------------------------------------------------- lifecycle

    async def _after_enter(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._commit_loop, name=f"metaq commits {self.group}")
        nursery.start_soon(self._recover_loop, name=f"metaq recover {self.group}")

    async def _after_exit(self) -> None:
        self._queue.close()
        try:
            await self.commit_offsets()
        except Exception:
            log.exception("group %s: the final offset commit failed", self.group)
        if self._member is not None:
            await self._member.leave()

    # ---------------------------------------------------------------- subscribing

    async def subscribe(self, topic: str, listener: Listener | None = None, *,
                        partitions: Sequence[int] | None = None, max_size: int = DEFAULT_MAX_SIZE) -> None:
        """Consume ``topic``: with ``listener``, or through ``async for`` when it is None.

        ``partitions``: the partition numbers to consume (direct-connect); default: the source's.
        In ZooKeeper mode the group assigns the partitions: ``partitions`` must be None, and the
        call returns once this consumer is registered and the first rebalance has run."""
        nursery = self._open_nursery()
        validate_topic(topic)
        if topic in self._subscriptions:
            raise ValueError(f"topic {topic!r} is already subscribed by this consumer")
        if isinstance(self._source, GroupSource):
            if partitions is not None:
                raise ValueError("with ZooKeeper the group assigns the partitions: subscribe without partitions")
            return await self._join(nursery, topic, _Subscription(listener or self._queue, max_size))
        subscription = self._subscriptions[topic] = _Subscription(listener or self._queue, max_size)
        try:
            chosen = await self._source.subscribe_partitions(topic, self._pool, partitions)
            for partition in chosen:
                start = (await self.offset_storage.load(self.group, topic, partition)
                         or TopicPartitionOffset(topic, partition, self.config.initial_offset))
                fetcher = self._new_fetcher(topic, subscription,
                                            FetchAssignment(partition, self._source.broker_url(partition.broker_id),
                                                            start))
                subscription.fetchers.append(fetcher)
        except BaseException:
            del self._subscriptions[topic]
            raise
        if not subscription.fetchers:
            log.warning("group %s: topic %s has no partition to consume", self.group, topic)
        for fetcher in subscription.fetchers:
            self._launch(fetcher)

    async def _join(self, nursery: trio.Nursery, topic: str, subscription: _Subscription) -> None:
        if self._member is None:
            member = self._source.group_member(self)
            await nursery.start(member.run)
            self._member = member
        self._subscriptions[topic] = subscription
        await self._member.subscribe(topic)

    def _new_fetcher(self, topic: str, subscription: _Subscription, assigned: FetchAssignment) -> PartitionFetcher:
        config = self.config
        fetcher = PartitionFetcher(
            pool=self._pool, url=assigned.url, group=self.group, topic=topic, partition=assigned.partition,
            start=assigned.start, max_size=subscription.max_size, listener=subscription.listener,
            reject=self._reject, max_delay=config.max_delay_fetch_time, max_fetch_retries=config.max_fetch_retries,
            max_increase_fetch_data_retries=config.max_increase_fetch_data_retries)
        fetcher.modified = assigned.modified
        log.info("group %s: consuming %s from offset %d (%s)", self.group, fetcher.name, assigned.start.offset,
                 assigned.url)
        return fetcher

    def _launch(self, fetcher: PartitionFetcher) -> None:
        scope, finished = trio.CancelScope(), trio.Event()
        self._running[fetcher] = (scope, finished)
        self._open_nursery().start_soon(self._run_fetcher, fetcher, scope, finished,
                                        name=f"metaq fetch {fetcher.name}")

    async def _run_fetcher(self, fetcher: PartitionFetcher, scope: trio.CancelScope, finished: trio.Event) -> None:
        try:
            with scope:
                await fetcher.run()
        finally:
            self._running.pop(fetcher, None)
            finished.set()

    # ------------------------------------------------- what the group member drives

    def _topics(self) -> list[str]:
        """The subscribed topics, in subscription order (the registration data)."""
        return list(self._subscriptions)

    async def _stop_fetchers(self) -> None:
        """Stop every fetcher and wait until it has (broker.md §4.8): a delivery in progress is
        cancelled and its message not counted as consumed; positions stay for the commit."""
        running = list(self._running.values())
        for scope, _ in running:
            scope.cancel()
        for _, finished in running:
            await finished.wait()

    def _fetchers_of(self, topic: str) -> dict[Partition, PartitionFetcher]:
        subscription = self._subscriptions.get(topic)
        return {f.partition: f for f in subscription.fetchers} if subscription else {}

    def _assign(self, plan: Mapping[str, Sequence[FetchAssignment]]) -> None:
        """Fetch exactly the partitions of ``plan`` (fetchers must be stopped first)."""
        if self._running:
            raise RuntimeError("fetchers must be stopped before the partitions are reassigned")
        for topic, subscription in self._subscriptions.items():
            subscription.fetchers = [self._new_fetcher(topic, subscription, a) for a in plan.get(topic, ())]
            for fetcher in subscription.fetchers:
                self._launch(fetcher)

    def _forget_fetchers(self) -> None:
        """Drop every (stopped) fetcher and its position without committing it."""
        for subscription in self._subscriptions.values():
            subscription.fetchers = []

    def assignment(self) -> dict[str, list[Partition]]:
        """The partitions this consumer fetches now (fetchers running), by topic."""
        return {topic: sorted(f.partition for f in s.fetchers if f in self._running)
                for topic, s in self._subscriptions.items()}

    def __aiter__(self) -> MessageStream:
        """``async for message in consumer``: the messages of subscriptions without a listener."""
        self._open_nursery()
        return self._queue.iterate()

    async def _reject(self, message: Message) -> None:
        await invoke(self._reject_handler, message, self)

    # ---------------------------------------------------------------- offsets

    def positions(self) -> list[TopicPartitionOffset]:
        """The consumed position (what a commit writes) of every partition."""
        return [f.position() for s in self._subscriptions.values() for f in s.fetchers]

    async def commit_offsets(self) -> None:
        """Write the positions that changed since the last commit to the offset storage."""
        async with self._commit_lock:
            changed = [f for s in self._subscriptions.values() for f in s.fetchers if f.modified]
            positions = [f.position() for f in changed]
            if not positions:
                return
            await self.offset_storage.commit(self.group, positions)
            for fetcher, position in zip(changed, positions):
                if fetcher.position() == position:
                    fetcher.modified = False

    async def _commit_loop(self) -> None:
        while True:
            await trio.sleep(self.config.commit_offset_period)
            try:
                await self.commit_offsets()
            except Exception:
                log.exception("group %s: offset commit failed", self.group)

    # ---------------------------------------------------------------- local recover

    async def _recover_loop(self) -> None:
        await trio.sleep(self.config.recover_delay)
        while True:
            for topic, subscription in list(self._subscriptions.items()):
                await self._recover(topic, subscription.listener)
            await trio.sleep(self.config.recover_interval)

    async def _recover(self, topic: str, listener: Listener) -> None:
        try:
            pending = await self.recover_store.pending(self.group, topic)
        except OSError as exc:
            log.error("group %s: cannot read the recover store of %s: %s", self.group, topic, exc)
            return
        for name, message in pending:
            try:
                await invoke(listener, message)
            except ConsumptionInterrupted:
                return
            except Exception:
                log.exception("group %s: redelivery of recovered message %d of %s failed; retried later",
                              self.group, message.id, topic)
                return
            await self.recover_store.remove(self.group, topic, name)
            log.info("group %s: recovered message %d of %s delivered", self.group, message.id, topic)

    # ---------------------------------------------------------------- pull API

    async def get(self, topic: str, partition: int | Partition, offset: int,
                  max_size: int = DEFAULT_MAX_SIZE) -> MessageSet:
        """Fetch once at ``offset``: the complete messages there and ``next_offset`` (Java
        ``MessageConsumer.get``). Nothing there (404/403) → no messages, same offset; an
        out-of-range offset is moved as the broker says (301); garbage raises InvalidRecordError."""
        self._open_nursery()
        if not isinstance(partition, Partition):
            found = await self._source.subscribe_partitions(topic, self._pool, [partition])
            if len(found) != 1:
                raise ValueError(f"partition number {partition} of {topic!r} names {len(found)} partitions "
                                 f"({', '.join(map(str, found)) or 'none'}): pass a Partition(broker_id, number)")
            (partition,) = found
        url = self._source.broker_url(partition.broker_id)
        for _ in range(3):
            answer = await self._pool.request(url, Get(topic, self.group, partition.partition, offset, max_size, 0))
            if not isinstance(answer, Result):
                batch = decode_message_set(topic, partition, offset, answer.data)
                if batch.invalid and not batch.messages:
                    raise InvalidRecordError(f"{topic}-{partition}: the record at offset {batch.next_offset} "
                                             "is invalid (bad checksum or format)")
                return batch
            if answer.status in (403, 404):
                return MessageSet([], [], offset)
            moved_to = offset_of(answer) if answer.status == 301 else None
            if moved_to is None or moved_to == offset:
                break
            offset = moved_to
        raise BrokerError(answer.status, text_of(answer))

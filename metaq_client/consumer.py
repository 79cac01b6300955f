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
``subscribe(partitions=[...])``, else the source's list (see ``StaticPartitionSource``). The
consumer never talks to ZooKeeper and never balances partitions between group members.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

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
from metaq_client.source import PartitionSource
from metaq_core.naming import validate_topic
from metaq_core.wire import LONG_MAX, Get, Result

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


@attrs.frozen(kw_only=True)
class ConsumerConfig:
    """Java ``ConsumerConfig`` settings (times in seconds)."""

    offset: int = 0
    consume_from_max_offset: bool = False
    max_delay_fetch_time: float = 5.0
    max_fetch_retries: int = 5
    max_increase_fetch_data_retries: int = 5
    commit_offset_period: float = 5.0
    recover_delay: float = 5.0
    recover_interval: float = 300.0

    @property
    def initial_offset(self) -> int:
        """Where a partition without a stored offset starts; the maximum long asks for the end."""
        return LONG_MAX if self.consume_from_max_offset else self.offset


@attrs.define
class _Subscription:
    listener: Listener
    fetchers: list[PartitionFetcher] = attrs.Factory(list)


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

    # ---------------------------------------------------------------- subscribing

    async def subscribe(self, topic: str, listener: Listener | None = None, *,
                        partitions: Sequence[int] | None = None, max_size: int = DEFAULT_MAX_SIZE) -> None:
        """Consume ``topic``: with ``listener``, or through ``async for`` when it is None.

        ``partitions``: the partition numbers to consume (direct-connect); default: the source's."""
        nursery = self._open_nursery()
        validate_topic(topic)
        if topic in self._subscriptions:
            raise ValueError(f"topic {topic!r} is already subscribed by this consumer")
        subscription = self._subscriptions[topic] = _Subscription(listener or self._queue)
        try:
            chosen = await self._source.subscribe_partitions(topic, self._pool, partitions)
            config = self.config
            for partition in chosen:
                start = (await self.offset_storage.load(self.group, topic, partition)
                         or TopicPartitionOffset(topic, partition, config.initial_offset))
                fetcher = PartitionFetcher(
                    pool=self._pool, url=self._source.broker_url(partition.broker_id), group=self.group,
                    topic=topic, partition=partition, start=start, max_size=max_size,
                    listener=subscription.listener, reject=self._reject,
                    max_delay=config.max_delay_fetch_time, max_fetch_retries=config.max_fetch_retries,
                    max_increase_fetch_data_retries=config.max_increase_fetch_data_retries)
                subscription.fetchers.append(fetcher)
                log.info("group %s: consuming %s from offset %d", self.group, fetcher.name, start.offset)
        except BaseException:
            del self._subscriptions[topic]
            raise
        if not subscription.fetchers:
            log.warning("group %s: topic %s has no partition to consume", self.group, topic)
        for fetcher in subscription.fetchers:
            nursery.start_soon(fetcher.run, name=f"metaq fetch {fetcher.name}")

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
            (partition,) = await self._source.subscribe_partitions(topic, self._pool, [partition])
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

"""The fetch loop of one consumed partition (protocol §6.2, broker.md §4.7), as the Java
``SimpleFetchManager`` runs it:

* ``value`` → deliver the complete records in order; the offset advances past each message the
  listener returns from (``+= bytes consumed``). A failing listener stops the batch at that
  message; a batch that consumed nothing counts a retry and is fetched again after
  ``retries × maxDelay/10``; progress resets the count. When the count exceeds ``maxFetchRetries``
  the next delivery skips the listener: the first message goes to the reject handler and the
  offset moves past it (1.4.4).
* 404/403, a body without a complete record, other statuses and lost connections → fetch again
  after a delay that grows by ``maxDelay/10`` per miss up to ``maxDelay`` (5 s).
* 301 → continue at the offset given, reset the retries, fetch again at once.
* ``maxSize`` halves back towards its configured size when an answer is under half of it, and
  doubles (Java: until it is beyond 2 MiB) after more than ``maxIncreaseFetchDataRetries`` answers
  without a complete record. Unlike Java, those answers are counted apart from the listener
  retries, so a message larger than ``maxSize`` reaches its listener instead of the reject handler.
* An undecodable record (bad checksum, impossible length, bad attribute block) → ask the broker
  with ``offset`` and continue where it says (a segment start: earlier messages are delivered
  again). If the same record is still undecodable after that, it is corrupt in the broker's log:
  it is logged and skipped using its header's length.
* Interruption rolls back (1.4.4): a delivery cancelled, or a listener raising
  ConsumptionInterrupted, leaves the offset just before that message, which is delivered again.
* Manual acknowledgement through ``message.acks`` (``auto_ack = False``, ``ack()``, ``rollback()``).

A fetcher owns the position of its partition; committing it is the consumer's job.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import trio

from metaq_client.answers import offset_of, text_of
from metaq_client.connection import ConnectionPool
from metaq_client.errors import ConsumptionInterrupted, MetaqClientError
from metaq_client.listeners import Listener, invoke
from metaq_client.message import MAX_MESSAGE_SIZE, Message, MessageSet, Partition, PartitionAcks, decode_message_set
from metaq_client.offsets import TopicPartitionOffset
from metaq_core.wire import Get, OffsetRequest, Result

log = logging.getLogger("metaq.client")

RejectHandler = Callable[[Message], Awaitable[None]]


class PartitionFetcher:
    """Fetches one partition of one topic for one consumer group and delivers its messages."""

    def __init__(self, *, pool: ConnectionPool, url: str, group: str, topic: str, partition: Partition,
                 start: TopicPartitionOffset, max_size: int, listener: Listener, reject: RejectHandler,
                 max_delay: float, max_fetch_retries: int, max_increase_fetch_data_retries: int) -> None:
        if max_size <= 0:
            raise ValueError(f"max_size must be positive, not {max_size}")
        self._pool = pool
        self._url = url
        self.group = group
        self.topic = topic
        self.partition = partition
        self._listener = listener
        self._reject = reject
        self._max_delay = max_delay
        self._step = max_delay / 10
        self._max_fetch_retries = max_fetch_retries
        self._max_increase_retries = max_increase_fetch_data_retries
        self.offset = start.offset        # where the next fetch starts (temporary when not auto-ack)
        self.committed = start.offset     # what the consumer commits
        self.msg_id = start.msg_id
        self.modified = False
        self.max_size = self.original_max_size = max_size
        self.retries = 0
        self.partial_answers = 0
        self.delay = 0.0
        self.acks = PartitionAcks()
        self._resynced_at: int | None = None

    @property
    def name(self) -> str:
        return f"{self.topic}[{self.partition}]"

    def position(self) -> TopicPartitionOffset:
        return TopicPartitionOffset(self.topic, self.partition, self.committed, self.msg_id)

    async def run(self) -> None:
        while True:
            if self.delay > 0:
                await trio.sleep(self.delay)
            await self.fetch_once()

    async def fetch_once(self) -> None:
        get = Get(self.topic, self.group, self.partition.partition, self.offset, self.max_size, 0)
        try:
            answer = await self._pool.request(self._url, get)
        except MetaqClientError as exc:
            log.warning("%s: fetch at %d failed: %s", self.name, self.offset, exc)
            return self._missed()
        if isinstance(answer, Result):
            return self._answered(answer)
        if len(answer.data) < self.max_size // 2:
            self._shrink()
        batch = decode_message_set(self.topic, self.partition, self.offset, answer.data)
        if not batch.messages:
            if batch.invalid:
                return await self._resync(batch)
            return self._no_complete_record()
        self.partial_answers = 0
        if self.retries > self._max_fetch_retries:
            return await self._give_up(batch.messages[0], batch.ends[0])
        if await self._deliver(batch) and batch.invalid:
            await self._resync(batch)

    # ------------------------------------------------------------------ positions

    def _advance(self, offset: int, msg_id: int, *, commit: bool) -> None:
        self.offset = offset
        if commit:
            self.committed, self.msg_id, self.modified = offset, msg_id, True

    def _missed(self) -> None:
        self.delay = min(self.delay + self._step, self._max_delay)

    # ------------------------------------------------------------------ answers

    def _answered(self, answer: Result) -> None:
        moved_to = offset_of(answer) if answer.status == 301 else None
        if moved_to is not None and moved_to != self.offset:
            log.info("%s: offset %d is out of range; the broker moves it to %d", self.name, self.offset, moved_to)
            self._advance(moved_to, -1, commit=True)
            self.retries = 0
            self.delay = 0.0
            return
        if answer.status not in (403, 404):
            log.warning("%s: fetch at %d answered %d: %s", self.name, self.offset, answer.status, text_of(answer))
        self._missed()

    def _no_complete_record(self) -> None:
        if self.partial_answers > self._max_increase_retries:
            self._grow()
        self.partial_answers += 1
        self._missed()

    def _grow(self) -> None:
        if self.max_size > MAX_MESSAGE_SIZE:
            log.warning("%s: maxSize %d is already beyond %d bytes", self.name, self.max_size, MAX_MESSAGE_SIZE)
            return
        self.max_size *= 2
        log.warning("%s: no complete message in %d answers; maxSize doubled to %d bytes",
                    self.name, self.partial_answers, self.max_size)

    def _shrink(self) -> None:
        if self.max_size < self.original_max_size:
            self.max_size = self.original_max_size
        elif self.max_size > self.original_max_size:
            self.max_size //= 2

    # ------------------------------------------------------------------ delivery

    async def _deliver(self, batch: MessageSet) -> bool:
        """Deliver ``batch`` in order; True when every message was consumed."""
        acks = self.acks
        consumed = 0
        complete = False
        delay = None
        for message, end in zip(batch.messages, batch.ends):
            message.acks = acks
            acks.reset()
            try:
                await invoke(self._listener, message)
            except ConsumptionInterrupted:
                log.info("%s: delivery of message %d at %d interrupted; it will be delivered again",
                         self.name, message.id, message.offset)
                delay = self._step
                break
            except Exception:
                log.exception("%s: the listener failed on message %d at offset %d",
                              self.name, message.id, message.offset)
                break
            consumed += 1
            if acks.auto_ack:
                self._advance(end, message.id, commit=True)
                continue
            if acks.rolled_back:
                self.offset = self.committed
                break
            self._advance(end, message.id, commit=acks.acked)
            if acks.acked:
                break
        else:
            complete = True
        if consumed:
            self.retries = 0
        elif delay is None:
            self.retries += 1
        self.delay = delay if delay is not None else min(self.retries * self._step, self._max_delay)
        return complete

    async def _give_up(self, message: Message, end: int) -> None:
        message.acks = self.acks
        try:
            await self._reject(message)
        except Exception:
            log.exception("%s: the reject handler failed on message %d", self.name, message.id)
            return self._missed()
        self.retries = 0
        self._advance(end, message.id, commit=True)
        self.delay = 0.0

    async def _resync(self, batch: MessageSet) -> None:
        at = batch.next_offset
        if self._resynced_at == at and batch.invalid_end is not None:
            log.error("%s: the record at offset %d is corrupt in the broker's log (still invalid after "
                      "resynchronising); skipping it", self.name, at)
            self._resynced_at = None
            self._advance(batch.invalid_end, -1, commit=self.acks.auto_ack)
            self.delay = 0.0
            return
        try:
            answer = await self._pool.request(
                self._url, OffsetRequest(self.topic, self.group, self.partition.partition, at, 0))
        except MetaqClientError as exc:
            log.warning("%s: offset request failed: %s", self.name, exc)
            return self._missed()
        target = offset_of(answer) if isinstance(answer, Result) and answer.status == 200 else None
        if target is None:
            log.warning("%s: offset request at %d answered %s", self.name, at, getattr(answer, "status", "a value"))
            return self._missed()
        log.warning("%s: invalid record at offset %d; the broker says to continue at %d", self.name, at, target)
        self._resynced_at = at
        self.retries = 0
        self._advance(target, -1, commit=self.acks.auto_ack)
        self.delay = 0.0

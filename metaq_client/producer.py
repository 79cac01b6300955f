"""The producer (protocol §6.1, broker.md §4.10): choose a partition, send one ``put`` with its
checksum (the 7-token 1.4.4 form), and turn the answer into a ``SendResult``.

One attempt per send, no automatic retry. A broker's refusal is a failed ``SendResult`` carrying the
broker's text (``"403"`` for a closed partition); no connection, or a connection lost before the
answer, raises. The trio API takes no timeouts: wrap a send in ``trio.fail_after``. The producer
never reads messages and never keeps state about partitions beyond its selector's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any


from metaq_client.answers import text_of
from metaq_client.connection import ConnectionPool
from metaq_client.errors import BrokerError, NoPartitionError
from metaq_client.lifecycle import NurseryOwner
from metaq_client.listeners import invoke
from metaq_client.message import Message, Partition, SendResult
from metaq_client.selectors import PartitionSelector, RoundRobinSelector, select_partition
from metaq_client.source import PartitionSource
from metaq_core import record
from metaq_core.naming import validate_topic
from metaq_core.wire import Put, Result

log = logging.getLogger("metaq.client")

SendCallback = Callable[[SendResult], Any]
ErrorCallback = Callable[[BaseException], Any]


class Producer(NurseryOwner):
    """Publishes messages; ``async with client.producer() as producer``.

    Leaving the ``async with`` waits for the sends started with ``send_async``."""

    _cancel_on_exit = False

    def __init__(self, pool: ConnectionPool, source: PartitionSource, *,
                 partition_selector: PartitionSelector | None = None, default_topic: str | None = None) -> None:
        self._pool = pool
        self._source = source
        self._selector = partition_selector or RoundRobinSelector()
        self.default_topic = default_topic
        self._valid_topics: set[str] = set()  # names already checked by validate_topic

    def set_default_topic(self, topic: str | None) -> None:
        """Publish topics without partitions of their own to ``topic``'s partitions (1.4.4)."""
        self.default_topic = topic

    async def send(self, topic: str, body: bytes, *, attribute: str | None = None,
                   partition_selector: PartitionSelector | None = None) -> SendResult:
        return await self.send_message(Message(topic, body, attribute), partition_selector=partition_selector)

    async def send_message(self, message: Message, *,
                           partition_selector: PartitionSelector | None = None) -> SendResult:
        """Send ``message``; on success its ``id`` is set."""
        self._open_nursery()
        if message.topic not in self._valid_topics:
            validate_topic(message.topic)
            self._valid_topics.add(message.topic)
        partition = await self._route(message, partition_selector or self._selector)
        flag, data = message.data()
        put = Put(message.topic, partition.partition, flag, record.checksum(data), None, 0, data)
        answer = await self._pool.request(self._source.broker_url(partition.broker_id), put)
        if not isinstance(answer, Result):
            raise BrokerError(0, "a put was answered with a value frame")
        if answer.status == 200:
            msg_id, actual, offset = (answer.body or b"").decode().split(" ")
            message.id = int(msg_id)
            return SendResult(True, int(msg_id), Partition(partition.broker_id, int(actual)), int(offset))
        if answer.status == 403:
            return SendResult(False, error_message="403")
        return SendResult(False, error_message=text_of(answer))

    def send_async(self, message: Message, on_sent: SendCallback, on_error: ErrorCallback | None = None, *,
                   partition_selector: PartitionSelector | None = None) -> None:
        """Send in a task of this producer; ``on_sent(result)`` or ``on_error(exception)`` is called
        (plain or async callables) when it is done. Returns at once."""
        self._open_nursery().start_soon(self._send_and_report, message, on_sent, on_error, partition_selector)

    async def _send_and_report(self, message: Message, on_sent: SendCallback, on_error: ErrorCallback | None,
                               selector: PartitionSelector | None) -> None:
        try:
            result = await self.send_message(message, partition_selector=selector)
        except Exception as exc:
            callback, argument = on_error, exc
            if on_error is None:
                log.error("%s: asynchronous send failed: %s", message.topic, exc)
                return
        else:
            callback, argument = on_sent, result
        try:
            await invoke(callback, argument)
        except Exception:
            log.exception("%s: a send callback failed", message.topic)

    async def _route(self, message: Message, selector: PartitionSelector) -> Partition:
        topic = message.topic
        partitions = await self._source.publish_partitions(topic, self._pool)
        if not partitions and self.default_topic:
            topic = self.default_topic
            partitions = await self._source.publish_partitions(topic, self._pool)
        if not partitions:
            raise NoPartitionError(f"there is no partition for topic {message.topic!r} and no default topic "
                                   "that has one")
        if len(partitions) == 1 and partitions[0].is_random:
            return partitions[0]  # a fixed broker URL: the broker chooses, no selector (Java)
        return select_partition(selector, topic, partitions, message)

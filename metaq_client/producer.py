"""The producer (protocol §6.1, broker.md §4.10): choose a partition, send one ``put`` with its
checksum (the 7-token 1.4.4 form), and turn the answer into a ``SendResult``.

One attempt per send, no automatic retry. A broker's refusal is a failed ``SendResult`` carrying the
broker's text (``"403"`` for a closed partition); no connection, or a connection lost before the
answer, raises. The trio API takes no timeouts: wrap a send in ``trio.fail_after``. The producer
never reads messages and never keeps state about partitions beyond its selector's.

The frame is built by ``metaq_client.codec`` (one allocation, checksum included). Connected
directly to one broker URL without a topic map, ``send`` skips the ``Message`` and the routing:
the broker picks the partition, as Java's producer lets it with a fixed server URL.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from metaq_client.answers import text_of
from metaq_client.codec import Outbox, PutAnswers, put_frame, put_result, topic_token
from metaq_client.connection import ConnectionPool, next_opaque
from metaq_client.errors import BrokerError, NoPartitionError
from metaq_client.lifecycle import NurseryOwner
from metaq_client.listeners import invoke
from metaq_client.message import Message, Partition, SendResult, as_bytes, check_attribute
from metaq_client.selectors import PartitionSelector, RoundRobinSelector, select_partition
from metaq_client.source import PartitionSource, StaticPartitionSource
from metaq_core.wire import Result, Value

log = logging.getLogger("metaq.client")

_MAX_CACHED_PARTITIONS = 4096

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
        self._tokens: dict[str, bytes] = {}  # topic → its checked header token
        self._partitions: dict[int, dict[int, Partition]] = {}  # broker id → number → one shared Partition
        self._put_answers: dict[int, PutAnswers] = {}  # broker id → how its put answers become SendResults
        self._outbox: Outbox | None = None  # the fixed route's connection's outbox, while it is open
        #: direct-connect without a topic map: every put goes to one URL with partition -1 and the
        #: broker picks (no selector, no default topic): (url, broker id), else None
        self.fixed_route: tuple[str, int] | None = (
            (source.url, source.broker_id) if type(source) is StaticPartitionSource and source.topics is None
            else None)

    def set_default_topic(self, topic: str | None) -> None:
        """Publish topics without partitions of their own to ``topic``'s partitions (1.4.4)."""
        self.default_topic = topic

    async def send(self, topic: str, body: bytes, *, attribute: str | None = None,
                   partition_selector: PartitionSelector | None = None) -> SendResult:
        fixed = self.fixed_route
        if fixed is None:
            return await self.send_message(Message(topic, body, attribute), partition_selector=partition_selector)
        # put_frame inlined: the same checks as Message(topic, body, attribute) and send_message
        if self._nursery is None:
            self._open_nursery()
        token = self._tokens.get(topic) or self._token(topic)
        if type(body) is not bytes:
            body = as_bytes(body)
        if attribute is not None:
            if type(attribute) is not str:
                check_attribute(attribute)
            attribute = attribute.encode("utf-8")
        outbox = self._outbox
        if outbox is None or outbox.closed:
            url = fixed[0]
            conn = self._pool.live_connection(url) or await self._pool.connection(url)
            outbox = self._outbox = conn.outbox
        broker_id = fixed[1]
        answer = await outbox.put(token, -1, body, attribute,
                                  self._put_answers.get(broker_id) or self._answers_of(broker_id))
        return answer if type(answer) is SendResult else self.result_of(answer, broker_id)

    async def send_message(self, message: Message, *,
                           partition_selector: PartitionSelector | None = None) -> SendResult:
        """Send ``message``; on success its ``id`` is set."""
        self._open_nursery()
        topic = message.topic
        if topic not in self._tokens:
            self._token(topic)
        partition = await self._route(message, partition_selector or self._selector)
        frame, opaque = self.put_frame(topic, message.body, message.attribute, partition.partition)
        url = self._source.broker_url(partition.broker_id)
        conn = self._pool.live_connection(url) or await self._pool.connection(url)
        broker_id = partition.broker_id
        answers = self._put_answers.get(broker_id) or self._answers_of(broker_id)
        answer = await conn.request_frame(frame, opaque, answers)
        result = answer if type(answer) is SendResult else self.result_of(answer, broker_id)
        if result.success:
            message.id = result.message_id
        return result

    def put_frame(self, topic: str, body: bytes, attribute: str | None, partition: int) -> tuple[bytes, int]:
        """The encoded put frame of a message and its opaque (a fresh one). Checks the topic name
        (InvalidTopicError), the body (bytes-like) and the attribute (str or None) as ``Message``
        does (TypeError). Thread-safe: the blocking facade calls it from its callers' threads."""
        token = self._tokens.get(topic) or self._token(topic)
        if type(body) is not bytes:
            body = as_bytes(body)
        if attribute is not None:
            if type(attribute) is not str:
                check_attribute(attribute)
            attribute = attribute.encode("utf-8")
        opaque = next_opaque()
        return put_frame(token, partition, body, attribute, opaque), opaque

    def _answers_of(self, broker_id: int) -> PutAnswers:
        answers = self._put_answers[broker_id] = PutAnswers(
            broker_id, self._partitions_of(broker_id), SendResult, Partition, _MAX_CACHED_PARTITIONS)
        return answers

    def _partitions_of(self, broker_id: int) -> dict[int, Partition]:
        partitions = self._partitions.get(broker_id)
        if partitions is None:
            partitions = self._partitions[broker_id] = {}
        return partitions

    def result_of(self, answer: Result | Value, broker_id: int) -> SendResult:
        """The ``SendResult`` of a put's answer (thread-safe)."""
        if type(answer) is not Result:
            raise BrokerError(0, "a put was answered with a value frame")
        status = answer.status
        if status == 200:
            try:
                return put_result(answer.body, broker_id, self._partitions_of(broker_id), SendResult, Partition,
                                  _MAX_CACHED_PARTITIONS)
            except ValueError:
                raise BrokerError(200, f"a put was answered {text_of(answer)!r}") from None
        if status == 403:
            return SendResult(False, error_message="403")
        return SendResult(False, error_message=text_of(answer))

    def _token(self, topic: str) -> bytes:
        token = self._tokens[topic] = topic_token(topic)
        return token

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

"""What applications hand to and receive from the client: ``Message``, ``Partition``,
``SendResult``, ``PartitionAcks``, and the decoding of a fetched message set into messages.

Decoding checks every record against its CRC (through ``metaq_core.record``, never by hand) and
stops at the first record it cannot trust (protocol §4.4, §5.2.4, §6.2). This module holds values
and pure functions; it does no I/O.
"""

from __future__ import annotations

from typing import NamedTuple

import attrs

from metaq_client.errors import ReadOnlyMessageError
from metaq_core import record
from metaq_core.errors import MetaqError

MAX_MESSAGE_SIZE = 2 * 1024 * 1024
"""Java's ``MessageUtils.MAX_READ_BUFFER_SIZE``: a longer record is invalid, and ``maxSize``
stops doubling once it is beyond this."""


class Partition(NamedTuple):
    """A partition of a topic on one broker, written ``<brokerId>-<partition>`` as in ZooKeeper.

    Partition number -1 means "any partition of that broker, chosen by the broker at random"
    (Java's ``Partition.RandomPartiton``, sent with a fixed server URL). Immutable, hashable and
    ordered by (broker id, partition number); a named tuple, so building one costs little."""

    broker_id: int
    partition: int

    def __str__(self) -> str:
        return f"{self.broker_id}-{self.partition}"

    @property
    def is_random(self) -> bool:
        return self.partition == -1


@attrs.define
class PartitionAcks:
    """Acknowledgement mode of one consumed partition (Java ``Partition.setAutoAck/ack/rollback``).

    A listener may set ``auto_ack = False`` (it sticks for the partition); from then on the
    consumed offset advances only on ``ack()`` (delivery stops after the acked message) and falls
    back to the last acked position on ``rollback()``; until either is called, delivered messages
    accumulate in a temporary offset."""

    auto_ack: bool = True
    acked: bool = attrs.field(default=False, init=False)
    rolled_back: bool = attrs.field(default=False, init=False)

    def ack(self) -> None:
        self._check_manual("ack")
        self.acked = True

    def rollback(self) -> None:
        self._check_manual("rollback")
        self.rolled_back = True

    def reset(self) -> None:
        self.acked = self.rolled_back = False

    def _check_manual(self, what: str) -> None:
        if self.auto_ack:
            raise ValueError(f"{what}() needs auto_ack = False on this partition first")


_GUARDED = frozenset({"topic", "body", "attribute"})


def _guard(message: Message, attribute: attrs.Attribute, value: object) -> object:
    if attribute.name in _GUARDED and message._read_only:
        raise ReadOnlyMessageError(f"the message is read-only here (inside a partition selector): "
                                   f"{attribute.name} cannot be set")
    return value


def as_bytes(value: object) -> bytes:
    """A message body as bytes (from bytes, bytearray or memoryview); TypeError otherwise."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise TypeError(f"a message body is bytes, not {type(value).__name__}")


def check_attribute(value: object) -> None:
    """TypeError unless ``value`` can be a message attribute (a str or None)."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"a message attribute is a str or None, not {type(value).__name__}")


def _check_attribute(message: Message, attribute: attrs.Attribute, value: object) -> None:
    check_attribute(value)


@attrs.define(on_setattr=[_guard, attrs.setters.convert, attrs.setters.validate])
class Message:
    """A message: ``topic``, ``body`` (bytes) and an optional ``attribute`` (str).

    ``id`` is set by a successful send; a consumed message also carries the ``partition`` and the
    ``offset`` of its record, and ``acks`` for manual acknowledgement. While a partition selector
    runs the message is read-only: setting ``topic``, ``body`` or ``attribute`` raises
    ReadOnlyMessageError (1.4.4)."""

    topic: str
    body: bytes = attrs.field(default=b"", converter=as_bytes)
    attribute: str | None = attrs.field(default=None, validator=_check_attribute)
    id: int | None = attrs.field(default=None, kw_only=True)
    partition: Partition | None = attrs.field(default=None, kw_only=True)
    offset: int | None = attrs.field(default=None, kw_only=True)
    acks: PartitionAcks | None = attrs.field(default=None, kw_only=True, eq=False, repr=False)
    _read_only: bool = attrs.field(default=False, init=False, eq=False, repr=False)

    @property
    def read_only(self) -> bool:
        return self._read_only

    @read_only.setter
    def read_only(self, value: bool) -> None:
        self._read_only = bool(value)

    def data(self) -> tuple[int, bytes]:
        """(flag, data) as sent in a put (protocol §4.1–§4.2)."""
        return record.make_data(self.body, self.attribute)


class SendResult(NamedTuple):
    """The outcome of one send (protocol §6.1): on success the broker's message id, the partition
    the record went to and its offset; on failure the broker's text (``"403"`` for a closed
    partition). Immutable (a named tuple: one is built per send)."""

    success: bool
    message_id: int | None = None
    partition: Partition | None = None
    offset: int = -1
    error_message: str | None = None


@attrs.frozen
class MessageSet:
    """The decoded body of one ``value`` answer.

    ``messages`` are the complete, valid records from the start; ``ends[i]`` is the offset right
    after ``messages[i]``; ``next_offset`` is where the next fetch starts. ``invalid`` says decoding
    stopped at an untrustworthy record at ``next_offset`` (bad checksum, impossible length, bad
    attribute block); ``invalid_end`` is the offset after it when its header length is plausible."""

    messages: list[Message]
    ends: list[int]
    next_offset: int
    invalid: bool = False
    invalid_end: int | None = None


def decode_message_set(topic: str, partition: Partition, offset: int, data: bytes) -> MessageSet:
    """Decode the records of a ``value`` body fetched at ``offset`` (protocol §5.2.4)."""
    records, end, status = record.decode(data, offset)
    messages: list[Message] = []
    ends: list[int] = []
    for at, msg_id, flag, payload in records:
        try:
            if len(payload) > MAX_MESSAGE_SIZE:
                raise ValueError("record longer than 2 MiB")
            attribute, body = record.split_data(flag, payload)
        except (MetaqError, ValueError):
            return _invalid(messages, ends, at, len(payload))
        messages.append(Message(topic, body, attribute, id=msg_id, partition=partition, offset=at))
        ends.append(at + record.HEADER_SIZE + len(payload))
    next_offset = offset + end
    if status == record.CORRUPT:
        length = record.decode_header(data, end)[0] if len(data) - end >= record.HEADER_SIZE else -1
        return _invalid(messages, ends, next_offset, length)
    if status == record.PARTIAL and len(data) - end >= record.HEADER_SIZE:
        length = record.decode_header(data, end)[0]
        if length > MAX_MESSAGE_SIZE:
            return _invalid(messages, ends, next_offset, length)
    return MessageSet(messages, ends, next_offset)


def _invalid(messages: list[Message], ends: list[int], at: int, length: int) -> MessageSet:
    plausible = 0 <= length <= MAX_MESSAGE_SIZE
    return MessageSet(messages, ends, at, True, at + record.HEADER_SIZE + length if plausible else None)

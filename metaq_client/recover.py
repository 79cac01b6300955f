"""Local recover (broker.md §4.9): messages a consumer gave up on after ``maxFetchRetries`` failed
deliveries, kept on disk per ``<topic>@<group>`` until a background task redelivers them, across
restarts. Also the two 1.4.4 reject-consumption handlers: ``local_recover`` (the default) and
``drop``.

Store format (client-private, as in Java): one file per message, named by a sequence number so the
directory listing is the insertion order; each holds the broker id, partition and offset, then the
message as a MetaQ record (20-byte header with its CRC, then the data), checked when read back.
The store keeps messages; the consumer decides when to redeliver them.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
from typing import TYPE_CHECKING

import trio

from metaq_client.durable import remove_durably, write_atomically
from metaq_client.message import Message, Partition, PartitionAcks
from metaq_core import record
from metaq_core.errors import MetaqError

if TYPE_CHECKING:
    from metaq_client.consumer import Consumer

log = logging.getLogger("metaq.client")

_WHERE = struct.Struct(">iiq")
_SUFFIX = ".msg"


class RecoverStore:
    """Messages waiting for redelivery, under ``path`` (default ``~/.meta_recover``).

    ``append`` is durable when it returns; ``remove`` forgets a message for good."""

    def __init__(self, path: str | os.PathLike[str] = "~/.meta_recover") -> None:
        self.path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        self._lock = threading.Lock()

    def _directory(self, group: str, topic: str) -> str:
        return os.path.join(self.path, f"{topic}@{group}")

    async def append(self, group: str, message: Message) -> None:
        await trio.to_thread.run_sync(self._append, group, message)

    async def pending(self, group: str, topic: str) -> list[tuple[str, Message]]:
        """(name, message) of every stored message of ``topic`` for ``group``, oldest first."""
        return await trio.to_thread.run_sync(self._pending, group, topic)

    async def remove(self, group: str, topic: str, name: str) -> None:
        await trio.to_thread.run_sync(remove_durably, os.path.join(self._directory(group, topic), name))

    def _names(self, directory: str) -> list[str]:
        try:
            return sorted(n for n in os.listdir(directory) if n.endswith(_SUFFIX))
        except FileNotFoundError:
            return []

    def _append(self, group: str, message: Message) -> None:
        directory = self._directory(group, message.topic)
        partition = message.partition or Partition(-1, -1)
        flag, data = message.data()
        payload = (_WHERE.pack(partition.broker_id, partition.partition, -1 if message.offset is None else message.offset)
                   + record.encode_record(message.id or 0, flag, data))
        with self._lock:
            names = self._names(directory)
            sequence = int(names[-1][: -len(_SUFFIX)]) + 1 if names else 0
            write_atomically(os.path.join(directory, f"{sequence:020d}{_SUFFIX}"), payload)

    def _pending(self, group: str, topic: str) -> list[tuple[str, Message]]:
        directory = self._directory(group, topic)
        out = []
        for name in self._names(directory):
            path = os.path.join(directory, name)
            with open(path, "rb") as fh:
                raw = fh.read()
            message = _decode(topic, raw)
            if message is None:
                log.error("recover store: %s is damaged; moved aside as %s.corrupt", path, path)
                os.replace(path, path + ".corrupt")
                continue
            out.append((name, message))
        return out


def _decode(topic: str, raw: bytes) -> Message | None:
    if len(raw) < _WHERE.size:
        return None
    broker_id, partition, offset = _WHERE.unpack_from(raw)
    records, end, status = record.decode(raw[_WHERE.size:])
    if status != record.CLEAN or len(records) != 1:
        return None
    _at, msg_id, flag, data = records[0]
    try:
        attribute, body = record.split_data(flag, data)
    except MetaqError:
        return None
    return Message(topic, body, attribute, id=msg_id, partition=Partition(broker_id, partition),
                   offset=offset, acks=PartitionAcks())


async def local_recover(message: Message, consumer: Consumer) -> None:
    """Reject handler (the default): keep the message on disk for background redelivery."""
    log.warning("%s-%s: message %s could not be consumed; stored for local recovery",
                message.topic, message.partition, message.id)
    await consumer.recover_store.append(consumer.group, message)


def drop(message: Message, consumer: Consumer) -> None:
    """Reject handler: log the message and forget it."""
    log.warning("%s-%s: message %s could not be consumed; dropped", message.topic, message.partition, message.id)

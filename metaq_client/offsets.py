"""Consumer offsets and where they are kept (broker.md §4.5): per (group, topic, partition) the
next byte offset to fetch and the id of the last message consumed (-1 when unknown).

``OffsetStorage`` is the pluggable interface; ``LocalOffsetStorage`` keeps them in one JSON file
(Java's ``LocalOffsetStorage`` layout, default ``~/.meta_offsets``), rewritten as a whole on each
commit with an atomic replace and fsync, so a crash leaves either the old or the new file. A
ZooKeeper storage will implement the same interface. Storages store; they never decide when.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Sequence
from typing import Protocol

import attrs
import trio

from metaq_client.durable import write_atomically
from metaq_client.message import Partition


@attrs.frozen
class TopicPartitionOffset:
    topic: str
    partition: Partition
    offset: int
    msg_id: int = -1


class OffsetStorage(Protocol):
    async def load(self, group: str, topic: str, partition: Partition) -> TopicPartitionOffset | None:
        """The stored offset, or None when there is none."""

    async def commit(self, group: str, offsets: Sequence[TopicPartitionOffset]) -> None:
        """Store ``offsets`` durably; entries of other partitions and groups are kept."""


_locks_guard = threading.Lock()
_locks: dict[str, threading.Lock] = {}


def _lock_for(path: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(path, threading.Lock())


class LocalOffsetStorage:
    """Offsets of every group in one local JSON file.

    Durable when ``commit`` returns (the file and its directory are fsynced). Several storages of
    one process may share the file (updates are read-modify-write under a per-path lock); several
    processes must not."""

    def __init__(self, path: str | os.PathLike[str] = "~/.meta_offsets") -> None:
        self.path = os.path.abspath(os.path.expanduser(os.fspath(path)))
        self._lock = _lock_for(self.path)

    async def load(self, group: str, topic: str, partition: Partition) -> TopicPartitionOffset | None:
        entries = await trio.to_thread.run_sync(self._read_group, group)
        return entries.get((topic, partition))

    async def commit(self, group: str, offsets: Sequence[TopicPartitionOffset]) -> None:
        if offsets:
            await trio.to_thread.run_sync(self._commit, group, list(offsets))

    def _read_all(self) -> dict:
        try:
            with open(self.path, encoding="utf-8") as fh:
                data = json.load(fh)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise ValueError(f"offset file {self.path} cannot be read: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"offset file {self.path} does not hold a JSON object")
        return data

    def _read_group(self, group: str) -> dict[tuple[str, Partition], TopicPartitionOffset]:
        with self._lock:
            entries = self._read_all().get(group, [])
        out = {}
        for entry in entries:
            part = entry["partition"]
            offset = TopicPartitionOffset(entry["topic"], Partition(part["brokerId"], part["partition"]),
                                          entry["offset"], entry.get("messageId", -1))
            out[(offset.topic, offset.partition)] = offset
        return out

    def _commit(self, group: str, offsets: list[TopicPartitionOffset]) -> None:
        with self._lock:
            data = self._read_all()
            fresh = {(o.topic, str(o.partition)) for o in offsets}
            kept = [e for e in data.get(group, [])
                    if (e["topic"], f"{e['partition']['brokerId']}-{e['partition']['partition']}") not in fresh]
            data[group] = kept + [
                {"topic": o.topic, "partition": {"brokerId": o.partition.broker_id, "partition": o.partition.partition},
                 "offset": o.offset, "messageId": o.msg_id, "modified": False}
                for o in offsets]
            write_atomically(self.path, json.dumps(data, indent=1).encode("utf-8"))

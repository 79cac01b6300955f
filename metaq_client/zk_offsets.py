"""``ZkOffsetStorage``: consumer offsets in ZooKeeper, the default storage of a client connected
through ZooKeeper (broker.md §4.5): ``consumers/<group>/offsets/<topic>/<brokerId>-<partition>``
holding ``<msgId>-<offset>``; a pre-1.4.0 bare offset is read with msgId -1.

It implements ``metaq_client.offsets.OffsetStorage`` over the session of a bound
``ZkPartitionSource`` (it works while that client is open). Durable when ``commit`` returns:
ZooKeeper has acknowledged every write. It stores; the consumer decides when.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from metaq_client.message import Partition
from metaq_client.offsets import TopicPartitionOffset
from zkmeta.bridge import TrioZk
from zkmeta.offsets import commit_offset, load_offset
from zkmeta.paths import ZkPaths


class _ZkSession(Protocol):
    @property
    def zk(self) -> TrioZk: ...

    @property
    def paths(self) -> ZkPaths: ...


class ZkOffsetStorage:
    """Offsets of every group in ZooKeeper, through ``session`` (a ``ZkPartitionSource``)."""

    def __init__(self, session: _ZkSession) -> None:
        self._session = session

    async def load(self, group: str, topic: str, partition: Partition) -> TopicPartitionOffset | None:
        session = self._session
        stored = await load_offset(session.zk, session.paths, group, topic, str(partition))
        if stored is None:
            return None
        msg_id, offset = stored
        return TopicPartitionOffset(topic, partition, offset, msg_id)

    async def commit(self, group: str, offsets: Sequence[TopicPartitionOffset]) -> None:
        session = self._session
        for entry in offsets:
            await commit_offset(session.zk, session.paths, group, entry.topic, str(entry.partition),
                                entry.msg_id, entry.offset)

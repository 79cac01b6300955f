"""Consumer offsets in ZooKeeper (broker.md §3.3, §4.5): the persistent
``consumers/<group>/offsets/<topic>/<brokerId>-<partition>`` node holding ``<msgId>-<offset>``.

:func:`load_offset` reads it (a pre-1.4.0 bare offset gives msgId -1); :func:`commit_offset`
writes it — "set, or create with parents if missing", as Java's ``ZkOffsetStorage`` does.

What this module must not do: decide when offsets are committed or which partitions a consumer
may write (that is the consumer's rebalancer), or format the value by hand (``paths`` does).
"""

from __future__ import annotations

from zkmeta.bridge import NodeExistsError, NoNodeError, TrioZk
from zkmeta.paths import ZkPaths, decode_offset, encode_offset

__all__ = ["commit_offset", "load_offset"]


async def load_offset(zk: TrioZk, paths: ZkPaths, group: str, topic: str,
                      partition: str) -> tuple[int, int] | None:
    """``(msgId, offset)`` stored for ``partition`` (``"<brokerId>-<partition>"``), or None
    when there is no node (or an empty one)."""
    try:
        data, _ = await zk.get(paths.offset(group, topic, partition))
    except NoNodeError:
        return None
    if not data.strip():
        return None
    return decode_offset(data)


async def commit_offset(zk: TrioZk, paths: ZkPaths, group: str, topic: str, partition: str,
                        msg_id: int, offset: int) -> None:
    """Write ``<msgId>-<offset>`` for ``partition``: set, or create (with parents) if missing."""
    path = paths.offset(group, topic, partition)
    data = encode_offset(msg_id, offset)
    try:
        await zk.set(path, data)
    except NoNodeError:
        try:
            await zk.create(path, data, makepath=True)
        except NodeExistsError:
            await zk.set(path, data)

"""What producers and consumers read about brokers and topics (broker.md §3.3, §3.5, §5.4).

* :func:`read_cluster`: every ``brokers/ids/<id>`` with the URI of its master and of its async
  slaves (``slave<N>`` children) — the cluster a consumer fetches from and a producer sends to.
* :func:`read_topic_brokers`: the children of ``brokers/topics-pub/<topic>`` or
  ``brokers/topics-sub/<topic>`` with the ``numParts`` of their JSON.
* :func:`publish_partitions`: a producer's partition list from those, as the Java producer
  builds it: ``<id>-m`` children only, brokers without a master skipped, sorted numerically.
  (The consumer's list is :func:`zkmeta.balance.partition_strings`.)

Reads are one snapshot each, not atomic across nodes: a node that vanishes while it is read is
left out (the watch that fires for its removal triggers the next read).

What this module must not do: write anything, keep state between calls, or connect to brokers.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import attrs

from zkmeta.bridge import NoNodeError, TrioZk
from zkmeta.paths import ZkPaths, decode_topic_broker, parse_broker_name

__all__ = ["BrokerNodes", "publish_partitions", "read_cluster", "read_topic_brokers"]

log = logging.getLogger("metaq.zk.discovery")


@attrs.frozen
class BrokerNodes:
    """One broker id of the cluster: its master's URI (None while only slaves are registered)
    and its async slaves' URIs by slave id."""

    broker_id: int
    master: str | None
    slaves: tuple[tuple[int, str], ...] = ()

    def urls(self) -> list[str]:
        """Every URI a consumer may fetch this broker's partitions from: master first, then
        the async slaves by slave id (§5.4: one is picked at random per partition)."""
        found = [self.master] if self.master else []
        return found + [uri for _, uri in self.slaves]


async def _data(zk: TrioZk, path: str) -> bytes | None:
    try:
        return (await zk.get(path))[0]
    except NoNodeError:
        return None


async def read_cluster(zk: TrioZk, paths: ZkPaths) -> dict[int, BrokerNodes]:
    """Every broker id with a master or an async slave, by id. Children of ``brokers/ids``
    that are not decimal numbers are skipped (Java would fail to parse them)."""
    try:
        ids = await zk.get_children(paths.broker_ids)
    except NoNodeError:
        return {}
    cluster: dict[int, BrokerNodes] = {}
    for name in ids:
        if not name.isdigit():
            log.warning("ignoring %s/%s: not a broker id", paths.broker_ids, name)
            continue
        broker_id = int(name)
        try:
            children = await zk.get_children(paths.broker_id_node(broker_id))
        except NoNodeError:
            continue
        master = None
        if "master" in children:
            data = await _data(zk, paths.master(broker_id))
            master = data.decode("utf-8") if data else None
        slaves = []
        for child in sorted(children):
            slave_id = ZkPaths.slave_id_of(child)
            if slave_id is None:
                continue
            data = await _data(zk, paths.slave(broker_id, slave_id))
            if data:
                slaves.append((slave_id, data.decode("utf-8")))
        if master or slaves:
            cluster[broker_id] = BrokerNodes(broker_id, master, tuple(sorted(slaves)))
    return cluster


async def read_topic_brokers(zk: TrioZk, topic_path: str) -> dict[str, int]:
    """``{child name: numParts}`` of ``topics-pub/<topic>`` or ``topics-sub/<topic>``
    (``topic_path`` from :meth:`ZkPaths.topic_pub` / :meth:`ZkPaths.topic_sub`); {} when the
    topic node does not exist. Children with unreadable data are logged and left out."""
    try:
        names = await zk.get_children(topic_path)
    except NoNodeError:
        return {}
    brokers: dict[str, int] = {}
    for name in sorted(names):
        data = await _data(zk, f"{topic_path}/{name}")
        if data is None:
            continue
        try:
            brokers[name] = decode_topic_broker(data)[0]
        except ValueError as exc:
            log.warning("ignoring %s/%s: %s", topic_path, name, exc)
    return brokers


def publish_partitions(pub_brokers: Mapping[str, int],
                       masters: Mapping[int, str]) -> list[tuple[int, int]]:
    """A producer's partitions ``(brokerId, partition)`` (§3.5): from the ``<id>-m`` children
    of ``topics-pub/<topic>`` (slaves' children are ignored) whose broker has a master in
    ``masters``, partitions ``0…numParts-1`` each, sorted numerically (broker id, partition)."""
    partitions = set()
    for name, num_parts in pub_brokers.items():
        parsed = parse_broker_name(name)
        if parsed is None or parsed[1] is not None or parsed[0] not in masters:
            continue
        partitions.update((parsed[0], part) for part in range(num_parts))
    return sorted(partitions)

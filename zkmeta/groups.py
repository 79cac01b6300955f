"""Consumer-group membership in ZooKeeper (broker.md §3.6, §4.4): consumer ids, the
``consumers/<group>/ids/<consumerId>`` registration and the ``owners/<topic>/<partition>`` nodes
by which a consumer claims a partition.

* :func:`new_consumer_id`: ``<group>_<suffix>`` with 1.4.4's default suffix
  ``<local IP>-<current time ms>-<n>``.
* :func:`register_consumer` / :func:`unregister_consumer`: the ephemeral ids node whose data is the
  comma-separated topic list; "exists with the same data" counts as success.
* :func:`read_registrations`: every member with its data — a member vanishing while the list is
  read raises :class:`GroupChangedError` (the rebalance attempt fails, as in Java).
* :func:`claim_partition` / :func:`release_partition` / :func:`owned_partitions`: owner nodes.
  A release deletes a node only while it names us: another consumer's claim is never removed.

What this module must not do: decide which partitions to claim (``balance``), keep state, or
touch offsets (``offsets``).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Sequence

from kazoo.exceptions import BadVersionError

from zkmeta.bridge import NodeExistsError, NoNodeError, TrioZk
from zkmeta.paths import ZkPaths, encode_consumer_topics
from zkmeta.registry import advertised_host

__all__ = [
    "ConsumerIdConflictError",
    "GroupChangedError",
    "claim_partition",
    "new_consumer_id",
    "owned_partitions",
    "read_owners",
    "read_registrations",
    "register_consumer",
    "release_partition",
    "unregister_consumer",
]

_counter = itertools.count(1)
_counter_lock = threading.Lock()


class GroupChangedError(Exception):
    """A member of the group vanished while the group was read (another consumer is
    rebalancing or leaving): the attempt that read it fails and is retried."""


class ConsumerIdConflictError(Exception):
    """``ids/<consumerId>`` exists with other data under another session: two consumers were
    given the same id."""


def new_consumer_id(group: str, suffix: str | None = None, *, host: str | None = None,
                    now_ms: int | None = None) -> str:
    """``<group>_<suffix>``; without ``suffix`` (``ConsumerConfig.consumerId``) 1.4.4's default
    ``<local IP>-<current time ms>-<n>``, ``n`` counting the ids made by this process from 1."""
    if suffix is None:
        with _counter_lock:
            n = next(_counter)
        host = host or advertised_host(None, None)
        now_ms = int(time.time() * 1000) if now_ms is None else now_ms
        suffix = f"{host}-{now_ms}-{n}"
    return f"{group}_{suffix}"


async def register_consumer(zk: TrioZk, paths: ZkPaths, group: str, consumer_id: str,
                            topics: Sequence[str]) -> None:
    """Create the ephemeral ``ids/<consumerId>`` with ``topic1,topic2,…`` (§3.6 step 1).

    Already there with that data: success. There with other data under our own session (the
    topic list grew): rewritten by delete and create, so that the group's children watch fires
    and every member rebalances. Other data under another session: ConsumerIdConflictError."""
    path = paths.consumer_id(group, consumer_id)
    data = encode_consumer_topics(list(topics))
    while True:
        try:
            await zk.create(path, data, ephemeral=True, makepath=True)
            return
        except NodeExistsError:
            pass
        try:
            existing, stat = await zk.get(path)
        except NoNodeError:
            continue
        if existing == data:
            return
        if stat.ephemeralOwner != zk.session_id:
            raise ConsumerIdConflictError(f"{path} exists with data {existing!r} (session "
                                          f"0x{stat.ephemeralOwner:x}); we would write {data!r}")
        try:
            await zk.delete(path, version=stat.version)
        except (NoNodeError, BadVersionError):
            pass


async def unregister_consumer(zk: TrioZk, paths: ZkPaths, group: str, consumer_id: str) -> None:
    """Delete ``ids/<consumerId>`` (a missing node is fine)."""
    try:
        await zk.delete(paths.consumer_id(group, consumer_id))
    except NoNodeError:
        pass


async def read_registrations(zk: TrioZk, paths: ZkPaths, group: str) -> dict[str, str]:
    """``{consumerId: data}`` of every member of ``group`` ({} when nobody ever registered)."""
    try:
        members = await zk.get_children(paths.consumer_ids(group))
    except NoNodeError:
        return {}
    registrations = {}
    for member in members:
        try:
            data, _ = await zk.get(paths.consumer_id(group, member))
        except NoNodeError:
            raise GroupChangedError(f"consumer {member} of group {group} left while the group "
                                    "was read") from None
        registrations[member] = data.decode("utf-8")
    return registrations


async def claim_partition(zk: TrioZk, paths: ZkPaths, group: str, topic: str, partition: str,
                          consumer_id: str) -> bool:
    """Create the ephemeral ``owners/<topic>/<partition>`` with our id (§4.4 step 4). True when
    it is ours (created now, or already there with our id); False when another consumer still
    holds it."""
    path = paths.owner(group, topic, partition)
    mine = consumer_id.encode("utf-8")
    while True:
        try:
            await zk.create(path, mine, ephemeral=True, makepath=True)
            return True
        except NodeExistsError:
            pass
        try:
            return (await zk.get(path))[0] == mine
        except NoNodeError:
            continue    # released meanwhile: try again


async def release_partition(zk: TrioZk, paths: ZkPaths, group: str, topic: str, partition: str,
                            consumer_id: str) -> bool:
    """Delete ``owners/<topic>/<partition>`` if it names us; True when deleted."""
    path = paths.owner(group, topic, partition)
    try:
        data, stat = await zk.get(path)
    except NoNodeError:
        return False
    if data != consumer_id.encode("utf-8"):
        return False
    try:
        await zk.delete(path, version=stat.version)
    except (NoNodeError, BadVersionError):
        return False
    return True


async def read_owners(zk: TrioZk, paths: ZkPaths, group: str, topic: str) -> dict[str, str]:
    """``{partition: owner consumer id}`` of ``topic`` in ``group``."""
    try:
        partitions = await zk.get_children(paths.owners(group, topic))
    except NoNodeError:
        return {}
    owners = {}
    for partition in partitions:
        try:
            owners[partition] = (await zk.get(paths.owner(group, topic, partition)))[0].decode("utf-8")
        except NoNodeError:
            continue
    return owners


async def owned_partitions(zk: TrioZk, paths: ZkPaths, group: str, topic: str,
                           consumer_id: str) -> list[str]:
    """The partitions of ``topic`` whose owner node names ``consumer_id``."""
    return sorted(p for p, owner in (await read_owners(zk, paths, group, topic)).items()
                  if owner == consumer_id)

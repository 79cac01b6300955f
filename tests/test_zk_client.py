"""The client through ZooKeeper, against the real ZooKeeper fixture and real in-process brokers
registered in each test's chroot: producer discovery (broker.md §3.5), consumer registration and
owner/offset nodes byte for byte (§3.3, §3.6, §4.5), balancing and its retries (§4.4), session
expiry on the client side.

The helpers at the top are shared with ``test_zk_cluster.py``."""

from __future__ import annotations

import functools
import json
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import attrs
import pytest
import trio

from client_util import FAST_CONNECTIONS
from metaq_client import (
    ConsumerConfig, LocalOffsetStorage, Message, MetaqClient, Partition, ZkConfig, blocking,
)
from metaq_client.errors import MetaqClientError
from metaq_server.broker import Broker
from server_util import make_config
from zk_util import close_session, dump_tree
from zkmeta import balance

TOPIC = "orders"

BROKER_INI = """\
[system]
brokerId={broker_id}
numPartitions=2
unflushThreshold=0
unflushInterval=10000
maxSegmentSize=1024*1024
maxTransferSize=1024*1024

[zookeeper]
zk.zkConnect={hosts}
zk.zkSessionTimeoutMs=4000
zk.zkConnectionTimeoutMs=5000
zk.zkSyncTimeMs=0

[topic=orders]
numPartitions={partitions}

[topic=events]
numPartitions=2
"""

#: Fast consumer timings: fetch again soon after an empty answer, commit every 0.2 s.
FAST = ConsumerConfig(max_delay_fetch_time=0.05, commit_offset_period=0.2)


def zk_config(hosts: str, *, sync_ms: int = 300, session_ms: int = 4000) -> ZkConfig:
    return ZkConfig(zk_connect=hosts, zk_session_timeout_ms=session_ms, zk_connection_timeout_ms=5000,
                    zk_sync_time_ms=sync_ms)


def zk_client(hosts: str, tmp_path, **kw: int) -> MetaqClient:
    return MetaqClient(zk_config=zk_config(hosts, **kw), connection_settings=FAST_CONNECTIONS,
                       recover_path=str(tmp_path / "recover"))


class Brokers:
    """In-process brokers registered in the test's ZooKeeper chroot, started and stopped by id."""

    def __init__(self, nursery: trio.Nursery, hosts: str, tmp_path) -> None:
        self._nursery = nursery
        self._hosts = hosts
        self._tmp = tmp_path
        self.running: dict[int, Broker] = {}

    async def start(self, broker_id: int, partitions: int = 4) -> Broker:
        data_dir = self._tmp / f"broker-{broker_id}"
        data_dir.mkdir(exist_ok=True)
        config = make_config(str(data_dir), BROKER_INI.format(broker_id=broker_id, hosts=self._hosts,
                                                              partitions=partitions))
        broker = Broker(config)
        broker.zk_sync_time = 0.0
        await self._nursery.start(functools.partial(broker.run, handle_signals=False))
        self.running[broker_id] = broker
        return broker

    async def stop(self, broker_id: int) -> None:
        broker = self.running.pop(broker_id)
        broker.shutdown()
        with trio.fail_after(15):
            await broker.stopped.wait()

    def url(self, broker_id: int) -> str:
        return f"meta://127.0.0.1:{self.running[broker_id].port}"

    def shutdown_all(self) -> None:
        for broker in self.running.values():
            broker.shutdown()


@asynccontextmanager
async def brokers_running(hosts: str, tmp_path, ids: Sequence[int], partitions: int = 4) -> AsyncIterator[Brokers]:
    async with trio.open_nursery() as nursery:
        brokers = Brokers(nursery, hosts, tmp_path)
        try:
            for broker_id in ids:
                await brokers.start(broker_id, partitions)
            yield brokers
        finally:
            brokers.shutdown_all()


async def kz(fn, *args, **kwargs):
    """A blocking kazoo call from trio."""
    return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))


async def owners(kazoo, group: str, topic: str = TOPIC) -> dict[str, str]:
    """``{partition: owner}`` of ``topic`` in ``group``, read with kazoo."""
    tree = await kz(dump_tree, kazoo, f"/meta/consumers/{group}/owners/{topic}")
    prefix = f"/meta/consumers/{group}/owners/{topic}/"
    return {path[len(prefix):]: data.decode() for path, (data, _) in tree.items() if path.startswith(prefix)}


async def wait_for(predicate, timeout: float = 15.0, interval: float = 0.02) -> None:
    with trio.fail_after(timeout):
        while not await predicate():
            await trio.sleep(interval)


def partition_names(broker_ids: Sequence[int], count: int = 4) -> set[str]:
    return {f"{b}-{p}" for b in broker_ids for p in range(count)}


def fetched(consumer) -> set[str]:
    return {str(p) for parts in consumer.assignment().values() for p in parts}


async def publish(producer, bodies: Sequence[bytes], topic: str = TOPIC) -> list:
    results = []
    for body in bodies:
        result = await producer.send(topic, body)
        assert result.success, result
        results.append(result)
    return results


def collector(into: list[bytes]):
    return lambda message: into.append(message.body)


async def consumed_all(got: list[bytes], wanted, timeout: float = 15.0) -> None:
    wanted = set(wanted)

    async def done() -> bool:
        return wanted <= set(got)
    await wait_for(done, timeout)


# =============================================================================== producer


async def test_producer_partitions_from_topics_pub(zk_hosts, zk_kazoo, tmp_path) -> None:
    async with brokers_running(zk_hosts, tmp_path, [10, 2]) as brokers:
        # A slave's child and a master child without ids/<id>/master: neither is published to.
        await kz(zk_kazoo.create, "/meta/brokers/topics-pub/orders/7-s1", b'{"numParts":4,"broker":"7-s1"}',
                 ephemeral=True, makepath=True)
        await kz(zk_kazoo.create, "/meta/brokers/topics-pub/orders/9-m", b'{"numParts":4,"broker":"9-m"}',
                 ephemeral=True)
        async with zk_client(zk_hosts, tmp_path) as client, client.producer() as producer:
            partitions = await client.source.publish_partitions(TOPIC, client.pool)
            # numerically: broker 2 before broker 10 (a string sort would put "10-0" first)
            assert partitions == [Partition(2, p) for p in range(4)] + [Partition(10, p) for p in range(4)]
            assert client.source.broker_url(2) == brokers.url(2)
            assert client.source.broker_url(10) == brokers.url(10)
            bodies = [b"m%d" % i for i in range(16)]
            results = await publish(producer, bodies)
            # explicit partitions, round robin over the list: each partition twice, none is -1
            chosen = [r.partition for r in results]
            assert all(p.partition >= 0 for p in chosen)
            assert sorted(chosen) == sorted(partitions * 2)
            assert chosen[:3] == partitions[1:4]
            # the message really is in the partition the producer chose
            async with client.consumer("check", FAST) as consumer:
                for body, result in zip(bodies[:3], results):
                    batch = await consumer.get(TOPIC, result.partition, result.offset, 1024)
                    assert batch.messages[0].body == body


async def test_producer_connects_before_switching_and_closes_departed_brokers(zk_hosts, tmp_path) -> None:
    async with brokers_running(zk_hosts, tmp_path, [1]) as brokers:
        async with zk_client(zk_hosts, tmp_path) as client, client.producer() as producer:
            source, pool = client.source, client.pool
            assert await source.publish_partitions(TOPIC, pool) == [Partition(1, p) for p in range(4)]
            await publish(producer, [b"a"])

            async def has(broker_id: int, present: bool = True) -> None:
                with trio.fail_after(10):
                    while any(p.broker_id == broker_id for p in await source.publish_partitions(TOPIC, pool)) != present:
                        await trio.sleep(0)

            await brokers.start(5)
            url5 = brokers.url(5)
            await has(5)
            # the connection was up before the new list was used
            link = pool._links[url5]
            assert link.connection is not None and not link.connection.closed
            assert await source.publish_partitions(TOPIC, pool) == [Partition(b, p) for b in (1, 5) for p in range(4)]
            assert {r.partition.broker_id for r in await publish(producer, [b"b%d" % i for i in range(8)])} == {1, 5}

            await brokers.stop(5)
            await has(5, present=False)
            assert url5 not in pool.urls()          # closed once nothing publishes to it
            results = await publish(producer, [b"c%d" % i for i in range(4)])
            assert {r.partition.broker_id for r in results} == {1}

            await brokers.start(5)                  # back on another port: a new connection
            await has(5)
            assert brokers.url(5) != url5 and brokers.url(5) in pool.urls() and url5 not in pool.urls()
            assert source.broker_url(5) == brokers.url(5)


# =============================================================================== consumer znodes


async def test_consumer_znodes_are_byte_exact(zk_hosts, zk_kazoo, tmp_path) -> None:
    async with brokers_running(zk_hosts, tmp_path, [1]):
        async with zk_client(zk_hosts, tmp_path) as client, client.producer() as producer:
            got: list[Message] = []
            async with client.consumer("g", attrs.evolve(FAST, consumer_id="c1")) as consumer:
                await consumer.subscribe(TOPIC, got.append)
                assert consumer.consumer_id == "g_c1"
                session = client.source.zk.session_id
                tree = await kz(dump_tree, zk_kazoo, "/meta/consumers/g")
                assert tree["/meta/consumers/g/ids/g_c1"] == (b"orders", True)
                assert (await kz(zk_kazoo.get, "/meta/consumers/g/ids/g_c1"))[1].ephemeralOwner == session
                assert await owners(zk_kazoo, "g") == {f"1-{p}": "g_c1" for p in range(4)}
                assert all(tree[f"/meta/consumers/g/owners/orders/1-{p}"] == (b"g_c1", True) for p in range(4))

                # a second topic: the ids node is written again with both topics
                await consumer.subscribe("events", got.append)
                assert (await kz(zk_kazoo.get, "/meta/consumers/g/ids/g_c1"))[0] == b"orders,events"
                assert await owners(zk_kazoo, "g", "events") == {"1-0": "g_c1", "1-1": "g_c1"}

                only_0 = lambda topic, partitions, message: partitions[0]  # noqa: E731
                results = [await producer.send(TOPIC, b"x%d" % i, partition_selector=only_0) for i in range(3)]
                assert all(r.success and r.partition == Partition(1, 0) for r in results)
                with trio.fail_after(10):
                    while len(got) < 3:
                        await trio.sleep(0.01)
                await consumer.commit_offsets()
                last = got[-1]
                (position,) = [p for p in consumer.positions() if p.topic == TOPIC and p.partition == Partition(1, 0)]
                assert position.msg_id == last.id == results[-1].message_id and position.offset > last.offset
                data, stat = await kz(zk_kazoo.get, "/meta/consumers/g/offsets/orders/1-0")
                assert data == f"{last.id}-{position.offset}".encode() and stat.ephemeralOwner == 0
                # only partitions that moved are written
                assert await kz(zk_kazoo.get_children, "/meta/consumers/g/offsets/orders") == ["1-0"]

            # unregistered: ids and owner nodes gone, offsets stay
            tree = await kz(dump_tree, zk_kazoo, "/meta/consumers/g")
            assert not [path for path, (_, ephemeral) in tree.items() if ephemeral]
            assert tree["/meta/consumers/g/offsets/orders/1-0"] == (f"{last.id}-{position.offset}".encode(), False)

            async with client.consumer("g", FAST) as default:   # 1.4.4's default id
                await default.subscribe(TOPIC)
                match = re.fullmatch(r"g_(\d+\.\d+\.\d+\.\d+)-(\d{13})-(\d+)", default.consumer_id)
                assert match, default.consumer_id
                assert await kz(zk_kazoo.get_children, "/meta/consumers/g/ids") == [default.consumer_id]


async def test_offsets_formats_and_initial_offsets(zk_hosts, zk_kazoo, tmp_path) -> None:
    async with brokers_running(zk_hosts, tmp_path, [1], partitions=2):
        async with zk_client(zk_hosts, tmp_path) as client, client.producer() as producer:
            first = lambda topic, partitions, message: partitions[0]  # noqa: E731
            second = lambda topic, partitions, message: partitions[1]  # noqa: E731
            r0 = [await producer.send(TOPIC, b"p0-%d" % i, partition_selector=first) for i in range(3)]
            r1 = [await producer.send(TOPIC, b"p1-%d" % i, partition_selector=second) for i in range(3)]
            # pre-1.4.0 bare offset on 1-0, <msgId>-<offset> with msgId -1 on 1-1
            await kz(zk_kazoo.create, "/meta/consumers/g/offsets/orders/1-0", str(r0[1].offset).encode(),
                     makepath=True)
            await kz(zk_kazoo.create, "/meta/consumers/g/offsets/orders/1-1", f"-1-{r1[2].offset}".encode())
            got: list[bytes] = []
            async with client.consumer("g", FAST) as consumer:
                await consumer.subscribe(TOPIC, collector(got))
                await consumed_all(got, [b"p0-1", b"p0-2", b"p1-2"])
                await trio.sleep(0.3)
                assert sorted(got) == [b"p0-1", b"p0-2", b"p1-2"]
                starts = {str(p.partition): p for p in consumer.positions()}
                assert starts["1-1"].msg_id == r1[2].message_id
            # a group without offsets starts at the configured initial offset: the end here
            late: list[bytes] = []
            async with client.consumer("h", attrs.evolve(FAST, consume_from_max_offset=True)) as consumer:
                await consumer.subscribe(TOPIC, collector(late))
                await trio.sleep(0.3)
                await publish(producer, [b"new"])
                await consumed_all(late, [b"new"])
                assert late == [b"new"]


# =============================================================================== groups


async def test_offsets_survive_consumer_restarts(zk_hosts, zk_kazoo, tmp_path) -> None:
    async with brokers_running(zk_hosts, tmp_path, [1, 2]):
        async with zk_client(zk_hosts, tmp_path) as client, client.producer() as producer:
            got: list[bytes] = []
            first = [b"a%d" % i for i in range(20)]
            await publish(producer, first)
            async with client.consumer("g", FAST) as consumer:
                await consumer.subscribe(TOPIC, collector(got))
                await consumed_all(got, first)
            second = [b"b%d" % i for i in range(20)]
            await publish(producer, second)
            async with zk_client(zk_hosts, tmp_path) as other, other.consumer("g", FAST) as consumer:
                await consumer.subscribe(TOPIC, collector(got))
                await consumed_all(got, first + second)
                await trio.sleep(0.3)
            assert sorted(got) == sorted(first + second)     # nothing twice: offsets were committed at close


async def test_two_groups_consume_the_same_topic_independently(zk_hosts, zk_kazoo, tmp_path) -> None:
    async with brokers_running(zk_hosts, tmp_path, [1, 2]):
        async with zk_client(zk_hosts, tmp_path) as client, client.producer() as producer:
            bodies = [b"m%d" % i for i in range(40)]
            got = {"g1": [], "g2": []}
            async with zk_client(zk_hosts, tmp_path) as c2, client.consumer("g1", FAST) as a, \
                    c2.consumer("g1", FAST) as b, client.consumer("g2", FAST) as c:
                await a.subscribe(TOPIC, collector(got["g1"]))
                await b.subscribe(TOPIC, collector(got["g1"]))
                await c.subscribe(TOPIC, collector(got["g2"]))
                await publish(producer, bodies)
                await consumed_all(got["g1"], bodies)
                await consumed_all(got["g2"], bodies)
                assert sorted(got["g1"]) == sorted(bodies) == sorted(got["g2"])
                everything = partition_names([1, 2])
                assert set(await owners(zk_kazoo, "g2")) == everything
                assert set((await owners(zk_kazoo, "g2")).values()) == {c.consumer_id}
                g1 = await owners(zk_kazoo, "g1")
                assert set(g1) == everything and fetched(a) | fetched(b) == everything
                assert fetched(a) == {p for p, o in g1.items() if o == a.consumer_id}
                assert fetched(b) == {p for p, o in g1.items() if o == b.consumer_id}
                # DEFAULT: contiguous ranges over the string-sorted lists
                expected = balance.full_assignment("DEFAULT", [a.consumer_id, b.consumer_id], everything)
                assert {a.consumer_id: sorted(fetched(a)), b.consumer_id: sorted(fetched(b))} == expected


async def test_consist_strategy(zk_hosts, zk_kazoo, tmp_path) -> None:
    config = attrs.evolve(FAST, load_balance_strategy="CONSIST")
    async with brokers_running(zk_hosts, tmp_path, [1, 2, 3]), zk_client(zk_hosts, tmp_path) as client:
        async with client.consumer("g", attrs.evolve(config, consumer_id="a")) as a, \
                client.consumer("g", attrs.evolve(config, consumer_id="b")) as b:
            await a.subscribe(TOPIC)
            await b.subscribe(TOPIC)
            expected = balance.full_assignment("CONSIST", ["g_a", "g_b"], partition_names([1, 2, 3]))

            async def balanced() -> bool:
                return {"g_a": sorted(fetched(a)), "g_b": sorted(fetched(b))} == expected
            await wait_for(balanced)
            assert await owners(zk_kazoo, "g") == {p: c for c, ps in expected.items() for p in ps}


async def test_claim_conflict_fails_the_attempt_releases_all_and_retries(zk_hosts, zk_kazoo, tmp_path) -> None:
    async with brokers_running(zk_hosts, tmp_path, [1]), zk_client(zk_hosts, tmp_path, sync_ms=100) as client:
        # Another consumer (that never lets go) holds 1-2: every attempt fails at that claim.
        await kz(zk_kazoo.create, "/meta/consumers/g/owners/orders/1-2", b"g_other", ephemeral=True, makepath=True)
        async with client.consumer("g", attrs.evolve(FAST, consumer_id="c")) as consumer:
            with trio.fail_after(10):
                await consumer.subscribe(TOPIC)          # returns after 7 attempts, 0.1 s apart
            stats = consumer.member.statistics()
            assert stats.failed_attempts == 7 and stats.gave_up == 1 and stats.partitions == 0
            # release-all after each failed attempt: none of the partitions it claimed stays claimed
            assert await owners(zk_kazoo, "g") == {"1-2": "g_other"}
            assert fetched(consumer) == set()
            # the blocker goes; the next trigger (a group change) rebalances successfully
            await kz(zk_kazoo.delete, "/meta/consumers/g/owners/orders/1-2")
            await kz(zk_kazoo.create, "/meta/consumers/g/ids/g_idle", b"events", ephemeral=True)

            async def owns_all() -> bool:
                return fetched(consumer) == partition_names([1])
            await wait_for(owns_all)
            assert await owners(zk_kazoo, "g") == {p: "g_c" for p in partition_names([1])}


async def test_a_vanished_registration_is_written_again(zk_hosts, zk_kazoo, tmp_path) -> None:
    async with brokers_running(zk_hosts, tmp_path, [1]), zk_client(zk_hosts, tmp_path, sync_ms=100) as client:
        async with client.consumer("g", attrs.evolve(FAST, consumer_id="c")) as consumer:
            await consumer.subscribe(TOPIC)
            await kz(zk_kazoo.delete, "/meta/consumers/g/ids/g_c")

            async def registered_again() -> bool:
                stat = await kz(zk_kazoo.exists, "/meta/consumers/g/ids/g_c")
                return stat is not None and fetched(consumer) == partition_names([1])
            await wait_for(registered_again)
            assert (await kz(zk_kazoo.get, "/meta/consumers/g/ids/g_c"))[0] == b"orders"
            assert consumer.member.statistics().failed_attempts >= 1


async def test_triggers_are_coalesced(zk_hosts, zk_kazoo, tmp_path) -> None:
    async with brokers_running(zk_hosts, tmp_path, [1]), zk_client(zk_hosts, tmp_path, sync_ms=2000) as client:
        async with client.consumer("g", attrs.evolve(FAST, consumer_id="c")) as consumer:
            await consumer.subscribe(TOPIC)
            before = consumer.member.statistics().rebalances
            # a burst of ten group changes (members of another topic: the assignment stays)
            for i in range(5):
                await kz(zk_kazoo.create, f"/meta/consumers/g/ids/g_x{i}", b"events", ephemeral=True)
                await kz(zk_kazoo.delete, f"/meta/consumers/g/ids/g_x{i}")

            async def rebalanced() -> bool:
                return consumer.member.statistics().rebalances > before
            await wait_for(rebalanced)
            await trio.sleep(0.5)
            assert consumer.member.statistics().rebalances - before <= 2
            assert fetched(consumer) == partition_names([1])


# =============================================================================== session expiry


async def test_session_expiry_reregisters_and_rebalances(zk_server, zk_hosts, zk_kazoo, tmp_path) -> None:
    async with brokers_running(zk_hosts, tmp_path, [1, 2]), zk_client(zk_hosts, tmp_path) as producing, \
            producing.producer() as producer:
        got: list[bytes] = []
        async with zk_client(zk_hosts, tmp_path) as c1, zk_client(zk_hosts, tmp_path) as c2, \
                c1.consumer("g", attrs.evolve(FAST, consumer_id="a")) as a, \
                c2.consumer("g", attrs.evolve(FAST, consumer_id="b")) as b:
            await a.subscribe(TOPIC, collector(got))
            await b.subscribe(TOPIC, collector(got))
            everything = partition_names([1, 2])
            overlaps: list[set[str]] = []

            async def watch_overlap() -> None:   # no partition is ever fetched by both
                while True:
                    common = fetched(a) & fetched(b)
                    if common:
                        overlaps.append(common)
                    await trio.sleep(0.005)

            async def balanced() -> bool:
                zk_owners = await owners(zk_kazoo, "g")
                return (set(zk_owners) == everything and fetched(a) | fetched(b) == everything
                        and fetched(a) == {p for p, o in zk_owners.items() if o == "g_a"}
                        and fetched(b) == {p for p, o in zk_owners.items() if o == "g_b"} and len(fetched(a)) == 4)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_overlap)
                await wait_for(balanced)
                before = [b"before%d" % i for i in range(30)]
                await publish(producer, before)
                await consumed_all(got, before)

                old_session = c1.source.zk.session_id
                await kz(close_session, zk_server.connect_string, c1.source.zk.client_id)

                async def reregistered() -> bool:
                    session = c1.source.zk.session_id
                    if session in (None, old_session):
                        return False
                    stat = await kz(zk_kazoo.exists, "/meta/consumers/g/ids/g_a")
                    return stat is not None and stat.ephemeralOwner == session
                await wait_for(reregistered)
                await wait_for(balanced)
                assert a.member.statistics().pauses == 1
                session = c1.source.zk.session_id
                for name, owner in (await owners(zk_kazoo, "g")).items():
                    if owner == "g_a":
                        stat = (await kz(zk_kazoo.get, f"/meta/consumers/g/owners/orders/{name}"))[1]
                        assert stat.ephemeralOwner == session
                after = [b"after%d" % i for i in range(30)]
                await publish(producer, after)
                await consumed_all(got, before + after)
                nursery.cancel_scope.cancel()
            assert overlaps == []


# =============================================================================== other faces


async def test_local_offset_storage_with_zookeeper_discovery(zk_hosts, zk_kazoo, tmp_path) -> None:
    async with brokers_running(zk_hosts, tmp_path, [1]), zk_client(zk_hosts, tmp_path) as client, \
            client.producer() as producer:
        storage = LocalOffsetStorage(tmp_path / "offsets.json")
        got: list[bytes] = []
        async with client.consumer("g", FAST, offset_storage=storage) as consumer:
            await consumer.subscribe(TOPIC, collector(got))
            await publish(producer, [b"a", b"b"])
            await consumed_all(got, [b"a", b"b"])
        assert await kz(zk_kazoo.exists, "/meta/consumers/g/offsets") is None
        entries = json.loads((tmp_path / "offsets.json").read_text())["g"]
        assert {entry["topic"] for entry in entries} == {TOPIC} and any(entry["offset"] > 0 for entry in entries)


async def test_blocking_client_through_zookeeper(zk_hosts, tmp_path) -> None:
    async with brokers_running(zk_hosts, tmp_path, [1, 2]):
        def scenario() -> list[bytes]:
            got: list[bytes] = []
            with blocking.Client(zk_connect=zk_hosts, zk_root="/meta", connection_settings=FAST_CONNECTIONS,
                                 recover_path=str(tmp_path / "recover")) as client:
                with client.producer() as producer:
                    for i in range(10):
                        assert producer.send(TOPIC, b"m%d" % i).success
                with client.consumer("g", FAST) as consumer:
                    consumer.subscribe(TOPIC, lambda m: got.append(m.body))
                    assert consumer.consumer_id.startswith("g_")
                    deadline = time.monotonic() + 10
                    while len(set(got)) < 10 and time.monotonic() < deadline:
                        time.sleep(0.02)
                    assert {str(p) for ps in consumer.assignment().values() for p in ps} == partition_names([1, 2])
            return got
        got = await trio.to_thread.run_sync(scenario)
        assert sorted(set(got)) == sorted(b"m%d" % i for i in range(10))


async def test_client_arguments() -> None:
    with pytest.raises(TypeError):
        MetaqClient()
    with pytest.raises(TypeError):
        MetaqClient("meta://127.0.0.1:8123", zk_connect="127.0.0.1:2181")
    assert isinstance(MetaqClient(zk_connect="h:1/x", zk_root="meta").source.paths.root, str)
    assert MetaqClient(zk_connect="h:1", zk_root="meta/").source.paths.root == "/meta"
    with pytest.raises(ValueError):
        ConsumerConfig(load_balance_strategy="consist")
    with pytest.raises(MetaqClientError):   # not open yet
        MetaqClient(zk_connect="h:1").producer()


async def test_update_consumer_offsets_moves_a_group_past_the_end(zk_hosts, zk_kazoo, tmp_path) -> None:
    # broker.md §4.6: an offset beyond the end is answered 301 <max> by a broker with
    # updateConsumerOffsets=true; the consumer moves there and commits it to ZooKeeper.
    async with trio.open_nursery() as nursery:
        data_dir = tmp_path / "broker-1"
        data_dir.mkdir()
        config = make_config(str(data_dir), BROKER_INI.format(broker_id=1, hosts=zk_hosts, partitions=1),
                             update_consumer_offsets=True)
        broker = Broker(config)
        broker.zk_sync_time = 0.0
        await nursery.start(functools.partial(broker.run, handle_signals=False))
        try:
            async with zk_client(zk_hosts, tmp_path) as client, client.producer() as producer:
                old = await publish(producer, [b"old-%d" % i for i in range(3)])
                end = old[-1].offset + 20 + len(b"old-2")
                await kz(zk_kazoo.create, "/meta/consumers/g/offsets/orders/1-0", b"-1-999999", makepath=True)
                got: list[bytes] = []
                async with client.consumer("g", FAST) as consumer:
                    await consumer.subscribe(TOPIC, collector(got))

                    async def moved() -> bool:
                        return any(p.offset == end for p in consumer.positions())
                    await wait_for(moved)
                    await publish(producer, [b"new"])
                    await consumed_all(got, [b"new"])
                    assert got == [b"new"]  # nothing before the end was delivered
                stored = (await kz(zk_kazoo.get, "/meta/consumers/g/offsets/orders/1-0"))[0].decode()
                assert stored.rsplit("-", 1)[1] == str(end + 20 + len(b"new"))
        finally:
            broker.shutdown()

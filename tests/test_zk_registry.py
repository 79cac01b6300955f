"""zkmeta.registry against a real ZooKeeper: the §3.2/§3.3 layout byte for byte, the §3.4 life
cycle (startup order, node-exists rules, session expiry, reload, shutdown)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from metaq_server.config import BrokerConfig, ZooKeeperConfig
from zk_util import *  # noqa: F403  (fixtures; conftest registration is in zkmeta/INTEGRATION.md)
from zk_util import PartitionProxy, close_session, dump_tree, new_kazoo, require_zookeeper
from zkmeta.bridge import ZkSettings
from zkmeta.registry import (
    BrokerIdentity, BrokerRegistry, NodeConflictError, RegistrationError, TopicRegistration,
    advertised_host, open_registry, startup_topics,
)

URI = b"meta://127.0.0.1:8123"
IDENTITY = BrokerIdentity.master(3, "127.0.0.1", 8123, config_checksum=0xDEADBEEF)
TOPICS = [TopicRegistration("alpha", 4), TopicRegistration("beta", 1)]


@asynccontextmanager
async def registry_on(hosts: str, *, session_ms: int = 4000, sync_time: float = 0.0,
                      root: str = "/meta") -> AsyncIterator[BrokerRegistry]:
    settings = ZkSettings(hosts, session_timeout_ms=session_ms, connection_timeout_ms=5000)
    async with BrokerRegistry.open(settings, root=root, sync_time=sync_time) as registry:
        yield registry


async def tree(kz, path: str = "/meta") -> dict[str, tuple[bytes, bool]]:
    return await trio.to_thread.run_sync(dump_tree, kz, path)


async def owner(kz, path: str) -> int:
    return (await trio.to_thread.run_sync(kz.get, path))[1].ephemeralOwner


async def czxid(kz, path: str) -> int:
    return (await trio.to_thread.run_sync(kz.get, path))[1].czxid


def ours(tree_: dict[str, tuple[bytes, bool]]) -> dict[str, tuple[bytes, bool]]:
    return {path: value for path, value in tree_.items() if "3-m" in path or "/ids/3" in path}


# ====================================================================================== layout

EXPECTED = {
    "/meta": (b"", False),
    "/meta/brokers": (b"", False),
    "/meta/brokers/ids": (b"", False),
    "/meta/brokers/ids/3": (b"meta://127.0.0.1:8123", False),
    "/meta/brokers/ids/3/master": (b"meta://127.0.0.1:8123", True),
    "/meta/brokers/ids/3/master_config_checksum": (b"3735928559", True),
    "/meta/brokers/topics": (b"", False),
    "/meta/brokers/topics/alpha": (b"", False),
    "/meta/brokers/topics/alpha/3-m": (b"4", True),
    "/meta/brokers/topics/beta": (b"", False),
    "/meta/brokers/topics/beta/3-m": (b"1", True),
    "/meta/brokers/topics-pub": (b"", False),
    "/meta/brokers/topics-pub/alpha": (b"", False),
    "/meta/brokers/topics-pub/alpha/3-m": (b'{"numParts":4,"broker":"3-m"}', True),
    "/meta/brokers/topics-pub/beta": (b"", False),
    "/meta/brokers/topics-pub/beta/3-m": (b'{"numParts":1,"broker":"3-m"}', True),
    "/meta/brokers/topics-sub": (b"", False),
    "/meta/brokers/topics-sub/alpha": (b"", False),
    "/meta/brokers/topics-sub/alpha/3-m": (b'{"numParts":4,"broker":"3-m"}', True),
    "/meta/brokers/topics-sub/beta": (b"", False),
    "/meta/brokers/topics-sub/beta/3-m": (b'{"numParts":1,"broker":"3-m"}', True),
}


async def test_layout_is_byte_exact(zk_hosts, zk_kazoo) -> None:
    async with registry_on(zk_hosts) as registry:
        await registry.register(IDENTITY, TOPICS)
        assert await tree(zk_kazoo) == EXPECTED
        for path, (_, ephemeral) in EXPECTED.items():
            if ephemeral:
                assert await owner(zk_kazoo, path) == registry.session_id
        # ACL of every node: world:anyone, all permissions (kazoo's OPEN_ACL_UNSAFE)
        acl, _ = await trio.to_thread.run_sync(zk_kazoo.get_acls, "/meta/brokers/ids/3/master")
        assert [(a.perms, a.id.scheme, a.id.id) for a in acl] == [(31, "world", "anyone")]
        stats = registry.statistics()
        assert (stats.registered, stats.registrations, stats.topic_writes) == (True, 1, 2)


async def test_zk_root_from_the_config_is_normalised(zk_hosts, zk_kazoo) -> None:
    config = ZooKeeperConfig(zk_connect=zk_hosts, zk_root="custom/root/", zk_sync_time_ms=0,
                             zk_session_timeout_ms=4000, zk_connection_timeout_ms=5000)
    async with open_registry(config) as registry:
        assert registry is not None and registry.sync_time == 0
        await registry.register(IDENTITY, TOPICS)
        moved = {"/custom/root" + path[len("/meta"):]: value for path, value in EXPECTED.items()}
        assert await tree(zk_kazoo, "/custom/root") == moved
        assert not await trio.to_thread.run_sync(zk_kazoo.exists, "/meta")


async def test_zk_disabled_means_no_registry_and_no_connection() -> None:
    # Nothing listens on port 1: a connection attempt would fail after its timeout.
    config = ZooKeeperConfig(zk_connect="127.0.0.1:1", zk_enable=False, zk_connection_timeout_ms=60_000)
    with trio.fail_after(1):
        async with open_registry(config) as registry:
            assert registry is None


async def test_accept_flags_decide_pub_and_sub_nodes(zk_hosts, zk_kazoo) -> None:
    # A stale topics-pub node of another session: acceptPublish=false must not delete it.
    squatter = await trio.to_thread.run_sync(new_kazoo, zk_hosts)
    stale = "/meta/brokers/topics-pub/hidden/3-m"
    await trio.to_thread.run_sync(lambda: squatter.create(stale, b"x", ephemeral=True, makepath=True))
    topics = [TopicRegistration("pubonly", 2, True, False), TopicRegistration("subonly", 3, False, True),
              TopicRegistration("hidden", 1, False, False)]
    try:
        async with registry_on(zk_hosts) as registry:
            await registry.register(IDENTITY, topics)
            nodes = {p: v for p, v in (await tree(zk_kazoo)).items() if p.endswith("/3-m")}
            assert nodes == {
                "/meta/brokers/topics/hidden/3-m": (b"1", True),
                "/meta/brokers/topics/pubonly/3-m": (b"2", True),
                "/meta/brokers/topics/subonly/3-m": (b"3", True),
                "/meta/brokers/topics-pub/hidden/3-m": (b"x", True),        # not ours: left alone
                "/meta/brokers/topics-pub/pubonly/3-m": (b'{"numParts":2,"broker":"3-m"}', True),
                "/meta/brokers/topics-sub/subonly/3-m": (b'{"numParts":3,"broker":"3-m"}', True),
            }
            assert await owner(zk_kazoo, stale) == squatter.client_id[0]
            # acceptPublish switched off by a reload: our pub node goes, the rest stays.
            assert await registry.reregister_topics(
                [TopicRegistration("pubonly", 2, False, False), topics[1]]) == ["pubonly"]
            after = await tree(zk_kazoo)
            assert "/meta/brokers/topics-pub/pubonly/3-m" not in after
            assert after["/meta/brokers/topics/pubonly/3-m"] == (b"2", True)
        assert await trio.to_thread.run_sync(squatter.exists, stale)   # shutdown left it too
    finally:
        await trio.to_thread.run_sync(squatter.stop)
        squatter.close()


# ===================================================================================== startup

CONFIG = """\
[system]
brokerId=3
numPartitions=2
unflushThreshold=0
unflushInterval=10000
maxSegmentSize=1024*1024
maxTransferSize=1024*1024

[zookeeper]
zk.zkConnect=localhost:2181

[topic=zeta]
numPartitions=5
acceptSubscribe=false

[topic=alpha]

[topic=logs-*]
numPartitions=3
"""


async def test_configured_topics_first_sorted_then_topics_on_disk(zk_hosts, zk_kazoo) -> None:
    config = BrokerConfig.from_text(CONFIG)
    topics = startup_topics(config, ["logs-x", "beta", "alpha", "aardvark"])
    assert topics == [
        TopicRegistration("alpha", 2, True, True),
        TopicRegistration("zeta", 5, True, False),
        TopicRegistration("aardvark", 2, True, True),      # on disk only: [system] defaults
        TopicRegistration("beta", 2, True, True),
        TopicRegistration("logs-x", 3, True, True),        # matched by [topic=logs-*]
    ]
    async with registry_on(zk_hosts) as registry:
        await registry.register(IDENTITY, topics)
        created = [await czxid(zk_kazoo, f"/meta/brokers/topics/{t.topic}/3-m") for t in topics]
        assert created == sorted(created)
        broker = [await czxid(zk_kazoo, f"/meta/brokers/ids/3/{n}") for n in ("master", "master_config_checksum")]
        assert broker == sorted(broker) and broker[-1] < created[0]
        assert list(registry.topics) == [t.topic for t in topics]


async def test_register_topic_is_idempotent_and_cheap(zk_hosts, zk_kazoo) -> None:
    async with registry_on(zk_hosts) as registry:
        # Seen before registration (a put between listen and register): written by register().
        assert not await registry.register_topic(TopicRegistration("early", 1))
        await registry.register(IDENTITY, TOPICS)
        assert "/meta/brokers/topics/early/3-m" in await tree(zk_kazoo)
        writes = registry.statistics().topic_writes
        assert await registry.register_topic(TopicRegistration("auto", 2))
        first = await czxid(zk_kazoo, "/meta/brokers/topics/auto/3-m")
        # Known topic: no ZooKeeper call, even with another config (non-forced registration).
        with trio.fail_after(0.5):
            assert not await registry.register_topic(TopicRegistration("auto", 9))
        assert await czxid(zk_kazoo, "/meta/brokers/topics/auto/3-m") == first
        assert registry.statistics().topic_writes == writes + 1
        for _ in range(20):
            registry.register_topic_soon(TopicRegistration("burst", 2))
        with trio.fail_after(5):
            while registry.statistics().topic_writes < writes + 2:
                await trio.sleep(0.01)
        await trio.sleep(0.1)
        assert registry.statistics().topic_writes == writes + 2
        assert (await tree(zk_kazoo))["/meta/brokers/topics-sub/burst/3-m"] == (
            b'{"numParts":2,"broker":"3-m"}', True)


# ============================================================================ node already exists


async def _squat(hosts: str, path: str, data: bytes, *, ephemeral: bool = True):
    client = await trio.to_thread.run_sync(new_kazoo, hosts)
    await trio.to_thread.run_sync(lambda: client.create(path, data, ephemeral=ephemeral, makepath=True))
    return client


async def _release(client) -> None:
    await trio.to_thread.run_sync(client.stop)
    client.close()


async def test_node_with_our_data_is_waited_for(zk_hosts, zk_kazoo) -> None:
    # Our previous process died; its session (holding our master node) is still alive.
    previous = await _squat(zk_hosts, "/meta/brokers/ids/3/master", URI)
    async with registry_on(zk_hosts, session_ms=5000) as registry:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(registry.register, IDENTITY, TOPICS)
            await trio.sleep(0.6)
            assert not registry.registered                 # still waiting
            started = trio.current_time()
            await _release(previous)                       # the old session ends: node deleted
        waited = trio.current_time() - started
        assert registry.registered and waited < 3.0
        assert registry.statistics().waits == 1
        assert await tree(zk_kazoo) == EXPECTED
        assert await owner(zk_kazoo, "/meta/brokers/ids/3/master") == registry.session_id


async def test_node_with_our_data_gives_up_after_a_session_timeout(zk_hosts, zk_kazoo) -> None:
    other = await _squat(zk_hosts, "/meta/brokers/ids/3/master", URI)
    try:
        async with registry_on(zk_hosts, session_ms=1000, sync_time=5.0) as registry:
            started = trio.current_time()
            with pytest.raises(NodeConflictError, match="still belongs to another session"):
                await registry.register(IDENTITY, TOPICS)
            assert 0.9 <= trio.current_time() - started < 3.0
            assert registry.failed and not registry.registered
        # Shutdown after a failed registration: nothing deleted, and no zkSyncTimeMs pause.
        assert trio.current_time() - started < 3.0
        nodes = await tree(zk_kazoo)
        assert nodes["/meta/brokers/ids/3/master"] == (URI, True)
        assert await owner(zk_kazoo, "/meta/brokers/ids/3/master") == other.client_id[0]
    finally:
        await _release(other)


@pytest.mark.parametrize("ephemeral", [True, False])
async def test_node_with_other_data_is_refused_at_once(zk_hosts, zk_kazoo, ephemeral) -> None:
    other = await _squat(zk_hosts, "/meta/brokers/ids/3/master", b"meta://10.9.9.9:8123",
                         ephemeral=ephemeral)
    try:
        async with registry_on(zk_hosts, session_ms=10_000) as registry:
            with trio.fail_after(2):
                with pytest.raises(RegistrationError) as info:
                    await registry.register(IDENTITY, TOPICS)
            assert "meta://10.9.9.9:8123" in str(info.value)
        nodes = await tree(zk_kazoo)
        assert nodes["/meta/brokers/ids/3/master"] == (b"meta://10.9.9.9:8123", ephemeral)
        assert nodes["/meta/brokers/ids/3"] == (b"", False)       # step 4 never ran
        assert not any(path.endswith("/3-m") for path in nodes)
    finally:
        await _release(other)


async def test_failure_at_a_later_step_deletes_nothing_at_shutdown(zk_hosts, zk_kazoo) -> None:
    other = await _squat(zk_hosts, "/meta/brokers/topics/beta/3-m", b"8")   # another broker 3
    try:
        async with registry_on(zk_hosts) as registry:
            with pytest.raises(NodeConflictError, match="other data"):
                await registry.register(IDENTITY, TOPICS)
            assert registry.failed
        nodes = await tree(zk_kazoo)
        assert nodes["/meta/brokers/topics/beta/3-m"] == (b"8", True)
        # No unregistration ran: ids/3 keeps the URI we wrote at step 4 (as Java leaves it);
        # our ephemeral nodes went with our session.
        assert nodes["/meta/brokers/ids/3"] == (URI, False)
        assert "/meta/brokers/ids/3/master" not in nodes
    finally:
        await _release(other)


# ==================================================================================== shutdown


async def test_shutdown_removes_exactly_our_nodes(zk_hosts, zk_kazoo) -> None:
    seven = BrokerIdentity.master(7, "127.0.0.1", 8124, config_checksum=1)
    slave = await _squat(zk_hosts, "/meta/brokers/ids/3/slave1", b"meta://127.0.0.1:9123")
    consumer = "/meta/consumers/g/ids/g_c1"
    await trio.to_thread.run_sync(lambda: zk_kazoo.create(consumer, b"alpha", ephemeral=True, makepath=True))
    try:
        async with registry_on(zk_hosts) as other:
            await other.register(seven, [TopicRegistration("alpha", 2)])
            async with registry_on(zk_hosts, sync_time=0.5) as registry:
                await registry.register(IDENTITY, TOPICS)
                await registry.register_topic(TopicRegistration("auto", 1))
                before = await tree(zk_kazoo)
                async with trio.open_nursery() as nursery:
                    started = trio.current_time()
                    nursery.start_soon(registry.aclose)
                    with trio.fail_after(5):
                        while "/meta/brokers/ids/3/master" in await tree(zk_kazoo):
                            await trio.sleep(0.02)
                    assert trio.current_time() - started < 0.5      # unregistered before the pause
                    await trio.sleep(0.1)
                    assert registry.zk.closed                        # session closed before the pause
                assert trio.current_time() - started >= 0.5          # zkSyncTimeMs pause
            after = await tree(zk_kazoo)
            removed = {p for p in before if p not in after}
            assert removed == {p for p, (_, eph) in before.items() if eph and "3-m" in p} | {
                "/meta/brokers/ids/3/master", "/meta/brokers/ids/3/master_config_checksum"}
            assert after["/meta/brokers/ids/3"] == (b"", False)          # slaves remain: blanked
            assert after["/meta/brokers/ids/3/slave1"] == (b"meta://127.0.0.1:9123", True)
            assert after["/meta/brokers/topics/alpha/7-m"] == (b"2", True)
            assert after["/meta/brokers/ids/7/master"] == (b"meta://127.0.0.1:8124", True)
            assert after[consumer] == (b"alpha", True)
        final = await tree(zk_kazoo)
        assert "/meta/brokers/ids/7" not in final                     # no children left: deleted
        assert "/meta/brokers/ids/3/slave1" in final
    finally:
        await _release(slave)


async def test_slave_registration_layout(zk_hosts, zk_kazoo) -> None:
    identity = BrokerIdentity(broker_id=3, uri="meta://127.0.0.1:9123", slave_id=1)
    async with registry_on(zk_hosts) as registry:
        await registry.register(identity, [TopicRegistration("alpha", 2)])
        nodes = {p: v for p, v in (await tree(zk_kazoo)).items() if v[1]}
        assert nodes == {
            "/meta/brokers/ids/3/slave1": (b"meta://127.0.0.1:9123", True),
            "/meta/brokers/topics/alpha/3-s1": (b"2", True),
            "/meta/brokers/topics-pub/alpha/3-s1": (b'{"numParts":2,"broker":"3-s1"}', True),
            "/meta/brokers/topics-sub/alpha/3-s1": (b'{"numParts":2,"broker":"3-s1"}', True),
        }
        assert (await tree(zk_kazoo))["/meta/brokers/ids/3"] == (b"", False)   # never written
    assert (await tree(zk_kazoo))["/meta/brokers/ids/3"] == (b"", False)      # nor deleted


# ====================================================================================== reload


async def test_reload_rewrites_changed_topics_and_the_checksum(zk_hosts, zk_kazoo) -> None:
    async with registry_on(zk_hosts) as registry:
        await registry.register(IDENTITY, TOPICS)
        alpha = await czxid(zk_kazoo, "/meta/brokers/topics/alpha/3-m")
        beta = await czxid(zk_kazoo, "/meta/brokers/topics/beta/3-m")
        rewritten = await registry.reregister_topics(
            [TopicRegistration("alpha", 4), TopicRegistration("beta", 6), TopicRegistration("gamma", 1)])
        assert rewritten == ["beta", "gamma"]
        await registry.update_config_checksum(42)
        nodes = await tree(zk_kazoo)
        assert await czxid(zk_kazoo, "/meta/brokers/topics/alpha/3-m") == alpha      # untouched
        assert await czxid(zk_kazoo, "/meta/brokers/topics/beta/3-m") > beta         # re-created
        assert nodes["/meta/brokers/topics/beta/3-m"] == (b"6", True)
        assert nodes["/meta/brokers/topics-pub/beta/3-m"] == (b'{"numParts":6,"broker":"3-m"}', True)
        assert nodes["/meta/brokers/topics-sub/gamma/3-m"] == (b'{"numParts":1,"broker":"3-m"}', True)
        assert nodes["/meta/brokers/ids/3/master_config_checksum"] == (b"42", True)


# ================================================================================ session expiry


async def _wait_for_registrations(registry: BrokerRegistry, count: int, timeout: float) -> bool:
    with trio.move_on_after(timeout):
        while registry.statistics().registrations < count:
            await trio.sleep(0.02)
        return True
    return False


async def test_session_expiry_recreates_every_node(zk_server, zk_hosts, zk_kazoo) -> None:
    async with registry_on(zk_hosts) as registry:
        await registry.register(IDENTITY, TOPICS)
        await registry.register_topic(TopicRegistration("auto", 2))
        before = await tree(zk_kazoo)
        old = registry.session_id
        for _attempt in range(3):
            # A real, server-side end of the session (same id and password from a 2nd client).
            await trio.to_thread.run_sync(close_session, zk_server.connect_string, registry.zk.client_id)
            if await _wait_for_registrations(registry, 2, 10):
                break
        assert registry.statistics().registrations == 2
        assert registry.session_id != old
        after = await tree(zk_kazoo)
        assert after == before
        for path, (_, ephemeral) in after.items():
            if ephemeral:
                assert await owner(zk_kazoo, path) == registry.session_id
        assert "/meta/brokers/topics-sub/auto/3-m" in after


async def test_partition_longer_than_the_session_timeout(zk_server, zk_hosts, zk_kazoo) -> None:
    """A network partition between the registry and a running server: the server expires the
    session; after the partition heals the registry gets a new session and re-creates every
    node (nothing else is disturbed: only this client's path through the proxy is cut)."""
    chroot = zk_hosts[len(zk_server.connect_string):]
    proxy = PartitionProxy(zk_server.host, zk_server.port)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(proxy.run)
        async with registry_on(address + chroot, session_ms=1000) as registry:
            await registry.register(IDENTITY, TOPICS)
            old = registry.session_id
            proxy.cut()
            with trio.fail_after(10):                      # the server expires the session
                while "/meta/brokers/ids/3/master" in await tree(zk_kazoo):
                    await trio.sleep(0.05)
            assert not registry.zk.connected
            registry.register_topic_soon(TopicRegistration("late", 1))   # fails, kept for later
            await trio.sleep(0.2)
            proxy.heal()
            assert await _wait_for_registrations(registry, 2, 15)
            assert registry.session_id != old
            expected = dict(EXPECTED)
            for kind in ("topics", "topics-pub", "topics-sub"):
                expected[f"/meta/brokers/{kind}/late"] = (b"", False)
                expected[f"/meta/brokers/{kind}/late/3-m"] = (
                    b"1" if kind == "topics" else b'{"numParts":1,"broker":"3-m"}', True)
            assert await tree(zk_kazoo) == expected
            for path, (_, ephemeral) in expected.items():
                if ephemeral:
                    assert await owner(zk_kazoo, path) == registry.session_id
        nursery.cancel_scope.cancel()


async def test_server_restart_longer_than_the_session_timeout(tmp_path) -> None:
    """A ZooKeeper of its own (stopping it must not disturb the other tests), down for longer
    than the session timeout and restarted on its data directory. ZooKeeper 3.8 restores
    sessions from its data and restarts their timeouts, so it depends on how soon the client
    reconnects: the old session is revived (nothing is written again) or it expires (the
    registry re-registers on a new session). Either way every node is back, owned by the
    registry's current session."""
    server = await trio.to_thread.run_sync(lambda: require_zookeeper(data_dir=str(tmp_path / "zk")))
    try:
        hosts = server.connect_string + "/restart"
        async with registry_on(hosts, session_ms=1000) as registry:
            await registry.register(IDENTITY, TOPICS)
            old = registry.session_id
            await trio.to_thread.run_sync(lambda: server.stop(keep_data=True))
            await trio.sleep(1.5)
            assert not registry.zk.connected
            await trio.to_thread.run_sync(server.start)
            kz = await trio.to_thread.run_sync(new_kazoo, hosts)
            try:
                with trio.fail_after(15):
                    while not (registry.zk.connected and await tree(kz) == EXPECTED):
                        await trio.sleep(0.05)
                for path, (_, ephemeral) in EXPECTED.items():
                    if ephemeral:
                        assert await owner(kz, path) == registry.session_id
            finally:
                await trio.to_thread.run_sync(kz.stop)
                kz.close()
            revived = registry.session_id == old
            assert registry.statistics().registrations == (1 if revived else 2)
    finally:
        await trio.to_thread.run_sync(server.stop)


def test_advertised_host() -> None:
    assert advertised_host("broker1.example", "0.0.0.0") == "broker1.example"
    assert advertised_host(None, "127.0.0.1") == "127.0.0.1"
    wildcard = advertised_host(None, "0.0.0.0")
    assert wildcard and wildcard != "0.0.0.0"

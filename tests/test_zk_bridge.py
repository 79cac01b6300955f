"""zkmeta.bridge: kazoo operations awaited from trio, watches and states through channels."""

from __future__ import annotations

import pytest
import trio

from metaq_server.local_zk import free_port
from zk_util import *  # noqa: F403  (fixtures; conftest registration is in zkmeta/INTEGRATION.md)
from zk_util import close_session, new_kazoo
from zkmeta.bridge import (
    KazooState, NodeExistsError, NoNodeError, NotEmptyError, ZkConnectError, ZkSettings, open_zk,
)


def _settings(hosts: str, **kw: int) -> ZkSettings:
    return ZkSettings(hosts, session_timeout_ms=kw.get("session", 4000),
                      connection_timeout_ms=kw.get("connection", 5000))


async def test_operations_round_trip(zk_hosts) -> None:
    async with open_zk(_settings(zk_hosts)) as zk:
        assert zk.connected and zk.session_id
        assert await zk.create("/a/b/c", "x", makepath=True) == "/a/b/c"
        data, stat = await zk.get("/a/b/c")
        assert data == b"x" and stat.ephemeralOwner == 0
        assert (await zk.get("/a"))[0] == b""            # parents: persistent, empty data
        await zk.create("/a/e", b"", ephemeral=True)
        assert (await zk.exists("/a/e")).ephemeralOwner == zk.session_id
        assert sorted(await zk.get_children("/a")) == ["b", "e"]
        await zk.set("/a/b/c", b"y")
        assert (await zk.get("/a/b/c"))[0] == b"y"
        with pytest.raises(NodeExistsError):
            await zk.create("/a/b/c")
        with pytest.raises(NoNodeError):
            await zk.get("/missing")
        with pytest.raises(NotEmptyError):
            await zk.delete("/a/b")
        await zk.delete("/a", recursive=True)
        assert await zk.exists("/a") is None
        await zk.sync("/")
    assert zk.closed


async def test_chroot_is_created_and_applied(zk_server) -> None:
    hosts = zk_server.connect_string + "/bridge-chroot/deep"
    async with open_zk(_settings(hosts)) as zk:
        await zk.create("/n", b"1")
    plain = new_kazoo(zk_server.connect_string)
    try:
        assert plain.get("/bridge-chroot/deep/n")[0] == b"1"
        plain.delete("/bridge-chroot", recursive=True)
    finally:
        plain.stop()
        plain.close()


async def test_connection_timeout_is_an_error() -> None:
    port = free_port()   # nothing listens there
    with trio.fail_after(10):
        with pytest.raises(ZkConnectError, match="within 500 ms"):
            async with open_zk(_settings(f"127.0.0.1:{port}", connection=500)):
                pass


async def test_watches_arrive_through_channels(zk_hosts) -> None:
    async with open_zk(_settings(zk_hosts)) as zk:
        await zk.ensure_path("/w")
        with trio.fail_after(10):
            async with zk.watch_children("/w") as children, zk.watch_data("/w/x") as data:
                assert await children.receive() == []
                assert await data.receive() == (None, None)
                stat, changed = await zk.exists_watch("/w/x")
                assert stat is None and not changed.is_set()
                await zk.create("/w/x", b"v1")
                await changed.wait()
                assert await children.receive() == ["x"]
                value, stat = await data.receive()
                assert value == b"v1" and stat.version == 0
                await zk.set("/w/x", b"v2")
                assert (await data.receive())[0] == b"v2"
                await zk.delete("/w/x")
                assert await children.receive() == []


async def test_state_changes_report_session_loss(zk_server, zk_hosts) -> None:
    async with open_zk(_settings(zk_hosts)) as zk:
        states = zk.state_changes()
        old = zk.client_id
        # Close the session from a second client with the same id and password (real expiry).
        await trio.to_thread.run_sync(close_session, zk_server.connect_string, old)
        seen = []
        with trio.fail_after(15):
            async for state in states:
                seen.append(state)
                if state == KazooState.CONNECTED and zk.session_id != old[0]:
                    break
        assert KazooState.LOST in seen
        states.close()


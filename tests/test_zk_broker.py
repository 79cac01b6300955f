"""A real broker registered in a real ZooKeeper (broker.md §3.4): startup registration after
listening, topics configured then on disk, auto-created topics, reload, shutdown, conflicts.

These tests run once the broker integration of zkmeta/INTEGRATION.md is applied (they are
skipped before, with that reason)."""

from __future__ import annotations

import functools

import pytest
import trio

from metaq_core import LogStore
from metaq_server.broker import Broker
from server_util import RawClient, make_config
from zk_util import *  # noqa: F403  (fixtures; conftest registration is in zkmeta/INTEGRATION.md)
from zk_util import dump_tree, new_kazoo
from zkmeta.registry import RegistrationError

pytestmark = pytest.mark.skipif(not hasattr(Broker, "zk_identity"),
                                reason="broker integration not applied yet (zkmeta/INTEGRATION.md)")

INI = """\
[system]
brokerId=5
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

[topic=test]
numPartitions=1
acceptPublish=false

[topic=logs-*]
numPartitions=3
"""


async def _tree(kz) -> dict[str, tuple[bytes, bool]]:
    return await trio.to_thread.run_sync(dump_tree, kz, "/meta")


def _ephemeral(tree: dict[str, tuple[bytes, bool]]) -> dict[str, bytes]:
    return {path: data for path, (data, eph) in tree.items() if eph}


async def _start(nursery: trio.Nursery, config, path: str | None = None) -> Broker:
    broker = Broker(config, config_path=path)
    await nursery.start(functools.partial(broker.run, handle_signals=False))
    return broker


async def test_broker_registers_serves_and_unregisters(zk_hosts, zk_kazoo, data_dir, tmp_path) -> None:
    with LogStore(data_dir) as store:          # a topic that only exists on disk
        store.partition("orphan", 0)
    ini = tmp_path / "server.ini"
    ini.write_text(INI.format(hosts=zk_hosts))
    config = make_config(data_dir, ini.read_text())
    async with trio.open_nursery() as nursery:
        broker = await _start(nursery, config, str(ini))
        uri = f"meta://127.0.0.1:{broker.port}".encode()
        nodes = _ephemeral(await _tree(zk_kazoo))
        assert nodes == {
            "/meta/brokers/ids/5/master": uri,
            "/meta/brokers/ids/5/master_config_checksum": str(config.config_checksum).encode(),
            "/meta/brokers/topics/test/5-m": b"1",
            "/meta/brokers/topics-sub/test/5-m": b'{"numParts":1,"broker":"5-m"}',
            "/meta/brokers/topics/orphan/5-m": b"2",
            "/meta/brokers/topics-pub/orphan/5-m": b'{"numParts":2,"broker":"5-m"}',
            "/meta/brokers/topics-sub/orphan/5-m": b'{"numParts":2,"broker":"5-m"}',
        }
        assert (await trio.to_thread.run_sync(zk_kazoo.get, "/meta/brokers/ids/5"))[0] == uri

        # A put auto-creates logs-a: registered without delaying the put.
        client = await RawClient.connect(broker.port)
        await client.send(b"put logs-a 2 5 0 1\r\nhello")
        (result,) = await client.receive()
        assert result.status == 200
        await client.aclose()
        with trio.fail_after(5):
            while "/meta/brokers/topics-pub/logs-a/5-m" not in await _tree(zk_kazoo):
                await trio.sleep(0.02)
        assert _ephemeral(await _tree(zk_kazoo))["/meta/brokers/topics/logs-a/5-m"] == b"3"

        # Reload: test now accepts publishing and has 2 partitions; the checksum follows.
        ini.write_text(INI.format(hosts=zk_hosts).replace(
            "numPartitions=1\nacceptPublish=false", "numPartitions=2"))
        await broker.reload()
        nodes = _ephemeral(await _tree(zk_kazoo))
        assert nodes["/meta/brokers/topics-pub/test/5-m"] == b'{"numParts":2,"broker":"5-m"}'
        assert nodes["/meta/brokers/ids/5/master_config_checksum"] == \
            str(broker.config.config_checksum).encode()

        broker.shutdown()
    assert _ephemeral(await _tree(zk_kazoo)) == {}
    assert "/meta/brokers/ids/5" not in await _tree(zk_kazoo)


async def test_registration_conflict_aborts_startup(zk_hosts, zk_kazoo, data_dir, tmp_path) -> None:
    other = await trio.to_thread.run_sync(new_kazoo, zk_hosts)
    try:
        await trio.to_thread.run_sync(lambda: other.create(
            "/meta/brokers/ids/5/master", b"meta://10.1.1.1:8123", ephemeral=True, makepath=True))
        config = make_config(data_dir, INI.format(hosts=zk_hosts))
        broker = Broker(config)
        with pytest.RaisesGroup(RegistrationError, flatten_subgroups=True):
            async with trio.open_nursery() as nursery:
                await nursery.start(functools.partial(broker.run, handle_signals=False))
        assert broker.store.closed
        tree = await _tree(zk_kazoo)
        assert tree["/meta/brokers/ids/5/master"] == (b"meta://10.1.1.1:8123", True)
    finally:
        await trio.to_thread.run_sync(other.stop)
        other.close()

"""metaq_server.local_zk: a real ZooKeeper child process, started and stopped both ways."""

from __future__ import annotations

import os
import socket

import pytest
import trio

from metaq_server import local_zk
from metaq_server.local_zk import (
    INSTALL_HINT, LocalZooKeeper, ZooKeeperNotInstalled, ZooKeeperStartError, find_classpath,
    find_java, free_port, loopback_port,
)
from zk_util import *  # noqa: F403  (fixtures; conftest registration is in zkmeta/INTEGRATION.md)
from zk_util import TICK_MS, require_zookeeper_installed


def _refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def test_missing_zookeeper_says_how_to_install(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv(local_zk.CLASSPATH_ENV, raising=False)
    monkeypatch.delenv("ZOOKEEPER_HOME", raising=False)
    monkeypatch.setattr(local_zk, "JAR_DIRS", (str(tmp_path),))
    with pytest.raises(ZooKeeperNotInstalled) as info:
        LocalZooKeeper(java="/bin/true").start()
    message = str(info.value)
    assert "\n" not in message
    assert INSTALL_HINT in message and INSTALL_HINT == "apt-get install zookeeper default-jre-headless"
    with pytest.raises(ZooKeeperNotInstalled):
        find_classpath((str(tmp_path),))


def test_missing_java_says_how_to_install(monkeypatch) -> None:
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(ZooKeeperNotInstalled, match="apt-get install zookeeper default-jre-headless"):
        find_java()


def test_finds_debian_jars_or_skips() -> None:
    require_zookeeper_installed()
    classpath = find_classpath()
    first = classpath.split(os.pathsep)[0]
    assert os.path.basename(first).startswith("zookeeper") and os.path.isfile(first)


def test_sync_server_answers_srvr_and_stops(zk_server) -> None:
    assert zk_server.running
    assert zk_server.srvr().startswith("Zookeeper version")
    assert zk_server.connect_string == f"127.0.0.1:{zk_server.port}"


async def test_async_server_on_a_configured_port_cleans_up() -> None:
    require_zookeeper_installed()                 # skip (or fail in CI) when not installed
    port = free_port()
    server = LocalZooKeeper(port=port, tick_time_ms=TICK_MS)
    with trio.fail_after(30):
        async with server as zk:
            assert zk.port == port
            data_dir = zk.data_dir
            pid = zk.pid
            assert os.path.isdir(data_dir)
            assert "Mode: standalone" in zk.srvr()
    assert not server.running
    assert _refused(port)
    assert not os.path.exists(data_dir)            # a private temporary directory is removed
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_busy_configured_port_fails_with_the_log(tmp_path) -> None:
    require_zookeeper_installed()
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server = LocalZooKeeper(port=port, data_dir=str(tmp_path / "zk"), startup_timeout=20)
        with pytest.raises(ZooKeeperStartError) as info:
            server.start()
        assert not server.running
        assert "Address already in use" in info.value.log_tail
    assert os.path.isdir(tmp_path / "zk")         # a given data directory is kept


def test_loopback_port_for_serve_local() -> None:
    assert loopback_port(None) == 2181
    assert loopback_port("localhost:2181") == 2181
    assert loopback_port("127.0.0.1:2999,127.0.0.1:3000/chroot") == 2999
    assert loopback_port("localhost") == 2181
    with pytest.raises(ValueError, match="does not point at this machine"):
        loopback_port("zk1.example:2181")

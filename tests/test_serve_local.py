"""``metaq-trio serve --local`` from a clean state, as a real process: it starts its own ZooKeeper,
registers the broker in MetaQ's layout, and at SIGTERM unregisters and stops ZooKeeper last."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time

from kazoo.client import KazooClient

from server_util import free_port
from zk_util import require_zookeeper_installed

SERVER_INI = """\
[system]
brokerId=3
numPartitions=2
unflushThreshold=0
unflushInterval=10000
maxSegmentSize=1024*1024*1024
maxTransferSize=1024*1024

[zookeeper]
zk.zkConnect=localhost:2181
zk.zkSyncTimeMs=100

[topic=orders]
"""


def _wait_for(predicate, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def test_serve_local_starts_registers_and_stops_its_zookeeper(tmp_path):
    require_zookeeper_installed()
    config = tmp_path / "server.ini"
    config.write_text(SERVER_INI)
    port = free_port()
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "metaq_server.cli", "serve", "--local", "--zk-port", "0", "-c", str(config),
             "--port", str(port), "--data-dir", str(tmp_path / "data")],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        _wait_for(lambda: "registered in ZooKeeper" in log_path.read_text(errors="replace"), "registration")
        zk_port = int(re.search(r"local ZooKeeper at 127\.0\.0\.1:(\d+)", log_path.read_text()).group(1))
        assert _listening(port)
        zk = KazooClient(hosts=f"127.0.0.1:{zk_port}")
        zk.start(timeout=10)
        try:
            data, stat = zk.get("/meta/brokers/ids/3/master")
            assert data == b"meta://127.0.0.1:%d" % port and stat.ephemeralOwner != 0
            assert zk.get("/meta/brokers/topics/orders/3-m")[0] == b"2"
        finally:
            zk.stop()
            zk.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        assert not _listening(zk_port), "ZooKeeper must be stopped with the broker"
        assert not _listening(port)
        text = log_path.read_text()
        assert text.index("unregistered from ZooKeeper") < text.index("stopping ZooKeeper")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

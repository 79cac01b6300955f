"""Helpers for the broker tests: an in-process broker on a free port, and a raw protocol client
that speaks through real TCP sockets with the shared wire codec."""

from __future__ import annotations

import functools
import os
import re
import socket
import subprocess
import sys
import time

import trio

from metaq_core.wire import FrameDecoder, encode
from metaq_server.broker import Broker
from metaq_server.config import BrokerConfig

TEST_INI = """\
[system]
brokerId=1
numPartitions=2
serverPort=8123
unflushThreshold=0
unflushInterval=10000
maxSegmentSize=1024*1024*1024
maxTransferSize=1024*1024
stat=true
updateConsumerOffsets=false

[zookeeper]
zk.zkEnable=false
zk.zkConnect=localhost:2181

[topic=test]
numPartitions=1

[topic=meta-test]
numPartitions=4

[topic=logs-*]
numPartitions=3
"""


def make_config(data_dir: str, text: str = TEST_INI, **system: object) -> BrokerConfig:
    config = BrokerConfig.from_text(text)
    return config.with_system(data_path=data_dir, server_port=0, host_name="127.0.0.1", **system)


async def start_broker(nursery: trio.Nursery, config: BrokerConfig, config_path: str | None = None) -> Broker:
    broker = Broker(config, config_path=config_path)
    await nursery.start(functools.partial(broker.run, handle_signals=False))
    return broker


class RawClient:
    """A MetaQ client reduced to bytes: send frames, read decoded events."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()
        self.raw = bytearray()

    @classmethod
    async def connect(cls, port: int) -> RawClient:
        return cls(await trio.open_tcp_stream("127.0.0.1", port))

    async def send(self, data: bytes | object) -> None:
        await self.stream.send_all(data if isinstance(data, (bytes, bytearray)) else encode(data))

    async def receive(self, count: int = 1, timeout: float = 10.0) -> list:
        events = []
        with trio.fail_after(timeout):
            while len(events) < count:
                event = self.decoder.next_event()
                if event is not None:
                    events.append(event)
                    continue
                data = await self.stream.receive_some(1 << 20)
                if not data:
                    raise EOFError(f"connection closed after {len(events)} of {count} responses")
                self.raw += data
                self.decoder.receive_data(data)
        return events

    async def call(self, request: bytes | object):
        await self.send(request)
        return (await self.receive(1))[0]

    async def read_raw(self, size: int, timeout: float = 10.0) -> bytes:
        with trio.fail_after(timeout):
            while len(self.raw) < size:
                data = await self.stream.receive_some(1 << 20)
                if not data:
                    break
                self.raw += data
        out = bytes(self.raw[:size])
        del self.raw[:size]
        return out

    async def closed_by_peer(self, timeout: float = 10.0) -> bool:
        with trio.fail_after(timeout):
            while True:
                try:
                    data = await self.stream.receive_some(1 << 16)
                except trio.BrokenResourceError:
                    return True
                if not data:
                    return True

    async def aclose(self) -> None:
        await self.stream.aclose()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_broker_process(data_dir: str, port: int, *extra: str) -> subprocess.Popen:
    """``metaq-trio serve`` as a real child process; returns once it accepts connections."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "metaq_server.cli", "serve", "--port", str(port), "--data-dir", data_dir, *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited: {proc.stdout.read().decode(errors='replace')}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("broker did not start within 30 s")


PUT_ANSWER = re.compile(rb"(-?\d+) (\d+) (-?\d+)\Z")

"""Shared helpers of the client tests: broker configurations, fast consumer settings, waiting
helpers, and the two facades (trio and blocking) behind one async interface so that the same
scenario runs against both."""

from __future__ import annotations

import os

import trio

from metaq_client import (
    ConsumerConfig, LocalOffsetStorage, Message, MetaqClient, SendResult, blocking,
    local_recover,
)
from metaq_client.connection import ConnectionSettings

CLIENT_INI = """\
[system]
brokerId=1
numPartitions=2
unflushThreshold=0
unflushInterval=10000
maxSegmentSize=1024*1024*1024
maxTransferSize=4*1024*1024
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

SMALL_SEGMENTS_INI = CLIENT_INI.replace("maxSegmentSize=1024*1024*1024", "maxSegmentSize=600").replace(
    "updateConsumerOffsets=false", "updateConsumerOffsets=false\ndeletePolicy=delete,1h")

FAST = ConsumerConfig(max_delay_fetch_time=0.05, commit_offset_period=0.2, recover_delay=0.1,
                      recover_interval=0.2, max_fetch_retries=2)
FAST_CONNECTIONS = ConnectionSettings(reconnect_delay=0.05, max_reconnect_delay=0.2, connect_timeout=1.0)


def url_of(port: int) -> str:
    return f"meta://127.0.0.1:{port}"


async def wait_for(predicate, timeout: float = 10.0, interval: float = 0.01) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(interval)


def key(message: Message) -> tuple[bytes, str | None]:
    return message.body, message.attribute


# ----------------------------------------------------------------------------- facades


class TrioFacade:
    """The trio API, driven directly."""

    name = "trio"

    def __init__(self, source, tmp_path, nursery: trio.Nursery) -> None:
        self._source = source
        self._tmp = tmp_path
        self._nursery = nursery

    async def __aenter__(self):
        self.client = MetaqClient(self._source, connection_settings=FAST_CONNECTIONS,
                                  recover_path=str(self._tmp / "recover"))
        await self.client.__aenter__()
        self.producer = self.client.producer()
        await self.producer.__aenter__()
        self.consumers = []
        return self

    async def __aexit__(self, *exc):
        for consumer in reversed(self.consumers):
            await consumer.__aexit__(None, None, None)
        await self.producer.__aexit__(None, None, None)
        await self.client.__aexit__(*exc)

    async def send(self, topic: str, body: bytes, attribute: str | None = None) -> SendResult:
        return await self.producer.send(topic, body, attribute=attribute)

    async def consume(self, group: str, topic: str, listener, *, config: ConsumerConfig = FAST,
                      partitions=None, reject_handler=local_recover):
        consumer = self.client.consumer(group, config, reject_handler=reject_handler,
                                        offset_storage=LocalOffsetStorage(self._tmp / "offsets.json"))
        await consumer.__aenter__()
        self.consumers.append(consumer)
        await consumer.subscribe(topic, listener, partitions=partitions)
        return consumer

    async def close_consumer(self, consumer) -> None:
        self.consumers.remove(consumer)
        await consumer.__aexit__(None, None, None)

    async def positions(self, consumer):
        return consumer.positions()


class BlockingFacade:
    """``metaq_client.blocking``, every call made from a worker thread as an application would."""

    name = "blocking"

    def __init__(self, source, tmp_path, nursery: trio.Nursery) -> None:
        self._source = source
        self._tmp = tmp_path

    async def __aenter__(self):
        self.client = await trio.to_thread.run_sync(lambda: blocking.Client(
            self._source, connection_settings=FAST_CONNECTIONS, recover_path=str(self._tmp / "recover")))
        self.producer = await trio.to_thread.run_sync(self.client.producer)
        return self

    async def __aexit__(self, *exc):
        await trio.to_thread.run_sync(self.client.close)

    async def send(self, topic: str, body: bytes, attribute: str | None = None) -> SendResult:
        return await trio.to_thread.run_sync(lambda: self.producer.send(topic, body, attribute=attribute))

    async def consume(self, group: str, topic: str, listener, *, config: ConsumerConfig = FAST,
                      partitions=None, reject_handler=local_recover):
        def start():
            consumer = self.client.consumer(group, config, reject_handler=reject_handler,
                                            offset_storage=LocalOffsetStorage(self._tmp / "offsets.json"))
            consumer.subscribe(topic, listener, partitions=partitions)
            return consumer
        return await trio.to_thread.run_sync(start)

    async def close_consumer(self, consumer) -> None:
        await trio.to_thread.run_sync(consumer.close)

    async def positions(self, consumer):
        return await trio.to_thread.run_sync(consumer.positions)


FACADES = {"trio": TrioFacade, "blocking": BlockingFacade}


def segment_files(data_dir: str, topic: str, partition: int) -> list[str]:
    directory = os.path.join(data_dir, f"{topic}-{partition}")
    return sorted(os.path.join(directory, n) for n in os.listdir(directory) if n.endswith(".meta"))

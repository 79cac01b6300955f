"""metaq_client — the Python client of MetaQ 1.4.4 (and of metaq-trio): producers and consumers
for trio code (this package) and for ordinary blocking code (``metaq_client.blocking``).

    from metaq_client import MetaqClient, ConsumerConfig
    from metaq_client.offsets import LocalOffsetStorage

    async with MetaqClient("meta://127.0.0.1:8123") as client:
        async with client.producer() as producer:
            result = await producer.send("orders", b"hello", attribute="k=v")
        async with client.consumer("billing", offset_storage=LocalOffsetStorage("offsets.json")) as consumer:
            await consumer.subscribe("orders", partitions=[0])
            async for message in consumer:
                ...

Through ZooKeeper (brokers, partitions, consumer groups and offsets as MetaQ 1.4.4 keeps them):

    async with MetaqClient(zk_connect="127.0.0.1:2181", zk_root="/meta") as client:
        async with client.producer() as producer:
            await producer.send("orders", b"hello")           # partitions from brokers/topics-pub
        async with client.consumer("billing") as consumer:    # group registration and balancing
            await consumer.subscribe("orders", listener)      # offsets in consumers/billing/offsets
"""

from metaq_client.client import MetaqClient
from metaq_client.connection import ConnectionSettings, ConnectionStatistics
from metaq_client.consumer import DEFAULT_MAX_SIZE, Consumer, ConsumerConfig, validate_group
from metaq_client.errors import (
    BrokerError, BrokerUnavailableError, ClientClosedError, ConnectionClosedError, ConsumptionInterrupted,
    InvalidGroupError, InvalidRecordError, MetaqClientError, NoPartitionError, ReadOnlyMessageError,
    RequestTimeoutError,
)
from metaq_client.message import Message, MessageSet, Partition, PartitionAcks, SendResult
from metaq_client.offsets import LocalOffsetStorage, OffsetStorage, TopicPartitionOffset
from metaq_client.producer import Producer
from metaq_client.recover import RecoverStore, drop, local_recover
from metaq_client.selectors import HashSelector, PartitionSelector, RandomSelector, RoundRobinSelector
from metaq_client.source import GroupSource, PartitionSource, StaticPartitionSource
from metaq_client.zk_offsets import ZkOffsetStorage
from metaq_client.zk_source import ZkConfig, ZkPartitionSource

__all__ = [
    "DEFAULT_MAX_SIZE", "BrokerError", "BrokerUnavailableError", "ClientClosedError", "ConnectionClosedError",
    "ConnectionSettings", "ConnectionStatistics", "Consumer", "ConsumerConfig", "ConsumptionInterrupted",
    "GroupSource", "HashSelector", "InvalidGroupError", "InvalidRecordError", "LocalOffsetStorage", "Message", "MessageSet",
    "MetaqClient", "MetaqClientError", "NoPartitionError", "OffsetStorage", "Partition", "PartitionAcks",
    "PartitionSelector", "PartitionSource", "Producer", "RandomSelector", "ReadOnlyMessageError",
    "RecoverStore", "RequestTimeoutError", "RoundRobinSelector", "SendResult", "StaticPartitionSource",
    "TopicPartitionOffset", "ZkConfig", "ZkOffsetStorage", "ZkPartitionSource", "drop", "local_recover",
    "validate_group",
]

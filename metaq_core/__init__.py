"""metaq_core — the storage engine and codecs of metaq-trio, usable on its own.

``LogStore`` is an embeddable, durable, segmented message log that uses exactly the files a MetaQ
1.4.4 broker serves::

    from metaq_core import LogStore
    with LogStore("data", num_partitions=4) as store:
        where = store.append("orders", 0, b"hello", attribute="k=v")   # durable on return
        result = store.read("orders", 0, 0)

The engine holds no sockets, no ZooKeeper, and imports trio only for its ``*_async`` methods.
"""

from metaq_core.errors import (
    ClockBackwardsError,
    CorruptRecordError,
    InvalidMessageError,
    InvalidPartitionError,
    InvalidTopicError,
    MessageTooLargeError,
    MetaqError,
    PolicyError,
    ReadOnlyError,
    StorageIOError,
    StoreClosedError,
    StoreLoadError,
)
from metaq_core.ids import IdWorker
from metaq_core.naming import validate_topic
from metaq_core.partition import (
    Appended,
    LogSettings,
    OffsetOutOfRangeError,
    PartitionLog,
    PartitionStatistics,
    Slice,
)
from metaq_core.record import IMPLEMENTATION, checksum
from metaq_core.retention import RetentionPolicy, apply_policy
from metaq_core.store import LogStore, ReadResult, StoredMessage, StoreStatistics

__version__ = "0.1.0"

__all__ = [
    "IMPLEMENTATION", "Appended", "ClockBackwardsError", "CorruptRecordError", "IdWorker",
    "InvalidMessageError", "InvalidPartitionError", "InvalidTopicError", "LogSettings", "LogStore",
    "MessageTooLargeError", "MetaqError", "OffsetOutOfRangeError", "PartitionLog",
    "PartitionStatistics", "PolicyError", "ReadOnlyError", "ReadResult", "RetentionPolicy",
    "Slice", "StorageIOError", "StoreClosedError", "StoreLoadError", "StoreStatistics",
    "StoredMessage", "apply_policy", "checksum", "validate_topic",
]

"""The MetaQ 1.4.4 znode layout and node data formats, in one place (broker.md §3.1–§3.3).

Every path that MetaQ brokers, producers and consumers share is built here, under a normalised
``zk.zkRoot``; every node value is encoded and decoded here, byte for byte as the Java clients
write and read it (UTF-8, no length prefix, no trailing newline).

What this module must not do: talk to ZooKeeper, log, or know about trio or kazoo. It is pure
string work, so it is safe to use from any thread and trivial to test.
"""

from __future__ import annotations

import json
import re

import attrs

__all__ = [
    "DEFAULT_ROOT",
    "ZkPaths",
    "broker_uri",
    "decode_checksum",
    "decode_num_parts",
    "decode_offset",
    "decode_topic_broker",
    "encode_checksum",
    "encode_consumer_topics",
    "encode_num_parts",
    "encode_offset",
    "encode_topic_broker",
    "master_name",
    "normalise_root",
    "parse_broker_name",
    "slave_name",
]

DEFAULT_ROOT = "/meta"

_SLAVE_CHILD = re.compile(r"slave(\d+)")
_BROKER_NAME = re.compile(r"(\d+)-(m|s(\d+))")


def normalise_root(root: str) -> str:
    """``zk.zkRoot`` as Java normalises it: a leading ``/`` added, trailing ``/`` removed.

    ``"/"`` (or ``""``) becomes ``""``: the tree then sits at the ZooKeeper root and
    ``root + "/brokers"`` is still a valid path.
    """
    root = root.strip().rstrip("/")
    if root and not root.startswith("/"):
        root = "/" + root
    return root


def _check_segment(kind: str, value: str) -> str:
    # A node name must be one path segment: ZooKeeper would otherwise create a different node.
    if not value or "/" in value or value in (".", ".."):
        raise ValueError(f"invalid {kind} for a znode name: {value!r}")
    return value


def _check_id(kind: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"invalid {kind}: {value!r} (a non-negative integer)")
    return value


def master_name(broker_id: int) -> str:
    """``<brokerId>-m``: a master's child name under ``brokers/topics*/<topic>``."""
    return f"{_check_id('broker id', broker_id)}-m"


def slave_name(broker_id: int, slave_id: int) -> str:
    """``<brokerId>-s<slaveId>``: an async slave's child name under ``brokers/topics*/<topic>``."""
    return f"{_check_id('broker id', broker_id)}-s{_check_id('slave id', slave_id)}"


def parse_broker_name(name: str) -> tuple[int, int | None] | None:
    """``"3-m"`` → ``(3, None)``, ``"3-s1"`` → ``(3, 1)``, anything else → None."""
    match = _BROKER_NAME.fullmatch(name)
    if match is None:
        return None
    slave = match.group(3)
    return int(match.group(1)), (None if slave is None else int(slave))


@attrs.frozen
class ZkPaths:
    """Absolute paths of the MetaQ tree under ``root`` (default ``/meta``, normalised).

    Node kinds (broker.md §3.2): ``broker_id_node`` is persistent; ``master``, ``slave``,
    ``master_config_checksum``, the three topic nodes, ``consumer_id`` and ``owner`` are
    ephemeral; ``offset`` is persistent. Parents are persistent with empty data.
    """

    root: str = attrs.field(default=DEFAULT_ROOT, converter=normalise_root)

    # ------------------------------------------------------------------------- brokers

    @property
    def brokers(self) -> str:
        return f"{self.root}/brokers"

    @property
    def broker_ids(self) -> str:
        """``<root>/brokers/ids``: every child is a decimal broker id."""
        return f"{self.root}/brokers/ids"

    def broker_id_node(self, broker_id: int) -> str:
        """``ids/<id>`` (P): the master's URI for pre-1.4 clients, ``""`` once it left."""
        return f"{self.broker_ids}/{_check_id('broker id', broker_id)}"

    def master(self, broker_id: int) -> str:
        """``ids/<id>/master`` (E): ``meta://host:port``."""
        return f"{self.broker_id_node(broker_id)}/master"

    def slave(self, broker_id: int, slave_id: int) -> str:
        """``ids/<id>/slave<N>`` (E): an async slave's URI."""
        return f"{self.broker_id_node(broker_id)}/slave{_check_id('slave id', slave_id)}"

    def master_config_checksum(self, broker_id: int) -> str:
        """``ids/<id>/master_config_checksum`` (E): CRC-32 of the master's server.ini."""
        return f"{self.broker_id_node(broker_id)}/master_config_checksum"

    @staticmethod
    def slave_id_of(child: str) -> int | None:
        """The slave id of an ``ids/<id>`` child named ``slave<non-negative int>``, else None."""
        match = _SLAVE_CHILD.fullmatch(child)
        return int(match.group(1)) if match else None

    # -------------------------------------------------------------------------- topics

    @property
    def topics(self) -> str:
        """``<root>/brokers/topics`` (legacy partition counts)."""
        return f"{self.root}/brokers/topics"

    @property
    def topics_pub(self) -> str:
        return f"{self.root}/brokers/topics-pub"

    @property
    def topics_sub(self) -> str:
        return f"{self.root}/brokers/topics-sub"

    def topic(self, topic: str) -> str:
        return f"{self.topics}/{_check_segment('topic', topic)}"

    def topic_pub(self, topic: str) -> str:
        return f"{self.topics_pub}/{_check_segment('topic', topic)}"

    def topic_sub(self, topic: str) -> str:
        return f"{self.topics_sub}/{_check_segment('topic', topic)}"

    def topic_broker(self, topic: str, broker: str) -> str:
        """``topics/<topic>/<broker>`` (E): ``"<numPartitions>"``; ``broker`` is ``<id>-m`` or ``<id>-s<N>``."""
        return f"{self.topic(topic)}/{_check_segment('broker name', broker)}"

    def topic_pub_broker(self, topic: str, broker: str) -> str:
        """``topics-pub/<topic>/<broker>`` (E): the numParts/broker JSON (when acceptPublish)."""
        return f"{self.topic_pub(topic)}/{_check_segment('broker name', broker)}"

    def topic_sub_broker(self, topic: str, broker: str) -> str:
        """``topics-sub/<topic>/<broker>`` (E): the numParts/broker JSON (when acceptSubscribe)."""
        return f"{self.topic_sub(topic)}/{_check_segment('broker name', broker)}"

    # ------------------------------------------------------------------------ consumers

    @property
    def consumers(self) -> str:
        return f"{self.root}/consumers"

    def consumer_group(self, group: str) -> str:
        return f"{self.consumers}/{_check_segment('group', group)}"

    def consumer_ids(self, group: str) -> str:
        return f"{self.consumer_group(group)}/ids"

    def consumer_id(self, group: str, consumer_id: str) -> str:
        """``consumers/<group>/ids/<consumerId>`` (E): comma-separated subscribed topics."""
        return f"{self.consumer_ids(group)}/{_check_segment('consumer id', consumer_id)}"

    def owners(self, group: str, topic: str) -> str:
        return f"{self.consumer_group(group)}/owners/{_check_segment('topic', topic)}"

    def owner(self, group: str, topic: str, partition: str) -> str:
        """``consumers/<group>/owners/<topic>/<brokerId>-<partition>`` (E): the owner's consumer id."""
        return f"{self.owners(group, topic)}/{_check_segment('partition', partition)}"

    def offsets(self, group: str, topic: str) -> str:
        return f"{self.consumer_group(group)}/offsets/{_check_segment('topic', topic)}"

    def offset(self, group: str, topic: str, partition: str) -> str:
        """``consumers/<group>/offsets/<topic>/<brokerId>-<partition>`` (P): ``<msgId>-<offset>``."""
        return f"{self.offsets(group, topic)}/{_check_segment('partition', partition)}"


# ================================================================================ data formats


def broker_uri(host: str, port: int) -> str:
    """``meta://<host>:<port>``; an IPv6 host goes in brackets (``meta://[::1]:8123``)."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"meta://{host}:{int(port)}"


def encode_checksum(checksum: int) -> bytes:
    """``master_config_checksum`` data: the CRC-32 as unsigned decimal text."""
    return str(checksum & 0xFFFFFFFF).encode("ascii")


def decode_checksum(data: bytes) -> int:
    return int(data.decode("ascii"))


def encode_num_parts(num_parts: int) -> bytes:
    """``topics/<topic>/<id>-m`` data: the partition count as decimal text, e.g. ``b"4"``."""
    return str(int(num_parts)).encode("ascii")


def decode_num_parts(data: bytes) -> int:
    return int(data.decode("ascii").strip())


def encode_topic_broker(num_parts: int, broker: str) -> bytes:
    """``topics-pub``/``topics-sub`` data, exactly ``{"numParts":N,"broker":"<id>-m"}``:
    key order numParts, broker; no spaces (broker.md §3.3)."""
    return ('{"numParts":%d,"broker":%s}' % (int(num_parts), json.dumps(broker))).encode("utf-8")


def decode_topic_broker(data: bytes) -> tuple[int, str]:
    """``(numParts, broker)`` of a ``topics-pub``/``topics-sub`` node; ValueError if malformed."""
    try:
        value = json.loads(data.decode("utf-8"))
        return int(value["numParts"]), str(value["broker"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"malformed topic broker data {data!r}: {exc}") from None


def encode_consumer_topics(topics: list[str] | tuple[str, ...]) -> bytes:
    """``consumers/<group>/ids/<consumerId>`` data: ``topic1,topic2,…`` (no spaces)."""
    return ",".join(topics).encode("utf-8")


def encode_offset(message_id: int, offset: int) -> bytes:
    """Offset node data ``<msgId>-<offset>``, e.g. ``b"246735974682333185-59"``, ``b"-1-0"``."""
    return f"{int(message_id)}-{int(offset)}".encode("ascii")


def decode_offset(data: bytes) -> tuple[int, int]:
    """``(msgId, offset)``: split at the **last** ``-`` when it is not the first character;
    without such a ``-`` the value is a bare offset (pre-1.4.0) and msgId is -1."""
    text = data.decode("ascii").strip()
    cut = text.rfind("-")
    if cut > 0:
        return int(text[:cut]), int(text[cut + 1:])
    return -1, int(text)

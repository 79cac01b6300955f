"""The znode layout and data formats of broker.md §3.2/§3.3, literally (no ZooKeeper needed)."""

from __future__ import annotations

import pytest

from zkmeta.paths import (
    ZkPaths, broker_uri, decode_offset, decode_topic_broker, encode_checksum,
    encode_consumer_topics, encode_num_parts, encode_offset, encode_topic_broker, master_name,
    normalise_root, parse_broker_name, slave_name,
)


@pytest.mark.parametrize("raw, expected", [
    ("/meta", "/meta"), ("meta", "/meta"), ("/meta/", "/meta"), ("meta//", "/meta"),
    ("/a/b", "/a/b"), ("/", ""), ("", ""),
])
def test_root_is_normalised(raw: str, expected: str) -> None:
    assert normalise_root(raw) == expected
    assert ZkPaths(raw).root == expected


def test_broker_and_topic_paths() -> None:
    p = ZkPaths()
    assert p.broker_ids == "/meta/brokers/ids"
    assert p.broker_id_node(3) == "/meta/brokers/ids/3"
    assert p.master(3) == "/meta/brokers/ids/3/master"
    assert p.slave(3, 1) == "/meta/brokers/ids/3/slave1"
    assert p.master_config_checksum(3) == "/meta/brokers/ids/3/master_config_checksum"
    assert p.topic_broker("t", master_name(3)) == "/meta/brokers/topics/t/3-m"
    assert p.topic_broker("t", slave_name(3, 2)) == "/meta/brokers/topics/t/3-s2"
    assert p.topic_pub_broker("t", "3-m") == "/meta/brokers/topics-pub/t/3-m"
    assert p.topic_sub_broker("t", "3-m") == "/meta/brokers/topics-sub/t/3-m"
    assert ZkPaths("/").master(0) == "/brokers/ids/0/master"
    assert ZkPaths("x/y/").topic_pub("t") == "/x/y/brokers/topics-pub/t"


def test_consumer_paths() -> None:
    p = ZkPaths("/meta")
    assert p.consumer_id("g", "g_c1") == "/meta/consumers/g/ids/g_c1"
    assert p.owner("g", "t", "3-0") == "/meta/consumers/g/owners/t/3-0"
    assert p.offset("g", "t", "3-0") == "/meta/consumers/g/offsets/t/3-0"


@pytest.mark.parametrize("bad", ["", "a/b", ".", ".."])
def test_a_name_is_one_path_segment(bad: str) -> None:
    with pytest.raises(ValueError):
        ZkPaths().topic(bad)


def test_ids_must_be_non_negative_integers() -> None:
    with pytest.raises(ValueError):
        ZkPaths().master(-1)
    with pytest.raises(ValueError):
        master_name(True)  # type: ignore[arg-type]


def test_data_formats_byte_for_byte() -> None:
    assert broker_uri("10.0.0.5", 8123) == "meta://10.0.0.5:8123"
    assert broker_uri("::1", 8123) == "meta://[::1]:8123"
    assert broker_uri("[::1]", 8123) == "meta://[::1]:8123"
    assert encode_num_parts(4) == b"4"
    assert encode_topic_broker(4, "3-m") == b'{"numParts":4,"broker":"3-m"}'
    assert encode_topic_broker(1, "3-s2") == b'{"numParts":1,"broker":"3-s2"}'
    assert decode_topic_broker(b'{"broker":"3-m", "numParts": 4}') == (4, "3-m")
    assert encode_checksum(0xFFFFFFFF) == b"4294967295"
    assert encode_checksum(-1) == b"4294967295"          # Java's signed int, published unsigned
    assert encode_consumer_topics(["a", "b"]) == b"a,b"
    assert encode_offset(246735974682333185, 59) == b"246735974682333185-59"
    assert encode_offset(-1, 0) == b"-1-0"


@pytest.mark.parametrize("data, expected", [
    (b"246735974682333185-59", (246735974682333185, 59)),
    (b"-1-0", (-1, 0)),
    (b"1024", (-1, 1024)),        # pre-1.4.0: a bare offset
])
def test_offset_parsing(data: bytes, expected: tuple[int, int]) -> None:
    assert decode_offset(data) == expected


def test_broker_names() -> None:
    assert parse_broker_name("3-m") == (3, None)
    assert parse_broker_name("3-s1") == (3, 1)
    assert parse_broker_name("3-x") is None
    assert ZkPaths.slave_id_of("slave12") == 12
    assert ZkPaths.slave_id_of("master") is None
    assert ZkPaths.slave_id_of("slave-1") is None

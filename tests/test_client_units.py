"""Client pieces that need no broker: opaques, URLs, group names, messages and their read-only
state, selectors, message-set decoding, the offset file and the recover store."""

from __future__ import annotations

import json
import os

import pytest

from metaq_client import (
    HashSelector, InvalidGroupError, LocalOffsetStorage, Message, NoPartitionError, Partition, PartitionAcks,
    RandomSelector, ReadOnlyMessageError, RecoverStore, RoundRobinSelector, TopicPartitionOffset,
    validate_group,
)
from metaq_client.connection import OPAQUE_MIN, OpaqueGenerator, parse_url
from metaq_client.message import MAX_MESSAGE_SIZE, decode_message_set
from metaq_client.selectors import select_partition
from metaq_core import record

P = [Partition(1, n) for n in range(4)]


def test_opaques_start_at_int_min_and_wrap_like_java():
    gen = OpaqueGenerator()
    assert [gen(), gen(), gen()] == [-2147483648, -2147483647, -2147483646]
    gen = OpaqueGenerator(2147483635)
    assert [gen(), gen(), gen(), gen()] == [2147483635, 2147483636, OPAQUE_MIN, OPAQUE_MIN + 1]


def test_broker_urls():
    assert parse_url("meta://127.0.0.1:8124") == ("127.0.0.1", 8124)
    assert parse_url("meta://broker.example") == ("broker.example", 8123)
    for bad in ("http://x:1", "127.0.0.1:8123", "meta://"):
        with pytest.raises(ValueError):
            parse_url(bad)


@pytest.mark.parametrize("group", ["", "a b", "a.b", "g:1", "x/y", "p%", "q?", "[g]", "c,d", "e;f", "'q'", None])
def test_group_names_refused_as_java_does(group):
    with pytest.raises(InvalidGroupError):
        validate_group(group)


def test_group_names_accepted():
    for group in ("meta-example", "group_1", "G-2-x", "中文组"):
        assert validate_group(group) == group


def test_message_read_only_state():
    message = Message("t", b"body", "attr")
    message.read_only = True
    for field, value in (("topic", "u"), ("body", b"x"), ("attribute", "y")):
        with pytest.raises(ReadOnlyMessageError):
            setattr(message, field, value)
    message.id = 5  # not guarded
    message.read_only = False
    message.body = bytearray(b"new")
    assert message.body == b"new" and type(message.body) is bytes
    with pytest.raises(TypeError):
        message.body = "text"
    with pytest.raises(TypeError):
        Message("t", b"", attribute=3)


def test_selector_runs_on_a_read_only_message_and_state_is_restored():
    seen = []

    def selector(topic, partitions, message):
        seen.append(message.read_only)
        with pytest.raises(ReadOnlyMessageError):
            message.body = b"changed"
        with pytest.raises(ReadOnlyMessageError):
            message.topic = "other"
        with pytest.raises(ReadOnlyMessageError):
            message.attribute = "other"
        return partitions[-1]

    message = Message("t", b"body")
    assert select_partition(selector, "t", P, message) == P[-1]
    assert seen == [True] and not message.read_only and message.body == b"body"
    message.read_only = True
    select_partition(selector, "t", P, message)
    assert message.read_only  # the earlier state is restored, not cleared

    def failing(topic, partitions, message):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        select_partition(failing, "t", P, Message("t"))
    with pytest.raises(NoPartitionError):
        select_partition(lambda t, p, m: None, "t", P, Message("t"))
    with pytest.raises(NoPartitionError):
        select_partition(RoundRobinSelector(), "t", [], Message("t"))


def test_selectors():
    rr = RoundRobinSelector()
    assert [rr("t", P, Message("t")).partition for _ in range(6)] == [1, 2, 3, 0, 1, 2]  # Java: ++counter % n
    hashed = HashSelector()
    picks = {hashed("t", P, Message("t", b"", "user-42")) for _ in range(5)}
    assert len(picks) == 1
    spread = {hashed("t", P, Message("t", b"", f"user-{i}")).partition for i in range(50)}
    assert spread == {0, 1, 2, 3}
    by_body = HashSelector(key=lambda m: m.body)
    assert by_body("t", P, Message("t", b"k")) == by_body("t", P, Message("t", b"k", "other"))
    rnd = RandomSelector()
    assert {rnd("t", P, Message("t")).partition for _ in range(200)} == {0, 1, 2, 3}


def test_partition_acks():
    acks = PartitionAcks()
    with pytest.raises(ValueError):
        acks.ack()
    acks.auto_ack = False
    acks.ack()
    assert acks.acked
    acks.reset()
    acks.rollback()
    assert acks.rolled_back and not acks.acked


def _records(*items):
    out = b""
    for i, (body, attribute) in enumerate(items):
        flag, data = record.make_data(body, attribute)
        out += record.encode_record(1000 + i, flag, data)
    return out


def test_decode_message_set_complete_and_partial():
    part = Partition(1, 0)
    data = _records((b"hello", "attr1"), (b"world", None), (b"", ""))
    batch = decode_message_set("t", part, 100, data)
    assert [(m.body, m.attribute, m.id, m.offset) for m in batch.messages] == [
        (b"hello", "attr1", 1000, 100), (b"world", None, 1001, 134), (b"", "", 1002, 159)]
    assert batch.ends == [134, 159, 183] and batch.next_offset == 183 and not batch.invalid
    for cut in (1, 3, 4, 20, 24):  # the last record is 24 bytes: header cut, or data cut
        short = decode_message_set("t", part, 100, data[: len(data) - cut])
        assert [m.offset for m in short.messages] == [100, 134] and short.next_offset == 159
        assert not short.invalid


def test_decode_message_set_invalid_records():
    part = Partition(1, 0)
    data = bytearray(_records((b"hello", "attr1"), (b"world", None)))
    data[34 + 22] ^= 0xFF  # a data byte of the second record
    batch = decode_message_set("t", part, 0, bytes(data))
    assert [m.body for m in batch.messages] == [b"hello"]
    assert batch.invalid and batch.next_offset == 34 and batch.invalid_end == 59
    # misaligned start: the first four bytes read as a negative length
    garbage = decode_message_set("t", part, 10, bytes(data[10:]))
    assert garbage.invalid and not garbage.messages and garbage.next_offset == 10
    # a header announcing more than 2 MiB is invalid even before its data arrives
    huge = record.encode_header(1, 0, b"x" * 10)
    huge = (MAX_MESSAGE_SIZE + 1).to_bytes(4, "big") + huge[4:]
    assert decode_message_set("t", part, 0, huge).invalid
    # a bad attribute block (flag bit 0, attribute length past the end)
    bad_attr = b"\x00\x00\x00\x09ab"
    raw = record.encode_record(7, 1, bad_attr)
    bad = decode_message_set("t", part, 0, raw)
    assert bad.invalid and bad.invalid_end == len(raw)


async def test_local_offset_storage_round_trip_and_atomic_file(tmp_path):
    path = tmp_path / "sub" / "offsets.json"
    one, two = LocalOffsetStorage(path), LocalOffsetStorage(str(path))
    assert await one.load("g1", "t", Partition(1, 0)) is None
    await one.commit("g1", [TopicPartitionOffset("t", Partition(1, 0), 100, 7),
                            TopicPartitionOffset("t", Partition(1, 1), 5)])
    await two.commit("g2", [TopicPartitionOffset("t", Partition(1, 0), 42, 9)])
    await one.commit("g1", [TopicPartitionOffset("t", Partition(1, 0), 200, 8)])
    assert await two.load("g1", "t", Partition(1, 0)) == TopicPartitionOffset("t", Partition(1, 0), 200, 8)
    assert await one.load("g1", "t", Partition(1, 1)) == TopicPartitionOffset("t", Partition(1, 1), 5, -1)
    assert await one.load("g2", "t", Partition(1, 0)) == TopicPartitionOffset("t", Partition(1, 0), 42, 9)
    data = json.loads(path.read_text())
    assert sorted(data) == ["g1", "g2"]
    assert {"topic": "t", "partition": {"brokerId": 1, "partition": 0}, "offset": 200, "messageId": 8,
            "modified": False} in data["g1"]
    assert os.listdir(path.parent) == ["offsets.json"]  # no temporary file left behind
    path.write_text("{not json")
    with pytest.raises(ValueError, match="offsets.json"):
        await one.load("g1", "t", Partition(1, 0))


async def test_recover_store_keeps_order_and_survives_reopen(tmp_path):
    store = RecoverStore(tmp_path / "rec")
    for i, attribute in enumerate((None, "", "ü=1")):
        await store.append("g", Message("t", b"m%d" % i, attribute, id=10 + i, partition=Partition(1, 0), offset=i))
    again = RecoverStore(tmp_path / "rec")
    pending = await again.pending("g", "t")
    assert [(m.body, m.attribute, m.id, m.partition, m.offset) for _, m in pending] == [
        (b"m0", None, 10, Partition(1, 0), 0), (b"m1", "", 11, Partition(1, 0), 1),
        (b"m2", "ü=1", 12, Partition(1, 0), 2)]
    assert await again.pending("other", "t") == []
    await again.remove("g", "t", pending[0][0])
    await store.append("g", Message("t", b"m3", id=13))
    assert [m.body for _, m in await store.pending("g", "t")] == [b"m1", b"m2", b"m3"]
    # a damaged file is moved aside, the rest is still delivered
    name = pending[1][0]
    target = tmp_path / "rec" / "t@g" / name
    raw = bytearray(target.read_bytes())
    raw[-1] ^= 1
    target.write_bytes(bytes(raw))
    assert [m.body for _, m in await store.pending("g", "t")] == [b"m2", b"m3"]
    assert (tmp_path / "rec" / "t@g" / (name + ".corrupt")).exists()

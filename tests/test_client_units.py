"""Client pieces that need no broker: opaques, URLs, group names, messages and their read-only
state, selectors, message-set decoding, the offset file and the recover store."""

from __future__ import annotations

import json
import os

import pytest

from metaq_client import (
    HashSelector, InvalidGroupError, LocalOffsetStorage, Message, NoPartitionError, Partition, PartitionAcks,
    RandomSelector, ReadOnlyMessageError, RecoverStore, RoundRobinSelector, SendResult, TopicPartitionOffset,
    validate_group,
)
from metaq_client.connection import OPAQUE_MIN, OpaqueGenerator, parse_url
from metaq_client.message import MAX_MESSAGE_SIZE, decode_message_set
from metaq_client.selectors import select_partition
from metaq_core import record

P = [Partition(1, n) for n in range(4)]


@pytest.mark.parametrize("implementation", ["in use", "pure", "compiled"])
def test_opaques_start_at_int_min_and_wrap_like_java(implementation):
    from metaq_client import codec

    counter = {"in use": OpaqueGenerator, "pure": codec.OpaqueCounterPy}.get(implementation) or pytest.importorskip(
        "metaq_core._client_codec").OpaqueCounter
    gen = counter()
    assert [gen(), gen(), gen()] == [-2147483648, -2147483647, -2147483646]
    gen = counter(2147483635)
    assert [gen(), gen(), gen(), gen()] == [2147483635, 2147483636, OPAQUE_MIN, OPAQUE_MIN + 1]
    assert counter(2147483637)() == counter(2**40)() == counter(OPAQUE_MIN - 1)() == OPAQUE_MIN  # out of range


def test_the_process_has_one_opaque_counter():
    # puts built by the outbox and every other request draw from the same counter: no two
    # outstanding requests of one connection can share an opaque
    from metaq_client import codec, connection

    assert connection.next_opaque is codec.next_opaque
    if codec.IMPLEMENTATION == "cython":
        from metaq_core import _client_codec

        assert codec.next_opaque is _client_codec.next_opaque


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


def test_opaques_are_unique_across_threads():
    import threading

    gen = OpaqueGenerator()
    seen: list[list[int]] = [[] for _ in range(8)]

    def draw(mine: list[int]) -> None:
        for _ in range(20_000):
            mine.append(gen())

    threads = [threading.Thread(target=draw, args=(mine,)) for mine in seen]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    everything = [o for mine in seen for o in mine]
    assert len(set(everything)) == len(everything) == 160_000
    assert sorted(everything) == list(range(OPAQUE_MIN, OPAQUE_MIN + 160_000))


@pytest.mark.parametrize("implementation", ["compiled", "pure"])
def test_put_frames_are_what_the_frame_encoder_builds(implementation):
    from metaq_client import codec
    from metaq_core.wire import Put, encode

    put_frame = codec.put_frame_py if implementation == "pure" else pytest.importorskip(
        "metaq_core._client_codec").put_frame
    for attribute in (None, "", "k=v", "ü" * 300):
        for body in (b"", b"x", bytes(range(256)) * 9):
            for partition, opaque in ((-1, -2**31), (0, 5), (7, 2**31 - 1)):
                flag, data = record.make_data(body, attribute)
                expected = encode(Put("top-ic", partition, flag, record.checksum(data), None, opaque, data))
                raw_attribute = None if attribute is None else attribute.encode()
                assert put_frame(b"top-ic", partition, body, raw_attribute, opaque) == expected
    with pytest.raises(OverflowError):
        put_frame(b"t", 2**31, b"", None, 0)


@pytest.mark.parametrize("implementation", ["compiled", "pure"])
def test_put_answers_are_three_numbers(implementation):
    from metaq_client import codec

    put_answer = codec.put_answer_py if implementation == "pure" else pytest.importorskip(
        "metaq_core._client_codec").put_answer
    assert put_answer(b"246735974682333184 0 0") == (246735974682333184, 0, 0)
    assert put_answer(b"-1 -1 9223372036854775807") == (-1, -1, 9223372036854775807)
    for bad in (None, b"", b"1 2", b"1 2 3 ", b"1  2 3", b" 1 2 3", b"a 2 3", b"1 2 3 4", b"1 - 3", b"-"):
        with pytest.raises(ValueError):
            put_answer(bad)


def test_topic_tokens_are_checked_topic_names():
    from metaq_client.codec import topic_token
    from metaq_core.errors import InvalidTopicError

    assert topic_token("orders-ü") == "orders-ü".encode()
    for bad in ("", "a b", "a\r\nb", "x/y", 5):
        with pytest.raises(InvalidTopicError):
            topic_token(bad)


def test_partitions_and_send_results_are_immutable_ordered_values():
    a, b = Partition(0, 3), Partition(1, 0)
    assert str(a) == "0-3" and Partition(2, -1).is_random and not a.is_random
    assert sorted([b, a, Partition(0, 1)]) == [Partition(0, 1), a, b]
    assert {a: 1}[Partition(broker_id=0, partition=3)] == 1
    with pytest.raises(AttributeError):
        a.partition = 4
    result = SendResult(True, 7, a, 100)
    assert (result.success, result.message_id, result.partition, result.offset, result.error_message) == \
        (True, 7, a, 100, None)
    assert SendResult(False, error_message="403") == SendResult(False, None, None, -1, "403")
    assert repr(result) == ("SendResult(success=True, message_id=7, partition=Partition(broker_id=0, partition=3), "
                            "offset=100, error_message=None)")
    with pytest.raises(AttributeError):
        result.offset = 5


@pytest.mark.parametrize("implementation", ["compiled", "pure"])
def test_put_results_share_one_partition_object_per_number(implementation):
    from metaq_client import codec

    put_result = codec.put_result_py if implementation == "pure" else pytest.importorskip(
        "metaq_core._client_codec").put_result
    cache: dict = {}
    first = put_result(b"10 3 100", 7, cache, SendResult, Partition, 2)
    second = put_result(b"11 3 134", 7, cache, SendResult, Partition, 2)
    assert first == SendResult(True, 10, Partition(7, 3), 100) and type(first) is SendResult
    assert second.partition is first.partition and cache == {3: Partition(7, 3)}
    put_result(b"12 4 0", 7, cache, SendResult, Partition, 2)
    put_result(b"13 5 0", 7, cache, SendResult, Partition, 2)
    assert sorted(cache) == [3, 4]  # bounded
    with pytest.raises(ValueError):
        put_result(b"1 2", 7, cache, SendResult, Partition, 2)


@pytest.mark.parametrize("implementation", ["compiled", "pure"])
def test_a_task_reuses_its_waiter_for_answers_errors_and_cancellation(implementation):
    import trio

    from metaq_client import codec

    cls = codec.WaiterPy if implementation == "pure" else pytest.importorskip("metaq_core._client_codec").Waiter

    def waiter_of(task):
        waiter = cls(task, trio.lowlevel.reschedule, trio.lowlevel.Abort.SUCCEEDED)
        trap = trio.lowlevel.wait_task_rescheduled(waiter.abort)
        waiter.trap = trap.send(None)
        trap.close()
        return waiter

    pending: dict = {}
    seen: list = []

    async def requester():
        task = trio.lowlevel.current_task()
        waiter = waiter_of(task)
        assert waiter.owner == id(task)

        def queue(opaque):  # what the Outbox does for each request
            waiter.task, waiter.pending, waiter.opaque = task, pending, opaque
            pending[opaque] = waiter

        for opaque in (1, 2):
            queue(opaque)
            seen.append(await waiter)
            assert waiter.task is None  # woken: the task is not held between requests
        queue(3)
        with pytest.raises(ConnectionError, match="gone"):
            await waiter
        assert waiter.task is None
        queue(4)
        with trio.move_on_after(0.01) as scope:
            await waiter
        assert scope.cancelled_caught and 4 not in pending  # the abort forgot the request
        assert waiter.task is None
        queue(5)
        seen.append(await waiter)

    async def main():
        async with trio.open_nursery() as nursery:
            nursery.start_soon(requester)
            for opaque, answer in ((1, "one"), (2, "two")):
                while opaque not in pending:
                    await trio.sleep(0)
                pending.pop(opaque).resolve(answer)
            while 3 not in pending:
                await trio.sleep(0)
            pending.pop(3).fail(ConnectionError("gone"))
            while 5 not in pending:
                await trio.sleep(0)
            pending.pop(5).resolve("five")
        assert seen == ["one", "two", "five"]

    trio.run(main)


class _Entry:
    def __init__(self, log: list):
        self.log = log

    def resolve(self, answer):
        self.log.append(answer)


@pytest.mark.parametrize("implementation", ["compiled", "pure"])
def test_answer_readers_match_answers_to_requests_in_any_chunking(implementation):
    import random

    from metaq_client import codec
    from metaq_core.wire import RemoteProtocolError, Result, Value

    if implementation == "pure":
        reader_type, answers_type, waiter_type = codec.AnswerReaderPy, codec.PutAnswersPy, codec.WaiterPy
    else:
        compiled = pytest.importorskip("metaq_core._client_codec")
        reader_type, answers_type, waiter_type = compiled.AnswerReader, compiled.PutAnswers, compiled.Waiter

    def put_waiter(log, put):
        waiter = waiter_type("task", lambda task, outcome: log.append(outcome.unwrap()), None)
        waiter.put = put
        return waiter

    stream = (b"result 200 9 1\r\n5 0 12345" b"value 3 2\r\nabc" b"result 403 0 3\r\n"
              b"result 200 5 4\r\nnot a" b"result 500 4 -7\r\noops" b"result 200 7 9\r\n1 2 3 4"
              b"value 0 5\r\n" b"result 200 5 6\r\n8 1 0")
    for seed in range(30):
        log: list = []
        put = answers_type(3, {}, SendResult, Partition, 16)
        pending = {1: put_waiter(log, put), 2: _Entry(log), 3: put_waiter(log, put), 4: put_waiter(log, put),
                   -7: _Entry(log), 5: _Entry(log), 6: put_waiter(log, put)}
        reader = reader_type(pending, Result, Value)
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(stream)), rng.randrange(0, 12)))
        delivered = 0
        for start, end in zip([0, *cuts], [*cuts, len(stream)]):
            delivered += reader.feed(memoryview(stream)[start:end])
        assert delivered == 7 and not pending and reader.buffered == 0
        assert reader.dropped == 1  # opaque 9: nobody waits for it
        assert log == [SendResult(True, 5, Partition(3, 0), 12345), Value(b"abc", 2), Result(403, None, 3),
                       Result(200, b"not a", 4), Result(500, b"oops", -7), Value(b"", 5),
                       SendResult(True, 8, Partition(3, 1), 0)]
    for bad in (b"put t 0 1 0 1\r\nx", b"result 200 x 1\r\n", b"result 200 -1 1\r\n", b"value 1\r\n"):
        with pytest.raises(RemoteProtocolError):
            reader_type({}, Result, Value).feed(bad)
    with pytest.raises(RemoteProtocolError):
        reader_type({}, Result, Value, max_header=16).feed(b"result 200 1 " + b"1" * 20)

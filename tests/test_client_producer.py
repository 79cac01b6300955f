"""The producer against a real broker: results and errors as protocol §6.1 says, the 7-token put
with its checksum, partition selection (§4.10), default topic, async sends with callbacks."""

from __future__ import annotations

import functools

import pytest
import trio

from client_util import CLIENT_INI, FAST_CONNECTIONS, url_of
from metaq_client import (
    BrokerError, BrokerUnavailableError, ClientClosedError, HashSelector, Message, MetaqClient, NoPartitionError,
    Partition, ReadOnlyMessageError, SendResult, StaticPartitionSource,
)
from metaq_core import record
from metaq_core.wire import FrameDecoder, Put
from server_util import free_port, make_config, start_broker

ALL = {"meta-test": [0, 1, 2, 3], "test": [0]}


@pytest.fixture
async def broker(tmp_path, nursery):
    broker = await start_broker(nursery, make_config(str(tmp_path / "data"), CLIENT_INI))
    yield broker
    broker.shutdown()


def stored(broker, topic: str, partition: int) -> list[tuple[int, int, bytes]]:
    """(offset, id, data) of every record of a partition, read from the broker's files."""
    plog = broker.store.get_partition(topic, partition)
    records, _ = plog.read_records(0, 1 << 24)
    return [(offset, msg_id, data) for offset, msg_id, _flag, data in records]


async def test_send_result_and_what_goes_on_the_wire(broker, nursery):
    async with MetaqClient(url_of(broker.port)) as client, client.producer() as producer:
        first = await producer.send("test", b"hello", attribute="attr1")
        second = await producer.send("test", b"world")
    assert first.success and first.partition == Partition(0, 0) and first.offset == 0
    assert second == SendResult(True, second.message_id, Partition(0, 0), 34)
    assert first.message_id < second.message_id and first.error_message is None
    assert stored(broker, "test", 0) == [(0, first.message_id, b"\x00\x00\x00\x05attr1hello"),
                                         (34, second.message_id, b"world")]


async def test_put_is_the_7_token_form_with_checksum_and_partition_minus_1(nursery):
    frames = []

    async def recorder(stream):
        decoder = FrameDecoder()
        raw = b""
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            raw += data
            decoder.receive_data(data)
            for event in decoder.events():
                frames.append((raw, event))
                await stream.send_all(b"result 200 7 %d\r\n9 2 100" % event.opaque)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, recorder, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    async with MetaqClient(url_of(port)) as client, client.producer() as producer:
        result = await producer.send("test", b"hello", attribute="attr1")
    (raw, put), = frames
    assert raw.startswith(b"put test -1 14 1 1602221033 -2") and raw.endswith(b"\r\n\x00\x00\x00\x05attr1hello")
    assert isinstance(put, Put) and put.checksum == record.checksum(put.data) and put.opaque < -2**30
    assert result == SendResult(True, 9, Partition(0, 2), 100)


async def test_broker_refusals_are_failed_results_with_the_broker_text(broker):
    source = StaticPartitionSource(url_of(broker.port), topics={"test": [0], "unknown-topic": [0]})
    async with MetaqClient(source) as client, client.producer() as producer:
        refused = await producer.send("unknown-topic", b"x")
        assert not refused.success and refused.error_message == "The server do not accept topic unknown-topic"
        assert refused.partition is None and refused.offset == -1 and refused.message_id is None
        broker.closed_partitions.add(("test", 0))
        closed = await producer.send("test", b"x")
        assert closed == SendResult(False, error_message="403")
        message = Message("test", b"x")
        await producer.send_message(message)
        assert message.id is None


async def test_sends_fail_with_clear_exceptions_without_a_broker():
    async with MetaqClient(url_of(free_port()), connection_settings=FAST_CONNECTIONS) as client:
        async with client.producer() as producer:
            with pytest.raises(BrokerUnavailableError, match="no connection to the broker"):
                await producer.send("test", b"x")
        with pytest.raises(ClientClosedError):
            await producer.send("test", b"x")


async def test_round_robin_over_listed_partitions_and_custom_selectors(broker):
    source = StaticPartitionSource(url_of(broker.port), topics=ALL, broker_id=1)
    async with MetaqClient(source) as client, client.producer() as producer:
        rr = [(await producer.send("meta-test", b"x")).partition.partition for _ in range(8)]
        assert rr == [1, 2, 3, 0, 1, 2, 3, 0]
        keyed = {(await producer.send("meta-test", b"x", attribute="order-7", partition_selector=HashSelector()))
                 .partition for _ in range(4)}
        assert len(keyed) == 1
        last = await producer.send("meta-test", b"x", partition_selector=lambda t, parts, m: parts[-1])
        assert last.partition == Partition(1, 3)

        def rewriting(topic, partitions, message):
            message.body = b"rewritten"
            return partitions[0]

        message = Message("meta-test", b"original")
        with pytest.raises(ReadOnlyMessageError):
            await producer.send_message(message, partition_selector=rewriting)
        assert not message.read_only and message.body == b"original"
        with pytest.raises(NoPartitionError):
            await producer.send("logs-x", b"x")  # not listed in the source, no default topic


async def test_default_topic_lends_its_partitions(broker):
    source = StaticPartitionSource(url_of(broker.port), topics={"test": [0]})
    async with MetaqClient(source) as client, client.producer(default_topic="test") as producer:
        chosen = []
        result = await producer.send("logs-x", b"via default", partition_selector=lambda t, p, m: chosen.append(t) or p[0])
        assert result.success and result.partition == Partition(0, 0) and chosen == ["test"]
        producer.set_default_topic(None)
        with pytest.raises(NoPartitionError, match="logs-x"):
            await producer.send("logs-x", b"x")
    assert [data for _, _, data in stored(broker, "logs-x", 0)] == [b"via default"]


async def test_send_async_reports_through_callbacks(broker):
    results, errors, async_results = [], [], []

    async def async_callback(result):
        await trio.sleep(0)
        async_results.append(result)

    source = StaticPartitionSource(url_of(broker.port), topics=ALL)
    async with MetaqClient(source) as client:
        async with client.producer() as producer:
            for i in range(20):
                producer.send_async(Message("meta-test", b"a%d" % i), results.append, errors.append)
            producer.send_async(Message("meta-test", b"b"), async_callback)
            producer.send_async(Message("nowhere", b"c"), results.append, errors.append)
            producer.send_async(Message("meta-test", b"d"), lambda r: 1 / 0)  # a failing callback is logged
        # leaving the producer waited for every send
        assert len(results) == 20 and all(r.success for r in results) and len(async_results) == 1
        assert len(errors) == 1 and isinstance(errors[0], NoPartitionError)


async def test_messages_up_to_the_transfer_limit(broker):
    async with MetaqClient(url_of(broker.port)) as client, client.producer() as producer:
        big = bytes(range(256)) * 4096 * 3   # 3 MiB < maxTransferSize of 4 MiB
        assert (await producer.send("test", big, attribute="big")).success
        too_big = await producer.send("test", b"x" * (4 * 1024 * 1024))
        assert not too_big.success and "maxTransferSize" in too_big.error_message
    assert stored(broker, "test", 0)[0][2].endswith(big[-100:])


async def test_answers_a_put_cannot_have_are_broker_errors(nursery):
    answers = iter([b"value 3 %d\r\nabc", b"result 200 5 %d\r\n1 2 x", b"result 200 0 %d\r\n",
                    b"result 500 4 %d\r\nfull"])

    async def odd_broker(stream):
        decoder = FrameDecoder()
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            decoder.receive_data(data)
            for event in decoder.events():
                await stream.send_all(next(answers) % event.opaque)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, odd_broker, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    async with MetaqClient(url_of(port)) as client, client.producer() as producer:
        with pytest.raises(BrokerError, match="value frame"):
            await producer.send("test", b"x")
        with pytest.raises(BrokerError, match="1 2 x"):
            await producer.send("test", b"x")
        with pytest.raises(BrokerError):
            await producer.send("test", b"x")
        assert await producer.send("test", b"x") == SendResult(False, error_message="full")
        with pytest.raises(TypeError):
            await producer.send("test", "text")
        with pytest.raises(TypeError):
            await producer.send("test", b"x", attribute=5)
        assert client.statistics().requests == 4  # the refused arguments never reached the wire


async def test_a_task_per_send_leaves_nothing_to_the_cycle_collector(broker):
    """A task's waiter holds the task only while its request is outstanding, and the trap it
    yields reaches it weakly: tasks that each send one message are freed by reference counting.
    (When every send left a reference cycle of ten objects, the full collections of the cyclic
    garbage collector stalled a producer process for 10-35 ms.)"""
    import gc

    async with MetaqClient(url_of(broker.port)) as client, client.producer() as producer:
        await producer.send("test", b"warm-up")
        results = []

        async def send_one(i: int) -> None:
            results.append(await producer.send("test", b"message %d" % i))

        gc.collect()
        gc.disable()
        try:
            async with trio.open_nursery() as nursery:
                for i in range(300):
                    nursery.start_soon(send_one, i)
            unreachable = gc.collect()
        finally:
            gc.enable()
    assert len(results) == 300 and all(r.success for r in results)
    assert unreachable < 30, f"{unreachable} objects in reference cycles after 300 one-send tasks"


async def test_a_cancelled_send_drops_its_late_answer_and_the_connection_carries_on(nursery):
    release = trio.Event()

    async def slow_first_answer(stream):
        decoder = FrameDecoder()
        first = True
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            decoder.receive_data(data)
            for event in decoder.events():
                if first:
                    first = False
                    await release.wait()
                body = b"9 0 %d" % (10 + len(event.data))
                await stream.send_all(b"result 200 %d %d\r\n" % (len(body), event.opaque) + body)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, slow_first_answer, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    async with MetaqClient(url_of(port)) as client, client.producer() as producer:
        with trio.move_on_after(0.2) as scope:
            await producer.send("test", b"late")
        assert scope.cancelled_caught
        release.set()
        assert await producer.send("test", b"x") == SendResult(True, 9, Partition(0, 0), 11)
        assert client.statistics().dropped_answers == 1

"""The consumer against a real broker: listener kinds and ``async for``, the fetch loop of
protocol §6.2 (failures and retries, reject handlers, maxSize adaptation, records straddling
fetches, 301 after retention, resynchronisation on a corrupted record), interruption rollback,
manual ack/rollback, offsets, consuming from the max offset, and the pull API."""

from __future__ import annotations

import os
import random
import time

import attrs
import pytest
import trio

from client_util import CLIENT_INI, FAST, SMALL_SEGMENTS_INI, segment_files, url_of, wait_for
from metaq_client import (
    ConsumptionInterrupted, InvalidGroupError, InvalidRecordError, LocalOffsetStorage,
    MetaqClient, Partition, StaticPartitionSource, drop,
)
from metaq_core import record
from server_util import make_config, start_broker


@pytest.fixture
async def broker(tmp_path, nursery):
    broker = await start_broker(nursery, make_config(str(tmp_path / "data"), CLIENT_INI))
    yield broker
    broker.shutdown()


@pytest.fixture
async def small_broker(tmp_path, nursery):
    broker = await start_broker(nursery, make_config(str(tmp_path / "data"), SMALL_SEGMENTS_INI))
    yield broker
    broker.shutdown()


@pytest.fixture
async def client(broker, tmp_path):
    async with MetaqClient(url_of(broker.port), recover_path=str(tmp_path / "recover")) as client:
        yield client


def consumer_of(client, tmp_path, group="g", config=FAST, **kw):
    return client.consumer(group, config, offset_storage=LocalOffsetStorage(tmp_path / "offsets.json"), **kw)


async def publish(client, topic: str, bodies, attribute=None):
    async with client.producer() as producer:
        results = [await producer.send(topic, body, attribute=attribute) for body in bodies]
    assert all(r.success for r in results)
    return results


def fetcher(consumer, topic):
    (only,) = consumer._subscriptions[topic].fetchers
    return only


async def test_plain_and_async_listeners(client, tmp_path):
    results = await publish(client, "test", [b"a", b"b", b"c"], attribute="k=v")
    await publish(client, "logs-a", [b"x", b"y"])
    plain, asynced = [], []

    async def async_listener(message):
        await trio.sleep(0)
        asynced.append(message)

    async with consumer_of(client, tmp_path) as consumer:
        await consumer.subscribe("test", plain.append)
        await consumer.subscribe("logs-a", async_listener, partitions=[0, 1, 2])
        with pytest.raises(ValueError, match="already subscribed"):
            await consumer.subscribe("test", plain.append)
        await wait_for(lambda: len(plain) == 3 and len(asynced) == 2)
    assert [(m.topic, m.body, m.attribute, m.id, m.partition, m.offset) for m in plain] == [
        ("test", r_body, "k=v", r.message_id, Partition(0, 0), r.offset) for r_body, r in zip((b"a", b"b", b"c"), results)]
    assert sorted(m.body for m in asynced) == [b"x", b"y"]


async def test_async_for_hands_over_one_message_at_a_time_and_rolls_back_on_break(client, tmp_path):
    await publish(client, "test", [b"m%d" % i for i in range(5)])
    seen = []
    ended = trio.Event()

    async def loop_until_closed(consumer):
        async for _ in consumer:
            pass
        ended.set()

    async with trio.open_nursery() as nursery:
        async with consumer_of(client, tmp_path) as consumer:
            await consumer.subscribe("test")
            with trio.fail_after(5):
                async for message in consumer:
                    seen.append(message.body)
                    if len(seen) == 3:
                        break  # m2 is left unfinished
                assert consumer.positions()[0].offset == 2 * 22
                async for message in consumer:
                    seen.append(message.body)
                    if message.body == b"m4":
                        break
            assert seen == [b"m0", b"m1", b"m2", b"m2", b"m3", b"m4"]
            nursery.start_soon(loop_until_closed, consumer)
            await wait_for(lambda: consumer.positions()[0].offset == 5 * 22)
        with trio.fail_after(5):
            await ended.wait()  # closing the consumer ended the loop


async def test_failing_listener_stops_the_batch_and_is_retried(client, tmp_path):
    await publish(client, "test", [b"m%d" % i for i in range(5)])
    seen, failures = [], {"m2": 2}

    def listener(message):
        seen.append(message.body)
        name = message.body.decode()
        if failures.get(name):
            failures[name] -= 1
            raise RuntimeError(f"cannot handle {name} yet")

    rejected = []
    async with consumer_of(client, tmp_path, reject_handler=lambda m, c: rejected.append(m)) as consumer:
        await consumer.subscribe("test", listener)
        await wait_for(lambda: b"m4" in seen)
    assert seen == [b"m0", b"m1", b"m2", b"m2", b"m2", b"m3", b"m4"] and rejected == []


async def test_reject_handler_takes_the_message_after_max_fetch_retries(client, tmp_path):
    await publish(client, "test", [b"m%d" % i for i in range(4)])
    seen, rejected = [], []

    def listener(message):
        seen.append(message.body)
        if message.body == b"m1":
            raise RuntimeError("poison")

    async def handler(message, consumer):
        assert consumer.group == "rej"
        rejected.append(message)

    async with consumer_of(client, tmp_path, "rej", attrs.evolve(FAST, max_fetch_retries=3),
                           reject_handler=handler) as consumer:
        await consumer.subscribe("test", listener)
        await wait_for(lambda: b"m3" in seen)
        assert consumer.positions()[0].offset == 4 * 22
    # the failure in the batch that consumed m0 made progress, so it is not counted: 1 + 4 deliveries
    assert seen == [b"m0"] + [b"m1"] * 5 + [b"m2", b"m3"]
    assert [m.body for m in rejected] == [b"m1"] and rejected[0].offset == 22
    # drop: the message is gone, nothing is stored for recovery
    async with consumer_of(client, tmp_path, "dropper", reject_handler=drop) as consumer:
        await consumer.subscribe("test", lambda m: 1 / 0 if m.body == b"m0" else None)
        await wait_for(lambda: consumer.positions()[0].offset == 4 * 22)
    assert not os.path.exists(tmp_path / "recover")
    with pytest.raises(ValueError):
        consumer_of(client, tmp_path, reject_handler=None)
    with pytest.raises(ValueError):
        consumer.set_reject_handler(None)


async def test_interrupted_delivery_is_rolled_back(client, tmp_path):
    results = await publish(client, "test", [b"m%d" % i for i in range(5)])
    seen = []

    async def stuck_on_m2(message):
        seen.append(message.body)
        if message.body == b"m2":
            await trio.sleep_forever()

    consumer = consumer_of(client, tmp_path, "int")
    async with consumer:
        await consumer.subscribe("test", stuck_on_m2)
        await wait_for(lambda: b"m2" in seen)
    # closing cancelled the delivery of m2: the committed offset is just before it
    assert await LocalOffsetStorage(tmp_path / "offsets.json").load("int", "test", Partition(0, 0)) == \
        consumer.positions()[0]
    assert consumer.positions()[0].offset == results[2].offset
    assert consumer.positions()[0].msg_id == results[1].message_id

    interrupted = []

    def interrupt_once(message):
        seen.append(message.body)
        if message.body == b"m3" and not interrupted:
            interrupted.append(message)
            raise ConsumptionInterrupted()

    seen.clear()
    async with consumer_of(client, tmp_path, "int") as again:
        await again.subscribe("test", interrupt_once)
        await wait_for(lambda: b"m4" in seen)
        assert fetcher(again, "test").retries == 0
    assert seen == [b"m2", b"m3", b"m3", b"m4"]


async def test_manual_ack_and_rollback(client, tmp_path):
    results = await publish(client, "test", [b"m%d" % i for i in range(6)])
    seen, committed = [], []
    rolled_back = []

    def listener(message):
        committed.append(consumer.positions()[0].offset)  # what the messages before this one left
        message.acks.auto_ack = False
        seen.append(message.body)
        if message.body == b"m2":
            message.acks.ack()
        elif message.body == b"m5":
            if not rolled_back:
                rolled_back.append(True)
                message.acks.rollback()
            else:
                message.acks.ack()

    async with consumer_of(client, tmp_path, "manual") as consumer:
        await consumer.subscribe("test", listener)
        await wait_for(lambda: seen.count(b"m5") == 2)
        await wait_for(lambda: consumer.positions()[0].offset == results[-1].offset + 22)
    assert seen == [b"m0", b"m1", b"m2", b"m3", b"m4", b"m5", b"m3", b"m4", b"m5"]
    # the committed position only moves at an ack, and a rollback goes back to it
    after_m2 = results[3].offset
    assert committed == [0, 0, 0, after_m2, after_m2, after_m2, after_m2, after_m2, after_m2]


async def test_consume_from_max_offset(client, tmp_path):
    old = await publish(client, "test", [b"old1", b"old2"])
    got = []
    config = attrs.evolve(FAST, consume_from_max_offset=True)
    async with consumer_of(client, tmp_path, "latest", config) as consumer:
        await consumer.subscribe("test", got.append)
        await wait_for(lambda: consumer.positions()[0].offset == old[-1].offset + 24)  # 301 with the max
        await publish(client, "test", [b"new"])
        await wait_for(lambda: len(got) == 1)
    assert [m.body for m in got] == [b"new"]


async def test_offsets_commit_on_demand_periodically_and_at_close(client, tmp_path):
    await publish(client, "test", [b"m%d" % i for i in range(3)])
    storage = LocalOffsetStorage(tmp_path / "offsets.json")
    got = []
    slow = attrs.evolve(FAST, commit_offset_period=3600)
    async with consumer_of(client, tmp_path, "c", slow) as consumer:
        await consumer.subscribe("test", got.append)
        await wait_for(lambda: len(got) == 3)
        assert await storage.load("c", "test", Partition(0, 0)) is None
        await consumer.commit_offsets()
        assert (await storage.load("c", "test", Partition(0, 0))).offset == 66
        await publish(client, "test", [b"m3"])
        await wait_for(lambda: len(got) == 4)
    assert (await storage.load("c", "test", Partition(0, 0))).offset == 88  # committed at close
    async with consumer_of(client, tmp_path, "c") as consumer:  # commits every 0.2 s
        await consumer.subscribe("test", got.append)
        await publish(client, "test", [b"m4"])
        await wait_for(lambda: len(got) == 5)
        await trio.sleep(0.5)
        assert (await storage.load("c", "test", Partition(0, 0))).offset == 110
    assert [m.body for m in got] == [b"m%d" % i for i in range(5)]  # resumed, nothing redelivered


async def test_records_straddling_fetch_boundaries(client, tmp_path):
    rng = random.Random(7)
    bodies = [bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 120))) for _ in range(60)]
    attrs_ = [rng.choice([None, "", "a", "ключ=значение"]) for _ in bodies]
    async with client.producer() as producer:
        for body, attribute in zip(bodies, attrs_):
            assert (await producer.send("test", body, attribute=attribute)).success
    got = []
    async with consumer_of(client, tmp_path) as consumer:
        await consumer.subscribe("test", got.append, max_size=150)  # most answers end mid-record
        await wait_for(lambda: len(got) == 60)
    assert [(m.body, m.attribute) for m in got] == list(zip(bodies, attrs_))


async def test_max_size_doubles_for_a_big_record_and_halves_back(client, tmp_path):
    await publish(client, "test", [b"B" * 500, b"s1", b"s2"])
    got = []
    async with consumer_of(client, tmp_path) as consumer:
        await consumer.subscribe("test", got.append, max_size=64)
        await wait_for(lambda: len(got) == 3)
        assert fetcher(consumer, "test").max_size == 1024  # 64 → 128 → 256 → 512 → 1024
        await publish(client, "test", [b"s3"])
        await wait_for(lambda: len(got) == 4)
        assert fetcher(consumer, "test").max_size < 1024
        assert fetcher(consumer, "test").retries == 0
    assert [m.body for m in got] == [b"B" * 500, b"s1", b"s2", b"s3"]


async def test_one_mib_bodies(client, tmp_path):
    rng = random.Random(1)
    bodies = [rng.randbytes(1024 * 1024), b"small", rng.randbytes(1024 * 1024 - 7)]
    await publish(client, "test", bodies, attribute="big")
    got = []
    async with consumer_of(client, tmp_path) as consumer:
        await consumer.subscribe("test", got.append)  # default maxSize 1 MiB: must double once
        await wait_for(lambda: len(got) == 3)
    assert [m.body for m in got] == bodies and {m.attribute for m in got} == {"big"}


async def test_301_after_retention_deleted_old_segments(small_broker, tmp_path):
    async with MetaqClient(url_of(small_broker.port)) as client:
        results = await publish(client, "test", [b"%03d" % i + b"." * 80 for i in range(30)])
        plog = small_broker.store.get_partition("test", 0)
        await trio.to_thread.run_sync(plog.flush)
        segments = plog.segments()
        assert len(segments) > 4
        old = time.time() - 2 * 3600
        for seg in segments[:-2]:
            os.utime(seg.path, (old, old))
        assert await trio.to_thread.run_sync(small_broker.run_retention) == len(segments) - 2
        minimum = plog.min_offset
        assert minimum == segments[-2].start
        got = []
        async with consumer_of(client, tmp_path, "late") as consumer:
            await consumer.subscribe("test", got.append)
            expected = [r for r in results if r.offset >= minimum]
            await wait_for(lambda: len(got) == len(expected))
            assert consumer.positions()[0].offset == results[-1].offset + 103
        assert [m.id for m in got] == [r.message_id for r in expected]


async def test_resync_on_a_corrupted_record_in_an_old_segment(small_broker, tmp_path):
    async with MetaqClient(url_of(small_broker.port)) as client:
        bodies = [b"%03d" % i + b"-" * 80 for i in range(20)]
        results = await publish(client, "test", bodies)
        plog = small_broker.store.get_partition("test", 0)
        await trio.to_thread.run_sync(plog.flush)
        first = segment_files(str(tmp_path / "data"), "test", 0)[0]
        raw = open(first, "rb").read()
        records, _, _ = record.decode(raw)
        assert len(records) >= 3
        bad_offset = records[2][0]
        with open(first, "r+b") as fh:  # flip one byte of the third record's data
            fh.seek(bad_offset + 20 + 10)
            fh.write(bytes([raw[bad_offset + 30] ^ 0x55]))
        got = []
        async with consumer_of(client, tmp_path, "resync") as consumer:
            await consumer.subscribe("test", got.append)
            await wait_for(lambda: consumer.positions()[0].offset == results[-1].offset + 103)
            with pytest.raises(InvalidRecordError, match=f"offset {bad_offset}"):
                await consumer.get("test", 0, bad_offset)
        received = [m.body for m in got]
        assert bodies[2] not in received
        assert set(received) == set(bodies) - {bodies[2]}
        assert received[-17:] == bodies[3:]  # after the skip, everything in order, once


async def test_pull_api(client, tmp_path):
    results = await publish(client, "test", [b"p0", b"p1", b"p2"], attribute="a")
    async with consumer_of(client, tmp_path, "puller") as consumer:
        batch = await consumer.get("test", 0, 0)
        assert [(m.body, m.attribute, m.id, m.offset) for m in batch.messages] == [
            (b"p%d" % i, "a", r.message_id, r.offset) for i, r in enumerate(results)]
        assert batch.next_offset == 3 * 27
        part = await consumer.get("test", Partition(0, 0), 27, max_size=40)
        assert [m.body for m in part.messages] == [b"p1"] and part.next_offset == 54
        empty = await consumer.get("test", 0, 81)
        assert empty.messages == [] and empty.next_offset == 81
        moved = await consumer.get("test", 0, -100)  # 301 to the min offset, followed
        assert [m.body for m in moved.messages][:1] == [b"p0"]
        assert (await consumer.get("nothing-here", 0, 0)).messages == []
        with pytest.raises(InvalidRecordError):
            await consumer.get("test", 0, 10)  # inside a record: garbage


async def test_subscribe_to_every_partition_the_broker_reports(broker, tmp_path):
    source = StaticPartitionSource(url_of(broker.port), topics={"meta-test": [0, 1, 2, 3]})
    async with MetaqClient(source) as client:
        await publish(client, "meta-test", [b"q%d" % i for i in range(12)])
    async with MetaqClient(url_of(broker.port)) as client:
        got = []
        async with consumer_of(client, tmp_path, "all") as consumer:
            await consumer.subscribe("meta-test", got.append)  # partitions from `stats offsets`
            await wait_for(lambda: len(got) == 12)
            assert sorted(p.partition.partition for p in consumer.positions()) == [0, 1, 2, 3]
        with pytest.raises(InvalidGroupError):
            client.consumer("bad group", offset_storage=LocalOffsetStorage(tmp_path / "x.json"))


async def test_local_recover_redelivers_in_the_background(client, tmp_path):
    await publish(client, "test", [b"ok", b"poison", b"after"])
    seen = []
    healed = trio.Event()

    def listener(message):
        seen.append(message.body)
        if message.body == b"poison" and not healed.is_set():
            raise RuntimeError("not yet")

    async with consumer_of(client, tmp_path, "rec", attrs.evolve(FAST, recover_delay=3600)) as consumer:
        await consumer.subscribe("test", listener)
        await wait_for(lambda: b"after" in seen)
    assert seen.count(b"poison") == FAST.max_fetch_retries + 2  # the first failure came after progress
    healed.set()
    seen.clear()
    async with consumer_of(client, tmp_path, "rec") as consumer:
        await consumer.subscribe("test", listener)
        await wait_for(lambda: seen == [b"poison"])
        await trio.sleep(0.3)
    assert seen == [b"poison"]  # redelivered once, then deleted from the store
    assert os.listdir(tmp_path / "recover" / "test@rec") == []

"""Scenarios run through both facades, trio and blocking: round trips over many partitions, the
reject handler with local recover surviving a client restart, and a broker process killed with
SIGKILL and restarted while a producer and a consumer run."""

from __future__ import annotations

import os

import attrs
import pytest
import trio

from client_util import CLIENT_INI, FACADES, FAST, key, url_of, wait_for
from metaq_client import (
    BrokerUnavailableError, ConnectionClosedError, MetaqClientError, RequestTimeoutError, StaticPartitionSource,
)
from server_util import free_port, make_config, start_broker, start_broker_process


@pytest.fixture(params=sorted(FACADES))
def facade(request):
    return FACADES[request.param]


@pytest.fixture
async def broker(tmp_path, nursery):
    broker = await start_broker(nursery, make_config(str(tmp_path / "data"), CLIENT_INI))
    yield broker
    broker.shutdown()


SAMPLES = [
    (b"", None), (b"", ""), (b"plain", None), (b"ascii", "k=v"), (b"\xe2\x82\xac utf-8", "clé=värde ✓ 中文"),
    (b"\x00\xff\r\n" * 300, ""), (bytes(range(256)), "bin"),
]


async def test_round_trip_over_many_partitions(facade, broker, tmp_path, nursery):
    source = StaticPartitionSource(url_of(broker.port), topics={"meta-test": [0, 1, 2, 3]}, broker_id=1)
    sent = SAMPLES * 4
    async with facade(source, tmp_path, nursery) as f:
        results = [await f.send("meta-test", body, attribute) for body, attribute in sent]
        assert all(r.success for r in results)
        assert {r.partition.partition for r in results} == {0, 1, 2, 3}
        got = []
        await f.consume("round-trip", "meta-test", got.append)
        await wait_for(lambda: len(got) >= len(sent))
        await trio.sleep(0.1)
    assert sorted(map(key, got), key=repr) == sorted(sent, key=repr)
    by_id = {r.message_id: r for r in results}
    assert all((m.partition, m.offset) == (by_id[m.id].partition, by_id[m.id].offset) for m in got)
    for partition in range(4):  # each partition in publishing order
        ids = [m.id for m in got if m.partition.partition == partition]
        assert ids == [r.message_id for r in results if r.partition.partition == partition]


async def test_reject_then_local_recover_after_a_client_restart(facade, broker, tmp_path, nursery):
    url = url_of(broker.port)
    seen = []

    def refuse_m2(message):
        seen.append(message.body)
        if message.body == b"m2":
            raise RuntimeError("cannot handle m2")

    async with facade(url, tmp_path, nursery) as f:
        for i in range(5):
            assert (await f.send("test", b"m%d" % i)).success
        consumer = await f.consume("rejecting", "test", refuse_m2, config=attrs.evolve(FAST, recover_delay=3600))
        await wait_for(lambda: b"m4" in seen)
        assert seen.count(b"m2") == FAST.max_fetch_retries + 2  # its first failure followed progress
        assert (await f.positions(consumer))[0].offset == 5 * 22
    assert len(os.listdir(tmp_path / "recover" / "test@rejecting")) == 1  # on disk, across the restart

    got = []
    async with facade(url, tmp_path, nursery) as f:
        await f.consume("rejecting", "test", got.append)
        await wait_for(lambda: got)
        await trio.sleep(0.3)
    assert [m.body for m in got] == [b"m2"]  # only the recovered message: offsets were committed
    assert os.listdir(tmp_path / "recover" / "test@rejecting") == []


async def start_process(data_dir, port):
    return await trio.to_thread.run_sync(start_broker_process, data_dir, port)


async def test_broker_killed_and_restarted_under_load(facade, tmp_path, nursery):
    port, data_dir = free_port(), str(tmp_path / "data")
    proc = await start_process(data_dir, port)
    acked, errors, got = set(), [], []
    stop = trio.Event()
    try:
        async with facade(url_of(port), tmp_path, nursery) as f:
            async def produce():
                i = 0
                while not stop.is_set():
                    body = b"n%d" % i
                    i += 1
                    try:
                        result = await f.send("orders", body)
                    except MetaqClientError as exc:
                        errors.append(exc)
                        await trio.sleep(0.02)
                        continue
                    assert result.success, result
                    acked.add(body)

            await f.consume("survivor", "orders", lambda m: got.append(m.body), partitions=[0])
            async with trio.open_nursery() as inner:
                inner.start_soon(produce)
                await wait_for(lambda: len(acked) >= 50)
                proc.kill()
                await trio.to_thread.run_sync(proc.wait)
                await wait_for(lambda: len(errors) >= 5)
                before = len(acked)
                proc = await start_process(data_dir, port)
                await wait_for(lambda: len(acked) >= before + 50, timeout=15)
                stop.set()
            await wait_for(lambda: acked <= set(got), timeout=15)
    finally:
        proc.kill()
        proc.wait()
    assert all(isinstance(e, (BrokerUnavailableError, ConnectionClosedError, RequestTimeoutError)) for e in errors)
    assert any(f"meta://127.0.0.1:{port}" in str(e) for e in errors)
    assert len(got) == len(set(got))  # the consumer kept its position: nothing delivered twice

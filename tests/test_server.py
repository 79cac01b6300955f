"""The broker over real TCP: the worked examples of protocol §7 byte for byte, every status path
of the server checklist (§8), pipelining, many connections, and a table of bad input."""

from __future__ import annotations

import os
import random
import struct
import zlib

import pytest
import trio

from metaq_core import LogStore
from metaq_core.ids import split_id
from metaq_core.wire import (
    Get, OffsetRequest, Put, Result, Stats, Sync, Transaction, Value, Version, encode,
)
from server_util import PUT_ANSWER, RawClient, make_config, start_broker

HELLO = b"\x00\x00\x00\x05attr1hello"


@pytest.fixture
async def broker(tmp_path, nursery):
    broker = await start_broker(nursery, make_config(str(tmp_path / "data")))
    yield broker
    broker.shutdown()


@pytest.fixture
async def client(broker):
    client = await RawClient.connect(broker.port)
    yield client
    await client.aclose()


def put_answer(result: Result) -> tuple[int, int, int]:
    match = PUT_ANSWER.match(result.body)
    assert match, result
    return int(match.group(1)), int(match.group(2)), int(match.group(3))


# ---------------------------------------------------------------------- §7 worked examples


async def test_worked_examples_byte_for_byte(broker, client, tmp_path):
    # §7.1 and §7.2: the answers are exact but for the message ids, which carry the clock.
    await client.send(b"put test 0 14 1 1602221033 1\r\n" + HELLO)
    (first,) = await client.receive()
    id1, part1, off1 = put_answer(first)
    assert bytes(client.raw) == b"result 200 %d 1\r\n%d 0 0" % (len(first.body), id1)
    client.raw.clear()
    await client.send(b"put test 0 5 0 980881731 2\r\nworld")
    (second,) = await client.receive()
    id2, part2, off2 = put_answer(second)
    assert bytes(client.raw) == b"result 200 %d 2\r\n%d 0 34" % (len(second.body), id2)
    assert split_id(id1)[1] == split_id(id2)[1] == 1  # broker id 1 in bits 21..12
    assert id1 < id2

    # The first record on disk is exactly §7.1's, but for its id.
    segment = tmp_path / "data" / "test-0" / "00000000000000000000.meta"
    stored = segment.read_bytes()
    assert stored[:8] == bytes.fromhex("0000000e5f7ff3e9")
    assert stored[16:34] == bytes.fromhex("00000001") + HELLO
    assert struct.unpack(">q", stored[8:16])[0] == id1
    assert stored[34:38] == b"\x00\x00\x00\x05" and stored[38:42] == bytes.fromhex("3a771143")
    assert stored[42:50] == struct.pack(">q", id2) and stored[50:] == b"\x00\x00\x00\x00world"

    # §7.3: a get returning both records, byte for byte.
    client.raw.clear()
    await client.send(b"get test group1 0 0 1048576 3\r\n")
    (value,) = await client.receive()
    assert bytes(client.raw) == b"value 59 3\r\n" + stored
    assert value == Value(stored, 3)

    client.raw.clear()
    await client.send(b"get test group1 0 0 50 4\r\n")
    (value,) = await client.receive()
    assert bytes(client.raw) == b"value 50 4\r\n" + stored[:50]

    client.raw.clear()
    await client.send(b"get test group1 0 59 1048576 5\r\n")
    await client.receive()
    assert bytes(client.raw) == b"result 404 37 5\r\nCould not find message at position 59"

    client.raw.clear()
    await client.send(b"get test group1 0 10 1048576 9\r\n")
    await client.receive()
    assert bytes(client.raw) == b"value 49 9\r\n" + stored[10:]

    client.raw.clear()
    await client.send(b"offset test group1 0 10 6\r\n")
    await client.receive()
    assert bytes(client.raw) == b"result 200 1 6\r\n0"

    # §7.5
    for request, expected in [
        (b"stats offsets 13\r\n", b"result 200 52 13\r\nSTATS\r\ntest part 0 min_offset 0 max_offset 59\r\nEND\r\n"),
        (b"version 14\r\n", b"result 200 5 14\r\n1.4.4"),
        (b"stats reset\r\n", b"result 200 22 2147483647\r\nSTATS\r\nreset ok\r\nEND\r\n"),
        (b"version\r\n", b"result 200 5 2147483647\r\n1.4.4"),
    ]:
        client.raw.clear()
        await client.send(request)
        await client.receive()
        assert bytes(client.raw) == expected
    await client.aclose()


async def test_put_response_framing(client):
    await client.send(b"put test 0 14 1 1602221033 1\r\n" + HELLO)
    (result,) = await client.receive()
    msg_id, partition, offset = put_answer(result)
    assert (partition, offset) == (0, 0)
    assert bytes(client.raw) == b"result 200 %d 1\r\n%d 0 0" % (len(result.body), msg_id)
    # pre-1.4.4 form without checksum, and partition -1 (random among the topic's 4)
    await client.send(b"put meta-test -1 5 0 -7\r\nworld")
    (result,) = await client.receive()
    _id, partition, offset = put_answer(result)
    assert result.opaque == -7 and 0 <= partition < 4 and offset == 0


# ------------------------------------------------------------------- status paths (§8)


async def test_put_errors(broker, client, tmp_path):
    cases = [
        (Put("unknown", 0, 0, -1, None, 1, b"x"), 500, b"The server do not accept topic unknown"),
        (Put("test", 1, 0, -1, None, 2, b"x"), 500, b"wrong partition 1"),
        (Put("meta-test", 4, 0, -1, None, 3, b"x"), 500, b"wrong partition 4"),
        (Put("meta-test", -2, 0, -1, None, 4, b"x"), 500, b"wrong partition -2"),
        (Put("test", 0, 0, 12345, None, 5, b"x"), 500,
         b"Checksum failure,message may be corrupted when transfering on networking."),
        (Put("test", 0, 1, -1, None, 6, b"\x00\x00\x00\x09abc"), 400, None),
        (Put("test", 0, 1, -1, None, 7, b"\x00\x01"), 400, None),
        (Put("test", 0, 0, -1, None, 8, b"x" * (1024 * 1024 - 19)), 500, None),
        (Put("logs-../../etc", 0, 0, -1, None, 9, b"x"), 500, None),
        (Put("logs-" + "x" * 300, 0, 0, -1, None, 10, b"x"), 500, None),
    ]
    for request, status, text in cases:
        result = await client.call(request)
        assert result.status == status, (request, result)
        assert result.opaque == request.opaque
        if text is not None:
            assert result.body == text
        else:
            assert result.body
    # the largest record that fits is accepted: 20 + data == maxTransferSize
    ok = await client.call(Put("test", 0, 0, -1, None, 11, b"y" * (1024 * 1024 - 20)))
    assert ok.status == 200
    # nothing refused reached the disk
    data = tmp_path / "data"
    assert sorted(p.name for p in data.iterdir() if p.is_dir()) == ["test-0"]
    assert os.path.getsize(data / "test-0" / "00000000000000000000.meta") == 1024 * 1024
    assert broker.counters.put_failed == len(cases)


async def test_wildcard_topics_and_partitions(client, tmp_path):
    for partition in range(3):
        result = await client.call(Put("logs-app", partition, 0, -1, None, partition, b"x"))
        assert result.status == 200
    assert (await client.call(Put("logs-app", 3, 0, -1, None, 9, b"x"))).status == 500


async def test_closed_partition_answers_403(broker, client):
    broker.closed_partitions.add(("test", 0))
    result = await client.call(Put("test", 0, 0, -1, None, 1, b"x"))
    assert (result.status, result.body) == (403, b"Partition[1-0] has been closed")
    result = await client.call(Get("test", "g", 0, 0, 100, 2))
    assert result.status == 403


async def test_get_status_paths(broker, client):
    result = await client.call(Get("test", "g", 0, 0, 100, 1))
    assert (result.status, result.body) == (404, b"The topic `test` in partition `0` is not exists")
    for i in range(3):
        assert (await client.call(Put("test", 0, 0, -1, None, i, b"abc"))).status == 200
    end = 3 * 23
    assert (await client.call(Get("test", "g", 0, 0, 0, 1))) == Result(400, b"Bad request,invalid max size:0", 1)
    assert (await client.call(Get("test", "g", 0, 0, -5, 1))).status == 400
    assert (await client.call(Get("test", "g", 0, -1, 100, 2))) == Result(301, b"0", 2)
    assert (await client.call(Get("test", "g", 0, end, 100, 3))).status == 404
    assert (await client.call(Get("test", "g", 0, end + 1, 100, 4))) == Result(
        404, b"Could not find message at position %d" % (end + 1), 4)
    assert (await client.call(Get("test", "g", 0, 2**63 - 1, 100, 5))) == Result(301, b"%d" % end, 5)
    value = await client.call(Get("test", "g", 0, 23, 100, 6))
    assert isinstance(value, Value) and len(value.data) == 46
    # the 404 for a missing store is checked before maxSize (403 → 404 → 400 order)
    assert (await client.call(Get("nope", "g", 0, 0, 0, 7))).status == 404
    assert (await client.call(OffsetRequest("nope", "g", 0, 0, 8))).status == 404
    assert (await client.call(OffsetRequest("test", "g", 0, 50, 9))) == Result(200, b"0", 9)
    assert (await client.call(OffsetRequest("test", "g", 0, 10_000, 10))) == Result(200, b"%d" % end, 10)
    assert (await client.call(OffsetRequest("test", "g", 0, -3, 11))) == Result(200, b"0", 11)


async def test_update_consumer_offsets(tmp_path, nursery):
    broker = await start_broker(nursery, make_config(str(tmp_path / "d"), update_consumer_offsets=True))
    client = await RawClient.connect(broker.port)
    await client.call(Put("test", 0, 0, -1, None, 1, b"abc"))
    assert (await client.call(Get("test", "g", 0, 23, 100, 2))).status == 404  # == max: caught up
    assert (await client.call(Get("test", "g", 0, 24, 100, 3))) == Result(301, b"23", 3)
    broker.shutdown()


async def test_sync_transaction_and_stray_frames(client):
    result = await client.call(Sync("test", 0, 0, 1, -1, 5, b"x"))
    assert result.status == 503 and result.opaque == 5
    result = await client.call(Transaction("TX:s:1", "s", "BEGIN", 0, None, 6))
    assert result.status == 500 and result.body.startswith(b"XAException:code=")
    result = await client.call(Put("test", 0, 0, -1, "TX:s:1", 7, b"x"))
    assert (result.status, result.body) == (500, b"Local transaction 'TX:s:1' has not been started.")
    # END is never answered; a stray result/value is ignored; the next request still works
    await client.send(Transaction("TX:s:1", "s", "END", 0, None, 8))
    await client.send(b"result 200 3 99\r\nabcvalue 2 98\r\nzz")
    assert await client.call(Version(9)) == Result(200, b"1.4.4", 9)


async def test_stats_items(broker, client):
    await client.call(Put("meta-test", 2, 0, -1, None, 1, b"hello"))
    await client.call(Get("meta-test", "grp", 2, 0, 1000, 2))
    summary = (await client.call(Stats("", 3))).body.decode()
    lines = summary.split("\r\n")
    assert lines[0] == "STATS" and lines[-2] == "END" and lines[-1] == ""
    keys = [line.split(" ")[0] for line in lines[1:-2]]
    assert keys == ["pid", "broker_id", "port", "uptime", "version", "slave", "curr_connections", "threads",
                    "cmd_put", "cmd_get", "cmd_offset", "tx_begin", "tx_xa_begin", "tx_commit",
                    "tx_rollback", "get_miss", "put_failed", "total_messages", "topics", "config_checksum"]
    values = dict(line.split(" ", 1) for line in lines[1:-2])
    assert values["broker_id"] == "1" and values["cmd_put"] == "1" and values["cmd_get"] == "1"
    assert values["pid"] == str(os.getpid()) and values["total_messages"] == "1"
    assert values["config_checksum"] == str(broker.config.config_checksum)
    topics = (await client.call(Stats("topics", 4))).body.decode()
    assert topics == ("STATS\r\nmeta-test partitions 1 message_count 1 accept_publish true accept_subscribe true\r\n"
                      "test *Empty*\r\nEND\r\n")
    offsets = (await client.call(Stats("offsets", 5))).body
    assert offsets == b"STATS\r\nmeta-test part 2 min_offset 0 max_offset 25\r\nEND\r\n"
    realtime = (await client.call(Stats("realtime", 6))).body.decode().split("\r\n")
    assert realtime[1].startswith("realtime_put Count=1,Value=1,Value/Count=1,Count/Duration=")
    assert realtime[4] == "realtime_get_miss null"
    assert realtime[6].startswith("realtime_message_size Count=1,Value=5,Value/Count=5,")
    topic = (await client.call(Stats("meta-test", 7))).body.decode().split("\r\n")
    assert topic[:6] == ["STATS", "meta-test", "resultCode 0", "partitions 1", "message_count 1", "bytes 25"]
    assert topic[6].startswith("topic_realtime_put Count=1,")
    assert (await client.call(Stats("nope", 8))).body.decode().split("\r\n")[2] == "resultCode 1"
    assert (await client.call(Stats("test", 9))).body.decode().split("\r\n")[2] == "resultCode 2"
    helptext = (await client.call(Stats("help", 10))).body.decode()
    assert helptext == ("STATS\r\n*EMPTY* Returns broker info.\r\nhelp Returns help menu.\r\n"
                        "topics Returns topics statistics detail info.\r\noffsets Returns partitions detail info.\r\n"
                        "realtime Returns realtime statistics detail info.\r\n"
                        "config Returns broker's config file content.\r\nEND\r\n")
    config = await client.call(Stats("config", 11))
    assert config.status == 200 and b"[topic=meta-test]" in config.body
    # the empty item with an opaque needs two spaces (§5.6)
    await client.send(b"stats  12\r\n")
    (result,) = await client.receive()
    assert result.opaque == 12 and result.body.startswith(b"STATS\r\npid ")


# ------------------------------------------------------------------------------- pipelining


async def test_ten_thousand_pipelined_puts(client, broker):
    opaques = random.sample(range(-(2**31), 2**31 - 1), 10_000)
    bodies = {o: b"m%d" % o for o in opaques}
    stream = b"".join(encode(Put("meta-test", 1, 0, zlib.crc32(bodies[o]) & 0x7FFFFFFF, None, o, bodies[o]))
                      for o in opaques)
    await client.send(stream)
    results = await client.receive(10_000, timeout=60)
    assert sorted(r.opaque for r in results) == sorted(opaques)
    assert all(r.status == 200 for r in results)
    offsets = {r.opaque: put_answer(r)[2] for r in results}
    # per-connection append order equals request order (§2.7 recommendation)
    assert [offsets[o] for o in opaques] == sorted(offsets.values())
    with LogStore(broker.config.system.data_path, read_only=True) as reader:
        offset, seen = 0, []
        while offset < reader.max_offset("meta-test", 1):
            batch = reader.read("meta-test", 1, offset)
            seen += [m.body for m in batch.messages]
            offset = batch.next_offset
    assert seen == [bodies[o] for o in opaques]


async def test_two_hundred_connections(broker):
    per_client = 10
    acked: dict[int, list[int]] = {}

    async def one(n):
        client = await RawClient.connect(broker.port)
        for i in range(per_client):
            await client.send(Put("meta-test", n % 4, 0, -1, None, i, b"%d:%d" % (n, i)))
        results = await client.receive(per_client, timeout=60)
        assert all(r.status == 200 for r in results)
        acked[n] = [put_answer(r)[2] for r in sorted(results, key=lambda r: r.opaque)]
        got = await client.call(Get("meta-test", "g", n % 4, 0, 1 << 20, 99))
        assert isinstance(got, Value)
        await client.aclose()

    async with trio.open_nursery() as nursery:
        for n in range(200):
            nursery.start_soon(one, n)
    with LogStore(broker.config.system.data_path, read_only=True) as reader:
        for partition in range(4):
            offset, bodies = 0, []
            while offset < reader.max_offset("meta-test", partition):
                batch = reader.read("meta-test", partition, offset)
                bodies += [(m.offset, m.body) for m in batch.messages]
                offset = batch.next_offset
            expected = {(b"%d:%d" % (n, i)) for n in range(partition, 200, 4) for i in range(per_client)}
            assert sorted(b for _, b in bodies) == sorted(expected)  # nothing lost or duplicated
            offsets = [o for o, _ in bodies]
            # contiguous: each record starts where the previous one ends
            assert offsets == [0] + [o + 20 + len(b) for o, b in bodies[:-1]]
            for n in range(partition, 200, 4):
                assert set(acked[n]) <= set(offsets)


async def test_quit_after_pipelined_requests_flushes_answers(client):
    await client.send(b"".join(encode(Put("test", 0, 0, -1, None, i, b"q")) for i in range(50))
                      + b"stats offsets 77\r\nquit\r\n")
    results = await client.receive(51)
    assert sorted(r.opaque for r in results) == list(range(50)) + [77]
    assert await client.closed_by_peer()


# ------------------------------------------------------------------------------- bad input


BAD_INPUT = [
    b"bogus command\r\n",
    b"\r\n",
    b" put test 0 1 0 1\r\nx",
    b"put test 0 -5 0 1\r\n",
    b"put test zero 1 0 1\r\nx",
    b"get test g 0 0 100 99999999999\r\n",
    b"get test g 0 abc 100 1\r\n",
    b"put test 0 1 0 1 2 3 4 5\r\nx",
    b"transaction TX:bad s BEGIN 1\r\n",
    b"transaction TX:s:1 s DANCE 1\r\n",
    b"p" * (64 * 1024 + 10),
    b"put test 0 1 0 1\n\nx",  # lone LF: no header yet, then more garbage until the limit
]


@pytest.mark.parametrize("garbage", BAD_INPUT, ids=range(len(BAD_INPUT)))
async def test_bad_input_closes_only_that_connection(broker, garbage):
    good = await RawClient.connect(broker.port)
    assert (await good.call(Put("test", 0, 0, -1, None, 1, b"before"))).status == 200
    bad = await RawClient.connect(broker.port)
    await bad.send(garbage)
    if garbage.endswith(b"\n\nx"):
        await bad.send(b"z" * (64 * 1024 + 10))
    assert await bad.closed_by_peer()
    assert (await good.call(Put("test", 0, 0, -1, None, 2, b"after"))).status == 200
    value = await good.call(Get("test", "g", 0, 0, 1 << 20, 3))
    from metaq_core import record
    records, end, status = record.decode(value.data)
    assert [r[3] for r in records] == [b"before", b"after"] and status == record.CLEAN


async def test_huge_announced_body_then_disconnect(broker, tmp_path):
    bad = await RawClient.connect(broker.port)
    await bad.send(b"put test 0 2000000000 0 -1 1\r\n" + b"z" * 100_000)
    await bad.aclose()
    good = await RawClient.connect(broker.port)
    assert (await good.call(Put("test", 0, 0, -1, None, 2, b"ok"))).status == 200
    assert os.path.getsize(tmp_path / "data" / "test-0" / "00000000000000000000.meta") == 22


async def test_oversize_body_is_answered_not_buffered(broker, client):
    size = 3 * 1024 * 1024
    await client.send(b"put test 0 %d 0 -1 5\r\n" % size)
    chunk = b"q" * 65536
    for _ in range(size // len(chunk)):
        await client.send(chunk)
    (result,) = await client.receive()
    assert result.status == 500 and result.opaque == 5 and b"too large" in result.body
    assert (await client.call(Version(6))).status == 200  # the connection is still usable


async def test_half_frame_stall_does_not_block_others(broker):
    staller = await RawClient.connect(broker.port)
    await staller.send(b"put test 0 10 0 -1 1\r\nhalf")
    other = await RawClient.connect(broker.port)
    with trio.fail_after(5):
        for i in range(20):
            assert (await other.call(Put("test", 0, 0, -1, None, i, b"other"))).status == 200
    await staller.send(b"-done!")
    (result,) = await staller.receive()
    assert result.status == 200


async def test_client_vanishing_mid_body_writes_nothing(broker, tmp_path):
    for _ in range(3):
        client = await RawClient.connect(broker.port)
        await client.send(b"put test 0 1000 0 -1 1\r\n" + b"v" * 500)
        await client.aclose()
    good = await RawClient.connect(broker.port)
    assert (await good.call(Put("test", 0, 0, -1, None, 1, b"x"))).status == 200
    value = await good.call(Get("test", "g", 0, 0, 1 << 20, 2))
    assert len(value.data) == 21


# ------------------------------------------------------------------ idle, reload, retention


async def test_idle_connections_are_closed(broker):
    broker.idle_timeout = 0.3
    idle = await RawClient.connect(broker.port)
    busy = await RawClient.connect(broker.port)
    with trio.fail_after(5):
        for _ in range(8):
            await trio.sleep(0.1)
            assert (await busy.call(Version(1))).status == 200
        assert await idle.closed_by_peer()
    assert (await busy.call(Version(2))).status == 200


async def test_reload_adds_topic_sections(tmp_path, nursery):
    from server_util import TEST_INI
    from metaq_server.config import BrokerConfig
    path = tmp_path / "server.ini"
    path.write_text(TEST_INI)
    config = BrokerConfig.load(str(path)).with_system(data_path=str(tmp_path / "d"), server_port=0,
                                                      host_name="127.0.0.1")
    broker = await start_broker(nursery, config, config_path=str(path))
    client = await RawClient.connect(broker.port)
    assert (await client.call(Put("fresh", 0, 0, -1, None, 1, b"x"))).status == 500
    path.write_text(TEST_INI + "\n[topic=fresh]\nnumPartitions=2\n")
    await broker.reload()
    assert (await client.call(Put("fresh", 1, 0, -1, None, 2, b"x"))).status == 200
    # [system] and the listening port are kept; patterns accepted before stay accepted
    assert (await client.call(Put("logs-x", 0, 0, -1, None, 3, b"x"))).status == 200
    broker.shutdown()


async def test_retention_runs_the_topic_policy(tmp_path, nursery):
    import time as _time
    text = TEST_INI_RETENTION
    broker = await start_broker(nursery, make_config(str(tmp_path / "d"), text))
    client = await RawClient.connect(broker.port)
    for i in range(40):
        assert (await client.call(Put("test", 0, 0, -1, None, i, b"r" * 80))).status == 200
    plog = broker.store.get_partition("test", 0)
    await trio.to_thread.run_sync(plog.flush)  # the writer has finished its rolls
    segments = plog.segments()
    assert len(segments) > 3
    old = _time.time() - 3 * 3600
    for seg in segments:
        os.utime(seg.path, (old, old))
    # deleteWhen fires every second: the scheduled run removes every segment but the newest
    with trio.fail_after(10):
        while plog.min_offset != segments[-1].start:
            await trio.sleep(0.1)
    assert [os.path.basename(s.path) for s in plog.segments()] == [os.path.basename(segments[-1].path)]
    result = await client.call(Get("test", "g", 0, 0, 1000, 99))
    assert result == Result(301, b"%d" % segments[-1].start, 99)
    broker.shutdown()


TEST_INI_RETENTION = """\
[system]
brokerId=1
numPartitions=1
unflushThreshold=0
unflushInterval=10000
maxSegmentSize=500
maxTransferSize=1024*1024
deletePolicy=delete,2h

[zookeeper]
zk.zkEnable=false
zk.zkConnect=localhost:2181

[topic=test]
deleteWhen=* * * * * ?
"""


async def test_client_vanishing_while_answers_are_sent(broker):
    for _ in range(5):
        client = await RawClient.connect(broker.port)
        await client.send(b"".join(encode(Get("test", "g", 0, 0, 1 << 20, i)) for i in range(200))
                          + b"".join(encode(Put("test", 0, 0, -1, None, i, b"v" * 1000)) for i in range(200)))
        client.stream.socket.setsockopt(__import__("socket").SOL_SOCKET, __import__("socket").SO_LINGER,
                                        __import__("struct").pack("ii", 1, 0))  # close with RST
        await client.aclose()
    await trio.sleep(0.5)
    good = await RawClient.connect(broker.port)
    assert (await good.call(Version(1))).status == 200
    value = await good.call(Get("test", "g", 0, 0, 1 << 20, 2))
    from metaq_core import record
    records, _end, status = record.decode(value.data)
    assert status in (record.CLEAN, record.PARTIAL) and all(r[3] == b"v" * 1000 for r in records)

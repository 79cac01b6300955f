"""The broker's compiled put path (metaq_server/_puts.pyx) over real TCP: pipelined puts batched per
partition answer exactly as the general path does — offsets, refusals, statistics — and a write
failure answers every put of a batch with 500 while the log keeps every acknowledged record."""

from __future__ import annotations

import os
import random
import re
import resource
import socket
import subprocess
import sys
import time
import zlib

import pytest
import trio

from metaq_core import LogStore
from metaq_core.wire import FrameDecoder, Put, Result, Stats, encode
from server_util import PUT_ANSWER, RawClient, free_port, make_config, start_broker


def crc(data: bytes) -> int:
    return zlib.crc32(data) & 0x7FFFFFFF


def good(topic: str, partition: int, opaque: int, body: bytes) -> Put:
    return Put(topic, partition, 0, crc(body), None, opaque, body)


#: Refusals sent after the partitions exist (so the compiled path sees them first), with the
#: status and text the general path gives.
REFUSALS = [
    (Put("test", 0, 0, 12345, None, 101, b"x"), 500,
     b"Checksum failure,message may be corrupted when transfering on networking."),
    (Put("test", 1, 0, -1, None, 102, b"x"), 500, b"wrong partition 1"),
    (Put("meta-test", -2, 0, -1, None, 103, b"x"), 500, b"wrong partition -2"),
    (Put("test", 0, 1, -1, None, 104, b"\x00\x00\x00\x09abc"), 400, None),
    (Put("test", 0, 1, -1, None, 105, b"\x00\x01"), 400, None),
    (Put("test", 0, 0, -1, None, 106, b"x" * (1024 * 1024 - 19)), 500, None),
    (Put("unknown", 0, 0, -1, None, 107, b"x"), 500, b"The server do not accept topic unknown"),
    # the same length as "test": the put path's last-topic shortcut must compare every byte
    (Put("tesx", 0, 0, -1, None, 109, b"x"), 500, b"The server do not accept topic tesx"),
    (Put("test", 0, 0, -1, "TX:1", 108, b"x"), 500, b"Local transaction 'TX:1' has not been started."),
]


async def answers_of(client: RawClient, requests: list[Put], *, chunked: bool = False) -> dict[int, Result]:
    data = b"".join(encode(r) for r in requests)
    if chunked:  # small pieces with pauses: the broker receives frames cut at every kind of place
        rng = random.Random(7)
        position = 0
        while position < len(data):
            size = rng.randint(1, 40) if rng.random() < 0.9 else 65536  # (a 1 MiB body too)
            await client.send(data[position:position + size])
            position += size
            await trio.sleep(0.0005)
    else:
        await client.send(data)
    results = await client.receive(len(requests), timeout=30)
    assert sorted(r.opaque for r in results) == sorted(r.opaque for r in requests)
    return {r.opaque: r for r in results}


def stored(data_path: str, topic: str, partition: int) -> list[tuple[int, bytes]]:
    with LogStore(data_path, read_only=True) as reader:
        offset, seen = 0, []
        while offset < reader.max_offset(topic, partition):
            batch = reader.read(topic, partition, offset)
            seen += [(m.offset, m.body) for m in batch.messages]
            offset = batch.next_offset
    return seen


@pytest.mark.parametrize("compiled,chunked", [(True, False), (True, True), (False, False)],
                         ids=["compiled", "compiled-chunked", "dispatch"])
async def test_pipelined_puts_mixed_with_refusals(tmp_path, nursery, compiled, chunked):
    broker = await start_broker(nursery, make_config(str(tmp_path / "data")))
    broker.compiled_puts = compiled
    client = await RawClient.connect(broker.port)
    try:
        # first puts create the partitions (always the general path)
        first = await answers_of(client, [good("test", 0, 1, b"first"), good("meta-test", 2, 2, b"first")])
        assert all(r.status == 200 for r in first.values())
        requests: list[Put] = []
        expected_bodies: dict[int, bytes] = {}
        for i, (refused, _status, _text) in enumerate(REFUSALS):
            body = b"good-%d" % i
            requests.append(good("test", 0, 1000 + i, body))
            expected_bodies[1000 + i] = body
            requests.append(good("meta-test", 2, 2000 + i, body))
            requests.append(refused)
        requests.append(good("meta-test", 3, 3000, b"new partition mid-stream"))
        requests.append(good("test", 0, 4000, b"last"))
        expected_bodies[4000] = b"last"
        answers = await answers_of(client, requests, chunked=chunked)
        for refused, status, text in REFUSALS:
            result = answers[refused.opaque]
            assert result.status == status, (refused, result)
            assert result.body == text if text is not None else result.body
        accepted = {o: r for o, r in answers.items() if r.status == 200}
        assert len(accepted) == 2 * len(REFUSALS) + 2
        for opaque, result in accepted.items():
            msg_id, partition, _offset = map(int, PUT_ANSWER.match(result.body).groups())
            assert msg_id > 0 and partition == {1: 0, 2: 2, 3: 3, 4: 0}[opaque // 1000]
        # test-0 holds "first" and then the good puts in request order, at the answered offsets
        log = stored(broker.config.system.data_path, "test", 0)
        assert [body for _, body in log] == [b"first"] + [expected_bodies[o] for o in sorted(expected_bodies)]
        answered = {int(PUT_ANSWER.match(answers[o].body).group(3)): expected_bodies[o] for o in expected_bodies}
        assert answered == dict(log[1:])
        assert broker.counters.put_failed == len(REFUSALS)
        assert broker.counters.cmd_put == 2 + len(requests)
        (conn,) = broker.connections
        if compiled:   # the good puts to open partitions took the compiled path
            assert conn.intake.fast_puts == 2 * len(REFUSALS) + 1
            if not chunked and type(conn.decoder).__module__ == "metaq_core._wire":
                # whole frames in the compiled decoder's buffer: read in place, none decoded twice
                assert conn.intake.in_place_puts == conn.intake.fast_puts
        else:
            assert conn.intake is None
        # stat=true: the realtime counters saw every accepted put of the topic
        stats = await answers_of(client, [Stats("test", 9)])
        line = re.search(rb"topic_realtime_put Count=(\d+)", stats[9].body)
        assert line and int(line.group(1)) == 1 + len(REFUSALS) + 1
    finally:
        await client.aclose()
        broker.shutdown()


async def test_partition_minus_one_spreads_over_the_topics_partitions(tmp_path, nursery):
    broker = await start_broker(nursery, make_config(str(tmp_path / "data")))
    client = await RawClient.connect(broker.port)
    try:
        for partition in range(4):  # open every partition, so that -1 stays on the compiled path
            assert (await client.call(good("meta-test", partition, partition, b"x"))).status == 200
        answers = await answers_of(client, [good("meta-test", -1, 100 + i, b"y") for i in range(400)])
        partitions = [int(PUT_ANSWER.match(r.body).group(2)) for r in answers.values()]
        assert all(r.status == 200 for r in answers.values())
        assert set(partitions) == {0, 1, 2, 3}
        assert min(partitions.count(p) for p in range(4)) > 50
    finally:
        await client.aclose()
        broker.shutdown()


def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_write_failure_answers_the_whole_batch_and_keeps_acknowledged_records(tmp_path):
    """A broker process whose files may not grow past 64 KiB: puts are acknowledged until a write
    fails (EFBIG), every put of the failing batch and after it is answered 500, none hangs, and
    after a restart without the limit every acknowledged record is there."""
    data_dir = str(tmp_path / "data")
    port = free_port()
    cmd = [sys.executable, "-m", "metaq_server.cli", "serve", "--port", str(port), "--data-dir", data_dir]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=_limit_file_size(64 * 1024))
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=10)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "broker did not start"
                time.sleep(0.05)
        bodies = {i: b"%05d" % i + b"z" * 1000 for i in range(200)}   # ~200 KiB in all
        decoder = FrameDecoder()
        with sock:
            sock.sendall(encode(good("demo", 0, -1, b"create")))
            results: dict[int, Result] = {}
            while -1 not in results:
                decoder.receive_data(sock.recv(1 << 16))
                results.update({e.opaque: e for e in decoder.events()})
            for first in range(0, 200, 10):   # groups of 10 pipelined puts (one batch each)
                sock.sendall(b"".join(encode(good("demo", 0, i, bodies[i])) for i in range(first, first + 10)))
                while len(results) < first + 11:
                    data = sock.recv(1 << 16)
                    assert data, "the broker closed the connection instead of answering"
                    decoder.receive_data(data)
                    results.update({e.opaque: e for e in decoder.events()})
        statuses = [results[i].status for i in range(200)]
        acked = [i for i in range(200) if statuses[i] == 200]
        assert 10 <= len(acked) < 70 and acked == list(range(len(acked))), "acknowledged puts are a prefix"
        assert set(statuses[len(acked):]) == {500}
        assert all(results[i].body.startswith(b"put message failed") for i in range(len(acked), 200))
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
        proc.stderr.close()
    log = stored(data_dir, "demo", 0)
    assert [body for _, body in log] == [b"create"] + [bodies[i] for i in acked]
    assert os.path.getsize(os.path.join(data_dir, "demo-0", "00000000000000000000.meta")) <= 64 * 1024


async def test_threshold_mode_puts_are_written_from_the_event_loop(tmp_path, nursery):
    """unflushThreshold > 0: batches are written at once (append_nowait) and answered without
    waiting for the writer thread; offsets, order and content are those of the general path."""
    broker = await start_broker(nursery, make_config(str(tmp_path / "data"), unflush_threshold=100,
                                                     unflush_interval=60_000))
    broker.compiled_puts = True  # also under METAQ_PURE_PYTHON=1, which turns it off by default
    client = await RawClient.connect(broker.port)
    try:
        assert (await client.call(good("test", 0, 0, b"first"))).status == 200
        bodies = {i: b"body-%d" % i * (i % 7 + 1) for i in range(1, 1001)}
        answers = await answers_of(client, [good("test", 0, i, body) for i, body in bodies.items()])
        assert all(r.status == 200 for r in answers.values())
        plog = broker.store.get_partition("test", 0)
        assert plog.statistics().appends < 1001, "pipelined puts were batched"
        (conn,) = broker.connections
        assert conn.intake.fast_puts == 1000
        plog.flush()
        log = stored(broker.config.system.data_path, "test", 0)
        assert [body for _, body in log] == [b"first"] + list(bodies.values())
        assert {int(PUT_ANSWER.match(answers[i].body).group(3)): body for i, body in bodies.items()} == dict(log[1:])
    finally:
        await client.aclose()
        broker.shutdown()

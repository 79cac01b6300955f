"""A real ``metaq-trio serve`` process killed with SIGKILL while clients put: after a restart every
acknowledged message is readable with its exact bytes (group commit acks after fdatasync)."""

from __future__ import annotations

import random
import signal
import socket
import zlib

import pytest

from metaq_core.wire import FrameDecoder, Get, Put, Result, Value, encode
from server_util import PUT_ANSWER, free_port, start_broker_process


def body_for(conn: int, seq: int) -> bytes:
    rnd = random.Random(conn * 1_000_003 + seq)
    return b"%d:%d:" % (conn, seq) + bytes(rnd.getrandbits(8) for _ in range(rnd.randrange(1, 2000)))


SERVER_INI = """\
[system]
brokerId=0
numPartitions=4
unflushThreshold=0
unflushInterval=10000
maxSegmentSize=256*1024
maxTransferSize=1024*1024

[zookeeper]
zk.zkEnable=false
zk.zkConnect=localhost:2181

[topic=meta-test]
"""


def put_until_killed(port: int, conn: int, acked: dict, stop_after: int, errors: list) -> None:
    """Pipeline puts (depth 8) on one connection; record every acknowledged (offset, body)."""
    decoder = FrameDecoder()
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        return
    inflight: dict[int, bytes] = {}
    seq = 0
    try:
        while seq < stop_after or inflight:
            while len(inflight) < 8 and seq < stop_after:
                body = body_for(conn, seq)
                sock.sendall(encode(Put("meta-test", conn % 4, 0, zlib.crc32(body) & 0x7FFFFFFF, None, seq, body)))
                inflight[seq] = body
                seq += 1
            data = sock.recv(65536)
            if not data:
                return
            decoder.receive_data(data)
            for event in decoder.events():
                if not (isinstance(event, Result) and event.status == 200):
                    errors.append(event)
                    return
                offset = int(PUT_ANSWER.match(event.body).group(3))
                acked[(conn % 4, offset)] = inflight.pop(event.opaque)
    except OSError:
        return
    finally:
        sock.close()


def read_partition(port: int, partition: int) -> dict[int, bytes]:
    from metaq_core import record
    out: dict[int, bytes] = {}
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        decoder = FrameDecoder()
        offset = 0
        while True:
            sock.sendall(encode(Get("meta-test", "check", partition, offset, 1 << 20, 1)))
            event = None
            while event is None:
                decoder.receive_data(sock.recv(1 << 20))
                event = decoder.next_event()
            if not isinstance(event, Value):
                assert event.status == 404, event
                return out
            records, end, status = record.decode(event.data, offset)
            assert records, "a get from a record boundary returns whole records"
            assert status in (record.CLEAN, record.PARTIAL)
            for off, _id, flag, data in records:
                out[off] = data
            offset += end


@pytest.mark.timeout(300)
def test_kill_9_loses_no_acknowledged_put(tmp_path):
    import threading
    import time

    data_dir = str(tmp_path / "data")
    config = tmp_path / "server.ini"
    config.write_text(SERVER_INI)
    port = free_port()
    acked: dict = {}
    errors: list = []
    rng = random.Random(7)
    for round_ in range(5):
        proc = start_broker_process(data_dir, port, "-c", str(config))
        threads = [threading.Thread(target=put_until_killed, args=(port, round_ * 100 + c, acked, 10_000, errors))
                   for c in range(8)]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.3, 1.2))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        for t in threads:
            t.join(30)
        proc.stdout.close()
    assert not errors, errors[:3]
    assert len(acked) > 100, "the clients should have been acknowledged many puts"
    assert {partition for partition, _ in acked} == {0, 1, 2, 3}
    proc = start_broker_process(data_dir, port, "-c", str(config))
    try:
        stored = {}
        for partition in range(4):
            for offset, data in read_partition(port, partition).items():
                stored[(partition, offset)] = data
        missing = [key for key, body in acked.items() if stored.get(key) != body]
        assert not missing, f"{len(missing)} acknowledged messages lost or changed, e.g. {missing[:3]}"
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
        proc.stdout.close()


def test_sighup_reloads_topic_sections_of_a_running_broker(tmp_path):
    import time

    from metaq_server.cli import request

    config = tmp_path / "server.ini"
    config.write_text(SERVER_INI)
    port = free_port()
    proc = start_broker_process(str(tmp_path / "data"), port, "-c", str(config))
    try:
        def put(topic: str) -> int:
            return request("127.0.0.1", port, encode(Put(topic, 0, 0, -1, None, 1, b"x")))[0]

        assert put("added-later") == 500
        config.write_text(SERVER_INI + "\n[topic=added-later]\nnumPartitions=2\n")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while put("added-later") != 200:
            assert time.monotonic() < deadline, "the reload was not applied"
            time.sleep(0.05)
        assert put("meta-test") == 200
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
        proc.stdout.close()

"""``metaq_client.blocking`` from plain threads: many threads sending at once, timeouts with the
Java defaults, callbacks in worker threads, iteration, the pull API, and a clean close that joins
the loop thread. The broker runs as a real process; the tests themselves are synchronous."""

from __future__ import annotations

import socket
import threading
import time

import pytest

from client_util import FAST, url_of
from metaq_client import (
    ClientClosedError, ConnectionClosedError, InvalidGroupError, LocalOffsetStorage, Message, RequestTimeoutError,
    blocking,
)
from metaq_client.blocking import FETCH_TIMEOUT, SEND_TIMEOUT
from server_util import free_port, start_broker_process


@pytest.fixture(scope="module")
def broker_url(tmp_path_factory):
    port = free_port()
    proc = start_broker_process(str(tmp_path_factory.mktemp("blocking") / "data"), port)
    yield url_of(port)
    proc.terminate()
    proc.wait(10)


def wait_until(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_java_default_timeouts():
    assert (SEND_TIMEOUT, FETCH_TIMEOUT) == (3.0, 10.0)


def test_many_threads_share_one_client_and_close_joins(broker_url, tmp_path):
    client = blocking.Client(broker_url, recover_path=str(tmp_path / "rec"))
    producer = client.producer()
    results, failures = [], []

    def worker(n):
        try:
            for i in range(25):
                results.append(producer.send("threads", b"%d-%d" % (n, i), attribute=str(n)))
        except Exception as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == [] and len(results) == 200 and all(r.success for r in results)
    assert client.statistics().connects == 1
    loop_thread = client._loop._thread
    client.close()
    assert not loop_thread.is_alive()
    client.close()  # idempotent
    with pytest.raises(ClientClosedError):
        producer.send("threads", b"late")


def test_timeouts_raise_request_timeout_error(tmp_path):
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        with blocking.Client(url_of(silent.getsockname()[1]), recover_path=str(tmp_path / "rec")) as client:
            with client.producer() as producer:
                started = time.monotonic()
                with pytest.raises(RequestTimeoutError, match="0.3 s"):
                    producer.send("t", b"x", timeout=0.3)
                assert 0.25 < time.monotonic() - started < 2
                with pytest.raises(TimeoutError):
                    client.stats(timeout=0.2)


def test_consumer_listener_in_threads_callbacks_and_pull(broker_url, tmp_path):
    with blocking.Client(broker_url, recover_path=str(tmp_path / "rec")) as client:
        producer = client.producer()
        sent_results, callback_threads = [], []

        def on_sent(result):
            callback_threads.append(threading.current_thread().name)
            sent_results.append(result)

        for i in range(10):
            producer.send_async(Message("blk", b"b%d" % i, "a"), on_sent)
        wait_until(lambda: len(sent_results) == 10)
        assert all(r.success for r in sent_results) and "metaq-client" not in callback_threads

        got, listener_threads = [], []

        def listener(message):
            listener_threads.append(threading.current_thread().name)
            # a blocking listener may use the blocking API itself
            if message.body == b"b0":
                assert producer.send("blk-echo", b"echo").success
            got.append(message)

        consumer = client.consumer("blk-group", FAST, offset_storage=LocalOffsetStorage(tmp_path / "o.json"))
        consumer.subscribe("blk", listener, partitions=[0])
        wait_until(lambda: len(got) == 10)
        assert sorted(m.body for m in got) == sorted(b"b%d" % i for i in range(10))
        assert "metaq-client" not in listener_threads
        consumer.commit_offsets()
        assert consumer.positions()[0].offset == 10 * 27  # records of 20 + 4 + 1 + 2 bytes
        batch = consumer.get("blk", 0, 0, 60)
        assert [m.attribute for m in batch.messages] == ["a", "a"] and batch.next_offset == 54
        consumer.close()
        with pytest.raises(InvalidGroupError):
            client.consumer("no.dots", offset_storage=LocalOffsetStorage(tmp_path / "o.json"))


def test_iteration_and_close_from_another_thread(broker_url, tmp_path):
    with blocking.Client(broker_url, recover_path=str(tmp_path / "rec")) as client:
        with client.producer() as producer:
            for i in range(3):
                assert producer.send("iter", b"i%d" % i).success
        consumer = client.consumer("iter-group", FAST, offset_storage=LocalOffsetStorage(tmp_path / "o.json"))
        consumer.subscribe("iter", partitions=[0])
        seen = []
        for message in consumer:
            seen.append(message.body)
            if len(seen) == 3:
                break
        assert seen == [b"i0", b"i1", b"i2"]
        closer = threading.Timer(0.3, consumer.close)
        closer.start()
        started = time.monotonic()
        # the loop left i2 unfinished: it is handed over again; closing from another thread ends the loop
        assert [m.body for m in consumer] == [b"i2"]
        assert 0.25 < time.monotonic() - started < 5
        closer.join()


def test_reject_handler_plain_callable_gets_the_blocking_consumer(broker_url, tmp_path):
    rejected = []
    with blocking.Client(broker_url, recover_path=str(tmp_path / "rec")) as client:
        with client.producer() as producer:
            assert producer.send("rej-blk", b"poison").success
        consumer = client.consumer("rej-blk-group", FAST, offset_storage=LocalOffsetStorage(tmp_path / "o.json"),
                                   reject_handler=lambda message, c: rejected.append((message.body, c)))
        consumer.subscribe("rej-blk", lambda m: 1 / 0, partitions=[0])
        wait_until(lambda: rejected)
        assert rejected == [(b"poison", consumer)]
        with pytest.raises(ValueError):
            consumer.set_reject_handler(None)


def test_closing_abandons_a_blocked_listener_and_rolls_its_message_back(broker_url, tmp_path):
    release = threading.Event()
    entered = []

    def blocked_on_m1(message):
        entered.append(message.body)
        if message.body == b"m1":
            release.wait(30)  # a blocking call that cannot be interrupted

    storage = LocalOffsetStorage(tmp_path / "o.json")
    try:
        with blocking.Client(broker_url, recover_path=str(tmp_path / "rec")) as client:
            with client.producer() as producer:
                results = [producer.send("abandon", b"m%d" % i) for i in range(3)]
            consumer = client.consumer("abandon-group", FAST, offset_storage=storage)
            consumer.subscribe("abandon", blocked_on_m1, partitions=[0])
            wait_until(lambda: b"m1" in entered)
            started = time.monotonic()
            consumer.close()  # does not wait for the listener thread
            assert time.monotonic() - started < 2
            assert consumer.positions()[0].offset == results[1].offset
            again = []
            second = client.consumer("abandon-group", FAST, offset_storage=storage)
            second.subscribe("abandon", again.append, partitions=[0])
            wait_until(lambda: len(again) == 2)
            assert [m.body for m in again] == [b"m1", b"m2"]
    finally:
        release.set()


def test_sends_report_ids_and_a_connection_lost_while_waiting(broker_url, tmp_path):
    with blocking.Client(broker_url, recover_path=str(tmp_path / "rec")) as client:
        with client.producer() as producer:
            message = Message("ids", b"one", "a=1")
            result = producer.send_message(message)
            assert result.success and message.id == result.message_id and result.partition.partition == 0
            with pytest.raises(TypeError):
                producer.send("ids", "not bytes")

    with socket.socket() as closing:  # reads one request, then closes the connection
        closing.bind(("127.0.0.1", 0))
        closing.listen(16)

        def serve():
            conn, _ = closing.accept()
            with conn:
                conn.recv(65536)

        server = threading.Thread(target=serve)
        server.start()
        with blocking.Client(url_of(closing.getsockname()[1]), recover_path=str(tmp_path / "rec2")) as client:
            with client.producer() as producer:
                started = time.monotonic()
                with pytest.raises(ConnectionClosedError, match="closed by the broker"):
                    producer.send("t", b"x", timeout=5)
                assert time.monotonic() - started < 2
        server.join()

"""Connections over real TCP: one per broker, pipelined requests matched by opaque, every
outstanding request failing at once when the connection closes, heartbeats on idle connections,
and reconnecting with back-off."""

from __future__ import annotations

import functools

import pytest
import trio

from client_util import CLIENT_INI, FAST_CONNECTIONS, url_of, wait_for
from metaq_client import BrokerUnavailableError, ConnectionClosedError, MetaqClient
from metaq_client.connection import ConnectionPool, ConnectionSettings
from metaq_core.wire import FrameDecoder, Get, Result, Value, Version, encode
from server_util import free_port, make_config, start_broker


@pytest.fixture
async def broker(tmp_path, nursery):
    broker = await start_broker(nursery, make_config(str(tmp_path / "data"), CLIENT_INI))
    yield broker
    broker.shutdown()


async def fake_broker(nursery: trio.Nursery, handler) -> int:
    """A TCP server running ``handler(stream, decoder)`` per connection; returns its port."""
    async def serve(stream):
        await handler(stream, FrameDecoder())
    listeners = await nursery.start(functools.partial(trio.serve_tcp, serve, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1]


async def read_requests(stream, decoder, count: int) -> list:
    events = []
    while len(events) < count:
        event = decoder.next_event()
        if event is not None:
            events.append(event)
            continue
        data = await stream.receive_some(65536)
        if not data:
            break
        decoder.receive_data(data)
    return events


async def test_many_tasks_share_one_pipelined_connection(broker):
    async with MetaqClient(url_of(broker.port)) as client:
        async with client.producer() as producer:
            results = {}

            async def send(i):
                results[i] = await producer.send("meta-test", b"n%d" % i)

            async with trio.open_nursery() as nursery:
                for i in range(300):
                    nursery.start_soon(send, i)
        assert all(r.success for r in results.values()) and len(results) == 300
        stats = client.statistics()
        assert stats.connects == 1 and stats.connections == 1 and stats.requests == 300
        assert len(broker.connections) == 1


async def test_answers_are_matched_by_opaque_not_by_order(nursery):
    async def reversed_answers(stream, decoder):
        requests = await read_requests(stream, decoder, 3)
        for event in reversed(requests):
            await stream.send_all(encode(Result(200, b"v%d" % event.offset, event.opaque)))
        await trio.sleep_forever()

    port = await fake_broker(nursery, reversed_answers)
    async with MetaqClient(url_of(port)) as client:
        answers = {}

        async def ask(offset):
            answers[offset] = await client.pool.request(url_of(port), Get("t", "g", 0, offset, 10, 0))

        async with trio.open_nursery() as inner:
            for offset in (1, 2, 3):
                inner.start_soon(ask, offset)
    assert {o: a.body for o, a in answers.items()} == {1: b"v1", 2: b"v2", 3: b"v3"}


async def closed_errors_of(client, port: int, count: int) -> list[ConnectionClosedError]:
    """Send ``count`` concurrent gets to the fake broker; the ConnectionClosedErrors they raised
    (any other outcome fails the test)."""
    errors = []

    async def ask(i):
        try:
            await client.pool.request(url_of(port), Get("t", "g", 0, i, 10, 0))
        except ConnectionClosedError as exc:
            errors.append(exc)

    with trio.fail_after(5):
        async with trio.open_nursery() as inner:
            for i in range(count):
                inner.start_soon(ask, i)
    return errors


async def test_outstanding_requests_fail_at_once_when_the_connection_closes(nursery):
    async def close_after_reading(stream, decoder):
        await read_requests(stream, decoder, 5)
        await stream.aclose()

    port = await fake_broker(nursery, close_after_reading)
    async with MetaqClient(url_of(port), connection_settings=FAST_CONNECTIONS) as client:
        errors = await closed_errors_of(client, port, 5)
        assert len(errors) == 5
        assert "closed by the broker" in str(errors[0]) and url_of(port) in str(errors[0])
        # the link reconnects in the background: the fake broker accepts again
        await wait_for(lambda: client.statistics().connects >= 2)


@pytest.mark.parametrize("reply", [b"hello there\r\n", b"result 200 -3 7\r\n"])
async def test_a_broker_that_sends_no_answer_frame_has_its_connection_closed(nursery, reply):
    async def misbehave(stream, decoder):
        await read_requests(stream, decoder, 2)
        await stream.send_all(reply)
        await trio.sleep_forever()

    port = await fake_broker(nursery, misbehave)
    async with MetaqClient(url_of(port), connection_settings=FAST_CONNECTIONS) as client:
        errors = await closed_errors_of(client, port, 2)
        assert len(errors) == 2
        assert "protocol error from the broker" in str(errors[0])


async def test_no_broker_fails_fast_with_a_clear_error():
    port = free_port()
    async with MetaqClient(url_of(port), connection_settings=FAST_CONNECTIONS) as client:
        with trio.fail_after(5):
            with pytest.raises(BrokerUnavailableError, match=f"no connection to the broker meta://127.0.0.1:{port}"):
                await client.pool.request(url_of(port), Version())
            with pytest.raises(BrokerUnavailableError, match="cannot connect"):
                await client.pool.request(url_of(port), Version())


async def test_heartbeats_keep_an_idle_connection_open(broker):
    broker.idle_timeout = 0.4
    settings = ConnectionSettings(idle_time=0.1, heartbeat_timeout=1.0)
    async with MetaqClient(url_of(broker.port), connection_settings=settings) as client:
        assert (await client.pool.request(url_of(broker.port), Version())).body == b"1.4.4"
        await trio.sleep(1.5)
        stats = client.statistics()
        assert stats.heartbeats >= 5 and stats.heartbeat_failures == 0
        assert stats.connects == 1 and stats.connections == 1


async def test_three_failed_heartbeats_close_the_connection(nursery):
    seen = []

    async def never_answers(stream, decoder):
        while True:
            data = await stream.receive_some(65536)
            if not data:
                return
            decoder.receive_data(data)
            seen.extend(decoder.events())

    port = await fake_broker(nursery, never_answers)
    settings = ConnectionSettings(idle_time=0.05, heartbeat_timeout=0.1, reconnect_delay=10)
    async with MetaqClient(url_of(port), connection_settings=settings) as client:
        with trio.fail_after(5), pytest.raises(ConnectionClosedError, match="3 heartbeats in a row failed"):
            await client.pool.request(url_of(port), Get("t", "g", 0, 0, 10, 0))
        assert client.statistics().heartbeat_failures == 3
        assert sum(isinstance(e, Version) for e in seen) == 3
        assert len({e.opaque for e in seen}) == len(seen)  # fresh opaques


async def test_reconnects_after_the_broker_comes_back(tmp_path, nursery):
    port = free_port()
    config = make_config(str(tmp_path / "data"), CLIENT_INI).with_system(server_port=port)
    broker = await start_broker(nursery, config)
    async with MetaqClient(url_of(port), connection_settings=FAST_CONNECTIONS) as client:
        assert isinstance(await client.pool.request(url_of(port), Version()), Result)
        broker.shutdown()
        await wait_for(lambda: client.statistics().connections == 0)
        with pytest.raises((BrokerUnavailableError, ConnectionClosedError)):
            await client.pool.request(url_of(port), Version())
        broker = await start_broker(nursery, config.with_system(data_path=str(tmp_path / "data2")))

        async def answered():
            while True:
                try:
                    return await client.pool.request(url_of(port), Get("test", "g", 0, 0, 100, 0))
                except BrokerUnavailableError:
                    await trio.sleep(0.05)

        with trio.fail_after(5):
            answer = await answered()
        assert isinstance(answer, (Result, Value)) and client.statistics().connects == 2
        broker.shutdown()


async def test_pool_used_alone(nursery, broker):
    pool = ConnectionPool(nursery)
    assert (await pool.request(url_of(broker.port), Version())).status == 200
    assert pool.statistics().connects == 1

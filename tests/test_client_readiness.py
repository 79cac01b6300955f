"""The client's edge-triggered read readiness (metaq_client/readiness.py) over real sockets."""

from __future__ import annotations

import socket

import pytest
import trio

from metaq_client.readiness import ReadReadiness

pytestmark = pytest.mark.skipif(not hasattr(__import__("select"), "epoll"), reason="epoll is Linux's")


@pytest.fixture
async def pair():
    """This run's readiness and a connected socket pair whose first end it watches (its first
    wait already taken)."""
    readiness = ReadReadiness.current()
    a, b = socket.socketpair()
    a.setblocking(False)
    try:
        readiness.register(a.fileno())
        await readiness.wait_readable(a.fileno())  # the first wait returns at once (data may be there)
        yield readiness, a, b
    finally:
        readiness.unregister(a.fileno())
        a.close()
        b.close()


async def test_a_parked_reader_wakes_on_new_data_and_only_then(pair):
    readiness, a, b = pair
    assert readiness is ReadReadiness.current()  # one per trio run
    woken = trio.Event()

    async def reader() -> None:
        await readiness.wait_readable(a.fileno())
        woken.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.sleep(0.05)
        assert not woken.is_set()  # nothing arrived: still parked
        b.send(b"x")
        with trio.fail_after(5):
            await woken.wait()
    assert a.recv(10) == b"x"


async def test_data_arriving_while_nobody_waits_is_remembered(pair):
    readiness, a, b = pair
    b.send(b"early")
    await trio.sleep(0.05)  # the watcher sees the edge while no reader is parked
    with trio.fail_after(5):
        await readiness.wait_readable(a.fileno())
    assert a.recv(10) == b"early"


async def test_a_cancelled_wait_leaves_nothing_parked_and_unregister_wakes_a_reader(pair):
    readiness, a, _b = pair
    with trio.move_on_after(0.05) as scope:
        await readiness.wait_readable(a.fileno())
    assert scope.cancelled_caught
    done = trio.Event()

    async def reader() -> None:
        await readiness.wait_readable(a.fileno())
        done.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        await trio.sleep(0.05)
        readiness.unregister(a.fileno())  # closing the connection: its reader must not hang
        with trio.fail_after(5):
            await done.wait()


@pytest.fixture
async def watched():
    """This run's readiness and a connected socket pair whose first end is registered with a
    callback that reads one byte per call and records it; the test sets ``state["stop_after"]``
    to make it return "not drained" after that many calls of one edge."""
    readiness = ReadReadiness.current()
    a, b = socket.socketpair()
    a.setblocking(False)
    state = {"got": bytearray(), "calls": 0, "stop_after": None, "changed": trio.Event()}

    def on_readable() -> bool:
        state["calls"] += 1
        state["changed"].set()
        try:
            state["got"] += a.recv(1)
        except BlockingIOError:
            return True
        return state["stop_after"] is None or state["calls"] % state["stop_after"] != 0

    try:
        readiness.register(a.fileno(), on_readable)
        yield readiness, a, b, state
    finally:
        readiness.unregister(a.fileno())
        a.close()
        b.close()


async def _until(state, predicate) -> None:
    with trio.fail_after(5):
        while not predicate():
            state["changed"] = trio.Event()
            await state["changed"].wait()


async def test_a_callback_reads_each_edge_and_is_called_again_until_it_drains(watched):
    readiness, _a, b, state = watched
    await trio.sleep(0.05)
    assert state["calls"] == 0  # nothing arrived: never called
    b.send(b"x")
    await _until(state, lambda: state["got"] == b"x")
    # it reads one byte per call and says "not drained" after each: called again without a new
    # edge until the three bytes are read and a call finds nothing
    state["stop_after"] = 1
    calls = state["calls"]
    b.send(b"abc")
    await _until(state, lambda: state["got"] == b"xabc")
    await _until(state, lambda: state["calls"] >= calls + 4)  # the 4th finds the socket empty
    await trio.sleep(0.05)
    assert state["calls"] == calls + 4


async def test_an_unregistered_callback_is_not_called_and_a_failing_one_is_dropped(watched, caplog):
    readiness, a, b, state = watched
    readiness.unregister(a.fileno())
    b.send(b"x")
    await trio.sleep(0.05)
    assert state["calls"] == 0

    def failing() -> bool:
        raise RuntimeError("broken reader")

    readiness.register(a.fileno(), failing)  # the byte already there is an edge at registration
    await trio.sleep(0.05)
    assert "a read callback failed" in caplog.text
    assert a.fileno() not in readiness._callbacks  # dropped; the watcher itself goes on
    c, d = socket.socketpair()
    c.setblocking(False)
    try:
        readiness.register(c.fileno())
        await readiness.wait_readable(c.fileno())
        d.send(b"y")
        with trio.fail_after(5):
            await readiness.wait_readable(c.fileno())
        assert c.recv(1) == b"y"
    finally:
        readiness.unregister(c.fileno())
        c.close()
        d.close()

"""The client's edge-triggered read readiness (metaq_client/readiness.py) over real sockets."""

from __future__ import annotations

import socket

import pytest
import trio

from metaq_client.readiness import ReadReadiness

pytestmark = pytest.mark.skipif(not hasattr(__import__("select"), "epoll"), reason="epoll is Linux's")


def recorder(sock: socket.socket) -> tuple[dict, object]:
    """A callback that records what it reads of ``sock``, and its state. It drains the socket at
    each call; once the test sets ``state["stop_after"]``, it reads one byte per call instead and
    returns "not drained" after every that many calls."""
    state = {"got": bytearray(), "calls": 0, "stop_after": None, "changed": trio.Event()}

    def on_readable() -> bool:
        state["calls"] += 1
        state["changed"].set()
        try:
            if state["stop_after"] is None:
                while True:
                    state["got"] += sock.recv(4096)
            state["got"] += sock.recv(1)
        except BlockingIOError:
            return True
        return state["calls"] % state["stop_after"] != 0

    return state, on_readable


@pytest.fixture
async def watched():
    """This run's readiness and a connected socket pair whose first end is registered with a
    ``recorder`` callback: (readiness, watched end, other end, the recorder's state)."""
    readiness = ReadReadiness.current()
    a, b = socket.socketpair()
    a.setblocking(False)
    state, on_readable = recorder(a)
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
    assert readiness is ReadReadiness.current()  # one per trio run
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


async def test_data_there_before_registering_is_an_edge_and_unregistered_callbacks_are_not_called(watched):
    readiness, a, b, state = watched
    readiness.unregister(a.fileno())
    b.send(b"early")
    await trio.sleep(0.05)
    assert state["calls"] == 0  # unregistered: not called
    again, on_readable = recorder(a)
    readiness.register(a.fileno(), on_readable)
    await _until(again, lambda: again["got"] == b"early")


async def test_a_failing_callback_is_dropped_and_the_watcher_goes_on(watched, caplog):
    readiness, a, b, state = watched

    def failing() -> bool:
        raise RuntimeError("broken reader")

    readiness.register(a.fileno(), failing)
    b.send(b"x")
    await trio.sleep(0.05)
    assert "a read callback failed" in caplog.text
    assert a.fileno() not in readiness._callbacks  # dropped
    c, d = socket.socketpair()
    c.setblocking(False)
    other, on_readable = recorder(c)
    try:
        readiness.register(c.fileno(), on_readable)
        d.send(b"y")
        await _until(other, lambda: other["got"] == b"y")
    finally:
        readiness.unregister(c.fileno())
        c.close()
        d.close()

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

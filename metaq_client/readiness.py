"""Read readiness of the client's sockets from one edge-triggered epoll set, for trio.

trio's ``wait_readable`` re-arms a one-shot epoll registration (an ``epoll_ctl`` and trio's
bookkeeping of it) every time a task waits; a connection that reads its answers as they come
waits once per read, so with many connections that is a system call and a few microseconds of
Python per read, plus a task switch. Here each socket is registered once, edge-triggered, with a
callback (``register(fd, on_readable)``) in a private epoll set that one system task of the trio
run watches: one trio wait covers every socket that became readable together, and the watcher
calls each one's callback in its own step, which reads and hands the bytes on.

Edge-triggered means a new event only when new data arrives (or was already there when the
socket registered): a callback must read until the socket is drained (a short read, or
``BlockingIOError``) and then return True. One that stops early, to let other work run, returns
False and is called again after one scheduling point. A callback must not raise (an exception is
logged and the socket dropped from the set).

Linux only: elsewhere ``ReadReadiness.current()`` returns None and callers read with trio's
``wait_readable``. It moves no bytes and knows nothing of frames.
"""

from __future__ import annotations

import logging
import select
from collections.abc import Callable

import trio
from trio.lowlevel import RunVar

_EPOLL = getattr(select, "epoll", None)
_FLAGS = (select.EPOLLIN | select.EPOLLET | select.EPOLLRDHUP) if _EPOLL is not None else 0
_CURRENT: RunVar[ReadReadiness | None] = RunVar("metaq_client_readiness")

log = logging.getLogger("metaq.client")


class ReadReadiness:
    """The epoll set of one trio run (see the module docstring)."""

    def __init__(self) -> None:
        self._epoll = _EPOLL()  # type: ignore[misc]
        self._callbacks: dict[int, Callable[[], bool]] = {}  # fd → what reads it

    @staticmethod
    def current() -> ReadReadiness | None:
        """This trio run's instance (created, with its watcher task, on first use); None
        without epoll."""
        try:
            return _CURRENT.get()
        except LookupError:
            readiness = ReadReadiness() if _EPOLL is not None else None
            _CURRENT.set(readiness)
            if readiness is not None:
                trio.lowlevel.spawn_system_task(readiness._watch, name="metaq_client readiness")
            return readiness

    def register(self, fd: int, on_readable: Callable[[], bool]) -> None:
        """Call ``on_readable()`` for every edge of ``fd`` (a socket this run reads from) until
        ``unregister``; data already there when it registers is an edge too."""
        self._callbacks[fd] = on_readable
        try:
            self._epoll.register(fd, _FLAGS)
        except FileExistsError:  # a number reused after a close that skipped unregister
            self._epoll.modify(fd, _FLAGS)

    def unregister(self, fd: int) -> None:
        """Stop watching ``fd`` (before it is closed): its callback is not called again."""
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass
        self._callbacks.pop(fd, None)

    async def _watch(self) -> None:
        epoll = self._epoll
        callbacks = self._callbacks
        again: dict[int, Callable[[], bool]] = {}  # callbacks that stopped before draining
        try:
            while True:
                if again:
                    await trio.lowlevel.checkpoint()
                else:
                    await trio.lowlevel.wait_readable(epoll.fileno())
                due, again = again, {}
                for fd, _events in epoll.poll(0):
                    callback = callbacks.get(fd)
                    if callback is not None:
                        due[fd] = callback
                for fd, callback in due.items():
                    if callbacks.get(fd) is not callback:
                        continue  # unregistered meanwhile (its number may be another socket's now)
                    try:
                        drained = callback()
                    except Exception:
                        log.exception("a read callback failed; its socket is no longer watched")
                        self.unregister(fd)
                        continue
                    if not drained:
                        again[fd] = callback
        finally:
            epoll.close()

"""Read readiness of the client's sockets from one edge-triggered epoll set, for trio.

trio's ``wait_readable`` re-arms a one-shot epoll registration (an ``epoll_ctl`` and trio's
bookkeeping of it) every time a task waits; a connection that reads its answers as they come
waits once per read, so with many connections that is a system call and a few microseconds of
Python per read. Here each socket is registered once, edge-triggered, in a private epoll set that
one system task of the trio run watches: one trio wait covers every socket that became readable
together, and the reader parked on each is rescheduled directly.

Edge-triggered means a new event only when new data arrives: a reader must wait only after a
read that drained the socket (a short read, or ``BlockingIOError``), never after one that filled
its buffer. An event that arrives while its reader is busy is remembered, so the next wait returns
at once (the read then may find nothing, which is harmless).

A socket can also be registered with a callback (``register(fd, on_readable)``): the watcher then
calls it, in its own step, for every edge, instead of waking a reader task — the callback reads
and hands the bytes on without a task switch per read. It returns True once it drained the
socket; False (it stopped early, to let other work run) has it called again after one
scheduling point. A callback must not raise (an exception is logged and the socket dropped
from the set).

Linux only: elsewhere ``ReadReadiness.current()`` returns None and callers use trio's
``wait_readable``. It moves no bytes and knows nothing of frames.
"""

from __future__ import annotations

import logging
import select
from collections.abc import Callable

import trio
from trio.lowlevel import Abort, RunVar, Task, current_task, reschedule, wait_task_rescheduled

_EPOLL = getattr(select, "epoll", None)
_FLAGS = (select.EPOLLIN | select.EPOLLET | select.EPOLLRDHUP) if _EPOLL is not None else 0
_CURRENT: RunVar[ReadReadiness | None] = RunVar("metaq_client_readiness")

log = logging.getLogger("metaq.client")


class ReadReadiness:
    """The epoll set of one trio run (see the module docstring)."""

    def __init__(self) -> None:
        self._epoll = _EPOLL()  # type: ignore[misc]
        self._parked: dict[int, Task] = {}   # fd → the reader waiting for it
        self._ready: set[int] = set()        # fds that became readable while nobody waited
        self._callbacks: dict[int, Callable[[], bool]] = {}  # fd → what reads it (register)

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

    def register(self, fd: int, on_readable: Callable[[], bool] | None = None) -> None:
        """Watch ``fd`` (a socket this run reads from) until ``unregister``: for a reader task
        that calls ``wait_readable``, or, with ``on_readable``, for that callback (see the module
        docstring; data already there when it registers is an edge too)."""
        if on_readable is not None:
            self._callbacks[fd] = on_readable
        try:
            self._epoll.register(fd, _FLAGS)
        except FileExistsError:  # a number reused after a close that skipped unregister
            self._epoll.modify(fd, _FLAGS)
        if on_readable is None:
            self._ready.add(fd)  # a first wait reads at once (data may already be there)

    def unregister(self, fd: int) -> None:
        """Stop watching ``fd`` (before it is closed); a reader parked on it is woken, its
        callback is not called again."""
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass
        self._ready.discard(fd)
        self._callbacks.pop(fd, None)
        task = self._parked.pop(fd, None)
        if task is not None:
            reschedule(task)

    async def wait_readable(self, fd: int) -> None:
        """Wait until ``fd`` has new data (a checkpoint, like trio's ``wait_readable``)."""
        ready = self._ready
        if fd in ready:
            ready.discard(fd)
            await trio.lowlevel.checkpoint()
            return
        parked = self._parked
        parked[fd] = current_task()

        def abort(_raise_cancel: object) -> Abort:
            parked.pop(fd, None)
            return Abort.SUCCEEDED

        await wait_task_rescheduled(abort)

    async def _watch(self) -> None:
        epoll = self._epoll
        parked, ready, callbacks = self._parked, self._ready, self._callbacks
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
                        continue
                    task = parked.pop(fd, None)
                    if task is None:
                        ready.add(fd)
                    else:
                        reschedule(task)
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

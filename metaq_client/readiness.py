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

Linux only: elsewhere ``ReadReadiness.current()`` returns None and callers use trio's
``wait_readable``. It moves no bytes and knows nothing of frames.
"""

from __future__ import annotations

import select

import trio
from trio.lowlevel import Abort, RunVar, Task, current_task, reschedule, wait_task_rescheduled

_EPOLL = getattr(select, "epoll", None)
_FLAGS = (select.EPOLLIN | select.EPOLLET | select.EPOLLRDHUP) if _EPOLL is not None else 0
_CURRENT: RunVar[ReadReadiness | None] = RunVar("metaq_client_readiness")


class ReadReadiness:
    """The epoll set of one trio run (see the module docstring)."""

    def __init__(self) -> None:
        self._epoll = _EPOLL()  # type: ignore[misc]
        self._parked: dict[int, Task] = {}   # fd → the reader waiting for it
        self._ready: set[int] = set()        # fds that became readable while nobody waited

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

    def register(self, fd: int) -> None:
        """Watch ``fd`` (a socket this run reads from) until ``unregister``."""
        try:
            self._epoll.register(fd, _FLAGS)
        except FileExistsError:  # a number reused after a close that skipped unregister
            self._epoll.modify(fd, _FLAGS)
        self._ready.add(fd)  # a first wait reads at once (data may already be there)

    def unregister(self, fd: int) -> None:
        """Stop watching ``fd`` (before it is closed); a reader parked on it is woken."""
        try:
            self._epoll.unregister(fd)
        except (OSError, ValueError):
            pass
        self._ready.discard(fd)
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
        parked, ready = self._parked, self._ready
        try:
            while True:
                await trio.lowlevel.wait_readable(epoll.fileno())
                for fd, _events in epoll.poll(0):
                    task = parked.pop(fd, None)
                    if task is None:
                        ready.add(fd)
                    else:
                        reschedule(task)
        finally:
            epoll.close()

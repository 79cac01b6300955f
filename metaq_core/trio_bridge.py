"""The trio side of the engine: append completions delivered to a trio event loop in one thread
crossing per writer round, and blocking calls run in worker threads.

Only the trio flavour of the store API imports this module; the engine itself never imports trio.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import TypeVar

import trio
from trio.lowlevel import (Abort, Task, cancel_shielded_checkpoint, checkpoint_if_cancelled,
                           current_task, reschedule, wait_task_rescheduled)

from metaq_core._segment import yield_to_writers  # for busy event loops: see there
from metaq_core.partition import Appended, AppendRequest, PartitionLog, Sink

T = TypeVar("T")

_SINK: trio.lowlevel.RunVar[TrioSink] = trio.lowlevel.RunVar("metaq_core_sink")
ABORT_SUCCEEDED = Abort.SUCCEEDED


def _wake(requests: list[AppendRequest]) -> None:
    """On the trio thread: resume each waiting task, or call ``set()`` on a callback waiter."""
    for request in requests:
        waiter = request.waiter
        if waiter is None:
            continue  # its task was cancelled meanwhile
        request.waiter = None
        if type(waiter) is Task:
            reschedule(waiter)
        else:
            waiter.set()


class TrioSink(Sink):
    """Delivers a writer round's results to one trio run.

    A request's waiter is either the trio Task that waits for it, or any object whose ``set()``
    is then called on the trio thread (the broker answers puts this way, with no task per put).

    Each round is queued and one ``run_sync_soon`` per round wakes an idle event loop. A busy
    loop would run that callback only after every task already runnable (the answers of a
    round then waited about a millisecond under load), so code that runs often on the trio
    thread — the broker's connection readers — also calls ``deliver_ready()`` to answer the
    rounds finished so far at once; whichever comes first delivers a round, exactly once."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._ready: collections.deque[list[AppendRequest]] = collections.deque()

    def deliver(self, requests: list[AppendRequest]) -> None:
        self._ready.append(requests)
        try:
            self._token.run_sync_soon(self.deliver_ready)
        except trio.RunFinishedError:
            pass

    def deliver_ready(self) -> None:
        """On the trio thread: wake the waiters of every round finished so far."""
        ready = self._ready
        while ready:
            _wake(ready.popleft())

    @staticmethod
    def current() -> TrioSink:
        try:
            return _SINK.get()
        except LookupError:
            sink = TrioSink(trio.lowlevel.current_trio_token())
            _SINK.set(sink)
            return sink


async def submit_async(plog: PartitionLog, items: list[tuple[bytes, int, int, int]]) -> list[Appended]:
    """Append to ``plog`` from trio and wait for the answer (durable, in group-commit mode).
    (``LogStore.append_async`` does the same inline.)

    Cancelling the wait does not withdraw the append: the records may still be written.
    """
    request = plog.submit(items, TrioSink.current(), current_task())

    def abort(_raise_cancel: object) -> Abort:
        request.waiter = None
        return Abort.SUCCEEDED

    await wait_task_rescheduled(abort)
    return request.outcome()


async def run_blocking(fn: Callable[..., T], *args: object) -> T:
    """Run a blocking engine call (file reads, opening, closing) in a worker thread."""
    return await trio.to_thread.run_sync(fn, *args)


__all__ = ["ABORT_SUCCEEDED", "TrioSink", "cancel_shielded_checkpoint", "checkpoint_if_cancelled",
           "current_task", "run_blocking", "submit_async",
           "wait_task_rescheduled", "yield_to_writers"]

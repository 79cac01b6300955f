"""The trio side of the engine: append completions delivered to a trio event loop in one thread
crossing per writer round, and blocking calls run in worker threads.

Only the trio flavour of the store API imports this module; the engine itself never imports trio.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import trio

from metaq_core.partition import AppendRequest, Sink

T = TypeVar("T")

_SINK: trio.lowlevel.RunVar[TrioSink] = trio.lowlevel.RunVar("metaq_core_sink")


def _wake(requests: list[AppendRequest]) -> None:
    for request in requests:
        request.waiter.set()


class TrioSink(Sink):
    """Delivers a writer round's results to one trio run with a single ``run_sync_soon``."""

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token

    def deliver(self, requests: list[AppendRequest]) -> None:
        try:
            self._token.run_sync_soon(_wake, requests)
        except trio.RunFinishedError:
            pass

    @staticmethod
    def current() -> TrioSink:
        try:
            return _SINK.get()
        except LookupError:
            sink = TrioSink(trio.lowlevel.current_trio_token())
            _SINK.set(sink)
            return sink


async def wait_request(request: AppendRequest) -> object:
    """Wait for an append submitted with ``TrioSink.current()`` and a ``trio.Event`` waiter.

    Cancelling the wait does not withdraw the append: the records may still be written.
    """
    await request.waiter.wait()
    return request.outcome()


async def run_blocking(fn: Callable[..., T], *args: object) -> T:
    """Run a blocking engine call (file reads, opening, closing) in a worker thread."""
    return await trio.to_thread.run_sync(fn, *args)


def new_waiter() -> trio.Event:
    return trio.Event()

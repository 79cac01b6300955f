"""The lifecycle shared by the client, producers and consumers: each is an async context manager
that owns a nursery for its background tasks (structured concurrency: no task outlives the
``async with`` that started it; shutdown is a cancel scope).

Subclasses say whether leaving cancels their tasks or waits for them, and what to do once they
are gone (``_after_exit``, shielded). This module knows nothing of MetaQ.
"""

from __future__ import annotations

import contextlib
from typing import Self

import trio

from metaq_client.errors import ClientClosedError


class NurseryOwner:
    _cancel_on_exit = True
    _nursery: trio.Nursery | None = None
    _entered = False

    async def __aenter__(self) -> Self:
        if self._entered:
            raise ClientClosedError(f"{type(self).__name__} can be entered only once")
        self._entered = True
        self._exit_stack = contextlib.AsyncExitStack()
        self._nursery = await self._exit_stack.enter_async_context(trio.open_nursery())
        try:
            await self._after_enter(self._nursery)
        except BaseException:
            self._nursery.cancel_scope.cancel()
            await self._exit_stack.aclose()
            self._nursery = None
            raise
        return self

    async def __aexit__(self, *exc_info) -> bool | None:
        try:
            if self._cancel_on_exit:
                self._nursery.cancel_scope.cancel()
            return await self._exit_stack.__aexit__(*exc_info)
        finally:
            self._nursery = None
            with trio.CancelScope(shield=True):
                await self._after_exit()

    async def _after_enter(self, nursery: trio.Nursery) -> None:
        """Start the background tasks."""

    async def _after_exit(self) -> None:
        """Clean up once every background task is gone (runs shielded from cancellation)."""

    def _open_nursery(self) -> trio.Nursery:
        if self._nursery is None:
            state = "closed" if self._entered else "not started"
            raise ClientClosedError(f"{type(self).__name__} is {state}: use it inside `async with`")
        return self._nursery

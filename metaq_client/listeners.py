"""How application code is called back: listeners, reject handlers and send callbacks may be plain
or async callables (``invoke``); and ``MessageQueue``, the listener behind ``async for message in
consumer``, which hands over one message at a time and learns whether the loop finished with it.

A message handed to an ``async for`` loop counts as consumed when the loop asks for the next one.
A loop left early (``break``, an exception) leaves its last message unconsumed: the next loop
rolls it back and it is delivered again. One loop at a time per consumer. This module does not
fetch, decode or commit anything.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from metaq_client.errors import ConsumptionInterrupted
from metaq_client.message import Message

Listener = Callable[[Message], Awaitable[None] | None]


async def invoke(fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn(*args)``; await the result when it is awaitable."""
    result = fn(*args)
    if inspect.isawaitable(result):
        result = await result
    return result


class _Delivery:
    __slots__ = ("message", "done", "consumed")

    def __init__(self, message: Message) -> None:
        self.message = message
        self.done = trio.Event()
        self.consumed = False

    def finish(self, consumed: bool) -> None:
        self.consumed = consumed
        self.done.set()


class MessageQueue:
    """The listener of subscriptions without one: messages go to ``async for`` loops."""

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel(0)
        self._held: _Delivery | None = None

    async def __call__(self, message: Message) -> None:
        delivery = _Delivery(message)
        await self._send.send(delivery)
        await delivery.done.wait()
        if not delivery.consumed:
            raise ConsumptionInterrupted("the async-for loop did not finish this message")

    def close(self) -> None:
        """No more messages: running loops end."""
        self._send.close()
        self._settle(False)

    def iterate(self) -> MessageStream:
        self._settle(False)
        return MessageStream(self)

    def _settle(self, consumed: bool) -> None:
        held, self._held = self._held, None
        if held is not None:
            held.finish(consumed)

    async def _next(self) -> Message:
        self._settle(True)
        try:
            delivery = await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None
        self._held = delivery
        return delivery.message


class MessageStream:
    """``async for message in consumer``."""

    def __init__(self, queue: MessageQueue) -> None:
        self._queue = queue

    def __aiter__(self) -> MessageStream:
        return self

    async def __anext__(self) -> Message:
        return await self._queue._next()

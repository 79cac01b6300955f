"""The client for ordinary blocking code: the same producer and consumer, driven by a trio loop
that runs in a thread of its own.

    from metaq_client import blocking
    with blocking.Client("meta://127.0.0.1:8123") as client:   # or blocking.Client(zk_connect="zk:2181")
        with client.producer() as producer:
            result = producer.send("orders", b"hello")        # timeout 3 s by default
        with client.consumer("billing", offset_storage=...) as consumer:
            consumer.subscribe("orders", print, partitions=[0])
            ...

Every call crosses into the loop with ``trio.from_thread`` and may come from any thread — except
sends to a directly connected broker, which are encoded in the calling thread and handed to the
connection through one batched ``run_sync_soon`` crossing, with no task per send. Calls
that wait take a timeout with the Java defaults (send 3 s, fetch and others 10 s) and raise
RequestTimeoutError when it expires. Callbacks you give (listeners, reject handlers, send
callbacks) run in worker threads when they are plain callables, with the blocking objects; async
callables run on the loop with the trio objects. Partition selectors run on the loop thread and
must not block. ``close()`` (or leaving the ``with``) closes consumers (committing their offsets),
producers, then the connections, and joins the thread. This module adds no behaviour of its own.
"""

from __future__ import annotations

import inspect
import logging
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Self

import attrs
import trio

from metaq_client import client as aclient
from metaq_client.connection import ConnectionSettings, ConnectionStatistics
from metaq_client.consumer import DEFAULT_MAX_SIZE, ConsumerConfig
from metaq_client.errors import ClientClosedError, RequestTimeoutError
from metaq_client.message import Message, MessageSet, Partition, SendResult
from metaq_client.offsets import OffsetStorage, TopicPartitionOffset
from metaq_client.recover import local_recover
from metaq_client.selectors import PartitionSelector
from metaq_client.source import PartitionSource
from metaq_client.zk_source import ZkConfig
from zkmeta.paths import DEFAULT_ROOT

log = logging.getLogger("metaq.client")

SEND_TIMEOUT = 3.0
FETCH_TIMEOUT = 10.0


def _threaded(fn: Callable[..., Any]) -> Callable[..., Any]:
    """An async callable running ``fn`` in a worker thread (abandoned if cancelled: a blocking
    call cannot be interrupted, so its result is simply not used)."""
    if inspect.iscoroutinefunction(fn):
        return fn

    async def run(*args: Any) -> Any:
        return await trio.to_thread.run_sync(fn, *args, abandon_on_cancel=True)

    return run


@attrs.define
class _Held:
    """An async context manager kept open by a task of the loop until it is closed."""

    obj: Any = None
    started: bool = False
    closing: trio.Event = attrs.Factory(trio.Event)
    finished: trio.Event = attrs.Factory(trio.Event)
    error: BaseException | None = None


_END = object()


class _Loop:
    """The thread that runs the trio loop hosting one ``MetaqClient``."""

    def __init__(self, make_client: Callable[[], aclient.MetaqClient]) -> None:
        self._make_client = make_client
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._held: list[_Held] = []
        self._closed = False
        self._calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = []
        self._calls_lock = threading.Lock()
        self._drain_scheduled = False
        self.client: aclient.MetaqClient | None = None
        self._thread = threading.Thread(target=self._thread_main, name="metaq-client", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def _thread_main(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:  # reported to the caller of __init__ or close()
            self._error = exc
        finally:
            self._ready.set()

    async def _main(self) -> None:
        self._stop = trio.Event()
        async with self._make_client() as client, trio.open_nursery() as nursery:
            self.client = client
            self._nursery = nursery
            self._token = trio.lowlevel.current_trio_token()
            self._ready.set()
            await self._stop.wait()
            for held in list(reversed(self._held)):  # consumers commit before connections go
                held.closing.set()
                await held.finished.wait()
                if held.error is not None:
                    log.error("closing %s failed: %r", type(held.obj).__name__, held.error)

    def run(self, afn: Callable[..., Any], *args: Any, timeout: float | None = None) -> Any:
        """Run ``afn(*args)`` on the loop and return its result (RequestTimeoutError after ``timeout``)."""
        async def call() -> Any:
            if timeout is None:
                return await afn(*args)
            with trio.move_on_after(timeout):
                return await afn(*args)
            raise RequestTimeoutError(f"no answer within {timeout} s")
        try:
            return trio.from_thread.run(call, trio_token=self._live_token())
        except (trio.RunFinishedError, trio.Cancelled):
            raise ClientClosedError("the client is closed") from None

    def run_sync(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return trio.from_thread.run_sync(fn, *args, trio_token=self._live_token())
        except trio.RunFinishedError:
            raise ClientClosedError("the client is closed") from None

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Have the loop call ``fn(*args)`` (synchronously, no task) soon; returns at once. Calls
        made while the loop has not got round to the previous ones share one crossing."""
        with self._calls_lock:
            self._calls.append((fn, args))
            if self._drain_scheduled:
                return
            self._drain_scheduled = True
        try:
            self._live_token().run_sync_soon(self._drain_calls)
        except (trio.RunFinishedError, ClientClosedError):
            with self._calls_lock:  # nobody will drain: the next call must fail the same way
                self._calls.clear()
                self._drain_scheduled = False
            raise ClientClosedError("the client is closed") from None

    def _drain_calls(self) -> None:
        while True:
            with self._calls_lock:
                calls, self._calls = self._calls, []
                if not calls:
                    self._drain_scheduled = False
                    return
            for fn, args in calls:
                try:
                    fn(*args)
                except Exception:  # an exception here would end the loop
                    log.exception("a call from another thread failed on the loop")

    def _live_token(self) -> trio.lowlevel.TrioToken:
        if self._closed:
            raise ClientClosedError("the client is closed")
        return self._token

    def hold(self, make: Callable[[], Any]) -> _Held:
        """Enter the async context manager ``make()`` on the loop and keep it open."""
        async def start() -> _Held:
            return await self._nursery.start(self._hold, make())
        return self.run(start)

    async def _hold(self, manager: Any, *, task_status: trio.TaskStatus) -> None:
        held = _Held()
        try:
            async with manager as obj:
                held.obj, held.started = obj, True
                self._held.append(held)
                task_status.started(held)
                await held.closing.wait()
        except Exception as exc:
            if not held.started:
                raise
            held.error = exc
        finally:
            held.finished.set()
            if held in self._held:
                self._held.remove(held)

    def release(self, held: _Held) -> None:
        async def close() -> None:
            held.closing.set()
            await held.finished.wait()
        if not held.finished.is_set() and not self._closed:
            self.run(close)
        if held.error is not None:
            error, held.error = held.error, None
            raise error

    def close(self) -> None:
        if not self._closed:
            try:
                self.run_sync(self._stop.set)
            except ClientClosedError:
                pass
            self._closed = True
            self._thread.join()
        if self._error is not None:
            error, self._error = self._error, None
            raise error


class _Closeable:
    _loop: _Loop
    _held: _Held

    def close(self) -> None:
        self._loop.release(self._held)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Reply:
    """The answer to one request made from a caller's thread: the loop resolves or fails it (at
    most once), the caller waits on its lock."""

    __slots__ = ("_lock", "answer", "error", "conn")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self.answer: Any = None
        self.error: BaseException | None = None
        self.conn: Any = None

    def resolve(self, answer: Any) -> None:
        self.answer = answer
        self._lock.release()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self._lock.release()

    def wait(self, timeout: float) -> bool:
        return self._lock.acquire(timeout=timeout)


class Producer(_Closeable):
    """The blocking face of ``metaq_client.Producer``.

    Connected directly to one broker URL (no topic map), a send is encoded in the caller's
    thread and handed to the connection without a task on the loop: one cheap crossing
    (``_Loop.call_soon``, shared by the sends of all threads that arrive together) and a lock
    to wait on. Otherwise it runs ``Producer.send_message`` on the loop."""

    def __init__(self, loop: _Loop, held: _Held) -> None:
        self._loop = loop
        self._held = held
        self._producer = held.obj

    def set_default_topic(self, topic: str | None) -> None:
        self._loop.run_sync(self._producer.set_default_topic, topic)

    def send(self, topic: str, body: bytes, *, attribute: str | None = None,
             partition_selector: PartitionSelector | None = None, timeout: float = SEND_TIMEOUT) -> SendResult:
        if self._producer.fixed_route is not None:
            return self._send_direct(topic, body, attribute, timeout)
        return self.send_message(Message(topic, body, attribute), partition_selector=partition_selector,
                                 timeout=timeout)

    def send_message(self, message: Message, *, partition_selector: PartitionSelector | None = None,
                     timeout: float = SEND_TIMEOUT) -> SendResult:
        if self._producer.fixed_route is not None:
            result = self._send_direct(message.topic, message.body, message.attribute, timeout)
            if result.success:
                message.id = result.message_id
            return result
        return self._loop.run(lambda: self._producer.send_message(message, partition_selector=partition_selector),
                              timeout=timeout)

    def _send_direct(self, topic: str, body: bytes, attribute: str | None, timeout: float) -> SendResult:
        producer = self._producer
        if producer._nursery is None:
            producer._open_nursery()  # ClientClosedError
        url, broker_id = producer.fixed_route
        frame, opaque = producer.put_frame(topic, body, attribute, -1)
        reply = _Reply()
        self._loop.call_soon(self._start, url, frame, opaque, reply, timeout)
        if not reply.wait(timeout):
            self._loop.call_soon(self._forget, reply, opaque)
            raise RequestTimeoutError(f"no answer within {timeout} s")
        if reply.error is not None:
            raise reply.error
        return producer.result_of(reply.answer, broker_id)

    def _start(self, url: str, frame: bytes, opaque: int, reply: _Reply, timeout: float) -> None:
        """On the loop: hand the frame to the live connection, or to a task that waits for one."""
        try:
            nursery = self._producer._open_nursery()
            conn = self._producer._pool.live_connection(url)
            if conn is None:
                nursery.start_soon(self._send_when_connected, url, frame, opaque, reply, timeout)
                return
            reply.conn = conn
            conn.submit(frame, opaque, reply)
        except Exception as exc:
            reply.fail(exc)

    async def _send_when_connected(self, url: str, frame: bytes, opaque: int, reply: _Reply,
                                   timeout: float) -> None:
        with trio.move_on_after(timeout):
            try:
                conn = await self._producer._pool.connection(url)
                answer = await conn.request_frame(frame, opaque)
            except Exception as exc:
                reply.fail(exc)
            else:
                reply.resolve(answer)

    @staticmethod
    def _forget(reply: _Reply, opaque: int) -> None:
        if reply.conn is not None:
            reply.conn.forget(opaque)

    def send_async(self, message: Message, on_sent: Callable[[SendResult], Any],
                   on_error: Callable[[BaseException], Any] | None = None, *,
                   partition_selector: PartitionSelector | None = None) -> None:
        """Start the send and return; the callbacks run in a worker thread when it is done."""
        self._loop.run_sync(lambda: self._producer.send_async(
            message, _threaded(on_sent), on_error and _threaded(on_error), partition_selector=partition_selector))


class Consumer(_Closeable):
    """The blocking face of ``metaq_client.Consumer``; iterate it for listener-less subscriptions."""

    def __init__(self, loop: _Loop, group: str, config: ConsumerConfig | None, offset_storage: OffsetStorage | None,
                 reject_handler: Callable[..., Any]) -> None:
        self._loop = loop
        self.group = group
        handler = self._handler(reject_handler)
        self._held = loop.hold(lambda: loop.client.consumer(group, config, offset_storage=offset_storage,
                                                             reject_handler=handler))
        self._consumer = self._held.obj

    def _handler(self, handler: Callable[..., Any]) -> Callable[..., Any]:
        if handler is None:
            raise ValueError("the reject consumption handler cannot be None")
        if inspect.iscoroutinefunction(handler):
            return handler
        threaded = _threaded(lambda message: handler(message, self))
        return lambda message, consumer: threaded(message)

    def set_reject_handler(self, handler: Callable[..., Any]) -> None:
        self._loop.run_sync(self._consumer.set_reject_handler, self._handler(handler))

    def subscribe(self, topic: str, listener: Callable[[Message], Any] | None = None, *,
                  partitions: Sequence[int] | None = None, max_size: int = DEFAULT_MAX_SIZE,
                  timeout: float = FETCH_TIMEOUT) -> None:
        listener = listener and _threaded(listener)
        self._loop.run(lambda: self._consumer.subscribe(topic, listener, partitions=partitions, max_size=max_size),
                       timeout=timeout)

    def get(self, topic: str, partition: int | Partition, offset: int, max_size: int = DEFAULT_MAX_SIZE, *,
            timeout: float = FETCH_TIMEOUT) -> MessageSet:
        return self._loop.run(self._consumer.get, topic, partition, offset, max_size, timeout=timeout)

    def commit_offsets(self, *, timeout: float = FETCH_TIMEOUT) -> None:
        self._loop.run(self._consumer.commit_offsets, timeout=timeout)

    def positions(self) -> list[TopicPartitionOffset]:
        return self._loop.run_sync(self._consumer.positions)

    def assignment(self) -> dict[str, list[Partition]]:
        return self._loop.run_sync(self._consumer.assignment)

    @property
    def consumer_id(self) -> str | None:
        return self._loop.run_sync(lambda: self._consumer.consumer_id)

    def __iter__(self) -> Iterator[Message]:
        """Messages of subscriptions without a listener; ends when the consumer closes."""
        stream = self._loop.run_sync(self._consumer.__aiter__)

        async def receive() -> Any:
            try:
                return await stream.__anext__()
            except StopAsyncIteration:
                return _END
        while True:
            try:
                message = self._loop.run(receive)
            except ClientClosedError:
                return
            if message is _END:
                return
            yield message


class Client:
    """The blocking face of ``metaq_client.MetaqClient``: a thread owns its trio loop."""

    def __init__(self, source: str | PartitionSource | None = None, *, zk_connect: str | None = None,
                 zk_root: str = DEFAULT_ROOT, zk_config: ZkConfig | None = None,
                 connection_settings: ConnectionSettings | None = None,
                 recover_path: str | os.PathLike[str] = "~/.meta_recover") -> None:
        chosen = aclient.make_source(source, zk_connect=zk_connect, zk_root=zk_root, zk_config=zk_config)
        self._loop = _Loop(lambda: aclient.MetaqClient(chosen, connection_settings=connection_settings,
                                                       recover_path=recover_path))

    def producer(self, *, partition_selector: PartitionSelector | None = None,
                 default_topic: str | None = None) -> Producer:
        loop = self._loop
        return Producer(loop, loop.hold(lambda: loop.client.producer(partition_selector=partition_selector,
                                                                      default_topic=default_topic)))

    def consumer(self, group: str, config: ConsumerConfig | None = None, *,
                 offset_storage: OffsetStorage | None = None,
                 reject_handler: Callable[..., Any] = local_recover) -> Consumer:
        return Consumer(self._loop, group, config, offset_storage, reject_handler)

    def stats(self, item: str = "", *, broker_id: int = 0, timeout: float = FETCH_TIMEOUT) -> list[str]:
        return self._loop.run(lambda: self._loop.client.stats(item, broker_id=broker_id), timeout=timeout)

    def statistics(self) -> ConnectionStatistics:
        return self._loop.run_sync(self._loop.client.statistics)

    def close(self) -> None:
        self._loop.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

"""Connections to brokers: one TCP connection per broker URL, every request of every task
pipelined on it and matched to its answer by opaque (protocol §2.5, §6.3).

``Connection`` writes encoded frames (``metaq_core.wire``, or the producer's ``codec``) straight to
the socket, coalescing the frames queued in one scheduler round into one write, and hands what it
reads to its ``codec.AnswerReader``, which wakes the waiting tasks (on Linux the reads are made
by the trio run's readiness watcher, ``readiness``, without a reader task per connection); when it
closes, every outstanding request fails at once with ConnectionClosedError. An idle connection
is kept alive with ``version`` heartbeats and closed after three failed ones (Java's gecko rules,
protocol §5.7). ``ConnectionPool`` keeps one connection per URL and re-establishes it with
back-off; while it is down, requests fail fast with BrokerUnavailableError. This module moves
frames: it never interprets a status code.
"""

from __future__ import annotations

import contextvars
import logging
import os
import urllib.parse
import weakref
from collections.abc import Callable
from typing import Any

import attrs
import trio

from metaq_client.codec import OPAQUE_MIN, OPAQUE_WRAP, next_opaque  # noqa: F401  (re-exported)
from metaq_client.codec import AnswerReader, OpaqueCounter, Outbox, PutAnswers, Waiter
from metaq_client.errors import BrokerUnavailableError, ConnectionClosedError
from metaq_client.readiness import ReadReadiness
from metaq_core.wire import Event, RemoteProtocolError, Result, Value, Version, encode

log = logging.getLogger("metaq.client")

DEFAULT_PORT = 8123
RECEIVE_SIZE = 256 * 1024
READS_PER_CALL = 4  # full buffers one readiness callback reads before it lets other work run

#: Java's ``OpaqueGenerator`` (``codec.OpaqueCounter``); ``next_opaque`` is the process's one instance
OpaqueGenerator = OpaqueCounter


def parse_url(url: str) -> tuple[str, int]:
    """``meta://host:port`` → (host, port); the port defaults to 8123."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "meta" or not parts.hostname:
        raise ValueError(f"not a broker URL (meta://host:port): {url!r}")
    return parts.hostname, parts.port or DEFAULT_PORT


@attrs.frozen(kw_only=True)
class ConnectionSettings:
    """Java's network defaults: heartbeat after 10 s idle, answered within 5 s, 3 failures close."""

    idle_time: float = 10.0
    heartbeat_timeout: float = 5.0
    max_heartbeat_failures: int = 3
    connect_timeout: float = 4.0
    reconnect_delay: float = 0.1
    max_reconnect_delay: float = 5.0


@attrs.frozen
class ConnectionStatistics:
    connections: int
    connects: int
    connect_failures: int
    requests: int
    heartbeats: int
    heartbeat_failures: int
    dropped_answers: int


@attrs.define
class _Counters:
    connects: int = 0
    connect_failures: int = 0
    requests: int = 0
    heartbeats: int = 0
    heartbeat_failures: int = 0
    dropped_answers: int = 0


_TASK_WAITER: contextvars.ContextVar[Any] = contextvars.ContextVar("metaq_client_waiter")


def _weak_abort(waiter: weakref.ref) -> Callable[[Any], Any]:
    def abort(raise_cancel: Any) -> Any:
        return waiter().abort(raise_cancel)  # alive: its task awaits it
    return abort


def new_task_waiter(task: trio.lowlevel.Task) -> Waiter:
    """A ``Waiter`` for the current task ``task``, kept in its context for its next requests (a
    task waits for one answer at a time; ``Outbox`` finds it there, and makes a new one when the
    context's is another task's: a child task inherits its parent's context)."""
    waiter = Waiter(task, trio.lowlevel.reschedule, trio.lowlevel.Abort.SUCCEEDED)
    # what ``wait_task_rescheduled(abort)`` yields to the run loop, made once; its abort reaches
    # the waiter through a weak reference (a bound method would make a cycle through ``trap``)
    trap = trio.lowlevel.wait_task_rescheduled(_weak_abort(weakref.ref(waiter)))
    waiter.trap = trap.send(None)
    trap.close()
    _TASK_WAITER.set(waiter)
    return waiter


class _Woken:
    """The outcome of waking the parked writer (any object with ``unwrap`` will do)."""

    __slots__ = ()

    @staticmethod
    def unwrap() -> None:
        return None


_WOKEN = _Woken()


class Connection:
    """One live TCP connection to a broker; ``run()`` serves it until it closes.

    Every outstanding request is an entry of ``_pending`` (opaque → an object with
    ``resolve(answer)`` and ``fail(error)``): a waiting task's ``Waiter`` (``request``) or a
    callback (``submit``). Frames queue in the ``outbox`` (``codec.Outbox``, which keeps that
    table and the queue, and calls the connection back to write) and leave in one write for all
    that queued:

    * from the task that queues a frame, at once, when as many frames have queued since the last
      read as that read delivered answers (in a closed loop, every task woken by the read has sent
      its next request) and the writer task is not in the middle of a write;
    * otherwise from the writer task, which runs after every task of the scheduler round and
      waits for the socket when its buffer is full.

    So requests made in the same scheduler round share a write, and a connection whose answers
    woke its senders writes as soon as they have all sent, without waiting for the other tasks of
    the round (other connections' senders) or a writer task step."""

    def __init__(self, url: str, stream: trio.abc.Stream, settings: ConnectionSettings,
                 counters: _Counters) -> None:
        self.url = url
        self._stream = stream
        self._settings = settings
        self._counters = counters
        self._pending: dict[int, Any] = {}
        self._reader_codec = AnswerReader(self._pending, Result, Value)
        self._buffer = bytearray(RECEIVE_SIZE)
        self._view = memoryview(self._buffer)
        socket = getattr(stream, "socket", None)  # a trio.SocketStream: its file descriptor
        self._fd: int | None = socket.fileno() if socket is not None else None
        # out: frames to write; awaited: frames still expected before a write from the queuing
        # task; writing: the writer task has data in flight (nobody else writes); writer_task:
        # the writer, parked with nothing to send
        self.outbox = Outbox(self._pending, self._fd is not None, self._write_now, self._wake_writer,
                             trio.lowlevel.current_task, _TASK_WAITER, new_task_waiter, self._closed_error)
        self._scope: trio.CancelScope | None = None
        self._last_io = trio.current_time()
        self.close_reason: str | None = None

    async def request(self, event: Event) -> Result | Value:
        """Send ``event`` with a fresh opaque (set on the event: callers pass a new one each time)
        and wait for its answer."""
        opaque = event.opaque = next_opaque()
        return await self.request_frame(encode(event), opaque)

    async def request_frame(self, frame: bytes, opaque: int, put: PutAnswers | None = None) -> Any:
        """Send the encoded ``frame``, whose opaque is ``opaque`` (from ``next_opaque``), and wait
        for its answer (with ``put``, a put's: a ``SendResult`` when it is a ``result 200``)."""
        return await self.enqueue(frame, opaque, put)

    def enqueue(self, frame: bytes, opaque: int, put: PutAnswers | None = None) -> Waiter:
        """Queue ``frame`` for the current task, which must then ``await`` the returned waiter
        right away for the answer (``request_frame`` in one call; the producer awaits
        ``outbox.put`` itself to save a coroutine per send). ConnectionClosedError when the
        connection is already closed."""
        return self.outbox.request(frame, opaque, put)

    def submit(self, frame: bytes, opaque: int, pending: Any) -> None:
        """Send ``frame`` without waiting: ``pending.resolve(answer)`` or ``pending.fail(error)`` is
        called on the trio thread when it is answered or the connection closes. Synchronous;
        ConnectionClosedError when the connection is already closed."""
        self.outbox.submit(frame, opaque, pending)

    @property
    def closed(self) -> bool:
        """The connection has ended (its outbox refuses new requests)."""
        return self.outbox.closed

    def _closed_error(self) -> ConnectionClosedError:
        return ConnectionClosedError(f"connection to {self.url} is closed: {self.close_reason}")

    @property
    def requests(self) -> int:
        """Requests sent on this connection."""
        return self.outbox.requests

    def forget(self, opaque: int) -> None:
        """Stop waiting for the answer to ``opaque`` (its ``submit`` caller gave up)."""
        self._pending.pop(opaque, None)

    def close(self, reason: str) -> None:
        if self.close_reason is None:
            self.close_reason = reason
        if self._scope is not None:
            self._scope.cancel()

    async def run(self) -> None:
        readiness = ReadReadiness.current() if self._fd is not None else None
        if readiness is not None:  # the watcher reads this socket: no reader task
            readiness.register(self._fd, self._on_readable)  # type: ignore[arg-type]
        try:
            async with trio.open_nursery() as nursery:
                self._scope = nursery.cancel_scope
                if self.close_reason is not None:
                    nursery.cancel_scope.cancel()
                if readiness is None:
                    nursery.start_soon(self._reader)
                nursery.start_soon(self._writer)
                nursery.start_soon(self._heartbeat)
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as lost:
            self.close(f"connection lost: {lost.exceptions[0]!r}")
        finally:
            self.outbox.closed = True
            self._counters.requests += self.outbox.requests
            reason = self.close_reason or "the client is closing"
            self.close_reason = reason
            waiting = list(self._pending.values())
            self._pending.clear()
            for pending in waiting:
                pending.fail(ConnectionClosedError(f"connection to {self.url} closed while the request "
                                                   f"waited for its answer: {reason}"))
            if readiness is not None:
                readiness.unregister(self._fd)  # type: ignore[arg-type]
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self._stream)

    def _on_readable(self) -> bool:
        """The readiness watcher's callback (edge-triggered): read what the socket holds, at most
        READS_PER_CALL full buffers, and hand it to the answer reader, which wakes the waiting
        tasks. True once the socket is drained (or the connection is closing)."""
        if self.close_reason is not None or self.closed:
            return True
        fd, buffer, view = self._fd, self._buffer, self._view
        try:
            for _ in range(READS_PER_CALL):
                try:
                    size = os.readv(fd, (buffer,))  # type: ignore[arg-type]
                except BlockingIOError:
                    return True
                if not self._take(view[:size]) or size < RECEIVE_SIZE:
                    return True
            return False
        except OSError as exc:
            self.close(f"connection lost: {exc!r}")
        except Exception as exc:
            log.exception("%s: reading answers failed", self.url)
            self.close(f"reading answers failed: {exc!r}")
        return True

    async def _reader(self) -> None:
        """Without the readiness watcher (a stream without a file descriptor, or no epoll): a
        task that reads."""
        fd = self._fd
        buffer, view = self._buffer, self._view
        while True:
            if fd is None:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            else:
                # Straight from the socket: one task step per receive (trio's receive_some takes
                # two, and a failed read with its exception whenever it finds nothing).
                await trio.lowlevel.wait_readable(fd)
                try:
                    data = view[:os.readv(fd, (buffer,))]
                except BlockingIOError:
                    continue
            if not self._take(data):
                return

    def _take(self, data: bytes | memoryview) -> bool:
        """Hand what was read to the answer reader (which wakes the waiting tasks); False when
        the connection is to close: the broker closed it, or sent something that is no answer."""
        if not data:
            self.close("closed by the broker")
            return False
        self._last_io = trio.current_time()
        reader = self._reader_codec
        try:
            self.outbox.awaited += reader.feed(data)
        except RemoteProtocolError as exc:
            self.close(f"protocol error from the broker: {exc}")
            return False
        if reader.dropped:
            self._counters.dropped_answers += reader.dropped  # nobody waits for them any more (§6.3)
            reader.dropped = 0
        return True

    def _write_now(self) -> None:
        """Write what has queued from the current task, without waiting: what the socket does not
        take at once (or an error) is left to the writer task."""
        outbox = self.outbox
        frames, outbox.out = outbox.out, []
        outbox.awaited = 0
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        try:
            sent = os.write(self._fd, data)  # type: ignore[arg-type]
        except OSError:  # full (BlockingIOError), or broken: the writer meets it again
            sent = 0
        if sent < len(data):
            outbox.out = [data[sent:]]
            if outbox.writer_task is not None:
                self._wake_writer()

    def _wake_writer(self) -> None:
        outbox = self.outbox
        task = outbox.writer_task
        if task is not None:
            outbox.writer_task = None
            trio.lowlevel.reschedule(task, _WOKEN)

    def _writer_abort(self, _raise_cancel: object) -> trio.lowlevel.Abort:
        self.outbox.writer_task = None
        return trio.lowlevel.Abort.SUCCEEDED

    async def _writer(self) -> None:
        fd = self._fd
        outbox = self.outbox
        while True:
            if not outbox.out:
                outbox.writer_task = trio.lowlevel.current_task()
                await trio.lowlevel.wait_task_rescheduled(self._writer_abort)
                continue
            frames, outbox.out = outbox.out, []
            outbox.awaited = 0  # a round ended with frames left: the next read sets the count again
            data = frames[0] if len(frames) == 1 else b"".join(frames)
            if fd is None:
                await self._stream.send_all(data)
            else:
                # Straight to the socket; wait only while its buffer is full (trio's send_all
                # takes an extra task step per send).
                outbox.writing = True
                left = memoryview(data)
                while left:
                    try:
                        left = left[os.write(fd, left):]
                    except BlockingIOError:
                        await trio.lowlevel.wait_writable(fd)
                outbox.writing = False
            self._last_io = trio.current_time()

    async def _heartbeat(self) -> None:
        settings = self._settings
        failures = 0
        while True:
            wait = self._last_io + settings.idle_time - trio.current_time()
            if wait > 0:
                await trio.sleep(wait)
                continue
            self._counters.heartbeats += 1
            answer = None
            with trio.move_on_after(settings.heartbeat_timeout):
                answer = await self.request(Version())
            if isinstance(answer, Result) and answer.status == 200:
                failures = 0
                continue
            failures += 1
            self._counters.heartbeat_failures += 1
            log.warning("%s: heartbeat %d failed (%s)", self.url, failures,
                        "no answer" if answer is None else f"status {answer.status}")
            if failures >= settings.max_heartbeat_failures:
                self.close(f"{failures} heartbeats in a row failed")
                return
            self._last_io = trio.current_time()


class _BrokerLink:
    """Keeps one connection to one URL up: connect, serve, reconnect with back-off."""

    def __init__(self, url: str, settings: ConnectionSettings, counters: _Counters) -> None:
        self.url = url
        self.host, self.port = parse_url(url)
        self._settings = settings
        self._counters = counters
        self.connection: Connection | None = None
        self._connecting = True
        self._attempt = trio.Event()
        self._last_error = "not connected yet"

    async def get(self) -> Connection:
        conn = self.connection
        if conn is None or conn.closed:
            if self._connecting:
                await self._attempt.wait()
            conn = self.connection
            if conn is None or conn.closed:
                why = f"the connection closed: {conn.close_reason}" if conn is not None else self._last_error
                raise BrokerUnavailableError(f"no connection to the broker {self.url}: {why}")
        return conn

    async def supervise(self) -> None:
        try:
            await self._keep_connected()
        finally:  # nobody may wait for an attempt that will never come
            self._connecting = False
            self._attempt.set()

    async def _keep_connected(self) -> None:
        settings = self._settings
        delay = settings.reconnect_delay
        while True:
            if self._attempt.is_set():
                self._attempt = trio.Event()
            self._connecting = True
            try:
                with trio.fail_after(settings.connect_timeout):
                    stream = await trio.open_tcp_stream(self.host, self.port)
            except (OSError, trio.TooSlowError) as exc:
                self.connection = None
                self._counters.connect_failures += 1
                self._last_error = f"cannot connect: {exc!r}" if str(exc) else "cannot connect: timed out"
                self._connecting = False
                self._attempt.set()
                log.debug("%s: %s; next attempt in %.1f s", self.url, self._last_error, delay)
                await trio.sleep(delay)
                delay = min(delay * 2, settings.max_reconnect_delay)
                continue
            self._counters.connects += 1
            conn = self.connection = Connection(self.url, stream, settings, self._counters)
            self._connecting = False
            self._attempt.set()
            delay = settings.reconnect_delay
            log.debug("%s: connected", self.url)
            await conn.run()
            log.warning("%s: the connection closed: %s; reconnecting", self.url, conn.close_reason)
            await trio.sleep(delay)


class ConnectionPool:
    """One connection per broker URL, shared by every producer and consumer of a client.

    Its tasks live in the nursery it is given; cancelling that nursery closes every connection."""

    def __init__(self, nursery: trio.Nursery, settings: ConnectionSettings | None = None) -> None:
        self._nursery = nursery
        self.settings = settings or ConnectionSettings()
        self._links: dict[str, _BrokerLink] = {}
        self._counters = _Counters()

    async def connection(self, url: str) -> Connection:
        link = self._links.get(url)
        if link is None:
            link = self._links[url] = _BrokerLink(url, self.settings, self._counters)
            self._nursery.start_soon(link.supervise, name=f"metaq connection {url}")
        return await link.get()

    def live_connection(self, url: str) -> Connection | None:
        """The open connection to ``url`` right now, or None (no waiting, no connecting)."""
        link = self._links.get(url)
        conn = link.connection if link is not None else None
        return conn if conn is not None and not conn.closed else None

    async def request(self, url: str, event: Event) -> Result | Value:
        return await (await self.connection(url)).request(event)

    def statistics(self) -> ConnectionStatistics:
        c = self._counters
        open_ = [link.connection for link in self._links.values()
                 if link.connection is not None and not link.connection.closed]
        requests = c.requests + sum(conn.requests for conn in open_)  # closed ones: counted in c at closing
        return ConnectionStatistics(len(open_), c.connects, c.connect_failures, requests, c.heartbeats,
                                    c.heartbeat_failures, c.dropped_answers)

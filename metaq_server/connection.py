"""One client connection: read frames, dispatch them, write responses (protocol §2.7, §2.8).

The reader decodes every complete frame of each receive and dispatches it at once, so puts reach
their partition's writer in request order; their answers come back from the writer thread in one
batch per group commit and are queued here. One writer task sends queued responses with one
``send_all`` per batch, and ``get`` data straight from the segment file with ``os.sendfile``.
This module moves bytes; what a command means is the broker's business.
"""

from __future__ import annotations

import collections
import errno
import logging
import os

import trio

from metaq_core.partition import Slice
from metaq_core.wire import FrameDecoder, Quit, RemoteProtocolError

log = logging.getLogger("metaq.server")

IDLE_TIMEOUT = 300.0
MAX_INFLIGHT = 8192
RECEIVE_SIZE = 256 * 1024


class Connection:
    """State of one TCP connection. ``broker.dispatch(conn, event)`` handles each frame (and
    returns an awaitable when the connection must wait before reading the next one)."""

    def __init__(self, broker, stream: trio.SocketStream, *, max_body: int,
                 idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.broker = broker
        self.stream = stream
        try:
            host, port = stream.socket.getpeername()[:2]
            self.peer = f"{host}:{port}"
        except OSError:
            self.peer = "?"
        self.decoder = FrameDecoder(max_body=max_body)
        self.intake = broker.put_intake(self)
        self._engine_turn = broker.engine_turn
        self.idle_timeout = idle_timeout
        self.inflight = 0
        self._out: collections.deque[bytes | Slice] = collections.deque()
        self._wake_writer = trio.Event()
        self._progress = trio.Event()
        self._reader_scope: trio.CancelScope | None = None
        self._last_io = trio.current_time()
        self._fd = stream.socket.fileno()
        self._sending = False     # the writer task is in the middle of a send
        self._in_batch = False    # the reader is handling the frames of one receive
        self.closed = False

    # ----------------------------------------------------------------- responses (trio thread)

    def send(self, data: bytes) -> None:
        """Queue response bytes (any order relative to other responses is allowed, §2.7).
        While the reader handles a receive, the answers it queues are written when it is done
        with it (``_end_batch``), without waking the writer task."""
        self._out.append(data)
        if not self._in_batch:
            self._wake_writer.set()

    def send_slice(self, header: bytes, piece: Slice) -> None:
        self._out.append(header)
        self._out.append(piece)
        self._wake_writer.set()

    def begin(self) -> None:
        """A request whose answer will come later (a put waiting for its group commit)."""
        self.inflight += 1

    def begin_many(self, count: int) -> None:
        self.inflight += count

    def finish_many(self, count: int, data: bytes) -> None:
        """``count`` requests begun earlier are answered by ``data`` (called from the writer
        thread's delivery, once per group commit): written at once when nothing else is queued
        or being sent, so the writer task need not wake; what the socket does not take is queued."""
        self.inflight -= count
        self._progress.set()
        if not self._out and not self._sending and not self.closed:
            data = self._write_now(data)
            if not data:
                return
        self.send(data)

    def _write_now(self, data: bytes) -> bytes:
        """Write what the socket takes without waiting; returns the rest (for the writer task,
        which also meets any error and closes the connection)."""
        try:
            sent = os.write(self._fd, data)
        except OSError:  # full (BlockingIOError) or broken
            return data
        self._last_io = trio.current_time()
        return data[sent:]

    # ---------------------------------------------------------------------------- the tasks

    async def run(self) -> None:
        log.debug("connection from %s", self.peer)
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._writer)
                try:
                    await self._read_loop()
                    await self._drain()
                finally:
                    nursery.cancel_scope.cancel()
        except* (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as lost:
            log.debug("%s: connection lost: %s", self.peer, lost.exceptions[0])
        finally:
            self.closed = True
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(self.stream)
            log.debug("connection from %s closed", self.peer)

    def stop_reading(self) -> None:
        """Graceful shutdown: read no further requests; answer those already read."""
        if self._reader_scope is not None:
            self._reader_scope.cancel()

    async def _read_loop(self) -> None:
        with trio.CancelScope() as self._reader_scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._idle_watch, nursery.cancel_scope)
                await self._receive_frames()
                nursery.cancel_scope.cancel()

    async def _idle_watch(self, scope: trio.CancelScope) -> None:
        """Close the connection after ``idle_timeout`` s without any I/O (§2.8); one timer per
        connection instead of a cancel scope around every receive."""
        while True:
            idle = trio.current_time() - self._last_io
            if idle >= self.idle_timeout:
                log.info("%s: idle for %.0f s, closing", self.peer, self.idle_timeout)
                scope.cancel()
                return
            await trio.sleep(self.idle_timeout - idle)

    async def _receive_frames(self) -> None:
        intake = self.intake
        fd = self._fd
        buffer = bytearray(RECEIVE_SIZE)
        view = memoryview(buffer)
        ready = False   # the last read filled the buffer: more may be waiting already
        while True:
            while self.inflight >= MAX_INFLIGHT:  # the client does not read its answers
                self._progress = trio.Event()
                await self._progress.wait()
            # Read straight from the socket: one task step per receive instead of trio's two
            # (its receive_some yields after every successful read). After a short read the
            # socket was drained, so wait for readiness at once rather than try a read that
            # would find nothing; after a full one read again, yielding first so that a
            # flooding client cannot starve the others.
            if ready:
                await trio.lowlevel.checkpoint()
            else:
                await trio.lowlevel.wait_readable(fd)
            try:
                size = os.readv(fd, (buffer,))
            except BlockingIOError:
                ready = False
                continue
            ready = size == RECEIVE_SIZE
            if not size:
                return
            self._last_io = trio.current_time()
            self.decoder.receive_data(view[:size])
            self._in_batch = True
            try:
                while True:
                    if intake is not None:  # plain puts are batched there; the rest comes here
                        event = intake.take(self.decoder)
                    else:
                        event = self.decoder.next_event()
                    if event is None:
                        break
                    if type(event) is Quit:
                        return
                    pending = self.broker.dispatch(self, event)
                    if pending is not None:
                        self._end_batch()
                        await pending
                        self._in_batch = True
            except RemoteProtocolError as exc:
                log.info("%s: protocol error, closing: %s", self.peer, exc)
                return
            finally:
                self._end_batch()
            self._engine_turn()   # writers waiting for the GIL, then finished group commits

    def _end_batch(self) -> None:
        """Write the answers queued while handling a receive in one ``write`` if the writer task
        is idle; leave what the socket does not take (or a ``get``'s file data) to the task."""
        self._in_batch = False
        out = self._out
        if not out:
            return
        if not self._sending and type(out[0]) is bytes:
            chunks = []
            while out and type(out[0]) is bytes:
                chunks.append(out.popleft())
            rest = self._write_now(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            if rest:
                out.appendleft(rest)
        if out:
            self._wake_writer.set()

    async def _drain(self) -> None:
        """Wait until every request read so far is answered and sent (quit, §2.7)."""
        while self.inflight or self._out:
            self._progress = trio.Event()
            if not self.inflight and self._out:
                self._wake_writer.set()
            await self._progress.wait()

    async def _writer(self) -> None:
        out = self._out
        while True:
            if not out:
                self._wake_writer = trio.Event()
                self._progress.set()
                await self._wake_writer.wait()
                continue
            chunks = []
            while out and type(out[0]) is bytes:
                chunks.append(out.popleft())
            self._sending = True
            if chunks:
                await self._send_bytes(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            if out and type(out[0]) is Slice:
                await self._send_file(out.popleft())
            self._sending = False
            self._last_io = trio.current_time()

    async def _send_bytes(self, data: bytes) -> None:
        """Write to the socket directly; wait only when its buffer is full (trio's send_all
        would take an extra task step per send)."""
        fd = self._fd
        view = memoryview(data)
        while view:
            try:
                sent = os.write(fd, view)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(fd)
                continue
            view = view[sent:]

    async def _send_file(self, piece: Slice) -> None:
        sock = self.stream.socket
        offset, left = piece.position, piece.length
        try:
            fd = piece.fileno()
        except OSError:
            fd = -1
        while left > 0:
            try:
                sent = os.sendfile(sock.fileno(), fd, offset, left)
            except BlockingIOError:
                await trio.lowlevel.wait_writable(sock)
                continue
            except OSError as exc:
                if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EBADF):
                    # No sendfile for this pair: read and send instead.
                    await self.stream.send_all(piece.segment.read(offset, left))
                    return
                raise
            if sent == 0:  # the file is shorter than the slice: it was truncated under us
                raise trio.BrokenResourceError("segment file shorter than the slice")
            offset += sent
            left -= sent

"""The client's per-message codec: ``put_frame`` builds a whole ``put`` frame (7-token 1.4.4 form,
with its checksum), ``put_answer`` parses the body of a put's ``result 200`` answer and
``put_result`` turns it into the ``SendResult`` at once. ``Waiter`` is the waiting side of one
request: what a task awaits until the connection hands it the answer (reused for the task's
next request); ``AnswerReader`` parses the answers a connection reads and hands each to the
request waiting for it (``PutAnswers``: a put's ``SendResult`` made right there). ``Outbox`` is
a connection's outgoing side: it registers requests, queues their frames and says when to write
(it calls the connection back; it never writes itself); ``next_opaque`` is the process's one
opaque counter (``OpaqueCounter``, Java's ``OpaqueGenerator``).

Compiled (``metaq_core._client_codec``) unless ``METAQ_PURE_PYTHON=1`` or the extension is not
built; the pure functions here are its twin, byte for byte what ``metaq_core.frames.encode``
produces for the same ``Put``. ``topic_token`` checks a topic name once and gives the bytes that
go into the header. Sans-I/O: bytes in, bytes or numbers out.
"""

from __future__ import annotations

import itertools
import os
import struct
import zlib
from typing import Any

from metaq_core.frames import RemoteProtocolError, Result, Value
from metaq_core.naming import validate_topic
from metaq_core.wire import FrameDecoder

_INT32 = struct.Struct(">i")


def topic_token(topic: str) -> bytes:
    """The header token of a valid topic name (InvalidTopicError otherwise)."""
    return validate_topic(topic).encode("utf-8")


def put_frame_py(topic: bytes, partition: int, body: bytes, attribute: bytes | None, opaque: int) -> bytes:
    """``put <topic> <partition> <length> <flag> <checksum> <opaque>\\r\\n<data>``; ``topic`` is a
    checked token, ``attribute`` UTF-8 bytes or None (flag 0)."""
    if attribute is None:
        flag, data = 0, body
    else:
        flag, data = 1, _INT32.pack(len(attribute)) + attribute + body
    for value in (partition, opaque):
        if not -(2**31) <= value < 2**31:
            raise OverflowError(f"{value} is outside the int32 range")
    return b"put %s %d %d %d %d %d\r\n" % (topic, partition, len(data), flag, zlib.crc32(data) & 0x7FFFFFFF,
                                           opaque) + data


def put_answer_py(body: bytes | None) -> tuple[int, int, int]:
    """``(message id, partition, offset)`` from ``<id> <partition> <offset>``; ValueError otherwise."""
    parts = (body or b"").split(b" ")
    if len(parts) != 3 or not all(p.lstrip(b"-").isdigit() and p.count(b"-") <= 1 and not p.endswith(b"-")
                                  for p in parts):
        raise ValueError(f"not the answer to a put: {body!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def put_result_py(body: bytes | None, broker_id: int, partitions: dict[int, Any], result_type: type,
                  partition_type: type, max_cached: int) -> Any:
    """``put_answer`` straight into ``result_type(True, id, partition, offset, None)`` (a tuple
    subclass), the partition ``partition_type(broker_id, number)`` taken from ``partitions``
    (number → partition of that broker; filled while it has fewer than ``max_cached``)."""
    msg_id, number, offset = put_answer_py(body)
    partition = partitions.get(number)
    if partition is None:
        partition = partition_type(broker_id, number)
        if len(partitions) < max_cached:
            partitions[number] = partition
    return tuple.__new__(result_type, (True, msg_id, partition, offset, None))


class PutAnswersPy:
    """How the ``result 200`` of one producer's put to one broker becomes its ``SendResult`` (the
    arguments of ``put_result``). A ``Waiter`` whose ``put`` is one gets the ``SendResult`` from
    ``AnswerReader`` instead of the ``Result``."""

    __slots__ = ("broker_id", "partitions", "result_type", "partition_type", "max_cached")

    def __init__(self, broker_id: int, partitions: dict[int, Any], result_type: type, partition_type: type,
                 max_cached: int) -> None:
        self.broker_id = broker_id
        self.partitions = partitions
        self.result_type = result_type
        self.partition_type = partition_type
        self.max_cached = max_cached

    def result(self, body: bytes | None) -> Any:
        """The ``SendResult`` of the body of a ``result 200``, or None when it is not one."""
        if body is None:
            return None
        try:
            return put_result_py(body, self.broker_id, self.partitions, self.result_type, self.partition_type,
                                 self.max_cached)
        except ValueError:
            return None


class AnswerReaderPy:
    """Answers from a broker, matched to the requests waiting for them (protocol §6.3).

    ``feed(data)`` takes what the connection read, parses every complete ``result`` and
    ``value`` frame in it (and in what an earlier call left incomplete), pops the frame's opaque
    from ``pending`` and hands the answer to that entry's ``resolve``: a ``Result`` or ``Value``
    (``result_type(status, body or None, opaque)``, ``value_type(data, opaque)``), or, for a
    ``Waiter`` whose ``put`` is set, the ``SendResult`` of a ``result 200``. Returns how many
    answers it handed over; ``dropped`` counts those nobody waited for (the caller may reset
    it). A frame that is not an answer raises RemoteProtocolError. Sans-I/O."""

    def __init__(self, pending: dict[int, Any], result_type: type, value_type: type, *,
                 max_header: int | None = None) -> None:
        self._pending = pending
        self._result_type = result_type
        self._value_type = value_type
        self._decoder = FrameDecoder() if max_header is None else FrameDecoder(max_header=max_header)
        self.dropped = 0

    @property
    def buffered(self) -> int:
        """Bytes of an incomplete frame kept for the next ``feed``."""
        return self._decoder.buffered

    def feed(self, data: bytes) -> int:
        decoder = self._decoder
        pop = self._pending.pop
        decoder.receive_data(data)
        delivered = 0
        while True:
            event = decoder.next_event()
            if event is None:
                return delivered
            kind = type(event)
            if kind is not Result and kind is not Value:
                raise RemoteProtocolError(f"not an answer: {type(event).__name__}")
            entry = pop(event.opaque, None)
            if entry is None:
                self.dropped += 1
                continue
            delivered += 1
            if kind is Result:
                answer = None
                if event.status == 200 and type(entry) is WaiterPy and entry.put is not None:
                    answer = entry.put.result(event.body)
                if answer is None:
                    answer = event if self._result_type is Result else self._result_type(
                        event.status, event.body, event.opaque)
            else:
                answer = event if self._value_type is Value else self._value_type(event.data, event.opaque)
            entry.resolve(answer)


class WaiterPy:
    """A task waiting for the answer to its request, and the awaitable it waits on.

    The connection keeps it in its table of outstanding requests (``pending[opaque]``) and calls
    ``resolve(answer)`` or ``fail(error)``, which hand the waiter itself to ``wake(task, self)``
    (trio's ``reschedule``) as the task's outcome. ``await waiter`` yields ``trap`` to the event
    loop once (trio: ``WaitTaskRescheduled(waiter.abort)``) and returns the answer or raises the
    error. ``abort`` (the wait was cancelled) forgets the request and returns ``aborted`` (trio:
    ``Abort.SUCCEEDED``). A task reuses its waiter for its next request. It holds its task only
    while a request is outstanding (see the compiled ``Waiter``: no reference cycle through the
    task's context); ``owner`` is the ``id`` of the task it belongs to."""

    __slots__ = ("task", "owner", "wake", "aborted", "trap", "answer", "error", "pending", "opaque", "put",
                 "__weakref__")

    def __init__(self, task: Any, wake: Any, aborted: Any) -> None:
        self.task = task
        self.owner = id(task)
        self.wake = wake
        self.aborted = aborted
        self.trap: Any = None
        self.answer: Any = None
        self.error: BaseException | None = None
        self.pending: dict[int, Any] | None = None
        self.opaque: int | None = None
        self.put: PutAnswersPy | None = None

    def resolve(self, answer: Any) -> None:
        """The answer came: wake the task (``await`` returns ``answer``)."""
        self.answer = answer
        task, self.task = self.task, None
        self.wake(task, self)

    def fail(self, error: BaseException) -> None:
        """The request failed: wake the task (``await`` raises ``error``)."""
        self.answer = None
        self.error = error
        task, self.task = self.task, None
        self.wake(task, self)

    def unwrap(self) -> Any:
        """The outcome protocol: the answer, or raise the error."""
        if self.answer is None:
            raise self.error  # type: ignore[misc]
        return self.answer

    def abort(self, _raise_cancel: Any) -> Any:
        """The wait was cancelled: an answer arriving later finds nobody (``pending`` forgets it)."""
        if self.pending is not None:
            self.pending.pop(self.opaque, None)
        self.task = None
        return self.aborted

    def __await__(self) -> Any:
        return (yield self.trap).unwrap()


OPAQUE_MIN = -(2**31)
OPAQUE_WRAP = 2**31 - 1 - 10
_OPAQUE_PERIOD = OPAQUE_WRAP - OPAQUE_MIN


class OpaqueCounterPy:
    """Java's ``OpaqueGenerator``: starts at -2147483648, +1 per request, and wraps back to
    -2147483648 when it reaches 2147483637. Thread-safe without a lock: one counter
    (``itertools.count``, atomic under the GIL)."""

    def __init__(self, start: int = OPAQUE_MIN) -> None:
        self._count = itertools.count(start - OPAQUE_MIN if OPAQUE_MIN <= start < OPAQUE_WRAP else 0)

    def __call__(self) -> int:
        return OPAQUE_MIN + next(self._count) % _OPAQUE_PERIOD


class OutboxPy:
    """A connection's outgoing side, without I/O: the frames still to write (``out``), the
    outstanding requests (``pending``: opaque → ``Waiter`` or callback object), and when the task
    that queues a frame writes at once: when as many frames have queued since the last read as
    that read delivered answers (``awaited`` reaches 0), no write is in flight (``writing``) and
    the connection can write from any task (``direct``). Then it calls ``write_now()``;
    otherwise it wakes the parked writer task (``writer_task`` set: ``wake_writer()``).

    ``request`` registers the current task's ``Waiter`` (found in the ``waiters`` context
    variable, made by ``new_waiter(task)`` when the task has none yet) and returns it for the
    task to await; ``put`` does the same for a put frame it builds itself with a fresh opaque;
    ``submit`` registers a callback object. Once ``closed``, each raises ``closed_error()``."""

    def __init__(self, pending: dict[int, Any], direct: bool, write_now: Any, wake_writer: Any,
                 current_task: Any, waiters: Any, new_waiter: Any, closed_error: Any) -> None:
        self.out: list[bytes] = []
        self.awaited = 0
        self.writing = False
        self.direct = direct
        self.writer_task: Any = None
        self.pending = pending
        self.requests = 0
        self.closed = False
        self._write_now = write_now
        self._wake_writer = wake_writer
        self._current_task = current_task
        self._waiters = waiters
        self._new_waiter = new_waiter
        self._closed_error = closed_error

    def _waiter(self) -> Any:
        task = self._current_task()
        waiter = self._waiters.get(None)
        if waiter is None or waiter.owner != id(task):
            waiter = self._new_waiter(task)
        waiter.task = task
        return waiter

    def _queue(self, frame: bytes, opaque: int, entry: Any) -> None:
        if self.closed:
            raise self._closed_error()
        self.pending[opaque] = entry
        self.requests += 1
        self.out.append(frame)
        self.awaited -= 1
        if self.awaited <= 0 and not self.writing and self.direct:
            self._write_now()
        elif self.writer_task is not None:
            self._wake_writer()

    def request(self, frame: bytes, opaque: int, put: Any = None) -> Any:
        """Queue ``frame`` (its opaque: ``opaque``) for the current task, which must await the
        returned ``Waiter`` right away (with ``put``, a ``result 200`` comes as a ``SendResult``)."""
        waiter = self._waiter()
        waiter.pending = self.pending
        waiter.opaque = opaque
        waiter.put = put
        self._queue(frame, opaque, waiter)
        return waiter

    def put(self, topic: bytes, partition: int, body: bytes, attribute: bytes | None, put: Any) -> Any:
        """``request`` of ``put_frame(topic, partition, body, attribute, <a fresh opaque>)``."""
        opaque = next_opaque()
        return self.request(put_frame(topic, partition, body, attribute, opaque), opaque, put)

    def submit(self, frame: bytes, opaque: int, entry: Any) -> None:
        """Queue ``frame`` with ``entry`` (``resolve(answer)``, ``fail(error)``) waiting for it."""
        self._queue(frame, opaque, entry)


_PURE = (put_frame_py, put_answer_py, put_result_py, WaiterPy, AnswerReaderPy, PutAnswersPy, OutboxPy,
         OpaqueCounterPy)

if os.environ.get("METAQ_PURE_PYTHON") == "1":
    put_frame, put_answer, put_result, Waiter, AnswerReader, PutAnswers, Outbox, OpaqueCounter = _PURE
    IMPLEMENTATION = "python"
else:
    try:
        from metaq_core._client_codec import (  # noqa: F401
            AnswerReader, OpaqueCounter, Outbox, PutAnswers, Waiter, put_answer, put_frame, put_result)
        IMPLEMENTATION = "cython"
    except ImportError:  # the extension is not built (a source checkout without build_ext)
        put_frame, put_answer, put_result, Waiter, AnswerReader, PutAnswers, Outbox, OpaqueCounter = _PURE
        IMPLEMENTATION = "python"

if IMPLEMENTATION == "cython":
    from metaq_core._client_codec import next_opaque  # noqa: F401  (the one counter ``Outbox.put`` uses)
else:
    next_opaque = OpaqueCounter()

"""PartitionLog: the segmented, append-only log of one (topic, partition) (broker.md §1).

It owns the list of segments (copy-on-write, so readers take a snapshot without locking), runs
start-up recovery, and funnels every append through exactly one writer thread per partition, in
arrival order, under one of the two flush policies of §1.8:

* group commit (``unflush_threshold <= 0``): the writer takes everything queued (up to
  ``min(max_transfer_size, 512 KiB)`` bytes), writes it with one vectored write, makes it durable
  with one fdatasync, then answers every waiting append. An append returns once its record is
  on disk. Blocking appenders of a round are woken by the next round's write, without the GIL,
  when that round is already queued (``_latch.Wakeups``).
* threshold (``unflush_threshold > 0``): appends are answered once written to the file (page
  cache); fdatasync runs when more than ``unflush_threshold`` appends are unflushed, when
  ``unflush_interval`` ms have passed, and periodically at that interval. A blocking caller
  writes its record itself (one compiled call, ``_append.DirectAppender``, when nothing else is
  due) and syncs inline when the threshold is reached; an event loop's appends leave the sync
  to the writer thread, whose fdatasync runs without the write lock.

Readers see only the durable end (the high-water mark, §1.7). The log knows nothing of sockets,
of trio or of message ids: callers hand it finished record fields and a completion sink.
"""

from __future__ import annotations

import _thread
import bisect
import collections
import logging
import os
import threading
import time
from typing import NamedTuple

import attrs

from metaq_core import _segment, record
from metaq_core.errors import (
    CorruptRecordError,
    MessageTooLargeError,
    MetaqError,
    ReadOnlyError,
    StorageIOError,
    StoreClosedError,
    StoreLoadError,
)
from metaq_core.naming import parse_segment_file_name, segment_file_name
from metaq_core.segment import Segment, create_segment, sync_directory

if os.environ.get("METAQ_PURE_PYTHON") == "1":
    _append = None  # the pure twin: every append takes the Python path
    _latch = None   # ... and waits on _thread locks, released by the writer with the GIL
else:
    from metaq_core import _append, _latch

log = logging.getLogger("metaq.store")

GROUP_COMMIT_CAP = 512 * 1024
#: Pipelining under load: once the writer has been woken and half as many appends as its last
#: round carried are queued, the submitting thread hands it the GIL (``time.sleep(0)``), so it
#: writes and fsyncs that half while the callers prepare the rest — without it, callers that
#: never block (an event loop running many appending tasks) keep the GIL for the whole round and
#: the writer and they take turns instead of overlapping. Rounds smaller than this never do it,
#: nor do blocking callers (their threads give the GIL up while they wait).
HANDOFF_MIN_ROUND = 32


@attrs.frozen
class LogSettings:
    """Storage settings of one topic (broker.md §2.2/§2.4, in the engine's own units)."""

    num_partitions: int = 1
    max_segment_size: int = 1024 * 1024 * 1024
    max_transfer_size: int = 1024 * 1024
    unflush_threshold: int = 0
    unflush_interval: int = 10_000  # ms
    data_path: str | None = None

    @property
    def group_commit(self) -> bool:
        return self.unflush_threshold <= 0

    @property
    def batch_cap(self) -> int:
        return min(self.max_transfer_size, GROUP_COMMIT_CAP)


class OffsetOutOfRangeError(MetaqError):
    """A read outside ``[min_offset, max_offset)``: ``before_start`` tells which side."""

    def __init__(self, offset: int, min_offset: int, max_offset: int) -> None:
        self.offset = offset
        self.min_offset = min_offset
        self.max_offset = max_offset
        side = "before the start" if offset < min_offset else "at or past the end"
        super().__init__(f"offset {offset} is {side} of the log [{min_offset}, {max_offset})")

    @property
    def before_start(self) -> bool:
        return self.offset < self.min_offset


@attrs.frozen
class Slice:
    """A byte range of one segment file, ready to be sent (``os.sendfile``) or read."""

    offset: int       # log offset of the first byte
    length: int       # bytes; never past the segment's durable end
    position: int     # position in the segment file
    segment: Segment = attrs.field(repr=False)

    def fileno(self) -> int:
        return self.segment.fileno()

    def read(self) -> bytes:
        return self.segment.read(self.position, self.length)


class Appended(NamedTuple):
    """Where one appended record landed: its offset (first byte), message id and record size.

    A named tuple, not an attrs class: one is made per appended record on the hot path."""

    offset: int
    msg_id: int
    size: int


@attrs.frozen
class PartitionStatistics:
    appends: int            # append calls (a batch counts once)
    records: int            # records appended since open
    bytes_appended: int
    batches: int            # writer rounds (one vectored write each)
    syncs: int              # fdatasync calls
    max_batch: int          # the most append calls answered by one writer round
    message_count: int      # records found by recovery + records appended (broker.md §1.13)
    recovered_bytes_truncated: int
    io_errors: int
    segments: int
    min_offset: int
    max_offset: int
    size_bytes: int


class Sink:
    """Where the writer thread delivers finished appends: ``deliver`` is called once per writer
    round with every request of that round that names this sink (so a trio sink costs one
    thread crossing per group commit, not one per message)."""

    def deliver(self, requests: list[AppendRequest]) -> None:
        raise NotImplementedError


class ThreadSink(Sink):
    """Completion for blocking callers: each request's waiter is a latch (``new_latch``) held
    until it is answered. (A group-commit round with the next one queued is not delivered here:
    the writer opens its latches with that round's write, see ``_answer``.)"""

    def deliver(self, requests: list[AppendRequest]) -> None:
        for request in requests:
            request.waiter.release()


THREAD_SINK = ThreadSink()


def _new_lock_latch() -> _thread.LockType:
    latch = _thread.allocate_lock()
    latch.acquire()
    return latch


#: A closed one-shot latch (``acquire()`` waits until ``release()``): the compiled ``Latch``,
#: whose rounds the writer opens without the GIL (see ``_answer``), or a ``_thread`` lock.
new_latch = _latch.Latch if _latch is not None else _new_lock_latch


class _WriterCondition(threading.Condition):
    """The condition the writer thread sleeps on while idle. Its ``wait`` is
    ``threading.Condition.wait`` with a ``_segment.WriterLatch`` for the waiter lock: the woken
    writer is marked as waiting for the GIL, so an event loop that calls ``yield_to_writers``
    (the broker's connection readers, after each receive) hands it over rather than keeping it
    until the loop goes idle."""

    def wait(self, timeout: float | None = None) -> bool:
        if not self._is_owned():  # type: ignore[attr-defined]
            raise RuntimeError("cannot wait on un-acquired lock")
        waiter = _segment.WriterLatch()
        self._waiters.append(waiter)  # type: ignore[attr-defined]
        saved = self._release_save()  # type: ignore[attr-defined]
        released = False
        try:
            if timeout is None:
                released = waiter.acquire()
            else:
                released = waiter.acquire(timeout > 0, timeout)
            return released
        finally:
            self._acquire_restore(saved)  # type: ignore[attr-defined]
            if not released:
                try:
                    self._waiters.remove(waiter)  # type: ignore[attr-defined]
                except ValueError:
                    pass


#: The writer's condition (over the queue lock): ``_WriterCondition`` when compiled.
new_writer_condition = _WriterCondition if _latch is not None else threading.Condition


class AppendRequest:
    """One append call: one or more records written contiguously, answered together.

    ``offset`` is where its first record landed (-1 until written); ``error`` is set instead when
    the append failed."""

    __slots__ = ("items", "size", "sink", "waiter", "offset", "error", "flush")

    def __init__(self, items: list[tuple[bytes, int, int, int]], size: int, sink: Sink | None,
                 waiter: object, flush: bool = False) -> None:
        self.items = items
        self.size = size
        self.sink = sink
        self.waiter = waiter
        self.offset = -1
        self.error: BaseException | None = None
        self.flush = flush

    def first(self) -> Appended:
        """Where the first record landed; raises the append's error if it failed."""
        if self.error is not None:
            raise self.error
        data, _flag, msg_id, _crc = self.items[0]
        return Appended(self.offset, msg_id, 20 + len(data))

    def outcome(self) -> list[Appended]:
        """Where each record landed; raises the append's error if it failed."""
        if self.error is not None:
            raise self.error
        if len(self.items) == 1:
            return [Appended(self.offset, self.items[0][2], self.size)]
        return _placed(self.items, self.offset)


def _placed(items: list[tuple[bytes, int, int, int]], position: int) -> list[Appended]:
    out = []
    for data, _flag, msg_id, _crc in items:
        size = 20 + len(data)
        out.append(Appended(position, msg_id, size))
        position += size
    return out


class PartitionLog:
    """The log of one topic-partition in ``directory`` (``<data>/<topic>-<partition>``)."""

    def __init__(self, directory: str, topic: str, partition: int, settings: LogSettings, *,
                 read_only: bool = False, create: bool = True, offset_if_create: int = 0) -> None:
        self.directory = directory
        self.topic = topic
        self.partition = partition
        self.settings = settings
        self.read_only = read_only
        self.group_commit = settings.group_commit
        self._view: tuple[list[int], list[Segment]] = ([], [])
        self._queue_lock = threading.Lock()  # guards the queue and the writer thread
        self._cond = new_writer_condition(self._queue_lock)
        self._max_record = settings.max_transfer_size
        self._accepting = not read_only  # false once closing, closed or failed: submit looks closer
        self._write_lock = threading.Lock()  # guards the files and the segment list
        self._queue: collections.deque[AppendRequest] = collections.deque()
        self._writer: threading.Thread | None = None
        self._closing = False
        self._closed = False
        self._failure: StorageIOError | None = None
        self._unflushed = 0
        self._sync_generation = 0  # counts the syncs that reset _unflushed (see _periodic_flush)
        self._upkeep_due = False  # append_nowait left a sync or a roll to the writer thread
        self._kicked = False      # the writer was woken for the queue and has not taken it yet
        self._handoff_at = 1 << 62  # queued appends at which submit hands the writer the GIL
        self._wake = None  # _latch.Wakeups of the last round, opened by the next round's write
        self._batch: list[AppendRequest] = []  # the round the writer is on
        self._last_flush = time.monotonic()
        self._retired: list[Segment] = []
        self._counters = collections.Counter()
        self._message_count = 0
        self._recovered_truncated = 0
        self._load(create, offset_if_create)
        # Threshold mode: one-record blocking appends in one compiled call (see _append).
        self._direct = None
        if _append is not None and not self.group_commit and not read_only:
            self._direct = _append.DirectAppender(
                self, self._write_lock, self._direct_failed, self._direct_kick, Appended, settings.unflush_threshold,
                settings.max_segment_size, settings.max_transfer_size,
                settings.unflush_interval / 1000.0)

    # ----------------------------------------------------------------- loading and recovery

    @property
    def name(self) -> str:
        return f"{self.topic}-{self.partition}"

    def _list_segments(self) -> list[tuple[int, str]]:
        found = []
        for entry in os.listdir(self.directory):
            try:
                start = parse_segment_file_name(entry)
            except ValueError as exc:
                raise StoreLoadError(f"{self.directory}: {exc}") from None
            if start is not None:
                found.append((start, os.path.join(self.directory, entry)))
        found.sort()
        return found

    def _load(self, create: bool, offset_if_create: int) -> None:
        if not os.path.isdir(self.directory):
            if self.read_only or not create:
                raise StoreLoadError(f"no store directory {self.directory}")
            os.makedirs(self.directory, exist_ok=True)
            sync_directory(os.path.dirname(os.path.abspath(self.directory)))
        found = self._list_segments()
        segments = [Segment(start=s, path=p, written=os.path.getsize(p), durable=0) for s, p in found]
        for seg in segments:
            seg.durable = seg.written
        for before, after in zip(segments, segments[1:]):
            if before.start + before.written != after.start:
                raise StoreLoadError(
                    f"segments are not contiguous in {self.directory}: "
                    f"{os.path.basename(before.path)} ({before.written} bytes) is followed by "
                    f"{os.path.basename(after.path)}")
        if not segments:
            if self.read_only:
                raise StoreLoadError(f"no segment files in {self.directory}")
            segments = [create_segment(self.directory, offset_if_create, segment_file_name(offset_if_create))]
        elif self.read_only:
            self._scan_tail(segments[-1], 0)
        else:
            segments[-1].writable = True
            self._recover_tail(segments[-1])
        self._set_view(segments)

    def _recover_tail(self, tail: Segment) -> None:
        """Keep exactly the complete, valid records of the newest segment (broker.md §1.10)."""
        fd = tail.fileno()
        size = os.fstat(fd).st_size
        count, good, _status = _segment.scan_file(fd, 0, size)
        self._message_count = count
        if good < size:
            os.ftruncate(fd, good)
            _segment.fullsync(fd)
            self._recovered_truncated = size - good
            log.warning("%s: recovery succeeded, %d records kept, %d bytes truncated from %s",
                        self.name, count, size - good, os.path.basename(tail.path))
        tail.written = tail.durable = good

    def _scan_tail(self, tail: Segment, start: int) -> None:
        """Read-only view: the readable end is the end of the last complete, valid record."""
        fd = tail.fileno()
        size = os.fstat(fd).st_size
        count, good, _status = _segment.scan_file(fd, start, size)
        self._message_count += count
        tail.written = size
        tail.durable = good

    def _set_view(self, segments: list[Segment]) -> None:
        self._view = ([s.start for s in segments], segments)

    def refresh(self) -> None:
        """Read-only view: pick up segments and records the writing process made since."""
        if not self.read_only:
            return
        with self._write_lock:
            _starts, old = self._view
            by_start = {s.start: s for s in old}
            found = self._list_segments()
            if not found:
                return
            segments = []
            for start, path in found:
                seg = by_start.get(start)
                if seg is None:
                    size = os.path.getsize(path)
                    seg = Segment(start=start, path=path, written=size, durable=0 if path == found[-1][1] else size)
                segments.append(seg)
            for seg in segments[:-1]:
                if seg.durable != seg.written or seg is old[-1]:
                    seg.written = seg.durable = os.path.getsize(seg.path)
            tail = segments[-1]
            self._scan_tail(tail, tail.durable)
            for seg in old:
                if seg not in segments:
                    self._retired.append(seg)
            self._set_view(segments)

    # ----------------------------------------------------------------------------- appends

    def _measure(self, items: list[tuple[bytes, int, int, int]]) -> int:
        limit = self._max_record
        if len(items) == 1:
            size = 20 + len(items[0][0])
            if size <= limit:
                return size
        size = 0
        for data, _flag, _msg_id, _crc in items:
            n = 20 + len(data)
            if n > limit:
                raise MessageTooLargeError(
                    f"record of {n} bytes is larger than maxTransferSize {limit}")
            size += n
        return size

    def submit(self, items: list[tuple[bytes, int, int, int]], sink: Sink | None, waiter: object,
               *, flush: bool = False) -> AppendRequest:
        """Queue records (data, flag, msg_id, checksum or -1) as one append; returns the request.

        The sink's ``deliver`` is called from the writer thread once the request is answered (for
        group commit: once it is durable). Raises at once, touching nothing, if the log is closed,
        read-only or a record is larger than ``max_transfer_size``.
        """
        request = AppendRequest(items, self._measure(items), sink, waiter, flush)
        with self._queue_lock:
            if not self._accepting:
                self._check_writable()
            queue = self._queue
            queue.append(request)
            if self._writer is None:
                self._start_writer()
            elif len(queue) == 1:
                self._cond.notify()
                self._kicked = True
            handoff = self._kicked and len(queue) == self._handoff_at and sink is not THREAD_SINK
        if handoff:
            time.sleep(0)  # let the woken writer take the GIL (see HANDOFF_MIN_ROUND)
        return request

    def _start_writer(self) -> None:  # called with self._cond held
        self._writer = threading.Thread(target=self._writer_main, name=f"metaq-writer-{self.name}",
                                        daemon=True)
        self._writer.start()

    def _check_writable(self) -> None:
        if self._closing or self._closed:
            raise StoreClosedError(f"{self.name}: the log is closed")
        if self.read_only:
            raise ReadOnlyError(f"{self.name}: the log is open read-only")
        if self._failure is not None:
            raise StorageIOError(
                f"{self.name}: the partition is read-only after an I/O error ({self._failure})")

    def append_many(self, items: list[tuple[bytes, int, int, int]]) -> list[Appended]:
        """Append records and block until they are answered under the flush policy.

        Group commit: the writer thread batches this with concurrent appends and answers after
        fdatasync. Threshold mode: the records are written here, in the caller's thread, under the
        write lock (no hand-off; the fsync, when one is due, also runs here, as in Java)."""
        if not self.group_commit:
            return self._append_here(items)
        latch = new_latch()
        request = self.submit(items, THREAD_SINK, latch)
        latch.acquire()
        return request.outcome()

    def append(self, data: bytes, *, flag: int = 0, msg_id: int = 0, checksum: int = -1) -> Appended:
        direct = self._direct
        if direct is not None:  # threshold mode: the compiled one-call path, unless it declines
            done = direct.append(data, flag, msg_id, checksum, None)
            if done is not None:
                return done
        return self.append_many([(data, flag, msg_id, checksum)])[0]

    def _direct_kick(self, upkeep: bool) -> None:
        """The direct path wrote the first unflushed record (the writer thread times the
        periodic sync from it), or one past the threshold (``upkeep``: the writer syncs now)."""
        with self._cond:
            self._upkeep_due = self._upkeep_due or upkeep
            if self._writer is None:
                self._start_writer()
            self._cond.notify()

    def _direct_failed(self, exc: OSError) -> None:
        """The direct path's write failed (the tail's length still excludes the record): cut
        the file back, fail the log, raise."""
        with self._write_lock:
            tail = self._view[1][-1]
            if self._failure is None:
                self._fail_io(tail, tail.written, exc, [])
            failure = self._failure
        raise failure from exc

    def _append_here(self, items: list[tuple[bytes, int, int, int]]) -> list[Appended]:
        size = self._measure(items)
        with self._write_lock:
            tail, before, sync_due = self._write_now(items, size)
            if sync_due:
                self._sync(tail)
            if tail.written >= self.settings.max_segment_size:
                self._roll_or_fail(tail)
            first = self._unflushed == 1
        if first or self._writer is None:
            with self._cond:  # let the periodic flusher time this write
                if self._writer is None:
                    self._start_writer()
                self._cond.notify()
        return _placed(items, tail.start + before)

    def append_nowait(self, items: list[tuple[bytes, int, int, int]]) -> int | None:
        """Threshold mode, for an event loop: write the records now and return the offset of the
        first one — or None, writing nothing, when that would mean waiting (group commit, the
        write lock held by a flush, appends queued ahead). It never fsyncs nor rolls here: when
        one is due it wakes the writer thread for it. Raises as ``append_many`` does."""
        if self.group_commit or self._queue:
            return None
        size = self._measure(items)
        if not self._write_lock.acquire(blocking=False):
            return None
        try:
            tail, before, sync_due = self._write_now(items, size)
            upkeep = sync_due or tail.written >= self.settings.max_segment_size
            first = self._unflushed == 1
        finally:
            self._write_lock.release()
        if upkeep or first or self._writer is None:
            with self._cond:
                self._upkeep_due = self._upkeep_due or upkeep
                if self._writer is None:
                    self._start_writer()
                self._cond.notify()
        return tail.start + before

    def _write_now(self, items: list[tuple[bytes, int, int, int]], size: int) -> tuple[Segment, int, bool]:
        """Write under the write lock (held by the caller): (tail, its length before, whether
        the flush policy wants an fdatasync now)."""
        self._check_writable()
        tail = self._view[1][-1]
        before = tail.written
        try:
            _segment.append_records(tail.fileno(), items)
        except OSError as exc:
            self._fail_io(tail, before, exc, [])
            raise self._failure from exc
        tail.written = before + size
        self._unflushed += 1
        self._count(1, len(items), size, 1)
        return tail, before, self._threshold_reached()

    def flush(self) -> None:
        """Block until everything appended before this call is durable (fdatasync)."""
        if self.read_only:
            return
        latch = new_latch()
        request = self.submit([], THREAD_SINK, latch, flush=True)
        latch.acquire()
        request.outcome()

    # ------------------------------------------------------------------------ writer thread

    def _take_batch(self) -> list[AppendRequest]:
        cap = self.settings.batch_cap
        queue = self._queue
        batch = [queue.popleft()]
        size = batch[0].size
        while queue and size + queue[0].size <= cap:
            request = queue.popleft()
            size += request.size
            batch.append(request)
        return batch

    def _flush_due_in(self) -> float | None:
        if self.group_commit or self._unflushed == 0 or self.settings.unflush_interval <= 0:
            return None
        return self._last_flush + self.settings.unflush_interval / 1000.0 - time.monotonic()

    def _writer_main(self) -> None:
        try:
            self._writer_loop()
        except BaseException as exc:  # a bug, not an I/O error (those fail the log in place)
            self._writer_died(exc)  # logs the traceback

    def _writer_died(self, exc: BaseException) -> None:
        """The writer thread is ending on an unexpected exception: fail the log (read-only, as
        after an I/O error) and answer everything it held or was queued with that error, so
        that no appender waits for a writer that is gone."""
        log.critical("%s: the writer thread failed; the partition is now read-only",
                     self.name, exc_info=exc)
        error = StorageIOError(f"{self.name}: the writer thread failed: {exc!r}")
        error.__cause__ = exc
        with self._cond:
            if self._failure is None:
                self._failure = error
            self._accepting = False
            held, self._batch = self._batch, []
            pending = list(self._queue)
            self._queue.clear()
            wake, self._wake = self._wake, None
        if wake is not None:
            wake.open()
        unanswered = [r for r in held + pending if r.offset < 0 and r.error is None]
        if unanswered:
            self._answer(unanswered, self._failure)

    def _writer_loop(self) -> None:
        while True:
            wake = None
            with self._cond:
                while (not self._queue and not self._closing and not self._upkeep_due
                       and self._wake is None):
                    due = self._flush_due_in()
                    if due is not None and due <= 0:
                        break
                    self._cond.wait(due)
                if not self._queue:
                    # Wake-ups left for a round that is no longer queued (a failure emptied the
                    # queue): opened before anything else.
                    wake, self._wake = self._wake, None
                    if wake is None and self._closing:
                        break
                    batch = []
                else:
                    batch = self._take_batch()
                    self._kicked = False
                    self._handoff_at = (len(batch) // 2 if self.group_commit and len(batch) >= HANDOFF_MIN_ROUND
                                        else 1 << 62)
            if wake is not None:
                wake.open()
            elif batch:
                self._batch = batch  # for _writer_died
                self._write_batch(batch)
                self._batch = []
            else:
                self._periodic_flush()
        self._periodic_flush()

    def _periodic_flush(self) -> None:
        """The writer thread's sync (threshold mode: due or periodic) and roll. The fdatasync
        runs without the write lock, so appends go on meanwhile; it makes durable what was
        written when it started. Appends that crossed the threshold during it ask for the next
        one (``_upkeep_due`` stays set until the count is back under the threshold)."""
        try:
            self._sync_and_roll()
        finally:
            self._upkeep_due = (self._failure is None and not self.group_commit
                                and self._unflushed > self.settings.unflush_threshold)

    def _sync_and_roll(self) -> None:
        direct = self._direct
        if direct is not None:
            direct.writer_due = False  # an event loop waiting to hand us the GIL: we have it
        with self._write_lock:
            if self._failure is not None:
                return
            tail = self._view[1][-1]
            count, upto, generation = self._unflushed, tail.written, self._sync_generation
        if count:
            try:
                _segment.datasync(tail.fileno())
            except OSError as exc:
                with self._write_lock:
                    if self._failure is None:
                        self._fail_io(tail, tail.written, exc, [])
                return
        with self._write_lock:
            if count:
                self._counters["syncs"] += 1
                tail.durable = max(tail.durable, upto)
                if self._sync_generation == generation:  # no sync since: these are still counted
                    self._unflushed = max(0, self._unflushed - count)
                self._sync_generation += 1
                self._last_flush = time.monotonic()
            tail = self._view[1][-1]
            if (self._failure is None and not self._closing
                    and tail.written >= self.settings.max_segment_size):
                self._roll_or_fail(tail)

    def _sync(self, tail: Segment) -> None:
        _segment.datasync(tail.fileno())
        self._synced(tail)

    def _synced(self, tail: Segment) -> None:
        """Bookkeeping after an fdatasync of ``tail`` that covered everything written."""
        self._counters["syncs"] += 1
        tail.durable = tail.written
        self._unflushed = 0
        self._sync_generation += 1
        self._last_flush = time.monotonic()

    def _count(self, appends: int, records: int, size: int, batch: int) -> None:
        counters = self._counters
        counters["appends"] += appends
        counters["records"] += records
        counters["bytes"] += size
        counters["batches"] += 1
        if batch > counters["max_batch"]:
            counters["max_batch"] = batch
        self._message_count += records

    def _write_batch(self, batch: list[AppendRequest]) -> None:
        wake, self._wake = self._wake, None
        try:
            self._write_batch_waking(batch, wake)
        finally:
            if wake is not None:
                wake.open()  # if the write did not (nothing to write, or it failed first)

    def _write_batch_waking(self, batch: list[AppendRequest], wake: object) -> None:
        with self._write_lock:
            if self._failure is not None:
                self._answer(batch, self._failure)
                return
            tail = self._view[1][-1]
            before = tail.written
            items = [item for request in batch for item in request.items]
            appends = sum(1 for r in batch if r.items)
            try:
                synced = False
                if items:  # group commit: write and fdatasync in one call
                    _segment.append_records(tail.fileno(), items, self.group_commit, wake)
                    synced = self.group_commit
                position = tail.start + before
                for request in batch:
                    request.offset = position
                    position += request.size
                tail.written = position - tail.start
                self._unflushed += appends
                if synced:
                    self._synced(tail)
                elif self.group_commit or self._threshold_reached() or any(r.flush for r in batch):
                    self._sync(tail)
            except OSError as exc:
                self._fail_io(tail, before, exc, batch)
                return
            self._count(appends, len(items), tail.written - before, len(batch))
            self._answer(batch, None)
            if tail.written >= self.settings.max_segment_size:
                self._roll_or_fail(tail)

    def _roll_or_fail(self, tail: Segment) -> None:
        try:
            self._roll(tail)
        except OSError as exc:
            self._fail_io(tail, tail.written, exc, [])

    def _threshold_reached(self) -> bool:
        if self._unflushed > self.settings.unflush_threshold:
            return True
        interval = self.settings.unflush_interval
        return interval > 0 and time.monotonic() - self._last_flush >= interval / 1000.0

    def _answer(self, batch: list[AppendRequest], error: BaseException | None) -> None:
        if error is not None:
            for request in batch:
                request.error = error
        sink = batch[0].sink if batch else None
        if sink is not None and all(r.sink is sink for r in batch):  # the usual case: one sink
            if sink is THREAD_SINK and error is None and _latch is not None and self._queue:
                # Blocking appenders, and the next round already queued: their latches are
                # opened by that round's write, without the GIL, instead of now, with it (a
                # futex wake each, tens of µs a round, while every woken appender queued for
                # the GIL this thread held). 64 threads × 100 B: 50-52k → 74-80k appends/s.
                self._wake = _latch.Wakeups(batch)
                return
            try:
                sink.deliver(batch)
            except Exception:
                log.exception("%s: delivering append results failed", self.name)
            return
        by_sink: dict[int, tuple[Sink, list[AppendRequest]]] = {}
        for request in batch:
            if request.sink is not None:
                entry = by_sink.get(id(request.sink))
                if entry is None:
                    by_sink[id(request.sink)] = (request.sink, [request])
                else:
                    entry[1].append(request)
        for sink, requests in by_sink.values():
            try:
                sink.deliver(requests)
            except Exception:  # a sink whose event loop is gone must not kill the writer
                log.exception("%s: delivering append results failed", self.name)

    def _fail_io(self, tail: Segment, good_length: int, exc: OSError, batch: list[AppendRequest]) -> None:
        """An I/O error: cut the file back, fail this and every later append, go read-only."""
        self._counters["io_errors"] += 1
        error = StorageIOError(f"{self.name}: write to {os.path.basename(tail.path)} failed: {exc}")
        error.__cause__ = exc
        try:
            os.ftruncate(tail.fileno(), good_length)
            tail.written = good_length
            tail.durable = min(tail.durable, good_length)
            # Records acknowledged before the error (threshold mode) stay readable if they can
            # still be made durable.
            _segment.datasync(tail.fileno())
            tail.durable = good_length
            self._unflushed = 0
            self._sync_generation += 1
        except OSError as cut:
            log.critical("%s: could not cut %s back to %d bytes and sync it: %s",
                         self.name, tail.path, good_length, cut)
        log.critical("%s: I/O error, the partition is now read-only: %s", self.name, exc)
        with self._cond:
            self._failure = error
            self._accepting = False
            pending = list(self._queue)
            self._queue.clear()
        self._answer(batch + pending, error)

    def _roll(self, tail: Segment) -> None:
        if tail.durable != tail.written:
            self._sync(tail)
        start = tail.start + tail.written
        new = create_segment(self.directory, start, segment_file_name(start))
        tail.writable = False
        _starts, segments = self._view
        self._set_view(segments + [new])
        log.info("%s: rolled to segment %s", self.name, os.path.basename(new.path))

    # ------------------------------------------------------------------------------- reads

    def _segments(self) -> list[Segment]:
        if self._closed:
            raise StoreClosedError(f"{self.name}: the log is closed")
        return self._view[1]

    @property
    def min_offset(self) -> int:
        return self._segments()[0].start

    @property
    def max_offset(self) -> int:
        """The readable (durable) end of the log."""
        return self._segments()[-1].end

    def nearest_offset(self, offset: int) -> int:
        """The ``offset`` command (§1.6): min if before, max if past the end, else the start of the
        segment that holds ``offset``."""
        starts, segments = self._view
        if offset < segments[0].start:
            return segments[0].start
        end = segments[-1].end
        if offset >= end:
            return end
        return segments[bisect.bisect_right(starts, offset) - 1].start

    def slice(self, offset: int, max_bytes: int) -> Slice:
        """The bytes from ``offset``: at most ``max_bytes`` and ``max_transfer_size``, never past
        the containing segment's end or the durable end. Raises OffsetOutOfRangeError outside
        ``[min_offset, max_offset)``. The slice may end inside a record."""
        if self._closed:
            raise StoreClosedError(f"{self.name}: the log is closed")
        starts, segments = self._view
        first, last = segments[0], segments[-1]
        if offset < first.start or offset >= last.end:
            if self.read_only and offset >= last.end:
                self.refresh()
                starts, segments = self._view
                first, last = segments[0], segments[-1]
            if offset < first.start or offset >= last.end:
                raise OffsetOutOfRangeError(offset, first.start, last.end)
        segment = segments[bisect.bisect_right(starts, offset) - 1]
        position = offset - segment.start
        length = min(max_bytes, self.settings.max_transfer_size, segment.durable - position)
        return Slice(offset=offset, length=max(length, 0), position=position, segment=segment)

    def read_records(self, offset: int, max_bytes: int) -> tuple[list[tuple[int, int, int, bytes]], int]:
        """Decode the complete records from ``offset`` within ``max_bytes``.

        Returns ([(offset, msg_id, flag, data)], next offset). If the first record is larger than
        ``max_bytes`` it is read whole anyway, so a read always makes progress. A record that fails
        its checksum raises CorruptRecordError (unless records before it were returned).
        """
        piece = self.slice(offset, max_bytes)
        buf = piece.read()
        records, end, status = record.decode(buf, offset)
        available = piece.segment.durable - piece.position
        if not records and status == record.PARTIAL and available >= 20:
            header = buf if len(buf) >= 20 else piece.segment.read(piece.position, 20)
            need = 20 + record.decode_header(header)[0]
            if need <= available:
                buf = piece.segment.read(piece.position, need)
                records, end, status = record.decode(buf, offset)
        if not records and status == record.CORRUPT:
            raise CorruptRecordError(f"{self.name}: corrupt record at offset {offset}")
        self._counters["reads"] += 1
        return records, offset + end

    # ----------------------------------------------------------------------- retention, close

    def segments(self) -> list[Segment]:
        """A snapshot of the segment list (oldest first)."""
        return list(self._segments())

    def remove_oldest(self, count: int) -> list[Segment]:
        """Drop the ``count`` oldest read-only segments from the list (never the newest) and
        return them; their files are the caller's to delete or archive."""
        with self._write_lock:
            _starts, segments = self._view
            count = min(count, len(segments) - 1)
            if count <= 0:
                return []
            removed = segments[:count]
            self._set_view(segments[count:])
            # Close retired files on the next call, so a reader holding a slice can finish.
            stale, self._retired = self._retired, removed
        for seg in stale:
            seg.close()
        return removed

    def close(self) -> None:
        """Stop accepting appends, write and sync everything queued, answer it, close the files."""
        with self._cond:
            if self._closed:
                return
            self._closing = True
            self._accepting = False
            writer = self._writer
            self._cond.notify_all()
        if writer is not None:
            writer.join()
        with self._write_lock:
            if self._unflushed and self._failure is None:
                self._sync(self._view[1][-1])
            self._closed = True
            segments = self._view[1] + self._retired
        for seg in segments:
            seg.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def statistics(self) -> PartitionStatistics:
        c = self._counters
        segments = self._view[1]
        direct = self._direct
        more, more_bytes = (direct.records, direct.nbytes) if direct is not None else (0, 0)
        return PartitionStatistics(
            appends=c["appends"] + more, records=c["records"] + more,
            bytes_appended=c["bytes"] + more_bytes, batches=c["batches"] + more,
            syncs=c["syncs"], max_batch=c["max_batch"],
            message_count=self._message_count + more,
            recovered_bytes_truncated=self._recovered_truncated, io_errors=c["io_errors"],
            segments=len(segments), min_offset=segments[0].start, max_offset=segments[-1].end,
            size_bytes=sum(s.written for s in segments),
        )



__all__ = [
    "Appended", "AppendRequest", "LogSettings", "OffsetOutOfRangeError", "PartitionLog",
    "PartitionStatistics", "Sink", "Slice", "ThreadSink", "THREAD_SINK",
]

"""LogStore: the embeddable message store — every partition log under a data directory.

Open it from a directory with keyword settings; use it as a context manager (sync) or an async
context manager (trio). The files are exactly the ones a MetaQ broker serves
(``<data>/<topic>-<partition>/<20-digit offset>.meta``), so a store can be opened read-only on a
running broker's data directory.

What is durable when a call returns:

* ``append``/``append_many`` (and their ``_async`` twins) in group-commit mode
  (``unflush_threshold <= 0``, the default): the records are on disk (fdatasync done).
* in threshold mode (``unflush_threshold > 0``): the records are in the OS page cache — they
  survive a crash of this process, and reach the disk within ``unflush_interval`` ms or after
  ``unflush_threshold`` more appends; ``flush()`` makes them durable now.
* reads return only records that are durable (group commit) or flushed (threshold mode).

This module orchestrates; the byte work is in the Cython modules. It knows nothing of sockets.
"""

from __future__ import annotations

import concurrent.futures
import errno
import fcntl
import importlib
import logging
import os
import sys
import threading
import types
from collections.abc import Callable, Iterable, Mapping

import attrs

from metaq_core import record
from metaq_core.errors import ReadOnlyError, StoreClosedError, StoreLoadError
from metaq_core.ids import IdWorker
from metaq_core.naming import parse_store_dir_name, store_dir_name, validate_partition, validate_topic
from metaq_core.partition import (
    THREAD_SINK,
    Appended,
    LogSettings,
    PartitionLog,
    PartitionStatistics,
    Slice,
    _append,
    new_latch,
)

log = logging.getLogger("metaq.store")

LOCK_FILE = ".metaq-store.lock"
#: Threshold-mode ``append_async``: a scheduling point after this many direct appends (see there).
#: A task appending in a loop then holds the event loop for about 0.1 ms at a time; 64 rather
#: than 16 made 64 tasks × 100 B appends 5-13 % faster (three alternating pairs), the task
#: switch being paid once per 64 records.
DIRECT_YIELD_EVERY = 64


@attrs.frozen
class StoredMessage:
    """A message read back from the log."""

    topic: str
    partition: int
    offset: int
    id: int
    flag: int
    attribute: str | None
    body: bytes


@attrs.frozen
class ReadResult:
    messages: list[StoredMessage]
    next_offset: int


@attrs.frozen
class StoreStatistics:
    partitions: int
    appends: int
    records: int
    bytes_appended: int
    batches: int
    syncs: int
    io_errors: int
    size_bytes: int
    per_partition: Mapping[str, PartitionStatistics]


class LogStore:
    """All partition logs of one data directory.

    Settings (broker.md §2.2 names in brackets): ``num_partitions`` [numPartitions],
    ``max_segment_size`` [maxSegmentSize], ``max_transfer_size`` [maxTransferSize],
    ``unflush_threshold`` [unflushThreshold], ``unflush_interval`` ms [unflushInterval],
    ``broker_id`` (message ids), ``load_in_parallel`` [loadMessageStoresInParallel].
    ``settings_for(topic)`` may return per-topic LogSettings (e.g. from ``[topic=…]`` sections);
    ``extra_paths`` are further data paths to scan (topics with their own ``dataPath``).

    ``read_only=True`` opens without taking the writer lock, never writes, and sees every
    complete, valid record the writing process has put in the files (``refresh()`` is automatic
    when a read reaches the known end).
    """

    def __init__(self, path: str | os.PathLike[str], *, read_only: bool = False,
                 num_partitions: int = 1, max_segment_size: int = 1024 * 1024 * 1024,
                 max_transfer_size: int = 1024 * 1024, unflush_threshold: int = 0,
                 unflush_interval: int = 10_000, broker_id: int = 0,
                 load_in_parallel: bool = False,
                 settings_for: Callable[[str], LogSettings] | None = None,
                 extra_paths: Iterable[str] = ()) -> None:
        self.path = os.fspath(path)
        self.read_only = read_only
        self.defaults = LogSettings(
            num_partitions=num_partitions, max_segment_size=max_segment_size,
            max_transfer_size=max_transfer_size, unflush_threshold=unflush_threshold,
            unflush_interval=unflush_interval)
        _check_settings(self.defaults)
        self._settings_for = settings_for
        self.ids = IdWorker(broker_id)
        self._logs: dict[tuple[str, int], PartitionLog] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._lock_fd: int | None = None
        if _append is not None and not read_only:
            # The same method in one compiled call: a threshold-mode log's records are written
            # from here directly (partition._append), a group-commit log's are submitted and
            # waited for; everything else comes back to the method.
            self.append_data = _append.StoreAppends(
                self._logs, self.ids, self._append_data, new_latch, THREAD_SINK).append_data
        if read_only:
            if not os.path.isdir(self.path):
                raise StoreLoadError(f"no data directory {self.path}")
        else:
            os.makedirs(self.path, exist_ok=True)
            self._take_lock()
        try:
            self._load_all([self.path, *extra_paths], load_in_parallel)
        except BaseException:
            self.close()
            raise

    # ------------------------------------------------------------------------- settings

    def settings(self, topic: str) -> LogSettings:
        if self._settings_for is None:
            return self.defaults
        return self._settings_for(topic)

    def _directory(self, topic: str, partition: int) -> str:
        root = self.settings(topic).data_path or self.path
        return os.path.join(root, store_dir_name(topic, partition))

    # ---------------------------------------------------------------------------- loading

    def _take_lock(self) -> None:
        fd = os.open(os.path.join(self.path, LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StoreLoadError(
                    f"{self.path} is already open for writing by another process "
                    "(open it with read_only=True to read alongside)") from None
            raise
        self._lock_fd = fd

    def _load_all(self, paths: list[str], parallel: bool) -> None:
        found: list[tuple[str, int, str]] = []
        for root in dict.fromkeys(os.path.abspath(p) for p in paths):
            if not os.path.isdir(root):
                continue
            for entry in sorted(os.listdir(root)):
                full = os.path.join(root, entry)
                if entry == LOCK_FILE:
                    continue
                if not os.path.isdir(full):
                    log.warning("%s is not a store directory, skipped", full)
                    continue
                try:
                    parsed = parse_store_dir_name(entry)
                except ValueError as exc:
                    raise StoreLoadError(f"{root}: {exc}") from None
                if parsed is None:
                    log.warning("%s has no -<partition> suffix, skipped", full)
                    continue
                topic, partition = parsed
                try:
                    validate_topic(topic)
                except ValueError as exc:
                    raise StoreLoadError(f"{full}: {exc}") from None
                found.append((topic, partition, full))

        def load(item: tuple[str, int, str]) -> PartitionLog:
            topic, partition, directory = item
            return PartitionLog(directory, topic, partition, self.settings(topic),
                                read_only=self.read_only, create=False)

        if parallel and len(found) > 1:
            workers = (os.cpu_count() or 1) + 1
            with concurrent.futures.ThreadPoolExecutor(workers, "metaq-load") as pool:
                logs = list(pool.map(load, found))
        else:
            logs = [load(item) for item in found]
        for plog in logs:
            self._logs[(plog.topic, plog.partition)] = plog

    # --------------------------------------------------------------------------- partitions

    def partition(self, topic: str, partition: int, *, create: bool = True) -> PartitionLog:
        """The log of (topic, partition), created if ``create`` and the store is writable.

        Raises InvalidTopicError / InvalidPartitionError (range checked on creation only: a log
        that exists stays readable after ``num_partitions`` is lowered), KeyError if it does not
        exist and cannot be created."""
        key = (topic, partition)
        plog = self._logs.get(key)
        if plog is not None and not self._closed:
            return plog
        validate_topic(topic)
        validate_partition(partition)
        with self._lock:
            if self._closed:
                raise StoreClosedError("the store is closed")
            plog = self._logs.get(key)
            if plog is not None:
                return plog
            if self.read_only:
                directory = self._directory(topic, partition)
                if not os.path.isdir(directory):
                    raise KeyError(f"no partition {topic}-{partition}")
                plog = PartitionLog(directory, topic, partition, self.settings(topic), read_only=True)
            else:
                if not create:
                    raise KeyError(f"no partition {topic}-{partition}")
                settings = self.settings(topic)
                validate_partition(partition, settings.num_partitions)
                plog = PartitionLog(self._directory(topic, partition), topic, partition, settings)
            self._logs[key] = plog
            return plog

    def get_partition(self, topic: str, partition: int) -> PartitionLog | None:
        """The existing log of (topic, partition), or None — never creates one."""
        return self._logs.get((topic, partition))

    def topics(self) -> list[str]:
        return sorted({topic for topic, _ in self._logs})

    def partitions(self, topic: str) -> list[int]:
        return sorted(p for t, p in self._logs if t == topic)

    def logs(self) -> list[PartitionLog]:
        return [self._logs[key] for key in sorted(self._logs)]

    # ------------------------------------------------------------------------------ appends

    def _items(self, bodies: Iterable[bytes], attribute: str | None) -> list[tuple[bytes, int, int, int]]:
        items = []
        for body in bodies:
            flag, data = record.make_data(body, attribute)
            items.append((data, flag, self.ids.next_id(), -1))
        return items

    def append(self, topic: str, partition: int, body: bytes, *, attribute: str | None = None) -> Appended:
        """Append one message; returns its offset and id once durable (see the module doc)."""
        return self.append_many(topic, partition, [body], attribute=attribute)[0]

    def append_many(self, topic: str, partition: int, bodies: Iterable[bytes], *,
                    attribute: str | None = None) -> list[Appended]:
        """Append messages as one contiguous batch (all or nothing is written)."""
        return self.partition(topic, partition).append_many(self._items(bodies, attribute))

    def append_data(self, topic: str, partition: int, data: bytes, *, flag: int = 0,
                    msg_id: int | None = None, checksum: int = -1) -> Appended:
        """Append raw message data (attribute block + body, protocol §4.1) with its flag."""
        return self._append_data(topic, partition, data, flag=flag, msg_id=msg_id, checksum=checksum)

    def _append_data(self, topic: str, partition: int, data: bytes, *, flag: int = 0,
                     msg_id: int | None = None, checksum: int = -1) -> Appended:
        record.check_data(flag, data)
        plog = self.partition(topic, partition)
        return plog.append(bytes(data), flag=flag,
                           msg_id=self.ids.next_id() if msg_id is None else msg_id, checksum=checksum)

    async def append_async(self, topic: str, partition: int, body: bytes, *,
                           attribute: str | None = None) -> Appended:
        """Trio flavour of ``append``: the event loop never blocks on the disk.

        Cancelling the wait does not withdraw the append: the record may still be written."""
        bridge = _BRIDGE or _trio_bridge()
        plog = self._logs.get((topic, partition))
        if plog is None or self._closed:
            plog = await self._partition_async(topic, partition)
        if attribute is None and type(body) is bytes:
            flag, data = 0, body
        else:
            flag, data = record.make_data(body, attribute)
        direct = plog._direct
        if direct is not None:
            # Threshold mode: the record written from here in one compiled call — a page-cache
            # write, as the broker's put path does from its event loop; a sync that is due is
            # left to the writer thread (it runs without the write lock, so these writes go
            # on meanwhile); a roll or an error goes the queued way. Every call is a
            # cancellation point (a cancelled task writes nothing); the task yields to the
            # scheduler after every DIRECT_YIELD_EVERY-th direct append of the partition, so a
            # task appending in a loop lets the others run that often.
            await bridge.checkpoint_if_cancelled()
            done = direct.append(data, flag, None, -1, self.ids, True)
            if done is not None:
                if direct.records % DIRECT_YIELD_EVERY == 0:
                    await bridge.cancel_shielded_checkpoint()
                return done
        # trio_bridge.submit_async inlined: one coroutine frame fewer on every suspension and
        # resumption of the calling task.
        request = plog.submit([(data, flag, self.ids.next_id(), -1)], bridge.TrioSink.current(),
                              bridge.current_task())

        def abort(_raise_cancel: object) -> object:
            request.waiter = None
            return bridge.ABORT_SUCCEEDED

        await bridge.wait_task_rescheduled(abort)
        return request.first()

    async def append_many_async(self, topic: str, partition: int, bodies: Iterable[bytes], *,
                                attribute: str | None = None) -> list[Appended]:
        plog = await self._partition_async(topic, partition)
        return await _trio_bridge().submit_async(plog, self._items(bodies, attribute))

    async def _partition_async(self, topic: str, partition: int) -> PartitionLog:
        plog = self._logs.get((topic, partition))
        if plog is not None and not self._closed:
            return plog
        return await _trio_bridge().run_blocking(self.partition, topic, partition)

    # -------------------------------------------------------------------------------- reads

    def read(self, topic: str, partition: int, offset: int, max_bytes: int = 1024 * 1024) -> ReadResult:
        """Decode the durable messages from ``offset`` (a record boundary) within ``max_bytes``.

        Raises OffsetOutOfRangeError outside ``[min_offset, max_offset)`` (``max_offset`` is the
        normal "nothing new" case), CorruptRecordError on a bad record, KeyError for a partition
        that does not exist."""
        plog = self.partition(topic, partition, create=False)
        records, next_offset = plog.read_records(offset, max_bytes)
        messages = []
        for off, msg_id, flag, data in records:
            attribute, body = record.split_data(flag, data)
            messages.append(StoredMessage(topic, partition, off, msg_id, flag, attribute, body))
        return ReadResult(messages, next_offset)

    async def read_async(self, topic: str, partition: int, offset: int,
                         max_bytes: int = 1024 * 1024) -> ReadResult:
        return await _trio_bridge().run_blocking(self.read, topic, partition, offset, max_bytes)

    def slice(self, topic: str, partition: int, offset: int, max_bytes: int) -> Slice:
        """The raw byte range a ``get`` sends (see PartitionLog.slice)."""
        return self.partition(topic, partition, create=False).slice(offset, max_bytes)

    def min_offset(self, topic: str, partition: int) -> int:
        return self.partition(topic, partition, create=False).min_offset

    def max_offset(self, topic: str, partition: int) -> int:
        plog = self.partition(topic, partition, create=False)
        if self.read_only:
            plog.refresh()
        return plog.max_offset

    def nearest_offset(self, topic: str, partition: int, offset: int) -> int:
        return self.partition(topic, partition, create=False).nearest_offset(offset)

    def refresh(self) -> None:
        """Read-only stores: pick up new partitions, segments and records."""
        if not self.read_only:
            return
        self._load_new_partitions()
        for plog in list(self._logs.values()):
            plog.refresh()

    def _load_new_partitions(self) -> None:
        for entry in sorted(os.listdir(self.path)):
            try:
                parsed = parse_store_dir_name(entry)
            except ValueError:
                continue
            if parsed and parsed not in self._logs and os.path.isdir(os.path.join(self.path, entry)):
                try:
                    self.partition(*parsed)
                except (StoreLoadError, KeyError, ValueError):
                    continue  # created but not yet holding a segment

    # ------------------------------------------------------------------------ housekeeping

    def flush(self) -> None:
        """Make every appended record durable now."""
        if self.read_only:
            return
        for plog in list(self._logs.values()):
            plog.flush()

    def statistics(self) -> StoreStatistics:
        per = {plog.name: plog.statistics() for plog in self.logs()}
        values = per.values()
        return StoreStatistics(
            partitions=len(per), appends=sum(s.appends for s in values),
            records=sum(s.records for s in values), bytes_appended=sum(s.bytes_appended for s in values),
            batches=sum(s.batches for s in values), syncs=sum(s.syncs for s in values),
            io_errors=sum(s.io_errors for s in values), size_bytes=sum(s.size_bytes for s in values),
            per_partition=per)

    def close(self) -> None:
        """Refuse new appends, write and sync everything queued, answer it, close every file."""
        with self._lock:
            self._closed = True
            logs = list(self._logs.values())
        for plog in logs:
            plog.close()
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)

    async def aclose(self) -> None:
        await _trio_bridge().run_blocking(self.close)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> LogStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> LogStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        mode = "read-only" if self.read_only else "writable"
        return f"<LogStore {self.path!r} {mode} partitions={len(self._logs)}>"


_BRIDGE: types.ModuleType | None = None   # metaq_core.trio_bridge once imported


def _trio_bridge() -> types.ModuleType:
    """``metaq_core.trio_bridge``, imported on first use so that blocking users never load trio."""
    global _BRIDGE
    module = sys.modules.get("metaq_core.trio_bridge")
    if module is None:
        module = importlib.import_module("metaq_core.trio_bridge")
    _BRIDGE = module
    return module


def _check_settings(settings: LogSettings) -> None:
    if settings.num_partitions < 1:
        raise ValueError("num_partitions must be at least 1")
    if settings.max_segment_size < 1:
        raise ValueError("max_segment_size must be positive")
    if settings.max_transfer_size < 21:
        raise ValueError("max_transfer_size must hold at least one record header and a byte")


__all__ = ["LogStore", "ReadResult", "StoredMessage", "StoreStatistics", "THREAD_SINK", "ReadOnlyError"]

"""The raw baselines: what plain Python does with the same bytes and no engine in between.

* ``fdatasync_rate``: write 4 KiB + ``os.fdatasync`` in a loop — the disk's durable-write rate.
* ``writev_loop``: pre-encoded records written with one ``os.writev`` per batch, then
  ``os.fdatasync`` after every batch (group commit) or every N records (threshold mode).
* ``crc32_seconds``: ``zlib.crc32`` over a buffer in memory.
* ``thread_round_trip``: a bare Python thread hand-off (deque + Condition, answered through a
  ``threading.Event``) — the floor under any blocking call served by another thread. On this
  kind of VM it swings several-fold with the host's state, so each run records it.

Each function returns plain numbers (seconds, counts, bytes); the caller turns them into figures.
"""

from __future__ import annotations

import collections
import os
import threading
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024
APPEND_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC


@dataclass
class SyncRate:
    syncs: int
    elapsed: float
    latencies_ns: list[int]

    @property
    def per_second(self) -> float:
        return self.syncs / self.elapsed

    def latency_us(self, quantile: float) -> float:
        ordered = sorted(self.latencies_ns)
        index = min(len(ordered) - 1, int(quantile * len(ordered)))
        return ordered[index] / 1000.0


@dataclass
class WriteRun:
    records: int
    nbytes: int
    batches: int
    syncs: int
    elapsed: float

    @property
    def records_per_second(self) -> float:
        return self.records / self.elapsed

    @property
    def bytes_per_second(self) -> float:
        return self.nbytes / self.elapsed


def fdatasync_rate(path: str, duration: float, block: int = 4096) -> SyncRate:
    """Append ``block`` bytes and fdatasync, again and again, for ``duration`` seconds."""
    data = os.urandom(block)
    fd = os.open(path, APPEND_FLAGS, 0o644)
    latencies: list[int] = []
    clock = time.perf_counter_ns
    try:
        start = clock()
        deadline = start + int(duration * 1e9)
        now = start
        while now < deadline:
            before = now
            os.write(fd, data)
            os.fdatasync(fd)
            now = clock()
            latencies.append(now - before)
    finally:
        os.close(fd)
        os.unlink(path)
    return SyncRate(len(latencies), (now - start) / 1e9, latencies)


def _chunks(buffers: Sequence[bytes]) -> list[Sequence[bytes]]:
    """Split a batch into pieces ``os.writev`` accepts (at most IOV_MAX buffers each)."""
    return [buffers[i:i + IOV_MAX] for i in range(0, len(buffers), IOV_MAX)]


def writev_loop(path: str, records: Sequence[bytes], duration: float,
                sync_every: int | None = None) -> WriteRun:
    """Write ``records`` as one batch (one ``os.writev``) again and again for ``duration`` s.

    ``sync_every=None``: fdatasync after every batch (group commit). Otherwise fdatasync once at
    least ``sync_every`` records were written since the last one (threshold mode).
    """
    pieces = _chunks(records)
    batch_records = len(records)
    batch_bytes = sum(len(r) for r in records)
    fd = os.open(path, APPEND_FLAGS, 0o644)
    batches = syncs = unsynced = 0
    writev, fdatasync, clock = os.writev, os.fdatasync, time.perf_counter
    try:
        start = clock()
        deadline = start + duration
        now = start
        while now < deadline:
            for piece in pieces:
                writev(fd, piece)
            batches += 1
            unsynced += batch_records
            if sync_every is None or unsynced >= sync_every:
                fdatasync(fd)
                syncs += 1
                unsynced = 0
            now = clock()
    finally:
        os.close(fd)
        os.unlink(path)
    return WriteRun(records=batches * batch_records, nbytes=batches * batch_bytes, batches=batches,
                    syncs=syncs, elapsed=now - start)


def crc32_seconds(data: bytes) -> float:
    """Seconds ``zlib.crc32`` takes over all of ``data`` (one call)."""
    start = time.perf_counter()
    zlib.crc32(data)
    return time.perf_counter() - start


def thread_round_trip(duration: float) -> tuple[int, float]:
    """Hand requests to a worker thread and wait for each answer; returns (round trips, s)."""
    queue: collections.deque[threading.Event | None] = collections.deque()
    cond = threading.Condition()

    def worker() -> None:
        while True:
            with cond:
                while not queue:
                    cond.wait()
                event = queue.popleft()
            if event is None:
                return
            event.set()

    thread = threading.Thread(target=worker, name="bench-round-trip", daemon=True)
    thread.start()
    count = 0
    start = time.perf_counter()
    deadline = start + duration
    now = start
    while now < deadline:
        event = threading.Event()
        with cond:
            queue.append(event)
            cond.notify()
        event.wait()
        count += 1
        now = time.perf_counter()
    with cond:
        queue.append(None)
        cond.notify()
    thread.join()
    return count, now - start

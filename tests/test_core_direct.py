"""Threshold-mode blocking appends: the compiled one-call path (``metaq_core._append``) must
write exactly what the Python path writes, keep the log's bookkeeping, decline what it cannot do,
and fail the log on a write error. Under ``METAQ_PURE_PYTHON=1`` the same tests run the Python
path (there is no direct path then)."""

from __future__ import annotations

import os
import struct
import threading
import zlib

import pytest

from metaq_core import InvalidMessageError, LogStore, StorageIOError
from metaq_core.partition import _append

COMPILED = _append is not None
SEGMENT = "00000000000000000000.meta"


def parse(path: str) -> list[tuple[int, int, int, bytes]]:
    """(offset, msg_id, flag, data) of every valid record of a segment file (protocol §4.4)."""
    with open(path, "rb") as f:
        buf = f.read()
    out, pos = [], 0
    while len(buf) - pos >= 20:
        length, crc, msg_id, flag = struct.unpack_from(">iiqi", buf, pos)
        data = buf[pos + 20:pos + 20 + length]
        assert len(data) == length and zlib.crc32(data) & 0x7FFFFFFF == crc, pos
        out.append((pos, msg_id, flag, data))
        pos += 20 + length
    assert pos == len(buf)
    return out


def test_append_data_in_threshold_mode_writes_what_it_returns(data_dir):
    with LogStore(data_dir, unflush_threshold=5, unflush_interval=60_000) as store:
        plog = store.partition("t", 0)
        assert (plog._direct is not None) == COMPILED
        attr = struct.pack(">i", 3) + b"k=v" + b"body"
        placed = [store.append_data("t", 0, b"m%d" % i) for i in range(12)]
        placed.append(store.append_data("t", 0, attr, flag=1))
        placed.append(store.append_data("t", 0, b"given", msg_id=77, checksum=zlib.crc32(b"given") & 0x7FFFFFFF))
        placed.append(plog.append(b"through the log", flag=4, msg_id=99))
        offsets = [p.offset for p in placed]
        assert offsets == sorted(offsets) and offsets[0] == 0
        for before, after in zip(placed, placed[1:]):
            assert after.offset == before.offset + before.size
        assert placed[-3].size == 20 + len(attr)
        assert placed[-2].msg_id == 77 and placed[-1].msg_id == 99
        ids = [p.msg_id for p in placed[:13]]
        assert len(set(ids)) == 13 and ids == sorted(ids)
        stats = plog.statistics()
        assert stats.records == stats.appends == len(placed) == stats.message_count
        assert stats.bytes_appended == sum(p.size for p in placed) == stats.size_bytes
        assert stats.syncs == len(placed) // 6  # every 6th unflushed append syncs (threshold 5)
        store.flush()
        assert plog.max_offset == stats.size_bytes
        messages = store.read("t", 0, 0).messages
        assert [m.offset for m in messages] == offsets
        assert messages[12].attribute == "k=v" and messages[12].body == b"body"
    records = parse(os.path.join(data_dir, "t-0", SEGMENT))
    assert [(o, i, f) for o, i, f, _d in records] == [
        (p.offset, p.msg_id, f) for p, f in zip(placed, [0] * 12 + [1, 0, 4])]
    assert records[13][3] == b"given"


def test_a_malformed_attribute_block_is_refused_and_nothing_is_written(data_dir):
    with LogStore(data_dir, unflush_threshold=100) as store:
        store.append_data("t", 0, b"first")
        store.append_data("t", 0, b"second")
        for bad in (b"", b"\x00\x00", struct.pack(">i", 9) + b"abc", struct.pack(">i", -1) + b"x"):
            with pytest.raises(InvalidMessageError):
                store.append_data("t", 0, bad, flag=1)
        assert store.partition("t", 0).statistics().records == 2
        assert store.append_data("t", 0, b"third").offset == 2 * 20 + len(b"firstsecond")


def test_large_records_and_segment_rolls_take_the_python_path(data_dir):
    with LogStore(data_dir, unflush_threshold=1000, max_segment_size=4096,
                  max_transfer_size=200_000) as store:
        placed = [store.append_data("t", 0, bytes([i % 251]) * (100 + 37 * i)) for i in range(60)]
        placed.append(store.append_data("t", 0, b"x" * 100_000))
        plog = store.partition("t", 0)
        assert len(plog.segments()) > 5
        for before, after in zip(placed, placed[1:]):
            assert after.offset == before.offset + before.size
        store.flush()
        offset, seen = 0, []
        while offset < plog.max_offset:
            result = store.read("t", 0, offset)
            seen.extend(m.body for m in result.messages)
            offset = result.next_offset
        assert seen == [bytes([i % 251]) * (100 + 37 * i) for i in range(60)] + [b"x" * 100_000]


def run_threads(target, count: int) -> None:
    """Run ``target(k)`` for k in 0..count-1, each in its own thread, and wait for all."""
    workers = [threading.Thread(target=target, args=(k,)) for k in range(count)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()

def test_concurrent_threads_append_contiguous_valid_records(data_dir):
    threads, each = 8, 1500
    results: list[list] = [[] for _ in range(threads)]

    def appender(k: int) -> None:
        for i in range(each):
            results[k].append(store.append_data("t", 0, b"%d:%d" % (k, i) * (1 + i % 7)))

    with LogStore(data_dir, unflush_threshold=50, unflush_interval=5) as store:
        run_threads(appender, threads)
        stats = store.partition("t", 0).statistics()
        assert stats.records == threads * each
    placed = sorted((p for r in results for p in r), key=lambda p: p.offset)
    records = parse(os.path.join(data_dir, "t-0", SEGMENT))
    assert [(o, i) for o, i, _f, _d in records] == [(p.offset, p.msg_id) for p in placed]
    for k in range(threads):  # each thread's records in its own order
        mine = [p.offset for p in results[k]]
        assert mine == sorted(mine)


def test_a_write_error_on_the_direct_path_fails_the_log(data_dir):
    with LogStore(data_dir, unflush_threshold=1000) as store:
        store.append_data("t", 0, b"one")
        good = store.append_data("t", 0, b"two")
        plog = store.partition("t", 0)
        tail = plog.segments()[-1]
        full = os.open("/dev/full", os.O_WRONLY)
        saved = os.dup(tail.fileno())
        try:
            os.dup2(full, tail.fileno())  # every write now fails with ENOSPC
            with pytest.raises(StorageIOError):
                store.append_data("t", 0, b"three")
            with pytest.raises(StorageIOError, match="read-only"):
                store.append_data("t", 0, b"four")
            with pytest.raises(StorageIOError):
                plog.append(b"five")
        finally:
            os.dup2(saved, tail.fileno())
            os.close(saved)
            os.close(full)
        stats = plog.statistics()
        assert stats.io_errors == 1 and stats.records == 2
        assert stats.size_bytes == good.offset + good.size


def test_trio_tasks_append_in_threshold_mode_and_let_others_run(data_dir):
    import trio

    async def main(store) -> tuple[list, int]:
        placed: list = []
        ticks = 0

        async def appender(k: int) -> None:
            for i in range(1000):
                placed.append(await store.append_async("t", 0, b"%d-%d" % (k, i)))

        async def ticker() -> None:  # must get to run while the appenders loop
            nonlocal ticks
            while True:
                ticks += 1
                await trio.sleep(0)

        async with trio.open_nursery() as outer:
            outer.start_soon(ticker)
            async with trio.open_nursery() as nursery:
                for k in range(8):
                    nursery.start_soon(appender, k)
            outer.cancel_scope.cancel()
        return placed, ticks

    with LogStore(data_dir, unflush_threshold=100, unflush_interval=60_000) as store:
        placed, ticks = trio.run(main, store)
        # each scheduler round runs every appender for up to DIRECT_YIELD_EVERY (64) appends
        assert ticks >= 8
        assert store.partition("t", 0).statistics().records == 8 * 1000
    records = parse(os.path.join(data_dir, "t-0", SEGMENT))
    placed.sort(key=lambda p: p.offset)
    assert [(o, i) for o, i, _f, _d in records] == [(p.offset, p.msg_id) for p in placed]


def test_a_cancelled_trio_append_writes_nothing_on_the_direct_path(data_dir):
    """(The queued path submits before it waits: a cancel there may still see the record
    written, as documented.)"""
    import trio

    async def main(store) -> None:
        await store.append_async("t", 0, b"one")
        await store.append_async("t", 0, b"two")
        with trio.CancelScope() as scope:
            scope.cancel()
            await store.append_async("t", 0, b"never")
        assert scope.cancelled_caught
        await store.append_async("t", 0, b"three", attribute="k=v")

    with LogStore(data_dir, unflush_threshold=100) as store:
        trio.run(main, store)
        store.flush()
        bodies = [m.body for m in store.read("t", 0, 0).messages]
        if COMPILED:
            assert bodies == [b"one", b"two", b"three"]
        else:
            assert bodies in ([b"one", b"two", b"three"], [b"one", b"two", b"never", b"three"])


def test_syncs_left_to_the_writer_thread_cover_every_record(data_dir):
    """Trio appends past a small threshold: the writer thread syncs (without the write lock)
    while the tasks go on writing; every record ends up durable and counted once."""
    import trio

    async def main(store) -> None:
        async def appender(k: int) -> None:
            for i in range(400):
                await store.append_async("t", 0, b"%d/%d" % (k, i) * 20)

        async with trio.open_nursery() as nursery:
            for k in range(16):
                nursery.start_soon(appender, k)

    with LogStore(data_dir, unflush_threshold=10, unflush_interval=60_000) as store:
        trio.run(main, store)
        plog = store.partition("t", 0)
        stats = plog.statistics()
        assert stats.records == 16 * 400
        assert plog.max_offset <= stats.size_bytes
        assert plog._unflushed <= 2 * 10 + 16  # past twice the threshold appends wait (+ a batch)
        store.flush()
        assert plog.max_offset == stats.size_bytes and plog._unflushed == 0
    with LogStore(data_dir) as store:
        stats = store.partition("t", 0).statistics()
        assert stats.message_count == 16 * 400 and stats.recovered_bytes_truncated == 0


@pytest.mark.skipif(not COMPILED, reason="the direct path is compiled only")
def test_a_busy_event_loop_hands_the_gil_to_the_writer_for_each_due_sync(data_dir):
    """An event loop that never blocks: with a 10 s switch interval the writer thread, woken
    for a due sync and back from its fdatasync, gets the GIL only when the appends hand it
    over. Without that, every cycle ran on to twice the threshold and into the queued path
    (the loop then waits for a round): about one sync per two thresholds. The threshold is
    large enough for an fdatasync to end within that many appends. Retried: the hand-over waits
    for the woken writer at most 0.2 ms, which a loaded machine may miss."""
    import sys

    import trio

    threshold, appends = 1000, 1000 * 40

    async def main(store) -> None:
        with trio.move_on_after(10):  # without the hand-over: a 10 s wait per cycle
            for i in range(appends):
                await store.append_async("t", 0, b"%d" % i)

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(10.0)
    try:
        outcomes = []
        for attempt in range(3):
            path = os.path.join(data_dir, str(attempt))
            with LogStore(path, unflush_threshold=threshold, unflush_interval=0) as store:
                trio.run(main, store)
                plog = store.partition("t", 0)
                stats = plog.statistics()
                outcomes.append((stats.records, plog._counters["appends"], stats.syncs,
                                 plog._direct.writer_due))
            records, queued, syncs, _due = outcomes[-1]
            if records == appends and queued <= 3 and syncs >= 30:
                break
    finally:
        sys.setswitchinterval(old_interval)
    records, queued, syncs, writer_due = outcomes[-1]
    assert records == appends, outcomes  # all in well under 10 s
    assert queued <= 3, outcomes     # the appends took the direct path, not the queued one
    assert syncs >= 30, outcomes     # about one sync per threshold (40), not per two (20)
    assert writer_due is False


@pytest.mark.skipif(not COMPILED, reason="the direct path is compiled only")
def test_a_writer_that_never_comes_costs_one_bounded_wait(data_dir):
    import time

    import trio

    with LogStore(data_dir, unflush_threshold=1000) as store:
        trio.run(store.append_async, "t", 0, b"first")
        direct = store.partition("t", 0)._direct
        direct.writer_due = True  # as if a writer had been woken, and none takes the GIL
        start = time.monotonic()
        placed = trio.run(store.append_async, "t", 0, b"second")
        assert time.monotonic() - start < 1.0
        assert direct.writer_due is False and placed.offset == 20 + len(b"first")


def test_group_commit_append_data_from_threads_is_durable_when_answered(data_dir):
    threads, each = 24, 40
    results: list[list] = [[] for _ in range(threads)]
    attr = struct.pack(">i", 3) + b"a=b"

    def appender(k: int) -> None:
        for i in range(each):
            if i % 5 == 0:
                results[k].append(store.append_data("t", 0, attr + b"%d.%d" % (k, i), flag=1))
            else:
                results[k].append(store.append_data("t", 0, b"%d.%d" % (k, i)))
            assert store.partition("t", 0).max_offset >= results[k][-1].offset + results[k][-1].size

    with LogStore(data_dir) as store:
        store.append_data("t", 0, b"first")
        with pytest.raises(InvalidMessageError):
            store.append_data("t", 0, struct.pack(">i", 99) + b"short", flag=1)
        run_threads(appender, threads)
        stats = store.partition("t", 0).statistics()
        assert stats.records == threads * each + 1 and stats.max_batch > 1
    placed = sorted((p for r in results for p in r), key=lambda p: p.offset)
    records = parse(os.path.join(data_dir, "t-0", SEGMENT))[1:]
    assert all((f == 1) == d.startswith(attr) for _o, _i, f, d in records)
    assert sum(1 for _o, _i, f, _d in records if f == 1) == threads * ((each + 4) // 5)
    assert [(o, i) for o, i, _f, _d in records] == [(p.offset, p.msg_id) for p in placed]

"""The GIL hand-off from a busy event loop to a writer thread after its fdatasync
(``_segment.yield_to_writers``, called by the broker's connection readers after each receive), and
from the condition an idle writer sleeps on once it is notified."""

from __future__ import annotations

import os
import sys
import threading
import time

from metaq_core import _segment


def test_nothing_to_yield_without_a_waiting_writer():
    assert _segment.yield_to_writers() is False


def test_a_writer_waiting_after_its_fdatasync_gets_the_gil_from_a_busy_thread(tmp_path):
    items = [(b"x" * (1 << 20), 0, i + 1, -1) for i in range(4)]  # 4 MiB: a long fdatasync
    fd = os.open(tmp_path / "segment", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    old_interval = sys.getswitchinterval()
    # With a 10 s switch interval the waiting writer can only get the GIL when this thread
    # gives it up, and the busy loop below gives it up only through yield_to_writers.
    sys.setswitchinterval(10.0)
    try:
        handed_over = 0
        for _attempt in range(3):
            started, done = threading.Event(), []

            def writer() -> None:
                started.set()
                done.append(_segment.append_records(fd, items, True))

            thread = threading.Thread(target=writer)
            thread.start()
            started.wait()
            deadline = time.monotonic() + 30.0
            while not done and time.monotonic() < deadline:
                if _segment.yield_to_writers():
                    handed_over += 1
            thread.join()
            assert done == [[20 + (1 << 20)] * 4]
            if handed_over:
                break
        assert handed_over >= 1
        assert os.fstat(fd).st_size == (_attempt + 1) * 4 * (20 + (1 << 20))
    finally:
        sys.setswitchinterval(old_interval)
        os.close(fd)


def test_a_writer_latch_times_out_or_opens():
    latch = _segment.WriterLatch()
    started = time.monotonic()
    assert latch.acquire(True, 0.05) is False
    assert time.monotonic() - started >= 0.04
    assert latch.acquire(False) is False
    latch.release()
    assert latch.acquire(True, 5.0) is True


def test_an_idle_writer_woken_from_its_condition_gets_the_gil_from_a_busy_thread():
    """The partition writer sleeps on ``_WriterCondition``: once notified it is marked as waiting
    for the GIL, so the busy thread that notified it hands the GIL over through
    ``yield_to_writers`` (with a plain ``threading.Condition`` the writer would wait until this
    thread blocks, or for the switch interval)."""
    from metaq_core.partition import _WriterCondition

    cond = _WriterCondition(threading.Lock())
    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(10.0)  # the writer can only get the GIL by hand-over
    try:
        woken: list[float] = []
        ready = threading.Event()

        def writer() -> None:
            with cond:
                ready.set()
                woken.append(cond.wait(30.0))

        thread = threading.Thread(target=writer)
        thread.start()
        ready.wait()
        with cond:  # the writer is in its wait once the lock is free again
            cond.notify()
        handed_over = 0
        deadline = time.monotonic() + 20.0
        while not woken and time.monotonic() < deadline:
            if _segment.yield_to_writers():
                handed_over += 1
        thread.join()
        assert woken == [True] and handed_over >= 1
        # a wait that times out returns False and leaves no waiter behind
        with cond:
            assert cond.wait(0.01) is False
            assert not cond._waiters
    finally:
        sys.setswitchinterval(old_interval)

"""The GIL hand-off from a busy event loop to a writer thread after its fdatasync
(``_segment.yield_to_writers``, called by the broker's connection readers after each receive)."""

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

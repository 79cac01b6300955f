"""The compiled latches of blocking appenders (``metaq_core._latch``): a ``Latch`` waits until
released, a ``Wakeups`` opens a round's latches exactly once — by the writer's next vectored
write, by ``open()``, or when it is freed — and never leaves a waiter behind."""

from __future__ import annotations

import _thread
import gc
import os
import threading
import time

import pytest

from metaq_core.partition import _latch, new_latch

pytestmark = pytest.mark.skipif(_latch is None, reason="compiled only (METAQ_PURE_PYTHON=1)")


class Request:
    def __init__(self, waiter) -> None:
        self.waiter = waiter


def waiting_threads(latches) -> tuple[list[threading.Thread], list[int]]:
    done: list[int] = []

    def wait(k: int) -> None:
        latches[k].acquire()
        done.append(k)

    threads = [threading.Thread(target=wait, args=(k,)) for k in range(len(latches))]
    for t in threads:
        t.start()
    return threads, done


def test_new_latch_is_the_compiled_latch():
    assert type(new_latch()) is _latch.Latch


def test_a_latch_waits_until_released():
    latch = _latch.Latch()
    threads, done = waiting_threads([latch])
    time.sleep(0.05)
    assert done == []
    latch.release()
    threads[0].join(5)
    assert done == [0]


def test_a_keyboard_interrupt_reaches_a_waiting_main_thread():
    import signal

    assert threading.current_thread() is threading.main_thread()
    latch = _latch.Latch()
    timer = threading.Timer(0.05, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT))
    rescue = threading.Timer(2.0, latch.release)  # a wait deaf to signals ends here, and fails
    timer.start()
    rescue.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            latch.acquire()
    finally:
        timer.join()
        rescue.cancel()


def test_wakeups_open_every_latch_once_and_release_other_waiters_at_once():
    latches = [_latch.Latch() for _ in range(5)]
    plain = _thread.allocate_lock()
    plain.acquire()
    threads, done = waiting_threads(latches)
    wake = _latch.Wakeups([Request(l) for l in latches] + [Request(plain)])
    assert not plain.locked()          # not a Latch: released when the round is taken
    assert len(wake) == 5
    time.sleep(0.05)
    assert done == []                  # the latches wait for the opening
    wake.open()
    wake.open()                        # nothing left to open
    assert len(wake) == 0
    for t in threads:
        t.join(5)
    assert sorted(done) == list(range(5))


def test_wakeups_freed_unopened_open_their_latches():
    latches = [_latch.Latch() for _ in range(3)]
    threads, done = waiting_threads(latches)
    wake = _latch.Wakeups([Request(l) for l in latches])
    del latches
    time.sleep(0.05)
    assert done == []
    del wake
    gc.collect()
    for t in threads:
        t.join(5)
    assert sorted(done) == [0, 1, 2]


def test_append_records_opens_the_previous_round_first(tmp_path):
    from metaq_core import _segment

    latches = [_latch.Latch() for _ in range(4)]
    threads, done = waiting_threads(latches)
    wake = _latch.Wakeups([Request(l) for l in latches])
    fd = os.open(tmp_path / "segment", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        assert _segment.append_records(fd, [(b"x", 0, 1, -1)], True, wake) == [21]
    finally:
        os.close(fd)
    assert len(wake) == 0
    for t in threads:
        t.join(5)
    assert sorted(done) == [0, 1, 2, 3]

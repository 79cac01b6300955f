"""Append self-describing records from several threads until killed (used by tests/test_crash.py).

usage: crash_writer.py DATA_DIR RUN THREADS UNFLUSH_THRESHOLD MAX_SEGMENT_SIZE

Each thread ``w`` appends records ``seq = 0, 1, 2 ...`` to topic ``crash`` partition 0 whose
body is ``expected_body(run, w, seq)``; only after ``append`` has returned (= acknowledged) it
writes the line ``"<offset> <w> <seq>\\n"`` to stdout with one ``os.write`` (atomic on a pipe),
so every line the parent reads names an acknowledged record. The first line is ``ready``.
"""

from __future__ import annotations

import hashlib
import os
import random
import sys
import threading

TOPIC = "crash"


def expected_body(run: int, writer: int, seq: int) -> bytes:
    """The body of record (run, writer, seq): a readable prefix plus 1..3000 bytes derived from it."""
    prefix = f"{run}:{writer}:{seq}:".encode()
    size = random.Random(prefix).randint(1, 3000)
    block = hashlib.sha256(prefix).digest()
    return prefix + (block * (size // len(block) + 1))[:size]


def main() -> None:
    from metaq_core import LogStore

    directory, run, threads, threshold, max_segment = sys.argv[1:6]
    store = LogStore(directory, unflush_threshold=int(threshold), max_segment_size=int(max_segment))
    os.write(1, b"ready\n")

    def writer(w: int) -> None:
        seq = 0
        try:
            while True:
                where = store.append(TOPIC, 0, expected_body(int(run), w, seq))
                os.write(1, f"{where.offset} {w} {seq}\n".encode())
                seq += 1
        except BaseException as exc:  # anything but SIGKILL ending a writer is a failure
            os.write(2, f"writer {w} failed at seq {seq}: {exc!r}\n".encode())
            os._exit(3)

    workers = [threading.Thread(target=writer, args=(w,), daemon=True) for w in range(int(threads))]
    for t in workers:
        t.start()
    for t in workers:
        t.join()


if __name__ == "__main__":
    main()

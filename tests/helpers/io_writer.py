"""Append under a file-size limit until the kernel refuses a write (used by tests/test_io_failure.py).

usage: io_writer.py '<json config>'

config: dir, limit (bytes, RLIMIT_FSIZE), threshold (unflush_threshold), mode ("sequential",
"batch" or "concurrent"), sizes (data sizes for sequential/batch), threads, seed.

With RLIMIT_FSIZE set and SIGXFSZ ignored, a write that would pass ``limit`` is cut short by the
kernel and the next one fails with EFBIG: a real I/O error, partial writes included. The engine's
``_segment.append_records`` is wrapped (the real one still does the write) only to record which
records the failing vectored write carried. Results go to stdout as one JSON object.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import signal
import sys
import threading

TOPIC = "io"


def body_for(tag: str, size: int) -> bytes:
    """A body of exactly ``size`` bytes (>= len(tag) + 1) starting with ``tag:``."""
    prefix = f"{tag}:".encode()
    block = hashlib.sha256(prefix).digest()
    n = size - len(prefix)
    return prefix + (block * (n // len(block) + 1))[:n]


def tag_of(body: bytes) -> str:
    return body.split(b":", 1)[0].decode()


def main() -> None:
    config = json.loads(sys.argv[1])
    limit = config["limit"]
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    from metaq_core import LogStore, StorageIOError, _segment

    failing: list[dict] = []
    real_append = _segment.append_records

    def recording_append(fd, items, sync=False, wake=None):
        try:
            return real_append(fd, items, sync, wake)
        except _segment.BatchWriteError as exc:
            failing.append({
                "tags": [tag_of(item[0]) for item in items],
                "bytes": sum(20 + len(item[0]) for item in items),
                "written": exc.written, "errno": exc.errno,
                "position": os.fstat(fd).st_size,
            })
            raise

    _segment.append_records = recording_append

    directory = config["dir"]
    store = LogStore(directory, unflush_threshold=config["threshold"])
    acked: list[list] = []        # [offset, size, tag]
    failed: list[dict] = []       # {"tags": [...], "type", "message", "errno", "cause"}
    lock = threading.Lock()

    def error_info(tags: list[str], exc: BaseException) -> dict:
        cause = exc.__cause__
        return {"tags": tags, "type": type(exc).__name__, "message": str(exc),
                "storage_io": isinstance(exc, StorageIOError),
                "cause": type(cause).__name__ if cause is not None else None,
                "errno": getattr(cause, "errno", None) if cause is not None else getattr(exc, "errno", None),
                "written": getattr(cause, "written", None)}

    def append_group(tags: list[str], sizes: list[int]) -> bool:
        bodies = [body_for(t, s) for t, s in zip(tags, sizes)]
        try:
            results = store.append_many(TOPIC, 0, bodies)
        except Exception as exc:  # noqa: BLE001 - reported to the test
            with lock:
                failed.append(error_info(tags, exc))
            return False
        with lock:
            for tag, where in zip(tags, results):
                acked.append([where.offset, where.size, tag])
        return True

    mode = config["mode"]
    if mode == "sequential":
        for i, size in enumerate(config["sizes"]):
            if not append_group([f"s{i}"], [size]):
                break
    elif mode == "batch":
        # Singles first, then one append of many records that must cross the limit.
        sizes = config["sizes"]
        singles = config["singles"]
        for i in range(singles):
            append_group([f"s{i}"], [sizes[i]])
        append_group([f"b{i}" for i in range(singles, len(sizes))], sizes[singles:])
    elif mode == "concurrent":
        stop = threading.Event()

        def worker(w: int) -> None:
            rng = random.Random(config["seed"] * 1000 + w)
            n = 0
            while not stop.is_set():
                k = rng.randint(2, 5)
                tags = [f"w{w}.{n + j}" for j in range(k)]
                n += k
                if not append_group(tags, [rng.randint(40, 400) for _ in range(k)]):
                    stop.set()
                    return

        workers = [threading.Thread(target=worker, args=(w,)) for w in range(config["threads"])]
        for t in workers:
            t.start()
        for t in workers:
            t.join(60)
    else:
        raise SystemExit(f"unknown mode {mode}")

    later = []
    for i in range(3):
        try:
            store.append(TOPIC, 0, body_for(f"late{i}", 50))
            later.append({"type": None, "message": "accepted"})
        except Exception as exc:  # noqa: BLE001
            later.append(error_info([f"late{i}"], exc))

    plog = store.get_partition(TOPIC, 0)
    segment = plog.segments()[-1].path
    report = {
        "acked": sorted(acked), "failed": failed, "failing_writes": failing, "later": later,
        "file_size": os.path.getsize(segment), "segments": len(plog.segments()),
        "max_offset": store.max_offset(TOPIC, 0),
        "stats": {k: getattr(store.statistics().per_partition[f"{TOPIC}-0"], k)
                  for k in ("io_errors", "syncs", "appends", "records", "message_count", "size_bytes")},
    }
    readback: list[list] = []
    try:
        offset = 0
        while offset < store.max_offset(TOPIC, 0):
            result = store.read(TOPIC, 0, offset)
            for m in result.messages:
                readback.append([m.offset, tag_of(m.body), m.body == body_for(tag_of(m.body), len(m.body))])
            offset = result.next_offset
        report["read_error"] = None
    except Exception as exc:  # noqa: BLE001
        report["read_error"] = f"{type(exc).__name__}: {exc}"
    report["readback"] = readback
    report["read_first"] = None
    if acked:
        try:
            first = store.read(TOPIC, 0, 0).messages[0]
            report["read_first"] = [first.offset, tag_of(first.body)]
        except Exception as exc:  # noqa: BLE001
            report["read_first"] = f"{type(exc).__name__}: {exc}"
    store.close()
    report["file_size_after_close"] = os.path.getsize(segment)
    sys.stdout.write(json.dumps(report))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

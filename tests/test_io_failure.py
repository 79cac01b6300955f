"""A real write error (broker.md §1.8.2 recommendation: fail the batch and every later append, cut
the file back, go read-only): a subprocess appends under ``RLIMIT_FSIZE`` with SIGXFSZ ignored, so
the kernel cuts the write that crosses the limit short and fails the rest with EFBIG. The
subprocess (``tests/helpers/io_writer.py``) reports what it saw as JSON; this process then reopens
the store without a limit and checks that every acknowledged record, and nothing else, is there.

Also the raw error path of the Cython writer on ``/dev/full`` (ENOSPC).
"""

from __future__ import annotations

import errno
import json
import os
import struct
import subprocess
import sys
import zlib

import pytest

from metaq_core import LogStore, _segment

HERE = os.path.dirname(os.path.abspath(__file__))
WRITER = os.path.join(HERE, "helpers", "io_writer.py")
ROOT = os.path.dirname(HERE)
TOPIC = "io"
SEGMENT = "00000000000000000000.meta"

sys.path.insert(0, os.path.join(HERE, "helpers"))
from io_writer import body_for, tag_of  # noqa: E402

pytestmark = pytest.mark.timeout(120)

MODES = [pytest.param(0, id="group-commit"), pytest.param(1000, id="threshold")]


def run_writer(config: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, WRITER, json.dumps(config)], capture_output=True,
                          env=env, cwd=ROOT, timeout=90)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    return json.loads(proc.stdout)


def parse_file(path: str) -> tuple[list[tuple[int, bytes]], int, int]:
    """(records as (offset, data), end of the last valid record, file length) — protocol §4.4."""
    with open(path, "rb") as f:
        buf = f.read()
    out, pos = [], 0
    while len(buf) - pos >= 20:
        length, crc = struct.unpack_from(">ii", buf, pos)
        if length < 0 or pos + 20 + length > len(buf):
            break
        data = buf[pos + 20:pos + 20 + length]
        if zlib.crc32(data) & 0x7FFFFFFF != crc:
            break
        out.append((pos, data))
        pos += 20 + length
    return out, pos, len(buf)


def check_in_process(report: dict, limit: int, group_commit: bool) -> int:
    """What the failing process saw; returns the end of the last acknowledged record."""
    acked = report["acked"]
    assert acked, "nothing was acknowledged before the limit"
    position = 0
    for offset, size, _tag in acked:
        assert offset == position, f"acknowledged records are not contiguous at {offset}"
        position += size
    end = position
    assert end <= limit

    # Exactly one vectored write failed, with EFBIG, and it could not have fitted.
    assert len(report["failing_writes"]) == 1, report["failing_writes"]
    failing = report["failing_writes"][0]
    assert failing["errno"] == errno.EFBIG
    assert failing["bytes"] > limit - end
    assert failing["position"] == end + failing["written"]  # what reached the file before the cut
    if failing["written"]:
        assert failing["position"] == limit  # the kernel wrote up to the limit, then refused

    # The appends of the failing write got the I/O error itself ...
    io_failed = [f for f in report["failed"] if "read-only" not in f["message"]]
    assert io_failed, report["failed"]
    for f in io_failed:
        assert "File too large" in f["message"], f["message"]
        assert f["storage_io"] and f["type"] == "StorageIOError", f
        assert f["errno"] == errno.EFBIG and f["cause"] == "BatchWriteError", f
        assert SEGMENT in f["message"] and TOPIC in f["message"], f["message"]
    failed_tags = {t for f in report["failed"] for t in f["tags"]}
    assert set(failing["tags"]) <= {t for f in io_failed for t in f["tags"]}
    assert not failed_tags & {a[2] for a in acked}

    # ... and every later append is refused: the partition is read-only now.
    assert len(report["later"]) == 3
    for f in report["later"]:
        assert f["type"] == "StorageIOError" and f["storage_io"], f
        assert "read-only" in f["message"] and "File too large" in f["message"], f["message"]
    for f in report["failed"]:  # appends submitted after the failure: refused up front
        assert f["type"] == "StorageIOError", f
        if f not in io_failed:
            assert "read-only" in f["message"] and "File too large" in f["message"], f["message"]

    # The file was cut back to the end of the last good record, and stays so after close.
    assert report["file_size"] == end == report["file_size_after_close"]
    assert report["stats"]["io_errors"] == 1
    assert report["stats"]["size_bytes"] == end
    assert report["segments"] == 1

    if group_commit:
        # Acknowledged = durable = readable: every earlier record still reads back intact.
        assert report["max_offset"] == end
        assert report["read_error"] is None, report["read_error"]
        assert [(o, t) for o, t, _ok in report["readback"]] == [(a[0], a[2]) for a in acked]
        assert all(ok for _o, _t, ok in report["readback"])
    return end


def check_reopened(directory: str, report: dict) -> None:
    """Reopen without a limit: exactly the acknowledged records, intact; appends work again."""
    acked = report["acked"]
    end = acked[-1][0] + acked[-1][1]
    failed_tags = {t for f in report["failed"] for t in f["tags"]}
    segment = os.path.join(directory, f"{TOPIC}-0", SEGMENT)
    with LogStore(directory) as store:
        stats = store.statistics().per_partition[f"{TOPIC}-0"]
        assert stats.recovered_bytes_truncated == 0  # the engine had already cut the file back
        assert stats.message_count == len(acked)
        assert store.max_offset(TOPIC, 0) == end
        seen, offset = [], 0
        while offset < end:
            result = store.read(TOPIC, 0, offset)
            for m in result.messages:
                assert m.body == body_for(tag_of(m.body), len(m.body)), m.offset
                seen.append((m.offset, tag_of(m.body)))
            offset = result.next_offset
        assert offset == end
        assert seen == [(a[0], a[2]) for a in acked]
        assert not failed_tags & {t for _o, t in seen}
        where = store.append(TOPIC, 0, b"after the limit is gone")
        assert where.offset == end
    records, good, length = parse_file(segment)
    assert good == length == end + where.size
    assert len(records) == len(acked) + 1


# --------------------------------------------------------------------------------- sequential

@pytest.mark.parametrize("aligned", [False, True], ids=["partial-write", "at-a-boundary"])
@pytest.mark.parametrize("threshold", MODES)
def test_a_write_past_the_file_size_limit_fails_cleanly(data_dir, threshold, aligned):
    record = 20 + 77
    limit = record * 103 if aligned else record * 103 + 16
    report = run_writer({"dir": data_dir, "limit": limit, "threshold": threshold,
                         "mode": "sequential", "sizes": [77] * 200})
    end = check_in_process(report, limit, group_commit=threshold <= 0)
    assert end == record * 103
    assert len(report["acked"]) == 103
    assert report["failing_writes"][0]["written"] == (0 if aligned else 16)
    # One append failed with the I/O error, the loop stopped there.
    assert [f["tags"] for f in report["failed"]] == [["s103"]]
    check_reopened(data_dir, report)


def test_threshold_mode_records_acknowledged_before_a_write_error_stay_readable(data_dir):
    limit = 97 * 20 + 16
    report = run_writer({"dir": data_dir, "limit": limit, "threshold": 1000,
                         "mode": "sequential", "sizes": [77] * 40})
    acked = report["acked"]
    assert len(acked) == 20
    assert report["max_offset"] == report["file_size"] == 97 * 20
    assert report["read_error"] is None
    assert [(o, t) for o, t, _ok in report["readback"]] == [(a[0], a[2]) for a in acked]


# --------------------------------------------------------------------- multi-record batches

@pytest.mark.parametrize("threshold", MODES)
def test_a_failing_multi_record_append_fails_as_a_whole(data_dir, threshold):
    sizes = [77] * 50 + [60 + (i * 37) % 150 for i in range(100)]
    limit = 10007
    report = run_writer({"dir": data_dir, "limit": limit, "threshold": threshold,
                         "mode": "batch", "sizes": sizes, "singles": 50})
    end = check_in_process(report, limit, group_commit=threshold <= 0)
    assert end == 97 * 50
    failing = report["failing_writes"][0]
    assert failing["tags"] == [f"b{i}" for i in range(50, 150)]
    assert 0 < failing["written"] < failing["bytes"]  # a partial vectored write
    assert [f["tags"] for f in report["failed"]] == [failing["tags"]]
    check_reopened(data_dir, report)


@pytest.mark.parametrize("threshold", MODES)
def test_concurrent_appends_when_a_batch_write_fails(data_dir, threshold):
    # Many threads, each appending 2..5 records at a time, so the vectored write that crosses the
    # limit always carries several records (often of several appends). Every one of them fails.
    limit = 30011
    report = run_writer({"dir": data_dir, "limit": limit, "threshold": threshold,
                         "mode": "concurrent", "threads": 12, "seed": 7 + threshold})
    check_in_process(report, limit, group_commit=threshold <= 0)
    failing = report["failing_writes"][0]
    assert len(failing["tags"]) >= 2
    assert failing["written"] < failing["bytes"]
    # Each append is all or nothing: no append has some records acknowledged and some failed.
    acked_tags = {a[2] for a in report["acked"]}
    for f in report["failed"]:
        assert not set(f["tags"]) & acked_tags
    # Threads stop at their first error (the I/O error, or read-only for later ones).
    assert 1 <= len(report["failed"]) <= 12
    check_reopened(data_dir, report)


# ------------------------------------------------------------------------------- /dev/full

@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full")
def test_the_raw_writer_reports_enospc_on_dev_full():
    fd = os.open("/dev/full", os.O_WRONLY | os.O_CLOEXEC)
    try:
        with pytest.raises(_segment.BatchWriteError) as info:
            _segment.append_records(fd, [(b"hello", 0, 1, -1), (b"world", 0, 2, -1)])
        assert info.value.errno == errno.ENOSPC
        assert info.value.written == 0
        assert isinstance(info.value, OSError)
        assert "No space left" in str(info.value)
        with pytest.raises(_segment.BatchWriteError) as info:
            _segment.write_all(fd, b"x" * 100_000)
        assert info.value.errno == errno.ENOSPC and info.value.written == 0
        assert _segment.append_records(fd, []) == []
        assert _segment.write_all(fd, b"") == 0
        with pytest.raises(OSError) as sync_info:
            _segment.datasync(fd)
        assert sync_info.value.errno == errno.EINVAL
    finally:
        os.close(fd)

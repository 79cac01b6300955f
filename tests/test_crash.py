"""Crash safety with SIGKILL (broker.md §1.8, §1.10): a real writer process appending from several
threads is killed at a random moment, again and again on the same growing directory; after each
kill every acknowledged record must be at its offset with its exact bytes, and the whole log must
decode cleanly, record after record, with no partial or corrupt record left behind.

The writer is ``tests/helpers/crash_writer.py``; it prints ``offset writer seq`` only after
``append`` returned. Bodies are derived from (run, writer, seq), so any record found in the log
can be checked, acknowledged or not.
"""

from __future__ import annotations

import importlib.util
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import defaultdict

import pytest

from metaq_core import LogStore

HERE = os.path.dirname(os.path.abspath(__file__))
WRITER = os.path.join(HERE, "helpers", "crash_writer.py")
ROOT = os.path.dirname(HERE)

_spec = importlib.util.spec_from_file_location("crash_writer", WRITER)
crash_writer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(crash_writer)
expected_body = crash_writer.expected_body
TOPIC = crash_writer.TOPIC

MAX_SEGMENT = 64 * 1024
THREADS = 4

pytestmark = pytest.mark.timeout(120)


def seed_from_env() -> int:
    return int(os.environ.get("METAQ_CRASH_SEED", str(time.time_ns() % 1_000_000_007)))


def run_and_kill(directory: str, run: int, threshold: int, rng: random.Random) -> list[tuple[int, int, int]]:
    """Start a writer, SIGKILL it 20..300 ms after its first acknowledgement, return the acks."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryFile() as errors:
        proc = subprocess.Popen(
            [sys.executable, WRITER, directory, str(run), str(THREADS), str(threshold), str(MAX_SEGMENT)],
            stdout=subprocess.PIPE, stderr=errors, env=env, cwd=ROOT)
        lines: list[bytes] = []
        first_ack = threading.Event()

        def reader() -> None:
            for line in proc.stdout:
                lines.append(line)
                if len(lines) >= 2:
                    first_ack.set()
            first_ack.set()

        thread = threading.Thread(target=reader, daemon=True)
        thread.start()
        try:
            acked_in_time = first_ack.wait(15)
            if acked_in_time and proc.poll() is None:
                time.sleep(rng.uniform(0.02, 0.3))
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            thread.join(10)
            proc.stdout.close()
        errors.seek(0)
        stderr = errors.read().decode(errors="replace")
    assert acked_in_time, f"run {run}: no acknowledgement within 15 s; stderr:\n{stderr}"
    assert proc.returncode == -signal.SIGKILL, f"run {run}: writer exited {proc.returncode}; stderr:\n{stderr}"
    assert lines and lines[0] == b"ready\n", lines[:1]
    acks = []
    for line in lines[1:]:
        if not line.endswith(b"\n"):
            continue  # cannot happen with one os.write per line on a pipe, but never trust it
        offset, writer, seq = map(int, line.split())
        acks.append((offset, writer, seq))
    assert acks, f"run {run}: no acknowledged record"
    return acks


def parse_file(path: str) -> tuple[int, int]:
    """(records, end of the last valid record) of a segment file, with an independent decoder."""
    with open(path, "rb") as f:
        buf = f.read()
    pos = count = 0
    while len(buf) - pos >= 20:
        length, crc = struct.unpack_from(">ii", buf, pos)
        if length < 0 or pos + 20 + length > len(buf):
            break
        if zlib.crc32(buf[pos + 20:pos + 20 + length]) & 0x7FFFFFFF != crc:
            break
        pos += 20 + length
        count += 1
    return count, pos


def verify(directory: str, acked: dict[int, list[tuple[int, int, int]]], threshold: int, seed: int) -> int:
    """Reopen (recovery runs here) and check everything; returns the bytes recovery cut."""
    where = f"(seed {seed})"
    with LogStore(directory, unflush_threshold=threshold, max_segment_size=MAX_SEGMENT) as store:
        stats = store.statistics().per_partition[f"{TOPIC}-0"]
        low, high = store.min_offset(TOPIC, 0), store.max_offset(TOPIC, 0)
        assert low == 0, where
        found: dict[int, tuple[int, int, int]] = {}
        order: list[tuple[int, int, int]] = []
        seen: set[tuple[int, int, int]] = set()
        ids: set[int] = set()
        offset = low
        while offset < high:
            result = store.read(TOPIC, 0, offset, 256 * 1024)
            assert result.messages, f"no record decodes at offset {offset} {where}"
            for m in result.messages:
                assert m.offset == offset, f"gap or overlap at {offset} {where}"
                assert m.flag == 0 and m.attribute is None
                run, writer, seq = map(int, m.body.split(b":", 3)[:3])
                assert m.body == expected_body(run, writer, seq), f"bad body at {offset} {where}"
                assert (run, writer, seq) not in seen, f"duplicate {run}:{writer}:{seq} {where}"
                seen.add((run, writer, seq))
                assert m.id not in ids, f"duplicate id at {offset} {where}"
                ids.add(m.id)
                found[offset] = (run, writer, seq)
                order.append((run, writer, seq))
                offset += 20 + len(m.body)
            assert result.next_offset == offset, where
        assert offset == high, where

    # Every acknowledged record is where the writer was told it is, with its exact bytes.
    for run, acks in acked.items():
        for ack_offset, writer, seq in acks:
            assert found.get(ack_offset) == (run, writer, seq), \
                f"acknowledged {run}:{writer}:{seq} at {ack_offset} is missing {where}"

    # Per writer thread: seq 0, 1, 2 ... in log order, at most one record beyond its last ack
    # (the one appended, maybe even durable, but not yet reported when the kill came).
    seqs: dict[tuple[int, int], list[int]] = defaultdict(list)
    for run, writer, seq in order:
        seqs[(run, writer)].append(seq)
    for (run, writer), got in seqs.items():
        assert got == list(range(len(got))), f"run {run} writer {writer}: {got[:20]} {where}"
    for run, acks in acked.items():
        count = defaultdict(int)
        for _offset, writer, _seq in acks:
            count[writer] += 1
        for writer in range(THREADS):
            have = len(seqs.get((run, writer), []))
            assert count[writer] <= have <= count[writer] + 1, (run, writer, count[writer], have, where)

    # The files themselves: contiguous segments, each made only of whole, valid records.
    names = sorted(n for n in os.listdir(os.path.join(directory, f"{TOPIC}-0")) if n.endswith(".meta"))
    position = 0
    for name in names:
        path = os.path.join(directory, f"{TOPIC}-0", name)
        assert int(name[:-5]) == position, f"segment {name} does not start at {position} {where}"
        _count, end = parse_file(path)
        assert end == os.path.getsize(path), f"{name} has bytes that are not whole records {where}"
        position += end
    assert position == high, where
    return stats.recovered_bytes_truncated


def crash_loop(directory: str, threshold: int, kills: int, seed: int) -> tuple[int, int, int]:
    rng = random.Random(seed)
    acked: dict[int, list[tuple[int, int, int]]] = {}
    cut_runs = total_acks = 0
    for run in range(kills):
        acked[run] = run_and_kill(directory, run, threshold, rng)
        total_acks += len(acked[run])
        if verify(directory, acked, threshold, seed):
            cut_runs += 1
    segments = len([n for n in os.listdir(os.path.join(directory, f"{TOPIC}-0")) if n.endswith(".meta")])
    return total_acks, segments, cut_runs


def test_group_commit_survives_repeated_sigkill(data_dir):
    seed = seed_from_env()
    total, segments, _cut = crash_loop(data_dir, threshold=0, kills=20, seed=seed)
    assert total >= 20
    assert segments >= 3, f"segments never rolled ({segments}) (seed {seed})"


def test_threshold_mode_acknowledged_records_survive_sigkill(data_dir):
    # Acknowledged = written to the page cache: the process dies, the kernel keeps the pages.
    seed = seed_from_env()
    total, segments, _cut = crash_loop(data_dir, threshold=1000, kills=6, seed=seed)
    assert total >= 6
    assert segments >= 2, f"segments never rolled ({segments}) (seed {seed})"

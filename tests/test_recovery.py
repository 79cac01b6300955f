"""Start-up recovery of a store (broker.md §1.10) on real files: every truncation point and every
flipped byte of the newest segment's last record, gaps between segment files, garbage after a
clean tail, appends after recovery, and a read-only view next to a writer (§1.7, store.py).

Records are checked against an oracle written here with ``struct`` + ``zlib`` (protocol §4.4), not
against the engine's own codec.
"""

from __future__ import annotations

import os
import random
import shutil
import struct
import zlib

import pytest

from metaq_core import (
    CorruptRecordError,
    LogStore,
    OffsetOutOfRangeError,
    ReadOnlyError,
    StoreLoadError,
)

TOPIC = "rec"
HEADER = 20


# ------------------------------------------------------------------------------------ oracle

def parse_records(buf: bytes, base: int = 0) -> tuple[list[tuple[int, int, int, bytes]], int]:
    """(records as (offset, id, flag, data), end of the last valid record) — protocol §4.4."""
    out = []
    pos = 0
    while len(buf) - pos >= HEADER:
        length, crc, msg_id, flag = struct.unpack_from(">iiqi", buf, pos)
        if length < 0 or pos + HEADER + length > len(buf):
            break
        data = buf[pos + HEADER:pos + HEADER + length]
        if zlib.crc32(data) & 0x7FFFFFFF != crc:
            break
        out.append((base + pos, msg_id, flag, data))
        pos += HEADER + length
    return out, pos


def body_of(i: int) -> bytes:
    """A small, distinct, self-describing body (30..60 bytes of data per record)."""
    head = f"msg-{i:03d}:".encode()
    return head + bytes((i * 7 + k) % 251 for k in range(30 + (i * 5) % 20))


def seg_dir(path: str, partition: int = 0) -> str:
    return os.path.join(path, f"{TOPIC}-{partition}")


def seg_files(path: str, partition: int = 0) -> list[str]:
    d = seg_dir(path, partition)
    return [os.path.join(d, n) for n in sorted(os.listdir(d)) if n.endswith(".meta")]


def _collect(store: LogStore, partition: int = 0):
    """Every message from min to max offset; each read must continue exactly where the last
    one ended (no gap, no partial record)."""
    offset = store.min_offset(TOPIC, partition)
    end = store.max_offset(TOPIC, partition)
    messages = []
    while offset < end:
        result = store.read(TOPIC, partition, offset, 1 << 20)
        assert result.messages, f"no progress at offset {offset}"
        assert result.messages[0].offset == offset
        messages.extend(result.messages)
        offset = result.next_offset
    assert offset == end
    return messages


def build(path: str, n: int = 5) -> tuple[list, bytes]:
    """A store with ``n`` records (every other one with an attribute); returns the appended
    (offset, id, size, body, attribute) and the pristine bytes of its only segment file."""
    appended = []
    with LogStore(path) as store:
        for i in range(n):
            attribute = f"a{i}" if i % 2 else None
            where = store.append(TOPIC, 0, body_of(i), attribute=attribute)
            appended.append((where.offset, where.msg_id, where.size, body_of(i), attribute))
    files = seg_files(path)
    assert len(files) == 1
    with open(files[0], "rb") as f:
        pristine = f.read()
    records, end = parse_records(pristine)
    assert end == len(pristine) == sum(a[2] for a in appended)
    assert [(r[0], r[1]) for r in records] == [(a[0], a[1]) for a in appended]
    return appended, pristine


def write_file(path: str, content: bytes) -> None:
    with open(path, "wb") as f:
        f.write(content)


def check_kept(path: str, appended: list, keep: int, truncated: int) -> None:
    """Reopen: exactly the first ``keep`` records survive, the file ends after them."""
    end = sum(a[2] for a in appended[:keep])
    with LogStore(path) as store:
        assert store.min_offset(TOPIC, 0) == 0
        assert store.max_offset(TOPIC, 0) == end
        stats = store.statistics().per_partition[f"{TOPIC}-0"]
        assert stats.recovered_bytes_truncated == truncated
        assert stats.message_count == keep
        assert stats.max_offset == end
        assert os.path.getsize(seg_files(path)[0]) == end
        messages = _collect(store)
        assert [(m.offset, m.id, m.body, m.attribute) for m in messages] == \
            [(a[0], a[1], a[3], a[4]) for a in appended[:keep]]
        with pytest.raises(OffsetOutOfRangeError):
            store.read(TOPIC, 0, end)
    with open(seg_files(path)[0], "rb") as f:
        content = f.read()
    records, good = parse_records(content)
    assert good == len(content) == end and len(records) == keep


# ------------------------------------------------------------------- the last record, bytewise

def test_truncating_the_last_record_at_every_byte(data_dir):
    appended, pristine = build(data_dir)
    last_offset, _id, last_size = appended[-1][:3]
    assert 50 <= last_size <= 100
    segment = seg_files(data_dir)[0]
    for cut in range(last_offset, len(pristine)):
        write_file(segment, pristine[:cut])
        check_kept(data_dir, appended, len(appended) - 1, cut - last_offset)
        # Recovery is idempotent: a second open finds nothing more to cut.
        check_kept(data_dir, appended, len(appended) - 1, 0)
    write_file(segment, pristine)
    check_kept(data_dir, appended, len(appended), 0)


def test_flipping_each_byte_of_the_last_record(data_dir):
    appended, pristine = build(data_dir)
    last_offset, last_id, last_size, last_body, last_attr = appended[-1]
    assert last_attr is None
    segment = seg_files(data_dir)[0]
    for i in range(last_size):
        damaged = bytearray(pristine)
        damaged[last_offset + i] ^= 0xFF
        write_file(segment, bytes(damaged))
        if 8 <= i < HEADER:
            # The message id (8..15) and the flag (16..19) are not covered by the checksum
            # (protocol §4.3/§4.4: CRC of the data only), so no scan can see this damage: the
            # record is kept byte for byte as it is on disk and nothing else changes.
            with LogStore(data_dir) as store:
                assert store.max_offset(TOPIC, 0) == len(pristine)
                stats = store.statistics().per_partition[f"{TOPIC}-0"]
                assert stats.recovered_bytes_truncated == 0
                assert store.slice(TOPIC, 0, last_offset, 1 << 20).read() == bytes(damaged[last_offset:])
                before = [m for m in _collect_until(store, last_offset)]
                assert [(m.offset, m.id, m.body) for m in before] == \
                    [(a[0], a[1], a[3]) for a in appended[:-1]]
            assert os.path.getsize(segment) == len(pristine)
        else:
            check_kept(data_dir, appended, len(appended) - 1, last_size)


def _collect_until(store: LogStore, end: int):
    offset, out = 0, []
    while offset < end:
        result = store.read(TOPIC, 0, offset, end - offset)
        out.extend(result.messages)
        offset = result.next_offset
    return out


def test_a_bad_record_in_the_middle_cuts_everything_after_it(data_dir):
    appended, pristine = build(data_dir, n=6)
    segment = seg_files(data_dir)[0]
    damaged = bytearray(pristine)
    damaged[appended[2][0] + HEADER + 3] ^= 0x01  # one bit of the third record's data
    write_file(segment, bytes(damaged))
    check_kept(data_dir, appended, 2, len(pristine) - appended[2][0])


# ------------------------------------------------------------------------- several segments

def build_segments(path: str, count: int = 40) -> list:
    appended = []
    with LogStore(path, max_segment_size=300) as store:
        for i in range(count):
            where = store.append(TOPIC, 0, body_of(i))
            appended.append((where.offset, where.msg_id, where.size, body_of(i), None))
    assert len(seg_files(path)) >= 5
    return appended


def test_a_deleted_middle_segment_is_a_gap_that_aborts_loading(data_dir):
    build_segments(data_dir)
    files = seg_files(data_dir)
    victim = files[2]
    os.remove(victim)
    for read_only in (False, True):
        with pytest.raises(StoreLoadError) as info:
            LogStore(data_dir, read_only=read_only)
        text = str(info.value)
        assert os.path.basename(files[1]) in text and os.path.basename(files[3]) in text, text
    # The failed open released the writer lock and touched nothing.
    assert seg_files(data_dir) == [f for f in files if f != victim]


@pytest.mark.parametrize("change", [-1, -57, +1, +300])
def test_a_shrunk_or_grown_middle_segment_aborts_loading(data_dir, change):
    appended = build_segments(data_dir)
    files = seg_files(data_dir)
    victim = files[1]
    with open(victim, "rb") as f:
        original = f.read()
    sizes = {f: os.path.getsize(f) for f in files}
    if change < 0:
        write_file(victim, original[:change])
    else:
        write_file(victim, original + b"\x00" * change)
    with pytest.raises(StoreLoadError) as info:
        LogStore(data_dir)
    text = str(info.value)
    assert os.path.basename(files[1]) in text and os.path.basename(files[2]) in text, text
    # Nothing was repaired or cut, neither in the damaged file nor in the tail.
    assert {f: os.path.getsize(f) for f in files} == {**sizes, victim: len(original) + change}
    # Put it back: the store loads (the lock was released) and everything is there.
    write_file(victim, original)
    with LogStore(data_dir) as store:
        assert [(m.offset, m.id, m.body) for m in _collect(store)] == [(a[0], a[1], a[3]) for a in appended]


def test_an_older_segment_is_not_scanned_but_its_damage_is_detected_on_read(data_dir):
    appended = build_segments(data_dir)
    files = seg_files(data_dir)
    with open(files[0], "r+b") as f:
        f.seek(HEADER + 5)
        byte = f.read(1)
        f.seek(HEADER + 5)
        f.write(bytes([byte[0] ^ 0x40]))
    with LogStore(data_dir) as store:
        assert store.statistics().per_partition[f"{TOPIC}-0"].recovered_bytes_truncated == 0
        assert store.max_offset(TOPIC, 0) == appended[-1][0] + appended[-1][2]
        with pytest.raises(CorruptRecordError):
            store.read(TOPIC, 0, 0)
        result = store.read(TOPIC, 0, appended[1][0])
        assert result.messages[0].body == appended[1][3]


def test_a_torn_tail_segment_after_a_roll_is_recovered(data_dir):
    appended = build_segments(data_dir, count=42)
    files = seg_files(data_dir)
    tail = files[-1]
    tail_start = int(os.path.basename(tail)[:-5])
    with open(tail, "rb") as f:
        content = f.read()
    kept = [a for a in appended if a[0] < tail_start]
    in_tail = [a for a in appended if a[0] >= tail_start]
    assert in_tail, "the last append must be in the newest segment"
    # Cut into the first record of the newest segment: the segment becomes empty.
    write_file(tail, content[:7])
    with LogStore(data_dir, max_segment_size=300) as store:
        assert store.max_offset(TOPIC, 0) == tail_start
        assert store.statistics().per_partition[f"{TOPIC}-0"].recovered_bytes_truncated == 7
        assert [(m.offset, m.body) for m in _collect(store)] == [(a[0], a[3]) for a in kept]
        where = store.append(TOPIC, 0, b"after")
        assert where.offset == tail_start
    assert os.path.getsize(tail) == where.size


# ----------------------------------------------------------------------- garbage, new appends

@pytest.mark.parametrize("garbage_size", [1, 19, 20, 21, 64, 5000])
def test_garbage_after_a_clean_tail_is_cut(data_dir, garbage_size):
    appended, pristine = build(data_dir)
    segment = seg_files(data_dir)[0]
    rng = random.Random(garbage_size)
    garbage = bytearray(rng.randbytes(garbage_size))
    if garbage_size >= 4:
        garbage[0] |= 0x80  # a negative length: corrupt at once, whatever follows
    write_file(segment, pristine + bytes(garbage))
    check_kept(data_dir, appended, len(appended), garbage_size)


@pytest.mark.parametrize("length_field", [10, 1000])
def test_a_plausible_header_without_its_data_is_cut(data_dir, length_field):
    # A header that promises more bytes than the file holds (a torn write) or whose CRC is wrong.
    appended, pristine = build(data_dir)
    segment = seg_files(data_dir)[0]
    fake = struct.pack(">iiqi", length_field, 12345, 99, 0) + b"z" * 10
    write_file(segment, pristine + fake)
    check_kept(data_dir, appended, len(appended), len(fake))


def test_a_recovered_store_accepts_appends_at_the_right_offset(data_dir):
    appended, pristine = build(data_dir)
    segment = seg_files(data_dir)[0]
    last_offset = appended[-1][0]
    write_file(segment, pristine[:last_offset + 33])
    with LogStore(data_dir) as store:
        assert store.statistics().per_partition[f"{TOPIC}-0"].recovered_bytes_truncated == 33
        first = store.append(TOPIC, 0, b"new-1")
        second = store.append(TOPIC, 0, b"new-2", attribute="k=v")
        assert first.offset == last_offset
        assert second.offset == last_offset + first.size
        assert store.max_offset(TOPIC, 0) == second.offset + second.size
    with LogStore(data_dir, unflush_threshold=1000) as store:
        third = store.append(TOPIC, 0, b"new-3")
        assert third.offset == second.offset + second.size
        store.flush()
        messages = _collect(store)
    expected = [(a[0], a[3], a[4]) for a in appended[:-1]] + [
        (first.offset, b"new-1", None), (second.offset, b"new-2", "k=v"), (third.offset, b"new-3", None)]
    assert [(m.offset, m.body, m.attribute) for m in messages] == expected
    with open(segment, "rb") as f:
        content = f.read()
    records, good = parse_records(content)
    assert good == len(content) and len(records) == len(expected)


# -------------------------------------------------------------------------- read-only view

def snapshot(path: str) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file and directory under ``path``."""
    out = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(root, name)
            st = os.stat(full)
            out[full] = (st.st_size if name in files else 0, st.st_mtime_ns)
        st = os.stat(root)
        out[root] = (0, st.st_mtime_ns)
    return out


def test_a_read_only_view_alongside_a_writer(data_dir):
    writer = LogStore(data_dir, max_segment_size=400, num_partitions=2)
    try:
        first = [writer.append(TOPIC, 0, body_of(i)) for i in range(4)]
        before = snapshot(data_dir)
        reader = LogStore(data_dir, read_only=True)
        try:
            assert reader.max_offset(TOPIC, 0) == writer.max_offset(TOPIC, 0)
            assert [m.body for m in _collect(reader)] == [body_of(i) for i in range(4)]
            with pytest.raises(ReadOnlyError):
                reader.append(TOPIC, 0, b"no")
            reader.flush()
            assert snapshot(data_dir) == before

            # New records (and new segments) become visible through refresh() ...
            more = [writer.append(TOPIC, 0, body_of(i)) for i in range(4, 12)]
            assert len(seg_files(data_dir)) >= 2
            reader.refresh()
            assert reader.max_offset(TOPIC, 0) == writer.max_offset(TOPIC, 0)
            assert [m.body for m in _collect(reader)] == [body_of(i) for i in range(12)]

            # ... or through a read at the known end.
            end = writer.max_offset(TOPIC, 0)
            later = writer.append(TOPIC, 0, body_of(12))
            result = reader.read(TOPIC, 0, end)
            assert [(m.offset, m.id, m.body) for m in result.messages] == [(later.offset, later.msg_id, body_of(12))]

            # A partition created after the reader opened appears after refresh().
            other = writer.append(TOPIC, 1, b"other partition")
            reader.refresh()
            assert reader.read(TOPIC, 1, 0).messages[0].body == b"other partition"
            assert other.offset == 0

            # None of this wrote anything: sizes and mtimes are those the writer left.
            settled = snapshot(data_dir)
            reader.refresh()
            _collect(reader)
            reader.statistics()
            assert snapshot(data_dir) == settled
        finally:
            reader.close()
        assert snapshot(data_dir) == settled
        assert [f.offset for f in first + more] == sorted(f.offset for f in first + more)
    finally:
        writer.close()


def test_a_read_only_view_never_cuts_a_torn_tail(data_dir):
    appended, pristine = build(data_dir)
    segment = seg_files(data_dir)[0]
    torn = pristine + pristine[:30]  # half a header and a bit: what a writer mid-write leaves
    write_file(segment, torn)
    before = snapshot(data_dir)
    with LogStore(data_dir, read_only=True) as reader:
        assert reader.max_offset(TOPIC, 0) == len(pristine)
        assert [m.body for m in _collect(reader)] == [a[3] for a in appended]
        with pytest.raises(OffsetOutOfRangeError):
            reader.read(TOPIC, 0, len(pristine))
        assert snapshot(data_dir) == before
        # The writer finishes its record: the reader sees it once complete.
        write_file_append(segment, pristine[30:appended[1][0]])
        result = reader.read(TOPIC, 0, len(pristine))
        assert [m.body for m in result.messages] == [appended[0][3]]
    assert os.path.getsize(segment) == len(pristine) + appended[1][0]


def write_file_append(path: str, content: bytes) -> None:
    with open(path, "ab") as f:
        f.write(content)


def test_a_read_only_view_does_not_trust_a_new_tail_segment(data_dir):
    # A segment created by a roll after the reader opened may end in a record that is still
    # being written: the reader must scan it, like the tail it already knew, not trust its size.
    with LogStore(data_dir, max_segment_size=150) as writer:
        for i in range(2):
            writer.append(TOPIC, 0, body_of(i))
        reader = LogStore(data_dir, read_only=True)
        try:
            known = reader.max_offset(TOPIC, 0)
            for i in range(2, 5):
                writer.append(TOPIC, 0, body_of(i))
            files = seg_files(data_dir)
            assert len(files) >= 2
            end = writer.max_offset(TOPIC, 0)
            assert known < int(os.path.basename(files[-1])[:-5]) <= end
            # Half of a next record, as a writer in the middle of its write leaves it.
            with open(files[-1], "ab") as f:
                f.write(struct.pack(">iiqi", 40, 0, 1, 0)[:13])
            assert reader.max_offset(TOPIC, 0) == end
            assert [m.body for m in _collect(reader)] == [body_of(i) for i in range(5)]
        finally:
            reader.close()
        os.truncate(files[-1], end - int(os.path.basename(files[-1])[:-5]))


def test_the_copy_of_a_recovered_directory_is_byte_identical(data_dir, tmp_path):
    # Recovery only ever cuts at a record boundary: the kept prefix is the original bytes.
    appended, pristine = build(data_dir)
    segment = seg_files(data_dir)[0]
    write_file(segment, pristine + b"\xff" * 9)
    copy = str(tmp_path / "copy")
    shutil.copytree(data_dir, copy)
    with LogStore(copy):
        pass
    with open(seg_files(copy)[0], "rb") as f:
        assert f.read() == pristine


# ------------------------------------------------------------- a tail larger than a scan chunk

def test_recovery_of_a_tail_larger_than_the_scan_chunk(data_dir):
    # The scan reads the file in 4 MiB chunks: records that cross a chunk boundary, and a record
    # larger than a chunk, must be kept or cut exactly like small ones.
    sizes = [700_000] * 7 + [5 * 1024 * 1024, 3000, 900_000, 50]
    appended = []
    with LogStore(data_dir, max_transfer_size=8 * 1024 * 1024) as store:
        for i, size in enumerate(sizes):
            body = f"big-{i}:".encode() + random.Random(i).randbytes(size)
            where = store.append(TOPIC, 0, body)
            appended.append((where.offset, where.msg_id, where.size, body, None))
    segment = seg_files(data_dir)[0]
    with open(segment, "rb") as f:
        pristine = f.read()
    chunk = 4 * 1024 * 1024
    crossing = next(i for i, a in enumerate(appended) if a[0] < chunk < a[0] + a[2])
    huge = sizes.index(5 * 1024 * 1024)
    cases = []  # (file content, records kept, bytes cut)
    for i in (crossing, crossing + 1, huge, huge + 1, len(appended) - 1):
        start, size = appended[i][0], appended[i][2]
        for cut in (start + 1, start + 19, start + 20, start + size // 2, start + size - 1):
            cases.append((pristine[:cut], i, cut - start))
        damaged = bytearray(pristine)
        damaged[start + size - 2] ^= 0x20
        cases.append((bytes(damaged), i, len(pristine) - start))
    cases.append((pristine, len(appended), 0))
    for content, keep, cut in cases:
        write_file(segment, content)
        end = sum(a[2] for a in appended[:keep])
        with LogStore(data_dir, max_transfer_size=8 * 1024 * 1024) as store:
            stats = store.statistics().per_partition[f"{TOPIC}-0"]
            assert (stats.message_count, stats.recovered_bytes_truncated) == (keep, cut)
            assert store.max_offset(TOPIC, 0) == end == os.path.getsize(segment)
            if keep:
                last = store.read(TOPIC, 0, appended[keep - 1][0], 8 * 1024 * 1024).messages[0]
                assert (last.offset, last.body) == (appended[keep - 1][0], appended[keep - 1][3])
        with open(segment, "rb") as f:
            assert f.read() == pristine[:end]

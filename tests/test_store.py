"""LogStore / PartitionLog: the embeddable API, its bad-input errors, both flush modes, the trio
flavour, rolling and segment lookup, retention, and a model-based property test."""

from __future__ import annotations

import os
import threading
import time

import pytest
import trio
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from metaq_core import (
    InvalidMessageError,
    InvalidPartitionError,
    InvalidTopicError,
    LogStore,
    MessageTooLargeError,
    OffsetOutOfRangeError,
    ReadOnlyError,
    RetentionPolicy,
    StoreClosedError,
    StoreLoadError,
    apply_policy,
)
from metaq_core.errors import ClockBackwardsError, PolicyError
from metaq_core.ids import EPOCH_MS, IdWorker, split_id
from metaq_core.naming import parse_segment_file_name, segment_file_name


def segment_files(directory):
    return sorted(f for f in os.listdir(directory) if f.endswith(".meta"))


# ----------------------------------------------------------------------------- the basic API


def test_append_and_read_back(data_dir):
    with LogStore(data_dir, num_partitions=3) as store:
        first = store.append("orders", 2, b"hello", attribute="attr1")
        second = store.append("orders", 2, b"world")
        assert first.offset == 0 and first.size == 20 + 4 + 5 + 5
        assert second.offset == first.size
        result = store.read("orders", 2, 0)
        assert [(m.offset, m.attribute, m.body) for m in result.messages] == [
            (0, "attr1", b"hello"), (first.size, None, b"world")]
        assert [m.id for m in result.messages] == [first.msg_id, second.msg_id]
        assert result.next_offset == store.max_offset("orders", 2) == first.size + second.size
        assert store.topics() == ["orders"] and store.partitions("orders") == [2]
    assert sorted(os.listdir(data_dir)) == [".metaq-store.lock", "orders-2"]
    assert segment_files(os.path.join(data_dir, "orders-2")) == ["00000000000000000000.meta"]


def test_append_many_is_contiguous_and_ordered(data_dir):
    with LogStore(data_dir) as store:
        results = store.append_many("t", 0, [b"a" * i for i in range(10)])
        offsets = [r.offset for r in results]
        assert offsets == sorted(offsets) and offsets[0] == 0
        assert all(b.offset == a.offset + a.size for a, b in zip(results, results[1:]))
        assert len({r.msg_id for r in results}) == 10
        assert [m.body for m in store.read("t", 0, 0).messages] == [b"a" * i for i in range(10)]


def test_reopen_keeps_everything_and_continues(data_dir):
    with LogStore(data_dir, max_segment_size=200) as store:
        for i in range(20):
            store.append("t", 0, b"%03d" % i)
        end = store.max_offset("t", 0)
    with LogStore(data_dir, max_segment_size=200) as store:
        assert store.max_offset("t", 0) == end
        nxt = store.append("t", 0, b"next")
        assert nxt.offset == end
        bodies, offset = [], 0
        while offset < store.max_offset("t", 0):
            result = store.read("t", 0, offset, 64)
            bodies += [m.body for m in result.messages]
            offset = result.next_offset
        assert bodies == [b"%03d" % i for i in range(20)] + [b"next"]


def test_segments_roll_and_lookup_by_offset(data_dir):
    with LogStore(data_dir, max_segment_size=100) as store:
        results = [store.append("t", 0, b"x" * 30) for _ in range(10)]  # 50-byte records
        plog = store.partition("t", 0)
        plog.flush()
        names = segment_files(plog.directory)
        starts = [parse_segment_file_name(n) for n in names]
        # A segment rolls once it reaches 100 bytes: two records per segment.
        assert starts == [0, 100, 200, 300, 400, 500]
        assert all(len(n) == 25 for n in names)
        for seg in plog.segments()[:-1]:
            assert os.path.getsize(seg.path) == 100
        # Slices never straddle a segment and never pass the durable end.
        piece = store.slice("t", 0, 50, 10_000)
        assert (piece.offset, piece.position, piece.length) == (50, 50, 50)
        assert store.nearest_offset("t", 0, 150) == 100
        assert store.nearest_offset("t", 0, -5) == 0
        assert store.nearest_offset("t", 0, 10_000) == 500
        assert [r.offset for r in results] == list(range(0, 500, 50))
        for r in results:
            assert store.read("t", 0, r.offset, 50).messages[0].offset == r.offset


def test_out_of_range_reads(data_dir):
    with LogStore(data_dir) as store:
        store.append("t", 0, b"abc")
        end = store.max_offset("t", 0)
        with pytest.raises(OffsetOutOfRangeError) as info:
            store.read("t", 0, end)
        assert not info.value.before_start and info.value.max_offset == end
        with pytest.raises(OffsetOutOfRangeError) as info:
            store.slice("t", 0, -1, 10)
        assert info.value.before_start and info.value.min_offset == 0
        with pytest.raises(KeyError):
            store.read("t", 5, 0)


def test_read_grows_to_one_whole_record(data_dir):
    with LogStore(data_dir) as store:
        store.append("t", 0, b"z" * 5000)
        result = store.read("t", 0, 0, 100)
        assert [m.body for m in result.messages] == [b"z" * 5000]
        piece = store.slice("t", 0, 0, 100)
        assert piece.length == 100  # the raw slice stays clamped: it may end inside a record


def test_slice_is_clamped_to_max_transfer_size(data_dir):
    with LogStore(data_dir, max_transfer_size=1000) as store:
        for _ in range(10):
            store.append("t", 0, b"y" * 200)
        assert store.slice("t", 0, 0, 1 << 20).length == 1000


# ------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("topic", [
    "", ".", "..", "a/b", "../etc", "a\\b", "nul\x00", "sp ace", "tab\t", "new\nline", "bell\x07",
    "del\x7f", "x" * 201, "é" * 101, 7, None,
])
def test_bad_topic_names_never_touch_the_disk(data_dir, topic):
    with LogStore(data_dir) as store:
        with pytest.raises(InvalidTopicError):
            store.append(topic, 0, b"x")
    assert os.listdir(data_dir) == [".metaq-store.lock"]


def test_good_topic_names(data_dir):
    with LogStore(data_dir) as store:
        for topic in ["meta-test", "a.b_c-1", "x" * 200, "中文"]:
            store.append(topic, 0, b"x")
        assert len(store.topics()) == 4


@pytest.mark.parametrize("partition", [-1, 4, 2**31, True, "0", 1.0])
def test_bad_partitions(data_dir, partition):
    with LogStore(data_dir, num_partitions=4) as store:
        with pytest.raises(InvalidPartitionError):
            store.append("t", partition, b"x")
    assert os.listdir(data_dir) == [".metaq-store.lock"]


def test_oversize_record_is_refused_before_the_disk(data_dir):
    with LogStore(data_dir, max_transfer_size=1024) as store:
        store.append("t", 0, b"a" * (1024 - 20))  # exactly max_transfer_size: accepted
        size = store.max_offset("t", 0)
        with pytest.raises(MessageTooLargeError):
            store.append("t", 0, b"a" * (1024 - 19))
        with pytest.raises(MessageTooLargeError):
            store.append_many("t", 0, [b"ok", b"b" * 2000])  # all or nothing
        assert store.max_offset("t", 0) == size
        assert os.path.getsize(store.partition("t", 0).segments()[-1].path) == size


def test_malformed_attribute_block_is_refused(data_dir):
    with LogStore(data_dir) as store:
        with pytest.raises(InvalidMessageError):
            store.append_data("t", 0, b"\x00\x00\x00\x09abc", flag=1)
        with pytest.raises(InvalidMessageError):
            store.append_data("t", 0, b"\x00\x01", flag=1)
        assert store.topics() == []


def test_closed_store_and_read_only_store_refuse_appends(data_dir):
    store = LogStore(data_dir)
    store.append("t", 0, b"x")
    plog = store.partition("t", 0)
    store.close()
    with pytest.raises(StoreClosedError):
        store.append("t", 0, b"y")
    with pytest.raises(StoreClosedError):
        plog.append(b"y")
    with pytest.raises(StoreClosedError):
        plog.slice(0, 10)
    with LogStore(data_dir, read_only=True) as reader:
        with pytest.raises(ReadOnlyError):
            reader.append("t", 0, b"z")
        assert [m.body for m in reader.read("t", 0, 0).messages] == [b"x"]


def test_second_writer_is_refused(data_dir):
    with LogStore(data_dir):
        with pytest.raises(StoreLoadError, match="already open"):
            LogStore(data_dir)


def test_store_directory_with_bad_suffix_aborts_start(data_dir):
    os.mkdir(os.path.join(data_dir, "topic-x1"))
    with pytest.raises(StoreLoadError, match="not a partition number"):
        LogStore(data_dir)


def test_other_entries_are_skipped(data_dir):
    open(os.path.join(data_dir, "notes.txt"), "w").close()
    os.mkdir(os.path.join(data_dir, "nodash"))
    with LogStore(data_dir) as store:
        assert store.topics() == []


def test_archived_and_foreign_files_are_ignored(data_dir):
    with LogStore(data_dir) as store:
        store.append("t", 0, b"x")
    directory = os.path.join(data_dir, "t-0")
    open(os.path.join(directory, "00000000000000000000.meta.arc"), "w").close()
    open(os.path.join(directory, "README"), "w").close()
    with LogStore(data_dir) as store:
        assert [m.body for m in store.read("t", 0, 0).messages] == [b"x"]


# ---------------------------------------------------------------------------- flush modes


def test_group_commit_batches_concurrent_appends(data_dir):
    with LogStore(data_dir) as store:
        plog = store.partition("t", 0)
        barrier = threading.Barrier(32)
        results = []

        def worker(n):
            barrier.wait()
            for i in range(20):
                results.append(store.append("t", 0, b"%d-%d" % (n, i)))

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        stats = plog.statistics()
        assert stats.records == 640 and stats.appends == 640
        assert stats.syncs == stats.batches < 640  # one fdatasync per batch, batches > 1 record
        assert stats.max_batch > 1
        offsets = sorted(r.offset for r in results)
        assert offsets[0] == 0 and stats.max_offset == plog.max_offset
        # every acknowledged record is durable, hence readable, at its offset
        assert all(r.offset + r.size <= plog.max_offset for r in results)


def test_threshold_mode_visibility_follows_flushes(data_dir):
    with LogStore(data_dir, unflush_threshold=3, unflush_interval=60_000) as store:
        plog = store.partition("t", 0)
        plog.append(b"a")
        plog.append(b"b")
        plog.append(b"c")
        assert plog.max_offset == 0  # written, not yet flushed: not visible (§1.7)
        plog.append(b"d")  # the 4th unflushed append exceeds the threshold of 3
        assert plog.max_offset == 4 * 21
        assert plog.statistics().syncs == 1
        plog.append(b"e")
        plog.flush()
        assert plog.max_offset == 5 * 21


def test_threshold_mode_periodic_flusher(data_dir):
    with LogStore(data_dir, unflush_threshold=1000, unflush_interval=100) as store:
        plog = store.partition("t", 0)
        plog.append(b"a")
        deadline = time.monotonic() + 5
        while plog.max_offset == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert plog.max_offset == 21


def wait_until(predicate, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.01)
    return predicate()


def test_append_nowait_writes_at_once_and_leaves_syncs_and_rolls_to_the_writer(data_dir):
    with LogStore(data_dir, unflush_threshold=2, unflush_interval=60_000, max_segment_size=100) as store:
        plog = store.partition("t", 0)
        items = [(b"x" * 10, 0, 1, -1), (b"y" * 10, 0, 2, -1)]   # 2 records of 30 bytes
        assert plog.append_nowait(items) == 0
        assert plog.append_nowait(items) == 60
        assert plog.max_offset == 0 and plog.statistics().syncs == 0  # written, not flushed
        # the third append exceeds the threshold of 2 and the segment size of 100: the writer
        # thread syncs and rolls; the caller did neither
        assert plog.append_nowait(items) == 120
        assert wait_until(lambda: plog.max_offset == 180)
        assert wait_until(lambda: len(plog.segments()) == 2)
        assert plog.statistics().syncs >= 1
        assert plog.append_nowait(items) == 180                  # into the new segment
        plog.flush()
        read = store.read("t", 0, 0, max_bytes=1000)
        assert [m.body for m in read.messages] == [b"x" * 10, b"y" * 10] * 3


def test_append_nowait_declines_instead_of_waiting(data_dir):
    with LogStore(data_dir) as store:   # group commit: the writer thread must fsync first
        assert store.partition("g", 0).append_nowait([(b"a", 0, 1, -1)]) is None
        assert store.max_offset("g", 0) == 0
    with LogStore(data_dir, unflush_threshold=1000, unflush_interval=60_000) as store:
        plog = store.partition("t", 0)
        with plog._write_lock:             # a flush in progress holds the write lock
            assert plog.append_nowait([(b"a", 0, 1, -1)]) is None
        assert plog.append_nowait([(b"a", 0, 1, -1)]) == 0
        with pytest.raises(MessageTooLargeError):
            plog.append_nowait([(b"z" * (1024 * 1024), 0, 2, -1)])
    with pytest.raises(StoreClosedError):
        plog.append_nowait([(b"a", 0, 1, -1)])


def test_close_drains_and_syncs_threshold_mode(data_dir):
    store = LogStore(data_dir, unflush_threshold=1000, unflush_interval=600_000)
    store.append("t", 0, b"pending")
    store.close()
    with LogStore(data_dir) as again:
        assert [m.body for m in again.read("t", 0, 0).messages] == [b"pending"]


def test_statistics_are_counters(data_dir):
    with LogStore(data_dir) as store:
        store.append_many("t", 0, [b"a", b"b"])
        store.append("t", 1 - 1, b"c")
        stats = store.statistics()
        assert (stats.partitions, stats.appends, stats.records) == (1, 2, 3)
        assert stats.bytes_appended == 3 * 21 == stats.size_bytes
        assert stats.per_partition["t-0"].message_count == 3


# ---------------------------------------------------------------------------- trio flavour


async def test_trio_appends_and_reads(data_dir):
    async with LogStore(data_dir, num_partitions=2) as store:
        results = {}

        async def producer(n):
            results[n] = [await store.append_async("t", n % 2, b"m%d-%d" % (n, i)) for i in range(25)]

        async with trio.open_nursery() as nursery:
            for n in range(16):
                nursery.start_soon(producer, n)
        for part in (0, 1):
            read = await store.read_async("t", part, 0, 1 << 20)
            assert len(read.messages) == 200
            by_offset = {m.offset: m.body for m in read.messages}
            for n in range(part, 16, 2):
                assert [by_offset[r.offset] for r in results[n]] == [b"m%d-%d" % (n, i) for i in range(25)]
        stats = store.statistics()
        assert stats.batches < stats.appends  # trio appends were grouped too


async def test_trio_append_many_and_errors(data_dir):
    async with LogStore(data_dir, max_transfer_size=100) as store:
        got = await store.append_many_async("t", 0, [b"a", b"b"], attribute="k")
        assert [r.offset for r in got] == [0, 20 + 4 + 1 + 1]
        with pytest.raises(MessageTooLargeError):
            await store.append_async("t", 0, b"x" * 200)
        with pytest.raises(InvalidTopicError):
            await store.append_async("../x", 0, b"x")


# ------------------------------------------------------------------------- read-only view


def test_read_only_view_of_a_live_store(data_dir):
    with LogStore(data_dir, max_segment_size=300) as writer:
        writer.append("t", 0, b"first")
        with LogStore(data_dir, read_only=True) as reader:
            assert [m.body for m in reader.read("t", 0, 0).messages] == [b"first"]
            for i in range(30):
                writer.append("t", 0, b"later-%02d" % i)
            writer.append("u", 0, b"new topic")
            reader.refresh()
            assert reader.max_offset("t", 0) == writer.max_offset("t", 0)
            bodies, offset = [], 0
            while offset < reader.max_offset("t", 0):
                result = reader.read("t", 0, offset)
                bodies += [m.body for m in result.messages]
                offset = result.next_offset
            assert bodies == [b"first"] + [b"later-%02d" % i for i in range(30)]
            assert reader.read("u", 0, 0).messages[0].body == b"new topic"


def test_parallel_loading(data_dir):
    with LogStore(data_dir, num_partitions=8) as store:
        for p in range(8):
            for t in ("a", "b"):
                store.append(t, p, b"%s%d" % (t.encode(), p))
    with LogStore(data_dir, load_in_parallel=True) as store:
        assert store.topics() == ["a", "b"] and store.partitions("a") == list(range(8))
        assert store.read("b", 7, 0).messages[0].body == b"b7"


def test_settings_per_topic(tmp_path):
    from metaq_core import LogSettings
    special = LogSettings(num_partitions=2, data_path=str(tmp_path / "elsewhere"))

    def settings_for(topic):
        return special if topic == "special" else LogSettings(num_partitions=1)

    with LogStore(tmp_path / "main", settings_for=settings_for, extra_paths=[special.data_path]) as store:
        store.append("special", 1, b"s")
        with pytest.raises(InvalidPartitionError):
            store.append("plain", 1, b"p")
    assert os.path.isdir(tmp_path / "elsewhere" / "special-1")
    with LogStore(tmp_path / "main", settings_for=settings_for, extra_paths=[special.data_path]) as store:
        assert store.read("special", 1, 0).messages[0].body == b"s"


# ------------------------------------------------------------------------------- retention


def test_retention_delete_keeps_the_newest_segment(data_dir):
    with LogStore(data_dir, max_segment_size=100) as store:
        for _ in range(7):
            store.append("t", 0, b"x" * 30)
        plog = store.partition("t", 0)
        plog.flush()
        segs = plog.segments()
        assert len(segs) == 4
        old = time.time() - 10 * 3600
        for seg in segs:
            os.utime(seg.path, (old, old))
        removed = apply_policy(plog, RetentionPolicy.parse("delete,5h"))
        assert [os.path.basename(p) for p in removed] == [segment_file_name(s) for s in (0, 100, 200)]
        assert segment_files(plog.directory) == [segment_file_name(300)]
        assert plog.min_offset == 300
        with pytest.raises(OffsetOutOfRangeError) as info:
            store.read("t", 0, 0)
        assert info.value.before_start and info.value.min_offset == 300
    with LogStore(data_dir) as store:  # still loads: the remaining segments are contiguous
        assert store.min_offset("t", 0) == 300


def test_retention_longest_prefix_only_and_archive(data_dir):
    with LogStore(data_dir, max_segment_size=100) as store:
        for _ in range(8):
            store.append("t", 0, b"x" * 30)
        plog = store.partition("t", 0)
        plog.flush()
        segs = plog.segments()
        now = time.time()
        ages = [100, 10, 100, 100, 0]  # seconds; the 2nd is young, so only the 1st goes
        for seg, age in zip(segs, ages):
            os.utime(seg.path, (now - age, now - age))
        apply_policy(plog, RetentionPolicy.parse("archive,50s"), now)
        assert plog.min_offset == 100
        assert os.path.exists(segs[0].path + ".arc") and not os.path.exists(segs[0].path)
        for seg in plog.segments():
            os.utime(seg.path, (now - 100, now - 100))
        apply_policy(plog, RetentionPolicy.parse("archive,1m,true"), now)
        import zipfile
        with zipfile.ZipFile(segs[1].path + ".zip") as archive:
            assert archive.namelist() == [os.path.basename(segs[1].path)]
            assert len(archive.read(archive.namelist()[0])) == 100
        assert plog.min_offset == plog.segments()[-1].start


@pytest.mark.parametrize("text,seconds,action,compress", [
    ("delete,168", 168 * 3600, "delete", False), ("delete,30s", 30, "delete", False),
    ("delete,10m", 600, "delete", False), ("delete,2h", 7200, "delete", False),
    ("archive,5", 5 * 3600, "archive", False), ("archive,5,true", 5 * 3600, "archive", True),
    ("archive,5,false", 5 * 3600, "archive", False),
])
def test_policy_parsing(text, seconds, action, compress):
    policy = RetentionPolicy.parse(text)
    assert (policy.max_age_seconds, policy.action, policy.compress) == (seconds, action, compress)


@pytest.mark.parametrize("text", ["delete", "delete,", "drop,5", "delete,5d", "delete,-1", "", "archive"])
def test_bad_policies(text):
    with pytest.raises(PolicyError):
        RetentionPolicy.parse(text)


# ------------------------------------------------------------------------------------ ids


def test_ids_layout_and_uniqueness():
    worker = IdWorker(513)
    ids = worker.next_ids(10_000)
    assert ids == sorted(ids) and len(set(ids)) == 10_000
    ms, broker, _seq = split_id(ids[0])
    assert broker == 513 and abs(ms - time.time() * 1000) < 5000
    assert ids[0] >> 22 == ms - EPOCH_MS


def test_ids_sequence_overflow_waits_for_the_next_millisecond():
    clock = iter([1000] * 4097 + [1000, 1001, 1001])
    worker = IdWorker(1, clock=lambda: EPOCH_MS + next(clock))
    ids = [worker.next_id() for _ in range(4097)]
    assert [i & 0xFFF for i in ids[:4096]] == list(range(4096))
    assert ids[4096] >> 22 == 1001 and ids[4096] & 0xFFF == 0
    assert len(set(ids)) == 4097


def test_clock_going_backwards_is_an_error():
    times = iter([EPOCH_MS + 50, EPOCH_MS + 49])
    worker = IdWorker(0, clock=lambda: next(times))
    worker.next_id()
    with pytest.raises(ClockBackwardsError):
        worker.next_id()


@pytest.mark.parametrize("bad", [-1, 1024, True, "1"])
def test_broker_id_range(bad):
    with pytest.raises(ValueError):
        IdWorker(bad)


# ------------------------------------------------------------------- model-based property test


class LogModel(RuleBasedStateMachine):
    """Random appends, batches, reads, flushes and reopenings agree with an in-memory list."""

    def __init__(self):
        super().__init__()
        import tempfile
        self.dir = tempfile.mkdtemp(prefix="metaq-model-")
        self.max_segment = 256
        self.store = LogStore(self.dir, max_segment_size=self.max_segment, max_transfer_size=4096,
                              num_partitions=2)
        self.model: dict[int, list[tuple[int, bytes, str | None]]] = {0: [], 1: []}
        self.ends = {0: 0, 1: 0}

    def _record(self, partition, appended, body, attribute):
        assert appended.offset == self.ends[partition]
        self.model[partition].append((appended.offset, body, attribute))
        self.ends[partition] += appended.size

    @rule(partition=st.integers(0, 1), body=st.binary(max_size=300),
          attribute=st.one_of(st.none(), st.text(max_size=10)))
    def append(self, partition, body, attribute):
        self._record(partition, self.store.append("m", partition, body, attribute=attribute), body, attribute)

    @rule(partition=st.integers(0, 1), bodies=st.lists(st.binary(max_size=120), min_size=1, max_size=6))
    def append_many(self, partition, bodies):
        for appended, body in zip(self.store.append_many("m", partition, bodies), bodies):
            self._record(partition, appended, body, None)

    @rule()
    def reopen(self):
        self.store.close()
        self.store = LogStore(self.dir, max_segment_size=self.max_segment, max_transfer_size=4096,
                              num_partitions=2)

    @precondition(lambda self: any(self.model.values()))
    @rule(data=st.data(), max_bytes=st.integers(1, 2000))
    def read_from_a_record(self, data, max_bytes):
        partition = data.draw(st.sampled_from([p for p in (0, 1) if self.model[p]]))
        index = data.draw(st.integers(0, len(self.model[partition]) - 1))
        offset = self.model[partition][index][0]
        result = self.store.read("m", partition, offset, max_bytes)
        expected = self.model[partition][index:index + len(result.messages)]
        assert result.messages, "a read from a record boundary always returns a record"
        assert [(m.offset, m.body, m.attribute) for m in result.messages] == expected
        last = result.messages[-1]
        assert result.next_offset == (self.model[partition][index + len(result.messages)][0]
                                      if index + len(result.messages) < len(self.model[partition])
                                      else self.ends[partition])
        assert last.offset < result.next_offset

    @invariant()
    def ends_match(self):
        for partition in (0, 1):
            if self.model[partition]:
                assert self.store.max_offset("m", partition) == self.ends[partition]
                plog = self.store.partition("m", partition)
                segs = plog.segments()
                for a, b in zip(segs, segs[1:]):
                    assert a.start + a.written == b.start  # contiguous, no straddling
                    assert a.written >= self.max_segment or a.written == 0

    def teardown(self):
        self.store.close()
        import shutil
        shutil.rmtree(self.dir, ignore_errors=True)


TestLogModel = LogModel.TestCase
TestLogModel.settings = settings(max_examples=40, stateful_step_count=30, deadline=None,
                                 suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.parametrize("threshold", [0, 1000], ids=["group-commit", "threshold"])
def test_a_writer_thread_that_fails_unexpectedly_fails_the_log_and_answers_every_waiter(
        data_dir, monkeypatch, threshold):
    """Not an I/O error but a bug (here: the batch write raises TypeError). Every append the
    writer held or had queued is answered with a StorageIOError instead of waiting for a writer
    that is gone, and the log refuses later appends."""
    from metaq_core import StorageIOError, partition

    with LogStore(data_dir, unflush_threshold=threshold) as store:
        store.append("t", 0, b"before")
        plog = store.partition("t", 0)

        def broken(*args, **kwargs):
            raise TypeError("a bug in the batch write")

        monkeypatch.setattr(partition._segment, "append_records", broken)
        errors: list[BaseException | None] = []

        def appender(k: int) -> None:  # what append_many and append_async do: queue and wait
            latch = partition.new_latch()
            try:
                request = plog.submit([(b"%d" % k, 0, k + 1, -1)], partition.THREAD_SINK, latch)
            except StorageIOError as exc:  # the log had failed already
                errors.append(exc)
                return
            latch.acquire()
            errors.append(request.error)

        threads = [threading.Thread(target=appender, args=(k,), daemon=True) for k in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        for t in threads:
            t.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in threads)  # nobody is left waiting
        assert len(errors) == 8
        assert all(isinstance(e, StorageIOError) for e in errors), errors
        assert all("writer thread failed" in str(e) for e in errors), errors
        with pytest.raises(StorageIOError):
            store.append("t", 0, b"after")

"""Part ``core``: the storage engine (metaq_core) measured side by side with raw Python I/O.

0. calibration: a bare Python thread hand-off round trip, before and after (this VM's scheduling
   latency swings several-fold, and every blocking append pays one hand-off);
1. the data disk's raw fdatasync rate (write 4 KiB + fdatasync);
2. embedded appends through ``LogStore`` — 100 B / 1 KiB / 4 KiB messages, 1 / 16 / 64 blocking
   appender threads and 64 trio tasks, all on one partition, in group-commit and threshold mode;
3. for each of those, a raw ``os.writev`` + ``os.fdatasync`` loop writing the same records in
   the same batches (the batch size the engine reached in that very repetition);
4. the recovery scan (``_segment.scan_file``) against ``zlib.crc32`` over the same bytes (the
   target's baseline) and against the engine's own CRC-32 (carry-less multiplication where the
   CPU has it, several times zlib's speed), and the time to open a LogStore on that segment;
5. durable group-commit appends with 64 appenders ÷ the raw fdatasync rate.

``run(ctx)`` measures and returns a PartResult (JSON data, summary tables, targets).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench import rawio
from bench.common import (
    GB,
    CpuSampler,
    MB,
    MIB,
    PartResult,
    RunContext,
    Table,
    Target,
    clear_dir,
    data_dir,
    figure,
    fmt_number,
    median,
    progress,
    ratio,
    size_label,
)

TOPIC = "bench"
SIZES = (100, 1024, 4096)
THREAD_APPENDERS = (1, 16, 64)
TRIO_APPENDERS = (64,)
HEADER = 20
MODES: dict[str, dict[str, int]] = {
    "group-commit": {"unflush_threshold": 0},
    "threshold": {"unflush_threshold": 1000, "unflush_interval": 10_000},
}
RAW_SYNC_EVERY = {"group-commit": None, "threshold": 1000}

GROUP_COMMIT_TARGET = 20.0      # × raw fdatasync rate, 64 appenders
BANDWIDTH_TARGET = 0.5          # × raw writev baseline, every case
SCAN_TARGET = 0.5               # × zlib.crc32


@dataclass(frozen=True)
class Timing:
    """Durations (seconds) of one run: full or --quick."""

    calibration: float  # thread round-trip loop, before and after the part
    probe: float        # thread round-trip probe after each repetition of a case
    fsync: float        # raw fdatasync loop
    warmup: float       # appenders run before the measured window opens
    window: float       # measured window of an engine case
    raw: float          # raw writev baseline of a case
    scan_bytes: int     # size of the segment the recovery scan reads
    scan_repeats: int = 3

    @classmethod
    def for_run(cls, quick: bool) -> Timing:
        if quick:
            return cls(calibration=0.2, probe=0.03, fsync=0.5, warmup=0.08, window=0.2,
                       raw=0.15, scan_bytes=32 * MIB)
        return cls(calibration=1.0, probe=0.1, fsync=2.0, warmup=0.5, window=3.0,
                   raw=3.0, scan_bytes=256 * MIB)


@dataclass(frozen=True)
class AppendCase:
    mode: str           # "group-commit" or "threshold"
    size: int           # payload bytes
    appenders: int
    driver: str         # "threads" or "trio"

    @property
    def label(self) -> str:
        return f"{self.mode} {size_label(self.size)} × {self.appenders} {self.driver}"

    def as_json(self) -> dict:
        return {"mode": self.mode, "payload_bytes": self.size, "record_bytes": HEADER + self.size,
                "appenders": self.appenders, "driver": self.driver,
                "partitions": 1, "settings": MODES[self.mode]}


def append_cases() -> list[AppendCase]:
    cases = []
    for mode in MODES:
        for size in SIZES:
            for appenders in THREAD_APPENDERS:
                cases.append(AppendCase(mode, size, appenders, "threads"))
            for appenders in TRIO_APPENDERS:
                cases.append(AppendCase(mode, size, appenders, "trio"))
    return cases


# ----------------------------------------------------------------------- 0. calibration

def measure_round_trip(timing: Timing, when: str) -> dict:
    count, elapsed = rawio.thread_round_trip(timing.calibration)
    per_us = elapsed / count * 1e6
    progress(f"thread hand-off round trip ({when}): {count / elapsed:,.0f}/s, {per_us:.0f} µs each")
    return {"round_trips_per_s": figure(count / elapsed, "round trips/s"),
            "round_trip": figure(per_us, "µs")}


# ------------------------------------------------------------------- 1. raw fdatasync rate

def measure_fdatasync(directory: str, timing: Timing) -> dict:
    rate = rawio.fdatasync_rate(os.path.join(directory, "fdatasync.bin"), timing.fsync)
    result = {
        "syncs_per_s": figure(rate.per_second, "syncs/s"),
        "p50_latency": figure(rate.latency_us(0.50), "µs"),
        "p99_latency": figure(rate.latency_us(0.99), "µs"),
        "duration": figure(rate.elapsed, "s"),
        "block": figure(4096, "B"),
    }
    progress(f"raw fdatasync: {rate.per_second:,.0f} syncs/s, p50 {rate.latency_us(0.5):.0f} µs, "
             f"p99 {rate.latency_us(0.99):.0f} µs")
    return result


# ----------------------------------------------------------- 2. embedded appends (metaq)

@dataclass
class Snapshot:
    at: float
    cpu: float          # this process's CPU seconds (all threads, user + system)
    records: int
    nbytes: int
    batches: int
    syncs: int


def snapshot(plog) -> Snapshot:
    stats = plog.statistics()
    return Snapshot(time.perf_counter(), time.process_time(), stats.records, stats.bytes_appended, stats.batches, stats.syncs)


def window_figures(first: Snapshot, last: Snapshot) -> dict[str, float]:
    """Rates between two snapshots of the partition's counters."""
    elapsed = last.at - first.at
    records = last.records - first.records
    batches = last.batches - first.batches
    return {
        "elapsed": elapsed,
        "records": records,
        "msg_per_s": records / elapsed,
        "mb_per_s": (last.nbytes - first.nbytes) / elapsed / MB,
        "mean_batch": records / batches if batches else 0.0,
        "syncs_per_s": (last.syncs - first.syncs) / elapsed,
        "cpu_cores": (last.cpu - first.cpu) / elapsed,
    }


def drive_threads(store, payload: bytes, appenders: int, timing: Timing) -> dict[str, float]:
    """``appenders`` threads each calling the blocking ``store.append_data`` in a loop."""
    plog = store.partition(TOPIC, 0)
    stop = threading.Event()
    barrier = threading.Barrier(appenders + 1)
    errors: list[BaseException] = []

    def appender() -> None:
        append = store.append_data
        barrier.wait()
        try:
            while not stop.is_set():
                append(TOPIC, 0, payload)
        except BaseException as exc:  # reported after the join
            errors.append(exc)

    threads = [threading.Thread(target=appender, name=f"bench-appender-{i}", daemon=True)
               for i in range(appenders)]
    for thread in threads:
        thread.start()
    barrier.wait()
    time.sleep(timing.warmup)
    first = snapshot(plog)
    time.sleep(timing.window)
    last = snapshot(plog)
    stop.set()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return window_figures(first, last)


def drive_trio(store, payload: bytes, appenders: int, timing: Timing) -> dict[str, float]:
    """``appenders`` trio tasks each awaiting ``store.append_async`` in a loop."""
    import trio

    async def main() -> dict[str, float]:
        plog = store.partition(TOPIC, 0)

        async def appender() -> None:
            while True:
                await store.append_async(TOPIC, 0, payload)

        async with trio.open_nursery() as nursery:
            for _ in range(appenders):
                nursery.start_soon(appender)
            await trio.sleep(timing.warmup)
            first = snapshot(plog)
            await trio.sleep(timing.window)
            last = snapshot(plog)
            nursery.cancel_scope.cancel()
        return window_figures(first, last)

    return trio.run(main)


DRIVERS: dict[str, Callable[..., dict[str, float]]] = {"threads": drive_threads, "trio": drive_trio}


def run_engine(case: AppendCase, directory: str, timing: Timing) -> dict[str, float]:
    """One repetition of an engine case on a fresh store in ``directory``."""
    from metaq_core import LogStore

    payload = os.urandom(case.size)
    with LogStore(directory, **MODES[case.mode]) as store:
        return DRIVERS[case.driver](store, payload, case.appenders, timing)


# ------------------------------------------------------------------ 3. the raw baseline

def run_raw(case: AppendCase, directory: str, batch: int, timing: Timing) -> dict[str, float]:
    """The same records, ``batch`` per os.writev, synced as the case's flush mode does."""
    from metaq_core.record import encode_record

    records = [encode_record(i + 1, 0, os.urandom(case.size)) for i in range(batch)]
    cpu = time.process_time()
    run = rawio.writev_loop(os.path.join(directory, "raw.bin"), records, timing.raw,
                            sync_every=RAW_SYNC_EVERY[case.mode])
    cpu = time.process_time() - cpu
    return {
        "elapsed": run.elapsed,
        "records": run.records,
        "batch": batch,
        "msg_per_s": run.records_per_second,
        "mb_per_s": run.bytes_per_second / MB,
        "syncs_per_s": run.syncs / run.elapsed,
        "cpu_cores": cpu / run.elapsed,
    }


def measure_case(case: AppendCase, directory: str, timing: Timing, repetitions: int,
                 position: str) -> dict:
    """Repeat (engine, then raw at the engine's batch size) and keep the medians."""
    engine_runs, raw_runs = [], []
    for rep in range(repetitions):
        engine = run_engine(case, directory, timing)
        clear_dir(directory)
        batch = max(1, round(engine["mean_batch"]))
        raw = run_raw(case, directory, batch, timing)
        clear_dir(directory)
        count, elapsed = rawio.thread_round_trip(timing.probe)
        engine["handoff_us"] = elapsed / count * 1e6
        engine_runs.append(engine)
        raw_runs.append(raw)
        progress(f"{position} {case.label} rep {rep + 1}/{repetitions}: "
                 f"{engine['msg_per_s']:,.0f} msg/s {engine['mb_per_s']:.1f} MB/s "
                 f"batch {engine['mean_batch']:.1f} | raw {raw['mb_per_s']:.1f} MB/s "
                 f"→ {engine['mb_per_s'] / raw['mb_per_s']:.2f}× (hand-off {engine['handoff_us']:.0f} µs)")
    return summarize_case(case, engine_runs, raw_runs)


def summarize_case(case: AppendCase, engine_runs: list[dict], raw_runs: list[dict]) -> dict:
    def med(runs: list[dict], key: str) -> float:
        return median([r[key] for r in runs])

    engine_mb, raw_mb = med(engine_runs, "mb_per_s"), med(raw_runs, "mb_per_s")
    return {
        "case": case.as_json(),
        "metaq": {
            "msg_per_s": figure(med(engine_runs, "msg_per_s"), "msg/s"),
            "mb_per_s": figure(engine_mb, "MB/s"),
            "mean_batch": figure(med(engine_runs, "mean_batch"), "records/batch"),
            "syncs_per_s": figure(med(engine_runs, "syncs_per_s"), "syncs/s"),
            "cpu": figure(med(engine_runs, "cpu_cores"), "cores"),
            "thread_handoff": figure(med(engine_runs, "handoff_us"), "µs"),
            "runs": engine_runs,
        },
        "raw": {
            "msg_per_s": figure(med(raw_runs, "msg_per_s"), "msg/s"),
            "mb_per_s": figure(raw_mb, "MB/s"),
            "batch": figure(med(raw_runs, "batch"), "records/writev"),
            "syncs_per_s": figure(med(raw_runs, "syncs_per_s"), "syncs/s"),
            "cpu": figure(med(raw_runs, "cpu_cores"), "cores"),
            "runs": raw_runs,
        },
        "metaq_over_raw": figure(ratio(engine_mb, raw_mb), "×"),
    }


def measure_appends(directory: str, timing: Timing, repetitions: int) -> list[dict]:
    cases = append_cases()
    results = []
    for index, case in enumerate(cases, 1):
        results.append(measure_case(case, directory, timing, repetitions,
                                    f"[{index:2d}/{len(cases)}]"))
    return results


# ------------------------------------------------------------------- 4. recovery scan

def build_segment(path: str, target_bytes: int, payload: int = 1024) -> tuple[int, int]:
    """Write ~``target_bytes`` of valid ``payload``-byte records; returns (bytes, records)."""
    from metaq_core.record import encode_record

    noise = os.urandom(payload * 1024)
    chunk = b"".join(encode_record(i + 1, 0, noise[i * payload:(i + 1) * payload])
                     for i in range(1024))
    repeats = max(1, target_bytes // len(chunk))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        for _ in range(repeats):
            os.write(fd, chunk)
        os.fsync(fd)   # no writeback competing with the timed scans
    finally:
        os.close(fd)
    return repeats * len(chunk), repeats * 1024


def time_scans(path: str, size: int, records: int, repeats: int) -> list[float]:
    from metaq_core import _segment

    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        count, end, _status = _segment.scan_file(fd, 0, size)   # warm the page cache
        if (count, end) != (records, size):
            raise RuntimeError(f"scan_file found {count} records / {end} bytes, "
                               f"expected {records} / {size}")
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            _segment.scan_file(fd, 0, size)
            times.append(time.perf_counter() - start)
        return times
    finally:
        os.close(fd)


def time_crc32(path: str, repeats: int) -> tuple[list[float], list[float]]:
    """Seconds of ``zlib.crc32`` and of the engine's own CRC-32 (``_crc.crc32_of``: carry-less
    multiplication where the CPU has it) over the segment's bytes in one call each."""
    from metaq_core import _crc

    with open(path, "rb") as source:
        data = source.read()
    engine = []
    for _ in range(repeats):
        start = time.perf_counter()
        _crc.crc32_of(data)
        engine.append(time.perf_counter() - start)
    return [rawio.crc32_seconds(data) for _ in range(repeats)], engine


def time_store_opens(directory: str, repeats: int) -> list[float]:
    """Seconds to open a LogStore whose only partition is the segment (recovery on open)."""
    from metaq_core import LogStore

    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        store = LogStore(directory)
        times.append(time.perf_counter() - start)
        store.close()
    return times


def measure_recovery(directory: str, timing: Timing) -> dict:
    from metaq_core.naming import segment_file_name, store_dir_name

    partition_dir = os.path.join(directory, store_dir_name(TOPIC, 0))
    os.makedirs(partition_dir)
    path = os.path.join(partition_dir, segment_file_name(0))
    size, records = build_segment(path, timing.scan_bytes)
    scan = median(time_scans(path, size, records, timing.scan_repeats))
    zlib_times, engine_times = time_crc32(path, timing.scan_repeats)
    crc, engine_crc = median(zlib_times), median(engine_times)
    opened = median(time_store_opens(directory, timing.scan_repeats))
    result = {
        "segment_bytes": figure(size, "B"),
        "records": figure(records, "records"),
        "record_bytes": figure(size // records, "B"),
        "scan_file": figure(size / scan / GB, "GB/s"),
        "zlib_crc32": figure(size / crc / GB, "GB/s"),
        "scan_over_crc32": figure(crc / scan, "×"),
        "engine_crc32": figure(size / engine_crc / GB, "GB/s"),
        "engine_crc32_implementation": _crc_implementation(),
        "scan_over_engine_crc32": figure(engine_crc / scan, "×"),
        "store_open": figure(opened, "s"),
        "store_open_rate": figure(size / opened / GB, "GB/s"),
    }
    progress(f"recovery scan of {size / MIB:.0f} MiB: scan_file {size / scan / GB:.2f} GB/s, "
             f"zlib.crc32 {size / crc / GB:.2f} GB/s, the engine's CRC-32 ({_crc_implementation()}) "
             f"{size / engine_crc / GB:.2f} GB/s, LogStore open {opened * 1000:.0f} ms")
    return result


def _crc_implementation() -> str:
    from metaq_core import _crc

    return _crc.implementation


# ------------------------------------------------------------ 5. targets and the summary

def group_commit_vs_fsync(appends: list[dict], fsync_rate: float) -> list[dict]:
    rows = []
    for entry in appends:
        case = entry["case"]
        if case["mode"] == "group-commit" and case["appenders"] == 64:
            rate = entry["metaq"]["msg_per_s"]["value"]
            rows.append({"payload_bytes": case["payload_bytes"], "driver": case["driver"],
                         "msg_per_s": figure(rate, "msg/s"),
                         "over_fdatasync": figure(ratio(rate, fsync_rate), "×")})
    return rows


def targets(data: dict) -> list[Target]:
    found = []
    for row in data["group_commit_vs_fdatasync"]:
        found.append(Target(
            f"group commit, 64 {row['driver']}, {size_label(row['payload_bytes'])}: "
            "msg/s ÷ raw fdatasync/s", row["over_fdatasync"]["value"], GROUP_COMMIT_TARGET))
    for entry in data["appends"]:
        case = entry["case"]
        label = AppendCase(case["mode"], case["payload_bytes"], case["appenders"], case["driver"]).label
        found.append(Target(f"bandwidth {label}: metaq ÷ raw writev",
                            entry["metaq_over_raw"]["value"], BANDWIDTH_TARGET))
    found.append(Target("recovery scan ÷ zlib.crc32", data["recovery"]["scan_over_crc32"]["value"],
                        SCAN_TARGET))
    return found


def _v(fig: dict, digits: int = 0) -> str:
    return fmt_number(fig["value"], digits)


def tables(data: dict, repetitions: int) -> list[Table]:
    fsync, calib = data["fdatasync"], data["calibration"]
    cpu = data.get("machine_cpu", {})
    disk = Table("Machine: raw disk (write 4 KiB + fdatasync) and thread hand-off",
                 ["figure", "value", "unit"], [
        ["fdatasync rate", _v(fsync["syncs_per_s"]), "syncs/s"],
        ["fdatasync p50 latency", _v(fsync["p50_latency"]), "µs"],
        ["fdatasync p99 latency", _v(fsync["p99_latency"]), "µs"],
        ["thread hand-off round trip, before", _v(calib["before"]["round_trip"]), "µs"],
        ["thread hand-off round trip, after", _v(calib["after"]["round_trip"]), "µs"],
        ["CPU busy / steal during the part",
         f"{_v(cpu['busy'], 0)} / {_v(cpu['steal'], 1)}" if cpu else "-", "%"],
    ])
    rows = []
    for entry in data["appends"]:
        case, metaq, raw = entry["case"], entry["metaq"], entry["raw"]
        rows.append([case["mode"], case["driver"], size_label(case["payload_bytes"]),
                     str(case["appenders"]), _v(metaq["msg_per_s"]), _v(metaq["mb_per_s"], 1),
                     _v(metaq["mean_batch"], 1), _v(metaq["syncs_per_s"]), _v(metaq["cpu"], 2),
                     _v(raw["msg_per_s"]), _v(raw["mb_per_s"], 1), _v(entry["metaq_over_raw"], 2),
                     _v(metaq["thread_handoff"])])
    appends = Table(
        f"Embedded appends, one partition (median of {repetitions}; raw = os.writev+fdatasync, "
        "same records and batches)",
        ["mode", "driver", "size", "appenders", "msg/s", "MB/s", "batch", "syncs/s", "CPU",
         "raw msg/s", "raw MB/s", "metaq/raw", "hand-off µs"], rows, right_align_from=2)
    gc = Table("Durable group commit, 64 appenders ÷ raw fdatasync rate",
               ["size", "driver", "msg/s", "× fdatasync/s"],
               [[size_label(r["payload_bytes"]), r["driver"], _v(r["msg_per_s"]),
                 _v(r["over_fdatasync"], 1)] for r in data["group_commit_vs_fdatasync"]],
               right_align_from=2)
    rec = data["recovery"]
    recovery = Table(
        f"Recovery scan ({fmt_number(rec['segment_bytes']['value'] / MIB)} MiB of "
        f"{rec['record_bytes']['value']} B records, page cache, median of 3)",
        ["figure", "value", "unit"], [
            ["_segment.scan_file", _v(rec["scan_file"], 2), "GB/s"],
            ["zlib.crc32 (one call, in memory)", _v(rec["zlib_crc32"], 2), "GB/s"],
            ["scan_file ÷ crc32", _v(rec["scan_over_crc32"], 2), "×"],
            [f"the engine's CRC-32 ({rec.get('engine_crc32_implementation', '?')}, one call)",
             _v(rec.get("engine_crc32"), 2), "GB/s"],
            ["scan_file ÷ the engine's CRC-32", _v(rec.get("scan_over_engine_crc32"), 2), "×"],
            ["LogStore open (recovery)", _v({"value": rec["store_open"]["value"] * 1000}, 0), "ms"],
            ["LogStore open rate", _v(rec["store_open_rate"], 2), "GB/s"],
        ])
    return [disk, appends, gc, recovery]


# ---------------------------------------------------------------------------- the part

def run(ctx: RunContext) -> PartResult:
    timing = Timing.for_run(ctx.quick)
    reps = ctx.repetitions
    progress(f"core: {len(append_cases())} append cases × {reps} repetition(s), "
             f"window {timing.window:g} s (+{timing.warmup:g} s warm-up), raw {timing.raw:g} s")
    sampler = CpuSampler().start()
    with data_dir(ctx.data_root, "core-") as directory:
        before = measure_round_trip(timing, "before")
        fsync = measure_fdatasync(directory, timing)
        appends_dir = os.path.join(directory, "appends")
        os.makedirs(appends_dir)
        appends = measure_appends(appends_dir, timing, reps)
        recovery_dir = os.path.join(directory, "recovery")
        recovery = measure_recovery(recovery_dir, timing)
        after = measure_round_trip(timing, "after")
    data = {
        "settings": {
            "quick": ctx.quick, "repetitions": reps, "statistic": "median",
            "calibration_loop": figure(timing.calibration, "s"),
            "fdatasync_loop": figure(timing.fsync, "s"), "warmup": figure(timing.warmup, "s"),
            "engine_window": figure(timing.window, "s"), "raw_window": figure(timing.raw, "s"),
            "scan_target_bytes": figure(timing.scan_bytes, "B"),
        },
        "machine_cpu": sampler.stop(),
        "calibration": {"before": before, "after": after},
        "fdatasync": fsync,
        "appends": appends,
        "recovery": recovery,
        "group_commit_vs_fdatasync": group_commit_vs_fsync(appends, fsync["syncs_per_s"]["value"]),
    }
    found = targets(data)
    data["targets"] = [t.as_json() for t in found]
    return PartResult(data, tables(data, reps), found)

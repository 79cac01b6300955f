"""Part ``limits``: the physical limits of this machine, measured in the same run as the parts
they bound, and the ratios of the other parts' figures to them.

* fdatasync rate of the data directory's disk: write 4 KiB + ``os.fdatasync`` in a loop (the
  core part's measurement, ``bench/core.py``), syncs/s and p50/p99 latency;
* sequential write bandwidth of that disk: 4 MiB per ``os.writev`` + ``os.fdatasync`` after each
  (``bench/rawio.writev_loop``), MB/s;
* CRC-32 speed: ``zlib.crc32`` over a 64 MiB buffer in one call, and over the same bytes in
  1 KiB calls (the size of the benchmark messages), GB/s;
* loopback TCP bandwidth: one Python process sending 1 MiB ``send`` calls to another
  (``bench/loadgen.run_raw_loopback``), MB/s;
* loopback TCP round trip: 64 bytes ping-ponged between two processes (TCP_NODELAY), one at a
  time, p50/p99 µs.

``ratios_to_limits(results)`` relates the figures of the other parts found in a results.json
(puts, drain, recovery scan) to these limits. ``run(ctx) -> PartResult`` like every part.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import time
import zlib
from dataclasses import dataclass

from bench import loadgen, rawio
from bench.common import (
    GB,
    KIB,
    MB,
    MIB,
    PartResult,
    RunContext,
    Table,
    data_dir,
    figure,
    fmt_number,
    median,
    progress,
    ratio,
)

WRITE_CHUNK = 1 * MIB
WRITE_BATCH = 4                 # chunks per os.writev + fdatasync
CRC_BUFFER = 64 * MIB
RTT_MESSAGE = 64
LOOPBACK_CHUNK = 1 * MIB


@dataclass(frozen=True)
class Timing:
    fsync: float            # fdatasync loop
    write: float            # sequential write loop
    loopback_bytes: int     # bytes one loopback bandwidth repetition moves
    rtt: float              # round-trip loop
    repetitions: int

    @classmethod
    def for_run(cls, quick: bool) -> Timing:
        if quick:
            return cls(fsync=0.5, write=0.5, loopback_bytes=256 * MIB, rtt=0.3, repetitions=1)
        return cls(fsync=2.0, write=2.0, loopback_bytes=2048 * MIB, rtt=2.0, repetitions=3)


# ------------------------------------------------------------------------------- disk

def measure_fdatasync(directory: str, timing: Timing) -> dict:
    """Write 4 KiB + fdatasync, again and again (the core part's loop and figures)."""
    from bench import core

    return core.measure_fdatasync(directory, dataclasses.replace(core.Timing.for_run(True),
                                                                 fsync=timing.fsync))


def measure_sequential_write(directory: str, timing: Timing) -> dict:
    chunks = [os.urandom(WRITE_CHUNK) for _ in range(WRITE_BATCH)]
    runs = [rawio.writev_loop(os.path.join(directory, "sequential.bin"), chunks, timing.write)
            for _ in range(timing.repetitions)]
    mb = median([r.bytes_per_second / MB for r in runs])
    syncs = median([r.syncs / r.elapsed for r in runs])
    progress(f"sequential write ({WRITE_BATCH} MiB per writev + fdatasync): {mb:,.0f} MB/s")
    return {"mb_per_s": figure(mb, "MB/s"), "syncs_per_s": figure(syncs, "syncs/s"),
            "write_size": figure(WRITE_CHUNK * WRITE_BATCH, "B"),
            "duration": figure(timing.write, "s")}


# -------------------------------------------------------------------------------- CPU

def measure_crc32(timing: Timing) -> dict:
    data = os.urandom(CRC_BUFFER)
    whole = median([rawio.crc32_seconds(data) for _ in range(max(3, timing.repetitions))])
    view = memoryview(data)
    pieces = [bytes(view[i:i + KIB]) for i in range(0, min(len(data), 16 * MIB), KIB)]
    crc32 = zlib.crc32
    small_runs = []
    for _ in range(max(3, timing.repetitions)):
        start = time.perf_counter()
        for piece in pieces:
            crc32(piece)
        small_runs.append(time.perf_counter() - start)
    small = median(small_runs)
    big_rate, small_rate = len(data) / whole / GB, len(pieces) * KIB / small / GB
    progress(f"zlib.crc32: {big_rate:.2f} GB/s in one call over {CRC_BUFFER // MIB} MiB, "
             f"{small_rate:.2f} GB/s in 1 KiB calls")
    return {"one_call": figure(big_rate, "GB/s"), "one_call_bytes": figure(CRC_BUFFER, "B"),
            "per_1kib": figure(small_rate, "GB/s"),
            "per_1kib_calls": figure(len(pieces) / small, "calls/s")}


# --------------------------------------------------------------------------- loopback

def measure_loopback_bandwidth(timing: Timing) -> dict:
    runs = [loadgen.run_raw_loopback(timing.loopback_bytes, LOOPBACK_CHUNK)
            for _ in range(timing.repetitions)]
    mb = median([r["mb_per_s"] for r in runs])
    progress(f"loopback TCP, one Python sender → one receiver, 1 MiB calls: {mb:,.0f} MB/s")
    return {"mb_per_s": figure(mb, "MB/s"), "bytes": figure(timing.loopback_bytes, "B"),
            "chunk": figure(LOOPBACK_CHUNK, "B"),
            "sender_cpu": figure(median([r["sender_cpu_cores"] for r in runs]), "cores"),
            "receiver_cpu": figure(median([r["receiver_cpu_cores"] for r in runs]), "cores")}


def _echo_server(pipe) -> None:
    """Echo every byte back until the client closes (a child process)."""
    with loadgen.reporting(pipe):
        listener = socket.create_server((loadgen.HOST, 0))
        pipe.send(("ready", listener.getsockname()[1]))
        sock, _ = listener.accept()
        listener.close()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            data = sock.recv(65536)
            if not data:
                break
            sock.sendall(data)
        sock.close()
        pipe.send(("done", None))


def measure_rtt(timing: Timing) -> dict:
    """One request in flight: send 64 bytes, wait for all 64 back, repeat."""
    proc, pipe = loadgen._spawn(_echo_server)
    try:
        port = loadgen._expect(pipe, "ready", loadgen.READY_TIMEOUT, "echo server")[1]
        latencies: list[int] = []
        message = os.urandom(RTT_MESSAGE)
        with socket.create_connection((loadgen.HOST, port), timeout=10) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            clock = time.perf_counter_ns
            start = clock()
            deadline = start + int(timing.rtt * 1e9)
            now = start
            while now < deadline:
                before = now
                sock.sendall(message)
                got = 0
                while got < RTT_MESSAGE:
                    chunk = sock.recv(RTT_MESSAGE - got)
                    if not chunk:
                        raise ConnectionError("the echo server closed the connection")
                    got += len(chunk)
                now = clock()
                latencies.append(now - before)
        loadgen._expect(pipe, "done", 30, "echo server")
    finally:
        loadgen.reap([(proc, pipe)])
    latencies.sort()
    p50 = loadgen.quantile(latencies, 0.5) / 1000
    p99 = loadgen.quantile(latencies, 0.99) / 1000
    progress(f"loopback TCP round trip ({RTT_MESSAGE} B, one at a time): p50 {p50:.0f} µs, "
             f"p99 {p99:.0f} µs, {len(latencies) / ((now - start) / 1e9):,.0f}/s")
    return {"p50": figure(p50, "µs"), "p99": figure(p99, "µs"),
            "round_trips_per_s": figure(len(latencies) / ((now - start) / 1e9), "round trips/s"),
            "message": figure(RTT_MESSAGE, "B")}


# ---------------------------------------------------------------- ratios to the limits

def _fig(tree: dict | None, *path: str) -> float | None:
    """The value at ``path`` (keys, or ``[key=value]`` list filters) of a results tree."""
    node = tree
    for key in path:
        if node is None:
            return None
        if key.startswith("["):
            wanted = dict(item.split("=", 1) for item in key[1:-1].split(","))
            node = next((e for e in node if all(str(e.get(k)) == v for k, v in wanted.items())), None)
        else:
            node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict):
        node = node.get("value")
    return node if isinstance(node, (int, float)) else None


def ratios_to_limits(results: dict) -> list[dict]:
    """Figures of the other parts (when present in ``results['parts']``) divided by this
    machine's limits from the limits part. Each entry: what, system, ratio (a figure in ×)."""
    parts = results.get("parts", {})
    limits = parts.get("limits")
    if not limits or "error" in limits:
        return []
    fsync = _fig(limits, "fdatasync", "syncs_per_s")
    write_mb = _fig(limits, "sequential_write", "mb_per_s")
    loop_mb = _fig(limits, "loopback_tcp", "mb_per_s")
    rtt_ms = (_fig(limits, "loopback_rtt", "p50") or 0) / 1000 or None
    crc = _fig(limits, "crc32", "one_call")
    found: list[dict] = []

    def add(what: str, system: str, value: float | None, unit: str = "×") -> None:
        if value is not None:
            found.append({"what": what, "system": system, "ratio": figure(value, unit)})

    peers = parts.get("peers")
    for row in (peers or {}).get("systems", []):
        if row.get("skipped"):
            continue
        best = max((p["msg_per_s"]["value"] or 0 for p in row["points"]), default=0)
        one = next((p for p in row["points"] if (p["connections"], p["depth"]) == (1, 1)), None)
        if row.get("sync") == "before ack":
            add("durable msg/s (best load point) ÷ fdatasync/s", row["name"], ratio(best, fsync))
        add("payload MB/s (best load point) ÷ sequential write MB/s", row["name"],
            ratio(best * 1024 / MB, write_mb))
        if one is not None and rtt_ms:
            add("1×1 p50 latency ÷ loopback round trip p50", row["name"],
                ratio(one["p50_latency"]["value"], rtt_ms))
    broker = parts.get("broker")
    if broker and "drain" in broker:
        add("consumer drain MB/s ÷ loopback TCP MB/s", "metaq-trio",
            ratio(_fig(broker, "drain", "metaq_get", "mb_per_s"), loop_mb))
    core = parts.get("core")
    if core and "recovery" in core:
        add("recovery scan GB/s ÷ zlib.crc32 GB/s", "metaq-trio",
            ratio(_fig(core, "recovery", "scan_file"), crc))
    return found


def ratios_table(ratios: list[dict]) -> Table:
    return Table("Ratios to this machine's limits (measured in the same run)",
                 ["ratio", "system", "value"],
                 [[r["what"], r["system"], fmt_number(r["ratio"]["value"], 3)] for r in ratios],
                 right_align_from=2)


# --------------------------------------------------------------------------- the part

def tables(data: dict) -> list[Table]:
    def v(fig: dict, digits: int = 0) -> str:
        return fmt_number(fig["value"], digits)

    fs, seq, crc = data["fdatasync"], data["sequential_write"], data["crc32"]
    tcp, rtt = data["loopback_tcp"], data["loopback_rtt"]
    return [Table("Machine limits (data directory's disk, CPU, loopback TCP)", ["limit", "value", "unit"], [
        ["fdatasync rate (write 4 KiB + fdatasync)", v(fs["syncs_per_s"]), "syncs/s"],
        ["fdatasync p50 / p99 latency", f"{v(fs['p50_latency'])} / {v(fs['p99_latency'])}", "µs"],
        ["sequential write (4 MiB writev + fdatasync)", v(seq["mb_per_s"]), "MB/s"],
        ["zlib.crc32, one call over 64 MiB", v(crc["one_call"], 2), "GB/s"],
        ["zlib.crc32, 1 KiB per call", v(crc["per_1kib"], 2), "GB/s"],
        ["loopback TCP bandwidth (Python, 1 MiB calls)", v(tcp["mb_per_s"]), "MB/s"],
        ["loopback TCP round trip p50 / p99 (64 B)", f"{v(rtt['p50'])} / {v(rtt['p99'])}", "µs"],
    ])]


def run(ctx: RunContext) -> PartResult:
    timing = Timing.for_run(ctx.quick)
    progress(f"limits: fdatasync, sequential write, crc32, loopback TCP ({timing.repetitions} "
             f"repetition(s)); data directory under {ctx.data_root}")
    with data_dir(ctx.data_root, "limits-") as directory:
        fsync = measure_fdatasync(directory, timing)
        write = measure_sequential_write(directory, timing)
    data = {
        "settings": {"quick": ctx.quick, "repetitions": timing.repetitions, "statistic": "median",
                     "fdatasync_loop": figure(timing.fsync, "s"),
                     "write_loop": figure(timing.write, "s"), "rtt_loop": figure(timing.rtt, "s")},
        "fdatasync": fsync,
        "sequential_write": write,
        "crc32": measure_crc32(timing),
        "loopback_tcp": measure_loopback_bandwidth(timing),
        "loopback_rtt": measure_rtt(timing),
    }
    return PartResult(data, tables(data), [])

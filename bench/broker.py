"""Part ``broker``: the metaq-trio broker over TCP, side by side with Redis 7 in the same run.

1. puts: 1 KiB messages to one topic-partition (metaq) / one stream (Redis ``XADD <key> * f
   <value>``), driven by the same multi-process Python load generator (``bench/loadgen.py``) at
   connections × pipeline depth 1×1, 16×1 and 50×16, in two modes:

   * durable — metaq group commit (``unflushThreshold=0``: a put is answered after its record is
     fdatasync'ed) against Redis ``appendonly yes`` + ``appendfsync always``;
   * threshold — metaq ``unflushThreshold=1000``, ``unflushInterval=1000`` (answered once written
     to the page cache, synced every 1000 messages or every second) against Redis
     ``appendfsync everysec``.

   The broker is started fresh (new data directory, a ``server.ini`` written here) for each mode;
   Redis is started fresh (new directory, ``--auto-aof-rewrite-percentage 0``) for every measured
   window. In each repetition the two servers take turns going first. Both keep their data under
   the bench data directory (same disk).
2. consumer drain: a partition of 1 KiB records (256 MiB, 64 MiB with --quick) is written
   beforehand with the engine (``LogStore.append_many``, synced, in the page cache), a broker is
   started on it, and a consumer process fetches it with ``get`` (maxSize 1 MiB, one request at a
   time, as the Java consumer does per partition) for several passes; the baseline moves the same
   number of bytes from one Python process to another over a loopback socket with 1 MiB
   ``send``/``recv_into`` calls.

Reported per case: msg/s, MB/s (payload bytes), p50/p99 latency per request (measured in the load
generator), the server's CPU (``/proc/<pid>/stat``, all threads), the load generator's CPU, and
the ratios metaq ÷ Redis (per load point) and drain ÷ raw loopback. The machine has 2 cores: the
load generator shares them with the server under test.

``run(ctx) -> PartResult`` like every part.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

from bench import loadgen
from bench.rawio import fdatasync_rate
from bench.common import (
    MIB,
    PROJECT_ROOT,
    CpuSampler,
    PartResult,
    RunContext,
    Table,
    Target,
    data_dir,
    figure,
    fmt_number,
    median,
    progress,
    ratio,
)

TOPIC = "bench"             # metaq topic / Redis stream key of the put loads
DRAIN_TOPIC = "drain"
PAYLOAD = 1024
RECORD = 20 + PAYLOAD       # stored record: 20-byte header + data (flag 0, no attribute)
GET_MAX_SIZE = 1 * MIB
RAW_CHUNK = 1 * MIB

#: (connections, pipeline depth, load-generator processes)
LOAD_POINTS = ((1, 1, 1), (16, 1, 2), (50, 16, 2))

PUT_TARGET = 1.0            # durable puts at 50×16: metaq ÷ Redis appendfsync always
DRAIN_TARGET = 0.5          # drain ÷ raw loopback
FSYNC_TARGET = 20.0         # durable puts at 50×16 ÷ raw fdatasync/s of the same disk
START_TIMEOUT = 60.0
STOP_TIMEOUT = 60.0


@dataclass(frozen=True)
class Mode:
    name: str
    metaq: dict[str, int]       # [system] keys of the broker's server.ini
    redis_fsync: str            # Redis appendfsync policy

    @property
    def metaq_label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.metaq.items())


MODES = (
    Mode("durable", {"unflushThreshold": 0, "unflushInterval": 10_000}, "always"),
    Mode("threshold", {"unflushThreshold": 1000, "unflushInterval": 1000}, "everysec"),
)


@dataclass(frozen=True)
class Timing:
    warmup: float           # load runs before the window opens
    window: float           # the measured window of every put case
    drain_partition: int    # bytes of 1 KiB records in the drained partition
    drain_bytes: int        # bytes a drain repetition moves (whole passes over the partition)

    @classmethod
    def for_run(cls, quick: bool) -> Timing:
        if quick:
            return cls(warmup=0.2, window=0.5, drain_partition=32 * MIB, drain_bytes=256 * MIB)
        return cls(warmup=1.0, window=5.0, drain_partition=256 * MIB, drain_bytes=4096 * MIB)


# ------------------------------------------------------------------------------ servers

def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(proc: subprocess.Popen, port: int, what: str, log_path: str, probe=None) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode} at start:\n"
                               f"{_tail(log_path)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                if probe is None or probe(sock):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    raise RuntimeError(f"{what} did not listen on port {port} within {START_TIMEOUT:g} s:\n"
                       f"{_tail(log_path)}")


def _tail(path: str, lines: int = 20) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as log:
            return "".join(log.readlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(proc: subprocess.Popen, what: str) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        progress(f"{what} did not stop within {STOP_TIMEOUT:g} s of SIGTERM: killing it")
        proc.kill()
        proc.wait()


class BrokerProcess:
    """``python -m metaq_server.cli serve`` on a free port with a server.ini written here."""

    def __init__(self, directory: str, settings: dict[str, int]) -> None:
        self.directory = directory
        self.data = os.path.join(directory, "data")
        self.ini = os.path.join(directory, "server.ini")
        self.log = os.path.join(directory, "broker.log")
        self.port = free_port()
        self.settings = settings
        self.proc: subprocess.Popen | None = None

    def server_ini(self) -> str:
        system = "\n".join(f"{k}={v}" for k, v in self.settings.items())
        return ("; written by bench/broker.py\n[system]\nbrokerId=0\nnumPartitions=1\n"
                f"{system}\nmaxSegmentSize=1024*1024*1024\nmaxTransferSize=1024*1024\n"
                "updateConsumerOffsets=false\n\n"
                "[zookeeper]\nzk.zkEnable=false\nzk.zkConnect=localhost:2181\n\n"
                f"[topic={TOPIC}]\nnumPartitions=1\n\n[topic={DRAIN_TOPIC}]\nnumPartitions=1\n")

    def start(self) -> BrokerProcess:
        os.makedirs(self.data, exist_ok=True)
        with open(self.ini, "w", encoding="utf-8") as out:
            out.write(self.server_ini())
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "metaq_server.cli", "serve", "--port", str(self.port),
                 "--data-dir", self.data, "-c", self.ini],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=PROJECT_ROOT)
        _wait_listening(self.proc, self.port, "the metaq-trio broker", self.log)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"the broker exited with status {self.proc.returncode}:\n{_tail(self.log)}")

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, "the broker")

    def __enter__(self) -> BrokerProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def redis_binary() -> str | None:
    return shutil.which("redis-server")


def redis_version(binary: str) -> str | None:
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for token in out.split():
        if token.startswith("v="):
            return token[2:]
    return out.strip() or None


def _redis_ping(sock: socket.socket) -> bool:
    sock.sendall(b"PING\r\n")
    return sock.recv(64).startswith(b"+PONG")


class RedisProcess:
    """A private ``redis-server``: loopback, free port, its own directory, AOF on, no RDB
    snapshots, no automatic AOF rewrite."""

    def __init__(self, binary: str, directory: str, appendfsync: str) -> None:
        self.binary = binary
        self.directory = directory
        self.appendfsync = appendfsync
        self.port = free_port()
        self.log = os.path.join(directory, "redis.log")
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", self.directory, "--appendonly", "yes",
                "--appendfsync", self.appendfsync, "--auto-aof-rewrite-percentage", "0",
                "--save", "", "--protected-mode", "no", "--daemonize", "no",
                "--logfile", self.log]

    def start(self) -> RedisProcess:
        os.makedirs(self.directory, exist_ok=True)
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        _wait_listening(self.proc, self.port, "redis-server", self.log, probe=_redis_ping)
        return self

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, "redis-server")
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> RedisProcess:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------------- puts

def point_label(connections: int, depth: int) -> str:
    return f"{connections}×{depth}"


def measure_put(protocol: str, port: int, pid: int, point: tuple[int, int, int],
                timing: Timing) -> dict:
    connections, depth, workers = point
    load = loadgen.PutLoad(protocol, port, connections, depth, workers, payload=PAYLOAD, key=TOPIC)
    result = loadgen.run_puts(load, timing.warmup, timing.window, {"server": pid})
    cores = result["server_cpu_cores"] = result["server_cpu_cores"]["server"]
    result["server_cpu_us_per_msg"] = (cores / result["msg_per_s"] * 1e6
                                       if cores is not None and result["msg_per_s"] else None)
    if result["errors"]:
        progress(f"  {protocol}: {result['errors']} error answers (first: {result['first_error']})")
    return result


def _progress_put(position: str, mode: Mode, point, system: str, rep: int, reps: int, r: dict) -> None:
    server_cpu = r["server_cpu_cores"]
    progress(f"{position} {mode.name} {point_label(point[0], point[1])} {system:5s} "
             f"rep {rep + 1}/{reps}: {r['msg_per_s']:,.0f} msg/s {r['mb_per_s']:.1f} MB/s "
             f"p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms | server CPU "
             f"{'-' if server_cpu is None else f'{server_cpu:.2f}'} gen CPU "
             f"{r['generator_cpu_cores']:.2f} ({r['generator_processes']} proc) other CPU "
             f"{'-' if r['other_cpu_cores'] is None else format(r['other_cpu_cores'], '.2f')}")


def measure_mode(ctx: RunContext, mode: Mode, timing: Timing, redis: str | None,
                 counter: list[int], total: int) -> list[dict]:
    """Every load point of one mode, ``ctx.repetitions`` times; one fresh broker for the mode."""
    reps = ctx.repetitions
    runs: dict[tuple[int, int, int], dict[str, list[dict]]] = {
        point: {"metaq": [], "redis": []} for point in LOAD_POINTS}
    with data_dir(ctx.data_root, f"broker-{mode.name}-") as directory:
        with BrokerProcess(os.path.join(directory, "metaq"), mode.metaq) as broker:
            progress(f"{mode.name}: metaq-trio broker pid {broker.pid} on port {broker.port} "
                     f"({mode.metaq_label}); Redis appendfsync {mode.redis_fsync}"
                     f"{'' if redis else ' skipped'}")
            for rep in range(reps):
                for point in LOAD_POINTS:
                    systems = ["metaq", "redis"] if rep % 2 == 0 else ["redis", "metaq"]
                    for system in systems:
                        if system == "redis" and redis is None:
                            continue
                        counter[0] += 1
                        position = f"[{counter[0]:2d}/{total}]"
                        if system == "metaq":
                            broker.check_alive()
                            result = measure_put("metaq", broker.port, broker.pid, point, timing)
                            broker.check_alive()
                        else:
                            redis_dir = os.path.join(directory, f"redis-{rep}-{point[0]}x{point[1]}")
                            with RedisProcess(redis, redis_dir, mode.redis_fsync) as server:
                                result = measure_put("redis", server.port, server.pid, point, timing)
                        runs[point][system].append(result)
                        _progress_put(position, mode, point, system, rep, reps, result)
    return [summarize_point(mode, point, runs[point], redis is not None) for point in LOAD_POINTS]


def _system_summary(runs: list[dict]) -> dict:
    def med(key: str) -> float | None:
        values = [r[key] for r in runs if r[key] is not None]
        return median(values) if values else None

    return {
        "msg_per_s": figure(med("msg_per_s"), "msg/s"),
        "mb_per_s": figure(med("mb_per_s"), "MB/s"),
        "p50_latency": figure(med("p50_ms"), "ms"),
        "p99_latency": figure(med("p99_ms"), "ms"),
        "server_cpu": figure(med("server_cpu_cores"), "cores"),
        "server_cpu_per_msg": figure(med("server_cpu_us_per_msg"), "µs"),
        "generator_cpu": figure(med("generator_cpu_cores"), "cores"),
        "other_cpu": figure(med("other_cpu_cores"), "cores"),
        "errors": sum(r["errors"] for r in runs),
        "runs": runs,
    }


def summarize_point(mode: Mode, point, runs: dict[str, list[dict]], with_redis: bool) -> dict:
    connections, depth, workers = point
    metaq = _system_summary(runs["metaq"])
    entry = {
        "mode": mode.name,
        "connections": connections,
        "depth": depth,
        "generator_processes": workers,
        "payload_bytes": PAYLOAD,
        "metaq_settings": mode.metaq,
        "redis_appendfsync": mode.redis_fsync,
        "metaq": metaq,
    }
    if with_redis:
        redis = _system_summary(runs["redis"])
        entry["redis"] = redis
        entry["metaq_over_redis"] = figure(
            ratio(metaq["msg_per_s"]["value"], redis["msg_per_s"]["value"]), "×")
        entry["metaq_over_redis_per_repetition"] = [
            ratio(m["msg_per_s"], r["msg_per_s"]) for m, r in zip(runs["metaq"], runs["redis"])]
    else:
        entry["redis"] = {"skipped": True}
        entry["metaq_over_redis"] = figure(None, "×")
    return entry


# -------------------------------------------------------------------------------- drain

def fill_partition(directory: str, nbytes: int) -> tuple[int, int]:
    """Write ~``nbytes`` of 1 KiB records to DRAIN_TOPIC partition 0 with the engine, synced;
    returns (records, end offset)."""
    from metaq_core import LogStore

    body = loadgen.payload_bytes(PAYLOAD)
    batch = 1024
    batches = max(1, nbytes // (RECORD * batch))
    with LogStore(directory, unflush_threshold=1_000_000, unflush_interval=600_000) as store:
        for _ in range(batches):
            store.append_many(DRAIN_TOPIC, 0, [body] * batch)
        store.flush()
        end = store.max_offset(DRAIN_TOPIC, 0)
    records = batches * batch
    if end != records * RECORD:
        raise RuntimeError(f"the drained partition ends at {end}, expected {records * RECORD}")
    return records, end


def measure_drain(ctx: RunContext, timing: Timing) -> dict:
    reps = ctx.repetitions
    drains: list[dict] = []
    raws: list[dict] = []
    with data_dir(ctx.data_root, "broker-drain-") as directory:
        broker = BrokerProcess(os.path.join(directory, "metaq"), MODES[1].metaq)
        started = time.monotonic()
        records, end = fill_partition(broker.data, timing.drain_partition)
        progress(f"drain: wrote {records:,} records ({end / MIB:.0f} MiB) in "
                 f"{time.monotonic() - started:.1f} s")
        passes = max(1, timing.drain_bytes // end)
        with broker:
            for rep in range(reps):
                order = ["drain", "raw"] if rep % 2 == 0 else ["raw", "drain"]
                for which in order:
                    if which == "drain":
                        broker.check_alive()
                        r = loadgen.run_drain(broker.port, DRAIN_TOPIC, 0, end, RECORD,
                                              GET_MAX_SIZE, passes, broker.pid)
                        drains.append(r)
                        progress(f"drain rep {rep + 1}/{reps}: get {r['mb_per_s']:,.0f} MB/s "
                                 f"({r['gets']} gets of {GET_MAX_SIZE // MIB} MiB, {passes} passes, "
                                 f"p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms) | broker CPU "
                                 f"{r['server_cpu_cores']:.2f} consumer CPU {r['client_cpu_cores']:.2f}")
                    else:
                        total = drains[-1]["record_bytes"] if drains else passes * end
                        r = loadgen.run_raw_loopback(total, RAW_CHUNK)
                        raws.append(r)
                        progress(f"raw loopback rep {rep + 1}/{reps}: {r['mb_per_s']:,.0f} MB/s "
                                 f"| sender CPU {r['sender_cpu_cores']:.2f} receiver CPU "
                                 f"{r['receiver_cpu_cores']:.2f}")

    def med(runs: list[dict], key: str) -> float:
        return median([r[key] for r in runs])

    drain_mb, raw_mb = med(drains, "mb_per_s"), med(raws, "mb_per_s")
    return {
        "partition_bytes": figure(end, "B"),
        "records": figure(records, "records"),
        "record_bytes": figure(RECORD, "B"),
        "max_size": figure(GET_MAX_SIZE, "B"),
        "passes": passes,
        "metaq_get": {
            "mb_per_s": figure(drain_mb, "MB/s"),
            "msg_per_s": figure(drain_mb * 1e6 / RECORD, "msg/s"),
            "bytes": figure(med(drains, "record_bytes"), "B"),
            "p50_latency": figure(med(drains, "p50_ms"), "ms"),
            "p99_latency": figure(med(drains, "p99_ms"), "ms"),
            "server_cpu": figure(med(drains, "server_cpu_cores"), "cores"),
            "client_cpu": figure(med(drains, "client_cpu_cores"), "cores"),
            "runs": drains,
        },
        "raw_loopback": {
            "mb_per_s": figure(raw_mb, "MB/s"),
            "bytes": figure(med(raws, "bytes"), "B"),
            "chunk": figure(RAW_CHUNK, "B"),
            "sender_cpu": figure(med(raws, "sender_cpu_cores"), "cores"),
            "receiver_cpu": figure(med(raws, "receiver_cpu_cores"), "cores"),
            "runs": raws,
        },
        "drain_over_raw": figure(ratio(drain_mb, raw_mb), "×"),
    }


def measure_fdatasync(ctx: RunContext, timing: Timing, reps: int) -> dict:
    """The disk's own rate of 4 KiB write + fdatasync in the data directory (median of reps):
    what one fsync per message would allow, the yardstick of group commit."""
    rates = []
    with data_dir(ctx.data_root, "fsync-") as directory:
        for _ in range(reps):
            rate = fdatasync_rate(os.path.join(directory, "probe"), timing.window / 2)
            rates.append(rate.per_second)
    progress(f"broker: raw fdatasync of the data disk: {median(rates):,.0f}/s")
    return {"per_s": figure(median(rates), "1/s"), "runs": [figure(r, "1/s") for r in rates],
            "block": figure(4096, "B")}


# ------------------------------------------------------------------ targets and tables

def targets(data: dict) -> list[Target]:
    found = []
    for entry in data["puts"]:
        if entry["mode"] == "durable" and (entry["connections"], entry["depth"]) == (50, 16):
            if data["redis"]["available"]:
                found.append(Target("durable puts 50×16: metaq group commit ÷ Redis appendfsync "
                                    "always (msg/s)", entry["metaq_over_redis"]["value"], PUT_TARGET))
            found.append(Target("durable puts 50×16: metaq msg/s ÷ raw fdatasync/s of the data disk",
                                ratio(entry["metaq"]["msg_per_s"]["value"],
                                      data["fdatasync"]["per_s"]["value"]), FSYNC_TARGET))
    found.append(Target("consumer drain: get 1 MiB ÷ raw loopback (MB/s)",
                        data["drain"]["drain_over_raw"]["value"], DRAIN_TARGET))
    return found


def _v(fig: dict, digits: int = 0) -> str:
    return fmt_number(fig["value"], digits)


def tables(data: dict, timing: Timing, reps: int) -> list[Table]:
    rows = []
    for entry in data["puts"]:
        load = point_label(entry["connections"], entry["depth"])
        metaq, redis = entry["metaq"], entry["redis"]
        rows.append([entry["mode"], load, "metaq-trio", _v(metaq["msg_per_s"]), _v(metaq["mb_per_s"], 1),
                     _v(metaq["p50_latency"], 2), _v(metaq["p99_latency"], 2), _v(metaq["server_cpu"], 2),
                     _v(metaq["server_cpu_per_msg"], 1), _v(metaq["generator_cpu"], 2),
                     _v(metaq["other_cpu"], 2), _v(entry["metaq_over_redis"], 2)])
        if redis.get("skipped"):
            rows.append([entry["mode"], load, "redis (skipped)", "-", "-", "-", "-", "-", "-", "-", "-", "-"])
        else:
            rows.append([entry["mode"], load, f"redis {entry['redis_appendfsync']}",
                         _v(redis["msg_per_s"]), _v(redis["mb_per_s"], 1), _v(redis["p50_latency"], 2),
                         _v(redis["p99_latency"], 2), _v(redis["server_cpu"], 2),
                         _v(redis["server_cpu_per_msg"], 1), _v(redis["generator_cpu"], 2),
                         _v(redis["other_cpu"], 2), ""])
    modes = "; ".join(f"{m.name}: metaq {m.metaq_label} vs Redis appendfsync {m.redis_fsync}"
                      for m in MODES)
    puts = Table(
        f"Puts of 1 KiB over TCP, one partition / one stream (median of {reps}, {timing.window:g} s "
        f"windows after {timing.warmup:g} s warm-up; {modes})",
        ["mode", "conns×depth", "server", "msg/s", "MB/s", "p50 ms", "p99 ms", "server CPU",
         "µs CPU/msg", "gen CPU", "other CPU", "metaq/redis"], rows, right_align_from=3)
    d = data["drain"]
    get, raw = d["metaq_get"], d["raw_loopback"]
    drain = Table(
        f"Consumer drain of {fmt_number(d['partition_bytes']['value'] / MIB)} MiB of "
        f"{d['record_bytes']['value']} B records × {d['passes']} passes (page cache; median of {reps})",
        ["path", "MB/s", "per-request p50 ms", "p99 ms", "server/sender CPU", "client/receiver CPU",
         "÷ raw"], [
            ["metaq get, maxSize 1 MiB, one at a time", _v(get["mb_per_s"]), _v(get["p50_latency"], 2),
             _v(get["p99_latency"], 2), _v(get["server_cpu"], 2), _v(get["client_cpu"], 2),
             _v(d["drain_over_raw"], 2)],
            ["raw loopback socket, 1 MiB send/recv_into", _v(raw["mb_per_s"]), "-", "-",
             _v(raw["sender_cpu"], 2), _v(raw["receiver_cpu"], 2), "1.00"],
        ])
    setup = data["setup"]
    cpu = data.get("machine_cpu", {})
    notes = Table("Setup", ["item", "value"], [
        ["cores", str(setup["cores"])],
        ["load generator", setup["generator"]],
        ["cores shared", "the load generator runs on the same cores as the server under test"],
        ["Redis", setup["redis"]],
        ["raw fdatasync of the data disk", f"{_v(data['fdatasync']['per_s'])}/s (4 KiB write + fdatasync)"],
        ["CPU busy / steal during the part",
         f"{_v(cpu['busy'])} % / {_v(cpu['steal'], 1)} %" if cpu else "-"],
        ["CPU columns", "cores used during the window: server = /proc/<pid>/stat of the server "
                        "(all threads), also per message; gen = sum over the generator processes; "
                        "other = the rest of the machine's busy CPU (/proc/stat): other processes "
                        "on this shared machine, unattributed kernel work — a noise flag"],
    ], right_align_from=2)
    return [notes, puts, drain]


# ---------------------------------------------------------------------------- the part

def run(ctx: RunContext) -> PartResult:
    timing = Timing.for_run(ctx.quick)
    reps = ctx.repetitions
    redis = redis_binary()
    version = redis_version(redis) if redis else None
    if redis is None:
        progress("redis-server is not installed: Redis is SKIPPED in this run (no numbers are "
                 "made up). Install it with: apt-get install -y redis-server")
    elif version and not version.startswith("7."):
        progress(f"note: redis-server {version} found; the comparison is meant for Redis 7")
    per_mode = len(LOAD_POINTS) * reps * (2 if redis else 1)
    total = per_mode * len(MODES)
    progress(f"broker: {total} put windows ({len(LOAD_POINTS)} load points × {len(MODES)} modes × "
             f"{reps} repetition(s) × {'metaq + redis' if redis else 'metaq only'}), "
             f"{timing.window:g} s each (+{timing.warmup:g} s warm-up); then the drain. The load "
             f"generator shares the {os.cpu_count()} cores with the server under test.")
    sampler = CpuSampler().start()
    fsync = measure_fdatasync(ctx, timing, reps)
    counter = [0]
    puts: list[dict] = []
    for mode in MODES:
        puts.extend(measure_mode(ctx, mode, timing, redis, counter, total))
    drain = measure_drain(ctx, timing)
    data = {
        "settings": {
            "quick": ctx.quick, "repetitions": reps, "statistic": "median",
            "warmup": figure(timing.warmup, "s"), "window": figure(timing.window, "s"),
            "payload": figure(PAYLOAD, "B"),
            "load_points": [{"connections": c, "depth": d, "generator_processes": w}
                            for c, d, w in LOAD_POINTS],
            "modes": [{"name": m.name, "metaq": m.metaq, "redis_appendfsync": m.redis_fsync}
                      for m in MODES],
            "metaq_partitions": 1,
            "redis_command": "XADD bench * f <1 KiB value>",
            "get_max_size": figure(GET_MAX_SIZE, "B"),
            "drain_bytes_per_repetition": figure(timing.drain_bytes, "B"),
        },
        "setup": {
            "cores": os.cpu_count(),
            "generator": ("Python worker processes (multiprocessing spawn), raw non-blocking "
                          "sockets + epoll, pipelined, pre-encoded frames; 1 process for 1 "
                          "connection, 2 otherwise"),
            "redis": (f"redis-server {version}: appendonly yes, --auto-aof-rewrite-percentage 0, "
                      "--save '', fresh directory per window" if redis else
                      "SKIPPED: redis-server is not installed (apt-get install -y redis-server)"),
        },
        "redis": {"available": redis is not None, "binary": redis, "version": version},
        "machine_cpu": sampler.stop(),
        "fdatasync": fsync,
        "puts": puts,
        "drain": drain,
    }
    found = targets(data)
    data["targets"] = [t.as_json() for t in found]
    if redis is None:
        data["targets"].append({"name": "durable puts 50×16 ÷ Redis", "skipped": True,
                                "reason": "redis-server is not installed"})
    if redis is None:
        progress("SKIP  durable puts 50×16 ÷ Redis: redis-server is not installed "
                 "(apt-get install -y redis-server)")
    return PartResult(data, tables(data, timing, reps), found)

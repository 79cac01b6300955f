"""Part ``peers``: metaq-trio side by side with other brokers, in one run, under the same load.

Every system is started by the bench on a free loopback port with a temporary directory under
the bench data directory (same disk) and stopped afterwards, and is driven by the same
multi-process load generator (``bench/loadgen.py``: raw non-blocking sockets, epoll, pre-encoded
pipelined frames) with 1 KiB messages at the same connections × pipeline depth points:

* metaq-trio, group commit (``unflushThreshold=0``: answered after fdatasync) and threshold mode
  (``unflushThreshold=1000``, ``unflushInterval=1000``: answered once written, synced every 1000
  messages or second) — MetaQ ``put`` to one topic-partition;
* Redis 7 streams (required peer; Debian's ``redis-server``): ``XADD bench * f <1 KiB>``,
  ``appendonly yes`` with ``appendfsync always`` and ``everysec``, a fresh server per window;
* NATS JetStream (optional; Debian's ``nats-server``): a file-storage stream, ``PUB`` with a
  reply inbox, answered by the stream's ack. Its sync policy is probed: ``sync_interval: always``
  when the server accepts it (NATS 2.10+), else the server's default timer-based sync (2.9 has no
  such option) — reported in the output either way, and the comparison follows it;
* RabbitMQ (optional; Debian's ``rabbitmq-server``): a durable quorum queue, persistent messages,
  publisher confirms (AMQP 0-9-1 spoken by the load generator itself); one server for the part,
  a new queue per window.

Consume side: metaq ``get`` (maxSize 1 MiB) against Redis ``XREAD COUNT 1000``, each reading the
same 1 KiB messages from the start, one request at a time (page cache, several passes).

A missing optional peer is reported as skipped with its install command; nothing is made up.
Ratios: metaq ÷ peer msg/s at the same load point, against the metaq mode with the same
durability — peers that sync before they answer against group commit, peers that sync on a
timer against threshold mode. Every figure is the median of ``ctx.repetitions`` windows; in each
repetition the systems take turns in a rotated order.

``run(ctx) -> PartResult`` like every part.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata

from bench import loadgen
from bench.broker import (
    DRAIN_TOPIC,
    GET_MAX_SIZE,
    LOAD_POINTS,
    MODES,
    RECORD,
    STOP_TIMEOUT,
    BrokerProcess,
    RedisProcess,
    _stop,
    _system_summary,
    _wait_listening,
    fill_partition,
    free_port,
    point_label,
    redis_binary,
    redis_version,
)
from bench.common import (
    MIB,
    CpuSampler,
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

PAYLOAD = 1024
TOPIC = "bench"
NATS_STREAM = "BENCH"
RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"   # Debian's unwrapped start script
QUICK_POINTS = ((1, 1, 1), (16, 16, 1))      # --quick: a smoke run over a tiny grid
BEFORE_ACK = "before ack"
ON_TIMER = "on a timer"


XREAD_COUNT = 1000                  # entries per XREAD: about 1 MiB, like get's maxSize


@dataclass(frozen=True)
class Timing:
    warmup: float
    window: float
    consume_bytes: int      # bytes of 1 KiB messages each consumer drains per pass
    consume_passes: int

    @classmethod
    def for_run(cls, quick: bool) -> Timing:
        if quick:
            return cls(warmup=0.1, window=0.3, consume_bytes=8 * MIB, consume_passes=2)
        return cls(warmup=1.0, window=5.0, consume_bytes=128 * MIB, consume_passes=8)


def _version_of(command: list[str]) -> str | None:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.strip().splitlines()[0] if out.strip() else None


def _debian_version(package: str) -> str | None:
    return _version_of(["dpkg-query", "-W", "-f=${Version}", package])


# ------------------------------------------------------------------------------ systems

class System:
    """One row of the comparison: a server and how it is driven. Subclasses start it."""

    key = ""
    name = ""
    protocol = ""
    sync = BEFORE_ACK
    install: str | None = None      # the command that installs a missing peer

    def __init__(self) -> None:
        self.version: str | None = None
        self.durability = ""

    def missing(self) -> str | None:
        """Why this system cannot run here (None: it can)."""
        return None

    def start(self, directory: str) -> None:
        """Start what lives for the whole part (no-op for per-window servers)."""

    def stop(self) -> None:
        """Stop what ``start`` started."""

    @contextlib.contextmanager
    def window(self, directory: str, index: int) -> Iterator[tuple[int, int, str]]:
        """Yield (port, server pid, key) of a server ready for one measured window."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"key": self.key, "name": self.name, "protocol": self.protocol, "sync": self.sync,
                "durability": self.durability, "version": self.version}


class Metaq(System):
    protocol = "metaq"

    def __init__(self, mode_index: int) -> None:
        super().__init__()
        self.mode = MODES[mode_index]
        self.key = f"metaq-{self.mode.name}"
        self.name = f"metaq-trio {'group commit' if self.mode.name == 'durable' else 'threshold'}"
        self.sync = BEFORE_ACK if self.mode.metaq["unflushThreshold"] == 0 else ON_TIMER
        self.durability = (f"{self.mode.metaq_label} ("
                           + ("answered after fdatasync" if self.sync == BEFORE_ACK else
                              "answered once written; synced every 1000 messages or 1 s") + ")")
        self.broker: BrokerProcess | None = None
        self.version = metadata.version("metaq-trio")

    def start(self, directory: str) -> None:
        self.broker = BrokerProcess(os.path.join(directory, self.key), self.mode.metaq).start()

    def stop(self) -> None:
        if self.broker is not None:
            self.broker.stop()

    @contextlib.contextmanager
    def window(self, directory: str, index: int) -> Iterator[tuple[int, int, str]]:
        self.broker.check_alive()
        yield self.broker.port, self.broker.pid, TOPIC
        self.broker.check_alive()


class Redis(System):
    protocol = "redis"
    install = "apt-get install -y redis-server"

    def __init__(self, appendfsync: str) -> None:
        super().__init__()
        self.appendfsync = appendfsync
        self.key = f"redis-{appendfsync}"
        self.name = f"Redis streams appendfsync {appendfsync}"
        self.sync = BEFORE_ACK if appendfsync == "always" else ON_TIMER
        self.durability = (f"XADD, appendonly yes, appendfsync {appendfsync}, "
                           "auto-aof-rewrite off, a fresh server per window")
        self.binary = redis_binary()
        self.version = redis_version(self.binary) if self.binary else None

    def missing(self) -> str | None:
        return None if self.binary else "redis-server is not installed"

    @contextlib.contextmanager
    def window(self, directory: str, index: int) -> Iterator[tuple[int, int, str]]:
        with RedisProcess(self.binary, os.path.join(directory, f"{self.key}-{index}"),
                          self.appendfsync) as server:
            yield server.port, server.pid, TOPIC


class NatsServer:
    """A private ``nats-server`` with JetStream (file storage) in ``directory``."""

    def __init__(self, binary: str, directory: str, sync_always: bool) -> None:
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.config = os.path.join(directory, "nats.conf")
        self.log = os.path.join(directory, "nats.log")
        self.sync_always = sync_always
        self.proc: subprocess.Popen | None = None

    def write_config(self) -> str:
        os.makedirs(self.directory, exist_ok=True)
        sync = "  sync_interval: always\n" if self.sync_always else ""
        with open(self.config, "w", encoding="utf-8") as out:
            out.write(f"listen: 127.0.0.1:{self.port}\nserver_name: bench\n"
                      f"jetstream {{\n  store_dir: \"{os.path.join(self.directory, 'js')}\"\n{sync}}}\n")
        return self.config

    def accepts_config(self) -> bool:
        done = subprocess.run([self.binary, "-t", "-c", self.write_config()],
                              capture_output=True, text=True, timeout=30, check=False)
        return done.returncode == 0

    def __enter__(self) -> NatsServer:
        self.write_config()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([self.binary, "-c", self.config], stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT)
        _wait_listening(self.proc, self.port, "nats-server", self.log)
        answer = json.loads(loadgen.nats_request(
            loadgen.HOST, self.port, f"$JS.API.STREAM.CREATE.{NATS_STREAM}",
            json.dumps({"name": NATS_STREAM, "subjects": [TOPIC], "storage": "file",
                        "retention": "limits", "num_replicas": 1}).encode()))
        if "error" in answer:
            self.__exit__()
            raise RuntimeError(f"JetStream stream create failed: {answer['error']}")
        return self

    def __exit__(self, *exc) -> None:
        if self.proc is not None:
            _stop(self.proc, "nats-server")
        shutil.rmtree(self.directory, ignore_errors=True)


class Nats(System):
    key = "nats-jetstream"
    name = "NATS JetStream (file)"
    protocol = "nats"
    install = "apt-get install -y nats-server"

    def __init__(self) -> None:
        super().__init__()
        self.binary = shutil.which("nats-server")
        self.sync_always = False
        if self.binary:
            line = _version_of([self.binary, "--version"]) or ""
            self.version = line.split("v")[-1] if "v" in line else line or None

    def missing(self) -> str | None:
        return None if self.binary else "nats-server is not installed"

    def probe(self, directory: str) -> None:
        """Use ``sync_interval: always`` if this nats-server accepts it; say what was chosen."""
        self.sync_always = NatsServer(self.binary, os.path.join(directory, "nats-probe"), True).accepts_config()
        shutil.rmtree(os.path.join(directory, "nats-probe"), ignore_errors=True)
        if self.sync_always:
            self.sync = BEFORE_ACK
            self.durability = ("file storage, sync_interval: always (every write is synced "
                               "before the ack)")
        else:
            self.sync = ON_TIMER
            self.durability = (f"file storage, the server's default sync: nats-server "
                               f"{self.version} has no sync_interval option (rejected as an "
                               "unknown field; 2.10+ has it, default 2 min), so JetStream syncs "
                               "its files on a timer, not per message; acked = in the OS cache")

    @contextlib.contextmanager
    def window(self, directory: str, index: int) -> Iterator[tuple[int, int, str]]:
        with NatsServer(self.binary, os.path.join(directory, f"nats-{index}"), self.sync_always) as server:
            yield server.port, server.proc.pid, TOPIC


class RabbitServer:
    """A private RabbitMQ node: its own node name, ports, epmd port, cookie (HOME) and
    directories, no plugins; stopped with SIGTERM and its epmd with ``epmd -kill``."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.port = free_port()
        self.epmd_port = free_port()
        self.dist_port = free_port()
        self.log = os.path.join(directory, "rabbitmq.log")
        self.proc: subprocess.Popen | None = None
        self.beam: int | None = None

    def env(self) -> dict[str, str]:
        d = self.directory
        env = dict(os.environ)
        env.update({
            "HOME": d, "RABBITMQ_NODENAME": f"bench{self.port}@localhost",
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1", "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port), "ERL_EPMD_PORT": str(self.epmd_port),
            "RABBITMQ_MNESIA_BASE": os.path.join(d, "mnesia"), "RABBITMQ_LOG_BASE": os.path.join(d, "log"),
            "RABBITMQ_LOGS": "-", "RABBITMQ_PID_FILE": os.path.join(d, "rabbitmq.pid"),
            "RABBITMQ_CONFIG_FILE": os.path.join(d, "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(d, "enabled_plugins"),
            # no busy-waiting schedulers: an idle node must not take CPU from the other windows
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "+sbwt none +sbwtdcpu none +sbwtdio none",
        })
        return env

    def start(self) -> RabbitServer:
        os.makedirs(self.directory, exist_ok=True)
        with open(os.path.join(self.directory, "rabbitmq.conf"), "w", encoding="utf-8") as out:
            out.write(f"listeners.tcp.default = 127.0.0.1:{self.port}\nloopback_users = none\n")
        with open(os.path.join(self.directory, "enabled_plugins"), "w", encoding="utf-8") as out:
            out.write("[].\n")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([RABBITMQ_SERVER], env=self.env(), cwd=self.directory,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        try:
            _wait_listening(self.proc, self.port, "rabbitmq-server", self.log)
        except BaseException:
            self.stop()
            raise
        from bench.cluster import children_of
        beams = children_of(self.proc.pid)
        self.beam = beams[0] if beams else self.proc.pid
        return self

    def _group_alive(self) -> bool:
        self.proc.poll()                    # reap the start script: a zombie still holds the group
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self) -> None:
        """SIGTERM to the Erlang VM (the start script then exits; a SIGTERM to the script itself
        is not enough), SIGKILL to the script's process group (it was started in a session of
        its own) after STOP_TIMEOUT, then ``epmd -kill``."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            if self.beam and self.beam != self.proc.pid:
                os.kill(self.beam, signal.SIGTERM)
            else:
                os.killpg(self.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT
        while self._group_alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        if self._group_alive():
            progress("rabbitmq-server did not stop on SIGTERM: killing it")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        _stop(self.proc, "rabbitmq-server")
        epmd = shutil.which("epmd")
        if epmd:
            subprocess.run([epmd, "-kill"], env=self.env(), capture_output=True, timeout=30, check=False)
        shutil.rmtree(self.directory, ignore_errors=True)
        self.proc = None


class Rabbit(System):
    key = "rabbitmq-quorum"
    name = "RabbitMQ quorum queue"
    protocol = "amqp"
    sync = BEFORE_ACK
    install = "apt-get install -y rabbitmq-server"

    def __init__(self) -> None:
        super().__init__()
        self.version = _debian_version("rabbitmq-server") if os.path.exists(RABBITMQ_SERVER) else None
        self.durability = ("durable quorum queue (x-queue-type=quorum), persistent messages, "
                           "publisher confirms (a confirm follows the Raft log's fsync)")
        self.server: RabbitServer | None = None

    def missing(self) -> str | None:
        if not os.path.exists(RABBITMQ_SERVER):
            return "rabbitmq-server is not installed"
        return None if shutil.which("epmd") else "epmd (Erlang) is not installed"

    def start(self, directory: str) -> None:
        started = time.monotonic()
        self.server = RabbitServer(os.path.join(directory, "rabbitmq")).start()
        progress(f"RabbitMQ {self.version} up in {time.monotonic() - started:.1f} s "
                 f"(beam pid {self.server.beam}, port {self.server.port})")

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()

    @contextlib.contextmanager
    def window(self, directory: str, index: int) -> Iterator[tuple[int, int, str]]:
        queue = f"bench-{index}"
        port = self.server.port
        loadgen.amqp_queue(loadgen.HOST, port, queue, {"x-queue-type": "quorum"})
        try:
            yield port, self.server.beam, queue
        finally:
            loadgen.amqp_queue(loadgen.HOST, port, queue, delete=True)


def all_systems() -> list[System]:
    return [Metaq(0), Metaq(1), Redis("always"), Redis("everysec"), Nats(), Rabbit()]


# ---------------------------------------------------------------------------- measuring

def measure(system: System, directory: str, index: int, point: tuple[int, int, int],
            timing: Timing) -> dict:
    connections, depth, workers = point
    with system.window(directory, index) as (port, pid, key):
        load = loadgen.PutLoad(system.protocol, port, connections, depth, workers, payload=PAYLOAD, key=key)
        result = loadgen.run_puts(load, timing.warmup, timing.window, {"server": pid})
    cores = result["server_cpu_cores"] = result["server_cpu_cores"]["server"]
    result["server_cpu_us_per_msg"] = (cores / result["msg_per_s"] * 1e6
                                       if cores is not None and result["msg_per_s"] else None)
    return result


def summarize(system: System, runs: dict, points: tuple[tuple[int, int, int], ...]) -> list[dict]:
    out = []
    for point in points:
        rs = runs[point]
        entry = {"connections": point[0], "depth": point[1], "generator_processes": point[2],
                 **_system_summary(rs)}
        middle = sorted(rs, key=lambda r: r["msg_per_s"])[len(rs) // 2]
        entry["latency_cdf"] = {"unit": "ms", "quantiles": middle["latency_cdf_ms"]}
        entry["runs"] = [{k: v for k, v in r.items() if k != "latency_cdf_ms"} for r in rs]
        out.append(entry)
    return out


def compare(rows: list[dict]) -> None:
    """Add ``metaq_over_this`` (× msg/s) to every peer point, against the metaq mode of the
    same sync class."""
    by_key = {r["key"]: r for r in rows}
    for row in rows:
        if row.get("skipped") or row["protocol"] == "metaq":
            continue
        base = by_key.get("metaq-durable" if row["sync"] == BEFORE_ACK else "metaq-threshold")
        row["compared_with"] = base["name"] if base else None
        for point in row["points"]:
            metaq = next((p for p in (base or {}).get("points", [])
                          if (p["connections"], p["depth"]) == (point["connections"], point["depth"])), None)
            point["metaq_over_this"] = figure(
                ratio(metaq["msg_per_s"]["value"], point["msg_per_s"]["value"]) if metaq else None, "×")
            if metaq:
                point["metaq_over_this_per_repetition"] = [
                    ratio(m["msg_per_s"], p["msg_per_s"]) for m, p in zip(metaq["runs"], point["runs"])]


def measure_consume(ctx: RunContext, timing: Timing, redis: Redis) -> dict:
    """metaq ``get`` (maxSize 1 MiB) against Redis ``XREAD COUNT 1000``: each consumer reads the
    same number of 1 KiB messages from the start, one request at a time, ``consume_passes``
    times. The metaq partition is written with the engine (synced) before its broker starts;
    the stream is filled with pipelined XADDs. Both are in the page cache."""
    reps = ctx.repetitions
    metaq_runs: list[dict] = []
    redis_runs: list[dict] = []
    with data_dir(ctx.data_root, "peers-consume-") as directory:
        broker = BrokerProcess(os.path.join(directory, "metaq"), MODES[1].metaq)
        records, end = fill_partition(broker.data, timing.consume_bytes)
        with broker, RedisProcess(redis.binary, os.path.join(directory, "redis"), "everysec") as server:
            loadgen.redis_fill(server.port, TOPIC, records, PAYLOAD)
            for rep in range(reps):
                for which in (("metaq", "redis") if rep % 2 == 0 else ("redis", "metaq")):
                    if which == "metaq":
                        r = loadgen.run_drain(broker.port, DRAIN_TOPIC, 0, end, RECORD,
                                              GET_MAX_SIZE, timing.consume_passes, broker.pid)
                        r["messages"] = r["record_bytes"] // RECORD
                        r["msg_per_s"] = r["messages"] / r["elapsed"]
                        metaq_runs.append(r)
                    else:
                        r = loadgen.run_xread_drain(server.port, TOPIC, records, XREAD_COUNT,
                                                    timing.consume_passes, PAYLOAD, server.pid)
                        redis_runs.append(r)
                    progress(f"consume rep {rep + 1}/{reps} {which:5s}: {r['msg_per_s']:,.0f} msg/s "
                             f"(p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms per request) | "
                             f"server CPU {fmt_number(r['server_cpu_cores'], 2)} consumer CPU "
                             f"{r['client_cpu_cores']:.2f}")

    def summary(runs: list[dict], request: str) -> dict:
        def med(key: str) -> float | None:
            values = [r[key] for r in runs if r[key] is not None]
            return median(values) if values else None
        return {"request": request, "msg_per_s": figure(med("msg_per_s"), "msg/s"),
                "mb_per_s": figure(med("msg_per_s") * PAYLOAD / 1e6, "MB/s"),
                "p50_latency": figure(med("p50_ms"), "ms"), "p99_latency": figure(med("p99_ms"), "ms"),
                "server_cpu": figure(med("server_cpu_cores"), "cores"),
                "client_cpu": figure(med("client_cpu_cores"), "cores"), "runs": runs}

    metaq = summary(metaq_runs, f"get, maxSize {GET_MAX_SIZE // MIB} MiB")
    other = summary(redis_runs, f"XREAD COUNT {XREAD_COUNT} (appendfsync everysec server)")
    return {"messages": figure(records, "messages"), "passes": timing.consume_passes,
            "metaq": metaq, "redis": other,
            "metaq_over_redis": figure(ratio(metaq["msg_per_s"]["value"], other["msg_per_s"]["value"]), "×")}


# ---------------------------------------------------------------------------- reporting

def tables(data: dict) -> list[Table]:
    def v(fig: dict, digits: int = 0) -> str:
        return fmt_number(fig["value"], digits)

    rows = []
    notes = []
    for row in data["systems"]:
        if row.get("skipped"):
            rows.append([row["name"], "-", "-", f"skipped: {row['reason']}", "", "", "", "", "", ""])
            notes.append([row["name"], f"SKIPPED ({row['reason']}); install: {row['install']}"])
            continue
        notes.append([row["name"], f"{row['version'] or '?'}: {row['durability']}"])
        for p in row["points"]:
            rows.append([row["name"], row["sync"], point_label(p["connections"], p["depth"]),
                         v(p["msg_per_s"]), v(p["mb_per_s"], 1), v(p["p50_latency"], 2),
                         v(p["p99_latency"], 2), v(p["server_cpu"], 2), v(p["generator_cpu"], 2),
                         v(p["metaq_over_this"], 2) if "metaq_over_this" in p else ""])
    s = data["settings"]
    found = [Table("Peers: systems and durability", ["system", "version and settings"], notes, right_align_from=2)]
    c = data.get("consume")
    if c:
        found.append(Table(
            f"Consume: {fmt_number(c['messages']['value'])} messages of 1 KiB from the start, one "
            f"request at a time, × {c['passes']} passes (page cache; median of {s['repetitions']})",
            ["consumer", "msg/s", "MB/s", "p50 ms", "p99 ms", "server CPU", "consumer CPU", "metaq÷"],
            [[f"metaq-trio {c['metaq']['request']}", v(c["metaq"]["msg_per_s"]), v(c["metaq"]["mb_per_s"]),
              v(c["metaq"]["p50_latency"], 2), v(c["metaq"]["p99_latency"], 2), v(c["metaq"]["server_cpu"], 2),
              v(c["metaq"]["client_cpu"], 2), ""],
             [f"Redis {c['redis']['request']}", v(c["redis"]["msg_per_s"]), v(c["redis"]["mb_per_s"]),
              v(c["redis"]["p50_latency"], 2), v(c["redis"]["p99_latency"], 2), v(c["redis"]["server_cpu"], 2),
              v(c["redis"]["client_cpu"], 2), v(c["metaq_over_redis"], 2)]]))
    return [
        *found,
        Table(f"Peers: 1 KiB publishes, same load generator (median of {s['repetitions']}, "
              f"{s['window']['value']:g} s windows after {s['warmup']['value']:g} s warm-up; metaq÷ = "
              "metaq-trio of the same sync class ÷ this system)",
              ["system", "synced", "conns×depth", "msg/s", "MB/s", "p50 ms", "p99 ms", "server CPU",
               "gen CPU", "metaq÷"], rows, right_align_from=3),
    ]


# ---------------------------------------------------------------------------- the part

def run(ctx: RunContext) -> PartResult:
    timing = Timing.for_run(ctx.quick)
    points = QUICK_POINTS if ctx.quick else LOAD_POINTS
    reps = ctx.repetitions
    systems = all_systems()
    rows: dict[str, dict] = {}
    active: list[System] = []
    for system in systems:
        reason = system.missing()
        if reason is None:
            active.append(system)
            continue
        rows[system.key] = {**system.describe(), "skipped": True, "reason": reason, "install": system.install}
        progress(f"peers: {system.name} SKIPPED: {reason} (install: {system.install}); no numbers "
                 "are made up")
    runs = {s.key: {p: [] for p in points} for s in active}
    total = len(active) * len(points) * reps
    progress(f"peers: {len(active)} systems × {len(points)} load points × {reps} repetition(s) = "
             f"{total} windows of {timing.window:g} s (+{timing.warmup:g} s warm-up)")
    sampler = CpuSampler().start()
    count = 0
    with data_dir(ctx.data_root, "peers-") as directory:
        started: list[System] = []
        try:
            for system in list(active):
                if isinstance(system, Nats):
                    system.probe(directory)
                try:
                    system.start(directory)
                    started.append(system)
                except Exception as exc:        # an optional peer that fails to start is skipped
                    if system.install is None or isinstance(system, Redis):
                        raise
                    active.remove(system)
                    del runs[system.key]
                    rows[system.key] = {**system.describe(), "skipped": True,
                                        "reason": f"failed to start: {str(exc).splitlines()[0]}",
                                        "install": system.install}
                    progress(f"peers: {system.name} SKIPPED: it failed to start: {exc}")
            total = len(active) * len(points) * reps
            for rep in range(reps):
                for point in points:
                    order = active[rep % len(active):] + active[:rep % len(active)]
                    for system in order:
                        count += 1
                        r = measure(system, directory, count, point, timing)
                        runs[system.key][point].append(r)
                        progress(f"[{count:2d}/{total}] {point_label(point[0], point[1]):>5} "
                                 f"{system.name:36s} rep {rep + 1}/{reps}: {r['msg_per_s']:>9,.0f} msg/s "
                                 f"p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms | server CPU "
                                 f"{fmt_number(r['server_cpu_cores'], 2)} gen CPU "
                                 f"{r['generator_cpu_cores']:.2f}"
                                 + (f" | {r['errors']} errors: {r['first_error']}" if r["errors"] else ""))
        finally:
            for system in reversed(started):
                system.stop()
    redis = next(s for s in systems if isinstance(s, Redis))
    consume = measure_consume(ctx, timing, redis) if redis.binary else None
    for system in active:
        rows[system.key] = {**system.describe(), "skipped": False,
                            "points": summarize(system, runs[system.key], points)}
    ordered = [rows[s.key] for s in systems]
    compare(ordered)
    data = {
        "settings": {
            "quick": ctx.quick, "repetitions": reps, "statistic": "median",
            "warmup": figure(timing.warmup, "s"), "window": figure(timing.window, "s"),
            "payload": figure(PAYLOAD, "B"),
            "load_points": [{"connections": c, "depth": d, "generator_processes": w} for c, d, w in points],
            "ratio": "metaq_over_this = metaq-trio msg/s ÷ this system's msg/s at the same load "
                     "point; peers that sync before the ack against group commit, peers that "
                     "sync on a timer against threshold mode",
        },
        "machine_cpu": sampler.stop(),
        "systems": ordered,
        "consume": consume,
    }
    return PartResult(data, tables(data), [])

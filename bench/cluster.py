"""Part ``cluster``: several metaq-trio brokers registered in one local ZooKeeper, on this machine.

1. scaling — aggregate put throughput with 1, 2 and 3 brokers. Every broker is its own
   ``metaq-trio serve -c <server.ini>`` process (group commit: ``unflushThreshold=0``, a put is
   answered after its record is fdatasync'ed; topic ``bench`` with one partition; registered in
   the ZooKeeper that ``metaq-trio zk`` runs for the part). The load is the raw put generator of
   ``bench/loadgen.py`` (pre-encoded 1 KiB MetaQ ``put`` frames, pipelined), with the same total
   connections × depth (48×16) at every broker count, spread evenly over the brokers: 48, 24+24,
   16+16+16 connections. Generator processes: 2 for 1 broker (24 connections each), one per
   broker otherwise. Reported: msg/s, MB/s, the ratio to 1 broker, p50/p99 per request, the CPU
   of each broker process, of ZooKeeper, of the generator and of everything else, and what the
   machine was short of (CPU or disk).
2. failover — the time from a consumer's death to all its partitions being consumed again. Two
   brokers × 4 partitions of topic ``failover``; a producer process (metaq_client through
   ZooKeeper, round robin) sends 200 msg/s without pause; a group of 3 consumer processes
   (metaq_client cluster mode, DEFAULT balancing) consumes. Once every partition is owned (in
   ZooKeeper) and being consumed, one consumer is killed with SIGKILL; measured: until every
   partition it owned has delivered a message to a surviving consumer. With SIGKILL nothing
   unregisters: the consumer's ZooKeeper session must expire first (its ephemeral ``ids`` and
   ``owners`` nodes vanish), so the figure is dominated by the session timeout (4 s here,
   ``zk.zkSessionTimeoutMs``; ZooKeeper checks expiry once per tick, 1 s, counting from the
   session's last heartbeat, so expiry comes 4 s ± a tick after the kill). The moment the ``ids``
   node vanished is reported too (a kazoo watch in this process, notified like the surviving
   consumers), which splits the time into session expiry and rebalance + first fetch. A new consumer replaces the killed one
   before the next repetition.

``run(ctx) -> PartResult`` like every part. ``python -m bench.cluster consumer|producer …`` are
the child processes of the failover measurement.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

if __package__ in (None, ""):   # run as a script: make `bench` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import loadgen
from bench.broker import BrokerProcess, PartResult, _tail
from bench.common import (
    PROJECT_ROOT,
    CpuSampler,
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

TOPIC = "bench"
PAYLOAD = 1024
CONNECTIONS = 48
DEPTH = 16
BROKER_COUNTS = (1, 2, 3)
GROUP_COMMIT = {"unflushThreshold": 0, "unflushInterval": 10_000}

FAILOVER_TOPIC = "failover"
FAILOVER_BROKERS = 2
FAILOVER_PARTITIONS = 4         # per broker
FAILOVER_CONSUMERS = 3
SESSION_TIMEOUT_MS = 4000       # consumers' zk.zkSessionTimeoutMs
SYNC_TIME_MS = 1000             # consumers' zk.zkSyncTimeMs (rebalance pause / retry interval)
FETCH_DELAY = 0.2               # consumers' maxDelayFetchTime (s) after an empty fetch
PRODUCE_RATE = 200              # msg/s, over the 8 partitions
ZK_TICK_MS = 1000               # LocalZooKeeper's tick (what `metaq-trio zk` runs)
ZK_POLL = 0.02
REP_TIMEOUT = 40.0

SCALING_TARGET = 1.0            # 2 brokers ÷ 1 broker: at least no loss on 2 cores (not asserted)


@dataclass(frozen=True)
class Timing:
    warmup: float
    window: float
    scaling_reps: int
    failover_reps: int

    @classmethod
    def for_run(cls, quick: bool) -> Timing:
        if quick:
            return cls(warmup=0.3, window=1.0, scaling_reps=1, failover_reps=1)
        return cls(warmup=1.0, window=5.0, scaling_reps=3, failover_reps=5)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [PROJECT_ROOT, os.environ.get("PYTHONPATH")]))
    return env


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as stat:
                text = stat.read()
        except OSError:
            continue
        if int(text[text.rindex(")") + 2:].split()[1]) == pid:
            found.append(int(entry))
    return found


# ------------------------------------------------------------------------------- servers

class ZooKeeperCommand:
    """``metaq-trio zk --port 0 --data-dir D`` as a child process; the connect string is the
    first line it prints. Stopped with SIGTERM (it stops the JVM and exits 0)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.log = os.path.join(directory, "zk-command.log")
        self.proc: subprocess.Popen | None = None
        self.connect = ""
        self.java_pid: int | None = None

    def start(self) -> ZooKeeperCommand:
        os.makedirs(self.directory, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "metaq_server.cli", "zk", "--port", "0",
                 "--data-dir", os.path.join(self.directory, "zk")],
                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=log, text=True,
                cwd=PROJECT_ROOT, env=_child_env())
        line = self.proc.stdout.readline().strip()
        if not line:
            code = self.proc.wait()
            raise RuntimeError(f"metaq-trio zk exited with status {code}:\n{_tail(self.log)}")
        self.connect = line
        kids = children_of(self.proc.pid)
        self.java_pid = kids[0] if kids else None
        return self

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


class ClusterBroker(BrokerProcess):
    """A broker of the cluster: ``brokerId``, ZooKeeper on, its own ``zk.zkRoot``."""

    def __init__(self, directory: str, broker_id: int, zk_connect: str, zk_root: str,
                 topics: dict[str, int]) -> None:
        super().__init__(directory, GROUP_COMMIT)
        self.broker_id = broker_id
        self.zk_connect = zk_connect
        self.zk_root = zk_root
        self.topics = topics

    def server_ini(self) -> str:
        system = "\n".join(f"{k}={v}" for k, v in self.settings.items())
        topics = "".join(f"[topic={name}]\nnumPartitions={n}\n\n" for name, n in self.topics.items())
        return ("; written by bench/cluster.py\n[system]\n"
                f"brokerId={self.broker_id}\nnumPartitions=1\n{system}\n"
                "maxSegmentSize=1024*1024*1024\nmaxTransferSize=1024*1024\n\n"
                f"[zookeeper]\nzk.zkEnable=true\nzk.zkConnect={self.zk_connect}\n"
                f"zk.zkRoot={self.zk_root}\nzk.zkSessionTimeoutMs=30000\n"
                "zk.zkConnectionTimeoutMs=30000\nzk.zkSyncTimeMs=0\n\n" + topics)


def _kazoo(connect: str):
    from kazoo.client import KazooClient
    client = KazooClient(hosts=connect, timeout=10)
    client.start(timeout=20)
    return client


def wait_registered(kazoo, root: str, brokers: list[ClusterBroker], topic: str,
                    timeout: float = 30.0) -> None:
    """Until every broker has its ``ids/<id>/master`` and ``topics-pub/<topic>/<id>-m`` nodes."""
    deadline = time.monotonic() + timeout
    paths = [p for b in brokers for p in (f"{root}/brokers/ids/{b.broker_id}/master",
                                          f"{root}/brokers/topics-pub/{topic}/{b.broker_id}-m")]
    while True:
        missing = [p for p in paths if kazoo.exists(p) is None]
        if not missing:
            return
        for broker in brokers:
            broker.check_alive()
        if time.monotonic() > deadline:
            raise RuntimeError(f"brokers not registered in ZooKeeper within {timeout:g} s: {missing}")
        time.sleep(0.05)


def start_brokers(directory: str, count: int, zk: ZooKeeperCommand, root: str,
                  topics: dict[str, int]) -> list[ClusterBroker]:
    brokers = []
    try:
        for broker_id in range(1, count + 1):
            brokers.append(ClusterBroker(os.path.join(directory, f"broker-{broker_id}"), broker_id,
                                         zk.connect, root, topics).start())
    except BaseException:
        stop_brokers(brokers)
        raise
    return brokers


def stop_brokers(brokers: list[ClusterBroker]) -> None:
    for broker in brokers:
        if broker.proc is not None and broker.proc.poll() is None:
            broker.proc.send_signal(signal.SIGTERM)
    for broker in brokers:
        broker.stop()


# ------------------------------------------------------------------------------- scaling

def run_spread_puts(brokers: list[ClusterBroker], zk_pid: int | None, timing: Timing) -> dict:
    """One measured window of CONNECTIONS×DEPTH raw puts spread evenly over ``brokers``
    (``loadgen``'s workers and window protocol, one port per worker)."""
    n = len(brokers)
    per_broker = CONNECTIONS // n
    plan: list[tuple[loadgen.PutLoad, int]] = []
    for broker in brokers:
        workers_here = 2 if n == 1 else 1
        load = loadgen.PutLoad("metaq", broker.port, per_broker, DEPTH, workers_here,
                               payload=PAYLOAD, key=TOPIC)
        plan.extend((load, share) for share in load.shares())
    pids = {f"broker{b.broker_id}": b.pid for b in brokers}
    if zk_pid is not None:
        pids["zookeeper"] = zk_pid
    workers = []
    try:
        for load, share in plan:
            workers.append(loadgen._spawn(loadgen._put_worker, load, share))
        for _, pipe in workers:
            loadgen._expect(pipe, "ready", loadgen.READY_TIMEOUT, "put worker")
        t_go = time.monotonic_ns() + 20_000_000
        t_start = t_go + int(timing.warmup * 1e9)
        t_end = t_start + int(timing.window * 1e9)
        for _, pipe in workers:
            pipe.send(("go", t_go, t_start, t_end))
        loadgen._sleep_until(t_start)
        cpu0 = {k: loadgen.process_cpu_seconds(p) for k, p in pids.items()}
        busy0, m0 = loadgen.machine_busy_seconds(), time.monotonic_ns()
        sampler = CpuSampler().start()
        loadgen._sleep_until(t_end)
        cpu1 = {k: loadgen.process_cpu_seconds(p) for k, p in pids.items()}
        busy1, m1 = loadgen.machine_busy_seconds(), time.monotonic_ns()
        machine = sampler.stop()
        results = [loadgen._expect(pipe, "done", timing.window + loadgen.TAIL_TIMEOUT + 30,
                                   "put worker")[1] for _, pipe in workers]
    finally:
        loadgen.reap(workers)
    import array
    latencies = array.array("q")
    for r in results:
        latencies.frombytes(r.pop("latencies"))
    ordered = sorted(latencies)
    elapsed = (m1 - m0) / 1e9
    cpu = {k: (None if cpu0[k] is None or cpu1[k] is None else (cpu1[k] - cpu0[k]) / elapsed)
           for k in pids}
    answers = sum(r["answers_in_window"] for r in results)
    gen = sum(r["cpu_seconds"] / r["cpu_elapsed"] for r in results if r["cpu_elapsed"] > 0)
    busy = None if busy0 is None or busy1 is None else (busy1 - busy0) / elapsed
    broker_cpu = [cpu[f"broker{b.broker_id}"] for b in brokers]
    known = gen + sum(v for v in cpu.values() if v is not None)
    return {
        "brokers": n,
        "answers": answers,
        "msg_per_s": answers / timing.window,
        "mb_per_s": answers * PAYLOAD / timing.window / 1e6,
        "p50_ms": (loadgen.quantile(ordered, 0.5) or 0.0) / 1e6,
        "p99_ms": (loadgen.quantile(ordered, 0.99) or 0.0) / 1e6,
        "errors": sum(r["errors"] for r in results),
        "first_error": next((r["first_error"] for r in results if r["first_error"]), None),
        "broker_cpu_cores": broker_cpu,
        "brokers_cpu_cores": sum(v for v in broker_cpu if v is not None),
        "zookeeper_cpu_cores": cpu.get("zookeeper"),
        "generator_cpu_cores": gen,
        "generator_processes": len(results),
        "machine_cpu_cores": busy,
        "other_cpu_cores": None if busy is None else max(0.0, busy - known),
        "iowait_percent": machine.get("iowait", {}).get("value"),
        "steal_percent": machine.get("steal", {}).get("value"),
    }


def measure_scaling(ctx: RunContext, timing: Timing, zk: ZooKeeperCommand, root_dir: str) -> list[dict]:
    out = []
    for count in BROKER_COUNTS:
        directory = os.path.join(root_dir, f"scale-{count}")
        zk_root = f"/bench-scale-{count}"
        brokers = start_brokers(directory, count, zk, zk_root, {TOPIC: 1})
        try:
            kazoo = _kazoo(zk.connect)
            try:
                wait_registered(kazoo, zk_root, brokers, TOPIC)
            finally:
                kazoo.stop()
                kazoo.close()
            progress(f"scaling: {count} broker(s) registered under {zk_root} (pids "
                     f"{', '.join(str(b.pid) for b in brokers)}; ports "
                     f"{', '.join(str(b.port) for b in brokers)})")
            runs = []
            for rep in range(timing.scaling_reps):
                r = run_spread_puts(brokers, zk.java_pid, timing)
                for b in brokers:
                    b.check_alive()
                runs.append(r)
                progress(f"  {count} broker(s) rep {rep + 1}/{timing.scaling_reps}: "
                         f"{r['msg_per_s']:,.0f} msg/s p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms"
                         f" | broker CPU {'/'.join(f'{c:.2f}' for c in r['broker_cpu_cores'] if c is not None)}"
                         f" gen {r['generator_cpu_cores']:.2f} machine "
                         f"{'-' if r['machine_cpu_cores'] is None else format(r['machine_cpu_cores'], '.2f')}"
                         f" iowait {r['iowait_percent'] or 0:.0f}%"
                         + (f" errors {r['errors']} ({r['first_error']})" if r["errors"] else ""))
        finally:
            stop_brokers(brokers)
        out.append(summarize_scaling(count, runs))
    base = out[0]["msg_per_s"]["value"]
    for entry in out:
        entry["over_one_broker"] = figure(ratio(entry["msg_per_s"]["value"], base), "×")
    return out


def summarize_scaling(count: int, runs: list[dict]) -> dict:
    def med(key):
        values = [r[key] for r in runs if r[key] is not None]
        return median(values) if values else None

    per_broker = [median([r["broker_cpu_cores"][i] for r in runs if r["broker_cpu_cores"][i] is not None] or [0.0])
                  for i in range(count)]
    return {
        "brokers": count,
        "connections": CONNECTIONS,
        "depth": DEPTH,
        "connections_per_broker": CONNECTIONS // count,
        "msg_per_s": figure(med("msg_per_s"), "msg/s"),
        "mb_per_s": figure(med("mb_per_s"), "MB/s"),
        "p50_latency": figure(med("p50_ms"), "ms"),
        "p99_latency": figure(med("p99_ms"), "ms"),
        "broker_cpu": [figure(v, "cores") for v in per_broker],
        "brokers_cpu": figure(med("brokers_cpu_cores"), "cores"),
        "zookeeper_cpu": figure(med("zookeeper_cpu_cores"), "cores"),
        "generator_cpu": figure(med("generator_cpu_cores"), "cores"),
        "machine_cpu": figure(med("machine_cpu_cores"), "cores"),
        "other_cpu": figure(med("other_cpu_cores"), "cores"),
        "iowait": figure(med("iowait_percent"), "%"),
        "cpu_us_per_msg": figure(ratio(med("brokers_cpu_cores") or 0.0, med("msg_per_s") or 0.0) * 1e6
                                 if med("msg_per_s") else None, "µs"),
        "errors": sum(r["errors"] for r in runs),
        "runs": runs,
    }


def limit_verdict(scaling: list[dict]) -> list[list[str]]:
    """What held the aggregate back on this machine, per broker count, from the measured CPU
    and iowait: rows of (brokers, verdict), then an overall row."""
    cores = os.cpu_count() or 1
    rows = []
    for e in scaling:
        busy = e["machine_cpu"]["value"] or 0.0
        per = max((c["value"] or 0.0) for c in e["broker_cpu"])
        iowait = e["iowait"]["value"] or 0.0
        if e["brokers"] == 1 and busy < 0.85 * cores:
            why = (f"the one broker process: {per:.2f} cores, i.e. its Python thread is saturated, "
                   f"while the machine is only {busy:.2f}/{cores} busy")
        elif busy >= 0.85 * cores:
            why = (f"CPU: the machine is {busy:.2f}/{cores} busy (brokers "
                   f"{e['brokers_cpu']['value'] or 0:.2f} + generator {e['generator_cpu']['value'] or 0:.2f}"
                   f" + other {e['other_cpu']['value'] or 0:.2f}); brokers split the cores "
                   f"({e['cpu_us_per_msg']['value'] or 0:.1f} µs CPU/msg)")
        elif iowait >= 20:
            why = f"disk: {iowait:.0f}% iowait (each broker fdatasyncs its own log on the one disk)"
        else:
            why = f"neither CPU ({busy:.2f}/{cores}) nor disk (iowait {iowait:.0f}%) saturated"
        rows.append([f"{e['brokers']} broker(s)", why])
    worst_iowait = max((e["iowait"]["value"] or 0) for e in scaling)
    disk = (f"disk is not the limit (iowait ≤ {worst_iowait:.0f}%)" if worst_iowait < 20 else
            f"the disk weighs in too (iowait up to {worst_iowait:.0f}%)")
    two = next((e for e in scaling if e["brokers"] == 2), None)
    gain = two["over_one_broker"]["value"] if two is not None and "over_one_broker" in two else None
    if gain is None or gain >= 1.0:
        more = (f"a second broker uses the idle core, after that the {cores} cores are full: more "
                "brokers need more machines")
    else:
        more = (f"a second broker does not add ({gain:.2f}× one broker): the brokers split one disk's "
                "fdatasync stream, each waiting on its own syncs, without filling the cores")
    rows.append(["overall", f"{disk}; {more}"])
    return rows


# ------------------------------------------------------------------------------ failover

class Child:
    """A child process of the failover measurement; its stdout lines go to ``sink``."""

    def __init__(self, name: str, argv: list[str], log_path: str, sink: queue.Queue) -> None:
        self.name = name
        self.log_path = log_path
        self.consumer_id: str | None = None
        self.ready = threading.Event()
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "bench.cluster", *argv],
                                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                         stderr=log, cwd=PROJECT_ROOT, env=_child_env(), text=True,
                                         bufsize=1)
        self._sink = sink
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            kind, _, rest = line.rstrip("\n").partition(" ")
            if kind == "READY":
                self.consumer_id = rest
                self.ready.set()
            elif kind == "M":
                partition, stamp = rest.split(" ")
                self._sink.put((self.name, partition, float(stamp)))

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.ready.wait(0.1):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with status {self.proc.returncode}:\n"
                                   f"{_tail(self.log_path)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready within {timeout:g} s:\n{_tail(self.log_path)}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Deliveries:
    """The consumers' message lines: who got which partition last, and when."""

    def __init__(self) -> None:
        self.sink: queue.Queue = queue.Queue()
        self.last: dict[tuple[str, str], float] = {}        # (consumer, partition) -> time
        self.events: list[tuple[str, str, float]] = []

    def pump(self) -> None:
        while True:
            try:
                item = self.sink.get_nowait()
            except queue.Empty:
                return
            name, partition, stamp = item
            self.last[(name, partition)] = max(stamp, self.last.get((name, partition), 0.0))
            self.events.append(item)
            if len(self.events) > 200_000:
                del self.events[:100_000]


def owners_of(kazoo, root: str, group: str) -> dict[str, str]:
    path = f"{root}/consumers/{group}/owners/{FAILOVER_TOPIC}"
    out = {}
    try:
        children = kazoo.get_children(path)
    except Exception:   # NoNodeError before the first rebalance
        return {}
    for child in children:
        try:
            data, _ = kazoo.get(f"{path}/{child}")
        except Exception:
            continue
        out[child] = data.decode()
    return out


def owner_name(owner: str, consumers: dict[str, Child]) -> str | None:
    for name, child in consumers.items():
        if child.consumer_id and (owner == child.consumer_id or owner.startswith(child.consumer_id + "-")):
            return name
    return None


def wait_steady(kazoo, root: str, group: str, consumers: dict[str, Child], deliveries: Deliveries,
                partitions: list[str], timeout: float = 60.0) -> dict[str, str]:
    """Until every partition is owned by a live consumer that got a message from it in the last
    second, twice 0.3 s apart; returns partition -> consumer name."""
    deadline = time.monotonic() + timeout
    good = 0
    while True:
        deliveries.pump()
        owners = owners_of(kazoo, root, group)
        names = {p: owner_name(o, consumers) for p, o in owners.items()}
        now = time.monotonic()
        ok = (set(names) == set(partitions) and all(names.values())
              and len(set(names.values())) == len(consumers)
              and all(now - deliveries.last.get((names[p], p), 0.0) < 1.0 for p in partitions))
        good = good + 1 if ok else 0
        if good >= 2:
            return names
        if time.monotonic() > deadline:
            raise RuntimeError(f"the group did not settle within {timeout:g} s: owners {owners}")
        time.sleep(0.3)


def measure_failover(ctx: RunContext, timing: Timing, zk: ZooKeeperCommand, root_dir: str) -> dict:
    directory = os.path.join(root_dir, "failover")
    os.makedirs(directory, exist_ok=True)
    zk_root = "/bench-failover"
    group = "failover"
    brokers = start_brokers(directory, FAILOVER_BROKERS, zk, zk_root, {FAILOVER_TOPIC: FAILOVER_PARTITIONS})
    partitions = [f"{b}-{p}" for b in range(1, FAILOVER_BROKERS + 1) for p in range(FAILOVER_PARTITIONS)]
    deliveries = Deliveries()
    consumers: dict[str, Child] = {}
    producer: Child | None = None
    kazoo = _kazoo(zk.connect)
    reps = []
    serial = 0

    def spawn_consumer() -> None:
        nonlocal serial
        serial += 1
        name = f"c{serial}"
        consumers[name] = Child(name, ["consumer", zk.connect, zk_root, group, name,
                                       os.path.join(directory, "recover")],
                                os.path.join(directory, f"{name}.log"), deliveries.sink)

    try:
        wait_registered(kazoo, zk_root, brokers, FAILOVER_TOPIC)
        producer = Child("producer", ["producer", zk.connect, zk_root, str(PRODUCE_RATE),
                                      os.path.join(directory, "recover")],
                         os.path.join(directory, "producer.log"), queue.Queue())
        for _ in range(FAILOVER_CONSUMERS):
            spawn_consumer()
        producer.wait_ready()
        for child in consumers.values():
            child.wait_ready()
        progress(f"failover: {FAILOVER_BROKERS} brokers × {FAILOVER_PARTITIONS} partitions, producer "
                 f"{PRODUCE_RATE} msg/s, {FAILOVER_CONSUMERS} consumers (session {SESSION_TIMEOUT_MS} ms, "
                 f"zkSyncTime {SYNC_TIME_MS} ms)")
        for rep in range(timing.failover_reps):
            owners = wait_steady(kazoo, zk_root, group, consumers, deliveries, partitions)
            by_consumer: dict[str, list[str]] = {}
            for p, name in owners.items():
                by_consumer.setdefault(name, []).append(p)
            victim = sorted(consumers)[rep % len(consumers)]
            owned = sorted(by_consumer[victim])
            victim_child = consumers.pop(victim)
            ids_node = f"{zk_root}/consumers/{group}/ids/{victim_child.consumer_id}"
            gone: list[float] = []

            def on_change(event) -> None:      # kazoo's thread, as soon as ZooKeeper notifies
                if event is not None and event.type == "DELETED" and not gone:
                    gone.append(time.monotonic())

            if kazoo.exists(ids_node, watch=on_change) is None:
                raise RuntimeError(f"{victim}'s ids node {ids_node} is missing before the kill")
            deliveries.pump()
            t0 = time.monotonic()
            victim_child.kill()
            t_kill = time.monotonic()
            t_expired = None
            first: dict[str, float] = {}
            while len(first) < len(owned):
                now = time.monotonic()
                if now - t0 > REP_TIMEOUT:
                    raise RuntimeError(f"partitions {sorted(set(owned) - set(first))} not consumed "
                                       f"again within {REP_TIMEOUT:g} s of the kill")
                if t_expired is None and gone:
                    t_expired = gone[0]
                while True:
                    try:
                        name, partition, stamp = deliveries.sink.get(timeout=ZK_POLL)
                    except queue.Empty:
                        break
                    deliveries.last[(name, partition)] = stamp
                    if name in consumers and partition in owned and stamp > t0 and partition not in first:
                        first[partition] = stamp
            deadline = time.monotonic() + 10
            while not gone and time.monotonic() < deadline:
                time.sleep(ZK_POLL)
            t_expired = gone[0] if gone else None
            total = max(first.values()) - t0
            r = {
                "victim": victim, "owned": owned, "survivors": sorted(consumers),
                "recovered_s": total,
                "session_gone_s": None if t_expired is None else t_expired - t0,
                "after_session_s": None if t_expired is None else max(first.values()) - t_expired,
                "per_partition_s": {p: first[p] - t0 for p in owned},
                "kill_s": t_kill - t0,
            }
            reps.append(r)
            progress(f"  rep {rep + 1}/{timing.failover_reps}: killed {victim} (owned {', '.join(owned)}); "
                     f"ids node gone after {r['session_gone_s']:.2f} s, all its partitions consumed again "
                     f"after {total:.2f} s")
            spawn_consumer()
            for child in consumers.values():
                child.wait_ready()
    finally:
        for child in consumers.values():
            child.terminate()
        if producer is not None:
            producer.terminate()
        kazoo.stop()
        kazoo.close()
        stop_brokers(brokers)

    def med(key):
        values = [r[key] for r in reps if r[key] is not None]
        return median(values) if values else None

    return {
        "brokers": FAILOVER_BROKERS, "partitions_per_broker": FAILOVER_PARTITIONS,
        "consumers": FAILOVER_CONSUMERS, "produce_rate": figure(PRODUCE_RATE, "msg/s"),
        "zk_session_timeout": figure(SESSION_TIMEOUT_MS, "ms"),
        "zk_sync_time": figure(SYNC_TIME_MS, "ms"),
        "zk_tick": figure(ZK_TICK_MS, "ms"),
        "max_delay_fetch_time": figure(FETCH_DELAY, "s"),
        "kill": "SIGKILL",
        "recovered": figure(med("recovered_s"), "s"),
        "recovered_min": figure(min(r["recovered_s"] for r in reps), "s"),
        "recovered_max": figure(max(r["recovered_s"] for r in reps), "s"),
        "session_gone": figure(med("session_gone_s"), "s"),
        "after_session": figure(med("after_session_s"), "s"),
        "repetitions": len(reps),
        "runs": reps,
    }


# ---------------------------------------------------------------------- children (main)

def _consumer_main(connect: str, root: str, group: str, name: str, recover: str) -> None:
    import trio

    from metaq_client import ConsumerConfig, MetaqClient, ZkConfig

    async def main() -> None:
        zk = ZkConfig(zk_connect=connect, zk_root=root, zk_session_timeout_ms=SESSION_TIMEOUT_MS,
                      zk_connection_timeout_ms=10_000, zk_sync_time_ms=SYNC_TIME_MS)
        config = ConsumerConfig(max_delay_fetch_time=FETCH_DELAY, commit_offset_period=1.0, consumer_id=name)
        out = sys.stdout

        def listener(message) -> None:
            out.write(f"M {message.partition} {time.monotonic():.6f}\n")
            out.flush()

        async with MetaqClient(zk_config=zk, recover_path=recover) as client:
            async with client.consumer(group, config) as consumer:
                await consumer.subscribe(FAILOVER_TOPIC, listener)
                print("READY", consumer.consumer_id, flush=True)
                await trio.sleep_forever()

    try:
        trio.run(main)
    except KeyboardInterrupt:
        pass


def _producer_main(connect: str, root: str, rate: str, recover: str) -> None:
    import trio

    from metaq_client import MetaqClient, ZkConfig

    async def main() -> None:
        zk = ZkConfig(zk_connect=connect, zk_root=root, zk_session_timeout_ms=SESSION_TIMEOUT_MS,
                      zk_connection_timeout_ms=10_000)
        interval = 1.0 / float(rate)
        async with MetaqClient(zk_config=zk, recover_path=recover) as client:
            async with client.producer() as producer:
                await producer.send(FAILOVER_TOPIC, b"hello")
                print("READY producer", flush=True)
                next_at = trio.current_time()
                number = 0
                while True:
                    number += 1
                    try:
                        with trio.fail_after(3):
                            await producer.send(FAILOVER_TOPIC, b"m%09d" % number)
                    except Exception:   # noqa: BLE001 — keep producing; the figure is the consumers'
                        pass
                    next_at += interval
                    await trio.sleep_until(max(next_at, trio.current_time()))

    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        trio.run(main)
    except KeyboardInterrupt:
        pass


# ---------------------------------------------------------------------------- the part

def _v(fig: dict, digits: int = 0) -> str:
    return fmt_number(fig["value"], digits)


def tables(data: dict, timing: Timing) -> list[Table]:
    scaling, fo = data["scaling"], data["failover"]
    rows = []
    for e in scaling:
        rows.append([str(e["brokers"]), f"{e['connections_per_broker']}×{DEPTH} each", _v(e["msg_per_s"]),
                     _v(e["mb_per_s"], 1), _v(e["over_one_broker"], 2), _v(e["p50_latency"], 2),
                     _v(e["p99_latency"], 2),
                     " / ".join(fmt_number(c["value"], 2) for c in e["broker_cpu"]),
                     _v(e["brokers_cpu"], 2), _v(e["cpu_us_per_msg"], 1), _v(e["zookeeper_cpu"], 2),
                     _v(e["generator_cpu"], 2), _v(e["other_cpu"], 2), _v(e["machine_cpu"], 2),
                     _v(e["iowait"])])
    scale = Table(
        f"Aggregate durable puts of 1 KiB, {CONNECTIONS}×{DEPTH} in total spread evenly over the brokers "
        f"(group commit; median of {timing.scaling_reps}, {timing.window:g} s windows after "
        f"{timing.warmup:g} s warm-up; CPU in cores)",
        ["brokers", "load", "msg/s", "MB/s", "× 1 broker", "p50 ms", "p99 ms", "CPU per broker",
         "brokers CPU", "µs CPU/msg", "ZK CPU", "gen CPU", "other CPU", "machine CPU", "iowait %"],
        rows, right_align_from=2)
    runs = fo["runs"]
    fo_rows = [[str(i + 1), r["victim"], ", ".join(r["owned"]), fmt_number(r["session_gone_s"], 2),
                fmt_number(r["after_session_s"], 2), fmt_number(r["recovered_s"], 2)]
               for i, r in enumerate(runs)]
    fo_rows.append(["median", "", "", _v(fo["session_gone"], 2), _v(fo["after_session"], 2),
                    _v(fo["recovered"], 2)])
    failover = Table(
        f"Consumer failover: SIGKILL of 1 of {fo['consumers']} consumers ({fo['brokers']} brokers × "
        f"{fo['partitions_per_broker']} partitions, producer {PRODUCE_RATE} msg/s); seconds from the "
        f"kill (median of {fo['repetitions']})",
        ["rep", "killed", "its partitions", "session gone (ids node)", "then rebalance + fetch",
         "all consumed again"], fo_rows, right_align_from=3)
    notes = Table("Setup", ["item", "value"], [
        ["cores", str(os.cpu_count())],
        ["brokers", "one `metaq-trio serve -c server.ini` process each, group commit "
                    "(unflushThreshold=0), registered in one local ZooKeeper (`metaq-trio zk`, tick "
                    f"{ZK_TICK_MS} ms)"],
        ["load generator", "bench/loadgen.py raw pipelined puts; 2 processes for 1 broker, 1 per broker "
                           "otherwise; shares the cores with the brokers"],
        ["consumer ZooKeeper settings",
         f"zk.zkSessionTimeoutMs={SESSION_TIMEOUT_MS} (short on purpose: a SIGKILLed consumer is noticed "
         f"only when its session expires), zk.zkSyncTimeMs={SYNC_TIME_MS}, maxDelayFetchTime="
         f"{FETCH_DELAY:g} s"],
        ["failover clock", "from the SIGKILL to the first message of each of the victim's partitions "
                           "received by a surviving consumer (CLOCK_MONOTONIC, all processes); the "
                           "slowest partition counts"],
        ["CPU busy / steal during the part",
         f"{_v(data['machine_cpu']['busy'])} % / {_v(data['machine_cpu']['steal'], 1)} %"
         if data.get("machine_cpu") else "-"],
    ], right_align_from=2)
    limits = Table(f"What limits the aggregate on {os.cpu_count()} cores", ["brokers", "limit"],
                   data["limit"], right_align_from=2)
    return [notes, scale, limits, failover]


def run(ctx: RunContext) -> PartResult:
    timing = Timing.for_run(ctx.quick)
    sampler = CpuSampler().start()
    with data_dir(ctx.data_root, "cluster-") as directory:
        zk = ZooKeeperCommand(os.path.join(directory, "zookeeper")).start()
        progress(f"cluster: ZooKeeper at {zk.connect} (`metaq-trio zk`, JVM pid {zk.java_pid})")
        try:
            scaling = measure_scaling(ctx, timing, zk, directory)
            failover = measure_failover(ctx, timing, zk, directory)
        finally:
            code = zk.stop()
            if code not in (0, None):
                progress(f"note: metaq-trio zk exited with status {code}")
    data = {
        "settings": {
            "quick": ctx.quick, "statistic": "median",
            "warmup": figure(timing.warmup, "s"), "window": figure(timing.window, "s"),
            "scaling_repetitions": timing.scaling_reps, "failover_repetitions": timing.failover_reps,
            "payload": figure(PAYLOAD, "B"), "connections": CONNECTIONS, "depth": DEPTH,
            "broker_counts": list(BROKER_COUNTS), "broker_settings": GROUP_COMMIT,
        },
        "machine_cpu": sampler.stop(),
        "scaling": scaling,
        "failover": failover,
    }
    data["limit"] = limit_verdict(scaling)
    two = next((e for e in scaling if e["brokers"] == 2), None)
    found = [Target("aggregate durable puts: 2 brokers ÷ 1 broker on the same 2 cores (msg/s)",
                    two["over_one_broker"]["value"] if two else None, SCALING_TARGET)]
    data["targets"] = [t.as_json() for t in found]
    for label, why in data["limit"]:
        progress(f"limit, {label}: {why}")
    return PartResult(data, tables(data, timing), found)


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "consumer":
        _consumer_main(*rest)
    elif command == "producer":
        _producer_main(*rest)
    else:
        sys.exit(f"usage: python -m bench.cluster consumer|producer …  (got {command!r})")

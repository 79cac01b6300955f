"""Part ``client``: the Python client ``metaq_client`` against the broker, side by side with the
raw load generator of the broker benchmark (``bench/loadgen.py``), on the same broker in the
same run. One broker is started for the whole part in group-commit mode (``unflushThreshold=0``:
a put is answered once its record is fdatasync'ed), with the broker part's ``server.ini`` plus a
``latency`` topic.

1. Producer throughput, 1 KiB messages to the one partition of the topic, closed loop (every
   sender sends its next message when the previous one is answered), each case in ONE client
   process using the client as documented: ``MetaqClient("meta://127.0.0.1:<port>")``
   (direct-connect: puts go out with partition -1 and the broker picks its only partition; the
   raw generator names partition 0):

   * trio producer, 1 connection × 16 concurrent sends (16 tasks on one ``MetaqClient``);
   * trio producer, 1 connection × 800 concurrent sends (800 tasks, one ``MetaqClient``: the
     client's natural shape, one connection per broker);
   * trio producer, 50 connections × 16 concurrent sends (50 ``MetaqClient`` s × 16 tasks: the
     exact 50×16 shape of the raw generator);
   * the blocking facade (``metaq_client.blocking``), 16 threads sharing one producer (extra row);

   against raw puts of ``bench/loadgen.py`` (pre-encoded frames, epoll) at the same concurrency:
   1 connection × depth 16 (1 process), 50 × 16 (1 process) and 50 × 16 (2 processes, the broker
   part's load point). Reported: msg/s, MB/s, p50/p99 send → answer, the client process's CPU
   (``time.process_time`` over the window: every thread), CPU µs per message, the broker's CPU,
   and the overhead ``raw ÷ client`` (target ≤ 1.5×, against the raw case with the same number
   of in-flight requests and of processes).
2. End-to-end latency, send → listener: a producer process paces ``latency`` puts open loop at a
   fixed offered rate (1,000 and 10,000 msg/s; sends are scheduled on a fixed grid and started
   as tasks without waiting for earlier answers), stamping each body with its sequence number,
   its scheduled time and the time the send is started (``time.monotonic_ns``, CLOCK_MONOTONIC,
   one clock for every process of the machine); a consumer process subscribed with a plain
   listener records ``now − stamp`` for every message. Both run with the trio API. Two consumer
   configurations: the client's DEFAULTS (``ConsumerConfig()``: ``max_delay_fetch_time`` 5 s,
   Java's ``maxDelayFetchTimeInMills``, so after a 404 at the partition's end the fetch loop
   sleeps maxDelay/10 = 0.5 s, growing by 0.5 s per further miss) and a SMALL BACK-OFF
   (``ConsumerConfig(max_delay_fetch_time=0.01)``: 1 ms steps, at most 10 ms). The target
   (p99 ≤ 5 ms at 10,000 msg/s) applies to the small back-off, the setting a latency-sensitive
   application uses; the defaults rows show what Java's default back-off costs (a consumer that
   has caught up polls every 0.5 s) and carry no target. Reported: offered, sent and delivered
   rates, p50/p99/p99.9/max send → listener, the p99 from the scheduled time (adds the
   producer's own lag), the p99 send → answer of the puts, the CPU of producer, consumer and
   broker; and a histogram PNG (``<out>/client_latency.png``, log-scale x; skipped, with a
   message, when matplotlib is not importable).

Every figure is the median over ``ctx.repetitions`` repetitions (3; 1 with --quick); in each
repetition the cases run in alternating order. The machine has 2 cores: the client processes
share them with the broker. Before every put window the page cache of the broker's data files
is dropped (``release_page_cache``; the data is fdatasync'ed already), so each window's writes
start from the same state: on the virtual machines this was measured on, writing into memory the
guest has not used yet costs a host page fault per page (the broker's kernel copy into the page
cache, ``copy_folio_from_iter_atomic``, went from 5 % to 44 % of its CPU once 4–9 GB had been
written in one run, and its CPU per put from 3.8 to 6–7 µs), which would otherwise load the later
windows more than the first ones.

``run(ctx) -> PartResult`` like every part.
"""

from __future__ import annotations

import array
import os
import struct
import tempfile
import threading
import time
from dataclasses import dataclass

from bench import loadgen
from bench.broker import MODES, PAYLOAD, TOPIC, BrokerProcess, PartResult
from bench.common import (
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
    release_page_cache,
)

MODE = MODES[0]                 # durable: group commit, unflushThreshold=0
LATENCY_TOPIC = "latency"
OVERHEAD_TARGET = 1.5           # raw msg/s ÷ client msg/s, at most
P99_TARGET_MS = 5.0             # end-to-end p99 at 10,000 msg/s, at most
TARGET_RATE = 10_000
TARGET_CONSUMER = "small"       # the e2e target is for ConsumerConfig(max_delay_fetch_time=0.01)
RATES = (1_000, 10_000)
READY_TIMEOUT = 60.0
TAIL_TIMEOUT = 5.0              # closed-loop senders: how long in-flight sends may take after the window
MAX_IN_FLIGHT = 50_000          # open-loop producer: sends beyond this many unanswered are skipped
PLOT_NAME = "client_latency.png"

_HEAD = struct.Struct(">qqq")   # sequence number, scheduled ns, send-started ns (monotonic)


class AtMost(Target):
    """A target met when the measured value is at most the threshold."""

    @property
    def passed(self) -> bool:
        return self.measured is not None and self.measured <= self.threshold

    def as_json(self) -> dict:
        return {**super().as_json(), "direction": "at most"}

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        measured = "n/a" if self.measured is None else f"{self.measured:.2f}{self.unit}"
        return f"{verdict}  {self.name}: {measured} (target ≤ {self.threshold:g}{self.unit})"


@dataclass(frozen=True)
class Timing:
    warmup: float           # put load runs before the window opens
    window: float           # measured window of every throughput case
    lat_warmup: float       # paced sends before the latency window opens
    lat_window: float       # measured latency window

    @classmethod
    def for_run(cls, quick: bool) -> Timing:
        if quick:
            return cls(warmup=0.5, window=1.5, lat_warmup=0.5, lat_window=2.0)
        return cls(warmup=1.0, window=5.0, lat_warmup=1.0, lat_window=10.0)


class ClientBroker(BrokerProcess):
    """The broker part's broker, with one more topic for the latency runs."""

    def server_ini(self) -> str:
        return super().server_ini() + f"\n[topic={LATENCY_TOPIC}]\nnumPartitions=1\n"


def _url(port: int) -> str:
    return f"meta://127.0.0.1:{port}"


# ------------------------------------------------------------------- throughput cases

@dataclass(frozen=True)
class ClientCase:
    key: str
    api: str                # "trio" or "blocking"
    clients: int            # MetaqClient instances = connections
    senders: int            # concurrent senders per client (tasks, or threads for blocking)
    raw: str                # key of the raw case with the same in-flight count and processes

    @property
    def in_flight(self) -> int:
        return self.clients * self.senders

    @property
    def label(self) -> str:
        if self.api == "blocking":
            return f"blocking {self.senders} threads, {self.clients} conn"
        return f"trio {self.clients} conn × {self.senders} tasks"


@dataclass(frozen=True)
class RawCase:
    key: str
    connections: int
    depth: int
    workers: int

    @property
    def in_flight(self) -> int:
        return self.connections * self.depth

    @property
    def label(self) -> str:
        return f"raw {self.connections}×{self.depth}, {self.workers} proc"


RAW_CASES = (
    RawCase("raw-1x16", 1, 16, 1),
    RawCase("raw-50x16", 50, 16, 1),
    RawCase("raw-50x16-2p", 50, 16, 2),       # the broker part's 50×16 load point
)
CLIENT_CASES = (
    ClientCase("trio-1x16", "trio", 1, 16, "raw-1x16"),
    ClientCase("trio-1x800", "trio", 1, 800, "raw-50x16"),
    ClientCase("trio-50x16", "trio", 50, 16, "raw-50x16"),
    ClientCase("blocking-16", "blocking", 1, 16, "raw-1x16"),
)
#: the overhead targets: client case → raw case
OVERHEAD_PAIRS = (("trio-1x16", "raw-1x16"), ("trio-1x800", "raw-50x16"), ("trio-50x16", "raw-50x16"))


class _Window:
    """What a closed-loop client worker counts: answers read inside [t_start, t_end)."""

    def __init__(self, t_start: int, t_end: int) -> None:
        self.t_start, self.t_end = t_start, t_end
        self.in_window = 0
        self.total = 0
        self.errors = 0
        self.first_error: str | None = None
        self.latencies = array.array("q")
        self.cpu: list[tuple[float, int]] = []     # (process_time, monotonic_ns) at the edges

    def answered(self, started: int, now: int, ok: bool, error: str | None) -> None:
        self.total += 1
        if not ok:
            self.errors += 1
            if self.first_error is None:
                self.first_error = error
        if self.t_start <= now < self.t_end:
            self.in_window += 1
            self.latencies.append(now - started)

    def result(self, case: ClientCase) -> dict:
        (cpu0, m0), (cpu1, m1) = self.cpu
        return {"pid": os.getpid(), "connections": case.clients, "answers_in_window": self.in_window,
                "answers_total": self.total, "errors": self.errors, "first_error": self.first_error,
                "cpu_seconds": cpu1 - cpu0, "cpu_elapsed": (m1 - m0) / 1e9,
                "latencies": self.latencies.tobytes()}


def _client_put_worker(case: ClientCase, port: int, pipe) -> None:
    """A client process: one closed-loop put load through metaq_client (spawned)."""
    with loadgen.reporting(pipe):
        with tempfile.TemporaryDirectory(prefix="metaq-bench-client-") as tmp:
            if case.api == "trio":
                import trio
                result = trio.run(_trio_puts, case, port, pipe, tmp)
            else:
                result = _blocking_puts(case, port, pipe, tmp)
        pipe.send(("done", result))


async def _trio_puts(case: ClientCase, port: int, pipe, tmp: str) -> dict:
    import contextlib

    import trio

    from metaq_client import MetaqClient

    body = loadgen.payload_bytes(PAYLOAD)
    clock = time.monotonic_ns
    async with contextlib.AsyncExitStack() as stack:
        producers = []
        for index in range(case.clients):
            client = await stack.enter_async_context(
                MetaqClient(_url(port), recover_path=os.path.join(tmp, f"recover-{index}")))
            producers.append(await stack.enter_async_context(client.producer()))
        for producer in producers:                  # connect every client before the clock
            first = await producer.send(TOPIC, body)
            if not first.success:
                raise RuntimeError(f"the first put failed: {first.error_message}")
        pipe.send(("ready", os.getpid()))
        kind, t_go, t_start, t_end = await trio.to_thread.run_sync(pipe.recv)
        assert kind == "go"
        window = _Window(t_start, t_end)

        async def sleep_until(deadline: int) -> None:
            await trio.sleep(max(0.0, (deadline - clock()) / 1e9))

        async def sender(producer) -> None:
            # window.answered inlined for successes (the same counts): a method call per answer
            # would be the bench's overhead, not the client's
            send = producer.send
            latency = window.latencies.append
            answered = in_window = 0
            try:
                while True:
                    started = clock()
                    if started >= t_end:
                        return
                    try:
                        result = await send(TOPIC, body)
                    except Exception as exc:      # counted; a dead connection ends this sender
                        window.answered(started, clock(), False, f"{type(exc).__name__}: {exc}")
                        return
                    now = clock()
                    if not result.success:
                        window.answered(started, now, False, result.error_message)
                        continue
                    answered += 1
                    if t_start <= now < t_end:
                        in_window += 1
                        latency(now - started)
            finally:
                window.total += answered
                window.in_window += in_window

        async def cpu_probe() -> None:
            await sleep_until(t_start)
            window.cpu.append((time.process_time(), clock()))
            await sleep_until(t_end)
            window.cpu.append((time.process_time(), clock()))

        await sleep_until(t_go)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(cpu_probe)
            for producer in producers:
                for _ in range(case.senders):
                    nursery.start_soon(sender, producer)
    return window.result(case)


def _blocking_puts(case: ClientCase, port: int, pipe, tmp: str) -> dict:
    from metaq_client import blocking

    body = loadgen.payload_bytes(PAYLOAD)
    clock = time.monotonic_ns
    with blocking.Client(_url(port), recover_path=os.path.join(tmp, "recover")) as client:
        with client.producer() as producer:
            first = producer.send(TOPIC, body)
            if not first.success:
                raise RuntimeError(f"the first put failed: {first.error_message}")
            pipe.send(("ready", os.getpid()))
            kind, t_go, t_start, t_end = pipe.recv()
            assert kind == "go"
            window = _Window(t_start, t_end)
            lock = threading.Lock()

            def sender() -> None:
                mine = _Window(t_start, t_end)
                while True:
                    started = clock()
                    if started >= t_end:
                        break
                    try:
                        result = producer.send(TOPIC, body)
                    except Exception as exc:
                        mine.answered(started, clock(), False, f"{type(exc).__name__}: {exc}")
                        break
                    mine.answered(started, clock(), result.success, result.error_message)
                with lock:
                    window.total += mine.total
                    window.in_window += mine.in_window
                    window.errors += mine.errors
                    window.first_error = window.first_error or mine.first_error
                    window.latencies.extend(mine.latencies)

            loadgen._sleep_until(t_go)
            threads = [threading.Thread(target=sender, name=f"sender-{i}") for i in range(case.senders)]
            for thread in threads:
                thread.start()
            loadgen._sleep_until(t_start)
            window.cpu.append((time.process_time(), clock()))
            loadgen._sleep_until(t_end)
            window.cpu.append((time.process_time(), clock()))
            for thread in threads:
                thread.join(timeout=TAIL_TIMEOUT + 10)
    return window.result(case)


def run_client_puts(case: ClientCase, port: int, broker_pid: int, warmup: float, window: float,
                    on_window=None) -> dict:
    """One measured window of a client case; the same figures as ``loadgen.run_puts``.
    ``on_window(client_pid)`` (optional) is called when the window opens (a profiler hook)."""
    proc, pipe = loadgen._spawn(_client_put_worker, case, port)
    try:
        worker_pid = loadgen._expect(pipe, "ready", READY_TIMEOUT, case.label)[1]
        t_go = time.monotonic_ns() + 20_000_000
        t_start = t_go + int(warmup * 1e9)
        t_end = t_start + int(window * 1e9)
        pipe.send(("go", t_go, t_start, t_end))
        loadgen._sleep_until(t_start)
        cpu0, busy0, m0 = loadgen.process_cpu_seconds(broker_pid), loadgen.machine_busy_seconds(), time.monotonic_ns()
        if on_window is not None:
            on_window(worker_pid)
        loadgen._sleep_until(t_end)
        cpu1, busy1, m1 = loadgen.process_cpu_seconds(broker_pid), loadgen.machine_busy_seconds(), time.monotonic_ns()
        result = loadgen._expect(pipe, "done", window + TAIL_TIMEOUT + 60, case.label)[1]
    finally:
        loadgen.reap([(proc, pipe)])
    latencies = array.array("q")
    latencies.frombytes(result.pop("latencies"))
    ordered = sorted(latencies)
    elapsed = (m1 - m0) / 1e9
    client_cpu = result["cpu_seconds"] / result["cpu_elapsed"] if result["cpu_elapsed"] > 0 else None
    broker_cpu = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / elapsed
    machine = None if busy0 is None or busy1 is None else (busy1 - busy0) / elapsed
    known = (client_cpu or 0.0) + (broker_cpu or 0.0)
    answers = result["answers_in_window"]
    return {
        "window": window,
        "answers": answers,
        "msg_per_s": answers / window,
        "mb_per_s": answers * PAYLOAD / window / 1e6,
        "p50_ms": (loadgen.quantile(ordered, 0.50) or 0.0) / 1e6,
        "p99_ms": (loadgen.quantile(ordered, 0.99) or 0.0) / 1e6,
        "errors": result["errors"],
        "first_error": result["first_error"],
        "client_pid": worker_pid,
        "generator_cpu_cores": client_cpu,
        "generator_processes": 1,
        "server_cpu_cores": broker_cpu,
        "machine_cpu_cores": machine,
        "other_cpu_cores": None if machine is None else max(0.0, machine - known),
    }


def run_raw_puts(case: RawCase, port: int, broker_pid: int, warmup: float, window: float) -> dict:
    load = loadgen.PutLoad("metaq", port, case.connections, case.depth, case.workers,
                           payload=PAYLOAD, key=TOPIC)
    result = loadgen.run_puts(load, warmup, window, {"server": broker_pid})
    result["server_cpu_cores"] = result["server_cpu_cores"]["server"]
    return result


# ---------------------------------------------------------------------- latency cases

@dataclass(frozen=True)
class ConsumerSetup:
    key: str
    label: str                              # short, for tables
    description: str
    max_delay_fetch_time: float | None      # None: the client's defaults


CONSUMER_SETUPS = (
    ConsumerSetup("defaults", "defaults (max delay 5 s)",
                  "client defaults, ConsumerConfig(): max_delay_fetch_time 5 s (Java "
                  "maxDelayFetchTimeInMills): after a 404 the next fetch waits 0.5 s, +0.5 s per "
                  "further miss", None),
    ConsumerSetup("small", "max delay 0.01 s",
                  "ConsumerConfig(max_delay_fetch_time=0.01): 1 ms after a 404, +1 ms per further "
                  "miss, at most 10 ms", 0.01),
)


def _consumer_config(setup: ConsumerSetup):
    from metaq_client import ConsumerConfig

    if setup.max_delay_fetch_time is None:
        return ConsumerConfig(consume_from_max_offset=True)
    return ConsumerConfig(consume_from_max_offset=True, max_delay_fetch_time=setup.max_delay_fetch_time)


def _latency_consumer(setup: ConsumerSetup, port: int, group: str, pipe) -> None:
    with loadgen.reporting(pipe):
        import trio
        with tempfile.TemporaryDirectory(prefix="metaq-bench-consumer-") as tmp:
            result = trio.run(_consume, setup, port, group, pipe, tmp)
        pipe.send(("done", result))


async def _consume(setup: ConsumerSetup, port: int, group: str, pipe, tmp: str) -> dict:
    import trio

    from metaq_client import LocalOffsetStorage, MetaqClient

    clock = time.monotonic_ns
    unpack = _HEAD.unpack_from
    from_send = array.array("q")
    from_schedule = array.array("q")
    state = {"delivered": 0, "in_window": 0, "first": None, "last": None}
    window = [0, 0]

    def listener(message) -> None:
        now = clock()
        _seq, scheduled, sent = unpack(message.body)
        state["delivered"] += 1
        if window[0] <= scheduled < window[1]:
            state["in_window"] += 1
            from_send.append(now - sent)
            from_schedule.append(now - scheduled)
            if state["first"] is None:
                state["first"] = now
            state["last"] = now

    async with MetaqClient(_url(port), recover_path=os.path.join(tmp, "recover")) as client:
        await client.stats()                         # the connection is up before the clock
        async with client.consumer(group, _consumer_config(setup),
                                   offset_storage=LocalOffsetStorage(os.path.join(tmp, "offsets.json"))) as consumer:
            pipe.send(("ready", os.getpid()))
            kind, t_go, t_start, t_end = await trio.to_thread.run_sync(pipe.recv)
            assert kind == "go"
            window[:] = [t_start, t_end]
            # subscribe when the producer starts: from the partition's end, and without an idle
            # period before it in which the default back-off would grow to its 5 s maximum
            await trio.sleep(max(0.0, (t_go - clock()) / 1e9))
            await consumer.subscribe(LATENCY_TOPIC, listener, partitions=[0])
            await trio.sleep(max(0.0, (t_start - clock()) / 1e9))
            cpu0, m0 = time.process_time(), clock()
            await trio.sleep(max(0.0, (t_end - clock()) / 1e9))
            cpu1, m1 = time.process_time(), clock()
            kind, expected, tail = await trio.to_thread.run_sync(pipe.recv)
            assert kind == "expect"
            deadline = clock() + int(tail * 1e9)
            while state["in_window"] < expected and clock() < deadline:
                await trio.sleep(0.005)
    return {"pid": os.getpid(), "delivered": state["delivered"], "in_window": state["in_window"],
            "expected": expected, "first_ns": state["first"], "last_ns": state["last"],
            "cpu_seconds": cpu1 - cpu0, "cpu_elapsed": (m1 - m0) / 1e9,
            "from_send": from_send.tobytes(), "from_schedule": from_schedule.tobytes()}


def _latency_producer(rate: int, port: int, pipe) -> None:
    with loadgen.reporting(pipe):
        import trio
        with tempfile.TemporaryDirectory(prefix="metaq-bench-producer-") as tmp:
            result = trio.run(_paced_sends, rate, port, pipe, tmp)
        pipe.send(("done", result))


async def _paced_sends(rate: int, port: int, pipe, tmp: str) -> dict:
    """Open loop: message i is due at t_go + i/rate; every due message is started as a task at
    once, whatever is still unanswered."""
    import trio

    from metaq_client import MetaqClient

    clock = time.monotonic_ns
    pad = loadgen.payload_bytes(PAYLOAD)[_HEAD.size:]
    pack = _HEAD.pack
    stats = {"sent_in_window": 0, "ok_in_window": 0, "errors": 0, "first_error": None,
             "skipped": 0, "in_flight": 0, "max_in_flight": 0}
    lag = array.array("q")          # send started − scheduled, window messages
    acked = array.array("q")        # answer − send started, window messages
    async with MetaqClient(_url(port), recover_path=os.path.join(tmp, "recover")) as client:
        async with client.producer() as producer:
            send = producer.send
            await send(LATENCY_TOPIC, pack(-1, 0, 0) + pad)     # connect before the clock
            pipe.send(("ready", os.getpid()))
            kind, t_go, t_start, t_end = await trio.to_thread.run_sync(pipe.recv)
            assert kind == "go"

            async def send_one(seq: int, scheduled: int) -> None:
                started = clock()
                inside = t_start <= scheduled < t_end
                try:
                    result = await send(LATENCY_TOPIC, pack(seq, scheduled, started) + pad)
                    ok, error = result.success, result.error_message
                except Exception as exc:
                    ok, error = False, f"{type(exc).__name__}: {exc}"
                stats["in_flight"] -= 1
                if not ok:
                    stats["errors"] += 1
                    stats["first_error"] = stats["first_error"] or error
                if inside:
                    lag.append(started - scheduled)
                    if ok:
                        stats["ok_in_window"] += 1
                        acked.append(clock() - started)

            interval = 1e9 / rate
            seq = 0
            await trio.sleep(max(0.0, (t_go - clock()) / 1e9))
            cpu0 = m0 = None
            async with trio.open_nursery() as nursery:
                while True:
                    now = clock()
                    if cpu0 is None and now >= t_start:
                        cpu0, m0 = time.process_time(), now
                    due = t_go + int(seq * interval)
                    if due >= t_end:
                        break
                    if due > now:
                        await trio.sleep((due - now) / 1e9)
                        continue
                    while due <= now and due < t_end:
                        if t_start <= due:
                            stats["sent_in_window"] += 1
                        if stats["in_flight"] >= MAX_IN_FLIGHT:
                            stats["skipped"] += 1
                        else:
                            stats["in_flight"] += 1
                            stats["max_in_flight"] = max(stats["max_in_flight"], stats["in_flight"])
                            nursery.start_soon(send_one, seq, due)
                        seq += 1
                        due = t_go + int(seq * interval)
                cpu1, m1 = time.process_time(), clock()
    return {"pid": os.getpid(), **stats, "scheduled_total": seq,
            "cpu_seconds": cpu1 - cpu0, "cpu_elapsed": (m1 - m0) / 1e9,
            "lag": lag.tobytes(), "acked": acked.tobytes()}


def _quantiles(values: array.array) -> dict:
    ordered = sorted(values)
    return {name: (None if not ordered else loadgen.quantile(ordered, q) / 1e6)
            for name, q in (("p50_ms", 0.5), ("p99_ms", 0.99), ("p999_ms", 0.999))} | {
        "max_ms": ordered[-1] / 1e6 if ordered else None}


def run_latency(setup: ConsumerSetup, rate: int, port: int, broker_pid: int, group: str,
                timing: Timing, samples: dict, on_window=None) -> dict:
    """One latency window; appends the window's send → listener latencies (ns) to ``samples``.
    ``on_window({"producer": pid, "consumer": pid})`` (optional) is called when the window opens."""
    consumer, cpipe = loadgen._spawn(_latency_consumer, setup, port, group)
    producer = ppipe = None
    try:
        consumer_pid = loadgen._expect(cpipe, "ready", READY_TIMEOUT, "latency consumer")[1]
        producer, ppipe = loadgen._spawn(_latency_producer, rate, port)
        producer_pid = loadgen._expect(ppipe, "ready", READY_TIMEOUT, "paced producer")[1]
        t_go = time.monotonic_ns() + 20_000_000
        t_start = t_go + int(timing.lat_warmup * 1e9)
        t_end = t_start + int(timing.lat_window * 1e9)
        for pipe in (cpipe, ppipe):
            pipe.send(("go", t_go, t_start, t_end))
        loadgen._sleep_until(t_start)
        cpu0, busy0, m0 = loadgen.process_cpu_seconds(broker_pid), loadgen.machine_busy_seconds(), time.monotonic_ns()
        if on_window is not None:
            on_window({"producer": producer_pid, "consumer": consumer_pid})
        loadgen._sleep_until(t_end)
        cpu1, busy1, m1 = loadgen.process_cpu_seconds(broker_pid), loadgen.machine_busy_seconds(), time.monotonic_ns()
        sent = loadgen._expect(ppipe, "done", timing.lat_window + 120, "paced producer")[1]
        tail = (setup.max_delay_fetch_time or 5.0) + 2.0
        cpipe.send(("expect", sent["ok_in_window"], tail))
        got = loadgen._expect(cpipe, "done", tail + 60, "latency consumer")[1]
    finally:
        loadgen.reap([(producer, ppipe), (consumer, cpipe)], timeout=15)
    from_send, from_schedule, lag, acked = (array.array("q") for _ in range(4))
    from_send.frombytes(got.pop("from_send"))
    from_schedule.frombytes(got.pop("from_schedule"))
    lag.frombytes(sent.pop("lag"))
    acked.frombytes(sent.pop("acked"))
    samples.setdefault((setup.key, rate), array.array("q")).extend(from_send)
    window = timing.lat_window
    e2e = _quantiles(from_send)
    elapsed = (m1 - m0) / 1e9
    producer_cpu = sent["cpu_seconds"] / sent["cpu_elapsed"] if sent["cpu_elapsed"] else None
    consumer_cpu = got["cpu_seconds"] / got["cpu_elapsed"] if got["cpu_elapsed"] else None
    broker_cpu = None if cpu0 is None or cpu1 is None else (cpu1 - cpu0) / elapsed
    machine = None if busy0 is None or busy1 is None else (busy1 - busy0) / elapsed
    known = (producer_cpu or 0.0) + (consumer_cpu or 0.0) + (broker_cpu or 0.0)
    return {
        "window": window,
        "offered_msg_per_s": rate,
        "sent_msg_per_s": sent["sent_in_window"] / window,
        "acked_msg_per_s": sent["ok_in_window"] / window,
        "delivered_msg_per_s": got["in_window"] / window,
        "sent_in_window": sent["sent_in_window"],
        "acked_in_window": sent["ok_in_window"],
        "delivered_in_window": got["in_window"],
        "undelivered": max(0, sent["ok_in_window"] - got["in_window"]),
        "skipped_sends": sent["skipped"],
        "max_in_flight": sent["max_in_flight"],
        "send_errors": sent["errors"],
        "first_send_error": sent["first_error"],
        **{f"e2e_{k}": v for k, v in e2e.items()},
        "from_schedule_p99_ms": _quantiles(from_schedule)["p99_ms"],
        "producer_lag_p99_ms": _quantiles(lag)["p99_ms"],
        "ack_p50_ms": _quantiles(acked)["p50_ms"],
        "ack_p99_ms": _quantiles(acked)["p99_ms"],
        "producer_cpu_cores": producer_cpu,
        "consumer_cpu_cores": consumer_cpu,
        "broker_cpu_cores": broker_cpu,
        "machine_cpu_cores": machine,
        "other_cpu_cores": None if machine is None else max(0.0, machine - known),
    }


# ------------------------------------------------------------------------------- plot

def plot_latency(samples: dict, path: str, reps: int, window: float) -> dict:
    """The send → listener histograms (log-scale x) as a PNG; {"skipped": …} without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
    except ImportError as exc:
        return {"skipped": True, "reason": f"matplotlib is not importable ({exc}); pip install matplotlib"}
    fig, axes = plt.subplots(1, len(RATES), figsize=(6.5 * len(RATES), 5.2), sharey=True)
    all_ms = [v / 1e6 for values in samples.values() for v in values if v > 0]
    low = max(0.01, min(all_ms) * 0.8) if all_ms else 0.01
    high = max(all_ms) * 1.25 if all_ms else 10_000.0
    bins = np.logspace(np.log10(low), np.log10(high), 120)
    for axis, rate in zip(np.atleast_1d(axes), RATES):
        for setup in CONSUMER_SETUPS:
            values = samples.get((setup.key, rate))
            if not values:
                continue
            ms = np.maximum(np.frombuffer(values.tobytes(), dtype=np.int64) / 1e6, low)
            p50, p99 = np.percentile(ms, 50), np.percentile(ms, 99)
            axis.hist(ms, bins=bins, weights=np.full(len(ms), 100.0 / len(ms)), histtype="step",
                      linewidth=1.6, label=f"{setup.label}\np50 {p50:.2f} ms, p99 {p99:.2f} ms, n={len(ms):,}")
        axis.axvline(P99_TARGET_MS, color="grey", linestyle=":", linewidth=1)
        axis.set_xscale("log")
        axis.set_xlabel("send → listener latency (ms, log scale)")
        axis.set_title(f"{rate:,} msg/s offered, 1 KiB, group commit")
        axis.grid(True, which="both", alpha=0.25)
        axis.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, frameon=False)
    np.atleast_1d(axes)[0].set_ylabel("% of messages per bin")
    fig.suptitle(f"metaq_client end-to-end latency (paced trio producer → consumer listener; "
                 f"{reps} × {window:g} s pooled, so p50/p99 here are of the pooled samples; "
                 f"dotted: {P99_TARGET_MS:g} ms target)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"skipped": False, "path": path}


# ----------------------------------------------------------------------- summarising

def _med(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return median(values) if values else None


def _put_summary(runs: list[dict]) -> dict:
    msg = _med(runs, "msg_per_s")
    cpu = _med(runs, "generator_cpu_cores")
    return {
        "msg_per_s": figure(msg, "msg/s"),
        "mb_per_s": figure(_med(runs, "mb_per_s"), "MB/s"),
        "p50_latency": figure(_med(runs, "p50_ms"), "ms"),
        "p99_latency": figure(_med(runs, "p99_ms"), "ms"),
        "client_cpu": figure(cpu, "cores"),
        "client_cpu_per_msg": figure(_med([{"v": r["generator_cpu_cores"] / r["msg_per_s"] * 1e6}
                                           for r in runs if r["generator_cpu_cores"] and r["msg_per_s"]], "v"),
                                     "µs"),
        "broker_cpu": figure(_med(runs, "server_cpu_cores"), "cores"),
        "other_cpu": figure(_med(runs, "other_cpu_cores"), "cores"),
        "errors": sum(r["errors"] for r in runs),
        "runs": runs,
    }


def summarize_throughput(client_runs: dict, raw_runs: dict) -> dict:
    raw = {}
    for case in RAW_CASES:
        raw[case.key] = {"label": case.label, "connections": case.connections, "depth": case.depth,
                         "processes": case.workers, "in_flight": case.in_flight,
                         **_put_summary(raw_runs[case.key])}
    clients = {}
    for case in CLIENT_CASES:
        summary = _put_summary(client_runs[case.key])
        base = raw[case.raw]
        per_rep = [ratio(r["msg_per_s"], c["msg_per_s"])
                   for r, c in zip(raw_runs[case.raw], client_runs[case.key])]
        clients[case.key] = {
            "label": case.label, "api": case.api, "raw_label": base["label"], "connections": case.clients,
            "senders_per_connection": case.senders, "in_flight": case.in_flight, "processes": 1,
            **summary,
            "compared_with": case.raw,
            "raw_over_client": figure(ratio(base["msg_per_s"]["value"], summary["msg_per_s"]["value"]), "×"),
            "raw_over_client_per_repetition": per_rep,
        }
        if case.raw == "raw-50x16":
            clients[case.key]["raw_2_processes_over_client"] = figure(
                ratio(raw["raw-50x16-2p"]["msg_per_s"]["value"], summary["msg_per_s"]["value"]), "×")
    return {"client": clients, "raw": raw}


def summarize_latency(runs: dict) -> list[dict]:
    out = []
    for setup in CONSUMER_SETUPS:
        for rate in RATES:
            rs = runs[(setup.key, rate)]
            out.append({
                "consumer": setup.key, "consumer_label": setup.label,
                "consumer_description": setup.description,
                "max_delay_fetch_time": figure(setup.max_delay_fetch_time or 5.0, "s"),
                "offered_rate": figure(rate, "msg/s"),
                "sent_rate": figure(_med(rs, "sent_msg_per_s"), "msg/s"),
                "acked_rate": figure(_med(rs, "acked_msg_per_s"), "msg/s"),
                "delivered_rate": figure(_med(rs, "delivered_msg_per_s"), "msg/s"),
                "p50": figure(_med(rs, "e2e_p50_ms"), "ms"),
                "p99": figure(_med(rs, "e2e_p99_ms"), "ms"),
                "p999": figure(_med(rs, "e2e_p999_ms"), "ms"),
                "max": figure(_med(rs, "e2e_max_ms"), "ms"),
                "p99_from_schedule": figure(_med(rs, "from_schedule_p99_ms"), "ms"),
                "producer_lag_p99": figure(_med(rs, "producer_lag_p99_ms"), "ms"),
                "put_answer_p50": figure(_med(rs, "ack_p50_ms"), "ms"),
                "put_answer_p99": figure(_med(rs, "ack_p99_ms"), "ms"),
                "producer_cpu": figure(_med(rs, "producer_cpu_cores"), "cores"),
                "consumer_cpu": figure(_med(rs, "consumer_cpu_cores"), "cores"),
                "broker_cpu": figure(_med(rs, "broker_cpu_cores"), "cores"),
                "other_cpu": figure(_med(rs, "other_cpu_cores"), "cores"),
                "undelivered": sum(r["undelivered"] for r in rs),
                "send_errors": sum(r["send_errors"] for r in rs),
                "skipped_sends": sum(r["skipped_sends"] for r in rs),
                "runs": rs,
            })
    return out


def targets(data: dict) -> list[Target]:
    found: list[Target] = []
    clients = data["throughput"]["client"]
    raw = data["throughput"]["raw"]
    for client_key, raw_key in OVERHEAD_PAIRS:
        c = clients[client_key]
        found.append(AtMost(f"client overhead, {c['in_flight']} in flight: ({raw[raw_key]['label']}) ÷ "
                            f"({c['label']}) msg/s", c["raw_over_client"]["value"], OVERHEAD_TARGET))
    for entry in data["latency"]:
        if entry["offered_rate"]["value"] == TARGET_RATE and entry["consumer"] == TARGET_CONSUMER:
            found.append(AtMost(f"end-to-end p99 at {TARGET_RATE:,} msg/s, consumer "
                                f"ConsumerConfig(max_delay_fetch_time={entry['max_delay_fetch_time']['value']:g})",
                                entry["p99"]["value"], P99_TARGET_MS, " ms"))
    return found


def _v(fig: dict, digits: int = 0) -> str:
    return fmt_number(fig["value"], digits)


def tables(data: dict, timing: Timing, reps: int) -> list[Table]:
    setup = data["setup"]
    cpu = data.get("machine_cpu", {})
    notes = Table("Setup", ["item", "value"], [
        ["cores", f"{setup['cores']} (client processes share them with the broker)"],
        ["broker", setup["broker"]],
        ["messages", f"{PAYLOAD} B bodies, one partition"],
        ["throughput", setup["throughput"]],
        ["latency", setup["latency"]],
        *[[f"consumer: {s.label}", s.description] for s in CONSUMER_SETUPS],
        ["p99 from sched", "send → listener p99 measured from the scheduled send time (adds the "
                           "paced producer's own lag); put ans p99: send → put answer"],
        ["plot", data["plot"].get("path") or f"skipped: {data['plot'].get('reason')}"],
        ["CPU busy / steal during the part",
         f"{_v(cpu['busy'])} % / {_v(cpu['steal'], 1)} %" if cpu else "-"],
        ["CPU columns", "cores used in the window: client = time.process_time of the client "
                        "process (all threads) — for raw rows the load generator's processes; "
                        "broker = /proc/<pid>/stat; other = the rest of the machine's busy CPU "
                        "(noise flag)"],
    ], right_align_from=2)
    rows = []
    thr = data["throughput"]
    for case in CLIENT_CASES:
        c = thr["client"][case.key]
        rows.append([c["label"], str(c["in_flight"]), _v(c["msg_per_s"]), _v(c["mb_per_s"], 1),
                     _v(c["p50_latency"], 2), _v(c["p99_latency"], 2), _v(c["client_cpu"], 2),
                     _v(c["client_cpu_per_msg"], 1), _v(c["broker_cpu"], 2), _v(c["other_cpu"], 2),
                     f"{_v(c['raw_over_client'], 2)} ({c['raw_label']})"])
    for case in RAW_CASES:
        r = thr["raw"][case.key]
        rows.append([r["label"], str(r["in_flight"]), _v(r["msg_per_s"]), _v(r["mb_per_s"], 1),
                     _v(r["p50_latency"], 2), _v(r["p99_latency"], 2), _v(r["client_cpu"], 2),
                     _v(r["client_cpu_per_msg"], 1), _v(r["broker_cpu"], 2), _v(r["other_cpu"], 2),
                     ""])
    puts = Table(
        f"Producer throughput: 1 KiB puts, group commit, closed loop, one client process (median of "
        f"{reps}, {timing.window:g} s windows after {timing.warmup:g} s warm-up)",
        ["producer", "in flight", "msg/s", "MB/s", "p50 ms", "p99 ms", "client CPU", "µs CPU/msg",
         "broker CPU", "other CPU", "raw ÷ client"], rows, right_align_from=1)
    lat_rows = []
    for e in data["latency"]:
        lat_rows.append([e["consumer_label"], _v(e["offered_rate"]), _v(e["sent_rate"]),
                         _v(e["delivered_rate"]), _v(e["p50"], 2), _v(e["p99"], 2), _v(e["p999"], 2),
                         _v(e["max"], 2), _v(e["p99_from_schedule"], 2), _v(e["put_answer_p99"], 2),
                         _v(e["producer_cpu"], 2), _v(e["consumer_cpu"], 2), _v(e["broker_cpu"], 2),
                         _v(e["other_cpu"], 2)])
    latency = Table(
        f"End-to-end latency send → listener: paced open-loop trio producer → trio consumer listener, "
        f"1 KiB, group commit (median of {reps}, {timing.lat_window:g} s windows after "
        f"{timing.lat_warmup:g} s)",
        ["consumer", "offered/s", "sent/s", "deliv/s", "p50 ms", "p99 ms", "p99.9 ms",
         "max ms", "p99 from sched", "put ans p99", "prod CPU", "cons CPU", "broker CPU", "other CPU"],
        lat_rows, right_align_from=1)
    return [notes, puts, latency]


# ---------------------------------------------------------------------------- the part

def _progress_put(position: str, label: str, rep: int, reps: int, r: dict) -> None:
    cpu = r["server_cpu_cores"]
    errors = f" | {r['errors']} errors: {r['first_error']}" if r["errors"] else ""
    progress(f"{position} {label} rep {rep + 1}/{reps}: {r['msg_per_s']:,.0f} msg/s "
             f"p50 {r['p50_ms']:.2f} ms p99 {r['p99_ms']:.2f} ms | client/gen CPU "
             f"{r['generator_cpu_cores'] or 0:.2f} broker CPU {'-' if cpu is None else f'{cpu:.2f}'}"
             f"{errors}")


def _progress_latency(position: str, setup: ConsumerSetup, rate: int, rep: int, reps: int, r: dict) -> None:
    def ms(value):
        return "-" if value is None else f"{value:.2f}"
    extra = ""
    if r["undelivered"]:
        extra += f" | {r['undelivered']} undelivered"
    if r["send_errors"]:
        extra += f" | {r['send_errors']} send errors: {r['first_send_error']}"
    if r["skipped_sends"]:
        extra += f" | {r['skipped_sends']} sends skipped ({MAX_IN_FLIGHT:,} unanswered)"
    progress(f"{position} latency {setup.key} {rate:,}/s rep {rep + 1}/{reps}: sent "
             f"{r['sent_msg_per_s']:,.0f}/s delivered {r['delivered_msg_per_s']:,.0f}/s | p50 "
             f"{ms(r['e2e_p50_ms'])} p99 {ms(r['e2e_p99_ms'])} p99.9 {ms(r['e2e_p999_ms'])} max "
             f"{ms(r['e2e_max_ms'])} ms | put answer p99 {ms(r['ack_p99_ms'])} ms | CPU prod "
             f"{r['producer_cpu_cores'] or 0:.2f} cons {r['consumer_cpu_cores'] or 0:.2f} broker "
             f"{r['broker_cpu_cores'] or 0:.2f} other {r['other_cpu_cores'] or 0:.2f}{extra}")


def run(ctx: RunContext) -> PartResult:
    timing = Timing.for_run(ctx.quick)
    reps = ctx.repetitions
    put_cases = [*CLIENT_CASES, *RAW_CASES]
    lat_cases = [(setup, rate) for setup in CONSUMER_SETUPS for rate in RATES]
    total = (len(put_cases) + len(lat_cases)) * reps
    progress(f"client: {len(put_cases) * reps} put windows ({timing.window:g} s +{timing.warmup:g} s "
             f"warm-up) and {len(lat_cases) * reps} latency windows ({timing.lat_window:g} s "
             f"+{timing.lat_warmup:g} s), {reps} repetition(s), one broker ({MODE.metaq_label})")
    sampler = CpuSampler().start()
    client_runs: dict[str, list[dict]] = {c.key: [] for c in CLIENT_CASES}
    raw_runs: dict[str, list[dict]] = {c.key: [] for c in RAW_CASES}
    lat_runs: dict[tuple[str, int], list[dict]] = {(s.key, r): [] for s, r in lat_cases}
    samples: dict[tuple[str, int], array.array] = {}
    counter = 0
    with data_dir(ctx.data_root, "client-") as directory:
        with ClientBroker(os.path.join(directory, "metaq"), MODE.metaq) as broker:
            progress(f"metaq-trio broker pid {broker.pid} on port {broker.port} ({MODE.metaq_label})")
            for rep in range(reps):
                order = put_cases if rep % 2 == 0 else list(reversed(put_cases))
                for case in order:
                    counter += 1
                    position = f"[{counter:2d}/{total}]"
                    broker.check_alive()
                    release_page_cache(broker.data)  # every window starts with the same cache state
                    if isinstance(case, ClientCase):
                        r = run_client_puts(case, broker.port, broker.pid, timing.warmup, timing.window)
                        client_runs[case.key].append(r)
                    else:
                        r = run_raw_puts(case, broker.port, broker.pid, timing.warmup, timing.window)
                        raw_runs[case.key].append(r)
                    _progress_put(position, case.label, rep, reps, r)
                order = lat_cases if rep % 2 == 0 else list(reversed(lat_cases))
                for setup, rate in order:
                    counter += 1
                    position = f"[{counter:2d}/{total}]"
                    broker.check_alive()
                    group = f"bench-latency-{setup.key}-{rate}-{rep}"
                    r = run_latency(setup, rate, broker.port, broker.pid, group, timing, samples)
                    lat_runs[(setup.key, rate)].append(r)
                    _progress_latency(position, setup, rate, rep, reps, r)
            broker.check_alive()
    os.makedirs(ctx.out_dir, exist_ok=True)
    plot = plot_latency(samples, os.path.join(ctx.out_dir, PLOT_NAME), reps, timing.lat_window)
    if plot["skipped"]:
        progress(f"latency histogram SKIPPED: {plot['reason']}")
    else:
        progress(f"latency histogram written to {plot['path']}")
    data = {
        "settings": {
            "quick": ctx.quick, "repetitions": reps, "statistic": "median",
            "warmup": figure(timing.warmup, "s"), "window": figure(timing.window, "s"),
            "latency_warmup": figure(timing.lat_warmup, "s"),
            "latency_window": figure(timing.lat_window, "s"),
            "payload": figure(PAYLOAD, "B"), "broker": MODE.metaq,
            "rates": [figure(r, "msg/s") for r in RATES],
            "consumer_configs": {s.key: {"label": s.label, "description": s.description,
                                         "max_delay_fetch_time": s.max_delay_fetch_time or 5.0}
                                 for s in CONSUMER_SETUPS},
        },
        "setup": {
            "cores": os.cpu_count(),
            "broker": f"one metaq-trio broker for the whole part, group commit ({MODE.metaq_label})",
            "throughput": ("closed loop; client rows: one process (multiprocessing spawn) running "
                           "metaq_client; raw rows: bench/loadgen.py (pre-encoded put frames, epoll); "
                           "raw ÷ client against the raw row with the same in-flight count, 1 process"),
            "latency": ("producer and consumer in two processes (trio API); open-loop pacing on a "
                        "fixed grid; latency = listener time − send-start stamp in the body "
                        "(time.monotonic_ns); the consumer subscribes (from the end) when the "
                        "producer starts"),
        },
        "machine_cpu": sampler.stop(),
        "throughput": summarize_throughput(client_runs, raw_runs),
        "latency": summarize_latency(lat_runs),
        "plot": plot,
    }
    found = targets(data)
    data["targets"] = [t.as_json() for t in found]
    return PartResult(data, tables(data, timing, reps), found)

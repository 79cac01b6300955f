"""Profile the broker under a put load with py-spy: where does its time go per put?

    python bench/profile_broker.py [--mode durable|threshold] [--connections 50] [--depth 16]
                                   [--seconds 5] [--out DIR] [--native] [--svg]

Starts a fresh broker exactly as ``bench/broker.py`` does (same server.ini, data under
bench/results), drives it with the same load generator, and while the load runs samples the
broker with ``py-spy record --threads -f raw`` (``pip install py-spy``). Prints the load figures,
the broker's CPU, and a summary of the samples: per thread, the functions with the most samples
on top of the stack ("self") and anywhere on it ("total"), each also as CPU µs per put. Writes
the raw collapsed stacks (and with ``--svg`` a flame graph from a second window) to ``--out``.

py-spy pauses the broker ~100 times a second to read its stacks, so the throughput while
profiling is a little lower than in ``bench/run.py broker``.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import loadgen, pyspy
from bench.broker import MODES, PAYLOAD, TOPIC, BrokerProcess
from bench.common import DEFAULT_OUT_DIR, PROJECT_ROOT, data_dir


_SOURCES: dict[str, list[str]] = {}


def snapshot_sources() -> None:
    """Read the project's sources as the broker loads them (files may change while it runs)."""
    for package in ("metaq_core", "metaq_server"):
        folder = os.path.join(PROJECT_ROOT, package)
        for name in os.listdir(folder):
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8") as src:
                    _SOURCES[f"{package}/{name}"] = src.readlines()


def _source_line(frame: str) -> str:
    """The source text of a frame's line (project files only), for labelling."""
    match = re.search(r"\((metaq_\w+/[\w/]+\.py):(\d+)\)$", frame)
    if not match:
        return frame
    if match.group(1) not in _SOURCES:
        snapshot_sources()
    try:
        return _SOURCES[match.group(1)][int(match.group(2)) - 1].strip()
    except (KeyError, IndexError):
        return frame


def phase_of(frames: list[str]) -> str:
    """Which step of serving a put a sample of the trio thread belongs to."""
    text = ";".join(frames)
    if "SocketStream.receive_some" in text:
        return "receive: sock.recv of requests (syscall + trio wrapper)"
    if "SocketStream.send_all" in text:
        return "send: sock.send of answers (syscall + trio wrapper)"
    if "Broker._put " in text:
        for frame in frames:
            if frame.startswith("Broker._put "):
                return "put: " + _source_line(frame)
    if "_PutReply.set" in text:
        return "answer: _PutReply.set (encode_result, queue for the writer task)"
    if "EntryQueue" in text or "trio_bridge" in text:
        return "trio: run callbacks from the writer thread (EntryQueue)"
    if "Connection._read_loop" in text:
        leaf = frames[-1]
        if "frames.Put>" in leaf or "next_event" in _source_line(leaf):
            return "decode: FrameDecoder.next_event + Put()"
        if "CancelScope" in text or "move_on_after" in text:
            return "read loop: cancel scope (move_on_after) per receive"
        if "Broker.dispatch" in text:
            return "read loop: Broker.dispatch"
        return "read loop: other (" + _source_line(leaf) + ")"
    if "Connection._writer" in text:
        return "writer task: other (join, wake-ups)"
    if "get_events" in text or "_io_epoll" in text:
        return "trio: epoll"
    return "trio: scheduler / other (" + frames[-1] + ")"


def summarize(raw_path: str, puts: int, seconds: float, rate: int, top: int = 20) -> str:
    """Per thread, per phase of the trio thread, and per function, from py-spy's raw output."""
    self_count: collections.Counter = collections.Counter()
    total_count: collections.Counter = collections.Counter()
    per_thread: collections.Counter = collections.Counter()
    phases: collections.Counter = collections.Counter()
    samples = 0
    for name, frames, n in pyspy.samples(raw_path):
        samples += n
        per_thread[name] += n
        if name == "MainThread":
            phases[phase_of(frames)] += n
        if frames:
            self_count[(name, pyspy.function(frames[-1]))] += n
        for frame in {pyspy.function(f) for f in frames}:
            total_count[(name, frame)] += n
    per_put = 1e6 / rate / puts if puts else 0.0   # one sample = 1/rate s of a thread

    def row(n: int, label: str) -> str:
        return f"  {n:6d} {100.0 * n / samples:5.1f}%  {n * per_put:6.2f} µs/put  {label}"

    lines = [f"{samples} samples in {seconds:g} s at {rate} Hz per thread; {puts:,} puts answered, "
             f"so one sample ≈ {per_put:.3f} µs of a thread per put",
             "threads (sampled only while not idle; the trio thread is 'MainThread'):"]
    lines += [row(n, f"{name}  ({n / seconds / rate:.2f} of the time)")
              for name, n in per_thread.most_common()]
    lines.append("the trio thread by phase of a put:")
    lines += [row(n, label) for label, n in phases.most_common()]
    lines.append("top of stack (self), by function:")
    lines += [row(n, f"[{t}] {f}") for (t, f), n in self_count.most_common(top)]
    lines.append("anywhere on the stack (total), by function:")
    lines += [row(n, f"[{t}] {f}") for (t, f), n in total_count.most_common(top)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/profile_broker.py", description=__doc__.split("\n")[0])
    parser.add_argument("--mode", choices=[m.name for m in MODES], default="durable")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--depth", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--native", action="store_true", help="py-spy --native (Cython/C frames)")
    parser.add_argument("--svg", action="store_true", help="also record a flame graph (second window)")
    parser.add_argument("--out", default="/tmp/metaq-broker-profile")
    parser.add_argument("--data-dir", default=DEFAULT_OUT_DIR)
    args = parser.parse_args(argv)
    spy_binary = shutil.which("py-spy")
    if spy_binary is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    mode = next(m for m in MODES if m.name == args.mode)
    load_kwargs = dict(payload=PAYLOAD, key=TOPIC)
    snapshot_sources()
    with data_dir(os.path.abspath(args.data_dir), "profile-broker-") as directory:
        with BrokerProcess(os.path.join(directory, "metaq"), mode.metaq) as broker:
            load = loadgen.PutLoad("metaq", broker.port, args.connections, args.depth, args.workers,
                                   **load_kwargs)
            print(f"broker pid {broker.pid}, {mode.name} ({mode.metaq_label}), load "
                  f"{args.connections}×{args.depth}, {args.workers} generator processes")
            plain = loadgen.run_puts(load, 1.0, args.seconds, {"broker": broker.pid})
            print(f"without profiler: {plain['msg_per_s']:,.0f} msg/s, p50 {plain['p50_ms']:.2f} ms, "
                  f"p99 {plain['p99_ms']:.2f} ms, broker CPU {plain['server_cpu_cores']['broker']:.2f} "
                  f"cores ({plain['server_cpu_cores']['broker'] / plain['msg_per_s'] * 1e6:.1f} µs/put), "
                  f"generator CPU {plain['generator_cpu_cores']:.2f}")
            raw_path = os.path.join(args.out, "broker.raw.txt")
            spies: list[subprocess.Popen] = []

            def start_spy(_gen_pids, fmt="raw", path=raw_path):
                spies.append(pyspy.record(spy_binary, broker.pid, args.seconds, args.rate, path, fmt=fmt,
                                          native=args.native))

            profiled = loadgen.run_puts(load, 1.0, args.seconds + 1.0, {"broker": broker.pid},
                                        on_window=start_spy)
            for spy in spies:
                _, err = spy.communicate(timeout=60)
                if spy.returncode != 0:
                    print(f"py-spy failed: {err.decode(errors='replace')}", file=sys.stderr)
                    return 1
            print(f"with profiler:    {profiled['msg_per_s']:,.0f} msg/s, broker CPU "
                  f"{profiled['server_cpu_cores']['broker']:.2f} cores")
            puts = int(profiled["msg_per_s"] * int(args.seconds))
            summary = summarize(raw_path, puts, int(args.seconds), args.rate)
            print(summary)
            with open(os.path.join(args.out, "summary.txt"), "w", encoding="utf-8") as out:
                out.write(summary + "\n")
            if args.svg:
                svg = os.path.join(args.out, "broker.svg")
                spies.clear()
                loadgen.run_puts(load, 1.0, args.seconds + 1.0, {"broker": broker.pid},
                                 on_window=lambda pids: start_spy(pids, "flamegraph", svg))
                for spy in spies:
                    spy.communicate(timeout=60)
                print(f"flame graph: {svg}")
            print(f"raw stacks: {raw_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

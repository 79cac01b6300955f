"""Profile the Python client (``metaq_client``) with py-spy under the loads of ``bench/client.py``.

    python bench/profile_client.py [--case trio-50x16] [--seconds 5] [--rate 100] [--out DIR]
    python bench/profile_client.py --case latency [--msg-rate 10000] [--consumer small]

Starts a broker exactly as ``bench/client.py`` does (group commit, data under bench/results).
A put case (``trio-1x16``, ``trio-1x800``, ``trio-50x16``, ``blocking-16``) runs once without the
profiler, then again while ``py-spy record --threads -f raw`` samples the client process through
the window. ``--case latency`` runs one end-to-end latency window (paced producer at
``--msg-rate``, consumer ``--consumer defaults|small``) and samples the producer and the consumer
processes. Prints the figures and, per sampled process, a summary: threads, the share of samples
by step of a send / of a delivery, and the functions most often on top of the stack ("self") and
anywhere on it ("total"), also as CPU µs per message. Writes the raw collapsed stacks to --out.

py-spy samples only threads that are not idle, and slows the sampled process a little. It counts
a thread blocked on a lock or a queue (the blocking facade's callers, trio's idle worker thread) as
busy: ``--gil`` samples only the thread holding the GIL instead (Python CPU time, without the
syscalls made with the GIL released).
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

from bench import client as part
from bench import pyspy
from bench.common import DEFAULT_OUT_DIR, PROJECT_ROOT, data_dir

#: (substring of the joined stack, label); the first match wins — ordered inner steps first
_PHASES = (
    ("checksum", "send: CRC-32 checksum of the body"),
    ("put_frame", "send: build the put frame (codec.put_frame)"),
    ("encode (", "send: encode a frame (wire.encode)"),
    ("_route", "send: route (partition source + selector)"),
    ("topic_token", "send: check a new topic name"),
    ("make_data", "send: Message.data (flag, attribute)"),
    ("metaq_client.message.Message>", "send: Message(...)"),
    ("result_of", "send: SendResult of the answer (Producer.result_of)"),
    ("decode_message_set", "deliver: decode the message set"),
    ("listener", "deliver: the bench listener"),
    ("_deliver", "deliver: fetcher loop (invoke, acks, offsets)"),
    ("fetch_once", "fetch: fetch_once (Get, answer handling)"),
    ("receive_some", "io: receive (trio SocketStream)"),
    ("send_all", "io: send (trio SocketStream)"),
    ("wait_readable", "reader: wait for the socket (epoll registration)"),
    ("wait_writable", "writer: wait for the socket (epoll registration)"),
    ("next_event", "reader: decode answers (FrameDecoder.next_event)"),
    ("receive_data", "reader: FrameDecoder.receive_data"),
    ("AnswerReader", "reader: parse answers, wake senders (AnswerReader.feed)"),
    ("_write_now", "send: write from the sending task (Connection._write_now)"),
    ("task_waiter", "send: the task's Waiter (task_waiter)"),
    ("Connection._reader", "reader: read, match answers, wake senders"),
    ("Connection._writer", "writer: join frames, write, park"),
    ("Connection.request", "send: Connection.request_frame (register, wait)"),
    ("_send_direct", "blocking: send in the caller's thread (encode, wait on the reply)"),
    ("_drain_calls", "blocking: batched crossing into the loop"),
    ("send_message", "send: Producer.send_message itself"),
    ("Producer.send", "send: Producer.send itself"),
    ("from_thread", "blocking: trio.from_thread crossing"),
    ("to_thread", "trio: to_thread"),
    ("paced", "bench: pacing loop / send task"),
    ("sender", "bench: sender loop"),
    ("get_events", "trio: epoll"),
    ("epoll", "trio: epoll"),
)


_SOURCES: dict[str, list[str]] = {}


def _source_line(frame: str) -> str:
    """``f (metaq_client/x.py:12)`` → ``metaq_client/x.py:12  <source text>``."""
    match = re.search(r"\(((metaq_client|metaq_core)/[\w/]+\.py):(\d+)\)$", frame)
    if not match:
        return frame
    path, line = match.group(1), int(match.group(3))
    if path not in _SOURCES:
        try:
            with open(os.path.join(PROJECT_ROOT, path), encoding="utf-8") as src:
                _SOURCES[path] = src.readlines()
        except OSError:
            _SOURCES[path] = []
    text = _SOURCES[path][line - 1].strip() if 0 < line <= len(_SOURCES[path]) else ""
    return f"{path}:{line}  {text}"


def phase_of(frames: list[str]) -> str:
    text = ";".join(frames)
    for needle, label in _PHASES:
        if needle in text:
            return label
    return "trio: scheduler / other (" + (pyspy.function(frames[-1]) if frames else "?") + ")"


def summarize(raw_path: str, messages: int, seconds: float, rate: int, top: int = 18) -> str:
    self_count: collections.Counter = collections.Counter()
    self_lines: collections.Counter = collections.Counter()
    total_count: collections.Counter = collections.Counter()
    per_thread: collections.Counter = collections.Counter()
    phases: collections.Counter = collections.Counter()
    samples = 0
    for name, frames, n in pyspy.samples(raw_path):
        samples += n
        per_thread[name] += n
        phases[phase_of(frames)] += n
        if frames:
            self_count[pyspy.function(frames[-1])] += n
            for frame in reversed(frames):          # innermost frame of the project's code
                if "metaq_client/" in frame or "metaq_core/" in frame:
                    self_lines[_source_line(frame)] += n
                    break
        for frame in {pyspy.function(f) for f in frames}:
            total_count[frame] += n
    if not samples:
        return "no samples"
    per_msg = 1e6 / rate / messages if messages else 0.0

    def row(n: int, label: str) -> str:
        return f"  {n:6d} {100.0 * n / samples:5.1f}%  {n * per_msg:6.2f} µs/msg  {label}"

    lines = [f"{samples} samples in {seconds:g} s at {rate} Hz ({samples / seconds / rate:.2f} threads busy "
             f"on average); {messages:,} messages, one sample ≈ {per_msg:.3f} µs of CPU per message"]
    lines.append("threads:")
    lines += [row(n, name) for name, n in per_thread.most_common()]
    lines.append("by step:")
    lines += [row(n, label) for label, n in phases.most_common()]
    lines.append("top of stack (self):")
    lines += [row(n, f) for f, n in self_count.most_common(top)]
    lines.append("innermost line of metaq_client / metaq_core on the stack:")
    lines += [row(n, f) for f, n in self_lines.most_common(top)]
    lines.append("anywhere on the stack (total):")
    lines += [row(n, f) for f, n in total_count.most_common(top)]
    return "\n".join(lines)


def _finish(spies: list[subprocess.Popen]) -> None:
    for spy in spies:
        _, err = spy.communicate(timeout=120)
        if spy.returncode != 0:
            raise RuntimeError(f"py-spy failed: {err.decode(errors='replace')}")


def main(argv: list[str] | None = None) -> int:
    cases = {c.key: c for c in part.CLIENT_CASES}
    parser = argparse.ArgumentParser(prog="bench/profile_client.py", description=__doc__.split("\n")[0])
    parser.add_argument("--case", choices=[*cases, "latency"], default="trio-50x16")
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    parser.add_argument("--msg-rate", type=int, default=part.TARGET_RATE, help="latency: offered msg/s")
    parser.add_argument("--consumer", choices=[s.key for s in part.CONSUMER_SETUPS], default="small")
    parser.add_argument("--native", action="store_true", help="py-spy --native (Cython/C frames)")
    parser.add_argument("--gil", action="store_true",
                        help="py-spy --gil: only the thread holding the GIL (py-spy counts threads "
                             "blocked on a lock or queue as busy; use this for the blocking facade)")
    parser.add_argument("--out", default="/tmp/metaq-client-profile")
    parser.add_argument("--data-dir", default=DEFAULT_OUT_DIR)
    args = parser.parse_args(argv)
    spy_binary = shutil.which("py-spy")
    if spy_binary is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    os.makedirs(args.out, exist_ok=True)
    seconds = int(args.seconds)
    with data_dir(os.path.abspath(args.data_dir), "profile-client-") as directory:
        with part.ClientBroker(os.path.join(directory, "metaq"), part.MODE.metaq) as broker:
            print(f"broker pid {broker.pid} ({part.MODE.metaq_label})")
            spies: list[subprocess.Popen] = []
            if args.case != "latency":
                case = cases[args.case]
                plain = part.run_client_puts(case, broker.port, broker.pid, 1.0, args.seconds)
                print(f"{case.label}, without profiler: {plain['msg_per_s']:,.0f} msg/s, p50 "
                      f"{plain['p50_ms']:.2f} ms p99 {plain['p99_ms']:.2f} ms, client CPU "
                      f"{plain['generator_cpu_cores']:.2f} cores, broker CPU {plain['server_cpu_cores']:.2f}")
                path = os.path.join(args.out, f"{case.key}.raw.txt")
                profiled = part.run_client_puts(
                    case, broker.port, broker.pid, 1.0, args.seconds + 1.0,
                    on_window=lambda pid: spies.append(pyspy.record(spy_binary, pid, seconds, args.rate, path,
                                                                    native=args.native, gil=args.gil)))
                _finish(spies)
                print(f"with profiler: {profiled['msg_per_s']:,.0f} msg/s, client CPU "
                      f"{profiled['generator_cpu_cores']:.2f} cores")
                print(f"--- client process ({case.label})")
                print(summarize(path, int(profiled["msg_per_s"] * seconds), seconds, args.rate))
                print(f"raw stacks: {path}")
                return 0
            setup = next(s for s in part.CONSUMER_SETUPS if s.key == args.consumer)
            timing = part.Timing(warmup=1.0, window=1.0, lat_warmup=1.0, lat_window=args.seconds + 1.0)
            paths = {who: os.path.join(args.out, f"latency-{who}.raw.txt") for who in ("producer", "consumer")}

            def start(pids: dict) -> None:
                for who, pid in pids.items():
                    spies.append(pyspy.record(spy_binary, pid, seconds, args.rate, paths[who],
                                              native=args.native, gil=args.gil))

            r = part.run_latency(setup, args.msg_rate, broker.port, broker.pid, "profile-latency", timing,
                                 {}, on_window=start)
            _finish(spies)
            print(f"latency {setup.label} at {args.msg_rate:,}/s (profiled): p50 {r['e2e_p50_ms']:.2f} p99 "
                  f"{r['e2e_p99_ms']:.2f} p99.9 {r['e2e_p999_ms']:.2f} ms; put answer p99 "
                  f"{r['ack_p99_ms']:.2f} ms; producer lag p99 {r['producer_lag_p99_ms']:.2f} ms; CPU "
                  f"producer {r['producer_cpu_cores']:.2f} consumer {r['consumer_cpu_cores']:.2f} broker "
                  f"{r['broker_cpu_cores']:.2f} other {r['other_cpu_cores']:.2f}")
            for who, path in paths.items():
                print(f"--- {who} process")
                print(summarize(path, int(r["delivered_msg_per_s"] * seconds), seconds, args.rate))
            print(f"raw stacks: {', '.join(paths.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

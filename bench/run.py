"""The benchmark runner: ``python bench/run.py [part …] [--quick] [--out DIR] [--data-dir DIR]``.

Each part is a module of bench/ with ``run(ctx) -> PartResult``; the runner gives it a context,
stamps its result with the machine facts, writes ``<out>/<part>.json`` and merges it into
``<out>/results.json``, whose top level holds the machine block (CPU count, kernel, Python and
package versions, date, git commit), the run (command, parts, elapsed time), the ratios of the
parts' figures to the machine's limits, and the parts. It prints each part's tables, a summary
table at the end, and writes the PNG plots (``bench/plots.py``, when matplotlib is importable).
With no part named it runs every part, ``limits`` first. A part that fails is recorded with its
error and the run goes on; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator

if __package__ in (None, ""):   # run as a script: make `bench` and `metaq_core` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import (
    DEFAULT_OUT_DIR,
    RunContext,
    Table,
    machine_info,
    print_tables,
    progress,
    save_part,
    update_results,
)

PARTS = {"limits": "bench.limits", "core": "bench.core", "broker": "bench.broker",
         "client": "bench.client", "cluster": "bench.cluster", "peers": "bench.peers"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description="Benchmarks of metaq-trio, side by side with baselines "
                                         "and peers, against the machine's limits.")
    parser.add_argument("parts", nargs="*", metavar="part",
                        help=f"parts to run: {', '.join(PARTS)} (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="short windows and one repetition (a smoke run, not for reporting)")
    parser.add_argument("--out", default=DEFAULT_OUT_DIR,
                        help="directory for results.json, <part>.json and the plots "
                             "(default: %(default)s)")
    parser.add_argument("--data-dir", default=DEFAULT_OUT_DIR,
                        help="where the temporary data directories go; must be on the disk under "
                             "test (default: %(default)s)")
    parser.add_argument("--plain", action="store_true", help="plain-text tables even if rich is installed")
    parser.add_argument("--no-plots", action="store_true", help="do not write the PNG plots")
    parser.add_argument("--markdown", action="store_true",
                        help="run nothing: print the README's Performance tables (Markdown) from "
                             "<out>/results.json")
    args = parser.parse_args(argv)
    for part in args.parts:
        if part not in PARTS:
            parser.error(f"unknown part {part!r} (choose from {', '.join(PARTS)})")
    args.parts = list(dict.fromkeys(args.parts)) or list(PARTS)
    return args


@contextlib.contextmanager
def part_bar(total: int, *, enabled: bool) -> Iterator[Callable[[str], None]]:
    """A rich progress bar over the parts, below the progress lines, when rich is installed
    and stdout is a terminal; otherwise the timestamped progress lines alone."""
    try:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    except ImportError:
        enabled = False
    if not enabled or not sys.stdout.isatty():
        yield lambda description: None
        return
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} parts"),
               TimeElapsedColumn())
    with Progress(*columns, console=Console(), redirect_stdout=True, redirect_stderr=True,
                  transient=True) as bar:
        task = bar.add_task("parts", total=total)
        calls = [0]

        def advance(description: str) -> None:
            bar.update(task, completed=calls[0], description=description)
            calls[0] += 1

        yield advance


def run_part(name: str, ctx: RunContext, *, plain: bool, position: str) -> dict:
    """Run one part; returns its payload (with ``error`` when it failed)."""
    progress(f"== part {name} {position}{' (quick)' if ctx.quick else ''}")
    started = time.monotonic()
    machine = machine_info(ctx.data_root)
    result = None
    try:
        module = importlib.import_module(PARTS[name])
        result = module.run(ctx)
        payload = {"part": name, "machine": machine, **result.data}
    except Exception as exc:        # recorded, reported, and the run goes on
        progress(f"== part {name} FAILED: {type(exc).__name__}: {exc}")
        payload = {"part": name, "machine": machine,
                   "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
    payload["elapsed"] = {"value": round(time.monotonic() - started, 1), "unit": "s"}
    path = save_part(ctx.out_dir, name, payload)
    progress(f"== part {name} {'done' if result else 'failed'} in {payload['elapsed']['value']} s; wrote {path}")
    if result is not None:
        print_tables(result.tables, result.targets, plain=plain)
    return payload


def summary_table(results: dict, ran: dict[str, dict]) -> Table:
    """One line per part run now: status, time, and its headline figures."""
    rows = []
    for name, payload in ran.items():
        if "error" in payload:
            rows.append([name, "FAILED", f"{payload['elapsed']['value']:g}", payload["error"][:100]])
            continue
        rows.append([name, "ok", f"{payload['elapsed']['value']:g}", headline(name, payload)])
    return Table("Summary of this run", ["part", "status", "seconds", "headline"], rows,
                 right_align_from=len(rows[0]) if rows else 1)


def _v(fig: dict | None, digits: int = 0) -> str:
    if not fig or fig.get("value") is None:
        return "-"
    return f"{fig['value']:,.{digits}f} {fig['unit']}"


def headline(name: str, payload: dict) -> str:
    """A one-line digest of a part's result."""
    if name == "limits":
        return (f"fdatasync {_v(payload['fdatasync']['syncs_per_s'])}, seq. write "
                f"{_v(payload['sequential_write']['mb_per_s'])}, crc32 {_v(payload['crc32']['one_call'], 2)}, "
                f"loopback {_v(payload['loopback_tcp']['mb_per_s'])}, RTT p50 {_v(payload['loopback_rtt']['p50'])}")
    if name == "peers":
        parts = []
        for row in payload["systems"]:
            if row.get("skipped"):
                parts.append(f"{row['name']}: skipped")
                continue
            top = row["points"][-1]
            ratio = top.get("metaq_over_this")
            parts.append(f"{row['name']} {top['connections']}×{top['depth']}: {_v(top['msg_per_s'])}"
                         + (f" (metaq÷ {ratio['value']:.2f})" if ratio and ratio["value"] else ""))
        return "; ".join(parts)
    targets = payload.get("targets") or []
    passed = sum(1 for t in targets if t.get("pass"))
    counted = sum(1 for t in targets if "pass" in t)
    return f"targets met: {passed}/{counted}" if counted else "see the part's tables"


def _md_table(columns: list[str], rows: list[list[str]], right_from: int = 1) -> str:
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---" if i < right_from else "---:" for i in range(len(columns))) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown(results: dict) -> str:
    """The Performance section's tables, from a results.json: the machine, its limits, the
    peers, the ratios to the limits, and a line per other part."""
    m = results.get("machine") or {}
    parts = results.get("parts", {})
    out = [f"Measured {m.get('date', '?')} on {m.get('cpu_count', '?')} CPUs ({m.get('processor', '?')}), "
           f"{m.get('kernel', '?').split(' #')[0]}, {m.get('python', '?')}, commit "
           f"{(m.get('git_commit') or '?')[:10]}{' (with local changes)' if m.get('git_dirty') else ''}."]
    limits = parts.get("limits")
    if limits and "error" not in limits:
        from bench.limits import tables as limit_tables
        out.append(_md_table(["limit", "value", "unit"], limit_tables(limits)[0].rows))
    peers = parts.get("peers")
    if peers and "error" not in peers:
        labels = [f"{p['connections']}×{p['depth']}" for p in peers["settings"]["load_points"]]
        rows = []
        for row in peers["systems"]:
            name = f"{row['name']} {row.get('version') or ''}".strip()
            if row.get("skipped"):
                rows.append([name, "-", *[f"skipped: {row['reason']} (`{row['install']}`)"] + [""] * len(labels)])
                continue
            cells = []
            for p in row["points"]:
                cell = f"{p['msg_per_s']['value']:,.0f}"
                r = (p.get("metaq_over_this") or {}).get("value")
                cells.append(cell + (f" ({r:.2f})" if r else ""))
            top = row["points"][-1]
            cells.append(f"{top['p50_latency']['value']:.2f} / {top['p99_latency']['value']:.2f}")
            rows.append([name, row["sync"], *cells])
        s = peers["settings"]
        out.append(f"Publishes of 1 KiB, msg/s at connections × pipeline depth (in brackets: "
                   f"metaq-trio of the same sync class ÷ this system); median of {s['repetitions']} "
                   f"windows of {s['window']['value']:g} s:")
        out.append(_md_table(["system", "synced", *[f"{label} msg/s" for label in labels],
                              f"{labels[-1]} p50 / p99 ms"], rows, right_from=2))
        c = peers.get("consume")
        if c:
            out.append(f"Consuming {c['messages']['value']:,} messages of 1 KiB from the start, one request "
                       f"at a time, × {c['passes']} passes (page cache):")
            out.append(_md_table(["consumer", "msg/s", "p50 / p99 ms per request", "server CPU",
                                  "consumer CPU"], [
                [f"{name} {side['request']}", f"{side['msg_per_s']['value']:,.0f}",
                 f"{side['p50_latency']['value']:.2f} / {side['p99_latency']['value']:.2f}",
                 f"{side['server_cpu']['value'] or 0:.2f}", f"{side['client_cpu']['value']:.2f}"]
                for name, side in (("metaq-trio", c["metaq"]), ("Redis", c["redis"]))]))
            out.append(f"metaq ÷ Redis, consuming: {c['metaq_over_redis']['value']:.2f}×.")
        out.append("Durability of each row: " + "; ".join(
            f"{row['name']}: {row['durability']}" for row in peers["systems"] if not row.get("skipped")) + ".")
    ratios = results.get("ratios_to_limits") or []
    if ratios:
        out.append(_md_table(["ratio to the machine's limit", "system", "value"],
                             [[r["what"], r["system"], f"{r['ratio']['value']:.3g}×"] for r in ratios],
                             right_from=2))
    others = [[name, headline(name, p) if "error" not in p else "failed"]
              for name, p in parts.items() if name not in ("limits", "peers")]
    if others:
        out.append(_md_table(["part", "headline"], others, right_from=2))
    return "\n\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = os.path.abspath(args.out)
    if args.markdown:
        from bench.common import load_results
        print(markdown(load_results(out_dir)), end="")
        return 0
    ctx = RunContext(quick=args.quick, out_dir=out_dir, data_root=os.path.abspath(args.data_dir))
    started = time.monotonic()
    machine = machine_info(ctx.data_root)
    ran: dict[str, dict] = {}
    with part_bar(len(args.parts), enabled=not args.plain) as advance:
        for index, name in enumerate(args.parts, 1):
            advance(f"part {name}")
            ran[name] = run_part(name, ctx, plain=args.plain, position=f"[{index}/{len(args.parts)}]")
        advance("done")
    elapsed = time.monotonic() - started
    from bench.limits import ratios_table, ratios_to_limits
    results = update_results(out_dir, machine=machine, run={
        "command": "python bench/run.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "parts": args.parts, "quick": args.quick,
        "failed": [name for name, p in ran.items() if "error" in p],
        "elapsed": {"value": round(elapsed, 1), "unit": "s"},
    })
    ratios = ratios_to_limits(results)
    results = update_results(out_dir, ratios_to_limits=ratios)
    plots: dict = {"written": [], "skipped": None}
    if not args.no_plots:
        from bench import plots as plotting
        plots = plotting.write_plots(results, out_dir)
        results = update_results(out_dir, plots=plots)
    final = [summary_table(results, ran)]
    if ratios:
        final.append(ratios_table(ratios))
    print_tables(final, [], plain=args.plain)
    if plots.get("skipped"):
        progress(f"plots skipped: {plots['skipped']}")
    for path in plots.get("written", []):
        progress(f"plot: {path}")
    progress(f"results: {os.path.join(out_dir, 'results.json')} ({elapsed:.1f} s in all)")
    return 1 if any("error" in p for p in ran.values()) else 0


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark runner: ``python bench/run.py [part …] [--quick] [--out DIR] [--data-dir DIR]``.

Each part is a module of bench/ with ``run(ctx) -> PartResult``; the runner gives it a context,
stamps its result with the machine facts, writes ``<out>/<part>.json``, merges it into
``<out>/results.json`` and prints the summary tables and target lines. With no part named it
runs every implemented part. Parts planned but not written yet are listed in PLANNED.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time

if __package__ in (None, ""):   # run as a script: make `bench` and `metaq_core` importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import DEFAULT_OUT_DIR, RunContext, machine_info, print_tables, progress, save_part

PARTS = {"core": "bench.core", "broker": "bench.broker", "client": "bench.client",
         "cluster": "bench.cluster"}
PLANNED = ("peers",)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description="Benchmarks of metaq-trio, side by side with baselines.")
    parser.add_argument("parts", nargs="*", metavar="part",
                        help=f"parts to run: {', '.join(PARTS)} (default: all implemented); "
                             f"planned: {', '.join(PLANNED)}")
    parser.add_argument("--quick", action="store_true",
                        help="short windows and one repetition (a smoke run, not for reporting)")
    parser.add_argument("--out", default=DEFAULT_OUT_DIR,
                        help="directory for <part>.json and results.json (default: %(default)s)")
    parser.add_argument("--data-dir", default=DEFAULT_OUT_DIR,
                        help="where the temporary data directories go; must be on the disk under "
                             "test (default: %(default)s)")
    parser.add_argument("--plain", action="store_true", help="plain-text tables even if rich is installed")
    args = parser.parse_args(argv)
    for part in args.parts:
        if part in PLANNED:
            parser.error(f"part {part!r} is planned but not implemented yet")
        if part not in PARTS:
            parser.error(f"unknown part {part!r} (choose from {', '.join(PARTS)})")
    args.parts = args.parts or list(PARTS)
    return args


def run_part(name: str, ctx: RunContext, *, plain: bool) -> None:
    module = importlib.import_module(PARTS[name])
    progress(f"== part {name}{' (quick)' if ctx.quick else ''}")
    started = time.monotonic()
    machine = machine_info(ctx.data_root)
    result = module.run(ctx)
    payload = {"part": name, "machine": machine, **result.data,
               "elapsed": {"value": round(time.monotonic() - started, 1), "unit": "s"}}
    path = save_part(ctx.out_dir, name, payload)
    progress(f"== part {name} done in {payload['elapsed']['value']} s; wrote {path}")
    print_tables(result.tables, result.targets, plain=plain)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = os.path.abspath(args.out)
    ctx = RunContext(quick=args.quick, out_dir=out_dir,
                     data_root=os.path.abspath(args.data_dir))
    for name in args.parts:
        run_part(name, ctx, plain=args.plain)
    return 0


if __name__ == "__main__":
    sys.exit(main())

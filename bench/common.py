"""Shared plumbing of the benchmark parts: figures with units, medians, machine facts, the
temporary data directory, result files, progress lines and the summary tables.

Nothing here measures anything; the parts (bench/core.py, …) do.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT_DIR = os.path.join(PROJECT_ROOT, "bench", "results")
PACKAGES = ("metaq-trio", "trio", "attrs", "Cython", "kazoo", "rich", "matplotlib")

KIB = 1024
MIB = 1024 * 1024
MB = 1_000_000
GB = 1_000_000_000


# ------------------------------------------------------------------------------- figures

def figure(value: float | int | None, unit: str) -> dict:
    """One reported number with its unit (the shape every figure takes in the JSON files)."""
    if isinstance(value, float):
        value = round(value, 6)
    return {"value": value, "unit": unit}


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator else None


def size_label(nbytes: int) -> str:
    """100 -> "100 B", 1024 -> "1 KiB", 4096 -> "4 KiB"."""
    if nbytes >= MIB and nbytes % MIB == 0:
        return f"{nbytes // MIB} MiB"
    if nbytes >= KIB and nbytes % KIB == 0:
        return f"{nbytes // KIB} KiB"
    return f"{nbytes} B"


def fmt_number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


# --------------------------------------------------------------------------- the context

@dataclass
class RunContext:
    """What a part needs to know about this run."""

    quick: bool
    out_dir: str
    data_root: str            # where each part makes its temporary data directory
    started: float = field(default_factory=time.monotonic)

    @property
    def repetitions(self) -> int:
        return 1 if self.quick else 3


@contextlib.contextmanager
def data_dir(root: str, prefix: str) -> Iterator[str]:
    """A fresh temporary directory under ``root`` (same disk as the project), removed after."""
    os.makedirs(root, exist_ok=True)
    path = tempfile.mkdtemp(prefix=prefix, dir=root)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def clear_dir(path: str) -> None:
    """Empty ``path`` but keep it."""
    for entry in os.listdir(path):
        full = os.path.join(path, entry)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            os.unlink(full)



def release_page_cache(path: str) -> int:
    """Drop the page cache of every file under ``path`` (``posix_fadvise(POSIX_FADV_DONTNEED)``;
    the files stay as they are, a later read comes from the disk). For data already fdatasync'ed
    this frees memory at once. Returns the number of files advised."""
    advised = 0
    for folder, _dirs, names in os.walk(path):
        for name in names:
            try:
                fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                advised += 1
            except OSError:
                pass
            finally:
                os.close(fd)
    return advised


# ---------------------------------------------------------------------------- machine facts

class CpuSampler:
    """Whole-machine CPU use between ``start()`` and ``stop()`` from /proc/stat: how busy the
    CPUs were and how much time the hypervisor stole (a noisy-neighbour sign)."""

    def __init__(self) -> None:
        self._first: list[int] | None = None

    @staticmethod
    def _read() -> list[int] | None:
        try:
            with open("/proc/stat", encoding="utf-8") as stat:
                fields = stat.readline().split()
        except OSError:
            return None
        return [int(v) for v in fields[1:]]

    def start(self) -> CpuSampler:
        self._first = self._read()
        return self

    def stop(self) -> dict:
        last = self._read()
        if self._first is None or last is None:
            return {}
        delta = [b - a for a, b in zip(self._first, last)]
        total = sum(delta[:8]) or 1          # user nice system idle iowait irq softirq steal
        idle = delta[3] + delta[4]
        return {"busy": figure(100.0 * (total - idle) / total, "%"),
                "iowait": figure(100.0 * delta[4] / total, "%"),
                "steal": figure(100.0 * delta[7] / total, "%")}


def _package_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def _filesystem_of(path: str) -> dict[str, str] | None:
    """The /proc/mounts entry (device, mount point, type) holding ``path``."""
    path = os.path.realpath(path)
    best: dict[str, str] | None = None
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                device, mount_point, fs_type, *_ = line.split()
                inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
                if inside and (best is None or len(mount_point) > len(best["mount_point"])):
                    best = {"device": device, "mount_point": mount_point, "type": fs_type}
    except OSError:
        return None
    return best


def machine_info(data_root: str) -> dict:
    """CPU, kernel, Python, package versions, date and git commit of this run."""
    uname = platform.uname()
    status = _git("status", "--porcelain", "--untracked-files=no")
    try:
        import metaq_core
        implementation = metaq_core.IMPLEMENTATION
    except ImportError:
        implementation = None
    return {
        "cpu_count": os.cpu_count(),
        "processor": _cpu_model() or uname.processor or uname.machine,
        "kernel": f"{uname.system} {uname.release} {uname.version}",
        "machine": uname.machine,
        "hostname": uname.node,
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": _package_versions(),
        "metaq_core_implementation": implementation,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": None if status is None else bool(status),
        "load_average_at_start": list(os.getloadavg()),
        "data_dir": os.path.abspath(data_root),
        "data_filesystem": _filesystem_of(data_root),
    }


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


# ----------------------------------------------------------------------------- result files

def write_json(path: str, payload: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        json.dump(payload, out, indent=2, sort_keys=False)
        out.write("\n")
    os.replace(tmp, path)


def load_results(out_dir: str) -> dict:
    """``<out>/results.json`` as a dict (an empty one when missing or unreadable)."""
    try:
        with open(os.path.join(out_dir, "results.json"), encoding="utf-8") as existing:
            merged = json.load(existing)
    except (OSError, ValueError):
        merged = {}
    merged.setdefault("parts", {})
    return merged


def update_results(out_dir: str, **fields) -> dict:
    """Set top-level ``fields`` of ``<out>/results.json``; returns the whole file's content."""
    os.makedirs(out_dir, exist_ok=True)
    merged = load_results(out_dir)
    merged.update(fields)
    write_json(os.path.join(out_dir, "results.json"), merged)
    return merged


def save_part(out_dir: str, part: str, result: dict) -> str:
    """Write ``<out>/<part>.json`` and merge the part into ``<out>/results.json`` (parts run
    earlier into the same directory are kept, each with its own machine block)."""
    os.makedirs(out_dir, exist_ok=True)
    part_path = os.path.join(out_dir, f"{part}.json")
    write_json(part_path, result)
    merged = load_results(out_dir)
    merged["parts"][part] = result
    update_results(out_dir, parts=merged["parts"], machine=result.get("machine"),
                   updated=result.get("machine", {}).get("date"))
    return part_path


# ---------------------------------------------------------------------------------- output

_T0 = time.monotonic()


def progress(message: str) -> None:
    """One progress line, stamped with the seconds since the runner started."""
    print(f"[{time.monotonic() - _T0:7.1f}s] {message}", flush=True)


@dataclass
class Table:
    """A summary table: a title, column headings and rows of strings."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    right_align_from: int = 1   # columns from this index on are numbers


@dataclass
class PartResult:
    """What a part's ``run(ctx)`` returns: its JSON data, summary tables and target lines."""

    data: dict
    tables: list[Table]
    targets: list[Target]


@dataclass
class Target:
    """A project target, reported as a pass/fail line (never asserted)."""

    name: str
    measured: float | None
    threshold: float
    unit: str = "×"

    @property
    def passed(self) -> bool:
        return self.measured is not None and self.measured >= self.threshold

    def as_json(self) -> dict:
        return {"name": self.name, "measured": figure(self.measured, self.unit),
                "threshold": figure(self.threshold, self.unit), "pass": self.passed}

    def line(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        measured = "n/a" if self.measured is None else f"{self.measured:.2f}{self.unit}"
        return f"{verdict}  {self.name}: {measured} (target ≥ {self.threshold:g}{self.unit})"


def print_tables(tables: list[Table], targets: list[Target], *, plain: bool = False) -> None:
    """Print the tables and target lines with rich when it is importable, else as plain text."""
    console = None if plain else _rich_console()
    if console is None:
        _print_plain(tables, targets)
    else:
        _print_rich(console, tables, targets)


def _rich_console():
    try:
        from rich.console import Console
    except ImportError:
        return None
    console = Console()
    if not console.is_terminal:
        console = Console(width=160, color_system=None)
    return console


def _print_rich(console, tables: list[Table], targets: list[Target]) -> None:
    from rich.table import Table as RichTable
    for table in tables:
        console.print()
        console.print(table.title, style="bold", highlight=False, markup=False)
        rich_table = RichTable()
        for index, column in enumerate(table.columns):
            rich_table.add_column(column, justify="right" if index >= table.right_align_from else "left")
        for row in table.rows:
            rich_table.add_row(*row)
        console.print(rich_table)
    if targets:
        console.print("Targets", style="bold")
        for target in targets:
            console.print("  " + target.line(), style="green" if target.passed else "red",
                          highlight=False, markup=False)


def _print_plain(tables: list[Table], targets: list[Target]) -> None:
    for table in tables:
        widths = [len(c) for c in table.columns]
        for row in table.rows:
            widths = [max(w, len(cell)) for w, cell in zip(widths, row)]

        def line(cells: list[str]) -> str:
            out = []
            for index, (cell, width) in enumerate(zip(cells, widths)):
                out.append(cell.rjust(width) if index >= table.right_align_from else cell.ljust(width))
            return "  ".join(out)

        print(f"\n{table.title}")
        print(line(table.columns))
        print("  ".join("-" * w for w in widths))
        for row in table.rows:
            print(line(row))
    if targets:
        print("\nTargets")
        for target in targets:
            print("  " + target.line())
    sys.stdout.flush()

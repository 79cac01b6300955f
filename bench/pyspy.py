"""py-spy plumbing shared by the profilers (bench/profile_broker.py, bench/profile_client.py):
the ``py-spy record`` command and a reader of its raw (collapsed-stack) output.

It only starts py-spy and parses what it wrote; each profiler decides how to label samples.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator

_LINE = re.compile(r":\d+\)$")
_THREAD_ID = re.compile(r"^thread \((?:0x[0-9a-fA-F]+|\d+)\): ")


def record(pyspy: str, pid: int, seconds: float, rate: int, path: str, *, fmt: str = "raw",
           native: bool = False, gil: bool = False) -> subprocess.Popen:
    """Start ``py-spy record --threads`` on ``pid`` for ``seconds``, writing ``fmt`` to ``path``."""
    cmd = [pyspy, "record", "--pid", str(pid), "-d", str(int(seconds)), "-r", str(rate), "--threads",
           "-f", fmt, "-o", path]
    if native:
        cmd.append("--native")
    if gil:
        cmd.append("--gil")
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def function(frame: str) -> str:
    """``Broker._put (metaq_server/broker.py:270)`` → ``Broker._put (metaq_server/broker.py)``."""
    return _LINE.sub(")", frame)


def samples(raw_path: str) -> Iterator[tuple[str, list[str], int]]:
    """(thread name, frames outermost first, sample count) for each line of a raw py-spy file;
    the thread's id is dropped and a trailing number becomes ``N`` ("Trio thread 7" → "Trio
    thread N")."""
    with open(raw_path, encoding="utf-8", errors="replace") as raw:
        for line in raw:
            line = line.rstrip("\n")
            if not line:
                continue
            stack, _, count = line.rpartition(" ")
            thread, *frames = stack.split(";")
            name = re.sub(r"\d+$", "N", _THREAD_ID.sub("", thread))
            yield name, frames, int(count)

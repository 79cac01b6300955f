"""Broker statistics (broker.md §7) and the text of every ``stats`` item (protocol §5.6).

Cumulative counters are plain attributes; real-time counters are a table
``item -> topic -> key3 -> [count, sum]`` zeroed every 30 minutes and on ``stats reset``. This
module formats and counts; it does not read sockets or files (callers pass in what the store and
the config know).
"""

from __future__ import annotations

import decimal
import os
import threading
import time
from collections.abc import Callable, Iterable

import attrs

REALTIME_RESET_SECONDS = 30 * 60
REALTIME_ITEMS = ("put", "get", "offset", "get_miss", "put_failed", "message_size")

HELP_LINES = (
    "*EMPTY* Returns broker info.",
    "help Returns help menu.",
    "topics Returns topics statistics detail info.",
    "offsets Returns partitions detail info.",
    "realtime Returns realtime statistics detail info.",
    "config Returns broker's config file content.",
)


def format_number(value: float | int) -> str:
    """At most two decimals, half-even, no trailing zeros, no grouping (``3``, ``0.5``, ``0.67``)."""
    quantized = decimal.Decimal(value).quantize(decimal.Decimal("0.01"), rounding=decimal.ROUND_HALF_EVEN)
    text = format(quantized, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def format_realtime(count: int, total: float, duration: int) -> str:
    """``Count=<c>,Value=<v>,Value/Count=<v/c>,Count/Duration=<c/d>,Duration=<d>``."""
    per_count = format_number(total / count) if count else "invalid"
    per_second = format_number(count / duration) if duration else "invalid"
    return (f"Count={format_number(count)},Value={format_number(total)},Value/Count={per_count},"
            f"Count/Duration={per_second},Duration={duration}")


def stats_body(lines: Iterable[str]) -> bytes:
    """``STATS\\r\\n<line>\\r\\n...END\\r\\n``."""
    return ("STATS\r\n" + "".join(f"{line}\r\n" for line in lines) + "END\r\n").encode("utf-8")


@attrs.define
class Counters:
    """The cumulative counters of the summary item."""

    cmd_put: int = 0
    cmd_get: int = 0
    cmd_offset: int = 0
    tx_begin: int = 0
    tx_xa_begin: int = 0
    tx_commit: int = 0
    tx_rollback: int = 0
    get_miss: int = 0
    get_failed: int = 0
    put_failed: int = 0


class RealTimeStats:
    """The real-time table. ``enabled_for(topic)`` says whether a topic's ``stat`` flag is on."""

    def __init__(self, enabled_for: Callable[[str], bool], *, clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled_for = enabled_for
        self._clock = clock
        self._lock = threading.Lock()
        self._table: dict[str, dict[str, dict[str, list[float]]]] = {}
        self._since = clock()

    def _maybe_expire(self) -> None:
        if self._clock() - self._since >= REALTIME_RESET_SECONDS:
            self.reset()

    def reset(self) -> None:
        with self._lock:
            self._table = {}
            self._since = self._clock()

    def duration(self) -> int:
        return int(self._clock() - self._since)

    def record(self, item: str, topic: str, key3: str, value: float = 1, count: int = 1) -> None:
        """Count ``count`` events of ``item`` whose values sum to ``value``."""
        if not self.enabled_for(topic):
            return
        self._maybe_expire()
        with self._lock:
            cell = self._table.setdefault(item, {}).setdefault(topic, {}).setdefault(key3, [0, 0])
            cell[0] += count
            cell[1] += value

    def _sum(self, item: str, topic: str | None) -> tuple[int, float] | None | str:
        by_topic = self._table.get(item)
        if not by_topic:
            return None
        if topic is None:
            cells = [c for keys in by_topic.values() for c in keys.values()]
        else:
            keys = by_topic.get(topic)
            if keys is None:
                return f"Invalid keyTwo:{topic}"
            cells = list(keys.values())
        return int(sum(c[0] for c in cells)), sum(c[1] for c in cells)

    def render(self, item: str, topic: str | None = None) -> str:
        """``<R>`` of protocol §5.6 for ``item`` over every topic, or over one topic."""
        self._maybe_expire()
        with self._lock:
            summed = self._sum(item, topic)
        if summed is None:
            return "null"
        if isinstance(summed, str):
            return summed
        count, total = summed
        return format_realtime(count, total, self.duration())


@attrs.frozen
class TopicInfo:
    """What ``stats topics`` and ``stats <topic>`` need to know about one topic."""

    name: str
    partitions: int            # partitions with a store on this broker (§9.18)
    message_count: int
    bytes: int
    accept_publish: bool
    accept_subscribe: bool
    configured: bool
    has_store: bool


def summary_lines(*, broker_id: int, port: int, started: float, version: str, slave: bool,
                  connections: int, counters: Counters, total_messages: int, topics: int,
                  config_checksum: int) -> list[str]:
    return [
        f"pid {os.getpid()}",
        f"broker_id {broker_id}",
        f"port {port}",
        f"uptime {int(time.time() - started)}",
        f"version {version}",
        f"slave {'true' if slave else 'false'}",
        f"curr_connections {connections}",
        f"threads {threading.active_count()}",
        f"cmd_put {counters.cmd_put}",
        f"cmd_get {counters.cmd_get}",
        f"cmd_offset {counters.cmd_offset}",
        f"tx_begin {counters.tx_begin}",
        f"tx_xa_begin {counters.tx_xa_begin}",
        f"tx_commit {counters.tx_commit}",
        f"tx_rollback {counters.tx_rollback}",
        f"get_miss {counters.get_miss}",
        f"put_failed {counters.put_failed}",
        f"total_messages {total_messages}",
        f"topics {topics}",
        f"config_checksum {config_checksum}",
    ]


def topics_lines(topics: Iterable[TopicInfo]) -> list[str]:
    stored = [t for t in topics if t.has_store]
    unstored = [t for t in topics if not t.has_store]
    lines = [
        f"{t.name} partitions {t.partitions} message_count {t.message_count} "
        f"accept_publish {str(t.accept_publish).lower()} accept_subscribe {str(t.accept_subscribe).lower()}"
        for t in stored
    ]
    lines += [f"{t.name} *Empty*" for t in unstored]
    return lines


def offsets_lines(partitions: Iterable[tuple[str, int, int, int]]) -> list[str]:
    return [f"{topic} part {partition} min_offset {low} max_offset {high}"
            for topic, partition, low, high in partitions]


def realtime_lines(realtime: RealTimeStats) -> list[str]:
    return [f"realtime_{item} {realtime.render(item)}" for item in REALTIME_ITEMS]


def topic_lines(topic: str, info: TopicInfo | None, realtime: RealTimeStats) -> list[str]:
    if info is None:
        code, partitions, count, size = 1, 0, 0, 0
    elif not info.has_store:
        code, partitions, count, size = 2, 0, 0, 0
    else:
        code, partitions, count, size = 0, info.partitions, info.message_count, info.bytes
    lines = [topic, f"resultCode {code}", f"partitions {partitions}", f"message_count {count}",
             f"bytes {size}"]
    lines += [f"topic_realtime_{item} {realtime.render(item, topic)}" for item in REALTIME_ITEMS]
    return lines

"""Smoke test of the benchmark tool: ``python bench/run.py --quick`` runs every part and writes
valid JSON — a machine block, units on every figure, peers measured or skipped with an install
command, plots written or skipped with a reason. It asserts no speed. Also the load generator's
NATS and AMQP answer parsing and the plots' fallback without matplotlib, on their own."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:            # `bench` is a directory of the checkout, not an installed package
    sys.path.insert(0, ROOT)
PARTS = ("limits", "core", "broker", "client", "cluster", "peers")
MACHINE_KEYS = ("cpu_count", "kernel", "python", "packages", "date", "git_commit")
QUICK_LIMIT = 240       # seconds; the target is under 120 — this only catches a hang


def dicts(node, path="$"):
    """Every dict in a JSON tree, with its path."""
    if isinstance(node, dict):
        yield path, node
        for key, child in node.items():
            yield from dicts(child, f"{path}.{key}")
    elif isinstance(node, list):
        for index, child in enumerate(node):
            yield from dicts(child, f"{path}[{index}]")


def figures(node):
    """Every ``{"value": …, "unit": …}`` figure in a JSON tree, with its path."""
    return [(path, d) for path, d in dicts(node) if "value" in d and "unit" in d]


def unitless_values(node):
    """Paths of dicts that carry a ``value`` without a ``unit`` (a figure missing its unit)."""
    return [path for path, d in dicts(node) if "value" in d and "unit" not in d]


def check_machine(machine: dict) -> None:
    for key in MACHINE_KEYS:
        assert key in machine, key
    assert machine["cpu_count"] == os.cpu_count()
    assert machine["python"].endswith(".".join(map(str, sys.version_info[:3])))
    assert "metaq-trio" in machine["packages"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    out = tmp_path_factory.mktemp("bench-quick")
    done = subprocess.run(
        [sys.executable, "bench/run.py", "--quick", "--plain", "--out", str(out),
         "--data-dir", str(out / "data")],
        cwd=ROOT, capture_output=True, text=True, timeout=QUICK_LIMIT, check=False)
    return out, done


def test_every_part_runs_and_writes_its_json(quick_run):
    out, done = quick_run
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "Summary of this run" in done.stdout
    for part in PARTS:
        with open(out / f"{part}.json", encoding="utf-8") as source:
            payload = json.load(source)
        assert payload["part"] == part
        assert "error" not in payload, payload.get("traceback")
        check_machine(payload["machine"])
        assert payload["elapsed"]["unit"] == "s" and payload["elapsed"]["value"] >= 0
        assert payload["settings"]["quick"] is True
        assert not unitless_values(payload), part


def test_results_json_has_the_machine_block_and_units(quick_run):
    out, _ = quick_run
    with open(out / "results.json", encoding="utf-8") as source:
        results = json.load(source)
    check_machine(results["machine"])
    assert set(results["parts"]) == set(PARTS)
    assert results["run"]["quick"] is True and results["run"]["failed"] == []
    assert results["run"]["elapsed"]["unit"] == "s"
    found = figures(results)
    assert len(found) > 100
    for path, fig in found:
        assert isinstance(fig["unit"], str) and fig["unit"], path
        assert fig["value"] is None or isinstance(fig["value"], (int, float)), path
    assert not unitless_values(results)
    kinds = {r["what"] for r in results["ratios_to_limits"]}
    assert any("fdatasync" in kind for kind in kinds)
    assert all(r["ratio"]["unit"] == "×" for r in results["ratios_to_limits"])


def test_limits_are_measured_with_units(quick_run):
    out, _ = quick_run
    with open(out / "limits.json", encoding="utf-8") as source:
        limits = json.load(source)
    expected = {("fdatasync", "syncs_per_s"): "syncs/s", ("sequential_write", "mb_per_s"): "MB/s",
                ("crc32", "one_call"): "GB/s", ("loopback_tcp", "mb_per_s"): "MB/s",
                ("loopback_rtt", "p50"): "µs"}
    for (group, key), unit in expected.items():
        fig = limits[group][key]
        assert fig["unit"] == unit
        assert fig["value"] > 0, (group, key)     # measured, whatever the speed


def test_peers_are_measured_or_skipped_with_an_install_command(quick_run):
    out, _ = quick_run
    with open(out / "peers.json", encoding="utf-8") as source:
        peers = json.load(source)
    rows = {row["key"]: row for row in peers["systems"]}
    assert set(rows) == {"metaq-durable", "metaq-threshold", "redis-always", "redis-everysec",
                         "nats-jetstream", "rabbitmq-quorum"}
    points = [(p["connections"], p["depth"]) for p in peers["settings"]["load_points"]]
    for key, row in rows.items():
        if key.startswith(("metaq", "redis")):
            assert not row["skipped"], row
        if row["skipped"]:
            assert row["install"].startswith("apt-get install"), row
            assert row["reason"]
            assert "points" not in row
            continue
        assert row["sync"] in ("before ack", "on a timer")
        assert [(p["connections"], p["depth"]) for p in row["points"]] == points
        for point in row["points"]:
            assert point["msg_per_s"]["unit"] == "msg/s" and point["msg_per_s"]["value"] > 0
            assert point["errors"] == 0, point["runs"][0]["first_error"]
            quantiles = point["latency_cdf"]["quantiles"]
            assert quantiles and quantiles[-1][0] == 1.0
            assert [ms for _, ms in quantiles] == sorted(ms for _, ms in quantiles)
            if not key.startswith("metaq"):
                assert point["metaq_over_this"]["unit"] == "×"
                assert point["metaq_over_this"]["value"] > 0
    if not rows["nats-jetstream"]["skipped"]:
        assert "sync" in rows["nats-jetstream"]["durability"]
    consume = peers["consume"]
    for side in ("metaq", "redis"):
        assert consume[side]["msg_per_s"]["unit"] == "msg/s" and consume[side]["msg_per_s"]["value"] > 0
        for run in consume[side]["runs"]:
            assert run["messages"] == consume["messages"]["value"] * consume["passes"]
    assert consume["metaq_over_redis"]["unit"] == "×"


def test_plots_are_written_or_skipped_with_a_reason(quick_run):
    out, _ = quick_run
    with open(out / "results.json", encoding="utf-8") as source:
        plots = json.load(source)["plots"]
    if importlib.util.find_spec("matplotlib") is None:
        assert plots["written"] == [] and "matplotlib" in plots["skipped"]
        return
    names = {os.path.basename(path) for path in plots["written"]}
    assert {"peers_throughput.png", "peers_latency_cdf.png", "limits_ratios.png",
            "broker_throughput.png"} <= names
    for path in plots["written"]:
        with open(path, "rb") as png:
            assert png.read(8) == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------- pieces of the tool, without running it

class _FakeSocket:
    def __init__(self) -> None:
        self.sent = bytearray()

    def fileno(self) -> int:
        return 1000

    def send(self, data) -> int:
        self.sent += data
        return len(data)


class _FakePoll:
    def modify(self, fd, mask) -> None:
        pass


def _conn(protocol: str, ring: int = 1):
    from bench import loadgen
    return loadgen, loadgen._Conn(_FakeSocket(), _FakePoll(), protocol, [b""] * ring, ring)


def test_amqp_confirms_count_multiple_and_out_of_order_tags():
    loadgen, conn = _conn("amqp")
    conn.fifo.extend([10, 20, 30, 40, 50])
    conn.outstanding = 5

    def ack(tag: int, multiple: bool, method: int = 80) -> bytes:
        return loadgen._amqp_method(1, 60, method, tag.to_bytes(8, "big") + bytes([multiple]))

    latencies, stats = [], [0, None]
    # tag 2 alone, then a multiple ack up to 3 (confirms 1 and 3), then a nack of 4 split
    # across two reads
    data = ack(2, False) + ack(3, True) + ack(4, False, method=120)
    assert loadgen._parse_amqp(conn, data[:-5], 100, latencies.append, stats) == 3
    assert latencies == [90, 80, 70] and stats[0] == 0 and conn.acked == 3
    assert loadgen._parse_amqp(conn, data[-5:], 100, latencies.append, stats) == 1
    assert stats == [1, "basic.nack of delivery tag 4"] and conn.outstanding == 1
    assert loadgen._parse_amqp(conn, ack(4, False), 100, None, stats) == 0   # already counted


def test_nats_acks_are_matched_by_inbox_slot_and_pings_answered():
    loadgen, conn = _conn("nats", ring=4)
    conn.sent_at[:] = [0, 5, 0, 7]
    conn.outstanding = 2
    ok = b'{"stream":"BENCH","seq":9}'
    data = (b"PING\r\nMSG _INBOX.1x0.3 1 %d\r\n%s\r\n" % (len(ok), ok)
            + b"HMSG _INBOX.1x0.1 1 16 16\r\nNATS/1.0 503\r\n\r\n\r\n")
    latencies, stats = [], [0, None]
    assert loadgen._parse_nats(conn, data, 10, latencies.append, stats) == 2
    assert latencies == [3, 5]
    assert stats[0] == 1                        # the 503 (no responders) is an error answer
    assert conn.sent_at == [0, 0, 0, 0] and conn.outstanding == 0
    assert bytes(conn.sock.sent) == b"PONG\r\n"


def test_plots_are_skipped_with_a_message_without_matplotlib(tmp_path, monkeypatch):
    from bench import plots
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = plots.write_plots({"parts": {}}, str(tmp_path))
    assert result["written"] == [] and "matplotlib is not installed" in result["skipped"]
    assert list(tmp_path.iterdir()) == []

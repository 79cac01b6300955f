"""Smoke test of the benchmark tool: ``python bench/run.py --quick`` runs every part and writes
valid JSON — a machine block, units on every figure, peers measured or skipped with an install
command, plots written or skipped with a reason. It asserts no speed."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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

"""PNG plots of a benchmark run, drawn from its results.json (matplotlib, imported only here and
only when available; without it the plots are skipped with a message):

* ``peers_throughput.png`` — msg/s against connections × pipeline depth, one line per system of
  the peers part (and ``broker_throughput.png`` for the broker part's metaq vs Redis modes);
* ``peers_latency_cdf.png`` — latency CDFs (send → answer per request) of every system, one panel
  per load point;
* ``limits_ratios.png`` — the ratios of the run's figures to the machine's limits.
"""

from __future__ import annotations

import os
from types import ModuleType


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _label(entry: dict) -> str:
    return f"{entry['connections']}×{entry['depth']}"


def _systems(results: dict) -> list[dict]:
    peers = results.get("parts", {}).get("peers") or {}
    return [row for row in peers.get("systems", []) if not row.get("skipped")]


def _save_throughput(plt: ModuleType, fig, ax, path: str, title: str) -> bool:
    """Axes, legend and file of a msg/s-against-load plot."""
    ax.set_yscale("log")
    ax.set_xlabel("connections × pipeline depth")
    ax.set_ylabel("msg/s (1 KiB messages, log scale)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_peers_throughput(plt: ModuleType, results: dict, path: str) -> bool:
    systems = _systems(results)
    if not systems:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    for row in systems:
        xs = [_label(p) for p in row["points"]]
        ys = [p["msg_per_s"]["value"] or 0 for p in row["points"]]
        style = "-" if row["sync"] == "before ack" else "--"
        ax.plot(xs, ys, style, marker="o", label=f"{row['name']} (synced {row['sync']})")
    return _save_throughput(plt, fig, ax, path, "Publish throughput, same load generator, one run")


def plot_broker_throughput(plt: ModuleType, results: dict, path: str) -> bool:
    broker = results.get("parts", {}).get("broker") or {}
    puts = broker.get("puts")
    if not puts:
        return False
    fig, ax = plt.subplots(figsize=(8, 5))
    for mode in dict.fromkeys(e["mode"] for e in puts):
        entries = [e for e in puts if e["mode"] == mode]
        xs = [_label(e) for e in entries]
        ax.plot(xs, [e["metaq"]["msg_per_s"]["value"] or 0 for e in entries], "-o",
                label=f"metaq-trio {mode}")
        if not entries[0]["redis"].get("skipped"):
            ax.plot(xs, [e["redis"]["msg_per_s"]["value"] or 0 for e in entries], "--s",
                    label=f"Redis appendfsync {entries[0]['redis_appendfsync']}")
    return _save_throughput(plt, fig, ax, path, "Broker part: metaq-trio vs Redis streams")


def plot_latency_cdfs(plt: ModuleType, results: dict, path: str) -> bool:
    systems = [row for row in _systems(results)
               if any(p.get("latency_cdf", {}).get("quantiles") for p in row["points"])]
    if not systems:
        return False
    labels = list(dict.fromkeys(_label(p) for row in systems for p in row["points"]))
    fig, axes = plt.subplots(1, len(labels), figsize=(5 * len(labels), 4.5), squeeze=False)
    for ax, label in zip(axes[0], labels):
        for row in systems:
            point = next((p for p in row["points"] if _label(p) == label), None)
            quantiles = (point or {}).get("latency_cdf", {}).get("quantiles") or []
            if not quantiles:
                continue
            ax.plot([max(ms, 1e-3) for _, ms in quantiles], [q for q, _ in quantiles],
                    "-" if row["sync"] == "before ack" else "--", label=row["name"])
        ax.set_xscale("log")
        ax.set_xlabel("latency per request, ms (log scale)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"{label} (connections × depth)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("Publish latency CDFs (send → answer), one run")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def plot_limit_ratios(plt: ModuleType, results: dict, path: str) -> bool:
    ratios = [r for r in results.get("ratios_to_limits") or [] if r["ratio"]["value"]]
    if not ratios:
        return False
    kinds = list(dict.fromkeys(r["what"] for r in ratios))
    heights = [len([r for r in ratios if r["what"] == kind]) for kind in kinds]
    fig, axes = plt.subplots(len(kinds), 1, figsize=(9, 0.35 * len(ratios) + 1.2 * len(kinds)),
                             squeeze=False, gridspec_kw={"height_ratios": heights})
    for ax, kind in zip(axes[:, 0], kinds):
        rows = [r for r in ratios if r["what"] == kind]
        values = [r["ratio"]["value"] for r in rows]
        ax.barh(range(len(rows)), values, color="tab:blue")
        ax.set_yticks(range(len(rows)), [r["system"] for r in rows], fontsize=8)
        ax.invert_yaxis()
        for index, value in enumerate(values):
            ax.text(value, index, f" {value:.3g}", va="center", fontsize=7)
        ax.set_title(kind, fontsize=9)
        ax.set_xlim(0, max(values) * 1.2)
    fig.suptitle("Figures of this run ÷ this machine's limits (same run)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


PLOTS = (("peers_throughput.png", plot_peers_throughput),
         ("broker_throughput.png", plot_broker_throughput),
         ("peers_latency_cdf.png", plot_latency_cdfs),
         ("limits_ratios.png", plot_limit_ratios))


def write_plots(results: dict, out_dir: str) -> dict:
    """Draw every plot the results allow into ``out_dir``: {"written": [paths], "skipped": why}."""
    plt = _pyplot()
    if plt is None:
        return {"written": [], "skipped": "matplotlib is not installed (pip install '.[bench]')"}
    written = []
    for name, draw in PLOTS:
        path = os.path.join(out_dir, name)
        if draw(plt, results, path):
            written.append(path)
    return {"written": written, "skipped": None}

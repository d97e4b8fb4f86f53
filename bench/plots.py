"""Plots for docs/benchmarks.md from the JSON results in bench/results/.

python -m bench.plots
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bench._setup import RESULTS

DOCS = Path(__file__).resolve().parent.parent / "docs"


def latency_plot(out: Path) -> None:
    data = json.loads((RESULTS / "latency.json").read_text())
    cases = list(data["cases"])
    series = ["ours", "ours int8", "original", "bare forward"]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    width = 0.2
    for i, name in enumerate(series):
        values = [data["cases"][c][name]["p50_ms"] for c in cases]
        bars = ax.bar([x + (i - 1.5) * width for x in range(len(cases))], values, width, label=name)
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(cases)), cases)
    ax.set_ylabel("p50 latency (ms)")
    ax.set_title(f"Query latency by photo size ({data['threads']} threads, {data['iterations']} interleaved runs)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def recall_plot(out: Path) -> None:
    data = json.loads((RESULTS / "ann.json").read_text())
    fig, axes = plt.subplots(1, len(data["sizes"]), figsize=(10, 3.8), sharey=True)
    for ax, size in zip(axes, data["sizes"], strict=True):
        for build in size["builds"]:
            points = sorted((q["p50_ms"], q["recall"]) for q in build["queries"])
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{build['n_trees']} trees")
        ax.axhline(0.98, color="grey", linestyle="--", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("p50 query time (ms)")
        ax.set_title(f"n = {size['n']:,} (synthetic)")
    axes[0].set_ylabel("recall@10 vs exact")
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main() -> None:
    DOCS.mkdir(exist_ok=True)
    latency_plot(DOCS / "latency_by_size.png")
    recall_plot(DOCS / "recall_vs_query_time.png")
    print(f"wrote {DOCS / 'latency_by_size.png'} and {DOCS / 'recall_vs_query_time.png'}")


if __name__ == "__main__":
    main()

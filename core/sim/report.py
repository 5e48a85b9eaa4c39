"""Results as a comparison table (Markdown), JSON and PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from notebookos.sim.metrics import Result, percentile

BASELINE = "reservation"


def _fmt(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def _delay(x: float) -> str:
    return f"{x:.1f}" if x >= 0.1 or x == 0 else f"{x:.2f}"


def comparison_table(results: Sequence[Result]) -> str:
    """One Markdown table: a row per policy, ratios against reservation where it ran."""
    base = next((r for r in results if r.policy == BASELINE), None)
    head = (
        "| policy | GPU-h provisioned | vs reservation | saved GPU-h | GPU-h bound | GPU-h used | utilisation "
        "| delay p50 s | p95 s | p99 s | start at once | migrations (cell / drain / rebalance) "
        "| hosts added / released (peak) | cost $ | run s |"
    )
    rows = [head, "|" + "---|" * 15]
    for r in results:
        ratio = f"x{r.gpu_hours_provisioned / base.gpu_hours_provisioned:.3f}" if base else "-"
        saved = _fmt(base.gpu_hours_provisioned - r.gpu_hours_provisioned) if base else "-"
        rows.append(
            f"| {r.policy} | {_fmt(r.gpu_hours_provisioned)} | {ratio} | {saved} | {_fmt(r.gpu_hours_bound)} "
            f"| {_fmt(r.gpu_hours_used)} | {r.utilisation:.1%} | {_delay(r.delay_p50_s)} | {_delay(r.delay_p95_s)} "
            f"| {_delay(r.delay_p99_s)} | {r.started_at_once:.1%} "
            f"| {r.migrations} / {r.drain_migrations} / {r.rebalance_migrations} "
            f"| {r.hosts_added} / {r.hosts_released} ({r.peak_hosts}) | {_fmt(r.cost_usd)} | {r.wall_s:.1f} |"
        )
    return "\n".join(rows)


def markdown_report(sections: Sequence[tuple[str, dict[str, Any], Sequence[Result]]], settings: dict[str, Any]) -> str:
    lines = ["# NotebookOS simulation", "", "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), ""]
    for title, workload, results in sections:
        lines += [f"## {title}", ""]
        lines.append(
            f"{workload['sessions']} sessions, {workload['gpu_cells']} GPU cells over {workload['span_h']} h; "
            f"cells use {workload['cell_gpu_hours']:,} GPU-h, reserving each session's peak for its life "
            f"{workload['reserved_gpu_hours']:,} GPU-h."
        )
        for a in workload.get("assumptions", []):
            lines.append(f"- {a}")
        lines += ["", comparison_table(results), ""]
    lines += [
        "Delay: from a GPU cell's submission (or the end of the previous cell of its session, whichever is later) "
        "to the start of its GPU work; 'start at once' is a delay of at most 1 s.",
        "",
    ]
    return "\n".join(lines)


def write_json(
    path: Path, sections: Sequence[tuple[str, dict[str, Any], Sequence[Result]]], settings: dict[str, Any]
) -> None:
    doc = {
        "settings": settings,
        "workloads": [{"title": t, "workload": w, "results": [r.to_dict() for r in rs]} for t, w, rs in sections],
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")


def _downsample(series: Sequence[tuple[float, int, int]], limit: int = 4000) -> list[tuple[float, int, int]]:
    if len(series) <= limit:
        return list(series)
    step = len(series) / limit
    return [series[int(i * step)] for i in range(limit)] + [series[-1]]


def write_plots(out: Path, slug: str, results: Sequence[Result]) -> list[Path]:
    """cluster size over time, delay CDF and GPU-hours per policy, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []

    fig, ax = plt.subplots(figsize=(9, 4))
    for r in results:
        pts = _downsample(r.series)
        ax.step([p[0] / 3600 for p in pts], [p[1] * r.gpus_per_host for p in pts], where="post", label=r.policy)
    ax.set_xlabel("trace time (h)")
    ax.set_ylabel("GPUs provisioned")
    ax.set_title(f"Cluster size over time ({slug})")
    ax.legend()
    fig.tight_layout()
    paths.append(out / f"{slug}-cluster-size.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        xs = sorted(max(d, 1e-3) for d in r.delays)
        if xs:
            ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", label=r.policy)
    ax.set_xscale("log")
    ax.set_xlabel("interactivity delay per GPU cell (s, log; 0 drawn at 1 ms)")
    ax.set_ylabel("share of cells")
    ax.set_title(f"Delay CDF ({slug})")
    ax.legend()
    fig.tight_layout()
    paths.append(out / f"{slug}-delay-cdf.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.27
    xs = list(range(len(results)))
    for j, (label, attr) in enumerate(
        (("provisioned", "gpu_hours_provisioned"), ("bound", "gpu_hours_bound"), ("used", "gpu_hours_used"))
    ):
        ax.bar([x + (j - 1) * width for x in xs], [getattr(r, attr) for r in results], width, label=label)
    ax.set_xticks(xs, [r.policy for r in results])
    ax.set_ylabel("GPU-hours")
    ax.set_title(f"GPU-hours per policy ({slug})")
    ax.legend()
    fig.tight_layout()
    paths.append(out / f"{slug}-gpu-hours.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


__all__ = ["comparison_table", "markdown_report", "percentile", "write_json", "write_plots"]

"""Results as a comparison table (Markdown), JSON and PNG plots (matplotlib, Agg backend)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from notebookos.sim.metrics import Result, percentile
from notebookos.sim.tables import GRANULAR, label

BASELINE = "reservation"


def _fmt(x: float, digits: int = 0) -> str:
    return f"{x:,.{digits}f}"


def _delay(x: float) -> str:
    return f"{x:.1f}" if x >= 0.1 or x == 0 else f"{x:.2f}"


def comparison_table(results: Sequence[Result], granular_h: float) -> str:
    """One Markdown table: a row per policy, ratios against both reservation baselines: GPU-granular
    (``granular_h``: each session's peak GPUs for its life, GPU by GPU) and whole hosts (the
    simulated reservation policy: 8-GPU hosts, best-fit packed, released when empty)."""
    base = next((r for r in results if r.policy == BASELINE), None)
    head = (
        "| policy | GPU-h provisioned | vs GPU-granular reservation | vs whole-host reservation | GPU-h bound "
        "| GPU-h used | utilisation | delay p50 s | p95 s | p99 s | start at once "
        "| migrations (cell / drain / rebalance) | hosts added / released (peak) | cost $ | run s |"
    )
    rows = [head, "|" + "---|" * 15]
    rows.append(f"| {GRANULAR} | {_fmt(granular_h)} | x1.000 | - | - | - | - | - | - | - | - | - | - | - | - |")
    for r in results:
        vs_g = f"x{r.gpu_hours_provisioned / granular_h:.3f}" if granular_h else "-"
        vs_w = f"x{r.gpu_hours_provisioned / base.gpu_hours_provisioned:.3f}" if base else "-"
        rows.append(
            f"| {label(r.policy)} | {_fmt(r.gpu_hours_provisioned)} | {vs_g} | {vs_w} | {_fmt(r.gpu_hours_bound)} "
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
        lines += ["", comparison_table(results, workload["reserved_gpu_hours"]), ""]
    lines += [
        "Delay: from a GPU cell's submission (or the end of the previous cell of its session, whichever is later) "
        "to the start of its GPU work; 'start at once' is a delay of at most 1 s.",
        "",
    ]
    return "\n".join(lines)


def write_json(
    path: Path,
    sections: Sequence[tuple[str, dict[str, Any], Sequence[Result]]],
    settings: dict[str, Any],
    replays: dict[str, Any] | None = None,
) -> None:
    """Every figure and every setting, with each cell's delay and the time series of hosts paid for
    and GPUs bound (``series``: [time s, hosts, GPUs bound] at each change), so plots can be redrawn;
    ``replays`` (by workload title): the figures of every replay and their interval table."""
    doc = {
        "settings": settings,
        "workloads": [
            {
                "title": t,
                "workload": w,
                "results": [r.to_dict(full=True) for r in rs],
                **({"replays": replays[t]} if replays and t in replays else {}),
            }
            for t, w, rs in sections
        ],
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")


def _downsample(series: Sequence[tuple[float, int, int]], limit: int = 4000) -> list[tuple[float, int, int]]:
    if len(series) <= limit:
        return list(series)
    step = len(series) / limit
    return [series[int(i * step)] for i in range(limit)] + [series[-1]]


def _gpus_at(series: Sequence[tuple[float, int, int]], times: Sequence[float], gpus_per_host: int) -> list[int]:
    """GPUs provisioned at each of ``times`` (sorted), read off a step series."""
    out, j, cur = [], 0, 0
    for t in times:
        while j < len(series) and series[j][0] <= t:
            cur = series[j][1] * gpus_per_host
            j += 1
        out.append(cur)
    return out


def write_plots(out: Path, slug: str, results: Sequence[Result]) -> list[Path]:
    """Cluster size over time (and, below it, ours minus notebookos), the delay CCDF on log axes,
    and GPU-hours per policy, as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths: list[Path] = []
    by = {r.policy: r for r in results}
    pair = ("ours", "notebookos") if {"ours", "notebookos"} <= by.keys() else None
    fig, axes = plt.subplots(2 if pair else 1, 1, figsize=(9, 6 if pair else 4), sharex=True, squeeze=False)
    ax = axes[0][0]
    for r in results:
        pts = _downsample(r.series)
        ax.step([p[0] / 3600 for p in pts], [p[1] * r.gpus_per_host for p in pts], where="post", label=label(r.policy))
    ax.set_ylabel("GPUs provisioned")
    ax.set_title(f"Cluster size over time ({slug})")
    ax.legend()
    if pair:  # the two lines overlap at this scale: their difference shows what ours changes
        a, b = by[pair[0]], by[pair[1]]
        times = sorted({p[0] for p in a.series} | {p[0] for p in b.series})
        diff = [
            x - y
            for x, y in zip(
                _gpus_at(a.series, times, a.gpus_per_host), _gpus_at(b.series, times, b.gpus_per_host), strict=True
            )
        ]
        pts = _downsample([(t, d, 0) for t, d in zip(times, diff, strict=True)])
        ax2 = axes[1][0]
        ax2.step([p[0] / 3600 for p in pts], [p[1] for p in pts], where="post", color="tab:red")
        ax2.axhline(0, color="grey", linewidth=0.8)
        ax2.set_ylabel("GPUs: ours - notebookos")
    axes[-1][0].set_xlabel("trace time (h)")
    fig.tight_layout()
    paths.append(out / f"{slug}-cluster-size.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    floor = 0.5 / max((len(r.delays) for r in results), default=1)  # where "no cell beyond" is drawn
    for r in results:
        xs = sorted(max(d, 1e-3) for d in r.delays)
        n = len(xs)
        if not n or xs[-1] <= 1e-3:
            ax.plot([], [], label=f"{label(r.policy)} (no delay above 1 ms)")
            continue
        # P(delay > x) from 1 ms to the longest delay, then down to the floor: the tail users feel
        steps = [(1e-3, sum(1 for x in xs if x > 1e-3) / n)]
        steps += [(x, 1 - (i + 1) / n) for i, x in enumerate(xs) if x > 1e-3 and (i + 1 == n or xs[i + 1] != x)]
        ax.step([x for x, _ in steps], [max(p, floor) for _, p in steps], where="post", label=label(r.policy))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("interactivity delay per GPU cell, x (s, log; 0 drawn at 1 ms)")
    ax.set_ylabel("share of cells with delay > x (log)")
    ax.set_ylim(bottom=floor * 0.8)
    ax.set_title(f"Delay CCDF ({slug})")
    ax.legend()
    fig.tight_layout()
    paths.append(out / f"{slug}-delay-ccdf.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.27
    xs = list(range(len(results)))
    for j, (name, attr) in enumerate(
        (("provisioned", "gpu_hours_provisioned"), ("bound", "gpu_hours_bound"), ("used", "gpu_hours_used"))
    ):
        ax.bar([x + (j - 1) * width for x in xs], [getattr(r, attr) for r in results], width, label=name)
    ax.set_xticks(xs, [label(r.policy) for r in results])
    ax.set_ylabel("GPU-hours")
    ax.set_title(f"GPU-hours per policy ({slug})")
    ax.legend()
    fig.tight_layout()
    paths.append(out / f"{slug}-gpu-hours.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths


__all__ = ["comparison_table", "markdown_report", "percentile", "write_json", "write_plots"]

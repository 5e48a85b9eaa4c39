"""All four policies on both traces, side by side, with ratios against reservation.

    python -m benchmarks.simulate [--trace-dir ../shared/traces] [--replays 10] [--ablation]

Prints, per trace and cost preset, the comparison table of `notebookos simulate` (GPU-hours
provisioned / bound / used, ratio and GPU-hours saved vs reservation, utilisation, interactivity
delay p50/p95/p99, share of cells that start at once, migrations, scale events, cost, seconds per
run), then how robust the ours-vs-notebookos comparison on the template is over replays with the
sessions shifted by up to 15 minutes. Each run's time is printed; the one-month trace must take
under 60 s per policy. ``--ablation`` adds what each of ours's changes contributes, by turning it
off alone, on both traces (prototype costs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import replace

from notebookos.sim import report, suite
from notebookos.sim.config import COST_PRESETS, POLICIES
from notebookos.sim.engine import Simulator
from notebookos.sim.workload import TASKS_FILE, TEMPLATE_FILE, load_tasks, load_template, shifted

MONTH_BUDGET_S = 60.0


def _robustness(template, replays: int) -> list[str]:
    rows = [
        "| costs | policy | GPU-h provisioned mean (min..max) | start at once mean (min..max) | delay p95 s mean | "
        "ours better on both |",
        "|---|---|---|---|---|---|",
    ]
    for cname, costs in COST_PRESETS.items():
        runs: dict[str, list] = {"notebookos": [], "ours": []}
        for seed in range(replays):
            w = shifted(template, 900.0, seed)
            for name in runs:
                runs[name].append(Simulator(w, POLICIES[name], costs, seed=seed).run())
        wins = sum(
            o.gpu_hours_provisioned < n.gpu_hours_provisioned and o.started_at_once >= n.started_at_once
            for n, o in zip(runs["notebookos"], runs["ours"], strict=True)
        )
        for name, rs in runs.items():
            gh = [r.gpu_hours_provisioned for r in rs]
            once = [r.started_at_once for r in rs]
            p95 = statistics.mean(r.delay_p95_s for r in rs)
            rows.append(
                f"| {cname} | {name} | {statistics.mean(gh):,.0f} ({min(gh):,.0f}..{max(gh):,.0f}) "
                f"| {statistics.mean(once):.1%} ({min(once):.1%}..{max(once):.1%}) | {p95:.1f} "
                f"| {f'{wins}/{replays}' if name == 'ours' else ''} |"
            )
    return rows


ABLATIONS = {
    "ours": {},
    "- anticipatory rebalancing": {"rebalance": False},
    "- scale-in guard for active kernels": {"active_window_s": 0.0},
    "- peak-window sizing": {"peak_window_s": 0.0},
    "- ski-rental release": {"idle_release_s": 0.0},
    "- best-fit executor": {"executor": "affinity"},
    "- load-aware victim": {"victim": "random"},
}


def _ablation(cases) -> list[str]:
    """cases: (label, replays of one trace); figures are means over the replays."""
    rows = [
        "| trace | variant | GPU-h provisioned | vs notebookos | start at once | delay mean s | p95 s "
        "| migrations (cell / drain / rebalance) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    costs = COST_PRESETS["prototype"]

    def mean_of(policy, replays) -> dict[str, float]:
        rs = [Simulator(w, policy, costs, seed=i).run() for i, w in enumerate(replays)]
        keys = ("gpu_hours_provisioned", "started_at_once", "delay_mean_s", "delay_p95_s")
        keys += ("migrations", "drain_migrations", "rebalance_migrations")
        return {k: statistics.mean(getattr(r, k) for r in rs) for k in keys}

    for label, replays in cases:
        nb = mean_of(POLICIES["notebookos"], replays)
        for name, change in (("notebookos", None), *ABLATIONS.items()):
            m = nb if change is None else mean_of(replace(POLICIES["ours"], **change), replays)
            rows.append(
                f"| {label} | {name} | {m['gpu_hours_provisioned']:,.0f} "
                f"| x{m['gpu_hours_provisioned'] / nb['gpu_hours_provisioned']:.3f} | {m['started_at_once']:.1%} "
                f"| {m['delay_mean_s']:.2f} | {m['delay_p95_s']:.1f} | {m['migrations']:.0f} / "
                f"{m['drain_migrations']:.0f} / {m['rebalance_migrations']:.0f} |"
            )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.simulate")
    ap.add_argument("--trace-dir")
    ap.add_argument("--replays", type=int, default=10, help="shifted template replays for the robustness table")
    ap.add_argument("--ablation", action="store_true", help="also turn each of ours's changes off alone")
    args = ap.parse_args(argv)
    tdir = suite.trace_dir(args.trace_dir)
    template = load_template(tdir / TEMPLATE_FILE)
    month = load_tasks(tdir / TASKS_FILE)
    pols = suite.policies(list(POLICIES))
    rc = 0
    for w, presets in ((template, ("prototype", "cloud")), (month, ("prototype", "cloud"))):
        d = w.describe()
        for cname in presets:
            results = suite.run_all(w, pols, COST_PRESETS[cname], progress=False, log=False)
            print(
                f"\n## {w.name} ({d['sessions']} sessions, {d['gpu_cells']} GPU cells, {d['span_h']} h), "
                f"{cname} costs\n"
            )
            print(report.comparison_table(results))
            if w is month:
                worst = max(r.wall_s for r in results)
                ok = worst < MONTH_BUDGET_S
                rc |= 0 if ok else 1
                times = ", ".join(f"{r.policy} {r.wall_s:.1f} s" for r in results)
                print(
                    f"\none-month trace, time per policy-run: {times} (budget {MONTH_BUDGET_S:.0f} s: "
                    f"{'met' if ok else 'MISSED'})"
                )
    t = time.perf_counter()
    print(f"\n## template: ours vs notebookos over {args.replays} replays, sessions shifted by up to 15 min\n")
    print("\n".join(_robustness(template, args.replays)))
    print(f"\n({time.perf_counter() - t:.1f} s)")
    if args.ablation:
        print(
            f"\n## ablation: each of ours's changes turned off alone (prototype costs; template: mean of "
            f"{args.replays} shifted replays, month: one replay)\n"
        )
        replays = [shifted(template, 900.0, seed) for seed in range(args.replays)]
        print("\n".join(_ablation([("template", replays), ("month", [month])])))
    return rc


if __name__ == "__main__":
    sys.exit(main())

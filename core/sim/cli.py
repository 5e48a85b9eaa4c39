"""`notebookos simulate`: replay the traces (or a synthetic workload) under each policy and report.

Imports stay light here: the CLI imports every subcommand's module to build its parser.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

WORKLOADS = ("template", "month", "synthetic")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--workload",
        action="append",
        choices=WORKLOADS,
        help="workloads to replay (repeatable; default: template and month)",
    )
    p.add_argument("--trace-dir", help="folder with the traces (default: ../shared/traces from the repo root)")
    p.add_argument("--template", help="session template JSON (default: <trace-dir>/sensei-june-1-2-2021-sessions.json)")
    p.add_argument("--tasks", help="task CSV (default: <trace-dir>/sensei-june-2021-gpu-tasks.csv)")
    p.add_argument("--idle-tail-min", type=float, default=30.0, help="task CSV: session life after its last task")
    p.add_argument(
        "--split-gap-h",
        type=float,
        default=24.0,
        help="task CSV: cut a session where it idles longer than this between two tasks (default 24 h: the "
        "longest idle gap of any session in the session template is 23.2 h)",
    )
    p.add_argument("--no-split", action="store_true", help="task CSV: never cut sessions at idle gaps")
    p.add_argument(
        "--hosts",
        type=int,
        help="fixed cluster: at most this many GPU hosts for every policy (reservation queues sessions when "
        "they are full; notebookos and ours scale within the bound); default: elastic",
    )
    p.add_argument("--policies", default="reservation,batch,notebookos,ours", help="comma-separated policies")
    p.add_argument("--costs", choices=("prototype", "cloud"), default="prototype", help="cost preset")
    p.add_argument("--host-provision-s", type=float, help="override: seconds to add a host")
    p.add_argument("--host-release-s", type=float, help="override: seconds to remove a host")
    p.add_argument("--container-start-s", type=float, help="override: seconds to start a container")
    p.add_argument("--state-gb", type=float, help="override: kernel state moved by migrations and batch (GB)")
    p.add_argument("--raft-commit-ms", type=float, help="override: one Raft commit (ms)")
    p.add_argument("--state-sync-s", type=float, help="override: small-object sync after a cell (s)")
    p.add_argument(
        "--replays",
        type=int,
        default=1,
        help="also run this many replays (the workload as recorded, then sessions shifted by up to 15 min; "
        "replay i with seed i) and print each figure as a mean with a 95 %% interval",
    )
    p.add_argument("--gpus-per-host", type=int, default=8)
    p.add_argument("--price", type=float, default=2.5, help="$ per GPU-hour")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--synthetic-sessions", type=int, default=20)
    p.add_argument("--synthetic-hours", type=float, default=24.0)
    p.add_argument("--out", default="sim-out", help="folder for results.json, report.md and the PNG plots")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None, help="default: when a TTY")


def _costs(args: argparse.Namespace) -> Any:
    from notebookos.sim.config import COST_PRESETS

    c = COST_PRESETS[args.costs]
    over: dict[str, float] = {}
    for attr in ("host_provision_s", "host_release_s", "container_start_s", "state_sync_s"):
        v = getattr(args, attr)
        if v is not None:
            if v < 0:
                raise ValueError(f"--{attr.replace('_', '-')} must be >= 0, got {v}")
            over[attr] = v
    if args.state_gb is not None:
        over["state_bytes"] = args.state_gb * 1e9
    if args.raft_commit_ms is not None:
        over["raft_commit_s"] = args.raft_commit_ms / 1000
    return replace(c, **over)


def run(args: argparse.Namespace) -> int:
    from notebookos.sim import report, suite, tables, workload
    from notebookos.sim.config import on_fixed_cluster

    try:
        costs = _costs(args)
        pols = suite.policies([n.strip() for n in args.policies.split(",") if n.strip()], args.gpus_per_host)
        pols = [on_fixed_cluster(p, args.hosts) for p in pols]
        if args.replays < 1:
            raise ValueError(f"--replays must be >= 1, got {args.replays}")
        if args.hosts is not None and any(p.replicas > args.hosts for p in pols):
            raise ValueError(f"--hosts {args.hosts}: notebookos and ours need at least 3 hosts (one per replica)")
        tdir = suite.trace_dir(args.trace_dir)
        loads = []
        for name in args.workload or ["template", "month"]:
            if name == "template":
                loads.append(workload.load_template(args.template or tdir / workload.TEMPLATE_FILE))
            elif name == "month":
                gap = None if args.no_split else args.split_gap_h * 3600
                loads.append(
                    workload.load_tasks(args.tasks or tdir / workload.TASKS_FILE, args.idle_tail_min * 60, gap)
                )
            else:
                spec = workload.SyntheticSpec(sessions=args.synthetic_sessions, span_h=args.synthetic_hours)
                loads.append(workload.synthetic(spec, args.seed))
    except (ValueError, OSError) as e:
        print(f"notebookos simulate: {e}", file=sys.stderr)
        return 2
    settings = {
        "costs": args.costs,
        **{k: v for k, v in vars(costs).items()},
        "gpus_per_host": args.gpus_per_host,
        "price_per_gpu_hour": args.price,
        "seed": args.seed,
        "max_hosts": args.hosts,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sections = []
    extra: dict[str, Any] = {}
    for w in loads:
        results = suite.run_all(w, pols, costs, seed=args.seed, price=args.price, progress=args.progress)
        sections.append((w.name, w.describe(), results))
        print(f"\n## {w.name}\n\n{report.comparison_table(results, w.reserved_gpu_hours)}")
        if not args.no_plots:
            report.write_plots(out, w.name, results)
        if args.replays > 1:
            ws = suite.replays(w, args.replays)
            runs = suite.run_replays(ws, pols, costs, price=args.price)
            text = tables.policy_table(runs, [x.reserved_gpu_hours for x in ws])
            if "ours" in runs and "notebookos" in runs:
                text += f"\n\n{tables.COMPARE_HEAD}\n{tables.compare_rows(w.name, runs['ours'], runs['notebookos'])}"
            title = f"{w.name}: {args.replays} replays, mean ± 95 % interval"
            print(f"\n## {title}\n\n{text}")
            extra[w.name] = {
                "title": title,
                "table": text,
                "replays": {n: [r.to_dict() for r in rs] for n, rs in runs.items()},
            }
    report.write_json(out / "results.json", sections, settings, extra)
    md = report.markdown_report(sections, settings)
    md += "".join(f"\n## {e['title']}\n\n{e['table']}\n" for e in extra.values())
    (out / "report.md").write_text(md)
    print(f"\nwrote {out / 'results.json'}, {out / 'report.md'}" + ("" if args.no_plots else " and plots"))
    return 0

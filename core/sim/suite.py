"""Run several policies over one workload, with the same costs and seed, and find the trace files."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from notebookos.sim.config import POLICIES, Costs, Policy
from notebookos.sim.engine import Simulator
from notebookos.sim.metrics import Result
from notebookos.sim.workload import DEFAULT_TRACE_DIR, Workload, shifted


def trace_dir(explicit: str | Path | None = None) -> Path:
    """The traces folder: the argument, else $NOTEBOOKOS_TRACES, else ../shared/traces from the
    working directory (the repository root), else beside the repository this file is in."""
    if explicit:
        return Path(explicit)
    if os.environ.get("NOTEBOOKOS_TRACES"):
        return Path(os.environ["NOTEBOOKOS_TRACES"])
    if DEFAULT_TRACE_DIR.is_dir():
        return DEFAULT_TRACE_DIR
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "shared" / "traces"
        if candidate.is_dir():
            return candidate
    return DEFAULT_TRACE_DIR


def policies(names: Sequence[str], gpus_per_host: int = 8) -> list[Policy]:
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise ValueError(f"unknown policies {unknown}; known: {sorted(POLICIES)}")
    out = []
    for n in names:
        p = POLICIES[n]
        out.append(replace(p, scaling=replace(p.scaling, gpus_per_host=gpus_per_host)))
    return out


def run_all(
    workload: Workload,
    pols: Sequence[Policy],
    costs: Costs,
    *,
    seed: int = 0,
    price: float = 2.5,
    progress: bool | None = None,
    log: bool = True,
) -> list[Result]:
    """Each policy on the workload; the storage bandwidth comes from the workload's trace."""
    costs = replace(costs, download_bps=workload.download_bps, upload_bps=workload.upload_bps)
    show = sys.stderr.isatty() if progress is None else progress
    results = []
    for p in pols:
        r = Simulator(workload, p, costs, seed=seed, price_per_gpu_hour=price, progress=show).run()
        if log:
            print(f"  {workload.name}: {p.name} simulated in {r.wall_s:.1f} s", file=sys.stderr)
        results.append(r)
    return results


REPLAY_SHIFT_S = 900.0
"""Replays after the first move each session by up to 15 min: same sessions and cells, other
interleavings (a single replay is chaotic: a few minutes change a policy's GPU-hours by +-5 %)."""


def replays(w: Workload, n: int, max_shift_s: float = REPLAY_SHIFT_S) -> list[Workload]:
    """The workload as recorded, then ``n - 1`` replays with the sessions shifted (seed 1, 2, ...)."""
    if n < 1:
        raise ValueError(f"need at least 1 replay, got {n}")
    return [w] + [shifted(w, max_shift_s, seed) for seed in range(1, n)]


def run_replays(
    ws: Sequence[Workload], pols: Sequence[Policy], costs: Costs, *, price: float = 2.5
) -> dict[str, list[Result]]:
    """Each policy on each replay; replay i runs with seed i (the same for every policy, so that two
    policies can be compared replay by replay)."""
    out: dict[str, list[Result]] = {p.name: [] for p in pols}
    for i, w in enumerate(ws):
        c = replace(costs, download_bps=w.download_bps, upload_bps=w.upload_bps)
        for p in pols:
            out[p.name].append(Simulator(w, p, c, seed=i, price_per_gpu_hour=price).run())
    return out

"""Invariants of every run: GPU-hours used <= bound <= provisioned, every cell runs exactly once, no
host ever has more GPUs bound than it has; and runs are deterministic for a seed."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from notebookos.sim.config import COST_PRESETS, POLICIES, with_gpus_per_host
from notebookos.sim.engine import Simulator
from notebookos.sim.metrics import Result
from notebookos.sim.workload import SyntheticSpec, from_tuples, load_template, synthetic

# a crowded day: 30 sessions of up to 8 GPUs, cells every ~10 min: contention, migrations, scaling
SPEC = SyntheticSpec(sessions=30, span_h=12.0, session_h=6.0, cell_gap_min=10.0, cell_min=15.0)


def check(r: Result, gpus_per_host: int) -> None:
    eps = 1e-9
    assert r.gpu_hours_used <= r.gpu_hours_bound + eps
    assert r.gpu_hours_bound <= r.gpu_hours_provisioned + eps
    assert r.cells_run == r.cells == len(r.delays)
    assert r.max_bound_on_a_host <= gpus_per_host
    assert min(r.delays) >= 0
    assert all(n >= 0 for _, n, _ in r.series)
    assert all(b <= n * gpus_per_host for _, n, b in r.series)  # bound never above what is provisioned


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("gpus", [4, 8])
def test_invariants_on_synthetic_workloads(policy: str, seed: int, gpus: int) -> None:
    w = synthetic(replace(SPEC, gpu_choices=tuple(g for g in (1, 2, 4, 8) if g <= gpus)), seed)
    r = Simulator(w, with_gpus_per_host(POLICIES[policy], gpus), seed=seed).run()
    check(r, gpus)
    assert r.gpu_hours_used == pytest.approx(sum(c.gpus * c.duration for c in w.cells) / 3600)


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("costs", ["prototype", "cloud"])
def test_invariants_on_the_template(traces, policy: str, costs: str) -> None:
    w = load_template(traces / "sensei-june-1-2-2021-sessions.json")
    r = Simulator(w, POLICIES[policy], COST_PRESETS[costs]).run()
    check(r, 8)
    assert r.gpu_hours_used == pytest.approx(1304.25, abs=0.01)


def test_bound_matches_the_reservation_definition(traces) -> None:
    """Reservation binds each session's peak for its life: the trace README's 5,070 GPU-hours."""
    w = load_template(traces / "sensei-june-1-2-2021-sessions.json")
    r = Simulator(w, POLICIES["reservation"]).run()
    assert r.gpu_hours_bound == pytest.approx(5070.3, abs=1.0)  # minus the minutes waiting for hosts


@pytest.mark.parametrize("policy", ["notebookos", "ours", "batch"])
def test_deterministic_for_a_seed(policy: str) -> None:
    w = synthetic(SPEC, 7)
    a = Simulator(w, POLICIES[policy], seed=5).run()
    b = Simulator(synthetic(SPEC, 7), POLICIES[policy], seed=5).run()
    da, db = a.to_dict(full=True), b.to_dict(full=True)
    da.pop("wall_s"), db.pop("wall_s")
    assert da == db


def test_the_seed_drives_notebookos_victims() -> None:
    """notebookos picks a random replica to migrate, so seeds give different (valid) runs."""
    w = synthetic(SPEC, 7)
    runs = {tuple(Simulator(w, POLICIES["notebookos"], seed=s).run().delays) for s in range(6)}
    assert len(runs) > 1


def test_ours_is_at_least_as_interactive_with_fewer_gpu_hours_on_the_template(traces) -> None:
    """The headline the README reports (docs/simulator.md), for both cost presets."""
    w = load_template(traces / "sensei-june-1-2-2021-sessions.json")
    for costs in COST_PRESETS.values():
        nb = Simulator(w, POLICIES["notebookos"], costs).run()
        ours = Simulator(w, POLICIES["ours"], costs).run()
        assert ours.gpu_hours_provisioned < nb.gpu_hours_provisioned
        assert ours.started_at_once >= nb.started_at_once
        for q in ("delay_p50_s", "delay_p95_s", "delay_p99_s", "delay_mean_s"):
            assert getattr(ours, q) <= getattr(nb, q) + 1e-9, q


def test_invariants_on_the_month(traces) -> None:
    """The one-month trace under the paper's policy (about 2 s): all 30,909 cells, once each."""
    from notebookos.sim.workload import load_tasks

    w = load_tasks(traces / "sensei-june-2021-gpu-tasks.csv")
    r = Simulator(w, POLICIES["notebookos"]).run()
    check(r, 8)
    assert r.cells_run == 30909


@st.composite
def small_workloads(draw: st.DrawFn) -> tuple[int, list]:
    gpus = draw(st.sampled_from([1, 2, 4, 8]))
    sessions = []
    for _ in range(draw(st.integers(1, 6))):
        start = draw(st.integers(0, 3000))
        peak = draw(st.integers(1, gpus))
        cells, t = [], start
        for _ in range(draw(st.integers(1, 5))):
            t += draw(st.integers(0, 900))
            d = draw(st.integers(0, 1800))
            cells.append((float(t), float(d), draw(st.integers(1, peak))))
            t += d
        sessions.append((float(start), float(t + draw(st.integers(0, 600))), peak, cells))
    return gpus, sessions


@settings(max_examples=60, deadline=None)
@given(small_workloads(), st.sampled_from(sorted(POLICIES)), st.sampled_from(sorted(COST_PRESETS)))
def test_invariants_hold_for_any_small_workload(case: tuple[int, list], policy: str, costs: str) -> None:
    gpus, sessions = case
    w = from_tuples(*sessions)
    r = Simulator(w, with_gpus_per_host(POLICIES[policy], gpus), COST_PRESETS[costs]).run()
    check(r, gpus)
    assert r.gpu_hours_used == pytest.approx(sum(c.gpus * c.duration for c in w.cells) / 3600)

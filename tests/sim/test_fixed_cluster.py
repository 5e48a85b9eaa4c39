"""The fixed-cluster mode: every policy on at most N hosts; reservation queues sessions when the
hosts are full, the replicated policies scale within the bound (and oversubscribe)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from notebookos.sim.config import POLICIES, on_fixed_cluster
from notebookos.sim.engine import Simulator
from notebookos.sim.workload import SyntheticSpec, from_tuples, synthetic

from .test_hand_scenarios import HAND_COSTS
from .test_invariants import SPEC, check

# A: 8 GPUs from 0 to 1000 s, an 8-GPU cell at 100 s for 200 s; B: 8 GPUs from 50 to 2000 s, an
# 8-GPU cell at 60 s for 100 s. Two whole hosts' worth of reservation.
TWO = from_tuples((0.0, 1000.0, 8, [(100.0, 200.0, 8)]), (50.0, 2000.0, 8, [(60.0, 100.0, 8)]))


def test_reservation_queues_a_session_when_the_cluster_is_full() -> None:
    """One host: A gets it at 10 (provisioned in 10 s) and holds it to 1000; B queues from 50. At
    1000 B takes the host, its container is up at 1002 and its cell (submitted at 60) starts:
    delay 942 s. B ends at 2000, the host is released on the 2010 tick and gone at 2015."""
    r = Simulator(TWO, on_fixed_cluster(POLICIES["reservation"], 1), HAND_COSTS).run()
    assert r.delays == [0.0, 942.0]
    assert r.sessions_queued == 1 and r.peak_hosts == 1 and r.max_hosts == 1
    assert r.gpu_hours_provisioned == pytest.approx(8 * 2015 / 3600)
    elastic = Simulator(TWO, POLICIES["reservation"], HAND_COSTS).run()
    assert elastic.delays == [2.0, 0.0]  # B has its own host (ready at 60, up at 62) and starts first
    assert elastic.sessions_queued == 0 and elastic.peak_hosts == 2 and elastic.max_hosts is None


@pytest.mark.parametrize("policy", ["notebookos", "ours", "batch", "reservation"])
@pytest.mark.parametrize("hosts", [3])
def test_no_policy_exceeds_the_bound(policy: str, hosts: int) -> None:
    w = synthetic(SPEC, 4)
    elastic = Simulator(w, POLICIES[policy], seed=4).run()
    assert elastic.peak_hosts > hosts  # the bound does bind on this workload
    r = Simulator(w, on_fixed_cluster(POLICIES[policy], hosts), seed=4).run()
    check(r, 8)
    assert r.peak_hosts <= hosts
    assert all(n <= hosts for _, n, _ in r.series)
    assert r.delay_mean_s > elastic.delay_mean_s  # users wait for the room the bound withholds


@pytest.mark.parametrize("policy", ["notebookos", "ours"])
def test_replicated_policies_oversubscribe_at_the_bound(policy: str) -> None:
    """With a subscription-ratio cap of 1.0 a host may be promised 8 x 3 x 1.0 = 24 GPUs: three
    8-GPU kernels fill three hosts, and the fourth kernel's replicas need new ones when elastic. On
    3 hosts they oversubscribe them instead, and every cell still runs."""
    p = replace(POLICIES[policy], max_ratio=1.0)
    w = from_tuples(*[(0.0, 900.0, 8, [(100.0 + 150 * i, 60.0, 8)]) for i in range(4)])
    assert Simulator(w, p, HAND_COSTS).run().peak_hosts > 3
    r = Simulator(w, on_fixed_cluster(p, 3), HAND_COSTS).run()
    check(r, 8)
    assert r.peak_hosts == 3 and r.cells_run == 4


def test_a_cluster_too_small_for_the_replicas_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot hold notebookos's 3 replicas"):
        Simulator(synthetic(SyntheticSpec(sessions=2), 0), on_fixed_cluster(POLICIES["notebookos"], 2))
    with pytest.raises(ValueError, match="at least 1 host"):
        on_fixed_cluster(POLICIES["reservation"], 0)


def test_equal_cost_is_the_largest_reservation_cluster_within_the_budget() -> None:
    from benchmarks.simulate import _equal_cost_hosts

    w = synthetic(SPEC, 4)

    def cost(n: int) -> float:
        return Simulator(w, on_fixed_cluster(POLICIES["reservation"], n)).run().gpu_hours_provisioned

    assert cost(4) < cost(5)  # reservation's GPU-hours grow with its bound (until it stops binding)
    assert _equal_cost_hosts(w, (cost(4) + cost(5)) / 2, 20) == 4
    assert _equal_cost_hosts(w, cost(1) / 2, 20) == 1  # nothing fits: the smallest cluster
    assert _equal_cost_hosts(w, 1e9, 20) == 20  # everything fits: the search's upper end

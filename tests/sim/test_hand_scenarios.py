"""One small scenario per policy whose every figure is computed by hand (see each docstring)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from notebookos.sim.config import POLICIES, Costs, with_gpus_per_host
from notebookos.sim.engine import Simulator
from notebookos.sim.workload import from_tuples as workload

# Round numbers so that every figure can be checked by hand: provision 10 s, release 5 s, container
# start 2 s, state 1 GB restored in 1 s and saved in 2 s (migration = 2 + 2 + 1 = 5 s), Raft commit
# 0.5 s (election = 1 s), no sync after a cell.
HAND_COSTS = Costs(
    host_provision_s=10.0,
    host_release_s=5.0,
    container_start_s=2.0,
    state_bytes=1e9,
    download_bps=1e9,
    upload_bps=5e8,
    raft_commit_s=0.5,
    state_sync_s=0.0,
)

# one session of 2 GPUs from 0 to 3600 s: a 2-GPU cell at 100 s for 600 s, a 1-GPU cell at 1000 s for 300 s
ONE = workload((0.0, 3600.0, 2, [(100.0, 600.0, 2), (1000.0, 300.0, 1)]))


def run(policy: str, w=ONE, gpus: int = 8):
    return Simulator(w, with_gpus_per_host(POLICIES[policy], gpus), HAND_COSTS).run()


def test_reservation_by_hand() -> None:
    """No host at 0: one is requested (ready at 10), the kernel binds 2 GPUs at 10 and is up at 12;
    both cells start on submission. At 3600 the session ends and the empty host is released on the
    3600 tick (gone at 3605). Provisioned 8 x 3605; bound 2 x (3600 - 10); used 2 x 600 + 300."""
    r = run("reservation")
    assert r.delays == [0.0, 0.0]
    assert r.gpu_hours_provisioned == pytest.approx(8 * 3605 / 3600)
    assert r.gpu_hours_bound == pytest.approx(2 * 3590 / 3600)
    assert r.gpu_hours_used == pytest.approx(1500 / 3600)
    assert (r.hosts_added, r.hosts_released, r.peak_hosts, r.migrations) == (1, 1, 1, 0)
    assert r.started_at_once == 1.0


def test_batch_by_hand() -> None:
    """Cell 1 at 100 finds no host: one comes at 110, the container starts (2 s) and restores the
    state (1 s): GPU work at 113 (delay 13), done at 713, state saved by 715. Cell 2 at 1000 finds the
    idle host: GPU work at 1003 (delay 3), GPUs held until 1305. The host is released once idle for
    300 s, on the 1620 tick, gone at 1625."""
    r = run("batch")
    assert r.delays == [13.0, 3.0]
    assert r.gpu_hours_provisioned == pytest.approx(8 * (1625 - 100) / 3600)
    assert r.gpu_hours_bound == pytest.approx((2 * (715 - 110) + 1 * (1305 - 1000)) / 3600)
    assert r.gpu_hours_used == pytest.approx(1500 / 3600)
    assert (r.hosts_added, r.hosts_released, r.migrations) == (1, 1, 0)
    assert r.started_at_once == 0.0


def test_notebookos_by_hand_no_contention() -> None:
    """Three hosts (buffer) from 0 to 3600; three replicas, up at 2; each cell waits only for the
    executor election (2 Raft commits = 1 s, GPUs bound from its start) and runs on replica 0
    (affinity for the second)."""
    r = run("notebookos")
    assert r.delays == [1.0, 1.0]
    assert r.gpu_hours_provisioned == pytest.approx(3 * 8 * 3600 / 3600)
    assert r.gpu_hours_bound == pytest.approx((2 * 601 + 1 * 301) / 3600)
    assert (r.hosts_added, r.hosts_released, r.migrations) == (0, 0, 0)


# four sessions of 4 GPUs on 4-GPU hosts, cells of 1000 s at 100, 110, 115 and 125 s
FOUR = workload(
    (0.0, 3600.0, 4, [(100.0, 1000.0, 4)]),
    (0.0, 3600.0, 4, [(110.0, 1000.0, 4)]),
    (0.0, 3600.0, 4, [(115.0, 1000.0, 4)]),
    (0.0, 3600.0, 4, [(125.0, 1000.0, 4)]),
)


def test_notebookos_by_hand_migration_and_scaling() -> None:
    """Hosts h1-h3 (buffer of 3) hold a replica of every kernel. A, B, C bind h1, h2, h3 (+1 s
    election). The 120 tick sees 12 GPUs busy: ceil(12 x 1.05 / 4) = 4 hosts, so h4 is requested
    (ready 130). D at 125 has no replica with room and no host to move to: it waits; at 130 a replica
    migrates to h4 (5 s) and D starts at 136 (delay 11). The 150 tick sees 16 busy: 5 hosts, h5
    (150..). Scale-in, limit ceil(load x 1.1 / 4): the 1110 tick (load 12 -> 4) releases the empty
    h5 (gone 1115); the 1140 tick (load 0 -> buffer 3) drains D's replica back off h4 (gone 1145)."""
    r = run("notebookos", FOUR, gpus=4)
    assert r.delays == [1.0, 1.0, 1.0, 11.0]
    assert r.gpu_hours_provisioned == pytest.approx(4 * (3 * 3600 + (1145 - 120) + (1115 - 150)) / 3600)
    assert r.gpu_hours_bound == pytest.approx(4 * (1001 + 1001 + 1001 + 1006) / 3600)
    assert r.gpu_hours_used == pytest.approx(16000 / 3600)
    assert (r.migrations, r.drain_migrations, r.rebalance_migrations) == (1, 1, 0)
    assert (r.hosts_added, r.hosts_released, r.peak_hosts) == (2, 2, 5)
    assert r.started_at_once == 0.75


def test_ours_by_hand_migration_and_scaling() -> None:
    """ours starts with one host (min 1, no buffer): the first kernel's other replicas need h2 and h3
    (ready 10, replicas up 12), and the next kernels share them. Cells as for notebookos: h4 on the 120
    tick, D migrates (its replica on the busiest host, index 0) at 130, h5 on the 150 tick. ours sizes
    for the peak of the last 600 s, so scale-in waits: the 1710 tick (peak 12 -> 4 hosts) releases
    the empty h5, the 1740 tick (peak 0 -> 1 host) drains D's replica off h4; h1-h3 each hold a
    replica of every kernel, so none can be drained."""
    r = run("ours", FOUR, gpus=4)
    assert r.delays == [1.0, 1.0, 1.0, 11.0]
    assert r.gpu_hours_provisioned == pytest.approx(4 * (3 * 3600 + (1745 - 120) + (1715 - 150)) / 3600)
    assert r.gpu_hours_bound == pytest.approx(4 * (1001 + 1001 + 1001 + 1006) / 3600)
    assert (r.migrations, r.drain_migrations, r.rebalance_migrations) == (1, 1, 0)
    assert (r.hosts_added, r.hosts_released, r.peak_hosts) == (4, 2, 5)


def test_ours_rebalances_an_idle_kernel_ahead_of_its_cell() -> None:
    """As above, but D's cell comes at 600 s. A, B and C fill h1-h3 by 115 s, so none of D's replicas
    has room. With rebalancing, a replica of idle D moves to h4 on the 150 tick (h4 ready at 130) and
    D's cell starts after the election only; without it, the cell pays a migration (5 s)."""
    w = workload(
        (0.0, 3600.0, 4, [(100.0, 1000.0, 4)]),
        (0.0, 3600.0, 4, [(110.0, 1000.0, 4)]),
        (0.0, 3600.0, 4, [(115.0, 1000.0, 4)]),
        (0.0, 3600.0, 4, [(600.0, 100.0, 4)]),
    )
    on = run("ours", w, gpus=4)
    off = Simulator(w, with_gpus_per_host(replace(POLICIES["ours"], rebalance=False), 4), HAND_COSTS).run()
    assert on.rebalance_migrations >= 1
    assert on.delays[3] == 1.0  # only the election
    assert off.delays[3] == 6.0  # a migration (5 s) and the election
    assert (on.migrations, off.migrations) == (0, 1)

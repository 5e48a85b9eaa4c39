"""What a run measured: GPU-hours, interactivity, migrations, scale events, cost."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from notebookos.sim.engine import Simulator


IMMEDIATE_S = 1.0
"""A cell "starts at once" when its delay is at most this (the executor election alone is 10 ms)."""


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default), 0.0 for no values."""
    if not values:
        return 0.0
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@dataclass
class Result:
    policy: str
    workload: str
    gpus_per_host: int
    span_h: float
    gpu_hours_provisioned: float
    gpu_hours_bound: float
    gpu_hours_used: float
    utilisation: float
    """used / provisioned."""
    cells: int
    cells_run: int
    delay_p50_s: float
    delay_p95_s: float
    delay_p99_s: float
    delay_mean_s: float
    started_at_once: float
    """Share of GPU cells whose delay (submit, or the previous cell's end, to GPU start) is <= 1 s."""
    migrations: int
    """Migrations on a cell's critical path (no replica's host had the GPUs)."""
    drain_migrations: int
    """Idle replicas moved off hosts that scale-in released."""
    rebalance_migrations: int
    """Replicas of idle kernels moved ahead of their next cell (ours)."""
    sessions_queued: int
    """Sessions that found the cluster full and at its bound (a fixed cluster) and queued for a
    host (reservation)."""
    hosts_added: int
    hosts_released: int
    peak_hosts: int
    max_bound_on_a_host: int
    cost_usd: float
    price_per_gpu_hour: float
    wall_s: float
    delays: list[float] = field(repr=False, default_factory=list)
    series: list[tuple[float, int, int]] = field(repr=False, default_factory=list)
    """(time s, hosts paid for, GPUs bound) at each change."""
    max_hosts: int | None = None
    """The cluster's bound (a fixed cluster), None when elastic."""

    def to_dict(self, full: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not full:
            d.pop("delays")
            d.pop("series")
        return d


def summarise(sim: Simulator, wall_s: float, t0: float) -> Result:
    h = 3600.0
    cells = sum(len(s.cells) for s in sim.w.sessions)
    provisioned = sim.gpu_s_provisioned / h
    delays = sim.delays
    return Result(
        policy=sim.p.name,
        workload=sim.w.name,
        gpus_per_host=sim.G,
        span_h=round((sim.now - t0) / h, 3),
        gpu_hours_provisioned=provisioned,
        gpu_hours_bound=sim.gpu_s_bound / h,
        gpu_hours_used=sim.gpu_s_used / h,
        utilisation=(sim.gpu_s_used / sim.gpu_s_provisioned) if sim.gpu_s_provisioned else 0.0,
        cells=cells,
        cells_run=len(sim.ran),
        delay_p50_s=percentile(delays, 50),
        delay_p95_s=percentile(delays, 95),
        delay_p99_s=percentile(delays, 99),
        delay_mean_s=(sum(delays) / len(delays)) if delays else 0.0,
        started_at_once=(sum(1 for d in delays if d <= IMMEDIATE_S) / len(delays)) if delays else 1.0,
        migrations=sim.migrations,
        drain_migrations=sim.drain_migrations,
        rebalance_migrations=sim.rebalance_migrations,
        sessions_queued=sim.sessions_queued,
        hosts_added=sim.hosts_added,
        hosts_released=sim.hosts_released,
        peak_hosts=max((n for _, n, _ in sim.series), default=0),
        max_bound_on_a_host=sim.max_host_bound,
        cost_usd=provisioned * sim.price,
        price_per_gpu_hour=sim.price,
        wall_s=wall_s,
        max_hosts=sim.p.scaling.max_hosts,
        delays=list(delays),
        series=list(sim.series),
    )

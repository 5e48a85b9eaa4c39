"""Modelled costs and policy configurations, each a parameter with a documented default.

Costs (seconds unless named otherwise):

* ``host_provision_s`` / ``host_release_s``: adding / removing a GPU host. The prototype simulates
  N(15 s, 2 s) / N(10 s, 1 s) (reference_impl.md 3.1); the "cloud" preset uses 180 s / 60 s, what a
  GPU VM takes to boot, join Kubernetes and pass the device plugin. A host is paid from the request
  until its release completes.
* ``container_start_s``: starting a kernel container on a host whose image is cached (5 s).
* ``state_bytes``: a kernel's state (Raft WAL + snapshot + large-object pointers, or the variables a
  batch job reloads), 1 GB by default, moved at the trace's storage bandwidth (200 MB/s down,
  125 MB/s up): restore 5 s, save 8 s.
* migration = container start + state save by the old replica + restore by the new one (paper 3.7).
* ``raft_commit_s``: one Raft commit on a LAN (5 ms); the executor election costs two (LEAD
  proposal and the vote) on every cell's critical path.
* ``state_sync_s``: replicating the small objects after a cell (0.1 s), before the kernel takes the
  next cell; GPUs are released when the cell ends.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from notebookos.policy.autoscale import ScalingRule
from notebookos.policy.placement import DEFAULT_MAX_SUBSCRIPTION_RATIO, DEFAULT_REPLICAS, DEFAULT_SMOOTHING_WINDOW


@dataclass(frozen=True)
class Costs:
    host_provision_s: float = 15.0
    host_release_s: float = 10.0
    container_start_s: float = 5.0
    state_bytes: float = 1e9
    download_bps: float = 200e6
    upload_bps: float = 125e6
    raft_commit_s: float = 0.005
    state_sync_s: float = 0.1

    @property
    def restore_s(self) -> float:
        return self.state_bytes / self.download_bps

    @property
    def save_s(self) -> float:
        return self.state_bytes / self.upload_bps

    @property
    def migration_s(self) -> float:
        return self.container_start_s + self.save_s + self.restore_s

    @property
    def election_s(self) -> float:
        return 2 * self.raft_commit_s


COST_PRESETS: dict[str, Costs] = {
    "prototype": Costs(),
    "cloud": Costs(host_provision_s=180.0, host_release_s=60.0),
}


@dataclass(frozen=True)
class Policy:
    """What a policy does. ``kind`` picks the mechanism: reservation, batch or replicated."""

    name: str
    kind: str
    replicas: int = 1
    scaling: ScalingRule = field(default_factory=ScalingRule)
    interval_s: float = 30.0
    predictive: bool = False
    """Scale out on the interval to the target (else only reactively, when a placement fails)."""
    max_ratio: float = DEFAULT_MAX_SUBSCRIPTION_RATIO
    smoothing: int = DEFAULT_SMOOTHING_WINDOW
    placement: str = "spread"
    """Host ranking for new containers: spread (placement.rank_key) or pack (placement.pack_key)."""
    executor: str = "affinity"
    """Replica that runs a cell: affinity (last executor, else most idle host) or packed (last
    executor, else the host that fits most tightly)."""
    victim: str = "random"
    """Replica that migrates when none can run the cell: loaded (`migration.victim`, what the
    operator runs) or random, an experiment knob for the prototype's rule: a random member among
    those `migration.movable` allows."""
    scale_in_max_containers: int | None = 4
    """Only hosts with at most this many containers may be released (prototype rule), None: any."""
    idle_release_s: float | None = 0.0
    """A host must have been idle this long before scale-in may release it. None: as long as
    releasing and re-provisioning a host take (the ski-rental rule: an idle host is kept while
    keeping it costs less than getting it back)."""
    headroom_gpus: float | None = None
    """ours: size for the peak load of the last ``peak_window_s`` plus this many GPUs, instead of a
    buffer of whole hosts."""
    peak_window_s: float = 600.0
    rebalance: bool = False
    """ours: on each interval, move a replica of every idle kernel none of whose replicas' hosts
    could run its next cell right now to a host that could, so the migration is off the cell's path."""
    active_window_s: float = 300.0
    """ours: a kernel whose last cell ended within this window is "active": it is rebalanced, and
    scale-in keeps a host that is its only room. Older kernels lose both (notebook gaps: median 15 min)."""


RESERVATION = Policy(
    "reservation",
    "reservation",
    placement="pack",
    scaling=ScalingRule(buffer_hosts=0, max_release=1_000_000),
    scale_in_max_containers=None,
)
BATCH = Policy(
    "batch",
    "batch",
    placement="pack",
    scaling=ScalingRule(buffer_hosts=0, max_release=1_000_000),
    scale_in_max_containers=None,
    idle_release_s=300.0,
)
NOTEBOOKOS = Policy(
    "notebookos",
    "replicated",
    replicas=DEFAULT_REPLICAS,
    scaling=ScalingRule(min_hosts=0, buffer_hosts=3),
    predictive=True,
)
OURS = Policy(
    "ours",
    "replicated",
    replicas=DEFAULT_REPLICAS,
    scaling=ScalingRule(min_hosts=1, buffer_hosts=0, max_release=4),
    predictive=True,
    placement="spread",
    executor="packed",
    victim="loaded",
    scale_in_max_containers=None,
    idle_release_s=None,
    headroom_gpus=0.0,
    peak_window_s=600.0,
    rebalance=True,
)
POLICIES: dict[str, Policy] = {p.name: p for p in (RESERVATION, BATCH, NOTEBOOKOS, OURS)}


def with_gpus_per_host(policy: Policy, gpus: int) -> Policy:
    return replace(policy, scaling=replace(policy.scaling, gpus_per_host=gpus))


def on_fixed_cluster(policy: Policy, hosts: int | None) -> Policy:
    """The policy on a cluster of at most ``hosts`` GPU hosts (None: elastic, unbounded), as in the
    paper's fixed-cluster runs: reservation queues sessions when the hosts are full, batch queues
    cells, and the replicated policies scale within the bound and oversubscribe past the
    subscription-ratio cap once at it."""
    if hosts is not None and hosts < 1:
        raise ValueError(f"a fixed cluster needs at least 1 host, got {hosts}")
    return replace(policy, scaling=replace(policy.scaling, max_hosts=hosts))

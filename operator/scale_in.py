"""Scale-in chosen by NotebookOS: when load falls, the operator picks the GPU node to empty, moves
its replicas off, and leaves the empty node to the autoscaler.

The choice is the simulator's (notebookos.policy.drain): `scale_in_candidates` orders the nodes
with no GPU bound whose kernels have run no cell for `idle_seconds`, fewest replicas first, and the
first whose replicas all have a home (`drain_plan`) is chosen. The operator taints it
`notebookos.io/scale-in:NoSchedule`; the drain path then moves its replicas (node event ->
NodeDraining on the replicas -> kernel reconcile -> migration, each replica caught up before its
old pod goes), and the empty node is removed by the autoscaler (Karpenter's consolidation of an
empty node, cluster-autoscaler's scale-down of an unneeded one). Only nodes an autoscaler removes
are considered (`NOTEBOOKOS_SCALE_IN_SELECTOR`; unset: scale-in off, the safe default on a fixed
cluster), one node at a time. While any kernel waits for GPUs, the operator's taints are lifted
(the room is needed), and an emptied node the autoscaler keeps is given back after
`release_seconds`.

Level-triggered: each pass reads the cluster and the taints, which carry when they were set; the
only memory is when the last pass ran (a rate limit; lost on restart, harmlessly).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from notebookos import labels
from notebookos.api import ConditionStatus, ConditionType, KernelReplica, NotebookKernel
from notebookos.policy import drain
from notebookos.policy.placement import DEFAULT_MAX_SUBSCRIPTION_RATIO, NodeView, ReplicaRequest

from . import migration, naming
from . import status as st
from .config import ConfigError, _parse_int
from .kube import Conflict, Kube, Obj

log = logging.getLogger(__name__)
TAINT = labels.SCALE_IN_TAINT_KEY


@dataclass(frozen=True)
class ScaleInConfig:
    # Label selector (kubectl spelling; a bare key means "has the label") of the GPU nodes an
    # autoscaler removes, e.g. karpenter.sh/nodepool. Empty: the operator never empties a node.
    selector: str = ""
    idle_seconds: int = 600  # a node whose kernels ran no cell for this long may be emptied
    interval_seconds: int = 30  # between passes
    release_seconds: int = 600  # an emptied node the autoscaler has not removed by then is given back

    @property
    def enabled(self) -> bool:
        return bool(self.selector)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ScaleInConfig:
        kw: dict[str, Any] = {}
        if sel := env.get("NOTEBOOKOS_SCALE_IN_SELECTOR", "").strip():
            if any(not part.strip() for part in sel.split(",")):
                raise ConfigError(f"NOTEBOOKOS_SCALE_IN_SELECTOR: {sel!r} has an empty term")
            kw["selector"] = sel
        for var, key, lo, hi in (
            ("NOTEBOOKOS_SCALE_IN_IDLE_SECONDS", "idle_seconds", 0, 7 * 86400),
            ("NOTEBOOKOS_SCALE_IN_INTERVAL_SECONDS", "interval_seconds", 1, 3600),
            ("NOTEBOOKOS_SCALE_IN_RELEASE_SECONDS", "release_seconds", 10, 7 * 86400),
        ):
            if v := env.get(var):
                kw[key] = _parse_int(var, v, lo, hi)
        return cls(**kw)


@dataclass(frozen=True)
class Step:
    """What one pass does: the node to taint (with why), and the nodes whose taint goes."""

    taint: str | None = None
    why: str = ""
    untaint: tuple[str, ...] = ()


def tainted_at(node: Mapping[str, Any]) -> float | None:
    """When the operator tainted `node` for scale-in (Unix seconds), or None."""
    for t in (node.get("spec") or {}).get("taints") or []:
        if t.get("key") == TAINT:
            try:
                return float(t.get("value") or 0)
            except ValueError:
                return 0.0
    return None


def taints_with(node: Mapping[str, Any], now_s: float) -> list[dict[str, Any]]:
    return [*taints_without(node), {"key": TAINT, "value": str(int(now_s)), "effect": "NoSchedule"}]


def taints_without(node: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [dict(t) for t in (node.get("spec") or {}).get("taints") or [] if t.get("key") != TAINT]


def decide(
    eligible: Mapping[str, Mapping[str, Any]],
    views: Mapping[str, NodeView],
    residents: Mapping[str, Sequence[drain.Resident]],
    idle_s: Mapping[str, float],
    waiting: bool,
    cfg: ScaleInConfig,
    now_s: float,
    ratio: float = DEFAULT_MAX_SUBSCRIPTION_RATIO,
) -> Step:
    """One pass. `eligible`: the node objects an autoscaler removes; `views`: every GPU-pool node;
    `residents`: the kernels with a replica on each node; `idle_s`: seconds since the last cell of
    each node's kernels; `waiting`: some kernel waits for GPUs or a placement."""
    ours = {n: t for n, o in eligible.items() if (t := tainted_at(o)) is not None}
    if waiting:
        return Step(untaint=tuple(sorted(ours)), why="a kernel waits for GPUs: the room is needed")
    busy = [n for n in ours if n in views and views[n].kernels]
    # A node being emptied whose kernels became active again, or that holds GPUs, is kept.
    keep = tuple(sorted(n for n in busy if views[n].bound > 0 or idle_s.get(n, 0.0) < cfg.idle_seconds))
    expired = tuple(sorted(n for n, t in ours.items() if n not in busy and now_s - t >= cfg.release_seconds))
    if keep or expired:
        return Step(untaint=keep + expired, why="active again, or left by the autoscaler")
    if busy:
        return Step()  # one node at a time: its replicas are on their way
    free = {n: v for n, v in views.items() if v.schedulable}
    candidates = [free[n] for n in eligible if n in free and free[n].kernels and n not in ours]
    for name in drain.scale_in_candidates(candidates, idle_s, cfg.idle_seconds):
        node = free[name]
        others = [v for n, v in free.items() if n != name]
        if drain.drain_plan(node, residents.get(name, ()), others, ratio) is not None:
            idle = idle_s[name]
            return Step(taint=name, why=f"its kernels ran no cell for {idle:.0f} s and its replicas fit elsewhere")
    return Step()


def _waiting(kernel: NotebookKernel) -> bool:
    for t in (ConditionType.GPU_UNAVAILABLE, ConditionType.CAPACITY_REQUESTED):
        c = st.get_condition(kernel.status.conditions, t)
        if c is not None and c.status == ConditionStatus.TRUE:
            return True
    return False


class ScaleIn:
    """Runs a pass at most every `interval_seconds`, from whichever reconcile calls `maybe_run`."""

    def __init__(
        self,
        kube: Kube,
        cfg: ScaleInConfig,
        node_selector: Mapping[str, str],
        post: Callable[[Obj, st.Event], None],
        clock: Callable[[], datetime],
    ) -> None:
        self.kube, self.cfg, self.node_selector, self.post, self.clock = kube, cfg, node_selector, post, clock
        self._lock = threading.Lock()
        self._last = float("-inf")

    def maybe_run(self) -> None:
        if not self.cfg.enabled or time.monotonic() - self._last < self.cfg.interval_seconds:
            return
        if not self._lock.acquire(blocking=False):
            return  # another thread runs a pass now
        try:
            self._last = time.monotonic()
            self.run()
        except Exception:  # scale-in is an optimisation: never fail the reconcile that called it
            log.exception("scale-in pass failed; the next one retries")
        finally:
            self._lock.release()

    def run(self) -> Step:
        pool_selector = naming.label_selector(dict(self.node_selector))
        pool = self.kube.list_nodes(pool_selector)
        eligible = {o["metadata"]["name"]: o for o in self.kube.list_nodes(f"{pool_selector},{self.cfg.selector}")}
        raw_replicas = self.kube.list_custom_all("KernelReplica")
        views = migration.node_views(pool, self.kube.list_all_pods(migration.replica_pods_selector()), raw_replicas)
        kernels = {
            (o["metadata"].get("namespace"), o["metadata"]["name"]): (
                NotebookKernel.model_validate(o),
                st.parse_time(o["metadata"].get("creationTimestamp")),
            )
            for o in self.kube.list_custom_all("NotebookKernel")
        }
        by_kernel: dict[tuple[str | None, str], list[KernelReplica]] = {}
        for r in map(KernelReplica.model_validate, raw_replicas):
            by_kernel.setdefault((r.metadata.namespace, r.spec.kernel_name), []).append(r)
        now = self.clock()
        residents: dict[str, list[drain.Resident]] = {}
        idle_s: dict[str, float] = {}
        waiting = False
        for key, (k, created) in kernels.items():
            waiting = waiting or _waiting(k)
            members = tuple(migration.member(r) for r in by_kernel.get(key, []))
            req = ReplicaRequest(f"{key[0]}/{key[1]}", k.spec.resources.gpus, k.spec.replicas)
            last = k.status.last_activity or created or now
            for where in {m.node for m in members if m.node}:
                residents.setdefault(where, []).append(drain.Resident(req, members))
                idle_s[where] = min(idle_s.get(where, float("inf")), (now - last).total_seconds())
        step = decide(eligible, views, residents, idle_s, waiting, self.cfg, now.timestamp())
        for name in step.untaint:
            if self._set_taints(eligible[name], taints_without(eligible[name])):
                log.info("scale-in: node %s given back (%s)", name, step.why)
        if step.taint is not None:
            chosen = eligible[step.taint]
            if self._set_taints(chosen, taints_with(chosen, now.timestamp())):
                n = len(residents.get(step.taint, []))
                msg = f"emptying node {step.taint} for the autoscaler: {step.why}; {n} replica(s) move off"
                log.info("scale-in: %s", msg)
                self.post(chosen, st.Event("Normal", "ScaleIn", msg))
        return step

    def _set_taints(self, node: Obj, taints: list[dict[str, Any]]) -> bool:
        """Write the node's taints if nobody changed the node since it was read (its
        resourceVersion): an autoscaler adds its own taints to the same list."""
        try:
            self.kube.set_node_taints(node["metadata"]["name"], node["metadata"].get("resourceVersion"), taints)
            return True
        except Conflict:
            return False  # the next pass reads it again

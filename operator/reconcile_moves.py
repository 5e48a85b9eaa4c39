"""The kernel reconcile's moves: migrating a replica when the kernel needs one, and asking the
autoscaler for nodes when no node can take it. Part of Reconciler (reconcile.py)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from notebookos.api import ConditionStatus, ConditionType, KernelReplica, NotebookKernel
from notebookos.policy.placement import DEFAULT_MAX_SUBSCRIPTION_RATIO

from . import capacity, migration, naming, scaling
from . import status as st
from .capacity import CapacityConfig
from .config import OperatorConfig
from .kube import Kube, Obj, Refused, owned_by
from .metrics import KernelMetrics

log = logging.getLogger(__name__)


class Moves:
    kube: Kube
    cfg: OperatorConfig
    capacity: CapacityConfig
    metrics: KernelMetrics | None
    post: Callable[[Obj, st.Event], None]

    def _migrate(
        self,
        kernel: NotebookKernel,
        obj: Obj,
        replicas: list[KernelReplica],
        moving: dict[int, migration.Move],
        conds: list[Any],
        now: datetime,
    ) -> tuple[list[Any], str | None]:
        """Start a move if the kernel needs one (migration.decide); the Migrating condition says
        what is under way, or why nothing can move. Also returns that why (None if something moves
        or nothing needs to)."""
        ns, name = kernel.metadata.namespace or "", kernel.metadata.name or ""
        gen = kernel.metadata.generation
        if moving:
            rid, m = next(iter(sorted(moving.items())))
            r = next((x for x in replicas if x.spec.replica_id == rid), None)
            source = f" from {r.status.node_name}" if r is not None and r.status.node_name != m.target else ""
            msg = f"moving replica {rid}{source} to {m.target}: {m.reason}"
            return (
                st.set_condition(conds, ConditionType.MIGRATING, ConditionStatus.TRUE, "Moving", msg, now, gen),
                None,
            )
        gpu = st.get_condition(kernel.status.conditions, ConditionType.GPU_UNAVAILABLE)
        draining = any(
            (c := st.get_condition(r.status.conditions, ConditionType.NODE_DRAINING)) is not None
            and c.status == ConditionStatus.TRUE
            for r in replicas
        )
        decision: migration.Decision | str | None = None
        if draining or (gpu is not None and gpu.status == ConditionStatus.TRUE):
            # Only the nodes its pods may go to (the GPU pool's selector).
            pool = self.kube.list_nodes(naming.label_selector(dict(self.cfg.node_selector)))
            nodes = migration.node_views(
                pool,
                self.kube.list_all_pods(migration.replica_pods_selector()),
                self.kube.list_custom_all("KernelReplica"),
            )
            rows = [(r, None, r.status.last_migration) for r in replicas]
            decision = migration.decide(kernel, rows, nodes, DEFAULT_MAX_SUBSCRIPTION_RATIO, now)
        if isinstance(decision, migration.Decision):
            d = decision
            self.kube.patch_annotations(
                "KernelReplica", ns, naming.replica_name(name, d.replica), migration.move_annotations(d, now)
            )
            msg = f"moving replica {d.replica} from {d.source} to {d.target}: {d.reason}"
            log.info("kernel %s/%s: %s", ns, name, msg)
            self.post(obj, st.Event("Normal", "MigrationStarted", msg))
            return (
                st.set_condition(conds, ConditionType.MIGRATING, ConditionStatus.TRUE, "Moving", msg, now, gen),
                None,
            )
        if isinstance(decision, str):
            old = st.get_condition(conds, ConditionType.MIGRATING)
            if old is None or old.message != decision:
                self.post(obj, st.Event("Warning", "NoMigrationTarget", decision))
            conds = st.set_condition(
                conds, ConditionType.MIGRATING, ConditionStatus.FALSE, "NoTarget", decision, now, gen
            )
            return conds, decision
        return (
            st.set_condition(conds, ConditionType.MIGRATING, ConditionStatus.FALSE, "NotNeeded", "", now, gen),
            None,
        )

    def _scale_out(
        self,
        kernel: NotebookKernel,
        obj: Obj,
        owner: Obj,
        replicas: list[KernelReplica],
        no_target: str | None,
        moving: dict[int, migration.Move],
        conds: list[Any],
        now: datetime,
    ) -> list[Any]:
        """Capacity requests for what no node can take (scaling.py); the CapacityRequested
        condition, Events and the pending-demand gauge say so."""
        ns, name, gen = kernel.metadata.namespace or "", kernel.metadata.name or "", kernel.metadata.generation
        cap = self.capacity
        pool_memory = None
        if kernel.spec.resources.gpu_memory is not None and (no_target or scaling.unplaced(replicas)):
            pool = self.kube.list_nodes(naming.label_selector(dict(self.cfg.node_selector)))
            mems = [v.gpu_memory_bytes for v in migration.node_views(pool, [], []).values() if v.gpu_memory_bytes]
            pool_memory = max(mems, default=None)
        want = scaling.demand(kernel, replicas, no_target, cap, pool_memory)
        if self.metrics:
            self.metrics.pending_gpus.labels(ns, name).set(want.nodes * kernel.spec.resources.gpus)
        asked = st.get_condition(conds, ConditionType.CAPACITY_REQUESTED)
        if want.nodes == 0 and not want.impossible and (asked is None or asked.status != ConditionStatus.TRUE):
            # Requests are made only where the condition is set True: none to look for (this runs
            # on every reconcile of every kernel, so it must not list pods).
            return st.set_condition(
                conds, ConditionType.CAPACITY_REQUESTED, ConditionStatus.FALSE, "NotNeeded", "", now, gen
            )
        have = [p for p in self.kube.list_pods(ns, capacity.selector(name)) if owned_by(p, kernel.metadata.uid or "")]
        if want.nodes == 0:
            keep = scaling.held(have, (m.target for m in moving.values())) if not want.impossible else []
            for p in have:
                if p not in keep:
                    self.kube.delete_pod(ns, p["metadata"]["name"], force=True)
            if keep:
                on = ", ".join(sorted(p["spec"]["nodeName"] for p in keep))
                msg = f"a GPU node arrived ({on}); its request holds it until the replica moving there is placed"
                return st.set_condition(
                    conds, ConditionType.CAPACITY_REQUESTED, ConditionStatus.TRUE, "Arrived", msg, now, gen
                )
            if want.impossible:
                old = st.get_condition(conds, ConditionType.CAPACITY_REQUESTED)
                if old is None or old.message != want.impossible:
                    self.post(obj, st.Event("Warning", "NoNodeTypeFits", f"{want.why}: {want.impossible}"))
                return st.set_condition(
                    conds, ConditionType.CAPACITY_REQUESTED, ConditionStatus.FALSE, "NoNodeTypeFits",
                    want.impossible, now, gen,
                )  # fmt: skip
            return st.set_condition(
                conds, ConditionType.CAPACITY_REQUESTED, ConditionStatus.FALSE, "NotNeeded", "", now, gen
            )
        in_cluster = len(self.kube.list_all_pods(capacity.selector()))
        room = capacity.allowed(want.nodes, len(have), in_cluster, cap)
        names = {p["metadata"]["name"] for p in have}
        made: list[str] = []
        for i in range(cap.max_per_kernel):
            if len(made) >= room:
                break
            if capacity.pod_name(name, i) not in names:
                pod = capacity.capacity_pod(kernel, owner, i, cap)
                try:
                    if self.kube.create(pod) is not None:
                        made.append(pod["metadata"]["name"])
                except Refused as exc:
                    # E.g. no PriorityClass (the chart makes it): the kernel's status still says
                    # why it waits, and what stopped the request.
                    msg = f"cannot ask the autoscaler for {want.nodes} GPU node(s) ({want.why}): {exc}"
                    old = st.get_condition(conds, ConditionType.CAPACITY_REQUESTED)
                    if old is None or old.message != msg:
                        self.post(obj, st.Event("Warning", "CapacityRequestRefused", msg))
                    return st.set_condition(
                        conds, ConditionType.CAPACITY_REQUESTED, ConditionStatus.FALSE, "Refused", msg, now, gen
                    )
        pending = len(have) + len(made)
        msg = (
            f"asked the autoscaler for {want.nodes} GPU node(s) of {cap.gpus_per_node} GPUs ({want.why}); "
            f"{pending} capacity request pod(s) pending"
        )
        if made:
            self.post(obj, st.Event("Normal", "CapacityRequested", msg))
        return st.set_condition(
            conds, ConditionType.CAPACITY_REQUESTED, ConditionStatus.TRUE, "Requested", msg, now, gen
        )

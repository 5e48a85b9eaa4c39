"""Level-triggered reconciliation: read what exists, create what is missing, write the status the
cluster implies. Called by the kopf handlers on any event of a kernel, replica, pod or node.

Nothing is remembered between calls: names are deterministic and every decision is made from the
objects in the API server, so an operator restarted at any point picks up where it stopped.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import threading
from collections.abc import Callable, Hashable
from datetime import UTC, datetime
from typing import Any

from notebookos import labels
from notebookos.api import (
    ConditionStatus,
    ConditionType,
    KernelPhase,
    KernelReplica,
    NotebookKernel,
    NotebookKernelStatus,
    ReplicaPhase,
    owners,
)
from notebookos.policy import hibernation

from . import builders, cache, hibernate, migration, naming, router_control
from . import status as st
from .capacity import CapacityConfig
from .config import OperatorConfig
from .kube import Conflict, Kube, Obj, owned_by
from .metrics import KernelMetrics, KernelSample
from .reconcile_moves import Moves
from .repoint import Repoints
from .scale_in import ScaleIn, ScaleInConfig

log = logging.getLogger(__name__)

PostEvent = Callable[[Obj, st.Event], None]
ATTEMPTS = 5


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _deleting(obj: Obj) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


class Reconciler(Moves):
    def __init__(
        self,
        kube: Kube,
        cfg: OperatorConfig,
        post: PostEvent,
        clock: Callable[[], datetime] = utcnow,
        metrics: KernelMetrics | None = None,
        capacity: CapacityConfig | None = None,
        scale_in: ScaleInConfig | None = None,
    ) -> None:
        self.kube, self.cfg, self.post, self.clock, self.metrics = kube, cfg, post, clock, metrics
        self.capacity = capacity or CapacityConfig.from_env()
        self.scale_in = ScaleIn(kube, scale_in or ScaleInConfig.from_env(os.environ), cfg.node_selector, post, clock)
        # Mutual exclusion only (one reconcile per object at a time inside this process); no state.
        self._guard = threading.Lock()
        self._locks: dict[Hashable, threading.Lock] = {}
        self._waiting: dict[tuple[Hashable, Hashable], threading.Event] = {}
        self._timers: dict[Hashable, threading.Timer] = {}
        # A cache, not state: the kernels whose fixed children (Secret, Services, PDB, RBAC) this
        # process has made or seen, with their router Service. Event-driven reconciles skip those
        # reads (most of a kernel's reconciles come from its replicas' and pods' events); the resync
        # timer's reconcile (verify) reads them all again, so a deleted child is made again.
        self._made: dict[tuple[str, str], tuple[str, Obj]] = {}
        self.hibernator = hibernate.Hibernator(kube, cfg)
        self.repoints = Repoints()

    def _lock(self, key: Hashable) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _retrying(self, key: Hashable, fn: Callable[[], None], variant: Hashable = None) -> None:
        # Coalesced: while a reconcile of an object runs, one more (of each variant) waits for it;
        # a third caller waits for that one's run instead of running again: it begins after the
        # third's call, so it reads the cluster after that caller's event too (a kernel's replicas
        # and pods send bursts of events, each asking for a reconcile). Every caller still returns
        # only after a reconcile that began after its call.
        waiting = (key, variant)
        with self._guard:
            turn = self._waiting.get(waiting)
            mine = turn is None
            if turn is None:
                turn = self._waiting[waiting] = threading.Event()
        if not mine:
            turn.wait()
            return
        try:
            with self._lock(key):
                with self._guard:
                    del self._waiting[waiting]  # from now on, a new caller waits for the next run
                for _ in range(ATTEMPTS):
                    try:
                        fn()
                        return
                    except Conflict:
                        continue  # someone wrote the object meanwhile: read again, decide again
                log.warning("gave up on %s after %d conflicting writes; the next event retries", key, ATTEMPTS)
        finally:
            turn.set()

    def _write_status(self, obj: Obj, old: Any, new: Any, events: list[st.Event]) -> bool:
        """Write the operator's fields of `new` that differ from `old` (owners.py: other writers'
        fields, and fields this version does not know, are never sent) and post `events` on the
        written object; whether it wrote."""
        stored = obj.get("status") or {}
        patch = owners.status_patch(obj["kind"], owners.OPERATOR, old.to_wire(), new.to_wire(), stored)
        if not patch:
            return False
        written = self.kube.patch_status(obj, patch)
        for event in events:
            self.post(written, event)
        return True

    # ------------------------------------------------------------------------------------------ kernel

    def kernel(self, ns: str, name: str, verify: bool = False) -> None:
        """Reconcile a kernel; `verify` (the resync) reads again what this process knows it made,
        and reads the API server, not the watch-fed cache."""
        with cache.direct() if verify else contextlib.nullcontext():
            self._retrying(("kernel", ns, name), lambda: self._kernel_once(ns, name, verify), verify)
        # Cluster-wide, rate-limited: kernel reconciles (events and resync timers) drive it, so it
        # runs only in the operator that acts (kopf peering) and needs no handler of its own.
        self.scale_in.maybe_run()

    def _kernel_once(self, ns: str, name: str, verify: bool) -> None:
        kube, cfg = self.kube, self.cfg
        obj = kube.get_custom("NotebookKernel", ns, name)
        if obj is None or _deleting(obj):
            self._made.pop((ns, name), None)
            if self.metrics:
                self.metrics.forget(ns, name)
            return  # children go with it through their ownerReferences
        kernel = NotebookKernel.model_validate(obj)
        if self.metrics:
            self.metrics.reconciles.labels("NotebookKernel").inc()
        now = self.clock()
        problem = naming.kernel_name_problem(name)
        if problem is not None:
            new = st.invalid_kernel_status(kernel, problem, now)
            self._write_status(obj, kernel.status, new, st.kernel_events(kernel.status, new))
            return
        owner = builders.owner_reference(obj)
        uid = kernel.metadata.uid or ""
        known = self._made.get((ns, name))
        if known is not None and known[0] == uid and not verify:
            service: Obj | None = known[1]
        else:
            service = self._children(kernel, owner)
            if service is not None:
                self._made[(ns, name)] = (uid, service)

        created = st.parse_time((obj.get("metadata") or {}).get("creationTimestamp")) or now
        decision = hibernation.decide(hibernate.view(kernel, created), now)
        if kernel.status.phase in hibernation.ASLEEP:
            if decision.action == hibernation.WAKE:
                new, event = self.hibernator.start_wake(kernel, decision.reason, now)
                self._write_status(obj, kernel.status, new, [event])  # its event brings the next reconcile
            else:
                self._write_status(obj, kernel.status, self.hibernator.asleep(kernel, now), [])
            return

        raw = [
            r
            for r in kube.list_custom("KernelReplica", ns, naming.label_selector({labels.KERNEL_LABEL: name}))
            if owned_by(r, kernel.metadata.uid or "")
        ]
        if kernel.status.phase == KernelPhase.WAKING:
            failed = self.hibernator.wake_failed(kernel, [KernelReplica.model_validate(r) for r in raw], now)
            if failed is not None:
                new, event = self.hibernator.roll_back(kernel, failed, now)
                self._write_status(obj, kernel.status, new, [event])
                return
        have = {int(r["spec"]["replicaId"]) for r in raw}
        for rid in range(1, kernel.spec.replicas + 1):
            if rid not in have:
                manifest = builders.kernel_replica(kernel, owner, rid, cfg)
                made = kube.create(manifest) or kube.get_custom("KernelReplica", ns, manifest["metadata"]["name"])
                if made is not None:
                    raw.append(made)
        replicas = [KernelReplica.model_validate(r) for r in raw]
        moving = {int(r["spec"]["replicaId"]): m for r in raw if (m := migration.move_of(r)) is not None}
        addresses = builders.peer_addresses(replicas)
        for r in replicas:
            m = moving.get(r.spec.replica_id)
            if m is not None and r.status.node_name != m.target:
                # Until its new pod is on the target, the moving replica has no address to give: the
                # new container must not start with the old one's.
                addresses.pop(r.spec.replica_id, None)

        peers = builders.peers_configmap(kernel, owner, addresses, cfg)
        current = kube.get("ConfigMap", ns, naming.peers_configmap_name(name))
        if current is None:
            kube.create(peers)
        elif (have_data := current.get("data") or {}) != peers["data"]:
            # A merge patch removes a key given as null.
            removed: dict[str, str | None] = {k: None for k in have_data if k not in peers["data"]}
            kube.patch_configmap_data(ns, naming.peers_configmap_name(name), {**peers["data"], **removed})

        complete = set(addresses) >= set(range(1, kernel.spec.replicas + 1))
        router = self._router(kernel, owner, builders.router_members(addresses, cfg) if complete else None)
        new = st.kernel_status(kernel, replicas, router, service, cfg, now)
        conds, no_target = self._migrate(kernel, obj, replicas, moving, new.conditions, now)
        conds = self._scale_out(kernel, obj, owner, replicas, no_target, moving, conds, now)
        new = new.model_copy(update={"conditions": conds})
        new, sleep_event = self._hibernation(kernel, replicas, new, decision, now)
        events = [*st.kernel_events(kernel.status, new), *([sleep_event] if sleep_event else [])]
        self._write_status(obj, kernel.status, new, events)
        if new.phase == KernelPhase.HIBERNATING:
            self.hibernator.remove_replicas(kernel)  # after the checkpoint is in the status
        if self.metrics:
            sample = KernelSample(kernel.spec.resources.gpus, created, new.gpu_seconds_bound, str(new.phase))
            self.metrics.observe(ns, name, sample)

    def _hibernation(
        self,
        kernel: NotebookKernel,
        replicas: list[KernelReplica],
        new: NotebookKernelStatus,
        decision: hibernation.Decision,
        now: datetime,
    ) -> tuple[NotebookKernelStatus, st.Event | None]:
        """A waking kernel's progress, or a serving kernel's checkpoint when it is due; and when
        to look again (the idle deadline, a refused checkpoint) if no event comes first."""
        ns, name = kernel.metadata.namespace or "", kernel.metadata.name or ""

        def again() -> None:
            self.kernel(ns, name)

        if kernel.status.phase == KernelPhase.WAKING:
            return self.hibernator.waking(kernel, replicas, new, now)
        if decision.action == hibernation.HIBERNATE:
            out, event = self.hibernator.hibernate(kernel, new, decision.reason, now)
            why = st.get_condition(out.conditions, ConditionType.HIBERNATED)
            if out.phase != KernelPhase.HIBERNATING and (why is None or why.reason != "NoStore"):
                # Busy, or the store failed: try again soon. With no store, nothing changes until
                # the kernel's spec (an event) or the operator's configuration (a restart) does.
                self._wake_up(hibernate.RETRY_SECONDS, ("hibernate", ns, name), again)
            return out, event
        if decision.due is not None:
            self._wake_up(max(0.0, (decision.due - now).total_seconds()), ("hibernate", ns, name), again)
        return new, None

    def _repoint_router(self, kernel: NotebookKernel, pod: Obj, moved: dict[int, tuple[str, str | None]]) -> bool:
        """Tell the live router the moved replicas' new addresses (builders.moved_members); False if
        it cannot be reached."""
        endpoint = self.hibernator.router_endpoint(kernel, pod) if moved else None  # its IP, if live; the key
        return endpoint is not None and router_control.update_peers(*endpoint, moved)

    def _children(self, kernel: NotebookKernel, owner: Obj) -> Obj | None:
        """Make what a kernel has once (Secret, Services, PDB, its RBAC) where missing; returns
        the router Service."""
        kube, cfg = self.kube, self.cfg
        ns, name = kernel.metadata.namespace or "", kernel.metadata.name or ""
        if not kube.exists("Secret", ns, naming.secret_name(name)):
            # Made once; a second create after a restart gets 409 and keeps the first key.
            kube.create(builders.hmac_secret(kernel, owner, builders.new_hmac_key()))
        service = kube.get("Service", ns, naming.service_name(name))
        if service is None:
            service = kube.create(builders.router_service(kernel, owner, cfg)) or kube.get(
                "Service", ns, naming.service_name(name)
            )
        if not kube.exists("Service", ns, naming.headless_service_name(name)):
            kube.create(builders.headless_service(kernel, owner, cfg))
        if not kube.exists("PodDisruptionBudget", ns, naming.pdb_name(name)):
            kube.create(builders.disruption_budget(kernel, owner))
        if not cfg.kernel_service_account:
            for manifest in (
                builders.kernel_service_account(kernel, owner),
                builders.kernel_role(kernel, owner),
                builders.kernel_role_binding(kernel, owner),
            ):
                if not kube.exists(manifest["kind"], ns, manifest["metadata"]["name"]):
                    kube.create(manifest)
        return service

    def _router(self, kernel: NotebookKernel, owner: Obj, members: str | None) -> Obj | None:
        """The router pod, made once every replica has an address (`members`), and made again when
        the replicas have moved: the router's replica addresses are fixed in its environment."""
        kube, ns, name = self.kube, kernel.metadata.namespace or "", kernel.metadata.name or ""
        pod_name = naming.router_pod_name(name)
        pod = kube.get("Pod", ns, pod_name)
        if pod is not None and not owned_by(pod, kernel.metadata.uid or ""):
            return None  # left over from an earlier kernel of the same name; the GC removes it
        if pod is not None:
            if _deleting(pod):
                return None
            node = str((pod.get("spec") or {}).get("nodeName") or "")
            node_gone = bool(node) and not kube.node_exists(node)
            made_for = ((pod.get("metadata") or {}).get("annotations") or {}).get(naming.ROUTER_MEMBERS_ANNOTATION)
            moved = members is not None and made_for != members
            changes = builders.moved_members(made_for, members or "", self.cfg.raft_port)
            if moved and not node_gone and st.pod_is_live(pod) and changes is not None:
                # Re-pointed live, so connected clients keep their connection (repoint.py: off this
                # thread; not ready meanwhile); the annotation records the members it now has.
                live, told = pod, changes
                ok = self.repoints.outcome(
                    (ns, name),
                    members or "",
                    lambda: self._repoint_router(kernel, live, told),
                    lambda: self.kernel(ns, name),
                )
                if ok is None:
                    return None
                if ok:
                    log.info("router %s/%s re-pointed at the moved replicas (%s)", ns, pod_name, members)
                    kube.patch_annotations("Pod", ns, pod_name, {naming.ROUTER_MEMBERS_ANNOTATION: members})
                    return pod
            if node_gone or moved or not st.pod_is_live(pod):
                log.info("replacing router %s/%s (node gone: %s, replicas moved: %s)", ns, pod_name, node_gone, moved)
                kube.delete_pod(ns, pod_name, force=node_gone)
                return None
            return pod
        if members is None:
            return None  # not every replica has an address yet
        made = kube.create(builders.router_pod(kernel, owner, members, self.cfg))
        return made or kube.get("Pod", ns, pod_name)

    # ------------------------------------------------------------------------------------------ replica

    def replica(self, ns: str, name: str, verify: bool = False) -> None:
        with cache.direct() if verify else contextlib.nullcontext():
            self._retrying(("replica", ns, name), lambda: self._replica_once(ns, name), verify)

    def _replica_once(self, ns: str, name: str) -> None:
        kube = self.kube
        obj = kube.get_custom("KernelReplica", ns, name)
        if obj is None or _deleting(obj):
            return
        replica = KernelReplica.model_validate(obj)
        if self.metrics:
            self.metrics.reconciles.labels("KernelReplica").inc()
        kobj = kube.get_custom("NotebookKernel", ns, replica.spec.kernel_name)
        if kobj is None or _deleting(kobj):
            return  # the garbage collector removes the replica with its kernel
        kernel = NotebookKernel.model_validate(kobj)
        if kernel.status.phase in hibernation.ASLEEP:
            return  # its replicas are going (hibernate.py): no pod is made for them
        rid = replica.spec.replica_id
        selector = naming.label_selector(
            {**naming.replica_selector(replica.spec.kernel_name), labels.REPLICA_ID_LABEL: str(rid)}
        )
        pods = [p for p in kube.list_pods(ns, selector) if owned_by(p, replica.metadata.uid or "")]
        nodes = {n for p in pods if (n := (p.get("spec") or {}).get("nodeName"))}
        # One read per node of its pods: whether it still exists, and whether it is being drained.
        node_objs = {n: kube.get_node(n) for n in nodes}
        existing = {n for n, o in node_objs.items() if o is not None}
        draining = {n for n, o in node_objs.items() if o is not None and migration.draining(o)}
        now = self.clock()
        move = migration.move_of(obj)
        plan, moving = migration.plan(
            replica.status, pods, existing, now, move, float(self.cfg.migration_timeout_seconds)
        )
        for pod_name in plan.delete:
            pod = next(p for p in pods if p["metadata"]["name"] == pod_name)
            node = (pod.get("spec") or {}).get("nodeName")
            kube.delete_pod(ns, pod_name, force=bool(node) and node not in existing)
        current = plan.current
        incarnation = st.pod_incarnation(current) if current is not None else replica.status.incarnation
        if plan.create_incarnation is not None:
            incarnation = plan.create_incarnation
            if incarnation > 1:
                # The membership is incomplete until the new pod has an address: withdraw it first,
                # so that the new container cannot start with this replica's old address.
                kube.drop_configmap_key(ns, naming.peers_configmap_name(replica.spec.kernel_name), naming.PEERS_KEY)
            manifest = builders.replica_pod(kernel, obj, incarnation, self.cfg, node=plan.create_on)
            made = kube.create(manifest) or kube.get("Pod", ns, manifest["metadata"]["name"])
            if plan.current is None:
                current = made
            else:
                # A move: the old pod is still the replica (and its incarnation), the new one waits.
                incarnation = st.pod_incarnation(plan.current)
        if plan.backoff > 0 and plan.failed is not None:
            # Report the failed pod and come back when the backoff is over. The thread timer is only
            # an early wake-up: the resync timer (handlers/resync.py) comes back here in any case,
            # after a restart too.
            new = st.backoff_status(replica, plan.failed, incarnation, plan.backoff, now)
            self._wake_up(plan.backoff, ("replica", ns, name), lambda: self.replica(ns, name))
        else:
            new = st.replica_status(replica, current, incarnation, now)
        # The kernel reconcile reads this to drain (no node reads of its own on every reconcile).
        on_drained = bool(new.node_name) and new.node_name in draining
        new = new.model_copy(
            update={
                "conditions": st.set_condition(
                    new.conditions,
                    ConditionType.NODE_DRAINING,
                    ConditionStatus.TRUE if on_drained else ConditionStatus.FALSE,
                    "Draining" if on_drained else "NodeSchedulable",
                    f"node {new.node_name} is cordoned or being removed" if on_drained else "",
                    now,
                    replica.metadata.generation,
                )
            }
        )
        if current is not None and st.pod_is_live(current):
            want = builders.disruption_annotations(replica.status.gpu_binding is not None)
            have = (current.get("metadata") or {}).get("annotations") or {}
            if any(have.get(k) != v for k, v in want.items()):
                kube.patch_annotations("Pod", ns, current["metadata"]["name"], want)
        done = None
        if move is not None and moving is not None:
            new, done = self._move_status(replica, new, move, moving, now)
        events = st.replica_events(replica.status, new, plan.lost, name) if moving is None else []
        written = self._write_status(obj, replica.status, new, events)
        replaced = st.replacement_event(name, replica.status, new, plan.lost)
        if written and replaced is not None and moving is None:
            self.post(kobj, replaced)  # the kernel's own Events say which replica and why
        if done is not None:
            # Counted (in status) before the marks go: a restart in between counts it once.
            kube.patch_annotations("KernelReplica", ns, name, migration.move_annotations(None, now))
            self.post(kobj, done)
            self.kernel(ns, replica.spec.kernel_name)  # the condition and counter, now
            if self.metrics:
                self.metrics.migrations.labels("Completed" if done.reason == "MigrationCompleted" else "Failed").inc()

    def _move_status(
        self, replica: KernelReplica, new: Any, move: migration.Move, moving: str, now: datetime
    ) -> tuple[Any, st.Event | None]:
        """The replica's status during its move, and the Event that ends it (completed or failed)."""
        rid = replica.spec.replica_id
        if moving.startswith("failed"):
            why = moving.partition(": ")[2]
            where = replica.status.node_name
            msg = f"replica {rid} stays on {where}: its new pod was not placed on {move.target} ({why})"
            return new, st.Event("Warning", "MigrationFailed", msg)
        if moving == "placed" and new.phase == ReplicaPhase.READY:
            if replica.status.last_migration != move.since or move.since is None:
                new = new.model_copy(
                    update={"migrations": replica.status.migrations + 1, "last_migration": move.since or now}
                )
            took = f" in {(now - move.since).total_seconds():.0f} s" if move.since else ""
            msg = f"replica {rid} moved to {move.target}{took} ({move.reason})"
            return new, st.Event("Normal", "MigrationCompleted", msg)
        return new.model_copy(update={"phase": ReplicaPhase.MIGRATING}), None

    def _wake_up(self, delay: float, key: Hashable, fn: Callable[[], None]) -> None:
        with self._guard:
            if key in self._timers and self._timers[key].is_alive():
                return
            # In the handler's context, so that kopf's event posting works from the timer thread.
            timer = threading.Timer(delay + 0.5, contextvars.copy_context().run, args=(fn,))
            timer.daemon = True
            self._timers[key] = timer
        timer.start()

"""Level-triggered reconciliation: read what exists, create what is missing, write the status the
cluster implies. Called by the kopf handlers on any event of a kernel, replica, pod or node.

Nothing is remembered between calls: names are deterministic and every decision is made from the
objects in the API server, so an operator restarted at any point picks up where it stopped.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable, Hashable
from datetime import UTC, datetime
from typing import Any

from notebookos import labels
from notebookos.api import KernelReplica, NotebookKernel

from . import builders, naming
from . import status as st
from .config import OperatorConfig
from .kube import Conflict, Kube, Obj

log = logging.getLogger(__name__)

PostEvent = Callable[[Obj, st.Event], None]
ATTEMPTS = 5


def utcnow() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _deleting(obj: Obj) -> bool:
    return bool((obj.get("metadata") or {}).get("deletionTimestamp"))


def _owned_by(obj: Obj, uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


class Reconciler:
    def __init__(
        self, kube: Kube, cfg: OperatorConfig, post: PostEvent, clock: Callable[[], datetime] = utcnow
    ) -> None:
        self.kube, self.cfg, self.post, self.clock = kube, cfg, post, clock
        # Mutual exclusion only (one reconcile per object at a time inside this process); no state.
        self._guard = threading.Lock()
        self._locks: dict[Hashable, threading.Lock] = {}
        self._timers: dict[Hashable, threading.Timer] = {}

    def _lock(self, key: Hashable) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(key, threading.Lock())

    def _retrying(self, key: Hashable, fn: Callable[[], None]) -> None:
        with self._lock(key):
            for _ in range(ATTEMPTS):
                try:
                    fn()
                    return
                except Conflict:
                    continue  # someone wrote the object meanwhile: read again, decide again
            log.warning("gave up on %s after %d conflicting writes; the next event retries", key, ATTEMPTS)

    def _write_status(self, obj: Obj, old: Any, new: Any, events: list[st.Event]) -> None:
        if new.to_wire() == old.to_wire():
            return
        body = {**obj, "status": new.to_wire()}
        written = self.kube.replace_status(body)
        for event in events:
            self.post(written, event)

    # ------------------------------------------------------------------------------------------ kernel

    def kernel(self, ns: str, name: str) -> None:
        self._retrying(("kernel", ns, name), lambda: self._kernel_once(ns, name))

    def _kernel_once(self, ns: str, name: str) -> None:
        kube, cfg = self.kube, self.cfg
        obj = kube.get_custom("NotebookKernel", ns, name)
        if obj is None or _deleting(obj):
            return  # children go with it through their ownerReferences
        kernel = NotebookKernel.model_validate(obj)
        now = self.clock()
        problem = naming.kernel_name_problem(name)
        if problem is not None:
            new = st.invalid_kernel_status(kernel, problem, now)
            self._write_status(obj, kernel.status, new, st.kernel_events(kernel.status, new))
            return
        owner = builders.owner_reference(obj)

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

        raw = [
            r
            for r in kube.list_custom("KernelReplica", ns, naming.label_selector({labels.KERNEL_LABEL: name}))
            if _owned_by(r, kernel.metadata.uid or "")
        ]
        have = {int(r["spec"]["replicaId"]) for r in raw}
        for rid in range(1, kernel.spec.replicas + 1):
            if rid not in have:
                manifest = builders.kernel_replica(kernel, owner, rid, cfg)
                made = kube.create(manifest) or kube.get_custom("KernelReplica", ns, manifest["metadata"]["name"])
                if made is not None:
                    raw.append(made)
        replicas = [KernelReplica.model_validate(r) for r in raw]

        peers = builders.peers_configmap(kernel, owner, builders.peer_addresses(replicas), cfg)
        current = kube.get("ConfigMap", ns, naming.peers_configmap_name(name))
        if current is None:
            kube.create(peers)
        elif (have_data := current.get("data") or {}) != peers["data"]:
            # A merge patch removes a key given as null.
            removed: dict[str, str | None] = {k: None for k in have_data if k not in peers["data"]}
            kube.patch_configmap_data(ns, naming.peers_configmap_name(name), {**peers["data"], **removed})

        addresses = builders.peer_addresses(replicas)
        complete = set(addresses) >= set(range(1, kernel.spec.replicas + 1))
        router = self._router(kernel, owner, builders.router_members(addresses, cfg) if complete else None)
        new = st.kernel_status(kernel, replicas, router, service, cfg, now)
        self._write_status(obj, kernel.status, new, st.kernel_events(kernel.status, new))

    def _router(self, kernel: NotebookKernel, owner: Obj, members: str | None) -> Obj | None:
        """The router pod, made once every replica has an address (`members`), and made again when
        the replicas have moved: the router's replica addresses are fixed in its environment."""
        kube, ns, name = self.kube, kernel.metadata.namespace or "", kernel.metadata.name or ""
        pod_name = naming.router_pod_name(name)
        pod = kube.get("Pod", ns, pod_name)
        if pod is not None and not _owned_by(pod, kernel.metadata.uid or ""):
            return None  # left over from an earlier kernel of the same name; the GC removes it
        if pod is not None:
            if _deleting(pod):
                return None
            node = str((pod.get("spec") or {}).get("nodeName") or "")
            node_gone = bool(node) and not kube.node_exists(node)
            made_for = ((pod.get("metadata") or {}).get("annotations") or {}).get(naming.ROUTER_MEMBERS_ANNOTATION)
            moved = members is not None and made_for != members
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

    def replica(self, ns: str, name: str) -> None:
        self._retrying(("replica", ns, name), lambda: self._replica_once(ns, name))

    def _replica_once(self, ns: str, name: str) -> None:
        kube = self.kube
        obj = kube.get_custom("KernelReplica", ns, name)
        if obj is None or _deleting(obj):
            return
        replica = KernelReplica.model_validate(obj)
        kobj = kube.get_custom("NotebookKernel", ns, replica.spec.kernel_name)
        if kobj is None or _deleting(kobj):
            return  # the garbage collector removes the replica with its kernel
        kernel = NotebookKernel.model_validate(kobj)
        rid = replica.spec.replica_id
        selector = naming.label_selector(
            {**naming.replica_selector(replica.spec.kernel_name), labels.REPLICA_ID_LABEL: str(rid)}
        )
        pods = [p for p in kube.list_pods(ns, selector) if _owned_by(p, replica.metadata.uid or "")]
        nodes = {n for p in pods if (n := (p.get("spec") or {}).get("nodeName"))}
        existing = {n for n in nodes if kube.node_exists(n)}
        now = self.clock()
        plan = st.plan_replica_pods(replica.status, pods, existing, now)
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
            manifest = builders.replica_pod(kernel, obj, incarnation, self.cfg)
            current = kube.create(manifest) or kube.get("Pod", ns, manifest["metadata"]["name"])
        if plan.backoff > 0 and plan.failed is not None:
            # Report the failed pod and come back when the backoff is over. The timer is only a
            # wake-up: after a restart the initial listing brings the operator here again.
            new = st.backoff_status(replica, plan.failed, incarnation, plan.backoff, now)
            self._wake_up(plan.backoff, ("replica", ns, name), lambda: self.replica(ns, name))
        else:
            new = st.replica_status(replica, current, incarnation, now)
        self._write_status(obj, replica.status, new, st.replica_events(replica.status, new, plan.lost))

    def _wake_up(self, delay: float, key: Hashable, fn: Callable[[], None]) -> None:
        with self._guard:
            if key in self._timers and self._timers[key].is_alive():
                return
            # In the handler's context, so that kopf's event posting works from the timer thread.
            timer = threading.Timer(delay + 0.5, contextvars.copy_context().run, args=(fn,))
            timer.daemon = True
            self._timers[key] = timer
        timer.start()

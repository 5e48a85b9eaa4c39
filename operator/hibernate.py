"""Hibernation in the operator: take the checkpoint (through the router), remove the replicas,
make them again on wake, roll a failed wake back. The decision itself is
notebookos.policy.hibernation's; this module carries it out and says so in the status.

Everything is read from the kernel's status, so an operator restarted mid-way goes on: a kernel
Hibernating finishes removing its replicas; one Waking goes on waking or is rolled back at its
deadline; a checkpoint asked twice (the first answer lost with the operator) is the same one,
because the router answers with the checkpoint it holds.
"""

from __future__ import annotations

import base64
import logging
from datetime import datetime
from typing import Any

from notebookos import labels
from notebookos.api import (
    Checkpoint,
    ConditionStatus,
    ConditionType,
    KernelPhase,
    KernelReplica,
    NotebookKernel,
    NotebookKernelStatus,
)
from notebookos.api.models import duration_seconds
from notebookos.kernel import contract as c
from notebookos.policy import hibernation as policy
from notebookos.policy.hibernation import size_text

from . import builders, capacity, naming, router_control
from . import status as st
from .config import OperatorConfig
from .kube import Kube, Obj, owned_by

log = logging.getLogger(__name__)

HIBERNATED = ConditionType.HIBERNATED.value
RETRY_SECONDS = 10.0  # a checkpoint refused (a cell runs) or failed (the store) is tried again


def view(kernel: NotebookKernel, created: datetime) -> policy.Kernel:
    s = kernel.status
    cond = st.get_condition(s.conditions, HIBERNATED)
    ready = st.get_condition(s.conditions, ConditionType.READY)
    # Idle from when it could first take a cell (made, or woken), not from when it was asked for.
    awake_since = created
    # (Ready is False while hibernated, so after a wake it counts from the wake's end.)
    if ready is not None and ready.status == ConditionStatus.TRUE and ready.last_transition_time:
        awake_since = max(awake_since, ready.last_transition_time)
    timeout = kernel.spec.idle_timeout
    return policy.Kernel(
        phase=str(s.phase),
        suspend=kernel.spec.suspend,
        idle_timeout=duration_seconds(timeout) if timeout else None,
        last_activity=s.last_activity,
        awake_since=awake_since,
        asleep_because=cond.reason if cond is not None and cond.status == ConditionStatus.TRUE else None,
        checkpoint=s.checkpoint.id if s.checkpoint else None,
        wake_request=s.wake_request,
        wake_handled=s.wake_handled,
    )


class Hibernator:
    def __init__(self, kube: Kube, cfg: OperatorConfig) -> None:
        self.kube, self.cfg = kube, cfg

    def _cond(
        self, kernel: NotebookKernel, status: ConditionStatus, reason: str, message: str, now: datetime
    ) -> list[Any]:
        return st.set_condition(
            kernel.status.conditions, HIBERNATED, status, reason, message, now, kernel.metadata.generation
        )

    # ------------------------------------------------------------------------------ going to sleep

    def hibernate(
        self, kernel: NotebookKernel, new: NotebookKernelStatus, reason: str, now: datetime
    ) -> tuple[NotebookKernelStatus, st.Event | None]:
        """Checkpoint a serving kernel: the status to write (Hibernating, or still serving with
        why not) and the Event to post (None: nothing new to say)."""
        name = kernel.metadata.name or ""
        old = st.get_condition(kernel.status.conditions, HIBERNATED)

        def refused(why_reason: str, message: str, warn: bool) -> tuple[NotebookKernelStatus, st.Event | None]:
            conds = st.set_condition(
                new.conditions, HIBERNATED, ConditionStatus.FALSE, why_reason, message, now, kernel.metadata.generation
            )
            said = old is not None and old.reason == why_reason and old.message == message
            event = st.Event("Warning", "HibernationFailed", message) if warn and not said else None
            return new.model_copy(update={"conditions": conds}), event

        if builders.shared_store(kernel, self.cfg) is None:
            return refused(
                "NoStore",
                f"cannot hibernate ({reason.lower()}): the kernel has no spec.storage and the operator no "
                "checkpoint store (NOTEBOOKOS_CHECKPOINT_STORE), so its state has nowhere to go; it keeps running",
                True,
            )
        endpoint = self.router_endpoint(kernel)
        if endpoint is None:
            return refused("RouterUnreachable", "cannot hibernate yet: the router is not reachable", False)
        got = router_control.checkpoint(*endpoint)
        if isinstance(got, str):
            if c.BUSY in got:
                return refused("Busy", f"will hibernate ({reason.lower()}) once the running cell is done", False)
            return refused("CheckpointFailed", f"cannot hibernate: {got}; the kernel keeps running, nothing lost", True)
        ck = Checkpoint.model_validate({**got, "takenAt": now})
        why = "spec.suspend is true" if reason == policy.SUSPENDED else f"idle for {kernel.spec.idle_timeout}"
        msg = (
            f"{why}: saved {size_text(ck.bytes)} of state ({ck.variables} variables, {ck.cells} cells) "
            f"to {ck.url}; the replica pods are removed, the next request wakes the kernel"
        )
        log.info("kernel %s/%s hibernates: %s", kernel.metadata.namespace, name, msg)
        conds = st.set_condition(
            new.conditions, HIBERNATED, ConditionStatus.TRUE, reason, msg, now, kernel.metadata.generation
        )
        status = new.model_copy(update={"phase": KernelPhase.HIBERNATING, "conditions": conds, "checkpoint": ck})
        return status, st.Event("Normal", "Hibernating", msg)

    def asleep(self, kernel: NotebookKernel, now: datetime) -> NotebookKernelStatus:
        """A Hibernating or Hibernated kernel: its replicas go; Hibernated once none is left."""
        left = self.remove_replicas(kernel)
        conds = kernel.status.conditions
        cond = st.get_condition(conds, HIBERNATED)
        if kernel.spec.suspend and cond is not None and cond.reason != policy.SUSPENDED:
            # Asleep for idleness, now suspended too: it wakes when spec.suspend goes back to false.
            conds = self._cond(kernel, ConditionStatus.TRUE, policy.SUSPENDED, cond.message, now)
        asleep = "hibernated: " + (
            "set spec.suspend to false to wake it" if kernel.spec.suspend else "the next request wakes it"
        )
        conds = st.set_condition(
            conds, ConditionType.READY, ConditionStatus.FALSE, "Hibernated", asleep, now, kernel.metadata.generation
        )
        want = kernel.spec.replicas
        return kernel.status.model_copy(
            update={
                "phase": KernelPhase.HIBERNATING if left else KernelPhase.HIBERNATED,
                "conditions": conds,
                "replicas": 0,
                "ready_replicas": 0,
                "ready": f"0/{want}",
                "observed_generation": kernel.metadata.generation,
            }
        )

    def remove_replicas(self, kernel: NotebookKernel) -> int:
        """Delete the kernel's KernelReplicas (first, so nothing makes their pods again), then their
        pods; how many of either are left."""
        ns, name, uid = kernel.metadata.namespace or "", kernel.metadata.name or "", kernel.metadata.uid or ""
        selector = naming.label_selector({labels.KERNEL_LABEL: name})
        replicas = [r for r in self.kube.list_custom("KernelReplica", ns, selector) if owned_by(r, uid)]
        pods = self.kube.list_pods(ns, naming.label_selector(naming.replica_selector(name)))
        # A wake that could not place its replicas may have asked for nodes: no longer wanted.
        asked = [p for p in self.kube.list_pods(ns, capacity.selector(name)) if owned_by(p, uid)]
        if not (replicas or pods or asked):
            return 0  # gone already: every later reconcile of a hibernated kernel writes nothing
        # The membership goes with them: the next replicas must not start with these addresses,
        # and the router learns theirs anew (an empty record: reconcile._repoint_router).
        self.kube.drop_configmap_key(ns, naming.peers_configmap_name(name), naming.PEERS_KEY)
        router = self.kube.get("Pod", ns, naming.router_pod_name(name))
        if router is not None and owned_by(router, uid):
            self.kube.patch_annotations("Pod", ns, naming.router_pod_name(name), {naming.ROUTER_MEMBERS_ANNOTATION: ""})
        for r in replicas:
            self.kube.delete_custom("KernelReplica", ns, r["metadata"]["name"])
        for p in pods + asked:
            self.kube.delete_pod(ns, p["metadata"]["name"])
        return len(replicas) + len(pods)

    # ------------------------------------------------------------------------------ waking up

    def start_wake(self, kernel: NotebookKernel, why: str, now: datetime) -> tuple[NotebookKernelStatus, st.Event]:
        ck = kernel.status.checkpoint
        what = f"restoring {size_text(ck.bytes)} of state from {ck.url}" if ck else "no checkpoint"
        msg = f"waking ({why}): {what}"
        log.info("kernel %s/%s: %s", kernel.metadata.namespace, kernel.metadata.name, msg)
        status = kernel.status.model_copy(
            update={
                "phase": KernelPhase.WAKING,
                "conditions": self._cond(kernel, ConditionStatus.FALSE, "Waking", msg, now),
                "wake_handled": kernel.status.wake_request or kernel.status.wake_handled,
            }
        )
        return status, st.Event("Normal", "Waking", msg)

    @staticmethod
    def _woke_at(kernel: NotebookKernel, now: datetime) -> datetime:
        cond = st.get_condition(kernel.status.conditions, HIBERNATED)
        return cond.last_transition_time if cond is not None and cond.last_transition_time else now

    def wake_failed(self, kernel: NotebookKernel, replicas: list[KernelReplica], now: datetime) -> str | None:
        """Why a waking kernel's wake has failed (a replica cannot restore the checkpoint, or the
        deadline passed), else None. Asked before anything is made for it, so a failed wake makes
        nothing more."""
        broken = next((r for r in replicas if r.status.restore_error), None)
        if broken is not None:
            return f"replica {broken.spec.replica_id} could not restore the state: {broken.status.restore_error}"
        if (now - self._woke_at(kernel, now)).total_seconds() <= self.cfg.wake_timeout_seconds:
            return None
        ready = st.get_condition(kernel.status.conditions, ConditionType.READY)
        placed = st.get_condition(kernel.status.conditions, ConditionType.SCHEDULED)
        detail = "; ".join(x.message for x in (placed, ready) if x is not None and x.message)
        return f"the replicas were not ready within {self.cfg.wake_timeout_seconds} s ({detail})"

    def roll_back(self, kernel: NotebookKernel, why: str, now: datetime) -> tuple[NotebookKernelStatus, st.Event]:
        """The wake failed: its replicas go, the kernel stays hibernated with its checkpoint."""
        msg = f"the wake failed: {why}; the kernel stays hibernated with its state, the next request tries again"
        log.warning("kernel %s/%s: %s", kernel.metadata.namespace, kernel.metadata.name, msg)
        # Hibernated once they are gone (their deletion waits for finalizers): asleep() says so.
        left = self.remove_replicas(kernel)
        want = kernel.spec.replicas
        status = kernel.status.model_copy(
            update={
                "phase": KernelPhase.HIBERNATING if left else KernelPhase.HIBERNATED,
                "conditions": self._cond(kernel, ConditionStatus.TRUE, "WakeFailed", msg, now),
                "replicas": 0,
                "ready": f"0/{want}",
                "ready_replicas": 0,
            }
        )
        return status, st.Event("Warning", "WakeFailed", msg)

    def waking(
        self, kernel: NotebookKernel, replicas: list[KernelReplica], new: NotebookKernelStatus, now: datetime
    ) -> tuple[NotebookKernelStatus, st.Event | None]:
        """A waking kernel's status: Waking until every replica has restored the state and the
        router is ready, then Ready."""
        since = self._woke_at(kernel, now)
        # A ready pod is not yet a replica that restored the state: each reports itself once its
        # Raft group runs (a restore that fails reports restoreError instead: wake_failed).
        restored = all(r.status.last_heartbeat is not None and r.status.last_heartbeat >= since for r in replicas)
        if new.phase != KernelPhase.READY or not restored:
            return new.model_copy(update={"phase": KernelPhase.WAKING}), None
        msg = f"woke in {(now - since).total_seconds():.0f} s"
        conds = st.set_condition(
            new.conditions, HIBERNATED, ConditionStatus.FALSE, "Awake", msg, now, kernel.metadata.generation
        )
        return new.model_copy(update={"conditions": conds}), st.Event("Normal", "Woken", msg)

    # ------------------------------------------------------------------------------ the router

    def router_endpoint(self, kernel: NotebookKernel, pod: Obj | None = None) -> tuple[str, int, bytes] | None:
        """The live router's control address and the kernel's HMAC key (to sign requests); `pod`:
        the router pod if the caller has just read it."""
        ns, name = kernel.metadata.namespace or "", kernel.metadata.name or ""
        if pod is None:
            pod = self.kube.get("Pod", ns, naming.router_pod_name(name))
        ip = ((pod or {}).get("status") or {}).get("podIP")
        if pod is None or not ip or not st.pod_is_live(pod):
            return None
        secret = self.kube.get("Secret", ns, naming.secret_name(name))
        raw = ((secret or {}).get("data") or {}).get(naming.HMAC_SECRET_KEY)
        if not raw:
            return None
        return ip, self.cfg.router_port + labels.CHANNELS.index("control"), base64.b64decode(raw)

"""Who writes which status field. Each field has one writer; conditions have one writer per type.

Every writer sends a merge patch of its own fields only, so a field it does not know (another
writer's, or one added by a newer version) is never dropped or overwritten. docs/operator.md
("Status") shows this table; tests/operator/test_reconcile.py checks that it names every status
field of the models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .models import ConditionType

OPERATOR, ROUTER, REPLICA, BROKER = "operator", "router", "replica", "broker"

KERNEL_STATUS: dict[str, str] = {
    "phase": OPERATOR,
    "conditions": OPERATOR,  # by type: CONDITIONS
    "replicas": OPERATOR,
    "readyReplicas": OPERATOR,
    "ready": OPERATOR,
    "connection": OPERATOR,
    "migrations": OPERATOR,  # the sum of its replicas'
    "replacements": OPERATOR,
    "gpuSecondsBound": OPERATOR,  # the sum of its replicas', which the broker writes
    "observedGeneration": OPERATOR,
    "executor": ROUTER,
    "cells": ROUTER,
    "lastActivity": ROUTER,
    "checkpoint": OPERATOR,  # from the router's reply to its checkpoint request
    "wakeRequest": ROUTER,
    "wakeHandled": OPERATOR,
}

REPLICA_STATUS: dict[str, str] = {
    "phase": OPERATOR,
    "conditions": OPERATOR,
    "podName": OPERATOR,
    "nodeName": OPERATOR,
    "podIP": OPERATOR,
    "incarnation": OPERATOR,
    "migrations": OPERATOR,
    "lastMigration": OPERATOR,
    "observedGeneration": OPERATOR,
    "raft": REPLICA,
    "lastHeartbeat": REPLICA,
    "restoreError": REPLICA,
    "gpuBinding": BROKER,
    "gpuSecondsBound": BROKER,
}

STATUS: dict[str, dict[str, str]] = {"NotebookKernel": KERNEL_STATUS, "KernelReplica": REPLICA_STATUS}

# Condition types whose writer is not the operator (the rest are the operator's).
CONDITIONS: dict[str, str] = {ConditionType.GPU_UNAVAILABLE.value: ROUTER}


def status_patch(
    kind: str, writer: str, old: Mapping[str, Any], new: Mapping[str, Any], stored: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The merge patch of `writer`'s fields that turns status `old` into `new` (None removes a
    field); empty when nothing of its own changed. `stored` is the status as the server has it,
    where a field `old` holds only as a model default is missing: such a field is sent too.
    Other writers' fields are left out even if they differ: they are theirs to write. Conditions
    go whole (a merge patch replaces a list), so the writer must carry the other writers'
    conditions over, and write with the object's resourceVersion (compare-and-swap)."""
    owners = STATUS[kind]
    stored = old if stored is None else stored
    patch: dict[str, Any] = {}
    for key in owners.keys() & (old.keys() | new.keys()):
        if owners[key] != writer:
            continue
        if old.get(key) != new.get(key) or (key in new and key not in stored):
            patch[key] = new.get(key)
    return patch

"""An in-memory stand-in for operator/kube.py's `Kube`, for reconciler tests without a cluster.

It keeps objects as the API server returns them (dicts with metadata.resourceVersion), bumps the
version on every write, refuses a status patch whose resourceVersion is stale (Conflict, as the
server's 409), and can run a hook between the operator's read and its write, to stand for another
writer (the router, the broker) writing the same object meanwhile. The e2e tier runs the same
reconciler against the real API server; this one is for what is hard to time there.
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter
from collections.abc import Callable
from typing import Any

from notebookos.operator.cache import CACHED, index_entries, matches
from notebookos.operator.kube import Conflict, Obj

Key = tuple[str, str, str]  # kind, namespace, name


def _merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    """RFC 7386 JSON merge patch."""
    for k, v in patch.items():
        if v is None:
            into.pop(k, None)
        elif isinstance(v, dict) and isinstance(into.get(k), dict):
            _merge(into[k], v)
        else:
            into[k] = copy.deepcopy(v)


class FakeKube:
    def __init__(self) -> None:
        self.objects: dict[Key, Obj] = {}
        self._rv = itertools.count(1)
        self.status_patches: list[tuple[str, str, dict[str, Any]]] = []  # kind, name, the status sent
        self.before_status_write: Callable[[Obj], None] | None = None  # another writer, just in time
        self.reads: Counter[str] = Counter()  # API reads by kind, as the API server would count them
        self.watch = FakeWatch(self)

    # ------------------------------------------------------------------ helpers for tests

    def put(self, obj: Obj) -> Obj:
        obj = copy.deepcopy(obj)
        meta = obj.setdefault("metadata", {})
        meta.setdefault("namespace", "")
        meta.setdefault("uid", f"uid-{obj['kind']}-{meta['name']}")
        meta.setdefault("labels", {})
        meta["resourceVersion"] = str(next(self._rv))
        self.objects[(obj["kind"], meta["namespace"], meta["name"])] = obj
        return copy.deepcopy(obj)

    def merge(self, kind: str, ns: str, name: str, patch: dict[str, Any]) -> Obj:
        """Another writer's merge patch (no resourceVersion: it never conflicts)."""
        obj = self.objects[(kind, ns, name)]
        _merge(obj, patch)
        obj["metadata"]["resourceVersion"] = str(next(self._rv))
        return copy.deepcopy(obj)

    def of_kind(self, kind: str, ns: str | None = None) -> list[Obj]:
        return [copy.deepcopy(o) for (k, n, _), o in sorted(self.objects.items()) if k == kind and ns in (None, n)]

    # ------------------------------------------------------------------ the Kube interface

    def get_custom(self, kind: str, ns: str, name: str) -> Obj | None:
        return self.get(kind, ns, name)

    def list_custom(self, kind: str, ns: str, selector: str) -> list[Obj]:
        self.reads[kind] += 1
        return [o for o in self.of_kind(kind, ns) if matches(o["metadata"].get("labels") or {}, selector)]

    def list_custom_all(self, kind: str) -> list[Obj]:
        self.reads[kind] += 1
        return self.of_kind(kind)

    def delete_custom(self, kind: str, ns: str, name: str) -> None:
        self.objects.pop((kind, ns, name), None)

    def patch_annotations(self, kind: str, ns: str, name: str, annotations: dict[str, str | None]) -> Obj:
        return self.merge(kind, ns, name, {"metadata": {"annotations": annotations}})

    def patch_status(self, obj: Obj, status: dict[str, Any]) -> Obj:
        meta = obj["metadata"]
        if self.before_status_write is not None:
            hook, self.before_status_write = self.before_status_write, None
            hook(obj)
        stored = self.objects[(obj["kind"], meta["namespace"], meta["name"])]
        if stored["metadata"]["resourceVersion"] != meta["resourceVersion"]:
            raise Conflict(meta["name"])
        self.status_patches.append((obj["kind"], meta["name"], copy.deepcopy(status)))
        return self.merge(obj["kind"], meta["namespace"], meta["name"], {"status": status})

    def create(self, manifest: Obj) -> Obj | None:
        meta = manifest["metadata"]
        if (manifest["kind"], meta["namespace"], meta["name"]) in self.objects:
            return None
        return self.put(manifest)

    def get(self, kind: str, ns: str, name: str) -> Obj | None:
        self.reads[kind] += 1
        obj = self.objects.get((kind, ns, name))
        return copy.deepcopy(obj) if obj is not None else None

    def exists(self, kind: str, ns: str, name: str) -> bool:
        self.reads[kind] += 1
        return (kind, ns, name) in self.objects

    def patch_configmap_data(self, ns: str, name: str, data: dict[str, str | None]) -> None:
        self.merge("ConfigMap", ns, name, {"data": data})

    def drop_configmap_key(self, ns: str, name: str, key: str) -> None:
        if ("ConfigMap", ns, name) in self.objects:
            self.merge("ConfigMap", ns, name, {"data": {key: None}})

    def list_pods(self, ns: str, selector: str) -> list[Obj]:
        return self.list_custom("Pod", ns, selector)

    def list_all_pods(self, selector: str) -> list[Obj]:
        self.reads["Pod"] += 1
        return [o for o in self.of_kind("Pod") if matches(o["metadata"].get("labels") or {}, selector)]

    def list_nodes(self, selector: str = "") -> list[Obj]:
        self.reads["Node"] += 1
        return [o for o in self.of_kind("Node") if matches(o["metadata"].get("labels") or {}, selector)]

    def set_node_taints(self, name: str, resource_version: str | None, taints: list[Obj]) -> None:
        self.merge("Node", "", name, {"spec": {"taints": taints}})

    def list_pods_on_node(self, node: str, selector: str) -> list[Obj]:
        return [p for p in self.list_all_pods(selector) if (p.get("spec") or {}).get("nodeName") == node]

    def delete_pod(self, ns: str, name: str, force: bool = False) -> None:
        self.objects.pop(("Pod", ns, name), None)

    def get_node(self, name: str) -> Obj | None:
        return self.get("Node", "", name)

    def node_exists(self, name: str) -> bool:
        return self.exists("Node", "", name)


class FakeWatch:
    """What the operator's watches have shown (a cache.View): a snapshot of the FakeKube, taken by
    `sync`, so that a test decides how far each kind's watch lags the objects."""

    def __init__(self, kube: FakeKube) -> None:
        self.kube = kube
        self.entries: dict[str, dict[tuple[str, str, str], list[Obj]]] = {}

    def sync(self, *kinds: str) -> None:
        """Deliver every change so far of these kinds (all the cached kinds by default)."""
        for kind in kinds or CACHED:
            index: dict[tuple[str, str, str], list[Obj]] = {}
            for obj in self.kube.of_kind(kind):
                for key, value in index_entries(obj).items():
                    index.setdefault(key, []).append(value)
            self.entries[kind] = index

    def by_name(self, kind: str, ns: str, name: str) -> Obj | None:
        found = self.entries.get(kind, {}).get(("name", ns, name), [])
        return copy.deepcopy(found[0]) if found else None

    def by_kernel(self, kind: str, ns: str, kernel: str) -> list[Obj]:
        return copy.deepcopy(self.entries.get(kind, {}).get(("kernel", ns, kernel), []))

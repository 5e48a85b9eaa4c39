"""Watch-fed reads: reconciles read kernels, replicas, their pods and nodes from memory (kopf
indexes, handlers/cache.py), not from the API server.

A watch lags the operator's own writes. Acting on a view older than its own last write could make
an object twice: a replica whose status already says incarnation 2, beside a pod cache that has
not shown pod i2 yet, would make i3. So, as controller-runtime's "expectations": every write is
recorded (the resourceVersion it produced, or that the object is gone), and a read whose scope
holds a write the watch has not shown yet reads what that write returned in the cache's place (the
newest state this process knows), or the API server where the write returned nothing to read (a
create refused with 409, a status write refused with a conflict). resourceVersions are
compared as integers (etcd revisions); one that is not an integer is satisfied only by itself, and
an expectation not met within EXPECTATION_SECONDS is dropped (as controller-runtime's 5 minutes).
Resync reconciles read the API server (`direct()`): the backstop if the cache is ever wrong.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from notebookos import labels

from .kube import Conflict, Kube, Obj

EXPECTATION_SECONDS = 60.0
SWEEP_SECONDS = 5.0  # how often writes look for expectations met or expired in every scope
CACHED = ("NotebookKernel", "KernelReplica", "Pod", "Node")
_direct: contextvars.ContextVar[bool] = contextvars.ContextVar("notebookos_direct_reads", default=False)


@contextlib.contextmanager
def direct() -> Iterator[None]:
    """Reads inside go to the API server (the resync: the truth, whatever the cache says)."""
    token = _direct.set(True)
    try:
        yield
    finally:
        _direct.reset(token)


def matches(obj_labels: Mapping[str, str], selector: str) -> bool:
    """Whether labels match an equality-based selector (`a=b,c!=d,e,!f`), as the API server says."""
    for term in filter(None, (t.strip() for t in selector.split(","))):
        if "!=" in term:
            k, v = term.split("!=", 1)
            if obj_labels.get(k) == v:
                return False
        elif "=" in term:
            k, v = term.split("=", 1)
            if obj_labels.get(k) != v.lstrip("="):
                return False
        elif term.startswith("!"):
            if term[1:] in obj_labels:
                return False
        elif term not in obj_labels:
            return False
    return True


def kernel_of(obj: Mapping[str, Any]) -> str:
    """The kernel an object belongs to: its own name for a kernel, else its kernel label."""
    meta = obj.get("metadata") or {}
    if obj.get("kind") == "NotebookKernel":
        return str(meta.get("name") or "")
    return str((meta.get("labels") or {}).get(labels.KERNEL_LABEL) or "")


def slim(body: Mapping[str, Any]) -> Obj:
    """What the cache keeps of an object: all but the largest parts, which no reconcile reads:
    managedFields, a node's image list, and a pod's spec but its nodeName (containers, volumes,
    affinity: most of a pod). Shares the rest with `body` (read-only)."""
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k != "managedFields"}
    out = {**body, "metadata": meta}
    if body.get("kind") == "Node" and "images" in (body.get("status") or {}):
        out["status"] = {k: v for k, v in body["status"].items() if k != "images"}
    if body.get("kind") == "Pod":
        node = (body.get("spec") or {}).get("nodeName")
        out["spec"] = {"nodeName": node} if node else {}
    return out


def index_entries(body: Mapping[str, Any]) -> dict[tuple[str, str, str], Obj]:
    """An object's cache entries: by name, and by its kernel (a kernel's replicas, pods)."""
    meta = body.get("metadata") or {}
    ns, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
    obj = slim(body)
    entries = {("name", ns, name): obj}
    if kernel := kernel_of(body):
        entries[("kernel", ns, kernel)] = obj
    return entries


class View(Protocol):
    """What the watches have shown, per kind (kopf indexes in the operator, a snapshot in tests)."""

    def by_name(self, kind: str, ns: str, name: str) -> Obj | None: ...

    def by_kernel(self, kind: str, ns: str, kernel: str) -> list[Obj]: ...


class IndexView:
    """A View over kopf indexes (one per kind, handlers/cache.py), keyed as `index_entries`."""

    def __init__(self, indexes: Mapping[str, Any]) -> None:
        self.indexes = indexes  # kind -> kopf.Index

    def _values(self, kind: str, key: tuple[str, str, str]) -> list[Obj]:
        index = self.indexes[kind]
        # kopf updates its indexes on the event loop while reconciles read them in worker threads:
        # list() of a store copies it in one step (no Python code runs in between).
        return list(index[key]) if key in index else []

    def by_name(self, kind: str, ns: str, name: str) -> Obj | None:
        # Two objects of one name: the old one is being deleted while its successor exists.
        found = self._values(kind, ("name", ns, name))
        return max(found, key=lambda o: not (o.get("metadata") or {}).get("deletionTimestamp"), default=None)

    def by_kernel(self, kind: str, ns: str, kernel: str) -> list[Obj]:
        return self._values(kind, ("kernel", ns, kernel))


def _rv(obj: Mapping[str, Any] | None) -> str:
    return str(((obj or {}).get("metadata") or {}).get("resourceVersion") or "")


def _at_least(have: str, want: str) -> bool:
    try:
        return int(have) >= int(want)
    except ValueError:
        return have == want


@dataclass
class Expect:
    """A write of this operator the watch must show before the cache is read for it again."""

    rv: str | None  # the version written (or a newer one seen); None: only that it exists
    gone: bool = False  # deleted: absent, or marked for deletion
    at: float = field(default_factory=time.monotonic)
    obj: Obj | None = None  # what the write returned: newer than the cache, so read in its place

    def met(self, cached: Obj | None) -> bool:
        if self.gone:
            return cached is None or bool((cached.get("metadata") or {}).get("deletionTimestamp"))
        return cached is not None and (self.rv is None or _at_least(_rv(cached), self.rv))


class Expectations:
    """Writes the watch has not shown yet: by (kind, namespace, kernel), then name."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._scopes: dict[tuple[str, str, str], dict[str, Expect]] = {}
        self._kernels: dict[tuple[str, str, str], str] = {}  # (kind, namespace, name) -> kernel
        self.clock = clock

    def expect(self, kind: str, ns: str, kernel: str, name: str, expect: Expect) -> None:
        expect.at = self.clock()
        with self._lock:
            self._scopes.setdefault((kind, ns, kernel), {})[name] = expect
            self._kernels[(kind, ns, name)] = kernel

    def kernel(self, kind: str, ns: str, name: str) -> str | None:
        """The kernel of a pending write of this name; None if none is pending."""
        with self._lock:
            return self._kernels.get((kind, ns, name))

    def pending(self) -> int:
        with self._lock:
            return len(self._kernels)

    def overlay(
        self, kind: str, ns: str, kernel: str, cached: Callable[[str], Obj | None], only: str = ""
    ) -> dict[str, Obj | None] | None:
        """The writes in this scope (or of the name `only`) that the cache does not show yet, as
        what each returned (None: deleted); None if one returned nothing to read in the cache's
        place (a create refused with 409, a conflict): then read the API server. Forgets the
        writes the cache shows."""
        with self._lock:
            scope = self._scopes.get((kind, ns, kernel)) or {}
            todo = [(only, scope[only])] if only in scope else [] if only else list(scope.items())
        if not todo:
            return {}
        now, out, done = self.clock(), {}, []
        unknown = False
        for name, e in todo:
            if e.met(cached(name)) or now - e.at > EXPECTATION_SECONDS:
                done.append((name, e))
            elif e.gone or e.obj is not None:
                out[name] = None if e.gone else e.obj
            else:
                unknown = True
        with self._lock:
            live = self._scopes.get((kind, ns, kernel)) or {}
            for name, e in done:
                if live.get(name) is e:  # not replaced by a newer write meanwhile
                    del live[name]
                    self._kernels.pop((kind, ns, name), None)
            if not live:
                self._scopes.pop((kind, ns, kernel), None)
        return None if unknown else out

    def sweep(self, cached: Callable[[str, str, str], Obj | None]) -> None:
        """Forget the writes the cache shows, or that are too old, in every scope: a scope read only
        by resyncs (which read the API server) would otherwise hold its last write's object."""
        with self._lock:
            scopes = list(self._scopes)
        for kind, ns, kernel in scopes:
            self.overlay(kind, ns, kernel, functools.partial(cached, kind, ns))

    def fresh(self, kind: str, ns: str, kernel: str, cached: Callable[[str], Obj | None], only: str = "") -> bool:
        """Whether the cache shows every recorded write in this scope (or of the name `only`)."""
        return self.overlay(kind, ns, kernel, cached, only) == {}


class CachedKube:
    """`Kube` whose reads of CACHED kinds come from a View when it is current (see above), and
    whose writes are recorded as expectations. Without a view (before kopf's start-up, in the
    baseline) every read goes to the API server. Everything else is the inner Kube's."""

    def __init__(self, inner: Kube, view: View | None = None) -> None:
        self.inner = inner
        self.view = view
        self.expectations = Expectations()
        self._own: dict[tuple[str, str], Obj | None] = {}  # peers ConfigMaps, see _configmap
        self._swept = time.monotonic()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def attach(self, view: View) -> None:
        self.view = view

    def _view(self, kind: str) -> View | None:
        return None if _direct.get() or kind not in CACHED else self.view

    def _overlay(self, view: View, kind: str, ns: str, kernel: str, only: str = "") -> dict[str, Obj | None] | None:
        return self.expectations.overlay(kind, ns, kernel, lambda n: view.by_name(kind, ns, n), only)

    def _wrote(self, obj: Obj | None, kind: str | None = None, returned: bool = True) -> None:
        """Record a write; `returned`: `obj` is what the API server returned for it. Without a view
        (kopf not started yet) nothing reads the cache, so nothing is recorded."""
        if obj is None or self.view is None or (kind := kind or obj.get("kind")) not in CACHED:
            return
        meta = obj.get("metadata") or {}
        e = Expect(_rv(obj) or None, obj={**obj, "kind": kind} if returned else None)
        self.expectations.expect(kind, meta.get("namespace") or "", kernel_of(obj), meta["name"], e)
        now, view = time.monotonic(), self.view
        if view is not None and now - self._swept > SWEEP_SECONDS:
            self._swept = now
            self.expectations.sweep(view.by_name)

    # ------------------------------------------------------------------------------------ reads

    def _seen(self, kind: str, obj: Obj | None) -> Obj | None:
        """An object read from the API server that is newer than the cache is read in the cache's
        place until the cache shows it, as the operator's own writes: a later reconcile must not act
        on an older state than one this process has already acted on (a resync saw a router ready,
        the next event's reconcile must not write it back to not ready from a lagging cache)."""
        view = self.view
        if obj is not None and view is not None and kind in CACHED:
            meta = obj.get("metadata") or {}
            cached = view.by_name(kind, meta.get("namespace") or "", meta.get("name") or "")
            if cached is None or not _at_least(_rv(cached), _rv(obj)):
                self._wrote(obj, kind)
        return obj

    def _get(self, kind: str, ns: str, name: str, read: Callable[[], Obj | None]) -> Obj | None:
        view = self._view(kind)
        if view is None:
            return self._seen(kind, read())
        cached = view.by_name(kind, ns, name)
        kernel = self.expectations.kernel(kind, ns, name)
        if kernel is None:
            return cached  # no write of it pending: the cache is as new as this process knows
        newer = self._overlay(view, kind, ns, kernel, only=name)
        if newer is None:
            return self._seen(kind, read())
        return newer.get(name, cached)

    def _list(self, kind: str, ns: str, selector: str, read: Callable[[], list[Obj]]) -> list[Obj]:
        view = self._view(kind)
        kernel = next((t.split("=", 1)[1] for t in selector.split(",") if t.startswith(f"{labels.KERNEL_LABEL}=")), "")
        newer = self._overlay(view, kind, ns, kernel) if view is not None and kernel else None
        if view is None or newer is None:
            return [o for o in read() if self._seen(kind, o) is not None]
        items = {o["metadata"]["name"]: o for o in view.by_kernel(kind, ns, kernel)}
        for name, obj in newer.items():
            if obj is None:
                items.pop(name, None)
            else:
                items[name] = obj
        return [o for o in items.values() if matches(o["metadata"].get("labels") or {}, selector)]

    def get_custom(self, kind: str, ns: str, name: str) -> Obj | None:
        return self._get(kind, ns, name, lambda: self.inner.get_custom(kind, ns, name))

    def get(self, kind: str, ns: str, name: str) -> Obj | None:
        if kind == "ConfigMap":
            return self._configmap(ns, name)
        return self._get(kind, ns, name, lambda: self.inner.get(kind, ns, name))

    def _configmap(self, ns: str, name: str) -> Obj | None:
        # Peers ConfigMaps: only this operator writes them, so what it last read or wrote is what
        # is there (no watch needed; a resync reads it again, as the kernel's other fixed children).
        if self.view is not None and not _direct.get() and (ns, name) in self._own:
            return self._own[(ns, name)]
        got = self.inner.get("ConfigMap", ns, name)
        if self.view is not None:
            self._own[(ns, name)] = got
        return got

    def _own_data(self, ns: str, name: str, data: Mapping[str, str | None]) -> None:
        known = self._own.get((ns, name))
        if known is None:
            self._own.pop((ns, name), None)
            return
        merged = {**(known.get("data") or {}), **data}
        self._own[(ns, name)] = {**known, "data": {k: v for k, v in merged.items() if v is not None}}

    def patch_configmap_data(self, ns: str, name: str, data: dict[str, str | None]) -> None:
        self.inner.patch_configmap_data(ns, name, data)
        self._own_data(ns, name, data)

    def drop_configmap_key(self, ns: str, name: str, key: str) -> None:
        self.inner.drop_configmap_key(ns, name, key)
        self._own_data(ns, name, {key: None})

    def list_custom(self, kind: str, ns: str, selector: str) -> list[Obj]:
        return self._list(kind, ns, selector, lambda: self.inner.list_custom(kind, ns, selector))

    def list_pods(self, ns: str, selector: str) -> list[Obj]:
        return self._list("Pod", ns, selector, lambda: self.inner.list_pods(ns, selector))

    def get_node(self, name: str) -> Obj | None:
        view = self._view("Node")
        return self.inner.get_node(name) if view is None else view.by_name("Node", "", name)

    def node_exists(self, name: str) -> bool:
        view = self._view("Node")
        return self.inner.node_exists(name) if view is None else view.by_name("Node", "", name) is not None

    # ------------------------------------------------------------------------------------ writes

    def create(self, manifest: Obj) -> Obj | None:
        made = self.inner.create(manifest)
        if manifest["kind"] == "ConfigMap":
            key = (manifest["metadata"]["namespace"], manifest["metadata"]["name"])
            if made is None or self.view is None:
                self._own.pop(key, None)
            else:
                self._own[key] = made
        # 409: it exists, at a version this process does not know; the cache must show it.
        self._wrote(made) if made is not None else self._wrote(manifest, returned=False)
        return made

    def patch_status(self, obj: Obj, status: dict[str, Any]) -> Obj:
        try:
            written = self.inner.patch_status(obj, status)
        except Conflict:
            # Someone wrote it since this read: the next read must show something newer.
            rv = _rv(obj)
            if rv.isdigit():
                self._wrote(
                    {**obj, "metadata": {**obj["metadata"], "resourceVersion": str(int(rv) + 1)}}, returned=False
                )
            raise
        self._wrote(written)
        return written

    def patch_annotations(self, kind: str, ns: str, name: str, annotations: dict[str, str | None]) -> Obj:
        written = self.inner.patch_annotations(kind, ns, name, annotations)
        self._wrote(written, kind)
        return written

    def delete_pod(self, ns: str, name: str, force: bool = False) -> None:
        self.inner.delete_pod(ns, name, force)
        self._gone("Pod", ns, name)

    def delete_custom(self, kind: str, ns: str, name: str) -> None:
        self.inner.delete_custom(kind, ns, name)
        self._gone(kind, ns, name)

    def _gone(self, kind: str, ns: str, name: str) -> None:
        if self.view is None:
            return
        cached = self.view.by_name(kind, ns, name)
        kernel = kernel_of(cached) if cached is not None else self.expectations.kernel(kind, ns, name)
        if kernel is not None:  # neither cached nor expected: the cache cannot show it alive
            self.expectations.expect(kind, ns, kernel, name, Expect(None, gone=True))

"""State sync: what a cell changed, pickled so that standbys can load it.

* The changed globals of a cell are pickled together with cloudpickle, so objects they share stay
  shared. A changed value that *is* an unchanged global's object (``b = a``) is written as a
  reference to the blob holding that global, so sharing also survives across cells.
* Values larger than the threshold (arrays, tensors, frames, bytes) go to the object store on
  their own; the blob holds their URL. A blob itself larger than the threshold also goes there, so
  the Raft log only ever carries small entries.
* A value that cannot be pickled is replaced (on the standbys only) by ``Unreplicated``, which
  raises ``StateNotReplicatedError`` naming the variable and the cell that made it when used.
"""

from __future__ import annotations

import ast
import functools
import io
import logging
import os
import pickle
import re
import threading
import types
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import cloudpickle
import xxhash

from notebookos.kernel.raftlog import BlobRef, Snapshot
from notebookos.kernel.store import ObjectMissing, ObjectStore, PendingWrite

log = logging.getLogger(__name__)

# IPython's own names in the user namespace: output history, input history, helpers.
_IPYTHON_NAMES = re.compile(
    r"^(_|__|___|_i|_ii|_iii|_i\d+|_\d+|_oh|_ih|_dh|In|Out|exit|quit|get_ipython|__\w+__|NOTEBOOKOS_\w+)$"
)
_MACHINERY = ("get_ipython", "exit", "quit", "In", "Out", "_oh", "_ih", "_dh")
_PRIMITIVES = (int, float, complex, str, bytes, bool, type(None), types.ModuleType)


class StateNotReplicatedError(RuntimeError):
    """A value of the namespace could not be replicated to this replica."""


def _raise(self: Unreplicated, *args: Any, **kwargs: Any) -> Any:
    raise StateNotReplicatedError(object.__getattribute__(self, "_nbos_message")())


class Unreplicated:
    """Stands for a value that could not be pickled; any use raises a clear error."""

    __slots__ = ("_nbos_cell", "_nbos_error", "_nbos_name", "_nbos_replica")

    def __init__(self, name: str, cell: int, replica: int, error: str) -> None:
        object.__setattr__(self, "_nbos_name", name)
        object.__setattr__(self, "_nbos_cell", cell)
        object.__setattr__(self, "_nbos_replica", replica)
        object.__setattr__(self, "_nbos_error", error)

    def _nbos_message(self) -> str:
        g = object.__getattribute__
        return (
            f"variable '{g(self, '_nbos_name')}' is not available on this replica: it was made by cell "
            f"[{g(self, '_nbos_cell')}] on replica {g(self, '_nbos_replica')} and could not be replicated "
            f"({g(self, '_nbos_error')}). Re-run the cell that made it to recreate it here."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        g = object.__getattribute__
        return (
            Unreplicated,
            (g(self, "_nbos_name"), g(self, "_nbos_cell"), g(self, "_nbos_replica"), g(self, "_nbos_error")),
        )

    def __getattribute__(self, name: str) -> Any:
        if name in ("__reduce__", "__reduce_ex__", "__class__", "_nbos_message", "__slots__"):
            return object.__getattribute__(self, name)
        _raise(self)

    def __setattr__(self, name: str, value: Any) -> None:
        _raise(self)

    def __repr__(self) -> str:
        return _raise(self)


_DUNDERS = (
    "__str__ __call__ __iter__ __next__ __len__ __getitem__ __setitem__ __delitem__ __contains__ __bool__ "
    "__add__ __sub__ __mul__ __truediv__ __floordiv__ __mod__ __pow__ __matmul__ __radd__ __rsub__ __rmul__ "
    "__neg__ __abs__ __int__ __float__ __index__ __enter__ __exit__ __format__ __lt__ __le__ __gt__ __ge__ "
    "__array__ __fspath__ __await__ __aiter__"
)
for _dunder in _DUNDERS.split():
    setattr(Unreplicated, _dunder, _raise)


def user_names(ns: Mapping[str, Any], hidden: Mapping[str, Any]) -> dict[str, Any]:
    """The user's globals: not IPython's history and helpers, not names IPython put there."""
    out = {}
    for name, value in ns.items():
        if _IPYTHON_NAMES.match(name):
            continue
        if name in hidden and hidden[name] is value:
            continue
        out[name] = value
    return out


def referenced_names(code: str, ns: Mapping[str, Any], depth: int = 3) -> set[str]:
    """Names a cell may have changed in place: every name its code mentions, and the globals the
    functions it calls mention (a few levels deep)."""
    try:
        tree = ast.parse(code)
    except SyntaxError:
        return set()
    names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
    frontier = set(names)
    for _ in range(depth):
        nxt: set[str] = set()
        for name in frontier:
            fn = ns.get(name)
            code_obj = getattr(fn, "__code__", None)
            if isinstance(code_obj, types.CodeType):
                nxt |= set(code_obj.co_names) - names
        names |= nxt
        frontier = nxt
    return names


def _digest(*parts: Any) -> bytes:
    h = xxhash.xxh3_128()
    for p in parts:
        h.update(p if isinstance(p, bytes | bytearray | memoryview) else repr(p).encode())
    return h.digest()


def _fingerprint(value: Any) -> bytes | None:
    """Change detection for big flat values, at memory speed (xxh3: about 6 GB/s on one core here, 7x blake2b);
    None means "assume changed"."""
    if type(value) is Unreplicated:
        return None
    try:
        if isinstance(value, bytes | bytearray):
            return _digest(value)
        mod = type(value).__module__.split(".")[0]
        if mod == "numpy" and isinstance(getattr(value, "nbytes", None), int):
            flat = value.flags.c_contiguous and not value.dtype.hasobject
            return _digest(value.shape, value.dtype.str, memoryview(value).cast("B")) if flat else None
        if mod == "torch" and getattr(value, "device", None) is not None:
            # A CUDA tensor is not read back to the host to be hashed: it counts as changed.
            plain = value.device.type == "cpu" and value.is_contiguous() and not value.requires_grad
            fp = _fingerprint(value.numpy()) if plain else None
            return None if fp is None else _digest(b"torch", fp)
        if mod == "pandas" and hasattr(value, "dtypes"):
            return _frame_fingerprint(value)
    except Exception:
        return None
    return None


def _frame_fingerprint(value: Any) -> bytes | None:
    """A pandas Series or DataFrame of plain numpy columns (no objects, strings or extension
    types): its shape, labels and every column's bytes."""
    import pandas as pd

    frame = value.to_frame() if isinstance(value, pd.Series) else value
    if not isinstance(frame, pd.DataFrame):
        return None
    parts: list[Any] = [type(value).__name__, frame.shape, list(frame.columns), [str(d) for d in frame.dtypes]]
    index = frame.index
    if isinstance(index, pd.RangeIndex):
        parts.append((index.start, index.stop, index.step, index.name))
    else:
        fp = _fingerprint(index.to_numpy())
        if fp is None:
            return None
        parts.append(fp)
    for i in range(frame.shape[1]):
        col = frame.iloc[:, i].to_numpy()
        fp = _fingerprint(col) if col.flags.c_contiguous else _fingerprint(col.copy())
        if fp is None:
            return None
        parts.append(fp)
    return _digest(*parts)


def _size_of(obj: Any) -> int:
    """Size of the values worth storing on their own; 0 for everything else."""
    if type(obj) is Unreplicated:
        return 0
    if isinstance(obj, bytes | bytearray):
        return len(obj)
    mod = type(obj).__module__.split(".")[0]
    try:
        if mod == "numpy":
            return int(getattr(obj, "nbytes", 0) or 0)
        if mod == "torch" and hasattr(obj, "element_size") and hasattr(obj, "nelement"):
            return int(obj.element_size() * obj.nelement())
        if mod == "pandas" and hasattr(obj, "memory_usage"):
            usage = obj.memory_usage(deep=False)
            return int(usage.sum() if hasattr(usage, "sum") else usage)
    except Exception:
        return 0
    return 0


# Stands for the user namespace as the globals of functions defined in cells: on load they get the
# replica's live namespace, so they see later changes of the globals they read (cloudpickle would
# otherwise give each a private copy).
_NS_MARKER: dict[str, Any] = {}


def _is_flat(value: Any) -> bool:
    """Values that cannot hold references to other Python objects."""
    if type(value) is Unreplicated or isinstance(value, (*_PRIMITIVES, bytearray)):
        return True
    dtype = getattr(value, "dtype", None)
    return type(value).__module__ == "numpy" and getattr(dtype, "hasobject", True) is False


class _Pickler(cloudpickle.Pickler):
    def __init__(self, file: io.BytesIO, capture: Capture) -> None:
        super().__init__(file, protocol=5)
        self._cap = capture
        if capture.ns is not None:
            self.globals_ref[id(capture.ns)] = _NS_MARKER

    def persistent_id(self, obj: Any) -> Any:
        if obj is _NS_MARKER:
            return ("ns",)
        if isinstance(obj, _PRIMITIVES):
            return None
        oid = id(obj)
        hidden = self._cap.hidden.get(oid)
        if hidden is not None:
            return ("hidden", hidden)
        ref = self._cap.refs.get(oid)
        if ref is not None:
            self._cap.deps.add(ref[0])
            return ("var", ref[0], ref[1])
        url = self._cap.stored.get(oid)
        if url is not None:
            return ("store", url)
        if self._cap.threshold >= 0 and _size_of(obj) > self._cap.threshold:
            # Only laid out here: the bytes are written after the cell's commit (`StateTracker.upload`).
            pending = self._cap.store.prepare(f"{self._cap.prefix}/v{len(self._cap.stored)}", obj)
            self._cap.stored[oid] = pending.url
            self._cap.keep.append(obj)  # ids stay valid while this capture lives
            self._cap.pending.append(pending)
            self._cap.stored_bytes += pending.size
            return ("store", pending.url)
        return None


@dataclass
class Capture:
    store: ObjectStore
    threshold: int
    prefix: str
    refs: dict[int, tuple[int, str]]
    deps: set[int]
    stored: dict[int, str]
    keep: list[Any]
    ns: Mapping[str, Any] | None = None
    hidden: dict[int, str] = field(default_factory=dict)
    stored_bytes: int = 0
    pending: list[PendingWrite] = field(default_factory=list)

    def dumps(self, values: Mapping[str, Any]) -> bytes:
        buf = io.BytesIO()
        _Pickler(buf, self).dump(dict(values))
        return buf.getvalue()


@dataclass
class CellState:
    blob: BlobRef | None
    changed: list[str]
    deleted: list[str]
    unreplicated: list[str]
    stored_bytes: int
    log_bytes: int
    pending: list[PendingWrite] = field(default_factory=list)  # large values to write once committed
    fresh: dict[str, Any] = field(default_factory=dict)  # the values to fingerprint once committed


class StateTracker:
    """Per-replica bookkeeping: which blob each name's current value came from, and the objects
    loaded from each live blob (so later blobs can reference them)."""

    def __init__(self, store: ObjectStore, threshold: int, kernel: str) -> None:
        self.store = store
        self.threshold = threshold
        self.kernel = kernel
        self.loaded: dict[int, dict[str, Any]] = {}
        self.assigned: dict[str, int] = {}
        self.fingerprints: dict[str, tuple[int, bytes]] = {}
        self.applied_version = -1
        self._deps: dict[int, tuple[int, ...]] = {}  # blob seq -> blobs it references
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="nbos-upload", initializer=_background_priority)
        self._uploads: list[Future[None]] = []
        # Why to stop waiting for an object replica N has not written yet (None: keep waiting).
        self.give_up: Callable[[int], str | None] = lambda replica: None

    # --- executor side ------------------------------------------------------------------------------

    def before_cell(self, ns: Mapping[str, Any], hidden: Mapping[str, Any]) -> dict[str, int]:
        return {k: id(v) for k, v in user_names(ns, hidden).items()}

    def capture(
        self,
        *,
        code: str,
        before: Mapping[str, int],
        ns: Mapping[str, Any],
        hidden: Mapping[str, Any],
        seq: int,
        exec_id: str,
        cell: int,
        replica: int,
    ) -> CellState:
        after = user_names(ns, hidden)
        deleted = sorted(set(before) - set(after))
        rebound = {k for k, v in after.items() if before.get(k) != id(v)}
        touched = referenced_names(code, ns) & set(after)
        changed: list[str] = []
        for name in sorted(rebound | touched):
            if name not in rebound and name in self.assigned:
                fp = _fingerprint(after[name])
                old = self.fingerprints.get(name)
                if fp is not None and old is not None and old == (id(after[name]), fp):
                    continue  # a big value the cell only read
            changed.append(name)
        changed = self._close_over_sharing(changed, after)
        unchanged = set(after) - set(changed)
        refs = {
            id(after[n]): (self.assigned[n], n)
            for n in unchanged
            if n in self.assigned and not isinstance(after[n], _PRIMITIVES)
        }
        # IPython's machinery (not its output history, which holds user values) by reference.
        hidden_refs = {id(ns[k]): k for k in _MACHINERY if k in ns and hidden.get(k) is ns[k]}
        cap = Capture(self.store, self.threshold, f"{self.kernel}/{exec_id}", refs, set(), {}, [], ns, hidden_refs)
        values = {n: after[n] for n in changed}
        bad: dict[str, str] = {}
        try:
            data = cap.dumps(values)
        except Exception:
            for name in changed:
                try:
                    cap.dumps({name: values[name]})
                except Exception as e:
                    bad[name] = f"{type(e).__name__}: {e}"
            good = {n: v for n, v in values.items() if n not in bad}
            good.update({n: Unreplicated(n, cell, replica, err) for n, err in bad.items()})
            cap.deps.clear()
            cap.stored.clear()
            cap.pending.clear()
            cap.stored_bytes = 0
            data = cap.dumps(good)
        blob = None
        if changed:
            deps = tuple(sorted(cap.deps))
            if len(data) > self.threshold >= 0:
                url = self.store.put_bytes(f"{self.kernel}/{exec_id}/blob", data)
                blob = BlobRef(seq, exec_id, cell, replica, None, url, deps, tuple(changed))
            else:
                blob = BlobRef(seq, exec_id, cell, replica, data, None, deps, tuple(changed))
            # The executor's own objects are the blob's objects: nothing to load later.
            self.loaded[seq] = dict(values)
            self._deps[seq] = deps
            for name in changed:
                self.assigned[name] = seq
                self.fingerprints.pop(name, None)  # taken once committed, off the reply's path
        for name in deleted:
            self.assigned.pop(name, None)
            self.fingerprints.pop(name, None)
        log_bytes = len(data) if blob and blob.data else 0
        fresh = {n: values[n] for n in changed}
        return CellState(blob, changed, deleted, sorted(bad), cap.stored_bytes, log_bytes, cap.pending, fresh)

    def committed(self, cs: CellState) -> None:
        """After the cell's commit, in the background: write its large values (the reply waits
        only for the commit of the small state; standbys wait for each object as they load it),
        then fingerprint its new values (for the next cell's change detection)."""
        for p in cs.pending:
            self._uploads.append(self._writer.submit(_write, p))
        if cs.fresh:
            self._uploads.append(self._writer.submit(self._remember, cs.fresh))

    def _remember(self, values: Mapping[str, Any]) -> None:
        for name, value in values.items():
            fp = _fingerprint(value)
            if fp is not None:
                self.fingerprints[name] = (id(value), fp)

    def flush(self) -> None:
        """Wait until the background work of the last commit is done: the next cell may change
        the values in place, and their buffers are being written from the values' own memory."""
        while self._uploads:
            self._uploads.pop(0).result()

    def uploading(self) -> bool:
        return any(not f.done() for f in self._uploads)

    def needs_load(self, snap: Snapshot) -> bool:
        """Whether bringing the namespace to `snap` loads any value (else `apply` is instant)."""
        if any(self.assigned.get(n) != seq for n, seq in snap.vars.items()):
            return True
        return any(n not in snap.vars for n in self.assigned)

    def _close_over_sharing(self, changed: list[str], after: Mapping[str, Any]) -> list[str]:
        """An unchanged global may hold the changed objects: the same object under another name,
        or a value pickled with (or referencing) the blob a changed value came from. Re-send those
        too, so that standbys keep them shared with the new values."""
        out = set(changed)
        while True:
            ids = {id(after[n]) for n in out}
            blobs = {self.assigned[n] for n in out if n in self.assigned}
            extra = set()
            for name, value in after.items():
                if name in out or isinstance(value, _PRIMITIVES):
                    continue
                if id(value) in ids:
                    extra.add(name)
                    continue
                if _is_flat(value):
                    continue
                seq = self.assigned.get(name)
                deps = set(self._deps.get(seq, ())) if seq is not None else set()
                if seq is not None and (seq in blobs or deps & blobs):
                    extra.add(name)
            if not extra:
                return sorted(out)
            out |= extra

    # --- standby side ---------------------------------------------------------------------------------

    def apply(self, snap: Snapshot, ns: dict[str, Any]) -> list[str]:
        """Bring the namespace to the snapshot's state; returns the names it set."""
        if snap.version == self.applied_version:
            return []
        setnames: list[str] = []
        builtins_ = ns.get("__builtins__")
        for name, seq in sorted(snap.vars.items(), key=lambda kv: kv[1]):
            if self.assigned.get(name) == seq:
                continue
            objs = self._load(seq, snap.blobs, set(), ns)
            ns[name] = objs[name]
            self.assigned[name] = seq
            fp = _fingerprint(ns[name])
            if fp is not None:
                self.fingerprints[name] = (id(ns[name]), fp)
            setnames.append(name)
        for name in [n for n in self.assigned if n not in snap.vars]:
            del self.assigned[name]
            ns.pop(name, None)
        # Loading a function updates the namespace with the globals it read when it was pickled,
        # which may be older than the current values: put every current value back.
        for name, seq in snap.vars.items():
            cached = self.loaded.get(seq)
            if cached is not None and name in cached and ns.get(name) is not cached[name]:
                ns[name] = cached[name]
        if builtins_ is not None:
            ns["__builtins__"] = builtins_
        for seq in [s for s in self.loaded if s not in snap.blobs]:
            del self.loaded[seq]
        self._deps = {s: b.deps for s, b in snap.blobs.items()}
        self.applied_version = snap.version
        return setnames

    def revert(self, snap: Snapshot, ns: dict[str, Any], hidden: Mapping[str, Any]) -> list[str]:
        """Undo a cell whose commit was aborted: forget every object this replica holds for the
        blobs (the aborted cell may have changed them in place), drop the names the log does not
        have, and load every value again from the log's blobs."""
        self.loaded.clear()
        self.assigned.clear()
        self.fingerprints.clear()
        self._deps.clear()
        self.applied_version = -1
        for name in user_names(ns, hidden):
            if name not in snap.vars:
                del ns[name]
        return self.apply(snap, ns)

    def _load(self, seq: int, blobs: Mapping[int, BlobRef], loading: set[int], ns: dict[str, Any]) -> dict[str, Any]:
        if seq in self.loaded:
            return self.loaded[seq]
        if seq in loading or seq not in blobs:
            raise RuntimeError(f"state blob {seq} is missing from the replicated state")
        loading.add(seq)
        blob = blobs[seq]
        data = blob.data if blob.data is not None else self.store.get_bytes(blob.url or "")
        memo: dict[str, Any] = {}
        tracker = self
        give_up = functools.partial(self.give_up, blob.replica)

        class _Unpickler(pickle.Unpickler):
            def persistent_load(self, pid: Any) -> Any:
                kind = pid[0]
                if kind == "var":
                    return tracker._load(pid[1], blobs, loading, ns)[pid[2]]
                if kind == "ns":
                    return ns
                if kind == "hidden":
                    return ns.get(pid[1])
                if kind == "store":
                    if pid[1] not in memo:
                        try:
                            memo[pid[1]] = ObjectStore.get(pid[1], give_up)
                        except ObjectMissing as e:
                            # An `ok` cell's large value lost with its executor before it was saved.
                            err = f"it was lost with replica {blob.replica} before it was saved ({e})"
                            memo[pid[1]] = lost[pid[1]] = Unreplicated("(a large value)", blob.cell, blob.replica, err)
                    return memo[pid[1]]
                raise pickle.UnpicklingError(f"unknown reference {pid!r} in state blob {seq}")

        lost: dict[str, Unreplicated] = {}
        objs: dict[str, Any] = _Unpickler(io.BytesIO(data)).load()
        for name, value in objs.items():
            if type(value) is Unreplicated and any(value is v for v in lost.values()):
                objs[name] = Unreplicated(name, blob.cell, blob.replica, object.__getattribute__(value, "_nbos_error"))
        self.loaded[seq] = objs
        return objs


def _background_priority() -> None:
    """The upload thread yields the CPU to the kernel's own work (the next reply, the next cell):
    on a small node, writing 1 GB at full priority delays the reply it follows."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    except OSError:
        pass


def _write(p: PendingWrite) -> None:
    try:
        p.write()
    except Exception:
        log.exception("saving %s failed; the standbys are told", p.url)


def names_in(values: Iterable[str]) -> str:
    return ", ".join(sorted(values)) or "nothing"

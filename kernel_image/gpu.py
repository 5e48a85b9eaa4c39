"""GPU use inside the executing replica: expose the granted devices to the cell, and afterwards
move CUDA state to host memory and empty the CUDA cache so the devices are truly free.

How far a grant reaches (docs/kernel.md, "Which GPU a cell uses"):

* processes the cell starts see only the granted devices: ``CUDA_VISIBLE_DEVICES`` holds their
  UUIDs while the cell runs and is empty between cells, and CUDA reads it when a process starts;
* in the replica's own process, torch's current and default device are the grant's, also when the
  cell itself imports torch. The process keeps every device of the node visible (its CUDA
  initialises once, and later cells may be granted other devices), so a cell that names another
  device explicitly is not stopped: the node agent's audit reports that use.

Nothing here imports torch: if the user's code never imported it, there is no CUDA state to move.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys
from collections.abc import MutableMapping, Sequence
from types import ModuleType
from typing import Any

DEVICES_VAR = "NOTEBOOKOS_GPUS"  # in the namespace: the cell's devices ("cuda:N"), [] when none
UUIDS_VAR = "NOTEBOOKOS_GPU_UUIDS"  # the granted device UUIDs, as the broker named them
VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"  # what child processes' CUDA honours


def uuid_to_index(uuids: tuple[str, ...]) -> list[int]:
    """Map device UUIDs to CUDA ordinals through NVML; fall back to numbers given as strings."""
    out: list[int] = []
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            index = {}
            for i in range(pynvml.nvmlDeviceGetCount()):
                u = pynvml.nvmlDeviceGetUUID(pynvml.nvmlDeviceGetHandleByIndex(i))
                index[u.decode() if isinstance(u, bytes) else u] = i
        finally:
            pynvml.nvmlShutdown()
        for u in uuids:
            if u in index:
                out.append(index[u])
            elif u.isdigit():
                out.append(int(u))
        return out
    except Exception:
        return [int(u) for u in uuids if u.isdigit()]


# The process's own CUDA_VISIBLE_DEVICES as it started (this module loads before any cell runs).
_PROCESS_ENV = os.environ.get(VISIBLE_ENV)
# CUDA's own default order is "fastest first": make its ordinals NVML's indices (uuid_to_index).
os.environ.setdefault("CUDA_DEVICE_ORDER", "PCI_BUS_ID")


class _Grant:
    """The running cell's devices, where the torch import hook can read them."""

    indices: list[int] = []


def _select(torch: Any, indices: Sequence[int]) -> None:
    """Make torch's current and default device the grant's (CPU without one)."""
    try:
        if indices and _cuda_available(torch):
            torch.cuda.set_device(indices[0])
            torch.set_default_device(f"cuda:{indices[0]}")
        else:
            torch.set_default_device("cpu")
    except Exception:
        pass


def _cuda_available(torch: Any) -> bool:
    # CUDA reads CUDA_VISIBLE_DEVICES once, when it initialises: let it see the process's own
    # devices (every device of the node), not the cell's grant, or later grants would be invisible.
    granted = os.environ.get(VISIBLE_ENV)
    _set_env(_PROCESS_ENV)
    try:
        return bool(torch.cuda.is_available())
    finally:
        _set_env(granted)


def _set_env(value: str | None) -> None:
    if value is None:
        os.environ.pop(VISIBLE_ENV, None)
    else:
        os.environ[VISIBLE_ENV] = value


class _TorchHook(importlib.abc.MetaPathFinder):
    """Selects the grant's device as soon as a cell imports torch (after its module has run)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if name != "torch":
            return None
        sys.meta_path.remove(self)  # once: the other finders find the real spec
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader = spec.loader
        run_module = loader.exec_module

        def exec_module(module: ModuleType) -> None:
            run_module(module)
            _select(module, _Grant.indices)

        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def expose(ns: MutableMapping[str, Any], uuids: tuple[str, ...]) -> list[str]:
    """Make the granted devices the cell's devices: in the namespace, for the processes it starts,
    and as torch's device (now, or when the cell imports torch)."""
    indices = uuid_to_index(uuids) if uuids else []
    devices = [f"cuda:{i}" for i in indices]
    ns[DEVICES_VAR] = devices
    ns[UUIDS_VAR] = list(uuids)
    _Grant.indices = indices
    os.environ[VISIBLE_ENV] = ",".join(uuids)  # UUIDs: no ordinal to map in the child
    torch = sys.modules.get("torch")
    if torch is not None:
        _select(torch, indices)
    elif not any(isinstance(f, _TorchHook) for f in sys.meta_path):
        sys.meta_path.insert(0, _TorchHook())
    return devices


def withdraw() -> None:
    """After the cell: processes started from now on see no device until the next grant."""
    _Grant.indices = []
    os.environ[VISIBLE_ENV] = ""


def _to_host(value: Any, torch: Any, seen: set[int], depth: int = 0) -> Any:
    if id(value) in seen or depth > 4 or type(value).__name__ == "Unreplicated":
        return value
    seen.add(id(value))
    if isinstance(value, torch.Tensor):
        return value.cpu() if value.is_cuda else value
    if isinstance(value, torch.nn.Module):
        return value.cpu()
    if isinstance(value, torch.optim.Optimizer):
        for state in value.state.values():
            for k, v in list(state.items()):
                if isinstance(v, torch.Tensor) and v.is_cuda:
                    state[k] = v.cpu()
        return value
    if isinstance(value, dict):
        for k, v in list(value.items()):
            value[k] = _to_host(v, torch, seen, depth + 1)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            value[i] = _to_host(v, torch, seen, depth + 1)
    elif hasattr(value, "__dict__") and not isinstance(value, type) and type(value).__module__ == "__main__":
        for k, v in list(vars(value).items()):
            setattr(value, k, _to_host(v, torch, seen, depth + 1))
    return value


def offload(ns: MutableMapping[str, Any], names: list[str]) -> int:
    """Move every CUDA tensor the namespace holds (tensors, modules, optimiser state, inside
    dicts, lists and user objects) to host memory, then empty the CUDA cache. Returns how many
    names were visited; 0 and nothing done without torch."""
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "cuda"):
        return 0
    seen: set[int] = set()
    for name in names:
        if name in ns:
            ns[name] = _to_host(ns[name], torch, seen)
    try:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
        torch.set_default_device("cpu")
    except Exception:
        pass
    return len(names)

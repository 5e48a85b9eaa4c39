"""GPU use inside the executing replica: expose the granted devices to the cell, and afterwards
move CUDA state to host memory and empty the CUDA cache so the devices are truly free.

Nothing here imports torch: if the user's code never imported it, there is no CUDA state to move.
"""

from __future__ import annotations

import sys
from collections.abc import MutableMapping
from typing import Any

DEVICES_VAR = "NOTEBOOKOS_GPUS"  # in the namespace: the cell's devices ("cuda:N"), [] when none
UUIDS_VAR = "NOTEBOOKOS_GPU_UUIDS"  # the granted device UUIDs, as the broker named them


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


def expose(ns: MutableMapping[str, Any], uuids: tuple[str, ...]) -> list[str]:
    """Make the granted devices the cell's devices."""
    indices = uuid_to_index(uuids) if uuids else []
    devices = [f"cuda:{i}" for i in indices]
    ns[DEVICES_VAR] = devices
    ns[UUIDS_VAR] = list(uuids)
    torch = sys.modules.get("torch")
    if torch is not None:
        try:
            if devices and torch.cuda.is_available():
                torch.cuda.set_device(indices[0])
                torch.set_default_device(devices[0])
            else:
                torch.set_default_device("cpu")
        except Exception:
            pass
    return devices


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

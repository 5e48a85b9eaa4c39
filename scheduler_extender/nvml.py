"""GPU inventory and per-process usage from NVML (`pynvml`, distribution nvidia-ml-py), or from a
fake backend with the same interface for tests and machines without a GPU."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class GpuInfo:
    index: int
    uuid: str
    memory_mib: int
    model: str
    healthy: bool = True

    def to_inventory(self) -> dict[str, Any]:
        """One entry of the notebookos.io/gpu-inventory annotation."""
        return {
            "index": self.index,
            "uuid": self.uuid,
            "memoryMiB": self.memory_mib,
            "model": self.model,
            "healthy": self.healthy,
        }


class NvmlBackend(Protocol):
    def devices(self) -> list[GpuInfo]: ...

    def processes(self) -> dict[str, list[int]]:
        """Device UUID -> PIDs of the processes using it (compute and graphics)."""
        ...

    def close(self) -> None: ...


class RealNvml:
    """NVML itself. A device whose queries fail is reported unhealthy rather than dropped, so the
    extender and broker stop counting it while it stays visible to an operator."""

    def __init__(self) -> None:
        import pynvml

        self._nv = pynvml
        pynvml.nvmlInit()

    @staticmethod
    def _text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    def devices(self) -> list[GpuInfo]:
        nv = self._nv
        out = []
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            uuid = self._text(nv.nvmlDeviceGetUUID(h))
            try:
                mem = int(nv.nvmlDeviceGetMemoryInfo(h).total) // 2**20
                model = self._text(nv.nvmlDeviceGetName(h))
                healthy = self._healthy(h)
            except nv.NVMLError:
                out.append(GpuInfo(i, uuid, 0, "unknown", healthy=False))
                continue
            out.append(GpuInfo(i, uuid, mem, model, healthy))
        return out

    def _healthy(self, handle: Any) -> bool:
        nv = self._nv
        try:  # pages pending retirement mean uncorrectable ECC errors: do not hand the GPU out
            return nv.nvmlDeviceGetRetiredPagesPendingStatus(handle) == nv.NVML_FEATURE_DISABLED
        except nv.NVMLError:
            return True  # not supported on this GPU

    def processes(self) -> dict[str, list[int]]:
        nv = self._nv
        out: dict[str, list[int]] = {}
        for i in range(nv.nvmlDeviceGetCount()):
            h = nv.nvmlDeviceGetHandleByIndex(i)
            uuid = self._text(nv.nvmlDeviceGetUUID(h))
            pids: set[int] = set()
            for fn in (nv.nvmlDeviceGetComputeRunningProcesses, nv.nvmlDeviceGetGraphicsRunningProcesses):
                try:
                    pids.update(int(p.pid) for p in fn(h))
                except nv.NVMLError:
                    pass
            out[uuid] = sorted(pids)
        return out

    def close(self) -> None:
        self._nv.nvmlShutdown()


@dataclass
class FakeNvml:
    """In-memory GPUs; tests set `procs` to simulate processes using devices."""

    gpus: list[GpuInfo]
    procs: dict[str, list[int]] = field(default_factory=dict)

    @classmethod
    def uniform(
        cls, count: int, node: str = "node", model: str = "NVIDIA H100 80GB HBM3", memory_mib: int = 81559
    ) -> FakeNvml:
        return cls([GpuInfo(i, f"GPU-fake-{node}-{i}", memory_mib, model) for i in range(count)])

    @classmethod
    def from_spec(cls, spec: str, node: str = "node") -> FakeNvml:
        """`8` (that many H100s) or a JSON list of inventory entries ({index, uuid, memoryMiB, model,
        healthy, pids})."""
        spec = spec.strip()
        if spec.isdigit():
            return cls.uniform(int(spec), node)
        try:
            items = json.loads(spec)
        except json.JSONDecodeError as e:
            raise ValueError(f"fake NVML spec must be a GPU count or a JSON list: {e}") from None
        if not isinstance(items, list):
            raise ValueError("fake NVML spec must be a GPU count or a JSON list")
        return cls(
            [
                GpuInfo(
                    int(d.get("index", i)),
                    str(d["uuid"]),
                    int(d.get("memoryMiB", 0)),
                    str(d.get("model", "fake")),
                    bool(d.get("healthy", True)),
                )
                for i, d in enumerate(items)
            ],
            # "pids": processes said to use the device, for the audit's tests
            {str(d["uuid"]): [int(p) for p in d["pids"]] for d in items if d.get("pids")},
        )

    def devices(self) -> list[GpuInfo]:
        return list(self.gpus)

    def processes(self) -> dict[str, list[int]]:
        return {g.uuid: list(self.procs.get(g.uuid, [])) for g in self.gpus}

    def close(self) -> None:
        pass


def backend_from_env(kind: str | None = None, node: str = "node") -> NvmlBackend:
    """`real` (NVML), or `fake[:SPEC]` (see FakeNvml.from_spec); default from NOTEBOOKOS_NVML."""
    kind = kind or os.environ.get("NOTEBOOKOS_NVML", "real")
    if kind == "real":
        return RealNvml()
    if kind.startswith("fake"):
        _, _, spec = kind.partition(":")
        return FakeNvml.from_spec(spec or "8", node)
    raise ValueError(f"NVML backend must be 'real' or 'fake[:SPEC]', got {kind!r}")


def inventory_json(devices: list[GpuInfo]) -> str:
    return json.dumps([d.to_inventory() for d in devices], separators=(",", ":"))


__all__ = ["FakeNvml", "GpuInfo", "NvmlBackend", "RealNvml", "backend_from_env", "inventory_json"]

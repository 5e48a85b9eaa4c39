"""Which devices a cell's code sees (kernel_image/gpu.py), with a stand-in torch module: there is
no GPU here. What it records is what the real torch would be asked: the current and default
device, and the CUDA_VISIBLE_DEVICES that CUDA would read when it initialises."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from notebookos.kernel import gpu

FAKE_TORCH = """
import os
calls = []
class cuda:
    @staticmethod
    def is_available():
        calls.append(("init", os.environ.get("CUDA_VISIBLE_DEVICES")))
        return True
    @staticmethod
    def set_device(i):
        calls.append(("set_device", i))
def set_default_device(d):
    calls.append(("default", d))
"""


@pytest.fixture
def fake_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    (tmp_path / "torch").mkdir()
    (tmp_path / "torch" / "__init__.py").write_text(FAKE_TORCH)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    monkeypatch.setattr(gpu, "uuid_to_index", lambda uuids: [3 for _ in uuids])  # NVML's index of the UUID
    monkeypatch.setattr(gpu, "_PROCESS_ENV", None)  # the pod's own: every device of the node
    monkeypatch.delenv(gpu.VISIBLE_ENV, raising=False)
    yield tmp_path
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, gpu._TorchHook)]
    sys.modules.pop("torch", None)
    gpu.withdraw()


def test_processes_a_cell_starts_see_only_its_grant_and_none_after_it(fake_torch: Path) -> None:
    child = [sys.executable, "-c", "import os; print(os.environ.get('CUDA_VISIBLE_DEVICES'))"]
    ns: dict[str, Any] = {}
    assert gpu.expose(ns, ("GPU-aaaa",)) == ["cuda:3"]
    assert ns[gpu.UUIDS_VAR] == ["GPU-aaaa"] and ns[gpu.DEVICES_VAR] == ["cuda:3"]
    assert subprocess.run(child, capture_output=True, text=True, check=True).stdout == "GPU-aaaa\n"
    gpu.withdraw()
    assert subprocess.run(child, capture_output=True, text=True, check=True).stdout == "\n"
    gpu.expose(ns, ())  # a cell without a grant: no device for its processes
    assert os.environ[gpu.VISIBLE_ENV] == ""


def test_torch_imported_by_the_cell_gets_the_granted_device(fake_torch: Path) -> None:
    gpu.expose({}, ("GPU-aaaa",))
    import torch  # what the cell does, after the grant

    # CUDA initialised seeing every device of the process (not just this grant, or a later cell's
    # other device would be invisible to the process), then the grant became the current device.
    assert torch.calls == [("init", None), ("set_device", 3), ("default", "cuda:3")]
    assert os.environ[gpu.VISIBLE_ENV] == "GPU-aaaa", "the cell's child processes still see only the grant"


def test_torch_already_loaded_is_pointed_at_each_cells_grant(fake_torch: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    gpu.expose({}, ("GPU-aaaa",))
    monkeypatch.setattr(gpu, "uuid_to_index", lambda uuids: [5 for _ in uuids])
    gpu.expose({}, ("GPU-bbbb",))
    assert [c for c in torch.calls if c[0] != "init"] == [
        ("set_device", 3),
        ("default", "cuda:3"),
        ("set_device", 5),
        ("default", "cuda:5"),
    ]
    gpu.expose({}, ())
    assert torch.calls[-1] == ("default", "cpu")

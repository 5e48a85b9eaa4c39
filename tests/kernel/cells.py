"""Running cells in the kernel tests: shared by the fault, durability and campaign tests."""

from __future__ import annotations

from typing import Any

from notebookos.kernel.local import run, text_of


def value(kc: Any, expr: str, target: int | None = None, timeout: float = 60) -> str:
    reply, out = run(kc, expr, timeout=timeout, metadata={"notebookos_target": target} if target else None)
    assert reply["content"]["status"] == "ok", reply["content"]
    if target:
        assert reply["metadata"]["notebookos"]["replica"] == target
    return text_of(out).strip()

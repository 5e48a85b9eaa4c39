"""A seeded fault campaign against a LocalKernel: cells that each append their number to a list,
while standbys, the executor (mid-cell and right after its reply), a freshly restarted replica
and the router are killed at chosen moments. At the end every cell acknowledged `ok` must be in
the list exactly once, in order, every cell that got an error must be absent, and all replicas
must hold the same list."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from notebookos.kernel.local import LocalKernel, run, text_of, wait_for, wait_serving

FAULTS = ("standby", "executor_mid_cell", "executor_after_reply", "restarted_first_cell", "router_mid_cell")


@dataclass
class Summary:
    seed: int
    cells: int = 0
    ok: int = 0
    errors: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def line(self) -> str:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(self.faults.items()))
        return (
            f"campaign seed={self.seed}: cells {self.cells}, ok {self.ok}, errors {self.errors}, "
            f"violations {len(self.violations)} (faults: {faults})"
        )


def _reply(kc: Any, msg_id: str, timeout: float) -> dict[str, Any] | None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            m: dict[str, Any] = kc.get_shell_msg(timeout=max(0.1, end - time.monotonic()))
        except Exception:
            continue
        if m["parent_header"].get("msg_id") == msg_id:
            return m
    return None


def _send(kc: Any, code: str, target: int) -> str:
    content = {"code": code, "silent": False, "store_history": True, "user_expressions": {}, "allow_stdin": False}
    msg = kc.session.msg("execute_request", content, metadata={"notebookos_target": target})
    kc.shell_channel.send(msg)
    return str(msg["header"]["msg_id"])


def _drain_iopub(kc: Any) -> None:
    try:
        while True:
            kc.get_iopub_msg(timeout=0)
    except Exception:
        pass


def campaign(k: LocalKernel, workdir: Path, seed: int, cells: int, fault_rate: float = 0.15) -> Summary:
    rng = random.Random(seed)
    s = Summary(seed)
    kc = k.client()
    acked: list[int] = []
    try:
        reply, _ = run(kc, "applied = []")
        assert reply["content"]["status"] == "ok"
        for rid in (1, 2, 3):
            wait_serving(kc, rid)
        first_cell_of: int | None = None
        for j in range(cells):
            _drain_iopub(kc)
            fault = rng.choice(FAULTS) if first_cell_of is None and rng.random() < fault_rate else None
            target = first_cell_of or rng.choice((1, 2, 3))
            mark = workdir / f"cell-{j}"
            code = f"applied.append({j})"
            if fault in ("executor_mid_cell", "router_mid_cell"):
                code += f"\nopen({str(mark)!r}, 'w').close()\nimport time\ntime.sleep({rng.uniform(0.5, 1.5):.2f})"
            elif rng.random() < 0.3:
                code += f"\nblob = list(range({rng.randrange(1, 500_000)}))"  # a state commit that takes a while
            s.faults[fault or "none"] = s.faults.get(fault or "none", 0) + 1
            msg_id = _send(kc, code, target)
            killed: str | None = None
            if fault == "standby":
                time.sleep(rng.uniform(0, 0.03))  # a random moment of the cell
                killed = f"replica-{rng.choice([r for r in (1, 2, 3) if r != target])}"
                k.kill(killed)
                k.start_replica(int(killed[-1]))
            elif fault in ("executor_mid_cell", "router_mid_cell"):
                wait_for(mark.exists, 90, f"cell {j} to run")
                time.sleep(rng.uniform(0, 0.3))
                killed = "router" if fault == "router_mid_cell" else f"replica-{target}"
                k.kill(killed)
                if killed == "router":
                    k.start_router()
                else:
                    k.start_replica(target)
            reply = _reply(kc, msg_id, 120)
            s.cells += 1
            if reply is None:
                s.violations.append(f"cell {j} ({fault}): no reply in 120 s")
                break
            c = reply["content"]
            executor = (reply["metadata"].get("notebookos") or {}).get("replica")
            if c["status"] == "ok":
                s.ok += 1
                acked.append(j)
            elif c.get("ename") == "NotebookOSExecutorLost" and fault == "executor_mid_cell":
                s.errors += 1
            else:
                s.errors += 1
                s.violations.append(f"cell {j} ({fault}, executor {executor}): unexpected {c.get('ename')}")
            if fault == "executor_after_reply" and isinstance(executor, int):
                killed = f"replica-{executor}"
                k.kill(killed)
                k.start_replica(executor)
            if first_cell_of is not None and executor == first_cell_of:
                first_cell_of = None
            if fault == "restarted_first_cell":
                victim = rng.choice((1, 2, 3))
                k.kill(f"replica-{victim}")
                k.start_replica(victim)
                first_cell_of = victim  # the next cells target it until it runs one
            elif killed and killed != "router":
                wait_serving(kc, int(killed[-1]), timeout=120)  # never two replicas down at once
        for rid in (1, 2, 3):
            wait_serving(kc, rid, timeout=120)
            reply, out = run(kc, "print(applied)", timeout=120, metadata={"notebookos_target": rid})
            got = text_of(out).strip()
            if got != str(acked):
                s.violations.append(f"replica {rid} holds {got}, want the acknowledged cells {acked}")
    finally:
        kc.stop_channels()
    return s

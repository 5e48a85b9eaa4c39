"""Workloads: notebook sessions and their cells, from the published traces or from parameters.

Times are seconds from the start of the trace. A cell is one GPU task of a session; the cells of a
session run one after another (a kernel executes one cell at a time), so a cell submitted while the
previous one still runs waits for it, and that wait is the notebook's, not the platform's.
CPU-only cells (``gpus == 0``) are dropped: no policy binds GPUs for them.
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

TICK_S = 60.0  # both traces count minutes
DEFAULT_TRACE_DIR = Path("../shared/traces")
TEMPLATE_FILE = "sensei-june-1-2-2021-sessions.json"
TASKS_FILE = "sensei-june-2021-gpu-tasks.csv"
# Session lifetimes assumed for the task CSV, which has none: the session opens at its first
# submit and closes this long after its last task ends (Adobe Sensei's idle reclamation, 30 min).
DEFAULT_IDLE_TAIL_S = 30 * 60.0
# ... and a session is split where it sits idle longer than this between two tasks. The session
# template (same production data, with real lifetimes) has no session idle longer than 23.2 h
# between two cells (CPU-only cells included, as the CSV's converter counts them): 24 h splits no
# template session, and does split the CSV's groups that idle for days (a group's median life
# would be 344 h unsplit, against the template's 21 h). tests/sim/test_inference.py keeps it so.
DEFAULT_SPLIT_GAP_S = 24 * 3600.0
DEFAULT_DOWNLOAD_BPS = 200e6  # the traces' remote storage (S3), remoteStorageDefinition
DEFAULT_UPLOAD_BPS = 125e6


class WorkloadError(ValueError):
    """A trace file that cannot be read as a workload; the message names the file and the row."""


@dataclass(frozen=True)
class Cell:
    session: int
    index: int
    submit: float
    duration: float
    gpus: int


@dataclass
class Session:
    index: int
    name: str
    start: float
    stop: float
    gpus: int
    """The session's peak GPU request: what reservation holds and what each replica subscribes."""
    cells: list[Cell] = field(default_factory=list)


@dataclass
class Workload:
    name: str
    sessions: list[Session]
    download_bps: float = DEFAULT_DOWNLOAD_BPS
    upload_bps: float = DEFAULT_UPLOAD_BPS
    assumptions: list[str] = field(default_factory=list)

    @property
    def cells(self) -> list[Cell]:
        return [c for s in self.sessions for c in s.cells]

    @property
    def reserved_gpu_hours(self) -> float:
        """Reservation, GPU-granular: each session's peak GPUs for its whole life, as if GPUs could
        be rented one by one (no hosts, no packing). The simulated reservation policy rents whole
        hosts and is dearer."""
        return sum(s.gpus * (s.stop - s.start) for s in self.sessions) / 3600

    @property
    def end(self) -> float:
        return max((s.stop for s in self.sessions), default=0.0)

    def describe(self) -> dict[str, object]:
        cells = self.cells
        return {
            "name": self.name,
            "sessions": len(self.sessions),
            "gpu_cells": len(cells),
            "span_h": round(self.end / 3600, 2),
            "cell_gpu_hours": round(sum(c.gpus * c.duration for c in cells) / 3600, 1),
            "reserved_gpu_hours": round(self.reserved_gpu_hours, 1),
            "assumptions": self.assumptions,
        }


def _require(obj: Any, key: str, where: str) -> Any:
    if not isinstance(obj, dict) or key not in obj:
        raise WorkloadError(f"{where}: missing field {key!r}")
    return obj[key]


def _num(obj: Any, key: str, where: str) -> float:
    value = _require(obj, key, where)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WorkloadError(f"{where}.{key}: expected a number, got {value!r}")
    return float(value)


def load_template(path: str | Path) -> Workload:
    """The session-level replay template (JSON): sessions with start/stop ticks and their trainings."""
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise WorkloadError(f"{p}: no such file (pass --template or --trace-dir)") from None
    except json.JSONDecodeError as e:
        raise WorkloadError(f"{p}: not JSON: {e}") from None
    raw = doc.get("sessions") if isinstance(doc, dict) else None
    if not isinstance(raw, list):
        raise WorkloadError(f"{p}: expected an object with a 'sessions' list")
    storage = doc.get("remoteStorageDefinition") or {}
    sessions: list[Session] = []
    for i, s in enumerate(raw):
        where = f"{p}: sessions[{i}]"
        start = _num(s, "start_tick", where) * TICK_S
        stop = _num(s, "stop_tick", where) * TICK_S
        if stop < start:
            raise WorkloadError(f"{where}: stop_tick before start_tick")
        cells: list[Cell] = []
        trainings = _require(s, "trainings", where)
        if not isinstance(trainings, list):
            raise WorkloadError(f"{where}.trainings: expected a list")
        for j, t in enumerate(trainings):
            tw = f"{where}.trainings[{j}]"
            gpus = int(_num(t, "gpus", tw))
            if gpus < 0:
                raise WorkloadError(f"{tw}: gpus must be >= 0, got {gpus}")
            if gpus == 0:
                continue
            submit = _num(t, "start_tick", tw) * TICK_S
            dur = _num(t, "duration_in_ticks", tw) * TICK_S
            if dur < 0:
                raise WorkloadError(f"{tw}: duration_in_ticks must be >= 0")
            cells.append(Cell(len(sessions), len(cells), submit, dur, gpus))
        if not cells:
            continue  # no GPU cell: costs no GPU under any policy
        peak = max(int((s.get("max_resource_request") or {}).get("gpus", 0)), max(c.gpus for c in cells))
        sessions.append(Session(len(sessions), str(s.get("id", i)), start, stop, peak, cells))
    return Workload(
        name=p.stem,
        sessions=sessions,
        download_bps=float(storage.get("downloadRate", DEFAULT_DOWNLOAD_BPS)),
        upload_bps=float(storage.get("uploadRate", DEFAULT_UPLOAD_BPS)),
        assumptions=[
            "session life = [start_tick, stop_tick] of the template; 1 tick = 60 s",
            "CPU-only cells (gpus = 0) dropped; sessions without a GPU cell dropped",
        ],
    )


def idle_gaps(cells: list[Cell]) -> list[float]:
    """Idle time before each cell after the first: its submit minus the end of the cells before it
    (run one after another, as a kernel does), never negative."""
    gaps, end = [], None
    for c in cells:
        if end is not None:
            gaps.append(max(0.0, c.submit - end))
            end = max(end, c.submit) + c.duration
        else:
            end = c.submit + c.duration
    return gaps


def split_at_gaps(
    tasks: list[tuple[float, float, int]], split_gap_s: float | None
) -> list[list[tuple[float, float, int]]]:
    """A group of (submit, duration, gpus) tasks in file order, cut wherever the kernel would sit
    idle longer than ``split_gap_s`` before the next task (None: never cut)."""
    parts: list[list[tuple[float, float, int]]] = []
    end: float | None = None
    for sub, dur, n in tasks:
        if end is None or (split_gap_s is not None and sub - end > split_gap_s):
            parts.append([])
            end = sub
        parts[-1].append((sub, dur, n))
        end = max(end, sub) + dur
    return parts


def load_tasks(
    path: str | Path,
    idle_tail_s: float = DEFAULT_IDLE_TAIL_S,
    split_gap_s: float | None = DEFAULT_SPLIT_GAP_S,
) -> Workload:
    """A task CSV (Tiresias format, minutes), named after its file. Sessions are inferred: a group
    starts where submit_time goes backwards between consecutive rows, and a group is cut where it
    would sit idle longer than ``split_gap_s`` (None: never); each session lives from its first
    submit to its last task's end (tasks run one at a time) plus ``idle_tail_s``."""
    p = Path(path)
    if idle_tail_s < 0 or (split_gap_s is not None and split_gap_s <= 0):
        raise WorkloadError(f"{p}: idle tail must be >= 0 and the split gap > 0")
    try:
        fh = p.open(newline="")
    except FileNotFoundError:
        raise WorkloadError(f"{p}: no such file (pass --tasks or --trace-dir)") from None
    groups: list[list[tuple[float, float, int]]] = []
    prev = -1.0
    with fh:
        reader = csv.DictReader(fh)
        missing = {"num_gpu", "submit_time", "duration"} - set(reader.fieldnames or [])
        if missing:
            raise WorkloadError(f"{p}: missing columns {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            try:
                gpus, submit, dur = int(row["num_gpu"]), float(row["submit_time"]), float(row["duration"])
            except (TypeError, ValueError):
                raise WorkloadError(f"{p}:{line}: num_gpu, submit_time and duration must be numbers") from None
            if gpus < 0 or dur < 0:
                raise WorkloadError(f"{p}:{line}: num_gpu and duration must be >= 0")
            if submit < prev or not groups:
                groups.append([])
            prev = submit
            if gpus > 0:
                groups[-1].append((submit * TICK_S, dur * TICK_S, gpus))
    sessions: list[Session] = []
    for g in groups:
        for part in split_at_gaps(g, split_gap_s):
            idx = len(sessions)
            cells = [Cell(idx, j, sub, dur, n) for j, (sub, dur, n) in enumerate(part)]
            end = 0.0
            for c in cells:  # serial execution decides when the last cell ends
                end = max(end, c.submit) + c.duration
            peak = max(c.gpus for c in cells)
            sessions.append(Session(idx, f"s{idx}", cells[0].submit, end + idle_tail_s, peak, cells))
    split = "never" if split_gap_s is None else f"where idle longer than {split_gap_s / 3600:g} h"
    return Workload(
        name=p.stem,
        sessions=sessions,
        assumptions=[
            "sessions inferred where submit_time goes backwards between consecutive rows,"
            f" and split {split} between two tasks",
            "session life = first submit to last task end (tasks run one at a time)"
            f" + {idle_tail_s / 60:g} min idle tail",
            "the CSV's converter counted CPU-only cells as 1-GPU tasks: 1-GPU figures include them",
        ],
    )


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of a synthetic workload (Poisson sessions, exponential gaps and durations)."""

    sessions: int = 20
    span_h: float = 24.0
    session_h: float = 8.0
    cell_gap_min: float = 30.0
    cell_min: float = 10.0
    gpu_choices: tuple[int, ...] = (1, 1, 2, 4, 8)


def synthetic(spec: SyntheticSpec, seed: int = 0) -> Workload:
    rng = random.Random(seed)
    sessions: list[Session] = []
    for i in range(spec.sessions):
        start = rng.uniform(0, spec.span_h * 3600)
        life = rng.expovariate(1 / (spec.session_h * 3600))
        gpus = rng.choice(spec.gpu_choices)
        cells: list[Cell] = []
        t = start + rng.expovariate(1 / (spec.cell_gap_min * 60))
        while t < start + life:
            dur = max(60.0, round(rng.expovariate(1 / (spec.cell_min * 60))))
            cells.append(Cell(i, len(cells), round(t), dur, rng.choice([g for g in spec.gpu_choices if g <= gpus])))
            t += dur + rng.expovariate(1 / (spec.cell_gap_min * 60))
        if not cells:
            continue
        end = max(start + life, cells[-1].submit + cells[-1].duration)
        idx = len(sessions)
        cells = [Cell(idx, c.index, c.submit, c.duration, c.gpus) for c in cells]
        sessions.append(Session(idx, f"syn{idx}", round(start), end, gpus, cells))
    return Workload(name=f"synthetic-{seed}", sessions=sessions, assumptions=[f"synthetic: {spec}"])


def from_tuples(*sessions: tuple[float, float, int, list[tuple[float, float, int]]], name: str = "inline") -> Workload:
    """A small workload written inline: sessions as (start s, stop s, peak GPUs, [(submit s,
    duration s, gpus), ...]). For examples and tests."""
    out = []
    for i, (start, stop, gpus, cells) in enumerate(sessions):
        out.append(Session(i, f"s{i}", start, stop, gpus, [Cell(i, j, *c) for j, c in enumerate(cells)]))
    return Workload(name, out)


def shifted(workload: Workload, max_shift_s: float, seed: int) -> Workload:
    """The workload with each session moved by its own uniform offset in [-max_shift_s, max_shift_s]
    (at the trace's start at the earliest): same sessions and cells, other interleavings. Used to
    show how much a comparison depends on one particular replay."""
    rng = random.Random(seed)
    t0 = min((s.start for s in workload.sessions), default=0.0)
    out = []
    for s in workload.sessions:
        d = max(rng.uniform(-max_shift_s, max_shift_s), t0 - s.start)
        cells = [replace(c, submit=c.submit + d) for c in s.cells]
        out.append(Session(s.index, s.name, s.start + d, s.stop + d, s.gpus, cells))
    return Workload(
        f"{workload.name}~{seed}",
        out,
        workload.download_bps,
        workload.upload_bps,
        [*workload.assumptions, f"sessions shifted by up to {max_shift_s:g} s (seed {seed})"],
    )

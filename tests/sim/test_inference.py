"""Session inference from a task CSV: groups where submit_time goes backwards, cut at idle gaps
longer than the split gap (24 h by default, justified from the session template), and the CSV
named after its file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from notebookos.cli import main
from notebookos.sim.workload import DEFAULT_SPLIT_GAP_S, WorkloadError, load_tasks, split_at_gaps

HEAD = "job_id,num_gpu,submit_time,iterations,model_name,duration,interval\n"


def _csv(tmp_path: Path, rows: list[tuple[int, float, float]], name: str = "t.csv") -> Path:
    p = tmp_path / name
    p.write_text(HEAD + "".join(f"{i},{g},{s},0,x,{d},0\n" for i, (g, s, d) in enumerate(rows)))
    return p


def test_a_group_is_cut_where_it_idles_longer_than_the_gap(tmp_path: Path) -> None:
    # one group (submit never goes backwards): tasks at 0 (10 min), 70 (5 min), 200 (1 min);
    # idle before them: 60 min, then 125 min
    p = _csv(tmp_path, [(1, 0, 10), (4, 70, 5), (8, 200, 1)])
    assert [len(s.cells) for s in load_tasks(p, idle_tail_s=0, split_gap_s=None).sessions] == [3]
    w = load_tasks(p, idle_tail_s=0, split_gap_s=90 * 60)  # only the 125-min gap is longer
    assert [len(s.cells) for s in w.sessions] == [2, 1]
    assert [(s.start, s.stop, s.gpus) for s in w.sessions] == [(0.0, 75 * 60.0, 4), (200 * 60.0, 201 * 60.0, 8)]
    w = load_tasks(p, idle_tail_s=0, split_gap_s=60 * 60)  # a gap of exactly the limit is not cut
    assert [len(s.cells) for s in w.sessions] == [2, 1]
    w = load_tasks(p, idle_tail_s=0, split_gap_s=59 * 60)
    assert [len(s.cells) for s in w.sessions] == [1, 1, 1]
    assert [c.index for s in w.sessions for c in s.cells] == [0, 0, 0]


def test_idle_is_measured_from_the_end_of_serial_execution() -> None:
    # the second task is submitted at 10 while the first runs until 100: it starts at 100 and ends at
    # 110, so the third (at 150) follows 40 s of idle, not 140
    assert [len(p) for p in split_at_gaps([(0, 100, 1), (10, 10, 1), (150, 5, 1)], 50)] == [3]
    assert [len(p) for p in split_at_gaps([(0, 100, 1), (10, 10, 1), (150, 5, 1)], 39)] == [2, 1]


def test_the_default_gap_splits_no_template_session(traces: Path) -> None:
    """The justification of the default: in the session template (real lifetimes) no session idles
    longer than 24 h between two cells, counting CPU-only cells as the CSV's converter does."""
    doc = json.loads((traces / "sensei-june-1-2-2021-sessions.json").read_text())
    longest = []
    for s in doc["sessions"]:
        tasks = sorted((t["start_tick"] * 60.0, t["duration_in_ticks"] * 60.0, 1) for t in s["trainings"])
        if tasks:
            assert len(split_at_gaps(tasks, DEFAULT_SPLIT_GAP_S)) == 1
            end, gaps = None, [0.0]
            for sub, dur, _ in tasks:
                if end is not None:
                    gaps.append(sub - end)
                end = sub + dur if end is None else max(end, sub) + dur
            longest.append(max(gaps))
    assert max(longest) / 3600 == pytest.approx(23.2, abs=0.05)


def test_the_month_with_the_default_split(traces: Path) -> None:
    w = load_tasks(traces / "sensei-june-2021-gpu-tasks.csv")
    assert w.name == "sensei-june-2021-gpu-tasks"
    assert len(w.sessions) == 888 and len(w.cells) == 30909
    lives = sorted(s.stop - s.start for s in w.sessions)
    assert lives[len(lives) // 2] / 3600 == pytest.approx(16.9, abs=0.1)  # unsplit: 344 h
    assert w.reserved_gpu_hours == pytest.approx(235697.1, abs=0.1)
    assert any("24 h" in a for a in w.assumptions) and any("CPU-only" in a for a in w.assumptions)


def test_bad_inference_settings_are_refused(tmp_path: Path, capsys) -> None:
    p = _csv(tmp_path, [(1, 0, 10)])
    with pytest.raises(WorkloadError, match="split gap"):
        load_tasks(p, split_gap_s=0)
    rc = main(["simulate", "--workload", "month", "--tasks", str(p), "--split-gap-h", "-1", "--out", str(tmp_path)])
    assert rc == 2 and "split gap" in capsys.readouterr().err


def test_a_task_csv_is_labelled_by_its_file_name(tmp_path: Path, capsys) -> None:
    p = _csv(tmp_path, [(1, 0, 10), (2, 30, 5)], name="lab-week.csv")
    out = tmp_path / "o"
    rc = main(["simulate", "--workload", "month", "--tasks", str(p), "--out", str(out), "--no-progress"])
    assert rc == 0
    doc = json.loads((out / "results.json").read_text())
    assert [w["title"] for w in doc["workloads"]] == ["lab-week"]
    assert (out / "lab-week-delay-ccdf.png").is_file()
    assert "## lab-week" in capsys.readouterr().out

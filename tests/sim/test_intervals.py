"""Means with 95 % intervals over replays, and the paired comparison that decides what is claimed."""

from __future__ import annotations

import json
import math

import pytest

from notebookos.sim import suite, tables
from notebookos.sim.config import COST_PRESETS, POLICIES
from notebookos.sim.stats import mean_ci, paired, t975, verdict
from notebookos.sim.workload import SyntheticSpec, synthetic


def test_student_t_quantiles() -> None:
    assert t975(1) == 12.706 and t975(2) == 4.303 and t975(9) == 2.262 and t975(30) == 2.042
    assert t975(500) == 1.960
    with pytest.raises(ValueError, match="at least 2 values"):
        t975(0)


def test_mean_and_interval() -> None:
    i = mean_ci([1.0, 2.0, 3.0])  # sd 1, n 3
    assert i.mean == 2.0 and i.half == pytest.approx(4.303 / math.sqrt(3))
    assert i.fmt(".2f") == "2.00 ± 2.48"
    one = mean_ci([5.0])  # a single replay has no interval and never excludes anything
    assert math.isnan(one.half) and not one.excludes(0.0) and one.fmt(".1f") == "5.0"
    assert one.to_dict() == {"mean": 5.0, "ci95": None, "n": 1}
    with pytest.raises(ValueError, match="no values"):
        mean_ci([])


def test_a_difference_is_claimed_only_outside_the_interval() -> None:
    steady = paired([10.0, 11.0, 12.0], [12.0, 13.0, 14.5])  # -2, -2, -2.5
    assert steady.excludes(0.0) and verdict(steady) == "better"
    assert verdict(steady, lower_is_better=False) == "worse"
    noisy = paired([10.0, 14.0, 12.0], [12.0, 11.0, 13.0])  # -2, +3, -1: the interval holds 0
    assert not noisy.excludes(0.0) and verdict(noisy) == "no difference"
    with pytest.raises(ValueError, match="differ in number"):
        paired([1.0], [1.0, 2.0])


def test_tables_report_both_baselines_with_intervals() -> None:
    ws = [synthetic(SyntheticSpec(sessions=12, span_h=6.0), seed) for seed in range(3)]
    runs = suite.run_replays(ws, suite.policies(list(POLICIES)), COST_PRESETS["prototype"])
    text = tables.policy_table(runs, [w.reserved_gpu_hours for w in ws])
    assert f"| {tables.GRANULAR} |" in text and f"| {tables.WHOLE_HOST} |" in text
    assert text.count("±") >= 4 * 8
    same = tables.compare(runs["notebookos"], runs["notebookos"])
    assert {v for _, v in same.values()} == {"no difference"}
    assert "| met |" in tables.compare_rows("x", runs["notebookos"], runs["notebookos"])
    # replay i runs with seed i: the first replay is the workload as given, the others shifted
    rs = suite.replays(ws[0], 3)
    assert rs[0] is ws[0] and [w.name for w in rs[1:]] == [f"{ws[0].name}~1", f"{ws[0].name}~2"]


def test_cli_prints_intervals_over_replays(tmp_path, capsys) -> None:
    from notebookos.cli import main

    out = tmp_path / "o"
    argv = ["simulate", "--workload", "synthetic", "--synthetic-sessions", "10", "--replays", "3"]
    assert main([*argv, "--out", str(out), "--no-plots", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "synthetic-0: 3 replays, mean ± 95 % interval" in printed and "±" in printed
    assert "| ours vs notebookos" not in printed and "GPU-h, ours vs notebookos" in printed
    doc = json.loads((out / "results.json").read_text())
    (section,) = doc["workloads"]
    assert [len(v) for v in section["replays"]["replays"].values()] == [3, 3, 3, 3]
    assert "±" in (out / "report.md").read_text()
    assert main([*argv[:-1], "0", "--out", str(out)]) == 2
    assert "--replays must be >= 1" in capsys.readouterr().err

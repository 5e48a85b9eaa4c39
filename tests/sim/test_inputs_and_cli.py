"""Trace loading (and what bad input says), the autoscaling rules, and `notebookos simulate`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from notebookos.cli import main
from notebookos.policy import autoscale
from notebookos.policy.placement import NodeView, pack_key, rank_key
from notebookos.sim.workload import WorkloadError, load_tasks, load_template


def test_template_as_the_trace_readme_describes_it(traces: Path) -> None:
    w = load_template(traces / "sensei-june-1-2-2021-sessions.json")
    d = w.describe()
    assert d["gpu_cells"] == 518  # 790 events, 518 with GPUs
    assert d["sessions"] == 51  # 59 sessions, 8 never ask for a GPU
    assert d["cell_gpu_hours"] == pytest.approx(1304.2, abs=0.1)
    assert d["reserved_gpu_hours"] == pytest.approx(5070.3, abs=0.1)
    assert (w.download_bps, w.upload_bps) == (200e6, 125e6)


def test_month_sessions_inferred_where_submit_goes_backwards(traces: Path) -> None:
    w = load_tasks(traces / "sensei-june-2021-gpu-tasks.csv", split_gap_s=None)
    assert len(w.sessions) == 337
    assert len(w.cells) == 30909
    assert sum(c.gpus * c.duration for c in w.cells) / 3600 == pytest.approx(155502.2, abs=0.1)
    for s in w.sessions:  # life covers the cells run one after another, plus the 30 min tail
        end = 0.0
        for c in s.cells:
            end = max(end, c.submit) + c.duration
        assert s.stop == end + 1800 and s.start == s.cells[0].submit


def test_csv_session_split(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    p.write_text(
        "job_id,num_gpu,submit_time,iterations,model_name,duration,interval\n"
        "0,1,10,0,x,5,0\n1,4,20,0,x,5,0\n2,8,3,0,x,1,0\n3,1,3,0,x,2,0\n"
    )
    w = load_tasks(p, idle_tail_s=60)
    assert [len(s.cells) for s in w.sessions] == [2, 2]
    assert [s.gpus for s in w.sessions] == [4, 8]
    # session 2: cells at 3 min (1 min) and 3 min (2 min, waits for the first): ends at 6 min
    assert (w.sessions[1].start, w.sessions[1].stop) == (180.0, 360.0 + 60)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("not json", "not JSON"),
        ('{"x": 1}', "'sessions' list"),
        ('{"sessions": [{"start_tick": 1}]}', "missing field 'stop_tick'"),
        ('{"sessions": [{"start_tick": 1, "stop_tick": 0, "trainings": []}]}', "stop_tick before start_tick"),
        (
            '{"sessions": [{"start_tick": 1, "stop_tick": 9, "trainings": [{"gpus": "two"}]}]}',
            "trainings[0].gpus: expected a number",
        ),
    ],
)
def test_bad_template_names_the_problem(tmp_path: Path, text: str, message: str) -> None:
    p = tmp_path / "bad.json"
    p.write_text(text)
    with pytest.raises(WorkloadError, match=None) as e:
        load_template(p)
    assert message in str(e.value) and str(p) in str(e.value)


def test_bad_csv_names_the_row(tmp_path: Path) -> None:
    p = tmp_path / "bad.csv"
    p.write_text("job_id,num_gpu,submit_time,duration\n0,1,10,5\n1,x,20,5\n")
    with pytest.raises(WorkloadError, match=r"bad.csv:3: .*must be numbers"):
        load_tasks(p)
    p.write_text("job_id,gpus\n0,1\n")
    with pytest.raises(WorkloadError, match="missing columns"):
        load_tasks(p)


def test_autoscale_rules() -> None:
    rule = autoscale.ScalingRule(min_hosts=0, buffer_hosts=3)
    assert autoscale.scale_out_target(0, rule) == 3  # the buffer
    assert autoscale.scale_out_target(64, rule) == 9  # ceil(64 x 1.05 / 8) = ceil(8.4)
    assert autoscale.scale_out_target(16, rule) == 3  # ceil(2.1) = 3, not 4 through float noise
    assert autoscale.scale_in_limit(64, rule) == 9  # ceil(64 x 1.1 / 8) = ceil(8.8)
    assert autoscale.hosts_to_release(20, 64, rule) == 2  # 11 above the limit, 2 per round
    assert autoscale.hosts_to_release(9, 64, rule) == 0
    assert autoscale.hosts_to_add(5, 64, rule) == 4
    assert autoscale.headroom_target(12, 4, autoscale.ScalingRule(gpus_per_host=4, min_hosts=1)) == 5
    assert autoscale.scale_out_target(1000, autoscale.ScalingRule(max_hosts=10)) == 10
    with pytest.raises(ValueError, match="gpus_per_host"):
        autoscale.ScalingRule(gpus_per_host=0)


def test_pack_key_prefers_the_tightest_fit() -> None:
    a = NodeView("a", 8, subscribed=8, bound=6)
    b = NodeView("b", 8, subscribed=4, bound=2)
    assert min([a, b], key=pack_key).name == "a"
    assert min([a, b], key=rank_key).name == "b"


def test_cli_synthetic_writes_json_report_and_plots(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    rc = main(["simulate", "--workload", "synthetic", "--synthetic-sessions", "8", "--out", str(out), "--no-progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "| notebookos |" in printed and "| ours |" in printed
    doc = json.loads((out / "results.json").read_text())
    (section,) = doc["workloads"]
    assert [r["policy"] for r in section["results"]] == ["reservation", "batch", "notebookos", "ours"]
    assert all(r["cells_run"] == r["cells"] for r in section["results"])
    report = (out / "report.md").read_text()
    assert "| reservation, whole hosts |" in report and "| reservation, GPU-granular |" in report
    assert len(section["results"][0]["delays"]) == section["results"][0]["cells"] and section["results"][0]["series"]
    for kind in ("cluster-size", "delay-ccdf", "gpu-hours"):
        png = out / f"synthetic-0-{kind}.png"
        assert png.read_bytes()[:4] == b"\x89PNG"


def test_cli_reports_a_missing_trace(tmp_path: Path, capsys) -> None:
    rc = main(["simulate", "--workload", "template", "--trace-dir", str(tmp_path), "--out", str(tmp_path / "o")])
    assert rc == 2
    assert "no such file" in capsys.readouterr().err


def test_cli_rejects_unknown_policy_and_negative_cost(tmp_path: Path, capsys) -> None:
    assert main(["simulate", "--workload", "synthetic", "--policies", "fifo", "--out", str(tmp_path)]) == 2
    assert "unknown policies ['fifo']" in capsys.readouterr().err
    assert main(["simulate", "--workload", "synthetic", "--host-provision-s", "-1", "--out", str(tmp_path)]) == 2
    assert "--host-provision-s must be >= 0" in capsys.readouterr().err

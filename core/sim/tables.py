"""Tables of means with 95 % intervals over replays (Markdown), and the paired comparison of two
policies that decides which differences are claimed."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from notebookos.sim.metrics import Result
from notebookos.sim.stats import Interval, mean_ci, paired, verdict

GRANULAR = "reservation, GPU-granular"
WHOLE_HOST = "reservation, whole hosts"
"""The two reservation baselines: each session's peak GPUs for its life, counted GPU by GPU (no
hosts), and the simulated reservation policy, which rents whole hosts (best-fit packed, released
when empty)."""


def label(policy: str) -> str:
    return WHOLE_HOST if policy == "reservation" else policy


def ci(rs: Sequence[Result], metric: Callable[[Result], float]) -> Interval:
    return mean_ci([metric(r) for r in rs])


def _delay(i: Interval) -> str:
    spec = ".1f" if abs(i.mean) >= 0.1 or i.mean == 0 else ".2f"
    return i.fmt(spec)


def _pct(i: Interval) -> str:
    return i.fmt(".1f", 100, " %")


def policy_table(runs: Mapping[str, Sequence[Result]], granular_h: Sequence[float]) -> str:
    """A row per policy (mean ± 95 % interval over replays), with ratios against both reservation
    baselines; ``granular_h`` is the GPU-granular reservation of each replay."""
    head = (
        "| policy | GPU-h provisioned | vs GPU-granular reservation | vs whole-host reservation | GPU-h used "
        "| start at once | delay mean s | p95 s | p99 s | migrations (cell / drain / rebalance) | cost $ |"
    )
    rows = [head, "|" + "---|" * 11]
    g = mean_ci(list(granular_h))
    whole = runs.get("reservation")
    rows.append(f"| {GRANULAR} | {g.fmt()} | x1.000 | - | - | - | - | - | - | - | - |")
    for name, rs in runs.items():
        gh = [r.gpu_hours_provisioned for r in rs]
        vs_g = mean_ci([x / y for x, y in zip(gh, granular_h, strict=True)])
        vs_w = (
            "-"
            if whole is None
            else mean_ci([x / w.gpu_hours_provisioned for x, w in zip(gh, whole, strict=True)]).fmt(".3f")
        )
        mig = " / ".join(
            f"{ci(rs, f).mean:,.0f}"
            for f in (lambda r: r.migrations, lambda r: r.drain_migrations, lambda r: r.rebalance_migrations)
        )
        rows.append(
            f"| {label(name)} | {mean_ci(gh).fmt()} | x{vs_g.fmt('.3f')} | x{vs_w} "
            f"| {ci(rs, lambda r: r.gpu_hours_used).fmt()} | {_pct(ci(rs, lambda r: r.started_at_once))} "
            f"| {_delay(ci(rs, lambda r: r.delay_mean_s))} | {_delay(ci(rs, lambda r: r.delay_p95_s))} "
            f"| {_delay(ci(rs, lambda r: r.delay_p99_s))} | {mig} | {ci(rs, lambda r: r.cost_usd).fmt()} |"
        )
    return "\n".join(rows)


def compare(a: Sequence[Result], b: Sequence[Result]) -> dict[str, tuple[Interval, str]]:
    """a against b, replay by replay: GPU-hours (% of b), share started at once (points), p95 and
    mean delay (s); each with its interval and verdict for a ("better", "worse", "no difference")."""
    gh = paired(
        [100 * x.gpu_hours_provisioned / y.gpu_hours_provisioned for x, y in zip(a, b, strict=True)], [100.0] * len(a)
    )
    once = paired([100 * r.started_at_once for r in a], [100 * r.started_at_once for r in b])
    p95 = paired([r.delay_p95_s for r in a], [r.delay_p95_s for r in b])
    mean = paired([r.delay_mean_s for r in a], [r.delay_mean_s for r in b])
    return {
        "gpu_hours_pct": (gh, verdict(gh)),
        "started_at_once_pts": (once, verdict(once, lower_is_better=False)),
        "delay_p95_s": (p95, verdict(p95)),
        "delay_mean_s": (mean, verdict(mean)),
    }


def compare_rows(label_: str, a: Sequence[Result], b: Sequence[Result]) -> str:
    c = compare(a, b)
    cells = []
    for key, spec, unit in (
        ("gpu_hours_pct", "+.1f", " %"),
        ("started_at_once_pts", "+.1f", " pts"),
        ("delay_p95_s", "+.1f", " s"),
        ("delay_mean_s", "+.2f", " s"),
    ):
        i, v = c[key]
        cells.append(f"{i.fmt(spec, unit=unit)} ({v})")
    goal = c["gpu_hours_pct"][1] != "worse" and c["started_at_once_pts"][1] != "worse"
    return f"| {label_} | {len(a)} | " + " | ".join(cells) + f" | {'met' if goal else 'NOT met'} |"


COMPARE_HEAD = (
    "| trace, costs | replays | GPU-h, ours vs notebookos | start at once | delay p95 | delay mean "
    "| goal: GPU-h not worse and start at once not worse |\n|---|---|---|---|---|---|---|"
)


def fixed_table(rows: Sequence[tuple[str, Sequence[Result]]]) -> str:
    """Policies on a bounded cluster: (label, replays) per row."""
    out = [
        "| run | hosts (bound) | GPU-h provisioned | start at once | delay mean s | p95 s | p99 s | sessions queued |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rs in rows:
        out.append(
            f"| {name} | {rs[0].max_hosts} | {ci(rs, lambda r: r.gpu_hours_provisioned).fmt()} "
            f"| {_pct(ci(rs, lambda r: r.started_at_once))} | {_delay(ci(rs, lambda r: r.delay_mean_s))} "
            f"| {_delay(ci(rs, lambda r: r.delay_p95_s))} | {_delay(ci(rs, lambda r: r.delay_p99_s))} "
            f"| {ci(rs, lambda r: r.sessions_queued).fmt('.1f')} |"
        )
    return "\n".join(out)

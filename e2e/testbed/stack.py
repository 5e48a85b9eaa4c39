"""NotebookOS on the test bed: the CRDs, the process runner, the extender beside a second
kube-scheduler (`notebookos-scheduler`), the GPU broker and the operator, each a local process.

Used by `make up` (e2e/testbed/up.py) and by the full-stack e2e tests, so both run the same thing.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from notebookos import labels
from notebookos.extender.scheduler_config import extender_entry

from .cluster import REPO, Cluster, free_port
from .runner import ProcessRunner


@dataclass
class Stack:
    cluster: Cluster
    max_subscription_ratio: float = 7.0
    runner: ProcessRunner | None = None
    extender_url: str = ""
    broker_url: str = ""
    operator_health: str = ""
    operator_metrics: str = ""
    extra_operator_env: dict[str, str] = field(default_factory=dict)
    # False: pods stay kwok's (Running and Ready, no process behind them), as the scale benchmark
    # wants for thousands of them; the operator then labels none for the process runner.
    process_pods: bool = True

    def apply_crds(self) -> None:
        c = self.cluster
        c.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
        peering = REPO / "charts" / "notebookos" / "crds"
        if peering.exists():
            c.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(peering))
        c.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")

    def start(self) -> Stack:
        c = self.cluster
        self.apply_crds()
        # What the chart installs beside the CRDs: the capacity requests' PriorityClass.
        from notebookos.operator.capacity import CapacityConfig, priority_class

        c.kubectl("apply", "-f", "-", input=json.dumps(priority_class(CapacityConfig())))
        if self.process_pods:
            self.runner = ProcessRunner(c).start()
        py = sys.executable
        port = free_port()
        self.extender_url = f"http://127.0.0.1:{port}"
        c.spawn(
            "extender",
            [
                py,
                "-m",
                "notebookos.extender.extender_main",
                f"--port={port}",
                f"--kubeconfig={c.kubeconfig}",
                f"--max-subscription-ratio={self.max_subscription_ratio}",
                "--ratio-interval=1",
            ],
            ready_url=f"{self.extender_url}/readyz",
        )
        c.start_scheduler(
            labels.SCHEDULER_NAME,
            # The chart's entry (node names only: the extender keeps its own node cache), so the
            # test bed schedules as a cluster does; 500 full Node objects per call held the scale
            # benchmark's placement to about 5 pods a second.
            extenders=[extender_entry(f"{self.extender_url}/", weight=1)],
        )
        port = free_port()
        self.broker_url = f"http://127.0.0.1:{port}"
        c.spawn(
            "broker",
            [
                py,
                "-m",
                "notebookos.extender.broker_main",
                "--host=127.0.0.1",
                f"--port={port}",
                f"--kubeconfig={c.kubeconfig}",
            ],
            ready_url=f"{self.broker_url}/readyz",
        )
        self.start_operator()
        return self

    def start_operator(
        self,
        name: str = "operator",
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
        peering: tuple[str, int] | None = None,
    ) -> None:
        """`args` and `env`: beside the defaults and extra_operator_env (the scale benchmark's
        baseline); `peering`: (peering object, priority) instead of --standalone."""
        c = self.cluster
        port = free_port()
        self.operator_health = f"http://127.0.0.1:{port}/healthz"
        metrics_port = free_port()
        self.operator_metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        c.spawn(
            name,
            [
                sys.executable,
                "-m",
                "notebookos.operator",
                *(["--standalone"] if peering is None else ["--peering", peering[0], "--priority", str(peering[1])]),
                f"--liveness={self.operator_health}",
                f"--metrics-port={metrics_port}",
                f"--scheduler-name={labels.SCHEDULER_NAME}",
                f"--broker-url={self.broker_url}",
                *([f"--runner={labels.RUNNER_VALUE}"] if self.process_pods else []),
                *args,
            ],
            env={**self.extra_operator_env, **(env or {})},
            ready_url=self.operator_health,
        )

    def close(self) -> None:
        for name in ("operator", "broker", f"scheduler-{labels.SCHEDULER_NAME}", "extender"):
            self.cluster.stop(name)
        if self.runner is not None:
            self.runner.close()


def repo_path(*parts: str) -> Path:
    return REPO.joinpath(*parts)

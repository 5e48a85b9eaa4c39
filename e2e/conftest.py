"""Fixtures of the e2e tier: a real control plane for the session, namespaces, the process runner.

Under CI=true nothing here skips: if the control plane cannot be built or started, the tests error
with the reason. Each component's log is attached to the report of a failing test.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from e2e.testbed.cluster import Cluster, start_cluster
from e2e.testbed.runner import ProcessRunner

_CLUSTER: Cluster | None = None


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    global _CLUSTER
    root = Path(os.environ.get("NOTEBOOKOS_E2E_DIR") or tmp_path_factory.mktemp("cluster"))
    c = start_cluster(root)
    _CLUSTER = c
    print(f"\ncontrol plane up in {c.startup_seconds:.1f}s; kubeconfig {c.kubeconfig}")
    try:
        yield c
    finally:
        _CLUSTER = None
        c.close()


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    name = f"e2e-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(cluster.api())
    core.create_namespace({"metadata": {"name": name}})
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as exc:
        if exc.status != 404:
            raise


@pytest.fixture
def process_runner(cluster: Cluster) -> Iterator[ProcessRunner]:
    runner = ProcessRunner(cluster).start()
    yield runner
    runner.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.failed and _CLUSTER is not None:
        for log in sorted(_CLUSTER.logs_dir.glob("*.log")):
            report.sections.append((f"log {log.name}", _CLUSTER.tail(log.stem, 40)))

"""The chart's NetworkPolicies, as rendered by helm (no CNI enforces them on the test bed:
docs/testbed.md). Each selects exactly its component's pods, names ports those pods have, and
admits only the peers that component serves: the broker's API only kernel pods (by the labels the
operator gives them) and node agents; every other component only the metrics scrapers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from notebookos import labels
from notebookos.extender import node_agent_main
from notebookos.operator import naming

from .test_chart import CHART, NS, container, find, flags, render, run_helm

MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
COMPONENTS = {  # policy -> (kind of its workload, port its scrapers use)
    "notebookos-broker": ("Deployment", "http"),
    "notebookos-scheduler": ("Deployment", "https"),
    "notebookos-operator": ("Deployment", "metrics"),
    "notebookos-node-agent": ("DaemonSet", "metrics"),
}


def policies(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["namespace"] == NS}


def matches(selector: dict[str, Any], pod_labels: dict[str, str]) -> bool:
    ok = all(pod_labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())
    for e in selector.get("matchExpressions", []):
        assert e["operator"] == "In", e
        ok = ok and pod_labels.get(e["key"]) in e["values"]
    return ok


def test_each_component_admits_only_what_it_serves(helm: str) -> None:
    docs = render(helm)
    found = policies(docs)
    assert set(found) == set(COMPONENTS)
    for name, (kind, port) in COMPONENTS.items():
        spec = found[name]["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        pod = find(docs, kind, name)["spec"]["template"]
        # Selects its own pods, and no other component's.
        assert matches(spec["podSelector"], pod["metadata"]["labels"])
        for other, (other_kind, _) in COMPONENTS.items():
            if other != name:
                theirs = find(docs, other_kind, other)["spec"]["template"]["metadata"]["labels"]
                assert not matches(spec["podSelector"], theirs), (name, other)
        ports = [p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])]
        assert port in ports, (name, ports)
        if name != "notebookos-broker":
            assert spec["ingress"] == [], f"{name}: nothing may connect by default"
    (rule,) = found["notebookos-broker"]["spec"]["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    kernels, agents = rule["from"]
    assert kernels["namespaceSelector"] == {}  # kernels live in the users' namespaces
    for component in (naming.COMPONENT_REPLICA, naming.COMPONENT_ROUTER):
        assert matches(kernels["podSelector"], {labels.KERNEL_LABEL: "k", labels.COMPONENT_LABEL: component})
    assert not matches(kernels["podSelector"], {"app": "someone-elses"})
    agent_pod = find(docs, "DaemonSet", "notebookos-node-agent")["spec"]["template"]["metadata"]["labels"]
    assert "namespaceSelector" not in agents and matches(agents["podSelector"], agent_pod)


def test_metrics_scrapers_reach_only_the_metrics_ports(helm: str) -> None:
    found = policies(render(helm, "--set-json", f"networkPolicy.metricsFrom=[{json.dumps(MONITORING)}]"))
    for name, (_, port) in COMPONENTS.items():
        rules = found[name]["spec"]["ingress"]
        scrape = [r for r in rules if MONITORING in r["from"]]
        assert len(scrape) == 1 and scrape[0]["ports"] == [{"port": port, "protocol": "TCP"}], (name, rules)


def test_kubectl_kernel_namespaces_get_a_kernel_policy(helm: str) -> None:
    clients = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "lab"}}}
    docs = render(
        helm,
        "--set-json",
        'networkPolicy.kernelNamespaces=["team-a","team-b"]',
        "--set-json",
        f"networkPolicy.kernelClientsFrom=[{json.dumps(clients)}]",
    )
    kernel = {
        d["metadata"]["namespace"]: d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["namespace"] != NS
    }
    assert set(kernel) == {"team-a", "team-b"}
    for ns, d in kernel.items():
        assert d["metadata"]["name"] == "notebookos-kernels"
        assert d["spec"]["podSelector"] == {} and d["spec"]["policyTypes"] == ["Ingress"]
        assert d["spec"]["ingress"] == [
            {
                "from": [
                    {"podSelector": {}},  # the kernel's own pods: Raft, router to replicas
                    {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NS}}},  # the operator
                    clients,
                ]
            }
        ], ns


def test_policies_can_be_turned_off(helm: str) -> None:
    assert not [d for d in render(helm, "--set", "networkPolicy.enabled=false") if d["kind"] == "NetworkPolicy"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set-json", 'networkPolicy.kernelNamespaces=["Team_A"]'], "at '/networkPolicy/kernelNamespaces/0'"),
        (["--set-json", 'networkPolicy.metricsFrom=[{"pods": {}}]'], "at '/networkPolicy/metricsFrom/0'"),
        (["--set", "nodeAgent.metricsPort=80"], "at '/nodeAgent/metricsPort': minimum: got 80, want 1,024"),
    ],
)
def test_bad_policy_values_are_refused(helm: str, args: list[str], expected: str) -> None:
    proc = run_helm(helm, "template", "notebookos", str(CHART), *args)
    assert proc.returncode != 0 and expected in proc.stderr, proc.stderr


def test_node_agent_serves_its_audit_metrics_and_a_pod_monitor_scrapes_them(helm: str) -> None:
    docs = render(helm, "--set", "metrics.serviceMonitor.enabled=true")
    agent = container(docs, "DaemonSet", "notebookos-node-agent", "node-agent")
    assert node_agent_main.parse_args(flags(agent, "notebookos.extender.node_agent_main")).metrics_port == 9400
    assert {"name": "metrics", "containerPort": 9400} in agent["ports"]
    monitor = find(docs, "PodMonitor", "notebookos-node-agent")["spec"]
    pod = find(docs, "DaemonSet", "notebookos-node-agent")["spec"]["template"]["metadata"]["labels"]
    assert matches(monitor["selector"], pod)
    assert monitor["podMetricsEndpoints"] == [{"port": "metrics", "path": "/metrics", "interval": "30s"}]

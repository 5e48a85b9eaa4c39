"""The chart's JupyterHub objects with per-user isolation, rendered from the values file the docs
show (docs/jupyterhub/), and the docs showing exactly those files. e2e/test_hub.py applies the
same objects to a real API server and runs a hub configured from the same files."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from e2e.testbed.hub import NOTEBOOKOS_VALUES, Z2JH_VALUES, hub_config

from .test_chart import find, render

ROOT = Path(__file__).resolve().parents[2]


def kernel_ns(doc: dict[str, Any]) -> bool:
    return str(doc["metadata"]["namespace"]).startswith("notebookos-kernels")


def per_user(helm: str) -> list[dict[str, Any]]:
    return render(helm, "-f", str(NOTEBOOKOS_VALUES))


def test_each_user_gets_a_namespace_an_account_and_rbac_reaching_only_that_namespace(helm: str) -> None:
    docs = per_user(helm)
    users = yaml.safe_load(NOTEBOOKOS_VALUES.read_text())["jupyterhub"]["users"]
    assert users == ["alice", "bob"]
    for user in users:
        ns = f"notebookos-kernels-{user}"
        assert find(docs, "Namespace", ns)["metadata"]["labels"]["notebookos.io/user"] == user
        sa = find(docs, "ServiceAccount", f"notebookos-user-{user}")
        assert sa["metadata"]["namespace"] == "jupyterhub"
        bindings = [
            d for d in docs if d["kind"] == "RoleBinding" and d["metadata"]["name"] == "notebookos-jupyter-kernels"
        ]
        mine = [b for b in bindings if b["metadata"]["namespace"] == ns]
        assert len(mine) == 1
        assert mine[0]["subjects"] == [
            {"kind": "ServiceAccount", "name": f"notebookos-user-{user}", "namespace": "jupyterhub"}
        ]
        # No other binding names this user's account: it reaches its own namespace only.
        others = [b for b in bindings if b is not mine[0] and f"notebookos-user-{user}" in str(b["subjects"])]
        assert not others
    # No shared account or namespace in per-user mode.
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("ServiceAccount", "notebookos-user") not in names
    assert ("Namespace", "notebookos-kernels") not in names


def test_network_policy_admits_only_the_users_own_server_pods(helm: str) -> None:
    """The test bed's pods are local processes and no CNI enforces NetworkPolicy there, so the
    rendered policy is what is checked (docs/testbed.md)."""
    docs = per_user(helm)
    policies = {d["metadata"]["namespace"]: d for d in docs if d["kind"] == "NetworkPolicy" and kernel_ns(d)}
    assert set(policies) == {"notebookos-kernels-alice", "notebookos-kernels-bob"}
    for user in ("alice", "bob"):
        spec = policies[f"notebookos-kernels-{user}"]["spec"]
        assert spec["podSelector"] == {} and spec["policyTypes"] == ["Ingress"]
        (rule,) = spec["ingress"]
        assert "ports" not in rule
        peers = rule["from"]
        assert {"podSelector": {}} in peers  # the kernel's own pods: Raft, router to replicas
        assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "notebookos-system"}}} in peers
        servers = [p for p in peers if "namespaceSelector" in p and "podSelector" in p]
        assert servers == [
            {
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "jupyterhub"}},
                "podSelector": {"matchLabels": {"component": "singleuser-server", "hub.jupyter.org/username": user}},
            }
        ]
        assert len(peers) == 3
    assert not [d for d in render(helm, "-f", str(NOTEBOOKOS_VALUES), "--set", "jupyterhub.networkPolicy=false")
                if d["kind"] == "NetworkPolicy" and kernel_ns(d)]  # fmt: skip


def test_hub_users_and_chart_users_are_the_same() -> None:
    chart = yaml.safe_load(NOTEBOOKOS_VALUES.read_text())["jupyterhub"]
    z2jh = yaml.safe_load(Z2JH_VALUES.read_text())
    assert z2jh["hub"]["config"]["Authenticator"]["allowed_users"] == chart["users"]
    single = z2jh["singleuser"]
    assert single["serviceAccountName"] == f"{chart['serviceAccount']['name']}-{{username}}"
    assert single["extraEnv"]["KERNEL_NAMESPACE"] == f"{chart['kernelNamespace']}-{{username}}"


def test_the_docs_values_render_to_kubespawner_config() -> None:
    cfg = hub_config(yaml.safe_load(Z2JH_VALUES.read_text()))
    spawner = cfg["KubeSpawner"]
    assert spawner["service_account"] == "notebookos-user-{username}"
    assert spawner["environment"] == {"KERNEL_NAMESPACE": "notebookos-kernels-{username}"}
    assert spawner["delete_grace_period"] == 30
    assert spawner["cmd"] == ["jupyterhub-singleuser"]
    with pytest.raises(ValueError, match=r"singleuser\.storage"):
        hub_config({"singleuser": {"storage": {"type": "none"}}})


@pytest.mark.parametrize("path", [Z2JH_VALUES, NOTEBOOKOS_VALUES], ids=lambda p: p.name)
def test_docs_helm_md_shows_the_tested_values_verbatim(path: Path) -> None:
    """docs/helm.md quotes each values file whole, after a line naming it."""
    text = (ROOT / "docs" / "helm.md").read_text()
    rel = path.relative_to(ROOT).as_posix()
    m = re.search(rf"`{re.escape(rel)}`[^\n]*\n+```yaml\n(.*?)```", text, re.S)
    assert m, f"docs/helm.md does not quote {rel}"
    assert m.group(1) == path.read_text()


def test_usernames_must_be_dns_labels(helm: str) -> None:
    from .test_chart import CHART, run_helm

    proc = run_helm(
        helm, "template", "x", str(CHART), "--set", "jupyterhub.enabled=true", "--set", "jupyterhub.users={Alice}"
    )
    assert proc.returncode != 0 and "at '/jupyterhub/users/0'" in proc.stderr, proc.stderr


def test_servers_egress_reaches_the_charts_kernel_namespaces(helm: str) -> None:
    """Zero-to-JupyterHub's server NetworkPolicy lets servers reach no private IP unless allowed: the
    docs' egress rule must select the namespaces the chart makes."""
    egress = yaml.safe_load(Z2JH_VALUES.read_text())["singleuser"]["networkPolicy"]["egress"]
    selectors = [peer["namespaceSelector"]["matchLabels"] for rule in egress for peer in rule["to"]
                 if "namespaceSelector" in peer]  # fmt: skip
    namespaces = [d for d in per_user(helm) if d["kind"] == "Namespace"]
    assert namespaces and selectors
    for ns in namespaces:
        assert any(sel.items() <= ns["metadata"]["labels"].items() for sel in selectors), ns["metadata"]

"""The Helm chart, rendered by the real helm binary (from e2e/toolchain, never skipped): lint, every
component, security of every container, least-privilege RBAC, the values schema refusing bad
input, and the rendered commands accepted by the components' own argument parsers."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from notebookos import labels
from notebookos.extender import broker_main, extender_main, node_agent_main
from notebookos.extender.scheduler_config import render as render_scheduler_config
from notebookos.operator import capacity

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "notebookos"
NS = "notebookos-system"
ALL_ON = ["--set", "jupyterhub.enabled=true"]


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([helm, *args], capture_output=True, text=True, timeout=60, check=False)


def render(helm: str, *args: str) -> list[dict[str, Any]]:
    proc = run_helm(helm, "template", "notebookos", str(CHART), "-n", NS, *args)
    assert proc.returncode == 0, proc.stderr
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def pod_specs(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for d in docs:
        if d["kind"] in ("Deployment", "DaemonSet", "StatefulSet", "Job"):
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]


def container(docs: list[dict[str, Any]], kind: str, name: str, container_name: str) -> dict[str, Any]:
    spec = find(docs, kind, name)["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == container_name)


def flags(c: dict[str, Any], module: str) -> list[str]:
    cmd = c["command"]
    assert cmd[:3] == ["python", "-m", module], cmd
    return list(cmd[3:]) + list(c.get("args", []))


# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("extra", [[], ALL_ON], ids=["defaults", "jupyterhub"])
def test_helm_lint_passes(helm: str, extra: list[str]) -> None:
    proc = run_helm(helm, "lint", str(CHART), *extra)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_every_component_is_rendered(helm: str) -> None:
    docs = render(helm, *ALL_ON)
    for kind, name in [
        ("Deployment", "notebookos-operator"),
        ("Deployment", "notebookos-scheduler"),
        ("ConfigMap", "notebookos-scheduler"),
        ("Deployment", "notebookos-broker"),
        ("Service", "notebookos-broker"),
        ("DaemonSet", "notebookos-node-agent"),
        ("ValidatingAdmissionPolicy", "notebookos-node-agent-own-node"),
        ("Role", "notebookos-jupyter-kernels"),
        ("RoleBinding", "notebookos-jupyter-kernels"),
        ("ClusterKopfPeering", "notebookos"),
    ]:
        find(docs, kind, name)
    for sa in ("notebookos-operator", "notebookos-scheduler", "notebookos-broker", "notebookos-node-agent"):
        find(docs, "ServiceAccount", sa)
    # Helm installs crds/ itself: the notebookos.io CRDs (kept equal to the models by test_api).
    crds = {
        d["metadata"]["name"] for p in (CHART / "crds").glob("*.yaml") for d in yaml.safe_load_all(p.read_text()) if d
    }
    assert {"notebookkernels.notebookos.io", "kernelreplicas.notebookos.io"} <= crds
    assert {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"} <= crds


def test_components_can_be_turned_off(helm: str) -> None:
    off = ["--set", "scheduler.enabled=false", "--set", "broker.enabled=false", "--set", "nodeAgent.enabled=false"]
    kinds = {(d["kind"], d["metadata"]["name"]) for d in render(helm, *off)}
    assert ("Deployment", "notebookos-operator") in kinds
    assert not any("scheduler" in n or "broker" in n or "node-agent" in n for _, n in kinds), kinds
    env = container(render(helm, *off), "Deployment", "notebookos-operator", "operator")["env"]
    assert {"name": "NOTEBOOKOS_BROKER_URL", "value": ""} in env


@pytest.mark.parametrize("extra", [[], ALL_ON], ids=["defaults", "jupyterhub"])
def test_every_container_is_locked_down(helm: str, extra: list[str]) -> None:
    specs = list(pod_specs(render(helm, *extra)))
    assert len(specs) == 4
    for where, spec in specs:
        pod_sc = spec.get("securityContext", {})
        assert pod_sc.get("seccompProfile") == {"type": "RuntimeDefault"}, where
        # Service links (NOTEBOOKOS_BROKER_PORT=tcp://…) would override the components' settings.
        assert spec.get("enableServiceLinks") is False, where
        assert spec.get("hostNetwork") is not True and spec.get("hostPID") is not True, where
        for c in spec.get("initContainers", []) + spec["containers"]:
            at = f"{where} container {c['name']}"
            sc = c.get("securityContext", {})
            assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True, at
            assert sc.get("runAsUser", pod_sc.get("runAsUser")) not in (0, None), at
            assert sc.get("readOnlyRootFilesystem") is True, at
            assert sc.get("allowPrivilegeEscalation") is False, at
            assert sc.get("privileged", False) is False, at
            assert sc.get("capabilities") == {"drop": ["ALL"]}, at
            res = c.get("resources", {})
            assert res.get("requests", {}).get("cpu") and res["requests"].get("memory"), at
            assert res.get("limits", {}).get("memory"), at


def test_service_account_tokens_only_where_needed(helm: str) -> None:
    docs = render(helm, *ALL_ON)
    ours = [d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"].startswith("notebookos-")]
    for sa in ours:
        if sa["metadata"]["name"] != "notebookos-user":  # JupyterHub decides for its servers
            assert sa.get("automountServiceAccountToken") is False, sa["metadata"]["name"]
    for where, spec in pod_specs(docs):
        # Every component talks to the API server, so each pod opts in explicitly.
        assert spec["automountServiceAccountToken"] is True, where


def test_rbac_has_no_wildcards_or_escalation(helm: str) -> None:
    docs = render(helm, *ALL_ON)
    roles = [d for d in docs if d["kind"] in ("Role", "ClusterRole")]
    assert len(roles) >= 7
    for r in roles:
        assert r.get("rules"), r["metadata"]["name"]
        for rule in r["rules"]:
            where = f"{r['kind']}/{r['metadata']['name']}: {rule}"
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                assert not any("*" in v for v in rule.get(field, [])), where
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), where
        assert not r.get("aggregationRule"), r["metadata"]["name"]
    bindings = [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    bound = {b["roleRef"]["name"] for b in bindings}
    upstream = {"system:kube-scheduler", "system:volume-scheduler", "extension-apiserver-authentication-reader"}
    assert bound == {r["metadata"]["name"] for r in roles} | upstream
    assert all(b["roleRef"]["name"] != "cluster-admin" for b in bindings)


def rules_of(docs: list[dict[str, Any]], kind: str, name: str) -> set[tuple[str, str, str]]:
    return {
        (g, res, v)
        for rule in find(docs, kind, name)["rules"]
        for g in rule["apiGroups"]
        for res in rule["resources"]
        for v in rule["verbs"]
    }


def test_each_component_gets_exactly_what_docs_extender_md_lists(helm: str) -> None:
    docs = render(helm, *ALL_ON)
    assert rules_of(docs, "ClusterRole", "notebookos-extender") == {
        ("", r, v) for r in ("nodes", "pods") for v in ("get", "list", "watch")
    } | {("notebookos.io", "kernelreplicas", v) for v in ("get", "list", "watch")}
    assert rules_of(docs, "ClusterRole", "notebookos-broker") == {
        ("authentication.k8s.io", "tokenreviews", "create"),
        ("", "pods", "get"),
        ("", "nodes", "list"),
        ("", "nodes", "watch"),
        ("notebookos.io", "kernelreplicas", "get"),
        ("notebookos.io", "kernelreplicas", "list"),
        ("notebookos.io", "kernelreplicas", "watch"),
        ("notebookos.io", "kernelreplicas/status", "get"),
        ("notebookos.io", "kernelreplicas/status", "patch"),
    }
    assert rules_of(docs, "ClusterRole", "notebookos-node-agent") == {("", "nodes", "get"), ("", "nodes", "patch")}
    assert rules_of(docs, "Role", "notebookos-node-agent-events") == {("", "events", "create")}
    lease = find(docs, "Role", "notebookos-scheduler-leader-election")["rules"]
    assert {"resourceNames": ["notebookos-scheduler"]}.items() <= lease[1].items()
    jupyter = find(docs, "Role", "notebookos-jupyter-kernels")
    assert jupyter["metadata"]["namespace"] == "notebookos-kernels"
    assert rules_of(docs, "Role", "notebookos-jupyter-kernels") == {
        ("notebookos.io", "notebookkernels", v) for v in ("create", "get", "list", "watch", "delete")
    } | {("", "secrets", "get"), ("", "services", "get"), ("", "pods", "list")}
    subject = find(docs, "RoleBinding", "notebookos-jupyter-kernels")["subjects"][0]
    assert subject == {"kind": "ServiceAccount", "name": "notebookos-user", "namespace": "jupyterhub"}


def test_jupyterhub_rbac_only_when_enabled(helm: str) -> None:
    kinds = {(d["kind"], d["metadata"]["name"]) for d in render(helm)}
    assert ("Role", "notebookos-jupyter-kernels") not in kinds
    docs = render(
        helm,
        *ALL_ON,
        *("--set", "jupyterhub.serviceAccount.name=hub-user", "--set", "jupyterhub.serviceAccount.create=false"),
        *("--set", "jupyterhub.kernelNamespace=team-a", "--set", "jupyterhub.createKernelNamespace=false"),
    )
    assert find(docs, "Role", "notebookos-jupyter-kernels")["metadata"]["namespace"] == "team-a"
    assert find(docs, "RoleBinding", "notebookos-jupyter-kernels")["subjects"][0]["name"] == "hub-user"
    assert not [d for d in docs if d["kind"] in ("Namespace", "ServiceAccount") and "hub-user" in str(d)]


def test_scheduler_config_is_what_scheduler_config_render_makes(helm: str) -> None:
    docs = render(helm, "--set", "scheduler.extender.port=9999", "--set", "scheduler.extender.weight=3")
    cfg = yaml.safe_load(find(docs, "ConfigMap", "notebookos-scheduler")["data"]["config.yaml"])
    assert cfg == render_scheduler_config("http://127.0.0.1:9999/", namespace=NS, weight=3)
    assert cfg["profiles"][0]["schedulerName"] == labels.SCHEDULER_NAME
    kube = container(docs, "Deployment", "notebookos-scheduler", "kube-scheduler")
    assert kube["image"] == "registry.k8s.io/kube-scheduler:v1.36.3"
    assert "--config=/etc/notebookos-scheduler/config.yaml" in kube["command"]


def test_extender_listens_on_localhost_only_and_its_flags_parse(helm: str) -> None:
    docs = render(helm, "--set", "scheduler.extender.maxSubscriptionRatio=2.5")
    ext = container(docs, "Deployment", "notebookos-scheduler", "extender")
    args = extender_main.parse_args(flags(ext, "notebookos.extender.extender_main"))
    assert args.host == "127.0.0.1" and args.port == 8888
    assert args.max_subscription_ratio == 2.5
    assert "ports" not in ext
    # No Service reaches the extender: only the broker's and the operator's metrics have one.
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    assert sorted(services) == ["notebookos-broker", "notebookos-operator-metrics"]
    assert services["notebookos-broker"]["spec"]["selector"]["app.kubernetes.io/name"] == "notebookos-broker"
    assert all(s["spec"]["type"] == "ClusterIP" for s in services.values())


def test_broker_flags_parse_and_the_operator_points_at_its_service(helm: str) -> None:
    docs = render(helm, "--set", "broker.extraAdmins={alice}")
    broker = container(docs, "Deployment", "notebookos-broker", "broker")
    args = broker_main.parse_args(flags(broker, "notebookos.extender.broker_main"))
    node_agent_user = f"system:serviceaccount:{NS}:notebookos-node-agent"
    assert args.admin == [node_agent_user, "alice"] and args.port == 8889
    assert find(docs, "Deployment", "notebookos-broker")["spec"]["strategy"] == {"type": "Recreate"}
    url = f"http://notebookos-broker.{NS}.svc:8889"
    env = container(docs, "Deployment", "notebookos-operator", "operator")["env"]
    assert {"name": "NOTEBOOKOS_BROKER_URL", "value": url} in env
    explicit = render(helm, "--set", "operator.brokerUrl=https://gpu.example:443")
    env = container(explicit, "Deployment", "notebookos-operator", "operator")["env"]
    assert {"name": "NOTEBOOKOS_BROKER_URL", "value": "https://gpu.example:443"} in env


def test_node_agent_runs_on_the_gpu_pool_with_nvml(helm: str) -> None:
    docs = render(helm)
    spec = find(docs, "DaemonSet", "notebookos-node-agent")["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {labels.GPU_POOL_LABEL: labels.GPU_POOL_VALUE}
    assert {
        "key": labels.GPU_TAINT_KEY,
        "operator": "Equal",
        "value": labels.GPU_TAINT_VALUE,
        "effect": labels.GPU_TAINT_EFFECT,
    } in spec["tolerations"]
    assert spec["runtimeClassName"] == "nvidia"
    agent = spec["containers"][0]
    assert {"name": "NVIDIA_VISIBLE_DEVICES", "value": "all"} in agent["env"]
    assert {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}} in agent["env"]
    args = node_agent_main.parse_args(flags(agent, "notebookos.extender.node_agent_main"))
    assert args.nvml == "real" and args.event_namespace == NS
    assert args.broker_url == f"http://notebookos-broker.{NS}.svc:8889"
    env = container(docs, "Deployment", "notebookos-operator", "operator")["env"]
    assert {"name": "NOTEBOOKOS_RUNTIME_CLASS", "value": "nvidia"} in env
    # Empty: the cluster's default runtime, for node agent and replicas alike.
    plain = render(helm, "--set", "gpuRuntimeClassName=")
    assert "runtimeClassName" not in find(plain, "DaemonSet", "notebookos-node-agent")["spec"]["template"]["spec"]


@pytest.mark.parametrize("extra", [[], ["--set", "capacityRequests.priority=-7,capacityRequests.gpusPerNode=4"]])
def test_capacity_priority_class_is_what_the_builder_makes_from_the_operators_env(helm: str, extra: list[str]) -> None:
    docs = render(helm, *extra)
    env = container(docs, "Deployment", "notebookos-operator", "operator")["env"]
    cfg = capacity.CapacityConfig.from_env({e["name"]: e["value"] for e in env if "value" in e})
    rendered = find(docs, "PriorityClass", cfg.priority_class)
    built = capacity.priority_class(cfg)
    assert {k: v for k, v in rendered.items() if k != "metadata"} == {k: v for k, v in built.items() if k != "metadata"}
    assert cfg.gpus_per_node == (4 if extra else 8) and cfg.priority == (-7 if extra else capacity.DEFAULT_PRIORITY)


def test_scale_in_is_off_by_default_and_configured_from_values(helm: str) -> None:
    from notebookos.operator.scale_in import ScaleInConfig

    def cfg(*extra: str) -> ScaleInConfig:
        env = container(render(helm, *extra), "Deployment", "notebookos-operator", "operator")["env"]
        return ScaleInConfig.from_env({e["name"]: e["value"] for e in env if "value" in e})

    assert not cfg().enabled
    on = cfg("--set", "scaleIn.nodeSelector=karpenter.sh/nodepool,scaleIn.idleSeconds=120")
    assert on.enabled and on.selector == "karpenter.sh/nodepool" and on.idle_seconds == 120


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "scaleIn.intervalSeconds=0"], "at '/scaleIn/intervalSeconds': minimum: got 0, want 1"),
        (["--set", "scheduler.replicas=-1"], "at '/scheduler/replicas': minimum: got -1, want 0"),
        (["--set", "operator.replicas=-2"], "at '/operator/replicas': minimum: got -2, want 0"),
        (["--set", "broker.replicas=2"], "at '/broker/replicas': maximum: got 2, want 1"),
        (["--set", "scheduler.extender.maxSubscriptionRatio=0.5"], "'0.5' does not match pattern"),
        (["--set-json", "scheduler.extender.maxSubscriptionRatio=0.5"], "minimum: got 0.5, want 1"),
        (["--set", "scheduler.extender.kernelReplicas=4"], "value must be one of 1, 3, 5, 7, 9"),
        (["--set", "operator.image=a b"], "at '/operator/image': 'a b' does not match pattern"),
        (["--set", "images.tag=v1 rc"], "at '/images/tag'"),
        (["--set", "images.registry=ghcr.io/x:1"], "at '/images/registry'"),
        (["--set", "nodeAgent.nvml=gpu"], "at '/nodeAgent/nvml'"),
        (["--set", "scheduler.extender.port=80"], "at '/scheduler/extender/port': minimum: got 80, want 1,024"),
        (["--set", "operator.replicass=1"], "additional properties 'replicass' not allowed"),
        (["--set", "jupyterhub.kernelNamespace=Team_A"], "at '/jupyterhub/kernelNamespace'"),
        (["--set", "capacityRequests.priority=-11"], "at '/capacityRequests/priority': minimum: got -11, want -10"),
        (["--set", "capacityRequests.priority=0"], "at '/capacityRequests/priority': maximum: got 0, want -1"),
        (["--set", "operator.checkpointStore=/mnt/shared"], "at '/operator/checkpointStore'"),
        (["--set", "operator.wakeTimeoutSeconds=5"], "at '/operator/wakeTimeoutSeconds': minimum: got 5, want 10"),
    ],
)
def test_bad_values_are_refused_by_the_schema(helm: str, args: list[str], expected: str) -> None:
    proc = run_helm(helm, "template", "notebookos", str(CHART), *args)
    assert proc.returncode != 0, proc.stdout[:500]
    assert "values don't meet the specifications of the schema" in proc.stderr
    assert expected in proc.stderr, proc.stderr


def test_operator_serves_metrics_on_a_service_and_service_monitors_are_optional(helm: str) -> None:
    from notebookos.operator.__main__ import parse_args

    docs = render(helm)
    op = container(docs, "Deployment", "notebookos-operator", "operator")
    assert parse_args(flags(op, "notebookos.operator")).metrics_port == 8081
    assert {"name": "metrics", "containerPort": 8081} in op["ports"]
    svc = find(docs, "Service", "notebookos-operator-metrics")
    assert svc["spec"]["ports"] == [{"name": "metrics", "port": 8081, "targetPort": "metrics"}]
    assert svc["spec"]["selector"]["app.kubernetes.io/name"] == "notebookos-operator"
    assert not [d for d in docs if d["kind"] == "ServiceMonitor"]  # off by default: needs Prometheus Operator's CRDs
    on = render(
        helm, "--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.serviceMonitor.labels.release=kps"
    )
    monitors = {d["metadata"]["name"]: d for d in on if d["kind"] == "ServiceMonitor"}
    assert set(monitors) == {"notebookos-operator", "notebookos-broker"}
    for name, port in (("notebookos-operator", "metrics"), ("notebookos-broker", "http")):
        m = monitors[name]
        assert m["metadata"]["labels"]["release"] == "kps"
        assert m["spec"]["endpoints"] == [{"port": port, "path": "/metrics", "interval": "30s"}]
        # The ServiceMonitor selects a Service that exists and names the port it has.
        svc = next(
            d for d in on if d["kind"] == "Service" and d["metadata"]["labels"]["app.kubernetes.io/name"] == name
        )
        assert all(svc["metadata"]["labels"][k] == v for k, v in m["spec"]["selector"]["matchLabels"].items())
        assert port in [p["name"] for p in svc["spec"]["ports"]]
    no_broker = render(helm, "--set", "metrics.serviceMonitor.enabled=true", "--set", "broker.enabled=false")
    assert [d["metadata"]["name"] for d in no_broker if d["kind"] == "ServiceMonitor"] == ["notebookos-operator"]
    proc = run_helm(helm, "template", "notebookos", str(CHART), "--set", "metrics.serviceMonitor.interval=often")
    assert proc.returncode != 0 and "at '/metrics/serviceMonitor/interval'" in proc.stderr, proc.stderr


def test_the_operators_hibernation_settings_come_from_values_and_parse(helm: str) -> None:
    from notebookos.operator.config import OperatorConfig

    docs = render(
        helm, "--set", "operator.checkpointStore=s3://bucket/nbos", "--set", "operator.wakeTimeoutSeconds=120"
    )
    op = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("operator"))
    env = {e["name"]: e.get("value") for e in op["spec"]["template"]["spec"]["containers"][0]["env"]}
    cfg = OperatorConfig.from_env({k: v for k, v in env.items() if v is not None})
    assert (cfg.checkpoint_store, cfg.wake_timeout_seconds) == ("s3://bucket/nbos", 120)


def test_gpu_pool_tolerations_reach_replica_pods_and_the_node_agent(helm: str) -> None:
    from notebookos.operator.config import OperatorConfig

    gke = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    docs = render(helm, "--set-json", f"gpuPoolTolerations=[{json.dumps(gke)}]")
    env = {e["name"]: e.get("value") for e in container(docs, "Deployment", "notebookos-operator", "operator")["env"]}
    cfg = OperatorConfig.from_env(env)
    assert list(cfg.extra_tolerations) == [gke]  # the operator adds them to every replica pod
    agent = find(docs, "DaemonSet", "notebookos-node-agent")["spec"]["template"]["spec"]
    assert gke in agent["tolerations"] and len(agent["tolerations"]) == 2
    default = {
        e["name"]: e.get("value")
        for e in container(render(helm), "Deployment", "notebookos-operator", "operator")["env"]
    }
    assert OperatorConfig.from_env(default).extra_tolerations == ()
    proc = run_helm(
        helm, "template", "notebookos", str(CHART), "--set-json", 'gpuPoolTolerations=[{"operator":"Maybe"}]'
    )
    assert proc.returncode != 0 and "at '/gpuPoolTolerations/0/operator'" in proc.stderr, proc.stderr

"""An admission policy that refuses an operation on KernelReplicas in one namespace for a while: the
e2e tier's way to make the operator's writes fail (and to hold it mid-way), with the real API
server's ValidatingAdmissionPolicy."""

from __future__ import annotations

import yaml
from kubernetes import client

from .cluster import Cluster

G, V = "notebookos.io", "v1alpha1"
_PROBE = {"apiVersion": f"{G}/{V}", "kind": "KernelReplica", "metadata": {"name": "probe-1"},
          "spec": {"kernelName": "probe", "replicaId": 1}}  # fmt: skip


def refuse_replicas(cluster: Cluster, ns: str, operation: str, message: str) -> str:
    """Refuse `operation` (CREATE, DELETE, ...) on KernelReplicas in `ns` with `message`; the
    policy's name (give it to allow_replicas)."""
    name = f"refuse-{operation.lower()}-{ns}"
    vap = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {"apiGroups": [G], "apiVersions": [V], "operations": [operation], "resources": ["kernelreplicas"]}
                ]
            },
            "validations": [{"expression": "false", "message": message}],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name},
        "spec": {
            "policyName": name,
            "validationActions": ["Deny"],
            "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns}}},
        },
    }
    cluster.kubectl("apply", "-f", "-", input=yaml.safe_dump_all([vap, binding]))
    return name


def allow_replicas(cluster: Cluster, name: str) -> None:
    admission = client.AdmissionregistrationV1Api(cluster.api())
    admission.delete_validating_admission_policy_binding(name)
    admission.delete_validating_admission_policy(name)


def refusal(cluster: Cluster, ns: str, operation: str) -> str:
    """What the API server answers a dry run of `operation` on a probe KernelReplica ("" if allowed):
    policies take effect asynchronously, so a test waits until this names its message."""
    api = client.CustomObjectsApi(cluster.api())
    try:
        if operation == "CREATE":
            api.create_namespaced_custom_object(G, V, ns, "kernelreplicas", _PROBE, dry_run="All")
        else:
            try:
                api.create_namespaced_custom_object(G, V, ns, "kernelreplicas", _PROBE)
            except client.exceptions.ApiException as exc:
                if exc.status != 409:
                    raise
            api.delete_namespaced_custom_object(G, V, ns, "kernelreplicas", "probe-1", dry_run="All")
    except client.exceptions.ApiException as exc:
        return str(exc.body)
    return ""

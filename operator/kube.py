"""The few API calls the operator makes, over the official kubernetes client, returning plain dicts."""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from notebookos.api import GROUP, VERSION
from notebookos.api.models import RESOURCES

Obj = dict[str, Any]

PLURALS = {r.__name__: r.crd_plural for r in RESOURCES}


def _message(exc: ApiException) -> str:
    try:
        return str(json.loads(exc.body or "{}").get("message") or exc.reason)
    except ValueError:
        return str(exc.reason)


def owned_by(obj: Obj, uid: str) -> bool:
    """Whether `obj` names the object with this uid among its owners."""
    return any(ref.get("uid") == uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


class Conflict(Exception):
    """The object changed since it was read (409); read it again and recompute."""


class Refused(Exception):
    """The API server refused to make an object (403, 422: admission, a missing PriorityClass);
    the message is the server's."""


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        # Typed Any: the client accepts plain dicts as bodies, which its stubs do not say.
        self.core: Any = client.CoreV1Api(api)
        self.custom: Any = client.CustomObjectsApi(api)
        self.policy: Any = client.PolicyV1Api(api)
        self.rbac: Any = client.RbacAuthorizationV1Api(api)

    def _dict(self, obj: Any) -> Obj:
        out: Obj = self.api.sanitize_for_serialization(obj)
        return out

    # -------------------------------------------------------------------------------- custom objects

    def get_custom(self, kind: str, ns: str, name: str) -> Obj | None:
        try:
            return dict(self.custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURALS[kind], name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_custom(self, kind: str, ns: str, selector: str) -> list[Obj]:
        out = self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURALS[kind], label_selector=selector)
        return [dict(i) for i in out.get("items", [])]

    def list_custom_all(self, kind: str) -> list[Obj]:
        out = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURALS[kind])
        return [dict(i) for i in out.get("items", [])]

    def delete_custom(self, kind: str, ns: str, name: str) -> None:
        try:
            self.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURALS[kind], name)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def patch_annotations(self, kind: str, ns: str, name: str, annotations: dict[str, str | None]) -> Obj:
        """Merge-patch metadata.annotations (None removes a key) of a custom object or a pod."""
        body = {"metadata": {"annotations": annotations}}
        if kind == "Pod":
            return self._dict(self.core.patch_namespaced_pod(name, ns, body))
        return dict(self.custom.patch_namespaced_custom_object(GROUP, VERSION, ns, PLURALS[kind], name, body))

    def patch_status(self, obj: Obj, status: dict[str, Any]) -> Obj:
        """Merge-patch these status fields (None removes one) of the object as read: its
        resourceVersion makes the write a compare-and-swap, and fields not named stay as they are."""
        meta = obj["metadata"]
        body = {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": status}
        try:
            return dict(
                self.custom.patch_namespaced_custom_object_status(
                    GROUP, VERSION, meta["namespace"], PLURALS[obj["kind"]], meta["name"], body
                )
            )
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(meta["name"]) from exc
            raise

    # -------------------------------------------------------------------------------- built-ins

    def create(self, manifest: Obj) -> Obj | None:
        """Create; None when it already exists (deterministic names make this idempotent)."""
        kind, ns = manifest["kind"], manifest["metadata"]["namespace"]
        try:
            if kind == "Secret":
                return self._dict(self.core.create_namespaced_secret(ns, manifest))
            if kind == "Service":
                return self._dict(self.core.create_namespaced_service(ns, manifest))
            if kind == "ConfigMap":
                return self._dict(self.core.create_namespaced_config_map(ns, manifest))
            if kind == "Pod":
                return self._dict(self.core.create_namespaced_pod(ns, manifest))
            if kind == "PodDisruptionBudget":
                return self._dict(self.policy.create_namespaced_pod_disruption_budget(ns, manifest))
            if kind == "ServiceAccount":
                return self._dict(self.core.create_namespaced_service_account(ns, manifest))
            if kind == "Role":
                return self._dict(self.rbac.create_namespaced_role(ns, manifest))
            if kind == "RoleBinding":
                return self._dict(self.rbac.create_namespaced_role_binding(ns, manifest))
            if kind in PLURALS:
                return dict(self.custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURALS[kind], manifest))
        except ApiException as exc:
            if exc.status == 409:
                return None
            if exc.status in (403, 422):
                raise Refused(_message(exc)) from exc
            raise
        raise ValueError(f"cannot create kind {kind}")

    def get(self, kind: str, ns: str, name: str) -> Obj | None:
        read = {
            "Secret": self.core.read_namespaced_secret,
            "Service": self.core.read_namespaced_service,
            "ConfigMap": self.core.read_namespaced_config_map,
            "Pod": self.core.read_namespaced_pod,
            "PodDisruptionBudget": self.policy.read_namespaced_pod_disruption_budget,
            "ServiceAccount": self.core.read_namespaced_service_account,
            "Role": self.rbac.read_namespaced_role,
            "RoleBinding": self.rbac.read_namespaced_role_binding,
        }[kind]
        try:
            return self._dict(read(name, ns))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def exists(self, kind: str, ns: str, name: str) -> bool:
        # Secrets: read to learn that one exists, and the kernel's key to sign the router's control
        # messages (router_control.py); never logged or written anywhere.
        return self.get(kind, ns, name) is not None

    def patch_configmap_data(self, ns: str, name: str, data: dict[str, str | None]) -> None:
        self.core.patch_namespaced_config_map(name, ns, {"data": data})

    def drop_configmap_key(self, ns: str, name: str, key: str) -> None:
        try:
            self.core.patch_namespaced_config_map(name, ns, {"data": {key: None}})
        except ApiException as exc:
            if exc.status != 404:
                raise

    def list_pods(self, ns: str, selector: str) -> list[Obj]:
        return [self._dict(p) for p in self.core.list_namespaced_pod(ns, label_selector=selector).items]

    def list_all_pods(self, selector: str) -> list[Obj]:
        return [self._dict(p) for p in self.core.list_pod_for_all_namespaces(label_selector=selector).items]

    def list_nodes(self, selector: str = "") -> list[Obj]:
        return [self._dict(n) for n in self.core.list_node(label_selector=selector).items]

    def set_node_taints(self, name: str, resource_version: str | None, taints: list[Obj]) -> None:
        """Replace a node's taints, only if it is still at `resource_version` (else Conflict)."""
        meta = {"resourceVersion": resource_version} if resource_version else {}
        try:
            self.core.patch_node(name, {"metadata": meta, "spec": {"taints": taints}})
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(name) from exc
            raise

    def list_pods_on_node(self, node: str, selector: str) -> list[Obj]:
        pods = self.core.list_pod_for_all_namespaces(label_selector=selector, field_selector=f"spec.nodeName={node}")
        return [self._dict(p) for p in pods.items]

    def delete_pod(self, ns: str, name: str, force: bool = False) -> None:
        try:
            self.core.delete_namespaced_pod(name, ns, grace_period_seconds=0 if force else None)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def get_node(self, name: str) -> Obj | None:
        try:
            return self._dict(self.core.read_node(name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def node_exists(self, name: str) -> bool:
        try:
            self.core.read_node(name)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

"""A jupyter_client kernel provisioner that runs each kernel as a NotebookKernel.

Registered as the entry point ``notebookos-provisioner``. A kernelspec selects it with
``metadata.kernel_provisioner = {"provisioner_name": "notebookos-provisioner", "config": {...}}``;
`notebookos kernelspec install` writes such specs. The provisioner creates the NotebookKernel, waits
until it is Ready (logging progress, failing with the Scheduled condition's message when it cannot
be placed), returns the router's connection info, maps poll/kill/terminate onto the resource and
deletes it on shutdown. Its info (namespace and name) is saved so a restarted Jupyter Server can
reconnect to the running kernel.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from typing import Any, cast

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from traitlets import Dict, Float, Integer, List, Unicode
from traitlets import Union as UnionTrait

from .api import GROUP, VERSION, NotebookKernel
from .kube import PLURAL, api_client, default_namespace, kernel_connection

# Kernelspec config keys -> NotebookKernel spec (documented in docs/jupyter.md).
SPEC_KEYS = ("replicas", "image", "idleTimeout", "storage", "env")
RESOURCE_KEYS = ("gpus", "cpu", "memory", "gpuMemory")
READY_PHASES = {"Ready", "Degraded"}


def kernel_name_for(kernel_id: str) -> str:
    return f"jupyter-{kernel_id}"[:63].rstrip("-")


def build_kernel(
    name: str, namespace: str, config: dict[str, Any], env: dict[str, str], kernel_id: str
) -> dict[str, Any]:
    """The NotebookKernel manifest for a launch: the kernelspec's config, the user from KERNEL_USERNAME,
    and per-launch overrides from KERNEL_GPUS / KERNEL_IMAGE (Enterprise Gateway's names)."""
    spec: dict[str, Any] = {k: config[k] for k in SPEC_KEYS if k in config}
    resources = {k: config[k] for k in RESOURCE_KEYS if k in config}
    if env.get("KERNEL_GPUS"):
        resources["gpus"] = int(env["KERNEL_GPUS"])
    if env.get("KERNEL_IMAGE"):
        spec["image"] = env["KERNEL_IMAGE"]
    if resources:
        spec["resources"] = resources
    user = env.get("KERNEL_USERNAME") or env.get("JUPYTERHUB_USER")
    if user:
        spec["user"] = user
    labels = {"app.kubernetes.io/created-by": "notebookos-provisioner", "notebookos.io/jupyter-kernel-id": kernel_id}
    if user:
        labels["notebookos.io/user"] = re.sub(r"[^A-Za-z0-9_.-]", "-", user)[:63].strip("-._") or "user"
    manifest = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "NotebookKernel",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": spec,
    }
    NotebookKernel.model_validate(manifest)  # refuse a bad kernelspec config here, with the field named
    return manifest


def unschedulable_message(kernel: NotebookKernel) -> str | None:
    for c in kernel.status.conditions:
        if c.type == "Scheduled" and c.status == "False":
            return f"{c.reason}: {c.message}" if c.reason else c.message
    return None


class NotebookOSProvisioner(KernelProvisionerBase):
    # The kernelspec's metadata.kernel_provisioner.config sets these traits (jupyter_client passes
    # its keys to the constructor). The first group shapes the NotebookKernel.
    gpus = Integer(None, allow_none=True, config=True, help="GPUs bound while a cell runs")
    cpu = UnionTrait([Integer(), Unicode()], default_value=None, allow_none=True, config=True, help="CPU per replica")
    memory = Unicode(None, allow_none=True, config=True, help="Memory per replica, a Kubernetes quantity")
    gpuMemory = Unicode(None, allow_none=True, config=True, help="GPU memory each GPU must have")
    image = Unicode(None, allow_none=True, config=True, help="Kernel image (default: the operator's)")
    replicas = Integer(None, allow_none=True, config=True, help="Raft replicas, odd")
    idleTimeout = Unicode(None, allow_none=True, config=True, help="Go duration, e.g. 1h")
    storage = Dict(None, allow_none=True, config=True, help="{url, secretName, thresholdBytes}")
    env: List[dict[str, str]] = List(None, allow_none=True, config=True, help="[{name, value}] set in every replica")

    namespace = Unicode("", config=True, help="Namespace for NotebookKernels (default: the pod's own or kubeconfig's)")
    connect_via = Unicode(
        "service",
        config=True,
        help="How to reach the router: service (cluster DNS), pod (router pod IP), local (port-forward)",
    )
    launch_timeout = Float(
        float(os.environ.get("KERNEL_LAUNCH_TIMEOUT", "300")), config=True, help="Seconds to wait for Ready"
    )
    unschedulable_timeout = Float(
        60.0, config=True, help="Fail the launch once the kernel has been unschedulable this long (seconds)"
    )
    poll_interval = Float(1.0, config=True, help="Seconds between status reads while launching")
    kubeconfig = Unicode("", config=True, help="Kubeconfig path (default: in-cluster, then $KUBECONFIG)")

    kernel_resource: str | None = None
    _api: Any = None

    # --- helpers -------------------------------------------------------------------------------

    def _cfg(self) -> dict[str, Any]:
        """The NotebookKernel's settings from the kernelspec, those that are set."""
        values = {k: getattr(self, k) for k in (*SPEC_KEYS, *RESOURCE_KEYS)}
        return {k: v for k, v in values.items() if v is not None and v != {} and v != []}

    def _client(self) -> Any:
        if self._api is None:
            self._api = api_client(self.kubeconfig or None)
        return self._api

    def _custom(self) -> Any:
        from kubernetes import client

        return client.CustomObjectsApi(self._client())

    def _read(self) -> NotebookKernel | None:
        from kubernetes.client.exceptions import ApiException

        try:
            body = self._custom().get_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.kernel_resource
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return NotebookKernel.model_validate(body)

    def _delete(self) -> None:
        from kubernetes.client.exceptions import ApiException

        if not self.kernel_resource:
            return
        try:
            self._custom().delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.kernel_resource, propagation_policy="Foreground"
            )
        except ApiException as exc:
            if exc.status != 404:
                raise

    # --- KernelProvisionerBase -----------------------------------------------------------------

    @property
    def has_process(self) -> bool:
        return self.kernel_resource is not None

    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        kwargs = await super().pre_launch(**kwargs)
        # The kernel manager expects a command; NotebookOS never runs it locally.
        kwargs.setdefault("cmd", list(self.kernel_spec.argv))
        # KERNEL_NAMESPACE (Enterprise Gateway's name), set per user by the hub (KubeSpawner's
        # environment), beats the kernelspec's namespace: one kernel namespace per user.
        env = {**os.environ, **(kwargs.get("env") or {})}
        self.namespace = env.get("KERNEL_NAMESPACE") or self.namespace or default_namespace(self.kubeconfig or None)
        return dict(kwargs)

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        env = {**os.environ, **(kwargs.get("env") or {})}
        name = kernel_name_for(str(self.kernel_id))
        manifest = build_kernel(name, self.namespace, self._cfg(), env, str(self.kernel_id))
        await self._create(manifest)
        self.kernel_resource = name
        self.log.info("NotebookOS: created NotebookKernel %s/%s", self.namespace, name)
        try:
            kernel = await self._wait_ready()
            info = await asyncio.to_thread(kernel_connection, self._client(), kernel, self.connect_via)
        except BaseException:
            await asyncio.to_thread(self._delete)
            self.kernel_resource = None
            raise
        info["key"] = info["key"].encode()
        self.connection_info = cast(KernelConnectionInfo, info)
        return self.connection_info

    async def _create(self, manifest: dict[str, Any]) -> None:
        """Create the NotebookKernel. A restart reuses the kernel id, so its name: the previous
        incarnation, deleted by `kill(restart=True)`, may still be going (foreground deletion waits
        for its pods), and the create must wait for it rather than fail with 409 AlreadyExists."""
        from kubernetes.client.exceptions import ApiException

        name = manifest["metadata"]["name"]
        self.kernel_resource = name
        deadline = time.monotonic() + self.launch_timeout
        while True:
            try:
                await asyncio.to_thread(
                    self._custom().create_namespaced_custom_object, GROUP, VERSION, self.namespace, PLURAL, manifest
                )
                return
            except ApiException as exc:
                if exc.status != 409:
                    raise
            old = await asyncio.to_thread(self._read)
            if old is not None and not (old.metadata.model_extra or {}).get("deletionTimestamp"):
                raise RuntimeError(
                    f"NotebookKernel {self.namespace}/{name} already exists and is not being deleted; "
                    "delete it (kubectl delete nbk) or start a new kernel"
                )
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"NotebookKernel {self.namespace}/{name} from before the restart was still being deleted "
                    f"after {self.launch_timeout:.0f}s"
                )
            if old is not None:
                self.log.info("NotebookOS: waiting for the previous %s/%s to be deleted", self.namespace, name)
            await asyncio.sleep(self.poll_interval)

    async def _wait_ready(self) -> NotebookKernel:
        start = time.monotonic()
        unschedulable_since: float | None = None
        last = ""
        while True:
            kernel = await asyncio.to_thread(self._read)
            now = time.monotonic()
            if kernel is None:
                raise RuntimeError(f"NotebookKernel {self.namespace}/{self.kernel_resource} was deleted while starting")
            st = kernel.status
            progress = f"phase {st.phase}, {st.ready_replicas}/{kernel.spec.replicas} replicas ready"
            if progress != last:
                self.log.info("NotebookOS: %s/%s %s", self.namespace, self.kernel_resource, progress)
                last = progress
            if st.phase in READY_PHASES and st.connection is not None:
                return kernel
            if st.phase == "Failed":
                raise RuntimeError(
                    f"NotebookKernel {self.namespace}/{self.kernel_resource} failed: "
                    f"{unschedulable_message(kernel) or 'see its events'}"
                )
            why = unschedulable_message(kernel)
            if why is None:
                unschedulable_since = None
            else:
                unschedulable_since = unschedulable_since or now
                if now - unschedulable_since >= self.unschedulable_timeout:
                    raise RuntimeError(
                        f"NotebookKernel {self.namespace}/{self.kernel_resource} cannot be scheduled "
                        f"(condition Scheduled=False for {now - unschedulable_since:.0f}s): {why}"
                    )
            if now - start >= self.launch_timeout:
                raise TimeoutError(
                    f"NotebookKernel {self.namespace}/{self.kernel_resource} not ready after "
                    f"{self.launch_timeout:.0f}s ({progress}{'; ' + why if why else ''})"
                )
            await asyncio.sleep(self.poll_interval)

    async def poll(self) -> int | None:
        if self.kernel_resource is None:
            return 0
        kernel = await asyncio.to_thread(self._read)
        if kernel is None or (kernel.metadata.model_extra or {}).get("deletionTimestamp"):
            return 1
        if kernel.status.phase == "Failed":
            return 1
        return None

    async def wait(self) -> int | None:
        while (code := await self.poll()) is None:
            await asyncio.sleep(self.poll_interval)
        return code

    async def send_signal(self, signum: int) -> None:
        # Interrupts go over the control channel (interrupt_mode "message"); only a kill ends the kernel.
        if signum == signal.SIGKILL:
            await self.kill()

    async def shutdown_requested(self, restart: bool = False) -> None:
        # Delete at once rather than after the kernel manager's wait for a process that does not
        # exit (the replicas live on until deleted): a server stopped with a short grace period
        # (KubeSpawner's delete_grace_period) would otherwise be killed before its kernels go.
        await asyncio.to_thread(self._delete)

    async def kill(self, restart: bool = False) -> None:
        await asyncio.to_thread(self._delete)

    async def terminate(self, restart: bool = False) -> None:
        await asyncio.to_thread(self._delete)

    async def cleanup(self, restart: bool = False) -> None:
        await asyncio.to_thread(self._delete)
        self.kernel_resource = None

    async def get_provisioner_info(self) -> dict[str, Any]:
        info = dict(await super().get_provisioner_info())
        info.update({"namespace": self.namespace, "kernel_resource": self.kernel_resource})
        return info

    async def load_provisioner_info(self, provisioner_info: dict[str, Any]) -> None:
        await super().load_provisioner_info(provisioner_info)
        self.namespace = provisioner_info.get("namespace", self.namespace)
        self.kernel_resource = provisioner_info.get("kernel_resource")

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        return max(recommended, 10.0)

    def get_stable_start_time(self, recommended: float = 10.0) -> float:
        return max(recommended, 20.0)

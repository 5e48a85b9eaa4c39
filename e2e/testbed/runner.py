"""The process runner: kwok runs no containers, so this starts this project's pods as local processes.

Only pods labelled ``notebookos.io/runner=process`` and bound to a kwok node are run. Each gets its
first container's command and args ($(VAR) expanded as the kubelet does; ``python`` and the
environment's console scripts are the project's virtual environment), its environment with values
from Secrets, ConfigMaps and the downward API, ``POD_IP`` (a loopback address from kwok's pod CIDR,
so the process can bind it), the API server's address, and a service-account folder beside the
pod's own with a token bound to the pod and a kubeconfig naming it (``$KUBECONFIG``: client
libraries cannot find the kubelet's fixed path here; environment values naming that path, such as
the kernel pods' ``NOTEBOOKOS_SERVICE_ACCOUNT_DIR``, are rewritten to point there). Paths under
emptyDir mounts are remapped to a private folder per pod. The process is stopped when the pod is
deleted (a pod annotated ``notebookos.io/runner-graceful-stop: "true"`` is kept, by a finalizer,
until its process is gone); when it exits on its own, the pod is reported Failed. Test-only and
deliberately small.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from notebookos import labels

from .cluster import Cluster

SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
# kwok removes a deleted pod at once, which invalidates its bound token while the process may still
# need it to stop (a Jupyter server deleting its kernels). A pod annotated so keeps this finalizer,
# as a kubelet keeps the pod until its containers have stopped, and loses it when its process is gone.
GRACEFUL_ANNOTATION = "notebookos.io/runner-graceful-stop"
FINALIZER = "notebookos.io/process-runner"
_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes' $(VAR) expansion; $$(VAR) escapes it, unknown variables stay as written."""
    out, i = [], 0
    while i < len(value):
        if value.startswith("$$(", i):
            out.append("$(")
            i += 3
            continue
        m = _VAR.match(value, i)
        if m and m.group(1) in env:
            out.append(env[m.group(1)])
            i = m.end()
            continue
        out.append(value[i])
        i += 1
    return "".join(out)


class NotYet(Exception):
    """The pod cannot start yet (a referenced key is missing); the kubelet would retry, so do we."""


@dataclass
class Running:
    uid: str
    namespace: str
    name: str
    proc: subprocess.Popen[bytes]
    workdir: Path
    log: Path


class ProcessRunner:
    def __init__(self, cluster: Cluster, interval: float = 0.3) -> None:
        self.cluster = cluster
        self.core = client.CoreV1Api(cluster.api())
        self.interval = interval
        self.running: dict[str, Running] = {}
        self.finished: set[str] = set()
        self.errors: list[str] = []
        self.waiting: dict[str, str] = {}  # pod uid -> why it cannot start yet
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="process-runner", daemon=True)
        self.root = cluster.root / "pods"
        self.root.mkdir(exist_ok=True)

    def start(self) -> ProcessRunner:
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._thread.join(10)
        for uid in list(self.running):
            self._terminate(uid)
        with contextlib.suppress(ApiException):
            for pod in self.core.list_pod_for_all_namespaces(
                label_selector=f"{labels.RUNNER_LABEL}={labels.RUNNER_VALUE}"
            ).items:
                self._release(pod)

    def _release(self, pod: Any) -> None:
        """Drop the graceful-stop finalizer: the pod's process is gone."""
        finalizers = list(pod.metadata.finalizers or [])
        if FINALIZER in finalizers:
            finalizers.remove(FINALIZER)
            with contextlib.suppress(ApiException):
                self.core.patch_namespaced_pod(
                    pod.metadata.name, pod.metadata.namespace, {"metadata": {"finalizers": finalizers or None}}
                )

    # ------------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._sync()
            except Exception as exc:  # keep running; tests read self.errors when something is off
                self.errors.append(repr(exc))
            self._stop.wait(self.interval)

    def _sync(self) -> None:
        pods = self.core.list_pod_for_all_namespaces(
            label_selector=f"{labels.RUNNER_LABEL}={labels.RUNNER_VALUE}"
        ).items
        live = {p.metadata.uid: p for p in pods}
        for uid in list(self.running):
            pod = live.get(uid)
            if pod is None or pod.metadata.deletion_timestamp is not None:
                self._terminate(uid)
        for pod in live.values():
            if pod.metadata.deletion_timestamp is not None and pod.metadata.uid not in self.running:
                self._release(pod)
        for uid, run in list(self.running.items()):
            code = run.proc.poll()
            if code is not None:
                del self.running[uid]
                self.finished.add(uid)
                self._report_exit(run, code)
        for uid, pod in live.items():
            if uid in self.running or uid in self.finished:
                continue
            if pod.metadata.deletion_timestamp is not None or not pod.spec.node_name:
                continue
            if pod.status.phase != "Running" or not pod.status.pod_ip:
                continue
            try:
                self._start(pod)
            except NotYet as exc:
                self.waiting[uid] = str(exc)
            except Exception as exc:
                self.finished.add(uid)
                self.errors.append(f"{pod.metadata.namespace}/{pod.metadata.name}: {exc!r}")
                self._patch_failed(pod.metadata.namespace, pod.metadata.name, 127, f"runner could not start: {exc}")

    # ------------------------------------------------------------------------------------------

    def _env(self, pod: Any, workdir: Path) -> dict[str, str]:
        ns = pod.metadata.namespace
        container = pod.spec.containers[0]
        env: dict[str, str] = {}
        for src in container.env_from or []:
            if src.config_map_ref is not None:
                data = self._data("configmap", ns, src.config_map_ref.name, bool(src.config_map_ref.optional))
            else:
                raw = self._data("secret", ns, src.secret_ref.name, bool(src.secret_ref.optional))
                data = {k: base64.b64decode(v).decode() for k, v in raw.items()}
            env.update({f"{src.prefix or ''}{k}": v for k, v in data.items()})
        for var in container.env or []:
            if var.value_from is None:
                env[var.name] = expand(var.value or "", env)
                continue
            vf = var.value_from
            if vf.secret_key_ref is not None:
                ref = vf.secret_key_ref
                raw = self._data("secret", ns, ref.name, bool(ref.optional))
                if ref.key in raw:
                    env[var.name] = base64.b64decode(raw[ref.key]).decode()
                elif not ref.optional:
                    raise NotYet(f"secret {ns}/{ref.name} has no key {ref.key}")
            elif vf.config_map_key_ref is not None:
                ref = vf.config_map_key_ref
                data = self._data("configmap", ns, ref.name, bool(ref.optional))
                if ref.key in data:
                    env[var.name] = data[ref.key]
                elif not ref.optional:
                    raise NotYet(f"configmap {ns}/{ref.name} has no key {ref.key}")
            elif vf.field_ref is not None:
                env[var.name] = self._field(pod, vf.field_ref.field_path)
            else:
                raise ValueError(f"env {var.name}: unsupported valueFrom (resourceFieldRef is not run here)")
        # emptyDir mounts are remapped to a private folder per pod.
        volumes = {v.name: v for v in pod.spec.volumes or []}
        for mount in container.volume_mounts or []:
            vol = volumes.get(mount.name)
            if vol is not None and vol.empty_dir is not None:
                local = workdir / "volumes" / mount.name
                local.mkdir(parents=True, exist_ok=True)
                # The mount path as a path's start only ("/tmp/x", "file:///tmp/x"; not "/var/tmp").
                at = re.compile(rf"(?<![\w.-]){re.escape(mount.mount_path.rstrip('/'))}(?![\w.-])")
                env = {k: at.sub(str(local).replace("\\", "\\\\"), v) for k, v in env.items()}
        return env

    def _data(self, kind: str, ns: str, name: str, optional: bool) -> dict[str, str]:
        """A Secret's or ConfigMap's data; a missing object is waited for, as the kubelet does."""
        try:
            if kind == "secret":
                return dict(self.core.read_namespaced_secret(name, ns).data or {})
            return dict(self.core.read_namespaced_config_map(name, ns).data or {})
        except ApiException as exc:
            if exc.status == 404:
                if optional:
                    return {}
                raise NotYet(f"{kind} {ns}/{name} does not exist") from None
            raise

    @staticmethod
    def _field(pod: Any, path: str) -> str:
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            return str((getattr(pod.metadata, m.group(1)) or {}).get(m.group(2), ""))
        simple = {
            "metadata.name": pod.metadata.name,
            "metadata.namespace": pod.metadata.namespace,
            "metadata.uid": pod.metadata.uid,
            "spec.nodeName": pod.spec.node_name,
            "spec.serviceAccountName": pod.spec.service_account_name,
            "status.podIP": pod.status.pod_ip,
            "status.hostIP": pod.status.host_ip,
        }
        if path not in simple:
            raise ValueError(f"unsupported fieldRef {path}")
        return str(simple[path] or "")

    @staticmethod
    def service_account_dir(workdir: Path) -> Path:
        """Where a pod's token, CA, namespace and kubeconfig are (its kubelet mount, here)."""
        return workdir.with_name(workdir.name + ".serviceaccount")

    def _service_account_dir(self, pod: Any, workdir: Path) -> Path:
        # Beside the pod's folder, not in it: the folder is the process's HOME and working directory
        # (a Jupyter server's file browser), where a container has no token either.
        sa_dir = self.service_account_dir(workdir)
        sa_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        sa = pod.spec.service_account_name or "default"
        if pod.spec.automount_service_account_token is not False:
            req = client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(
                    audiences=["https://kubernetes.default.svc.cluster.local"],
                    expiration_seconds=3600,
                    bound_object_ref=client.V1BoundObjectReference(
                        kind="Pod", api_version="v1", name=pod.metadata.name, uid=pod.metadata.uid
                    ),
                )
            )
            token = self.core.create_namespaced_service_account_token(sa, pod.metadata.namespace, req)
            (sa_dir / "token").write_text(token.status.token)
        shutil.copy(self.cluster.pki.ca_cert, sa_dir / "ca.crt")
        (sa_dir / "namespace").write_text(pod.metadata.namespace)
        # Client libraries find the in-cluster config at the kubelet's fixed path, which a local
        # process cannot have: the same token, CA and namespace as a kubeconfig ($KUBECONFIG).
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "pod", "cluster": {"server": self.cluster.server,
                                                     "certificate-authority": str(sa_dir / "ca.crt")}}],
            "users": [{"name": "pod", "user": {"tokenFile": str(sa_dir / "token")}}],
            "contexts": [{"name": "pod", "context": {"cluster": "pod", "user": "pod",
                                                     "namespace": pod.metadata.namespace}}],
            "current-context": "pod",
        }  # fmt: skip
        (sa_dir / "kubeconfig").write_text(json.dumps(cfg))
        return sa_dir

    def _start(self, pod: Any) -> None:
        ns, name, uid = pod.metadata.namespace, pod.metadata.name, pod.metadata.uid
        workdir = self.root / f"{ns}-{name}-{uid[:8]}"
        workdir.mkdir(parents=True, exist_ok=True)
        env = self._env(pod, workdir)
        sa_dir = self._service_account_dir(pod, workdir)
        # What the kubelet would mount at the well-known path lives in the pod's own folder here.
        env = {k: v.replace(SA_MOUNT, str(sa_dir)) for k, v in env.items()}
        host, port = self.cluster.server.removeprefix("https://").rsplit(":", 1)
        env.update(
            {
                "POD_IP": pod.status.pod_ip,
                "HOSTNAME": name,
                "HOME": str(workdir),
                "TMPDIR": str(workdir),
                "KUBERNETES_SERVICE_HOST": host,
                "KUBERNETES_SERVICE_PORT": port,
                "PATH": os.environ.get("PATH", ""),
                "PYTHONUNBUFFERED": "1",
            }
        )
        if (sa_dir / "token").exists():
            env.setdefault("KUBECONFIG", str(sa_dir / "kubeconfig"))
        container = pod.spec.containers[0]
        argv = [expand(a, env) for a in [*(container.command or []), *(container.args or [])]]
        if not argv:
            raise ValueError("the container has no command: the runner cannot know what the image would run")
        # The project's environment stands in for the image's: its python, and its console
        # scripts (jupyterhub-singleuser in a KubeSpawner pod).
        venv_bin = Path(sys.executable).parent
        if argv[0] in ("python", "python3"):
            argv[0] = sys.executable
        elif "/" not in argv[0] and (venv_bin / argv[0]).exists():
            argv[0] = str(venv_bin / argv[0])
        log = self.cluster.logs_dir / f"pod-{ns}-{name}-{uid[:8]}.log"
        with log.open("ab") as fh:
            proc = subprocess.Popen(
                argv, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=workdir, start_new_session=True
            )
        self.running[uid] = Running(uid, ns, name, proc, workdir, log)
        self.waiting.pop(uid, None)
        if (pod.metadata.annotations or {}).get(GRACEFUL_ANNOTATION) == "true":
            finalizers = [*(pod.metadata.finalizers or []), FINALIZER]
            with contextlib.suppress(ApiException):  # already gone: nothing to hold
                self.core.patch_namespaced_pod(name, ns, {"metadata": {"finalizers": finalizers}})

    def _terminate(self, uid: str) -> None:
        run = self.running.pop(uid, None)
        self.finished.add(uid)
        if run is None or run.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.proc.pid, signal.SIGTERM)
        try:
            run.proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(run.proc.pid, signal.SIGKILL)
            run.proc.wait(5)

    def _report_exit(self, run: Running, code: int) -> None:
        self._patch_failed(run.namespace, run.name, code, f"process exited with code {code}")

    def _patch_failed(self, ns: str, name: str, code: int, message: str) -> None:
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        body = {
            "status": {
                "phase": "Failed" if code != 0 else "Succeeded",
                "message": message,
                "reason": "ProcessExited",
                "conditions": [
                    {"type": "Ready", "status": "False", "reason": "ProcessExited", "lastTransitionTime": now},
                    {
                        "type": "ContainersReady",
                        "status": "False",
                        "reason": "ProcessExited",
                        "lastTransitionTime": now,
                    },
                ],
            }
        }
        with contextlib.suppress(ApiException):
            self.core.patch_namespaced_pod_status(name, ns, body)

    def pid_of(self, namespace: str, name: str) -> int | None:
        for run in self.running.values():
            if (run.namespace, run.name) == (namespace, name):
                return run.proc.pid
        return None

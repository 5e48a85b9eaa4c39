"""JupyterHub on the test bed, configured from the Zero-to-JupyterHub values that docs/helm.md shows
(docs/jupyterhub/z2jh-values.yaml), so the docs cannot drift from what is tested.

`hub_config` turns those values into the hub's traitlets configuration the way Zero-to-JupyterHub's
own jupyterhub_config.py does, for the keys the docs use (any other key is refused, so a value the
docs add is either rendered or fails the test). `Hub` runs configurable-http-proxy as its own process
(as Zero-to-JupyterHub's proxy pod: a hub restart does not touch it) and the hub with KubeSpawner,
whose credentials are a token of the `hub` service account with Zero-to-JupyterHub's hub Role.
The user servers KubeSpawner creates are run by the process runner (e2e/testbed/runner.py).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from notebookos import labels

from .cluster import REPO, Cluster, free_port
from .runner import GRACEFUL_ANNOTATION
from .wait import until

DOCS = REPO / "docs" / "jupyterhub"
Z2JH_VALUES = DOCS / "z2jh-values.yaml"
NOTEBOOKOS_VALUES = DOCS / "notebookos-values.yaml"
HUB_NODE_TAINT = "notebookos.io/hub-e2e"


def hub_config(values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Zero-to-JupyterHub values -> {class: {trait: value}}, for the keys docs/helm.md uses."""
    values = json.loads(json.dumps(values))  # a copy
    hub = values.pop("hub", {}) or {}
    single = values.pop("singleuser", {}) or {}
    cfg: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (hub.pop("config", {}) or {}).items()}
    spawner = cfg.setdefault("KubeSpawner", {})
    if "serviceAccountName" in single:
        spawner["service_account"] = single.pop("serviceAccountName")
    if "extraEnv" in single:
        spawner["environment"] = dict(single.pop("extraEnv"))
    if "extraLabels" in single:
        spawner["extra_labels"] = dict(single.pop("extraLabels"))
    if "extraAnnotations" in single:
        spawner["extra_annotations"] = dict(single.pop("extraAnnotations"))
    if "image" in single:
        image = single.pop("image")
        spawner["image"] = f"{image.pop('name')}:{image.pop('tag')}"
        if image:
            raise ValueError(f"singleuser.image: keys not rendered here: {sorted(image)}")
    if "cmd" in single:
        cmd = single.pop("cmd")
        spawner["cmd"] = [cmd] if isinstance(cmd, str) else list(cmd)
    if "defaultUrl" in single:
        spawner["default_url"] = single.pop("defaultUrl")
    if "startTimeout" in single:
        spawner["start_timeout"] = single.pop("startTimeout")
    if "nodeSelector" in single:
        spawner["node_selector"] = dict(single.pop("nodeSelector"))
    if "extraTolerations" in single:
        spawner["tolerations"] = list(single.pop("extraTolerations"))
    # Zero-to-JupyterHub renders it as the servers' NetworkPolicy, not hub configuration; nothing
    # enforces one on the test bed (docs/testbed.md), tests/chart/test_jupyterhub.py reads it.
    single.pop("networkPolicy", None)
    left = [f"hub.{k}" for k in hub] + [f"singleuser.{k}" for k in single] + list(values)
    if left:
        raise ValueError(f"Zero-to-JupyterHub values not rendered by the test bed: {left}")
    return cfg


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of values files: maps merge key by key, anything else is replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# What Zero-to-JupyterHub's chart grants its hub (templates/hub/rbac.yaml): KubeSpawner's needs in
# the hub's own namespace, nothing cluster-wide.
HUB_ROLE_RULES = [
    {"apiGroups": [""], "resources": ["pods", "persistentvolumeclaims", "secrets", "services"],
     "verbs": ["get", "watch", "list", "create", "delete"]},
    {"apiGroups": [""], "resources": ["events"], "verbs": ["get", "watch", "list"]},
]  # fmt: skip


@dataclass
class Hub:
    cluster: Cluster
    workdir: Path
    namespace: str
    overlay: dict[str, Any]  # test-bed values merged over the docs' (see docs/testbed.md)
    proxy_port: int = field(default_factory=free_port)
    proxy_api_port: int = field(default_factory=free_port)
    hub_port: int = field(default_factory=free_port)
    service_token: str = field(default_factory=lambda: secrets.token_hex(32))
    proxy_token: str = field(default_factory=lambda: secrets.token_hex(32))
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    kubeconfig: Path = field(init=False)  # the hub's: a token of its service account
    loader: Path = field(init=False)  # jupyterhub_config.py

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    def values(self) -> dict[str, Any]:
        return merge(yaml.safe_load(Z2JH_VALUES.read_text()), self.overlay)

    def _hub_kubeconfig(self) -> Path:
        c = self.cluster
        rbac = [
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "hub", "namespace": self.namespace}},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
             "metadata": {"name": "hub", "namespace": self.namespace}, "rules": HUB_ROLE_RULES},
            {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
             "metadata": {"name": "hub", "namespace": self.namespace},
             "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "hub"},
             "subjects": [{"kind": "ServiceAccount", "name": "hub", "namespace": self.namespace}]},
        ]  # fmt: skip
        c.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in rbac))
        token = c.kubectl("create", "token", "hub", "-n", self.namespace, "--duration=2h").stdout.strip()
        admin = yaml.safe_load(c.kubeconfig.read_text())
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": admin["clusters"],
            "users": [{"name": "hub", "user": {"token": token}}],
            "contexts": [{"name": "hub", "context": {"cluster": admin["clusters"][0]["name"], "user": "hub",
                                                     "namespace": self.namespace}}],
            "current-context": "hub",
        }  # fmt: skip
        path = self.workdir / "hub.kubeconfig"
        path.write_text(yaml.safe_dump(cfg))
        path.chmod(0o600)
        return path

    def _write_config(self) -> Path:
        cfg = hub_config(self.values())
        hub = cfg.setdefault("JupyterHub", {})
        hub.update(
            {
                "spawner_class": "kubespawner.KubeSpawner",
                "bind_url": self.url,
                "hub_ip": "127.0.0.1",
                "hub_port": self.hub_port,
                "hub_connect_url": f"http://127.0.0.1:{self.hub_port}",
                "db_url": f"sqlite:///{self.workdir / 'jupyterhub.sqlite'}",
                "cookie_secret_file": str(self.workdir / "cookie_secret"),
                # As Zero-to-JupyterHub: servers outlive the hub process; its proxy is its own.
                "cleanup_servers": False,
                "cleanup_proxy": False,
                "services": [{"name": "e2e", "api_token": self.service_token}],
                "load_roles": [
                    {"name": "e2e", "services": ["e2e"],
                     "scopes": ["admin:users", "admin:servers", "tokens", "access:servers"]},
                ],
            }
        )  # fmt: skip
        cfg.setdefault("ConfigurableHTTPProxy", {}).update(
            {"should_start": False, "api_url": f"http://127.0.0.1:{self.proxy_api_port}"}
        )
        # The authenticator is the platform's choice (docs/helm.md); the test bed's is a password.
        cfg["JupyterHub"]["authenticator_class"] = "dummy"
        cfg.setdefault("DummyAuthenticator", {})["password"] = self.password
        path = self.workdir / "hub-config.json"
        path.write_text(json.dumps(cfg, indent=1))
        path.chmod(0o600)
        loader = self.workdir / "jupyterhub_config.py"
        loader.write_text(
            "import json, os\n"
            "for section, traits in json.load(open(os.environ['NOTEBOOKOS_HUB_CONFIG'])).items():\n"
            "    for k, v in traits.items():\n"
            "        setattr(getattr(c, section), k, v)  # noqa: F821\n"
        )
        return loader

    def start(self, chp: Path) -> Hub:
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "cookie_secret").write_text(secrets.token_hex(32))
        (self.workdir / "cookie_secret").chmod(0o600)
        self.kubeconfig = self._hub_kubeconfig()
        self.loader = self._write_config()
        self.cluster.spawn(
            "hub-proxy",
            [str(chp / "bin" / "configurable-http-proxy"), "--ip=127.0.0.1", f"--port={self.proxy_port}",
             "--api-ip=127.0.0.1", f"--api-port={self.proxy_api_port}",
             f"--default-target=http://127.0.0.1:{self.hub_port}",
             f"--error-target=http://127.0.0.1:{self.hub_port}/hub/error"],
            env={"CONFIGPROXY_AUTH_TOKEN": self.proxy_token},
        )  # fmt: skip
        until(lambda: _listening(self.proxy_api_port), 60, "configurable-http-proxy's API port")
        self.start_hub()
        return self

    def start_hub(self) -> None:
        self.cluster.spawn(
            "hub",
            [str(Path(sys.executable).parent / "jupyterhub"), "-f", str(self.loader)],
            env={
                "KUBECONFIG": str(self.kubeconfig),
                "NOTEBOOKOS_HUB_CONFIG": str(self.workdir / "hub-config.json"),
                "CONFIGPROXY_AUTH_TOKEN": self.proxy_token,
            },
            ready_url=f"{self.url}/hub/health",
            timeout=120,
        )

    def stop_hub(self) -> None:
        self.cluster.stop("hub")

    def close(self) -> None:
        self.cluster.stop("hub")
        self.cluster.stop("hub-proxy")

    # ------------------------------------------------------------------------------------- API

    def api(self, method: str, path: str, body: Any = None, token: str | None = None) -> Any:
        """A call to the hub's REST API (/hub/api...) or, through the proxy, a user's server."""
        req = urllib.request.Request(
            self.url + path,
            method=method,
            headers={"Authorization": f"token {token or self.service_token}", "Content-Type": "application/json"},
            data=json.dumps(body).encode() if body is not None else None,
        )
        with urllib.request.urlopen(req, timeout=120) as resp:
            raw = resp.read()
            return json.loads(raw) if raw else None

    def status(self, method: str, path: str, token: str) -> int:
        try:
            self.api(method, path, token=token)
        except urllib.error.HTTPError as exc:
            return exc.code
        return 200


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def overlay_for_testbed(node: str, jupyter_path: Path, namespace: str) -> dict[str, Any]:
    """What the test bed changes in the docs' values, and why (docs/testbed.md):
    - the runner runs pods labelled for it, on a kwok node set aside for user servers, and keeps
      a stopping server's pod (so its token) until its process is gone, as a kubelet would;
    - a process binds its pod IP (loopback, one per pod), not 0.0.0.0 as a container would, and
      runs as root here (an image runs it as its own user);
    - the kernelspec is installed beside the project's environment rather than in an image, and
      connects by the router pod's IP (there is no cluster DNS);
    - the hub waits longer for a server: JupyterLab starts slowly on 2 shared cores;
    - KubeSpawner's namespace is given (Zero-to-JupyterHub's hub reads its pod's own)."""
    return {
        "hub": {"config": {"KubeSpawner": {"http_timeout": 180, "namespace": namespace}}},
        "singleuser": {
            "extraLabels": {labels.RUNNER_LABEL: labels.RUNNER_VALUE},
            "extraAnnotations": {GRACEFUL_ANNOTATION: "true"},
            "nodeSelector": {"kubernetes.io/hostname": node},
            "extraTolerations": [{"key": HUB_NODE_TAINT, "operator": "Exists", "effect": "NoSchedule"}],
            "cmd": ["jupyterhub-singleuser", "--ip=$(POD_IP)", "--allow-root"],
            "extraEnv": {"JUPYTER_PATH": str(jupyter_path)},
            "startTimeout": 180,
        },
    }


def install_kernelspec(root: Path) -> Path:
    """The docs' `notebookos kernelspec install` (the Dockerfile's), into a folder on JUPYTER_PATH,
    with --connect-via pod for the test bed's flat network."""
    subprocess.run(
        [sys.executable, "-m", "notebookos.cli", "kernelspec", "install", "--name", "notebookos-gpu1", "--gpus", "1",
         "--connect-via", "pod", "--dir", str(root / "kernels")],
        check=True, capture_output=True, text=True, env={**os.environ},
    )  # fmt: skip
    return root

"""One real node on this machine: containerd and runc from Debian's packages and a kubelet built
from the Go module proxy (e2e/toolchain/kubelet.sh), each with a private root, socket and cgroup
parent, so nothing of the system's is touched, joined to an API server (`Join`: its own
certificate, a CNI bridge and Pod subnet of its own). The images `make images` built are imported
from podman's storage (nothing is pulled; the sandbox image is a pause built here from pause.c).

This machine's quirks: cgroup v1 (the kubelet's failCgroupV1: false, cgroupfs driver), no
CAP_SYS_RESOURCE (containerd's restrict_oom_score_adj, else runc dies setting the sandbox's -998:
"can't get final child's PID from pipe: EOF"). stop() removes every task, mount, cgroup and file
the node made."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from images.containers import engine

CGROUP_ROOT = Path("/sys/fs/cgroup")
PAUSE_IMAGE = "localhost/notebookos/pause:1"
PAUSE_C = Path(__file__).with_name("pause.c")


def wait_until(predicate: Any, timeout: float, what: str, alive: Any = None) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        if alive is not None and not alive():
            raise AssertionError(f"gave up waiting for {what}: the process exited")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def save_images(refs: list[str], folder: Path) -> dict[str, Path]:
    """OCI archives of `refs`, for each node's containerd to import."""
    folder.mkdir(parents=True, exist_ok=True)
    archives = {}
    for i, ref in enumerate(refs):
        archives[ref] = folder / f"image-{i}.tar"
        subprocess.run([*engine(), "save", "--format", "oci-archive", "-o", str(archives[ref]), ref],
                       check=True, capture_output=True, timeout=300)  # fmt: skip
    return archives


def pause_image(folder: Path) -> str:
    """The sandbox image (registry.k8s.io is unreachable): a static pause, built here."""
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / "pause"
    subprocess.run(["gcc", "-Os", "-static", "-o", str(out), str(PAUSE_C)], check=True, timeout=120)
    return binary_image(PAUSE_IMAGE, out, "65535:65535")


def binary_image(ref: str, binary: Path, user: str) -> str:
    """An image of one static binary, in /usr/local/bin (on the runtime's default PATH), its entrypoint."""
    path = f"/usr/local/bin/{binary.name}"
    ctr = subprocess.run(["buildah", "from", "scratch"], capture_output=True, text=True, check=True).stdout.strip()
    subprocess.run(["buildah", "copy", "-q", ctr, str(binary), path], check=True, capture_output=True)
    subprocess.run(["buildah", "config", "--entrypoint", json.dumps([path]), "--user", user,
                    "--env", "PATH=/usr/local/bin", ctr], check=True)  # fmt: skip
    subprocess.run(["buildah", "commit", "-q", "--rm", ctr, ref], check=True, capture_output=True)
    return ref


@dataclass(frozen=True)
class Join:
    """How a node joins an API server: its kubeconfig (its own certificate), this machine's address
    (every node's, as all share its network), its Pod subnet and bridge, its labels and taints."""

    kubeconfig: Path
    node_ip: str
    subnet: str
    bridge: str
    labels: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, str]] = field(default_factory=list)


class RealNode:
    def __init__(self, root: Path, kubelet: Path, name: str, join: Join) -> None:
        self.root, self.kubelet_bin, self.name, self.join = root, kubelet, name, join
        self.sock = root / "containerd.sock"
        self.kubelet_root = root / "kubelet"
        self.cgroup = f"notebookos-{name}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    # --- start ------------------------------------------------------------------------------------

    def start(self, archives: list[Path]) -> RealNode:
        """archives: from save_images."""
        self.root.mkdir(parents=True, exist_ok=True)
        self._start_containerd()
        for archive in archives:
            self.ctr("images", "import", "--all-platforms", str(archive))
        self._cgroup_parents()
        self._start_kubelet()
        return self

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - owned by the child
        self.procs[name] = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return self.procs[name]

    def ctr(self, *args: str, check: bool = True) -> str:
        cmd = ["ctr", "-a", str(self.sock), "-n", "k8s.io", *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=check).stdout

    def _start_containerd(self) -> None:
        r = self.root / "containerd"
        config = f"""version = 2
root = "{r}/root"
state = "{r}/state"
[grpc]
  address = "{self.sock}"
[ttrpc]
  address = "{self.sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{r}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{r}/cni"
"""
        r.mkdir()
        (r / "config.toml").write_text(config)
        (r / "cni").mkdir()
        (r / "cni" / "10-bridge.conflist").write_text(json.dumps(self._cni(r)))
        p = self._spawn("containerd", ["containerd", "--config", str(r / "config.toml")])

        def serving() -> bool:
            return self.sock.exists() and self.ctr("version", check=False) != ""

        wait_until(serving, 60, "containerd", alive=lambda: p.poll() is None)

    def _cni(self, r: Path) -> dict[str, Any]:
        # The node's own bridge (its gateway is the first address of its subnet): pods on other
        # nodes' bridges are reached through this machine's routing table, no NAT, no overlay.
        ipam = {
            "type": "host-local",
            "ranges": [[{"subnet": self.join.subnet}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": str(r / "ipam"),
        }
        bridge = {"type": "bridge", "bridge": self.join.bridge, "isGateway": True, "ipMasq": False,
                  "hairpinMode": True, "ipam": ipam}  # fmt: skip
        return {"cniVersion": "0.4.0", "name": f"nbos-{self.name}", "plugins": [bridge]}

    def _cgroup_parents(self) -> None:
        # The kubelet checks that its cgroupRoot exists in every v1 hierarchy; cpuset needs its
        # cpus and mems set before a task may join.
        for d in CGROUP_ROOT.iterdir():
            if (d / "cgroup.procs").exists() and d.name != "unified":
                (d / self.cgroup).mkdir(exist_ok=True)
        cpuset = CGROUP_ROOT / "cpuset"
        for f in ("cpuset.cpus", "cpuset.mems"):
            (cpuset / self.cgroup / f).write_text((cpuset / f).read_text())

    def _start_kubelet(self) -> None:
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "cgroupRoot": f"/{self.cgroup}",
            "containerRuntimeEndpoint": f"unix://{self.sock}",
            "podLogsDir": str(self.root / "pod-logs"),
            "failSwapOn": False,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            # No server, no read-only or healthz port (nothing to collide with the other nodes'):
            # the API server never calls these kubelets; container logs are read from podLogsDir.
            "enableServer": False,
            "readOnlyPort": 0,
            "healthzPort": 0,
            "resolvConf": "",
            "localStorageCapacityIsolation": False,
            "evictionHard": {},
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "registerWithTaints": self.join.taints,
        }
        labels = ",".join(f"{k}={v}" for k, v in self.join.labels.items())
        args = [f"--kubeconfig={self.join.kubeconfig}", f"--node-ip={self.join.node_ip}", f"--node-labels={labels}"]
        path = self.root / "kubelet.json"
        path.write_text(json.dumps(config))
        self._spawn(
            "kubelet",
            [str(self.kubelet_bin), "--config", str(path), "--root-dir", str(self.kubelet_root),
             "--cert-dir", str(self.root / "pki"), "--hostname-override", self.name, "--v=2", *args],
        )  # fmt: skip

    # --- observing ----------------------------------------------------------------------------------

    def tasks(self) -> list[str]:
        return self.ctr("tasks", "ls", "-q", check=False).split()

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-6000:] if path.exists() else ""

    # --- stop ---------------------------------------------------------------------------------------

    def stop(self) -> None:
        """After the pods were deleted through the API (the tier's stop)."""
        kubelet = self.procs.get("kubelet")
        if kubelet is not None and kubelet.poll() is None:
            try:
                wait_until(lambda: not self.tasks(), 60, "the kubelet to stop the pods")
            except AssertionError:
                pass  # whatever is left goes below
        self._end("kubelet")
        if self.procs.get("containerd") is not None and self.procs["containerd"].poll() is None:
            for task in self.tasks():
                self.ctr("tasks", "kill", "-s", "SIGKILL", task, check=False)
                self.ctr("tasks", "delete", "-f", task, check=False)
            for c in self.ctr("containers", "ls", "-q", check=False).split():
                self.ctr("containers", "delete", c, check=False)
        self._end("containerd")
        mounts = subprocess.run(["findmnt", "-rn", "-o", "TARGET"], capture_output=True, text=True, check=False)
        for target in sorted(mounts.stdout.split(), key=len, reverse=True):
            if target.startswith(str(self.root)):
                subprocess.run(["umount", "-l", target], check=False)
        left = []
        for d in CGROUP_ROOT.iterdir():
            parent = d / self.cgroup
            if parent.is_dir():
                for sub in [*sorted(parent.rglob("*"), key=lambda p: len(p.parts), reverse=True), parent]:
                    try:
                        if sub.is_dir():
                            sub.rmdir()
                    except OSError as exc:
                        left.append(f"{sub}: {exc}")
        try:
            wait_until(lambda: not processes_under(self.root), 15, "the node's processes to exit")
        except AssertionError:
            for pid in processes_under(self.root):
                left.append(f"process {pid}: {Path(f'/proc/{pid}/cmdline').read_bytes()[:200]!r}")
                os.kill(pid, 9)
        shutil.rmtree(self.root, ignore_errors=True)
        assert not left, f"left behind: {left}"

    def _end(self, name: str) -> None:
        p = self.procs.get(name)
        if p is None or p.poll() is not None:
            return
        p.terminate()
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=30)


def processes_under(root: Path) -> list[int]:
    """Processes whose command line names a path under root (daemons, shims: all the node's)."""
    out = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if str(root).encode() in (proc / "cmdline").read_bytes():
                    out.append(int(proc.name))
            except OSError:
                pass  # gone meanwhile
    return out

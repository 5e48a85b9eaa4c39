"""`make up` / `make down`: a local NotebookOS on the e2e control plane.

`python -m e2e.testbed.up start` starts a background process that runs the control plane (kwok
fake GPU nodes), the NotebookOS scheduler with its extender, the broker, the operator and the
process runner; applies examples/minimal.yaml; runs a cell in it; and prints how to connect. `stop`
ends it all. State and logs live in .notebookos/ in the repository (ignored by git).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from .cluster import REPO, start_cluster
from .stack import Stack
from .wait import until

STATE = REPO / ".notebookos"
ENV_FILE = STATE / "env"  # `source` it: KUBECONFIG, and PATH with the venv and the matching kubectl
PIDFILE = STATE / "up.pid"
READY = STATE / "ready.json"
LOG = STATE / "up.log"
NAMESPACE = "default"
KERNEL = "minimal"


def run_cell(connection_file: Path, code: str) -> str:
    from jupyter_client import BlockingKernelClient

    kc = BlockingKernelClient(connection_file=str(connection_file))
    kc.load_connection_file()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        out: list[str] = []
        reply = kc.execute_interactive(
            code,
            timeout=120,
            output_hook=lambda m: out.append(m["content"].get("text", "")) if m["msg_type"] == "stream" else None,
        )
        if reply["content"]["status"] != "ok":
            raise RuntimeError(f"the cell failed: {reply['content']}")
        return "".join(out)
    finally:
        kc.stop_channels()


def serve(gpu_nodes: int) -> None:
    """The background process: bring everything up, report, then wait for SIGTERM."""
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    cluster = start_cluster(STATE / "cluster")
    stack = Stack(cluster)
    try:
        nodes = cluster.add_gpu_nodes(gpu_nodes)
        stack.start()
        cluster.kubectl("apply", "-n", NAMESPACE, "-f", str(REPO / "examples" / "minimal.yaml"))

        def ready() -> bool:
            out = cluster.kubectl("get", "nbk", KERNEL, "-n", NAMESPACE, "-o", "json").stdout
            return json.loads(out).get("status", {}).get("phase") in ("Ready", "Degraded")

        until(ready, 240, f"NotebookKernel {KERNEL} to be Ready")
        conn = STATE / f"kernel-{KERNEL}.json"
        subprocess.run(
            [sys.executable, "-m", "notebookos.cli", "connect", KERNEL, "-n", NAMESPACE, "--via", "pod",
             "-o", str(conn), "--kubeconfig", str(cluster.kubeconfig)],
            check=True, capture_output=True,
        )  # fmt: skip
        output = run_cell(conn, "import os\nx = 6 * 7\nprint('the answer is', x, 'from pod', os.environ['HOSTNAME'])")
        READY.write_text(
            json.dumps(
                {
                    "kubeconfig": str(cluster.kubeconfig),
                    "connection_file": str(conn),
                    "nodes": nodes,
                    "cell_output": output,
                    # The project's commands (jupyter, notebookos) and the kubectl of this very
                    # control plane's version, whatever else is on PATH.
                    "path": [str(Path(sys.executable).parent), str(cluster.bin_dir / "bin")],
                    "metrics": {
                        "operator": stack.operator_metrics,
                        "broker": f"{stack.broker_url}/metrics",
                        "extender": f"{stack.extender_url}/metrics",
                    },
                }
            )
        )
        stop.wait()
    except BaseException as exc:
        (STATE / "failed").write_text(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        stack.close()
        cluster.close()


def start(gpu_nodes: int, timeout: float) -> int:
    STATE.mkdir(exist_ok=True)
    if PIDFILE.exists() and _alive(int(PIDFILE.read_text())):
        print(f"NotebookOS is already up (pid {PIDFILE.read_text().strip()}); `make down` stops it")
        return 0
    for f in (READY, STATE / "failed"):
        f.unlink(missing_ok=True)
    with LOG.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "e2e.testbed.up", "serve", f"--gpu-nodes={gpu_nodes}"],
            cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    PIDFILE.write_text(str(proc.pid))
    print("starting NotebookOS: control plane, fake GPU nodes, scheduler + extender, broker, operator ...")
    deadline = time.monotonic() + timeout
    while not READY.exists():
        if proc.poll() is not None or (STATE / "failed").exists() or time.monotonic() > deadline:
            print(f"NotebookOS did not come up; the last lines of {LOG}:", file=sys.stderr)
            print("\n".join(LOG.read_text(errors="replace").splitlines()[-40:]), file=sys.stderr)
            stop()
            return 1
        time.sleep(1)
    info = json.loads(READY.read_text())
    ENV_FILE.write_text(env_script(info))
    print(f"NotebookOS is up. A cell ran in NotebookKernel {NAMESPACE}/{KERNEL}: {info['cell_output'].strip()}")
    print(hints(info))
    return 0


def env_script(info: dict[str, object]) -> str:
    """What `source .notebookos/env` sets: this control plane's kubeconfig, and PATH starting with
    the virtual environment (jupyter, notebookos) and the test bed's kubectl (same version as the
    API server; a system kubectl may be several minor versions behind)."""
    path = ":".join(str(p) for p in info["path"])  # type: ignore[attr-defined]
    return f'export KUBECONFIG={info["kubeconfig"]}\nexport PATH="{path}:$PATH"\n'


def hints(info: dict[str, object]) -> str:
    """The commands to try, each working as printed once the env file is sourced."""
    m: dict[str, str] = info["metrics"]  # type: ignore[assignment]
    nodes = ", ".join(info["nodes"])  # type: ignore[arg-type]
    return f"""
  source {ENV_FILE}
  kubectl get notebookos -A            # kernels and replicas (kubectl {kubectl_version(info)}, the server's own)
  kubectl get pods -o wide             # replica pods on fake GPU nodes {nodes}
  jupyter console --existing {info["connection_file"]}
  notebookos interrupt {KERNEL} --via pod    # interrupts a running cell (the console's Ctrl-C cannot)
  # another kernel:  kubectl apply -f examples/full.yaml  then  notebookos connect full --via pod
  # metrics: operator {m["operator"]}, broker {m["broker"]}, extender {m["extender"]}
  # logs: {STATE / "cluster" / "logs"}
  make down                            # stop it all
"""


def kubectl_version(info: dict[str, object]) -> str:
    kubectl = Path(info["path"][1]) / "kubectl"  # type: ignore[index]
    try:
        out = subprocess.run([str(kubectl), "version", "--client", "-o", "json"], capture_output=True, text=True)
        return str(json.loads(out.stdout)["clientVersion"]["gitVersion"])
    except (OSError, ValueError, KeyError):
        return "?"


def stop() -> int:
    if not PIDFILE.exists():
        print("NotebookOS is not running")
        return 0
    pid = int(PIDFILE.read_text())
    if _alive(pid):
        os.killpg(pid, signal.SIGTERM)
        until(lambda: not _alive(pid), 60, f"process {pid} to stop")
    PIDFILE.unlink(missing_ok=True)
    READY.unlink(missing_ok=True)
    print("NotebookOS stopped")
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m e2e.testbed.up")
    p.add_argument("action", choices=["start", "stop", "serve"])
    p.add_argument("--gpu-nodes", type=int, default=4)
    p.add_argument("--timeout", type=float, default=600)
    args = p.parse_args(argv)
    if args.action == "start":
        return start(args.gpu_nodes, args.timeout)
    if args.action == "stop":
        return stop()
    serve(args.gpu_nodes)
    return 0


if __name__ == "__main__":
    sys.exit(main())

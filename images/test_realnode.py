"""The kernel image as a pod on a real kubelet (containerd and runc, images/realnode.py), with the
security context the operator gives replica pods: the pod runs, and a jupyter_client on the host
runs cells through its router. One standalone node: the kubelet is not joined to the e2e test
bed's control plane yet (docs/testbed.md, "Images")."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from jupyter_client import BlockingKernelClient

from images.containers import image
from images.realnode import RealNode, save_images, wait_until
from notebookos.kernel.local import run, text_of
from notebookos.operator import builders


@pytest.fixture
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealNode]:
    kubelet = Path(os.environ.get("NOTEBOOKOS_KUBELET_BIN", "")) / "bin" / "kubelet"
    assert kubelet.is_file(), f"{kubelet} missing: `make images` builds it (e2e/toolchain/kubelet.sh)"
    n = RealNode(tmp_path_factory.mktemp("node"), kubelet, f"node-{os.getpid()}")
    try:
        yield n.start(save_images([image("kernel")], tmp_path_factory.mktemp("images")))
    finally:
        n.stop()


def kernel_pod() -> dict[str, object]:
    # hostNetwork: no CNI network on this machine; the client reaches the router on loopback.
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "kernel", "namespace": "default"},
        "spec": {
            "hostNetwork": True,
            # What the operator gives replica pods (operator/builders.py).
            "securityContext": builders._pod_security(),
            "containers": [
                {
                    "name": "kernel",
                    "image": image("kernel"),
                    "imagePullPolicy": "Never",
                    "command": ["python", "-m", "notebookos.kernel.local"],
                    "securityContext": builders._container_security(),
                    "volumeMounts": [{"name": "scratch", "mountPath": builders.SCRATCH_DIR}],
                }
            ],
            "volumes": [{"name": "scratch", "emptyDir": {}}],
        },
    }


def test_kernel_pod_runs_cells_on_a_real_kubelet(node: RealNode) -> None:
    node.run_static_pod(kernel_pod())
    conn: list[Path] = []

    def connection_file() -> bool:
        scratch = node.empty_dir("scratch")
        conn[:] = sorted(scratch.glob("nbos-*/client-connection.json")) if scratch else []
        return bool(conn)

    kubelet = node.procs["kubelet"]
    try:
        wait_until(connection_file, 180, "the pod's kernel", alive=lambda: kubelet.poll() is None)
    except AssertionError as exc:
        logs = f"--- kubelet\n{node.log('kubelet')}\n--- containerd\n{node.log('containerd')}"
        raise AssertionError(f"{exc}\n{logs}") from exc
    assert len(node.tasks()) == 2  # the sandbox (pause) and the kernel container
    kc = BlockingKernelClient()
    kc.load_connection_file(str(conn[0]))
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=120)
        code = "import os\nprint(os.getuid(), 1 + 1)\nopen('/opt/notebookos/x', 'w')"
        reply, out = run(kc, code, timeout=120)
        # Ran as uid 1000; the root filesystem refused the write (the pod's readOnlyRootFilesystem).
        assert reply["content"]["status"] == "error"
        assert text_of(out).splitlines()[0] == "1000 2"
        assert reply["content"]["ename"] == "OSError" and "Read-only file system" in reply["content"]["evalue"]
        reply, out = run(kc, "print(get_ipython().history_manager.hist_file)", timeout=60)
        assert text_of(out).strip() == "/tmp/ipython/profile_default/history.sqlite"
    finally:
        kc.stop_channels()

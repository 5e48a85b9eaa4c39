"""`make up` prints commands that work as printed: after `source .notebookos/env`, `kubectl` is the
test bed's own (the API server's version), and `jupyter` and `notebookos` are the project's."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from e2e.testbed import up
from e2e.testbed.cluster import toolchain_dir


def test_the_env_file_puts_the_matching_kubectl_and_the_venv_first(tmp_path: Path) -> None:
    venv_bin, k8s_bin = Path(sys.executable).parent, toolchain_dir() / "bin"
    info = {
        "kubeconfig": str(tmp_path / "admin.kubeconfig"),
        "connection_file": str(tmp_path / "kernel-minimal.json"),
        "nodes": ["gpu-0", "gpu-1"],
        "path": [str(venv_bin), str(k8s_bin)],
        "metrics": {"operator": "http://o/metrics", "broker": "http://b/metrics", "extender": "http://e/metrics"},
    }
    env = tmp_path / "env"
    env.write_text(up.env_script(info))
    # A PATH where other tools come first, as on a machine with an old system kubectl.
    script = f"source {env} && command -v kubectl notebookos jupyter && echo $KUBECONFIG"
    out = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env={"PATH": "/usr/local/bin:/usr/bin:/bin"}, check=True
    ).stdout.split()
    assert out == [
        str(k8s_bin / "kubectl"),
        str(venv_bin / "notebookos"),
        str(venv_bin / "jupyter"),
        info["kubeconfig"],
    ]
    text = up.hints(info)
    assert f"source {up.ENV_FILE}" in text
    assert "notebookos interrupt minimal --via pod" in text
    assert "http://o/metrics" in text and "http://b/metrics" in text and "http://e/metrics" in text
    assert "kubectl v1." in text  # the version of the kubectl the env file selects

"""The `notebookos` command's error paths, as a user meets them: one line on stderr naming the
problem, exit status 2, never a traceback. (The paths that need an API server are in
e2e/test_status.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def notebookos(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    import os

    return subprocess.run(
        [sys.executable, "-m", "notebookos.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        cwd=cwd,
    )


def one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    err = proc.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    for w in words:
        assert w in err, (w, err)
    return err


def test_validate_of_a_missing_file_says_so_and_still_checks_the_others() -> None:
    proc = notebookos("validate", "/nonexistent/k.yaml", str(ROOT / "examples" / "minimal.yaml"))
    one_line_error(proc, "notebookos validate: /nonexistent/k.yaml: no such file")
    assert "valid NotebookKernel minimal" in proc.stdout


def test_validate_of_broken_yaml_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: notebookos.io/v1alpha1\nkind: [NotebookKernel\n")
    one_line_error(notebookos("validate", str(bad)), f"{bad}: not valid YAML: line 3")


def test_validate_of_a_non_manifest_is_an_invalid_manifest(tmp_path: Path) -> None:
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    proc = notebookos("validate", str(bad))
    assert proc.returncode == 1 and "not a Kubernetes manifest" in proc.stdout, proc


def test_validate_reports_every_error_of_a_manifest() -> None:
    proc = notebookos("validate", str(ROOT / "examples" / "invalid" / "several-errors.yaml"))
    assert proc.returncode == 1
    assert "spec.replicas: Invalid value: 2" in proc.stdout and "spec.resources.gpus: Invalid value: -1" in proc.stdout


@pytest.mark.parametrize("command", [["connect", "k"], ["interrupt", "k"]])
def test_without_a_kubeconfig_the_cli_says_what_to_set(tmp_path: Path, command: list[str]) -> None:
    proc = notebookos(*command, env={"HOME": str(tmp_path), "KUBECONFIG": ""})
    one_line_error(proc, "no usable kubeconfig", "set KUBECONFIG or pass --kubeconfig")


def test_an_unreachable_api_server_is_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u", "namespace": "ns"}}],
                "current-context": "x",
            }
        )
    )
    proc = notebookos("connect", "k", "--kubeconfig", str(cfg), "--timeout", "0")
    one_line_error(proc, "notebookos connect: cannot reach the API server")


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--gpus", "12"], ["--gpus: input should be less than or equal to 8 (got 12)"]),
        (["--memory", "lots"], ["--memory: must be a Kubernetes quantity such as 4Gi"]),
        (
            ["--memory", "0", "--replicas", "4"],
            ["--memory: memory must be greater than 0", "--replicas: replicas must be odd"],
        ),
        (["--gpu-memory=-1Gi"], ["--gpu-memory: gpuMemory must be greater than 0"]),
        (["--storage", "/mnt/x"], ["--storage: must be a URL such as s3://"]),
    ],
)
def test_kernelspec_install_errors_name_the_flag_in_words(tmp_path: Path, flags: list[str], words: list[str]) -> None:
    err = one_line_error(notebookos("kernelspec", "install", "--name", "x", "--dir", str(tmp_path), *flags), *words)
    assert "pydantic" not in err and "https://" not in err and "^(" not in err, err  # no library dumps
    assert not (tmp_path / "x").exists()


def test_kernelspec_install_takes_gpu_memory_and_an_idle_timeout(tmp_path: Path) -> None:
    proc = notebookos(
        "kernelspec", "install", "--name", "big", "--gpu-memory", "40Gi", "--idle-timeout", "2h", "--dir", str(tmp_path)
    )
    assert proc.returncode == 0, proc.stderr
    config = json.loads((tmp_path / "big" / "kernel.json").read_text())["metadata"]["kernel_provisioner"]["config"]
    assert config["gpuMemory"] == "40Gi" and config["idleTimeout"] == "2h"
    err = one_line_error(
        notebookos("kernelspec", "install", "--name", "x", "--dir", str(tmp_path), "--idle-timeout", "5s"),
        "--idle-timeout",
        "from 10s to 720h",
    )
    assert not (tmp_path / "x").exists(), err

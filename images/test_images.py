"""Smoke tests of the built images (`make images` builds them first): each entrypoint starts as
uid 1000 with a read-only root filesystem, and the kernel image runs cells from a jupyter_client
on the host through its router."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from jupyter_client import BlockingKernelClient

from images.containers import UID, engine, image, run_args
from notebookos.kernel.local import run, text_of


def run_container(ref: str, *command: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(run_args(ref, *command, **kwargs), capture_output=True, text=True, timeout=60, check=False)


@pytest.mark.parametrize(
    ("name", "module", "prog"),
    [
        ("control", "notebookos.operator", "python -m notebookos.operator"),
        ("control", "notebookos.extender.extender_main", "notebookos-extender"),
        ("control", "notebookos.extender.broker_main", "notebookos-broker"),
        ("kernel", "notebookos.extender.node_agent_main", "notebookos-node-agent"),
    ],
)
def test_entrypoint_help(name: str, module: str, prog: str) -> None:
    # The chart's commands are `python -m <module> ...`; the image's entrypoint is `python -m`.
    proc = run_container(image(name), module, "--help")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {prog}"), proc.stdout


def test_control_image_imports_what_the_components_use() -> None:
    # Every module of the components, and the Kubernetes clients they use (the image leaves out
    # kubernetes.aio, which none of them imports).
    modules = [
        "notebookos.operator.__main__", "notebookos.extender.extender_main", "notebookos.extender.broker_main",
        "notebookos.provisioner", "notebookos.kube", "kubernetes.client", "kubernetes.config", "kubernetes.watch",
    ]  # fmt: skip
    code = f"import importlib; [importlib.import_module(m) for m in {modules!r}]; print('ok')"
    proc = run_container(image("control"), "-c", code, entrypoint="python")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


@pytest.mark.parametrize("name", ["control", "kernel"])
def test_non_root_read_only(name: str) -> None:
    # The image's own user (no --user needed in a pod's securityContext) and a root filesystem no
    # write reaches; HOME and the Jupyter/IPython folders point into the writable /tmp.
    code = (
        "import os, pathlib, importlib.util\n"
        "print(os.getuid(), os.getgid(), os.environ['HOME'], importlib.util.find_spec('pip'))\n"
        "try:\n    pathlib.Path('/opt/notebookos/x').write_text('x')\nexcept OSError as e:\n    print(e.errno)\n"
    )
    proc = run_container(image(name), "-c", code, entrypoint="python", user=False)
    assert proc.returncode == 0, proc.stderr
    # None: no pip in the image (it ran from its wheel in the build stage); 30: EROFS.
    assert proc.stdout.split() == [str(UID), str(UID), "/tmp", "None", "30"], proc.stdout


@pytest.fixture
def kernel_in_container(tmp_path: Path) -> Iterator[Path]:
    """`python -m notebookos.kernel.local` (three replicas and a router, each a process) in one
    kernel container; its /tmp is a host folder so the test reads the connection file."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    os.chown(scratch, UID, UID)
    name = f"nbos-smoke-{os.getpid()}"
    proc = subprocess.Popen(
        run_args(image("kernel"), "notebookos.kernel.local", scratch=scratch, name=name),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the connection file's path, once the processes started
        assert line.startswith("/tmp/"), f"no connection file: {line!r} {proc.stderr.read() if proc.stderr else ''}"
        yield scratch / Path(line.strip()).relative_to("/tmp")
    finally:
        subprocess.run([*engine(), "stop", "-t", "5", name], capture_output=True, timeout=60, check=False)
        proc.wait(timeout=60)


def test_kernel_image_runs_cells(kernel_in_container: Path) -> None:
    kc = BlockingKernelClient()
    kc.load_connection_file(str(kernel_in_container))
    kc.start_channels()
    try:
        start = time.monotonic()
        kc.wait_for_ready(timeout=120)
        reply, out = run(kc, "1 + 1", timeout=120)
        first_cell = time.monotonic() - start
        assert reply["content"]["status"] == "ok", reply["content"]
        assert text_of(out).strip() == "2"
        # IPython wrote its history and profile under /tmp (the only writable place), as uid 1000.
        code = "import os; ip = get_ipython(); "
        code += "print(os.getuid(), ip.profile_dir.location, ip.history_manager.hist_file)"
        reply, out = run(kc, code, timeout=60)
        assert reply["content"]["status"] == "ok", reply["content"]
        uid, profile, history = text_of(out).split()
        assert (uid, profile) == (str(UID), "/tmp/ipython/profile_default")
        assert history == "/tmp/ipython/profile_default/history.sqlite"
        # State survives between cells (the replicas agree through Raft).
        run(kc, "x = 40", timeout=60)
        reply, out = run(kc, "x + 2", timeout=60)
        assert text_of(out).strip() == "42"
        print(f"kernel image: first cell answered {first_cell:.1f} s after the connection file appeared")
    finally:
        kc.stop_channels()
    info = json.loads(kernel_in_container.read_text())
    assert info["transport"] == "tcp"

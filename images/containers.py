"""Run the built images the way the chart's pods run them: as uid 1000, read-only root filesystem,
a writable /tmp (the pods' scratch emptyDir), all capabilities dropped, no privilege escalation.

podman (or docker, when it built the images) runs them. The flags after the security ones are
for machines like CI's: cgroup v1 (crun refuses hybrid cgroups, runc and cgroupfs work) and a hard
RLIMIT_NOFILE of 20000 without CAP_SYS_RESOURCE (the runtimes' defaults exceed it)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UID = 1000


def image(name: str) -> str:
    """The image's reference, from the one place names and tags come from (images/names.sh)."""
    out = subprocess.run(["bash", str(ROOT / "images" / "names.sh"), name], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def engine() -> list[str]:
    """The command that runs containers, with the flags this machine needs."""
    if os.environ.get("NOTEBOOKOS_BUILDER") == "docker":
        return ["docker"]
    podman = shutil.which("podman")
    assert podman, "podman missing: run `make images` (images/tools.sh installs it)"
    flags = [podman]
    if shutil.which("runc"):
        flags += ["--runtime", "runc", "--cgroup-manager", "cgroupfs"]
    return flags


def run_args(
    ref: str,
    *command: str,
    scratch: Path | None = None,
    name: str | None = None,
    entrypoint: str | None = None,
    user: bool = True,
) -> list[str]:
    """`run` of ref as the pods run it. scratch (a host folder owned by UID) is /tmp, else a tmpfs;
    user=False leaves the user to the image (to check the image's own USER)."""
    tmp = ["-v", f"{scratch}:/tmp"] if scratch else ["--tmpfs", "/tmp:rw,size=256m"]
    return [
        *engine(),
        "run",
        "--rm",
        *(["--name", name] if name else []),
        *(["--entrypoint", entrypoint] if entrypoint else []),
        "--read-only",
        *(["--user", f"{UID}:{UID}"] if user else []),
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        *tmp,
        # The kernel's processes talk on loopback; the test's client reaches them there.
        "--network",
        "host",
        "--ulimit",
        "nofile=1024:20000",
        "--ulimit",
        "nproc=4096:4096",
        ref,
        *command,
    ]

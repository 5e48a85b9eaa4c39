"""The provisioner's and kernelspec command's pure parts: manifests, validation, connection info."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from notebookos.api import NotebookKernel
from notebookos.cli import main
from notebookos.connection import NotReady, connection_info, hmac_key
from notebookos.provisioner import build_kernel, kernel_name_for, unschedulable_message


def test_build_kernel_from_kernelspec_config_and_env() -> None:
    m = build_kernel(
        "jupyter-abc",
        "team-a",
        {"gpus": 2, "memory": "16Gi", "image": "img:1", "idleTimeout": "1h"},
        {"KERNEL_USERNAME": "alice@example.com"},
        "abc",
    )
    assert m["metadata"] == {
        "name": "jupyter-abc",
        "namespace": "team-a",
        "labels": {
            "app.kubernetes.io/created-by": "notebookos-provisioner",
            "notebookos.io/jupyter-kernel-id": "abc",
            "notebookos.io/user": "alice-example.com",
        },
    }
    assert m["spec"] == {
        "image": "img:1",
        "idleTimeout": "1h",
        "resources": {"gpus": 2, "memory": "16Gi"},
        "user": "alice@example.com",
    }


def test_kernel_gpus_env_overrides_kernelspec() -> None:
    m = build_kernel("k", "ns", {"gpus": 1}, {"KERNEL_GPUS": "4"}, "id")
    assert m["spec"]["resources"]["gpus"] == 4


def test_bad_kernelspec_config_is_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="gpus"):
        build_kernel("k", "ns", {"gpus": 64}, {}, "id")


def test_kernel_name_is_a_dns_label() -> None:
    name = kernel_name_for("0e4f6c52-8d7b-4b6e-9a43-3f0e7e1c9d2a")
    assert len(name) <= 63 and name.startswith("jupyter-") and not name.endswith("-")


def _kernel(status: dict[str, object]) -> NotebookKernel:
    return NotebookKernel.model_validate({"metadata": {"name": "k", "namespace": "ns"}, "spec": {}, "status": status})


def test_connection_info_from_status_and_secret() -> None:
    k = _kernel(
        {
            "phase": "Ready",
            "connection": {
                "serviceName": "k-router",
                "secretName": "k-key",
                "ports": {"shell": 5001, "iopub": 5002, "stdin": 5003, "control": 5004, "hb": 5005},
            },
        }
    )
    key = hmac_key({"key": base64.b64encode(b"s3cret").decode()})
    info = connection_info(k, key, "10.0.0.7")
    assert info == {
        "ip": "10.0.0.7",
        "transport": "tcp",
        "signature_scheme": "hmac-sha256",
        "key": "s3cret",
        "shell_port": 5001,
        "iopub_port": 5002,
        "stdin_port": 5003,
        "control_port": 5004,
        "hb_port": 5005,
        "kernel_name": "notebookos-k",
    }


def test_no_connection_yet_is_a_clear_error() -> None:
    with pytest.raises(NotReady, match=r"no status\.connection"):
        connection_info(_kernel({"phase": "Pending"}), "k", "h")
    with pytest.raises(KeyError, match="'key'"):
        hmac_key({})


def test_unschedulable_message_names_the_condition() -> None:
    k = _kernel(
        {"conditions": [{"type": "Scheduled", "status": "False", "reason": "Unschedulable", "message": "0/2 nodes"}]}
    )
    assert unschedulable_message(k) == "Unschedulable: 0/2 nodes"
    assert unschedulable_message(_kernel({})) is None


def test_kernelspec_install_writes_provisioner_metadata(tmp_path: Path) -> None:
    assert main(["kernelspec", "install", "--name", "nb-gpu2", "--gpus", "2", "--dir", str(tmp_path)]) == 0
    spec = json.loads((tmp_path / "nb-gpu2" / "kernel.json").read_text())
    assert spec["metadata"]["kernel_provisioner"] == {
        "provisioner_name": "notebookos-provisioner",
        "config": {"gpus": 2, "cpu": "1", "memory": "4Gi"},
    }
    assert spec["interrupt_mode"] == "message"
    assert spec["display_name"] == "Python 3 (NotebookOS, 2 GPUs)"


def test_kernelspec_install_refuses_bad_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["kernelspec", "install", "--name", "x", "--gpus", "12", "--dir", str(tmp_path)]) == 2
    assert "gpus" in capsys.readouterr().err
    assert main(["kernelspec", "install", "--name", "x", "--replicas", "2", "--dir", str(tmp_path)]) == 2


def test_provisioner_entry_point_is_registered() -> None:
    from importlib.metadata import entry_points

    (ep,) = entry_points(group="jupyter_client.kernel_provisioners", name="notebookos-provisioner")
    from notebookos.provisioner import NotebookOSProvisioner

    assert ep.load() is NotebookOSProvisioner


def test_kernelspec_config_becomes_provisioner_traits() -> None:
    """jupyter_client passes the kernelspec's provisioner config to the constructor; every key must be
    a trait (an unknown one is a deprecation warning today and an error in a later traitlets)."""
    import warnings

    from jupyter_client.kernelspec import KernelSpec

    from notebookos.provisioner import NotebookOSProvisioner

    config = {"gpus": 2, "cpu": 4, "memory": "16Gi", "gpuMemory": "40Gi", "idleTimeout": "1h", "namespace": "team"}
    spec = KernelSpec(argv=["python"], metadata={"kernel_provisioner": {"config": config}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prov = NotebookOSProvisioner(kernel_id="k1", kernel_spec=spec, parent=None, **config)
    assert prov.namespace == "team"
    assert prov._cfg() == {"idleTimeout": "1h", "gpus": 2, "cpu": 4, "memory": "16Gi", "gpuMemory": "40Gi"}
    manifest = build_kernel("k", "team", prov._cfg(), {}, "k1")
    assert manifest["spec"]["resources"] == {"gpus": 2, "cpu": 4, "memory": "16Gi", "gpuMemory": "40Gi"}


@pytest.mark.parametrize(
    ("spec_ns", "env", "expected"),
    [("team", {"KERNEL_NAMESPACE": "notebookos-kernels-alice"}, "notebookos-kernels-alice"), ("team", {}, "team")],
)
async def test_kernel_namespace_from_the_hub_beats_the_kernelspec(
    spec_ns: str, env: dict[str, str], expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KubeSpawner sets KERNEL_NAMESPACE per user (docs/helm.md); the kernelspec's is the fallback."""
    from jupyter_client.kernelspec import KernelSpec

    from notebookos.provisioner import NotebookOSProvisioner

    monkeypatch.delenv("KERNEL_NAMESPACE", raising=False)
    spec = KernelSpec(argv=["python"], metadata={"kernel_provisioner": {"config": {"namespace": spec_ns}}})
    prov = NotebookOSProvisioner(kernel_id="k1", kernel_spec=spec, parent=None, namespace=spec_ns)
    await prov.pre_launch(env=env)
    assert prov.namespace == expected

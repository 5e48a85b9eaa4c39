"""One credential loader for every control-plane process, in one order."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kubernetes.config.config_exception import ConfigException

from notebookos.kubeclient import api_client


def _kubeconfig(path: Path, server: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": server}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


def test_explicit_kubeconfig_beats_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "env", "https://from-env:6443")))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    api = api_client(str(_kubeconfig(tmp_path / "flag", "https://from-flag:6443")))
    assert api.configuration.host == "https://from-flag:6443"
    assert api.configuration.connection_pool_maxsize == 16


def test_kubeconfig_env_beats_in_cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KUBECONFIG", str(_kubeconfig(tmp_path / "env", "https://from-env:6443")))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert api_client().configuration.host == "https://from-env:6443"


def test_in_a_pod_without_a_kubeconfig_the_service_account_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    # This machine is no pod: the in-cluster loader is the one that complains, about the token file.
    with pytest.raises(ConfigException, match="token"):
        api_client()

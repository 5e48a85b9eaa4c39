"""Operator settings, names, kopf settings and the command line."""

from __future__ import annotations

import subprocess
import sys

import kopf
import pytest

from notebookos import labels
from notebookos.operator import naming
from notebookos.operator.__main__ import config_from, parse_args
from notebookos.operator.config import ConfigError, OperatorConfig
from notebookos.operator.settings import configure


def test_defaults() -> None:
    cfg = OperatorConfig.from_env({})
    assert cfg.scheduler_name == labels.SCHEDULER_NAME
    assert cfg.node_selector == {labels.GPU_POOL_LABEL: labels.GPU_POOL_VALUE}
    assert cfg.runner == ""  # the test-bed runner's label is opt-in, never a production default
    assert cfg.resync_seconds == 60
    assert cfg.kernel_service_account == "" and cfg.broker_url == ""


def test_from_env() -> None:
    cfg = OperatorConfig.from_env(
        {
            "NOTEBOOKOS_KERNEL_IMAGE": "img:2",
            "NOTEBOOKOS_SCHEDULER_NAME": "default-scheduler",
            "NOTEBOOKOS_BROKER_URL": "http://broker:8080",
            "NOTEBOOKOS_RAFT_PORT": "7100",
            "NOTEBOOKOS_ROUTER_PORT": "6000",
            "NOTEBOOKOS_JUPYTER_PORT": "9100",
            "NOTEBOOKOS_NODE_SELECTOR": "pool=a, zone=z1",
            "NOTEBOOKOS_EXTRA_TOLERATIONS": '[{"key": "k", "operator": "Exists"}]',
            "NOTEBOOKOS_RUNNER": "",
            "NOTEBOOKOS_KERNEL_SERVICE_ACCOUNT": "kernels",
            "NOTEBOOKOS_RUNTIME_CLASS": "nvidia",
        }
    )
    assert (cfg.image, cfg.scheduler_name, cfg.broker_url, cfg.raft_port) == (
        "img:2",
        "default-scheduler",
        "http://broker:8080",
        7100,
    )
    assert cfg.node_selector == {labels.GPU_POOL_LABEL: labels.GPU_POOL_VALUE, "pool": "a", "zone": "z1"}
    assert cfg.extra_tolerations == ({"key": "k", "operator": "Exists"},)
    assert cfg.runner == "" and cfg.kernel_service_account == "kernels"
    assert (cfg.router_port, cfg.router_ports.hb, cfg.jupyter_port) == (6000, 6004, 9100)
    assert cfg.runtime_class == "nvidia"


@pytest.mark.parametrize(
    ("var", "value", "message"),
    [
        ("NOTEBOOKOS_RAFT_PORT", "x", "NOTEBOOKOS_RAFT_PORT: 'x' is not an integer"),
        ("NOTEBOOKOS_RAFT_PORT", "70000", "NOTEBOOKOS_RAFT_PORT: 70000 is outside 1..65535"),
        ("NOTEBOOKOS_ROUTER_PORT", "65534", "NOTEBOOKOS_ROUTER_PORT: 65534 is outside 1..65530"),
        ("NOTEBOOKOS_NODE_SELECTOR", "pool", "NOTEBOOKOS_NODE_SELECTOR: 'pool' is not key=value"),
        ("NOTEBOOKOS_EXTRA_TOLERATIONS", "[", "NOTEBOOKOS_EXTRA_TOLERATIONS: not JSON"),
        ("NOTEBOOKOS_EXTRA_TOLERATIONS", '{"a": 1}', "expected a JSON list of objects"),
    ],
)
def test_bad_settings_are_named(var: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        OperatorConfig.from_env({var: value})


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NOTEBOOKOS_SCHEDULER_NAME", "from-env")
    monkeypatch.setenv("NOTEBOOKOS_KERNEL_IMAGE", "env-image")
    args = parse_args(["--scheduler-name", "default-scheduler", "--runner", "", "-n", "a", "-n", "b"])
    cfg = config_from(args)
    assert cfg.scheduler_name == "default-scheduler" and cfg.image == "env-image" and cfg.runner == ""
    assert args.namespace == ["a", "b"] and args.peering == "notebookos" and not args.standalone


@pytest.mark.parametrize(
    "argv",
    [
        [sys.executable, "-m", "notebookos.operator"],
        [sys.executable, "-m", "notebookos.cli", "operator"],
    ],
    ids=["python -m", "notebookos operator"],
)
def test_bad_flag_value_exits_2_with_the_reason(argv: list[str]) -> None:
    proc = subprocess.run([*argv, "--node-selector", "oops"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "NOTEBOOKOS_NODE_SELECTOR: 'oops' is not key=value" in proc.stderr


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("minimal", None),
        ("a" * naming.MAX_KERNEL_NAME, None),
        ("a" * (naming.MAX_KERNEL_NAME + 1), "at most 54"),
        ("1abc", "must start with a letter"),
        ("a.b", "must start with a letter"),
    ],
)
def test_kernel_name_problems(name: str, problem: str | None) -> None:
    got = naming.kernel_name_problem(name)
    assert (got is None) if problem is None else (got is not None and problem in got)


def test_names_are_deterministic() -> None:
    assert naming.replica_name("k", 2) == "k-2"
    assert naming.replica_pod_name("k", 2, 3) == "k-2-i3"
    assert (naming.secret_name("k"), naming.service_name("k"), naming.headless_service_name("k")) == (
        "k-key",
        "k",
        "k-replicas",
    )
    assert naming.label_selector({"b": "2", "a": "1"}) == "a=1,b=2"


def test_kopf_settings() -> None:
    s = kopf.OperatorSettings()
    configure(s)
    assert s.watching.server_timeout == 120 and isinstance(s.watching.server_timeout, int)
    assert s.watching.client_timeout == 150 and s.watching.connect_timeout == 5
    assert s.networking.request_timeout == 30
    assert isinstance(s.persistence.progress_storage, kopf.AnnotationsProgressStorage)
    assert isinstance(s.persistence.diffbase_storage, kopf.AnnotationsDiffBaseStorage)
    assert s.persistence.finalizer == "notebookos.io/operator"
    assert s.posting.reporting_component == labels.MANAGED_BY


def test_handlers_register_no_finalizer_needing_handlers() -> None:
    # Event handlers only: deleting a kernel never waits for the operator.
    import notebookos.operator.handlers  # noqa: F401

    registry = kopf.get_default_registry()
    assert registry._spawning._handlers == []  # type: ignore[attr-defined]
    assert registry._changing._handlers == []  # type: ignore[attr-defined]
    ids = {h.id for h in registry._watching._handlers}  # type: ignore[attr-defined]
    assert {"kernel_event", "replica_event", "pod_event", "node_event"} <= ids


def test_resync_seconds_from_env_and_bounds() -> None:
    assert OperatorConfig.from_env({"NOTEBOOKOS_RESYNC_SECONDS": "5"}).resync_seconds == 5
    with pytest.raises(ConfigError, match=r"NOTEBOOKOS_RESYNC_SECONDS: 0 is outside 1\.\.3600"):
        OperatorConfig.from_env({"NOTEBOOKOS_RESYNC_SECONDS": "0"})


def test_the_watch_cache_is_on_by_default_and_takes_only_on_or_off() -> None:
    assert OperatorConfig.from_env({}).watch_cache is True
    assert OperatorConfig.from_env({"NOTEBOOKOS_WATCH_CACHE": "off"}).watch_cache is False
    with pytest.raises(ConfigError, match="NOTEBOOKOS_WATCH_CACHE must be on or off, not 'no'"):
        OperatorConfig.from_env({"NOTEBOOKOS_WATCH_CACHE": "no"})


def test_resync_timers_cover_kernels_and_replicas() -> None:
    from notebookos.operator.handlers import resync

    registry = kopf.OperatorRegistry()
    resync.register(30, registry=registry)
    timers = {h.selector.any_name: h for h in registry._spawning.get_all_handlers()}
    assert set(timers) == {"notebookkernels", "kernelreplicas"}
    for h in timers.values():
        assert (h.interval, h.idle, h.backoff) == (30, 30, 10.0)

"""Node agent's pure parts (fake NVML, inventory, audit) and the scheduler configuration."""

from __future__ import annotations

import json

import pytest
import yaml

from notebookos.extender.cluster_state import node_info_from_object, parse_inventory
from notebookos.extender.node_agent import audit
from notebookos.extender.nvml import FakeNvml, backend_from_env, inventory_json
from notebookos.extender.scheduler_config import base_config, extender_entry, render, render_yaml
from notebookos.labels import GPU_INVENTORY_ANNOTATION, SCHEDULER_NAME


def test_fake_inventory_is_what_the_extender_reads() -> None:
    nv = FakeNvml.from_spec("4", node="g1")
    value = inventory_json(nv.devices())
    inv = parse_inventory(value)
    assert [d["index"] for d in inv] == [0, 1, 2, 3]
    assert set(inv[0]) == {"index", "uuid", "memoryMiB", "model", "healthy"}
    node = {"metadata": {"name": "g1", "annotations": {GPU_INVENTORY_ANNOTATION: value}}}
    assert node_info_from_object(node).gpus == 4


def test_fake_spec_json_and_unhealthy_devices_do_not_count() -> None:
    spec = json.dumps([{"uuid": "GPU-a", "memoryMiB": 1024, "model": "T4"}, {"uuid": "GPU-b", "healthy": False}])
    nv = FakeNvml.from_spec(spec)
    node = {"metadata": {"annotations": {GPU_INVENTORY_ANNOTATION: inventory_json(nv.devices())}}}
    info = node_info_from_object(node)
    assert info.gpus == 1 and info.gpu_memory_mib == 1024
    with pytest.raises(ValueError, match="GPU count or a JSON list"):
        FakeNvml.from_spec("{")
    with pytest.raises(ValueError, match="'real' or 'fake"):
        backend_from_env("bogus")


def test_audit_flags_devices_used_without_grant() -> None:
    nv = FakeNvml.uniform(3, node="g1")
    u = [g.uuid for g in nv.devices()]
    nv.procs = {u[0]: [101], u[1]: [202, 203]}
    grants = [
        {"node": "g1", "devices": [u[0]], "executionId": "e1"},
        {"node": "other", "devices": [u[1]], "executionId": "e2"},  # another node's grant covers nothing here
    ]
    v = audit("g1", nv.processes(), grants)
    assert [(x.reason, x.device, x.pids) for x in v] == [("GPUUsedWithoutGrant", u[1], (202, 203))]
    assert "202, 203" in v[0].message and "g1" in v[0].message
    assert audit("g1", {u[2]: []}, []) == []


def test_scheduler_config_file_and_render() -> None:
    base = base_config()
    assert base["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert base["profiles"][0]["schedulerName"] == SCHEDULER_NAME
    cfg = render("http://127.0.0.1:9999", namespace="ops", leader_elect=False, node_cache_capable=False)
    ext = cfg["extenders"][0]
    assert ext["urlPrefix"] == "http://127.0.0.1:9999/" and ext["filterVerb"] == "filter"
    assert ext["prioritizeVerb"] == "prioritize" and ext["nodeCacheCapable"] is False
    assert cfg["leaderElection"] == {"leaderElect": False, "resourceName": SCHEDULER_NAME, "resourceNamespace": "ops"}
    assert yaml.safe_load(render_yaml("https://x:1/"))["extenders"][0]["enableHTTPS"] is True
    assert extender_entry("http://a:1", weight=2)["weight"] == 2

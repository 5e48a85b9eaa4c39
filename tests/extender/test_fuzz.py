"""Fuzzing (hypothesis) of both services over real HTTP: any payload gets 200 or a 4xx with a
message, never a 5xx, and the service keeps answering."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from notebookos.extender.auth import Identity, StaticAuthenticator
from notebookos.extender.binding_store import MemoryBindingStore
from notebookos.extender.broker import Broker
from notebookos.extender.broker_app import make_broker_app
from notebookos.extender.cluster_state import ClusterState, node_info_from_object
from notebookos.extender.extender_app import Extender, make_app
from notebookos.labels import GPU_INVENTORY_ANNOTATION, KERNEL_LABEL, REPLICA_GPUS_ANNOTATION
from tests.extender.helpers import ServerThread, node_obj, replica_pod

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


@pytest.fixture(scope="module")
def extender_url() -> Iterator[str]:
    state = ClusterState()
    state.replace_nodes({f"n{i}": node_info_from_object(node_obj(f"n{i}")) for i in range(3)})

    async def factory() -> web.Application:
        return make_app(Extender(state, settle_timeout_s=0.05))

    srv = ServerThread(factory).start()
    yield srv.url
    srv.stop()


@pytest.fixture(scope="module")
def broker_url() -> Iterator[str]:
    async def factory() -> web.Application:
        broker = Broker(MemoryBindingStore())
        broker.set_inventory("n0", [f"GPU-{i}" for i in range(8)])
        await broker.start()
        return make_broker_app(broker, StaticAuthenticator({"t": Identity("sa", "ns", "k")}))

    srv = ServerThread(factory).start()
    yield srv.url
    srv.stop()


def _check_extender(url: str, verb: str, data: bytes) -> None:
    r = requests.post(f"{url}/{verb}", data=data, headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code in (200, 400), (r.status_code, r.text)
    if r.status_code == 400:
        assert r.json()["error"]
    elif verb == "filter":
        assert set(r.json()) == {"Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"}
    else:
        assert all(set(h) == {"Host", "Score"} for h in r.json())


# Pods and nodes that look right at the top and are wrong anywhere below.
meta_st = st.fixed_dictionaries(
    {},
    optional={
        "name": json_values,
        "namespace": json_values,
        "labels": st.dictionaries(st.sampled_from([KERNEL_LABEL, "x"]), json_values | st.text(max_size=5)),
        "annotations": st.dictionaries(
            st.sampled_from([REPLICA_GPUS_ANNOTATION, GPU_INVENTORY_ANNOTATION]),
            st.text(max_size=10) | st.sampled_from(["1", "-1", "8", "[]", '[{"uuid": 1}]', '[{"uuid": "u"}]']),
        ),
    },
)
pod_st = st.fixed_dictionaries({"metadata": meta_st}, optional={"spec": json_values, "status": json_values})
node_st = st.fixed_dictionaries(
    {"metadata": meta_st}, optional={"spec": json_values, "status": json_values}
) | st.builds(lambda n: node_obj(n), st.sampled_from(["n0", "n1", "zz"]))
args_st = st.fixed_dictionaries(
    {},
    optional={
        "Pod": pod_st | json_values,
        "Nodes": st.fixed_dictionaries({"items": st.lists(node_st, max_size=4)}) | json_values,
        "NodeNames": st.lists(st.sampled_from(["n0", "n1", "n2", "zz", ""]), max_size=4) | json_values,
    },
)


@FUZZ
@given(verb=st.sampled_from(["filter", "prioritize"]), body=args_st)
def test_extender_structured_fuzz(extender_url: str, verb: str, body: dict[str, Any]) -> None:
    _check_extender(extender_url, verb, json.dumps(body).encode())


@FUZZ
@given(
    verb=st.sampled_from(["filter", "prioritize"]),
    data=st.binary(max_size=64) | json_values.map(json.dumps).map(str.encode),
)
def test_extender_raw_fuzz(extender_url: str, verb: str, data: bytes) -> None:
    _check_extender(extender_url, verb, data)


def test_valid_requests_still_work_after_fuzzing(extender_url: str) -> None:
    r = requests.post(f"{extender_url}/filter", json={"Pod": replica_pod("k"), "NodeNames": ["n0"]}, timeout=10)
    assert r.status_code == 200 and r.json()["NodeNames"] == ["n0"]


acquire_st = st.fixed_dictionaries(
    {},
    optional={
        "kernel": st.sampled_from(["k", "K", "", "k" * 300]) | json_values,
        "replica": st.integers(-2, 12) | json_values,
        "node": st.sampled_from(["n0", "n1", ""]) | json_values,
        "gpus": st.integers(-1, 10) | json_values,
        "executionId": st.text(max_size=12) | json_values,
        "namespace": st.sampled_from(["ns", "other"]) | json_values,
    },
)


@FUZZ
@given(
    path=st.sampled_from(["/v1/acquire", "/v1/release"]),
    body=acquire_st | json_values | st.fixed_dictionaries({"executionId": json_values}),
    token=st.sampled_from(["t", "bad"]),
)
def test_broker_fuzz(broker_url: str, path: str, body: Any, token: str) -> None:
    r = requests.post(f"{broker_url}{path}", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert r.status_code in (200, 400, 401, 403, 404, 409), (r.status_code, r.text)
    if r.status_code != 200:
        assert r.json()["reason"]


@FUZZ
@given(data=st.binary(max_size=64), header=st.text(st.characters(min_codepoint=33, max_codepoint=126), max_size=20))
def test_broker_raw_fuzz(broker_url: str, data: bytes, header: str) -> None:
    headers = {"Authorization": f"Bearer {header}"} if header else {}
    r = requests.post(f"{broker_url}/v1/acquire", data=data, headers=headers, timeout=30)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)

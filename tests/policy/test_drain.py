"""Property tests (hypothesis) of the drain plan, the scale-in candidates and the scale-out demand,
each checked against a brute force on small inputs."""

from __future__ import annotations

import itertools

from hypothesis import example, given, settings
from hypothesis import strategies as st

from notebookos.policy.autoscale import scale_out_demand
from notebookos.policy.drain import Resident, drain_plan, scale_in_candidates
from notebookos.policy.migration import Member
from notebookos.policy.placement import NodeView, ReplicaRequest, check_node, rank_key, subscription_cap

KERNELS = ("a", "b", "c", "d", "e")
ratio_st = st.floats(min_value=1.0, max_value=3.0, allow_nan=False)


@st.composite
def drain_case(draw: st.DrawFn) -> tuple[NodeView, list[Resident], list[NodeView], float]:
    """A node with up to 4 resident kernels (one replica each there, the others elsewhere), and up to
    4 other nodes, small enough for caps and siblings to bite."""
    others = []
    for i in range(draw(st.integers(0, 4))):
        gpus = draw(st.integers(1, 4))
        others.append(
            NodeView(
                f"n{i}",
                gpus,
                subscribed=draw(st.integers(0, 12)),
                bound=draw(st.integers(0, gpus)),
                kernels=frozenset(draw(st.sets(st.sampled_from(KERNELS), max_size=2))),
                schedulable=draw(st.integers(0, 5)) > 0,
            )
        )
    residents = []
    for k in draw(st.lists(st.sampled_from(KERNELS), unique=True, max_size=4)):
        elsewhere = [n.name for n in others if k in n.kernels]
        members = [Member(0, "drained", live=draw(st.integers(0, 9)) > 0, executing=draw(st.integers(0, 9)) == 0)]
        members += [Member(1 + j, name) for j, name in enumerate(elsewhere)]
        residents.append(Resident(ReplicaRequest(k, draw(st.integers(1, 4))), tuple(members)))
    node = NodeView(
        "drained", 4, sum(r.request.gpus for r in residents), 0, frozenset(r.request.kernel for r in residents)
    )
    return node, residents, others, draw(ratio_st)


def valid(plan: list[tuple[str, int, str]], residents: list[Resident], others: list[NodeView], ratio: float) -> bool:
    """Every replica of the drained node moved once, each target under its cap and without a sibling."""
    by_name = {n.name: n for n in others}
    req = {r.request.kernel: r.request for r in residents}
    if sorted(k for k, _, _ in plan) != sorted(req) or any(t not in by_name for _, _, t in plan):
        return False
    for name, node in by_name.items():
        moved = [req[k] for k, _, t in plan if t == name]
        kernels = [r.kernel for r in moved]
        if len(set(kernels)) < len(kernels) or node.kernels & set(kernels):
            return False  # two replicas of a kernel on one node
        for r in moved:
            if check_node(NodeView(name, node.gpus, 0, node.bound, frozenset(), node.schedulable), r, ratio):
                return False  # cordoned, or the node is smaller than the kernel's cells
        if moved and node.subscribed + sum(r.gpus for r in moved) > subscription_cap(node, ratio) + 1e-9:
            return False  # overfilled
    return True


def brute_force(residents: list[Resident], others: list[NodeView], ratio: float) -> bool:
    kernels = [r.request.kernel for r in residents]
    for targets in itertools.product([n.name for n in others], repeat=len(kernels)):
        if valid([(k, 0, t) for k, t in zip(kernels, targets, strict=True)], residents, others, ratio):
            return True
    return not kernels


@settings(max_examples=400, deadline=None)
@given(drain_case())
def test_drain_plan_is_valid_and_found_whenever_one_exists(case) -> None:
    node, residents, others, ratio = case
    plan = drain_plan(node, residents, others, ratio)
    busy = any(m.executing or not m.live for r in residents for m in r.members)
    if busy:
        assert plan is None  # not while a resident kernel runs a cell or has a member in motion
        return
    if plan is None:
        assert not brute_force(residents, others, ratio)
    else:
        assert valid(plan, residents, others, ratio)
        assert all(i == 0 for _, i, _ in plan)  # the replica that is on the drained node
        assert all(t != node.name for _, _, t in plan)
        assert [k for k, _, _ in plan] == [r.request.kernel for r in residents]  # in the given order


@settings(max_examples=200, deadline=None)
@given(drain_case())
def test_drain_plan_is_the_greedy_plan_when_that_succeeds(case) -> None:
    """The first plan tried is each replica to the best-ranked node that takes it, the moves before
    it counted: what the simulator's figures were measured with."""
    node, residents, others, ratio = case
    if any(m.executing or not m.live for r in residents for m in r.members):
        return
    views = {n.name: n for n in others}
    greedy = []
    for r in residents:
        fits = [n for n in views.values() if check_node(n, r.request, ratio) is None]
        if not fits:
            return
        best = min(fits, key=rank_key)
        greedy.append((r.request.kernel, 0, best.name))
        views[best.name] = NodeView(
            best.name,
            best.gpus,
            best.subscribed + r.request.gpus,
            best.bound,
            best.kernels | {r.request.kernel},
            best.schedulable,
        )
    assert drain_plan(node, residents, others, ratio) == greedy


def test_drain_plan_searches_past_a_greedy_dead_end() -> None:
    # ratio 1: caps are 2 GPUs x 3 replicas = 6. x (2 GPUs idle, ranked first) has room for 2 more,
    # y (none idle) for 1. Greedy sends a to x, and then b (2 GPUs) fits nowhere; a -> y, b -> x works.
    x = NodeView("x", 2, subscribed=4, bound=0)
    y = NodeView("y", 2, subscribed=5, bound=2)
    a = Resident(ReplicaRequest("a", 1), (Member(0, "drained"),))
    b = Resident(ReplicaRequest("b", 2), (Member(0, "drained"),))
    node = NodeView("drained", 2, 3, 0, frozenset({"a", "b"}))
    assert drain_plan(node, [a, b], [x, y], 1.0) == [("a", 0, "y"), ("b", 0, "x")]


def test_drain_plan_not_now_and_empty_node() -> None:
    node = NodeView("drained", 8, 2, 0, frozenset({"a"}))
    other = NodeView("o", 8)
    running = Resident(ReplicaRequest("a", 2), (Member(0, "drained"), Member(1, "z", executing=True)))
    moving = Resident(ReplicaRequest("a", 2), (Member(0, "drained"), Member(1, "z", live=False)))
    quiet = Resident(ReplicaRequest("a", 2), (Member(0, "drained"), Member(1, "z")))
    assert drain_plan(node, [running], [other], 7.0) is None  # its executor finishes the cell first
    assert drain_plan(node, [moving], [other], 7.0) is None  # one member of a kernel in motion at a time
    assert drain_plan(node, [quiet], [other], 7.0) == [("a", 0, "o")]
    assert drain_plan(NodeView("empty", 8), [], [], 7.0) == []


# --- scale-in candidates ------------------------------------------------------------------------------


@given(
    st.lists(
        st.tuples(
            st.integers(0, 2), st.sets(st.sampled_from(KERNELS), max_size=4), st.one_of(st.none(), st.integers(0, 600))
        ),
        max_size=8,
    ),
    st.integers(0, 600),
    st.one_of(st.none(), st.integers(0, 4)),
)
@example([(0, set(), 300)], 300, None)  # idle exactly the grace: a candidate
def test_scale_in_candidates_are_idle_nodes_fewest_replicas_first(rows, grace, cap) -> None:
    nodes = [NodeView(f"n{i}", 8, bound=b, kernels=frozenset(k)) for i, (b, k, _) in enumerate(rows)]
    idle = {f"n{i}": s for i, (_, _, s) in enumerate(rows) if s is not None}
    got = scale_in_candidates(nodes, idle, grace, cap)
    want = [
        n
        for n in nodes
        if n.bound == 0 and n.name in idle and idle[n.name] >= grace and (cap is None or len(n.kernels) <= cap)
    ]
    assert sorted(got) == sorted(n.name for n in want)
    by_name = {n.name: n for n in nodes}
    keys = [(len(by_name[g].kernels), g) for g in got]
    assert keys == sorted(keys)


# --- scale-out demand -----------------------------------------------------------------------------------


def fewest_nodes(requests: list[ReplicaRequest], gpus: int) -> int:
    """Brute force: every partition of the requests into nodes (each request to a node opened
    before it or to a new one), the fewest nodes of any that fits."""

    def fewest(i: int, nodes: list[list[ReplicaRequest]]) -> int:
        if i == len(requests):
            return len(nodes)
        r = requests[i]
        counts = [fewest(i + 1, [*nodes, [r]])]
        for j, node in enumerate(nodes):
            if sum(x.gpus for x in node) + r.gpus <= gpus and all(x.kernel != r.kernel for x in node):
                counts.append(fewest(i + 1, [*nodes[:j], [*node, r], *nodes[j + 1 :]]))
        return min(counts)

    return fewest(0, [])


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 8), st.lists(st.tuples(st.sampled_from(KERNELS[:3]), st.integers(1, 9)), max_size=7))
# 5 nodes: two nodes with the same room differ in which kernels they hold, and only one choice reaches 5
@example(3, [("a", 3), ("a", 3), ("c", 2), ("c", 1), ("a", 2), ("b", 3), ("b", 1)])
def test_scale_out_demand_is_the_fewest_whole_nodes(gpus, rows) -> None:
    requests = [ReplicaRequest(k, g) for k, g in rows]
    d = scale_out_demand(requests, gpus)
    assert list(d.impossible) == [r for r in requests if r.gpus > gpus]  # reported, not counted
    assert d.nodes == fewest_nodes([r for r in requests if r.gpus <= gpus], gpus)


def test_scale_out_demand_counts_whole_requests_and_siblings() -> None:
    five = [ReplicaRequest(k, 5) for k in "abc"]
    assert scale_out_demand(five, 8).nodes == 3  # 15 GPUs, but no two fit on one 8-GPU node
    assert scale_out_demand([ReplicaRequest("a", 1)] * 3, 8).nodes == 3  # three replicas of one kernel
    d = scale_out_demand([ReplicaRequest("a", 16), ReplicaRequest("b", 2)], 8)
    assert (d.nodes, [r.kernel for r in d.impossible]) == (1, ["a"])

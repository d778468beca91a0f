"""The model of NCCL's choice: candidates per hardware, the tuning.cc formula, nccl_best."""

from __future__ import annotations

import dataclasses

import pytest

from taccl_py.analysis import nccl_model as M
from taccl_py.analysis import protocols as P
from taccl_py.analysis.simulate import simulate
from taccl_py.build.pipeline import build_plan
from taccl_py.collectives import Collective
from taccl_py.errors import TacclError
from taccl_py.lowering.lower import LowerOptions
from taccl_py.topology.loader import load_topology
from taccl_py.topology.model import Link, Nic, Topology

GB = 1e9
US = 1e-6


def ring_of(n: int, kind: str) -> Topology:
    """n GPUs on a ring of links: GPUs 3 hops apart when n >= 6."""
    links = tuple(
        Link(a, b, 50 * GB, 1 * US, kind=kind)
        for i in range(n)
        for a, b in ((i, (i + 1) % n), ((i + 1) % n, i))
    )
    return Topology(f"ring{n}", n, 1, links=links)


def one_gpu_nodes(nodes: int) -> Topology:
    return Topology(
        "solo",
        1,
        nodes,
        nics=tuple(Nic(f"n{k}", k, 0, (k,), 25 * GB, 2 * US) for k in range(nodes)),
    )


@pytest.mark.parametrize("name", ["dgx1", "dgx2", "dgx-a100", "dgx-h100"])
def test_ll128_offered_on_nvlink_machines(name):
    assert ("ring", "LL128") in M.nccl_candidates(load_topology(name), "allgather")


@pytest.mark.parametrize(
    "topo", [ring_of(4, "pcie"), ring_of(6, "nvlink")], ids=["pcie", "nvlink-3-hops"]
)
def test_ll128_not_offered_where_tuning_cc_disables_it(topo):
    assert M.ll128_enabled(topo) is False
    cands = M.nccl_candidates(topo, "allreduce")
    assert not any(p == "LL128" for _, p in cands)
    assert ("ring", "LL") in cands and ("tree", "Simple") in cands


def test_nvls_on_third_generation_nvswitch_only():
    h100, h100x2 = load_topology("dgx-h100"), load_topology("dgx-h100", 2)
    assert ("nvls", "Simple") in M.nccl_candidates(h100, "allreduce")
    assert ("nvls", "Simple") in M.nccl_candidates(h100, "allgather")
    # several nodes: NVLS needs CollNet, NVLS-tree serves AllReduce only
    assert ("nvls_tree", "Simple") in M.nccl_candidates(h100x2, "allreduce")
    assert not any(a.startswith("nvls") for a, _ in M.nccl_candidates(h100x2, "allgather"))
    for name in ("dgx1", "dgx-a100", "dgx2", "mi300x"):
        for nodes in (1, 2):
            cands = M.nccl_candidates(load_topology(name, nodes), "allreduce")
            assert not any(a.startswith("nvls") for a, _ in cands), (name, nodes)


def test_candidates_per_collective():
    dgx1 = load_topology("dgx1")
    assert M.nccl_candidates(dgx1, "allgather") == [
        ("ring", "LL"),
        ("ring", "LL128"),
        ("ring", "Simple"),
    ]
    assert {a for a, _ in M.nccl_candidates(dgx1, "allreduce")} == {"ring", "tree"}
    assert M.nccl_candidates(dgx1, "alltoall") == [("p2p", "LL"), ("p2p", "Simple")]
    assert ("pat", "Simple") in M.nccl_candidates(one_gpu_nodes(4), "reducescatter")
    assert ("pat", "Simple") not in M.nccl_candidates(one_gpu_nodes(4), "allreduce")
    assert ("pat", "Simple") not in M.nccl_candidates(dgx1, "allgather")
    assert not any(
        a.startswith("collnet")
        for name in ("dgx-h100", "dgx-a100")
        for a, _ in M.nccl_candidates(load_topology(name, 2), "allreduce")
    )


def test_generations():
    gens = {
        name: M.gpu_generation(load_topology(name))
        for name in ("dgx1", "ndv2", "dgx2", "dgx-a100", "dgx-h100")
    }
    assert gens == {
        "dgx1": "volta",
        "ndv2": "volta",
        "dgx2": "volta",
        "dgx-a100": "ampere",
        "dgx-h100": "hopper",
    }


def test_nccl_best_ring_allgather_dgx1_picks_ll_small_and_simple_large():
    topo = load_topology("dgx1")
    small, large = M.nccl_table(topo, "allgather", [1 << 10, 1 << 30])
    assert (small.algorithm, small.protocol, small.how) == ("ring", "LL", M.SIMULATED)
    assert (large.algorithm, large.protocol, large.size) == ("ring", "Simple", 1 << 30)
    plan = build_plan(
        topo, Collective("allgather", 8), "ring", lower=LowerOptions(proto="Simple")
    ).plan
    assert large.time == pytest.approx(simulate(plan, topo, 1 << 30).call_time, rel=1e-12)
    with pytest.raises(dataclasses.FrozenInstanceError):
        large.time = 0.0


def test_alltoall_protocol_follows_the_p2p_ll_threshold():
    topo = load_topology("dgx1")
    edge = 8 * P.P2P_LL_THRESHOLD
    assert M.nccl_best(topo, "alltoall", edge).protocol == "LL"
    assert M.nccl_best(topo, "alltoall", edge + 8).protocol == "Simple"


def test_nccl_best_times_the_plans_it_is_given(monkeypatch):
    topo = load_topology("dgx1")
    plans = {("ring", p): M.nccl_plan(topo, "allgather", "ring", p) for p in P.PROTOCOLS}

    def no_build(*_args):
        raise AssertionError("rebuilt a plan it was given")

    monkeypatch.setattr(M, "nccl_plan", no_build)
    choice = M.nccl_best(topo, "allgather", 1 << 20, plans=plans)
    assert choice.time == min(simulate(p, topo, 1 << 20).call_time for p in plans.values())


def test_nvls_formula_by_hand_on_dgx_h100():
    topo, size = load_topology("dgx-h100"), 1 << 30
    g = M.nccl_graph(topo, "nvls")
    assert g == M.Graph(8, 50.0, 60.0)  # 8 heads x 50 <= 450 GB/s; bwInter raised to 60
    bus = 8 * min(50.0 * 0.85 * 7 / 8 * 2, 60.0)  # tuning.cc: AllReduce pipelines two ops
    alg = bus * 8 / 14  # nRanks / nsteps
    want = (25.0 + size / (1000 * alg)) * US  # NVLS latency: hwLat[NVLINK][NVLS][SIMPLE]
    assert M.nccl_formula_time(topo, "allreduce", size, "nvls", "Simple") == pytest.approx(
        want, rel=1e-12
    )
    best = M.nccl_best(topo, "allreduce", size)
    assert (best.algorithm, best.how) == ("nvls", M.FORMULA)


def test_formula_refuses_what_nccl_would_not_run():
    dgx1 = load_topology("dgx1")
    with pytest.raises(TacclError, match="does not run"):
        M.nccl_formula_time(dgx1, "allgather", 1024, "tree", "Simple")
    with pytest.raises(TacclError, match="does not run"):
        M.nccl_formula_time(dgx1, "allreduce", 1024, "nvls", "Simple")
    with pytest.raises(TacclError, match="p2p"):
        M.nccl_formula_time(dgx1, "alltoall", 1024, "p2p", "LL")


@pytest.mark.parametrize("algorithm", ["ring", "tree"])
def test_formula_ring_and_tree_grow_with_size(algorithm):
    topo = load_topology("dgx-a100", 2)
    for proto in ("LL", "LL128", "Simple"):
        times = [
            M.nccl_formula_time(topo, "allreduce", 1 << k, algorithm, proto) for k in (10, 20, 30)
        ]
        assert times == sorted(times) and times[0] > 0
    assert M.nccl_formula_time(one_gpu_nodes(4), "allgather", 1 << 20, "pat", "Simple") > 0


# -- rooted collectives ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["dgx1", "dgx-h100", "mi300x"])
@pytest.mark.parametrize("nodes", [1, 2])
def test_rooted_candidates(name, nodes):
    topo = load_topology(name, nodes)
    ring = M.nccl_candidates(topo, "allgather")
    for kind in ("broadcast", "reduce"):  # tuning.cc: ring only, every protocol ring has
        cands = M.nccl_candidates(topo, kind)
        assert cands == [(a, p) for a, p in ring if a == "ring"] and len(cands) >= 2
    for kind in ("gather", "scatter"):  # no NCCL collective: torch's grouped send/recv
        assert M.nccl_candidates(topo, kind) == [("p2p", "LL"), ("p2p", "Simple")]


@pytest.mark.parametrize("kind", ["broadcast", "reduce"])
def test_broadcast_and_reduce_are_the_ring_plan_rooted_there(kind):
    topo, size, root = load_topology("dgx1"), 1 << 30, 3
    best = M.nccl_best(topo, kind, size, root=root)
    assert best.algorithm == "ring"
    plan = build_plan(
        topo, Collective(kind, 8, root=root), "ring", lower=LowerOptions(proto=best.protocol)
    ).plan
    # NCCL is credited with the faster of its ring plan and tuning.cc's own estimate (its
    # chain pipelines in slices far finer than the plan's chunks)
    formula = M.nccl_formula_time(topo, kind, size, "ring", best.protocol)
    simulated = simulate(plan, topo, size).call_time
    assert best.time == pytest.approx(min(simulated, formula), rel=1e-12)
    assert best.how == (M.FORMULA if formula < simulated else M.SIMULATED)
    assert M.nccl_plan(topo, kind, "ring", "LL", root=root).root == root
    assert M.nccl_plan(topo, kind, "ring", "LL", root=0).root == 0
    assert [c.algorithm for c in M.nccl_table(topo, kind, [1024, size], root=root)] == [
        "ring",
        "ring",
    ]


@pytest.mark.parametrize("kind", ["gather", "scatter"])
def test_gather_and_scatter_are_point_to_point(kind):
    topo, root = load_topology("ndv2", 2), 5
    n = topo.num_ranks
    edge = n * P.P2P_LL_THRESHOLD  # size / N bytes go to (or come from) each peer
    assert M.nccl_best(topo, kind, edge, root=root).protocol == "LL"
    big = M.nccl_best(topo, kind, 1 << 30, root=root)
    assert (big.algorithm, big.protocol) == ("p2p", "Simple")
    plan = build_plan(topo, Collective(kind, n, root=root), "direct").plan
    res = simulate(plan, topo, 1 << 30)
    assert big.time == pytest.approx(min(res.call_time, M.fluid_time(res, topo)), rel=1e-12)
    # node 1's half crosses the root's node's one 12.5 GB/s NIC at least
    assert big.time >= (1 << 29) / 12.5e9


def test_reusable_plans_keep_the_root():
    topo = load_topology("dgx1")
    coll = Collective("gather", 8, root=2)
    direct = build_plan(topo, coll, "direct").plan
    plans = M.reusable_plans(topo, coll, {"direct": direct}, LowerOptions(), verified=True)
    assert sorted(plans) == [("p2p", p) for p in sorted(P.PROTOCOLS)]
    assert all(p.root == 2 and "gather-root2" in p.name for p in plans.values())
    choice = M.nccl_best(topo, "gather", 1 << 20, plans=plans, root=2)
    assert choice.algorithm == "p2p"
    # without a root, the plans' own; with another root, they are not used
    assert M.nccl_best(topo, "gather", 1 << 20, plans=plans) == choice
    at1 = M.nccl_best(topo, "gather", 1 << 20, plans=plans, root=1)
    plan1 = M.nccl_plan(topo, "gather", "p2p", at1.protocol, root=1)
    assert plan1 is not None and plan1.root == 1
    res = simulate(plan1, topo, 1 << 20)
    assert at1.time == pytest.approx(min(res.call_time, M.fluid_time(res, topo)), rel=1e-12)
    # a plan of another root is not the model's plan for this one
    other = Collective("gather", 8, root=1)
    assert M.reusable_plans(topo, other, {"direct": direct}, LowerOptions()) == {}


def test_rooted_ring_formula_by_hand():
    one, two = load_topology("dgx1"), load_topology("dgx-h100", 2)
    size = 1 << 30
    for kind in ("broadcast", "reduce"):
        # one node: nsteps = N, bus = algorithm bandwidth (ratio N / nsteps = 1), one hop
        g = M.nccl_graph(one, "ring")
        want = (8.4 + 0.7 + size / (1000 * g.n_channels * g.bw_intra)) * US
        assert M.nccl_formula_time(one, kind, size, "ring", "Simple") == pytest.approx(want)
        # two nodes: channels differ, so nsteps (16) chunk latencies, Simple's at tree's NET
        # hop latency (= ring Simple's: 14 µs), on the simulator's scale (α of a NIC hop)
        g = M.nccl_graph(two, "ring")
        net_alpha = max(c.alpha for c in two.connections.values() if c.kind == "network")
        want = (8.4 + 16 * net_alpha / US + size / (1000 * g.n_channels * g.bw_intra)) * US
        assert M.nccl_formula_time(two, kind, size, "ring", "Simple") == pytest.approx(want)
        assert M.nccl_formula_time(one, kind, 1 << 20, "ring", "LL") > 0
    with pytest.raises(TacclError, match="does not run"):
        M.nccl_formula_time(one, "broadcast", size, "tree", "Simple")
    with pytest.raises(TacclError, match="does not run"):
        M.nccl_formula_time(one, "gather", size, "ring", "Simple")


def test_nccl_plans_too_big_to_build_are_timed_by_the_formula(monkeypatch):
    """At 512 ranks NCCL's ring and tree plans would be 4-8 M transfers (17-34 M at
    1,024): the model times them with tuning.cc's formula instead of building them (which
    took over 18 GB after `taccl synthesize -n 128` wrote its plan), and says so."""

    def refuse(*args, **kwargs):
        raise AssertionError("a plan too big to build was built")

    monkeypatch.setattr(M, "nccl_plan", refuse)
    topo = load_topology("dgx-h100", 64)
    best = M.nccl_best(topo, "allreduce", 1 << 30)
    assert best.how == M.FORMULA
    assert best.time == min(
        M.nccl_formula_time(topo, "allreduce", 1 << 30, a, p)
        for a, p in M.nccl_candidates(topo, "allreduce")
    )
    # small clusters' plans are still built and simulated
    small = load_topology("dgx-h100", 2)
    assert not M._too_big(small, "allreduce", "ring", 0)

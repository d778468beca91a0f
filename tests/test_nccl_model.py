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

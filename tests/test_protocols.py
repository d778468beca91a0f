"""The simulator's protocols: LL / LL128 line efficiency, tuning.cc latencies, constants."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taccl_py.analysis import protocols as P
from taccl_py.analysis.simulate import simulate
from taccl_py.build.pipeline import build_plan
from taccl_py.collectives import Collective
from taccl_py.errors import TacclError
from taccl_py.plan.model import GpuPlan, Plan, Step, Threadblock
from taccl_py.topology.loader import load_topology
from taccl_py.topology.model import Link, Nic, Switch, Topology

GB = 1e9
US = 1e-6


def one_send(proto: str) -> Plan:
    """Rank 0 sends its one chunk to rank 1."""
    return Plan(
        "one",
        "alltoall",
        2,
        1,
        proto=proto,
        gpus=[
            GpuPlan(0, 1, 1, tbs=[Threadblock(0, send=1, steps=[Step(0, "s")])]),
            GpuPlan(1, 1, 1, tbs=[Threadblock(0, recv=0, steps=[Step(0, "r")])]),
        ],
    )


def link_pair(kind: str = "nvlink", bw: float = 50 * GB, alpha: float = 1 * US) -> Topology:
    return Topology(
        "pair", 2, 1, links=(Link(0, 1, bw, alpha, kind=kind), Link(1, 0, bw, alpha, kind=kind))
    )


def switch_pair(alpha: float = 1 * US) -> Topology:
    return Topology("sw", 2, 1, switches=(Switch("sw", 0, (0, 1), 100 * GB, alpha),))


def net_pair(alpha: float = 2 * US) -> Topology:
    return Topology(
        "net",
        1,
        2,
        nics=(Nic("n0", 0, 0, (0,), 25 * GB, alpha), Nic("n1", 1, 0, (1,), 25 * GB, alpha)),
    )


def test_ll_has_half_the_bandwidth_of_simple_for_a_large_transfer():
    topo, size = link_pair(), 1 << 30
    simple = simulate(one_send("Simple"), topo, size)
    ll = simulate(one_send("LL"), topo, size)
    assert simple.time == pytest.approx(1 * US + size / (50 * GB), rel=1e-12)  # unchanged
    assert ll.time == pytest.approx(1 * US * 0.6 / 3.4 + 2 * size / (50 * GB), rel=1e-12)
    assert ll.algbw == pytest.approx(simple.algbw / 2, rel=1e-4)


def test_ll128_carries_120_of_128_bytes():
    topo, size = link_pair(), 1 << 30
    ll128 = simulate(one_send("LL128"), topo, size)
    assert ll128.time == pytest.approx(1 * US * 1.9 / 3.4 + size * 128 / 120 / (50 * GB), rel=1e-12)


def test_ll_beats_simple_for_a_tiny_message_on_one_link():
    topo = link_pair()
    simple = simulate(one_send("Simple"), topo, 64)
    ll = simulate(one_send("LL"), topo, 64)
    assert ll.time < simple.time
    assert ll.call_time < simple.call_time
    assert ll.call_time == pytest.approx(ll.time + 6.6 * US)


@pytest.mark.parametrize(
    "topo,hw",
    [
        (link_pair("nvlink"), "nvlink"),
        (link_pair("xgmi"), "nvlink"),
        (link_pair("pcie"), "pci"),
        (switch_pair(), "nvlink"),
        (net_pair(), "net"),
    ],
)
@pytest.mark.parametrize("proto", P.PROTOCOLS)
def test_hop_latency_is_alpha_scaled_by_the_ring_hw_latency_ratio(topo, hw, proto):
    alpha = next(iter(topo.connections.values())).alpha
    res = simulate(one_send(proto), topo, 0)
    want = alpha * P.HW_LATENCY_US[hw]["ring"][proto] / P.HW_LATENCY_US[hw]["ring"]["Simple"]
    assert res.time == pytest.approx(want, rel=1e-12)
    assert res.proto == proto
    assert res.base_latency == pytest.approx(P.BASE_LATENCY_US["ring"][proto] * US)


def test_simple_pays_alpha_exactly():
    topo = link_pair(alpha=0.7 * US)
    assert simulate(one_send("Simple"), topo, 1000).time == 0.7 * US + 1000 / (50 * GB)


def test_unknown_protocol_is_refused():
    with pytest.raises(TacclError, match="proto 'LL64'"):
        simulate(one_send("LL64"), link_pair(), 1024)


def test_tuning_constants_match_nccl_2_30_7():
    assert (P.NCCL_VERSION, P.NCCL_COMMIT[:12]) == ("2.30.7", "5067397c2676")
    table = {  # (table, algorithm, protocol): value read from tuning.cc
        ("base", "tree", "LL"): 6.8,
        ("base", "tree", "LL128"): 14.0,
        ("base", "tree", "Simple"): 8.4,
        ("base", "ring", "LL"): 6.6,
        ("base", "ring", "LL128"): 14.0,
        ("base", "ring", "Simple"): 8.4,
        ("base", "pat", "Simple"): 8.0,
        ("base", "nvls", "Simple"): 0,
    }
    for (_, algo, proto), value in table.items():
        assert P.BASE_LATENCY_US[algo][proto] == value
    hw = {
        ("nvlink", "tree"): (0.6, 1.25, 4.0),
        ("nvlink", "ring"): (0.6, 1.9, 3.4),
        ("nvlink", "nvls"): (0, 0, 25),
        ("nvlink", "nvls_tree"): (0, 0, 25),
        ("pci", "tree"): (1.0, 1.9, 4.0),
        ("pci", "ring"): (1.0, 2.5, 5.7),
        ("net", "tree"): (5.0, 8.5, 14),
        ("net", "ring"): (2.7, 4.0, 14.0),
        ("net", "nvls"): (0, 0, 18),
        ("net", "nvls_tree"): (0, 0, 20.9),
        ("net", "collnet_direct"): (0, 0, 31),
        ("net", "pat"): (0, 0, 14),
    }
    for (h, algo), (ll, ll128, simple) in hw.items():
        assert P.HW_LATENCY_US[h][algo] == {"LL": ll, "LL128": ll128, "Simple": simple}
    assert P.LL_MAX_BW["hopper"] == (141.0, 45.0, 35.0)
    assert P.PER_CH_MAX_RING_LL128_BW["hopper"][0] == 36.7
    assert P.PER_CH_MAX_TREE_BW["ampere"] == (24.0, 23.6, 17.8)
    assert P.PER_CH_MAX_NVLS_TREE_BW["hopper"] == (0.0, 57.7, 45.5)
    assert P.NVLS_EFFICIENCY == {"volta": 0.0, "ampere": 0.0, "hopper": 0.85, "blackwell": 0.74}
    assert (P.RING_LL_FACTOR, P.RING_LL128_FACTOR, P.TREE_LL_FACTOR) == (0.5, 0.92, 1 / 3.8)
    assert P.LINE_EFFICIENCY == {"Simple": 1.0, "LL": 0.5, "LL128": 0.9375}
    assert P.P2P_LL_THRESHOLD == 16384
    assert all(len(row) == 24 for row in P.TREE_CORRECTION.values())


@pytest.fixture(scope="module")
def dgx1_ring():
    topo = load_topology("dgx1")
    plan = build_plan(topo, Collective("allgather", 8), "ring").plan
    return topo, {p: dataclasses.replace(plan, proto=p) for p in P.PROTOCOLS}


@settings(max_examples=40)
@given(a=st.integers(0, 1 << 31), b=st.integers(0, 1 << 31), proto=st.sampled_from(P.PROTOCOLS))
def test_time_is_monotone_in_size(dgx1_ring, a, b, proto):
    topo, plans = dgx1_ring
    lo, hi = sorted((a, b))
    assert simulate(plans[proto], topo, lo).time <= simulate(plans[proto], topo, hi).time


@settings(max_examples=25)
@given(size=st.integers(1 << 24, 1 << 34))
def test_ll_is_slower_than_simple_and_ll128_at_large_sizes(dgx1_ring, size):
    topo, plans = dgx1_ring
    t = {p: simulate(plans[p], topo, size).call_time for p in P.PROTOCOLS}
    assert t["LL"] >= t["LL128"] >= t["Simple"]

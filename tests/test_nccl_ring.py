"""NCCL's ring channels: one ring per channel, spread over every NIC rail, data split evenly."""

from __future__ import annotations

import doctest

import pytest

from taccl_py.analysis.simulate import simulate
from taccl_py.build.pipeline import build_plan
from taccl_py.collectives import KINDS, Collective
from taccl_py.errors import TopologyError
from taccl_py.synth.baselines import ring as ring_module
from taccl_py.synth.baselines.ring import MAX_RINGS, find_ring, find_rings, ring_algorithm
from taccl_py.topology.loader import load_topology

from .test_baselines import build

GB = 1 << 30
BUILTINS = ["dgx-a100", "dgx-h100", "dgx1", "ndv2", "dgx2", "mi300x"]


def nic_busy(result, topo):
    return {
        name: result.resource_busy.get(name, 0.0)
        for nic in topo.nics
        for name in (f"nicout:{nic.name}", f"nicin:{nic.name}")
    }


def test_dgx_a100_allreduce_uses_all_8_nics_evenly_at_about_10_ms():
    topo = load_topology("dgx-a100", 2)
    result = build_plan(topo, Collective("allreduce", 16), "ring")
    assert result.plan.nchannels == 8
    sim = simulate(result.plan, topo, GB)
    busy = nic_busy(sim, topo)
    assert len(busy) == 32  # 8 NICs x 2 nodes x in/out
    assert min(busy.values()) > 0 and max(busy.values()) <= 1.01 * min(busy.values())
    assert sim.time <= 12e-3
    # each NIC carries 1/8 of the ring's 2(N-1)/N * size, at 25 GB/s
    assert min(busy.values()) == pytest.approx(2 * 15 / 16 * GB / 8 / 25e9, rel=0.01)


@pytest.mark.parametrize("name", ["dgx-a100", "dgx-h100", "mi300x", "dgx2", "dgx1"])
@pytest.mark.parametrize("nodes", [2, 3])
def test_rings_enter_and_leave_every_nic_once(name, nodes):
    topo = load_topology(name, nodes)
    rings = find_rings(topo)
    g = topo.gpus_per_node
    nics_per_node = len(topo.nics) // nodes
    assert len(rings) == nics_per_node
    for node in range(nodes):
        entries = [topo.nic_of(r[node * g]).name for r in rings]
        exits = [topo.nic_of(r[node * g + g - 1]).name for r in rings]
        assert (
            sorted(entries) == sorted(exits) == sorted(n.name for n in topo.nics if n.node == node)
        )
    for ring in rings:
        assert ring_module.check_ring(topo, ring) == ring
        if nodes % 2 == 0:  # every network hop stays on its rail
            for i in range(nodes):
                out, into = ring[i * g + g - 1], ring[(i + 1) % nodes * g]
                assert topo.nic_of(out).rail == topo.nic_of(into).rail


def test_dgx_a100_rings_rotate_and_cross_the_switch_one_way():
    topo = load_topology("dgx-a100", 2)
    rings = find_rings(topo)
    for c, ring in enumerate(rings):  # NVSwitch: next GPU is u + 1 (NCCL's neighbour rule)
        assert ring[:8] == [(c + i) % 8 for i in range(8)]
        assert ring[8:] == [8 + (c - 1 - i) % 8 for i in range(8)]


def test_shared_nic_keeps_one_ring():
    topo = load_topology("ndv2", 2)  # one NIC for 8 GPUs: more rings cannot go faster
    assert find_rings(topo) == [find_ring(topo)]
    plan = build_plan(topo, Collective("allgather", 16), "ring").plan
    assert plan.nchannels == 1


def test_dgx1_rings_use_every_nvlink():
    topo = load_topology("dgx1")
    rings = find_rings(topo)
    assert len(rings) == 6  # 6 NVLinks per GPU, 25 GB/s per ring
    sim = simulate(build_plan(topo, Collective("allgather", 8), "ring").plan, topo, GB)
    links = [v for k, v in sim.resource_busy.items() if k.startswith("link:")]
    assert len(links) == len(topo.links)
    two = load_topology("dgx1", 2)
    assert all(
        v > 0
        for v in nic_busy(
            simulate(build_plan(two, Collective("allreduce", 16), "ring").plan, two, GB), two
        ).values()
    )


def test_one_ring_on_one_nvswitch_node():
    for name in ("dgx-a100", "dgx2"):
        topo = load_topology(name)
        assert find_rings(topo) == [list(range(topo.num_ranks))]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("nodes", [1, 2])
@pytest.mark.parametrize("name", BUILTINS)
def test_ring_plans_verify_on_every_builtin(name, nodes, kind):
    topo = load_topology(name, nodes)
    result = build_plan(topo, Collective(kind, topo.num_ranks), "ring")  # verifies
    rings = len(result.algorithm.meta["rings"])
    assert rings <= MAX_RINGS and result.plan.nchannels % rings == 0  # lowering may spread
    assert max(len(tb.steps) for g in result.plan.gpus for tb in g.tbs) <= 64


def test_every_ring_moves_an_equal_share():
    topo = load_topology("dgx-h100", 2)
    alg = ring_algorithm(topo, Collective("allgather", 16, 2))
    assert alg.collective.chunkup == 16
    per_channel = [sum(t.channel == c for t in alg.transfers) for c in range(8)]
    assert per_channel == [16 * 2 * 15] * 8
    # sub-chunk j*R + i: ring i, round j
    assert {t.chunk % 8 for t in alg.transfers if t.channel == 3} == {3}


def test_an_order_gives_one_ring():
    topo = load_topology("dgx-a100", 2)
    alg = ring_algorithm(topo, Collective("allgather", 16), order=list(range(16)))
    assert alg.nchannels == 1 and alg.meta["rings"] == [list(range(16))]


def test_rail_only():
    from taccl_py.topology.model import RAIL_ONLY

    three = build("rail", 2, 3, pairs=[(0, 1, 50)], nics=[(0,), (1,)], network=RAIL_ONLY)
    with pytest.raises(TopologyError, match="no Hamiltonian ring"):
        find_rings(three)  # an odd number of nodes must cross rails somewhere
    two = build("rail", 2, 2, pairs=[(0, 1, 50)], nics=[(0,), (1,)], network=RAIL_ONLY)
    assert find_rings(two) == [[0, 1, 3, 2], [1, 0, 2, 3]]


def test_docstrings():
    assert doctest.testmod(ring_module).failed == 0

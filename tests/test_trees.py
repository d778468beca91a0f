"""Double-binary-tree AllReduce baseline: correctness, tree shape, latency vs the ring."""

from __future__ import annotations

import pytest

from taccl_py.analysis.simulate import simulate
from taccl_py.build.pipeline import BASELINES, build_plan
from taccl_py.collectives import Collective
from taccl_py.errors import TacclError
from taccl_py.runtime.reference import check_reference
from taccl_py.synth.baselines.trees import btree_parent, dtree, tree_algorithm
from taccl_py.synth.methods import METHODS, synthesize
from taccl_py.topology.loader import load_topology
from taccl_py.topology.model import Link, Nic, Topology

from .test_staged import two_by_four

GB, US = 1e9, 1e-6


def cycle(n: int) -> Topology:
    """One node of ``n`` GPUs linked in a bidirectional ring only: trees need relays."""
    links = [
        Link(a, b, 50 * GB, 0.7 * US)
        for r in range(n)
        for a, b in ((r, (r + 1) % n), ((r + 1) % n, r))
    ]
    return Topology(f"cycle{n}", n, 1, tuple(links))


TOPOLOGIES = {
    "dgx1": lambda: load_topology("dgx1"),
    "ndv2x2": lambda: load_topology("ndv2", 2),
    "2x4": two_by_four,
    "cycle8": lambda: cycle(8),
}


def interior(parent: list[int]) -> set[int]:
    return {p for p in parent if p >= 0}


@pytest.mark.parametrize("n", [2, 3, 5, 6, 8, 13, 16, 32])
def test_node_trees_are_spanning_and_complementary(n):
    trees = [[p for p, _ in tree] for tree in dtree(n)]
    for parent in trees:
        assert parent.count(-1) == 1
        for p in range(n):  # every node reaches the root
            seen = set()
            while parent[p] >= 0:
                assert p not in seen
                seen.add(p)
                p = parent[p]
        assert all(list(parent).count(q) <= 2 for q in range(n))  # binary
    a, b = trees
    if n % 2 == 0:
        assert not interior(a) & interior(b)
    assert btree_parent(n, 0) == -1


@pytest.mark.parametrize("name", list(TOPOLOGIES))
@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("chunkup", [1, 2])
def test_tree_allreduce_verifies_and_sums(name, inplace, chunkup):
    topo = TOPOLOGIES[name]()
    coll = Collective("allreduce", topo.num_ranks, chunkup, inplace)
    result = build_plan(topo, coll, "tree")  # verify() runs inside
    alg = result.algorithm
    for t in alg.transfers:
        assert (t.src, t.dst) in topo.connections, t
    assert {t.channel for t in alg.transfers} == set(range(2 * len(alg.meta["chains"])))
    check_reference(result.plan, chunk_elems=3)


def test_tree_edges_are_direct_where_the_topology_allows():
    for name in ("dgx1", "ndv2x2", "2x4"):
        topo = TOPOLOGIES[name]()
        alg = tree_algorithm(topo, Collective("allreduce", topo.num_ranks))
        assert not alg.meta["relayed"]
        for parent in alg.meta["trees"]:
            for r, p in enumerate(parent):
                if p >= 0:
                    assert (r, p) in topo.connections and (p, r) in topo.connections


def test_relays_where_a_tree_edge_has_no_connection():
    # two nodes of two GPUs, a NIC on GPU 1 only: the node heads (GPU 0) relay via GPU 1
    g = 2
    links = [
        Link(n * g + a, n * g + b, 50 * GB, 0.7 * US) for n in range(2) for a, b in ((0, 1), (1, 0))
    ]
    nics = tuple(Nic(f"nic{n}", n, 0, (n * g + 1,), 12.5 * GB, 2 * US) for n in range(2))
    topo = Topology("second-only", g, 2, tuple(links), (), nics)
    alg = tree_algorithm(topo, Collective("allreduce", 4, 2))
    assert alg.meta["relayed"]
    alg.check()
    build_plan(topo, Collective("allreduce", 4), "tree")


def test_tree_beats_ring_at_1k_on_two_nodes():
    topo = load_topology("ndv2", 2)
    coll = Collective("allreduce", topo.num_ranks)
    tree = simulate(build_plan(topo, coll, "tree").plan, topo, 1024).time
    ring = simulate(build_plan(topo, coll, "ring").plan, topo, 1024).time
    assert tree < ring


@pytest.mark.parametrize("kind", ["allgather", "reducescatter", "alltoall"])
def test_tree_builds_allreduce_and_rooted_only(kind):
    topo = load_topology("dgx1")
    with pytest.raises(TacclError, match=f"allreduce and the rooted collectives, not {kind}"):
        synthesize(topo, Collective(kind, 8), "tree")


def test_tree_is_a_method_and_a_baseline():
    assert "tree" in METHODS and "tree" in BASELINES

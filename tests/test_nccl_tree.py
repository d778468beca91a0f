"""NCCL's double binary tree: binary trees over nodes, a chain inside each node, 2C channels."""

from __future__ import annotations

import doctest

import pytest

from taccl_py.analysis.simulate import simulate
from taccl_py.build.pipeline import build_plan
from taccl_py.collectives import Collective
from taccl_py.synth.baselines import trees as trees_module
from taccl_py.synth.baselines.ring import find_rings
from taccl_py.synth.baselines.trees import btree_parent, dtree, tree_algorithm
from taccl_py.topology.loader import load_topology

BUILTINS = ["dgx-a100", "dgx-h100", "dgx1", "ndv2", "dgx2", "mi300x"]


def test_btree_is_ncclgetbtree():
    # the illustration in NCCL's src/graph/trees.cc, 14 ranks
    want = {
        1: 2,
        3: 2,
        5: 6,
        7: 6,
        9: 10,
        11: 10,
        2: 4,
        6: 4,
        10: 12,
        13: 12,
        4: 8,
        12: 8,
        8: 0,
        0: -1,
    }
    assert {p: btree_parent(14, p) for p in range(14)} == want


def test_dtree_mirrors_even_and_shifts_odd():
    a, b = dtree(12)  # trees.cc: the mirror of the 12-rank tree has root 11, then 3
    assert b[11] == (-1, 0) and b[3][0] == 11 and {b[1][0], b[7][0]} == {3}
    a, b = dtree(13)  # shifted by one: root 1, then 9
    assert b[1] == (-1, 0) and b[9][0] == 1
    assert [p for p, _ in dtree(1)[0]] == [-1]


def test_two_nodes_of_dgx_a100():
    topo = load_topology("dgx-a100", 2)
    alg = tree_algorithm(topo, Collective("allreduce", 16))
    chains = alg.meta["chains"]
    assert chains == [ring[:8] for ring in find_rings(topo)]
    c = len(chains)
    assert alg.nchannels == 2 * c == 16
    for ch, parent in enumerate(alg.meta["trees"]):
        chain = chains[ch % c]
        for node in range(2):  # a chain inside every node: each GPU's parent is the one before
            ranks = [node * 8 + v for v in chain]
            assert [parent[r] for r in ranks[1:]] == ranks[:-1]
        # tree 0: node 1 under node 0; tree 1: node 0 under node 1; heads meet head to head
        root, child = (0, 1) if ch < c else (1, 0)
        assert parent[root * 8 + chain[0]] == -1
        assert parent[child * 8 + chain[0]] == root * 8 + chain[0]
    # every NIC carries tree traffic, and each tree channel an equal share
    sim = simulate(build_plan(topo, Collective("allreduce", 16), "tree").plan, topo, 1 << 30)
    assert all(
        sim.resource_busy.get(f"nic{d}:{n.name}", 0) > 0 for n in topo.nics for d in ("in", "out")
    )
    counts = {sum(t.channel == ch for t in alg.transfers) for ch in range(16)}
    assert len(counts) == 1


def test_balanced_tree_child_0_lands_on_the_second_gpu():
    topo = load_topology("dgx-a100", 4)
    alg = tree_algorithm(topo, Collective("allreduce", 32))
    chain = alg.meta["chains"][0]
    parent = alg.meta["trees"][0]  # tree 0 over 4 nodes: node 1 is node 2's child 0
    assert dtree(4)[0][1] == (2, 0) and dtree(4)[0][3] == (2, 1)
    assert parent[8 + chain[0]] == 16 + chain[1]
    assert parent[24 + chain[0]] == 16 + chain[0]


@pytest.mark.parametrize("nodes", [1, 2])
@pytest.mark.parametrize("name", BUILTINS)
def test_tree_plans_verify_on_every_builtin(name, nodes):
    topo = load_topology(name, nodes)
    result = build_plan(topo, Collective("allreduce", topo.num_ranks), "tree")  # verifies
    assert not result.algorithm.meta["relayed"]
    assert result.plan.nchannels <= 32
    assert max(len(tb.steps) for g in result.plan.gpus for tb in g.tbs) <= 64


def test_tree_beats_the_ring_at_1g_on_two_dgx_a100():
    topo = load_topology("dgx-a100", 2)
    coll = Collective("allreduce", 16)
    tree = simulate(build_plan(topo, coll, "tree").plan, topo, 1 << 30).time
    ring = simulate(build_plan(topo, coll, "ring").plan, topo, 1 << 30).time
    assert tree < ring


def test_docstrings():
    assert doctest.testmod(trees_module).failed == 0

"""Fabrics (leaf/spine, rail-optimized), mixed clusters, failed and derated parts."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from taccl_py.analysis.bounds import flow_graph, lower_bound
from taccl_py.analysis.nccl_model import nccl_best
from taccl_py.analysis.simulate import simulate
from taccl_py.build.pipeline import build_plan
from taccl_py.cli import main
from taccl_py.collectives import ALLGATHER, ALLREDUCE, Collective
from taccl_py.errors import TopologyError
from taccl_py.synth.methods import SynthOptions
from taccl_py.topology.failures import Faults, apply_faults
from taccl_py.topology.loader import cluster_names, describe, load_topology

GIB = 1 << 30

#: a small node: 4 GPUs on a switch, a NIC each (rails), so clusters stay quick to solve
NODE = """
name: quad
gpus_per_node: 4
switches:
  - {name: sw, gpus: all, bandwidth: 200, alpha: 0.5}
nics:
  - {gpus: [0], bandwidth: 25, alpha: 2.0}
  - {gpus: [1], bandwidth: 25, alpha: 2.0}
  - {gpus: [2], bandwidth: 25, alpha: 2.0}
  - {gpus: [3], bandwidth: 25, alpha: 2.0}
"""
#: the same node with two NICs of twice the speed
NODE2 = """
name: quad2
gpus_per_node: 4
switches:
  - {name: sw, gpus: all, bandwidth: 200, alpha: 0.5}
nics:
  - {gpus: [0, 1], bandwidth: 50, alpha: 2.0}
  - {gpus: [2, 3], bandwidth: 50, alpha: 2.0}
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _cluster(tmp_path: Path, fabric: str, groups: str = "[{node: quad.yaml, count: 4}]") -> Path:
    _write(tmp_path, "quad.yaml", NODE)
    _write(tmp_path, "quad2.yaml", NODE2)
    return _write(tmp_path, "c.yaml", f"name: c\ngroups: {groups}\nfabric: {fabric}\n")


# -- the file format ---------------------------------------------------------------


@pytest.mark.parametrize(
    "fabric,message",
    [
        ("{kind: leaf-spine}", "fabric.nodes_per_leaf: required for a leaf-spine fabric"),
        ("{kind: leaf-spine, nodes_per_leaf: 2, spine: true}", "fabric.spine: not a field of"),
        (
            "{kind: leaf-spine, nodes_per_leaf: 2, oversubscription: 2, uplink_bandwidth: 50}",
            "fabric.uplink_bandwidth: give either",
        ),
        ("{kind: leaf-spine, nodes_per_leaf: 2, oversubscription: 0.5}", "must be >= 1"),
        ("{kind: mesh}", "fabric.kind: must be one of"),
        ("{kind: rail-optimized, nodes_per_leaf: 2}", "fabric.nodes_per_leaf: not a field"),
    ],
)
def test_fabric_errors_name_the_field(tmp_path, fabric, message):
    path = _cluster(tmp_path, fabric)
    with pytest.raises(TopologyError) as exc:
        load_topology(path)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_cluster_errors_are_one_line(tmp_path):
    _write(tmp_path, "quad.yaml", NODE)
    cases = {
        "groups: [{node: quad.yaml, count: 2}, {node: dgx-h100, count: 1}]": "same number of GPUs",
        "groups: [{node: nowhere, count: 2}]": "unknown node type 'nowhere'",
        "groups: [{node: dgx1, count: 2}, {node: dgx1, count: 0}]": "groups[1].count: must be >= 1",
        "groups: []": "groups: must not be empty",
    }
    for body, message in cases.items():
        path = _write(tmp_path, "bad.yaml", body + "\n")
        with pytest.raises(TopologyError) as exc:
            load_topology(path)
        assert message in str(exc.value) and "\n" not in str(exc.value), body
    good = _cluster(tmp_path, "{kind: full-bisection}")
    with pytest.raises(TopologyError, match="a cluster of 4 nodes"):
        load_topology(good, 3)
    assert load_topology(good, 4).nodes == load_topology(good).nodes == 4


def test_network_and_fabric_together_are_refused(tmp_path):
    path = _write(tmp_path, "n.yaml", NODE + "network: rail-only\nfabric: {kind: full-bisection}\n")
    with pytest.raises(TopologyError, match="network: give either"):
        load_topology(path)


@pytest.mark.parametrize("name", cluster_names())
def test_builtin_clusters_load_and_describe(name):
    topo = load_topology(name)
    assert topo.cluster and topo.label == name and topo.nodes == 8
    text = describe(topo)
    assert "network:" in text and f"ranks: {topo.num_ranks}" in text
    if topo.fabric is not None:
        assert topo.fabric.label in text


def test_mixed_cluster_keeps_each_groups_numbers(tmp_path):
    topo = load_topology(_cluster(tmp_path, "{kind: full-bisection}", MIXED))
    assert topo.node_types == ("quad", "quad", "quad2", "quad2")
    assert [len([n for n in topo.nics if n.node == k]) for k in range(4)] == [4, 4, 2, 2]
    assert topo.nic_of(8).bandwidth == 50e9 and topo.nic_of(0).bandwidth == 25e9
    assert not topo.node_symmetric


MIXED = "[{node: quad.yaml, count: 2}, {node: quad2.yaml, count: 2}]"


# -- resources and bounds ------------------------------------------------------------


def test_cross_leaf_connections_use_uplink_shares(tmp_path):
    topo = load_topology(
        _cluster(tmp_path, "{kind: leaf-spine, nodes_per_leaf: 2, oversubscription: 2}")
    )
    same, cross = topo.connection(0, 4), topo.connection(0, 8)
    assert not any(r.startswith(("up:", "down:")) for r in same.resources)
    assert {"up:n0.nic0", "down:n2.nic0"} <= set(cross.resources)
    assert topo.bandwidth(same) == 25e9 and topo.bandwidth(cross) == 12.5e9


def test_rail_optimized_spine_carries_only_cross_rail_traffic(tmp_path):
    topo = load_topology(_cluster(tmp_path, "{kind: rail-optimized, oversubscription: 4}"))
    assert topo.bandwidth(topo.connection(0, 4)) == 25e9  # rail 0 to rail 0
    assert topo.bandwidth(topo.connection(0, 5)) == 25e9 / 4  # rail 0 to rail 1
    no_spine = load_topology(_cluster(tmp_path, "{kind: rail-optimized, spine: false}"))
    assert (0, 5) not in no_spine.connections and (0, 4) in no_spine.connections


@pytest.mark.parametrize("kind", ["allgather", "alltoall"])
def test_halving_the_spine_doubles_the_inter_node_bound(tmp_path, kind):
    """One node per leaf: every byte between nodes crosses the spine."""
    times = []
    for ratio in (1, 2, 4):
        path = _cluster(
            tmp_path, f"{{kind: leaf-spine, nodes_per_leaf: 1, oversubscription: {ratio}}}"
        )
        times.append(lower_bound(load_topology(path), kind, GIB).time)
    assert times[1] == pytest.approx(2 * times[0], rel=1e-9)
    assert times[2] == pytest.approx(4 * times[0], rel=1e-9)


def test_uplink_bandwidth_is_the_leafs_total(tmp_path):
    ratio = _cluster(tmp_path, "{kind: leaf-spine, nodes_per_leaf: 1, oversubscription: 2}")
    a = lower_bound(load_topology(ratio), ALLGATHER, GIB).time
    total = _cluster(tmp_path, "{kind: leaf-spine, nodes_per_leaf: 1, uplink_bandwidth: 50}")
    assert lower_bound(load_topology(total), ALLGATHER, GIB).time == pytest.approx(a)


def test_relaying_inside_a_leaf_avoids_the_spine(tmp_path):
    """Two leaves of two nodes: AllGather crosses the spine once per leaf, so a 2:1
    spine does not bind, while AllToAll (no relaying helps) pays for it."""
    flat = load_topology(_cluster(tmp_path, "{kind: full-bisection}"))
    leafy = load_topology(
        _cluster(tmp_path, "{kind: leaf-spine, nodes_per_leaf: 2, oversubscription: 2}")
    )
    assert lower_bound(leafy, ALLGATHER, GIB).time == pytest.approx(
        lower_bound(flat, ALLGATHER, GIB).time
    )
    assert lower_bound(leafy, "alltoall", GIB).time > lower_bound(flat, "alltoall", GIB).time
    graph = flow_graph(leafy)
    assert graph["up:n0.nic0"]["spineout:0"]["capacity"] == 12.5e9


# -- synthesis --------------------------------------------------------------------


FABRICS = {
    "leaf-spine 2:1": "{kind: leaf-spine, nodes_per_leaf: 2, oversubscription: 2}",
    "leaf-spine 4:1, a node per leaf": (
        "{kind: leaf-spine, nodes_per_leaf: 1, oversubscription: 4}"
    ),
    "rail-optimized": "{kind: rail-optimized, oversubscription: 4}",
    "rail-only": "{kind: rail-optimized, spine: false}",
    "mixed": "{kind: full-bisection}",
}


@pytest.mark.parametrize(
    "fabric,kind",
    [(f, ALLGATHER) for f in sorted(FABRICS)]
    + [("leaf-spine 2:1", ALLREDUCE), ("mixed", ALLREDUCE), ("rail-optimized", ALLREDUCE)],
)
def test_fabrics_synthesize_verified_plans_no_slower_than_nccl(tmp_path, fabric, kind):
    groups = MIXED if fabric == "mixed" else "[{node: quad.yaml, count: 4}]"
    topo = load_topology(_cluster(tmp_path, FABRICS[fabric], groups))
    coll = Collective(kind, topo.num_ranks)
    result = build_plan(topo, coll, "milp", synth=SynthOptions(time_limit=3, size=GIB))
    assert result.report.ranks == topo.num_ranks and result.report.sends > 0
    ours = simulate(result.plan, topo, GIB).call_time
    nccl = nccl_best(topo, kind, GIB).time
    assert ours <= nccl * (1 + 1e-9)
    bound = lower_bound(topo, kind, GIB).time
    assert ours >= bound * (1 - 1e-9)


def test_mixed_nodes_use_the_decomposition_without_symmetry(tmp_path):
    topo = load_topology(_cluster(tmp_path, "{kind: full-bisection}", MIXED))
    result = build_plan(
        topo, Collective(ALLGATHER, topo.num_ranks), "milp", synth=SynthOptions(time_limit=3)
    )
    assert result.report.ranks == topo.num_ranks and result.report.sends > 0
    tried = result.algorithm.meta.get("tried", {})
    assert any(label.startswith("nodes differ") for label in tried)


# -- failures ---------------------------------------------------------------------


def test_excluding_a_nic_reroutes_its_gpus_data(tmp_path):
    topo = load_topology("dgx-h100", 2)
    hurt = apply_faults(topo, Faults(exclude=("nic:nic0@node1",)))
    assert hurt.nic_of(8) is None and not hurt.node_symmetric
    assert all(8 not in pair for pair, c in hurt.connections.items() if c.kind == "network")
    assert lower_bound(hurt, ALLGATHER, GIB).time > lower_bound(topo, ALLGATHER, GIB).time
    result = build_plan(
        hurt,
        Collective(ALLGATHER, hurt.num_ranks),
        "milp",
        synth=SynthOptions(time_limit=3, size=GIB),
    )
    assert result.report.ranks == hurt.num_ranks and result.report.sends > 0
    ours = simulate(result.plan, hurt, GIB).time
    assert ours >= lower_bound(hurt, ALLGATHER, GIB).time
    assert ours <= nccl_best(hurt, ALLGATHER, GIB).time


def test_derating_scales_the_part():
    topo = load_topology("dgx1")
    slow = apply_faults(topo, Faults(derate=("link:0-1@node0=0.25",)))
    assert slow.bandwidth(slow.connection(0, 1)) == topo.bandwidth(topo.connection(0, 1)) / 4
    assert slow.bandwidth(slow.connection(1, 0)) == topo.bandwidth(topo.connection(1, 0)) / 4
    gone = apply_faults(topo, Faults(exclude=("link:0-1@node0",)))
    assert (0, 1) not in gone.connections and (1, 0) not in gone.connections
    nic = apply_faults(load_topology("dgx-a100", 2), Faults(derate=("nic:3@node1=0.5",)))
    assert nic.nic_of(11).bandwidth == 12.5e9


@pytest.mark.parametrize(
    "exclude,derate,message",
    [
        (["nic:nic0@node1"], [], "disconnects the cluster"),  # ndv2: one NIC per node
        (["nic:nic9@node0"], [], "has no NIC nic9"),
        (["link:0-1@node5"], [], "not node 5"),
        (["gpu:3@node0"], [], "changes the rank count"),
        (["wire:1@node0"], [], "not a part name"),
        ([], ["nic:nic0@node0"], "needs =<fraction>"),
        ([], ["nic:nic0@node0=1.5"], "needs =<fraction>"),
        (["nic:nic0@node0=0.5"], [], "for --derate only"),
        (["nic:0@node0", "nic:nic0@node0"], [], "the same part as nic:0@node0"),
    ],
)
def test_bad_faults_are_one_line_errors(exclude, derate, message):
    args = ["synthesize", "-t", "ndv2", "-n", "2", "-c", "allgather", "-m", "ring"]
    for part in exclude:
        args += ["--exclude", part]
    for part in derate:
        args += ["--derate", part]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 2, res.output
    assert message in res.output and len(res.output.strip().splitlines()) == 1


def test_switch_pairs_have_no_link_to_exclude():
    with pytest.raises(TopologyError, match="talk through switch nvswitch"):
        apply_faults(load_topology("dgx-h100"), Faults(exclude=("link:0-1@node0",)))


@settings(max_examples=60, deadline=None)
@given(
    st.text(alphabet="nicklgpu:@=-.0123456789abx", max_size=24),
    st.booleans(),
)
def test_any_part_text_applies_or_fails_in_one_line(text, derate):
    topo = load_topology("dgx1", 2)
    faults = Faults(derate=(text,)) if derate else Faults(exclude=(text,))
    try:
        out = apply_faults(topo, faults)
    except TopologyError as exc:
        assert "\n" not in str(exc) and str(exc)
    else:
        assert out.num_ranks == topo.num_ranks
        assert all(math.isfinite(b) and b > 0 for b in out.resource_bandwidth.values())


def test_cli_synthesizes_with_an_excluded_nic(tmp_path):
    res = CliRunner().invoke(
        main,
        [
            "synthesize",
            "-t",
            "dgx-h100",
            "-n",
            "2",
            "-c",
            "allgather",
            "-m",
            "milp",
            "--size",
            "1G",
            "--time-limit",
            "3",
            "--exclude",
            "nic:nic3@node0",
            "-o",
            str(tmp_path / "p.xml"),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "verified" in res.output and (tmp_path / "p.xml").exists()
    assert "nic_nic3_node0" in res.output


def test_symmetric_core_keeps_what_every_node_has(tmp_path):
    from taccl_py.topology.core import symmetric_core

    hurt = apply_faults(load_topology("dgx-h100", 4), Faults(exclude=("nic:nic2@node3",)))
    core = symmetric_core(hurt)
    assert core is not None and core.node_symmetric
    assert all(core.nic_of(node * 8 + 2) is None for node in range(4))
    assert set(core.connections) <= set(hurt.connections)
    assert lower_bound(core, ALLGATHER, GIB).time == pytest.approx(
        lower_bound(hurt, ALLGATHER, GIB).time
    )
    _write(tmp_path, "fast.yaml", NODE.replace("quad", "fast").replace("25", "50"))
    groups = "[{node: quad.yaml, count: 2}, {node: fast.yaml, count: 2}]"
    slow = symmetric_core(load_topology(_cluster(tmp_path, "{kind: full-bisection}", groups)))
    assert slow is not None and {n.bandwidth for n in slow.nics} == {25e9}
    # links: only those every node has, at the slowest's speed
    dgx1 = apply_faults(
        load_topology("dgx1", 2),
        Faults(exclude=("link:0-1@node0",), derate=("link:2-3@node1=0.5",)),
    )
    linked = symmetric_core(dgx1)
    assert linked is not None and linked.node_symmetric
    assert (0, 1) not in linked.connections and (8, 9) not in linked.connections
    assert linked.bandwidth(linked.connection(2, 3)) == dgx1.bandwidth(dgx1.connection(10, 11))
    # no NIC in common (one per GPU vs one per pair): no core that reaches other nodes
    assert (
        symmetric_core(load_topology(_cluster(tmp_path, "{kind: full-bisection}", MIXED))) is None
    )
    assert symmetric_core(load_topology(_cluster(tmp_path, FABRICS["leaf-spine 2:1"]))) is None


def test_spread_relays_split_a_nicless_gpus_data_over_every_nic():
    from taccl_py.synth.milp.decompose import node_trees, relays, spread_relays
    from taccl_py.synth.milp.sketch import default_sketch
    from taccl_py.topology.core import symmetric_core

    core = symmetric_core(
        apply_faults(load_topology("dgx-h100", 2), Faults(exclude=("nic:nic0@node0",)))
    )
    sketch = default_sketch(core)
    trees, _ = node_trees(core, GIB / 16, time_limit=5)
    carriers = relays(core, sketch, trees)
    spread = spread_relays(core, sketch, trees, carriers)
    assert spread is not None and sorted(r for r, _ in spread[0]) == list(range(1, 8))
    assert all(spread[k] == [carriers[k]] for k in range(1, 8))


def test_senders_only_order_lets_the_first_ready_sender_in():
    from taccl_py.synth.milp.ordering import Send, order

    # two senders into one receiving NIC; priority prefers the later-ready one
    sends = [
        Send(0, 0, 2, None, ("nicout:a", "nicin:c"), 1.0, 0.0),
        Send(1, 1, 2, None, ("wait:b",), 0.5, 0.0),
        Send(1, 1, 2, 1, ("nicout:b", "nicin:c"), 1.0, 0.0),
    ]
    prio = [0.0, 0.0, 5.0]
    plain = order(sends, prio=prio)
    fair = order(sends, prio=prio, senders_only=True)
    assert fair.sequence["nicin:c"] == [0, 2]  # sender a was ready at 0, b at 0.5
    assert plain.makespan >= fair.makespan


def test_node_routes_are_kept_and_reused_after_a_failure(tmp_path, monkeypatch):
    """The healthy run's node routing is kept; the degraded run reuses it unsolved; an
    entry that does not fit the node is solved again."""
    from taccl_py.synth.milp import node_routes

    monkeypatch.setenv("TACCL_ROUTE_CACHE", str(tmp_path / "routes"))
    topo = load_topology("dgx1", 2)
    trees, optimal = node_routes.node_trees_for(topo, 0, GIB / 16, time_limit=10)
    assert optimal and len(list((tmp_path / "routes").glob("*.json"))) == 1
    hurt = apply_faults(topo, Faults(exclude=("nic:nic0@node1",)))

    def no_solve(*args, **kwargs):
        raise AssertionError("solved again")

    monkeypatch.setattr(node_routes, "route", no_solve)
    assert node_routes.node_trees_for(hurt, 1, GIB / 16, time_limit=10) == (trees, True)
    [entry] = (tmp_path / "routes").glob("*.json")
    entry.write_text('{"0": [[3, 4]]}')  # dgx1 has no 3-4 link, and too few GPUs
    with pytest.raises(AssertionError, match="solved again"):
        node_routes.node_trees_for(hurt, 1, GIB / 16, time_limit=10)
    monkeypatch.setenv("TACCL_ROUTE_CACHE", "off")
    assert node_routes.cache_dir() is None


def test_node_symmetry_sees_shared_nics(tmp_path):
    """Nodes whose connections look alike but share NICs differently are not symmetric."""
    one = NODE.replace("name: quad", "name: one")
    pair = NODE2.replace("bandwidth: 50", "bandwidth: 25").replace("name: quad2", "name: pair")
    _write(tmp_path, "one.yaml", one)
    _write(tmp_path, "pair.yaml", pair)
    path = _write(
        tmp_path,
        "c.yaml",
        "groups: [{node: one.yaml, count: 1}, {node: pair.yaml, count: 1}]\n",
    )
    topo = load_topology(path)
    assert not topo.node_symmetric
    assert load_topology(_cluster(tmp_path, "{kind: full-bisection}")).node_symmetric


def test_tiny_derating_and_long_labels():
    with pytest.raises(TopologyError, match="less than the 0.001 GB/s"):
        apply_faults(load_topology("dgx-h100", 2), Faults(derate=("nic:nic0@node0=1e-9",)))
    many = Faults(derate=tuple(f"nic:nic{k}@node{n}=0.5" for k in range(8) for n in range(2)))
    assert len(many.label) <= 80
    assert apply_faults(load_topology("dgx-h100", 2), many).label.endswith(many.label)


def test_whole_cluster_routes_spread_a_lost_nics_data_and_verify():
    """hetero: every chunk reaches every rank over existing connections only; the GPU
    without a NIC has its data carried by several NICs; each rule's schedule lowers to a
    plan that verifies and is no faster than the degraded cluster's bound."""
    from taccl_py.ir.algorithm import Algorithm
    from taccl_py.lowering.lower import lower
    from taccl_py.plan.verify import verify
    from taccl_py.synth.milp.hetero import hetero_routes, hetero_rules, node_patterns
    from taccl_py.synth.milp.node_routes import node_trees_for
    from taccl_py.synth.milp.ordering import make_sends, order
    from taccl_py.synth.milp.schedule import schedule

    hurt = apply_faults(load_topology("dgx-h100", 3), Faults(exclude=("nic:nic0@node1",)))
    coll = Collective(ALLGATHER, hurt.num_ranks).with_chunkup(2)
    chunk = coll.chunk_bytes(GIB)
    memo: dict = {}
    trees = {x: node_trees_for(hurt, x, chunk, time_limit=5, memo=memo)[0] for x in range(3)}
    assert len(memo) == 1  # one kind of node, solved once
    routes = hetero_routes(hurt, coll, chunk, trees, node_patterns(hurt)["direct"])
    for c, edges in routes.edges.items():
        assert all(e in hurt.connections for e in edges)
        reached = {coll.precondition(c)[0]} | {v for _, v in edges}
        assert reached == set(range(hurt.num_ranks))
    carriers = {
        u for c in (16, 17) for u, v in routes.edges[c] if hurt.node_of(u) != hurt.node_of(v)
    }
    assert len(carriers) > 1 and 8 not in carriers  # GPU 8 (node 1, GPU 0) has no NIC
    sends = make_sends(hurt, routes)
    bound = lower_bound(hurt, ALLGATHER, GIB).time
    for rule, prio, own, senders_only in hetero_rules(hurt, coll, sends):
        ordered = order(sends, own_data_first=own, prio=prio, senders_only=senders_only)
        sched = schedule(hurt, ordered, False)
        alg = Algorithm("milp", coll, sched.transfers(), hurt.label, GIB, {})
        plan = lower(alg, topology=hurt)
        verify(plan)
        assert sched.makespan >= bound * (1 - 1e-9), rule
        assert simulate(plan, hurt, GIB).time >= bound * (1 - 1e-9), rule

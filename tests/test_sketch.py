"""Communication sketches: shipped files, defaults, symmetry detection, error messages."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from networkx.algorithms.isomorphism import DiGraphMatcher

from taccl_py.errors import SketchError
from taccl_py.synth.milp.sketch import (
    builtin_sketch_names,
    default_sketch,
    load_sketch,
    parse_sketch,
    sketch_template,
)
from taccl_py.synth.milp.symmetry import automorphism_error, detect_symmetry, orbit_representatives
from taccl_py.topology.loader import builtin_names, load_topology

BUILTINS = ["dgx-a100", "dgx-h100", "dgx1", "dgx2", "mi300x", "ndv2"]


def closure(gens, n):
    ident = tuple(range(n))
    seen, todo = {ident}, [ident]
    while todo:
        p = todo.pop()
        for g in gens:
            q = tuple(g[x] for x in p)
            if q not in seen:
                seen.add(q)
                todo.append(q)
    return seen


def test_every_builtin_ships_a_sketch():
    assert builtin_sketch_names() == builtin_names() == BUILTINS


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("nodes", [1, 2])
def test_shipped_sketch_loads(name, nodes):
    topo = load_topology(name, nodes)
    s = load_sketch(name, topo)
    assert s.topology == topo.label and s.size == 1 << 30
    assert (len(s.inter_node) > 0) == (nodes > 1)
    for a, b in s.inter_node:
        assert topo.connection(a, b).kind == "network"
    carried = {g for data in s.relays.values() for g in data}
    assert carried == set(range(topo.num_ranks))
    for perm in s.symmetry:
        assert automorphism_error(topo, perm) is None


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("nodes", [1, 2])
def test_default_sketch_and_template_round_trip(name, nodes):
    topo = load_topology(name, nodes)
    d = default_sketch(topo)
    assert d.chunkup[0] == 1 and list(d.chunkup) == sorted(set(d.chunkup))
    assert d.size == 1 << 30 and not d.own_data_first
    assert d.switch_policy == ("uc-max" if topo.switches else None)
    if nodes > 1:
        network = {k for k, c in topo.connections.items() if c.kind == "network"}
        assert d.inter_node == network
        for r in range(topo.num_ranks):
            assert any(r in data for data in d.relays.values())
    assert parse_sketch(sketch_template(topo), topo) == d


def test_default_relays_share_a_nic():
    d = default_sketch(load_topology("dgx1", 2))
    assert d.relays[0] == (0, 1) and d.relays[9] == (8, 9)
    d = default_sketch(load_topology("dgx-a100", 2))
    assert d.relays[3] == (3,)


@pytest.mark.parametrize("name", BUILTINS)
def test_detect_symmetry_valid_and_node_rotation(name):
    topo = load_topology(name, 2)
    gens = detect_symmetry(topo)
    n = topo.gpus_per_node
    assert tuple((r + n) % (2 * n) for r in range(2 * n)) in gens
    for perm in gens:
        assert sorted(perm) == list(range(topo.num_ranks))
        for (s, d), c in topo.connections.items():
            image = topo.connections[(perm[s], perm[d])]
            assert topo.bandwidth(image) == topo.bandwidth(c) and image.alpha == c.alpha


def test_dgx1_full_symmetry_group():
    topo = load_topology("dgx1")
    gens = detect_symmetry(topo)
    g = topo.graph()
    for u, v in [(0, 1), (2, 3), (4, 5), (6, 7)]:  # NIC pairs must be kept together
        g.add_edge(u, v, nic=True)
        g.add_edge(v, u, nic=True)
    every = DiGraphMatcher(g, g, edge_match=lambda a, b: a == b)
    full = {tuple(m[i] for i in range(8)) for m in every.isomorphisms_iter()}
    assert len(full) > 1
    assert closure(gens, 8) == full


def test_switch_nodes_transitive_and_fast():
    topo = load_topology("dgx2", 4)
    _ = topo.connections  # built before the clock starts
    start = time.perf_counter()
    gens = detect_symmetry(topo)
    assert time.perf_counter() - start < 1.0
    reps = orbit_representatives(gens, range(topo.num_ranks))
    assert set(reps.values()) == {0}


def test_orbit_representatives_pairs():
    gens = detect_symmetry(load_topology("dgx-a100"))
    reps = orbit_representatives(gens, [(a, b) for a in range(8) for b in range(8) if a != b])
    assert set(reps.values()) == {(0, 1)}
    assert orbit_representatives([], [3, 1]) == {3: 3, 1: 1}


def test_explicit_symmetry_and_node_swaps():
    topo = load_topology("dgx1", 2)
    s = parse_sketch("symmetry: {rotations: [[4, 5, 6, 7, 0, 1, 2, 3]], node_swaps: true}", topo)
    assert s.symmetry[0] == tuple(range(8, 16)) + tuple(range(8))
    assert s.symmetry[1][:8] == (4, 5, 6, 7, 0, 1, 2, 3)
    assert parse_sketch("symmetry: none", topo).symmetry == ()


def test_sketch_restricts_auto_symmetry():
    topo = load_topology("ndv2", 2)
    s = load_sketch("ndv2", topo)
    assert s.inter_node == {(0, 9), (8, 1)}
    assert s.symmetry == (tuple(range(8, 16)) + tuple(range(8)),)


def test_sketch_file_and_representatives(tmp_path):
    path = tmp_path / "my.yaml"
    path.write_text("chunkup: 2\nsize: 64M\nswitch_policy: uc-min\n")
    s = load_sketch(path, load_topology("dgx-h100"))
    assert (s.name, s.chunkup, s.size, s.switch_policy) == ("my", (2,), 64 << 20, "uc-min")
    assert set(s.representatives(range(8)).values()) == {0}


BAD = [
    ("- 1\n", "top level: must be a mapping"),
    ("bogus: 1\n", "bogus: unknown field"),
    ("name: 'bad name'\n", "name: must be a name"),
    ("own_data_first: 3\n", "own_data_first: must be true or false"),
    ("switch_policy: uc-mid\n", "switch_policy: must be one of uc-min, uc-max"),
    ("chunkup: 0\n", "chunkup: must be an integer"),
    ("chunkup: []\n", "chunkup: must be an integer"),
    ("chunkup: [1, 1]\n", "chunkup: must be an integer"),
    ("chunkup: 1000\n", "chunkup: must be an integer"),
    ("size: -5\n", "size: must be a byte count"),
    ("size: 1.5\n", "size: must be a byte count"),
    ("size: lots\n", "size: bad size 'lots'"),
    ("size: 9223372036854775808\n", "size: must be a byte count like 1048576, 64M or 1G, below"),
    ("size: .inf\n", "size: must be a byte count"),
    ("chunkup: true\n", "chunkup: must be an integer"),
    ("inter_node: {connections: [[0, .nan]]}\n", "inter_node.connections[0][1]: must be an"),
    ("symmetry: maybe\n", "symmetry: must be auto, none"),
    ("symmetry: {rotations: [[0, 1]]}\n", "symmetry.rotations[0]: must be a permutation"),
    (
        "symmetry: {rotations: [[1, 0, 2, 3, 4, 5, 6, 7]]}\n",
        "symmetry.rotations[0]: not a symmetry of dgx1x2: maps connection",
    ),
    ("symmetry: {spin: 1}\n", "symmetry: must be auto, none"),
    ("inter_node: 5\n", "inter_node: must be a mapping"),
    ("inter_node: {links: rail}\n", "inter_node.links: unknown field"),
    ("inter_node: {connections: ring}\n", 'inter_node.connections: must be "rail"'),
    ("inter_node: {connections: [[0, 1, 2]]}\n", "connections[0]: must have at most 2"),
    (
        "inter_node: {connections: [[0, 9]]}\n",
        "inter_node.connections[0][1]: GPU 9 out of range 0..7",
    ),
    (
        "inter_node: {connections: [[0, 0], [0, 0]]}\n",
        "inter_node.connections[1]: duplicate connection",
    ),
    (
        "inter_node: {connections: rail, relays: {9: [0]}}\n",
        "inter_node.relays[9]: GPU 9 out of range",
    ),
    (
        "inter_node: {connections: rail, relays: {a: [0]}}\n",
        "inter_node.relays.a: must be a GPU id",
    ),
    ("inter_node: {connections: rail, relays: {0: []}}\n", "inter_node.relays[0]: must be"),
    (
        "inter_node: {connections: rail, relays: {0: [0, 0]}}\n",
        "inter_node.relays[0]: a GPU listed twice",
    ),
    (
        "inter_node: {connections: [[0, 0]], relays: {1: [1]}}\n",
        "inter_node.relays[1]: GPU 1 relays data but sends nothing across nodes",
    ),
    (
        "inter_node: {connections: rail, relays: {0: [0, 1, 2]}}\n",
        "inter_node.relays: GPU 3's data has no relay to leave node",
    ),
    (
        "inter_node: {connections: [[0, 0]]}\n",
        "inter_node.relays: GPU 2's data has no relay to leave node (by default",
    ),
    ("name: a\nname: b\n", "invalid YAML"),
    ("[[[\n", "invalid YAML"),
    ("", "empty file"),
]


@pytest.mark.parametrize("text,message", BAD)
def test_malformed_sketch_one_line_error(text, message):
    topo = load_topology("dgx1", 2)
    with pytest.raises(SketchError) as exc:
        parse_sketch(text, topo, "sk.yaml")
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith("sk.yaml: ")
    assert message in msg, msg


def test_infeasible_connection_rules():
    rail = load_topology("dgx1", 2)
    rail.network = "rail-only"
    rail.__dict__.pop("connections", None)
    with pytest.raises(
        SketchError,
        match=r"connections\[0\]: GPU 0 -> remote GPU 2 has no "
        r"NIC connection \(rail-only network",
    ):
        parse_sketch("inter_node: {connections: [[0, 2]]}", rail, "sk.yaml")
    with pytest.raises(SketchError, match="has no NICs, so there is no inter-node traffic"):
        parse_sketch(
            "inter_node: {connections: rail}",
            load_topology("dgx1").__class__(name="bare", gpus_per_node=2, nodes=1),
            "sk.yaml",
        )


def test_unknown_sketch_name():
    with pytest.raises(SketchError, match="no such sketch file, and not a built-in"):
        load_sketch("nope", load_topology("dgx1"))


@settings(max_examples=60)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-3, 20) | st.text(max_size=5),
        lambda c: (
            st.lists(c, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "inter_node",
                        "connections",
                        "relays",
                        "symmetry",
                        "rotations",
                        "chunkup",
                        "size",
                        0,
                        3,
                    ]
                ),
                c,
                max_size=3,
            )
        ),
        max_leaves=8,
    )
)
def test_fuzzed_sketches_fail_cleanly(doc):
    import yaml

    topo = load_topology("dgx1", 2)
    try:
        parse_sketch(yaml.safe_dump({"inter_node": doc, "symmetry": doc}), topo, "f.yaml")
    except SketchError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("f.yaml: ")


# -- sketches in the routing MILP ------------------------------------------------------
from dataclasses import replace  # noqa: E402

from taccl_py.collectives import Collective  # noqa: E402
from taccl_py.synth.milp.ordering import Send, order  # noqa: E402
from taccl_py.synth.milp.routing import candidates, route  # noqa: E402
from taccl_py.synth.milp.search import staged_algorithm  # noqa: E402

EVEN_RELAYS = (
    "inter_node: {connections: rail, relays: {0: [0, 1], 2: [2, 3], "
    "4: [4, 5], 6: [6, 7]}}\nsymmetry: none\n"
)


def crossings(topo, routes):
    """(source, sender, receiver) of every inter-node send of ``routes``."""
    coll = routes.collective
    return [
        (coll.precondition(c)[0], u, v)
        for c, es in routes.edges.items()
        for u, v in es
        if topo.node_of(u) != topo.node_of(v)
    ]


@pytest.mark.parametrize("kind", ["allgather", "alltoall"])
@pytest.mark.parametrize("text", [EVEN_RELAYS, None])
def test_routes_obey_inter_node_and_relays(kind, text):
    topo = load_topology("dgx1" if text else "ndv2", 2)
    s = parse_sketch(text, topo) if text else load_sketch("ndv2", topo)
    coll = Collective(kind, topo.num_ranks)
    routes = route(topo, coll, coll.chunk_bytes(1 << 30), time_limit=3, sketch=s)
    cross = crossings(topo, routes)
    assert cross
    for src, u, v in cross:
        assert (u, v) in s.inter_node, (src, u, v)
        assert src in s.relays.get(u, ()), (src, u, v)
    if text:  # only even GPUs carry data across, on rail connections
        assert {u % 8 for _, u, _ in cross} <= {0, 2, 4, 6}
        assert all(u % 8 == v % 8 for _, u, v in cross)
    else:
        assert {(u, v) for _, u, v in cross} <= {(0, 9), (8, 1)}


@pytest.mark.parametrize("kind", ["allgather", "alltoall"])
def test_symmetric_sketch_routes_are_images(kind):
    from taccl_py.synth.milp.routing import _act_chunk

    topo = load_topology("dgx1", 2)
    s = load_sketch("dgx1", topo)
    assert len(s.symmetry) >= 2
    coll = Collective(kind, topo.num_ranks, 2)
    routes = route(topo, coll, coll.chunk_bytes(1 << 30), time_limit=5, sketch=s)
    for perm in s.symmetry:
        for c, es in routes.edges.items():
            image = sorted((perm[u], perm[v]) for u, v in es)
            assert routes.edges[_act_chunk(coll, perm, c)] == image, (perm, c)


def test_symmetry_shrinks_binaries():
    topo = load_topology("dgx1", 2)
    coll = Collective("allgather", topo.num_ranks)
    b = coll.chunk_bytes(1 << 30)
    sym = load_sketch("dgx1", topo)
    flat = replace(sym, symmetry=())
    n_cand = sum(map(len, candidates(topo, coll, sym).values()))
    r_flat = route(topo, coll, b, time_limit=2, sketch=flat)
    r_sym = route(topo, coll, b, time_limit=5, sketch=sym)
    assert r_flat.num_binaries == n_cand
    # node swap and a local rotation group of order >= 4: at least 8 images per orbit
    assert r_sym.num_binaries * 8 <= n_cand
    assert r_sym.makespan >= r_flat.makespan * (1 - 1e-9) or not r_flat.optimal


def test_asymmetric_candidates_fall_back_to_no_sharing():
    topo = load_topology("dgx1", 2)
    s = parse_sketch(EVEN_RELAYS, topo)
    # a node swap keeps these rules, a shift by one GPU does not: no sharing then
    shift = tuple(r - r % 8 + (r + 1) % 8 for r in range(16))
    coll = Collective("allgather", 16)
    n_cand = sum(map(len, candidates(topo, coll, s).values()))
    r = route(
        topo, coll, coll.chunk_bytes(1 << 20), time_limit=2, sketch=replace(s, symmetry=(shift,))
    )
    assert r.num_binaries == n_cand


def ndv2_sketch(**changes):
    topo = load_topology("ndv2", 2)
    return topo, replace(load_sketch("ndv2", topo), symmetry=(), **changes)


@pytest.mark.parametrize(
    "changes,message",
    [
        (
            {"relays": {0: (0,), 8: (8,)}},
            r"^sketch ndv2-relay: inter_node.relays: no route for rank 1's data to rank 8 "
            r"\(node 1\): the ranks that may carry it across nodes \(none\)",
        ),
        (
            {"inter_node": frozenset({(0, 9)})},
            r"^sketch ndv2-relay: inter_node.connections: no route for rank 8's data to rank 0 "
            r"\(node 0\): no allowed inter-node connection",
        ),
        (
            {"relays": {1: tuple(range(8)), 9: tuple(range(8, 16))}},
            r"^sketch ndv2-relay: inter_node.connections and inter_node.relays: no route for "
            r"rank 0's data",
        ),
        (
            {"inter_node": frozenset({(0, 9), (8, 1), (0, 1)})},
            r"^sketch ndv2-relay: inter_node.connections: rank 0 -> rank 1 is not an "
            r"inter-node connection of ndv2x2",
        ),
    ],
)
@pytest.mark.parametrize("kind", ["allgather", "alltoall"])
def test_infeasible_sketch_names_the_rule(changes, message, kind):
    topo, s = ndv2_sketch(**changes)
    coll = Collective(kind, topo.num_ranks)
    start = time.perf_counter()
    with pytest.raises(SketchError, match=message):
        route(topo, coll, coll.chunk_bytes(1 << 20), time_limit=30, sketch=s)
    with pytest.raises(SketchError, match=message):  # not swallowed by the chunk-up loop
        staged_algorithm(topo, coll, size=1 << 20, time_limit=30, sketch=s)
    assert time.perf_counter() - start < 2  # found before solving


def test_sketch_for_another_topology():
    _, s = ndv2_sketch()
    topo = load_topology("ndv2", 3)
    coll = Collective("allgather", topo.num_ranks)
    with pytest.raises(SketchError, match="sketch ndv2-relay: is for ndv2x2, not ndv2x3"):
        route(topo, coll, 1.0, time_limit=5, sketch=s)


def test_staged_uses_sketch_chunkups_and_own_data_first():
    topo = load_topology("dgx1", 2)
    s = replace(load_sketch("dgx1", topo), chunkup=(2, 3))
    alg = staged_algorithm(topo, Collective("allgather", 16), size=1 << 20, time_limit=4, sketch=s)
    assert alg.meta["chunkup"] in (2, 3)
    variants = {re.search(r"chunk-up \d+", label).group() for label in alg.meta["tried"]}
    assert variants <= {"chunk-up 2", "chunk-up 3"} and "chunk-up 2" in variants
    alg.check()


def test_uc_min_uses_no_more_switch_peers():
    topo = load_topology("dgx-a100")
    coll = Collective("allgather", 8)

    def peers(policy):
        s = replace(default_sketch(topo), symmetry=(), switch_policy=policy)
        r = route(topo, coll, coll.chunk_bytes(1 << 30), time_limit=3, sketch=s)
        return {e for es in r.edges.values() for e in es}

    # the same makespan is reachable with far fewer peers than the star's 56
    assert len(peers("uc-min")) < len(peers("uc-max")) == 56


def test_own_data_first_ordering():
    def send(chunk, src, dst, pred, res, dur):
        return Send(chunk, src, dst, pred, (res,), dur, 0.0)

    # send 3 is rank 0's own chunk; send 1 relays chunk 1, with a long path after it
    sends = [
        send(1, 1, 0, None, "a", 1.0),
        send(1, 0, 2, 0, "r", 1.0),
        send(1, 2, 3, 1, "b", 5.0),
        send(0, 0, 2, None, "r", 2.0),
    ]
    plain = order(sends)
    own = order(sends, own_data_first=True)
    assert plain.start[1] < plain.start[3]  # critical path first
    assert own.start[3] < own.start[1]  # own data first
    assert own.sequence["r"] == [3, 1]


def test_symmetry_that_no_route_can_keep_falls_back():
    from taccl_py.topology.model import Link, Topology

    # a square 0-1-3-2-0: swapping 1 and 2 fixes 0 and 3, so chunk 0 -> 3 would have to
    # take both two-hop paths at once; the model is solved again without sharing
    links = tuple(
        Link(a, b, 50e9, 1e-6)
        for u, v in [(0, 1), (1, 3), (3, 2), (2, 0)]
        for a, b in [(u, v), (v, u)]
    )
    topo = Topology("square", 4, 1, links)
    s = replace(default_sketch(topo), symmetry=((0, 2, 1, 3),))
    for kind in ("allgather", "alltoall"):
        coll = Collective(kind, 4)
        r = route(topo, coll, coll.chunk_bytes(1 << 20), time_limit=5, sketch=s)
        assert r.num_binaries == sum(map(len, candidates(topo, coll, s).values()))
        src_3 = 0 if kind == "allgather" else 3  # chunk of rank 0 that reaches rank 3
        assert sum(v == 3 for _, v in r.edges[src_3]) == 1

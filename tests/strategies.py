"""Hypothesis strategies for random small topologies."""

from __future__ import annotations

from hypothesis import strategies as st

from taccl_py.topology import Link, Nic, Switch, Topology

BANDWIDTHS = (12.5e9, 25e9, 50e9, 100e9)


@st.composite
def topologies(draw, max_gpus: int = 4, max_nodes: int = 2) -> Topology:
    """1-2 nodes of 2-4 GPUs; intra-node a switch or a random connected link set."""
    g = draw(st.integers(2, max_gpus))
    nodes = draw(st.integers(1, max_nodes))
    alpha = draw(st.sampled_from((0.35e-6, 0.7e-6)))
    links: list[Link] = []
    switches: list[Switch] = []
    if draw(st.booleans()):
        bw = draw(st.sampled_from(BANDWIDTHS))
        switches = [
            Switch(f"n{n}.sw", n, tuple(range(n * g, n * g + g)), bw, alpha) for n in range(nodes)
        ]
    else:
        perm = draw(st.permutations(range(g)))
        pairs = {tuple(sorted(p)) for p in zip(perm, perm[1:])}  # spanning path: connected
        extra = draw(st.sets(st.tuples(st.integers(0, g - 1), st.integers(0, g - 1)), max_size=g))
        pairs |= {tuple(sorted(p)) for p in extra if p[0] != p[1]}
        for a, b in sorted(pairs):
            bw = draw(st.sampled_from(BANDWIDTHS))
            for n in range(nodes):
                o = n * g
                links += [Link(o + a, o + b, bw, alpha), Link(o + b, o + a, bw, alpha)]
    nics: list[Nic] = []
    if nodes > 1:
        shared = draw(st.booleans())
        nic_bw = draw(st.sampled_from((12.5e9, 25e9)))
        for n in range(nodes):
            o = n * g
            groups = [tuple(range(o, o + g))] if shared else [(o + i,) for i in range(g)]
            nics += [Nic(f"n{n}.nic{i}", n, i, grp, nic_bw, 2e-6) for i, grp in enumerate(groups)]
    return Topology("random", g, nodes, tuple(links), tuple(switches), tuple(nics))

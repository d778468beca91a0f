"""The node-symmetric core of a cluster whose nodes differ: what every node has.

A plan for the core uses only connections every node has, at the speed of the slowest,
so it runs unchanged on the real cluster; where the slowest node bounds the collective
anyway (an AllGather: its ingress), the core loses nothing, and the node-shift
decomposition, which needs identical nodes, applies to it.

>>> from taccl_py.topology.failures import Faults, apply_faults
>>> from taccl_py.topology.loader import load_topology
>>> hurt = apply_faults(load_topology("dgx-h100", 2), Faults(exclude=("nic:nic0@node1",)))
>>> core = symmetric_core(hurt)
>>> core.node_symmetric, core.nic_of(0), core.nic_of(8), len(core.nics)
(True, None, None, 14)
"""

from __future__ import annotations

from dataclasses import replace

from .model import Link, Nic, Switch, Topology


def _common_links(topology: Topology) -> tuple[Link, ...]:
    g, n = topology.gpus_per_node, topology.nodes
    by_node: list[dict[tuple[int, int], Link]] = [{} for _ in range(n)]
    for lk in topology.links:
        by_node[topology.node_of(lk.src)][lk.src % g, lk.dst % g] = lk
    out = []
    for (a, b), lk in sorted(by_node[0].items()):
        same = [d[a, b] for d in by_node if (a, b) in d]
        if len(same) == n:
            bandwidth = min(x.bandwidth for x in same)
            alpha = max(x.alpha for x in same)
            for node in range(n):
                base = node * g
                out.append(
                    replace(lk, src=base + a, dst=base + b, bandwidth=bandwidth, alpha=alpha)
                )
    return tuple(sorted(out, key=lambda x: (x.src, x.dst)))


def _common_groups(topology: Topology, items, key) -> list:
    """Switches or NICs present on every node with the same local GPUs (and ``key``), at
    the slowest one's bandwidth and α."""
    g, n = topology.gpus_per_node, topology.nodes
    by_node: list[dict] = [{} for _ in range(n)]
    for item in items:
        by_node[item.node][key(item), tuple(r % g for r in item.ranks)] = item
    common = [k for k in by_node[0] if all(k in d for d in by_node)]
    out = []
    for k in common:
        same = [d[k] for d in by_node]
        bandwidth = min(x.bandwidth for x in same)
        alpha = max(x.alpha for x in same)
        out += [replace(x, bandwidth=bandwidth, alpha=alpha) for x in same]
    return out


def symmetric_core(topology: Topology) -> Topology | None:
    """The cluster with only the links, switches and NICs every node has (same local
    GPUs, the slowest's bandwidth and α), if that is node-symmetric and still connected;
    else None (e.g. a leaf/spine fabric, which treats nodes unequally)."""
    if topology.nodes < 2:
        return None
    if topology.fabric is not None and topology.fabric.kind != "rail-optimized":
        return None
    switches: list[Switch] = _common_groups(
        topology, topology.switches, lambda s: s.name.split(".", 1)[-1]
    )
    nics: list[Nic] = _common_groups(topology, topology.nics, lambda x: x.rail)
    core = replace(
        topology,
        name=f"{topology.label}-core",
        cluster=True,
        links=_common_links(topology),
        switches=tuple(sorted(switches, key=lambda s: (s.node, s.name))),
        nics=tuple(sorted(nics, key=lambda x: (x.node, x.rail))),
    )
    if not core.node_symmetric:
        return None
    import networkx as nx

    if not nx.is_strongly_connected(core.graph()):
        return None
    return core

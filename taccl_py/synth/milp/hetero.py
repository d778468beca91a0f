"""Decomposed AllGather where nodes differ: mixed node types, failed or derated parts, and
fabrics that do not treat every node alike (leaf/spine).

No symmetry is assumed. Each *kind* of node (its links and switches, local ids) gets its
intra-node out-trees from the routing MILP once (:func:`node_trees_for`, cached: a node
kind solved before, e.g. by the healthy run, is not solved again). Every chunk then
crosses the network along a node-level tree (:func:`node_patterns`: every node directly,
or, on a leaf/spine fabric, once per other leaf and on inside it), and each of its network
hops gets its sending and receiving GPU by a greedy min-max balance of the NICs and uplink
shares (:func:`assign`): a GPU whose NIC is gone has its data carried by the others, in
equal parts. The routes of every chunk are then ordered and scheduled on the whole cluster.

>>> from taccl_py.topology.loader import load_topology
>>> from taccl_py.topology.failures import Faults, apply_faults
>>> topo = apply_faults(load_topology("dgx-h100", 2), Faults(exclude=("nic:nic0@node1",)))
>>> sorted(node_patterns(topo))
['direct']
"""

from __future__ import annotations

from collections import defaultdict

from ...collectives import Collective
from ...errors import TacclError
from ...topology.graph import distances
from ...topology.model import LEAF_SPINE, Topology
from .ordering import Send, remaining
from .routing import Edge, Routes, relaxed_makespan

#: a node-level tree per source node: (from node, to node) hops, parents first
Pattern = dict[int, list[tuple[int, int]]]


def node_ranks(topology: Topology, node: int) -> range:
    g = topology.gpus_per_node
    return range(node * g, (node + 1) * g)


def node_patterns(topology: Topology) -> dict[str, Pattern]:
    """The node-level trees tried, by name: ``direct`` (every node from the source's);
    on a leaf/spine fabric with several leaves also ``leaves`` (every node of the
    source's leaf directly; one node of each other leaf, rotating with the source, which
    forwards inside its leaf), so each chunk crosses the spine once per leaf."""
    n = topology.nodes
    out = {"direct": {a: [(a, b) for b in range(n) if b != a] for a in range(n)}}
    fab = topology.fabric
    if fab is None or fab.kind != LEAF_SPINE:
        return out
    leaves: dict[int, list[int]] = defaultdict(list)
    for node in range(n):
        leaves[node // fab.nodes_per_leaf].append(node)
    if len(leaves) < 2:
        return out
    pattern: Pattern = {}
    for a in range(n):
        mine = a // fab.nodes_per_leaf
        hops = [(a, b) for b in leaves[mine] if b != a]
        for leaf, members in sorted(leaves.items()):
            if leaf == mine:
                continue
            entry = members[a % len(members)]
            hops.append((a, entry))
            hops += [(entry, b) for b in members if b != entry]
        pattern[a] = hops
    out["leaves"] = pattern
    return out


def assign(
    topology: Topology,
    collective: Collective,
    chunk_bytes: float,
    trees: dict[int, dict[int, list[Edge]]],
    pattern: Pattern,
) -> dict[int, list[Edge]]:
    """Every chunk's route: its source's tree in its node, a network hop per node-level
    hop of ``pattern``, and the receiving GPU's tree in each node it enters.

    ``trees`` is node -> local GPU -> out-tree (local ids). A hop from node ``x`` to ``y``
    is sent, where it can be, by the GPU the chunk entered ``x`` by (its source on its
    own node) to the same local GPU of ``y`` (its rail peer): on healthy identical nodes
    that is every hop. The other hops are placed afterwards, each on the sending and
    receiving GPUs whose connection's busiest resource (NICs, uplink shares) ends least
    loaded, then whose resources do in all, then on the same local GPU at both ends,
    then the lowest ids: a GPU whose NIC is gone has its data carried by the others in
    equal parts, to the GPUs that receive least.
    """
    g = topology.gpus_per_node
    conns = topology.connections
    bw = topology.resource_bandwidth
    nic_ranks = {
        x: [r for r in node_ranks(topology, x) if topology.nic_of(r)] for x in range(topology.nodes)
    }
    load: dict[str, float] = defaultdict(float)

    def take(r: int, q: int) -> None:
        for res in conns[(r, q)].resources:
            load[res] += chunk_bytes / bw[res]

    cap = _fair_loads(topology, collective, chunk_bytes, pattern)
    # pass 1: the natural hops, each while its NICs stay within their fair load (a slow
    # NIC takes its bandwidth's share); a hop's sender is known once the hop into its
    # node is placed, so chunks walk their patterns and leave the other hops for pass 2
    placed: dict[tuple[int, int, int], tuple[int, int]] = {}  # (chunk, x, y) -> (r, q)
    for c in range(collective.num_chunks):
        s = collective.precondition(c)[0]
        entry = {topology.node_of(s): s}
        for x, y in pattern[topology.node_of(s)]:
            r = entry.get(x)
            if r is None or (r, y * g + r % g) not in conns:
                continue
            q = y * g + r % g
            nics = [name for name in conns[(r, q)].resources if name in cap]
            if any(load[n] + chunk_bytes / bw[n] > cap[n] * (1 + 1e-9) for n in nics):
                continue
            placed[c, x, y] = (r, q)
            entry[y] = q
            take(r, q)
    out: dict[int, list[Edge]] = {}
    block: dict[tuple[int, int, int, int], tuple[int, int]] = {}  # a block's pass-2 hops
    for c in range(collective.num_chunks):
        s = collective.precondition(c)[0]
        a = topology.node_of(s)
        edges = _tree(trees, g, a, s - a * g)
        entry = {a: s}
        for x, y in pattern[a]:
            if (c, x, y) in placed and placed[c, x, y][0] == entry[x]:
                r, q = placed[c, x, y]
            else:
                if (c, x, y) in placed:  # its sender moved in pass 2: place it again
                    r, q = placed.pop((c, x, y))
                    for res in conns[(r, q)].resources:
                        load[res] -= chunk_bytes / bw[res]
                # a block's chunks share their hops, so each placed hop is one peer pair
                # for the whole block (which the round-robin order keeps free of clashes)
                here = (s, entry[x], x, y)
                if here not in block:
                    block[here] = _least_loaded(
                        topology, nic_ranks[x], nic_ranks[y], entry[x], load, chunk_bytes
                    )
                r, q = block[here]
                take(r, q)
            edges.append((r, q))
            edges += _tree(trees, g, y, q - y * g)
            entry[y] = q
        out[c] = _tree_edges(edges, s)
    return out


def _fair_loads(
    topology: Topology, collective: Collective, chunk_bytes: float, pattern: Pattern
) -> dict[str, float]:
    """Each NIC's fair load (s): the network hops out of (into) its node spread over the
    node's NICs in proportion to their bandwidth, rounded up to a whole hop."""
    hops_out: dict[int, int] = defaultdict(int)
    hops_in: dict[int, int] = defaultdict(int)
    for c in range(collective.num_chunks):
        for x, y in pattern[topology.node_of(collective.precondition(c)[0])]:
            hops_out[x] += 1
            hops_in[y] += 1
    total: dict[int, float] = defaultdict(float)
    for nic in topology.nics:
        total[nic.node] += nic.bandwidth
    cap = {}
    for nic in topology.nics:
        for prefix, hops in (("nicout:", hops_out), ("nicin:", hops_in)):
            share = hops[nic.node] * chunk_bytes / total[nic.node]  # s, if spread evenly
            whole = chunk_bytes / nic.bandwidth
            cap[prefix + nic.name] = -(-share // whole) * whole
    return cap


def _tree(trees: dict[int, dict[int, list[Edge]]], g: int, node: int, local: int) -> list[Edge]:
    base = node * g
    return [(base + u, base + v) for u, v in trees[node][local]]


def _least_loaded(
    topology: Topology,
    senders: list[int],
    receivers: list[int],
    held: int,
    load: dict[str, float],
    chunk_bytes: float,
) -> tuple[int, int]:
    """The (sender, receiver) whose connection's busiest resource ends least loaded, then
    whose resources end least loaded in all."""
    g = topology.gpus_per_node
    conns, bw = topology.connections, topology.resource_bandwidth
    best = None
    for r in senders:
        for q in receivers:
            conn = conns.get((r, q))
            if conn is None:
                continue
            after = [load[res] + chunk_bytes / bw[res] for res in conn.resources]
            key = (max(after), sum(after), r != held, (q - r) % g != 0, r, q)
            if best is None or key < best[0]:
                best = (key, r, q)
    if best is None:
        raise TacclError(
            f"{topology.label}: no network connection from node {topology.node_of(held)} "
            f"to the next node of the pattern"
        )
    return best[1], best[2]


def _tree_edges(edges: list[Edge], src: int) -> list[Edge]:
    """``edges`` less those into a rank already reached (a relay's intra-node tree
    reaches GPUs the source's tree already did only on the source's node), sorted."""
    reached = {src}
    keep = []
    for u, v in edges:
        if v not in reached:
            reached.add(v)
            keep.append((u, v))
    depth = distances(keep, src)
    assert len(depth) == len(reached)
    return sorted(keep)


def hetero_routes(
    topology: Topology,
    collective: Collective,
    chunk_bytes: float,
    trees: dict[int, dict[int, list[Edge]]],
    pattern: Pattern,
) -> Routes:
    """:func:`assign`'s routes as :class:`.routing.Routes` (not from a MILP)."""
    edges = assign(topology, collective, chunk_bytes, trees, pattern)
    return Routes(
        collective,
        chunk_bytes,
        edges,
        relaxed_makespan(topology, collective, chunk_bytes, edges),
        None,
        False,
        0.0,
        0,
    )


def hetero_rules(
    topology: Topology, collective: Collective, sends: list[Send]
) -> list[tuple[str, list[float], bool, bool]]:
    """Priority rules for a whole cluster's sends (name, priority per send, own data
    first, senders only: see :func:`.ordering.order`): ``rounds`` and ``critical path``.

    ``rounds``: node ``a`` sends its GPUs' own data to node ``a + 1``, then ``a + 2``, ...
    (chunk by chunk), a round-robin in which every NIC sends to and receives from one
    peer at a time; the hops placed to carry a lost NIC's share go last; receiving NICs
    take the first ready, as the runtime does. Sends inside a node go by critical path.
    """
    g, n, c = topology.gpus_per_node, topology.nodes, collective.chunkup
    rest = remaining(sends)
    rounds = []
    for i, s in enumerate(sends):
        if topology.connections[s.src, s.dst].kind != "network":
            rounds.append(rest[i])
            continue
        src = collective.precondition(s.chunk)[0]
        natural = s.src == src and (s.dst - s.src) % g == 0
        offset = (s.dst // g - src // g) % n if natural else n
        rounds.append(-float(offset * c + s.chunk % c))
    return [("rounds", rounds, False, True), ("critical path", rest, False, False)]

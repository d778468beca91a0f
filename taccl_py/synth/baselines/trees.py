"""NCCL's double-binary-tree AllReduce baseline (src/graph/trees.cc, connect.cc).

NCCL builds its trees over *nodes*: ``ncclGetDtree`` gives two complementary binary
trees over node indices (tree 0 the in-order binary tree of ``ncclGetBtree``, tree 1 its
mirror for an even node count, its shift by one for an odd one), so each node is an
interior node of at most one of them. Inside a node a tree channel is a chain of the
node's GPUs (the path of a ring channel, entering at a NIC's GPU): each GPU's parent is
the one before it. The chain's head (first GPU) connects to the parent node, on that
node's first GPU if it is the parent's child 1 and on its second GPU if child 0 (NCCL's
``NCCL_TOPO_PATTERN_BALANCED_TREE``, the pattern it searches first; where that GPU has
no NIC, on the first, as its plain ``NCCL_TOPO_PATTERN_TREE``). NCCL takes as many
tree channels as ring channels and duplicates them, channel c on tree 0 and channel
c + C on tree 1.

Here the chains are the node paths of :func:`~.ring.find_rings`' rings (C of them), and
tree channel c + tree·C carries sub-chunk j·2C + c + tree·C of every block in round j, so
each of the 2C channels moves an equal share. Each chunk is reduced up its tree (a
node sends its partial sum once all its children's have arrived, the parent reducing it
into its own) and the root's total is then broadcast down. Chunks are independent and
share step numbers, so they pipeline.

A tree edge without a connection (only on unusual topologies) is relayed over a
shortest route. A relay forwards a partial sum unchanged (it stores it in its own slot of
the chunk, then sends it on), which is only safe once the relay has sent its own partial
sum up and before it receives the final value; the schedule keeps to that, and relays
one partial at a time.
"""

from __future__ import annotations

from ...collectives import ALLREDUCE, Collective
from ...errors import TacclError, TopologyError
from ...ir.algorithm import Algorithm, Transfer
from ...topology.graph import adjacency, bfs_order, shortest_path
from ...topology.model import Topology
from ..checks import require_ranks
from .ring import find_rings


def btree_parent(n: int, pos: int) -> int:
    """Parent position of ``pos`` in NCCL's in-order binary tree over ``n`` positions (-1: root)."""
    if pos == 0:
        return -1
    bit = pos & -pos
    up = (pos ^ bit) | (bit << 1)
    return up if up < n else pos ^ bit


def tree_schedule(topology: Topology, parent: list[int]) -> list[tuple[int, int, int, bool]]:
    """(step, src, dst, reduce) of one chunk: reduce up rank tree ``parent``, then broadcast."""
    n = len(parent)
    root = parent.index(-1)
    succ = adjacency(topology.connections)
    children: dict[int, list[int]] = {r: [] for r in range(n)}
    for r, p in enumerate(parent):
        if p >= 0:
            children[p].append(r)

    def ancestors(r: int) -> set[int]:
        out = set()
        while r >= 0:
            out.add(r)
            r = parent[r]
        return out

    out: list[tuple[int, int, int, bool]] = []
    # -- reduce phase --------------------------------------------------------
    arrived: dict[int, int] = {}  # rank -> step its partial reached its parent
    sent: dict[int, int] = {}  # rank -> step it sent its own partial up
    busy: dict[int, int] = {}  # relay -> last step it forwarded a partial
    pending = set(r for r in range(n) if r != root)
    while pending:
        ready = sorted(
            (max((arrived[c] + 1 for c in children[r]), default=0), r)
            for r in pending
            if all(c in arrived for c in children[r])
        )
        progressed = False
        for at, r in ready:
            p = parent[r]
            banned = ancestors(p)

            def relay(x: int, banned: set[int] = banned) -> bool:
                """A rank that has sent its own partial, outside ``p``'s ancestry."""
                return x in sent and x not in banned

            route = shortest_path(succ, r, p, through=relay)
            if route is None:
                continue
            step = at
            for i in range(len(route) - 1):
                a, b = route[i], route[i + 1]
                if b != p:  # b relays: it must have sent its own partial, and be free
                    step = max(step, sent[b] + 1, busy.get(b, -1) + 1)
                out.append((step, a, b, b == p))
                if i == 0:
                    sent[r] = step
                else:
                    busy[a] = step
                step += 1
            arrived[r] = step - 1
            pending.discard(r)
            progressed = True
            break  # recompute readiness: relays may have become available
        if not progressed:
            raise TacclError(f"{topology.label}: no relay schedule for the reduction tree {parent}")
    # -- broadcast phase -----------------------------------------------------
    have = {root: max((arrived[c] + 1 for c in children[root]), default=0)}
    for r in bfs_order(((p, c) for c, p in enumerate(parent) if p >= 0), root):
        if r == root:
            continue
        p = parent[r]
        route = shortest_path(succ, p, r)
        if route is None:
            raise TopologyError(f"{topology.label}: rank {p} cannot reach rank {r}")
        step = have[p]
        for a, b in zip(route, route[1:]):
            step = max(step, have.get(a, step))
            out.append((step, a, b, False))
            have[b] = min(have.get(b, step + 1), step + 1)
            step += 1
    return out


def dtree(n: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """(parent, child type) of every node in NCCL's two trees over ``n`` nodes.

    The parent is -1 at the root; the child type is 0 where the node is its parent's
    first child (smaller in the tree's own numbering), else 1 (``parentChildType``).

    >>> dtree(4)
    ([(-1, 0), (2, 0), (0, 1), (2, 1)], [(1, 1), (3, 1), (1, 0), (-1, 0)])
    """

    def btree(p: int) -> tuple[int, int]:
        up = btree_parent(n, p)
        return up, int(up >= 0 and p > up)

    a = [btree(p) for p in range(n)]
    b = []
    for p in range(n):
        q = n - 1 - p if n % 2 == 0 else (p - 1) % n
        up, kind = btree(q)
        if up >= 0:
            up = n - 1 - up if n % 2 == 0 else (up + 1) % n
        b.append((up, kind))
    return a, b


def tree_parents(
    topology: Topology, node_tree: list[tuple[int, int]], chain: tuple[int, ...]
) -> list[int]:
    """Rank parents of one tree channel: ``chain`` (local GPUs) inside every node, node
    heads joined as ``node_tree`` (from :func:`dtree`) says: a child 0 on the parent's
    second GPU where that GPU has a NIC (NCCL's balanced tree), else on its first (NCCL's
    plain tree, its fallback)."""
    g = topology.gpus_per_node
    parent = [-1] * topology.num_ranks
    for node, (up, kind) in enumerate(node_tree):
        ranks = [node * g + v for v in chain]
        for child, p in zip(ranks[1:], ranks):
            parent[child] = p
        if up >= 0:
            balanced = kind == 0 and g > 1 and topology.nic_of(chain[1]) is not None
            parent[ranks[0]] = up * g + chain[1 if balanced else 0]
    return parent


def tree_algorithm(topology: Topology, collective: Collective) -> Algorithm:
    """NCCL's double-binary-tree AllReduce of ``collective`` on ``topology``.

    >>> from taccl_py.topology.loader import load_topology
    >>> alg = tree_algorithm(load_topology("dgx-a100", 2), Collective("allreduce", 16))
    >>> alg.nchannels, alg.collective.chunkup, alg.meta["chains"][0]
    (16, 16, [0, 1, 2, 3, 4, 5, 6, 7])
    """
    if collective.kind != ALLREDUCE:
        raise TacclError("method tree builds allreduce only")
    require_ranks(topology, collective)
    g, n, k = topology.gpus_per_node, collective.num_ranks, collective.chunkup
    if n == 1:
        return Algorithm(
            "tree",
            collective,
            [],
            topology.label,
            meta={"trees": [[-1], [-1]], "chains": [[0]], "relayed": False},
        )
    try:
        chains = [tuple(ring[:g]) for ring in find_rings(topology)]
    except TopologyError:
        chains = [tuple(range(g))]
    node_trees = dtree(topology.nodes)
    trees = [
        tree_parents(topology, node_tree, chain) for node_tree in node_trees for chain in chains
    ]
    channels = len(trees)
    transfers = []
    for ch, parent in enumerate(trees):
        for step, src, dst, reduce in tree_schedule(topology, parent):
            transfers += [
                Transfer(step, 0.0, src, dst, (c * k + j) * channels + ch, reduce, channel=ch)
                for c in range(n)
                for j in range(k)
            ]
    relayed = any(
        p >= 0 and ((r, p) not in topology.connections or (p, r) not in topology.connections)
        for parent in trees
        for r, p in enumerate(parent)
    )
    return Algorithm(
        "tree",
        collective.with_chunkup(k * channels),
        transfers,
        topology.label,
        meta={"trees": trees, "chains": [list(c) for c in chains], "relayed": relayed},
    )

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

from ...collectives import ALLREDUCE, BROADCAST, GATHER, REDUCE, Collective
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


def _children(parent: list[int]) -> dict[int, list[int]]:
    children: dict[int, list[int]] = {r: [] for r in range(len(parent))}
    for r, p in enumerate(parent):
        if p >= 0:
            children[p].append(r)
    return children


def tree_schedule(topology: Topology, parent: list[int]) -> list[tuple[int, int, int, bool]]:
    """(step, src, dst, reduce) of one chunk: reduce up rank tree ``parent``, then broadcast."""
    succ = adjacency(topology.connections)
    out, done = reduce_schedule(topology, parent, succ)
    return out + broadcast_schedule(topology, parent, succ, done)


def reduce_schedule(
    topology: Topology, parent: list[int], succ=None
) -> tuple[list[tuple[int, int, int, bool]], int]:
    """(step, src, dst, reduce) of one chunk reduced up rank tree ``parent`` to its root,
    and the step from which the root holds the total."""
    n = len(parent)
    root = parent.index(-1)
    succ = adjacency(topology.connections) if succ is None else succ
    children = _children(parent)

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
    return out, max((arrived[c] + 1 for c in children[root]), default=0)


def broadcast_schedule(
    topology: Topology, parent: list[int], succ=None, first: int = 0
) -> list[tuple[int, int, int, bool]]:
    """(step, src, dst, reduce) of one chunk sent down rank tree ``parent`` from its root
    from step ``first`` on (an edge without a connection over a shortest route)."""
    root = parent.index(-1)
    succ = adjacency(topology.connections) if succ is None else succ
    out: list[tuple[int, int, int, bool]] = []
    have = {root: first}
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


def rooted_parents(topology: Topology, root: int, chain: tuple[int, ...]) -> list[int]:
    """Rank parents of a tree rooted at ``root``: NCCL's in-order binary tree over the nodes
    numbered from the root's node (node position 0 is the tree's root), ``chain`` (local
    GPUs, from a ring channel) inside every node, a child node's head joined to its parent
    node as in :func:`tree_parents`. In the root's node the chain starts at the root and
    wraps around (where its last GPU reaches its first; otherwise it runs both ways from
    the root)."""
    g, k = topology.gpus_per_node, topology.nodes
    home = topology.node_of(root)
    node_tree = []
    for node in range(k):
        pos = (node - home) % k
        up = btree_parent(k, pos)
        node_tree.append((-1 if up < 0 else (up + home) % k, int(up >= 0 and pos > up)))
    parent = tree_parents(topology, node_tree, chain)
    base, at = home * g, chain.index(topology.local(root))
    ranks = [base + v for v in chain]
    if (ranks[-1], ranks[0]) in topology.connections or at == 0:
        order = ranks[at:] + ranks[:at]
        for child, p in zip(order[1:], order):
            parent[child] = p
    else:
        for i in range(g):
            parent[ranks[i]] = ranks[i - 1] if i > at else ranks[i + 1]
    parent[root] = -1
    return parent


def _route(topology: Topology, succ, a: int, b: int) -> tuple[int, ...]:
    route = (a, b) if (a, b) in topology.connections else shortest_path(succ, a, b)
    if route is None:
        raise TopologyError(f"{topology.label}: rank {a} cannot reach rank {b}")
    return route


def _rooted_tree(
    topology: Topology, collective: Collective, chains: list[tuple[int, ...]]
) -> Algorithm:
    """The rooted collectives over one tree per chain (see :func:`tree_algorithm`)."""
    n, k, kind, root = (
        collective.num_ranks,
        collective.chunkup,
        collective.kind,
        collective.root,
    )
    channels = len(chains)
    succ = adjacency(topology.connections)
    trees = [rooted_parents(topology, root, chain) for chain in chains]
    transfers = []
    for ch, parent in enumerate(trees):
        if kind in (BROADCAST, REDUCE):
            hops = (
                broadcast_schedule(topology, parent, succ)
                if kind == BROADCAST
                else reduce_schedule(topology, parent, succ)[0]
            )
            transfers += [
                Transfer(step, 0.0, src, dst, (c * k + j) * channels + ch, red, channel=ch)
                for step, src, dst, red in hops
                for c in range(n)
                for j in range(k)
            ]
            continue
        paths = {}  # rank -> the ranks its block passes between it and the root
        for r in range(n):
            path, v = [r], r
            while parent[v] >= 0:  # gather: up the tree; scatter: down it, built backwards
                if kind == GATHER:
                    path += _route(topology, succ, v, parent[v])[1:]
                else:
                    path += reversed(_route(topology, succ, parent[v], v)[:-1])
                v = parent[v]
            paths[r] = path if kind == GATHER else path[::-1]
        depth = max(len(p) for p in paths.values())
        for r, path in paths.items():
            first = 0 if kind == GATHER else depth - len(path)  # scatter: farthest first
            transfers += [
                Transfer(first + i, 0.0, a, b, (r * k + j) * channels + ch, channel=ch)
                for i, (a, b) in enumerate(zip(path, path[1:]))
                for j in range(k)
            ]
    return Algorithm(
        "tree",
        collective.with_chunkup(k * channels),
        transfers,
        topology.label,
        meta={"trees": trees, "chains": [list(c) for c in chains]},
    )


def _chains(topology: Topology) -> list[tuple[int, ...]]:
    """The chain through a node of each ring channel (NCCL's trees run through them)."""
    try:
        return [tuple(ring[: topology.gpus_per_node]) for ring in find_rings(topology)]
    except TopologyError:
        return [tuple(range(topology.gpus_per_node))]


def _allreduce_trees(topology: Topology, chains: list[tuple[int, ...]]) -> list[list[int]]:
    """The AllReduce's trees (parent per rank): both node trees through each chain."""
    return [
        tree_parents(topology, tree, chain) for tree in dtree(topology.nodes) for chain in chains
    ]


def tree_transfer_count(topology: Topology, collective: Collective) -> int | None:
    """How many transfers :func:`tree_algorithm` makes for an AllReduce (None for the
    others), without making them (tens of millions at 1,024 ranks).

    >>> from taccl_py.topology.loader import load_topology
    >>> topo, coll = load_topology("dgx-a100", 2), Collective("allreduce", 16)
    >>> tree_transfer_count(topo, coll) == len(tree_algorithm(topo, coll).transfers)
    True
    """
    if collective.kind != ALLREDUCE or collective.num_ranks < 2:
        return None
    per_chunk = collective.num_ranks * collective.chunkup
    trees = _allreduce_trees(topology, _chains(topology))
    return per_chunk * sum(len(tree_schedule(topology, parent)) for parent in trees)


def tree_algorithm(topology: Topology, collective: Collective) -> Algorithm:
    """NCCL's double-binary-tree AllReduce of ``collective`` on ``topology``, or a rooted
    collective on one tree per ring channel (:func:`rooted_parents`: a binary tree over
    the nodes from the root's, chains inside them), each channel moving an equal share of
    every chunk, pipelined as the AllReduce's: Broadcast down the tree, Reduce up it (a
    rank sends its partial sum once its children's have arrived), Gather every block up
    its rank's path to the root (own block first), Scatter every block down the path to
    its rank (the deepest ranks' blocks first).

    >>> from taccl_py.topology.loader import load_topology
    >>> alg = tree_algorithm(load_topology("dgx-a100", 2), Collective("allreduce", 16))
    >>> alg.nchannels, alg.collective.chunkup, alg.meta["chains"][0]
    (16, 16, [0, 1, 2, 3, 4, 5, 6, 7])
    >>> bc = tree_algorithm(load_topology("dgx-a100", 2), Collective("broadcast", 16, root=9))
    >>> bc.nchannels, bc.meta["trees"][0][9], bc.meta["trees"][0][0]
    (8, -1, 8)
    """
    if collective.kind != ALLREDUCE and not collective.rooted:
        raise TacclError(
            f"method tree builds allreduce and the rooted collectives, not {collective.kind}"
        )
    require_ranks(topology, collective)
    n, k = collective.num_ranks, collective.chunkup
    if n == 1:
        return Algorithm(
            "tree",
            collective,
            [],
            topology.label,
            meta={"trees": [[-1], [-1]], "chains": [[0]], "relayed": False},
        )
    chains = _chains(topology)
    if collective.rooted:
        return _rooted_tree(topology, collective, chains)
    trees = _allreduce_trees(topology, chains)
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

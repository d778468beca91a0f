"""Intra-node routing of a decomposed AllGather, solved once per kind of node and kept.

The decompositions (:mod:`.decompose`, :mod:`.hetero`) route each node's AllGather with
the routing MILP on that node alone. A solution proven optimal depends only on the
node's links and switches and the chunk size, so it is kept on disk (:func:`cache_dir`)
and the next run with that kind of node starts from it: a re-synthesis after a NIC
fails reuses the healthy run's node routing instead of solving it again. Entries that
do not fit the node (a damaged file, another version) are ignored and solved again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import replace
from pathlib import Path

from ...collectives import ALLGATHER, Collective
from ...topology.graph import distances
from ...topology.model import Topology
from .routing import Edge, route
from .sketch import default_sketch

#: a directory for solved node routings, or "off"; default $TACCL_CACHE_DIR/routes
ROUTE_CACHE_ENV = "TACCL_ROUTE_CACHE"
_FORMAT = "node-routes-1"

#: (node kind, size) -> (trees, optimal), for one synthesis call
Memo = dict[str, tuple[dict[int, list[Edge]], bool]]


def local_topology(topology: Topology, node: int) -> Topology:
    """Node ``node`` alone, its ranks renumbered 0.. (links and switches; no NICs)."""
    base = node * topology.gpus_per_node
    return replace(
        topology,
        name=f"{topology.name}-node{node}",
        nodes=1,
        cluster=False,
        fabric=None,
        node_types=(),
        links=tuple(
            replace(lk, src=lk.src - base, dst=lk.dst - base)
            for lk in topology.links
            if topology.node_of(lk.src) == node
        ),
        switches=tuple(
            replace(sw, node=0, ranks=tuple(r - base for r in sw.ranks))
            for sw in topology.switches
            if sw.node == node
        ),
        nics=(),
    )


def _signature(node: Topology) -> str:
    """What a node's intra-node routing depends on: its links and switches."""
    parts = [("link", lk.src, lk.dst, lk.bandwidth, lk.alpha) for lk in node.links] + [
        ("switch", sw.ranks, sw.bandwidth, sw.alpha) for sw in node.switches
    ]
    return repr((_FORMAT, node.gpus_per_node, sorted(parts, key=repr)))


def cache_dir() -> Path | None:
    """Where solved node routings are kept: ``$TACCL_ROUTE_CACHE`` (``off``: nowhere),
    else ``$TACCL_CACHE_DIR/routes``, else ``$XDG_CACHE_HOME`` or ``~/.cache``, then
    ``taccl_py/routes``."""
    own = os.environ.get(ROUTE_CACHE_ENV)
    if own:
        return None if own.strip().lower() == "off" else Path(own)
    base = os.environ.get("TACCL_CACHE_DIR")
    if base:
        return Path(base) / "routes"
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "taccl_py" / "routes"


def _fits(node: Topology, trees: dict[int, list[Edge]]) -> bool:
    """Whether ``trees`` are out-trees of every GPU of ``node`` over its connections."""
    g = node.gpus_per_node
    if sorted(trees) != list(range(g)):
        return False
    conns = node.connections
    for k, edges in trees.items():
        if any(e not in conns for e in edges) or len(edges) != g - 1:
            return False
        if len(distances(edges, k)) != g:
            return False
    return True


def _load(path: Path, node: Topology) -> dict[int, list[Edge]] | None:
    try:
        data = json.loads(path.read_text())
        trees = {int(k): [(int(u), int(v)) for u, v in es] for k, es in data.items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return None  # no entry, or a damaged one
    return trees if _fits(node, trees) else None


def _store(path: Path, trees: dict[int, list[Edge]]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({str(k): v for k, v in trees.items()}))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home: the cache only saves time


def node_trees_for(
    topology: Topology,
    node: int,
    chunk_bytes: float,
    *,
    time_limit: float,
    memo: Memo | None = None,
) -> tuple[dict[int, list[Edge]], bool]:
    """Local GPU -> its out-tree inside node ``node`` (local ids), and whether it is a
    proven optimum (solved now, or kept from an earlier run).

    Every GPU fans out ``nodes`` chunks per source (its own and the relayed ones), so the
    MILP is solved for chunks of ``nodes * chunk_bytes``. ``memo`` (one synthesis
    call's) answers again for another node of the same kind, optimal or not.

    >>> from taccl_py.topology.loader import load_topology
    >>> trees, optimal = node_trees_for(load_topology("dgx-h100", 2), 1, 1 << 24, time_limit=5)
    >>> sorted(trees) == list(range(8)), all(len(t) == 7 for t in trees.values())
    (True, True)
    """
    node_topo = local_topology(topology, node)
    g = topology.gpus_per_node
    if g == 1:
        return {0: []}, True
    size = chunk_bytes * topology.nodes
    key = hashlib.sha256(f"{_signature(node_topo)}|{size:.6g}".encode()).hexdigest()[:32]
    if memo is not None and key in memo:
        return memo[key]
    where = cache_dir()
    path = None if where is None else where / f"{key}.json"
    kept = None if path is None else _load(path, node_topo)
    if kept is not None:
        got = (kept, True)
    else:
        routes = route(
            node_topo,
            Collective(ALLGATHER, g),
            size,
            time_limit=time_limit,
            sketch=default_sketch(node_topo),
        )
        got = ({k: routes.edges[k] for k in range(g)}, routes.optimal)
        if routes.optimal and path is not None:
            _store(path, got[0])
    if memo is not None:
        memo[key] = got
    return got

"""Loading topologies: the built-in library, users' YAML files, replication over nodes."""

from __future__ import annotations

import os
from collections import Counter
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import cast

import yaml

from ..errors import TopologyError
from ..util.fileio import display_path, read_input
from .model import (
    FULL_BISECTION,
    LEAF_SPINE,
    RAIL_ONLY,
    RAIL_OPTIMIZED,
    Fabric,
    Link,
    Nic,
    Switch,
    Topology,
)
from .schema import MAX_RANKS, check_document, expand_gpus

MAX_FILE_BYTES = 1 << 20
MAX_FLOW_DEPTH = 64
#: most YAML nodes a document may have once its aliases are expanded: a "billion laughs"
#: alias bomb is refused before it is built (no topology or sketch comes near this)
MAX_YAML_NODES = 1 << 18
#: longest integer literal: a longer one cannot be in range, and Python's int() of a
#: sexagesimal (1:2:3) or 4,300-digit literal is slow or fails
MAX_INT_CHARS = 64
_GB = 1e9
_US_PER_S = 1e6


def _builtin_dir() -> Traversable:
    """The packaged copy (wheel install) if present, else ``<repo>/topologies``."""
    packaged = resources.files("taccl_py") / "_data" / "topologies"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "topologies"


def _builtin_files() -> dict[str, Traversable]:
    directory = _builtin_dir()
    if not directory.is_dir():
        return {}
    return {
        f.name[: -len(".yaml")]: f
        for f in directory.iterdir()
        if f.name.endswith(".yaml") and f.is_file()
    }


def builtin_names() -> list[str]:
    """Names of the built-in node topologies, sorted."""
    return sorted(_builtin_files())


def _cluster_files() -> dict[str, Traversable]:
    directory = _builtin_dir() / "clusters"
    if not directory.is_dir():
        return {}
    return {
        f.name[: -len(".yaml")]: f
        for f in directory.iterdir()
        if f.name.endswith(".yaml") and f.is_file()
    }


def cluster_names() -> list[str]:
    """Names of the built-in example clusters (fabrics, mixed nodes), sorted."""
    return sorted(_cluster_files())


class _Loader(yaml.SafeLoader):
    """A safe YAML loader that rejects a key repeated in one mapping and overlong
    integers."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode):
                key = (key_node.tag, key_node.value)
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {key_node.value!r}", key_node.start_mark
                    )
                seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node):
        if len(node.value) > MAX_INT_CHARS:
            raise yaml.constructor.ConstructorError(
                None, None, f"integer longer than {MAX_INT_CHARS} characters", node.start_mark
            )
        return super().construct_yaml_int(node)


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return node.value
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []


def _expanded_size(root: yaml.Node) -> int | None:
    """Nodes in the document with every alias expanded (an alias is the node it names,
    shared, so this is a walk of each node once); None if an alias is inside the node it
    names (a document of infinite size)."""
    size: dict[int, int] = {}
    open_: set[int] = set()  # entered, not finished: the current node and its ancestors
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_.discard(key)
            size[key] = 1 + sum(size[id(c)] for c in _children(node))
        elif key in open_:
            return None
        elif key not in size:
            open_.add(key)
            stack.append((node, True))
            stack.extend((c, False) for c in _children(node))
    return size[id(root)]


def _load_yaml(text: str, where: str) -> object:
    """A YAML document's data, its aliases' expansion bounded by :data:`MAX_YAML_NODES`."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        size = _expanded_size(node)
        if size is None:
            raise TopologyError(f"{where}: a YAML alias refers to a node that contains it")
        if size > MAX_YAML_NODES:
            raise TopologyError(
                f"{where}: {size} YAML nodes once aliases are expanded, more "
                f"than the limit of {MAX_YAML_NODES}"
            )
        return loader.construct_document(node)
    finally:
        loader.dispose()


def _check_flow_depth(text: str, where: str) -> None:
    """Reject deeply nested brackets up front: PyYAML scans them in quadratic time."""
    depth = 0
    for line_no, line in enumerate(text.splitlines(), 1):
        for ch in line:
            if ch in "[{":
                depth += 1
                if depth > MAX_FLOW_DEPTH:
                    raise TopologyError(
                        f"{where}: line {line_no}: brackets nested more than {MAX_FLOW_DEPTH} deep"
                    )
            elif ch in "]}" and depth:
                depth -= 1


def parse_yaml(data: bytes, where: str) -> object:
    """Bytes of a YAML file -> Python data, or a one-line TopologyError."""
    if len(data) > MAX_FILE_BYTES:
        raise TopologyError(
            f"{where}: too large for a YAML file: {len(data)} bytes, the limit is {MAX_FILE_BYTES}"
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise TopologyError(
            f"{where}: not a UTF-8 text file (bad byte at offset {exc.start})"
        ) from None
    if not text.strip():
        raise TopologyError(f"{where}: empty file")
    _check_flow_depth(text, where)
    try:
        doc = _load_yaml(text, where)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(str(exc.problem or exc.context or "invalid YAML").split())
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise TopologyError(f"{where}: {at}invalid YAML: {problem}") from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1
        raise TopologyError(
            f"{where}: line {line}: invalid YAML: unacceptable character #x{exc.character:04x}"
        ) from None
    except yaml.YAMLError as exc:
        raise TopologyError(f"{where}: YAML error: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise TopologyError(f"{where}: YAML nested too deeply") from None
    if doc is None:
        raise TopologyError(f"{where}: empty file (only comments)")
    return doc


def _read(path: Path) -> bytes:
    return read_input(path, MAX_FILE_BYTES, "topology file", TopologyError)


def _load_document(data: bytes, where: str, every: bool = False) -> dict:
    doc = parse_yaml(data, where)
    check_document(doc, where, every)
    return cast(dict, doc)  # a valid topology document is a mapping


def load_document(path: str | os.PathLike) -> dict:
    """The data of a valid topology file (a one-line TopologyError if it is not one)."""
    return _load_document(_read(Path(path)), display_path(os.fspath(path)))


def validate_file(path: str | os.PathLike) -> None:
    """Raise a TopologyError if ``path`` is not a valid topology file, one line for each
    problem found (a cluster file's groups must also load)."""
    path = Path(path)
    doc = _load_document(_read(path), display_path(path), every=True)
    if "groups" in doc:
        _build_cluster(doc, path.stem, display_path(path), 1, path.parent)


def _network(doc: dict) -> tuple[str, Fabric | None]:
    """A validated document's network kind and fabric (None: one switch or rails only)."""
    fab = doc.get("fabric")
    if fab is None:
        return doc.get("network", FULL_BISECTION), None
    kind = fab["kind"]
    if kind == RAIL_OPTIMIZED and not fab.get("spine", True):
        return RAIL_ONLY, None
    if kind in (FULL_BISECTION, RAIL_ONLY):
        return kind, None
    ratio = float(fab.get("oversubscription", 1))
    if kind == RAIL_OPTIMIZED:
        return FULL_BISECTION, Fabric(RAIL_OPTIMIZED, oversubscription=ratio)
    uplink = fab.get("uplink_bandwidth")
    return FULL_BISECTION, Fabric(
        LEAF_SPINE, int(fab["nodes_per_leaf"]), ratio, None if uplink is None else uplink * _GB
    )


def _node_parts(doc: dict, node: int, base: int) -> tuple[list[Link], list[Switch], list[Nic]]:
    """The links, switches and NICs of a validated node document as node ``node``, whose
    first rank is ``base``."""
    n = int(doc["gpus_per_node"])
    links = []
    for entry in doc.get("links", []):
        count = int(entry.get("count", 1))
        for a, b in entry["pairs"]:
            edges = [(a, b)] if entry.get("directed", False) else [(a, b), (b, a)]
            links += [
                Link(
                    base + int(s),
                    base + int(d),
                    bandwidth=count * entry["bandwidth"] * _GB,
                    alpha=entry["alpha"] / _US_PER_S,
                    count=count,
                    kind=entry.get("kind", "nvlink"),
                )
                for s, d in edges
            ]
    switches = [
        Switch(
            name=f"n{node}.{entry.get('name', f'switch{i}')}",
            node=node,
            ranks=tuple(base + g for g in expand_gpus(entry["gpus"], n)),
            bandwidth=entry["bandwidth"] * _GB,
            alpha=entry["alpha"] / _US_PER_S,
        )
        for i, entry in enumerate(doc.get("switches", []))
    ]
    nics = [
        Nic(
            name=f"n{node}.{entry.get('name', f'nic{i}')}",
            node=node,
            rail=i,
            ranks=tuple(base + g for g in expand_gpus(entry["gpus"], n)),
            bandwidth=entry["bandwidth"] * _GB,
            alpha=entry["alpha"] / _US_PER_S,
        )
        for i, entry in enumerate(doc.get("nics", []))
    ]
    return links, switches, nics


def _check_nodes(name: str, nodes: object, ranks_per_node: int) -> None:
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise TopologyError(f"{name}: nodes must be an integer >= 1, got {nodes!r}")
    if ranks_per_node * nodes > MAX_RANKS:
        raise TopologyError(
            f"{name}: {nodes} nodes x {ranks_per_node} GPUs = {ranks_per_node * nodes} ranks, "
            f"more than the {MAX_RANKS} supported"
        )


def _build(doc: dict, default_name: str, source: str, nodes: int) -> Topology:
    """A validated document replicated over ``nodes`` nodes, converted to SI units."""
    name = doc.get("name", default_name)
    n = int(doc["gpus_per_node"])
    _check_nodes(name, nodes, n)
    if nodes > 1 and not doc.get("nics"):
        raise TopologyError(
            f"{name}: has no NICs, so it cannot span {nodes} nodes "
            f"(add a 'nics' section to its file to make it multi-node)"
        )
    max_nodes = doc.get("max_nodes")
    if max_nodes is not None and nodes > max_nodes:
        raise TopologyError(f"{name}: at most {max_nodes} nodes, asked for {nodes}")
    links, switches, nics = [], [], []
    for node in range(nodes):
        parts = _node_parts(doc, node, node * n)
        links += parts[0]
        switches += parts[1]
        nics += parts[2]
    network, fabric = _network(doc)
    return Topology(
        name=name,
        gpus_per_node=n,
        nodes=nodes,
        links=tuple(links),
        switches=tuple(switches),
        nics=tuple(nics),
        network=network,
        description=" ".join(doc.get("description", "").split()),
        source=source,
        fabric=fabric,
    )


def _group_document(node: str, where: str, base_dir: Path | None) -> tuple[dict, str]:
    """A cluster group's node document, its name and where it came from: a built-in by
    name, else a node file (a relative path is relative to the cluster file)."""
    builtins = _builtin_files()
    if node in builtins:
        doc = _load_document(builtins[node].read_bytes(), str(builtins[node]))
        return doc, doc.get("name", node)
    if node in _cluster_files():
        raise TopologyError(f"{node} is a built-in cluster, not a node type")
    path = Path(node)
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if not _looks_like_path(node) and not path.exists():
        known = ", ".join(sorted(builtins)) or "none found"
        raise TopologyError(f"unknown node type {node!r}: not a file, and not a built-in ({known})")
    shown = display_path(path)
    doc = _load_document(_read(path), shown)
    if "groups" in doc:
        raise TopologyError(f"{shown} is a cluster file, not a node file")
    return doc, doc.get("name", path.stem)


def _build_cluster(
    doc: dict, default_name: str, where: str, nodes: int, base_dir: Path | None
) -> Topology:
    """A validated cluster document: its groups' nodes in order, on its fabric."""
    name = doc.get("name", default_name)
    parts: list[tuple[dict, str, int]] = []
    for i, group in enumerate(doc["groups"]):
        try:
            node_doc, node_name = _group_document(group["node"], where, base_dir)
        except TopologyError as exc:
            raise TopologyError(f"{where}: groups[{i}].node: {exc}") from None
        if any(node_name == name_ and node_doc != doc_ for doc_, name_, _ in parts):
            node_name = f"{node_name} (groups[{i}])"  # another node of the same name
        parts.append((node_doc, node_name, int(group["count"])))
    total = sum(count for *_, count in parts)
    if nodes not in (1, total):
        raise TopologyError(
            f"{name}: a cluster of {total} nodes (its groups fix the count); "
            f"asked for {nodes} nodes: leave --nodes out"
        )
    n = int(parts[0][0]["gpus_per_node"])
    for i, (node_doc, node_name, _) in enumerate(parts):
        if int(node_doc["gpus_per_node"]) != n:
            raise TopologyError(
                f"{where}: groups[{i}].node: {node_name} has {node_doc['gpus_per_node']} "
                f"GPUs per node, groups[0] has {n}: a cluster's nodes must have the same "
                f"number of GPUs"
            )
        most = node_doc.get("max_nodes")
        if most is not None and total > most:
            raise TopologyError(
                f"{where}: groups[{i}].node: {node_name} allows at most {most} nodes, "
                f"the cluster has {total}"
            )
        if total > 1 and not node_doc.get("nics"):
            raise TopologyError(
                f"{where}: groups[{i}].node: {node_name} has no NICs, so it cannot be "
                f"part of a cluster"
            )
    _check_nodes(name, total, n)
    links, switches, nics, types = [], [], [], []
    node = 0
    for node_doc, node_name, count in parts:
        for _ in range(count):
            got = _node_parts(node_doc, node, node * n)
            links += got[0]
            switches += got[1]
            nics += got[2]
            types.append(node_name)
            node += 1
    network, fabric = _network(doc)
    return Topology(
        name=name,
        gpus_per_node=n,
        nodes=total,
        links=tuple(links),
        switches=tuple(switches),
        nics=tuple(nics),
        network=network,
        description=" ".join(doc.get("description", "").split()),
        source=where,
        fabric=fabric,
        cluster=True,
        node_types=tuple(types),
    )


def _build_any(
    doc: dict, default_name: str, where: str, nodes: int, base_dir: Path | None = None
) -> Topology:
    if "groups" in doc:
        return _build_cluster(doc, default_name, where, nodes, base_dir)
    return _build(doc, default_name, where, nodes)


def _looks_like_path(text: str) -> bool:
    return os.sep in text or "/" in text or text.endswith((".yaml", ".yml")) or os.path.exists(text)


def parse_topology(data: bytes, where: str, name: str) -> Topology:
    """A topology from the bytes of a YAML document (``where`` names it in errors,
    ``name`` is its name where the document has none), on one node."""
    return _build_any(_load_document(data, where), name, where, 1)


def load_topology(name_or_path: str | os.PathLike, nodes: int = 1) -> Topology:
    """A built-in topology by name, or a user's YAML file by path, over ``nodes`` nodes."""
    text = os.fspath(name_or_path)
    builtins = {**_cluster_files(), **_builtin_files()}
    if text in builtins:
        where = str(builtins[text])
        data = builtins[text].read_bytes()
        default_name = text
        base_dir = None
    elif _looks_like_path(text):
        path = Path(text)
        where = display_path(path)
        data = _read(path)
        default_name = path.stem
        base_dir = path.parent
    else:
        known = ", ".join(sorted(builtins)) or "none found"
        raise TopologyError(
            f"unknown topology {text!r}: not a file, and not a built-in name ({known})"
        )
    return _build_any(_load_document(data, where), default_name, where, nodes, base_dir)


def _gbs(bandwidth: float) -> str:
    return f"{bandwidth / _GB:g} GB/s"


def _us(alpha: float) -> str:
    return f"{alpha * _US_PER_S:g} us"


def _gpus(ranks: tuple[int, ...]) -> str:
    if len(ranks) == 1:
        return f"GPU {ranks[0]}"
    if len(ranks) > 2 and list(ranks) == list(range(ranks[0], ranks[-1] + 1)):
        return f"GPUs {ranks[0]}..{ranks[-1]}"
    return "GPUs " + ",".join(map(str, ranks))


def _runs(items: list[str]) -> list[tuple[int, int, str]]:
    """Maximal runs of equal items: (first index, last index, item)."""
    out: list[tuple[int, int, str]] = []
    for i, item in enumerate(items):
        if out and out[-1][2] == item:
            out[-1] = (out[-1][0], i, item)
        else:
            out.append((i, i, item))
    return out


def _describe_node(t: Topology, node: int, per_node: str) -> list[str]:
    """The links, switches and NICs of one node (local GPU ids)."""
    lines = []
    base = node * t.gpus_per_node
    links = [lk for lk in t.links if t.node_of(lk.src) == node]
    if links:
        lines.append(f"  links ({len(links)} directed{per_node}):")
        directed = {(lk.src, lk.dst): lk for lk in links}
        for lk in links:
            back = directed.get((lk.dst, lk.src))
            both = back is not None and (back.bandwidth, back.alpha, back.count, back.kind) == (
                lk.bandwidth,
                lk.alpha,
                lk.count,
                lk.kind,
            )
            if both and lk.src > lk.dst:
                continue
            arrow = "<->" if both else "->"
            lines.append(
                f"    {lk.src - base}{arrow}{lk.dst - base}: {lk.kind} x{lk.count}, "
                f"{_gbs(lk.bandwidth)}, alpha {_us(lk.alpha)}"
            )
    for sw in t.switches:
        if sw.node == node:
            lines.append(
                f"  switch {sw.name.split('.', 1)[-1]}: "
                f"{_gpus(tuple(r - base for r in sw.ranks))}, "
                f"{_gbs(sw.bandwidth)} per port, alpha {_us(sw.alpha)}"
            )
    for nic in t.nics:
        if nic.node == node:
            lines.append(
                f"  NIC {nic.name.split('.', 1)[-1]} (rail {nic.rail}): "
                f"{_gpus(tuple(r - base for r in nic.ranks))}, {_gbs(nic.bandwidth)}, "
                f"alpha {_us(nic.alpha)}"
            )
    return lines


def describe(topology: Topology) -> str:
    """A human-readable multi-line summary (``taccl topology show``)."""
    t = topology
    lines = [f"{t.label}: {t.description}" if t.description else t.label]
    if t.source:
        lines.append(f"  source: {t.source}")
    if t.nodes > 1:
        lines.append(
            f"  ranks: {t.num_ranks} ({t.nodes} nodes x {t.gpus_per_node} GPUs; "
            f"rank = node * {t.gpus_per_node} + GPU)"
        )
    else:
        lines.append(f"  ranks: {t.num_ranks} (1 node)")
    runs = _runs(list(t.node_types)) if t.node_types else [(0, t.nodes - 1, "")]
    for first, last, kind in runs:
        if kind:
            where = f"node {first}" if first == last else f"nodes {first}-{last}"
            lines.append(f"  {where}: {kind}")
        lines += _describe_node(t, first, ", per node" if last > first else "")
    if t.nics:
        lines.append(f"  network: {t.network if t.fabric is None else t.fabric.label}")
    kinds = Counter(c.kind for c in t.connections.values())
    detail = ", ".join(f"{k} {kinds[k]}" for k in ("link", "switch", "network") if kinds[k])
    lines.append(f"  connections: {len(t.connections)}" + (f" ({detail})" if detail else ""))
    return "\n".join(lines)

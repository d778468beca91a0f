"""Communication sketches: the user's hints that narrow the synthesizer's search.

A sketch file (YAML, every field optional) speaks of local GPU ids of one node; loading it
against a topology resolves it to ranks. Without a file, :func:`default_sketch` derives
the hints from the topology, symmetry included. Problems are one-line SketchErrors
``<file>: <field path>: <message>``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import SketchError, TacclError, TopologyError
from ...topology.graph import distances_from
from ...topology.loader import MAX_FILE_BYTES, _builtin_dir, parse_yaml
from ...topology.model import RAIL_ONLY, Topology
from ...topology.schema import GPU_ID, GPU_LIST, Problems, make_validator, schema_problems
from ...util.fileio import display_path, read_input
from ...util.units import MAX_SIZE, format_size, parse_size
from .symmetry import (
    Perm,
    automorphism_error,
    detect_symmetry,
    extend,
    node_rotation,
    orbit_representatives,
)

UC_MIN, UC_MAX = "uc-min", "uc-max"
DEFAULT_CHUNKUP = (1, 2, 6)
DEFAULT_SIZE = 1 << 30
MAX_CHUNKUP = 64
#: most explicit symmetry rotations (each is checked against every connection)
MAX_ROTATIONS = 16

_CHUNKUP = {"type": "integer", "minimum": 1, "maximum": MAX_CHUNKUP}

SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "taccl communication sketch",
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "name": {
            "type": "string",
            "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
            "x-message": "must be a name of letters, digits, '.', '_' or '-'",
        },
        "description": {"type": "string"},
        "inter_node": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "connections": {
                    "anyOf": [
                        {"enum": ["rail", "all"]},
                        {
                            "type": "array",
                            "minItems": 1,
                            "items": {
                                "type": "array",
                                "items": GPU_ID,
                                "minItems": 2,
                                "maxItems": 2,
                            },
                        },
                    ],
                    "x-message": 'must be "rail", "all" or a non-empty list of '
                    "[sender, receiver] local GPU id pairs",
                },
                "relays": {"type": "object", "additionalProperties": GPU_LIST},
            },
        },
        "own_data_first": {"type": "boolean"},
        "switch_policy": {"enum": [UC_MIN, UC_MAX]},
        "symmetry": {
            "anyOf": [
                {"enum": ["auto", "none"]},
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "rotations": {
                            "type": "array",
                            "maxItems": MAX_ROTATIONS,
                            "items": {"type": "array", "items": GPU_ID, "minItems": 1},
                        },
                        "node_swaps": {"type": "boolean"},
                    },
                },
            ],
            "x-message": "must be auto, none, or a mapping with rotations (at most "
            f"{MAX_ROTATIONS} lists of local GPU ids) and node_swaps (true/false)",
        },
        "chunkup": {
            "anyOf": [
                _CHUNKUP,
                {"type": "array", "items": _CHUNKUP, "minItems": 1, "uniqueItems": True},
            ],
            "x-message": f"must be an integer 1..{MAX_CHUNKUP} or a non-empty "
            "list of distinct ones",
        },
        "size": {
            "anyOf": [{"type": "integer", "minimum": 1, "maximum": MAX_SIZE}, {"type": "string"}],
            "x-message": "must be a byte count like 1048576, 64M or 1G, below 2^63",
        },
    },
}

_VALIDATOR = make_validator(SCHEMA)


@dataclass
class Sketch:
    """A sketch resolved against a topology; ranks, not local ids.

    ``inter_node``: the (src, dst) rank pairs allowed to talk across nodes;
    ``relays``: rank -> ranks of its node whose data it may send across;
    ``symmetry``: generators (rank permutations) the algorithm must be invariant under;
    ``connections``: the local (sender, receiver) pairs ``inter_node`` comes from.
    """

    name: str
    topology: str
    connections: tuple[tuple[int, int], ...]
    inter_node: frozenset[tuple[int, int]]
    relays: dict[int, tuple[int, ...]]
    own_data_first: bool = False
    switch_policy: str | None = None
    symmetry: tuple[Perm, ...] = ()
    chunkup: tuple[int, ...] = DEFAULT_CHUNKUP
    size: int = DEFAULT_SIZE
    source: str = field(default="", compare=False)

    def representatives(self, items, act=None) -> dict:
        """Each item -> the representative of its orbit under :attr:`symmetry`."""
        return orbit_representatives(self.symmetry, items, act)


def _builtin_sketch_dir():
    return _builtin_dir() / "sketches"


def builtin_sketch_names() -> list[str]:
    """Topologies with a shipped sketch, sorted."""
    directory = _builtin_sketch_dir()
    if not directory.is_dir():
        return []
    return sorted(
        f.name[: -len(".yaml")]
        for f in directory.iterdir()
        if f.name.endswith(".yaml") and f.is_file()
    )


def _read(name_or_path: str) -> tuple[bytes, str]:
    if name_or_path in builtin_sketch_names():
        source = _builtin_sketch_dir() / f"{name_or_path}.yaml"
        return source.read_bytes(), str(source)
    path, where = Path(name_or_path), display_path(Path(name_or_path))
    if not os.path.lexists(path):
        known = ", ".join(builtin_sketch_names()) or "none found"
        raise SketchError(f"{where}: no such sketch file, and not a built-in sketch name ({known})")
    return read_input(path, MAX_FILE_BYTES, "sketch file", SketchError), where


def load_sketch(name_or_path: str | os.PathLike, topology: Topology, every: bool = False) -> Sketch:
    """A shipped sketch by topology name, or a sketch file, resolved against ``topology``
    (see :func:`parse_sketch` for ``every``)."""
    data, where = _read(os.fspath(name_or_path))
    return parse_sketch(data, topology, where, every)


def parse_sketch(
    data: bytes | str, topology: Topology, where: str = "<sketch>", every: bool = False
) -> Sketch:
    """The text of a sketch file, checked and resolved against ``topology``. A SketchError
    names its first problem on one line; with ``every``, each problem on a line of its own."""
    if isinstance(data, str):
        data = data.encode()
    try:
        doc = parse_yaml(data, where)
    except TopologyError as exc:
        raise SketchError(str(exc)) from None
    problems = Problems(where, SketchError)
    if not isinstance(doc, dict):
        problems.fail([], "must be a mapping of fields")
    schema_problems(_VALIDATOR, doc, problems)
    sketch = _Resolver(doc, topology, problems).sketch()
    problems.check(every)
    assert sketch is not None  # None only with a problem, which check() raised
    return sketch


def default_sketch(topology: Topology) -> Sketch:
    """Hints derived from the topology alone (what an empty sketch file gives)."""
    problems = Problems("<default>", SketchError)
    sketch = _Resolver({}, topology, problems).sketch(f"{topology.name}-default")
    problems.check()
    assert sketch is not None  # None only with a problem, which check() raised
    return sketch


def _nic_pair_ok(topology: Topology, a: int, b: int) -> str | None:
    """Why local GPU ``a`` cannot send to local GPU ``b`` of another node (None if it can)."""
    nic_a, nic_b = topology.nic_of(a), topology.nic_of(b)
    if nic_a is None:
        return f"GPU {a} has no NIC"
    if nic_b is None:
        return f"GPU {b} has no NIC"
    if topology.network == RAIL_ONLY and nic_a.rail != nic_b.rail:
        return f"rail-only network: GPU {a} is on rail {nic_a.rail}, GPU {b} on rail {nic_b.rail}"
    return None


class _Bad(Exception):
    """A problem with one item of a sketch: ``(field path, message)``."""


#: fields whose items are resolved one by one, skipping those with a schema problem
_ITEMIZED = ("inter_node", "symmetry")


class _Resolver:
    """Semantic checks of a document and its resolution to ranks. Every problem found is
    added to ``problems``; items with a schema problem there are skipped (other fields with
    one are left at their defaults), and so are the checks that depend on them."""

    def __init__(self, doc: dict, topology: Topology, problems: Problems) -> None:
        self.topo, self.problems, self.where = topology, problems, problems.where
        self.doc = {k: v for k, v in doc.items() if k in _ITEMIZED or not problems.touch(k)}
        self.n = topology.gpus_per_node

    def items(self, pairs, *path):
        """The ``(key, item)`` pairs of the field at ``path`` without a schema problem."""
        return [(k, v) for k, v in pairs if not self.problems.touch(*path, k)]

    def gpu(self, path: list, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(path, f"must be a GPU id, got {value!r}")
        if value >= self.n or value < 0:
            raise _Bad(path, f"GPU {value} out of range 0..{self.n - 1}")
        return value

    def each(self, items, check) -> None:
        """``check(key, item)`` for every ``(key, item)``; a problem skips only its item."""
        for key, item in items:
            try:
                check(key, item)
            except _Bad as bad:
                self.problems.add(*bad.args)

    def sketch(self, default_name: str | None = None) -> Sketch | None:
        """The sketch, or None if a problem was found."""
        t = self.topo
        pairs = self.connections()
        relays = {}
        if not self.problems.touch("inter_node", "connections"):
            relays = self.relays(pairs)
            if not self.problems.touch("inter_node"):
                self.check_reachable(pairs, relays)
        symmetry = self.symmetry(pairs, relays)
        size = self.size()
        if self.problems.found:
            return None
        base = [node * self.n for node in range(t.nodes)]
        conns = t.connections  # nodes may differ (failed NICs, mixed): only real ones
        inter = frozenset(
            (i + a, j + b)
            for i in base
            for j in base
            if i != j
            for a, b in pairs
            if (i + a, j + b) in conns
        )
        rank_relays = {
            i + r: tuple(i + g for g in data) for i in base for r, data in sorted(relays.items())
        }
        chunkup = self.doc.get("chunkup", list(DEFAULT_CHUNKUP))
        return Sketch(
            name=self.doc.get("name", default_name or Path(self.where).stem),
            topology=t.label,
            connections=pairs,
            inter_node=inter,
            relays=rank_relays,
            own_data_first=self.doc.get("own_data_first", False),
            switch_policy=self.doc.get("switch_policy", UC_MAX if t.switches else None),
            symmetry=symmetry,
            chunkup=tuple(chunkup) if isinstance(chunkup, list) else (chunkup,),
            size=size,
            source=self.where,
        )

    def connections(self) -> tuple[tuple[int, int], ...]:
        if self.problems.above("inter_node"):
            return ()
        section = self.doc.get("inter_node", {})
        has_nic = [g for g in range(self.n) if self.topo.nic_of(self.rep(g)) is not None]
        if "inter_node" in self.doc and not has_nic:
            self.problems.add(
                ["inter_node"],
                f"{self.topo.name} has no NICs, so there is no inter-node traffic to sketch",
            )
            return ()
        if self.problems.above("inter_node", "connections"):
            return ()
        spec = section.get("connections", "all")
        if spec == "all":
            return tuple(
                (a, b)
                for a in has_nic
                for b in has_nic
                if _nic_pair_ok(self.topo, self.rep(a), self.rep(b)) is None
            )
        if spec == "rail":
            return tuple((a, a) for a in has_nic)
        out: list[tuple[int, int]] = []

        def connection(i: int, pair: list) -> None:
            here = ["inter_node", "connections", i]
            a, b = (self.gpu(here + [k], g) for k, g in enumerate(pair))
            why = _nic_pair_ok(self.topo, self.rep(a), self.rep(b))
            if why is not None:
                raise _Bad(here, f"GPU {a} -> remote GPU {b} has no NIC connection ({why})")
            if (a, b) in out:
                raise _Bad(here, f"duplicate connection {a} -> {b}")
            out.append((a, b))

        self.each(self.items(enumerate(spec), "inter_node", "connections"), connection)
        return tuple(out)

    def relays(self, pairs) -> dict[int, tuple[int, ...]]:
        senders = sorted({a for a, _ in pairs})
        given = self.doc.get("inter_node", {}).get("relays")
        if given is None:
            return self.default_relays(senders)
        if self.problems.above("inter_node", "relays"):
            return {}
        out: dict[int, tuple[int, ...]] = {}

        def relay(key: object, gpus: str | list[object]) -> None:
            here = ["inter_node", "relays", key]
            r = self.gpu(here, key)
            if r in out:
                raise _Bad(here, f"GPU {r} listed twice")
            if r not in senders:
                raise _Bad(
                    here,
                    f"GPU {r} relays data but sends nothing across nodes (not a "
                    "sender in inter_node.connections)",
                )
            if gpus == "all":
                out[r] = tuple(range(self.n))
                return
            data = [self.gpu(here + [j], g) for j, g in enumerate(gpus)]
            if len(set(data)) != len(data):
                raise _Bad(here, "a GPU listed twice")
            out[r] = tuple(sorted(data))

        self.each(self.items(given.items(), "inter_node", "relays"), relay)
        return dict(sorted(out.items()))

    def default_relays(self, senders: list[int]) -> dict[int, tuple[int, ...]]:
        """Each sender carries its NIC's GPUs' data; data of GPUs without a NIC goes
        with any sender."""
        t = self.topo
        orphans = [
            g
            for g in range(self.n)
            if any(t.nic_of(node * self.n + g) is None for node in range(t.nodes))
        ]
        out: dict[int, tuple[int, ...]] = {}
        for r in senders:
            nic = t.nic_of(self.rep(r))
            assert nic is not None  # senders come from GPUs with a NIC (see connections)
            local = {g - nic.node * self.n for g in nic.ranks}
            out[r] = tuple(sorted(local | set(orphans)))
        return out

    def rep(self, gpu: int) -> int:
        """The first rank of local GPU ``gpu`` that has a NIC (nodes may differ: a failed
        NIC), else node 0's."""
        t = self.topo
        for node in range(t.nodes):
            if t.nic_of(node * self.n + gpu) is not None:
                return node * self.n + gpu
        return gpu

    def check_reachable(self, pairs, relays) -> None:
        if not pairs:
            return
        intra = [(u, v) for u, v in self.topo.connections if u < self.n and v < self.n]
        reach = distances_from(intra, range(self.n))  # GPU -> GPUs it reaches
        carriers: dict[int, list[int]] = {g: [] for g in range(self.n)}
        for r, data in relays.items():
            for g in data:
                carriers[g].append(r)
        how = (
            ""
            if "relays" in self.doc.get("inter_node", {})
            else " (by default a GPU relays the data of its NIC's GPUs; list relays explicitly)"
        )
        for g, rs in carriers.items():
            if not rs:
                self.problems.add(
                    ["inter_node", "relays"], f"GPU {g}'s data has no relay to leave node{how}"
                )
            elif not any(r in reach[g] for r in rs):
                self.problems.add(
                    ["inter_node", "relays"],
                    f"GPU {g}'s data cannot reach its relays "
                    f"({', '.join(map(str, rs))}) within a node",
                )
        receivers = sorted({b for _, b in pairs})
        for g in range(self.n):
            if not any(g in reach[r] for r in receivers):
                self.problems.add(
                    ["inter_node", "connections"],
                    f"GPU {g} cannot get remote data: no receiving GPU reaches it within a node",
                )

    def symmetry(self, pairs, relays) -> tuple[Perm, ...]:
        spec = self.doc.get("symmetry", "auto")
        inter_ok = not self.problems.touch("inter_node")
        if spec == "none" or self.problems.above("symmetry") or (spec == "auto" and not inter_ok):
            return ()
        if spec == "auto":
            return tuple(
                p
                for p in detect_symmetry(self.topo)
                if self.sketch_error(tuple(x % self.n for x in p[: self.n]), pairs, relays) is None
            )
        out: list[Perm] = []

        def rotation(i: int, local: list) -> None:
            here = ["symmetry", "rotations", i]
            if sorted(local) != list(range(self.n)):
                raise _Bad(here, f"must be a permutation of 0..{self.n - 1}")
            perm = extend(self.topo, local)
            why = automorphism_error(self.topo, perm)
            why = why and f"not a symmetry of {self.topo.label}: {why}"
            why = why or (self.sketch_error(tuple(local), pairs, relays) if inter_ok else None)
            if why:
                raise _Bad(here, why)
            if perm != tuple(range(len(perm))):
                out.append(perm)

        if not self.problems.above("symmetry", "rotations"):
            rotations = enumerate(spec.get("rotations", []))
            self.each(self.items(rotations, "symmetry", "rotations"), rotation)
        if spec.get("node_swaps") is True and self.topo.nodes > 1:
            out.insert(0, node_rotation(self.topo))
        return tuple(out)

    @staticmethod
    def sketch_error(local: Perm, pairs, relays) -> str | None:
        """Why a local permutation does not preserve the sketch's connections and relays."""
        allowed = set(pairs)
        for a, b in pairs:
            if (local[a], local[b]) not in allowed:
                return (
                    f"not a symmetry of the sketch: maps inter-node connection "
                    f"{a} -> {b} to {local[a]} -> {local[b]}, which is not allowed"
                )
        for r, data in relays.items():
            image = tuple(sorted(local[g] for g in data))
            if relays.get(local[r]) != image:
                return (
                    f"not a symmetry of the sketch: maps GPU {r}'s relays to GPU "
                    f"{local[r]}, which relays other data"
                )
        return None

    def size(self) -> int:
        value = self.doc.get("size", DEFAULT_SIZE)
        try:
            return parse_size(value) if isinstance(value, str) else value
        except TacclError as exc:
            self.problems.add(["size"], str(exc))
            return DEFAULT_SIZE


def _flow(values) -> str:
    return "[" + ", ".join(map(str, values)) + "]"


def sketch_template(topology: Topology) -> str:
    """A commented sketch file holding :func:`default_sketch`'s values."""
    s = default_sketch(topology)
    n = topology.gpus_per_node
    lines = [
        f"# Communication sketch for {topology.name} ({n} GPUs per node).",
        "# Every field is optional; left out, it takes the value shown here.",
        f"# GPU ids are local to a node (0..{n - 1}).",
        f"name: {s.name}",
    ]
    if s.connections:
        lines += [
            "inter_node:",
            "  # Which local GPU of a node sends to which local GPU of every other node:",
            '  # a list of [sender, receiver] pairs, "rail" (GPU k -> GPU k), or "all"',
            "  # (every pair the NICs and network connect).",
            "  connections: all",
            "  # Sender side: GPU -> the GPUs whose data it may carry to another node.",
            "  relays:",
        ]
        lines += [
            f"    {r}: {'all' if data == tuple(range(n)) else _flow(data)}"
            for r, data in s.relays.items()
            if r < n
        ]
    else:
        lines.append("# inter_node: (none: this topology has no NICs)")
    lines += [
        "# Send a GPU's own data before data it relays.",
        f"own_data_first: {str(s.own_data_first).lower()}",
    ]
    policy = ["# Switches: prefer few (uc-min) or many (uc-max) distinct peers per GPU."]
    policy.append(
        f"switch_policy: {s.switch_policy}"
        if s.switch_policy
        else f"# switch_policy: {UC_MAX}   (no switches in {topology.name})"
    )
    lines += policy
    local = [p[:n] for p in s.symmetry if max(p[:n]) < n]
    lines += [
        "# Symmetry: auto (detected), none, or explicit generators:",
        "#   {rotations: [[local GPU permutation], ...], node_swaps: true}",
    ]
    if local:
        lines.append("# auto detects these rotations (and node swaps across nodes):")
        lines += [f"#   {_flow(p)}" for p in local]
    lines += [
        "symmetry: auto",
        "# Chunk-up factors to try, and the buffer size the algorithm targets.",
        f"chunkup: {_flow(s.chunkup)}",
        f"size: {format_size(s.size)}",
        "",
    ]
    return "\n".join(lines)

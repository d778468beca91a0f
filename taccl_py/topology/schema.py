"""The topology file format: a JSON Schema plus the checks a schema cannot express.

A file describes one node; the loader replicates it. Units: bandwidth in GB/s
(1e9 bytes/s) per direction, α in microseconds. Every problem is reported as one
line, ``<file>: <field path>: <message>``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any, NoReturn

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import ValidationError, best_match

from ..errors import TacclError, TopologyError
from ..util.units import MAX_SIZE

MAX_GPUS_PER_NODE = 1024
#: most ranks a topology may have over all its nodes (the MSCCL loader's bound too)
MAX_RANKS = 1024
#: a C int: the largest count of profiling iterations
MAX_ITERS = (1 << 31) - 1
#: problems listed by a validation that reports every one (then a count of the rest)
MAX_LISTED = 100

_NAME = {
    "type": "string",
    "pattern": r"^[A-Za-z][A-Za-z0-9_-]*$",
    "x-message": "must be a name of letters, digits, '_' or '-', starting with a letter",
}
#: a local GPU id (the loader checks it against gpus_per_node)
GPU_ID = {"type": "integer", "minimum": 0, "maximum": MAX_GPUS_PER_NODE - 1}
#: "all" or a list of local GPU ids
GPU_LIST = {
    "anyOf": [{"const": "all"}, {"type": "array", "items": GPU_ID, "minItems": 1}],
    "x-message": 'must be "all" or a non-empty list of GPU ids',
}
_RANK = {"type": "integer", "minimum": 0, "maximum": MAX_RANKS - 1}
_BANDWIDTH = {"type": "number", "minimum": 1e-3, "maximum": 1e6}  # GB/s: 1 MB/s .. 1 PB/s
_ALPHA = {"type": "number", "minimum": 0, "maximum": 1e6}  # µs

#: switches and NICs: a named group of GPUs with per-GPU-port (switch) or shared (NIC)
#: bandwidth and a latency
_PORT_GROUPS = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["gpus", "bandwidth", "alpha"],
        "additionalProperties": False,
        "properties": {"name": _NAME, "gpus": GPU_LIST, "bandwidth": _BANDWIDTH, "alpha": _ALPHA},
    },
}

#: ``taccl profile``'s record: when and how the numbers were measured, and every pair's
#: fit (global ranks, α in µs, bandwidth in GB/s); informative, the loader ignores it
_MEASURED = {
    "type": "object",
    "required": ["date"],
    "additionalProperties": False,
    "properties": {
        "date": {"type": "string", "x-message": "must be a quoted ISO date, e.g. '2025-01-31'"},
        "launcher": {"type": "string"},
        "transport": {"type": "string"},
        "device": {"type": "string"},
        "hosts": {"type": "array", "items": {"type": "string"}},
        "ranks": {"type": "integer", "minimum": 2, "maximum": MAX_RANKS},
        "sizes": {"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": MAX_SIZE}},
        "iters": {"type": "integer", "minimum": 1, "maximum": MAX_ITERS},
        "fits": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["pair", "alpha", "bandwidth"],
                "additionalProperties": False,
                "properties": {
                    "pair": {"type": "array", "items": _RANK, "minItems": 2, "maxItems": 2},
                    "alpha": _ALPHA,
                    "bandwidth": _BANDWIDTH,
                    "r2": {"type": "number", "maximum": 1},
                },
            },
        },
    },
}

#: the network between nodes: one switch, rails, or leaves joined by a spine
FABRIC = {
    "type": "object",
    "required": ["kind"],
    "additionalProperties": False,
    "properties": {
        "kind": {"enum": ["full-bisection", "rail-only", "rail-optimized", "leaf-spine"]},
        "nodes_per_leaf": {"type": "integer", "minimum": 1, "maximum": MAX_RANKS},
        "oversubscription": {"type": "number", "minimum": 1, "maximum": 1e3},
        "uplink_bandwidth": _BANDWIDTH,
        "spine": {"type": "boolean"},
    },
}
_FABRIC_KEYS = ("nodes_per_leaf", "oversubscription", "uplink_bandwidth", "spine")
#: the fields each fabric kind takes besides ``kind``
FABRIC_FIELDS = {
    "full-bisection": (),
    "rail-only": (),
    "rail-optimized": ("spine", "oversubscription"),
    "leaf-spine": ("nodes_per_leaf", "oversubscription", "uplink_bandwidth"),
}

SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "taccl topology (one node)",
    "type": "object",
    "required": ["gpus_per_node"],
    "additionalProperties": False,
    "properties": {
        "name": {
            "type": "string",
            "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
            "x-message": "must be a name of letters, digits, '.', '_' or '-'",
        },
        "description": {"type": "string"},
        "gpus_per_node": {"type": "integer", "minimum": 1, "maximum": MAX_GPUS_PER_NODE},
        "links": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["pairs", "bandwidth", "alpha"],
                "additionalProperties": False,
                "properties": {
                    "pairs": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "array",
                            "items": GPU_ID,
                            "minItems": 2,
                            "maxItems": 2,
                            "x-message": "must be a pair of GPU ids [a, b]",
                        },
                    },
                    "count": {"type": "integer", "minimum": 1, "maximum": 64},
                    "bandwidth": _BANDWIDTH,
                    "alpha": _ALPHA,
                    "kind": _NAME,
                    "directed": {"type": "boolean"},
                },
            },
        },
        "switches": _PORT_GROUPS,
        "nics": _PORT_GROUPS,
        "network": {"enum": ["full-bisection", "rail-only"]},
        "fabric": FABRIC,
        "max_nodes": {"type": "integer", "minimum": 1, "maximum": MAX_RANKS},
        "measured": _MEASURED,
    },
}

#: a cluster of node groups (each a built-in or a node file) on one fabric
CLUSTER_SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "taccl cluster (groups of nodes on a fabric)",
    "type": "object",
    "required": ["groups"],
    "additionalProperties": False,
    "properties": {
        "name": SCHEMA["properties"]["name"],
        "description": {"type": "string"},
        "groups": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["node", "count"],
                "additionalProperties": False,
                "properties": {
                    "node": {
                        "type": "string",
                        "minLength": 1,
                        "x-message": "must be a built-in topology name or a node file's path",
                    },
                    "count": {"type": "integer", "minimum": 1, "maximum": MAX_RANKS},
                },
            },
        },
        "fabric": FABRIC,
    },
}


def _finite_number(checker, value: object) -> bool:
    """JSON Schema's "number" less NaN and ±inf (and, as ever, less booleans)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and (isinstance(value, int) or math.isfinite(value))
    )


def _integer(checker, value: object) -> bool:
    """An int, not a bool, nor a float such as 2.0 (which JSON Schema would accept)."""
    return isinstance(value, int) and not isinstance(value, bool)


_Validator = validators.extend(
    Draft202012Validator,
    type_checker=Draft202012Validator.TYPE_CHECKER.redefine_many(
        {"number": _finite_number, "integer": _integer}
    ),
)


def make_validator(schema: dict) -> Draft202012Validator:
    """A validator of ``schema`` whose numbers are finite and whose integers are ints."""
    return _Validator(schema)


_VALIDATOR = make_validator(SCHEMA)
_CLUSTER_VALIDATOR = make_validator(CLUSTER_SCHEMA)
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_TYPE_NAMES = {
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "empty",
}


def field_path(parts: Iterable[object]) -> str:
    """('links', 3, 'bandwidth') -> 'links[3].bandwidth'."""
    out = ""
    for part in parts:
        if isinstance(part, int) and not isinstance(part, bool):
            out += f"[{part}]"
        elif isinstance(part, str) and _PLAIN_KEY.match(part):
            out += f".{part}" if out else part
        else:
            out += f"[{_show(part)}]"
    return out or "top level"


def _path_key(path: tuple) -> list[tuple]:
    """Sort key of a field path: list indexes by number, before mapping keys."""
    return [
        (0, p, "") if isinstance(p, int) and not isinstance(p, bool) else (1, 0, str(p))
        for p in path
    ]


class Problems:
    """What is wrong with one document: (field path, message) pairs, reported one per line
    as ``<where>: <field path>: <message>``."""

    def __init__(self, where: str, error: type[TacclError] = TopologyError) -> None:
        self.where, self.error = where, error
        self.found: list[tuple[tuple, str]] = []
        self._at: set[tuple] = set()  # the problems' paths
        self._within: set[tuple] = set()  # the fields holding a problem

    def add(self, path: Iterable[object], message: str) -> None:
        path = tuple(path)
        self.found.append((path, message))
        self._at.add(path)
        self._within.update(path[:k] for k in range(len(path) + 1))

    def above(self, *path: object) -> bool:
        """Whether a problem lies at ``path`` or at a field containing it."""
        return any(path[:k] in self._at for k in range(len(path) + 1))

    def touch(self, *path: object) -> bool:
        """Whether a problem lies at ``path``, inside it or at a field containing it."""
        return path in self._within or self.above(*path)

    def lines(self) -> list[str]:
        """The problems' lines sorted by field path, without repeats."""
        ordered = sorted(self.found, key=lambda f: _path_key(f[0]))
        return list(dict.fromkeys(f"{self.where}: {field_path(p)}: {m}" for p, m in ordered))

    def fail(self, path: Iterable[object], message: str) -> NoReturn:
        """Add a problem and raise the first one, as :meth:`check` does."""
        self.add(path, message)
        raise self.error(self.lines()[0])

    def check(self, every: bool = False) -> None:
        """Raise the first problem as a one-line error; with ``every``, all of them, one per
        line (the first :data:`MAX_LISTED`, then how many more)."""
        lines = self.lines()
        if not lines:
            return
        if not every:
            raise self.error(lines[0])
        if len(lines) > MAX_LISTED:
            lines[MAX_LISTED:] = [f"{self.where}: and {len(lines) - MAX_LISTED} more problems"]
        raise self.error("\n".join(lines))


def _show(value: object, limit: int = 40) -> str:
    if isinstance(value, (list, dict, tuple, set)):
        return _kind(value)  # repr of a large (aliased) container would be slow
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: object) -> str:
    """How a wrongly typed value is shown: scalars by value, containers by kind."""
    if value is None:
        return "an empty value"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return _show(value)
    names: dict[type, str] = {dict: "a mapping", list: "a list"}
    return names.get(type(value), type(value).__name__)


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _translate(err: ValidationError) -> list[tuple[list[object], str]]:
    """The field paths and plain messages of one jsonschema error."""
    path = list(err.absolute_path)
    e: ValidationError | None = err
    while e is not None and list(e.absolute_path) == path:
        if isinstance(e.schema, dict) and "x-message" in e.schema:
            return [(path, e.schema["x-message"])]
        e = e.parent
    kind, want, value = err.validator, err.validator_value, err.instance
    if kind == "required":
        return [(path + [k], "required") for k in want if k not in value]
    if kind == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        return [
            (path + [k], f"unknown field {_show(k)} (allowed: {', '.join(allowed)})")
            for k in value
            if k not in allowed
        ]
    if kind == "type":
        wanted = " or ".join(_TYPE_NAMES[t] for t in ([want] if isinstance(want, str) else want))
        if isinstance(value, float) and not math.isfinite(value):
            wanted = wanted.replace("a number", "a finite number")
        return [(path, f"must be {wanted}, got {_kind(value)}")]
    bounds = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
    if kind in bounds:
        return [(path, f"must be {bounds[kind]} {_number(want)}, got {_show(value)}")]
    if kind == "enum":
        return [(path, f"must be one of {', '.join(want)}, got {_show(value)}")]
    if kind == "minItems":
        return [(path, "must not be empty" if want == 1 else f"must have at least {want} items")]
    if kind == "maxItems":
        return [(path, f"must have at most {want} items")]
    return [(path, " ".join(err.message.split())[:200])]


def schema_problems(validator: Draft202012Validator, doc: object, problems: Problems) -> None:
    """Add every schema violation of ``doc`` to ``problems`` (of an ``anyOf``, the most
    relevant branch's)."""
    for err in validator.iter_errors(doc):
        for leaf in _leaves(err):
            for path, message in _translate(leaf):
                problems.add(path, message)


def _leaves(err: ValidationError) -> list[ValidationError]:
    """The errors to report for ``err``: itself, or for an ``anyOf``, every error of its most
    relevant branch (so each bad item of a list is named, not only the first)."""
    best = best_match([err])
    context = err.context
    if best is err or not context:
        return [best]
    top = best
    while top.parent is not None and top.parent is not err:
        top = top.parent
    if top.parent is not err:
        return [best]
    branch = top.relative_schema_path[0]
    return [leaf for e in context if e.relative_schema_path[0] == branch for leaf in _leaves(e)]


def expand_gpus(gpus: str | Iterable[int], gpus_per_node: int) -> list[int]:
    """A validated ``gpus`` field ("all" or a list) as a list of local GPU ids."""
    return list(range(gpus_per_node)) if gpus == "all" else [int(g) for g in gpus]


def _entries(doc: dict, section: str, problems: Problems) -> list[tuple[int, Any]]:
    """A section's (index, entry) pairs, none if the section itself is broken (an entry is
    parsed YAML: a mapping unless a problem touches it)."""
    return [] if problems.above(section) else list(enumerate(doc.get(section, [])))


def _in_range(problems: Problems, path: tuple, gpu: int, n: int) -> bool:
    if gpu < n:
        return True
    problems.add(path, f"GPU {gpu} out of range 0..{n - 1}")
    return False


def _check_links(doc: dict, n: int, problems: Problems) -> None:
    seen: dict[tuple[int, int], str] = {}
    for i, entry in _entries(doc, "links", problems):
        if problems.touch("links", i, "pairs") or problems.touch("links", i, "directed"):
            continue
        for j, pair in enumerate(entry["pairs"]):
            here = ("links", i, "pairs", j)
            in_range = [_in_range(problems, here + (k,), g, n) for k, g in enumerate(pair)]
            if not all(in_range):
                continue
            a, b = pair
            if a == b:
                problems.add(here, f"self-link {a}-{a}")
                continue
            for edge in [(a, b)] if entry.get("directed", False) else [(a, b), (b, a)]:
                if edge in seen:
                    problems.add(
                        here, f"duplicate link {edge[0]}->{edge[1]} (also at {seen[edge]})"
                    )
                    break
                seen[edge] = field_path(here)


def _check_attached(doc: dict, section: str, default: str, n: int, problems: Problems) -> None:
    """Switches or NICs: GPU ids in range, each GPU on at most one, unique names."""
    owner: dict[int, int] = {}
    names: set[str] = set()
    for i, entry in _entries(doc, section, problems):
        if not problems.touch(section, i, "name"):
            name = entry.get("name", f"{default}{i}")
            if name in names:
                problems.add((section, i, "name"), f"duplicate name {name!r}")
            names.add(name)
        if problems.touch(section, i, "gpus"):
            continue
        local: dict[int, tuple] = {}
        for j, g in enumerate(range(n) if entry["gpus"] == "all" else entry["gpus"]):
            here = (section, i, "gpus") + (() if entry["gpus"] == "all" else (j,))
            if not _in_range(problems, here, g, n):
                continue
            if g in local:
                problems.add(here, f"GPU {g} listed twice")
            local[g] = here
        for gpu, here in local.items():
            if gpu in owner:
                problems.add(here, f"GPU {gpu} is already on {section}[{owner[gpu]}]")
            else:
                owner[gpu] = i


def topology_problems(doc: object, where: str) -> Problems:
    """Everything wrong with ``doc`` (parsed YAML) as a topology: schema violations, then
    GPU ids out of range, self-links, duplicate links, names and GPU attachments."""
    problems = Problems(where)
    if not isinstance(doc, dict):
        problems.add([], f"must be a mapping of fields, got {_kind(doc)}")
        return problems
    if "groups" in doc and "gpus_per_node" not in doc:
        schema_problems(_CLUSTER_VALIDATOR, doc, problems)
        _check_fabric(doc, problems)
        return problems
    schema_problems(_VALIDATOR, doc, problems)
    if not problems.touch("gpus_per_node"):
        n = doc["gpus_per_node"]
        _check_links(doc, n, problems)
        _check_attached(doc, "switches", "switch", n, problems)
        _check_attached(doc, "nics", "nic", n, problems)
    _check_fabric(doc, problems)
    if "fabric" in doc and "network" in doc and not problems.touch("fabric"):
        problems.add(["network"], "give either 'network' or 'fabric', not both")
    return problems


def _check_fabric(doc: dict, problems: Problems) -> None:
    """A fabric's fields fit its kind; a leaf-spine fabric says how many nodes per leaf."""
    fab = doc.get("fabric")
    if not isinstance(fab, dict) or problems.touch("fabric", "kind"):
        return
    kind = fab["kind"]
    allowed = FABRIC_FIELDS[kind]
    for key in sorted(fab):
        if key != "kind" and key in _FABRIC_KEYS and key not in allowed:
            problems.add(
                ["fabric", key],
                f"not a field of a {kind} fabric"
                + (f" (its fields: {', '.join(allowed)})" if allowed else ""),
            )
    if kind == "leaf-spine" and "nodes_per_leaf" not in fab:
        problems.add(["fabric", "nodes_per_leaf"], "required for a leaf-spine fabric")
    if kind == "rail-optimized" and fab.get("spine") is False and "oversubscription" in fab:
        problems.add(["fabric", "oversubscription"], "a fabric without a spine has no uplinks")
    if "oversubscription" in fab and "uplink_bandwidth" in fab:
        problems.add(
            ["fabric", "uplink_bandwidth"], "give either 'oversubscription' or this, not both"
        )


def check_document(doc: object, where: str, every: bool = False) -> None:
    """Raise a one-line TopologyError unless ``doc`` (parsed YAML) is a valid topology;
    with ``every``, one line for each problem."""
    topology_problems(doc, where).check(every)

"""The topology file format: a JSON Schema plus the checks a schema cannot express.

A file describes one node; the loader replicates it. Units: bandwidth in GB/s
(1e9 bytes/s) per direction, α in microseconds. Every problem is reported as one
line, ``<file>: <field path>: <message>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError, best_match

from ..errors import TacclError, TopologyError

MAX_GPUS_PER_NODE = 1024

_NAME = {"type": "string", "pattern": r"^[A-Za-z][A-Za-z0-9_-]*$",
         "x-message": "must be a name of letters, digits, '_' or '-', starting with a letter"}
_GPU = {"type": "integer", "minimum": 0}
_GPUS = {"anyOf": [{"const": "all"}, {"type": "array", "items": _GPU, "minItems": 1}],
         "x-message": "must be \"all\" or a non-empty list of GPU ids"}
_BANDWIDTH = {"type": "number", "exclusiveMinimum": 0, "maximum": 1e6}  # GB/s
_ALPHA = {"type": "number", "minimum": 0, "maximum": 1e6}  # µs

#: switches and NICs: a named group of GPUs with per-GPU-port (switch) or shared (NIC)
#: bandwidth and a latency
_PORT_GROUPS = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["gpus", "bandwidth", "alpha"],
        "additionalProperties": False,
        "properties": {"name": _NAME, "gpus": _GPUS, "bandwidth": _BANDWIDTH, "alpha": _ALPHA},
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
        "ranks": {"type": "integer", "minimum": 2},
        "sizes": {"type": "array", "items": {"type": "integer", "minimum": 1}},
        "iters": {"type": "integer", "minimum": 1},
        "fits": {"type": "array", "items": {
            "type": "object",
            "required": ["pair", "alpha", "bandwidth"],
            "additionalProperties": False,
            "properties": {
                "pair": {"type": "array", "items": _GPU, "minItems": 2, "maxItems": 2},
                "alpha": _ALPHA, "bandwidth": _BANDWIDTH, "r2": {"type": "number"},
            },
        }},
    },
}

SCHEMA: dict = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "taccl topology (one node)",
    "type": "object",
    "required": ["gpus_per_node"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                 "x-message": "must be a name of letters, digits, '.', '_' or '-'"},
        "description": {"type": "string"},
        "gpus_per_node": {"type": "integer", "minimum": 1, "maximum": MAX_GPUS_PER_NODE},
        "links": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["pairs", "bandwidth", "alpha"],
                "additionalProperties": False,
                "properties": {
                    "pairs": {"type": "array", "minItems": 1, "items": {
                        "type": "array", "items": _GPU, "minItems": 2, "maxItems": 2,
                        "x-message": "must be a pair of GPU ids [a, b]"}},
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
        "max_nodes": {"type": "integer", "minimum": 1},
        "measured": _MEASURED,
    },
}

_VALIDATOR = Draft202012Validator(SCHEMA)
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")
_TYPE_NAMES = {"integer": "an integer", "number": "a number", "string": "a string",
               "boolean": "true or false", "array": "a list", "object": "a mapping",
               "null": "empty"}


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


def fail(where: str, path: Iterable[object], message: str,
         error: type[TacclError] = TopologyError) -> TacclError:
    """A one-line ``error`` (TopologyError unless told) ``<where>: <path>: <message>``."""
    return error(f"{where}: {field_path(path)}: {message}")


def _show(value: object, limit: int = 40) -> str:
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
    names = {dict: "a mapping", list: "a list"}
    return names.get(type(value), type(value).__name__)


def _number(value: object) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _translate(err: ValidationError) -> tuple[list[object], str]:
    """The field path and a plain message for one jsonschema error."""
    path = list(err.absolute_path)
    e: ValidationError | None = err
    while e is not None and list(e.absolute_path) == path:
        if isinstance(e.schema, dict) and "x-message" in e.schema:
            return path, e.schema["x-message"]
        e = e.parent
    kind, want, value = err.validator, err.validator_value, err.instance
    if kind == "required":
        missing = next(k for k in want if k not in value)
        return path + [missing], "required"
    if kind == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = next(k for k in value if k not in allowed)
        return path + [extra], f"unknown field {_show(extra)} (allowed: {', '.join(allowed)})"
    if kind == "type":
        wanted = " or ".join(_TYPE_NAMES[t] for t in ([want] if isinstance(want, str) else want))
        return path, f"must be {wanted}, got {_kind(value)}"
    bounds = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}
    if kind in bounds:
        return path, f"must be {bounds[kind]} {_number(want)}, got {_show(value)}"
    if kind == "enum":
        return path, f"must be one of {', '.join(want)}, got {_show(value)}"
    if kind == "minItems":
        return path, "must not be empty" if want == 1 else f"must have at least {want} items"
    if kind == "maxItems":
        return path, f"must have at most {want} items"
    return path, " ".join(err.message.split())[:200]


def schema_error(validator: Draft202012Validator, doc: object, where: str,
                 error: type[TacclError] = TopologyError) -> TacclError | None:
    """The most relevant schema violation of ``doc`` as a one-line ``error``, or None."""
    err = best_match(validator.iter_errors(doc))
    if err is None:
        return None
    path, message = _translate(err)
    return fail(where, path, message, error)


def expand_gpus(gpus: object, gpus_per_node: int) -> list[int]:
    """A validated ``gpus`` field ("all" or a list) as a list of local GPU ids."""
    return list(range(gpus_per_node)) if gpus == "all" else [int(g) for g in gpus]


def _check_gpu(where: str, path: list[object], gpu: object, n: int) -> int:
    gpu = int(gpu)
    if gpu >= n:
        raise fail(where, path, f"GPU {gpu} out of range 0..{n - 1}")
    return gpu


def _check_links(where: str, doc: dict, n: int) -> None:
    seen: dict[tuple[int, int], str] = {}
    for i, entry in enumerate(doc.get("links", [])):
        for j, pair in enumerate(entry["pairs"]):
            here = ["links", i, "pairs", j]
            a, b = (_check_gpu(where, here + [k], g, n) for k, g in enumerate(pair))
            if a == b:
                raise fail(where, here, f"self-link {a}-{a}")
            edges = [(a, b)] if entry.get("directed", False) else [(a, b), (b, a)]
            for edge in edges:
                if edge in seen:
                    raise fail(where, here,
                               f"duplicate link {edge[0]}->{edge[1]} (also at {seen[edge]})")
                seen[edge] = field_path(here)


def _check_attached(where: str, doc: dict, section: str, default: str, n: int) -> None:
    """Switches or NICs: GPU ids in range, each GPU on at most one, unique names."""
    owner: dict[int, int] = {}
    names: set[str] = set()
    for i, entry in enumerate(doc.get(section, [])):
        name = entry.get("name", f"{default}{i}")
        if name in names:
            raise fail(where, [section, i, "name"], f"duplicate name {name!r}")
        names.add(name)
        if entry["gpus"] == "all":
            local = {g: ["gpus"] for g in range(n)}
        else:
            local = {}
            for j, g in enumerate(entry["gpus"]):
                gpu = _check_gpu(where, [section, i, "gpus", j], g, n)
                if gpu in local:
                    raise fail(where, [section, i, "gpus", j], f"GPU {gpu} listed twice")
                local[gpu] = ["gpus", j]
        for gpu, sub in local.items():
            if gpu in owner:
                raise fail(where, [section, i, *sub],
                           f"GPU {gpu} is already on {section}[{owner[gpu]}]")
            owner[gpu] = i


def check_document(doc: object, where: str) -> None:
    """Raise a one-line TopologyError unless ``doc`` (parsed YAML) is a valid topology."""
    if not isinstance(doc, dict):
        raise fail(where, [], f"must be a mapping of fields, got {_kind(doc)}")
    err = schema_error(_VALIDATOR, doc, where)
    if err is not None:
        raise err
    for section in ("links", "switches", "nics"):
        for i, entry in enumerate(doc.get(section, [])):
            for key in ("bandwidth", "alpha"):
                if entry[key] != entry[key]:
                    raise fail(where, [section, i, key], "must be a number, got nan")
    n = int(doc["gpus_per_node"])
    _check_links(where, doc, n)
    _check_attached(where, doc, "switches", "switch", n)
    _check_attached(where, doc, "nics", "nic", n)

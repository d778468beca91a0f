"""Failed and slow parts: a topology with NICs or links taken out (``--exclude``) or run
below their bandwidth (``--derate``).

A part is named ``nic:<name or index>@node<K>``, ``link:<a>-<b>@node<K>`` (both
directions between local GPUs ``a`` and ``b``) or ``gpu:<g>@node<K>``; a derating adds
``=<fraction>`` of the bandwidth left, in (0, 1].

>>> from taccl_py.topology.loader import load_topology
>>> topo = load_topology("dgx-h100", 2)
>>> hurt = apply_faults(topo, Faults(exclude=("nic:nic0@node1",)))
>>> hurt.nic_of(8) is None, hurt.label
(True, 'dgx-h100x2-nic_nic0_node1')
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass, replace

import networkx as nx

from ..errors import TopologyError
from .model import Link, Nic, Topology

_PART = re.compile(
    r"^(?P<kind>nic|link|gpu):(?P<what>[A-Za-z0-9_-]+)@node(?P<node>\d{1,6})(?:=(?P<factor>.+))?$"
)
_FORMS = "nic:<name|index>@node<K>, link:<a>-<b>@node<K> or gpu:<g>@node<K>"
#: the slowest a derated part may run (bytes/s): the topology files' least bandwidth
MIN_BANDWIDTH = 1e6
#: longest label of a set of faults (it goes into plan and file names)
MAX_LABEL = 80


@dataclass(frozen=True)
class Faults:
    """Parts to take out, and parts to derate (``"<part>=<fraction>"``)."""

    exclude: tuple[str, ...] = ()
    derate: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.exclude or self.derate)

    @property
    def label(self) -> str:
        """A suffix for names (and file names): the parts, in the order given.

        >>> Faults(("nic:nic0@node1",), ("link:0-1@node0=0.5",)).label
        'nic_nic0_node1-link_0-1_node0x0.5'
        """
        parts = [*self.exclude, *(d.replace("=", "x") for d in self.derate)]
        text = re.sub(r"[^A-Za-z0-9_.-]", "_", "-".join(p.replace("@", "_") for p in parts))
        if len(text) <= MAX_LABEL:  # else the first parts and a digest of them all
            return text
        digest = hashlib.sha256(text.encode()).hexdigest()[:10]
        return f"{text[: MAX_LABEL - 11]}-{digest}"


@dataclass(frozen=True)
class _Part:
    text: str
    kind: str
    node: int
    what: str
    factor: float | None  # None: excluded


def _parse(text: str, derate: bool) -> _Part:
    option = "--derate" if derate else "--exclude"
    m = _PART.match(text.strip())
    if m is None:
        form = f"{_FORMS}, then =<fraction>" if derate else _FORMS
        raise TopologyError(f"{option} {text!r}: not a part name ({form})")
    factor = None
    if derate:
        raw = m["factor"]
        try:
            factor = float(raw) if raw is not None else math.nan
        except ValueError:
            factor = math.nan
        if not (0 < factor <= 1):
            raise TopologyError(
                f"{option} {text!r}: needs =<fraction> of the bandwidth left, in (0, 1]"
            )
    elif m["factor"] is not None:
        raise TopologyError(f"{option} {text!r}: a fraction is for --derate only")
    return _Part(text.strip(), m["kind"], int(m["node"]), m["what"], factor)


def _nic(topology: Topology, part: _Part) -> Nic:
    mine = [nic for nic in topology.nics if nic.node == part.node]
    for nic in mine:
        local = nic.name.split(".", 1)[-1]
        if part.what in (local, str(nic.rail)):
            return nic
    names = ", ".join(nic.name.split(".", 1)[-1] for nic in mine) or "none"
    raise TopologyError(f"{part.text}: node {part.node} has no NIC {part.what} (its NICs: {names})")


def _links(topology: Topology, part: _Part) -> list[Link]:
    m = re.fullmatch(r"(\d{1,6})-(\d{1,6})", part.what)
    if m is None:
        raise TopologyError(f"{part.text}: a link is named by two local GPUs, e.g. link:3-5@node0")
    g = topology.gpus_per_node
    a, b = (int(x) for x in m.groups())
    for x in (a, b):
        if x >= g:
            raise TopologyError(f"{part.text}: GPU {x} out of range 0..{g - 1}")
    ra, rb = part.node * g + a, part.node * g + b
    found = [lk for lk in topology.links if {lk.src, lk.dst} == {ra, rb}]
    if not found:
        via = [sw for sw in topology.switches if ra in sw.ranks and rb in sw.ranks]
        how = (
            f"; they talk through switch {via[0].name.split('.', 1)[-1]}, whose ports are the GPUs'"
            if via
            else ""
        )
        raise TopologyError(
            f"{part.text}: node {part.node} has no link between GPUs {a} and {b}{how}"
        )
    return found


def _check_connected(topology: Topology, parts: list[_Part]) -> None:
    graph = topology.graph()
    if graph.number_of_nodes() < 2 or nx.is_strongly_connected(graph):
        return
    comps = sorted(nx.strongly_connected_components(graph), key=lambda c: (len(c), min(c)))
    cut = sorted(comps[0])
    g = topology.gpus_per_node
    nodes = sorted({r // g for r in cut})
    if len(cut) == len(nodes) * g:
        who = f"node{'s' if len(nodes) > 1 else ''} {', '.join(map(str, nodes[:8]))}"
    else:
        who = f"rank{'s' if len(cut) > 1 else ''} " + ", ".join(
            f"{r} (node {r // g}, GPU {r % g})" for r in cut[:4]
        )
    more = f" and {len(cut) - 4} more" if len(cut) > 4 and not who.startswith("node") else ""
    raise TopologyError(
        f"{topology.label}: excluding {', '.join(p.text for p in parts)} disconnects the "
        f"cluster: {who}{more} can no longer reach the others (or be reached)"
    )


def apply_faults(topology: Topology, faults: Faults) -> Topology:
    """``topology`` less the excluded parts, with the derated ones slowed; a one-line
    TopologyError for an unknown part, a GPU (which would change the rank count), or
    exclusions that leave some rank unable to reach another."""
    if not faults:
        return topology
    parts = [_parse(t, False) for t in faults.exclude] + [_parse(t, True) for t in faults.derate]
    seen: dict[tuple, str] = {}
    nics = list(topology.nics)
    links = list(topology.links)
    for part in parts:
        if part.node >= topology.nodes:
            raise TopologyError(
                f"{part.text}: {topology.label} has nodes 0..{topology.nodes - 1}, "
                f"not node {part.node}"
            )
        if part.kind == "gpu":
            raise TopologyError(
                f"{part.text}: taking out a GPU changes the rank count, which a plan fixes; "
                "run the job without that GPU's node, or exclude its links and NIC"
            )
        targets: list = [_nic(topology, part)] if part.kind == "nic" else _links(topology, part)
        key = (part.kind, tuple(sorted(id(t) for t in targets)))
        if key in seen:
            raise TopologyError(f"{part.text}: the same part as {seen[key]}")
        seen[key] = part.text
        for t in targets:
            pool: list = nics if part.kind == "nic" else links
            i = next(i for i, x in enumerate(pool) if x is t)
            if part.factor is None:
                pool.pop(i)
            else:
                slowed = t.bandwidth * part.factor
                if slowed < MIN_BANDWIDTH:
                    raise TopologyError(
                        f"{part.text}: leaves {slowed / 1e9:.3g} GB/s, less than the "
                        f"{MIN_BANDWIDTH / 1e9:g} GB/s a topology's parts may have"
                    )
                pool[i] = replace(t, bandwidth=slowed)
    types = list(topology.node_types or (topology.name,) * topology.nodes)
    for part in parts:
        what = "out" if part.factor is None else f"at {part.factor:g}"
        types[part.node] += f", {part.text.split('@')[0].split('=')[0]} {what}"
    out = replace(
        topology,
        name=f"{topology.label}-{faults.label}",
        cluster=True,
        node_types=tuple(types),
        links=tuple(links),
        nics=tuple(nics),
        description=(topology.description + f" (faults: {faults.label})").strip(),
    )
    _check_connected(out, [p for p in parts if p.factor is None])
    return out

"""A PNG drawing of a topology (``taccl topology show T --png FILE``).

:func:`topology_graph` builds the undirected networkx graph that is drawn: GPUs on a
circle per node, switches inside, NICs outside their GPUs, and network node(s) below
all nodes. Edge widths are proportional to bandwidth (GB/s); an NVLink bundle's
bandwidth is its count × the per-link bandwidth, so it is drawn thicker.
"""

from __future__ import annotations

import math
import textwrap

from ..errors import TacclError
from ..topology.model import RAIL_ONLY, Topology
from .plot import _png, _pyplot

MAX_NODES = 16
MAX_WIDTH = 6.0  # points, for the largest bandwidth in a drawing
_GB = 1e9
_COLUMNS = 4  # nodes per row of the drawing

_LINK_NAMES = {"nvlink": "NVLink", "xgmi": "xGMI", "pcie": "PCIe"}
_EDGE_COLORS = {
    "nvlink": "#76b900",
    "xgmi": "#d62728",
    "pcie": "#7f7f7f",
    "switch": "#4c72b0",
    "nic": "#ff7f0e",
    "network": "#9467bd",
}
_OTHER_LINK_COLOR = "#17becf"
_NODE_STYLE = {  # kind: (marker, size in points², colour, legend label)
    "gpu": ("o", 520, "#2f4b7c", "GPU"),
    "nvswitch": ("s", 900, "#4c72b0", "NVSwitch"),
    "pcie-switch": ("s", 700, "#7f7f7f", "PCIe switch"),
    "nic": ("D", 260, "#ff7f0e", "NIC"),
    "network": ("h", 1400, "#9467bd", "network"),
}


def _switch_kind(name: str) -> str:
    return "pcie-switch" if "pcie" in name.lower() else "nvswitch"


def _edge_label(kind: str, count: int) -> str:
    if kind == "switch":
        return "switch port"
    if kind == "nic":
        return "GPU–NIC"
    if kind == "network":
        return "NIC–network"
    name = _LINK_NAMES.get(kind, kind)
    return f"{name} ×{count}" if count > 1 else name


def _layout(topo: Topology) -> tuple[float, float, float]:
    """GPU-circle radius, NIC radius and distance between node centres."""
    radius = max(1.0, 0.08 * topo.gpus_per_node)
    nic_radius = radius + 0.5
    return radius, nic_radius, 2 * nic_radius + 0.9


def _centre(topo: Topology, node: int) -> tuple[float, float]:
    spacing = _layout(topo)[2]
    return (node % _COLUMNS) * spacing, -(node // _COLUMNS) * spacing


def topology_graph(topo: Topology):
    """The drawn graph: node attrs ``kind``, ``label``, ``node``, ``pos``; edge attrs ``kind``,
    ``bandwidth`` (bytes/s), ``count``, ``width`` (points, ∝ bandwidth), ``oneway``
    (the source rank of a one-way link, else None).

    DGX-1: 8 GPUs in a hybrid cube-mesh of 16 NVLink bundles, 4 NICs (each shared by two
    GPUs) on one network.

    >>> from collections import Counter
    >>> from taccl_py.topology.loader import load_topology
    >>> g = topology_graph(load_topology("dgx1"))
    >>> sorted(Counter(kind for _, kind in g.nodes(data="kind")).items())
    [('gpu', 8), ('network', 1), ('nic', 4)]
    >>> sorted(Counter(kind for *_, kind in g.edges(data="kind")).items())
    [('network', 4), ('nic', 8), ('nvlink', 16)]
    """
    import networkx as nx

    if topo.nodes > MAX_NODES:
        raise TacclError(f"{topo.label}: too many nodes to draw ({topo.nodes}, limit {MAX_NODES})")
    g = nx.Graph(label=topo.label)
    radius, nic_radius, spacing = _layout(topo)
    n = topo.gpus_per_node

    def on_circle(node: int, angle: float, r: float) -> tuple[float, float]:
        cx, cy = _centre(topo, node)
        return cx + r * math.cos(angle), cy + r * math.sin(angle)

    def angle(rank: int) -> float:
        return math.pi / 2 - 2 * math.pi * topo.local(rank) / n

    for rank in range(topo.num_ranks):
        g.add_node(
            f"gpu{rank}",
            kind="gpu",
            label=str(rank),
            node=topo.node_of(rank),
            pos=on_circle(topo.node_of(rank), angle(rank), radius),
        )

    pairs: dict[tuple[int, int], list] = {}
    for link in topo.links:
        pairs.setdefault((min(link.src, link.dst), max(link.src, link.dst)), []).append(link)
    for (a, b), links in pairs.items():
        best = max(links, key=lambda lk: lk.bandwidth)
        g.add_edge(
            f"gpu{a}",
            f"gpu{b}",
            kind=best.kind,
            bandwidth=best.bandwidth,
            count=best.count,
            oneway=links[0].src if len(links) == 1 else None,
        )

    for sw in topo.switches:
        xs, ys = zip(*(g.nodes[f"gpu{r}"]["pos"] for r in sw.ranks))
        g.add_node(
            f"sw:{sw.name}",
            kind=_switch_kind(sw.name),
            node=sw.node,
            label=sw.name.split(".", 1)[-1],
            pos=(sum(xs) / len(xs), sum(ys) / len(ys)),
        )
        for r in sw.ranks:
            g.add_edge(
                f"sw:{sw.name}",
                f"gpu{r}",
                kind="switch",
                bandwidth=sw.bandwidth,
                count=1,
                oneway=None,
            )

    rails = sorted({nic.rail for nic in topo.nics})
    for nic in topo.nics:
        x = sum(math.cos(angle(r)) for r in nic.ranks)
        y = sum(math.sin(angle(r)) for r in nic.ranks)
        theta = math.atan2(y, x) if math.hypot(x, y) > 1e-9 else -math.pi / 2
        g.add_node(
            f"nic:{nic.name}",
            kind="nic",
            node=nic.node,
            label=nic.name.split(".", 1)[-1],
            pos=on_circle(nic.node, theta, nic_radius),
        )
        for r in nic.ranks:
            g.add_edge(
                f"nic:{nic.name}",
                f"gpu{r}",
                kind="nic",
                bandwidth=nic.bandwidth,
                count=1,
                oneway=None,
            )
        net = f"rail{nic.rail}" if topo.network == RAIL_ONLY else "network"
        g.add_edge(
            f"nic:{nic.name}", net, kind="network", bandwidth=nic.bandwidth, count=1, oneway=None
        )

    if topo.nics:
        columns = min(topo.nodes, _COLUMNS)
        mid_x = (columns - 1) * spacing / 2
        y = -((topo.nodes - 1) // _COLUMNS) * spacing - nic_radius - 1.3
        if topo.network == RAIL_ONLY:
            step = min(1.2, columns * spacing / len(rails))
            for i, rail in enumerate(rails):
                g.nodes[f"rail{rail}"].update(
                    kind="network",
                    label=f"rail {rail}",
                    node=None,
                    pos=(mid_x + (i - (len(rails) - 1) / 2) * step, y),
                )
        else:
            g.nodes["network"].update(kind="network", label="network", node=None, pos=(mid_x, y))

    top = max(bw for _, _, bw in g.edges(data="bandwidth")) if g.number_of_edges() else 1.0
    for _, _, data in g.edges(data=True):
        data["width"] = MAX_WIDTH * data["bandwidth"] / top
    return g


def _edge_color(kind: str) -> str:
    return _EDGE_COLORS.get(kind, _OTHER_LINK_COLOR)


def topology_png(topo: Topology) -> bytes:
    """A drawing of ``topo`` as PNG bytes.

    >>> from taccl_py.topology.loader import load_topology
    >>> topology_png(load_topology("dgx1"))[:4]
    b'\\x89PNG'
    """
    import networkx as nx
    from matplotlib.lines import Line2D

    g = topology_graph(topo)
    plt = _pyplot()
    pos = nx.get_node_attributes(g, "pos")
    backdrop = _layout(topo)[1] + 0.3  # radius of the grey disc behind each node
    centres = [_centre(topo, node) for node in range(topo.nodes)]
    x0 = min(x for x, _ in centres) - backdrop - 0.2
    x1 = max(x for x, _ in centres) + backdrop + 0.2
    y0 = min([y for _, y in pos.values()] + [y - backdrop for _, y in centres]) - 0.5
    y1 = max(y for _, y in centres) + backdrop + (0.5 if topo.nodes > 1 else 0.1)
    scale = min(1.4, 22 / (x1 - x0), 16 / (y1 - y0))  # inches per unit
    fig = plt.figure(figsize=((x1 - x0) * scale + 3.0, (y1 - y0) * scale + 0.9))
    fig_w, fig_h = fig.get_size_inches()
    ax = fig.add_axes(
        (0.1 / fig_w, 0.1 / fig_h, (x1 - x0) * scale / fig_w, (y1 - y0) * scale / fig_h)
    )
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    ax.set_aspect("equal")
    ax.axis("off")

    for node, (cx, cy) in enumerate(centres):
        ax.add_patch(plt.Circle((cx, cy), backdrop, color="#f0f0f0", zorder=0))
        if topo.nodes > 1:
            ax.text(
                cx,
                cy + backdrop + 0.1,
                f"node {node}",
                ha="center",
                va="bottom",
                fontsize=9,
                color="#555555",
            )

    edges = list(g.edges(data=True))
    faint = {"network": 0.5, "nic": 0.8}
    for u, v, d in sorted(edges, key=lambda e: e[2]["kind"] != "network"):  # network first
        if d["oneway"] is None:
            nx.draw_networkx_edges(
                g,
                pos,
                edgelist=[(u, v)],
                ax=ax,
                width=d["width"],
                edge_color=_edge_color(d["kind"]),
                alpha=faint.get(d["kind"], 0.9),
            )
        else:  # drawn from its source rank, with an arrowhead
            src = f"gpu{d['oneway']}"
            nx.draw_networkx_edges(
                g,
                pos,
                edgelist=[(src, v if u == src else u)],
                ax=ax,
                width=d["width"],
                edge_color=_edge_color(d["kind"]),
                arrows=True,
                arrowstyle="-|>",
                arrowsize=14,
                node_size=_NODE_STYLE["gpu"][1],
            )

    handles = []
    for kind, (marker, size, color, label) in _NODE_STYLE.items():
        nodes = [n for n, k in g.nodes(data="kind") if k == kind]
        if not nodes:
            continue
        nx.draw_networkx_nodes(
            g,
            pos,
            nodelist=nodes,
            ax=ax,
            node_shape=marker,
            node_size=size,
            node_color=color,
            edgecolors="white",
        )
        font = 8 if kind == "gpu" else 6
        nx.draw_networkx_labels(
            g,
            pos,
            labels={n: g.nodes[n]["label"] for n in nodes},
            ax=ax,
            font_size=font,
            font_color="white",
        )
        handles.append(
            Line2D(
                [],
                [],
                marker=marker,
                linestyle="",
                markersize=9,
                markerfacecolor=color,
                markeredgecolor="white",
                label=label,
            )
        )

    seen: dict[tuple[str, int, float], float] = {}
    for _, _, d in edges:
        seen[(d["kind"], d["count"], d["bandwidth"])] = d["width"]
    for (kind, count, bw), w in sorted(seen.items(), key=lambda kv: -kv[0][2]):
        handles.append(
            Line2D(
                [],
                [],
                color=_edge_color(kind),
                linewidth=w,
                label=f"{_edge_label(kind, count)}: {bw / _GB:g} GB/s",
            )
        )
    fig.legend(
        handles=handles,
        loc="upper right",
        fontsize=8,
        frameon=False,
        borderaxespad=0.8,
        labelspacing=1.0,
    )

    shape = (
        f"{topo.nodes} nodes × {topo.gpus_per_node} GPUs"
        if topo.nodes > 1
        else f"{topo.gpus_per_node} GPUs"
    )
    extra = f", {topo.network} network" if topo.nics else ""
    fig.suptitle(
        f"{topo.label}  ({shape}{extra})", fontsize=13, fontweight="bold", x=0.02, ha="left"
    )
    if topo.description:
        fig.text(
            0.02,
            1 - 0.55 / fig_h,
            textwrap.fill(topo.description, 110),
            fontsize=8,
            color="#444444",
            va="top",
        )
    return _png(fig)

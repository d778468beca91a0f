"""PNG plots (matplotlib, Agg): algbw vs size, and a timeline of busy resources."""

from __future__ import annotations

import io
import re

from ..analysis.report import Row
from ..analysis.simulate import SimResult
from ..errors import TacclError
from ..plan.model import Plan
from ..util.units import format_size


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    """The figure as PNG bytes (written by the caller with its other outputs); always close."""
    buf = io.BytesIO()
    try:
        fig.savefig(buf, dpi=100, format="png")
    except OSError as exc:
        raise TacclError(f"cannot draw the figure: {exc.strerror or exc}") from None
    finally:
        _pyplot().close(fig)
    return buf.getvalue()


def algbw_png(rows: list[Row], plan: Plan) -> bytes:
    """PNG of algbw (GB/s) against buffer size for the plan, NCCL's best and the bound.

    >>> def row(size):  # 10 GB/s: half the bound's speed, twice NCCL's
    ...     t = size / 1e10
    ...     return Row(size, t, 1e10, t / 2, "cut", "", 50.0, 2 * t, "ring", 2.0)
    >>> algbw_png([row(1 << 20), row(1 << 24)], Plan("p", "allgather", 8, 8))[:4]
    b'\\x89PNG'
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    sizes = [r.size for r in rows]
    ax.plot(sizes, [r.algbw / 1e9 for r in rows], "o-", label=plan.name)
    if all(r.nccl_time for r in rows):
        ax.plot(sizes, [r.size / r.nccl_time / 1e9 for r in rows], "s--", label="NCCL")
    ax.plot(sizes, [r.size / r.bound_time / 1e9 for r in rows], ":", color="k", label="lower bound")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [format_size(s) for s in sizes])
    ax.set_xlabel("buffer size")
    ax.set_ylabel("algbw (GB/s)")
    ax.set_title(f"{plan.coll} on {plan.ngpus} ranks")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _png(fig)


#: resource-name prefix -> the kind the timeline's legend names (see topology.model)
RESOURCE_KINDS = {
    "link": "link",
    "swout": "switch port",
    "swin": "switch port",
    "nicout": "NIC",
    "nicin": "NIC",
}


def natural_key(name: str) -> tuple:
    """Sort key that orders the numbers inside names by value.

    >>> sorted(["link:15->0", "link:9->0", "nicin:n1.nic10", "nicin:n1.nic2"], key=natural_key)
    ['link:9->0', 'link:15->0', 'nicin:n1.nic2', 'nicin:n1.nic10']
    """
    return tuple(
        (0, int(part), "") if part.isdigit() else (1, 0, part)
        for part in re.split(r"(\d+)", name)
        if part
    )


def resource_kind(name: str) -> str:
    """The kind of a resource, from its name's prefix: link, switch port, NIC, or the prefix.

    >>> resource_kind("swin:3"), resource_kind("nicout:n0.nic1"), resource_kind("link:0->1")
    ('switch port', 'NIC', 'link')
    """
    prefix = name.split(":", 1)[0]
    return RESOURCE_KINDS.get(prefix, prefix)


def timeline_figure(result: SimResult, title: str = ""):
    """Figure with one row per link/port/NIC with its busy intervals (µs), in natural
    name order, coloured by :func:`resource_kind` with a legend of the kinds present.

    >>> busy = {"nicout:n0.nic0": [(1e-6, 2e-6)], "link:1->0": [(0.0, 1e-6), (1e-6, 2e-6)]}
    >>> fig = timeline_figure(SimResult(1 << 20, 2e-6, [2e-6, 2e-6], {}, busy))
    >>> ax = fig.axes[0]
    >>> [t.get_text() for t in ax.get_yticklabels()], ax.get_title()
    (['link:1->0', 'nicout:n0.nic0'], 'busy resources, 1M')
    >>> [t.get_text() for t in ax.get_legend().get_texts()]
    ['link', 'NIC']
    >>> _pyplot().close(fig)
    """
    plt = _pyplot()
    names = sorted(result.intervals, key=natural_key)
    if not names:
        raise TacclError("the plan moves no data: nothing to draw")
    kinds = list(dict.fromkeys(resource_kind(n) for n in names))
    colours = {k: plt.get_cmap("tab10")(i % 10) for i, k in enumerate(kinds)}
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.22 * len(names) + 1.2)))
    for y, name in enumerate(names):
        spans = [(a * 1e6, (b - a) * 1e6) for a, b in result.intervals[name]]
        ax.broken_barh(spans, (y - 0.4, 0.8), facecolors=colours[resource_kind(name)])
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.invert_yaxis()  # first name on top
    ax.set_xlabel("time (µs)")
    ax.set_title(title or f"busy resources, {format_size(result.size)}")
    ax.set_xlim(0, result.time * 1e6 * 1.02)
    ax.legend(
        handles=[plt.Rectangle((0, 0), 1, 1, color=colours[k]) for k in kinds],
        labels=kinds,
        loc="upper right",
        fontsize=8,
    )
    fig.tight_layout()
    return fig


def timeline_png(result: SimResult, title: str = "") -> bytes:
    """PNG of :func:`timeline_figure`.

    >>> timeline_png(SimResult(1 << 20, 1e-6, [1e-6], {}, {"link:0->1": [(0.0, 1e-6)]}))[:4]
    b'\\x89PNG'
    """
    return _png(timeline_figure(result, title))

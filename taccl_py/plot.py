"""PNG plots (matplotlib, Agg): algbw vs size, and a timeline of busy resources."""

from __future__ import annotations

import io

from .errors import TacclError
from .lowering.plan import Plan
from .report import Row
from .runtime.simulate import SimResult
from .units import format_size


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
    """PNG of algbw (GB/s) against buffer size for the plan, the ring baseline and the bound."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    sizes = [r.size for r in rows]
    ax.plot(sizes, [r.algbw / 1e9 for r in rows], "o-", label=plan.name)
    if all(r.ring_time for r in rows):
        ax.plot(sizes, [r.size / r.ring_time / 1e9 for r in rows], "s--", label="NCCL ring")
    ax.plot(sizes, [r.size / r.bound_time / 1e9 for r in rows], ":", color="k",
            label="lower bound")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [format_size(s) for s in sizes])
    ax.set_xlabel("buffer size")
    ax.set_ylabel("algbw (GB/s)")
    ax.set_title(f"{plan.coll} on {plan.ngpus} ranks")
    ax.grid(True, alpha=0.3)
    ax.legend()
    return _png(fig)


def timeline_png(result: SimResult, title: str = "") -> bytes:
    """PNG with one row per link/port/NIC with its busy intervals (µs)."""
    plt = _pyplot()
    names = sorted(result.intervals)
    if not names:
        raise TacclError("the plan moves no data: nothing to draw")
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.22 * len(names) + 1.2)))
    for y, name in enumerate(names):
        spans = [(a * 1e6, (b - a) * 1e6) for a, b in result.intervals[name]]
        ax.broken_barh(spans, (y - 0.4, 0.8))
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("time (µs)")
    ax.set_title(title or f"busy resources, {format_size(result.size)}")
    ax.set_xlim(0, result.time * 1e6 * 1.02)
    fig.tight_layout()
    return _png(fig)

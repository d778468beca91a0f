"""How good is a plan: simulated time, the lower bound, and NCCL's ring, per buffer size."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .collectives import Collective
from .errors import TacclError
from .lowering.plan import Plan
from .runtime.simulate import simulate
from .synth.bounds import lower_bound
from .topology import Topology
from .units import format_size


@dataclass
class Row:
    size: int
    time: float  # seconds
    algbw: float  # bytes/s
    bound_time: float
    bound_kind: str  # "cut", "flow" or "latency"
    bound_detail: str  # what makes the bound tight
    pct_of_bound: float  # 100 * bound_time / time
    ring_time: float | None
    speedup_vs_ring: float | None


def ring_plan(topology: Topology, kind: str) -> Plan | None:
    """The NCCL-like ring baseline plan, or None where the topology has no ring."""
    from .pipeline import build_plan

    try:
        return build_plan(topology, Collective(kind, topology.num_ranks), "ring").plan
    except TacclError:
        return None


def evaluate(plan: Plan, topology: Topology, sizes: list[int],
             baseline: Plan | None = None) -> list[Row]:
    """Simulate ``plan`` (and the ring baseline) at each size and compare with the bound."""
    kind = plan.collective().kind
    if baseline is None:
        baseline = ring_plan(topology, kind)
    rows = []
    for size in sizes:
        t = simulate(plan, topology, size).time
        bound = lower_bound(topology, kind, size)
        ring_t = simulate(baseline, topology, size).time if baseline is not None else None
        rows.append(Row(size, t, size / t if t else float("inf"), bound.time, bound.kind, bound.detail,
                        100.0 * bound.time / t if t else 100.0, ring_t,
                        ring_t / t if ring_t and t else None))
    return rows


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f}"


def format_table(rows: list[Row]) -> str:
    """A fixed-width table: size, time, algbw, bound, % of bound, ring time, speed-up."""
    head = (f"{'size':>8} {'time(us)':>12} {'algbw(GB/s)':>12} {'bound(us)':>12} "
            f"{'%bound':>7} {'ring(us)':>12} {'vs ring':>8}")
    lines = [head]
    for r in rows:
        ring = _us(r.ring_time) if r.ring_time is not None else "n/a"
        speed = f"{r.speedup_vs_ring:.2f}x" if r.speedup_vs_ring is not None else "n/a"
        lines.append(f"{format_size(r.size):>8} {_us(r.time):>12} {r.algbw / 1e9:>12.2f} "
                     f"{_us(r.bound_time):>12} {r.pct_of_bound:>6.1f}% {ring:>12} {speed:>8}")
    return "\n".join(lines)


def to_json(rows: list[Row]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=1)

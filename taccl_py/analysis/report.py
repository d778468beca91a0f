"""How good is a plan: simulated time, the lower bound, and NCCL, per buffer size.

"NCCL" is the best (algorithm, protocol) of NCCL's model at each size
(:func:`taccl_py.analysis.nccl_model.nccl_best`: NCCL's ring and tree as plans in the same
simulator, NVLS by NCCL's own tuning formula; for Gather and Scatter, which NCCL lacks,
torch's grouped send/recv), not a measurement. A rooted plan is compared with the bound
and NCCL's model at its own root.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from ..collectives import Collective
from ..errors import TacclError
from ..plan.model import Plan
from ..topology import Topology
from ..util.units import format_size
from .bounds import lower_bound
from .simulate import simulate


@dataclass
class Row:
    size: int
    time: float  # seconds
    algbw: float  # bytes/s
    bound_time: float
    bound_kind: str  # "cut", "flow" or "latency"
    bound_detail: str  # what makes the bound tight
    pct_of_bound: float  # 100 * bound_time / time
    nccl_time: float
    nccl_choice: str  # NCCL's best algorithm/protocol at this size, e.g. "ring/LL"
    speedup_vs_nccl: float


def ring_plan(topology: Topology, kind: str, root: int = 0) -> Plan | None:
    """The NCCL-like ring baseline plan (rooted at ``root`` for a rooted ``kind``), or None
    where the topology has no ring."""
    from ..build.pipeline import build_plan

    try:
        return build_plan(topology, Collective(kind, topology.num_ranks, root=root), "ring").plan
    except TacclError:
        return None


def evaluate(
    plan: Plan,
    topology: Topology,
    sizes: list[int],
    nccl_plans: dict[tuple[str, str], Plan] | None = None,
) -> list[Row]:
    """Simulate ``plan`` at each size; compare with the lower bound and NCCL's best
    (``nccl_plans``: NCCL's plans already built, see :func:`.nccl_model.nccl_best`).

    >>> from taccl_py.topology.loader import load_topology
    >>> topo = load_topology("dgx1")
    >>> [row.nccl_choice for row in evaluate(ring_plan(topo, "allgather"), topo, [1 << 30])]
    ['ring/Simple']
    >>> [row.nccl_choice for row in evaluate(ring_plan(topo, "scatter", 3), topo, [1 << 30])]
    ['p2p/Simple']
    """
    from .nccl_model import nccl_best

    kind, root = plan.collective().kind, plan.root
    rows = []
    for size in sizes:
        t = simulate(plan, topology, size).call_time  # as NCCL's: with the base latency
        bound = lower_bound(topology, kind, size, root)
        nccl = nccl_best(topology, kind, size, nccl_plans, root=root)
        rows.append(
            Row(
                size,
                t,
                size / t if t else float("inf"),
                bound.time,
                bound.kind,
                bound.detail,
                100.0 * bound.time / t if t else 100.0,
                nccl.time,
                f"{nccl.algorithm}/{nccl.protocol}" + (FORMULA_MARK if _by_formula(nccl) else ""),
                nccl.time / t if t else float("inf"),
            )
        )
    return rows


#: marks a ring or tree of NCCL timed by tuning.cc's formula (its plan too big to simulate)
FORMULA_MARK = "*"


def _by_formula(nccl) -> bool:
    from .nccl_model import FORMULA, PLAN_METHODS

    return nccl.how == FORMULA and nccl.algorithm in PLAN_METHODS


def _us(seconds: float) -> str:
    return f"{seconds * 1e6:,.1f}"


def format_table(rows: list[Row]) -> str:
    """A fixed-width table: size, time, algbw, bound, % of bound, NCCL's best, speed-up."""
    head = (
        f"{'size':>8} {'time(us)':>12} {'algbw(GB/s)':>12} {'bound(us)':>12} "
        f"{'%bound':>7} {'NCCL(us)':>12} {'NCCL algo':<14} {'vs NCCL':>8}"
    )
    lines = [head]
    for r in rows:
        lines.append(
            f"{format_size(r.size):>8} {_us(r.time):>12} {r.algbw / 1e9:>12.2f} "
            f"{_us(r.bound_time):>12} {r.pct_of_bound:>6.1f}% {_us(r.nccl_time):>12} "
            f"{r.nccl_choice:<14} {r.speedup_vs_nccl:>7.2f}x"
        )
    if any(r.nccl_choice.endswith(FORMULA_MARK) for r in rows):
        lines.append(
            f"{FORMULA_MARK} NCCL's plan is too big to simulate at this cluster size: "
            "timed by tuning.cc's formula"
        )
    return "\n".join(lines)


def to_json(rows: list[Row]) -> str:
    return json.dumps([asdict(r) for r in rows], indent=1)

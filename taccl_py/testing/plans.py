"""Small plans built in memory, for examples and quick checks of the executors."""

from __future__ import annotations

from ..plan.model import GpuPlan, Plan, Step, Threadblock


def direct_allgather(n: int = 2) -> Plan:
    """An out-of-place AllGather on ``n`` ranks, one chunk per rank: every rank sends its
    input chunk straight to each other rank (one threadblock per peer, which then receives
    that peer's chunk) and copies its own into place (its last threadblock).

    >>> from taccl_py.plan.verify import verify
    >>> plan = direct_allgather(3)
    >>> [[(tb.send, [st.type for st in tb.steps]) for tb in gpu.tbs] for gpu in plan.gpus][0]
    [(1, ['s', 'r']), (2, ['s', 'r']), (-1, ['cpy'])]
    >>> verify(plan).summary()  # doctest: +NORMALIZE_WHITESPACE
    '15 steps (6 sends, 0 reductions, 0 nops) in 9 threadblocks (<= 3 per rank, <= 2 steps
    each), 6 connections, critical path 2 steps'
    """
    gpus = []
    for r in range(n):
        peers = [p for p in range(n) if p != r]
        tbs = [
            Threadblock(
                i, send=p, recv=p, steps=[Step(0, "s", "i", 0), Step(1, "r", None, -1, "o", p)]
            )
            for i, p in enumerate(peers)
        ]
        tbs.append(Threadblock(n - 1, steps=[Step(0, "cpy", "i", 0, "o", r)]))
        gpus.append(GpuPlan(r, 1, n, tbs=tbs))
    return Plan(f"direct_allgather_{n}", "allgather", n, n, gpus=gpus)

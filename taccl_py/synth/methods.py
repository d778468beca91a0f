"""The synthesis methods by name: each maps (topology, collective, options) -> Algorithm."""

from __future__ import annotations

from ..collectives import Collective
from ..errors import TacclError
from ..ir.algorithm import Algorithm
from ..topology import Topology
from .baselines.direct import direct_algorithm
from .baselines.ring import ring_algorithm
from .baselines.trees import tree_algorithm
from .milp.search import staged_algorithm

METHODS = ("ring", "direct", "tree", "milp", "smt")

#: buffer size the "milp" method targets when none is given (nccl-tests convention)
DEFAULT_SIZE = 1 << 30


def synthesize(
    topology: Topology,
    collective: Collective,
    method: str = "ring",
    *,
    order: list[int] | None = None,
    size: int = DEFAULT_SIZE,
    time_limit: float = 60.0,
    progress=None,
    sketch=None,
    judge=None,
    steps: int | None = None,
    rounds: int | None = None,
    chunks: int | None = None,
) -> Algorithm:
    """Make an algorithm for ``collective`` on ``topology`` with the named method.

    ``size`` (bytes), ``sketch`` (a communication sketch, see
    :mod:`taccl_py.synth.milp.sketch`) and ``judge`` (scores a candidate algorithm, e.g. by
    simulation) only matter to the ``milp`` method; a sketch with another method is a
    TacclError. ``steps``, ``rounds`` and ``chunks`` only matter to the ``smt`` method
    (see :func:`smt_method`). ``time_limit`` (s) bounds the milp and smt searches,
    ``progress`` (a callback ``(stage, elapsed, incumbent, gap)``) is told of their
    solves.
    """
    if collective.num_ranks != topology.num_ranks:
        raise TacclError(
            f"collective has {collective.num_ranks} ranks but topology "
            f"{topology.label} has {topology.num_ranks}"
        )
    if order is not None and method != "ring":
        raise TacclError("a rank order (--order) only applies to --method ring")
    if sketch is not None and method != "milp":
        raise TacclError("--sketch only applies to --method milp")
    if method == "ring":
        return ring_algorithm(topology, collective, order=order)
    if method == "direct":
        return direct_algorithm(topology, collective)
    if method == "tree":
        return tree_algorithm(topology, collective)
    if method == "milp":
        return staged_algorithm(
            topology,
            collective,
            size=size,
            time_limit=time_limit,
            progress=progress,
            sketch=sketch,
            judge=judge,
        )
    if method == "smt":
        return smt_method(
            topology,
            collective,
            steps=steps,
            rounds=rounds,
            chunks=chunks,
            time_limit=time_limit,
            progress=progress,
        )
    raise TacclError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")


def smt_method(
    topology: Topology,
    collective: Collective,
    *,
    steps: int | None = None,
    rounds: int | None = None,
    chunks: int | None = None,
    time_limit: float = 60.0,
    progress=None,
) -> Algorithm:
    """Method "smt": with ``steps`` and ``rounds``, exactly that synchronous algorithm
    (``chunks`` defaults to the collective's chunk-up); otherwise the bandwidth-optimal
    point of the SMT Pareto frontier within ``steps`` (default: least steps + 2) and
    ``chunks`` (default 8) chunks per block, found within ``time_limit`` s in all (see
    :func:`~.smt.bandwidth_optimal`)."""
    from .smt import bandwidth_optimal, smt_algorithm

    if (steps is None) != (rounds is None) and rounds is not None:
        raise TacclError("--rounds needs --steps")
    if steps is not None and rounds is not None:
        return smt_algorithm(
            topology,
            collective,
            steps,
            rounds,
            chunks or collective.chunkup,
            time_limit=time_limit,
            progress=progress,
        )
    return bandwidth_optimal(
        topology,
        collective.kind,
        max_steps=steps,
        max_chunks=chunks or 8,
        time_limit=time_limit,
        progress=progress,
    )

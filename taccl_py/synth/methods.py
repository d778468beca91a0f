"""The synthesis methods by name: each maps (topology, collective, options) -> Algorithm."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..collectives import Collective
from ..errors import TacclError
from ..ir.algorithm import Algorithm
from ..topology import Topology
from .baselines.direct import direct_algorithm
from .baselines.ring import ring_algorithm
from .baselines.trees import tree_algorithm
from .milp.search import Progress, staged_algorithm
from .milp.sketch import Sketch

METHODS = ("ring", "direct", "tree", "milp", "smt")

#: buffer size the "milp" method targets when none is given (nccl-tests convention)
DEFAULT_SIZE = 1 << 30


@dataclass(frozen=True)
class SynthOptions:
    """What the synthesis methods take besides the topology and the collective; each
    setting matters to the methods named.

    ``size``: bytes the plan targets (milp; 0: :data:`DEFAULT_SIZE`); ``time_limit``:
    seconds for the search (milp, smt); ``progress``: told of the solves as
    ``progress(stage, elapsed_s, incumbent, gap)`` (milp, smt); ``sketch``: narrows the
    search (milp, see :mod:`taccl_py.synth.milp.sketch`); ``judge``: scores a candidate
    algorithm, lower is better, e.g. by simulation (milp); ``order``: the one ring's rank
    order (ring); ``steps``, ``rounds``, ``chunks``: see :func:`smt_method` (smt).

    >>> SynthOptions(time_limit=5).size, SynthOptions().time_limit
    (0, 60.0)
    """

    size: int = 0
    time_limit: float = 60.0
    progress: Progress | None = None
    sketch: Sketch | None = None
    judge: Callable[[Algorithm], float] | None = None
    order: list[int] | None = None
    steps: int | None = None
    rounds: int | None = None
    chunks: int | None = None


def synthesize(
    topology: Topology,
    collective: Collective,
    method: str = "ring",
    options: SynthOptions = SynthOptions(),
) -> Algorithm:
    """Make an algorithm for ``collective`` on ``topology`` with the named method
    (one of :data:`METHODS`).

    A setting of ``options`` that does not apply to ``method`` is ignored, except a rank
    ``order`` (ring only) and a ``sketch`` (milp only), which are TacclErrors.

    >>> from taccl_py.topology.loader import load_topology
    >>> alg = synthesize(load_topology("dgx1"), Collective("allgather", 8), "ring")
    >>> alg.num_ranks, alg.nchannels
    (8, 6)
    """
    if collective.num_ranks != topology.num_ranks:
        raise TacclError(
            f"collective has {collective.num_ranks} ranks but topology "
            f"{topology.label} has {topology.num_ranks}"
        )
    o = options
    if o.order is not None and method != "ring":
        raise TacclError("a rank order (--order) only applies to --method ring")
    if o.sketch is not None and method != "milp":
        raise TacclError("--sketch only applies to --method milp")
    if method == "ring":
        return ring_algorithm(topology, collective, order=o.order)
    if method == "direct":
        return direct_algorithm(topology, collective)
    if method == "tree":
        return tree_algorithm(topology, collective)
    if method == "milp":
        return staged_algorithm(
            topology,
            collective,
            size=o.size or DEFAULT_SIZE,
            time_limit=o.time_limit,
            progress=o.progress,
            sketch=o.sketch,
            judge=o.judge,
        )
    if method == "smt":
        return smt_method(
            topology,
            collective,
            steps=o.steps,
            rounds=o.rounds,
            chunks=o.chunks,
            time_limit=o.time_limit,
            progress=o.progress,
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

    if topology.num_ranks == 1:  # nothing moves: the empty algorithm (no steps to search)
        return Algorithm("smt", collective, [], topology.label)

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
        root=collective.root,
    )

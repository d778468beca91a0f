"""The synthesis methods by name: each maps (topology, collective, options) -> Algorithm."""

from __future__ import annotations

from ..collectives import Collective
from ..errors import TacclError
from ..topology import Topology
from .direct import direct_algorithm
from .ir import Algorithm
from .ring import ring_algorithm
from .staged import staged_algorithm

METHODS = ("ring", "direct", "milp")

#: buffer size the "milp" method targets when none is given (nccl-tests convention)
DEFAULT_SIZE = 1 << 30


def synthesize(topology: Topology, collective: Collective, method: str = "ring", *,
               order: list[int] | None = None, size: int = DEFAULT_SIZE,
               time_limit: float = 60.0, progress=None, sketch=None,
               judge=None) -> Algorithm:
    """Make an algorithm for ``collective`` on ``topology`` with the named method.

    ``size`` (bytes), ``time_limit`` (s), ``progress`` (a callback
    ``(stage, elapsed, incumbent, gap)``) and ``sketch`` (a communication sketch, see
    :mod:`taccl_py.synth.sketch`) and ``judge`` (scores a candidate algorithm, e.g. by
    simulation) only matter to the ``milp`` method; a sketch with another method is a
    TacclError.
    """
    if collective.num_ranks != topology.num_ranks:
        raise TacclError(f"collective has {collective.num_ranks} ranks but topology "
                         f"{topology.label} has {topology.num_ranks}")
    if order is not None and method != "ring":
        raise TacclError("a rank order (--order) only applies to --method ring")
    if sketch is not None and method != "milp":
        raise TacclError("--sketch only applies to --method milp")
    if method == "ring":
        return ring_algorithm(topology, collective, order=order)
    if method == "direct":
        return direct_algorithm(topology, collective)
    if method == "milp":
        return staged_algorithm(topology, collective, size=size, time_limit=time_limit,
                                progress=progress, sketch=sketch, judge=judge)
    raise TacclError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")

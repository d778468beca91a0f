"""The candidate plans of a collective: every method's algorithm, lowered and verified once.

:func:`build_candidates` makes one algorithm per applicable method (``milp`` at one or more
target sizes, ``smt`` where the topology is small, the NCCL baselines ``ring``, ``tree``
and ``direct``), lowers it for the target runtime and verifies it at the data level. A
method that fails or whose plan the runtime would not load is dropped with its reason.
The protocol (Simple, LL, LL128) does not change what a plan computes, so a candidate is
verified once and timed under each protocol by :meth:`Candidate.time`.

Which candidates are NCCL's own algorithms (:func:`is_nccl_algorithm`) matters to plan
libraries: where one of those is fastest, no plan is written and NCCL runs.

Example:

>>> from taccl_py.topology.loader import load_topology
>>> from taccl_py.collectives import Collective
>>> topo = load_topology("dgx1")
>>> found = build_candidates(topo, Collective("allgather", 8),
...                          CandidateOptions(methods=("ring", "direct")))
>>> sorted(c.method for c in found.candidates)
['direct', 'ring']
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ..analysis.nccl_model import reusable_plans
from ..analysis.simulate import simulate
from ..collectives import (
    ALLGATHER,
    ALLREDUCE,
    ALLTOALL,
    BROADCAST,
    GATHER,
    REDUCE,
    ROOTED_KINDS,
    SCATTER,
    Collective,
)
from ..errors import SketchError, TacclError
from ..ir.algorithm import Algorithm
from ..lowering.lower import LowerOptions, lower
from ..plan.model import Plan
from ..plan.runtimes import DEFAULT_RUNTIME, RUNTIMES, check_runtime
from ..plan.verify import VerifyReport, verify
from ..synth.methods import SynthOptions, synthesize
from ..synth.milp.search import Progress
from ..synth.milp.sketch import Sketch
from ..topology import Topology

#: the protocols a candidate is timed with
PROTOCOLS = ("Simple", "LL", "LL128")
#: the smt method is tried up to this many ranks (one node), within SMT_TIME_LIMIT seconds
SMT_MAX_RANKS = 8
SMT_TIME_LIMIT = 10.0
#: the collectives the smt method is tried for
SMT_KINDS = (ALLGATHER, ALLTOALL, BROADCAST, REDUCE, GATHER, SCATTER)
#: every method, in the order candidates are built and reported
ALL_METHODS = ("milp", "smt", "ring", "tree", "direct")


def is_nccl_algorithm(method: str, kind: str) -> bool:
    """Whether ``method`` is what NCCL itself runs for ``kind`` (its ring for AllGather,
    ReduceScatter, AllReduce, Broadcast and Reduce, its tree for AllReduce, point-to-point
    for AllToAll, and for Gather and Scatter, which torch's NCCL backend runs as grouped
    sends and receives).

    >>> is_nccl_algorithm("ring", "allgather"), is_nccl_algorithm("direct", "allgather")
    (True, False)
    >>> is_nccl_algorithm("direct", "gather"), is_nccl_algorithm("ring", "broadcast")
    (True, True)
    """
    if kind in (ALLTOALL, GATHER, SCATTER):
        return method == "direct"
    return method == "ring" or (method == "tree" and kind == ALLREDUCE)


@dataclass(frozen=True)
class CandidateOptions:
    """How candidates are made.

    ``sizes``: the buffer sizes milp targets (one solve each); ``methods``: which methods
    to try (default all that apply); ``runtime``/``max_steps``: the loader the plans must
    fit; ``progress``: a callback ``(stage, elapsed, incumbent, gap)``.
    """

    sizes: tuple[int, ...] = (1 << 20,)
    methods: tuple[str, ...] = ALL_METHODS
    time_limit: float = 60.0
    runtime: str = DEFAULT_RUNTIME
    max_steps: int | None = None
    instances: int = 1
    sketch: Sketch | None = None
    progress: Progress | None = None


@dataclass
class Candidate:
    """A verified plan of one method; ``label`` names it in reports (e.g. ``milp@1M``)."""

    method: str
    label: str
    algorithm: Algorithm
    plan: Plan
    report: VerifyReport

    def with_proto(self, proto: str) -> Plan:
        """The same plan under another protocol (what it computes does not change)."""
        return dataclasses.replace(self.plan, proto=proto, name=f"{self.plan.name}-{proto}")

    def time(self, topology: Topology, size: int, proto: str) -> float:
        """Simulated seconds of one call at ``size`` bytes under ``proto`` (the protocol's
        per-call base latency included, as NCCL's are)."""
        return simulate(self.with_proto(proto), topology, size).call_time


@dataclass
class Candidates:
    """What :func:`build_candidates` found: the candidates and the methods dropped, with why."""

    candidates: list[Candidate] = field(default_factory=list)
    dropped: list[tuple[str, str]] = field(default_factory=list)
    #: the plans of NCCL's model among the candidates, for :func:`nccl_best`'s ``plans``
    nccl: dict[tuple[str, str], Plan] = field(default_factory=dict)


def build_candidates(
    topology: Topology, collective: Collective, options: CandidateOptions = CandidateOptions()
) -> Candidates:
    """Every applicable method's verified plan for ``collective`` on ``topology``."""
    if options.runtime not in RUNTIMES:
        raise TacclError(
            f"unknown runtime {options.runtime!r}; choose one of {', '.join(RUNTIMES)}"
        )
    found = Candidates()
    for method in options.methods:
        for label, make in _makers(topology, collective, method, options):
            try:
                alg = make()
                found.candidates.append(_candidate(method, label, alg, topology, options))
            except SketchError:
                raise
            except TacclError as exc:
                found.dropped.append((label, str(exc)))
    built = {c.method: c.plan for c in found.candidates}
    found.nccl = reusable_plans(topology, collective, built, _lowering(options), verified=True)
    return found


def _makers(topology: Topology, coll: Collective, method: str, options: CandidateOptions):
    """(label, thunk making the algorithm) for each algorithm ``method`` contributes."""
    if method == "milp":
        return [
            (f"milp@{_fmt(size)}", lambda size=size: _milp(topology, coll, size, options))
            for size in sorted(set(options.sizes))
        ]
    if method == "smt":
        if coll.kind not in SMT_KINDS or topology.num_ranks > SMT_MAX_RANKS or topology.nodes > 1:
            return []
        return [
            (
                "smt",
                lambda: synthesize(
                    topology,
                    coll,
                    "smt",
                    SynthOptions(
                        time_limit=min(options.time_limit, SMT_TIME_LIMIT),
                        progress=options.progress,
                    ),
                ),
            )
        ]
    if method == "tree" and coll.kind != ALLREDUCE and coll.kind not in ROOTED_KINDS:
        return []
    return [(method, lambda: synthesize(topology, coll, method))]


def _milp(topology: Topology, coll: Collective, size: int, options: CandidateOptions) -> Algorithm:
    """The staged synthesizer's algorithm for ``size``, its inner candidates judged by the
    simulated time of their lowered plans (Simple protocol)."""

    def judge(alg: Algorithm) -> float:
        return simulate(_lower(alg, topology, options, "milp"), topology, size).time

    alg = synthesize(
        topology,
        coll,
        "milp",
        SynthOptions(
            size=size,
            time_limit=options.time_limit,
            progress=options.progress,
            sketch=options.sketch,
            judge=judge,
        ),
    )
    alg.size = size
    return alg


def _lower(alg: Algorithm, topology: Topology, options: CandidateOptions, label: str) -> Plan:
    name = f"{topology.label}-{alg.collective.label}-{label}"
    return lower(alg, topology, dataclasses.replace(_lowering(options), name=name))


def _lowering(options: CandidateOptions) -> LowerOptions:
    """How every candidate is lowered (its name aside)."""
    return LowerOptions(
        instances=options.instances, runtime=options.runtime, max_steps=options.max_steps
    )


def _candidate(
    method: str, label: str, alg: Algorithm, topology: Topology, options: CandidateOptions
) -> Candidate:
    plan = _lower(alg, topology, options, label)
    # sizes are chosen later (a library sets minBytes/maxBytes per range)
    problems = check_runtime(plan, options.runtime, max_steps=options.max_steps, selection=False)
    if problems:
        raise TacclError(f"{options.runtime} would not load it: {problems[0]}")
    return Candidate(method, label, alg, plan, verify(plan))


def _fmt(size: int) -> str:
    from ..util.units import format_size

    return format_size(size)

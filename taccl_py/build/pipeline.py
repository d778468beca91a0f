"""Topology + collective -> algorithm -> verified plan: the path every emitted plan takes."""

from __future__ import annotations

from dataclasses import dataclass

from ..analysis.simulate import simulate
from ..collectives import Collective
from ..errors import SketchError, TacclError
from ..ir.algorithm import Algorithm
from ..lowering.lower import lower
from ..plan.model import Plan
from ..plan.runtimes import DEFAULT_RUNTIME
from ..plan.verify import VerifyReport, verify
from ..synth.methods import DEFAULT_SIZE, synthesize
from ..topology import Topology

#: what method milp's result must beat at its target size to be kept
BASELINES = ("ring", "direct", "tree")


@dataclass
class Result:
    algorithm: Algorithm
    plan: Plan
    report: VerifyReport


def build_plan(
    topology: Topology,
    collective: Collective,
    method: str = "ring",
    *,
    order: list[int] | None = None,
    instances: int = 1,
    size: int = 0,
    proto: str = "Simple",
    min_bytes: int = 0,
    max_bytes: int = 0,
    time_limit: float = 60.0,
    progress=None,
    sketch=None,
    smt: dict | None = None,
    runtime: str = DEFAULT_RUNTIME,
    max_steps: int | None = None,
) -> Result:
    """Synthesize, lower and verify; raises on any fault, so a returned plan is correct.

    ``size`` is the buffer size the plan targets (0: the method's default); ``sketch``
    (method milp only) narrows the synthesizer's search. Method milp judges its candidates
    by their lowered plans' simulated time at ``size``, and keeps the ring,
    direct and tree (AllReduce) baselines instead when one of them simulates faster at ``size``
    (``algorithm.meta["chosen"]`` says which; ``meta["candidates"]`` has every time).
    The plan fits ``runtime``'s loader (``max_steps``: a custom build's step limit).
    """
    name = f"{topology.label}-{collective.kind}-{method}"
    lowering = {
        "instances": instances,
        "proto": proto,
        "min_bytes": min_bytes,
        "max_bytes": max_bytes,
        "name": name,
        "topology": topology,
        "runtime": runtime,
        "max_steps": max_steps,
    }
    kw = {"size": size} if size else {}
    if method != "milp":
        if method == "smt":  # smt: steps/rounds/chunks, the search bounded by time_limit
            kw.update(smt or {}, time_limit=time_limit, progress=progress)
        alg = synthesize(topology, collective, method, order=order, sketch=sketch, **kw)
        alg.size = size
        plan = lower(alg, **lowering)
        return Result(alg, plan, verify(plan))
    size = size or DEFAULT_SIZE
    try:
        alg = synthesize(
            topology,
            collective,
            method,
            time_limit=time_limit,
            size=size,
            progress=progress,
            sketch=sketch,
            judge=lambda a: simulate(lower(a, **lowering), topology, size).time,
        )
    except SketchError:
        raise
    except TacclError as exc:  # no routing in time: the baselines are the incumbents
        if progress is not None:
            progress(f"no synthesized plan ({exc}); keeping the best baseline", 0.0, None, None)
        alg, plan = _fastest(topology, collective, size, None, lowering)
    else:
        alg, plan = _fastest(topology, collective, size, (alg, lower(alg, **lowering)), lowering)
    return Result(alg, plan, verify(plan))


def _fastest(
    topology: Topology,
    collective: Collective,
    size: int,
    synthesized: tuple[Algorithm, Plan] | None,
    lowering: dict,
) -> tuple[Algorithm, Plan]:
    """The synthesized plan or a baseline's, whichever simulates faster at ``size``."""
    best, times = None, {}
    if synthesized is not None:
        alg, plan = synthesized
        times["milp"] = simulate(plan, topology, size).time
        best = (times["milp"], "milp", alg, plan)
    for baseline in BASELINES:
        try:
            other = synthesize(topology, collective, baseline)
            other.size = size
            other_plan = lower(other, **lowering)
        except TacclError:  # e.g. no ring over the links, or too many peers for MSCCL
            continue
        times[baseline] = simulate(other_plan, topology, size).time
        if best is None or times[baseline] < best[0] * (1 - 1e-9):
            best = (times[baseline], baseline, other, other_plan)
    if best is None:
        raise TacclError(
            f"no plan for {collective.kind} on {topology.label}: the "
            "synthesizer found none in time and no baseline applies"
        )
    _, chosen, alg_kept, plan_kept = best
    alg_kept.meta.update(chosen=chosen, candidates=times)
    return alg_kept, plan_kept

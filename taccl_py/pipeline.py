"""Topology + collective -> algorithm -> verified plan: the path every emitted plan takes."""

from __future__ import annotations

from dataclasses import dataclass

from .collectives import Collective
from .errors import TacclError
from .lowering.lower import lower
from .lowering.plan import Plan
from .runtime.simulate import simulate
from .runtime.verify import VerifyReport, verify
from .synth.ir import Algorithm
from .synth.methods import synthesize
from .topology import Topology

#: what method milp's result must beat at its target size to be kept
BASELINES = ("ring", "direct")


@dataclass
class Result:
    algorithm: Algorithm
    plan: Plan
    report: VerifyReport


def build_plan(topology: Topology, collective: Collective, method: str = "ring", *,
               order: list[int] | None = None, instances: int = 1, size: int = 0,
               proto: str = "Simple", min_bytes: int = 0, max_bytes: int = 0,
               time_limit: float = 60.0, progress=None, sketch=None) -> Result:
    """Synthesize, lower and verify; raises on any fault, so a returned plan is correct.

    ``size`` is the buffer size the plan targets (0: the method's default); ``sketch``
    (method milp only) narrows the synthesizer's search. Method milp judges its candidates
    by their lowered plans' simulated time at ``size``, and keeps the ring and
    direct baselines instead when one of them simulates faster at ``size``
    (``algorithm.meta["chosen"]`` says which; ``meta["candidates"]`` has every time).
    """
    name = f"{topology.label}-{collective.kind}-{method}"
    lowering = {"instances": instances, "proto": proto, "min_bytes": min_bytes,
                "max_bytes": max_bytes, "name": name, "topology": topology}
    kw = {"size": size} if size else {}
    if method == "milp":
        kw["judge"] = lambda a: simulate(lower(a, **lowering), topology, a.size).time
    alg = synthesize(topology, collective, method, order=order, time_limit=time_limit,
                     progress=progress, sketch=sketch, **kw)
    alg.size = size or alg.size
    plan = lower(alg, **lowering)
    if method == "milp":
        alg, plan = _fastest(topology, collective, alg, plan, lowering)
    report = verify(plan)
    return Result(alg, plan, report)


def _fastest(topology: Topology, collective: Collective, alg: Algorithm, plan: Plan,
             lowering: dict) -> tuple[Algorithm, Plan]:
    """The synthesized plan or a baseline's, whichever simulates faster at its size."""
    size = alg.size
    best = (simulate(plan, topology, size).time, "milp", alg, plan)
    times = {"milp": best[0]}
    for baseline in BASELINES:
        try:
            other = synthesize(topology, collective, baseline)
        except TacclError:  # e.g. no ring over the topology's links
            continue
        other.size = size
        other_plan = lower(other, **lowering)
        times[baseline] = simulate(other_plan, topology, size).time
        if times[baseline] < best[0] * (1 - 1e-9):
            best = (times[baseline], baseline, other, other_plan)
    _, chosen, alg_kept, plan_kept = best
    alg_kept.meta.update(chosen=chosen, candidates=times)
    return alg_kept, plan_kept

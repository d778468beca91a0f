"""Topology + collective -> algorithm -> verified plan: the path every emitted plan takes."""

from __future__ import annotations

from dataclasses import dataclass

from .collectives import Collective
from .lowering.lower import lower
from .lowering.plan import Plan
from .runtime.verify import VerifyReport, verify
from .synth.ir import Algorithm
from .synth.methods import synthesize
from .topology import Topology


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
    (method milp only) narrows the synthesizer's search.
    """
    kw = {"size": size} if size else {}
    alg = synthesize(topology, collective, method, order=order, time_limit=time_limit,
                     progress=progress, sketch=sketch, **kw)
    alg.size = size
    name = f"{topology.label}-{collective.kind}-{method}"
    plan = lower(alg, instances=instances, proto=proto, min_bytes=min_bytes,
                 max_bytes=max_bytes, name=name, topology=topology)
    report = verify(plan)
    return Result(alg, plan, report)

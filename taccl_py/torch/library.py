"""Which plan runs a collective: a directory of XML plans, else a fallback plan cached on disk.

Every plan of the directory is verified when the library loads it: an invalid one is refused
with the verifier's reason. A plan in the directory serves a call when its collective and
rank count match, the call's buffer size (the larger of input and output, in bytes) lies in
its ``[minBytes, maxBytes]`` range (0 = unbounded) and the buffer divides into its chunks
(AllReduce buffers are padded instead). Among several, the one with the narrowest range wins
(a plan made for this size beats a catch-all), then the file name. With none, a fallback plan
is synthesized once, verified, and cached as XML under the cache directory, so later
processes load (and verify) it instead of synthesizing again: the ring (chunk-up 1), except
for AllToAll, whose ring would relay most data through other ranks, so the direct plan (every
rank sends each block straight to its owner) is the fallback there.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..collectives import Collective
from ..errors import TacclError
from ..plan.model import Plan
from ..plan.verify import verify
from ..plan.xml import parse_plan, plan_to_xml
from ..topology.model import FULL_BISECTION, Switch, Topology
from ..util.fileio import atomic_write_text

log = logging.getLogger("taccl_py.torch")
PLAN_DIR_ENV = "TACCL_PLAN_DIR"
CACHE_DIR_ENV = "TACCL_CACHE_DIR"
#: fallback method per collective (ring otherwise)
FALLBACK = {"alltoall": "direct"}


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get(CACHE_DIR_ENV) or Path(base) / "taccl_py")


class PlanLibrary:
    """Plans of ``plan_dir`` (default ``$TACCL_PLAN_DIR``), fallbacks cached in ``cache_dir``."""

    def __init__(
        self, plan_dir: str | Path | None = None, cache_dir: str | Path | None = None
    ) -> None:
        plan_dir = plan_dir if plan_dir is not None else os.environ.get(PLAN_DIR_ENV)
        self.plan_dir = Path(plan_dir) if plan_dir else None
        self.cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
        self.plans: list[tuple[str, Plan]] = []
        self._origin: dict[int, str] = {}  # id of a plan -> where it comes from
        if self.plan_dir is not None:
            if not self.plan_dir.is_dir():
                raise TacclError(
                    f"plan directory {self.plan_dir} does not exist "
                    f"(set by {PLAN_DIR_ENV} or plan_dir=)"
                )
            for path in sorted(self.plan_dir.glob("*.xml")):
                self.plans.append((path.name, load_verified(path)))
            self._origin = {id(plan): str(self.plan_dir / name) for name, plan in self.plans}
        self._fallbacks: dict[tuple[str, int, bool], Plan] = {}
        self._announced: set[int] = set()

    def choose(
        self, kind: str, nranks: int, nbytes: int, elems: int, inplace: bool = False
    ) -> Plan:
        """The plan for a ``kind`` collective on ``nranks`` ranks whose buffer has ``nbytes``
        bytes in ``elems`` elements; ``inplace`` asks for an in-place plan when one exists."""
        fits = []
        for name, plan in self.plans:
            if plan.coll != kind or plan.ngpus != nranks:
                continue
            if elems % plan.nchunksperloop and kind != "allreduce":  # AllReduce gets padded
                continue
            if nbytes < plan.min_bytes or (plan.max_bytes and nbytes > plan.max_bytes):
                continue
            width = (plan.max_bytes or 1 << 62) - plan.min_bytes
            fits.append((plan.inplace != inplace, width, name, plan))
        plan = min(fits, key=lambda f: f[:3])[3] if fits else self.fallback(kind, nranks, inplace)
        if id(plan) not in self._announced:  # once per plan: which one serves this call
            self._announced.add(id(plan))
            log.info(
                "%s of %d B on %d ranks: plan %s (%s)",
                kind,
                nbytes,
                nranks,
                plan.name,
                self._origin.get(id(plan), "fallback"),
            )
        return plan

    def fallback(self, kind: str, nranks: int, inplace: bool = False) -> Plan:
        """The verified fallback plan (chunk-up 1), from memory, the cache, or synthesized."""
        key = (kind, nranks, inplace)
        if key not in self._fallbacks:
            method = FALLBACK.get(kind, "ring")
            path = self.cache_dir / (f"{method}-{kind}-{nranks}{'-inplace' if inplace else ''}.xml")
            plan = None
            if path.exists():
                try:
                    plan = load_verified(path)
                except TacclError:  # a damaged cache entry is rebuilt
                    plan = None
            if plan is None or (plan.coll, plan.ngpus, plan.inplace) != key:
                plan = _synthesize(kind, nranks, inplace, method)
                path.parent.mkdir(parents=True, exist_ok=True)
                atomic_write_text(path, plan_to_xml(plan))
            self._fallbacks[key] = plan
            self._origin[id(plan)] = f"fallback, cached in {path}"
        return self._fallbacks[key]


def load_verified(path: Path) -> Plan:
    """The plan in ``path``, verified; an invalid one raises the verifier's error, prefixed
    with the path."""
    plan = parse_plan(path)
    try:
        verify(plan)
    except TacclError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    return plan


def _synthesize(kind: str, nranks: int, inplace: bool, method: str) -> Plan:
    from ..build.pipeline import build_plan

    ranks = tuple(range(nranks))
    host = Topology(
        f"host{nranks}", nranks, 1, (), (Switch("host", 0, ranks, 1e10, 1e-6),), (), FULL_BISECTION
    )
    return build_plan(host, Collective(kind, nranks, 1, inplace), method).plan

"""Plan libraries: for each range of buffer sizes, the fastest verified plan, or NCCL.

:func:`build_library` builds the candidates once (:mod:`taccl_py.build.candidates`: milp solved
at a few sizes, smt where small, the NCCL baselines), then re-times every candidate under
every protocol at each power of two of the span and compares it with NCCL's best
(algorithm, protocol) there (:func:`taccl_py.analysis.nccl_model.nccl_best`, a model of
NCCL built from its tuning code, not a measurement).

Each power of two ``p`` of the span starts a range ``[p, 2p)`` (the span's top size is a
range of its own). A range is served by the candidate that is fastest relative to NCCL at
its two ends and its geometric middle, if it beats NCCL at all three; NCCL's own
algorithms (its ring and tree, point-to-point AllToAll) never get a plan, since NCCL runs
them anyway. Ranges where NCCL is as fast are left without a plan: the runtime then falls
back to NCCL. Adjacent ranges served alike become one plan, so ranges are contiguous and
never overlap. For ``msccl`` (at most 4 plan files) only the 4 ranges that save the most
are kept.

Example:

>>> from taccl_py.topology.loader import load_topology
>>> from taccl_py.collectives import Collective
>>> lib = build_library(load_topology("dgx1"), Collective("allgather", 8),
...                     LibraryOptions(lo=1 << 10, hi=1 << 14, methods=("ring", "direct")))
>>> [row.size for row in lib.rows]
[1024, 2048, 4096, 8192, 16384]
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ..analysis.nccl_model import NcclChoice, nccl_best
from ..collectives import Collective
from ..errors import TacclError
from ..plan.model import Plan
from ..plan.runtimes import DEFAULT_RUNTIME, RUNTIMES, selection_bytes
from ..plan.verify import verify
from ..plan.xml import plan_to_xml
from ..topology import Topology
from ..util.fileio import display_path
from ..util.units import format_size
from .candidates import (
    ALL_METHODS,
    PROTOCOLS,
    Candidate,
    CandidateOptions,
    Candidates,
    build_candidates,
    is_nccl_algorithm,
)

#: a plan must be at least this much faster than NCCL to be worth deploying
MIN_GAIN = 0.01


@dataclass(frozen=True)
class LibraryOptions:
    """The span ``[lo, hi]`` (bytes, nccl-tests sizes) and how candidates are made."""

    lo: int
    hi: int
    methods: tuple[str, ...] = ALL_METHODS
    time_limit: float = 60.0
    runtime: str = DEFAULT_RUNTIME
    max_steps: int | None = None
    instances: int = 1
    progress: Callable | None = None


@dataclass(frozen=True)
class Served:
    """One candidate under one protocol."""

    candidate: Candidate
    proto: str

    @property
    def label(self) -> str:
        return f"{self.candidate.label}/{self.proto}"


@dataclass(frozen=True)
class Row:
    """One size of the span: NCCL's best there and what the library serves."""

    size: int
    nccl: NcclChoice
    best: Served | None  # our fastest candidate at this size (any method)
    best_time: float
    served: Served | None  # the plan that serves this size; None: NCCL runs
    served_time: float  # seconds (NCCL's when served is None)

    @property
    def speedup(self) -> float:
        """NCCL's time over the served time (1.0 where NCCL serves)."""
        return self.nccl.time / self.served_time


@dataclass
class Entry:
    """A plan file: ``plan`` serves sizes ``lo <= n < hi``."""

    lo: int
    hi: int
    served: Served
    plan: Plan

    @property
    def filename(self) -> str:
        c = self.served.candidate
        return (
            f"{c.plan.name.rsplit('-', 1)[0]}-{c.method}-{self.served.proto}-"
            f"{format_size(self.lo)}-{format_size(self.hi)}.xml"
        ).replace("@", "-")


@dataclass
class Library:
    topology: Topology
    collective: Collective
    options: LibraryOptions
    rows: list[Row]
    entries: list[Entry]
    dropped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def span_sizes(lo: int, hi: int) -> list[int]:
    """``lo``, then every power of two above it up to ``hi``, then ``hi``.

    >>> span_sizes(1024, 4096), span_sizes(1000, 3000)
    ([1024, 2048, 4096], [1000, 1024, 2048, 3000])
    """
    if not 0 < lo <= hi:
        raise TacclError(f"size span {lo}-{hi}: need 0 < low <= high")
    sizes, p = [lo], 1 << lo.bit_length()
    if lo & (lo - 1) == 0:
        p = lo * 2
    while p < hi:
        sizes.append(p)
        p *= 2
    if hi != lo:
        sizes.append(hi)
    return sizes


def build_library(topology: Topology, collective: Collective, options: LibraryOptions) -> Library:
    """The plan library of ``collective`` on ``topology`` over ``[options.lo, options.hi]``."""
    sizes = span_sizes(options.lo, options.hi)
    found = build_candidates(
        topology,
        collective,
        CandidateOptions(
            sizes=_milp_sizes(sizes),
            methods=options.methods,
            time_limit=options.time_limit,
            runtime=options.runtime,
            max_steps=options.max_steps,
            instances=options.instances,
            progress=options.progress,
        ),
    )
    if not found.candidates:
        raise TacclError(
            f"no candidate plan for {collective.kind} on {topology.label}: "
            + "; ".join(f"{m}: {why}" for m, why in found.dropped)
        )
    timer = _Timer(topology, collective, found)
    # each range [a, b) is checked at a, its geometric middle and just below b
    bounds = sizes[1:] + [sizes[-1] + 1]
    checks = [sorted({a, _mid(a, b), max(a, b - 1)}) for a, b in zip(sizes, bounds)]
    rows = []
    for size, points in zip(sizes, checks):
        best, best_t = timer.fastest(size, ours_only=False)
        served = timer.beats_nccl(points)
        rows.append(
            Row(
                size,
                timer.nccl(size),
                best,
                best_t,
                served,
                timer.time(served, size) if served else timer.nccl(size).time,
            )
        )
    lib = Library(topology, collective, options, rows, [], list(found.dropped))
    lib.entries = _entries(lib, bounds)
    _fit_file_limit(lib, timer)
    return lib


def _milp_sizes(sizes: list[int]) -> tuple[int, ...]:
    """The sizes milp is solved at: the span's ends and its geometric middle."""
    lo, hi = sizes[0], sizes[-1]
    return tuple(sorted({lo, _mid(lo, hi), hi}))


def _mid(a: int, b: int) -> int:
    return max(a, min(b, round(math.sqrt(a * b))))


class _Timer:
    """Simulated times of every (candidate, protocol) and NCCL's best, per size, cached."""

    def __init__(
        self,
        topology: Topology,
        collective: Collective,
        found: Candidates,
        protocols: tuple[str, ...] = PROTOCOLS,
    ) -> None:
        self.topology, self.kind, self.plans = topology, collective.kind, found.nccl
        self.root = collective.root
        self.options = [Served(c, p) for c in found.candidates for p in protocols]
        self._times: dict[tuple[int, int], float] = {}
        self._nccl: dict[int, NcclChoice] = {}

    def time(self, served: Served, size: int) -> float:
        key = (id(served), size)
        if key not in self._times:
            self._times[key] = served.candidate.time(self.topology, size, served.proto)
        return self._times[key]

    def nccl(self, size: int) -> NcclChoice:
        if size not in self._nccl:
            self._nccl[size] = nccl_best(self.topology, self.kind, size, self.plans, self.root)
        return self._nccl[size]

    def fastest(self, size: int, ours_only: bool) -> tuple[Served, float]:
        opts = [
            s
            for s in self.options
            if not ours_only or not is_nccl_algorithm(s.candidate.method, self.kind)
        ]
        best = min(opts, key=lambda s: (self.time(s, size), s.label))
        return best, self.time(best, size)

    def beats_nccl(self, points: list[int]) -> Served | None:
        """Our candidate with the best worst-case ratio to NCCL over ``points``, if that
        ratio is at least ``MIN_GAIN`` below 1."""
        ours = [s for s in self.options if not is_nccl_algorithm(s.candidate.method, self.kind)]
        if not ours:
            return None

        def worst(s: Served) -> float:
            return max(self.time(s, p) / self.nccl(p).time for p in points)

        best = min(ours, key=lambda s: (worst(s), s.label))
        return best if worst(best) <= 1 - MIN_GAIN else None


def _entries(lib: Library, bounds: list[int]) -> list[Entry]:
    """Runs of sizes served alike, as plans with their runtime's size selection."""
    entries: list[Entry] = []
    rules = RUNTIMES[lib.options.runtime]
    for row, hi in zip(lib.rows, bounds):
        if row.served is None:
            continue
        last = entries[-1] if entries else None
        if last is not None and last.served is row.served and last.hi == row.size:
            last.hi = hi
            continue
        entries.append(Entry(row.size, hi, row.served, row.served.candidate.plan))
    for e in entries:
        lo_b, hi_b = selection_bytes(rules, e.lo, e.hi)
        base = e.served.candidate.with_proto(e.served.proto)
        e.plan = _with(base, name=e.filename[:-4], min_bytes=lo_b, max_bytes=hi_b)
    return entries


def _with(plan: Plan, **changes) -> Plan:
    import dataclasses

    return dataclasses.replace(plan, **changes)


def _fit_file_limit(lib: Library, timer: _Timer) -> None:
    """Keep the ranges that save the most when the runtime loads few files."""
    limit = RUNTIMES[lib.options.runtime].max_files
    if limit is None or len(lib.entries) <= limit:
        return

    def saving(e: Entry) -> float:
        return sum(r.nccl.time - r.served_time for r in lib.rows if e.lo <= r.size < e.hi)

    keep = sorted(sorted(lib.entries, key=saving, reverse=True)[:limit], key=lambda e: e.lo)
    for e in lib.entries:
        if e not in keep:
            lib.notes.append(
                f"{format_size(e.lo)}-{format_size(e.hi)}: left to NCCL "
                f"({lib.options.runtime} loads at most {limit} plan files)"
            )
    lib.entries = keep
    kept = [(e.lo, e.hi) for e in keep]
    lib.rows = [
        r
        if r.served is None or any(a <= r.size < b for a, b in kept)
        else Row(r.size, r.nccl, r.best, r.best_time, None, r.nccl.time)
        for r in lib.rows
    ]


@dataclass
class Pick:
    """The fastest candidate at one size, NCCL's best there, and the sizes ``lo <= n < hi``
    around it where the pick beats NCCL (None: nowhere, not even at ``size``)."""

    size: int
    served: Served
    time: float
    nccl: NcclChoice
    times: dict[str, float]  # every candidate/protocol's time at ``size``
    selected: tuple[int, int] | None

    @property
    def speedup(self) -> float:
        return self.nccl.time / self.time


#: a single plan's selection range is searched this many doublings around its size
PICK_REACH = 6


def pick_plan(
    topology: Topology,
    collective: Collective,
    found: Candidates,
    size: int,
    protocols: tuple[str, ...] = PROTOCOLS,
) -> Pick:
    """The fastest of ``found`` at ``size`` under ``protocols``, and the widest run of
    doublings around ``size`` (up to :data:`PICK_REACH` each way) where it beats NCCL."""
    if not found.candidates:
        raise TacclError(
            f"no candidate plan for {collective.kind} on {topology.label}: "
            + "; ".join(f"{m}: {why}" for m, why in found.dropped)
        )
    timer = _Timer(topology, collective, found, protocols)
    best, t = timer.fastest(size, ours_only=False)
    times = {s.label: timer.time(s, size) for s in timer.options}

    def wins(a: int, b: int) -> bool:
        return all(
            timer.time(best, p) <= timer.nccl(p).time * (1 - MIN_GAIN)
            for p in sorted({a, _mid(a, b), max(a, b - 1)})
        )

    selected = None
    if not is_nccl_algorithm(best.candidate.method, collective.kind) and wins(size, size + 1):
        lo, hi = size, 2 * size
        if not wins(lo, hi):
            hi = size + 1
        for _ in range(PICK_REACH):
            if lo < 2 or not wins(lo // 2, lo):
                break
            lo //= 2
        for _ in range(PICK_REACH if hi == 2 * size else 0):
            if not wins(hi, 2 * hi):
                break
            hi *= 2
        selected = (lo, hi)
    return Pick(size, best, t, timer.nccl(size), times, selected)


def write_library(lib: Library, directory: str | os.PathLike) -> list[Path]:
    """Verify every plan, then write them all into ``directory`` (new or empty) at once."""
    target = Path(directory)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise TacclError(
            f"{display_path(target)} exists and is not an empty directory; "
            "remove it or choose another -o"
        )
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise TacclError(f"{display_path(parent)}: no such directory")
    texts = []
    for e in lib.entries:
        verify(e.plan)  # every plan written is verified as written
        texts.append((e.filename, plan_to_xml(e.plan, runtime=lib.options.runtime)))
    stage = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=parent))
    try:
        for name, text in texts:
            (stage / name).write_text(text)
        if target.exists():
            target.rmdir()
        stage.rename(target)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return [target / name for name, _ in texts]


def format_library(lib: Library) -> str:
    """The summary table: per size NCCL's best, our fastest, what is served and the gain."""
    head = (
        f"{'size':>6}  {'NCCL (model)':<16} {'NCCL us':>10}  {'fastest candidate':<22} "
        f"{'its us':>10}  {'served by':<24} {'vs NCCL':>7}"
    )
    lines = [head]
    for r in lib.rows:
        nccl = f"{r.nccl.algorithm}/{r.nccl.protocol}"
        best = r.best.label if r.best else "-"
        served = r.served.label if r.served else "NCCL"
        lines.append(
            f"{format_size(r.size):>6}  {nccl:<16} {r.nccl.time * 1e6:>10,.1f}  "
            f"{best:<22} {r.best_time * 1e6:>10,.1f}  {served:<24} "
            f"{r.speedup:>6.2f}x"
        )
    return "\n".join(lines)

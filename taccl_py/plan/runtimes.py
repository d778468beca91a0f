"""What each MSCCL runtime loads and selects, as read from their XML parsers.

Two runtimes load our plans, each with its own loader, read from their sources:

* ``msccl``: microsoft/msccl, the NCCL 2.12 fork (``src/graph/topo.cc``,
  ``src/graph/xml.cc``/``xml.h``, ``src/graph/tuning.cc``, ``src/include/msccl.h``).
* ``msccl-executor``: Azure/msccl-executor-nccl, the maintained one and the default
  (``src/misc/msccl/msccl_parser.cc``, ``msccl_lifecycle.cc``, ``src/include/msccl/*.h``,
  ``makefiles/common.mk``).

:class:`RuntimeRules` holds one loader's limits; :func:`check_runtime` lists every rule a
plan breaks; :func:`selection_bytes` / :func:`selects` translate between a size range and
the ``minBytes``/``maxBytes`` a loader reads; :func:`deploy_lines` gives the environment
that makes a runtime load a set of plans.

Sizes are a call's ``nBytes`` as both runtimes compute it, which is the nccl-tests size of
the README: AllGather output bytes, ReduceScatter input bytes, AllToAll and AllReduce
per-rank buffer bytes (count x type size x ngpus for the first three). Broadcast and
Reduce: the buffer's bytes (count x type size; ``sizeMultiplier`` 1). Gather and Scatter
(msccl-executor only): count x type size too, count being the call's count, one rank's
block (``sizeMultiplier`` 1), though no NCCL call ever selects them. Its kernel cuts
count x sizeMultiplier elements into nchunksperloop chunks, so a program running one of
our Gather or Scatter plans itself (``mscclRunAlgo``) must pass the whole gathered
(scattered) count, ngpus blocks, to get the plan's chunks.

Rooted collectives: neither runtime compares a call's root with the plan's (our own
``root`` attribute, which neither reads), so a plan made for root R is selected for
calls with any root, and computes a wrong result for the others. :func:`root_caveat`
says so in one line; :func:`check_library` refuses plans for different roots that a
call could select alike.
"""

from __future__ import annotations

import os
import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from math import lcm
from types import MappingProxyType

from ..collectives import (
    ALLGATHER,
    ALLREDUCE,
    ALLTOALL,
    BROADCAST,
    GATHER,
    REDUCE,
    REDUCESCATTER,
    ROOTED_KINDS,
    SCATTER,
    XML_NAMES,
)
from ..errors import PlanError
from .model import GpuPlan, Plan

#: ``<gpu>``, ``<tb>`` and ``<step>`` attributes both loaders read without a default
ELEMENT_REQUIRED: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "gpu": ("id", "i_chunks", "o_chunks", "s_chunks"),
        "tb": ("id", "send", "recv", "chan"),
        "step": (
            "s",
            "type",
            "srcbuf",
            "srcoff",
            "dstbuf",
            "dstoff",
            "cnt",
            "depid",
            "deps",
            "hasdep",
        ),
    }
)
#: the ``proto`` values both loaders read
PROTOCOLS = ("Simple", "LL", "LL128")
#: threadblocks per GPU lowering aims for at most: a plan's threadblocks spin-wait on each
#: other, so all must be resident at once (2 per SM of an A100, msccl's own limit)
RESIDENT_TBS = 216
#: an open size range's top under msccl (see :func:`selection_bytes`)
MSCCL_OPEN_TOP = 1 << 31
#: largest byte count either loader reads (minBytes/maxBytes are int64)
MAX_BYTES = (1 << 63) - 1


@dataclass(frozen=True)
class RuntimeRules:
    """One runtime's loader: what it reads, what it rejects, how it selects a plan.

    Limits common to both loaders have their defaults here: 32 channels (``chan`` 0..31;
    both loaders' check is off by one and let 32 through into an out-of-bounds write),
    32 sending and 32 receiving threadblocks per channel, ``depid`` < 128 (stored as
    ``int8``), ``cnt`` < 72, offsets < 2^15 (``int16``), at most 1024 children per
    element and 4095 elements kept per rank (the XML reader refuses the 4096th), and
    attribute values of at most 255 characters read up to the next double quote, with
    no entity decoding.

    >>> RUNTIMES["msccl-executor"].coll["reducescatter"], RUNTIMES["msccl"].max_steps
    ('reducescatter', 256)
    """

    name: str
    #: canonical collective kind -> the ``coll`` spelling the loader accepts
    coll: Mapping[str, str]
    #: ``<algo>`` attributes the loader reads without a default
    required: tuple[str, ...]
    #: the collectives it loads but no NCCL call selects (NCCL's API reaches the
    #: scheduler for none of them)
    never_selected: frozenset[str]
    #: steps per threadblock (``MSCCL_MAX_NUM_STEPS``)
    max_steps: int
    #: how a custom build raises :attr:`max_steps`
    steps_setting: str
    #: threadblock ids per GPU (``MSCCL_MAX_NUM_THREAD_BLOCKS``)
    max_tbs: int
    #: plan files one process loads (None: no limit)
    max_files: int | None
    #: True: a plan serves minBytes <= n < maxBytes, maxBytes 0 never; False: minBytes <=
    #: n <= maxBytes, maxBytes 0 without limit
    max_exclusive: bool
    #: maxBytes the loader assumes when the attribute is absent (None: it is required)
    absent_max_bytes: int | None
    #: what the runtime does with a plan it cannot parse
    rejects: str
    #: collectives whose divisibility is counted in bytes, not elements (msccl casts
    #: AllGather and AllToAll calls to int8)
    byte_counted: frozenset[str] = frozenset()
    max_tbs_per_channel: int = 32
    channels: int = 32
    max_depid: int = 127
    max_cnt: int = 71
    max_offset: int = (1 << 15) - 1
    max_children: int = 1024
    max_nodes: int = 4095
    max_value_chars: int = 255

    def with_max_steps(self, max_steps: int | None) -> RuntimeRules:
        """These rules for a build with ``max_steps`` steps per threadblock (None: as is).

        >>> RUNTIMES["msccl-executor"].with_max_steps(256).max_steps
        256
        """
        if max_steps is None:
            return self
        if not 1 <= max_steps <= self.max_children:
            raise PlanError(
                f"max_steps={max_steps} outside 1..{self.max_children} (a "
                f"threadblock holds at most {self.max_children} steps)"
            )
        return replace(self, max_steps=max_steps)


RUNTIMES: Mapping[str, RuntimeRules] = MappingProxyType(
    {
        "msccl": RuntimeRules(
            name="msccl",
            coll=MappingProxyType(
                {
                    ALLGATHER: "allgather",
                    ALLTOALL: "alltoall",
                    REDUCESCATTER: "reduce_scatter",
                    ALLREDUCE: "allreduce",
                    BROADCAST: "broadcast",
                    REDUCE: "reduce",
                }
            ),
            required=("name", "ngpus", "nchunksperloop", "nchannels", "proto", "coll", "inplace"),
            never_selected=frozenset(),
            max_steps=256,
            steps_setting="MSCCL_MAX_NUM_STEPS in src/include/msccl.h",
            max_tbs=216,
            max_files=4,
            max_exclusive=True,
            absent_max_bytes=1 << 27,
            rejects="skips the plan with a warning",
            byte_counted=frozenset({ALLGATHER, ALLTOALL}),
        ),
        "msccl-executor": RuntimeRules(
            name="msccl-executor",
            coll=MappingProxyType(
                {
                    ALLGATHER: "allgather",
                    ALLTOALL: "alltoall",
                    REDUCESCATTER: "reducescatter",
                    ALLREDUCE: "allreduce",
                    BROADCAST: "broadcast",
                    REDUCE: "reduce",
                    GATHER: "gather",
                    SCATTER: "scatter",
                }
            ),
            required=(
                "nchunksperloop",
                "nchannels",
                "ngpus",
                "proto",
                "coll",
                "minBytes",
                "maxBytes",
                "inplace",
                "outofplace",
            ),
            never_selected=frozenset({GATHER, SCATTER}),
            max_steps=64,
            steps_setting="make MSCCL_MAX_NUM_STEPS=N",
            max_tbs=32 * 32,
            max_files=None,
            max_exclusive=False,
            absent_max_bytes=None,
            rejects="fails to load it, which fails NCCL's initialization",
        ),
    }
)
DEFAULT_RUNTIME = "msccl-executor"


def runtime_rules(
    runtime: str, max_steps: int | None = None, max_nodes: int | None = None
) -> RuntimeRules:
    """The rules of ``runtime``, built with ``max_steps`` steps per threadblock and
    ``max_nodes`` XML elements kept per rank (the parser's node budget) if given.

    >>> runtime_rules("msccl-executor").max_steps, runtime_rules("msccl", 64).max_steps
    (64, 64)
    >>> runtime_rules("msccl-executor", max_nodes=300).max_nodes
    300
    """
    rules = RUNTIMES.get(runtime)
    if rules is None:
        raise PlanError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if max_nodes is not None:
        if max_nodes < 1:
            raise PlanError(f"max_nodes={max_nodes}: a rank keeps at least its <algo>")
        rules = replace(rules, max_nodes=max_nodes)
    return rules.with_max_steps(max_steps)


def coll_spelling(rules: RuntimeRules, kind: str) -> str:
    """The ``coll`` attribute of a ``kind`` plan for ``rules``' loader (a kind it does not
    load: the name the other runtime reads, which :func:`check_runtime` reports).

    >>> msccl = RUNTIMES["msccl"]
    >>> coll_spelling(msccl, "reducescatter"), coll_spelling(msccl, "gather")
    ('reduce_scatter', 'gather')
    """
    return rules.coll.get(kind, XML_NAMES[kind])


#: collectives whose call's count is one rank's share of nchunksperloop x ngpus chunks
#: (the loaders' ``sizeMultiplier`` is ngpus; 1 for every other collective)
PER_RANK_COUNT = frozenset({ALLGATHER, REDUCESCATTER, ALLTOALL})


def size_multiplier(plan: Plan) -> int:
    """The loaders' ``sizeMultiplier``: a call's count times it is cut into
    nchunksperloop chunks (ngpus for AllGather, ReduceScatter, AllToAll; else 1).

    >>> size_multiplier(Plan("p", "allgather", 8, 8)), size_multiplier(Plan("p", "gather", 8, 8))
    (8, 1)
    """
    return plan.ngpus if plan.coll in PER_RANK_COUNT else 1


# -- size selection ---------------------------------------------------------------------------


def selection_bytes(rules: RuntimeRules, lo: int, hi: int | None) -> tuple[int, int]:
    """``(minBytes, maxBytes)`` that make ``rules``' loader select a plan exactly for the
    sizes ``lo <= n < hi`` (``hi`` None: no upper end).

    msccl selects ``minBytes <= n < maxBytes`` and never with ``maxBytes`` 0; it sizes
    each GPU's scratch from ``maxBytes`` when it loads, so an open range ends at
    :data:`MSCCL_OPEN_TOP` (2 GiB, twice the largest size this project benchmarks), or at
    the next power of two above ``lo`` if that is higher: give ``hi`` to serve more.
    msccl-executor selects ``minBytes <= n <= maxBytes``, ``maxBytes`` 0 without limit.

    >>> selection_bytes(RUNTIMES["msccl"], 1024, 4096)
    (1024, 4096)
    >>> selection_bytes(RUNTIMES["msccl-executor"], 1024, 4096)
    (1024, 4095)
    >>> selection_bytes(RUNTIMES["msccl-executor"], 1024, None)
    (1024, 0)
    """
    if not 0 <= lo <= MAX_BYTES or (hi is not None and not max(lo, 1) < hi <= MAX_BYTES):
        raise PlanError(f"size range [{lo}, {hi}) holds no size in 1..{MAX_BYTES}")
    if rules.max_exclusive:
        top = hi if hi is not None else min(MAX_BYTES, max(MSCCL_OPEN_TOP, 1 << lo.bit_length()))
        return lo, top
    return lo, 0 if hi is None else hi - 1


def size_range(rules: RuntimeRules, plan: Plan) -> tuple[int, int | None]:
    """The sizes ``lo <= n < hi`` (``hi`` None: no end) that ``plan``'s minBytes and
    maxBytes select under ``rules`` (empty when ``hi <= lo``), divisibility aside.

    >>> p = Plan("p", "allgather", 8, 8, min_bytes=0, max_bytes=0)
    >>> size_range(RUNTIMES["msccl"], p), size_range(RUNTIMES["msccl-executor"], p)
    ((0, 0), (0, None))
    """
    top = plan.max_bytes
    if (
        plan.source is not None
        and "algo.maxBytes" in plan.source.absent
        and rules.absent_max_bytes is not None
    ):
        top = rules.absent_max_bytes
    if rules.max_exclusive:
        return plan.min_bytes, top
    return plan.min_bytes, None if top == 0 else top + 1


def selects(rules: RuntimeRules, plan: Plan, nbytes: int, *, type_size: int = 4) -> bool:
    """Whether ``rules``' loader picks ``plan`` for a sum (or prod, max, min) of its own
    collective, rank count and placement moving ``nbytes`` of ``type_size``-byte
    elements, when no other plan matches first.

    Besides the size range, both loaders want the call's element count times the
    per-rank multiplier (:func:`size_multiplier`) divisible by nchunksperloop (msccl
    counts AllGather and AllToAll in bytes). Neither compares a rooted call's root, nor
    looks at whether a collective is ever called (see :func:`check_runtime`).

    >>> p = Plan("p", "allreduce", 8, 8, min_bytes=1024, max_bytes=4096)
    >>> [selects(RUNTIMES["msccl"], p, n) for n in (992, 1024, 1028, 4096)]
    [False, True, False, False]
    >>> selects(RUNTIMES["msccl-executor"], p, 4096)
    True
    """
    lo, hi = size_range(rules, plan)
    if nbytes < max(lo, 1) or (hi is not None and nbytes >= hi):
        return False
    return splits(rules, plan, nbytes, type_size=type_size)


def splits(rules: RuntimeRules, plan: Plan, nbytes: int, *, type_size: int = 4) -> bool:
    """Whether a call moving ``nbytes`` of ``type_size``-byte elements divides into
    ``plan``'s chunks as ``rules``' loader wants (its size range aside).

    >>> p = Plan("p", "allgather", 4, 40)
    >>> [splits(RUNTIMES["msccl-executor"], p, n << 20) for n in (12, 15)]
    [False, True]
    """
    mult = size_multiplier(plan)
    if nbytes % (type_size * mult):
        return False  # no call of this type size moves nbytes
    unit = 1 if plan.coll in rules.byte_counted else type_size
    return (nbytes // unit) % plan.nchunksperloop == 0


def _granule(plan: Plan) -> int:
    """Sizes with 1-byte elements that ``plan`` may be selected for are its multiples."""
    return lcm(size_multiplier(plan), max(1, plan.nchunksperloop))


def _first_multiple(step: int, lo: int, hi: int | None) -> int | None:
    """The least positive multiple of ``step`` in ``lo <= n < hi`` (None: none)."""
    first = -(-max(lo, 1) // step) * step
    return first if hi is None or first < hi else None


# -- checking a plan ----------------------------------------------------------------------------


class _Found:
    """Offenders of one rule: the first one's description and how many in all."""

    def __init__(self) -> None:
        self.first: str | None = None
        self.count = 0

    def add(self, where: str) -> None:
        self.count += 1
        if self.first is None:
            self.first = where

    def __bool__(self) -> bool:
        return self.count > 0

    def where(self, noun: str) -> str:
        assert self.first is not None, "where() of a rule nothing broke"
        more = self.count - 1
        return self.first + (f" (and {more} more {noun})" if more else "")


def check_runtime(
    plan: Plan,
    runtime: str = DEFAULT_RUNTIME,
    max_steps: int | None = None,
    *,
    selection: bool = True,
    max_nodes: int | None = None,
) -> list[str]:
    """Every rule of ``runtime``'s loader that ``plan`` breaks, one line each (empty: the
    runtime loads it and selects it for some size).

    ``max_steps``: steps per threadblock of a custom build (default: the runtime's);
    ``max_nodes``: XML elements its parser keeps per rank (default: the runtime's).
    ``selection=False`` leaves out the size-selection rules (for a plan whose minBytes and
    maxBytes are set later). The plan is assumed to pass
    :func:`~taccl_py.plan.verify.check_limits`. A plan read from a file
    (``plan.source``) is also checked for its ``coll`` spelling and absent attributes;
    one built in memory is taken as :func:`~taccl_py.plan.xml.plan_to_xml` would
    write it for ``runtime``.

    >>> problems = check_runtime(Plan("p", "allgather", 2, 2, min_bytes=0, max_bytes=0), "msccl")
    >>> problems[0].split(";")[0]
    'maxBytes=0: msccl never selects it (it selects minBytes <= n < maxBytes)'
    """
    rules = runtime_rules(runtime, max_steps, max_nodes)
    unloaded = unloaded_problem(rules, plan.coll)
    if unloaded is not None:
        return [unloaded]
    problems = _file_problems(rules, plan) + _structure_problems(rules, plan)
    if selection:
        problems += _selection_problems(rules, plan)
    return problems


def unloaded_problem(rules: RuntimeRules, kind: str) -> str | None:
    """One line if ``rules``' loader refuses every ``kind`` plan (msccl: gather, scatter),
    else None.

    >>> unloaded_problem(RUNTIMES["msccl"], "gather")  # doctest: +ELLIPSIS
    'coll="gather": msccl does not load gather plans (its loader knows ...'
    >>> unloaded_problem(RUNTIMES["msccl-executor"], "gather") is None
    True
    """
    if kind in rules.coll:
        return None
    known = ", ".join(sorted(rules.coll.values()))
    return (
        f'coll="{coll_spelling(rules, kind)}": {rules.name} does not load {kind} plans '
        f"(its loader knows {known}: 'collective type {coll_spelling(rules, kind)} is not "
        f"supported') and {rules.rejects}; use msccl-executor"
    )


def _file_problems(rules: RuntimeRules, plan: Plan) -> list[str]:
    out = []
    if plan.source is not None:
        want = rules.coll[plan.coll]
        if plan.source.coll != want:
            out.append(
                f'coll="{plan.source.coll}": {rules.name} reads {plan.coll} only as '
                f'coll="{want}" and {rules.rejects}'
            )
        absent = [a for a in rules.required if f"algo.{a}" in plan.source.absent]
        absent += [
            f"{tag}.{a}"
            for tag, attrs in ELEMENT_REQUIRED.items()
            for a in attrs
            if f"{tag}.{a}" in plan.source.absent
        ]
        if absent:
            out.append(
                f"missing attribute{'s' * (len(absent) > 1)} {', '.join(absent)}: "
                f"{rules.name} requires {'them' if len(absent) > 1 else 'it'} and "
                f"{rules.rejects}"
            )
    for attr in ("name", "redop"):
        value = getattr(plan, attr)
        bad = sorted({c for c in value if c in '"&<>' or ord(c) < 32})
        if bad or len(value) > rules.max_value_chars:
            why = (
                f"has {', '.join(map(repr, bad))}, which the loader's XML reader does not decode"
                if bad
                else f"is {len(value)} characters long, over the reader's {rules.max_value_chars}"
            )
            out.append(f"<algo {attr}>: {why}; use a short plain name")
    return out


def rank_nodes(plan: Plan, gpu: GpuPlan) -> int:
    """XML elements the loaders keep for ``gpu``'s rank: the ``<algo>``, every ``<gpu>``
    element, and the rank's own ``<tb>`` and ``<step>`` elements.

    >>> from taccl_py.plan.model import Step, Threadblock
    >>> tb = Threadblock(0, 1, -1, 0, [Step(i, "s", "i", 0, None, -1) for i in range(3)])
    >>> gpus = [GpuPlan(0, 1, 2, 0, [tb]), GpuPlan(1, 1, 2, 0, [])]
    >>> rank_nodes(Plan("p", "allgather", 2, 2, gpus=gpus), gpus[0])
    7
    """
    return 1 + len(plan.gpus) + len(gpu.tbs) + sum(len(t.steps) for t in gpu.tbs)


def max_rank_nodes(plan: Plan) -> int:
    """The most XML elements any rank of ``plan`` keeps (see :func:`rank_nodes`)."""
    return max((rank_nodes(plan, g) for g in plan.gpus), default=1)


def _structure_problems(rules: RuntimeRules, plan: Plan) -> list[str]:
    """Element counts, threadblocks, channels, steps and dependencies."""
    n = rules.name
    out = []
    if plan.nchannels > rules.channels:
        out.append(f"nchannels={plan.nchannels}: {n} has {rules.channels} channels")
    if len(plan.gpus) > rules.max_children:
        out.append(
            f"{len(plan.gpus)} <gpu> elements: the loader keeps at most "
            f"{rules.max_children} children per element"
        )
    chan, tbs, per_chan, steps, children, nodes, depid, offset = (_Found() for _ in range(8))
    for gpu in plan.gpus:
        g = f"gpu {gpu.id}"
        count = rank_nodes(plan, gpu)
        if count > rules.max_nodes:
            nodes.add(f"rank {gpu.id} needs {count} XML elements")
        if len(gpu.tbs) > rules.max_tbs:
            tbs.add(f"{g} has {len(gpu.tbs)} threadblocks")
        if len(gpu.tbs) > rules.max_children:
            children.add(f"{g} has {len(gpu.tbs)} <tb> children")
        users: dict[tuple[str, int], int] = {}
        for tb in gpu.tbs:
            t = f"{g} tb {tb.id}"
            if tb.chan >= rules.channels:
                chan.add(f"{t} is on channel {tb.chan}")
            for role in ("send", "recv"):
                if getattr(tb, role) >= 0:
                    key = (role, tb.chan)
                    users[key] = users.get(key, 0) + 1
                    if users[key] == rules.max_tbs_per_channel + 1:
                        per_chan.add(
                            f"{g} has more than {rules.max_tbs_per_channel} "
                            f"threadblocks that {role} on channel {tb.chan}"
                        )
            if len(tb.steps) > rules.max_steps:
                steps.add(f"{t} has {len(tb.steps)} steps")
            if len(tb.steps) > rules.max_children:
                children.add(f"{t} has {len(tb.steps)} <step> children")
            for st in tb.steps:
                if st.depid > rules.max_depid:
                    depid.add(f"{t} step {st.s} depends on tb {st.depid}")
                if st.type != "nop" and max(st.srcoff, st.dstoff) > rules.max_offset:
                    offset.add(f"{t} step {st.s} has offset {max(st.srcoff, st.dstoff)}")
    if chan:
        out.append(f"{chan.where('threadblocks')}: {n} has channels 0..{rules.channels - 1}")
    if tbs:
        out.append(f"{tbs.where('gpus')}: {n} allows {rules.max_tbs} per gpu")
    if per_chan:
        out.append(f"{per_chan.where('channels')}: {n} allows {rules.max_tbs_per_channel}")
    if steps:
        out.append(
            f"{steps.where('threadblocks')}: {n} allows {rules.max_steps} per "
            f"threadblock; a build with {rules.steps_setting} takes more "
            "(--max-steps N)"
        )
    if children:
        out.append(
            f"{children.where('elements')}: the loader keeps at most "
            f"{rules.max_children} children per element"
        )
    if nodes:
        out.append(
            f"{nodes.where('ranks')} (1 <algo>, every <gpu>, its own <tb> and "
            f"<step>): the loader keeps at most {rules.max_nodes}"
        )
    if depid:
        out.append(
            f"{depid.where('steps')}: depid is stored as int8, so {n} would wait on "
            f"the wrong threadblock (ids above {rules.max_depid})"
        )
    if offset:
        out.append(
            f"{offset.where('steps')}: offsets are stored as int16 (at most {rules.max_offset})"
        )
    return out


def _selection_problems(rules: RuntimeRules, plan: Plan) -> list[str]:
    n, (lo, hi) = rules.name, size_range(rules, plan)
    if plan.coll in rules.never_selected:
        return [
            (
                f"{n} loads {plan.coll} plans but no NCCL call ever selects one: NCCL's "
                "API reaches its MSCCL scheduler only for broadcast, reduce, allreduce, "
                "reducescatter, allgather, send, recv and alltoall (only a program that "
                "runs the plan itself, with mscclLoadAlgo and mscclRunAlgo, can use it)"
            )
        ]
    how = "< maxBytes" if rules.max_exclusive else "<= maxBytes, maxBytes 0 without limit"
    sizes = f"minBytes={plan.min_bytes} maxBytes={plan.max_bytes}"
    if rules.max_exclusive and hi is not None and hi < lo:
        return [f"minBytes={lo} > maxBytes={hi}: {n} {rules.rejects}"]
    if rules.max_exclusive and hi == plan.max_bytes == 0:
        return [
            (
                f"maxBytes=0: {n} never selects it (it selects minBytes <= n {how}); set "
                "maxBytes to the first size it should not serve"
            )
        ]
    if hi is not None and hi <= lo:
        return [f"{sizes}: {n} selects no size (it selects minBytes <= n {how})"]
    if _first_multiple(_granule(plan), lo, hi) is None:
        return [
            (
                f"{sizes}: no size in that range divides into nchunksperloop="
                f"{plan.nchunksperloop} chunks, so {n} never selects it"
            )
        ]
    return []


def check_library(plans: Sequence[tuple[str, Plan]], runtime: str = DEFAULT_RUNTIME) -> list[str]:
    """Rules on plans loaded together (``(file name, plan)`` pairs), one line each.

    msccl loads at most 4 files from ``MSCCL_XML_FILES`` and ignores the rest.
    msccl-executor reads every file of ``MSCCL_ALGO_DIR`` in file-name order and takes the
    first plan that matches a call, so two plans for the same collective, rank count and
    placement must not share a size.

    >>> p = Plan("p", "allgather", 8, 8, min_bytes=0, max_bytes=0)
    >>> check_library([("a.xml", p), ("b.xml", p)])  # doctest: +ELLIPSIS
    ['a.xml and b.xml both select allgather on 8 ranks (out-of-place) for sizes 8 and up: ...']
    """
    rules = runtime_rules(runtime)
    out = []
    if rules.max_files is not None and len(plans) > rules.max_files:
        ignored = ", ".join(name for name, _ in plans[rules.max_files :])
        out.append(
            f"{len(plans)} plan files: {rules.name} loads at most {rules.max_files} "
            f"(MSCCL_XML_FILES) and ignores the rest ({ignored})"
        )
    if rules.max_files is None:
        ordered, first = sorted(plans, key=lambda np: np[0]), "the first by file name"
    else:
        ordered, first = list(plans[: rules.max_files]), "the first in MSCCL_XML_FILES"
    for i, (a, pa) in enumerate(ordered):
        for b, pb in ordered[i + 1 :]:
            roots = pa.coll in ROOTED_KINDS and pa.root != pb.root
            if (rules.max_files is not None and not roots) or pa.coll in rules.never_selected:
                continue  # msccl: the order of MSCCL_XML_FILES decides, as the user wrote it
            shared = _shared_sizes(rules, pa, pb)
            if shared is None:
                continue
            both = f"both select {pa.coll} on {pa.ngpus} ranks ({shared[0]}) for sizes {shared[1]}"
            if roots:
                out.append(
                    f"{a} (root {pa.root}) and {b} (root {pb.root}) {both}: {rules.name} "
                    f"does not compare the root and takes {a}, {first}, for "
                    f"{pa.coll}s of every root, so root {pb.root}'s get a wrong result; "
                    "keep one root per collective, rank count and placement"
                )
            else:
                out.append(
                    f"{a} and {b} {both}: {rules.name} takes {a}, {first}; make the ranges disjoint"
                )
    return out


def root_caveat(plan: Plan, runtime: str = DEFAULT_RUNTIME) -> str | None:
    """One line on the root of a rooted ``plan`` that ``runtime`` selects, else None.

    Neither runtime compares a call's root with the plan's, so the plan also serves
    calls with other roots, and gets them wrong. A plan read from a file without a
    ``root`` attribute was taken as root 0, which the line says.

    >>> print(root_caveat(Plan("p", "broadcast", 8, 8, root=3)))  # doctest: +NORMALIZE_WHITESPACE
    msccl-executor does not compare the root: this plan (root 3) is also selected for
    broadcasts with other roots, which it would get wrong; deploy it only where every
    broadcast has root 3
    >>> root_caveat(Plan("p", "allgather", 8, 8)) is None
    True
    """
    rules = runtime_rules(runtime)
    if plan.coll not in ROOTED_KINDS or plan.coll not in rules.coll:
        return None
    if plan.coll in rules.never_selected:
        return None
    which = f"root {plan.root}" + (
        ": its file gives no root attribute, so root 0 is assumed" if plan.root_assumed else ""
    )
    return (
        f"{rules.name} does not compare the root: this plan ({which}) is also selected "
        f"for {plan.coll}s with other roots, which it would get wrong; deploy it only "
        f"where every {plan.coll} has root {plan.root}"
    )


def _shared_sizes(rules: RuntimeRules, a: Plan, b: Plan) -> tuple[str, str] | None:
    """(placement, sizes) that plans ``a`` and ``b`` would both serve, or None."""
    if (a.coll, a.ngpus) != (b.coll, b.ngpus):
        return None
    modes = [
        m
        for m, x, y in (
            ("in-place", a.inplace, b.inplace),
            ("out-of-place", a.outofplace, b.outofplace),
        )
        if x and y
    ]
    (alo, ahi), (blo, bhi) = size_range(rules, a), size_range(rules, b)
    lo = max(alo, blo)
    his = [h for h in (ahi, bhi) if h is not None]
    hi = min(his) if his else None
    first = _first_multiple(lcm(_granule(a), _granule(b)), lo, hi)
    if not modes or first is None:
        return None
    sizes = f"{first}..{hi - 1}" if hi is not None else f"{first} and up"
    return " and ".join(modes), sizes


# -- deployment ---------------------------------------------------------------------------------


def deploy_lines(runtime: str, directory: str | os.PathLike, files: Iterable[str]) -> list[str]:
    """The environment settings that make ``runtime`` load the plans ``files`` written
    in ``directory``, one ``NAME=value`` line each (values shell-quoted).

    msccl-executor needs only ``MSCCL_ALGO_DIR`` (MSCCL is on unless
    ``NCCL_MSCCL_ENABLE=0``); it parses *every* file there, so the directory must hold the
    plans alone. msccl needs the files listed in ``MSCCL_XML_FILES`` (at most 4, no ``:``
    in a path) and ``NCCL_ALGO`` naming MSCCL, which it leaves off by default (the list
    also keeps NCCL's own Tree, Ring and CollNet); an LL128 plan is selected only where
    NCCL enables LL128 (Volta/Ampere over NVLink, else ``NCCL_PROTO``).

    >>> deploy_lines("msccl-executor", "/plans", ["a.xml"])
    ['MSCCL_ALGO_DIR=/plans']
    >>> deploy_lines("msccl", "/plans", ["a.xml", "b.xml"])
    ['MSCCL_XML_FILES=/plans/a.xml:/plans/b.xml', 'NCCL_ALGO=MSCCL,Tree,Ring,CollNet']
    """
    rules = runtime_rules(runtime)
    where = os.path.abspath(directory)
    if rules.max_files is None:
        return [f"MSCCL_ALGO_DIR={shlex.quote(where)}"]
    paths = [os.path.join(where, f) for f in files]
    if len(paths) > rules.max_files:
        raise PlanError(
            f"{len(paths)} plan files: {rules.name} loads at most "
            f"{rules.max_files} from MSCCL_XML_FILES"
        )
    if any(":" in p for p in paths):
        raise PlanError("a plan path holds ':', which MSCCL_XML_FILES uses to separate them")
    return [f"MSCCL_XML_FILES={shlex.quote(':'.join(paths))}", "NCCL_ALGO=MSCCL,Tree,Ring,CollNet"]

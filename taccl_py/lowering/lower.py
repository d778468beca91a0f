"""Lowering: algorithm IR -> MSCCL plan.

The pipeline: check the IR; follow every value it creates (:mod:`.buffers`); give each
rank threadblocks and order and fuse their ops (:mod:`.threadblocks`); place values in
buffers and add final copies (a rank's own chunk sent in a block with received ones is
read from its output copy); derive dependencies from conflicting accesses of one
location by different threadblocks (read after write, write after read or write); merge
runs of steps into multi-chunk steps where both ends of every connection merge alike;
keep only dependencies not implied by others and spell extra ones as ``nop`` steps.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass, replace

from ..collectives import Collective
from ..errors import PlanError
from ..ir.algorithm import Algorithm
from ..plan.model import GpuPlan, Plan, Step, Threadblock, rank_buffers
from ..plan.runtimes import (
    DEFAULT_RUNTIME,
    PROTOCOLS,
    RESIDENT_TBS,
    RuntimeRules,
    check_runtime,
    runtime_rules,
    unloaded_problem,
)
from ..topology.model import Topology
from ..util.nogc import gc_paused
from .buffers import Copy, Flow, Loc, blocks, place, placed, value_flow
from .threadblocks import TB, Op, TbStep, Threadblocks


@dataclass(frozen=True)
class LowerOptions:
    """How :func:`lower` makes a plan: ``instances`` copies of the algorithm on further
    channels, the ``proto`` and the ``min_bytes``/``max_bytes`` size selection written into
    it, its ``name`` (default: the algorithm's), the ``runtime`` whose loader must accept it
    (``max_steps``: a custom build's steps per threadblock; ``max_nodes``: its parser's
    XML elements per rank) and ``inplace`` (None: the collective's; else the collective
    lowered in or out of place).

    >>> LowerOptions(proto="LL").proto, LowerOptions().runtime
    ('LL', 'msccl-executor')
    """

    instances: int = 1
    proto: str = "Simple"
    min_bytes: int = 0
    max_bytes: int = 0
    name: str | None = None
    runtime: str = DEFAULT_RUNTIME
    max_steps: int | None = None
    inplace: bool | None = None
    max_nodes: int | None = None


@gc_paused()
def lower(
    alg: Algorithm, topology: Topology | None = None, options: LowerOptions = LowerOptions()
) -> Plan:
    """Lower ``alg`` to a plan that ``options.runtime`` loads; ``options.instances``
    replicates it onto more channels first.

    If a threadblock would exceed the runtime's steps per threadblock (``max_steps``: a
    custom build's), the busiest connections are cut, in the order of their start times,
    into runs on further copies of their channels, as few as make it fit (a copy's steps
    follow the previous copy's, so the schedule's order holds). A rank keeps at most
    :data:`~.runtimes.RESIDENT_TBS` threadblocks, and where it has more than 128 the ones
    other steps wait for are numbered first (a
    step's ``depid`` is an ``int8``). Raises :class:`AlgorithmError` for an inconsistent
    IR and :class:`PlanError`, with the reason, for a plan the runtime would not load
    (:func:`~.runtimes.check_runtime`; the size selection, set by ``min_bytes`` and
    ``max_bytes``, is left to the caller).
    With ``topology``, sends sharing a resource keep the order of the IR's start times,
    and a receive and a send share a threadblock only where that delays no step of
    the IR's schedule (its start and end times).
    The same algorithm always gives the same plan.

    >>> from taccl_py.synth.baselines.direct import direct_algorithm
    >>> from taccl_py.collectives import Collective
    >>> from taccl_py.topology.loader import load_topology
    >>> topo = load_topology("dgx1")
    >>> alg = direct_algorithm(topo, Collective("allgather", 8))
    >>> plan = lower(alg, topo, LowerOptions(proto="LL", name="ag"))
    >>> plan.name, plan.proto, plan.ngpus
    ('ag', 'LL', 8)
    """
    rules = runtime_rules(options.runtime, options.max_steps, options.max_nodes)
    if options.proto not in PROTOCOLS:
        raise PlanError(f"protocol {options.proto!r} is not one of {', '.join(PROTOCOLS)}")
    lo, hi = options.min_bytes, options.max_bytes
    if lo < 0 or hi < 0 or 0 < hi < lo:
        raise PlanError(
            f"min_bytes={lo} / max_bytes={hi}: both must be >= 0 and min <= max (max 0 = unbounded)"
        )
    coll = alg.collective
    unloaded = unloaded_problem(rules, coll.kind)
    if unloaded is not None:
        raise PlanError(unloaded)
    if options.inplace is not None and options.inplace != coll.inplace:
        inplace = Collective(coll.kind, coll.num_ranks, coll.chunkup, options.inplace, coll.root)
        alg = replace(alg, collective=inplace)
    alg.check()
    instances = options.instances
    alg = alg.replicate(instances)
    fewer = "use fewer instances" if instances > 1 else "use fewer channels"
    _check_peers(alg, rules, fewer)
    if alg.nchannels > rules.channels:
        raise PlanError(
            f"the plan needs {alg.nchannels} channels (the algorithm's channels x "
            f"{instances} instance(s)); {rules.name} has channels "
            f"0..{rules.channels - 1}: "
            + ("use fewer instances" if instances > 1 else "use an algorithm with fewer channels")
        )
    plan = _build(
        alg,
        Plan(
            alg.name if options.name is None else options.name,
            alg.collective.kind,
            alg.num_ranks,
            alg.collective.nchunksperloop,
            proto=options.proto,
            min_bytes=lo,
            max_bytes=hi,
            root=alg.collective.root,
        ),
        topology,
        rules,
    )
    spread, most = 1, rules.channels // alg.nchannels
    while (longest := _longest_tb(plan)) > rules.max_steps and spread < most:
        spread = min(most, max(spread + 1, -(-spread * longest // rules.max_steps)))
        plan = _build(_spread(alg, spread), plan, topology, rules)
    problems = check_runtime(
        plan, options.runtime, options.max_steps, selection=False, max_nodes=options.max_nodes
    )
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise PlanError(
            f"{problems[0]}{more}; with {plan.nchannels} channel(s): {fewer}, a "
            "smaller chunk-up or an algorithm with fewer peers or steps per rank"
        )
    return plan


def _spread(alg: Algorithm, k: int) -> Algorithm:
    """Cut each connection's transfers, in the order of their start times, into runs of
    ``1 / k`` of the busiest connection's and put the i-th run on the i-th copy of its
    channel: a copy's steps follow the previous copy's in time, and a connection shorter
    than a run stays whole on its channel (with its order and its dependencies). With a
    schedule, a run ends only between transfers of different start times: chunks it sends
    at once (a block, merged into one step) stay on one copy, where the copy's first
    step waits for the rank's previous send on the resource (a copy's step that starts
    with the previous copy's last would wait for nothing, and run first).
    """
    nch = alg.nchannels
    conns: dict[tuple[int, int, int], list[int]] = {}
    for i, t in enumerate(alg.transfers):
        conns.setdefault((t.src, t.dst, t.channel), []).append(i)
    run = -(-max(map(len, conns.values()), default=1) // k)
    copy = [0] * len(alg.transfers)
    timed = len({t.start for t in alg.transfers}) > 1  # a schedule (baselines: none)
    for members in conns.values():
        if len(members) <= run:
            continue
        members.sort(key=lambda i: (alg.transfers[i].start, i))
        c, taken, last = 0, 0, None
        for i in members:
            start = alg.transfers[i].start
            if taken >= run and (start != last or not timed):  # not inside a send
                c, taken = c + 1, 0
            copy[i], taken, last = c, taken + 1, start
    ts = [replace(t, channel=t.channel + nch * c) for t, c in zip(alg.transfers, copy)]
    return Algorithm(alg.name, alg.collective, ts, alg.topology, alg.size, alg.meta)


def _longest_tb(plan: Plan) -> int:
    return max((len(tb.steps) for g in plan.gpus for tb in g.tbs), default=0)


def _build(alg: Algorithm, header: Plan, topology: Topology | None, rules: RuntimeRules) -> Plan:
    """The plan of (checked) ``alg``, with the header fields of ``header``."""
    coll = alg.collective
    flow = value_flow(alg)
    blocks = Threadblocks(alg, flow, min(rules.max_tbs, RESIDENT_TBS))
    apart: frozenset = frozenset()
    while True:  # with a schedule, split the pairs that would delay it
        tbs = blocks.assign(apart)
        late = blocks.late(tbs) - apart if topology is not None else set()
        if not late:
            break
        apart |= late
    send_ops, recv_ops = blocks.finish(tbs)
    del blocks
    s_chunks, copies = place(alg, flow)
    _set_accesses(flow, send_ops, recv_ops)
    _read_own_from_output(alg, flow, copies, send_ops)
    _add_copies(alg, copies, tbs, send_ops, recv_ops, min(rules.max_tbs, RESIDENT_TBS))
    _find_conflicts(tbs)
    _make_steps(flow, tbs)
    if topology is not None:
        _follow_schedule(alg, send_ops, topology)
    _merge(alg, tbs, send_ops, recv_ops, rules.max_cnt)
    _place_sinks(tbs, s_chunks)
    _keep_needed_deps(tbs)
    _waited_first(tbs, rules.max_depid)
    plan = replace(
        header,
        nchannels=alg.nchannels,
        inplace=coll.inplace,
        outofplace=not coll.inplace,
        redop="sum" if coll.reducing else "nop",
        gpus=[
            GpuPlan(r, *rank_buffers(coll, r), s_chunks[r], [_emit(tb) for tb in tbs[r]])
            for r in range(coll.num_ranks)
        ],
    )
    _fill_steps(plan, tbs)
    _release(tbs)
    return plan


def _release(tbs: list[list[TB]]) -> None:
    """Break the reference cycles between ops, steps and threadblocks, so that they are
    freed on return even while the cyclic collector is paused."""
    for rank_tbs in tbs:
        for tb in rank_tbs:
            for st in tb.steps:
                st.ops = []
                st.wait = []
            tb.units = []
            tb.steps = []


def _set_accesses(flow: Flow, send_ops: list[Op], recv_ops: list[Op]) -> None:
    for k, (s, r) in enumerate(zip(send_ops, recv_ops)):
        v, w = flow.sent[k], flow.made[k]
        s.reads = (placed(v),) if v.stored else ()
        r.reads = (placed(w.operand),) if w.operand is not None else ()
        r.writes = (placed(w),) if w.stored else ()


def _read_own_from_output(
    alg: Algorithm, flow: Flow, copies: list[Copy], send_ops: list[Op]
) -> None:
    """A rank's own input chunk that a block (:func:`.buffers.blocks`) carries with
    received chunks (a relay's block) is read from its output location, once copied
    there at the start, so that the block can go as one step (one α) instead of up to
    three. Other plans are left as they are.
    """
    mixed = {
        k for ks in blocks(alg) if any(flow.sent[k].producer is not None for k in ks) for k in ks
    }
    for cp in copies:
        v = cp.version
        if v.producer is not None or cp.after != -1:
            continue
        for k in v.readers:
            if k in mixed and alg.transfers[k].src == v.rank and not alg.transfers[k].reduce:
                send_ops[k].reads = (cp.dst,)


def _add_copies(
    alg: Algorithm,
    copies: list[Copy],
    tbs: list[list[TB]],
    send_ops: list[Op],
    recv_ops: list[Op],
    max_tbs: int,
) -> None:
    """Copy ops go to the threadblock that made (else first used) the value.

    A copy's key puts it right after transfer ``after`` (before any op hoisted past it).
    A rooted collective's copies of a rank's own inputs into untouched output (the
    Broadcast root's whole buffer, the Gather and Scatter root's own block) go to one
    threadblock of their own (no peers; the rank's first if it has ``max_tbs``), in
    buffer order so that they merge into few steps, beside the sends.
    """
    own: dict[int, list[Copy]] = {}
    for i, cp in enumerate(copies):
        v = cp.version
        if alg.collective.rooted and v.producer is None and cp.after == -1:
            own.setdefault(v.rank, []).append(cp)
            continue
        if v.producer is not None:
            tb = recv_ops[v.producer].tb
        elif v.readers:
            j = v.readers[0]
            tb = (send_ops[j] if alg.transfers[j].src == v.rank else recv_ops[j]).tb
        elif tbs[v.rank]:
            tb = tbs[v.rank][0]
        else:
            tb = TB(v.rank, -1, -1, 0, id=0)
            tbs[v.rank].append(tb)
        op = Op("c", v.rank, (cp.after, 0, i + 1), reads=(placed(v),), writes=(cp.dst,), tb=tb)
        tb.units.insert(bisect_right(tb.units, op.key, key=lambda u: u[0].key), [op])
    for rank, cps in sorted(own.items()):
        if len(tbs[rank]) < max_tbs:
            tb = TB(rank, -1, -1, 0, id=len(tbs[rank]))
            tbs[rank].append(tb)
        else:
            tb = tbs[rank][0]
        for i, cp in enumerate(sorted(cps, key=lambda cp: cp.dst)):
            v = cp.version
            op = Op("c", rank, (-1, 1, i + 1), reads=(placed(v),), writes=(cp.dst,), tb=tb)
            tb.units.insert(bisect_right(tb.units, op.key, key=lambda u: u[0].key), [op])


def _find_conflicts(tbs: list[list[TB]]) -> None:
    """Set each op's deps: the ops of other threadblocks it must follow, in IR order."""
    for rank_tbs in tbs:
        ops = sorted(
            (op for tb in rank_tbs for unit in tb.units for op in unit), key=lambda op: op.order
        )
        writer: dict[Loc, Op] = {}
        readers: dict[Loc, list[Op]] = {}
        for op in ops:
            found = []
            for loc in op.reads:
                if loc in writer:
                    found.append(writer[loc])
                readers.setdefault(loc, []).append(op)
            for loc in op.writes:
                if loc in writer:
                    found.append(writer[loc])
                found.extend(readers.pop(loc, ()))
                writer[loc] = op
            op.deps = [d for d in found if d.tb is not op.tb]


def _follow_schedule(alg: Algorithm, send_ops: list[Op], topology: Topology) -> None:
    """Make each send wait for the rank's previous send (by IR start time) on each resource.

    The schedule queued them in that order; without the dependency the runtime could
    start the later one first and hold the resource while its receiver is still busy.
    """
    last: dict[tuple[int, str], int] = {}
    for k in sorted(range(len(send_ops)), key=lambda k: (alg.transfers[k].start, k)):
        t, s = alg.transfers[k], send_ops[k]
        for res in topology.connections[(t.src, t.dst)].resources:
            j = last.get((t.src, res))
            if j is not None and alg.transfers[j].start < t.start:
                q = send_ops[j]
                if q.tb is not s.tb and q.step.key < s.step.key and q not in s.deps:
                    s.deps.append(q)
            last[(t.src, res)] = k


def _make_steps(flow: Flow, tbs: list[list[TB]]) -> None:
    for rank_tbs in tbs:
        for tb in rank_tbs:
            tb.steps = [_unit_step(unit, flow, tb) for unit in tb.units]
            for pos, st in enumerate(tb.steps):
                st.pos = pos
                for op in st.ops:
                    op.step = st


def _unit_step(unit: list[Op], flow: Flow, tb: TB) -> TbStep:
    op = unit[0]
    if op.kind == "c":
        return TbStep("cpy", unit, op.reads[0], op.writes[0], tb)
    if op.kind == "s":
        return TbStep("s", unit, op.reads[0], None, tb)
    w = flow.made[op.transfer]
    src = w.operand.loc if w.operand is not None else None
    dst = w.loc if w.stored else None
    if len(unit) == 1:
        kind = "r" if src is None else "rrc"
    else:
        kind = "rcs" if src is None else "rrcs" if w.stored else "rrs"
    return TbStep(kind, unit, src, dst, tb)


# -- merging ------------------------------------------------------------------------------


def _merge(
    alg: Algorithm, tbs: list[list[TB]], send_ops: list[Op], recv_ops: list[Op], max_cnt: int
) -> None:
    """Merge runs of consecutive like steps into one step with 1 < cnt <= ``max_cnt``.

    A pair of neighbours merges only if the steps at the other end of each of their
    transfers merge as well (so counts match on every connection), and only if no member
    waits for a step keyed after the run's first step (so the merged step cannot deadlock).
    """
    all_tbs = [tb for rank_tbs in tbs for tb in rank_tbs]
    nxt = {a: b for tb in all_tbs for a, b in zip(tb.steps, tb.steps[1:]) if _mergeable(alg, a, b)}

    def partners(a: TbStep, b: TbStep) -> list[tuple[TbStep, TbStep]]:
        ends = [send_ops if op.kind == "r" else recv_ops for op in a.ops if op.kind != "c"]
        return [
            (end[op_a.transfer].step, end[op_b.transfer].step)
            for end, op_a, op_b in zip(ends, a.ops, b.ops)
        ]

    def drop(firsts: list[TbStep]) -> None:  # a pair's partners need it: drop them too
        while firsts:
            a = firsts.pop()
            b = nxt.pop(a, None)
            if b is not None:
                firsts.extend(pa for pa, pb in partners(a, b) if nxt.get(pa) is pb)

    drop([a for a, b in nxt.items() if any(nxt.get(pa) is not pb for pa, pb in partners(a, b))])
    while True:  # shorter runs start later, so this only ever drops fewer
        start: dict[TbStep, TbStep] = {}
        for tb in all_tbs:
            for i, st in enumerate(tb.steps):
                start[st] = start[tb.steps[i - 1]] if i and nxt.get(tb.steps[i - 1]) is st else st
        late = [
            a
            for a, b in nxt.items()
            if any(d.step.key >= start[a].key for op in b.ops for d in op.deps)
        ]
        if not late:
            break
        drop(late)
    for tb in all_tbs:
        merged: list[TbStep] = []
        for i, st in enumerate(tb.steps):
            if i and nxt.get(tb.steps[i - 1]) is st and merged[-1].cnt < max_cnt:
                merged[-1].ops.extend(st.ops)
                merged[-1].cnt += 1
            else:
                merged.append(st)
        tb.steps = merged
        for pos, st in enumerate(merged):
            st.pos = pos
            for op in st.ops:
                op.step = st


def _mergeable(alg: Algorithm, a: TbStep, b: TbStep) -> bool:
    if a.type != b.type:
        return False
    if [alg.transfers[op.transfer].step for op in a.ops if op.transfer >= 0] != [
        alg.transfers[op.transfer].step for op in b.ops if op.transfer >= 0
    ]:
        return False
    return all(
        x is None or (y is not None and x[0] == y[0] and (x[0] == "sink" or y[1] == x[1] + 1))
        for x, y in ((a.src, b.src), (a.dst, b.dst))
    )


def _place_sinks(tbs: list[list[TB]], s_chunks: list[int]) -> None:
    """Give each threadblock's sink scratch chunks after the rank's slots (as many as its
    widest step writing there); every step writing the sink starts at its first chunk."""
    for rank, rank_tbs in enumerate(tbs):
        for tb in rank_tbs:
            sunk = [st for st in tb.steps if st.dst is not None and st.dst[0] == "sink"]
            for st in sunk:
                st.dst = ("s", s_chunks[rank])
            s_chunks[rank] += max((st.cnt for st in sunk), default=0)


# -- dependencies and emission ---------------------------------------------------------------


def _keep_needed_deps(tbs: list[list[TB]]) -> None:
    """Set ``wait``: per step, the dependencies not implied by program order or other waits.

    Vector clocks over a rank's threadblocks: ``done[st][t]`` is the last position of
    threadblock ``t`` known to be finished once ``st`` is (-1: none).
    """
    for rank_tbs in tbs:
        steps = sorted(
            (st for tb in rank_tbs for st in tb.steps), key=lambda st: (st.key, st.tb.id, st.pos)
        )
        none = [-1] * (max((tb.id for tb in rank_tbs), default=-1) + 1)
        done: dict[TbStep, list[int]] = {}
        for st in steps:
            known = done[st.tb.steps[st.pos - 1]] if st.pos else none
            latest: dict[int, TbStep] = {}
            for op in st.ops:
                for dep in op.deps:
                    t = dep.step
                    if t.tb.id not in latest or latest[t.tb.id].pos < t.pos:
                        latest[t.tb.id] = t
            wait = None
            if latest:
                cands = [latest[i] for i in sorted(latest) if known[i] < latest[i].pos]
                wait = [
                    d
                    for d in cands
                    if not any(done[o][d.tb.id] >= d.pos for o in cands if o is not d)
                ]
                st.wait = wait
            if wait:
                for d in wait:
                    d.hasdep = True
                    known = list(map(max, known, done[d]))
            else:
                known = known.copy()
            known[st.tb.id] = st.pos
            done[st] = known


def _waited_first(tbs: list[list[TB]], max_depid: int) -> None:
    """On a rank where a threadblock some step waits for has an id over ``max_depid`` (a
    step's ``depid`` is an ``int8``), number the waited-for threadblocks first."""
    for rank, rank_tbs in enumerate(tbs):
        waited = {d.tb for tb in rank_tbs for st in tb.steps for d in st.wait}
        if all(tb.id <= max_depid for tb in waited):
            continue
        if len(waited) > max_depid + 1:
            raise PlanError(
                f"rank {rank}: steps wait for {len(waited)} threadblocks, but a "
                f"step's depid is stored as int8 (ids 0..{max_depid}); use fewer "
                "channels or instances, or an algorithm with fewer peers per rank"
            )
        rank_tbs.sort(key=lambda tb: tb not in waited)
        for i, tb in enumerate(rank_tbs):
            tb.id = i


def _emit(tb: TB) -> Threadblock:
    """An empty plan threadblock; numbers the steps, counting the nops to come."""
    index = 0
    for st in tb.steps:
        index += max(0, len(st.wait) - 1)
        st.index = index
        index += 1
    return Threadblock(tb.id, tb.send, tb.recv, tb.chan)


def _fill_steps(plan: Plan, tbs: list[list[TB]]) -> None:
    """Write the steps, each extra dependency as a nop just before its step."""
    for gpu, rank_tbs in zip(plan.gpus, tbs):
        for out, tb in zip(gpu.tbs, rank_tbs):
            for st in tb.steps:
                for d in st.wait[:-1]:
                    out.steps.append(Step(len(out.steps), "nop", depid=d.tb.id, deps=d.index))
                last = st.wait[-1] if st.wait else None
                srcbuf, srcoff = st.src if st.src else (None, -1)
                dstbuf, dstoff = st.dst if st.dst else (None, -1)
                out.steps.append(
                    Step(
                        len(out.steps),
                        st.type,
                        srcbuf,
                        srcoff,
                        dstbuf,
                        dstoff,
                        cnt=st.cnt,
                        depid=last.tb.id if last else -1,
                        deps=last.index if last else -1,
                        hasdep=int(st.hasdep),
                    )
                )


def _check_peers(alg: Algorithm, rules: RuntimeRules, fewer: str) -> None:
    """Fail fast where no pairing of peers can fit the runtime's threadblock limits: a rank
    needs, per channel, at least one threadblock per send peer and per receive peer."""
    per_channel, most = rules.max_tbs_per_channel, min(rules.max_tbs, RESIDENT_TBS)
    peers: dict[tuple[int, int, str], set[int]] = {}
    for t in alg.transfers:
        peers.setdefault((t.src, t.channel, "send"), set()).add(t.dst)
        peers.setdefault((t.dst, t.channel, "recv"), set()).add(t.src)
    least = [0] * alg.num_ranks
    for (rank, chan, role), ps in sorted(peers.items()):
        if len(ps) > per_channel:
            raise PlanError(
                f"rank {rank} has {len(ps)} threadblocks that {role} on channel {chan}, "
                f"MSCCL allows {per_channel}: spread the rank's peers over more "
                "channels or use an algorithm with fewer peers per rank"
            )
        if role == "send":
            least[rank] += max(len(ps), len(peers.get((rank, chan, "recv"), ())))
        elif (rank, chan, "send") not in peers:
            least[rank] += len(ps)
    for rank, count in enumerate(least):
        if count > most:
            raise PlanError(
                f"rank {rank} needs {count} threadblocks, MSCCL allows {most} "
                f"(all resident at once): {fewer} or an algorithm with fewer "
                "peers per rank"
            )

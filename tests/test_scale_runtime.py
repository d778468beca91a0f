"""The optimised Algorithm.check agrees with a plain set-based check; the transfer order
and the verifier's memory release."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from taccl_py.collectives import Collective
from taccl_py.errors import AlgorithmError, TacclError
from taccl_py.ir.algorithm import Algorithm, Transfer
from taccl_py.lowering.lower import lower
from taccl_py.plan.verify import Interpreter, verify
from taccl_py.synth.methods import synthesize
from taccl_py.synth.milp.combine import combine
from taccl_py.topology.loader import load_topology

from .test_combine import allgather

# -- Algorithm.check ---------------------------------------------------------------------


def reference_check(alg: Algorithm) -> None:
    """The original check: values as frozensets of contributions."""
    coll = alg.collective
    n = coll.num_ranks
    value = {}
    for c in range(coll.num_chunks):
        for r in coll.precondition(c):
            value[(r, c)] = frozenset({(r, coll.input_index(r, c))})
    for i, t in enumerate(alg.transfers):
        if not (0 <= t.src < n and 0 <= t.dst < n) or t.src == t.dst:
            raise AlgorithmError(f"transfer {i}: bad ranks {t.src}->{t.dst}")
        if not 0 <= t.chunk < coll.num_chunks:
            raise AlgorithmError(f"transfer {i}: chunk {t.chunk} out of range")
        sent = value.get((t.src, t.chunk))
        if sent is None:
            raise AlgorithmError(
                f"transfer {i} (step {t.step}): rank {t.src} sends chunk {t.chunk} "
                "before it holds it"
            )
        if t.reduce:
            mine = value.get((t.dst, t.chunk))
            if mine is None:
                raise AlgorithmError(
                    f"transfer {i} (step {t.step}): rank {t.dst} reduces chunk {t.chunk} "
                    "into nothing"
                )
            if mine & sent:
                raise AlgorithmError(
                    f"transfer {i} (step {t.step}): rank {t.dst} reduces chunk {t.chunk} "
                    f"twice with contributions {sorted(mine & sent)}"
                )
            value[(t.dst, t.chunk)] = mine | sent
        else:
            value[(t.dst, t.chunk)] = sent
    for c in range(coll.num_chunks):
        want = coll.expected(c)
        for r in coll.postcondition(c):
            got = value.get((r, c))
            if got != want:
                missing = sorted(want - (got or frozenset()))
                raise AlgorithmError(
                    f"{alg.name}: rank {r} ends without chunk {c} complete "
                    f"(missing contributions {missing[:4]}{'...' if len(missing) > 4 else ''})"
                )


def check_outcome(check, alg):
    try:
        check(alg)
    except AlgorithmError as exc:
        return str(exc)
    return None


def mutants(alg: Algorithm, rng: random.Random, count: int):
    n, ts = alg.num_ranks, alg.transfers
    yield alg
    for _ in range(count):
        ts2 = list(ts)
        i = rng.randrange(len(ts2))
        t = ts2[i]
        how = rng.randrange(6)
        if how == 0:
            del ts2[i]
        elif how == 1:
            ts2.append(replace(t, step=t.step + 1000))
        elif how == 2:
            ts2[i] = replace(t, reduce=not t.reduce)
        elif how == 3:
            ts2[i] = replace(t, src=rng.randrange(n))
        elif how == 4:
            ts2[i] = replace(t, chunk=rng.randrange(alg.collective.num_chunks + 1))
        else:
            ts2[i] = replace(t, dst=rng.randrange(n + 1))
        yield replace(alg, transfers=ts2)


@pytest.mark.parametrize("kind", ["allgather", "allreduce", "reducescatter", "alltoall"])
@pytest.mark.parametrize("method", ["ring", "direct"])
def test_check_matches_reference(kind, method):
    topo = load_topology("dgx1")
    try:
        alg = synthesize(topo, Collective(kind, topo.num_ranks, 2), method)
    except TacclError:
        pytest.skip(f"{method} does not build {kind}")
    rng = random.Random(f"{kind}/{method}")
    faults = 0
    for m in mutants(alg, rng, 60):
        got = check_outcome(Algorithm.check, m)
        assert got == check_outcome(reference_check, m)
        faults += got is not None
    assert faults > 10


def test_transfers_sorted_as_the_dataclass_orders_them():
    rng = random.Random(1)
    ts = [
        Transfer(
            rng.randrange(3),
            rng.choice([0.0, 1.5, -0.0]),
            rng.randrange(3),
            rng.randrange(3),
            rng.randrange(3),
            rng.random() < 0.5,
            rng.choice([0.0, 2.0]),
            rng.randrange(2),
        )
        for _ in range(300)
    ]
    alg = Algorithm("x", Collective("allgather", 3), ts)
    assert alg.transfers == sorted(ts)
    assert [id(t) for t in alg.transfers] == [id(t) for t in sorted(ts)]


# -- the verifier --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["allreduce", "reducescatter"])
def test_verifier_frees_dependency_snapshots(kind):
    topo, ag = allgather("2x4")
    plan = lower(combine(ag, topo, kind), topology=topo)
    coll = plan.collective()
    run = Interpreter(plan, lambda r, j: frozenset({(r, j)}), lambda a, b: a | b).run()
    assert any(op.dep is not None for ops in run.ops for op in ops)
    assert run.snaps == {} and run.snap_uses == {}
    assert verify(plan).ranks == coll.num_ranks


def test_verify_report_counts_every_step():
    topo = load_topology("dgx1")
    plan = lower(
        synthesize(topo, Collective("allreduce", topo.num_ranks, 2), "ring"), topology=topo
    )
    steps = [st for g in plan.gpus for tb in g.tbs for st in tb.steps]
    rep = verify(plan)
    assert rep.steps == len(steps)
    assert rep.sends == sum(st.type in ("s", "rcs", "rrs", "rrcs") for st in steps)
    assert rep.receives == sum(st.type in ("r", "rcs", "rrc", "rrs", "rrcs") for st in steps)
    assert rep.reductions == sum(st.type in ("rrc", "rrs", "rrcs", "re") for st in steps)
    assert rep.chunks_sent == sum(st.cnt for st in steps if st.type in ("s", "rcs", "rrs", "rrcs"))
    assert rep.threadblocks == sum(len(g.tbs) for g in plan.gpus)

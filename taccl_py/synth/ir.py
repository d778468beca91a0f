"""The algorithm IR between synthesis and lowering: timed sends of chunks between ranks.

An :class:`Algorithm` is a list of :class:`Transfer` in execution order. A transfer moves
the sender's current value of ``chunk`` to ``dst``; with ``reduce`` the receiver combines
it with its own current value (a disjoint union of contributions), otherwise it stores it.
Transfers are ordered by (step, start, src, dst, chunk); a transfer may only depend on
transfers before it, so this order is always a valid sequential execution.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from ..collectives import Collective, Contribution
from ..errors import AlgorithmError


@dataclass(frozen=True, order=True)
class Transfer:
    step: int
    start: float
    src: int
    dst: int
    chunk: int
    reduce: bool = False
    end: float = 0.0
    channel: int = 0


@dataclass
class Algorithm:
    name: str
    collective: Collective
    transfers: list[Transfer]
    topology: str = ""
    size: int = 0  # bytes the schedule was made for (nccl-tests convention), 0 = any
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.transfers = sorted(self.transfers)

    @property
    def num_ranks(self) -> int:
        return self.collective.num_ranks

    @property
    def num_steps(self) -> int:
        return 1 + max((t.step for t in self.transfers), default=-1)

    @property
    def nchannels(self) -> int:
        return 1 + max((t.channel for t in self.transfers), default=0)

    def replicate(self, instances: int) -> "Algorithm":
        """Split every chunk into ``instances`` sub-chunks, each instance on its own channel."""
        if instances < 1:
            raise AlgorithmError(f"instances must be >= 1, got {instances}")
        if instances == 1:
            return self
        coll = self.collective
        nch = self.nchannels
        transfers = [
            Transfer(t.step, t.start, t.src, t.dst, coll.refine(t.chunk, instances, i),
                     t.reduce, t.end, t.channel + i * nch)
            for t in self.transfers for i in range(instances)]
        return Algorithm(self.name, coll.with_chunkup(coll.chunkup * instances), transfers,
                         self.topology, self.size, dict(self.meta, instances=instances))

    def check(self) -> None:
        """Run the IR symbolically; raise :class:`AlgorithmError` on the first fault."""
        coll = self.collective
        n = coll.num_ranks
        value: dict[tuple[int, int], frozenset[Contribution]] = {}
        for c in range(coll.num_chunks):
            for r in coll.precondition(c):
                value[(r, c)] = frozenset({(r, coll.input_index(r, c))})
        for i, t in enumerate(self.transfers):
            if not (0 <= t.src < n and 0 <= t.dst < n) or t.src == t.dst:
                raise AlgorithmError(f"transfer {i}: bad ranks {t.src}->{t.dst}")
            if not 0 <= t.chunk < coll.num_chunks:
                raise AlgorithmError(f"transfer {i}: chunk {t.chunk} out of range")
            sent = value.get((t.src, t.chunk))
            if sent is None:
                raise AlgorithmError(
                    f"transfer {i} (step {t.step}): rank {t.src} sends chunk {t.chunk} "
                    "before it holds it")
            if t.reduce:
                mine = value.get((t.dst, t.chunk))
                if mine is None:
                    raise AlgorithmError(
                        f"transfer {i} (step {t.step}): rank {t.dst} reduces chunk {t.chunk} "
                        "into nothing")
                if mine & sent:
                    raise AlgorithmError(
                        f"transfer {i} (step {t.step}): rank {t.dst} reduces chunk {t.chunk} "
                        f"twice with contributions {sorted(mine & sent)}")
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
                        f"{self.name}: rank {r} ends without chunk {c} complete "
                        f"(missing contributions {missing[:4]}{'...' if len(missing) > 4 else ''})")

    # -- serialisation -------------------------------------------------------
    def to_json(self) -> str:
        coll = self.collective
        doc = {
            "name": self.name, "topology": self.topology, "size": self.size,
            "collective": {"kind": coll.kind, "num_ranks": coll.num_ranks,
                           "chunkup": coll.chunkup, "inplace": coll.inplace},
            "meta": self.meta,
            "transfers": [asdict(t) for t in self.transfers],
        }
        return json.dumps(doc, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Algorithm":
        try:
            doc = json.loads(text)
            coll = Collective(**doc["collective"])
            transfers = [Transfer(**t) for t in doc["transfers"]]
            return cls(doc["name"], coll, transfers, doc.get("topology", ""),
                       doc.get("size", 0), doc.get("meta", {}))
        except (ValueError, KeyError, TypeError) as exc:
            raise AlgorithmError(f"not an algorithm JSON document: {exc}") from None

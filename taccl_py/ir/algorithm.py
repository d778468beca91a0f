"""The algorithm IR between synthesis and lowering: timed sends of chunks between ranks.

An :class:`Algorithm` is a list of :class:`Transfer` in execution order. A transfer moves
the sender's current value of ``chunk`` to ``dst``; with ``reduce`` the receiver combines
it with its own current value (a disjoint union of contributions), otherwise it stores it.
Transfers are ordered by (step, start, src, dst, chunk); a transfer may only depend on
transfers before it, so this order is always a valid sequential execution.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from operator import attrgetter

from ..collectives import Collective, Contribution
from ..errors import AlgorithmError


@dataclass(frozen=True, order=True, slots=True)
class Transfer:
    step: int
    start: float
    src: int
    dst: int
    chunk: int
    reduce: bool = False
    end: float = 0.0
    channel: int = 0


_ORDER = attrgetter(*(f.name for f in fields(Transfer)))


@dataclass
class Algorithm:
    name: str
    collective: Collective
    transfers: list[Transfer]
    topology: str = ""
    size: int = 0  # bytes the schedule was made for (nccl-tests convention), 0 = any
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        # the order of the dataclass's comparison (all fields in turn), keyed for speed
        self.transfers = sorted(self.transfers, key=_ORDER)

    @property
    def num_ranks(self) -> int:
        return self.collective.num_ranks

    @property
    def num_steps(self) -> int:
        return 1 + max((t.step for t in self.transfers), default=-1)

    @property
    def nchannels(self) -> int:
        return 1 + max((t.channel for t in self.transfers), default=0)

    def replicate(self, instances: int) -> Algorithm:
        """Split every chunk into ``instances`` sub-chunks, each instance on its own channel."""
        if instances < 1:
            raise AlgorithmError(f"instances must be >= 1, got {instances}")
        if instances == 1:
            return self
        coll = self.collective
        nch = self.nchannels
        transfers = [
            Transfer(
                t.step,
                t.start,
                t.src,
                t.dst,
                coll.refine(t.chunk, instances, i),
                t.reduce,
                t.end,
                t.channel + i * nch,
            )
            for t in self.transfers
            for i in range(instances)
        ]
        return Algorithm(
            self.name,
            coll.with_chunkup(coll.chunkup * instances),
            transfers,
            self.topology,
            self.size,
            dict(self.meta, instances=instances),
        )

    def check(self) -> None:
        """Run the IR symbolically; raise :class:`AlgorithmError` on the first fault."""
        coll = self.collective
        n = coll.num_ranks
        nchunks = coll.num_chunks
        # A value of chunk c is a set of contributions (r, input_index(r, c)), one per
        # rank at most, so it is kept as a bit mask over ranks (0: nothing held).
        value = [0] * (n * nchunks)  # [rank * nchunks + chunk]
        for c in range(nchunks):
            for r in coll.precondition(c):
                value[r * nchunks + c] = 1 << r

        def contribs(c: int, mask: int) -> list[Contribution]:
            # a mask holds only ranks of precondition(c): those with an input to chunk c
            return sorted(x for x in coll.expected(c) if mask >> x[0] & 1)

        for i, t in enumerate(self.transfers):
            src, dst, c = t.src, t.dst, t.chunk
            if not (0 <= src < n and 0 <= dst < n) or src == dst:
                raise AlgorithmError(f"transfer {i}: bad ranks {src}->{dst}")
            if not 0 <= c < nchunks:
                raise AlgorithmError(f"transfer {i}: chunk {c} out of range")
            sent = value[src * nchunks + c]
            if not sent:
                raise AlgorithmError(
                    f"transfer {i} (step {t.step}): rank {src} sends chunk {c} before it holds it"
                )
            if t.reduce:
                mine = value[dst * nchunks + c]
                if not mine:
                    raise AlgorithmError(
                        f"transfer {i} (step {t.step}): rank {dst} reduces chunk {c} into nothing"
                    )
                if mine & sent:
                    raise AlgorithmError(
                        f"transfer {i} (step {t.step}): rank {dst} reduces chunk {c} "
                        f"twice with contributions {contribs(c, mine & sent)}"
                    )
                value[dst * nchunks + c] = mine | sent
            else:
                value[dst * nchunks + c] = sent
        for c in range(nchunks):
            want = 0
            for r in coll.precondition(c):
                want |= 1 << r
            for r in coll.postcondition(c):
                got = value[r * nchunks + c]
                if got != want:
                    missing = contribs(c, want & ~got)
                    raise AlgorithmError(
                        f"{self.name}: rank {r} ends without chunk {c} complete "
                        f"(missing contributions {missing[:4]}{'...' if len(missing) > 4 else ''})"
                    )

    # -- serialisation -------------------------------------------------------
    def to_json(self) -> str:
        coll = self.collective
        doc = {
            "name": self.name,
            "topology": self.topology,
            "size": self.size,
            "collective": {
                "kind": coll.kind,
                "num_ranks": coll.num_ranks,
                "chunkup": coll.chunkup,
                "inplace": coll.inplace,
                **({"root": coll.root} if coll.rooted else {}),
            },
            "meta": self.meta,
            "transfers": [asdict(t) for t in self.transfers],
        }
        return json.dumps(doc, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Algorithm:
        try:
            doc = json.loads(text)
            coll = Collective(**doc["collective"])
            transfers = [Transfer(**t) for t in doc["transfers"]]
            return cls(
                doc["name"],
                coll,
                transfers,
                doc.get("topology", ""),
                doc.get("size", 0),
                doc.get("meta", {}),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise AlgorithmError(f"not an algorithm JSON document: {exc}") from None

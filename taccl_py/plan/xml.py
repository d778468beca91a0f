"""MSCCL XML text <-> :class:`Plan` (the format msccl-tools writes and MSCCL loads).

:func:`plan_to_xml` writes every attribute the executors want, in a fixed order.
:func:`parse_plan` also reads plans written by msccl-tools / SCCL: optional attributes may
be missing, and a buffer given with offset -1 (how msccl-tools marks an unused operand)
reads back as "no buffer".
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import cast
from xml.sax.saxutils import quoteattr

from ..collectives import ROOTED_KINDS, canonical_kind
from ..errors import CollectiveError, PlanError
from ..util.fileio import atomic_write_text, display_path, read_input
from .model import GpuPlan, Plan, Step, Threadblock, XmlSource
from .runtimes import DEFAULT_RUNTIME, coll_spelling, runtime_rules

BUFFERS = ("i", "o", "s")

# What a plan file may hold, checked as it is read: bounds of this machine's memory, well
# above the MSCCL runtime's own limits (those the verifier checks, runtime/verify.py).
MAX_PLAN_BYTES = 256 << 20
#: <gpu>, <tb> and <step> elements in all (a 256-rank AllReduce has about 0.5 M)
MAX_ELEMENTS = 1 << 21
#: ngpus: a topology's most ranks (topology.schema.MAX_RANKS)
MAX_GPUS = 1024
#: nchunksperloop, a GPU's i/o/s_chunks and a step's cnt
MAX_CHUNKS = 1 << 16
#: ngpus x nchunksperloop: the chunks the verifier and simulators track
MAX_TOTAL_CHUNKS = 1 << 24
#: any other integer attribute: MSCCL reads them as C ints (minBytes, maxBytes: 64-bit)
INT32 = (-(1 << 31), (1 << 31) - 1)
INT64 = (-(1 << 63), (1 << 63) - 1)
_INTEGER = re.compile(r"\s*[+-]?[0-9]+\s*")
_FEED = 1 << 16  # characters handed to the XML parser at a time


def plan_to_xml(plan: Plan, runtime: str = DEFAULT_RUNTIME) -> str:
    """Deterministic MSCCL XML text of ``plan`` for ``runtime`` (ends with a newline).

    Every attribute either runtime reads is written; ``coll`` is spelt as ``runtime``
    wants it (ReduceScatter: ``reducescatter`` for msccl-executor, ``reduce_scatter``
    for msccl). A rooted collective's plan also gets our own ``root`` attribute, which
    neither runtime reads (:func:`~.runtimes.root_caveat`).

    >>> p = Plan("p", "reducescatter", 2, 2)
    >>> 'coll="reduce_scatter"' in plan_to_xml(p, "msccl"), 'coll="reducescatter"' in plan_to_xml(p)
    (True, True)
    """
    coll = coll_spelling(runtime_rules(runtime), canonical_kind(plan.coll))
    lines = [
        _tag(
            "algo",
            [
                ("name", plan.name),
                ("proto", plan.proto),
                ("nchannels", plan.nchannels),
                ("nchunksperloop", plan.nchunksperloop),
                ("ngpus", plan.ngpus),
                ("coll", coll),
                ("inplace", int(plan.inplace)),
                ("outofplace", int(plan.outofplace)),
                ("minBytes", plan.min_bytes),
                ("maxBytes", plan.max_bytes),
                ("redop", plan.redop),
                *([("root", plan.root)] if canonical_kind(plan.coll) in ROOTED_KINDS else []),
            ],
            empty=not plan.gpus,
        )
    ]
    for gpu in plan.gpus:
        lines.append(
            "  "
            + _tag(
                "gpu",
                [
                    ("id", gpu.id),
                    ("i_chunks", gpu.i_chunks),
                    ("o_chunks", gpu.o_chunks),
                    ("s_chunks", gpu.s_chunks),
                ],
                empty=not gpu.tbs,
            )
        )
        for tb in gpu.tbs:
            lines.append(
                "    "
                + _tag(
                    "tb",
                    [("id", tb.id), ("send", tb.send), ("recv", tb.recv), ("chan", tb.chan)],
                    empty=not tb.steps,
                )
            )
            for st in tb.steps:
                # an unused operand is written as i/-1 or o/-1: the loader requires all four
                lines.append(
                    "      "
                    + _tag(
                        "step",
                        [
                            ("s", st.s),
                            ("type", st.type),
                            ("srcbuf", st.srcbuf or "i"),
                            ("srcoff", st.srcoff),
                            ("dstbuf", st.dstbuf or "o"),
                            ("dstoff", st.dstoff),
                            ("cnt", st.cnt),
                            ("depid", st.depid),
                            ("deps", st.deps),
                            ("hasdep", st.hasdep),
                        ],
                        empty=True,
                    )
                )
            if tb.steps:
                lines.append("    </tb>")
        if gpu.tbs:
            lines.append("  </gpu>")
    if plan.gpus:
        lines.append("</algo>")
    return "\n".join(lines) + "\n"


def write_plan(plan: Plan, path: str | Path, runtime: str = DEFAULT_RUNTIME) -> Path:
    """Write ``plan`` as XML for ``runtime`` to ``path`` atomically (temp file beside it,
    then rename)."""
    return atomic_write_text(path, plan_to_xml(plan, runtime))


def _tag(name: str, attrs: list[tuple[str, object]], empty: bool) -> str:
    body = " ".join(f"{k}={quoteattr(str(v))}" for k, v in attrs)
    return f"<{name} {body}{'/' if empty else ''}>"


# -- parsing ------------------------------------------------------------------------------


def parse_plan(source: str | Path) -> Plan:
    """Load a plan from a path or from XML text; :class:`PlanError` names what is wrong.

    Either runtime's ``coll`` spelling is read; ``plan.source`` keeps the spelling and
    the attributes the file left out, for :func:`~.runtimes.check_runtime`.

    >>> p = parse_plan(
    ...     '<algo name="ag" ngpus="1" coll="allgather" nchunksperloop="1" inplace="0">'
    ...     '<gpu id="0" i_chunks="1" o_chunks="1"/></algo>'
    ... )
    >>> p.coll, p.ngpus, p.proto, len(p.gpus), "algo.maxBytes" in p.source.absent
    ('allgather', 1, 'Simple', 1, True)
    >>> parse_plan(plan_to_xml(p)) == p
    True

    A rooted plan without our ``root`` attribute is read as root 0, and says so:

    >>> b = parse_plan('<algo ngpus="2" coll="broadcast" nchunksperloop="2" inplace="1"/>')
    >>> b.root, b.root_assumed, b.label
    (0, True, 'broadcast (root 0, assumed: no root attribute)')
    """
    if isinstance(source, Path) or not source.lstrip().startswith("<"):
        where, default_name = display_path(source), Path(source).stem
        data = read_input(source, MAX_PLAN_BYTES, "plan file", PlanError)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PlanError(
                f"{where}: not a UTF-8 text file (bad byte at offset {exc.start})"
            ) from None
    else:
        where, text = "<xml text>", source
        default_name = "unnamed"
    return _Reader(where, default_name).algo(_root(text, where))


def _started(parser: ET.XMLPullParser[ET.Element]) -> Iterator[ET.Element]:
    """The elements whose start tag ``parser`` has read since last asked (it reports
    ``"start"`` events only, each an ``(event, element)`` pair)."""
    for event in parser.read_events():
        yield cast("tuple[str, ET.Element]", event)[1]


def _elements(text: str, where: str) -> Iterator[ET.Element]:
    """The elements of XML ``text``, each as soon as its start tag is read."""
    parser: ET.XMLPullParser[ET.Element] = ET.XMLPullParser(events=("start",))
    try:
        for at in range(0, len(text), _FEED):
            parser.feed(text[at : at + _FEED])
            yield from _started(parser)
        parser.close()
        yield from _started(parser)
    except ET.ParseError as exc:
        raise PlanError(f"{where}: malformed XML: {exc}") from None


def _root(text: str, where: str) -> ET.Element:
    """The root element of XML ``text``; no more than :data:`MAX_ELEMENTS` are built."""
    if len(text) > MAX_PLAN_BYTES:
        raise PlanError(
            f"{where}: too large for a plan: {len(text)} characters, the limit is {MAX_PLAN_BYTES}"
        )
    root: ET.Element | None = None
    for count, el in enumerate(_elements(text, where), 1):
        if count > MAX_ELEMENTS:
            raise PlanError(f"{where}: more than {MAX_ELEMENTS} elements, the limit for a plan")
        if count == 1:
            root = el
    assert root is not None, "the parser reports a document without elements as malformed"
    return root


class _Reader:
    def __init__(self, where: str, default_name: str) -> None:
        self.where = where
        self.default_name = default_name
        self.absent: set[str] = set()  # "tag.attribute" read as its default

    def fail(self, element: str, message: str) -> PlanError:
        return PlanError(f"{self.where}: {element}: {message}")

    def int_attr(
        self,
        el: ET.Element,
        element: str,
        name: str,
        default: int | None = None,
        bounds: tuple[int, int] = INT32,
    ) -> int:
        """A decimal integer attribute within ``bounds`` (both included)."""
        raw = el.get(name)
        if raw is None:
            if default is None:
                raise self.fail(element, f"missing required attribute '{name}'")
            self.absent.add(f"{el.tag}.{name}")
            return default
        if not _INTEGER.fullmatch(raw):
            raise self.fail(element, f"attribute '{name}' must be an integer, got {_show(raw)}")
        lo, hi = bounds
        long = len(raw.strip().lstrip("+-")) > len(str(INT64[1]))  # past every bound
        value = int(raw) if not long else lo - 1 if raw.strip().startswith("-") else hi + 1
        if value > hi:
            raise self.fail(element, f"attribute '{name}' is {_show(raw)}, over the limit of {hi}")
        if value < lo:
            raise self.fail(element, f"attribute '{name}' is {_show(raw)}, under the limit of {lo}")
        return value

    def str_attr(self, el: ET.Element, element: str, name: str, default: str | None = None) -> str:
        raw = el.get(name)
        if raw is None:
            if default is None:
                raise self.fail(element, f"missing required attribute '{name}'")
            self.absent.add(f"{el.tag}.{name}")
            return default
        return raw

    def children(self, el: ET.Element, element: str, tag: str) -> list[ET.Element]:
        for child in el:
            if child.tag != tag:
                raise self.fail(
                    element,
                    f"unexpected element <{child.tag}> (expected <{tag}>; "
                    "only the MSCCL 'old format' is read)",
                )
        return list(el)

    def algo(self, root: ET.Element) -> Plan:
        el = "algo"
        if root.tag != "algo":
            raise self.fail(el, f"root element is <{root.tag}>, expected <algo>")
        coll_name = self.str_attr(root, el, "coll")
        try:
            coll = canonical_kind(coll_name)
        except CollectiveError as exc:
            raise self.fail(el, f"attribute 'coll': {exc}") from None
        inplace = self.int_attr(root, el, "inplace") != 0
        ngpus = self.int_attr(root, el, "ngpus", bounds=(INT32[0], MAX_GPUS))
        per_loop = self.int_attr(root, el, "nchunksperloop", bounds=(INT32[0], MAX_CHUNKS))
        if ngpus * per_loop > MAX_TOTAL_CHUNKS:
            raise self.fail(
                el,
                f"ngpus x nchunksperloop = {ngpus * per_loop} chunks, over "
                f"the limit of {MAX_TOTAL_CHUNKS}",
            )
        rank = 0
        if coll in ROOTED_KINDS:
            rank = self.int_attr(root, el, "root", 0, (0, max(0, ngpus - 1)))
        gpus = [self.gpu(g) for g in self.children(root, el, "gpu")]
        reducing = coll in ("reducescatter", "allreduce", "reduce")
        chans = [tb.chan for g in gpus for tb in g.tbs]
        return Plan(
            name=self.str_attr(root, el, "name", self.default_name),
            coll=coll,
            ngpus=ngpus,
            nchunksperloop=per_loop,
            nchannels=self.int_attr(root, el, "nchannels", 1 + max(chans, default=0)),
            proto=self.str_attr(root, el, "proto", "Simple"),
            inplace=inplace,
            outofplace=self.int_attr(root, el, "outofplace", int(not inplace)) != 0,
            min_bytes=self.int_attr(root, el, "minBytes", 0, INT64),
            max_bytes=self.int_attr(root, el, "maxBytes", 0, INT64),
            redop=self.str_attr(root, el, "redop", "sum" if reducing else "nop"),
            gpus=gpus,
            source=XmlSource(coll_name, frozenset(self.absent)),
            root=rank,
        )

    def gpu(self, el_: ET.Element) -> GpuPlan:
        gid = self.int_attr(el_, "gpu", "id")
        el = f"gpu {gid}"
        tbs = [self.tb(t, el) for t in self.children(el_, el, "tb")]
        chunks = (INT32[0], MAX_CHUNKS)
        return GpuPlan(
            id=gid,
            i_chunks=self.int_attr(el_, el, "i_chunks", bounds=chunks),
            o_chunks=self.int_attr(el_, el, "o_chunks", bounds=chunks),
            s_chunks=self.int_attr(el_, el, "s_chunks", 0, chunks),
            tbs=tbs,
        )

    def tb(self, el_: ET.Element, parent: str) -> Threadblock:
        tid = self.int_attr(el_, f"{parent} tb", "id")
        el = f"{parent} tb {tid}"
        steps = [self.step(s, el, i) for i, s in enumerate(self.children(el_, el, "step"))]
        return Threadblock(
            id=tid,
            send=self.int_attr(el_, el, "send"),
            recv=self.int_attr(el_, el, "recv"),
            chan=self.int_attr(el_, el, "chan", 0),
            steps=steps,
        )

    def step(self, el_: ET.Element, parent: str, index: int) -> Step:
        s = self.int_attr(el_, f"{parent} step #{index}", "s")
        el = f"{parent} step {s}"
        srcbuf, srcoff = self.operand(el_, el, "src")
        dstbuf, dstoff = self.operand(el_, el, "dst")
        return Step(
            s=s,
            type=self.str_attr(el_, el, "type"),
            srcbuf=srcbuf,
            srcoff=srcoff,
            dstbuf=dstbuf,
            dstoff=dstoff,
            cnt=self.int_attr(el_, el, "cnt", 1, (INT32[0], MAX_CHUNKS)),
            depid=self.int_attr(el_, el, "depid", -1),
            deps=self.int_attr(el_, el, "deps", -1),
            hasdep=self.int_attr(el_, el, "hasdep", 0),
        )

    def operand(self, el_: ET.Element, el: str, which: str) -> tuple[str | None, int]:
        buf = el_.get(f"{which}buf")
        if buf is None:
            self.absent.add(f"step.{which}buf")
        off = self.int_attr(el_, el, f"{which}off", -1)
        if buf is None or off == -1:
            return None, off
        if buf not in BUFFERS:
            raise self.fail(el, f"attribute '{which}buf' must be one of i, o, s, got {buf!r}")
        return buf, off


def _show(raw: str, limit: int = 24) -> str:
    """An attribute's text for a message: quoted, escaped, at most ``limit`` characters."""
    return repr(raw if len(raw) <= limit else raw[:limit] + "...")

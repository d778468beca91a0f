"""Which plan runs a collective: the user's plan directory, else the group's own plan library.

**Plan directory** (``$TACCL_PLAN_DIR`` or ``plan_dir=``): every ``*.xml`` is verified when
loaded (an invalid one is refused with the verifier's reason). A plan there serves a call when
its collective, root and rank count match, the call's buffer size (the larger of input and
output, in bytes) lies in its ``[minBytes, maxBytes]`` range (0 = unbounded) and the buffer
divides into its chunks (AllReduce, Broadcast and Reduce buffers are padded instead); among
several, the narrowest range wins, then the file name.

**Plan library** (everything else): made for the group's cluster (:func:`resolve_topology`:
``topology=`` or ``$TACCL_TOPOLOGY``, a built-in name such as ``dgx1``, ``ndv2:2`` = 2 nodes,
or a YAML path; else ``nvidia-smi topo -m`` on a GPU host; else a model of the local host,
its ranks behind one switch with the CPU transport's α and bandwidth, :data:`HOST_ALPHA`
and :data:`HOST_BANDWIDTH`) and rank count. For each collective (the rooted ones per root)
every method's candidate is built once (:func:`taccl_py.build.candidates.build_candidates`),
timed in the simulator at every power of two from 1K to 1G, and each size range is served by
the fastest candidate there, plus the fastest one-chunk-per-block candidate for buffers
that do not divide into the first one's chunks, and for AllReduce, Broadcast and Reduce the
fastest in-place plan (each candidate's algorithm also lowered in place) for in-place calls
(torch's all_reduce, broadcast and reduce are; an in-place plan copies nothing). On the
host model only the Simple protocol is timed (the CPU executor runs every protocol alike):
its α makes direct plans serve small buffers, its bandwidth the ring (or an equally fast
milp plan) the large ones. The tables and their verified plans are
cached under ``$TACCL_CACHE_DIR`` (default ``~/.cache/taccl_py``) in a directory keyed by
the topology's content, the rank count, the package version and its source, so later
processes load them (checking each file's hash and verifying each plan; a damaged entry is
rebuilt). One process builds while the others wait for it (a file lock, within the group's
timeout); progress goes to stderr.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import taccl_py

from ..collectives import ALLREDUCE, BROADCAST, KINDS, REDUCE, ROOTED_KINDS, Collective
from ..errors import TacclError, TopologyError
from ..plan.model import Plan
from ..plan.verify import verify
from ..plan.xml import parse_plan, plan_to_xml
from ..topology.model import FULL_BISECTION, Switch, Topology
from ..util.fileio import atomic_write_text
from ..util.units import format_size

log = logging.getLogger("taccl_py.torch")
PLAN_DIR_ENV = "TACCL_PLAN_DIR"
CACHE_DIR_ENV = "TACCL_CACHE_DIR"
#: the cluster: a built-in name (``name:nodes`` for several nodes) or a topology YAML path
TOPOLOGY_ENV = "TACCL_TOPOLOGY"
#: comma-separated methods the library tries (default: every method)
METHODS_ENV = "TACCL_METHODS"
#: the sizes the library is timed at (bytes, nccl-tests sizes)
SPAN = (1 << 10, 1 << 30)
#: seconds milp may spend per solve while a library is built
TIME_LIMIT = 60.0
#: kinds whose whole buffer is cut into chunks: padded to whole chunks instead of a second plan
PADDED = (ALLREDUCE, BROADCAST, REDUCE)
#: seconds between progress lines while one collective's plans are built
PROGRESS_EVERY = 5.0
#: bumped when the cache layout changes
CACHE_FORMAT = 2
#: the host model's α of one message (seconds) and bandwidth of each rank's port (bytes/s):
#: the CPU transport's, Gloo send/recv over loopback between 4 processes
#: (``torch.set_num_threads(1)``) on a 2-core host, as in ``benchmarks/torch_backend.py``:
#: one way, a 4 B-16 KB message took 90-215 µs (ping-pong between two ranks; "a message
#: costs ~0.25 ms to complete" in the executor's own measurements), and with every rank
#: sending 16-64 MB to the next at once each rank moved 0.8-1.4 GB/s
HOST_ALPHA = 200e-6
HOST_BANDWIDTH = 1e9


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(os.environ.get(CACHE_DIR_ENV) or Path(base) / "taccl_py")


def host_topology(nranks: int) -> Topology:
    """The model of one host: ``nranks`` ranks behind one switch.

    >>> host_topology(4).label, host_topology(4).num_ranks
    ('host4', 4)
    """
    ranks = tuple(range(nranks))
    switch = Switch("host", 0, ranks, HOST_BANDWIDTH, HOST_ALPHA)
    return Topology(f"host{nranks}", nranks, 1, (), (switch,), (), FULL_BISECTION)


def resolve_topology(spec: str | Topology | None, nranks: int, gpu: bool | None = None) -> Topology:
    """The cluster of a group of ``nranks`` ranks: ``spec`` (else ``$TACCL_TOPOLOGY``) as a
    built-in name, ``name:nodes`` or a YAML path; else, on a GPU host (``gpu``; default:
    whether torch sees CUDA and ``nvidia-smi`` runs), the import of ``nvidia-smi topo -m``
    over ``nranks / GPUs`` nodes; else :func:`host_topology`.

    >>> resolve_topology("dgx1", 8).label
    'dgx1'
    >>> resolve_topology("dgx1", 4)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    taccl_py.errors.TopologyError: topology dgx1 (TACCL_TOPOLOGY / topology=) has 8 ranks, ...
    """
    if isinstance(spec, Topology):
        topo = spec
    else:
        text = spec if spec is not None else os.environ.get(TOPOLOGY_ENV) or None
        if text is None:
            found = _gpu_topology(nranks) if gpu or gpu is None and _gpu_host() else None
            return found or host_topology(nranks)
        topo = _named_topology(text)
    if topo.num_ranks != nranks:
        raise TopologyError(
            f"topology {topo.label} ({TOPOLOGY_ENV} / topology=) has {topo.num_ranks} "
            f"ranks, the group has {nranks}"
        )
    return topo


def _named_topology(text: str) -> Topology:
    from ..topology.loader import load_topology

    name, nodes = text, 1
    head, sep, tail = text.rpartition(":")
    if sep and tail.isdigit() and not Path(text).exists():
        name, nodes = head, int(tail)
        if nodes < 1:
            raise TopologyError(f"{TOPOLOGY_ENV}={text!r}: the node count must be at least 1")
    try:
        return load_topology(name, nodes)
    except OSError as exc:
        raise TopologyError(f"{TOPOLOGY_ENV}={text!r}: {exc.strerror or exc}") from None


def _gpu_host() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available()) and shutil.which("nvidia-smi") is not None
    except Exception:  # noqa: BLE001 - no usable CUDA: the host model
        return False


def _gpu_topology(nranks: int) -> Topology | None:
    """``nvidia-smi topo -m`` of this host over ``nranks / GPUs`` nodes (None if unusable)."""
    from ..topology.nvsmi import import_nvidia_smi

    try:
        out = subprocess.run(
            ["nvidia-smi", "topo", "-m"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
        _, node = import_nvidia_smi(out, "nvidia-smi-topo.txt", name="local")
    except (OSError, subprocess.SubprocessError, TacclError) as exc:
        log.info("nvidia-smi topo -m is not usable (%s): the host model is used", exc)
        return None
    if nranks % node.gpus_per_node:
        log.info(
            "%d ranks are not whole nodes of %d GPUs: the host model is used",
            nranks,
            node.gpus_per_node,
        )
        return None
    return dataclasses.replace(node, nodes=nranks // node.gpus_per_node)


@dataclass(frozen=True)
class Range:
    """Buffers of ``lo <= bytes < hi`` (``hi`` 0: no bound) run ``plan``, or ``whole``
    (one chunk per block) when they do not divide into ``plan``'s chunks, or ``inplace``
    (the fastest in-place plan; None for kinds without one) when the call is in place."""

    lo: int
    hi: int
    plan: Plan
    whole: Plan
    inplace: Plan | None = None

    def holds(self, nbytes: int) -> bool:
        return self.lo <= nbytes and (not self.hi or nbytes < self.hi)

    @property
    def label(self) -> str:
        return f"{format_size(self.lo)}-{format_size(self.hi) if self.hi else 'inf'}"


@dataclass
class Table:
    """One collective's size ranges, or why it has none (``error``)."""

    label: str
    ranges: list[Range]
    where: Path
    error: str = ""


#: tables loaded in this process, by (library directory, label); a lock per key
_TABLES: dict[tuple[str, str], Table] = {}
_KEY_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_GUARD = threading.Lock()


class PlanLibrary:
    """The plans of one group: ``plan_dir`` (default ``$TACCL_PLAN_DIR``) first, then the
    library built for ``topology`` (see :func:`resolve_topology`) and ``nranks`` ranks,
    cached under ``cache_dir``. With ``nranks`` None only the plan directory serves.

    >>> lib = PlanLibrary(None, "/tmp/taccl-doc-cache", nranks=2, methods=("ring",))
    ... # doctest: +SKIP
    >>> lib.choose("allreduce", 2, 4096, 1024).name  # doctest: +SKIP
    'host2-allreduce-ring-Simple'
    """

    def __init__(
        self,
        plan_dir: str | Path | None = None,
        cache_dir: str | Path | None = None,
        *,
        nranks: int | None = None,
        topology: str | Topology | None = None,
        methods: tuple[str, ...] | None = None,
        timeout: float = 1800.0,
        quiet: bool = False,
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
            self._origin = {
                id(plan): f"plan directory, {self.plan_dir / name}" for name, plan in self.plans
            }
        self.nranks, self.timeout = nranks, timeout
        self.topology: Topology | None = None
        self.methods = methods if methods is not None else _env_methods()
        if nranks == 1:  # one rank moves nothing: the ring is enough
            self.methods = ("ring",)
        self.directory: Path | None = None
        self.host = False  # the host model: plans run on CPU tensors, protocols do not apply
        if nranks is not None:
            self.topology = resolve_topology(topology, nranks)
            self.host = self.topology == host_topology(nranks)
            key = _key(self.topology, nranks, self.methods)
            self.directory = self.cache_dir / f"{_safe(self.topology.label)}-{nranks}r-{key}"
        self._announced: set[tuple[int, str]] = set()
        self._seen: set[tuple[int, int]] = set()  # (plan, range) of the library announced
        self._said: set[str] = set()
        self.quiet = quiet  # ranks other than 0 do not log which plan serves a call

    # -- choosing ----------------------------------------------------------------------------
    def prepare(self, kinds: tuple[str, ...] = KINDS) -> None:
        """Build or load the tables of ``kinds`` now (group creation does, for the four
        unrooted collectives)."""
        for kind in kinds:
            self.table(kind, 0)

    def choose(
        self,
        kind: str,
        nranks: int,
        nbytes: int,
        elems: int,
        inplace: bool = False,
        root: int = 0,
    ) -> Plan:
        """The plan for a ``kind`` collective (rooted at ``root``) on ``nranks`` ranks whose
        buffer has ``nbytes`` bytes in ``elems`` elements; ``inplace`` (the call's input is
        its output: AllReduce, Broadcast, Reduce) takes an in-place plan: the plan
        directory's if it has one, the library's own in-place variant otherwise. Every rank
        of a call must pass the same arguments (a rooted collective's non-root too)."""
        plan, where = self._from_directory(kind, nranks, nbytes, elems, inplace, root)
        if plan is None:
            table = self.table(kind, root)
            if table.error:
                raise TacclError(f"no {table.label} plan on {nranks} ranks: {table.error}")
            rng = next((r for r in table.ranges if r.holds(nbytes)), table.ranges[-1])
            plan = rng.plan
            if inplace and rng.inplace is not None:
                plan = rng.inplace
            elif elems % plan.nchunksperloop and kind not in PADDED:
                plan = rng.whole
            if self.quiet or (id(plan), id(rng)) in self._seen:
                return plan  # said already: no message to format on every call
            self._seen.add((id(plan), id(rng)))
            where = f"plan library {table.where}, sizes {rng.label}"
        self.announce(plan, f"{_label(kind, root)} of {nbytes} B on {nranks} ranks", where)
        return plan

    def announce(self, plan: Plan, what: str, where: str) -> None:
        """Log (``TACCL_LOG=1``) which plan serves ``what``, once per plan and size class."""
        key = (id(plan), where)
        if key not in self._announced and not self.quiet:
            self._announced.add(key)
            log.info("%s: plan %s (%s)", what, plan.name, where)

    def announce_text(self, text: str) -> None:
        """Log (``TACCL_LOG=1``) ``text`` once."""
        if text not in self._said and not self.quiet:
            self._said.add(text)
            log.info("%s", text)

    def _from_directory(self, kind, nranks, nbytes, elems, inplace, root):
        fits = []
        for name, plan in self.plans:
            if plan.coll != kind or plan.ngpus != nranks:
                continue
            if kind in ROOTED_KINDS and plan.root != root:
                continue
            if elems % plan.nchunksperloop and kind not in PADDED:
                continue
            if nbytes < plan.min_bytes or (plan.max_bytes and nbytes > plan.max_bytes):
                continue
            width = (plan.max_bytes or 1 << 62) - plan.min_bytes
            fits.append((plan.inplace != inplace, width, name, plan))
        if not fits:
            return None, ""
        plan = min(fits, key=lambda f: f[:3])[3]
        return plan, self._origin[id(plan)]

    def unavailable(self, kind: str, root: int = 0) -> str:
        """Why the library has no ``kind`` plans for ``root`` ('' when it has them)."""
        if any(p.coll == kind and p.root == root for _, p in self.plans):
            return ""
        return self.table(kind, root).error

    # -- the tables --------------------------------------------------------------------------
    def table(self, kind: str, root: int = 0) -> Table:
        """The size table of ``kind`` (rooted at ``root``): from memory, the cache, or built
        here while other processes wait."""
        if self.directory is None or self.topology is None or self.nranks is None:
            raise TacclError(f"no plan for {kind}: this library serves its plan directory only")
        label = _label(kind, root)
        key = (str(self.directory), label)
        with _GUARD:
            lock = _KEY_LOCKS.setdefault(key, threading.Lock())
        with lock:
            if key not in _TABLES:
                _TABLES[key] = self._load_or_build(kind, root, label)
            return _TABLES[key]

    def _load_or_build(self, kind: str, root: int, label: str) -> Table:
        assert self.directory is not None
        index = self.directory / f"{label}.json"
        table = _load(index, label)
        if table is not None:
            return table
        self.directory.mkdir(parents=True, exist_ok=True)
        with _file_lock(self.directory / f"{label}.lock", self.timeout, label):
            table = _load(index, label)  # built meanwhile by the process that held the lock
            if table is None:
                table = self._build(kind, root, label)
                _store(table, index)
        return table

    def _build(self, kind: str, root: int, label: str) -> Table:
        from ..build.candidates import CandidateOptions, build_candidates
        from ..build.library import span_sizes

        assert self.topology is not None and self.nranks is not None and self.directory
        topo, lo, hi = self.topology, *SPAN
        start = time.monotonic()
        say(
            f"building {label} plans for {topo.label} ({self.nranks} ranks, "
            f"{format_size(lo)}-{format_size(hi)}) into {self.directory}"
        )

        shown = [start]

        def progress(stage, elapsed, incumbent=None, gap=None) -> None:
            if time.monotonic() - shown[0] >= PROGRESS_EVERY:  # a line every few seconds
                shown[0] = time.monotonic()
                say(f"  {label}: {stage} ({time.monotonic() - start:.0f} s)")

        coll = Collective(kind, self.nranks, 1, False, root)
        candidates, dropped = [], []
        for method in self.methods:  # one at a time: a method that fails loses only itself
            try:
                found = build_candidates(
                    topo,
                    coll,
                    CandidateOptions(
                        sizes=(lo, int((lo * hi) ** 0.5), hi),
                        methods=(method,),
                        time_limit=TIME_LIMIT,
                        progress=progress,
                    ),
                )
            except Exception as exc:  # noqa: BLE001 - a method's failure, even a bug, drops it
                dropped.append(f"{method}: {exc or type(exc).__name__}")
                continue
            candidates += found.candidates
            dropped += [f"{m}: {w}" for m, w in found.dropped]
        if not candidates:
            why = "; ".join(dropped) or "no method applies"
            say(f"  {label}: no plan ({why})")
            return Table(label, [], self.directory, why)
        from ..build.candidates import PROTOCOLS

        # the CPU executor has no protocols: on the host model only Simple's timing is real
        protocols = ("Simple",) if self.host else PROTOCOLS
        options = [(c, p) for c in candidates for p in protocols]
        whole = [(c, p) for c, p in options if c.plan.nchunksperloop == self.nranks]
        if not whole:  # every candidate cuts blocks: pad with the finest one instead
            whole = options
        in_place = [(c, p) for c in _inplace(candidates, topo, kind) for p in protocols]
        made: dict[tuple[int, str], Plan] = {}

        def plan_of(choice) -> Plan:
            c, p = choice
            if (id(c), p) not in made:
                made[(id(c), p)] = c.with_proto(p)
            return made[(id(c), p)]

        ranges: list[Range] = []
        for size in span_sizes(lo, hi):

            def fastest(among, size=size):
                return min(among, key=lambda o: (o[0].time(topo, size, o[1]), o[0].label, o[1]))

            best, alt = plan_of(fastest(options)), plan_of(fastest(whole))
            ip = plan_of(fastest(in_place)) if in_place else None
            last = ranges[-1] if ranges else None
            if last is not None and (last.plan, last.whole, last.inplace) == (best, alt, ip):
                continue
            if last is not None:
                ranges[-1] = dataclasses.replace(last, hi=size)
            ranges.append(Range(0 if last is None else size, 0, best, alt, ip))
        say(
            f"  {label}: {len(ranges)} size ranges "
            f"({', '.join(f'{r.label} {r.plan.name}' for r in ranges)}) "
            f"in {time.monotonic() - start:.1f} s"
        )
        return Table(label, ranges, self.directory)


def _inplace(candidates: list, topo: Topology, kind: str) -> list:
    """In-place twins of ``candidates`` (their algorithms lowered in place, as the library
    lowers every candidate, and verified) for the kinds whose calls are in place
    (:data:`PADDED`: AllReduce, Broadcast, Reduce); a candidate that does not lower in
    place has no twin."""
    from ..lowering.lower import LowerOptions, lower
    from ..plan.runtimes import check_runtime

    if kind not in PADDED:
        return []
    twins = []
    for c in candidates:
        options = LowerOptions(name=f"{c.plan.name}-inplace", inplace=True)
        try:
            plan = lower(c.algorithm, topo, options)
            if check_runtime(plan, selection=False):
                continue
            verify(plan)
        except TacclError:
            continue
        twins.append(dataclasses.replace(c, label=f"{c.label}-inplace", plan=plan))
    return twins


def say(message: str) -> None:
    """A progress line on stderr."""
    print(f"taccl: {message}", file=sys.stderr, flush=True)


def _label(kind: str, root: int) -> str:
    return f"{kind}-root{root}" if kind in ROOTED_KINDS else kind


def _safe(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in text)


def _env_methods() -> tuple[str, ...]:
    from ..build.candidates import ALL_METHODS

    text = os.environ.get(METHODS_ENV, "")
    methods = tuple(m.strip() for m in text.split(",") if m.strip())
    bad = [m for m in methods if m not in ALL_METHODS]
    if bad:
        raise TacclError(
            f"{METHODS_ENV}={text!r}: unknown method {bad[0]!r} "
            f"(choose from {', '.join(ALL_METHODS)})"
        )
    return methods or ALL_METHODS


_SOURCE: list[str] = []


def _source_hash() -> str:
    """A hash of the package's source files (a changed synthesizer makes new plans)."""
    if not _SOURCE:
        h = hashlib.sha256()
        root = Path(taccl_py.__file__).parent
        for path in sorted(root.rglob("*.py")):
            h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
        _SOURCE.append(h.hexdigest())
    return _SOURCE[0]


def _key(topology: Topology, nranks: int, methods: tuple[str, ...]) -> str:
    """The cache key: topology content, rank count, methods, span, package version and source."""
    content = dataclasses.replace(topology, description="", source="")
    version = (CACHE_FORMAT, taccl_py.__version__, _source_hash())
    text = repr((version, content, nranks, methods, SPAN, TIME_LIMIT))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _file_lock(path: Path, timeout: float, label: str) -> Iterator[None]:
    """Hold an exclusive lock on ``path``, waiting at most ``timeout`` seconds for it."""
    deadline = time.monotonic() + timeout
    with open(path, "a") as fh:
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
            if time.monotonic() > deadline:
                raise TacclError(
                    f"waited {timeout:.0f} s (the group's timeout) for another process "
                    f"building the {label} plans (lock {path})"
                )
            time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _store(table: Table, index: Path) -> None:
    """Write ``table``'s plans (named by their hash), then its index, each atomically."""
    files: dict[int, str] = {}
    hashes: dict[str, str] = {}
    for rng in table.ranges:
        for plan in (rng.plan, rng.whole, rng.inplace):
            if plan is not None and id(plan) not in files:
                text = plan_to_xml(plan)
                digest = hashlib.sha256(text.encode()).hexdigest()
                name = f"{table.label}-{digest[:16]}.xml"
                atomic_write_text(index.parent / name, text)
                files[id(plan)], hashes[name] = name, digest
    doc = {
        "format": CACHE_FORMAT,
        "label": table.label,
        "error": table.error,
        "ranges": [
            {
                "lo": r.lo,
                "hi": r.hi,
                "plan": files[id(r.plan)],
                "whole": files[id(r.whole)],
                "inplace": files[id(r.inplace)] if r.inplace is not None else None,
            }
            for r in table.ranges
        ],
        "sha256": hashes,
    }
    atomic_write_text(index, json.dumps(doc, indent=1, sort_keys=True) + "\n")


def _load(index: Path, label: str) -> Table | None:
    """The table cached at ``index``, its files' hashes checked and plans verified; None if it
    is missing or damaged (then it is rebuilt)."""
    try:
        raw = index.read_text()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(raw)
        if doc["format"] != CACHE_FORMAT or doc["label"] != label:
            return None
        plans: dict[str, Plan] = {}
        for name, digest in doc["sha256"].items():
            path = index.parent / name
            text = path.read_bytes()
            if hashlib.sha256(text).hexdigest() != digest:
                raise TacclError(f"{path}: content does not match its hash")
            plans[name] = load_verified(path)
        ranges = [
            Range(
                int(r["lo"]),
                int(r["hi"]),
                plans[r["plan"]],
                plans[r["whole"]],
                plans[r["inplace"]] if r["inplace"] is not None else None,
            )
            for r in doc["ranges"]
        ]
        if not ranges and not doc["error"]:
            return None
        return Table(label, ranges, index.parent, str(doc["error"]))
    except (OSError, ValueError, KeyError, TypeError, TacclError) as exc:
        say(f"cached {label} plans in {index.parent} are damaged ({exc}): rebuilding")
        return None


def load_verified(path: Path) -> Plan:
    """The plan in ``path``, verified; an invalid one raises the verifier's error, prefixed
    with the path."""
    plan = parse_plan(path)
    try:
        verify(plan)
    except TacclError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    return plan

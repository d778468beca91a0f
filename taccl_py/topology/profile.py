"""``taccl profile``: measure α and bandwidth of every rank pair, write a topology YAML.

Run under ``mpiexec -n N`` (mpi4py) or ``torchrun`` (torch.distributed: gloo on CPU,
NCCL with ``--device cuda``). Pairs are measured one at a time while every other rank
waits at a barrier: for each message size a ping-pong of ``warmup + iters`` round trips,
the median round trip / 2 is the one-way time. A least-squares fit of
``time = α + bytes / B`` (weighted by 1/time, so small and large messages count alike;
refitted with α = 0 where noise makes α or B negative) gives each pair's α and
bandwidth; R² is that of the unweighted times.

Ranks on one host form one topology node (or ``--gpus-per-node G``: ranks ``k*G ..
k*G+G-1`` form node k). The written file describes one node, in local ids: one ``measured``
link per local pair (the median over nodes); with several nodes, one NIC shared by all of
a node's ranks carries the median of the inter-node pairs. A ``measured`` section records
the date, launcher, sizes and every pair's fit, in global ranks.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import combinations
from pathlib import Path
from statistics import median

import numpy as np
import yaml

from ..errors import TacclError
from ..util.units import format_size, host_memory

NEED_RANKS = "taccl profile needs >= 2 ranks: run it under mpiexec -n N or torchrun"
_TORCH_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR")
_MPI_ENV = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MV2_COMM_WORLD_SIZE")
_GB = 1e9
_US = 1e6


@dataclass(frozen=True)
class Fit:
    """A fitted α-β model: ``time = alpha + bytes / bandwidth`` (seconds, bytes/s)."""

    alpha: float
    bandwidth: float
    r2: float


@dataclass(frozen=True)
class PairResult:
    """One measured pair (global ranks a < b): one-way seconds per size, and its fit."""

    a: int
    b: int
    times: tuple[float, ...]
    fit: Fit


def fit_alpha_bandwidth(sizes, times) -> Fit:
    """Least-squares α and bandwidth of one-way ``times`` (s) at ``sizes`` (bytes)."""
    x = np.asarray(sizes, dtype=float)
    t = np.asarray(times, dtype=float)
    if len(set(x.tolist())) < 2:
        raise TacclError("fitting needs at least two different message sizes")
    if not np.all(np.isfinite(t)) or np.any(t <= 0):
        raise TacclError("fitting needs positive, finite times")
    w = 1 / t
    (alpha, beta), *_ = np.linalg.lstsq(np.column_stack([w, x * w]), t * w, rcond=None)
    if alpha < 0 or beta <= 0:  # noise: the best fit with α = 0 (its β is always > 0)
        alpha, beta = 0.0, float(np.sum(w * w * x * t) / np.sum(w * w * x * x))
    ss_res = float(np.sum((t - alpha - beta * x) ** 2))
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    return Fit(float(alpha), float(1 / beta), 1.0 - ss_res / ss_tot if ss_tot else 1.0)


# -- transports ----------------------------------------------------------------------
class _MpiComm:
    """mpi4py on a private duplicate of COMM_WORLD."""

    launcher, transport = "mpiexec", "mpi"

    def __init__(self) -> None:
        try:
            from mpi4py import MPI
        except ImportError:
            raise TacclError(
                "taccl profile under mpiexec needs mpi4py (pip install mpi4py mpich)"
            ) from None
        self._byte = MPI.BYTE
        self.comm = MPI.COMM_WORLD.Dup()
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()

    def barrier(self) -> None:
        """A barrier that sleeps instead of spinning, so waiting ranks leave the CPU free."""
        req = self.comm.Ibarrier()
        while not req.Test():
            time.sleep(1e-3)

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def gather(self, obj):
        return self.comm.gather(obj, root=0)

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def buffer(self, nbytes: int):
        return np.zeros(nbytes, dtype=np.uint8)

    def send(self, buf, nbytes: int, peer: int) -> None:
        self.comm.Send([buf, nbytes, self._byte], dest=peer, tag=17)

    def recv(self, buf, nbytes: int, peer: int) -> None:
        self.comm.Recv([buf, nbytes, self._byte], source=peer, tag=17)

    def sync(self) -> None:
        """Nothing to wait for: MPI's Send/Recv are complete on return."""

    def close(self) -> None:
        self.comm.Free()


class _TorchComm:
    """torch.distributed from torchrun's environment: gloo on CPU, NCCL on CUDA."""

    launcher = "torchrun"

    def __init__(self, device: str) -> None:
        try:
            import torch
            import torch.distributed as dist
        except ImportError:
            raise TacclError("taccl profile under torchrun needs torch") from None
        self.torch, self.dist = torch, dist
        self.device = torch.device("cpu")
        if device == "cuda":
            if not torch.cuda.is_available():
                raise TacclError("--device cuda: no CUDA device visible")
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        self.transport = "torch-nccl" if device == "cuda" else "torch-gloo"
        dist.init_process_group("nccl" if device == "cuda" else "gloo")
        self.rank, self.size = dist.get_rank(), dist.get_world_size()

    def barrier(self) -> None:
        self.dist.barrier()

    def bcast(self, obj):
        box = [obj]
        self.dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj):
        out = [None] * self.size if self.rank == 0 else None
        self.dist.gather_object(obj, out, dst=0)
        return out

    def allgather(self, obj):
        out = [None] * self.size
        self.dist.all_gather_object(out, obj)
        return out

    def buffer(self, nbytes: int):
        return self.torch.zeros(nbytes, dtype=self.torch.uint8, device=self.device)

    def send(self, buf, nbytes: int, peer: int) -> None:
        self.dist.send(buf[:nbytes], peer)

    def recv(self, buf, nbytes: int, peer: int) -> None:
        self.dist.recv(buf[:nbytes], peer)

    def sync(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def close(self) -> None:
        self.dist.destroy_process_group()


def detect_transport(env) -> str | None:
    """'torch' under torchrun, 'mpi' under an MPI launcher, else None."""
    if all(k in env for k in _TORCH_ENV):
        return "torch"
    if any(k in env for k in _MPI_ENV):
        return "mpi"
    return None


def open_comm(transport: str, device: str):
    """The communicator for ``transport`` (auto, mpi, torch); needs >= 2 ranks."""
    if transport == "auto":
        found = detect_transport(os.environ)
        if found is None:
            raise TacclError(NEED_RANKS)
        transport = found
    if transport == "mpi" and device == "cuda":
        raise TacclError("--device cuda needs torchrun (--transport torch)")
    if transport == "torch" and not all(k in os.environ for k in _TORCH_ENV):
        raise TacclError(NEED_RANKS)
    comm = _MpiComm() if transport == "mpi" else _TorchComm(device)
    if comm.size < 2:
        comm.close()
        raise TacclError(NEED_RANKS)
    return comm


# -- measurement ------------------------------------------------------------------------
def _pingpong(
    comm, buf, nbytes: int, peer: int, initiator: bool, iters: int, warmup: int
) -> float | None:
    """The median one-way time (initiator) of ``iters`` round trips of ``nbytes``."""
    rtts = []
    for k in range(warmup + iters):
        if initiator:
            t0 = time.perf_counter()
            comm.send(buf, nbytes, peer)
            comm.recv(buf, nbytes, peer)
            comm.sync()
            if k >= warmup:
                rtts.append(time.perf_counter() - t0)
        else:
            comm.recv(buf, nbytes, peer)
            comm.send(buf, nbytes, peer)
    comm.sync()
    return median(rtts) / 2 if initiator else None


def measure(comm, sizes: list[int], iters: int, warmup: int) -> list[PairResult] | None:
    """Ping-pong every pair in turn; rank 0 gets the fitted results, the others None."""
    buf = comm.buffer(max(sizes))
    mine = []
    for a, b in combinations(range(comm.size), 2):
        comm.barrier()
        if comm.rank in (a, b):
            peer = b if comm.rank == a else a
            times = [_pingpong(comm, buf, s, peer, comm.rank == a, iters, warmup) for s in sizes]
            if comm.rank == a:
                mine.append((a, b, tuple(times)))
    comm.barrier()
    gathered = comm.gather(mine)
    if comm.rank != 0:
        return None
    rows = sorted(r for part in gathered for r in part)
    return [PairResult(a, b, t, fit_alpha_bandwidth(sizes, t)) for a, b, t in rows]


# -- nodes and YAML -----------------------------------------------------------------------
def group_nodes(hosts: list[str], gpus_per_node: int | None) -> list[list[int]]:
    """Global ranks of each node: by host, or consecutive blocks of ``gpus_per_node``."""
    n = len(hosts)
    if gpus_per_node is not None:
        if n % gpus_per_node:
            raise TacclError(f"--gpus-per-node {gpus_per_node} does not divide the {n} ranks")
        return [list(range(k, k + gpus_per_node)) for k in range(0, n, gpus_per_node)]
    by_host: dict[str, list[int]] = {}
    for rank, host in enumerate(hosts):
        by_host.setdefault(host, []).append(rank)
    groups = list(by_host.values())
    if len({len(g) for g in groups}) > 1:
        counts = ", ".join(f"{h} {len(g)}" for h, g in by_host.items())
        raise TacclError(
            f"uneven ranks per host ({counts}); start as many on every host or give --gpus-per-node"
        )
    return groups


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def _numbers(fits: list[Fit]) -> dict:
    """Median bandwidth (GB/s) and α (µs) of ``fits``, as topology fields."""
    return {
        "bandwidth": _sig(median(f.bandwidth for f in fits) / _GB),
        "alpha": _sig(median(f.alpha for f in fits) * _US),
    }


def _split(results: list[PairResult], groups: list[list[int]]):
    """Fits per local pair (within a node) and the inter-node fits."""
    where = {r: (node, local) for node, g in enumerate(groups) for local, r in enumerate(g)}
    intra: dict[tuple[int, int], list[Fit]] = {}
    inter: list[PairResult] = []
    for res in results:
        (na, la), (nb, lb) = where[res.a], where[res.b]
        if na == nb:
            intra.setdefault((min(la, lb), max(la, lb)), []).append(res.fit)
        else:
            inter.append(res)
    return dict(sorted(intra.items())), inter, where


def measured_record(results: list[PairResult], meta: dict) -> dict:
    """The ``measured`` section: ``meta`` (date, launcher, ...) and every pair's fit."""
    fits = [
        {
            "pair": [r.a, r.b],
            "alpha": _sig(r.fit.alpha * _US),
            "bandwidth": _sig(r.fit.bandwidth / _GB),
            "r2": _sig(r.fit.r2, 6),
        }
        for r in results
    ]
    return {**meta, "fits": fits}


def build_topology(results: list[PairResult], groups: list[list[int]], meta: dict) -> dict:
    """A new topology document of the measured numbers (see the module docstring)."""
    intra, inter, _ = _split(results, groups)
    hosts = ", ".join(meta.get("hosts", [])) or "?"
    doc: dict = {
        "description": f"measured by taccl profile on {hosts}: {meta.get('ranks')} ranks, "
        f"{meta.get('transport')} on {meta.get('device')}, {meta['date']}",
        "gpus_per_node": len(groups[0]),
        "links": [
            {"pairs": [[a, b]], **_numbers(fits), "kind": "measured"}
            for (a, b), fits in intra.items()
        ],
    }
    if not doc["links"]:
        del doc["links"]
    if len(groups) > 1:
        doc["nics"] = [{"name": "nic0", "gpus": "all", **_numbers([r.fit for r in inter])}]
        doc["network"] = "full-bisection"
    doc["measured"] = measured_record(results, meta)
    return doc


def _check_node_size(n: int, groups: list[list[int]], where: str) -> None:
    if n != len(groups[0]):
        raise TacclError(
            f"{where} has {n} GPUs per node but {len(groups[0])} ranks run per "
            f"node; give --gpus-per-node {n} or start {n} per node"
        )


def update_topology(
    doc: dict, results: list[PairResult], groups: list[list[int]], meta: dict
) -> tuple[dict, list[str]]:
    """``doc`` with the measured pairs' links, switches and NICs updated, and notes."""
    from .schema import expand_gpus

    n = int(doc["gpus_per_node"])
    _check_node_size(n, groups, "the topology")
    intra, inter, where = _split(results, groups)
    left = dict(intra)
    links = []
    for entry in doc.get("links", []):
        count = int(entry.get("count", 1))
        kept = [p for p in entry["pairs"] if (min(p), max(p)) not in intra]
        if kept:
            links.append({**entry, "pairs": kept})
        for p in entry["pairs"]:
            fits = intra.get((min(p), max(p)))
            if fits is not None:
                nums = _numbers(fits)
                nums["bandwidth"] = _sig(nums["bandwidth"] / count)  # per link of the bundle
                links.append({**entry, "pairs": [list(p)], **nums})
                left.pop((min(p), max(p)), None)
    if "links" in doc:
        doc["links"] = links
    for entry in doc.get("switches", []):
        gpus = set(expand_gpus(entry["gpus"], n))
        fits = [f for (a, b), fs in list(left.items()) if a in gpus and b in gpus for f in fs]
        if fits:
            entry.update(_numbers(fits))
            left = {p: fs for p, fs in left.items() if not (p[0] in gpus and p[1] in gpus)}
    notes = [
        f"pair {a}-{b} has no link or switch in the topology; its numbers are only in measured.fits"
        for a, b in left
    ]
    if inter:
        if doc.get("nics"):
            for entry in doc["nics"]:
                gpus = set(expand_gpus(entry["gpus"], n))
                fits = [r.fit for r in inter if where[r.a][1] in gpus or where[r.b][1] in gpus]
                if fits:
                    entry.update(_numbers(fits))
        else:
            notes.append(
                "the topology has no NICs; the inter-node numbers are only in measured.fits"
            )
    doc["measured"] = measured_record(results, meta)
    return doc, notes


class _Flow(dict):
    """A mapping written on one line (a link, switch, NIC or fit)."""


class _Dumper(yaml.SafeDumper):
    pass


_Dumper.add_representer(
    _Flow, lambda d, data: d.represent_mapping("tag:yaml.org,2002:map", data, flow_style=True)
)


def to_yaml(doc: dict) -> str:
    """``doc`` as YAML in the built-in files' style: one line per link, switch, NIC, fit."""

    def flow(items):
        return [_Flow(x) if isinstance(x, dict) else x for x in items]

    out = {k: flow(v) if k in ("links", "switches", "nics") else v for k, v in doc.items()}
    if "measured" in out:
        out["measured"] = {**out["measured"], "fits": flow(out["measured"].get("fits", []))}
    return yaml.dump(
        out,
        Dumper=_Dumper,
        sort_keys=False,
        default_flow_style=None,
        width=4096,
        allow_unicode=True,
    )


def format_table(results: list[PairResult]) -> str:
    """One line per pair: α (µs), bandwidth (GB/s), R²."""
    lines = [f"{'pair':>9} {'alpha(us)':>10} {'GB/s':>9} {'R2':>8}"]
    lines += [
        f"{f'{r.a}-{r.b}':>9} {r.fit.alpha * _US:>10.2f} {r.fit.bandwidth / _GB:>9.3f} "
        f"{r.fit.r2:>8.4f}"
        for r in results
    ]
    if any(r.fit.r2 < 0.9 for r in results):
        lines.append("R2 < 0.9: noisy timings; try more --iters or fewer ranks per core")
    return "\n".join(lines)


# -- the command ------------------------------------------------------------------------------
def _prepare(
    hosts, gpus_per_node, sizes, output: Path | None, update: Path | None
) -> tuple[list[list[int]], dict | None]:
    """Rank 0's checks before measuring: sizes, node groups, the --update document."""
    from ..util.fileio import check_outputs
    from .loader import load_document

    if len(sizes) < 2:
        raise TacclError("--sizes needs at least two sizes to fit alpha and bandwidth")
    need = 2 * max(sizes) * len(hosts)  # a send and a receive buffer on every rank
    if need > host_memory():
        raise TacclError(
            f"--sizes up to {format_size(max(sizes))}: buffers of "
            f"{format_size(need)} for {len(hosts)} ranks exceed this host's "
            f"{format_size(host_memory())} of memory"
        )
    groups = group_nodes(hosts, gpus_per_node)
    doc: dict | None = None
    if update is not None:
        doc = load_document(update)
        _check_node_size(int(doc["gpus_per_node"]), groups, str(update))
    check_outputs([output or update])
    return groups, doc


def profile_command(
    output: Path | None,
    update: Path | None,
    sizes: list[int],
    iters: int,
    warmup: int,
    transport: str,
    device: str,
    gpus_per_node: int | None,
) -> None:
    """``taccl profile``: measure, print the table on rank 0, write or update the YAML."""
    from ..util.fileio import atomic_write_text, display_path
    from .schema import check_document

    comm = open_comm(transport, device)
    hosts = comm.allgather(socket.gethostname())
    prepared: tuple[list[list[int]], dict | None] | None = None
    problem: str | None = None
    if comm.rank == 0:
        try:
            prepared = _prepare(hosts, gpus_per_node, sizes, output, update)
        except TacclError as exc:
            problem = str(exc)
    problem = comm.bcast(problem)
    if problem is not None:  # every rank leaves; rank 0 alone says why
        comm.close()
        if comm.rank == 0:
            raise TacclError(problem)
        raise SystemExit(2)
    results = measure(comm, sizes, iters, warmup)
    comm.close()
    if comm.rank != 0:
        return
    # rank 0 prepared (or raised above), and measure() gives rank 0 the results
    assert prepared is not None and results is not None
    groups, doc = prepared
    meta = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "launcher": comm.launcher,
        "transport": comm.transport,
        "device": device,
        "hosts": list(dict.fromkeys(hosts)),
        "ranks": comm.size,
        "sizes": list(sizes),
        "iters": iters,
    }
    summary = (
        f"taccl profile: {comm.size} ranks on {len(groups)} node(s) of "
        f"{len(groups[0])}, {comm.transport} on {device}, sizes "
        f"{','.join(map(format_size, sizes))}, {iters} iters\n{format_table(results)}"
    )
    target = output or update
    if target is None:
        print(summary)
        print("nothing written (give -o FILE or --update FILE)")
        return
    if doc is None:
        doc = build_topology(results, groups, meta)
        header = f"# written by taccl profile, {meta['date']}\n"
    else:
        doc, notes = update_topology(doc, results, groups, meta)
        header = ""
        for note in notes + [f"comments of {update} are not kept"]:
            print(f"note: {note}", file=sys.stderr)
    check_document(doc, str(target))
    atomic_write_text(target, header + to_yaml(doc))  # before the table: all or nothing
    print(summary)
    print(f"wrote {display_path(target)}", flush=True)

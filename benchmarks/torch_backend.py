"""The "taccl" torch backend vs Gloo on CPU: collectives per size, and a DDP training step.

4 spawned CPU processes (file-store rendezvous, ``torch.set_num_threads(1)``) each hold the
default group on backend "taccl" (plans from ``$TACCL_PLAN_DIR``, else the plan library it
builds and caches for the local host) and a Gloo group over the same ranks. For every
collective and size the two backends run interleaved, call by call (a Gloo barrier before
each call), so that load from elsewhere on the machine hits both alike; a call's time is the
slowest rank's, and the table gives the median over ``--iters`` calls after ``--warmup``
calls. Sizes are the larger buffer of a rank
(all_gather's output, reduce_scatter's input), float32.

The DDP row times one training step (forward, backward with DDP's gradient all_reduce
buckets, SGD step) of a small model: ``mlp`` (4 linear layers of ``--width``) or ``cnn``
(a ResNet-ish stack of 3x3 convolutions), again interleaved, median of ``--iters`` steps.

Usage:
  python benchmarks/torch_backend.py                          # every collective, 1K..64M, DDP
  python benchmarks/torch_backend.py --ops all_reduce --sizes 1M,4M,16M,64M --iters 20
  python benchmarks/torch_backend.py --ops '' --model cnn     # the DDP row only
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

from taccl_py.util.units import format_size, parse_size

OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "broadcast")
SIZES = "1K,16K,256K,1M,4M,16M,64M"


def _call(op: str, dist, n: int, world: int, group):
    """A zero-argument call of collective ``op`` on fresh float32 buffers of ``n`` elements."""
    import torch

    big, small = torch.zeros(n), torch.zeros(n // world)  # repeated sums stay finite
    calls = {
        "all_reduce": lambda: dist.all_reduce(big, group=group),
        "all_gather": lambda: dist.all_gather_into_tensor(big, small, group=group),
        "reduce_scatter": lambda: dist.reduce_scatter_tensor(small, big, group=group),
        "all_to_all": lambda: dist.all_to_all_single(torch.empty_like(big), big, group=group),
        "broadcast": lambda: dist.broadcast(big, 0, group=group),
    }
    return calls[op]


def _model(kind: str, width: int):
    import torch
    from torch import nn

    torch.manual_seed(0)
    if kind == "mlp":
        layers: list[nn.Module] = []
        for _ in range(4):
            layers += [nn.Linear(width, width), nn.ReLU()]
        return nn.Sequential(*layers), torch.randn(32, width)

    def block(c: int) -> nn.Module:
        return nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())

    c = max(8, width // 16)
    net = nn.Sequential(
        nn.Conv2d(3, c, 3, padding=1),
        *[block(c) for _ in range(6)],
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c, 10),
    )
    return net, torch.randn(8, 3, 32, 32)


def _rank(rank: int, world: int, init: str, args: argparse.Namespace, out: str) -> None:
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    import taccl_py.torch  # noqa: F401 - registers "taccl"

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    dist.init_process_group("taccl", init_method=init, rank=rank, world_size=world)
    gloo = dist.new_group(backend="gloo")
    groups = {"taccl": dist.group.WORLD, "gloo": gloo}
    results: dict[str, dict[str, list[float]]] = {}

    def measure(key: str, fns: dict) -> None:
        times: dict[str, list[float]] = {b: [] for b in fns}
        for it in range(args.warmup + args.iters):
            for backend, fn in fns.items():
                dist.barrier(group=gloo)
                began = time.perf_counter()
                fn()
                took = time.perf_counter() - began
                if it >= args.warmup:
                    times[backend].append(took)
        results[key] = times

    for op in [o for o in args.ops.split(",") if o]:
        for size in [parse_size(s) for s in args.sizes.split(",")]:
            n = max(world * world, size // 4 // (world * world) * world * world)
            measure(f"{op}:{size}", {b: _call(op, dist, n, world, g) for b, g in groups.items()})
    if args.model:
        steps = {}
        for backend, group in groups.items():
            net, x = _model(args.model, args.width)
            ddp = DDP(net, process_group=group, init_sync=False)
            opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)

            def step(ddp=ddp, opt=opt, x=x) -> None:
                opt.zero_grad(set_to_none=False)
                ddp(x).square().mean().backward()
                opt.step()

            steps[backend] = step
        params = sum(p.numel() for p in net.parameters())
        measure(f"ddp-{args.model}:{params * 4}", steps)
    gathered: list = [None] * world
    dist.all_gather_object(gathered, results, group=gloo)
    if rank == 0:
        Path(out).write_text(json.dumps(gathered))
    dist.barrier(group=gloo)
    dist.destroy_process_group()


def _row(key: str, per_rank: list[dict]) -> str:
    name, size = key.split(":")
    cells = []
    for backend in ("taccl", "gloo"):
        calls = zip(*(r[key][backend] for r in per_rank))  # one call: every rank's time
        cells.append(statistics.median(max(c) for c in calls) * 1e6)
    return (
        f"| {name} | {format_size(int(size))} | {cells[0]:,.1f} | {cells[1]:,.1f} "
        f"| {cells[0] / cells[1]:.2f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ops", default=",".join(OPS), help=f"comma-separated, of {OPS}")
    ap.add_argument("--sizes", default=SIZES, help="comma-separated buffer sizes")
    ap.add_argument("--iters", type=int, default=15, help="timed calls per row and backend")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--model", default="mlp", help="mlp, cnn, or '' for no DDP row")
    ap.add_argument("--width", type=int, default=1024, help="MLP width (cnn: channels x 16)")
    ap.add_argument("--ranks", type=int, default=4)
    args = ap.parse_args()
    for op in [o for o in args.ops.split(",") if o]:
        if op not in OPS:
            ap.error(f"unknown op {op!r}; choose from {', '.join(OPS)}")
    import torch.multiprocessing as mp

    print(f"# python benchmarks/torch_backend.py {' '.join(sys.argv[1:])}".rstrip())
    print(f"# {os.cpu_count()} cores, {args.ranks} ranks, median of {args.iters} calls")
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "times.json")
        init = f"file://{Path(tmp) / 'rendezvous'}"
        mp.spawn(_rank, nprocs=args.ranks, args=(args.ranks, init, args, out), join=True)
        per_rank = json.loads(Path(out).read_text())
    print("| op | size | taccl(us) | gloo(us) | taccl/gloo |")
    print("|---|---:|---:|---:|---:|")
    for key in per_rank[0]:
        print(_row(key, per_rank))


if __name__ == "__main__":
    main()

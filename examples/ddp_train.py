"""DDP training over the "taccl" backend on CPU: ``torchrun --nproc_per_node 4
examples/ddp_train.py``.

Every rank fits the same small MLP to its own shard of a synthetic regression problem; DDP
averages the gradients with taccl's all_reduce plans. At the end the parameters must be
identical on every rank (all-gathered and compared) and the loss lower than at the first
step. ``--backend gloo`` runs the same script on Gloo (to compare the losses);
``--json`` makes rank 0 print every step's loss as one JSON line.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import taccl_py.torch  # noqa: F401 - registers the "taccl" backend


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--backend", default="taccl", choices=("taccl", "gloo"))
    ap.add_argument("--json", action="store_true", help="print every loss (rank 0)")
    args = ap.parse_args()
    dist.init_process_group(args.backend)  # rank, world size and store from torchrun's env
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the same start everywhere: init_sync=False skips DDP's broadcast
    model = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 1))
    ddp = DistributedDataParallel(model, init_sync=False)
    opt = torch.optim.SGD(ddp.parameters(), lr=args.lr)
    w = torch.randn(16, 1)
    gen = torch.Generator().manual_seed(1 + rank)  # this rank's shard
    x = torch.randn(256, 16, generator=gen)
    y = torch.tanh(x @ w / 4) + 0.01 * torch.randn(256, 1, generator=gen)
    losses = []
    for step in range(args.steps):
        loss = nn.functional.mse_loss(ddp(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        mean = loss.detach().reshape(1).clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / world)
        if rank == 0 and (step % 10 == 0 or step == args.steps - 1):
            print(f"step {step:3d} loss {losses[-1]:.4f}", flush=True)
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    every = torch.empty(flat.numel() * world)
    getattr(dist, "all_gather_single", dist.all_gather_into_tensor)(every, flat)
    for q, theirs in enumerate(every.chunk(world)):
        assert torch.equal(theirs, flat), f"rank {rank}: parameters differ from rank {q}'s"
    assert losses[-1] < losses[0], f"loss did not decrease: {losses[0]} -> {losses[-1]}"
    if rank == 0 and args.json:
        print(json.dumps({"losses": losses}), flush=True)
    if rank == 0:
        print(
            f"ddp ok: {args.backend}, {world} ranks, {args.steps} steps, loss {losses[0]:.4f} -> "
            f"{losses[-1]:.4f}, parameters identical on every rank",
            flush=True,
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""FSDP2 training over the "taccl" backend on CPU: ``torchrun --nproc_per_node 4
examples/fsdp2_train.py``.

A small MLP is sharded over the ranks with ``torch.distributed.fsdp.fully_shard``: every
forward and backward all-gathers each layer's parameters (``all_gather_into_tensor``) and
every backward reduce-scatters its gradients (``reduce_scatter_tensor``), all run by taccl
plans. Each rank trains on its own shard of a synthetic regression problem. At the end the
full parameters are gathered and must be identical on every rank, and the loss lower than
at the first step. ``--backend gloo`` runs the same script on Gloo (to compare the losses);
``--json`` makes rank 0 print every step's loss as one JSON line.
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard

import taccl_py.torch  # noqa: F401 - registers the "taccl" backend


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--backend", default="taccl", choices=("taccl", "gloo"))
    ap.add_argument("--json", action="store_true", help="print every loss (rank 0)")
    args = ap.parse_args()
    dist.init_process_group(args.backend)  # rank, world size and store from torchrun's env
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    torch.manual_seed(0)  # the same full model everywhere, before it is sharded
    model = nn.Sequential(
        nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 1)
    )
    mesh = init_device_mesh("cpu", (world,))
    for layer in model:
        if isinstance(layer, nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    w = torch.randn(16, 1)
    gen = torch.Generator().manual_seed(1 + rank)  # this rank's shard of the data
    x = torch.randn(128, 16, generator=gen)
    y = torch.tanh(x @ w / 4) + 0.01 * torch.randn(128, 1, generator=gen)
    losses = []
    for step in range(args.steps):
        loss = nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        mean = loss.detach().reshape(1).clone()
        dist.all_reduce(mean)
        losses.append(mean.item() / world)
        if rank == 0 and not args.json and (step % 10 == 0 or step == args.steps - 1):
            print(f"step {step:3d} loss {losses[-1]:.4f}", flush=True)
    full = torch.cat([p.full_tensor().detach().reshape(-1) for p in model.parameters()])
    every = torch.empty(full.numel() * world)
    getattr(dist, "all_gather_single", dist.all_gather_into_tensor)(every, full)
    for q, theirs in enumerate(every.chunk(world)):
        assert torch.equal(theirs, full), f"rank {rank}: parameters differ from rank {q}'s"
    assert losses[-1] < losses[0], f"loss did not decrease: {losses[0]} -> {losses[-1]}"
    if rank == 0 and args.json:
        print(json.dumps({"losses": losses}), flush=True)
    if rank == 0:
        print(
            f"fsdp2 ok: {args.backend}, {world} ranks, {args.steps} steps, loss "
            f"{losses[0]:.4f} -> {losses[-1]:.4f}, parameters identical on every rank",
            flush=True,
        )
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

"""One rank of tests/test_torch_backend.py's 4-process runs: RANK WORLD INITFILE MODE.

MODE ``all``: every collective through ``dist.*`` on the "taccl" backend, checked exactly,
then a few DDP steps; prints ``rank R ok``. ``die``: rank WORLD-1 exits before the
all_gather; ``stall``: it sleeps instead; the others print the error they get.
"""

import datetime
import os
import sys
import time

import torch
import torch.distributed as dist

import taccl_py.torch  # noqa: F401 - registers "taccl"


def check(name, got, want):
    if not torch.equal(got, want):
        raise SystemExit(
            f"rank {dist.get_rank()}: {name}: got {got.tolist()}, want {want.tolist()}"
        )


def every_collective(r: int, n: int) -> None:
    x = torch.arange(6, dtype=torch.int64) + 100 * r
    out = torch.empty(6 * n, dtype=torch.int64)
    dist.all_gather_into_tensor(out, x)
    check("all_gather_into_tensor", out, torch.cat([torch.arange(6) + 100 * q for q in range(n)]))
    outs = [torch.empty(6, dtype=torch.int64) for _ in range(n)]
    dist.all_gather(outs, x)
    check("all_gather", torch.cat(outs), out)
    a2a = torch.empty(2 * n, dtype=torch.int64)
    dist.all_to_all_single(a2a, torch.arange(2 * n, dtype=torch.int64) + 10 * r)
    check(
        "all_to_all_single",
        a2a,
        torch.tensor([10 * q + 2 * r + k for q in range(n) for k in range(2)]),
    )
    rs = torch.empty(3, dtype=torch.int64)
    dist.reduce_scatter_tensor(rs, torch.arange(3 * n, dtype=torch.int64) * (r + 1))
    check("reduce_scatter_tensor", rs, (torch.arange(3) + 3 * r) * sum(range(1, n + 1)))
    t = torch.full((7,), r + 1, dtype=torch.int32)  # 7 elements: padded to whole chunks
    work = dist.all_reduce(t, async_op=True)
    work.wait()
    check("all_reduce async", t, torch.full((7,), sum(range(1, n + 1)), dtype=torch.int32))
    m = torch.tensor([float(r), -float(r)])
    dist.all_reduce(m, op=dist.ReduceOp.MAX)
    check("all_reduce max", m, torch.tensor([n - 1.0, 0.0]))
    dist.barrier()
    if r == 0:
        dist.send(torch.tensor([42]), dst=1)
    elif r == 1:
        got = torch.zeros(1, dtype=torch.int64)
        dist.recv(got, src=0)
        check("send/recv", got, torch.tensor([42]))


def ddp_steps(r: int, n: int) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 1))
    ddp = torch.nn.parallel.DistributedDataParallel(model, init_sync=False)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.05)
    gen = torch.Generator().manual_seed(r)
    for _ in range(3):
        xb = torch.randn(16, 8, generator=gen)
        loss = ddp(xb).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    every = torch.empty(flat.numel() * n)
    dist.all_gather_into_tensor(every, flat)
    for q, other in enumerate(every.chunk(n)):
        if not torch.equal(other, flat):
            raise SystemExit(f"rank {r}: DDP parameters differ from rank {q}'s")


def main() -> None:
    r, n, initfile, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
    dist.init_process_group(
        "taccl",
        init_method=f"file://{initfile}",
        rank=r,
        world_size=n,
        timeout=datetime.timedelta(seconds=float(os.environ.get("TACCL_TEST_TIMEOUT", "60"))),
    )
    if mode == "all":
        every_collective(r, n)
        ddp_steps(r, n)
        print(f"rank {r} ok", flush=True)
        dist.destroy_process_group()
        return
    # every rank's group is up (its Gloo connections made) before rank n-1 dies or stalls;
    # dying earlier fails the others' set-up instead of the collective under test
    store = dist.distributed_c10d._get_default_store()
    store.set(f"up{r}", "1")
    store.wait([f"up{q}" for q in range(n)])
    if r == n - 1:
        if mode == "die":
            os._exit(3)
        time.sleep(60)
        os._exit(0)
    start = time.monotonic()
    try:
        dist.all_gather_into_tensor(torch.empty(4 * n), torch.ones(4))
    except Exception as exc:  # noqa: BLE001 - the error is what the test checks
        print(f"rank {r} error after {time.monotonic() - start:.1f} s: {exc}", flush=True)
        os._exit(1)
    print(f"rank {r} finished without error", flush=True)
    os._exit(0)


if __name__ == "__main__":
    main()

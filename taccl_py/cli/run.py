"""``taccl run``, ``profile``, ``cuda-check``: run plans, measure a cluster, check the GPU route."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    pass


from .app import (
    _NODES,
    _OUTPUT,
    _REPEATS,
    MAX_REPEATS,
    MAX_TIME_LIMIT,
    _Finite,
    _size,
    _sizes,
    main,
)


# -- run over MPI ----------------------------------------------------------------------
@main.command("run")
@click.argument("plan_path", type=click.Path(path_type=Path))
@click.option(
    "--size",
    default="64M",
    show_default=True,
    callback=_size,
    help="buffer size (nccl-tests convention: AllGather output, AllToAll/AllReduce "
    "per-rank buffer, ReduceScatter input)",
)
@click.option(
    "--dtype",
    default="float32",
    show_default=True,
    help="NumPy dtype of the buffers (e.g. float32, float64, int32)",
)
@click.option("--check", is_flag=True, help="compare the result with MPI's own collective")
@click.option("--iters", default=20, show_default=True, type=_REPEATS)
@click.option("--warmup", default=3, show_default=True, type=_REPEATS)
@click.option(
    "--timeout",
    default=60.0,
    show_default=True,
    type=_Finite(0.01, MAX_TIME_LIMIT),
    help="seconds without progress before a rank gives up",
)
def run_cmd(plan_path, size, dtype, check, iters, warmup, timeout) -> None:
    """Run an MSCCL XML plan over MPI (launch with mpiexec -n NGPUS) and time it."""
    from ..runtime.mpi_run import run_command

    run_command(plan_path, size, dtype, check, iters, warmup, timeout)


# -- profile (measure a topology) ----------------------------------------------------------
@main.command("profile")
@click.option("--output", "-o", type=_OUTPUT, help="write a topology YAML of the measured numbers")
@click.option(
    "--update",
    "update_path",
    type=click.Path(path_type=Path),
    help="update this topology YAML's measured links (in place unless -o; "
    "its comments are not kept)",
)
@click.option(
    "--sizes",
    default="8,64,512,4K,32K,256K,2M,16M",
    show_default=True,
    callback=_sizes,
    help="ping-pong message sizes",
)
@click.option(
    "--iters",
    default=10,
    show_default=True,
    type=click.IntRange(1, MAX_REPEATS),
    help="round trips per size (the median counts)",
)
@click.option("--warmup", default=2, show_default=True, type=_REPEATS)
@click.option(
    "--transport",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "mpi", "torch"]),
    help="auto: torch under torchrun, mpi under mpiexec",
)
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    type=click.Choice(["cpu", "cuda"]),
    help="buffers' device (cuda: torchrun with NCCL)",
)
@click.option(
    "--gpus-per-node", type=_NODES, help="ranks per topology node [default: the ranks on one host]"
)
def profile_cmd(
    output, update_path, sizes, iters, warmup, transport, device, gpus_per_node
) -> None:
    """Measure alpha and bandwidth of every rank pair (under mpiexec or torchrun)."""
    from ..topology.profile import profile_command

    profile_command(output, update_path, sizes, iters, warmup, transport, device, gpus_per_node)


# -- cuda-check (is the GPU route usable here?) ---------------------------------------------
@main.command("cuda-check")
def cuda_check_cmd() -> None:
    """Say whether the CUDA route (CuPy, NVRTC, NCCL, a GPU) is usable here, in one line."""
    from ..runtime.cuda_exec import require_cuda

    cp = require_cuda()
    from cupy.cuda import nccl

    version = nccl.get_version()
    count = cp.cuda.runtime.getDeviceCount()
    click.echo(
        f"CUDA route ready: {count} GPU(s), CuPy {cp.__version__}, NCCL "
        f"{version // 10000}.{version // 100 % 100}.{version % 100}"
    )

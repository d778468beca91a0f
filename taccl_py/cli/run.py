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
_ITERS = click.IntRange(1, MAX_REPEATS)


class _Aliased(click.Option):
    """An option with nccl-tests' short name and our long one: errors name the long one
    (``Invalid value for '--iters'``), as before the short names came."""

    def get_error_hint(self, ctx: click.Context | None) -> str:
        longs = [o for o in self.opts if o.startswith("--")]
        return f"'{longs[-1]}'" if longs else super().get_error_hint(ctx)


def run_options(
    size,
    minbytes,
    maxbytes,
    stepbytes,
    stepfactor,
    iters,
    warmup,
    datacheck,
    check_flag,
    dtype,
    op,
    root,
    timeout,
    collective,
):
    """The validated :class:`~taccl_py.runtime.mpi_run.RunOptions` of ``taccl run``'s
    options (sizes already parsed to bytes); a bad combination raises
    :class:`click.BadParameter` or :class:`click.UsageError`.

    >>> o = run_options(None, 1024, 8192, None, 2, 5, 1, None, False, "float", "sum", None,
    ...                 60.0, None)
    >>> o.sizes, o.check, [name for name, _ in o.dtypes]
    ((1024, 2048, 4096, 8192), 1, ['float'])
    """
    from ..collectives import canonical_kind
    from ..errors import TacclError
    from ..runtime.mpi_run import RunOptions, parse_dtypes, parse_ops, sweep_sizes

    if size is not None and (minbytes is not None or maxbytes is not None):
        raise click.UsageError("--size S is -b S -e S: give --size or -b/-e, not both")
    lo = size if size is not None else minbytes
    hi = size if size is not None else maxbytes
    if lo is None and hi is None:
        lo = hi = DEFAULT_SIZE
    lo = hi if lo is None else lo
    hi = lo if hi is None else hi
    try:
        sizes = sweep_sizes(lo, hi, stepbytes if stepbytes is not None else 1 << 20, stepfactor)
    except TacclError as exc:
        raise click.BadParameter(str(exc), param_hint="'-b' / '-e' / '-i' / '-f'") from None
    try:
        dtypes = parse_dtypes(dtype)
    except TacclError as exc:
        raise click.BadParameter(str(exc), param_hint="'--dtype'") from None
    try:
        ops = parse_ops(op)
    except TacclError as exc:
        raise click.BadParameter(str(exc), param_hint="'--op'") from None
    kind = None
    if collective is not None:
        try:
            kind = canonical_kind(collective)
        except TacclError as exc:
            raise click.BadParameter(str(exc), param_hint="'--collective'") from None
    check = datacheck if datacheck is not None else 1
    if check_flag:
        check = max(check, 1)
    return RunOptions(
        sizes=tuple(sizes),
        dtypes=tuple(dtypes),
        ops=tuple(ops),
        root=root,
        check=check,
        iters=iters,
        warmup=warmup,
        timeout=timeout,
        collective=kind,
    )


#: the size when none is given (bytes)
DEFAULT_SIZE = 64 << 20


@main.command("run")
@click.argument("plan_path", type=click.Path(path_type=Path))
@click.option(
    "--size",
    default=None,
    callback=_size,
    help="one size: the same as -b SIZE -e SIZE [default: 64M]",
)
@click.option("-b", "--minbytes", cls=_Aliased, default=None, callback=_size, help="smallest size")
@click.option("-e", "--maxbytes", cls=_Aliased, default=None, callback=_size, help="largest size")
@click.option(
    "-i",
    "--stepbytes",
    cls=_Aliased,
    default=None,
    callback=_size,
    help="size increment [default: 1M]",
)
@click.option(
    "-f",
    "--stepfactor",
    cls=_Aliased,
    default=1,
    show_default=True,
    type=click.IntRange(1, 1 << 20),
    help="size multiplier (above 1 it replaces -i)",
)
@click.option(
    "-n",
    "--iters",
    cls=_Aliased,
    default=20,
    show_default=True,
    type=_ITERS,
    help="timed iterations",
)
@click.option(
    "-w",
    "--warmup_iters",
    "--warmup",
    "warmup",
    cls=_Aliased,
    default=3,
    show_default=True,
    type=_REPEATS,
    help="untimed iterations first",
)
@click.option(
    "-c",
    "datacheck",
    default=None,
    type=click.IntRange(0, 1000),
    help="data checks per cell, 0: none [default: 1]",
)
@click.option("--check", "check_flag", is_flag=True, help="the same as -c 1")
@click.option(
    "-d",
    "--datatype",
    "--dtype",
    "dtype",
    cls=_Aliased,
    default="float",
    show_default=True,
    help="int8, uint8, int32, uint32, int64, uint64, half, float, double (or float16/32/64), "
    "a comma list, or all",
)
@click.option(
    "-o",
    "--op",
    cls=_Aliased,
    default="sum",
    show_default=True,
    help="reduction of AllReduce, ReduceScatter, Reduce: sum, prod, max, min or all",
)
@click.option(
    "-r",
    "--root",
    cls=_Aliased,
    type=int,
    default=None,
    help="root of Broadcast, Reduce, Gather, Scatter [default: the plan's]",
)
@click.option(
    "--collective",
    default=None,
    help="of a plan directory, run only this collective's plans [default: every one]",
)
@click.option(
    "--timeout",
    default=60.0,
    show_default=True,
    type=_Finite(0.01, MAX_TIME_LIMIT),
    help="seconds without progress before a rank gives up",
)
def run_cmd(
    plan_path,
    size,
    minbytes,
    maxbytes,
    stepbytes,
    stepfactor,
    iters,
    warmup,
    datacheck,
    check_flag,
    dtype,
    op,
    root,
    collective,
    timeout,
) -> None:
    """Run MSCCL XML plans over MPI as nccl-tests runs NCCL (launch with mpiexec -n NGPUS).

    PLAN_PATH is a plan or a directory of plans: each row uses the plan msccl-executor
    would select for its size, out of place and in place. Every row is checked against MPI's
    own collective (-c 0: not) and timed, MPI's too; columns and bus bandwidth as
    nccl-tests prints them.
    """
    from ..runtime.mpi_run import run_command

    opts = run_options(
        size,
        minbytes,
        maxbytes,
        stepbytes,
        stepfactor,
        iters,
        warmup,
        datacheck,
        check_flag,
        dtype,
        op,
        root,
        timeout,
        collective,
    )
    run_command(plan_path, opts)


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

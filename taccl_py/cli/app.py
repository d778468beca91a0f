"""The ``taccl`` command group, interrupt handling and the option types every command shares."""

from __future__ import annotations

import gc
import math
import os
import signal
import sys
import threading
from typing import TYPE_CHECKING

import click

from ..errors import TacclError
from ..plan.runtimes import DEFAULT_RUNTIME, RUNTIMES
from ..topology.loader import MAX_RANKS
from ..util.fileio import display_path
from ..util.units import parse_size

if TYPE_CHECKING:
    pass


def _in_finalizer(frame) -> bool:
    while frame is not None:
        if frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def _raise_interrupt(signum, frame):
    """Raise KeyboardInterrupt, except inside a finalizer (z3's ``AstRef.__del__``, say),
    where Python would print and drop it: there the signal is sent again 10 ms later."""
    if _in_finalizer(frame):
        threading.Timer(0.01, os.kill, (os.getpid(), signum)).start()
        return
    gc.freeze()  # no collection of a plan-sized heap while the interrupt unwinds
    raise KeyboardInterrupt


def _interrupts() -> dict:
    """Make SIGINT and SIGTERM raise KeyboardInterrupt (main thread only); the previous
    handlers."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {sig: signal.signal(sig, _raise_interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}


def _exit_if_solving(code: int) -> None:
    """Exit at once if a solver ignored its cancel (see :func:`.synth.solvers.solving`)."""
    from ..synth.solvers import solving

    if solving():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


#: objects above which an interrupted command exits without freeing them: a 1,024-rank
#: plan's lowering holds tens of millions, and collecting and freeing them took 28 s
LARGE_HEAP = 2_000_000


def _exit_if_large(code: int) -> None:
    """Exit at once if the interrupt left a large heap (frozen by :func:`_raise_interrupt`;
    every output was already removed, or never written, by the ``finally`` clauses it
    unwound through)."""
    if gc.get_freeze_count() > LARGE_HEAP:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _launcher_rank() -> str | None:
    """This process's rank when started by mpiexec (MPICH or Open MPI), else None."""
    return os.environ.get("PMI_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK")


class _Group(click.Group):
    """A click group that turns :class:`TacclError` into a one-line message."""

    def main(self, *args, **kwargs):
        """Usage errors, too, are one line on stderr: ``taccl: error: ...``, exit 2.
        SIGTERM interrupts like Ctrl-C: ``taccl: interrupted``, exit 130."""
        kwargs.pop("standalone_mode", None)
        previous = _interrupts()
        try:
            rv = super().main(*args, standalone_mode=False, **kwargs)
        except click.ClickException as exc:
            ctx = getattr(exc, "ctx", None)
            hint = f" (see '{ctx.command_path} -h')" if ctx is not None else ""
            message = display_path(" ".join(exc.format_message().split()))  # one line,
            # control characters from argv escaped
            if _launcher_rank() in (None, "0"):  # under mpiexec, rank 0 alone says it
                click.echo(f"taccl: error: {message}{hint}", err=True)
            sys.exit(exc.exit_code)
        except click.Abort:
            click.echo("taccl: interrupted", err=True)
            sys.exit(130)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        sys.exit(rv if isinstance(rv, int) else 0)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except TacclError as exc:
            click.echo(f"taccl: error: {exc}", err=True)
            ctx.exit(2)
        except KeyboardInterrupt:
            click.echo("taccl: interrupted", err=True)
            _exit_if_solving(130)
            _exit_if_large(130)
            ctx.exit(130)


class _Finite(click.FloatRange):
    """A float range that also refuses NaN and ±inf."""

    def convert(self, value, param, ctx):
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


#: an output file: kept a string, so that a trailing "/" still says "directory" to fileio
_OUTPUT = click.Path()
#: most seconds a solver may be given (a week)
MAX_TIME_LIMIT = 7 * 24 * 3600.0
#: --nodes: one node per rank at most (see :data:`~taccl_py.topology.loader.MAX_RANKS`)
_NODES = click.IntRange(1, MAX_RANKS)


def fault_options(fn):
    """``--exclude`` and ``--derate``: failed and slow parts of the topology (see
    :mod:`taccl_py.topology.failures`), for ``synthesize``, ``simulate``, ``plot`` and
    ``topology show``."""
    fn = click.option(
        "--derate",
        multiple=True,
        metavar="PART=F",
        help="a part that runs at a fraction F in (0, 1] of its bandwidth (repeatable), "
        "e.g. nic:nic3@node2=0.5",
    )(fn)
    return click.option(
        "--exclude",
        "-x",
        multiple=True,
        metavar="PART",
        help="a failed part to leave out (repeatable): nic:<name|index>@node<K>, "
        "link:<a>-<b>@node<K>; the cluster must stay connected",
    )(fn)


def load_cluster(name: str, nodes: int, exclude=(), derate=()):
    """``load_topology`` with the ``--exclude``/``--derate`` parts applied."""
    from ..topology.failures import Faults, apply_faults
    from ..topology.loader import load_topology

    return apply_faults(load_topology(name, nodes), Faults(tuple(exclude), tuple(derate)))


#: most chunks per block (the MSCCL runtime counts at most 72 chunks per step)
MAX_CHUNKUP = 64
#: most SMT steps or rounds tried (z3 is practical far below this)
MAX_SMT = 256
#: most timed or warm-up iterations
MAX_REPEATS = 1_000_000
_REPEATS = click.IntRange(0, MAX_REPEATS)
#: most sizes one --sizes list may hold
MAX_SIZES = 64
#: least GB/s for import's bandwidth options: twice the topology schema's 1 MB/s, as
#: PCIe pairs across sockets get half of --pcie-bw
MIN_IMPORT_GBS = 2e-3
#: most GB/s a link or NIC may be said to carry
MAX_BANDWIDTH_GBS = 1e6
#: --runtime: the MSCCL runtime plans are for (lowering/runtimes.py)
_RUNTIME = click.Choice(list(RUNTIMES))
#: --max-steps: steps per threadblock of a custom runtime build (the XML reader keeps at
#: most this many children per element)
_MAX_STEPS = click.IntRange(1, RUNTIMES[DEFAULT_RUNTIME].max_children)


def _size(ctx, param, value):
    if value is None:
        return None
    try:
        return parse_size(value)
    except TacclError as exc:
        raise click.BadParameter(str(exc)) from None


def _sizes(ctx, param, value):
    try:
        sizes = sorted({parse_size(v) for v in value.split(",") if v.strip()})
    except TacclError as exc:
        raise click.BadParameter(str(exc)) from None
    if not sizes:
        raise click.BadParameter("give at least one size, e.g. 1K,1M,1G")
    if len(sizes) > MAX_SIZES:
        raise click.BadParameter(f"at most {MAX_SIZES} sizes")
    return sizes


def _size_or_zero(ctx, param, value):
    return 0 if str(value).strip() == "0" else _size(ctx, param, value)


def _order(ctx, param, value):
    if value is None:
        return None
    try:
        return [int(x) for x in value.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter("use comma-separated rank numbers, e.g. 0,1,3,2") from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="taccl_py")
@click.option("--verbose", is_flag=True, help="show solver banners and logs (HiGHS) on stderr")
def main(verbose: bool) -> None:
    """Synthesize, verify and run collective-communication algorithms."""
    from ..synth.solvers import set_verbose

    set_verbose(verbose)

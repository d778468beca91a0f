"""pulp's HiGHS made quiet on stdout, interruptible and able to report live progress
(see :mod:`.solvers`)."""

from __future__ import annotations

import ctypes
import os
import sys
from contextlib import suppress

import pulp

from .solvers import Live, Watch, interruptible, verbose

_banner = {"done": False}


def _banner_off() -> None:
    """Make the process's first ``highspy.Highs`` (which prints the HiGHS banner on the
    C-level stdout) with fd 1 sent to stderr (verbose) or /dev/null."""
    import highspy

    if _banner["done"]:
        return
    _banner["done"] = True
    sys.stdout.flush()
    try:
        saved = os.dup(1)
        target = os.dup(2) if verbose() else os.open(os.devnull, os.O_WRONLY)
    except OSError:  # no stdout to protect
        highspy.Highs()
        return
    libc = ctypes.CDLL(None)
    try:
        libc.fflush(None)
        os.dup2(target, 1)
        highspy.Highs()
        libc.fflush(None)
    finally:
        os.dup2(saved, 1)
        os.close(saved)
        os.close(target)


def _log_to_stderr(event) -> None:
    sys.stderr.write(event.message)


def _gap(out) -> float | None:
    """The relative MIP gap of a callback's data (None while there is no dual bound)."""
    try:
        return float(out.mip_gap)
    except (AttributeError, TypeError, ValueError):
        return None


class HiGHS(pulp.HiGHS):
    """pulp's HiGHS, quiet on stdout and interruptible; with ``warm``,
    handed the variables' initial values as a starting incumbent.

    With ``progress``, a MIP solve calls ``progress(incumbent, gap)`` while it runs (from
    the waiting thread, see :class:`.solvers.Watch`): on every improving solution and at
    least every ``HEARTBEAT`` s. The incumbent is the value of the pulp variable
    ``watch`` in the solution, or the objective without one."""

    def __init__(self, warm: bool = False, progress: Live | None = None, watch=None, **kwargs):
        super().__init__(msg=False, **kwargs)
        self.warm = warm
        self.progress = progress
        self.watch = watch

    def createAndConfigureSolver(self, lp):
        _banner_off()
        super().createAndConfigureSolver(lp)
        model = lp.solverModel
        model.setOptionValue("log_to_console", False)
        if verbose():
            model.setOptionValue("output_flag", True)
            model.cbLogging += _log_to_stderr
        model.HandleUserInterrupt = True

    def callSolver(self, lp):
        import highspy

        model = lp.solverModel
        if self.warm:
            start = highspy.HighsSolution()
            start.col_value = [v.varValue or 0.0 for v in lp.variables()]
            start.value_valid = True
            model.setSolution(start)

        def run():
            try:
                return model.run()
            finally:  # end this thread's worker pool with it, as highspy's threaded solve
                model.resetThreadScheduler(False)

        interruptible(run, model.cancelSolve, self._watch(model))

    def _watch(self, model):
        """Subscribe ``progress``'s callbacks to ``model``; the waiting thread's poll."""
        if self.progress is None:
            return None
        live = Watch(self.progress)
        column = getattr(self.watch, "index", None)

        def improved(event) -> None:
            with suppress(Exception):  # an exception must not reach HiGHS's C++
                out = event.data_out
                value = out.objective_function_value if column is None else out.mip_solution[column]
                live.update(float(value), _gap(out))

        def running(event) -> None:
            with suppress(Exception):
                live.update(None, _gap(event.data_out))

        model.cbMipImprovingSolution += improved
        model.cbMipInterrupt += running
        return live.poll

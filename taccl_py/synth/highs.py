"""pulp's HiGHS made quiet on stdout and interruptible (see :mod:`.solvers`)."""

from __future__ import annotations

import ctypes
import os
import sys

import pulp

from .solvers import interruptible, verbose

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


class HiGHS(pulp.HiGHS):
    """pulp's HiGHS, quiet on stdout and interruptible; with ``warm``,
    handed the variables' initial values as a starting incumbent."""

    def __init__(self, warm: bool = False, **kwargs):
        super().__init__(msg=False, **kwargs)
        self.warm = warm

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

        interruptible(run, model.cancelSolve)

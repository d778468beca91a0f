"""Solver plumbing shared by the MILP (HiGHS, see :mod:`.highs`) and SMT (z3) solves.

Every solve runs in a worker thread while the calling thread waits, so a
KeyboardInterrupt (Ctrl-C, or SIGTERM as the CLI maps it) cancels the solver and goes
on within a second instead of after the solver's time limit. Solvers write nothing on
stdout: banners and logs go to stderr with :func:`set_verbose`, and nowhere without.
Cheap to import (no solver is loaded).
"""

from __future__ import annotations

import threading
from typing import Callable, TypeVar

T = TypeVar("T")
GRACE = 1.0  # seconds a cancelled solver gets to stop before the interrupt goes on

_state = {"verbose": False}
_running: set[threading.Event] = set()  # the unfinished solves' done events


def set_verbose(on: bool) -> None:
    """Solver banners and logs to stderr (``on``), or nowhere (the default)."""
    _state["verbose"] = on


def verbose() -> bool:
    return _state["verbose"]


def solving() -> bool:
    """Whether a solve is still running, e.g. one that ignored its cancel for ``GRACE`` s
    (the process should then end with ``os._exit``: tearing down the interpreter under
    a thread inside a solver's C++ aborts it)."""
    return bool(_running)


def interruptible(solve: Callable[[], T], cancel: Callable[[], object]) -> T:
    """``solve()`` run in a worker thread; a KeyboardInterrupt while waiting for it calls
    ``cancel()`` (thread-safe: it asks the solver to stop), waits up to ``GRACE`` s for
    the worker, and is re-raised."""
    out: dict = {}
    done = threading.Event()  # not Thread.join: an interrupted join can mark a running
    # thread stopped (CPython 3.11), and exiting under a solver still in C++ aborts

    def work() -> None:
        try:
            out["value"] = solve()
        except BaseException as exc:  # handed to the waiting thread
            out["error"] = exc
        finally:
            _running.discard(done)
            done.set()

    _running.add(done)
    threading.Thread(target=work, name="taccl-solver", daemon=True).start()
    try:
        while not done.wait(0.1):
            pass
    except KeyboardInterrupt:
        cancel()
        done.wait(GRACE)
        raise
    if "error" in out:
        raise out["error"]
    return out["value"]

"""Solver plumbing shared by the MILP (HiGHS, see :mod:`.highs`) and SMT (z3) solves.

Every solve runs in a worker thread while the calling thread waits, so a
KeyboardInterrupt (Ctrl-C, or SIGTERM as the CLI maps it) cancels the solver and goes
on within a second instead of after the solver's time limit. Solvers write nothing on
stdout: banners and logs go to stderr with :func:`set_verbose`, and nowhere without.
Inside :func:`live_progress`, a solve that supports it (the routing MILP) reports its
incumbent and gap while it runs, from the waiting thread (see :class:`Watch`).
Cheap to import (no solver is loaded).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TypeVar

T = TypeVar("T")
GRACE = 1.0  # seconds a cancelled solver gets to stop before the interrupt goes on
HEARTBEAT = 5.0  # seconds between live progress reports while the incumbent stays put

Live = Callable[[float | None, float | None], None]  # (incumbent, gap)
_live: ContextVar[Live | None] = ContextVar("taccl_live_progress", default=None)

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


@contextmanager
def live_progress(report: Live) -> Iterator[None]:
    """Solves started inside (in this thread or context) that support it call
    ``report(incumbent, gap)`` while they run: see :class:`Watch`."""
    token = _live.set(report)
    try:
        yield
    finally:
        _live.reset(token)


def live_report() -> Live | None:
    """The ``report`` of the innermost :func:`live_progress`, if any."""
    return _live.get()


class Watch:
    """A running solve's incumbent and gap, set by the solver's callbacks (in its own
    thread) with :meth:`update`; :meth:`poll` (in the waiting thread) calls
    ``report(incumbent, gap)`` when the incumbent changes, and at least every
    ``HEARTBEAT`` s otherwise (with the latest values, None while unknown)."""

    def __init__(self, report: Live):
        self.report = report
        self.incumbent: float | None = None
        self.gap: float | None = None
        self._news = False
        self._told = time.monotonic()

    def update(self, incumbent: float | None = None, gap: float | None = None) -> None:
        if gap is not None and math.isfinite(gap) and gap >= 0:
            self.gap = gap
        if incumbent is None or not math.isfinite(incumbent):
            return
        last, self.incumbent = self.incumbent, incumbent
        if last is None or abs(incumbent - last) > 1e-6 * abs(last):
            self._news = True  # not a solution better only in a tie-break term

    def poll(self) -> None:
        now = time.monotonic()
        if self._news or now - self._told >= HEARTBEAT:
            self._news = False
            self._told = now
            self.report(self.incumbent, self.gap)


def interruptible(
    solve: Callable[[], T], cancel: Callable[[], object], poll: Callable[[], object] | None = None
) -> T:
    """``solve()`` run in a worker thread; a KeyboardInterrupt while waiting for it calls
    ``cancel()`` (thread-safe: it asks the solver to stop), waits up to ``GRACE`` s for
    the worker, and is re-raised. ``poll()`` is called about every 0.1 s while waiting
    (e.g. :meth:`Watch.poll`); an exception from it cancels the solve the same way."""
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
            if poll is not None:
                poll()
    except BaseException:  # KeyboardInterrupt, or an error of poll's
        cancel()
        done.wait(GRACE)
        raise
    if "error" in out:
        raise out["error"]
    return out["value"]

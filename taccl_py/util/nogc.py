"""Pausing Python's cyclic garbage collector around plan-sized work."""

from __future__ import annotations

import gc
from contextlib import contextmanager


@contextmanager
def gc_paused():
    """Disable the cyclic collector inside (usable as a decorator), then restore it.

    Lowering, verifying and simulating a large plan allocate hundreds of thousands of
    long-lived objects; each allocation burst triggers full collections that find little
    garbage and at 256 ranks cost as much as the work itself.

    >>> before = gc.isenabled()
    >>> with gc_paused():
    ...     gc.isenabled()
    False
    >>> gc.isenabled() == before
    True
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()

"""Shared test settings: hypothesis profiles.

* ``taccl`` (the default): no per-example deadline (solvers and subprocesses vary with the
  machine's load), slow data generation allowed, and derandomized, so that a CI run is
  reproducible; each property test sets only its ``max_examples``.
* ``explore`` (``HYPOTHESIS_PROFILE=explore``): random seeds and the example database, to
  search beyond the fixed examples on a developer's machine.

The route cache (solved node routings kept across runs) is off, in this process and its
subprocesses, so that a test's plan never depends on what an earlier test solved; the
tests of the cache turn it on in a directory of their own.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

os.environ["TACCL_ROUTE_CACHE"] = "off"

#: scripts that tests run as subprocesses: not test modules, and not imported for doctests
collect_ignore = ["mpi_dead_rank.py", "torch_worker.py", "torch_layout_worker.py"]

_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow]}
settings.register_profile("taccl", derandomize=True, database=None, **_COMMON)
settings.register_profile("explore", **_COMMON)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "taccl"))

"""PyTorch backend ``"taccl"``: ``import taccl_py.torch`` registers it.

``dist.init_process_group("taccl", ...)`` builds (once per cluster and world size, cached
under ``$TACCL_CACHE_DIR``, default ``~/.cache/taccl_py``; one process builds, the others
wait and load) a plan library for every collective, and serves all_reduce, all_gather,
all_gather_into_tensor, reduce_scatter, reduce_scatter_tensor, all_to_all_single and
all_to_all (uneven too), broadcast, reduce, gather, scatter (rooted plans per root) and
barrier from plans, sync or ``async_op=True`` (:mod:`taccl_py.torch.backend` says exactly
what runs where). The cluster: ``configure(topology=...)`` or ``$TACCL_TOPOLOGY`` (a built-in
name, ``name:nodes``, a YAML path), else ``nvidia-smi topo -m`` on GPU hosts, else the local
host. ``$TACCL_PLAN_DIR`` plans (verified when loaded) win where they apply. With
``TACCL_LOG=1`` rank 0 says on stderr which plan serves each collective, once per plan and
size range (logger ``taccl_py.torch``, level INFO).

>>> import torch.distributed as dist
>>> import taccl_py.torch
>>> "taccl" in dist.Backend.backend_list
True
>>> dist.init_process_group("taccl", rank=rank, world_size=4)  # doctest: +SKIP
>>> dist.all_reduce(torch.ones(1024))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os

try:
    import torch.distributed as dist
except ImportError as exc:  # say which extra brings it
    raise ImportError(
        f"taccl_py.torch needs PyTorch ({exc}): pip install 'taccl_py[torch]'"
    ) from None

from .backend import TacclProcessGroup
from .library import CACHE_DIR_ENV, METHODS_ENV, PLAN_DIR_ENV, TOPOLOGY_ENV, PlanLibrary

__all__ = [
    "TacclProcessGroup",
    "PlanLibrary",
    "configure",
    "PLAN_DIR_ENV",
    "CACHE_DIR_ENV",
    "TOPOLOGY_ENV",
    "METHODS_ENV",
]

_options: dict = {}


def configure(
    plan_dir=None,
    cache_dir=None,
    blocking_wait: bool | None = None,
    topology=None,
    methods: tuple[str, ...] | None = None,
) -> None:
    """Options for groups created from now on (each overrides its environment variable):
    plan and cache directories, whether ``Work.wait()`` of CUDA collectives waits on the
    host (``TACCL_BLOCKING_WAIT``), the cluster the plan library is built for
    (``TACCL_TOPOLOGY``: a built-in name, ``name:nodes``, a YAML path or a Topology) and the
    methods it tries (``TACCL_METHODS``).

    >>> import taccl_py.torch
    >>> taccl_py.torch.configure(topology="dgx1", plan_dir="plans/")  # doctest: +SKIP
    """
    _options.update(
        plan_dir=plan_dir,
        cache_dir=cache_dir,
        blocking_wait=blocking_wait,
        topology=topology,
        methods=methods,
    )


def _create(store, rank, size, timeout):
    return TacclProcessGroup(store, rank, size, timeout, **_options)


if os.environ.get("TACCL_LOG", "0") not in ("", "0"):
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("taccl: %(message)s"))
    logging.getLogger("taccl_py.torch").addHandler(_handler)
    logging.getLogger("taccl_py.torch").setLevel(logging.INFO)

if "taccl" not in dist.Backend.backend_list:
    dist.Backend.register_backend("taccl", _create, extended_api=False, devices=["cpu", "cuda"])

"""PyTorch backend ``"taccl"``: ``import taccl_py.torch`` registers it.

``dist.init_process_group("taccl", ...)`` then serves all_gather_into_tensor, all_gather,
all_to_all_single, all_to_all, reduce_scatter_tensor, reduce_scatter, all_reduce, barrier,
broadcast, reduce, gather, scatter, send/recv (sync or ``async_op=True``) on CPU tensors, with
Gloo's results for tensors of any layout and Gloo's dtypes, and on CUDA tensors through
CuPy's NCCL on the tensors' GPU and the caller's stream (:mod:`taccl_py.torch.cuda`). Plans
come from ``$TACCL_PLAN_DIR`` (or :func:`configure`; each is verified when loaded, and an
invalid one is refused), else fallback plans (ring; direct for all-to-all) synthesized once
and cached under ``$TACCL_CACHE_DIR`` (default ``~/.cache/taccl_py``). With ``TACCL_LOG=1``
each rank says on stderr which plan serves each collective (logger ``taccl_py.torch``, level
INFO).

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

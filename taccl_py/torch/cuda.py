"""CUDA tensors in the taccl backend: plans run with NCCL point-to-point through CuPy.

The NCCL communicator is made on the first CUDA collective (unique id through the group's
store); every plan step is enqueued on the caller's current torch stream, so the backend is
stream-ordered like NCCL's own collectives.
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import TacclError
from .library import PlanLibrary

class CudaRunner:
    """Runs collectives on CUDA tensors of one device for one process group."""

    def __init__(self, store, rank: int, size: int, library: PlanLibrary) -> None:
        try:
            import cupy  # noqa: F401
        except ImportError:
            raise TacclError("CUDA tensors need CuPy: pip install 'taccl_py[cuda]'") from None
        from ..runtime.cuda_exec import communicator_from_store

        self.rank, self.size, self.library = rank, size, library
        self.comm = communicator_from_store(store, rank, size, key="taccl-nccl-id")
        self.executors: dict[tuple, object] = {}

    def run(self, kind: str, output: torch.Tensor, input: torch.Tensor, red: str) -> None:
        """``output`` ← the ``kind`` collective of every rank's ``input`` (flat, contiguous)."""
        import cupy

        from ..runtime.cuda_exec import NcclPlanExecutor

        if output.dtype in (torch.bfloat16, torch.complex64, torch.complex128) \
                or output.dtype.is_floating_point and output.element_size() == 1:
            raise TacclError(f"CUDA tensors of {output.dtype} are not supported yet")
        with cupy.cuda.Device(output.device.index):
            stream = cupy.cuda.ExternalStream(torch.cuda.current_stream(output.device)
                                              .cuda_stream)
            send, recv = cupy.asarray(input), cupy.asarray(output)
            elems = max(send.size, recv.size)
            inplace = kind == "allreduce" and output.data_ptr() == input.data_ptr()
            plan = self.library.choose(kind, self.size, elems * send.itemsize, elems, inplace)
            chunks = plan.nchunksperloop
            if elems % chunks:  # only AllReduce reaches here: pad to whole chunks
                if kind != "allreduce":
                    raise TacclError(f"{kind} of {elems} elements does not split into the "
                                     f"plan's {chunks} chunks")
                with stream:
                    pad = cupy.zeros(chunks - elems % chunks, send.dtype)
                    send = cupy.concatenate([send, pad])
                    target = cupy.empty_like(send)
            else:
                if not plan.inplace and send.data.ptr == recv.data.ptr:
                    with stream:
                        send = send.copy()
                target = recv
            ce = send.size // plan.collective().i_chunks
            key = (id(plan), ce, np.dtype(send.dtype).str, red)
            ex = self.executors.get(key)
            if ex is None:
                ex = self.executors[key] = NcclPlanExecutor(plan, self.comm, self.rank, ce,
                                                            send.dtype, redop=red)
            ex.run(send, target, stream)
            with stream:
                if target is not recv:
                    recv[...] = target[:elems]

"""Checks and conversions shared by the CPU and CUDA routes of the taccl backend."""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..collectives import ALLGATHER, ALLREDUCE, GATHER, REDUCESCATTER, SCATTER
from ..collectives import REDUCE as REDUCE_KIND
from ..errors import TacclError

#: the reduce ops (``ReduceOp.SUM`` and the others are the members of ``ReduceOp.RedOpType``)
_R = dist.ReduceOp
#: the reduce ops that plans do, and the plan redop of each (AVG: a sum, then divided)
REDUCE = {_R.SUM: "sum", _R.AVG: "sum", _R.PRODUCT: "prod", _R.MIN: "min", _R.MAX: "max"}
#: the bitwise reduce ops: every rank's input all-gathered by a plan, combined in rank order
BITWISE = {_R.BAND: torch.bitwise_and, _R.BOR: torch.bitwise_or, _R.BXOR: torch.bitwise_xor}
#: the collectives that reduce
REDUCING = (ALLREDUCE, REDUCESCATTER, REDUCE_KIND)
#: the dtypes Gloo serves on CPU, in the order of torch's dtype list; the others are refused
GLOO_DTYPES = (
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.int8,
    torch.uint8,
    torch.int32,
    torch.int64,
    torch.bool,
)


def reduce_op(opts):
    """The reduce operation of ``opts`` (SUM without options).

    >>> opts = dist.AllreduceOptions()
    >>> opts.reduceOp = dist.ReduceOp.MAX
    >>> reduce_op(None) == dist.ReduceOp.SUM, REDUCE[reduce_op(opts)]
    (True, 'max')
    """
    op = getattr(opts, "reduceOp", None)
    return _R.SUM if op is None else getattr(op, "op", op)  # torch < 2.13: a plain enum


def as_real(tensor: torch.Tensor, op) -> torch.Tensor:
    """A complex tensor as its real view, for sums and averages (which act on each part, as
    in torch's own conversion); other reductions of complex tensors are refused.

    >>> as_real(torch.tensor([1 + 2j]), dist.ReduceOp.SUM)
    tensor([[1., 2.]])
    """
    if not tensor.is_complex():
        return tensor
    if op not in (_R.SUM, _R.AVG):
        raise TacclError(f"reduce op {op} is not supported on complex tensors")
    return torch.view_as_real(tensor)


def check_pair(
    kind: str, output: torch.Tensor, input: torch.Tensor, op, n: int, cuda: bool = False
) -> None:
    """Refuse, before any message, what the ``kind`` collective cannot serve.

    >>> check_pair(ALLGATHER, torch.zeros(8), torch.zeros(2), None, 4)
    >>> check_pair(ALLGATHER, torch.zeros(6), torch.zeros(2), None, 4)
    Traceback (most recent call last):
    taccl_py.errors.TacclError: allgather on 4 ranks: output has 6 elements for an input of 2
    >>> ints = torch.zeros(4, dtype=torch.int32)
    >>> check_pair(ALLREDUCE, ints, ints, dist.ReduceOp.AVG, 4)
    Traceback (most recent call last):
    taccl_py.errors.TacclError: ReduceOp.AVG needs a floating-point tensor, got torch.int32
    """
    if output.device != input.device or output.dtype != input.dtype:
        raise TacclError(
            f"{kind}: input and output must share device and dtype, got "
            f"{input.device}/{input.dtype} and {output.device}/{output.dtype}"
        )
    if cuda:
        if (
            op is not None
            and kind in REDUCING
            and (
                output.dtype.is_floating_point
                and output.element_size() == 1
                or output.dtype == torch.complex32
            )
        ):
            raise TacclError(f"{kind}: reductions of {output.dtype} are not supported")
    elif output.dtype not in GLOO_DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in GLOO_DTYPES)
        raise TacclError(
            f"{kind}: {output.dtype} is not supported on CPU, as by Gloo (supported: {names})"
        )
    expect = {
        ALLGATHER: input.numel() * n,
        GATHER: input.numel() * n,
        REDUCESCATTER: input.numel() // n,
        SCATTER: input.numel() // n,
    }
    if output.numel() != expect.get(kind, input.numel()) or (
        kind in (REDUCESCATTER, SCATTER) and input.numel() % n
    ):
        raise TacclError(
            f"{kind} on {n} ranks: output has {output.numel()} elements for "
            f"an input of {input.numel()}"
        )
    check_op(op, output.dtype)


def check_op(op, dtype: torch.dtype) -> None:
    """Refuse a reduce op no plan serves exactly: PREMUL_SUM (NCCL's, with a scalar Gloo
    does not take either), AVG of integers, bitwise ops of floating-point numbers.

    >>> check_op(dist.ReduceOp.BXOR, torch.float32)
    Traceback (most recent call last):
    taccl_py.errors.TacclError: ReduceOp.BXOR needs an integer or bool tensor, got torch.float32
    """
    if op is None or op in REDUCE and op != _R.AVG:
        return
    name = f"ReduceOp.{str(op).rsplit('.', 1)[-1]}"
    if op == _R.AVG:
        if not (dtype.is_floating_point or dtype.is_complex):
            raise TacclError(f"ReduceOp.AVG needs a floating-point tensor, got {dtype}")
    elif op in BITWISE:
        if dtype.is_floating_point or dtype.is_complex:
            raise TacclError(f"{name} needs an integer or bool tensor, got {dtype}")
    else:
        raise TacclError(
            f"{name} is not supported by the taccl backend (no plan reduces with it; "
            "Gloo refuses it too)"
        )


def check_list(name: str, parts: list, tensor: torch.Tensor, n: int) -> None:
    """A list argument of ``name`` must hold ``n`` tensors the size of ``tensor``.

    >>> check_list("all_gather", [torch.zeros(2)] * 3, torch.zeros(2), 4)
    Traceback (most recent call last):
    taccl_py.errors.TacclError: all_gather on 4 ranks needs 4 tensors of 2 elements, got [2, 2, 2]
    """
    if len(parts) != n or any(p.numel() != tensor.numel() for p in parts):
        raise TacclError(
            f"{name} on {n} ranks needs {n} tensors of {tensor.numel()} "
            f"elements, got {[p.numel() for p in parts]}"
        )


def check_output(tensor: torch.Tensor) -> None:
    """Refuse an output whose elements share memory (an expanded view).

    >>> check_output(torch.zeros(1).expand(3))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    taccl_py.errors.TacclError: an output of shape (3,) has elements that share memory ...
    """
    if any(s == 0 and k > 1 for s, k in zip(tensor.stride(), tensor.shape)):
        raise TacclError(
            f"an output of shape {tuple(tensor.shape)} has elements that share "
            f"memory (an expanded view): clone() it first"
        )

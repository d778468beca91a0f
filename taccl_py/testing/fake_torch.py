"""CPU torch tensors that play CUDA tensors on a :class:`~taccl_py.testing.fake_cuda.FakeCuda`.

:meth:`FakeTorch.tensor` makes a :class:`FakeCudaTensor`: a CPU tensor whose memory is an
allocation of one of the fake's GPUs and which says so (``is_cuda``, ``device``), so that
torch's own ``__cuda_array_interface__`` hands CuPy (the fake) a zero-copy view of any
layout. While :meth:`FakeTorch.installed`, ``torch.cuda.current_stream``, ``set_device`` and
``current_device`` follow CUDA's rules: the current device and the current stream of each
device belong to the calling thread (:meth:`FakeTorch.use_stream` plays
``torch.cuda.stream``). What a fake tensor cannot do is allocate: a torch op that makes new
memory from it (``contiguous()`` of a strided view, ``torch.empty(device=...)``) gives host
memory, and using that as a CUDA tensor raises, so code under test must leave GPU memory
to CuPy.

>>> from taccl_py.testing.fake_cuda import FakeCuda
>>> ft = FakeTorch(FakeCuda(devices=2))
>>> t = ft.tensor(torch.arange(4.0), device=1)
>>> t.is_cuda, t.device
(True, device(type='cuda', index=1))
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .fake_cuda import FakeCuda


@dataclass(frozen=True)
class FakeTorchStream:
    """What ``torch.cuda.current_stream`` returns here: a stream pointer and its device."""

    cuda_stream: int
    device_index: int


class FakeCudaTensor(torch.Tensor):
    """A CPU tensor on a fake GPU (see the module docstring)."""

    _owner: FakeTorch | None = None

    @property
    def is_cuda(self) -> bool:  # type: ignore[override]
        return True

    @property
    def device(self) -> torch.device:  # type: ignore[override]
        owner = type(self)._owner
        device = None if owner is None else owner.fake.device_of(_base_ptr(self))
        if device is None:
            raise RuntimeError(
                "a fake CUDA tensor whose memory a torch op made on the host "
                "(torch cannot allocate on the fake GPUs)"
            )
        return torch.device("cuda", device)

    def record_stream(self, stream) -> None:
        owner = type(self)._owner
        assert owner is not None, "FakeTorch.tensor makes fake CUDA tensors, and sets it"
        owner.recorded.append((self.data_ptr(), self.device.index, stream.cuda_stream))


class FakeTorch:
    """torch's CUDA side over a :class:`FakeCuda` (see the module docstring)."""

    def __init__(self, fake: FakeCuda) -> None:
        self.fake = fake
        self.recorded: list[tuple[int, int, int]] = []  # (tensor pointer, device, stream)
        self._local = threading.local()

    def tensor(self, data: torch.Tensor, device: int) -> FakeCudaTensor:
        """A fake CUDA tensor on ``device`` holding ``data`` (contiguous)."""
        data = data.detach().contiguous()
        nbytes = data.numel() * data.element_size()
        raw = np.empty(max(nbytes, 1), np.uint8)
        self.fake.adopt(raw, device)
        host = torch.from_numpy(raw)[:nbytes].view(data.dtype).view(data.shape)
        host.copy_(data)
        FakeCudaTensor._owner = self
        return torch.Tensor._make_subclass(FakeCudaTensor, host)

    def empty(self, shape, dtype: torch.dtype, device: int) -> FakeCudaTensor:
        """A fake CUDA tensor of garbage, as ``torch.empty`` on a GPU."""
        t = self.tensor(torch.zeros(shape, dtype=dtype), device)
        raw = t.detach().as_subclass(torch.Tensor).reshape(-1).view(torch.uint8)
        raw.copy_(torch.randint(0, 256, raw.shape, dtype=torch.uint8))
        return t

    def host(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor``'s values (a plain CPU tensor) once the work on its GPU is done."""
        self.fake.cupy.cuda.Device(tensor.device.index).synchronize()
        return tensor.detach().as_subclass(torch.Tensor).clone()

    @contextlib.contextmanager
    def use_stream(self, device: int, ptr: int) -> Iterator[None]:
        """Make ``ptr`` this thread's current stream on ``device`` (``torch.cuda.stream``)."""
        streams = self._streams()
        before = streams.get(device, 0)
        streams[device] = ptr
        try:
            yield
        finally:
            streams[device] = before

    @contextlib.contextmanager
    def installed(self) -> Iterator[FakeTorch]:
        """Patch torch.cuda's current-stream and current-device calls for the duration."""
        patches = {
            "current_stream": self._current_stream,
            "set_device": self._set_device,
            "current_device": self._current_device,
        }
        saved = {name: getattr(torch.cuda, name) for name in patches}
        FakeCudaTensor._owner = self
        for name, fn in patches.items():
            setattr(torch.cuda, name, fn)
        try:
            yield self
        finally:
            for name, fn in saved.items():
                setattr(torch.cuda, name, fn)

    def _current_stream(self, device=None) -> FakeTorchStream:
        index = (
            self._current_device()
            if device is None
            else torch.device("cuda", device).index
            if isinstance(device, int)
            else device.index
        )
        return FakeTorchStream(self._streams().get(index, 0), index)

    def _set_device(self, device) -> None:
        index = device if isinstance(device, int) else torch.device(device).index
        self.fake.cupy.cuda.runtime.setDevice(index)

    def _current_device(self) -> int:
        return self.fake.cupy.cuda.runtime.getDevice()

    def _streams(self) -> dict[int, int]:
        if not hasattr(self._local, "streams"):
            self._local.streams = {}
        return self._local.streams


def _base_ptr(tensor: torch.Tensor) -> int:
    """An address inside ``tensor``'s storage (also for empty tensors)."""
    return torch.Tensor.untyped_storage(tensor).data_ptr()

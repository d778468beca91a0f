"""taccl_py.testing.fake_cuda behaves like CuPy + NCCL where GPU code can go wrong."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taccl_py.testing.fake_cuda import CUDARuntimeError, FakeCuda, FakeHang, NcclError


def on_ranks(fc: FakeCuda, n: int, fn: Callable[[int, Any], Any]) -> list[Any]:
    """``fn(rank, comm)`` in one thread per rank (rank r on device r); results by rank."""
    cp, uid = fc.cupy, fc.cupy.cuda.nccl.get_unique_id()
    results: list[Any] = [None] * n

    def worker(rank: int) -> None:
        try:
            with cp.cuda.Device(rank):
                results[rank] = fn(rank, cp.cuda.nccl.NcclCommunicator(n, uid, rank))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            results[rank] = exc

    threads = [threading.Thread(target=worker, args=(r,), name=f"rank{r}") for r in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert not any(t.is_alive() for t in threads)
    return results


def raise_any(results: list[Any]) -> list[Any]:
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


class CudaTensor:
    """A stand-in for a CUDA tensor: host memory adopted as device memory, exported through
    the CUDA array interface."""

    def __init__(self, host: np.ndarray, stream: int | None = None) -> None:
        self.host, self.stream = host, stream

    @property
    def __cuda_array_interface__(self) -> dict:
        return {
            "version": 3,
            "data": (self.host.ctypes.data, False),
            "shape": self.host.shape,
            "strides": self.host.strides,
            "typestr": self.host.dtype.str,
            "stream": self.stream,
        }


class TorchStream:
    def __init__(self, ptr: int) -> None:
        self.cuda_stream = ptr

    def __cuda_stream__(self) -> tuple[int, int]:
        return 0, self.cuda_stream


# -- memory, devices, streams -----------------------------------------------------------------


def test_empty_is_seeded_garbage():
    a, b = (FakeCuda(seed=3).cupy.empty(4096, np.uint8).get() for _ in range(2))
    np.testing.assert_array_equal(a, b)
    cp = FakeCuda(seed=3).cupy
    first, second = cp.empty(4096, np.uint8).get(), cp.empty(4096, np.uint8).get()
    assert np.count_nonzero(first) > 4000 and not np.array_equal(first, second)
    assert not cp.zeros(16, np.int32).get().any()


def test_current_device_is_per_thread():
    fc = FakeCuda()
    cp, seen = fc.cupy, {}

    def worker() -> None:
        seen["device"] = cp.cuda.runtime.getDevice()
        seen["array"] = cp.empty(3).device.id

    with cp.cuda.Device(1):
        assert cp.cuda.runtime.getDevice() == 1 and cp.empty(3).device.id == 1
        t = threading.Thread(target=worker)
        t.start()
        t.join()
    assert seen == {"device": 0, "array": 0}
    assert cp.cuda.runtime.getDevice() == 0
    with pytest.raises(CUDARuntimeError, match="cudaErrorInvalidDevice"):
        cp.cuda.Device(4).use()


def test_current_stream_is_per_thread_and_per_device():
    cp = FakeCuda().cupy
    s, seen = cp.cuda.Stream(non_blocking=True), []
    with s:
        assert cp.cuda.get_current_stream() is s
        t = threading.Thread(target=lambda: seen.append(cp.cuda.get_current_stream()))
        t.start()
        t.join()
        with cp.cuda.Device(1):
            assert cp.cuda.get_current_stream() is cp.cuda.Stream.null
            with pytest.raises(RuntimeError, match=r"created on \(0\).*current device \(1\)"):
                s.__enter__()
    assert seen == [cp.cuda.Stream.null] and seen[0].ptr == 0
    assert cp.cuda.get_current_stream() is cp.cuda.Stream.null


def test_kernel_touching_another_device_raises():
    cp = FakeCuda().cupy
    with cp.cuda.Device(1):
        a = cp.zeros(4, np.int32)
    b = cp.zeros(4, np.int32)
    for launch in (
        lambda: a.fill(1),
        lambda: b.__setitem__(slice(None), a),
        lambda: cp.add(b, a, out=b),
        lambda: a.copy(),
    ):
        with pytest.raises(ValueError, match="array device = 1 while current = 0"):
            launch()
    np.testing.assert_array_equal(a.get(), 0)  # reading back needs no current device


def test_array_api_is_stream_ordered_and_strict():
    cp = FakeCuda().cupy
    a = cp.asarray(np.arange(12, dtype=np.int32)).reshape(3, 4)
    a[1] = 0
    a[:, 0] += 100
    a *= 2
    want = np.arange(12, dtype=np.int32).reshape(3, 4)
    want[1] = 0
    want[:, 0] += 100
    np.testing.assert_array_equal(cp.asnumpy(a), want * 2)
    np.testing.assert_array_equal(a.T.copy().ravel().get(), (want * 2).T.ravel())
    assert cp.concatenate([a[0], a[2]]).get().tolist() == (want * 2)[[0, 2]].ravel().tolist()
    assert bool(a[0, 1] == 2) and not bool(a[0, 1] != 2)  # a host sync, as in CuPy
    with pytest.raises(ValueError, match="ambiguous"):
        bool(a == 0)
    with pytest.raises(TypeError, match="Implicit conversion"):
        np.asarray(a)
    with pytest.raises(TypeError):
        cp.add(a, np.ones(4, np.int32))
    with pytest.raises(AttributeError):
        a.sum()


def _blocked_pair(fc: FakeCuda, body: Callable[[Any, threading.Event], Any]) -> Any:
    """Rank 0 runs ``body(comm, release)``; rank 1 sends [10, 20, 30, 40] once released."""
    cp, release = fc.cupy, threading.Event()

    def rank(r: int, comm: Any) -> Any:
        if r == 0:
            try:
                return body(comm, release)
            finally:
                release.set()
        release.wait(5)
        x = cp.asarray(np.array([10, 20, 30, 40], np.int32))
        comm.send(x.data.ptr, 4, cp.cuda.nccl.NCCL_INT32, 0, 0)
        cp.cuda.Device().synchronize()

    return raise_any(on_ranks(fc, 2, rank))[0]


def test_stream_order_and_event_order():
    fc = FakeCuda()
    cp = fc.cupy

    def body(comm: Any, release: threading.Event) -> None:
        s0, s1, s2 = (cp.cuda.Stream(non_blocking=True) for _ in range(3))
        buf, x, y = cp.empty(4, np.int32), cp.zeros(4, np.int32), cp.zeros(4, np.int32)
        with s0:
            comm.recv(buf.data.ptr, 4, cp.cuda.nccl.NCCL_INT32, 1, s0.ptr)
            buf += 1  # after the receive, in stream order
            done = s0.record()
        s1.wait_event(done)
        with s1:
            x[...] = buf  # after the event
        with s2:
            y.fill(7)  # not ordered: runs at once
        assert s2.done and not s0.done and not s1.done and not done.done
        release.set()
        assert x.get(stream=s1).tolist() == [11, 21, 31, 41]
        assert s0.done and done.done and y.get().tolist() == [7] * 4

    _blocked_pair(fc, body)


# -- NCCL -------------------------------------------------------------------------------------


def test_p2p_matches_fifo_across_groups():
    fc = FakeCuda()
    cp, nccl = fc.cupy, fc.cupy.cuda.nccl
    sizes = (3, 5, 2)  # three messages per ordered pair, two groups, different sizes

    def payload(src: int, dst: int, k: int) -> np.ndarray:
        return np.arange(sizes[k], dtype=np.int64) + 1000 * src + 100 * dst + 10 * k

    def rank(r: int, comm: Any) -> dict:
        peers, got = [p for p in range(3) if p != r], {}
        for group in ((0, 1), (2,)):
            nccl.groupStart()
            for k in group:
                for p in peers:
                    got[p, k] = cp.empty(sizes[k], np.int64)
                    comm.recv(got[p, k].data.ptr, sizes[k], nccl.NCCL_INT64, p, 0)
                    send = cp.asarray(payload(r, p, k))
                    comm.send(send.data.ptr, sizes[k], nccl.NCCL_INT64, p, 0)
            nccl.groupEnd()
        return {key: a.get() for key, a in got.items()}

    for r, got in enumerate(raise_any(on_ranks(fc, 3, rank))):
        for (p, k), data in got.items():
            np.testing.assert_array_equal(data, payload(p, r, k))
    assert sum(c.kind == "send" for c in fc.log) == 18


@settings(max_examples=20)
@given(
    st.lists(
        st.lists(
            st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 6)),
            min_size=1,
            max_size=5,
        ),
        min_size=1,
        max_size=4,
    )
)
def test_p2p_random_rounds_arrive_exactly(rounds):
    """Each round is one group per rank; messages between a pair match in posting order."""
    fc = FakeCuda(devices=3, hang_timeout=5)
    cp, nccl = fc.cupy, fc.cupy.cuda.nccl
    msgs = [(i, j, s, d, n) for i, rnd in enumerate(rounds) for j, (s, d, n) in enumerate(rnd)]

    def payload(i: int, j: int, n: int) -> np.ndarray:
        return np.arange(n, dtype=np.int32) * 7 + 100 * i + 10 * j

    def rank(r: int, comm: Any) -> dict:
        got = {}
        for i in range(len(rounds)):
            nccl.groupStart()
            for _, j, s, d, n in (m for m in msgs if m[0] == i):
                if d == r:
                    got[i, j] = cp.empty(n, np.int32)
                    comm.recv(got[i, j].data.ptr, n, nccl.NCCL_INT32, s, 0)
                if s == r:
                    comm.send(cp.asarray(payload(i, j, n)).data.ptr, n, nccl.NCCL_INT32, d, 0)
            nccl.groupEnd()
        return {key: a.get() for key, a in got.items()}

    results = raise_any(on_ranks(fc, 3, rank))
    for i, j, _, d, n in msgs:
        np.testing.assert_array_equal(results[d][i, j], payload(i, j, n))


def test_size_mismatch_is_an_async_error():
    fc = FakeCuda()
    cp, nccl = fc.cupy, fc.cupy.cuda.nccl

    def rank(r: int, comm: Any) -> None:
        buf = cp.zeros(8, np.float32)
        if r == 0:
            comm.send(buf.data.ptr, 8, nccl.NCCL_FLOAT32, 1, 0)
            cp.cuda.get_current_stream().synchronize()
            return
        comm.recv(buf.data.ptr, 4, nccl.NCCL_FLOAT32, 0, 0)
        with pytest.raises(NcclError, match="truncated") as err:
            cp.cuda.get_current_stream().synchronize()
        assert err.value.status == 5
        with pytest.raises(NcclError, match="recv of 16 B from rank 0 .* but it sent 32 B"):
            comm.check_async_error()

    raise_any(on_ranks(fc, 2, rank))


def test_duplicate_gpu_is_refused():
    fc = FakeCuda(hang_timeout=2)
    cp = fc.cupy
    uid, errors = cp.cuda.nccl.get_unique_id(), []

    def worker(rank: int) -> None:  # both ranks stay on device 0
        try:
            cp.cuda.nccl.NcclCommunicator(2, uid, rank)
        except NcclError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(errors) == 2
    assert all("Duplicate GPU detected" in str(e) and "CUDA device 0" in str(e) for e in errors)


def test_arguments_are_checked_like_cython_and_nccl():
    fc = FakeCuda()
    cp, nccl = fc.cupy, fc.cupy.cuda.nccl
    comm = nccl.NcclCommunicator(1, nccl.get_unique_id(), 0)
    buf = cp.zeros(16, np.float32)
    ptr, i32 = buf.data.ptr, nccl.NCCL_INT32
    with pytest.raises(TypeError):
        comm.send(float(ptr), 4, i32, 0, 0)
    with pytest.raises(TypeError):
        comm.send(ptr, True, i32, 0, 0)
    with pytest.raises(OverflowError):
        comm.send(ptr, -1, i32, 0, 0)
    with pytest.raises(NcclError, match="invalid data type 42"):
        comm.send(ptr, 4, 42, 0, 0)
    with pytest.raises(NcclError, match="invalid reduction"):
        comm.allReduce(ptr, ptr, 4, i32, 7, 0)
    with pytest.raises(NcclError, match="peer 1 out of range"):
        comm.send(ptr, 4, i32, 1, 0)
    with pytest.raises(NcclError, match="not inside one allocation"):
        comm.send(ptr + 8, 16, i32, 0, 0)
    with cp.cuda.Device(1):
        other, stream = cp.zeros(4, np.float32), cp.cuda.Stream()
    with pytest.raises(NcclError, match="buff on device 1, communicator on device 0"):
        comm.send(other.data.ptr, 4, i32, 0, 0)
    with pytest.raises(NcclError, match="stream .* on device 1"):
        comm.send(ptr, 4, i32, 0, stream.ptr)
    with pytest.raises(TypeError, match="commId"):
        nccl.NcclCommunicator(1, list(nccl.get_unique_id()), 0)
    assert [c.kind for c in fc.log] == ["kernel", "kernel"]  # the zeros; no NCCL call posted


@pytest.mark.parametrize("dtype,code", [(np.int32, "NCCL_INT32"), (np.float64, "NCCL_FLOAT64")])
def test_collectives_are_exact_on_four_ranks(dtype, code):
    fc = FakeCuda()
    cp, nccl = fc.cupy, fc.cupy.cuda.nccl
    dt, n, c = getattr(nccl, code), 4, 6
    inputs = [np.arange(n * c, dtype=dtype) * (r + 1) - 5 * r for r in range(n)]

    def rank(r: int, comm: Any) -> dict:
        x = cp.asarray(inputs[r])
        out = {
            k: cp.zeros(size, dtype)
            for k, size in (
                ("sum", n * c),
                ("max", n * c),
                ("gather", n * n * c),
                ("scatter", c),
                ("bcast", n * c),
                ("reduce", n * c),
            )
        }
        p = x.data.ptr
        comm.allReduce(p, out["sum"].data.ptr, n * c, dt, nccl.NCCL_SUM, 0)
        comm.allReduce(p, out["max"].data.ptr, n * c, dt, nccl.NCCL_MAX, 0)
        comm.allGather(p, out["gather"].data.ptr, n * c, dt, 0)
        comm.reduceScatter(p, out["scatter"].data.ptr, c, dt, nccl.NCCL_SUM, 0)
        comm.broadcast(p, out["bcast"].data.ptr, n * c, dt, 1, 0)
        comm.reduce(p, out["reduce"].data.ptr, n * c, dt, nccl.NCCL_PROD, 2, 0)
        return {k: v.get() for k, v in out.items()}

    results = raise_any(on_ranks(fc, n, rank))
    total = sum(inputs)
    for r, got in enumerate(results):
        np.testing.assert_array_equal(got["sum"], total)
        np.testing.assert_array_equal(got["max"], np.maximum.reduce(inputs))
        np.testing.assert_array_equal(got["gather"], np.concatenate(inputs))
        np.testing.assert_array_equal(got["scatter"], total[r * c : (r + 1) * c])
        np.testing.assert_array_equal(got["bcast"], inputs[1])
        want = np.multiply.reduce(inputs) if r == 2 else np.zeros(n * c)
        np.testing.assert_array_equal(got["reduce"], want)


def test_dead_rank_makes_synchronize_raise_fakehang():
    fc = FakeCuda(hang_timeout=0.5)
    cp = fc.cupy

    def rank(r: int, comm: Any) -> float | None:
        if r == 1:
            return None  # joins, then dies
        buf = cp.empty(4, np.int32)
        comm.recv(buf.data.ptr, 4, cp.cuda.nccl.NCCL_INT32, 1, 0)
        start = time.monotonic()
        with pytest.raises(
            FakeHang,
            match=r"device 0 stream 0x0: recv of 16 B from rank 1 "
            r"of comm \w+ never posted",
        ):
            cp.cuda.get_current_stream().synchronize()
        return time.monotonic() - start

    waited = raise_any(on_ranks(fc, 2, rank))[0]
    assert 0.4 < waited < 3


def test_missing_rank_at_init_raises_fakehang():
    cp = FakeCuda(hang_timeout=0.3).cupy
    with pytest.raises(FakeHang, match=r"ranks \[1\] never joined"):
        cp.cuda.nccl.NcclCommunicator(2, cp.cuda.nccl.get_unique_id(), 0)


def test_abort_unblocks_the_stream():
    fc = FakeCuda(hang_timeout=2)
    cp, nccl = fc.cupy, fc.cupy.cuda.nccl

    def rank(r: int, comm: Any) -> list | None:
        if r == 1:
            return None
        buf, after = cp.empty(4, np.int32), cp.zeros(2, np.int32)
        s = cp.cuda.Stream()
        comm.recv(buf.data.ptr, 4, nccl.NCCL_INT32, 1, s.ptr)
        with s:
            after.fill(5)
        assert not s.done
        comm.abort()
        s.synchronize()
        with pytest.raises(NcclError, match="communicator aborted"):
            comm.send(buf.data.ptr, 4, nccl.NCCL_INT32, 1, s.ptr)
        return after.get().tolist()

    assert raise_any(on_ranks(fc, 2, rank))[0] == [5, 5]


# -- interoperability -------------------------------------------------------------------------


def test_cuda_array_interface_round_trip_with_strides():
    fc = FakeCuda()
    cp = fc.cupy
    host = np.arange(24, dtype=np.int32).reshape(4, 6)
    fc.adopt(host, 2)
    assert fc.device_of(host.ctypes.data + 40) == 2 and fc.device_of(12345) is None
    view = cp.asarray(CudaTensor(host[:, ::2]))
    assert view.device.id == 2 and view.shape == (4, 3) and view.strides == (24, 8)
    np.testing.assert_array_equal(view.get(), host[:, ::2])
    with cp.cuda.Device(2):
        view[...] = -1  # writes through: it is the same memory
        again = cp.asarray(view.T)
        cai = again.__cuda_array_interface__
        assert cai["data"][0] == view.data.ptr and cai["strides"] == (8, 24)
        assert cp.asarray(CudaTensor(np.empty(0), stream=None)).size == 0
        cp.cuda.Device().synchronize()
    assert (host[:, ::2] == -1).all() and (host[:, 1::2] >= 0).all()
    with pytest.raises(ValueError, match="not inside one fake device allocation"):
        cp.asarray(CudaTensor(np.zeros(3)))


def test_array_interface_stream_is_synchronised():
    fc = FakeCuda(hang_timeout=0.3)
    cp = fc.cupy

    def body(comm: Any, release: threading.Event) -> None:
        s = cp.cuda.Stream()
        host = np.zeros(4, np.int32)
        fc.adopt(host, 0)
        comm.recv(host.ctypes.data, 4, cp.cuda.nccl.NCCL_INT32, 1, s.ptr)
        with pytest.raises(FakeHang):  # CuPy synchronises the producer's stream
            cp.asarray(CudaTensor(host, stream=s.ptr))
        release.set()
        assert cp.asarray(CudaTensor(host, stream=s.ptr)).get().tolist() == [10, 20, 30, 40]

    _blocked_pair(fc, body)


def test_external_streams():
    fc = FakeCuda()
    cp = fc.cupy
    ptr = fc.external_stream(1)
    with cp.cuda.Device(1):
        s = cp.cuda.Stream.from_external(TorchStream(ptr))
        assert (s.ptr, s.device_id) == (ptr, 1)
        with s:
            assert cp.cuda.get_current_stream() is s
            a = cp.ones(3, np.int8)
        assert a.get(stream=s).tolist() == [1, 1, 1]
        with pytest.warns(DeprecationWarning):
            assert cp.cuda.ExternalStream(ptr) == s
        with pytest.warns(DeprecationWarning), pytest.raises(CUDARuntimeError):
            cp.cuda.ExternalStream(ptr + 1)
    with pytest.raises(RuntimeError, match=r"created on \(1\).*current device \(0\)"):
        cp.cuda.Stream.from_external(TorchStream(ptr))
    with pytest.raises(AttributeError, match="CUDA stream protocol"):
        cp.cuda.Stream.from_external(ptr)
    assert any(c.kind == "kernel" and c.stream == ptr and c.device == 1 for c in fc.log)


def test_installed_puts_the_fake_in_sys_modules_and_restores():
    fc = FakeCuda()
    before = sys.modules.get("cupy")
    with fc.installed():
        import cupy
        from cupy.cuda import nccl

        assert cupy is fc.cupy and nccl.get_version() == 22304 and cupy.cuda.is_available()
    assert sys.modules.get("cupy") is before

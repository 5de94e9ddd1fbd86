"""Device arrays for the tests that need a GPU (scripts/gpu_check.sh runs them with
`-k "real_gpu and not emulation"`). The `real_gpu` fixture gives one framework's arrays: torch
and CuPy with the host emulation off, skipped with the reason where hauler's GPU path, the
framework or a device is missing; and "emulation", host arrays behind `__cuda_array_interface__`
with the host emulation of the kernels on, so the same test code runs on every machine."""
from __future__ import annotations

import numpy as np
import pytest


class _Frame:
    """Each framework gives: bytes(host) a 1-D uint8 device copy; view(dev_u8, dtype, shape) the
    same memory as other elements; host(dev) its bytes once the device is idle; stream() a new
    stream and its cudaStream_t handle."""
    name = ""

    def full(self, n: int, fill: int):
        return self.bytes(np.full(n, fill, np.uint8))


class _Torch(_Frame):
    name = "torch"

    def __init__(self):
        import torch
        self.mod = torch

    def bytes(self, host):
        d = self.mod.from_numpy(np.ascontiguousarray(host).view(np.uint8).ravel()).cuda()
        self.mod.cuda.synchronize()  # the copy is done before work on any other stream reads it
        return d

    def view(self, dev_u8, dtype, shape):
        tdt = self.mod.from_numpy(np.empty(0, dtype)).dtype
        return dev_u8.view(tdt).reshape(shape)

    def host(self, dev):
        self.mod.cuda.synchronize()
        return dev.contiguous().cpu().view(self.mod.uint8).numpy().ravel()

    def stream(self):
        s = self.mod.cuda.Stream()
        return s, s.cuda_stream


class _CuPy(_Frame):
    name = "cupy"

    def __init__(self):
        import cupy
        self.mod = cupy

    def bytes(self, host):
        d = self.mod.asarray(np.ascontiguousarray(host).view(np.uint8).ravel())
        self.mod.cuda.Device().synchronize()  # the copy is done before work on any other stream reads it
        return d

    def view(self, dev_u8, dtype, shape):
        return dev_u8.view(dtype).reshape(shape)

    def host(self, dev):
        self.mod.cuda.Device().synchronize()
        return self.mod.asnumpy(self.mod.ascontiguousarray(dev)).view(np.uint8).ravel()

    def stream(self):
        s = self.mod.cuda.Stream(non_blocking=True)
        return s, s.ptr


class _EmuArray(np.ndarray):
    """A numpy array that says it is device memory (slices and views keep saying so)."""

    @property
    def __cuda_array_interface__(self):
        strides = None if self.flags.c_contiguous else self.strides  # as CuPy and torch say it
        return {"version": 3, "shape": self.shape, "typestr": self.dtype.str, "strides": strides,
                "data": (self.__array_interface__["data"][0], False), "stream": None}


class _NoStream:
    def synchronize(self):
        pass


class _Emulation(_Frame):
    name = "emulation"

    def bytes(self, host):
        return np.array(np.ascontiguousarray(host).view(np.uint8).ravel()).view(_EmuArray)

    def view(self, dev_u8, dtype, shape):
        return dev_u8.view(dtype).reshape(shape)

    def host(self, dev):
        return np.ascontiguousarray(np.asarray(dev)).view(np.uint8).ravel()

    def stream(self):
        return _NoStream(), 0


@pytest.fixture(params=["torch", "cupy", "emulation"])
def real_gpu(request):
    import hauler
    from hauler import _core

    before = _core._gpu_emulation()
    _core._use_gpu_emulation(request.param == "emulation")
    try:
        if request.param == "emulation":
            yield _Emulation()
            return
        if not hauler.cuda_available():
            pytest.skip("no GPU here: " + hauler.cuda_status())
        mod = pytest.importorskip(request.param, reason=f"{request.param} is not installed")
        if request.param == "torch":
            if not mod.cuda.is_available():
                pytest.skip("torch sees no CUDA device")
            yield _Torch()
        else:
            yield _CuPy()
    finally:
        _core._use_gpu_emulation(before)

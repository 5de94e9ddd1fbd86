"""Host memory presented as device memory, so the device-pointer code paths run without a GPU
(the mpi4py habit): with no GPU they must refuse with NoDevice, under the GPU emulation they run."""
from __future__ import annotations

import numpy as np


class FakeCudaArray:
    """A host numpy array exposed through the CUDA array interface v3."""

    def __init__(self, host: np.ndarray, readonly: bool = False, strides=None):
        self.host = host
        self.__cuda_array_interface__ = {
            "version": 3,
            "shape": host.shape,
            "typestr": host.dtype.str,
            "data": (host.__array_interface__["data"][0], readonly),
            "strides": strides,
            "stream": None,
        }


class FakeDLPackArray:
    """A host numpy array that says it lives on CUDA device 0 through DLPack."""

    def __init__(self, host: np.ndarray):
        self.host = host

    def __dlpack_device__(self):
        return (2, 0)  # kDLCUDA

    def __dlpack__(self, stream=None):
        return self.host.__dlpack__()

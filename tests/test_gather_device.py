"""The GPU gather without a GPU: device outputs are FakeCudaArrays (`__cuda_array_interface__`
over host memory) and the GPU library is replaced by the host emulation of the kernel grid (the
same gather_index.cuh code the GPU runs). Without the emulation the calls fail with NoDevice."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hauler
from hauler import _core
from hauler.gather import FeatureStore
from support import examples



class FakeCudaArray:
    def __init__(self, host: np.ndarray, readonly: bool = False):
        self.host = host
        self.__cuda_array_interface__ = {"version": 3, "shape": host.shape, "typestr": host.dtype.str,
                                         "data": (host.__array_interface__["data"][0], readonly),
                                         "strides": None, "stream": None}


@settings(max_examples=examples(80), suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(1, 100), st.sampled_from([(1,), (3,), (8,), (33,), (64,), (300,)]),
       st.sampled_from([np.uint8, np.float16, np.float32, np.float64]), st.integers(0, 31), st.integers(0, 31),
       st.integers(0, 200), st.sampled_from([np.int32, np.int64]), st.integers(0, 2**32 - 1))
def test_emulated_gpu_gather_equals_numpy(gpu_emulation, rows, row_shape, dtype, toff, ooff, n, width, seed):
    rng = np.random.default_rng(seed)
    itemsize = np.dtype(dtype).itemsize
    nb = rows * int(np.prod(row_shape)) * itemsize
    raw = rng.integers(0, 256, nb + toff * itemsize + 8, dtype=np.uint8)
    table = raw[toff * itemsize:toff * itemsize + nb].view(dtype).reshape((rows,) + row_shape)
    idx = rng.integers(0, rows, n).astype(width)
    expect = table[idx]
    fs = FeatureStore({"t": table}).pin()
    assert fs.pinned
    oraw = np.full(expect.nbytes + ooff * itemsize + 64, 0xA5, np.uint8)
    out = oraw[ooff * itemsize:ooff * itemsize + expect.nbytes].view(dtype).reshape(expect.shape)
    dev = FakeCudaArray(out)
    assert fs.gather("t", idx, out=dev, gpu_blocks=int(rng.integers(0, 3))) is dev
    assert out.tobytes() == expect.tobytes()
    assert (oraw[:ooff * itemsize] == 0xA5).all() and (oraw[ooff * itemsize + expect.nbytes:] == 0xA5).all()
    word, group = _core.gpu_gather_choice(table.__array_interface__["data"][0], table[0].nbytes,
                                          table.strides[0], out.__array_interface__["data"][0])
    assert word in (1, 2, 4, 8, 16) and 1 <= group <= 32
    fs.unpin()


def test_emulated_checks_before_launch(gpu_emulation):
    fs = FeatureStore({"t": np.arange(20.0).reshape(10, 2)})
    out = np.full((2, 2), -1.0)
    with pytest.raises(hauler.InvalidArgument, match="not pinned"):
        fs.gather("t", [1, 2], out=FakeCudaArray(out))
    fs.pin()
    with pytest.raises(hauler.OutOfRange, match=r"index\[1\] = 10 is out of range"):
        fs.gather("t", [1, 10], out=FakeCudaArray(out))
    assert (out == -1.0).all()
    with pytest.raises(hauler.ReadOnlyBuffer):
        fs.gather("t", [1, 2], out=FakeCudaArray(out, readonly=True))
    with pytest.raises(hauler.BufferTooSmall, match="too small for 3 rows"):
        fs.gather("t", [1, 2, 3], out=FakeCudaArray(out))
    # tables added after pin() are pinned too
    fs.add("u", np.ones((4, 2)))
    fs.gather("u", [3, 0], out=FakeCudaArray(out))
    assert (out == 1.0).all()


def test_device_gather_without_a_gpu_is_no_device(no_gpu):
    fs = FeatureStore({"t": np.zeros((4, 2))})
    with pytest.raises(hauler.NoDevice, match="needs a GPU"):
        fs.gather("t", [0], out=FakeCudaArray(np.zeros((1, 2))))
    with pytest.raises(hauler.NoDevice):
        _core.host_register(fs.table("t").__array_interface__["data"][0], 64, True)

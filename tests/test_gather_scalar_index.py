"""A scalar index (an int, a 0-d array or tensor) drops the row dimension, as table[5] does."""
import numpy as np
import pytest

from hauler.gather import FeatureStore


@pytest.fixture(params=["memory", "mmap", "file"])
def store(request, tmp_path):
    x = np.arange(40, dtype=np.float32).reshape(10, 4)
    fs = FeatureStore()
    if request.param == "memory":
        fs.add("x", x.copy())
    else:
        np.save(tmp_path / "x.npy", x)
        fs.add("x", tmp_path / "x.npy", writable=True, **({"backend": "file"} if request.param == "file" else {}))
    yield fs, x
    fs.close()


@pytest.mark.parametrize("index", [5, np.int64(5), np.array(5), np.array(5, np.int32)],
                         ids=["int", "np.int64", "0-d int64", "0-d int32"])
def test_numpy_scalar_index(store, index):
    fs, x = store
    row = fs.gather("x", index)
    assert row.shape == x[5].shape == (4,) and (row == x[5]).all()
    out = np.empty(4, np.float32)
    assert fs.gather("x", index, out=out) is out and (out == x[5]).all()
    with pytest.raises(ValueError, match=r"out has shape \(1, 4\), the gather needs \(4,\)"):
        fs.gather("x", index, out=np.empty((1, 4), np.float32))
    fs.scatter("x", index, np.full(4, -1, np.float32))
    assert (fs.gather("x", [4, 5, 6]) == np.stack([x[4], np.full(4, -1), x[6]])).all()
    with pytest.raises(ValueError, match=r"src has shape \(1, 4\), the scatter needs \(4,\)"):
        fs.scatter("x", index, np.zeros((1, 4), np.float32))


def test_torch_scalar_index():
    torch = pytest.importorskip("torch")
    x = torch.randn(10, 128)
    fs = FeatureStore({"x": x})
    for index in (5, torch.tensor(5), torch.tensor(5, dtype=torch.int32)):
        row = fs.gather("x", index)
        assert row.shape == x[5].shape == (128,) and torch.equal(row, x[5])
    assert fs.gather("x", torch.tensor([5])).shape == (1, 128)   # a 1-element index keeps its dimension
    with pytest.raises(IndexError, match="10"):
        fs.gather("x", 10)


def test_scalar_index_out_of_range_names_it(store):
    fs, _ = store
    with pytest.raises(IndexError, match="10"):
        fs.gather("x", 10)
    with pytest.raises(IndexError, match="-1"):
        fs.gather("x", np.array(-1))

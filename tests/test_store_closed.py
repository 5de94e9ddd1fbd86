"""A closed TensorStore or FeatureStore says so (hauler.Closed, naming the call) on every method."""
import inspect
import pickle

import numpy as np
import pytest

import hauler
from hauler.gather import FeatureStore
from hauler.io import TensorStore

TENSORSTORE_CALLS = {
    "put": lambda s: s.put("b", np.arange(3)),
    "get": lambda s: s.get("a"),
    "delete": lambda s: s.delete("a"),
    "discard": lambda s: s.discard("a"),
    "discard_later": lambda s: s.discard_later("a"),
    "keys": lambda s: s.keys(),
    "pin": lambda s: s.pin("a"),
    "unpin": lambda s: s.unpin("a"),
    "__contains__": lambda s: "a" in s,
    "__len__": lambda s: len(s),
    "__enter__": lambda s: s.__enter__(),
}

FEATURESTORE_CALLS = {
    "add": lambda fs: fs.add("z", np.zeros((2, 2))),
    "remove": lambda fs: fs.remove("x"),
    "share": lambda fs: fs.share(),
    "names": lambda fs: fs.names(),
    "table": lambda fs: fs.table("x"),
    "shape": lambda fs: fs.shape("x"),
    "dtype": lambda fs: fs.dtype("x"),
    "kind": lambda fs: fs.kind("x"),
    "path": lambda fs: fs.path("x"),
    "gather": lambda fs: fs.gather("x", [0]),
    "scatter": lambda fs: fs.scatter("x", [0], np.zeros((1, 2))),
    "pin": lambda fs: fs.pin(),
    "unpin": lambda fs: fs.unpin(),
    "__contains__": lambda fs: "x" in fs,
    "__len__": lambda fs: len(fs),
    "__enter__": lambda fs: fs.__enter__(),
    "__getstate__": lambda fs: pickle.dumps(fs),
}


def public_methods(cls):
    """Methods a user calls: public names and the protocol dunders the class defines itself."""
    names = set()
    for name, member in inspect.getmembers(cls):
        if isinstance(inspect.getattr_static(cls, name), property) or not callable(member):
            continue
        if not name.startswith("_") or name in ("__contains__", "__len__", "__enter__", "__getstate__",
                                               "__iter__", "__getitem__"):
            if name.startswith("__") and name not in vars(cls):
                continue
            names.add(name)
    return names - {"close", "__exit__"}


@pytest.mark.parametrize("cls,calls", [(TensorStore, TENSORSTORE_CALLS), (FeatureStore, FEATURESTORE_CALLS)],
                         ids=["TensorStore", "FeatureStore"])
def test_every_method_is_tested_here(cls, calls):
    missing = sorted(public_methods(cls) - set(calls))
    assert not missing, f"{cls.__name__} methods without a closed-store check here: {missing}"


@pytest.fixture
def closed_tensorstore(tmp_path):
    s = TensorStore(tmp_path / "s")
    s.put("a", np.arange(4)).result()
    s.close()
    return s


@pytest.mark.parametrize("method", sorted(TENSORSTORE_CALLS))
def test_closed_tensorstore(closed_tensorstore, method, tmp_path):
    with pytest.raises(hauler.Closed, match=rf"TensorStore '.*s' is closed: {method}\(\) needs an open store"):
        TENSORSTORE_CALLS[method](closed_tensorstore)
    assert isinstance(hauler.Closed("x"), ValueError)
    closed_tensorstore.close()   # closing again is allowed
    with TensorStore(tmp_path / "s") as again:   # and the entry is still there for the next store
        assert (again.get("a").result() == np.arange(4)).all()


@pytest.mark.parametrize("method", sorted(FEATURESTORE_CALLS))
def test_closed_featurestore(method):
    fs = FeatureStore({"x": np.zeros((3, 2))})
    fs.close()
    with pytest.raises(hauler.Closed, match=rf"this FeatureStore is closed: {method}\(\) needs an open store"):
        FEATURESTORE_CALLS[method](fs)
    fs.close()
    assert repr(fs) == "FeatureStore(closed)"


def test_discards_pending_at_close_still_run(tmp_path):
    s = TensorStore(tmp_path / "s")
    s.put("a", np.arange(4)).result()
    fut = s.discard_later("a")
    s.close()
    assert fut.result() is None
    with TensorStore(tmp_path / "s") as again:
        assert again.keys() == []


def test_an_open_store_works_as_before(tmp_path):
    with TensorStore(tmp_path / "s") as s:
        s.put("a", np.arange(4)).result()
        assert "a" in s and len(s) == 1 and s.keys() == ["a"]
    with FeatureStore({"x": np.arange(6.0).reshape(3, 2)}) as fs:
        assert "x" in fs and len(fs) == 1 and fs.gather("x", [2])[0, 1] == 5.0

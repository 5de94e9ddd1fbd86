"""hauler.offload's CUDA path (SSDTrain's) through the same code as on a GPU, with the device
steps on tests/support/offload_device.py's host double: asynchronous copies on one-thread
"streams", events as futures. Both routes: pinned host bounce buffers, and device memory to the
files in place (cuFile's route). Real hardware runs scripts/gpu_check.py's offload section."""
from __future__ import annotations

import gc
import os
import warnings

import pytest

torch = pytest.importorskip("torch")

from hauler import offload as offload_mod  # noqa: E402
from hauler.offload import OffloadPathNotice, offload  # noqa: E402
from support.offload_device import emulated_device, train_step as step  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_announcements(monkeypatch):
    monkeypatch.setattr(offload_mod, "_announced", set())


def mlp(seed=0, width=64, depth=8):
    torch.manual_seed(seed)
    return torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.GELU())
                                 for _ in range(depth)])


@pytest.mark.parametrize("direct", [False, True], ids=["bounce", "direct"])
@pytest.mark.parametrize("wait", [False, True])
def test_gradients_bit_identical_through_the_device_path(tmp_path, direct, wait):
    model, x = mlp(), torch.randn(256, 64)
    ref = step(model, x)
    with emulated_device(direct) as dev:
        off = offload(tmp_path / "acts", min_bytes=1024, keep_last=0 if wait else 2)
        with pytest.warns(OffloadPathNotice, match="cuFile" if direct else "pinned host bounce buffers"):
            got = step(model, x, off, wait)
        assert all(torch.equal(a, b) for a, b in zip(ref, got))
        s = off.stats
        assert s["path"] == ("cufile" if direct else "bounce")
        assert s["saved"] == 17 and s["failed_writes"] == 0
        # without waiting, a tensor autograd frees before its write starts is never written
        assert s["bytes_written"] % (256 * 64 * 4) == 0 and s["bytes_written"] <= 17 * 256 * 64 * 4
        if wait:
            assert s["bytes_written"] == 17 * 256 * 64 * 4   # everything was on disk and out of memory: every tensor came back by a read
            assert s["bytes_read"] == s["bytes_written"] and s["in_memory_hits"] == 0
            assert dev.calls["consume"] == 17
            if direct:
                assert dev.calls["empty"] == 17 and dev.calls["to_host"] == 0
            else:
                assert dev.calls["to_host"] == 17 and dev.calls["host_buffer"] == 17
        off.close()


def test_device_memory_goes_once_copied_and_host_copies_once_written(tmp_path):
    model, x = mlp(), torch.randn(256, 64)
    with emulated_device():
        off = offload(tmp_path / "acts", min_bytes=1024, keep_last=3)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", OffloadPathNotice)
            with off:
                loss = model(x).square().mean()
        off.wait_writes()
        hs = [r() for r in off._handles]
        assert [h.tensor is not None for h in hs] == [False] * 14 + [True] * 3   # the last 3 stay
        assert all(h.host is None and h.written for h in hs)
        assert all(h.copied for h in hs)
        loss.backward()
        assert off.stats["in_memory_hits"] == 3 and off.stats["bytes_read"] == 14 * 256 * 64 * 4
        off.close()


def test_parameters_small_and_shared_tensors_on_the_device_path(tmp_path):
    a = torch.randn(256, 256, requires_grad=True)
    w = torch.nn.Parameter(torch.randn(256, 256))
    with emulated_device() as dev, warnings.catch_warnings():
        warnings.simplefilter("ignore", OffloadPathNotice)
        off = offload(tmp_path / "acts", min_bytes=1024)
        with off:
            h = a * 2
            y = (h * h).sum() + torch.sin(h).sum() + (h @ w).sum()   # h saved three times, w once
            small = torch.randn(4, requires_grad=True)
            z = (small * small).sum()
        off.wait_writes()
        assert off.stats["shared"] >= 2 and off.stats["skipped_param"] >= 1 and off.stats["skipped_small"] >= 1
        assert dev.calls["to_host"] == off.stats["saved"]
        (y + z).backward()
        got = a.grad.clone()
        a.grad = None
        h2 = a * 2
        ((h2 * h2).sum() + torch.sin(h2).sum() + (h2 @ w).sum()).backward()
        assert torch.equal(got, a.grad)
        del y, z, h
        gc.collect()
        off.close()


def test_budget_keeps_what_fits_from_the_second_step_on(tmp_path):
    model, x = mlp(), torch.randn(256, 64)
    ref = step(model, x)
    each = 256 * 64 * 4
    with emulated_device(), warnings.catch_warnings():
        warnings.simplefilter("ignore", OffloadPathNotice)
        off = offload(tmp_path / "acts", min_bytes=1024, budget=10 * each, keep_last=0)
        got = step(model, x, off, wait=True)          # the first step: sizes unknown, all offloaded
        assert off.stats["saved"] == 17 and off.stats["kept_budget"] == 0
        assert all(torch.equal(a, b) for a, b in zip(ref, got))
        got = step(model, x, off, wait=True)          # then: 7 tensors' worth goes, 10 stay
        assert off.stats["saved"] == 17 + 7 and off.stats["kept_budget"] == 10
        assert off.stats["bytes_written"] == 24 * each
        assert all(torch.equal(a, b) for a, b in zip(ref, got))
        off.close()


def test_budget_refuses_bad_values(tmp_path):
    from hauler.errors import InvalidArgument
    with pytest.raises(InvalidArgument, match="budget must be >= 0, got -1"):
        offload(tmp_path / "a", budget=-1)
    with pytest.raises(InvalidArgument, match="on_error must be 'raise' or 'keep', got 'ignore'"):
        offload(tmp_path / "a", on_error="ignore")
    assert not (tmp_path / "a").exists()


def test_path_announced_once_per_process(tmp_path):
    model, x = mlp(), torch.randn(256, 64)
    with emulated_device():
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            offs = [offload(tmp_path / "acts", min_bytes=1024) for _ in range(2)]
            for off in offs:
                step(model, x, off)
        notes = [w for w in seen if issubclass(w.category, OffloadPathNotice)]
        assert len(notes) == 1 and "emulation activations go to NVMe through pinned host bounce" in str(notes[0].message)
        for off in offs:
            assert off.stats["path"] == "bounce"
            off.close()


def test_direct_route_files_removed_as_autograd_frees(tmp_path):
    model, x = mlp(), torch.randn(256, 64)
    with emulated_device(direct=True), warnings.catch_warnings():
        warnings.simplefilter("ignore", OffloadPathNotice)
        off = offload(tmp_path / "acts", min_bytes=1024, keep_last=0)
        d = os.path.join(off.directory, "direct")
        with off:
            loss = model(x).square().mean()
        off.wait_writes()
        assert len(os.listdir(d)) == 17
        loss.backward()
        del loss
        gc.collect()
        off._deleter.flush()
        assert os.listdir(d) == []
        off.close()
        assert not os.path.exists(off.directory)


def test_real_gpu_offload_gradients_bit_identical(tmp_path, monkeypatch):
    """On a GPU (scripts/gpu_check.py runs it): CUDA activations through the real device steps."""
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        torch.manual_seed(0)
        model = torch.nn.TransformerEncoderLayer(256, 4, 1024, dropout=0.0, batch_first=True).cuda()
        x = torch.randn(8, 128, 256, device="cuda")
        ref, again = step(model, x), step(model, x)
        if not all(torch.equal(a, b) for a, b in zip(ref, again)):
            pytest.skip("two plain steps differ on this GPU (a nondeterministic kernel)")
        off = offload(tmp_path / "acts", min_bytes=64 << 10, keep_last=0)
        with pytest.warns(OffloadPathNotice, match="cuda activations go to NVMe"):
            got = step(model, x, off, wait=True)
        assert all(torch.equal(a, b) for a, b in zip(ref, got))
        s = off.stats
        assert s["path"] in ("cufile", "bounce") and s["failed_writes"] == 0
        assert s["bytes_read"] == s["bytes_written"] > 0 and s["in_memory_hits"] == 0
        got = step(model, x, off)            # without waiting: reads race the writes
        assert all(torch.equal(a, b) for a, b in zip(ref, got))
        off.close()
    finally:
        torch.use_deterministic_algorithms(False)


@pytest.mark.parametrize("direct", [False, True], ids=["bounce", "direct"])
def test_strided_saved_tensors(tmp_path, direct):
    """Transposed and sliced views (attention saves such) come back with their values."""
    a = torch.randn(512, 384, requires_grad=True)
    def f():
        h = (a * 2).t()[:, ::2]              # a strided view, saved by sin and by the matmul
        return (torch.sin(h).sum() + (h @ torch.ones(256, 8)).sum())
    f().backward()
    ref, a.grad = a.grad.clone(), None
    with emulated_device(direct), warnings.catch_warnings():
        warnings.simplefilter("ignore", OffloadPathNotice)
        off = offload(tmp_path / "acts", min_bytes=1024, keep_last=0)
        with off:
            y = f()
        off.wait_writes()
        y.backward()
        assert torch.equal(a.grad, ref) and off.stats["bytes_read"] > 0 and off.stats["failed_writes"] == 0
        del y
        off.close()

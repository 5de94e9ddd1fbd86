"""hauler.offload.OptimizerOffload: Adam/AdamW state on disk, stepped in chunks, compared bit for
bit with torch.optim.Adam/AdamW (single-tensor path) over many steps; state_dict round trips with
plain torch optimizers; real faults (a full file system, EIO from a loop device) leave the step
unapplied; files removed on close, collection and exit; bounded host memory."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")

from hauler.errors import Closed, HaulerIOError, InvalidArgument  # noqa: E402
from hauler.offload import OptimizerOffload  # noqa: E402
from test_io_faults import eio_fs, small_fs  # noqa: E402,F401 - fixtures: an 8 MiB ext4, a loop device giving EIO

SMALL_CHUNK = 16 << 10   # about 1024 elements a chunk: many chunks per parameter


def _params(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, 1000), (5,), (2048,), (0,), (7, 11, 13), (40_000,)]
    ps = [torch.nn.Parameter(torch.randn(s, generator=g).to(dtype)) for s in shapes]
    ps.append(torch.nn.Parameter(torch.randn(40, 30, generator=g).to(dtype).t()))   # dense, not contiguous
    return ps


def _clone(ps, dtype=None):
    return [torch.nn.Parameter(p.detach().clone().to(dtype or p.dtype)) for p in ps]


def _grads(ps, step, seed=1):
    g = torch.Generator().manual_seed(seed * 1000 + step)
    return [torch.randn(p.shape, generator=g).to(p.dtype) for p in ps]


def _groups(ps, lr_scale=1.0):
    return [{"params": ps[:3], "lr": 1e-2 * lr_scale}, {"params": ps[3:], "lr": 3e-3 * lr_scale, "eps": 1e-6}]


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert torch.equal(_bits(x), _bits(y))


def _bits(t):
    t = t.detach().contiguous()
    return t.view(torch.uint8) if t.numel() else t


def _same_state(sd_a, sd_b):
    def groups(sd):   # the references ask for foreach=False explicitly; None means the same on CPU
        return [{k: v for k, v in g.items() if k != "foreach"} for g in sd["param_groups"]]
    assert groups(sd_a) == groups(sd_b)
    assert sd_a["state"].keys() == sd_b["state"].keys()
    for k in sd_a["state"]:
        a, b = sd_a["state"][k], sd_b["state"][k]
        assert a.keys() == b.keys(), (a.keys(), b.keys())
        for name in a:
            assert torch.equal(a[name], b[name]), (k, name)


OPTIONS = [dict(), dict(amsgrad=True), dict(maximize=True, weight_decay=0.1), dict(weight_decay=0.05, amsgrad=True),
           dict(betas=(0.5, 0.9), eps=1e-3)]


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(o) or "defaults")
@pytest.mark.parametrize("chunk", [SMALL_CHUNK, 1 << 20])   # chunks of 1024 elements; a parameter a chunk
def test_bit_identical_to_torch_over_many_steps(tmp_path, cls, opts, chunk):
    ps_ref, ps = _params(), None
    ps = _clone(ps_ref)
    ref = cls(_groups(ps_ref), foreach=False, **opts)
    off = OptimizerOffload(cls(_groups(ps), **opts), tmp_path, chunk_bytes=chunk)
    sched_ref = torch.optim.lr_scheduler.StepLR(ref, step_size=7, gamma=0.5)
    sched = torch.optim.lr_scheduler.StepLR(off, step_size=7, gamma=0.5)
    assert max(len(i.chunks) for i in off._params) > (2 if chunk == SMALL_CHUNK else 0)
    for step in range(55):
        for p_ref, p, g in zip(ps_ref, ps, _grads(ps, step)):
            if step % 10 == 3 and p.numel() == 5:
                p_ref.grad = p.grad = None       # a parameter without a gradient is left alone
                continue
            p_ref.grad, p.grad = g.clone(), g.clone()
        ref.step()
        off.step()
        sched_ref.step()
        sched.step()
        _same(ps_ref, ps)
    _same_state(ref.state_dict(), off.state_dict())
    assert off.stats["steps"] == 55 and off.stats["bytes_written"] > 0 and off.stats["bytes_read"] > 0
    off.close()


def test_complex_parameters_and_a_closure(tmp_path):
    g = torch.Generator().manual_seed(3)
    p_ref = torch.nn.Parameter(torch.randn(3000, dtype=torch.complex64, generator=g))
    p = torch.nn.Parameter(p_ref.detach().clone())
    ref = torch.optim.AdamW([p_ref], lr=1e-2, weight_decay=0.1, amsgrad=True, foreach=False)
    off = OptimizerOffload([p], tmp_path, lr=1e-2, weight_decay=0.1, amsgrad=True, decoupled_weight_decay=True,
                           chunk_bytes=SMALL_CHUNK)
    for step in range(20):
        target = torch.randn(3000, dtype=torch.complex64, generator=g)

        def closure(q):
            def run():
                q.grad = None
                loss = (q - target).abs().square().sum()
                loss.backward()
                return loss
            return run
        assert torch.equal(ref.step(closure(p_ref)), off.step(closure(p)))
        _same([p_ref], [p])
    off.close()


def test_master_weights_match_adam_on_fp32_masters(tmp_path):
    ps = _params(torch.bfloat16)
    masters = _clone(ps, torch.float32)
    ref = torch.optim.AdamW(_groups(masters), foreach=False, weight_decay=0.1)
    off = OptimizerOffload(_groups(ps), tmp_path, weight_decay=0.1, decoupled_weight_decay=True,
                           master_weights=True, chunk_bytes=SMALL_CHUNK)
    for step in range(50):
        for m, p, g in zip(masters, ps, _grads(ps, step)):
            p.grad = g
            m.grad = g.float()
        ref.step()
        off.step()
        _same([m.detach().to(torch.bfloat16) for m in masters], ps)
    sd = off.state_dict()
    for i, m in enumerate(masters):
        assert torch.equal(sd["state"][i]["master_param"], m.detach())
        assert sd["state"][i]["exp_avg"].dtype == torch.float32
        assert torch.equal(sd["state"][i]["exp_avg_sq"], ref.state[m]["exp_avg_sq"])
    off.close()


def _train(opt, ps, steps, start):
    for step in range(start, start + steps):
        for p, g in zip(ps, _grads(ps, step, seed=7)):
            p.grad = g
        opt.step()


@pytest.mark.parametrize("amsgrad", [False, True])
def test_state_dict_round_trips_through_plain_torch_adam(tmp_path, amsgrad):
    # offload -> torch.optim.Adam -> offload, each leg trained on and compared with an all-torch run
    ps_ref, ps_a, ps_b = _params(), _params(), _params()
    ref = torch.optim.Adam(_groups(ps_ref), foreach=False, amsgrad=amsgrad, weight_decay=0.01)
    off = OptimizerOffload(_groups(ps_a), tmp_path / "a", amsgrad=amsgrad, weight_decay=0.01,
                           chunk_bytes=SMALL_CHUNK)
    _train(ref, ps_ref, 12, 0)
    _train(off, ps_a, 12, 0)
    plain = torch.optim.Adam(_groups(ps_b), foreach=False)
    for p_b, p_a in zip(ps_b, ps_a):
        p_b.data.copy_(p_a.data)
    plain.load_state_dict(off.state_dict())
    _train(ref, ps_ref, 12, 12)
    _train(plain, ps_b, 12, 12)
    _same(ps_ref, ps_b)
    back = OptimizerOffload(_groups(ps_a), tmp_path / "b", chunk_bytes=SMALL_CHUNK * 3)
    for p_a, p_b in zip(ps_a, ps_b):
        p_a.data.copy_(p_b.data)
    back.load_state_dict(plain.state_dict())
    _train(ref, ps_ref, 12, 24)
    _train(back, ps_a, 12, 24)
    _same(ps_ref, ps_a)
    _same_state(ref.state_dict(), back.state_dict())
    # taking over an Adam that has state: the state comes along
    took = OptimizerOffload(ref, tmp_path / "c", chunk_bytes=SMALL_CHUNK)
    _same_state(ref.state_dict(), took.state_dict())
    for o in (off, back, took):
        o.close()


def test_load_state_dict_lays_out_a_changed_amsgrad_and_checks_entries(tmp_path):
    ps = _params()
    off = OptimizerOffload(_groups(ps), tmp_path, chunk_bytes=SMALL_CHUNK)
    _train(off, ps, 3, 0)
    sd = off.state_dict()
    bad = {"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(2)}}, "param_groups": sd["param_groups"]}
    with pytest.raises(InvalidArgument, match="exp_avg_sq missing"):
        off.load_state_dict(bad)
    bad["state"][0]["exp_avg_sq"] = torch.zeros(2)
    with pytest.raises(InvalidArgument, match=r"parameter's shape \(3, 1000\)"):
        off.load_state_dict(bad)
    with pytest.raises(InvalidArgument, match="has 1 parameter groups, this optimizer 2"):
        off.load_state_dict({"state": {}, "param_groups": sd["param_groups"][:1]})
    with pytest.raises(InvalidArgument, match="not a dict with a 'params' list"):
        off.load_state_dict({"state": {}, "param_groups": [{}, {}]})
    _same_state(off.state_dict(), sd)          # the refused loads changed nothing
    # torch's state_dict hooks run as for any optimizer
    off.register_state_dict_post_hook(lambda o, d: {**d, "extra": len(d["state"])})
    off.register_load_state_dict_pre_hook(lambda o, d: {k: v for k, v in d.items() if k != "extra"})
    marked = off.state_dict()
    assert marked["extra"] == len(sd["state"])
    off.load_state_dict(marked)
    for g in sd["param_groups"]:
        g["amsgrad"] = True                    # torch starts max_exp_avg_sq lazily; the saved state has none
    with pytest.raises(InvalidArgument, match="max_exp_avg_sq missing"):
        off.load_state_dict(sd)
    files = os.listdir(off.directory)
    assert len([n for n in files if n.startswith("state-")]) == 1, files   # the new file was removed
    off.close()


def test_add_param_group_and_a_parameter_on_a_later_step(tmp_path):
    ps_ref, ps = _params(), _params()
    ref = torch.optim.Adam(ps_ref[:2], foreach=False)
    off = OptimizerOffload(ps[:2], tmp_path, chunk_bytes=SMALL_CHUNK)
    _train(ref, ps_ref[:2], 3, 0)
    _train(off, ps[:2], 3, 0)
    ref.add_param_group({"params": ps_ref[2:], "lr": 0.05, "amsgrad": True})
    off.add_param_group({"params": ps[2:], "lr": 0.05, "amsgrad": True})
    _train(ref, ps_ref, 5, 3)
    _train(off, ps, 5, 3)
    _same(ps_ref, ps)
    _same_state(ref.state_dict(), off.state_dict())
    off.close()


@pytest.mark.parametrize("make, says", [
    (lambda ps: torch.optim.SGD(ps, lr=0.1), "not SGD"),
    (lambda ps: torch.optim.Adam(ps, foreach=True), "foreach=True"),
    (lambda ps: torch.optim.Adam(ps, fused=True), "fused=True"),
    (lambda ps: torch.optim.Adam(ps, capturable=True), "capturable=True"),
    (lambda ps: torch.optim.Adam(ps, lr=torch.tensor(0.01)), "Tensor"),
    (lambda ps: ps, None),
])
def test_unsupported_optimizers_and_options_refused(tmp_path, make, says):
    ps = _params()[:2]
    if says is None:
        for kw, s in [({"lr": -1.0}, "lr must be a number >= 0"), ({"betas": (0.9, 1.0)}, "betas"),
                      ({"amsgrad": 1}, "amsgrad must be True or False"), ({"chunk_bytes": 0}, "chunk_bytes"),
                      ({"master_weights": "yes"}, "master_weights")]:
            with pytest.raises(InvalidArgument, match=s):
                OptimizerOffload(ps, tmp_path, **kw)
        with pytest.raises(InvalidArgument, match="lr given with an optimizer"):
            OptimizerOffload(torch.optim.Adam(ps), tmp_path, lr=0.1)
        with pytest.raises(InvalidArgument, match="appears twice"), pytest.warns(UserWarning, match="duplicate"):
            OptimizerOffload([ps[0], ps[0]], tmp_path)
        with pytest.raises(InvalidArgument, match="master_weights applies"):
            OptimizerOffload([torch.nn.Parameter(torch.zeros(4, dtype=torch.complex64))], tmp_path,
                             master_weights=True)
        with pytest.raises(InvalidArgument, match="not dense"):
            OptimizerOffload([torch.zeros(8, 8)[:, ::2]], tmp_path)
    else:
        with pytest.raises(InvalidArgument, match=says):
            OptimizerOffload(make(ps), tmp_path)
    assert [n for n in os.listdir(tmp_path) if n.startswith("offload-")] == []   # nothing left behind


def test_bad_gradients_refused_before_anything_changes(tmp_path):
    ps = _params()[:2]
    off = OptimizerOffload(ps, tmp_path, chunk_bytes=SMALL_CHUNK)
    _train(off, ps, 2, 0)
    before = [p.detach().clone() for p in ps]
    sd = off.state_dict()
    ps[0].grad = torch.zeros(ps[0].shape)
    # torch refuses a gradient of another shape or dtype at assignment; .data swaps one in anyway
    for bad, says in [(torch.zeros(3), "does not match"), (torch.zeros(5, dtype=torch.float64), "does not match"),
                      (torch.zeros(5).to_sparse(), "sparse")]:
        if bad.is_sparse:
            ps[1].grad = bad
        else:
            ps[1].grad = torch.zeros(5)
            ps[1].grad.data = bad
        with pytest.raises(InvalidArgument, match=says):
            off.step()
        _same(before, ps)
        _same_state(sd, off.state_dict())
    off.close()
    with pytest.raises(Closed, match="closed"):
        off.step()


def test_files_removed_on_close_collection_and_exit_and_crash_leftovers_cleaned(tmp_path):
    ps = _params()[:1]
    off = OptimizerOffload(ps, tmp_path)
    d = off.directory
    assert os.path.dirname(d) == str(tmp_path) and os.path.isdir(d)
    _train(off, ps, 1, 0)
    off.close()
    assert not os.path.exists(d)
    off = OptimizerOffload(ps, tmp_path)
    d = off.directory
    del off
    import gc
    gc.collect()
    assert not os.path.exists(d)
    code = textwrap.dedent(f"""
        import os, sys, torch
        from hauler.offload import OptimizerOffload
        p = torch.nn.Parameter(torch.ones(5000))
        opt = OptimizerOffload([p], {str(tmp_path)!r})
        p.grad = torch.ones(5000); opt.step()
        print(opt.directory, flush=True)
        if sys.argv[1] == "crash":
            os._exit(3)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(x for x in sys.path if x))
    for how in ("exit", "crash"):
        r = subprocess.run([sys.executable, "-c", code, how], capture_output=True, text=True, env=env, timeout=300)
        left = r.stdout.strip()
        assert left.startswith(str(tmp_path)), r.stderr
        assert os.path.exists(left) == (how == "crash"), (how, r.stderr)
    # the crashed process's directory goes when the next one opens the same directory
    off = OptimizerOffload(ps, tmp_path)
    assert not os.path.exists(left)
    assert os.listdir(tmp_path) == [os.path.basename(off.directory)]
    off.close()


def test_a_full_disk_fails_the_first_step_and_changes_nothing(small_fs):
    ps = [torch.nn.Parameter(torch.randn(600_000)), torch.nn.Parameter(torch.randn(1000))]
    before = [p.detach().clone() for p in ps]
    off = OptimizerOffload(ps, small_fs / "optim")
    for p in ps:
        p.grad = torch.ones_like(p)
    with pytest.raises(HaulerIOError, match="ENOSPC") as ei:
        off.step()
    assert "reserving" in str(ei.value) and off.directory in str(ei.value)
    _same(before, ps)
    assert off.state_dict()["state"] == {} and off.stats["failed_steps"] == 1
    off.close()
    # a model that fits steps on the same file system
    small = [torch.nn.Parameter(torch.randn(1000))]
    ok = OptimizerOffload(small, small_fs / "optim2")
    small[0].grad = torch.ones(1000)
    ok.step()
    ok.close()
    assert os.listdir(small_fs / "optim") == [] and os.listdir(small_fs / "optim2") == []


def _physical_block(path, offset):
    import fcntl
    import struct
    fd = os.open(path, os.O_RDONLY)
    try:   # FIBMAP: the physical block of one logical block
        return struct.unpack("i", fcntl.ioctl(fd, 1, struct.pack("i", offset // 4096)))[0]
    finally:
        os.close(fd)


def test_eio_in_the_middle_of_a_step_puts_every_parameter_back(eio_fs, tmp_path):
    mnt, _ = eio_fs
    ps = [torch.nn.Parameter(torch.randn(8 * 1024)), torch.nn.Parameter(torch.randn(3000))]
    off = OptimizerOffload(ps, mnt / "optim", chunk_bytes=SMALL_CHUNK)
    assert len(off._params[0].chunks) == 8
    _train(off, ps, 1, 0)             # every chunk's state is in slot 1 now
    before = [p.detach().clone() for p in ps]
    steps = [i.step.clone() for i in off._params]
    path = off._files.file.path
    chunks = off._params[0].chunks
    cut = _physical_block(path, chunks[5].slot_offset(1))
    assert all(_physical_block(path, c.offset + k) < cut for c in chunks[:5] for k in range(0, 2 * c.slot_bytes, 4096))
    os.sync()
    os.truncate(tmp_path / "backing", cut * 4096)   # the loop device answers reads from there with EIO
    with pytest.raises(HaulerIOError, match="EIO"):
        _train(off, ps, 1, 1)
    _same(before, ps)                 # chunks 0-2 put back from the undo copies on disk, 3-4 from memory
    assert all(torch.equal(i.step, s) for i, s in zip(off._params, steps))
    assert [c.parity for c in chunks] == [1] * 8
    assert off.stats["chunks"] == 11 + 5 and off.stats["failed_steps"] == 1
    off.close()


def test_host_memory_stays_within_a_few_chunks(tmp_path):
    # 1 GiB of Adam moments (128 Mi fp32 parameters), stepped in 16 MiB chunks: the peak RSS
    # measured around the steps grows by a few chunks, not by the state
    code = textwrap.dedent(f"""
        import resource, torch
        from hauler.offload import OptimizerOffload
        torch.set_num_threads(1)
        n = 128 << 20
        ps = [torch.nn.Parameter(torch.zeros(n // 4)) for _ in range(4)]
        for p in ps:
            p.grad = torch.ones_like(p)
        opt = OptimizerOffload(ps, {str(tmp_path)!r}, chunk_bytes=16 << 20)
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        for _ in range(2):
            opt.step()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(peak - base, 2 * n * 4)
        opt.close()
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(x for x in sys.path if x))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    grew, state = map(int, r.stdout.split())
    assert grew < 8 * (16 << 20), (grew, state)      # three buffers and the step's chunk temporaries
    assert grew < state / 4


def test_real_gpu_cuda_parameters_step_on_the_device_bit_identical(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device for torch here")
    ps_ref = [p.detach().cuda().requires_grad_() for p in _params()]
    ps = [p.detach().clone().requires_grad_() for p in ps_ref]
    ref = torch.optim.AdamW(_groups(ps_ref), foreach=False, amsgrad=True)
    off = OptimizerOffload(_groups(ps), tmp_path, amsgrad=True, decoupled_weight_decay=True, weight_decay=0.01,
                           chunk_bytes=SMALL_CHUNK)
    for step in range(20):
        for p_ref, p, g in zip(ps_ref, ps, _grads(ps_ref, step)):
            p_ref.grad, p.grad = g.cuda(), g.cuda()
        ref.step()
        off.step()
        _same(ps_ref, ps)
    _same_state(ref.state_dict(), off.state_dict())
    off.close()


def test_bench_optimizer_row(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(x for x in sys.path if x))
    r = subprocess.run([sys.executable, "-m", "hauler.bench.cli", "io", "--quick", "--json", "--no-fio", "--dir",
                        str(tmp_path), "--parts", "optimizer"], capture_output=True, text=True, env=env, timeout=900)
    assert r.returncode == 0, r.stderr
    import json
    rep = json.loads(r.stdout)
    (row,) = [x for x in rep["rows"] if x["part"] == "optim"]
    assert row["correct"] is True and row["io_peer"] == "hauler.io alone"
    assert row["bytes_read_per_step"] == row["state_bytes"] and row["bytes_written_per_step"] > row["state_bytes"]
    assert row["peak_rss_plain"] > 0 and row["peak_rss_offload"] > 0 and len(row["rounds"]["offload"]) == 3
    assert {t["key"]: t["status"] for t in rep["targets"]}["optimizer_step"] in ("PASS", "MISS")


def test_a_write_failing_mid_step_puts_everything_back_and_the_step_can_be_retried(tmp_path):
    # RLIMIT_FSIZE lowered after the file was allocated: writes of the second step past the limit
    # fail (EFBIG) after the chunks before it were written; then the limit is lifted and the same
    # step retried, and the result equals torch's two steps
    code = textwrap.dedent(f"""
        import resource, torch
        from hauler.offload import OptimizerOffload
        from hauler.errors import HaulerIOError
        g = torch.Generator().manual_seed(5)
        ps = [torch.nn.Parameter(torch.randn(8 * 1024, generator=g)), torch.nn.Parameter(torch.randn(3000, generator=g))]
        ref_ps = [torch.nn.Parameter(p.detach().clone()) for p in ps]
        grads = [[torch.randn(p.shape, generator=g) for p in ps] for _ in range(2)]
        ref = torch.optim.Adam(ref_ps, lr=0.01, amsgrad=True)
        opt = OptimizerOffload(ps, {str(tmp_path)!r}, lr=0.01, amsgrad=True, chunk_bytes={SMALL_CHUNK})
        chunks = opt._params[0].chunks
        assert len(chunks) == 8
        for gs in grads:
            for p, q, gr in zip(ps, ref_ps, gs):
                p.grad, q.grad = gr.clone(), gr.clone()
            ref.step()
            if gs is grads[0]:
                opt.step()
                continue
            before = [p.detach().clone() for p in ps]
            steps = [i.step.clone() for i in opt._params]
            soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (chunks[5].offset, hard))
            try:
                opt.step()
            except HaulerIOError as e:
                assert "EFBIG" in str(e), e
            else:
                raise AssertionError("the step past RLIMIT_FSIZE did not fail")
            assert all(torch.equal(a, b) for a, b in zip(before, ps))
            assert all(torch.equal(i.step, s) for i, s in zip(opt._params, steps))
            assert [c.parity for c in chunks] == [1] * 8
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            opt.step()
        assert all(torch.equal(a, b) for a, b in zip(ref_ps, ps))
        sd, rd = opt.state_dict(), ref.state_dict()
        assert all(torch.equal(sd["state"][k][n], rd["state"][k][n]) for k in rd["state"] for n in rd["state"][k])
        print("ok", opt.stats["failed_steps"])
        opt.close()
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(x for x in sys.path if x))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ok", "1"]


def test_default_directory_is_a_private_subdirectory_of_the_users_temporary_one(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)   # read TMPDIR again
    ps = _params()[:1]
    off = OptimizerOffload(ps, chunk_bytes=SMALL_CHUNK)
    parent = tmp_path / f"hauler-optim-{os.geteuid()}"
    assert os.path.dirname(off.directory) == str(parent)
    assert os.stat(off.directory).st_mode & 0o777 == 0o700
    _train(off, ps, 2, 0)
    off.close()
    assert os.listdir(parent) == []

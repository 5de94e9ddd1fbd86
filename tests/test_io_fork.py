"""Fork safety of hauler.io: a parent uses the engine (its threads, its io_uring ring, the bounce
arena), then forks (os.fork, a multiprocessing 'fork' pool, torch DataLoader workers); the child
reads and writes through the inherited handle and a new one and checks the bytes; the parent keeps
working after. Each case runs in a subprocess under a timeout, so a hang fails instead of blocking."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from hauler import io
from support.io_backends import BACKENDS, require

TIMEOUT = 120

PRELUDE = textwrap.dedent(r"""
    import os, sys, traceback
    import numpy as np
    from hauler import io
    from hauler.errors import HaulerIOError

    path, case = sys.argv[1], sys.argv[2]
    assert io.backend() == os.environ["HAULER_IO_BACKEND"], io.backend_description()
    N = 4 << 20
    data = np.random.default_rng(1).integers(0, 256, N, dtype=np.uint8)

    def disk(p, off, n):
        fd = os.open(p, os.O_RDONLY)
        try:
            return np.frombuffer(os.pread(fd, n, off), np.uint8)
        finally:
            os.close(fd)

    def use(f, seed, base):
        # aligned and unaligned (bounced) writes and reads, blocking and futures, at base
        rng = np.random.default_rng(seed)
        a = rng.integers(0, 256, 1 << 20, dtype=np.uint8)
        b = rng.integers(0, 256, 100003, dtype=np.uint8)
        f.write(a, offset=base)
        f.pwrite(b[1:], offset=base + (1 << 20) + 5).result(timeout=60)
        out = np.zeros(1 << 20, np.uint8)
        f.pread(out, offset=base).result(timeout=60)
        assert np.array_equal(out, a)
        odd = np.zeros(100002 + 1, np.uint8)
        f.read_into(odd[1:], offset=base + (1 << 20) + 5)
        assert np.array_equal(odd[1:], b[1:])
        assert np.array_equal(disk(f.path, base, 1 << 20), a)

    def child(fn):
        # run fn in a forked child; its exit status says whether it passed
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                fn()
                code = 0
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush(); sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child failed: status {status}"

    f = io.File(path, "w+")
    f.write(data)
    use(f, 0, N)                    # the parent's threads, ring and bounce arena now exist
""")

CASES = {
    # the inherited handle and a new one, in a child of os.fork; the parent after
    "os_fork": r"""
        def work():
            got = np.zeros(N, np.uint8)
            f.read_into(got)
            assert np.array_equal(got, data)
            use(f, 1, 8 * N)
            with io.File(path + ".child", "w+") as g:
                use(g, 2, 0)
        child(work)
        child(work)                 # a second child of the same parent
        use(f, 3, 12 * N)           # the parent keeps working
        assert np.array_equal(disk(path, 8 * N, 1 << 20),
                              np.random.default_rng(1).integers(0, 256, 1 << 20, dtype=np.uint8))
        def grandchild():
            child(lambda: use(f, 4, 16 * N))
        child(grandchild)           # a child of a child
    """,
    # a multiprocessing pool with the 'fork' start method: each worker reads its slice
    "mp_pool": r"""
        import multiprocessing as mp
        def part(i):
            out = np.zeros(N // 4 + 1, np.uint8)
            f.read_into(out[1:], offset=i * (N // 4))   # unaligned memory: bounced
            with io.File(path, "r") as g:
                fut = g.pread(np.zeros(N // 4, np.uint8), offset=i * (N // 4))
                fut.result(timeout=60)
            return bytes(out[1:])
        with mp.get_context("fork").Pool(2) as pool:
            parts = pool.map(part, range(4))
        assert b"".join(parts) == data.tobytes()
        use(f, 5, 4 * N)
    """,
    # torch DataLoader workers (fork) read items through the handle opened in the parent
    "dataloader": r"""
        import torch
        from torch.utils.data import DataLoader, Dataset
        class Rows(Dataset):
            def __len__(self):
                return 64
            def __getitem__(self, i):
                row = np.zeros(N // 64, np.uint8)
                f.read_into(row, offset=i * (N // 64))
                return torch.from_numpy(row)
        loader = DataLoader(Rows(), batch_size=8, num_workers=2, multiprocessing_context="fork")
        got = torch.cat([b.reshape(-1) for b in loader])
        assert np.array_equal(got.numpy(), data)
        use(f, 6, 4 * N)
    """,
    # fork with requests queued and running: in the child their futures are done and name the
    # fork (no wait that never ends), the handle closes at once; the parent's all complete
    "inflight": r"""
        futs = [f.pwrite(data[: 1 << 20], offset=(40 << 20) + k * (1 << 20)) for k in range(256)]
        def work():
            orphans = 0
            for fu in futs:
                assert fu.done()
                try:
                    fu.result(timeout=5)
                except HaulerIOError as e:
                    assert "before fork()" in str(e), e
                    orphans += 1
            assert orphans > 0, "every request finished before fork(): nothing was checked"
            use(f, 7, 8 * N)
            f.close()
        child(work)
        for fu in futs:
            assert fu.result(timeout=60) == 1 << 20
        use(f, 8, 12 * N)
    """,
    # a TensorStore used in the parent keeps working in the child (its own worker threads)
    "tensorstore": r"""
        from hauler.io import TensorStore
        store = TensorStore(path + ".store")
        store.put("a", data).result(timeout=60)
        def work():
            assert np.array_equal(store.get("a").result(timeout=60), data)
            store.put("b", data[:1000]).result(timeout=60)
            assert np.array_equal(store.get("b").result(timeout=60), data[:1000])
        child(work)
        assert np.array_equal(store.get("b").result(timeout=60), data[:1000])
        store.put("c", data[:10]).result(timeout=60)
    """,
}


@pytest.fixture(params=BACKENDS)
def backend(request):
    require(request.param)
    return request.param


@pytest.mark.parametrize("case", sorted(CASES))
def test_fork(tmp_path, backend, case):
    if case == "dataloader":
        pytest.importorskip("torch")
    script = PRELUDE + textwrap.dedent(CASES[case]) + "\nprint('ok')\n"
    env = dict(os.environ, HAULER_IO_BACKEND=backend, HAULER_IO_TASK_SIZE=str(64 * 1024),
               HAULER_IO_REQUESTS="2")
    # own session: on a hang the whole group (children included, which hold the pipes) is killed
    p = subprocess.Popen([sys.executable, "-c", script, str(tmp_path / "f"), case], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        pytest.fail(f"{case} on {backend} hung (>{TIMEOUT} s): {out} {err}")
    assert p.returncode == 0 and out.strip().endswith("ok"), out + err

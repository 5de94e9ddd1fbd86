"""Stores shared by processes and users: locks, private files, nothing trusted that this store did
not write, offload ranks on one path. Every process here is a real one."""
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

from hauler.errors import InvalidArgument
from hauler.tensorstore import StoreLocked, TensorStore, UnsafeDirectory

OTHER_USER = "haulerstoretest"


def _run(code, *args, check=True, user=None, timeout=300):
    cmd = [sys.executable, "-c", textwrap.dedent(code), *map(str, args)]
    if user is not None:
        cmd = ["runuser", "-u", user, "--", "/usr/bin/env", "-i", "PATH=/usr/bin:/bin", "python3", "-c",
               textwrap.dedent(code), *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"child failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return r


# -- offload: two ranks, one path ------------------------------------------------------------------

RANK = """
import os, sys, time, torch
from hauler.offload import offload
rank, path, out, peer = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

def barrier(name):
    open(f"{out}.{name}", "w").close()
    if peer == "-":
        return
    for _ in range(6000):
        if os.path.exists(f"{peer}.{name}"):
            return
        time.sleep(0.01)
    raise SystemExit("peer never reached " + name)

torch.manual_seed(100 + rank)
model = torch.nn.Sequential(*[torch.nn.Linear(256, 256) for _ in range(6)])
x = torch.randn(64, 256)
barrier("start")
off = offload(path, min_bytes=1024, keep_last=0)
with off:
    loss = model(x).tanh().sum()
off.wait_writes()
barrier("forward")          # both ranks' activations are on disk before either reads back
loss.backward()
torch.save([p.grad for p in model.parameters()], out)
assert off.stats["bytes_read"] > 0, off.stats
off.close()
"""


def test_two_ranks_offloading_to_one_path_get_their_own_gradients(tmp_path):
    torch = pytest.importorskip("torch")
    shared = tmp_path / "acts"
    procs = []
    for rank in (0, 1):
        out, peer = tmp_path / f"g{rank}", tmp_path / f"g{1 - rank}"
        procs.append(subprocess.Popen([sys.executable, "-c", RANK, str(rank), str(shared), str(out), str(peer)],
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for p in procs:
        assert p.wait(timeout=600) == 0, p.stdout.read()
    for rank in (0, 1):   # the same rank alone, in a directory of its own
        _run(RANK, rank, tmp_path / f"alone{rank}", tmp_path / f"a{rank}", "-")
        together = torch.load(tmp_path / f"g{rank}")
        alone = torch.load(tmp_path / f"a{rank}")
        assert all(torch.equal(a, b) for a, b in zip(together, alone))
    assert os.listdir(shared) == []   # each rank's subdirectory went with its close()


def test_offload_removes_subdirectories_of_dead_processes_only(tmp_path):
    pytest.importorskip("torch")
    from hauler.offload import offload
    d = tmp_path / "acts"
    child = "import sys\nfrom hauler.offload import offload\noff = offload(sys.argv[1])\nprint(off.directory)\nimport os; os._exit(0)\n"
    dead = _run(child, d).stdout.strip()    # killed without close(): its subdirectory stays
    assert os.path.isdir(dead)
    other = d / "offload-1-0123456789ab"    # pid 1 is alive: left alone
    other.mkdir()
    off = offload(d)
    try:
        assert not os.path.exists(dead) and other.is_dir()
        assert os.path.dirname(off.directory) == str(d) and off.directory != dead
    finally:
        off.close()
    assert not os.path.exists(off.directory)


# -- one store, one process (or many read-only ones) -------------------------------------------------

HOLD = """
import sys, time
from hauler.tensorstore import TensorStore
s = TensorStore(sys.argv[1], read_only=sys.argv[2] == "r")
print("open", flush=True)
sys.stdin.readline()
s.close()
"""


def _holder(path, mode):
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(path), mode], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line == "open\n", p.stderr.read()
    return p


def _release(p):
    p.stdin.write("\n")
    p.stdin.flush()
    assert p.wait(timeout=120) == 0, p.stderr.read()


def test_second_store_on_a_directory_is_refused_naming_the_holder(tmp_path):
    d = tmp_path / "s"
    with TensorStore(d) as s:
        s.put("a", np.arange(10)).result()
        with pytest.raises(StoreLocked, match=rf"pid {os.getpid()} \(this process\)"):
            TensorStore(d)
        r = _run("import sys\nfrom hauler.tensorstore import TensorStore\nTensorStore(sys.argv[1])", d, check=False)
        assert r.returncode != 0 and "StoreLocked" in r.stderr and f"pid {os.getpid()}" in r.stderr
    p = _holder(d, "w")
    try:
        with pytest.raises(StoreLocked, match=f"pid {p.pid}"):
            TensorStore(d)
        with pytest.raises(StoreLocked, match=f"pid {p.pid}"):
            TensorStore(d, read_only=True)
    finally:
        _release(p)
    with TensorStore(d) as s:   # free again once the holder closed
        assert (s.get("a").result() == np.arange(10)).all()


def test_read_only_stores_share_a_directory_and_exclude_writers(tmp_path):
    d = tmp_path / "s"
    with TensorStore(d) as s:
        s.put("a", np.arange(5.0)).result()
    p = _holder(d, "r")
    try:
        with TensorStore(d, read_only=True) as r:
            assert r.keys() == ["a"] and (r.get("a").result() == np.arange(5.0)).all()
            with pytest.raises(InvalidArgument, match="read_only"):
                r.put("b", np.zeros(3))
            with pytest.raises(InvalidArgument, match="read_only"):
                r.delete("a")
            with pytest.raises(StoreLocked, match=f"pid {p.pid}.*pid {os.getpid()}|pid {os.getpid()}.*pid {p.pid}"):
                TensorStore(d)
    finally:
        _release(p)
    with pytest.raises(InvalidArgument, match="does not exist"):
        TensorStore(tmp_path / "none", read_only=True)
    with pytest.raises(InvalidArgument, match="repair"):
        TensorStore(d, read_only=True, repair=True)


def test_cleanup_at_open_removes_only_this_stores_leftovers(tmp_path):
    d = tmp_path / "s"
    with TensorStore(d, keep_files=1 << 20) as s:
        s.put("a", np.ones(100)).result()
    sid = json.loads((d / ".hauler-store").read_text())["id"]
    stem = "0" * 40
    own = [f"{stem}.tmp.{sid}-0000aaaa.hts", f"{stem}.{sid}-0000bbbb.spare"]
    foreign = [f"{stem}.tmp.feedface0000-0000aaaa.hts", "notes.tmp.1.hts", "x.spare", "README"]
    for n in own + foreign:
        (d / n).write_bytes(b"junk")
    with pytest.warns(UserWarning, match="3 file.s. named like entries are not entries of this store"):
        s = TensorStore(d)
    try:
        names = set(os.listdir(d))
        assert not names & set(own) and set(foreign) <= names
        assert sorted(os.path.basename(p) for p, _ in s.untrusted) == sorted(foreign)
        assert s.keys() == ["a"] and s.used_bytes == os.path.getsize(s._path("a"))
    finally:
        s.close()


def test_reopen_trusts_only_entries_whose_name_matches_their_key(tmp_path):
    d = tmp_path / "s"
    with TensorStore(d) as s:
        s.put("gone", np.arange(100)).result()
        s.put("kept", np.arange(7)).result()
        copy = d / ("f" * 40 + ".hts")
        shutil.copyfile(s._path("gone"), copy)   # a stray copy of an entry
        s.delete("gone")
        (d / ("e" * 40 + ".hts")).write_bytes(b"HAULERTS" + b"\0" * 100)   # a crafted header
    with pytest.warns(UserWarning):
        s = TensorStore(d)
    try:
        assert s.keys() == ["kept"] and "gone" not in s
        assert s.used_bytes == os.path.getsize(s._path("kept"))
        why = dict(s.untrusted)
        assert "another name" in why[str(copy)] and "header" in why[str(d / ("e" * 40 + ".hts"))]
        with pytest.raises(KeyError):
            s.get("gone").result()
    finally:
        s.close()
    with TensorStore(d, repair=True) as s:
        assert all(p.endswith("removed (repair=True)") for _, p in s.untrusted) and len(s.untrusted) == 2
    assert not copy.exists()
    with TensorStore(d) as s:
        assert s.untrusted == [] and s.keys() == ["kept"]


# -- permissions ------------------------------------------------------------------------------------

def _mode(p):
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_private_whatever_the_umask_and_opened_up_on_request(tmp_path):
    old = os.umask(0o022)
    try:
        with TensorStore(tmp_path / "a" / "s", keep_files=1 << 20) as s:
            s.put("k", np.arange(10)).result()
            s.delete("k")                        # its file kept as a spare
            s.put("k2", np.arange(10)).result()  # written over the spare
            s.put("k3", np.arange(10)).result()
            files = [os.path.join(s.directory, n) for n in os.listdir(s.directory)]
            assert _mode(s.directory) == 0o700 and files and {_mode(f) for f in files} == {0o600}
        os.umask(0o077)
        with TensorStore(tmp_path / "b", file_mode=0o640) as s:
            s.put("k", np.arange(10)).result()
            assert _mode(s.directory) == 0o750 and _mode(s._path("k")) == 0o640
    finally:
        os.umask(old)
    for bad in (0o400, 0o1600, -1, "0600"):
        with pytest.raises(InvalidArgument, match="file_mode"):
            TensorStore(tmp_path / "c", file_mode=bad)


def test_planted_directories_and_symlinks_refused(tmp_path):
    planted = tmp_path / "planted"
    planted.mkdir()
    planted.chmod(0o777)
    with pytest.raises(UnsafeDirectory, match="writable by others"):
        TensorStore(planted)
    planted.chmod(0o770)
    with pytest.raises(UnsafeDirectory, match="writable by others"):
        TensorStore(planted)
    TensorStore(planted, file_mode=0o660).close()   # group writing asked for
    d = tmp_path / "s"
    d.mkdir(mode=0o700)
    target = tmp_path / "target"
    target.write_text("untouched")
    os.symlink(target, d / ".hauler-store")
    with pytest.raises(UnsafeDirectory, match="symbolic link"):
        TensorStore(d)
    assert target.read_text() == "untouched"
    if os.geteuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(mode=0o700)
        os.chown(theirs, 65534, 65534)
        with pytest.raises(UnsafeDirectory, match="owned by uid 65534"):
            TensorStore(theirs)


@pytest.fixture(scope="module")
def other_user():
    if os.geteuid() != 0:
        pytest.skip("needs root to create a second user (useradd) and run as it (runuser)")
    if shutil.which("useradd") is None or shutil.which("runuser") is None:
        pytest.skip("useradd or runuser is not installed")
    try:
        pwd.getpwnam(OTHER_USER)
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "--shell", "/bin/false", OTHER_USER], check=True)
    yield pwd.getpwnam(OTHER_USER)
    subprocess.run(["userdel", OTHER_USER], check=False)


def test_second_user_cannot_read_replace_or_plant(other_user):
    # a world-traversable parent, as a shared scratch directory would be
    base = tempfile.mkdtemp(prefix="hauler-users-")
    try:
        os.chmod(base, 0o1777)
        with TensorStore(os.path.join(base, "mine")) as s:
            s.put("k", np.arange(1000)).result()
            entry = s._path("k")
            r = _run("""
                import sys, os
                for what, fn in (("read", lambda: open(sys.argv[1], "rb").read()),
                                 ("replace", lambda: open(sys.argv[1] + ".x", "wb")),
                                 ("list", lambda: os.listdir(os.path.dirname(sys.argv[1])))):
                    try:
                        fn()
                        print(what, "ALLOWED")
                    except PermissionError:
                        print(what, "denied")
                """, entry, user=OTHER_USER)
            assert r.stdout.split() == ["read", "denied", "replace", "denied", "list", "denied"]
            assert (s.get("k").result() == np.arange(1000)).all()
        # the other user makes the victim's store directory first, open to all
        victim = os.path.join(base, "victim")
        _run("import os, sys\nos.mkdir(sys.argv[1]); os.chmod(sys.argv[1], 0o777)", victim, user=OTHER_USER)
        with pytest.raises(UnsafeDirectory, match=f"owned by uid {other_user.pw_uid}"):
            TensorStore(victim)
        assert os.listdir(victim) == []
    finally:
        shutil.rmtree(base)


def test_interposer_report_does_not_follow_a_planted_symlink(tmp_path):
    import test_interpose as ti
    flav = "openmpi" if shutil.which("mpiexec.openmpi") else "mpich"
    ti._tools(flav)
    exe = tmp_path / "p2p"
    subprocess.run([shutil.which(f"mpicc.{flav}"), "-O1", "-w", str(ti.HERE / "p2p.c"), "-o", str(exe)], check=True)
    target = tmp_path / "victim"
    target.write_text("untouched\n")
    os.symlink(target, tmp_path / "report.0")
    old = os.umask(0o022)
    try:
        ti._launch(flav, 2, [str(exe), str(tmp_path / "out"), "7"], shim=True,
                   env_extra={"HAULER_INTERPOSE_REPORT": str(tmp_path / "report.%r")})
    finally:
        os.umask(old)
    assert target.read_text() == "untouched\n" and os.path.islink(tmp_path / "report.0")
    assert "hauler-interpose rank 1" in (tmp_path / "report.1").read_text()
    assert _mode(tmp_path / "report.1") == 0o600


# -- shared feature tables in /dev/shm ---------------------------------------------------------------

SHARE_AND_DIE = """
import os, signal, numpy as np
from hauler.gather import FeatureStore
fs = FeatureStore()
fs.add("t", np.arange(1000, dtype=np.float32).reshape(100, 10), shared=True)
print(fs._tables["t"].path, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def _killed_table():
    r = _run(SHARE_AND_DIE, check=False)
    assert r.returncode == -9, r.stderr
    path = r.stdout.strip()
    assert os.path.exists(path)
    return path


def test_shared_tables_private_whatever_the_umask(tmp_path):
    from hauler.gather import FeatureStore
    old = os.umask(0o022)
    try:
        fs = FeatureStore()
        fs.add("a", np.zeros((4, 4), np.float32), shared=True)
        fs.add("b", np.zeros((4, 4), np.float32), shared=True, shared_mode=0o644)
        fs2 = FeatureStore({"c": np.ones((2, 2))}).share()
        assert _mode(fs._tables["a"].path) == 0o600 and _mode(fs._tables["b"].path) == 0o644
        assert _mode(fs2._tables["c"].path) == 0o600
        for bad in (0o400, 0o700, True, "0600"):
            with pytest.raises(InvalidArgument, match="shared_mode"):
                fs.add("d", np.zeros(3), shared=True, shared_mode=bad)
        paths = [fs._tables[n].path for n in ("a", "b")] + [fs2._tables["c"].path]
        fs.close()
        fs2.close()
        assert not any(os.path.exists(p) for p in paths)
    finally:
        os.umask(old)


def test_killed_processes_shared_table_removed_by_the_next_one():
    from hauler.gather import FeatureStore
    dead = _killed_table()
    fs = FeatureStore()
    try:
        fs.add("mine", np.zeros((8, 8), np.float32), shared=True)
        assert not os.path.exists(dead) and os.path.exists(fs._tables["mine"].path)
    finally:
        fs.close()


def test_hauler_shm_lists_and_cleans_stale_tables():
    from hauler.gather import FeatureStore
    fs = FeatureStore()
    fs.add("live", np.zeros((8, 8), np.float32))
    fs.share()
    live = fs._tables["live"].path
    dead = _killed_table()
    try:
        out = _run("from hauler.cli import main; raise SystemExit(main(['shm']))").stdout
        assert f"{dead}  pid" in out and "stale" in out.split(dead)[1].splitlines()[0]
        assert "alive" in out.split(live)[1].splitlines()[0] and os.path.exists(dead)
        out = _run("from hauler.cli import main; raise SystemExit(main(['shm', '--clean']))").stdout
        assert "removed" in out.split(dead)[1].splitlines()[0] and not os.path.exists(dead)
        assert os.path.exists(live)
    finally:
        fs.close()


def test_second_user_cannot_read_a_shared_table(other_user):
    from hauler.gather import FeatureStore
    fs = FeatureStore({"t": np.arange(64.0).reshape(8, 8)}, shared=True)
    try:
        r = _run("""
            import sys
            try:
                open(sys.argv[1], "rb").read()
                print("ALLOWED")
            except PermissionError:
                print("denied")
            """, fs._tables["t"].path, user=OTHER_USER)
        assert r.stdout.split() == ["denied"]
    finally:
        fs.close()


# -- crafted entries and bad arguments ----------------------------------------------------------------

def _craft(d, key, **fields):
    import hashlib
    from hauler._store_format import header
    meta = {"key": key, "kind": "numpy", "dtype": "<i8", "shape": [1], "nbytes": 8, "offset": 4096,
            "checksum": None, "crc": None}
    meta.update(fields)
    data = b"\0" * max(meta["nbytes"], 0) if isinstance(meta["nbytes"], int) else b""
    (d / (hashlib.sha1(key.encode()).hexdigest() + ".hts")).write_bytes(header(meta).tobytes() + data)


@pytest.mark.parametrize("fields, match", [
    ({"shape": [2**32, 2**32], "nbytes": 0}, "does not make 0 bytes"),          # the int64 product wraps to 0
    ({"dtype": "|O", "nbytes": 8}, "Python objects"),
    ({"dtype": "V0", "shape": [5], "nbytes": 0}, "no bytes"),
    ({"dtype": "not-a-dtype"}, "unknown numpy dtype"),
    ({"kind": "torch", "dtype": "float32", "shape": [10], "nbytes": 8}, "does not make 8 bytes"),
    ({"kind": "torch", "dtype": "Tensor"}, "unknown torch dtype"),
    ({"offset": "4096"}, "data offset '4096'"),
    ({"offset": 4096.0}, "data offset 4096.0"),
    ({"shape": [-1], "nbytes": 8}, "shape"),
    ({"shape": "8"}, "shape"),
    ({"nbytes": True}, "nbytes"),
    ({"kind": "pickle"}, "kind"),
    ({"crc": "0", "checksum": "crc32c"}, "checksum value"),
])
def test_crafted_entries_raise_corrupt_entry(tmp_path, fields, match):
    pytest.importorskip("torch")
    from hauler.tensorstore import CorruptEntry
    d = tmp_path / "s"
    TensorStore(d).close()
    _craft(d, "k", **fields)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # some are untrusted already at open: reported, not counted
        s = TensorStore(d)
    try:
        with pytest.raises(CorruptEntry, match=match):
            s.get("k").result()
    finally:
        s.close()


def test_file_table_bad_shapes_are_invalid_arguments(tmp_path):
    from hauler.gather import FeatureStore
    raw = tmp_path / "raw.bin"
    raw.write_bytes(b"\0" * 4096)
    fs = FeatureStore()
    for shape, match in [((-5, 4), r"shape\[0\] must be >= -1"), ((4, -1), r"shape\[1\] must be >= 0"),
                         ((4, 2**32, 2**32), "needs"), ((4, "4"), "integer"), ((), "at least one dimension"),
                         ("44", "integer")]:
        with pytest.raises(InvalidArgument, match=match):
            fs.add("t", raw, backend="file", dtype=np.float32, shape=shape)
    with pytest.raises(InvalidArgument, match="empty rows"):
        fs.add("t", raw, backend="file", dtype=np.float32, shape=(-1, 0))
    npy = tmp_path / "neg.npy"
    with open(npy, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (-5, 4)})
        f.write(b"\0" * 4096)
    with pytest.raises(InvalidArgument, match="must be >= 0"):
        fs.add("n", npy, backend="file")
    wrap = tmp_path / "wrap.npy"
    with open(wrap, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False,
                                                 "shape": (4, 2**32, 2**32)})
        f.write(b"\0" * 4096)
    with pytest.raises(InvalidArgument, match="needs"):
        fs.add("w", wrap, backend="file")

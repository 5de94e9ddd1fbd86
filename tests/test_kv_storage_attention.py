"""hauler.kv.StorageAttention: a real drive process, real files, real shared memory. Outputs are
checked against torch's scaled_dot_product_attention (float32, enable_gqa) over the very KV that
was put: float32 outputs within rtol=atol=1e-5; float16 outputs within rtol=atol=2e-3 and bfloat16
within rtol=atol=1.6e-2 (two units in the last place: both sides round float32 results).
Faults are real too: a killed drive, a stopped one, a truncated SSD copy."""
from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hauler import kv  # noqa: E402
from hauler.errors import BufferTooSmall, InvalidArgument, OutOfRange  # noqa: E402
from hauler.kv import DriveLost, DriveTimeout, StorageAttention, SwapSpace, UnknownRequest  # noqa: E402
from hauler.kv.storage_attention import Link  # noqa: E402
from hauler.tensorstore import CorruptEntry  # noqa: E402

LAYERS = 3
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float16: dict(rtol=2e-3, atol=2e-3),
       torch.bfloat16: dict(rtol=1.6e-2, atol=1.6e-2)}


@pytest.fixture(scope="module")
def drive(tmp_path_factory):
    # 4 KiB reads: the small requests below still stream in several chunks
    with StorageAttention(tmp_path_factory.mktemp("drive"), chunk_bytes=4096, timeout=300) as sa:
        yield sa


def kv_pair(gen, tokens, heads, hs, dtype, layers=LAYERS):
    k = torch.randn(layers, tokens, heads, hs, generator=gen).to(dtype)
    v = torch.randn(layers, tokens, heads, hs, generator=gen).to(dtype)
    return k, v


def reference(q, kvs, layer, scale=None):
    """SDPA over each request's gathered KV of one layer, in float32."""
    outs = []
    for i, (k, v) in enumerate(kvs):
        kk = k[layer].float().permute(1, 0, 2).unsqueeze(0)
        vv = v[layer].float().permute(1, 0, 2).unsqueeze(0)
        o = torch.nn.functional.scaled_dot_product_attention(q[i].float().unsqueeze(0).unsqueeze(2), kk, vv,
                                                             scale=scale, enable_gqa=True)
        outs.append(o.view(q.shape[1], q.shape[2]))
    return torch.stack(outs)


CASES = [  # dtype, q_heads, kv_heads, head_size, block_size, sequence lengths of the batch
    (torch.float32, 4, 4, 16, 4, [1, 5, 16, 37]),        # MHA; a one-token request; lengths off the block size
    (torch.float32, 8, 2, 32, 16, [64, 3, 100]),         # GQA 4
    (torch.float32, 6, 1, 8, 8, [257]),                  # MQA, 33 blocks
    (torch.float16, 8, 2, 64, 16, [33, 70]),
    (torch.bfloat16, 4, 2, 16, 4, [50, 9]),
]


@pytest.mark.parametrize("dtype,hq,hkv,hs,bs,lengths", CASES)
def test_outputs_equal_sdpa(drive, dtype, hq, hkv, hs, bs, lengths):
    gen = torch.Generator().manual_seed(hq * 100 + hs + len(lengths))
    names = [f"{dtype}-{hq}-{i}" for i in range(len(lengths))]
    kvs = [kv_pair(gen, n, hkv, hs, dtype) for n in lengths]
    for name, (k, v) in zip(names, kvs):
        drive.put(name, k, v, block_size=bs)
        assert drive.tokens(name) == k.shape[1]
    q = torch.randn(len(lengths), hq, hs, generator=gen).to(dtype)
    for layer in range(LAYERS):
        want = reference(q, kvs, layer).to(dtype).float()
        got = drive.attend(q, names, layer)
        assert got.dtype == dtype and got.shape == q.shape
        torch.testing.assert_close(got.float(), want, **TOL[dtype])
        torch.testing.assert_close(drive.attend_on_host(q, names, layer).float(), want, **TOL[dtype])
    # a batch naming requests in another order, one twice, with a scale of its own
    order = [len(lengths) - 1, 0, len(lengths) - 1]
    q2 = torch.randn(len(order), hq, hs, generator=gen).to(dtype)
    want = reference(q2, [kvs[i] for i in order], 1, scale=0.3).to(dtype).float()
    torch.testing.assert_close(drive.attend(q2, [names[i] for i in order], 1, scale=0.3).float(), want, **TOL[dtype])
    for name in names:
        drive.drop(name)


def test_numpy_in_numpy_out_and_bytes_counted(drive):
    rng = np.random.default_rng(3)
    k, v = (rng.standard_normal((2, 45, 2, 16)).astype(np.float32) for _ in range(2))
    drive.put("np", k, v, block_size=8)
    q = rng.standard_normal((1, 4, 16)).astype(np.float32)
    drive.reset_counters()
    out = drive.attend(q, ["np"], 1)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32 and out.shape == q.shape
    want = reference(torch.from_numpy(q), [(torch.from_numpy(k), torch.from_numpy(v))], 1)
    np.testing.assert_allclose(out, want.numpy(), rtol=1e-5, atol=1e-5)
    c = drive.counters
    assert c["query_bytes"] == q.nbytes and c["output_bytes"] == out.nbytes
    assert c["to_drive_bytes"] == q.nbytes + c["control_bytes"] - (c["from_drive_bytes"] - out.nbytes)
    assert c["kv_read_bytes"] == 6 * 2 * 8 * 2 * 16 * 4   # 6 blocks of K and V of one layer: read, never crossing
    assert c["kv_load_bytes"] == 0 and c["messages"] == 1 and c["attends"] == 1
    drive.reset_counters()
    drive.attend_on_host(q, ["np"], 0)
    c = drive.counters
    assert c["kv_load_bytes"] == c["from_drive_bytes"] == 6 * 2 * 8 * 2 * 16 * 4 and c["query_bytes"] == 0
    drive.drop("np")


def test_put_replaces_and_drop_deletes(drive):
    gen = torch.Generator().manual_seed(5)
    k1, v1 = kv_pair(gen, 20, 2, 8, torch.float32)
    k2, v2 = kv_pair(gen, 7, 2, 8, torch.float32)
    before = set(os.listdir(drive.directory))
    drive.put("r", k1, v1)
    drive.put("r", k2, v2)
    assert drive.tokens("r") == 7 and len(set(os.listdir(drive.directory)) - before) == 1
    q = torch.randn(1, 2, 8, generator=gen)
    torch.testing.assert_close(drive.attend(q, ["r"], 2), reference(q, [(k2, v2)], 2), rtol=1e-5, atol=1e-5)
    assert "r" in drive and "r" in drive.requests()
    drive.drop("r")
    assert set(os.listdir(drive.directory)) == before and "r" not in drive
    with pytest.raises(UnknownRequest, match="'r' is not on the drive"):
        drive.attend(q, ["r"], 0)
    with pytest.raises(KeyError):
        drive.drop("r")


def test_bad_arguments(drive):
    gen = torch.Generator().manual_seed(6)
    k, v = kv_pair(gen, 10, 2, 8, torch.float32)
    drive.put("ok", k, v)
    q = torch.randn(1, 4, 8)
    with pytest.raises(UnknownRequest, match="'nope'"):
        drive.attend(q, ["nope"], 0)
    with pytest.raises(InvalidArgument, match="heads of 8"):
        drive.attend(torch.randn(1, 4, 16), ["ok"], 0)
    with pytest.raises(InvalidArgument, match="multiple of kv_heads"):
        drive.attend(torch.randn(1, 3, 8), ["ok"], 0)
    with pytest.raises(InvalidArgument, match="2 request ids for a batch of 1"):
        drive.attend(q, ["ok", "ok"], 0)
    with pytest.raises(InvalidArgument, match="one id per query row"):
        drive.attend(q, "ok", 0)
    with pytest.raises(InvalidArgument, match=r"\[batch, q_heads, head_size\]"):
        drive.attend(torch.randn(4, 8), ["ok"], 0)
    with pytest.raises(InvalidArgument, match="dtype int32"):
        drive.attend(torch.ones(1, 4, 8, dtype=torch.int32), ["ok"], 0)
    for layer in (LAYERS, -1):
        with pytest.raises(OutOfRange, match=f"layer {layer} is outside"):
            drive.attend(q, ["ok"], layer)
    with pytest.raises(InvalidArgument, match="scale must be a finite number"):
        drive.attend(q, ["ok"], 0, scale="big")
    with pytest.raises(InvalidArgument, match="layer must be an integer"):
        drive.attend(q, ["ok"], 1.0)
    with pytest.raises(InvalidArgument, match="but v is"):
        drive.put("bad", k, v[:, :5])
    with pytest.raises(InvalidArgument, match="expected \\[layers, tokens, kv_heads, head_size\\]"):
        drive.put("bad", k[0], v[0])
    with pytest.raises(InvalidArgument, match="at least 1"):
        drive.put("bad", k[:, :0], v[:, :0])
    with pytest.raises(InvalidArgument, match="dtype int8"):
        drive.put("bad", np.zeros((1, 2, 1, 4), np.int8), np.zeros((1, 2, 1, 4), np.int8))
    assert "bad" not in drive
    # nothing was lost: the request still answers
    torch.testing.assert_close(drive.attend(q, ["ok"], 0), reference(q, [(k, v)], 0), rtol=1e-5, atol=1e-5)
    drive.drop("ok")


def cache(seed, dtype=torch.float16, nb=16, bs=4, heads=2, hs=16, layers=2):
    gen = torch.Generator().manual_seed(seed)
    layers_ = [torch.randn(2, nb, bs, heads, hs, generator=gen).to(dtype) for _ in range(layers)]
    return layers_, kv.KVLayout.vllm_flash(layers_)


def gathered(layers_, blocks, tokens):
    """The request's KV as put() takes it: [layers, tokens, heads, head_size] for K and V."""
    ids = torch.tensor(blocks)
    k = torch.stack([c[0][ids].reshape(-1, *c.shape[3:])[:tokens] for c in layers_])
    v = torch.stack([c[1][ids].reshape(-1, *c.shape[3:])[:tokens] for c in layers_])
    return k, v


def test_adopt_swapspace_ssd_copy(drive, tmp_path):
    layers_, layout = cache(7)
    blocks = [9, 2, 14, 5]
    with SwapSpace(1 << 20, path=tmp_path / "swap") as space:
        space.swap_out("req", layout, blocks, num_tokens=13).result()
        with pytest.raises(InvalidArgument, match="evict"):
            drive.adopt(space, "req", layout)
        with pytest.raises(UnknownRequest):
            drive.adopt(space, "other", layout)
        space.evict("req").result()
        drive.reset_counters()
        n = drive.adopt(space, "req", layout, as_request="adopted")
        assert n == 4 * layout.block_bytes
        c = drive.counters
        assert c["adopted_bytes"] == n and c["kv_put_bytes"] == c["query_bytes"] == 0
        assert c["to_drive_bytes"] + c["from_drive_bytes"] == c["control_bytes"] > 0   # only the message crossed
        assert drive.tokens("adopted") == 13
        k, v = gathered(layers_, blocks, 13)
        q = torch.randn(2, 4, 16, generator=torch.Generator().manual_seed(8)).to(torch.float16)
        for layer in range(2):
            want = reference(q, [(k, v), (k, v)], layer).to(torch.float16).float()
            torch.testing.assert_close(drive.attend(q, ["adopted", "adopted"], layer).float(), want,
                                       **TOL[torch.float16])
        # the drive holds its own copy: the space may drop its one
        space.discard("req")
        torch.testing.assert_close(drive.attend(q[:1], ["adopted"], 1).float(), want[:1], **TOL[torch.float16])
        drive.drop("adopted")
        # a damaged SSD copy: the drive's own error, typed, and nothing held
        space.swap_out("req2", layout, blocks[:2], num_tokens=5).result()
        space.evict("req2").result()
        before = set(os.listdir(drive.directory))
        with open(space.ssd_path("req2"), "r+b") as f:
            f.truncate(100)
        with pytest.raises(CorruptEntry, match="shorter than a TensorStore header"):
            drive.adopt(space, "req2", layout)
        assert "req2" not in drive and set(os.listdir(drive.directory)) == before
        # the same bytes per block, another shape: refused, not misread
        _, other = cache(11, heads=4, hs=8)
        with pytest.raises(InvalidArgument, match="4 heads x 8"):
            drive.adopt(space, "req2", other)
        mla_layers = [torch.zeros(16, 4, 64, dtype=torch.float16) for _ in range(2)]
        space.swap_out("mla", kv.KVLayout.mla(mla_layers), [0, 1]).result()
        space.evict("mla").result()
        with pytest.raises(InvalidArgument, match="1 plane"):
            drive.adopt(space, "mla", kv.KVLayout.mla(mla_layers))


def test_forked_child_cannot_use_or_stop_the_drive(drive):
    gen = torch.Generator().manual_seed(10)
    k, v = kv_pair(gen, 12, 1, 8, torch.float32)
    drive.put("f", k, v)
    q = torch.randn(1, 2, 8, generator=gen)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child reports what it saw, then leaves without running any cleanup
        try:
            try:
                drive.attend(q, ["f"], 0)
                msg = b"attended"
            except InvalidArgument as e:
                msg = b"refused" if b"forked child" in str(e).encode() else str(e).encode()
            drive.close()
            os.write(w, msg)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        got = f.read()
    os.waitpid(pid, 0)
    assert got == b"refused"
    torch.testing.assert_close(drive.attend(q, ["f"], 0), reference(q, [(k, v)], 0), rtol=1e-5, atol=1e-5)
    drive.drop("f")


def test_link_token_bucket():
    link = Link(bandwidth=1e6, burst=4096)
    link.cross("to_drive", "query", 20_000)
    assert link.counters["wait_s"] == pytest.approx((20_000 - 4096) / 1e6, rel=1e-9)
    assert link.counters["to_drive_bytes"] == link.counters["query_bytes"] == 20_000
    link.cross("from_drive", "output", 4096)   # the other direction has its own full bucket
    assert link.counters["wait_s"] == pytest.approx((20_000 - 4096) / 1e6, rel=1e-9)
    link.bandwidth = None
    link.cross("to_drive", "query", 1 << 30)
    assert link.counters["to_drive_bytes"] == 20_000 + (1 << 30)
    for bad in (0, -1.0, float("inf"), "fast"):
        with pytest.raises(InvalidArgument, match="bandwidth"):
            Link(bandwidth=bad)


def test_drive_lost_stopped_and_closed(tmp_path):
    gen = torch.Generator().manual_seed(9)
    k, v = kv_pair(gen, 30, 2, 8, torch.float32)
    q = torch.randn(1, 4, 8, generator=gen)
    sa = StorageAttention(tmp_path, area_bytes=4096, timeout=5)
    d = sa.directory
    sa.put("r", k, v)
    with pytest.raises(BufferTooSmall, match="area_bytes="):
        sa.attend(torch.randn(200, 4, 8), ["r"] * 200, 0)
    os.kill(sa.drive_pid, signal.SIGKILL)
    with pytest.raises(DriveLost, match="is gone: "):
        sa.attend(q, ["r"], 0)
    with pytest.raises(DriveLost, match="is gone"):
        sa.put("s", k, v)
    sa.close()
    sa.close()
    assert not os.path.exists(d)
    with pytest.raises(InvalidArgument, match="closed"):
        sa.attend(q, ["r"], 0)

    sa = StorageAttention(tmp_path, timeout=1.0)
    sa.put("r", k, v)
    os.kill(sa.drive_pid, signal.SIGSTOP)   # alive but silent: the call must end, not hang
    try:
        with pytest.raises(DriveTimeout, match="no answer within 1.0 s"):
            sa.attend(q, ["r"], 0)
    finally:
        try:
            os.kill(sa.drive_pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert sa._proc.poll() is not None   # stopped for good after the timeout
    with pytest.raises(DriveLost):
        sa.attend(q, ["r"], 0)
    sa.close()
    with pytest.raises(InvalidArgument, match="timeout"):
        StorageAttention(tmp_path, timeout=0)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(InvalidArgument, match="not a directory"):
        StorageAttention(tmp_path / "afile" / "drive")


def test_bench_section_runs(tmp_path):
    """`hauler-bench kv --storage-attention` as a user runs it: structure and correctness, never speed."""
    from test_bench import bench
    rep = json.loads(bench("kv", "--storage-attention", "--quick", "--contexts", "40,100", "--links", "1,4", "--json",
                           "--dir", str(tmp_path)).stdout)
    assert rep["benchmark"] == "kv-storage-attention" and any("SIMULATED" in w for w in rep["warnings"])
    rows = rep["rows"]
    assert [(r["context"], r["link_gbps"]) for r in rows] == [(c, g) for c in (40, 100) for g in (1.0, 4.0, None)]
    for r in rows:
        assert r["correct"] is True and r["instorage_sps"] > 0 and r["baseline_sps"] > 0
        # the baseline moves the KV of every layer and request across; in storage only queries and outputs cross
        kv_step = 2 * 2 * -(-r["context"] // 16) * 16 * 8 * 128 * 2 * 2
        assert r["drive_read_bytes"] == r["baseline_bytes"] == kv_step > 10 * r["instorage_bytes"]
    assert [c["context"] for c in rep["info"]["crossover"]] == [40, 100]
    assert os.listdir(tmp_path) == []
    text = bench("kv", "--storage-attention", "--quick", "--contexts", "40", "--links", "2", "--dir",
                 str(tmp_path)).stdout
    assert "# WARNING: SIMULATED" in text and "# crossover at 40 tokens:" in text


"""hauler.kv.SwapSpace against a numpy reference: real caches, real files (O_DIRECT where the file
system allows it), faults produced for real (a full file system, EIO from a loop device, a byte
flipped on disk). Every check compares bytes."""
from __future__ import annotations

import concurrent.futures
import os

import numpy as np
import pytest

from hauler import io, kv
from hauler.errors import BufferTooSmall, HaulerIOError, InvalidArgument, OutOfRange
from hauler.kv.swap import SwapSpace, SwapSpaceFull, UnknownRequest
from hauler.tensorstore import CorruptEntry
from support.device import FakeCudaArray
from test_io_faults import eio_fs, small_fs  # noqa: F401 - fixtures: an 8 MiB ext4, a loop device giving EIO

LAYERS, NB, BS, HEADS, HS = 3, 64, 16, 2, 32


class Cache:
    """A vLLM flash-layout cache (per layer (2, blocks, block_size, heads, head_size)) with random
    contents, and the numpy reference of a request's blocks."""

    def __init__(self, seed=0, dtype=np.float16, order="NHD", nb=NB, hs=HS):
        rng = np.random.default_rng(seed)
        shape = (2, nb, BS, HEADS, hs) if order == "NHD" else (2, nb, HEADS, BS, hs)
        self.layers = [rng.standard_normal(shape).astype(dtype) for _ in range(LAYERS)]
        self.layout = kv.KVLayout.vllm_flash(self.layers, order=order)
        self.order = order

    def blocks(self, ids):
        """The request's KV, (layers, 2, len(ids), block_size, heads, head_size), token order."""
        out = np.stack([c[:, np.asarray(ids, np.int64)] for c in self.layers])
        return out if self.order == "NHD" else out.transpose(0, 1, 2, 4, 3, 5)

    def snapshot(self):
        return [c.copy() for c in self.layers]

    def poison(self, ids, value=7):
        for c in self.layers:
            c[:, np.asarray(ids, np.int64)] = value

    def unchanged_except(self, before, ids):
        keep = np.setdiff1d(np.arange(self.layout.num_blocks), np.asarray(ids, np.int64))
        return all(np.array_equal(c[:, keep], b[:, keep]) for c, b in zip(self.layers, before))

    def write_tokens(self, ids, t0, t1, rng):
        """New K/V for tokens [t0, t1) of the request whose blocks are ids."""
        for t in range(t0, t1):
            b, o = ids[t // BS], t % BS
            for c in self.layers:
                if self.order == "NHD":
                    c[:, b, o] = rng.standard_normal(c[:, b, o].shape)
                else:
                    c[:, b, :, o] = rng.standard_normal(c[:, b, :, o].shape)


def block_bytes():
    return LAYERS * 2 * BS * HEADS * HS * 2


@pytest.fixture
def cache():
    return Cache()


def test_host_round_trip_into_other_blocks(cache):
    src, dst = [5, 60, 2, 33], [1, 0, 40, 41]
    want = cache.blocks(src)
    with SwapSpace(host_bytes=1 << 20) as space:
        assert space.swap_out("r", cache.layout, src).result() == 4 * block_bytes()
        cache.poison(src)
        before = cache.snapshot()
        assert space.swap_in("r", cache.layout, np.array(dst, np.int32)).result() == 4 * block_bytes()
        assert np.array_equal(cache.blocks(dst), want)
        assert cache.unchanged_except(before, dst)
        c = space.counters
        assert c["out_bytes"] == c["in_bytes"] == 4 * block_bytes() and c["host_hits"] == 1
        assert c["ssd_read_bytes"] == c["ssd_write_bytes"] == 0
        assert space.location("r") == "host" and space.saved_tokens("r") == 4 * BS


@pytest.mark.parametrize("order", ["NHD", "HND"])
def test_torch_bf16_cache_round_trip(order):
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(3)
    shape = (2, NB, BS, HEADS, HS) if order == "NHD" else (2, NB, HEADS, BS, HS)
    layers = [torch.randn(shape, generator=g).to(torch.bfloat16) for _ in range(LAYERS)]
    layout = kv.KVLayout.vllm_flash(layers, order=order)
    src, dst = torch.tensor([9, 3, 3 + 1]), torch.tensor([50, 51, 20])
    want = [t[:, src].clone() for t in layers]
    with SwapSpace(host_bytes=1 << 20) as space:
        space.swap_out(7, layout, src).result()
        for t in layers:
            t[:, src] = 0
        space.swap_in(7, layout, dst).result()
    assert all(torch.equal(t[:, dst], w) for t, w in zip(layers, want))


def test_multi_turn_writes_only_new_blocks(cache):
    rng = np.random.default_rng(1)
    ids = [10, 11, 12]
    with SwapSpace(host_bytes=1 << 20) as space:
        space.swap_out("chat", cache.layout, ids, num_tokens=40).result()    # 2.5 blocks
        # turn 2: swapped back in elsewhere, 30 more tokens (block 2 fills, blocks 3 and 4 new)
        ids2 = [20, 21, 22, 23, 24]
        space.swap_in("chat", cache.layout, ids2).result()
        cache.write_tokens(ids2, 40, 70, rng)
        want = cache.blocks(ids2)
        out0 = space.counters["out_bytes"]
        assert space.swap_out("chat", cache.layout, ids2, num_tokens=70).result() == 3 * block_bytes()
        c = space.counters
        assert c["out_bytes"] - out0 == 3 * block_bytes() and c["out_skipped_bytes"] == 2 * block_bytes()
        cache.poison(ids2)
        space.swap_in("chat", cache.layout, [30, 31, 32, 33, 34]).result()
        assert np.array_equal(cache.blocks([30, 31, 32, 33, 34]), want)
        # an explicit dirty set: block 0 rewritten in place (an edited prefix), tracking adds none
        cache.write_tokens([30], 0, 3, rng)
        want = cache.blocks([30, 31, 32, 33, 34])
        assert space.swap_out("chat", cache.layout, [30, 31, 32, 33, 34], num_tokens=70,
                              dirty={0}).result() == block_bytes()
        assert space.swap_out("chat", cache.layout, [30, 31, 32, 33, 34], num_tokens=70,
                              dirty="all").result() == 5 * block_bytes()
        cache.poison([30, 31, 32, 33, 34])
        space.swap_in("chat", cache.layout, [1, 2, 3, 4, 5], release=True).result()
        assert np.array_equal(cache.blocks([1, 2, 3, 4, 5]), want)
        assert "chat" not in space and space.counters["host_used_bytes"] == 0


def test_shorter_request_after_a_longer_copy(cache):
    with SwapSpace(host_bytes=1 << 20) as space:
        space.swap_out("r", cache.layout, [1, 2, 3, 4]).result()
        want = cache.blocks([1, 2])
        assert space.swap_out("r", cache.layout, [1, 2], num_tokens=20).result() == 0   # a prefix: nothing new
        cache.poison([1, 2])
        space.swap_in("r", cache.layout, [7, 8]).result()
        assert np.array_equal(cache.blocks([7, 8]), want)


def direct_modes(path):
    """None (O_DIRECT where allowed), False; True too when this file system takes O_DIRECT."""
    probe = os.path.join(path, "probe")
    with io.File(probe, "w") as f:
        direct = f.direct
    os.unlink(probe)
    return [None, False] + ([True] if direct else [])


@pytest.mark.parametrize("mode", [0, 1, 2])
def test_ssd_tier_eviction_and_host_hits(cache, tmp_path, mode):
    modes = direct_modes(str(tmp_path))
    if mode >= len(modes):
        pytest.skip(f"{tmp_path} does not take O_DIRECT")
    bb = block_bytes()
    a, b, c_ = [0, 1, 2, 3], [8, 9, 10, 11], [16, 17, 18, 19]
    want = {"a": cache.blocks(a), "b": cache.blocks(b), "c": cache.blocks(c_)}
    with SwapSpace(host_bytes=8 * bb, path=tmp_path, direct=modes[mode]) as space:
        space.swap_out("a", cache.layout, a).result()
        space.swap_out("b", cache.layout, b).result()
        space.swap_out("c", cache.layout, c_).result()          # no room: "a" (least recent) goes to the SSD
        assert space.location("a") == "ssd" and space.location("b") == space.location("c") == "host"
        path = space.ssd_path("a")
        assert os.path.dirname(path) == space.directory and os.path.getsize(path) >= 4 * bb
        k = space.counters
        assert k["ssd_write_bytes"] == 4 * bb and k["evictions"] == 1
        cache.poison(a + b + c_)
        space.swap_in("c", cache.layout, c_).result()           # in host memory: the SSD is not touched
        assert space.counters["ssd_read_bytes"] == 0 and space.counters["host_hits"] == 1
        space.swap_in("a", cache.layout, a).result()            # from the SSD; "b" goes out to make room
        k = space.counters
        assert k["ssd_read_bytes"] == 4 * bb and k["ssd_hits"] == 1 and space.location("b") == "ssd"
        space.swap_in("b", cache.layout, b).result()
        for name, ids in (("a", a), ("b", b), ("c", c_)):
            assert np.array_equal(cache.blocks(ids), want[name]), name
        # "a" is in host memory again with a current SSD copy: evicting it writes nothing
        assert space.location("a") in ("host+ssd", "ssd")
        w = space.counters["ssd_write_bytes"]
        space.evict("a").result()
        assert space.counters["ssd_write_bytes"] == w and space.location("a") == "ssd"
    assert not os.path.exists(space.directory)


def test_prefetch_then_swap_in_reads_the_ssd_once(cache, tmp_path):
    bb = block_bytes()
    ids = [3, 4, 5]
    want = cache.blocks(ids)
    with SwapSpace(host_bytes=16 * bb, path=tmp_path) as space:
        space.swap_out("p", cache.layout, ids).result()
        assert space.evict("p").result() == 3 * bb and space.location("p") == "ssd"
        assert space.prefetch("p").result() == 3 * bb
        assert space.prefetch("p").result() == 0                # there already
        cache.poison(ids)
        space.swap_in("p", cache.layout, ids).result()
        k = space.counters
        assert k["ssd_reads"] == 1 and k["host_hits"] == 1 and k["prefetch_hits"] == 1
        assert np.array_equal(cache.blocks(ids), want)


def test_multi_turn_after_eviction_reads_the_prefix_from_ssd(cache, tmp_path):
    rng = np.random.default_rng(5)
    bb = block_bytes()
    ids = [0, 1, 2, 3, 4]
    with SwapSpace(host_bytes=16 * bb, path=tmp_path) as space:
        space.swap_out("m", cache.layout, ids[:2], num_tokens=32).result()
        space.evict("m").result()
        cache.write_tokens(ids, 32, 80, rng)
        want = cache.blocks(ids)
        assert space.swap_out("m", cache.layout, ids, num_tokens=80).result() == 3 * bb
        cache.poison(ids)
        space.swap_in("m", cache.layout, ids).result()
        assert np.array_equal(cache.blocks(ids), want)
        assert space.counters["ssd_read_bytes"] == 2 * bb


def test_futures_are_concurrent_futures(cache, tmp_path):
    reqs = {f"r{i}": [4 * i, 4 * i + 1, 4 * i + 2] for i in range(8)}
    want = {r: cache.blocks(ids) for r, ids in reqs.items()}
    done = []
    with SwapSpace(host_bytes=12 * block_bytes(), path=tmp_path, threads=3) as space:
        futs = [space.swap_out(r, cache.layout, ids) for r, ids in reqs.items()]
        for f in futs:
            assert isinstance(f, concurrent.futures.Future)
            f.add_done_callback(done.append)
        finished, pending = concurrent.futures.wait(futs, timeout=60)
        assert not pending and all(f.exception() is None for f in finished)
        assert len(done) == len(futs)
        for r, ids in reqs.items():
            cache.poison(ids)
        # a swap-in right after its swap-out (same request) runs after it
        ins = [space.swap_in(r, cache.layout, ids) for r, ids in reqs.items()]
        assert len(list(concurrent.futures.as_completed(ins, timeout=60))) == len(ins)
        for r, ids in reqs.items():
            assert np.array_equal(cache.blocks(ids), want[r]), r
        assert space.counters["evictions"] >= 4


def test_swap_in_right_after_swap_out_without_waiting(cache):
    want = cache.blocks([1, 2])
    with SwapSpace(host_bytes=1 << 20) as space:
        space.swap_out("x", cache.layout, [1, 2])
        f = space.swap_in("x", cache.layout, [3, 4])
        f.result(timeout=60)
    assert np.array_equal(cache.blocks([3, 4]), want)


def test_bad_arguments_raise_before_anything_moves(cache):
    before = cache.snapshot()
    with SwapSpace(host_bytes=1 << 20) as space:
        with pytest.raises(UnknownRequest, match="'nope'") as ei:
            space.swap_in("nope", cache.layout, [1])
        assert isinstance(ei.value, KeyError)
        with pytest.raises(OutOfRange, match=rf"blocks\[1\] = {NB} .* {NB} blocks"):
            space.swap_out("r", cache.layout, [0, NB])
        with pytest.raises(OutOfRange, match=r"blocks\[0\] = -1"):
            space.swap_out("r", cache.layout, [-1])
        with pytest.raises(InvalidArgument, match="num_tokens=40 fills 3 blocks"):
            space.swap_out("r", cache.layout, [0, 1], num_tokens=40)
        with pytest.raises(OutOfRange, match=r"dirty\[0\] = 5"):
            space.swap_out("r", cache.layout, [0, 1], dirty=[5])
        with pytest.raises(InvalidArgument, match="dirty must be"):
            space.swap_out("r", cache.layout, [0, 1], dirty="some")
        assert "r" not in space and space.counters["swap_outs"] == 0
        space.swap_out("r", cache.layout, [0, 1, 2]).result()
        with pytest.raises(BufferTooSmall, match="3 blocks saved .* 2 destination blocks"):
            space.swap_in("r", cache.layout, [5, 6]).result()
        other = Cache(dtype=np.float32)
        with pytest.raises(InvalidArgument, match="float16.*float32"):
            space.swap_in("r", other.layout, [0, 1, 2])
        with pytest.raises(InvalidArgument, match="no SSD tier"):
            space.evict("r")
        assert all(np.array_equal(c, b) for c, b in zip(cache.layers, before))
        space.swap_in("r", cache.layout, [0, 1, 2]).result()   # the copy survived every refusal
        assert all(np.array_equal(c, b) for c, b in zip(cache.layers, before))
    with pytest.raises(InvalidArgument, match="closed"):
        space.swap_out("r", cache.layout, [0])
    with pytest.raises(InvalidArgument, match="host_bytes must be >= 0"):
        SwapSpace(host_bytes=-1)
    with pytest.raises(InvalidArgument, match="needs path="):
        SwapSpace(host_bytes=0, ssd_bytes=1 << 20)


def test_both_tiers_full_refuses_and_keeps_everything(cache, tmp_path):
    bb = block_bytes()
    a, b = [0, 1, 2, 3], [4, 5, 6, 7]
    want_a = cache.blocks(a)
    with SwapSpace(host_bytes=4 * bb) as space:      # host only
        space.swap_out("a", cache.layout, a).result()
        with pytest.raises(SwapSpaceFull, match="no SSD tier"):
            space.swap_out("b", cache.layout, b).result()
        assert "b" not in space
        with pytest.raises(UnknownRequest):
            space.swap_in("b", cache.layout, b)
        cache.poison(a)
        space.swap_in("a", cache.layout, a).result()
        assert np.array_equal(cache.blocks(a), want_a)
    want_b = cache.blocks(b)
    # the SSD tier holds one group (data and its 4 KiB header, plus alignment), the host one
    with SwapSpace(host_bytes=4 * bb, path=tmp_path, ssd_bytes=4 * bb + 8192) as space:
        space.swap_out("a", cache.layout, a).result()
        space.swap_out("b", cache.layout, b).result()         # "a" goes to the SSD
        with pytest.raises(SwapSpaceFull, match="SSD tier") as ei:
            space.swap_out("c", cache.layout, [8, 9, 10, 11]).result()
        assert "nothing was stored" in str(ei.value)
        cache.poison(a + b)
        space.swap_in("b", cache.layout, b).result()
        assert np.array_equal(cache.blocks(b), want_b)
        assert space.location("a") == "ssd"


def on_ssd(space, cache, **groups):
    """Swaps each group out and moves it to the SSD."""
    for name, ids in groups.items():
        space.swap_out(name, cache.layout, ids).result()
        space.evict(name).result()
        assert space.location(name) == "ssd"


def test_corrupted_swap_file(cache, tmp_path):
    bb = block_bytes()
    a, b = [0, 1, 2], [10, 11, 12]
    want_b = cache.blocks(b)
    with SwapSpace(host_bytes=16 * bb, path=tmp_path) as space:
        on_ssd(space, cache, a=a, b=b)
        path = space.ssd_path("a")
        with open(path, "r+b") as f:                      # one byte of the data, not the header
            f.seek(os.path.getsize(path) - 1000)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0x40]))
        before = cache.snapshot()
        with pytest.raises(CorruptEntry, match="checksum mismatch for request 'a'"):
            space.swap_in("a", cache.layout, [30, 31, 32]).result()
        assert all(np.array_equal(c, x) for c, x in zip(cache.layers, before))   # the live cache untouched
        assert space.counters["host_used_bytes"] == 0
        cache.poison(b)
        space.swap_in("b", cache.layout, b).result()
        assert np.array_equal(cache.blocks(b), want_b)


def test_disk_full_keeps_the_host_copies(small_fs):
    # 8 MiB of ext4: groups of 2 MiB; the third eviction finds no room (ENOSPC)
    big = Cache(seed=2, nb=128, hs=256)
    per = 2 << 20
    nblocks = per // big.layout.block_bytes
    groups = {f"g{i}": list(range(i * nblocks, (i + 1) * nblocks)) for i in range(128 // nblocks)}
    want = {g: big.blocks(ids) for g, ids in groups.items()}
    space = SwapSpace(host_bytes=per, path=small_fs)
    try:
        errors = []
        for g, ids in groups.items():
            try:
                space.swap_out(g, big.layout, ids).result()
            except HaulerIOError as e:
                errors.append((g, e))
        assert errors, "the 8 MiB file system took every group"
        g, e = errors[0]
        assert "ENOSPC" in str(e) and "to the SSD tier" in str(e), str(e)
        assert g not in space   # its first swap-out failed: nothing of it kept
        on_host = [g for g in groups if g in space and space.location(g) == "host"]
        on_ssd = [g for g in groups if g in space and space.location(g) == "ssd"]
        assert len(on_host) == 1 and on_ssd, (on_host, on_ssd)
        # an SSD copy cannot come in while the host copy cannot go out: refused, live cache intact
        before = big.snapshot()
        with pytest.raises(HaulerIOError, match="ENOSPC"):
            space.swap_in(on_ssd[0], big.layout, groups[on_ssd[0]]).result()
        assert all(np.array_equal(c, x) for c, x in zip(big.layers, before))
        for g in on_host + on_ssd:   # the host copy first: its release makes room for the others
            big.poison(groups[g])
            space.swap_in(g, big.layout, groups[g], release=True).result()
            assert np.array_equal(big.blocks(groups[g]), want[g]), g
        assert not [n for n in os.listdir(space.directory) if ".tmp." in n]
    finally:
        space.close()


def test_eio_on_one_swap_file_leaves_the_others(eio_fs, cache):
    mnt, cut = eio_fs
    bb = block_bytes()
    a, b = [0, 1, 2, 3], [20, 21, 22, 23]
    want_a = cache.blocks(a)
    with SwapSpace(host_bytes=16 * bb, path=mnt) as space:
        on_ssd(space, cache, a=a, b=b)
        cut(space.ssd_path("b"), keep=[space.ssd_path("a")])
        before = cache.snapshot()
        with pytest.raises(HaulerIOError, match="request 'b'.*EIO"):
            space.swap_in("b", cache.layout, b).result(timeout=60)
        assert all(np.array_equal(c, x) for c, x in zip(cache.layers, before))
        cache.poison(a)
        space.swap_in("a", cache.layout, a).result(timeout=60)
        assert np.array_equal(cache.blocks(a), want_a)


def test_freed_regions_are_reused_within_the_budget(cache):
    bb = block_bytes()
    want = cache.blocks([1, 2, 3, 4])
    with SwapSpace(host_bytes=8 * bb) as space:
        space.swap_out("a", cache.layout, [1, 2, 3, 4]).result()
        space.swap_in("a", cache.layout, [1, 2, 3, 4], release=True).result()
        k = space.counters
        assert k["host_used_bytes"] == 0 and k["host_free_bytes"] == 4 * bb
        space.swap_out("b", cache.layout, [1, 2, 3, 4]).result()      # the same size: the freed region
        k = space.counters
        assert k["host_used_bytes"] == 4 * bb and k["host_free_bytes"] == 0
        space.discard("b")
        # a larger group: the free region makes way (used + free never exceed host_bytes)
        space.swap_out("c", cache.layout, list(range(10, 18))).result()
        k = space.counters
        assert k["host_used_bytes"] == 8 * bb and k["host_free_bytes"] == 0
        space.discard("c")
        space.swap_out("d", cache.layout, [1, 2, 3, 4]).result()
        cache.poison([1, 2, 3, 4])
        space.swap_in("d", cache.layout, [1, 2, 3, 4]).result()
        assert np.array_equal(cache.blocks([1, 2, 3, 4]), want)


def test_device_cache_swaps_through_registered_regions(gpu_emulation, tmp_path):
    cache = Cache(seed=9)
    layout = kv.KVLayout.vllm_flash([FakeCudaArray(c) for c in cache.layers])
    assert layout.device
    src, dst = [3, 4, 9], [10, 11, 12]
    want = cache.blocks(src)
    with SwapSpace(host_bytes=1 << 20, path=tmp_path) as space:
        space.swap_out("r", layout, src).result()
        assert space._copies["r"].host_ptr is not None          # pinned for the device's copies
        space.evict("r").result()
        cache.poison(src)
        space.swap_in("r", layout, dst).result()                 # SSD -> a registered region -> device
        assert space._copies["r"].host_ptr is not None
        assert np.array_equal(cache.blocks(dst), want)


def test_device_cache_without_a_gpu_raises_no_device(no_gpu):
    from hauler.errors import NoDevice
    cache = Cache(seed=9)
    layout = kv.KVLayout.vllm_flash([FakeCudaArray(c) for c in cache.layers])
    with SwapSpace(host_bytes=1 << 20) as space:
        with pytest.raises(NoDevice):
            space.swap_out("r", layout, [1, 2]).result()
        assert "r" not in space and space.counters["host_used_bytes"] == 0


def test_a_growing_group_appends_in_place(cache):
    rng = np.random.default_rng(8)
    bb = block_bytes()
    ids = list(range(20, 30))
    with SwapSpace(host_bytes=1 << 20) as space:
        space.swap_out("g", cache.layout, ids[:4]).result()
        space.swap_out("g", cache.layout, ids[:5], num_tokens=65).result()   # grows: room for 6 blocks
        copied = space.counters["host_copy_bytes"]
        assert copied == 4 * bb
        cache.write_tokens(ids, 65, 96, rng)
        assert space.swap_out("g", cache.layout, ids[:6]).result() == 2 * bb  # appended, nothing copied
        assert space.counters["host_copy_bytes"] == copied
        want = cache.blocks(ids[:6])
        cache.poison(ids)
        space.swap_in("g", cache.layout, ids[:6]).result()
        assert np.array_equal(cache.blocks(ids[:6]), want)

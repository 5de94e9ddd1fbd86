"""hauler.kv two-process transfer benchmark (the 2-process section of ``hauler-bench kv``).

A second process (this module with --serve) owns a pool of KV blocks; this one pulls (READ) and
pushes (WRITE) random scattered blocks of it with hauler's transports, with NIXL (when
``nixl_cu12`` imports) and Mooncake's transfer engine (when ``mooncake.engine`` imports: TCP, P2P
handshake, batches of at most 1,024) given the very same descriptors (the plan's segments), and copies the same
blocks inside one process (kv.copy_blocks: the memcpy limit). Then one 4k-token request of a
vLLM-shaped cache, end to end: read issued here -> notification seen by the peer (one
CLOCK_MONOTONIC for both processes).

    python -m hauler.bench.kv_transfer [--extents 4K,64K,256K,1M] [--counts 256,4096,16384]
                                       [--max-bytes 256M] [--repeat 5] [--json]
bench/kv.py calls ``add_arguments`` / ``run`` / ``report`` for its 2-process section.
"""
import argparse
import base64
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

NAME = "kv_transfer"
HELP = "KV blocks between 2 processes: hauler CMA/shm vs NIXL vs Mooncake vs memcpy; 4k-token request latency"
MC_BATCH = 1024  # descriptors per Mooncake batch: the batch size its users allocate
# batches in flight at once: with 4 (4,096 descriptors) its TCP lane queue rejects them ("queue-full")
# and the request fails at its 30 s timeout
MC_INFLIGHT = 2


def _size(s):
    s = s.strip().upper()
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(s[:-1]) * mult[s[-1]] if s[-1] in mult else int(s)


def add_arguments(p):
    p.add_argument("--extents", default="4K,64K,256K,1M", help="bytes per block extent (comma list)")
    p.add_argument("--counts", default="256,4096,16384", help="blocks per request (comma list)")
    p.add_argument("--max-bytes", default="256M", help="cap on one request's bytes (counts shrink to fit)")
    p.add_argument("--repeat", type=int, default=5, help="timed repetitions (best and median reported)")
    p.add_argument("--no-nixl", action="store_true", help="skip NIXL even where it imports")
    p.add_argument("--no-mooncake", action="store_true", help="skip Mooncake even where it imports")
    p.add_argument("--json", action="store_true", help="one JSON object per row instead of the table")
    p.add_argument("--quick", action="store_true", help="a correctness pass: 4K and 64K extents, 256 blocks, 2 "
                   "repetitions, and the MPI section where an MPI is found")


def _layout(pool, extent):
    """One block = one extent of `extent` bytes (int8 elements), blocks back to back in pool."""
    from hauler import kv
    nb = pool.numel() // extent
    return kv.KVLayout.explicit("int8", 1, 1, nb, 1, 1, extent, [[pool.data_ptr()]],
                                {"block": extent, "token": extent, "head": extent, "dim": 1})


def _pool(nbytes, seed):
    """The peer's random pool; the same seed gives the same bytes here, to check what arrived."""
    import torch
    return torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def _flash(nb, fill):
    """A vLLM flash (NHD) cache: 16 layers x (2, nb, 16 tokens, 8 heads, 128) float16."""
    import torch
    from hauler import kv
    caches = [torch.full((2, nb, 16, 8, 128), fill, dtype=torch.float16) for _ in range(16)]
    return caches, kv.KVLayout.vllm_flash(caches)


class _Nixl:
    def __init__(self, name):
        from nixl_cu12._api import nixl_agent, nixl_agent_config
        self.agent = nixl_agent(name, nixl_agent_config(backends=["UCX"]))
        self.regs = []

    def register(self, tensors):
        for t in tensors:
            self.regs.append(self.agent.register_memory(t))
        return self.agent.get_agent_metadata()

    def drop(self):
        for r in self.regs:
            self.agent.deregister_memory(r)
        self.regs = []


class _Mooncake:
    """Mooncake's transfer engine over TCP with the P2P handshake (no metadata server): a peer is
    named "host:rpc_port" and its registered buffers are fetched from it on first use."""

    def __init__(self):
        from mooncake.engine import TransferEngine
        self.engine = TransferEngine()
        rc = self.engine.initialize("127.0.0.1", "P2PHANDSHAKE", "tcp", "")
        if rc != 0:
            raise RuntimeError(f"TransferEngine.initialize('127.0.0.1', 'P2PHANDSHAKE', 'tcp', '') returned {rc}")
        self.target = f"127.0.0.1:{self.engine.get_rpc_port()}"
        self.regs = []

    def register(self, tensors):
        for t in tensors:
            rc = self.engine.register_memory(t.data_ptr(), t.numel() * t.element_size())
            if rc != 0:
                raise RuntimeError(f"TransferEngine.register_memory returned {rc}")
            self.regs.append(t.data_ptr())
        return self.target

    def drop(self):
        for addr in self.regs:
            self.engine.unregister_memory(addr)
        self.regs = []


def _mc_xfer(mc, op, segs, local_col, remote_col, target, notify=None):
    """One request as Mooncake batches of at most MC_BATCH descriptors (one per segment), at most
    MC_INFLIGHT of them submitted before waiting for them together. With `notify`, the last batch
    goes after the others are done, synchronously with the notification (its API sends one only
    for a synchronous batch)."""
    loc, rem, lens = (segs[:, c].tolist() for c in (local_col, remote_col, 2))
    chunks = [(loc[i:i + MC_BATCH], rem[i:i + MC_BATCH], lens[i:i + MC_BATCH]) for i in range(0, len(loc), MC_BATCH)]
    submit = mc.engine.batch_transfer_async_read if op == "READ" else mc.engine.batch_transfer_async_write
    bad = (0, (1 << 64) - 1)  # its submit answers 0 (or -1 as an unsigned batch id) on failure

    def go():
        ids, failed = [], None
        for lo, re_, n in (chunks[:-1] if notify is not None else chunks):
            if len(ids) == MC_INFLIGHT:
                if mc.engine.get_batch_transfer_status(ids) != 0:
                    ids, failed = [], f"Mooncake {op} to {target} failed or timed out"
                    break
                ids = []
            b = submit(target, lo, re_, n)
            if b in bad:
                failed = f"Mooncake {op} batch submit to {target} failed"
                break
            ids.append(b)
        if ids and mc.engine.get_batch_transfer_status(ids) != 0:
            failed = failed or f"Mooncake {op} to {target} failed or timed out"
        if notify is not None and not failed:
            from mooncake.engine import TransferNotify, TransferOpcode
            code = TransferOpcode.Read if op == "READ" else TransferOpcode.Write
            if mc.engine.batch_transfer_sync(target, *chunks[-1], code, TransferNotify("bench", notify)) != 0:
                failed = f"Mooncake {op} with notification to {target} failed"
        if failed:
            raise RuntimeError(failed)
    return go


def _digest(t, blocks, extent):
    import hashlib
    return hashlib.sha256(t.view(-1, extent)[blocks].numpy().tobytes()).hexdigest()


def _serve():
    """Peer side: JSON lines on stdin, one JSON reply line each."""
    from hauler.kv import Agent
    agent, nixl, mc, keep = None, None, None, None
    for line in sys.stdin:
        cmd, reply = json.loads(line), {}
        op = cmd["op"]
        if op == "setup":
            if agent is not None:
                agent.close()
            if nixl is not None:
                nixl.drop()
            if mc is not None:  # a fresh engine (a new rpc port) each setup: the other side caches what it fetched
                mc.drop()
                mc = None
            if cmd["kind"] == "pool":
                keep = [_pool(cmd["nb"] * cmd["extent"], cmd.get("seed", 0))]
                layout = _layout(keep[0], cmd["extent"])
            else:
                keep, layout = _flash(cmd["nb"], 1.0)
            agent = Agent("bench-peer", transport=cmd.get("transport", "auto"))
            reply["meta"] = base64.b64encode(agent.register(layout)).decode()
            if cmd.get("nixl"):
                nixl = nixl or _Nixl("bench-peer-nixl")
                reply["nixl"] = base64.b64encode(nixl.register(keep)).decode()
            if cmd.get("mooncake"):
                try:
                    mc = _Mooncake()
                    reply["mooncake"] = mc.register(keep)
                except Exception as e:  # noqa: BLE001 -- said in the table header, the other rows run
                    reply["mooncake_error"] = f"{type(e).__name__}: {e}"
        elif op == "digest":  # sha256 of the pool's blocks, in the order asked
            reply["sha256"] = _digest(keep[0], cmd["blocks"], cmd["extent"])
        elif op == "note":  # the monotonic time the next notification (hauler or NIXL) was seen
            end = time.monotonic() + cmd.get("timeout", 30)
            while time.monotonic() < end:
                if agent.notifications(timeout=0.0005 if nixl is None and mc is None else 0):
                    reply["t"] = time.monotonic()
                    break
                if nixl is not None and nixl.agent.get_new_notifs():
                    reply["t"] = time.monotonic()
                    break
                if mc is not None and mc.engine.get_notifies():
                    reply["t"] = time.monotonic()
                    break
        elif op == "exit":
            break
        sys.stdout.write("@@" + json.dumps(reply) + "\n")  # NIXL/UCX may log on stdout too
        sys.stdout.flush()
    if agent is not None:
        agent.close()
    if mc is not None:
        mc.drop()
        del mc


class _Peer:
    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, "-m", "hauler.bench.kv_transfer", "--serve"],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def send(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()

    def reply(self):
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"benchmark peer exited (rc {self.proc.poll()})")
            if line.startswith("@@"):
                return json.loads(line[2:])

    def request(self, **cmd):
        self.send(**cmd)
        return self.reply()

    def close(self):
        if self.proc.poll() is None:
            self.send(op="exit")
            self.proc.wait(timeout=60)


def _time(fn, repeat):
    fn()  # warm: plans built, pages touched, connections made
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return min(ts), float(np.median(ts))


def _nixl_xfer(nx, op, segs, local_col, remote_col, remote_name, notif=b""):
    loc = np.stack([segs[:, local_col], segs[:, 2], np.zeros(len(segs), np.int64)], axis=1)
    rem = np.stack([segs[:, remote_col], segs[:, 2], np.zeros(len(segs), np.int64)], axis=1)
    h = nx.agent.initialize_xfer(op, nx.agent.get_xfer_descs(loc, "DRAM"), nx.agent.get_xfer_descs(rem, "DRAM"),
                                 remote_name, notif)

    def go():
        st = nx.agent.transfer(h)
        while st != "DONE":
            if st == "ERR":
                raise RuntimeError("NIXL transfer failed")
            st = nx.agent.check_xfer_state(h)
    return go


def run(args):
    import torch
    from hauler import kv
    from hauler.kv import Agent
    extents = [_size(x) for x in args.extents.split(",")]
    counts = [int(x) for x in args.counts.split(",")]
    cap = _size(args.max_bytes)
    use_nixl = not args.no_nixl
    nixl_why = None
    if use_nixl:
        try:
            import nixl_cu12  # noqa: F401
        except ImportError as e:
            use_nixl, nixl_why = False, f"nixl_cu12 does not import: {e}"
    mc, mc_why = None, "skipped (--no-mooncake)" if args.no_mooncake else None
    if not args.no_mooncake:
        os.environ.setdefault("MC_LOG_LEVEL", "WARNING")  # its INFO lines (one per batch), here and in the peer
        try:
            mc = _Mooncake()
        except ImportError as e:
            mc_why = f"mooncake.engine does not import: {e}"
        except RuntimeError as e:
            mc_why = f"cannot run here: {e}"
    rows, peer, rng = [], _Peer(), np.random.default_rng(0)
    nx = _Nixl("bench-main-nixl") if use_nixl else None
    try:
        for extent in extents:
            for count in sorted({min(c, max(1, cap // extent)) for c in counts}):
                nb = 2 * count
                seed = len(rows) + 1
                r = peer.request(op="setup", kind="pool", nb=nb, extent=extent, nixl=use_nixl, seed=seed,
                                 mooncake=mc is not None)
                theirs = _pool(nb * extent, seed).view(nb, extent)
                mine = torch.zeros(nb * extent, dtype=torch.uint8)
                other = torch.randint(0, 256, (nb * extent,), dtype=torch.uint8)
                lay, lay2 = _layout(mine, extent), _layout(other, extent)
                src = rng.choice(nb, count, replace=False)
                dst = rng.choice(nb, count, replace=False)
                row = {"extent": extent, "blocks": count, "bytes": count * extent, "ok": True}
                mapping = np.stack([src, dst], axis=1)
                row["memcpy"] = _time(lambda: kv.copy_blocks(lay2, lay, mapping), args.repeat)
                meta = base64.b64decode(r["meta"])
                for tr in ("cma", "shm"):
                    with Agent(f"bench-{tr}", transport=tr) as a:
                        a.register(lay)
                        p = a.connect(meta)
                        mine.zero_()
                        row[f"hauler_{tr}_read"] = _time(lambda: a.read(p, dst, src).wait(), args.repeat)
                        row["ok"] &= bool(torch.equal(mine.view(nb, extent)[dst], theirs[src]))
                        if tr == "cma":
                            row["hauler_cma_write"] = _time(lambda: a.write(p, dst, src).wait(), args.repeat)
                            segs = kv.plan(p.layout, src, lay, dst).segments()
                            wsegs = kv.plan(lay, dst, p.layout, src).segments()
                            row["segments"] = len(segs)
                if use_nixl:
                    nx.drop()
                    nx.register([mine])
                    name = nx.agent.add_remote_agent(base64.b64decode(r["nixl"]))
                    row["nixl_read"] = _time(_nixl_xfer(nx, "READ", segs, 1, 0, name), args.repeat)
                    row["nixl_write"] = _time(_nixl_xfer(nx, "WRITE", wsegs, 0, 1, name), args.repeat)
                    nx.agent.remove_remote_agent(name)
                if mc is not None and "mooncake_error" in r:
                    mc_why = f"cannot run here (peer): {r['mooncake_error']}"
                    mc.drop()
                    mc = None
                if mc is not None:
                    _mc_rows(mc, r["mooncake"], peer, row, mine, segs, wsegs, theirs, src, dst, args.repeat)
                rows.append(row)
        lat = _latency(peer, nx, mc, args.repeat)
    finally:
        peer.close()
        if nx is not None:
            nx.drop()
            del nx.agent  # its teardown now, while the interpreter is whole
        if mc is not None:
            mc.drop()
            del mc.engine
    return {"rows": rows, "latency": lat, "nixl": nixl_why or ("ran" if use_nixl else "skipped (--no-nixl)"),
            "mooncake": mc_why or "ran"}


def _mc_rows(mc, target, peer, row, mine, segs, wsegs, theirs, src, dst, repeat):
    """Mooncake READ then WRITE of the row's blocks; ok also needs its read to bring the peer's
    blocks and its write to land fresh bytes in the peer's pool."""
    import torch
    nb, extent = theirs.shape
    mc.drop()
    mc.register([mine])
    mine.zero_()
    row["mooncake_read"] = _time(_mc_xfer(mc, "READ", segs, 1, 0, target), repeat)
    row["ok"] &= bool(torch.equal(mine.view(nb, extent)[dst], theirs[src]))
    fresh = torch.randint(0, 256, (len(dst), extent), dtype=torch.uint8)
    mine.view(nb, extent)[dst] = fresh  # differs from what the peer holds, so a lost write shows
    row["mooncake_write"] = _time(_mc_xfer(mc, "WRITE", wsegs, 0, 1, target), repeat)
    seen = peer.request(op="digest", blocks=[int(b) for b in src], extent=extent)["sha256"]
    row["ok"] &= seen == _digest(mine, dst, extent)


def _latency(peer, nx, mc, repeat):
    """One 4k-token request (256 blocks of 16 tokens, 16 layers, K and V: 8192 extents of 32 KiB,
    256 MiB): read issued here -> notification seen by the peer."""
    from hauler import kv
    from hauler.kv import Agent
    r = peer.request(op="setup", kind="flash", nb=512, nixl=nx is not None, mooncake=mc is not None)
    keep, lay = _flash(512, 0.0)
    src, dst = np.random.default_rng(1).permutation(512)[:256], np.arange(256)
    out = {"bytes": lay.block_bytes * 256}
    with Agent("bench-lat") as a:
        a.register(lay)
        p = a.connect(base64.b64decode(r["meta"]))
        remote = p.layout
        ts = []
        for i in range(repeat + 1):
            peer.send(op="note")
            t0 = time.monotonic()
            a.read(p, dst, src, notify=b"req%d" % i).wait()
            ts.append(peer.reply()["t"] - t0)
        out["hauler_cma"] = (min(ts[1:]), float(np.median(ts[1:])))
    if nx is not None:
        nx.drop()
        nx.register(keep)
        name = nx.agent.add_remote_agent(base64.b64decode(r["nixl"]))
        segs = kv.plan(remote, src, lay, dst).segments()
        ts = []
        for i in range(repeat + 1):
            go = _nixl_xfer(nx, "READ", segs, 1, 0, name, b"req%d" % i)
            peer.send(op="note")
            t0 = time.monotonic()
            go()
            ts.append(peer.reply()["t"] - t0)
        out["nixl"] = (min(ts[1:]), float(np.median(ts[1:])))
        nx.agent.remove_remote_agent(name)
    if mc is not None and "mooncake" in r:
        mc.drop()
        mc.register(keep)
        segs = kv.plan(remote, src, lay, dst).segments()
        ts = []
        for i in range(repeat + 1):
            go = _mc_xfer(mc, "READ", segs, 1, 0, r["mooncake"], "req%d" % i)
            peer.send(op="note")
            t0 = time.monotonic()
            go()
            ts.append(peer.reply()["t"] - t0)
        out["mooncake"] = (min(ts[1:]), float(np.median(ts[1:])))
    return out


COLS = [("memcpy", "memcpy"), ("hauler_cma_read", "cma rd"), ("hauler_cma_write", "cma wr"),
        ("hauler_shm_read", "shm rd"), ("nixl_read", "nixl rd"), ("nixl_write", "nixl wr"),
        ("mooncake_read", "mc rd"), ("mooncake_write", "mc wr")]


def report(res, as_json=False, out=sys.stdout):
    if as_json:
        out.write(json.dumps(res) + "\n")
        return
    out.write(f"# hauler-bench kv (2 processes): {platform.node()}, {os.cpu_count()} CPUs, NIXL: {res['nixl']}, "
              f"Mooncake: {res.get('mooncake', 'not asked')}\n")
    out.write("# GB/s from the best of the repetitions; every figure moves the same bytes between the same "
              "random blocks; memcpy = kv.copy_blocks in one process; mc = Mooncake TCP, batches of at most "
              f"{MC_BATCH}; ok: the blocks the reads (cma, shm, mc) brought equal the peer's and mc's writes "
              "landed in its pool\n")
    hdr = f"{'extent':>8} {'blocks':>6} {'MiB':>6} {'segs':>6} " + " ".join(f"{c:>8}" for _, c in COLS) + \
        f" {'cma/nixl':>8} {'cma/memcpy':>10} {'ok':>3}"
    out.write(hdr + "\n")
    for row in res["rows"]:
        gbs = {k: row["bytes"] / row[k][0] / 1e9 for k, _ in COLS if k in row}
        ratio = gbs["hauler_cma_read"] / gbs["nixl_read"] if "nixl_read" in gbs else float("nan")
        out.write(f"{row['extent']:>8} {row['blocks']:>6} {row['bytes'] / 2**20:>6.0f} {row['segments']:>6} " +
                  " ".join(f"{gbs[k]:>8.2f}" if k in gbs else f"{'-':>8}" for k, _ in COLS) +
                  f" {ratio:>8.2f} {gbs['hauler_cma_read'] / gbs['memcpy']:>10.2f} "
                  f"{'yes' if row.get('ok', True) else 'NO':>3}\n")
    lat = res["latency"]
    out.write(f"# one 4k-token request ({lat['bytes'] / 2**20:.0f} MiB), read issued -> notification seen: "
              + ", ".join(f"{k} {v[0] * 1e3:.2f} ms (median {v[1] * 1e3:.2f})" for k, v in lat.items() if k != "bytes")
              + "\n")


def _mpi_worker(args):
    """Under mpiexec -n 2: rank 1 pulls rank 0's random blocks with hauler's MPI transport (one
    MPI_Get of a derived type per request), with its two-sided one (mpi2: rank 0 packs the blocks
    into one message), with a per-block MPI_Get loop (one Get per extent, one flush), and with
    hauler's CMA transport; prints one JSON line of rows on rank 1."""
    import mpi4py
    mpi4py.rc.thread_level = "serialized"
    from mpi4py import MPI
    import torch
    from hauler import kv
    from hauler.kv import Agent
    from hauler.kv.transport_mpi import exchange_metadata
    comm = MPI.COMM_WORLD
    rank, rows = comm.Get_rank(), []
    rng = np.random.default_rng(0)
    for extent in [_size(x) for x in args.extents.split(",")]:
        count = min(max(int(x) for x in args.counts.split(",")), max(1, _size(args.max_bytes) // extent))
        nb = 2 * count
        pool = torch.randint(0, 256, (nb * extent,), dtype=torch.uint8)
        lay = _layout(pool, extent)
        src, dst = rng.choice(nb, count, replace=False), rng.choice(nb, count, replace=False)
        row = {"extent": extent, "blocks": count, "bytes": count * extent}
        with Agent(f"mpi{rank}", transport="mpi") as a, Agent(f"cma{rank}", transport="cma") as c:
            metas = exchange_metadata(comm, a.register(lay))
            cmetas = exchange_metadata(comm, c.register(lay))
            p, pc = a.connect(metas[1 - rank]), c.connect(cmetas[1 - rank])
            if rank == 1:
                row["hauler_mpi_read"] = _time(lambda: a.read(p, dst, src).wait(), args.repeat)
                row["hauler_cma_read"] = _time(lambda: c.read(pc, dst, src).wait(), args.repeat)
                segs = kv.plan(p.layout, src, lay, dst).segments()
                win = a._mpi.win

                def loop():
                    for s_, d_, n_ in segs:
                        win.Get([MPI.buffer.fromaddress(int(d_), int(n_)), MPI.BYTE], 0,
                                [int(s_), int(n_), MPI.BYTE])
                    win.Flush(0)
                row["mpi_get_loop"] = _time(loop, args.repeat)
                rows.append(row)
            comm.Barrier()  # rank 0 stays in MPI (progress for osc/pt2pt) until rank 1 is done
        # two-sided, packed by hauler: its own agent after the others closed (one agent's MPI calls at
        # a time under THREAD_SERIALIZED)
        with Agent(f"mpi2{rank}", transport="mpi2") as a2:
            p2 = a2.connect(exchange_metadata(comm, a2.register(lay))[1 - rank])
            if rank == 1:
                row["hauler_mpi2_read"] = _time(lambda: a2.read(p2, dst, src).wait(), args.repeat)
            comm.Barrier()
    if rank == 1:
        print("@@" + json.dumps(rows), flush=True)


def run_mpi(args):
    """The MPI section: this module under mpiexec -n 2 (Open MPI, osc/pt2pt; see
    tests/test_kv_agent_mpi.py). Returns rows or raises with the launcher's output."""
    from hauler import mpi_find
    env = mpi_find.mpiexec_env()
    env.setdefault("OMPI_MCA_osc", "pt2pt")
    argv = mpi_find.mpiexec_argv(2) + [sys.executable, "-m", "hauler.bench.kv_transfer", "--mpi-worker",
                                       "--extents", args.extents, "--counts", args.counts, "--max-bytes",
                                       args.max_bytes, "--repeat", str(args.repeat)]
    r = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1800)
    for line in r.stdout.splitlines():
        if line.startswith("@@"):
            return json.loads(line[2:])
    raise RuntimeError(f"MPI section failed (rc {r.returncode}): {(r.stdout + r.stderr)[-2000:]}")


def report_mpi(rows, out=sys.stdout):
    out.write("# MPI section (mpiexec -n 2, one node): GB/s, best of the repetitions\n")
    out.write(f"{'extent':>8} {'blocks':>6} {'mpi 1-call':>10} {'mpi2':>8} {'get loop':>9} {'cma':>8} "
              f"{'cma/mpi':>8} {'cma/mpi2':>8}\n")
    for row in rows:
        g = {k: row["bytes"] / row[k][0] / 1e9 for k in ("hauler_mpi_read", "hauler_mpi2_read", "mpi_get_loop",
                                                          "hauler_cma_read")}
        out.write(f"{row['extent']:>8} {row['blocks']:>6} {g['hauler_mpi_read']:>10.2f} {g['hauler_mpi2_read']:>8.2f} "
                  f"{g['mpi_get_loop']:>9.2f} {g['hauler_cma_read']:>8.2f} "
                  f"{g['hauler_cma_read'] / g['hauler_mpi_read']:>8.2f} "
                  f"{g['hauler_cma_read'] / g['hauler_mpi2_read']:>8.2f}\n")


def section(opts, rep, out):
    """bench/kv.py's 2-process section: this benchmark in a child process (NIXL's exit crash stays
    there) with the kv bench's sizes; its table goes into the report's footer, the figures into
    rep.info["transfer"] for --json."""
    import io
    extents = list(opts.extents)
    counts = sorted(opts.counts)[:1] if opts.quick else list(opts.counts)
    argv = [sys.executable, "-m", "hauler.bench.kv_transfer", "--json", "--extents", ",".join(map(str, extents)),
            "--counts", ",".join(map(str, counts)), "--max-bytes", str(opts.max_bytes),
            "--repeat", str(opts.repeat)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("{")]
    if r.returncode != 0 or not lines:
        rep.warnings.append(f"2-process transfer section failed (rc {r.returncode}): "
                            f"{(r.stdout + r.stderr)[-500:]}")
        return
    res = json.loads(lines[-1])
    buf = io.StringIO()
    report(res, out=buf)
    text = [ln[2:] if ln.startswith("# ") else ln for ln in buf.getvalue().splitlines()]
    rep.footer += ["2-process transfers: " + text[0]] + text[1:]
    rep.info["transfer"] = res


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m hauler.bench.kv_transfer", description=HELP)
    add_arguments(p)
    p.add_argument("--mpi", action="store_true", help="also the MPI section (mpiexec -n 2)")
    p.add_argument("--mpi-only", action="store_true", help="only the MPI section")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mpi-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve:
        _serve()
        return 0
    if args.mpi_worker:
        _mpi_worker(args)
        return 0
    if args.quick:
        args.extents, args.counts, args.repeat, args.max_bytes = "4K,64K", "256", 2, "16M"
        try:
            report_mpi(run_mpi(args))
        except Exception as e:  # noqa: BLE001 -- no MPI here, or the section failed: said, the rest runs
            print(f"# MPI section not run: {type(e).__name__}: {str(e)[:300]}")
    if args.mpi or args.mpi_only:
        report_mpi(run_mpi(args))
    if not args.mpi_only:
        res = run(args)
        report(res, args.json)
        if res["nixl"] == "ran":
            # nixl_cu12 1.5.1 dies at interpreter exit (std::terminate, then SIGSEGV, even after
            # its agent was released); the figures are out, so leave without that teardown.
            sys.stdout.flush()
            os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The training-loop child of `hauler-bench io` (bench/io.py runs it, one process per mode).

    python offload_step.py MODE DIRECTORY WIDTH DEPTH BATCH PAIRS THREADS [FIO]

MODE: rss-plain / rss-offload (print the peak RSS of one step) or time (plain and offloaded
steps alternating, the same I/O alone, and with FIO, fio's I/O beside a plain step). Prints one
JSON object on its last line.
"""
import json, os, statistics, sys, time, torch
from peak_rss import print_peak_of_second  # a sibling file: this directory is on sys.path
mode, directory = sys.argv[1], sys.argv[2]
width, depth, batch, pairs, threads = map(int, sys.argv[3:8])
if threads:
    torch.set_num_threads(threads)
torch.manual_seed(0)
model = torch.nn.Sequential(*[torch.nn.Sequential(torch.nn.Linear(width, width), torch.nn.GELU())
                              for _ in range(depth)])
opt = torch.optim.SGD(model.parameters(), lr=1e-6)
x = torch.randn(batch, width)
off = None
if mode in ("time", "rss-offload"):
    from hauler.offload import offload
    off = offload(directory, min_bytes=1 << 20)
def backward(o):
    opt.zero_grad(set_to_none=True)
    if o is not None:
        with o:
            loss = model(x).square().mean()
    else:
        loss = model(x).square().mean()
    loss.backward()
def step(o):
    t0, c0 = time.perf_counter(), os.times()
    backward(o)
    opt.step()
    c1 = os.times()
    return time.perf_counter() - t0, c1.user - c0.user + c1.system - c0.system
if mode.startswith("rss"):
    print_peak_of_second(lambda: step(off))
step(None), step(off), step(off)  # warm-up: allocator, store files, I/O rings
# Correctness, untimed: from the same weights, the gradients of a step whose saved tensors went
# through the store (some written and read back) equal those of a plain step, bit for bit.
def grads(o):
    backward(o)
    return [p.grad.clone() for p in model.parameters()]
written, read = off.stats["bytes_written"], off.stats["bytes_read"]
diffs = [(a - b).abs().max().item() for a, b in zip(grads(None), grads(off))]
written, read = off.stats["bytes_written"] - written, off.stats["bytes_read"] - read
check = {"correct": max(diffs) == 0.0 and written > 0 and read > 0, "max_abs_diff": max(diffs),
         "bytes_written": written, "bytes_read": read}
for k, v in off.stats.items():
    if isinstance(v, (int, float)):
        off.stats[k] = 0
plain, offl = [], []
for i in range(pairs):  # both in one process, alternating: drift hits both alike
    if i % 2:
        plain.append(step(None)); offl.append(step(off))
    else:
        offl.append(step(off)); plain.append(step(None))
res = {"plain": plain, "offload": offl, "stats": dict(off.stats), "steps_counted": pairs, "check": check,
       "threads": torch.get_num_threads()}
# The same I/O alone: one step's saved tensors (their sizes recorded by a forward pass)
# written as forward does (all queued at once, then waited for), then read back as
# backward does (in reverse, prefetch reads ahead; the last keep_last stay in memory),
# through the same store; no compute.
sizes = []
def record(t):
    if not isinstance(t, torch.nn.Parameter) and t.numel() * t.element_size() >= off.min_bytes:
        sizes.append(t.numel() * t.element_size())
    return t
with torch.autograd.graph.saved_tensors_hooks(record, lambda t: t):
    model(x).square().mean()
bufs = [torch.empty(n, dtype=torch.uint8) for n in sizes]
alone = []
for r in range(3):
    t0 = time.perf_counter()
    for fut in [off.store.put(f"alone-{i}", b) for i, b in enumerate(bufs)]:
        fut.result()
    t1 = time.perf_counter()
    pending = {}
    for i in reversed(range(max(0, len(bufs) - off.keep_last))):
        for j in range(i, max(-1, i - 1 - off.prefetch), -1):
            if j not in pending:
                pending[j] = off.store.get(f"alone-{j}")
        pending.pop(i).result()
    alone.append((t1 - t0, time.perf_counter() - t1))
res.update(io_alone=alone, io_alone_bytes=sum(sizes))
# The limit of hiding this I/O here: fio moves the same bytes (the writes, then the reads, in
# 8 MiB O_DIRECT requests paced over about a step) in its own process beside a plain step;
# whatever that step loses is what the machine charges the computation for the I/O itself.
fio = sys.argv[8] if len(sys.argv) > 8 else ""   # fio's path, or "": no such rows
if fio:
    import subprocess
    wb, rb = sum(sizes), res["stats"]["bytes_read"] // max(1, pairs)
    rate = f"{max(1, int((wb + rb) / statistics.median(t for t, _ in plain) / 1e6))}M"
    path = os.path.join(directory, "fio-beside")
    job = ["--filename=" + path, f"--size={wb}", "--bs=8M", "--direct=1", "--ioengine=io_uring",
           "--iodepth=4", "--rate=" + rate]
    cmd = [fio, "--output=/dev/null", "--name=w", *job, "--rw=write", f"--io_size={wb}",
           "--name=r", "--stonewall", *job, "--rw=read", f"--io_size={max(rb, 8 << 20)}"]
    subprocess.run(cmd, check=True, capture_output=True)   # lays the file out
    beside = []
    for i in range(min(pairs, 6)):
        a = step(None)
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.05)   # its start-up (exec, file open) before the step
        b = step(None)
        if p.wait() != 0:
            raise RuntimeError(f"fio beside the step failed: {' '.join(cmd)}")
        beside.append((a[0], b[0]))
    os.unlink(path)
    res.update(fio_beside=beside, fio_rate=rate)
print(json.dumps(res))

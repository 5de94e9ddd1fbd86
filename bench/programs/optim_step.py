"""The optimizer-offload child of `hauler-bench io` (bench/io.py runs it, one process per mode).

    python optim_step.py MODE DIRECTORY NUMEL PAIRS THREADS CHUNK_BYTES

MODE: rss-plain / rss-offload (the peak RSS of one Adam step, in memory or with the state in
DIRECTORY through hauler.offload.OptimizerOffload) or time (steps of both alternating on two
copies of the same parameters, compared bit for bit). NUMEL fp32 parameters in 8 tensors.
Prints one JSON object on its last line.
"""
import json, os, sys, time, torch
from hauler.offload import OptimizerOffload
from peak_rss import print_peak_of_second  # a sibling file: this directory is on sys.path
mode, directory = sys.argv[1], sys.argv[2]
numel, pairs, threads, chunk = map(int, sys.argv[3:7])
if threads:
    torch.set_num_threads(threads)
def make():
    g = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(numel // 8, generator=g)) for _ in range(8)]
    for p in ps:
        p.grad = torch.randn(p.shape, generator=g)
    return ps
def step(opt):
    t0, c0 = time.perf_counter(), os.times()
    opt.step()
    c1 = os.times()
    return time.perf_counter() - t0, c1.user - c0.user + c1.system - c0.system
if mode.startswith("rss"):
    ps = make()
    opt = torch.optim.Adam(ps, lr=1e-3) if mode == "rss-plain" else OptimizerOffload(ps, directory, chunk_bytes=chunk)
    print_peak_of_second(lambda: step(opt))  # the state exists after the first (in memory or on disk)
ps_plain, ps_off = make(), make()
plain = torch.optim.Adam(ps_plain, lr=1e-3)
off = OptimizerOffload(ps_off, directory, lr=1e-3, chunk_bytes=chunk)
step(plain), step(off)   # warm-up: state made, file allocated
for k in off.stats:
    off.stats[k] = type(off.stats[k])(0)
times_plain, times_off = [], []
for i in range(pairs):  # alternating in one process: drift hits both alike
    if i % 2:
        times_plain.append(step(plain)); times_off.append(step(off))
    else:
        times_off.append(step(off)); times_plain.append(step(plain))
same = all(torch.equal(a, b) for a, b in zip(ps_plain, ps_off))
state = 2 * numel * 4
print(json.dumps({"plain": times_plain, "offload": times_off, "stats": dict(off.stats), "steps_counted": pairs,
                  "correct": same, "state_bytes": state, "threads": torch.get_num_threads(),
                  "file_bytes": off._file_end}))
off.close()

"""Peak RSS of the benchmark child programs' own process image (offload_step.py, optim_step.py)."""


def hwm():  # VmHWM in KiB: peak RSS of this process image (ru_maxrss is inherited across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])


def reset_hwm():  # restart VmHWM from the current RSS
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")

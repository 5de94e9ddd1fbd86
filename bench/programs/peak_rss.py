"""Peak RSS of the benchmark child programs' own process image (offload_step.py, optim_step.py)."""
import json
import sys


def hwm():  # VmHWM in KiB: peak RSS of this process image (ru_maxrss is inherited across exec)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])


def reset_hwm():  # restart VmHWM from the current RSS
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def print_peak_of_second(step):
    """Runs step() twice, the first a warm-up (the state exists from then on), prints the peak RSS of
    the second as the program's JSON line and exits."""
    step()
    try:
        reset_hwm()  # the peak of the timed step only
    except OSError:
        pass
    step()
    print(json.dumps({"peak_rss_kib": hwm()}))
    sys.exit(0)

"""A host double of hauler.offload's device interface (runtime/offload.py, _CudaDevice): CPU
tensors stand for device tensors, each stream is a one-thread executor (work runs in the order
queued, as on a CUDA stream) and an event is the future of the last copy queued there. The
copies really are asynchronous, so the offload's ordering (wait for the device-to-host copy
before writing, for the host-to-device copy before use) is exercised, not assumed. The core's
GPU emulation has no copies, streams or events to stand on; this double is the Python half."""
from __future__ import annotations

import concurrent.futures
import contextlib
from collections import Counter

import torch


class EmulatedDevice:
    name = "emulation"

    def __init__(self, direct: bool = False):
        self.direct = direct
        self.d2h = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="emu-d2h")
        self.h2d = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="emu-h2d")
        self.calls = Counter()

    def owns(self, t):
        return t.device.type == "cpu"

    def direct_io(self, directory):
        return (True, "emulated cuFile") if self.direct else (False, "emulated device without cuFile")

    @staticmethod
    def _done():
        f = concurrent.futures.Future()
        f.set_result(None)
        return f

    def ready(self, t):
        self.calls["ready"] += 1
        return self._done()

    def to_host(self, t):
        self.calls["to_host"] += 1
        host = torch.empty(t.shape, dtype=t.dtype)
        return host, self.d2h.submit(host.copy_, t)

    def host_buffer(self, shape, dtype):
        self.calls["host_buffer"] += 1
        return torch.empty(shape, dtype=dtype)

    def empty(self, shape, dtype, device):
        self.calls["empty"] += 1
        return torch.empty(shape, dtype=dtype)

    def to_device(self, host, device):
        self.calls["to_device"] += 1
        d = torch.empty(host.shape, dtype=host.dtype)
        return d, self.h2d.submit(d.copy_, host)

    def filled(self, d):
        return self._done()

    def wait(self, ev):
        ev.result()

    def consume(self, d, ev):
        self.calls["consume"] += 1
        ev.result()

    def close(self):
        self.d2h.shutdown()
        self.h2d.shutdown()


@contextlib.contextmanager
def emulated_device(direct=False):
    """hauler.offload treats CPU tensors as device tensors of an EmulatedDevice meanwhile."""
    from hauler import offload as mod
    dev = EmulatedDevice(direct)
    mod._DEVICES.insert(0, dev)
    try:
        yield dev
    finally:
        mod._DEVICES.remove(dev)
        dev.close()


def train_step(model, x, off=None, wait=False):
    """One forward + backward of model on x (inside the Offload `off` when given; `wait`: every
    write finished before backward, so that backward reads everything back); the gradients."""
    model.zero_grad(set_to_none=True)
    if off is None:
        loss = model(x).square().mean()
    else:
        with off:
            loss = model(x).square().mean()
        if wait:
            off.wait_writes()
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]

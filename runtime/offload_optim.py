"""Adam/AdamW with the optimizer state on NVMe (after Fuyou): ``hauler.offload.OptimizerOffload``.

    from hauler.offload import OptimizerOffload
    opt = OptimizerOffload(torch.optim.AdamW(model.parameters(), lr=1e-3), "/nvme/optim")
    loss.backward(); opt.step(); opt.zero_grad()

The moments (exp_avg, exp_avg_sq, max_exp_avg_sq with amsgrad) and, with ``master_weights=True``,
fp32 master copies of float16/bfloat16 parameters live in one file of a private subdirectory of
``directory``. ``step()`` streams them through host memory in chunks of about ``chunk_bytes``:
reading chunk i+1, computing chunk i and writing chunk i-1 overlap (hauler.io futures), so host
memory holds three chunk buffers whatever the model's size. The arithmetic is torch.optim.Adam's
single-tensor (foreach=False) implementation, op for op, on the chunk views: results are
bit-identical to torch.optim.Adam/AdamW on the same inputs. Parameters on a GPU are stepped there
(the chunk's state is copied to the device and back); the host buffers and the file are the same.

A step is all or nothing. Each chunk has two slots in the file; a step reads the current slot and
writes the other one with the chunk's state after the step and its parameter values before it
(the undo copy). Only when every chunk's write succeeded do the slots switch. When a read or a
write fails (EIO, ENOSPC on a copy-on-write file system, a file size limit), step() waits for the
requests in flight, puts the parameters it changed back (from the chunk buffer, or the undo copy
written), restores the step counts, and raises: the optimizer and the parameters are as before the
step, which may be retried. The file is preallocated (posix_fallocate) when a parameter gets its
state, so a full disk fails that first step before any parameter changes.
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
import threading
import time
import weakref
from typing import Any, Dict, List, Optional

import torch

from . import _buffers
from .errors import Closed, HaulerIOError, InvalidArgument

__all__ = ["OptimizerOffload"]

_ALIGN = 4096
_CHUNK_ELEMS = 1024          # chunk boundaries fall on multiples of this many elements
_LOW_PRECISION = (torch.float16, torch.bfloat16)
_UNSET = object()
_HYPER = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False,
          "maximize": False, "decoupled_weight_decay": False}


def _round_up(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _step_dtype() -> torch.dtype:
    """The dtype of torch.optim.Adam's state["step"] (torch.optim.optimizer._get_scalar_dtype)."""
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _flat(t: torch.Tensor) -> torch.Tensor:
    """t's elements in memory order as a 1-D view (t must be dense: contiguous in some order)."""
    if t.is_contiguous():
        return t.view(-1)
    dims = sorted(range(t.dim()), key=lambda d: t.stride(d))
    expect = 1
    for d in dims:
        if t.size(d) != 1 and t.stride(d) != expect:
            raise InvalidArgument(f"a parameter of shape {tuple(t.shape)} and strides {t.stride()} is not dense "
                                  f"in memory (overlapping or with gaps); OptimizerOffload steps dense tensors")
        expect *= t.size(d)
    return t.as_strided((t.numel(),), (1,), t.storage_offset())


def _adam_chunk(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, t1, t2, *, amsgrad, beta1, beta2, lr,
                weight_decay, eps, maximize, decoupled_weight_decay, step):
    """torch.optim.adam._single_tensor_adam (torch 2.13, capturable=False, differentiable=False)
    for one tensor, op for op, so a chunk's elements get the bits the whole tensor's would. The
    two temporaries torch allocates (the changed gradient, the denominator) go to t1 and t2
    (tensors like param): the same kernels write them, without an allocation per chunk."""
    if maximize:
        grad = torch.neg(grad, out=t1)
    if weight_decay != 0:
        if decoupled_weight_decay:
            param.mul_(1 - lr * weight_decay)
        else:
            grad = torch.add(grad, param, alpha=weight_decay, out=t1)
    if torch.is_complex(param):
        grad = torch.view_as_real(grad)
        exp_avg = torch.view_as_real(exp_avg)
        exp_avg_sq = torch.view_as_real(exp_avg_sq)
        if amsgrad:
            max_exp_avg_sq = torch.view_as_real(max_exp_avg_sq)
        param = torch.view_as_real(param)
        t2 = torch.view_as_real(t2)
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    step_size = lr / bias_correction1
    bias_correction2_sqrt = bias_correction2 ** 0.5
    if amsgrad:
        torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
        denom = torch.sqrt(max_exp_avg_sq, out=t2).div_(bias_correction2_sqrt).add_(eps)
    else:
        denom = torch.sqrt(exp_avg_sq, out=t2).div_(bias_correction2_sqrt).add_(eps)
    param.addcdiv_(exp_avg, denom, value=-step_size)


class _Param:
    """Where one parameter's state lives: its chunks and their slots in the file."""
    __slots__ = ("param", "amsgrad", "master", "state_dtype", "chunks", "start", "end", "step", "__weakref__")

    def __init__(self, param: torch.Tensor, amsgrad: bool, master: bool):
        self.param = param
        self.amsgrad = amsgrad
        self.master = master                 # fp32 master weights kept on disk
        self.state_dtype = torch.float32 if master else param.dtype
        self.chunks: List["_Chunk"] = []
        self.start = self.end = 0            # its byte range in the file
        self.step: Optional[torch.Tensor] = None   # torch's state["step"]; None: no state yet

    def regions(self) -> List[str]:
        names = ["exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if self.amsgrad else [])
        return names + (["master_param"] if self.master else [])


class _Chunk:
    __slots__ = ("owner", "e0", "e1", "offset", "slot_bytes", "regions", "read_bytes", "parity")

    def __init__(self, owner: _Param, e0: int, e1: int, offset: int):
        self.owner, self.e0, self.e1, self.offset = owner, e0, e1, offset
        n = e1 - e0
        at = 0
        self.regions: Dict[str, tuple] = {}        # name -> (byte offset in the slot, dtype)
        for name in owner.regions():
            self.regions[name] = (at, owner.state_dtype)
            at += _round_up(n * owner.state_dtype.itemsize)
        self.read_bytes = at                       # the state; the undo copy follows it
        self.regions["undo"] = (at, owner.param.dtype)
        self.slot_bytes = at + _round_up(n * owner.param.element_size())
        self.parity = 0                            # the slot holding the current state

    def slot_offset(self, parity: int) -> int:
        return self.offset + parity * self.slot_bytes

    def view(self, buf: torch.Tensor, name: str) -> torch.Tensor:
        at, dtype = self.regions[name]
        n = self.e1 - self.e0
        return buf[at:at + n * dtype.itemsize].view(dtype)


class _Files:
    """The directory, lock and state file of one OptimizerOffload; close() removes them (also run
    by weakref.finalize: on garbage collection and at interpreter exit)."""

    def __init__(self, directory: Optional[str]):
        from ._store_lock import StoreLock, own_subdirectory, private_dir
        if directory is None:   # a parent of this user's, so a crash's leftovers are found there too
            directory = os.path.join(tempfile.gettempdir(), f"hauler-optim-{os.geteuid()}")
        self.dir = own_subdirectory(directory, "optimizer offload")
        private_dir(self.dir, what="optimizer offload")
        try:
            self.lock = StoreLock(self.dir, what="optimizer offload")
        except BaseException:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise
        self.file = None
        self.generation = 0

    def new_file(self):
        """A new, empty state file (the previous one stays until switch())."""
        from . import io
        self.generation += 1
        path = os.path.join(self.dir, f"state-{self.generation}.bin")
        return io.File(path, "x+")

    def switch(self, f) -> None:
        old, self.file = self.file, f
        if old is not None:
            old.close()
            _unlink(old.path)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self.lock.release()
        shutil.rmtree(self.dir, ignore_errors=True)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _io_error(e: OSError, what: str) -> HaulerIOError:
    name = errno.errorcode.get(e.errno or 0, str(e.errno))
    return HaulerIOError(e.errno, f"{name}: {what}: {e.strerror}")


class OptimizerOffload(torch.optim.Optimizer):
    """Adam or AdamW whose state lives on NVMe; see the module doc.

    ``params``: a ``torch.optim.Adam`` or ``torch.optim.AdamW`` (its parameter groups, options and
    any state are taken over; use this object from then on), or parameters / parameter groups as
    for torch.optim.Adam with the options ``lr``, ``betas``, ``eps``, ``weight_decay``, ``amsgrad``,
    ``maximize`` and ``decoupled_weight_decay`` (True: AdamW). ``directory``: where the state file
    goes (a private subdirectory is made there; default: $TMPDIR/hauler-optim-<uid>). ``chunk_bytes``:
    the state streamed per chunk. ``master_weights``: keep fp32 master weights of float16/bfloat16
    parameters on disk and step those (the parameter gets the rounded result)."""

    def __init__(self, params: Any, directory: Optional[str] = None, *, lr: Any = _UNSET, betas: Any = _UNSET,
                 eps: Any = _UNSET, weight_decay: Any = _UNSET, amsgrad: Any = _UNSET, maximize: Any = _UNSET,
                 decoupled_weight_decay: Any = _UNSET, chunk_bytes: int = 16 << 20, master_weights: bool = False):
        given = {k: v for k, v in (("lr", lr), ("betas", betas), ("eps", eps), ("weight_decay", weight_decay),
                                   ("amsgrad", amsgrad), ("maximize", maximize),
                                   ("decoupled_weight_decay", decoupled_weight_decay)) if v is not _UNSET}
        self.chunk_bytes = _buffers.as_int("chunk_bytes", chunk_bytes, 1)
        if not isinstance(master_weights, bool):
            raise InvalidArgument(f"master_weights must be True or False, got {master_weights!r}")
        self.master_weights = master_weights
        source_state = None
        if isinstance(params, torch.optim.Optimizer):
            if type(params) not in (torch.optim.Adam, torch.optim.AdamW):
                raise InvalidArgument(f"OptimizerOffload steps torch.optim.Adam and AdamW, not "
                                      f"{type(params).__name__} (a subclass may change the step)")
            if given:
                raise InvalidArgument(f"{', '.join(given)} given with an optimizer: its parameter groups carry "
                                      f"the options; set them there")
            defaults = {k: params.defaults[k] for k in _HYPER}
            groups = [dict(g) for g in params.param_groups]
            if params.state:
                source_state = params.state_dict()
        else:
            defaults = dict(_HYPER)
            defaults.update(given)
            groups = params
        # the rest of torch.optim.Adam's options, at the values this class implements
        defaults.update(foreach=None, capturable=False, differentiable=False, fused=None)
        self._check_group(defaults, "the options")
        self._params: List[_Param] = []
        self._by_id: Dict[int, _Param] = {}
        self._file_end = 0
        self._bufs: List[torch.Tensor] = []
        self._temps: Dict[tuple, tuple] = {}
        self._lock = threading.RLock()
        self.stats = {"steps": 0, "failed_steps": 0, "chunks": 0, "bytes_read": 0, "bytes_written": 0,
                      "read_wait_s": 0.0, "write_wait_s": 0.0, "compute_s": 0.0}
        self._files = _Files(directory)
        self._finalizer = weakref.finalize(self, self._files.close)
        try:
            self._files.switch(self._files.new_file())
            super().__init__(groups, defaults)
            if source_state is not None:
                self.load_state_dict(source_state)
        except BaseException:
            self._finalizer()
            raise

    # -- configuration
    @property
    def directory(self) -> str:
        """The private subdirectory holding the state file (removed by close())."""
        return self._files.dir

    @property
    def closed(self) -> bool:
        return not self._finalizer.alive

    def close(self) -> None:
        """Removes the state file and its directory; the optimizer cannot step afterwards."""
        with self._lock:
            self._finalizer()

    def __enter__(self) -> "OptimizerOffload":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getstate__(self):
        raise TypeError("an OptimizerOffload cannot be pickled or copied (its state is in a file of its own); "
                        "save state_dict() instead")

    @staticmethod
    def _check_group(group: dict, what: str) -> None:
        for k in ("lr", "eps", "weight_decay"):
            v = group.get(k)
            if isinstance(v, torch.Tensor) or not isinstance(v, (int, float)) or isinstance(v, bool) or not v >= 0:
                raise InvalidArgument(f"{what}: {k} must be a number >= 0 (a Tensor is not supported), got {v!r}")
        b = group.get("betas")
        if (not isinstance(b, (tuple, list)) or len(b) != 2
                or any(isinstance(x, (torch.Tensor, bool)) or not isinstance(x, (int, float)) or not 0 <= x < 1
                       for x in b)):
            raise InvalidArgument(f"{what}: betas must be two numbers in [0, 1) (Tensors are not supported), got {b!r}")
        for k in ("amsgrad", "maximize", "decoupled_weight_decay"):
            if not isinstance(group.get(k), bool):
                raise InvalidArgument(f"{what}: {k} must be True or False, got {group.get(k)!r}")
        for k, why in (("capturable", "CUDA graph capture"), ("differentiable", "autograd through the step"),
                       ("fused", "the fused kernel's arithmetic")):
            if group.get(k):
                raise InvalidArgument(f"{what}: {k}=True is not supported ({why}); OptimizerOffload computes "
                                      f"Adam's single-tensor (foreach=False) arithmetic")
        if group.get("foreach"):
            raise InvalidArgument(f"{what}: foreach=True is not supported: OptimizerOffload computes Adam's "
                                  f"single-tensor (foreach=False) arithmetic, whose last bits differ from foreach's")

    def add_param_group(self, param_group: dict) -> None:
        with self._lock:
            self._check_open()
            n_before = len(self.param_groups)
            super().add_param_group(param_group)
            group = self.param_groups[-1]
            try:
                self._check_group(group, f"parameter group {n_before}")
                seen = set()
                for i, p in enumerate(group["params"]):
                    if id(p) in seen:
                        raise InvalidArgument(f"parameter group {n_before}: parameter {i} appears twice")
                    seen.add(id(p))
                    self._check_param(p, f"parameter group {n_before}, parameter {i}")
            except BaseException:
                self.param_groups.pop()
                raise
            for p in group["params"]:
                self._add_param(p, group["amsgrad"])

    def _check_param(self, p: torch.Tensor, what: str) -> None:
        if p.layout != torch.strided or p.is_sparse:
            raise InvalidArgument(f"{what}: a {p.layout} tensor; OptimizerOffload steps dense tensors")
        if p.device.type not in ("cpu", "cuda"):
            raise InvalidArgument(f"{what}: device {p.device} is not supported (cpu or cuda)")
        if not (p.is_floating_point() or p.is_complex()):
            raise InvalidArgument(f"{what}: dtype {p.dtype} is not a floating point or complex dtype")
        if self.master_weights and p.is_complex():
            raise InvalidArgument(f"{what}: master_weights applies to float16/bfloat16 parameters, not {p.dtype}")
        _flat(p)

    def _add_param(self, p: torch.Tensor, amsgrad: bool) -> None:
        info = _Param(p, amsgrad, self.master_weights and p.dtype in _LOW_PRECISION)
        per_elem = (len(info.regions()) * info.state_dtype.itemsize) + p.element_size()
        step_elems = max(_CHUNK_ELEMS, self.chunk_bytes // per_elem // _CHUNK_ELEMS * _CHUNK_ELEMS)
        info.start = at = self._file_end
        for e0 in range(0, p.numel(), step_elems):
            c = _Chunk(info, e0, min(p.numel(), e0 + step_elems), at)
            info.chunks.append(c)
            at += 2 * c.slot_bytes
        info.end = self._file_end = at
        self._params.append(info)
        self._by_id[id(p)] = info
        self._bufs = []   # sized again for the largest slot at the next step

    def _check_open(self) -> None:
        if self.closed:
            raise Closed("this OptimizerOffload is closed (its state file is removed)")

    # -- buffers and file
    def _buffers(self) -> List[torch.Tensor]:
        if not self._bufs:
            from . import io
            biggest = max((c.slot_bytes for info in self._params for c in info.chunks), default=_ALIGN)
            self._bufs = [io.empty(biggest, "uint8", like="torch") for _ in range(3)]
        return self._bufs

    def _allocate(self, f, info: _Param) -> None:
        """Reserves a parameter's slots, so a full disk fails here, before anything changes."""
        if info.end > info.start:
            try:
                os.posix_fallocate(f.fileno(), info.start, info.end - info.start)
            except OSError as e:
                if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL):   # a file system without fallocate
                    raise _io_error(e, f"reserving {info.end - info.start} bytes of optimizer state in "
                                       f"{f.path}") from None

    # -- the step
    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One Adam/AdamW step of every parameter with a gradient; all or nothing (module doc)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with self._lock:
            self._check_open()
            self._step()
        return loss

    def _work(self) -> List[tuple]:
        """(info, group, grad) of each parameter with a gradient, everything checked first."""
        work = []
        for gi, group in enumerate(self.param_groups):
            self._check_group(group, f"parameter group {gi}")
            for pi, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                info = self._by_id[id(p)]
                g = p.grad
                what = f"parameter group {gi}, parameter {pi}"
                if group["amsgrad"] != info.amsgrad:
                    raise InvalidArgument(f"{what}: amsgrad changed after the state was laid out; "
                                          f"load_state_dict() lays it out again")
                if g.is_sparse or g.layout != torch.strided:
                    raise InvalidArgument(f"{what}: Adam does not support sparse gradients (SparseAdam does)")
                if g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
                    raise InvalidArgument(f"{what}: its gradient ({tuple(g.shape)}, {g.dtype}, {g.device}) does "
                                          f"not match it ({tuple(p.shape)}, {p.dtype}, {p.device})")
                if g.stride() != p.stride():   # the same memory order as the parameter, for flat chunks
                    g = torch.empty_like(p).copy_(g)
                work.append((info, group, _flat(g)))
        return work

    def _step(self) -> None:
        work = self._work()
        f = self._files.file
        fresh = {id(info) for info, _, _ in work if info.step is None}
        old_steps = {id(info): info.step for info, _, _ in work}
        tasks = []
        try:
            for info, group, grad in work:
                if id(info) in fresh:
                    self._allocate(f, info)
                    info.step = torch.tensor(0.0, dtype=_step_dtype())
                info.step = info.step + 1      # a new tensor: the old one stays for a failed step
                beta1, beta2 = group["betas"]
                s = dict(amsgrad=info.amsgrad, beta1=beta1, beta2=beta2, lr=group["lr"],
                         weight_decay=group["weight_decay"], eps=group["eps"], maximize=group["maximize"],
                         decoupled_weight_decay=group["decoupled_weight_decay"], step=info.step.item())
                tasks += [(c, grad, id(info) in fresh, s) for c in info.chunks]
            self._pipeline(f, tasks)
        except BaseException:
            for info, _, _ in work:
                info.step = old_steps[id(info)]
            self.stats["failed_steps"] += 1
            raise
        for c, _, _, _ in tasks:
            c.parity ^= 1
        self.stats["steps"] += 1

    def _pipeline(self, f, tasks: List[tuple]) -> None:
        """Reads chunk i+1, computes chunk i and writes chunk i-1 at once (three buffers); on any
        failure, waits for the requests in flight and undoes the parameter changes."""
        bufs = self._buffers()
        n = len(tasks)
        reads: Dict[int, Any] = {}
        writes: Dict[int, Any] = {}
        holder = [-1, -1, -1]     # the task whose data each buffer holds
        computed: List[int] = []
        st = self.stats

        def start_read(i: int) -> None:
            c, _, is_fresh, _ = tasks[i]
            b = bufs[i % 3]
            holder[i % 3] = i
            if is_fresh:   # torch's lazy init: zero moments, the master copied from the parameter
                b[:c.read_bytes].zero_()
                if c.owner.master:
                    c.view(b, "master_param").copy_(_flat(c.owner.param)[c.e0:c.e1])
            else:
                reads[i] = f.pread(b[:c.read_bytes], offset=c.slot_offset(c.parity))

        def finish_write(i: int) -> None:
            fut = writes.pop(i)
            t0 = time.perf_counter()
            fut.result()
            st["write_wait_s"] += time.perf_counter() - t0
            st["bytes_written"] += tasks[i][0].slot_bytes

        try:
            if n:
                start_read(0)
            for i in range(n):
                if i + 1 < n:
                    if i - 2 in writes:
                        finish_write(i - 2)   # its buffer takes chunk i+1
                    start_read(i + 1)
                c, grad, _, s = tasks[i]
                b = bufs[i % 3]
                if i in reads:
                    t0 = time.perf_counter()
                    reads.pop(i).result()
                    st["read_wait_s"] += time.perf_counter() - t0
                    st["bytes_read"] += c.read_bytes
                t0 = time.perf_counter()
                c.view(b, "undo").copy_(_flat(c.owner.param)[c.e0:c.e1])
                computed.append(i)    # from here on the parameter may change: undo it on failure
                self._compute(c, b, grad[c.e0:c.e1], s)
                st["compute_s"] += time.perf_counter() - t0
                writes[i] = f.pwrite(b[:c.slot_bytes], offset=c.slot_offset(c.parity ^ 1))
                st["chunks"] += 1
            for i in sorted(writes):
                finish_write(i)
        except BaseException as e:
            for fut in list(reads.values()) + list(writes.values()):
                try:
                    fut.result()
                except BaseException:  # noqa: BLE001 - the first error is the one raised
                    pass
            self._undo(f, tasks, computed, holder, e)
            raise

    def _compute(self, c: _Chunk, b: torch.Tensor, grad: torch.Tensor, s: dict) -> None:
        info = c.owner
        param = _flat(info.param)[c.e0:c.e1]
        dev = param.device
        host = {name: c.view(b, name) for name in info.regions()}
        state = {k: v.to(dev) for k, v in host.items()} if dev.type != "cpu" else host
        target = state["master_param"] if info.master else param
        # the whole chunk at once: cache-sized pieces were no faster, and each op's thread
        # barrier costs a time slice when another process holds a core
        t1, t2 = self._scratch(target.dtype, dev, c.e1 - c.e0)
        n = c.e1 - c.e0
        if info.master:
            grad = t1[:n].copy_(grad)
        _adam_chunk(target, grad, state["exp_avg"], state["exp_avg_sq"],
                    state["max_exp_avg_sq"] if info.amsgrad else None, t1[:n], t2[:n], **s)
        if info.master:
            param.copy_(target)
        if state is not host:
            for k, v in state.items():
                host[k].copy_(v)

    def _scratch(self, dtype: torch.dtype, dev: torch.device, n: int) -> tuple:
        key = (dtype, dev)
        t = self._temps.get(key)
        if t is None or t[0].numel() < n:
            t = self._temps[key] = (torch.empty(n, dtype=dtype, device=dev), torch.empty(n, dtype=dtype, device=dev))
        return t

    def _undo(self, f, tasks: List[tuple], computed: List[int], holder: List[int], cause: BaseException) -> None:
        """Puts back the parameter chunks a failed step changed: from the buffer still holding the
        chunk, else from the undo copy its write left in the other slot."""
        lost = []
        for i in reversed(computed):
            c = tasks[i][0]
            param = _flat(c.owner.param)[c.e0:c.e1]
            if holder[i % 3] == i:
                param.copy_(c.view(self._bufs[i % 3], "undo"))
                continue
            b = self._bufs[i % 3]
            holder[i % 3] = -1
            at = c.regions["undo"][0]
            try:
                f.read_into(b[at:c.slot_bytes], offset=c.slot_offset(c.parity ^ 1) + at)
            except BaseException:  # noqa: BLE001 - reported below
                lost.append(c)
                continue
            param.copy_(c.view(b, "undo"))
        if lost:
            names = sorted({self._name(c.owner) for c in lost})
            raise HaulerIOError(errno.EIO, f"EIO: a failed optimizer step ({cause}) could not be undone: the "
                                f"undo copies of {', '.join(names)} could not be read back; those parameters "
                                f"may hold stepped values") from cause

    def _name(self, info: _Param) -> str:
        for gi, g in enumerate(self.param_groups):
            for pi, p in enumerate(g["params"]):
                if p is info.param:
                    return f"group {gi} parameter {pi}"
        return "a removed parameter"

    # -- state_dict in torch.optim.Adam's format
    def state_dict(self) -> dict:
        """torch.optim.Adam's state_dict (loads into a plain Adam/AdamW and back); with master
        weights, each low-precision parameter's state also has "master_param" (fp32). The state
        is read into memory: it is as large as the optimizer state."""
        for pre_hook in self._optimizer_state_dict_pre_hooks.values():
            pre_hook(self)
        with self._lock:
            self._check_open()
            sd = self._state_dict()
        for post_hook in self._optimizer_state_dict_post_hooks.values():
            result = post_hook(self, sd)
            if result is not None:
                sd = result
        return sd

    def _state_dict(self) -> dict:
        ids: Dict[int, int] = {}
        groups = []
        for g in self.param_groups:
            packed = {k: v for k, v in g.items() if k != "params"}
            packed["params"] = []
            for p in g["params"]:
                ids.setdefault(id(p), len(ids))
                packed["params"].append(ids[id(p)])
            groups.append(packed)
        state = {}
        for info in self._params:
            if info.step is None:
                continue
            entry: Dict[str, Any] = {"step": info.step.clone()}
            flats = {}
            for name in info.regions():
                t = torch.empty_like(info.param, dtype=info.state_dtype, device="cpu")
                entry[name] = t
                flats[name] = _flat(t)
            b = self._buffers()[0]
            for c in info.chunks:
                self._files.file.read_into(b[:c.read_bytes], offset=c.slot_offset(c.parity))
                for name, t in flats.items():
                    t[c.e0:c.e1].copy_(c.view(b, name))
            if info.param.device.type != "cpu":
                entry.update({k: v.to(info.param.device) for k, v in entry.items() if k != "step"})
            state[ids[id(info.param)]] = entry
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Loads torch.optim.Adam's state_dict format (from Adam, AdamW or this class): the groups'
        options and each parameter's state, cast to its state dtype as torch does. The state is
        written to a new file, which replaces the current one only once every write succeeded."""
        for pre_hook in self._optimizer_load_state_dict_pre_hooks.values():
            result = pre_hook(self, state_dict)
            if result is not None:
                state_dict = result
        with self._lock:
            self._load_state_dict(state_dict)
        for post_hook in self._optimizer_load_state_dict_post_hooks.values():
            post_hook(self)

    def _load_state_dict(self, state_dict: dict) -> None:
        self._check_open()
        if not isinstance(state_dict, dict) or "state" not in state_dict or "param_groups" not in state_dict:
            raise InvalidArgument("a state_dict is a dict with 'state' and 'param_groups'")
        saved_groups = state_dict["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise InvalidArgument(f"the state_dict has {len(saved_groups)} parameter groups, this optimizer "
                                  f"{len(self.param_groups)}")
        params = []
        new_groups = []
        for gi, (g, sg) in enumerate(zip(self.param_groups, saved_groups)):
            if not isinstance(sg, dict) or not isinstance(sg.get("params"), (list, tuple)):
                raise InvalidArgument(f"state_dict parameter group {gi} is not a dict with a 'params' list")
            if len(sg["params"]) != len(g["params"]):
                raise InvalidArgument(f"parameter group {gi}: the state_dict has {len(sg['params'])} parameters, "
                                      f"this optimizer {len(g['params'])}")
            ng = {k: v for k, v in sg.items() if k != "params"}
            for k, v in self.defaults.items():
                ng.setdefault(k, v)
            ng["params"] = g["params"]
            self._check_group(ng, f"state_dict parameter group {gi}")
            new_groups.append(ng)
            params += [(sid, p, ng["amsgrad"]) for sid, p in zip(sg["params"], g["params"])]
        # a fresh layout (amsgrad may have changed), every entry checked before any write
        keep = (self._params, self._by_id, self._file_end, self._bufs)
        self._params, self._by_id, self._file_end, self._bufs = [], {}, 0, []
        try:
            entries = []
            for sid, p, amsgrad in params:
                self._add_param(p, amsgrad)
                entries.append((self._params[-1], self._entry(state_dict["state"].get(sid), p, amsgrad, sid)))
            f = self._files.new_file()
            try:
                self._write_entries(f, entries)
            except BaseException:
                f.close()
                _unlink(f.path)
                raise
        except BaseException:
            self._params, self._by_id, self._file_end, self._bufs = keep
            raise
        self._files.switch(f)
        self.param_groups[:] = new_groups

    def _entry(self, entry: Any, p: torch.Tensor, amsgrad: bool, sid: Any) -> Optional[dict]:
        if entry is None or len(entry) == 0:
            return None
        info = self._params[-1]
        need = ["step", "exp_avg", "exp_avg_sq"] + (["max_exp_avg_sq"] if amsgrad else [])
        missing = [k for k in need if k not in entry]
        if missing:
            raise InvalidArgument(f"state_dict state {sid!r}: {', '.join(missing)} missing")
        out = {}
        for k in need[1:] + (["master_param"] if info.master and "master_param" in entry else []):
            v = entry[k]
            if not isinstance(v, torch.Tensor) or v.shape != p.shape:
                raise InvalidArgument(f"state_dict state {sid!r}: {k} must be a tensor of the parameter's shape "
                                      f"{tuple(p.shape)}, got {tuple(v.shape) if isinstance(v, torch.Tensor) else v!r}")
            out[k] = _flat(torch.empty_like(p, dtype=info.state_dtype, device="cpu").copy_(v))
        if "master_param" not in out and info.master:
            out["master_param"] = _flat(p.detach().to("cpu", torch.float32, memory_format=torch.preserve_format))
        step = entry["step"]
        out["step"] = (step.detach().clone() if isinstance(step, torch.Tensor)
                       else torch.tensor(float(step), dtype=_step_dtype()))
        return out

    def _write_entries(self, f, entries: List[tuple]) -> None:
        b = self._buffers()[0]
        for info, entry in entries:
            if entry is None:
                continue
            self._allocate(f, info)
            param = _flat(info.param)
            for c in info.chunks:
                for name in info.regions():
                    c.view(b, name).copy_(entry[name][c.e0:c.e1])
                c.view(b, "undo").copy_(param[c.e0:c.e1])
                f.write(b[:c.slot_bytes], offset=c.slot_offset(0))
        for info, entry in entries:
            info.step = None if entry is None else entry["step"]

"""The device path of the KV movers: one kernel launch per plan (csrc/kv/kv_cuda.cu), on the
current torch stream when a side is a torch CUDA tensor, else on the stream the caller names or the
legacy default stream; waits for it unless a stream was given."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np

from .. import _core
from .._buffers import as_int, is_torch_tensor


def _torch_stream(*layouts: Any) -> int:
    for l in layouts:
        for o in l._owners:
            if is_torch_tensor(o) and o.is_cuda:
                import torch
                return int(torch.cuda.current_stream(o.device).cuda_stream)
    return 0


def copy(segs: np.ndarray, src: Any, dst: Any, stream: Optional[int] = None, max_blocks: int = 0,
         boxes: Optional[np.ndarray] = None) -> None:
    """Move pieces (n, 3) and boxes (m, 12) (a plan's _moves) in one launch."""
    regions = np.array([r for l in (src, dst) for r in l.regions()], dtype=np.int64).reshape(-1, 2)
    st = _torch_stream(src, dst) if stream is None else as_int("stream", stream, minimum=0)
    if boxes is None:
        boxes = np.zeros((0, 12), np.int64)
    _core.kv_copy_device(segs, boxes, regions, st, stream is None, int(max_blocks))

"""hauler.kv: paged KV-cache layouts, coalesced block plans and block moves.

    from hauler import kv
    src = kv.KVLayout.vllm_flash(caches)                  # the engine's own tensors, real strides
    p = kv.plan(src, [3, 7, 7], dst, [0, 1, 2])           # built once in C++, reused
    kv.gather_blocks(src, blocks, staging)                # paged -> contiguous, and the reverse
"""
from .layout import DTYPES, KVLayout, contiguous_layout_like
from .moves import copy_blocks, gather_blocks, run_plan, scatter_blocks
from .plan import Plan, plan
from .swap import SwapSpace, SwapSpaceFull, UnknownRequest
from .storage_attention import DriveLost, DriveTimeout, StorageAttention  # noqa: F401
from .agent import (Agent, Lease, LeaseExpired, PeerLost, Transfer, TransferCancelled, TransferError,  # noqa: F401
                    TransferTimeout, TransportRefused)

__all__ = ["KVLayout", "Plan", "plan", "gather_blocks", "scatter_blocks", "copy_blocks", "run_plan",
           "contiguous_layout_like", "DTYPES", "SwapSpace", "SwapSpaceFull", "UnknownRequest"]

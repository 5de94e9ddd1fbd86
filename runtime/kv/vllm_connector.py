"""A vLLM v1 KV connector moving blocks with hauler.kv.Agent (worker side only).

The decode worker pulls each request's blocks from the prefill worker in one read (one-sided, as
NIXL's connector does) and notifies it; the prefill worker reports the request as finished
sending when that notification arrives. The scheduler side (which requests load which blocks) is
vLLM's or the deployment's: it hands the worker a :class:`HaulerConnectorMetadata` listing, per
request, the prefill agent's metadata bytes (``HaulerConnector.agent_metadata`` on that side),
our block ids and theirs. A request moves all layers in one transfer, so
``wait_for_layer_load`` waits for the whole request on the first layer (no per-layer overlap).

Importing this module needs vllm (``pip install --no-deps vllm`` plus what its connector module
imports); hauler.kv itself does not.
"""
from dataclasses import dataclass, field

from vllm.distributed.kv_transfer.kv_connector.v1.base import (KVConnectorBase_V1, KVConnectorMetadata,
                                                              KVConnectorRole)

from ..errors import InvalidArgument
from .agent import Agent
from .layout import KVLayout

__all__ = ["HaulerConnector", "HaulerConnectorMetadata", "LoadSpec"]


@dataclass
class LoadSpec:
    """One request to pull: the owner's Agent metadata, our blocks, its blocks (same token order)."""
    peer_metadata: bytes
    local_blocks: list
    remote_blocks: list
    lease: int = None


@dataclass
class HaulerConnectorMetadata(KVConnectorMetadata):
    loads: dict = field(default_factory=dict)   # request id -> LoadSpec


class HaulerConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config, role, kv_cache_config=None, timeout=10.0):
        super().__init__(vllm_config, role, kv_cache_config)
        self._agent = None
        self._peers = {}
        self._loading = {}       # request id -> Transfer
        self._timeout = float(timeout)
        if role == KVConnectorRole.WORKER:
            name = getattr(self._kv_transfer_config, "engine_id", None) or "vllm"
            self._agent = Agent(f"vllm-{name}", timeout=self._timeout)
        self.agent_metadata = None

    # ---- worker side ----

    def register_kv_caches(self, kv_caches):
        """kv_caches: layer name -> (2, num_blocks, block_size, kv_heads, head_size) tensor (FlashAttention
        layout), in layer order."""
        if self._agent is None:
            raise InvalidArgument("register_kv_caches runs on the worker side of the connector")
        if not kv_caches:
            raise InvalidArgument("kv_caches is empty")
        self._layers = list(kv_caches)
        self.agent_metadata = self._agent.register(KVLayout.vllm_flash(list(kv_caches.values())))

    def start_load_kv(self, forward_context, **kwargs):
        meta = self._get_connector_metadata()
        if not isinstance(meta, HaulerConnectorMetadata):
            raise InvalidArgument(f"HaulerConnector needs HaulerConnectorMetadata, got {type(meta).__name__}")
        for req_id, spec in meta.loads.items():
            peer = self._peers.get(spec.peer_metadata)
            if peer is None:
                peer = self._peers[spec.peer_metadata] = self._agent.connect(spec.peer_metadata)
            self._loading[req_id] = self._agent.read(peer, spec.local_blocks, spec.remote_blocks, lease=spec.lease,
                                                     notify=str(req_id).encode())

    def wait_for_layer_load(self, layer_name):
        for t in list(self._loading.values()):
            if not t.done():
                t.future.exception(self._timeout)  # raised by get_finished, with the request named

    def save_kv_layer(self, layer_name, kv_layer, attn_metadata, **kwargs):
        """Nothing to push: the decode side pulls the saved blocks from the registered cache."""

    def wait_for_save(self):
        """Pulls need no save step."""

    def get_finished(self, finished_req_ids):
        """(finished sending: requests whose reader notified us, finished receiving: loads done)."""
        sending = {m.decode() for _, m in self._agent.notifications()}
        receiving = set()
        for req_id, t in list(self._loading.items()):
            if t.done():
                del self._loading[req_id]
                t.wait(0)  # raises the transfer's error (arrived / missing blocks) for that request
                receiving.add(req_id)
        return sending or None, receiving or None

    def close(self):
        if self._agent is not None:
            self._agent.close()

    # ---- scheduler side: the deployment's (see the module docstring) ----

    def _scheduler_side(self, what):
        raise InvalidArgument(f"HaulerConnector provides the worker side only; {what} belongs to the scheduler "
                              "side, which must build HaulerConnectorMetadata")

    def get_num_new_matched_tokens(self, request, num_computed_tokens):
        self._scheduler_side("get_num_new_matched_tokens")

    def update_state_after_alloc(self, request, blocks, num_external_tokens):
        self._scheduler_side("update_state_after_alloc")

    def build_connector_meta(self, scheduler_output):
        self._scheduler_side("build_connector_meta")

"""A vLLM v1 KV connector moving blocks with hauler.kv.Agent (worker side only).

Pull (the default, as NIXL's connector does): the decode worker's ``start_load_kv`` starts one
read per request and layer from the prefill worker's registered cache; ``wait_for_layer_load``
waits for that layer's reads only, so attention on layer i runs while later layers still arrive.
When every layer of a request landed, the prefill worker is ended (``b"loaded:<id>"``, which
also releases its lease) and reports the request as finished sending.

Push: where the metadata lists ``saves``, the prefill worker's ``save_kv_layer`` writes that
layer's blocks of each request into the decode worker's cache as soon as vLLM has computed it;
``wait_for_save`` waits for them all and the decode worker, ended (``b"saved:<id>"``), reports
the request as finished receiving.

The scheduler side (which requests move which blocks) is vLLM's or the deployment's: it hands the
worker a :class:`HaulerConnectorMetadata` listing, per request, the other worker's agent metadata
bytes (``HaulerConnector.agent_metadata`` on that side), our block ids and theirs.

Importing this module needs vllm (``pip install --no-deps vllm`` plus what its connector module
imports); hauler.kv itself does not.
"""
import threading
from concurrent.futures import CancelledError
from dataclasses import dataclass, field

from vllm.distributed.kv_transfer.kv_connector.v1.base import (KVConnectorBase_V1, KVConnectorMetadata,
                                                              KVConnectorRole)

from ..errors import InvalidArgument
from .agent import Agent
from .layout import KVLayout
from .transport import TransferError

__all__ = ["HaulerConnector", "HaulerConnectorMetadata", "LoadSpec", "SaveSpec"]

_LOADED, _SAVED = b"loaded:", b"saved:"


@dataclass
class LoadSpec:
    """One request to pull: the owner's Agent metadata, our blocks, its blocks (same token order)."""
    peer_metadata: bytes
    local_blocks: list
    remote_blocks: list
    lease: int = None


@dataclass
class SaveSpec:
    """One request to push: the receiver's Agent metadata, our blocks, its blocks (same token order)."""
    peer_metadata: bytes
    local_blocks: list
    remote_blocks: list


@dataclass
class HaulerConnectorMetadata(KVConnectorMetadata):
    loads: dict = field(default_factory=dict)   # request id -> LoadSpec
    saves: dict = field(default_factory=dict)   # request id -> SaveSpec


class _Request:
    """A request's per-layer transfers; `notify` goes to the peer once all of them landed."""

    def __init__(self, connector, req_id, peer, notify, lease=None):
        self.c, self.req_id, self.peer, self.notify, self.lease = connector, req_id, peer, notify, lease
        self.layers = {}      # layer index -> Transfer
        self.error = None     # the first failure, raised by get_finished for this request
        self.ended = False

    def add(self, layer, transfer):
        self.layers[layer] = transfer
        transfer.future.add_done_callback(lambda _f: self.c._layer_done(self))

    def complete(self, total):
        return len(self.layers) == total and all(t.done() for t in self.layers.values())


class HaulerConnector(KVConnectorBase_V1):
    def __init__(self, vllm_config, role, kv_cache_config=None, timeout=10.0):
        super().__init__(vllm_config, role, kv_cache_config)
        self._agent = None
        self._peers = {}
        self._loading = {}       # request id -> _Request (reads)
        self._saving = {}        # request id -> _Request (writes)
        self._lock = threading.Lock()
        self._layers = []
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
        self._index = {name: i for i, name in enumerate(self._layers)}
        self.agent_metadata = self._agent.register(KVLayout.vllm_flash(list(kv_caches.values())))

    def _meta(self):
        meta = self._get_connector_metadata()
        if not isinstance(meta, HaulerConnectorMetadata):
            raise InvalidArgument(f"HaulerConnector needs HaulerConnectorMetadata, got {type(meta).__name__}")
        return meta

    def _peer(self, metadata):
        peer = self._peers.get(metadata)
        if peer is None:
            peer = self._peers[metadata] = self._agent.connect(metadata)
        return peer

    def _layer_index(self, layer_name):
        i = getattr(self, "_index", {}).get(layer_name)
        if i is None:
            raise InvalidArgument(f"layer {layer_name!r} is not one of the registered KV caches "
                                  f"({len(self._layers)} layers; register_kv_caches first)")
        return i

    def start_load_kv(self, forward_context, **kwargs):
        """Starts one read per request and layer (layer order, so the first layers land first)."""
        meta = self._meta()
        reqs = []
        for req_id, spec in meta.loads.items():
            r = _Request(self, req_id, self._peer(spec.peer_metadata), _LOADED + str(req_id).encode(), spec.lease)
            with self._lock:
                self._loading[req_id] = r
            reqs.append((r, spec))
        for i in range(len(self._layers)):
            for r, spec in reqs:
                r.add(i, self._agent.read(r.peer, spec.local_blocks, spec.remote_blocks, lease=spec.lease,
                                          layers=[i]))

    def wait_for_layer_load(self, layer_name):
        """Waits for this layer's reads only; a failure is raised by get_finished, the request named."""
        i = self._layer_index(layer_name)
        with self._lock:
            pending = [r.layers[i] for r in self._loading.values() if i in r.layers]
        for t in pending:
            try:
                t.future.exception(self._timeout)
            except (TimeoutError, CancelledError):
                pass  # still running, or cancelled: get_finished reports it

    def save_kv_layer(self, layer_name, kv_layer, attn_metadata, **kwargs):
        """Pushes this layer's blocks of every request the metadata lists under `saves` (nothing in
        pull mode: the decode side reads the registered cache)."""
        i = self._layer_index(layer_name)
        meta = self._meta()
        for req_id, spec in meta.saves.items():
            with self._lock:
                r = self._saving.get(req_id)
                if r is None:
                    r = self._saving[req_id] = _Request(self, req_id, self._peer(spec.peer_metadata),
                                                        _SAVED + str(req_id).encode())
            if i not in r.layers:
                r.add(i, self._agent.write(r.peer, spec.local_blocks, spec.remote_blocks, layers=[i]))

    def wait_for_save(self):
        """Waits for every pushed layer; the receivers are ended as each request completes."""
        with self._lock:
            pending = [t for r in self._saving.values() for t in r.layers.values()]
        for t in pending:
            try:
                t.future.exception(self._timeout)
            except (TimeoutError, CancelledError):
                pass

    def _layer_done(self, r):
        """A layer transfer of r ended: when all have, notify the peer (once, after every byte)."""
        with self._lock:
            if r.ended or not r.complete(len(self._layers)):
                return
            r.ended = True
        for t in r.layers.values():
            e = None if t.future.cancelled() else t.future.exception()
            if e is not None:
                r.error = e
                return
        try:
            self._agent.notify(r.peer, r.notify, lease=r.lease)
        except TransferError as e:
            r.error = e

    def get_finished(self, finished_req_ids):
        """(finished sending, finished receiving): pull mode, the requests whose reader ended us and
        our loads done; push mode, our saves done and the requests whose writer ended us."""
        sending, receiving = set(), set()
        for _, m in self._agent.notifications():
            if m.startswith(_LOADED):
                sending.add(m[len(_LOADED):].decode())
            elif m.startswith(_SAVED):
                receiving.add(m[len(_SAVED):].decode())
        for table, out in ((self._loading, receiving), (self._saving, sending)):
            with self._lock:
                done = [k for k, r in table.items() if r.ended]
            for req_id in done:  # one at a time: a failure leaves the others for the next call
                with self._lock:
                    r = table.pop(req_id)
                for t in r.layers.values():
                    t.wait(0)  # raises that layer's error (arrived / missing blocks) for this request
                if r.error is not None:
                    raise r.error
                out.add(req_id)
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

"""hauler's vLLM v1 KV connector (hauler.kv.vllm_connector) against vLLM's real
KVConnectorBase_V1: a decode worker pulls a request's blocks from a prefill worker through the
worker-side interface (register caches, start per-layer loads, wait per layer, report finished
requests), and a prefill worker pushes them layer by layer (save_kv_layer, wait_for_save)."""
import time
import types

import pytest

pytest.importorskip("vllm.distributed.kv_transfer.kv_connector.v1.base",
                    reason="vLLM's KV connector base does not import here (pip install --no-deps vllm and what "
                           "its connector module imports)")
torch = pytest.importorskip("torch")

from vllm.config import KVTransferConfig  # noqa: E402
from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorBase_V1, KVConnectorRole  # noqa: E402

from hauler.errors import InvalidArgument  # noqa: E402
from hauler.kv.vllm_connector import HaulerConnector, HaulerConnectorMetadata, LoadSpec, SaveSpec  # noqa: E402


def connector(engine_id):
    # VllmConfig needs a model; the base class reads only kv_transfer_config from it
    cfg = types.SimpleNamespace(kv_transfer_config=KVTransferConfig(kv_connector="HaulerConnector",
                                                                     kv_role="kv_both", engine_id=engine_id))
    return HaulerConnector(cfg, KVConnectorRole.WORKER, None)


def finish(sender, receiver, req):
    """Polls both workers' get_finished until the sender reports req finished sending and the
    receiver finished receiving (30 s at most)."""
    deadline, sending, receiving = time.monotonic() + 30, None, None
    while (not sending or not receiving) and time.monotonic() < deadline:
        sending = sending or sender.get_finished(set())[0]
        receiving = receiving or receiver.get_finished(set())[1]
        time.sleep(0.01)
    assert sending == {req} and receiving == {req}


def flash_caches(seed):
    """3 layers: a prefill cache of random blocks and an empty decode cache, FlashAttention layout."""
    g = torch.Generator().manual_seed(seed)
    prefill = {f"layer.{i}": torch.randn(2, 16, 16, 2, 64, generator=g, dtype=torch.float32).half() for i in range(3)}
    decode = {f"layer.{i}": torch.zeros(2, 8, 16, 2, 64, dtype=torch.float16) for i in range(3)}
    return prefill, decode


def assert_moved(decode_caches, prefill_caches):
    """Decode blocks [1, 0, 5] hold prefill blocks [9, 2, 14]; the other decode blocks stay zero."""
    for name, c in decode_caches.items():
        assert torch.equal(c[:, [1, 0, 5]], prefill_caches[name][:, [9, 2, 14]])
        assert not c[:, [2, 3, 4, 6, 7]].any()


def test_decode_pulls_a_request_through_the_connector():
    prefill_caches, decode_caches = flash_caches(3)
    prefill, decode = connector("prefill"), connector("decode")
    try:
        assert isinstance(decode, KVConnectorBase_V1)
        prefill.register_kv_caches(prefill_caches)
        decode.register_kv_caches(decode_caches)
        decode.bind_connector_metadata(HaulerConnectorMetadata(loads={
            "req-1": LoadSpec(prefill.agent_metadata, [1, 0, 5], [9, 2, 14])}))
        decode.start_load_kv(None)
        req = decode._loading["req-1"]
        assert sorted(req.layers) == [0, 1, 2]  # one transfer per layer, each a third of the bytes
        assert {t.nbytes for t in req.layers.values()} == {3 * 2 * 16 * 2 * 64 * 2}
        for i, (name, c) in enumerate(decode_caches.items()):
            decode.wait_for_layer_load(name)
            assert req.layers[i].done()  # this layer landed, whatever the others do
            assert torch.equal(c[:, [1, 0, 5]], prefill_caches[name][:, [9, 2, 14]])
        decode.clear_connector_metadata()
        finish(prefill, decode, "req-1")
        assert_moved(decode_caches, prefill_caches)
    finally:
        prefill.close()
        decode.close()


def test_scheduler_side_and_bad_metadata_are_precise():
    c = connector("x")
    try:
        with pytest.raises(InvalidArgument, match="worker side only; build_connector_meta"):
            c.build_connector_meta(None)
        c.register_kv_caches({"l0": torch.zeros(2, 4, 16, 2, 8, dtype=torch.float16)})
        from vllm.distributed.kv_transfer.kv_connector.v1.base import KVConnectorMetadata
        c.bind_connector_metadata(KVConnectorMetadata())
        with pytest.raises(InvalidArgument, match="needs HaulerConnectorMetadata"):
            c.start_load_kv(None)
    finally:
        c.close()


def test_prefill_pushes_layer_by_layer():
    prefill_caches, decode_caches = flash_caches(5)
    prefill, decode = connector("prefill"), connector("decode")
    try:
        prefill.register_kv_caches(prefill_caches)
        decode.register_kv_caches(decode_caches)
        prefill.bind_connector_metadata(HaulerConnectorMetadata(saves={
            "req-2": SaveSpec(decode.agent_metadata, [9, 2, 14], [1, 0, 5])}))
        for i, (name, c) in enumerate(prefill_caches.items()):
            prefill.save_kv_layer(name, c, None)
            assert sorted(prefill._saving["req-2"].layers) == list(range(i + 1))  # this layer went out now
        prefill.wait_for_save()
        prefill.clear_connector_metadata()
        finish(prefill, decode, "req-2")
        assert_moved(decode_caches, prefill_caches)
    finally:
        prefill.close()
        decode.close()


def test_leased_per_layer_pull_releases_the_lease_once():
    prefill_caches = {f"layer.{i}": torch.full((2, 4, 16, 2, 8), float(i + 1), dtype=torch.float16)
                      for i in range(2)}
    decode_caches = {f"layer.{i}": torch.zeros(2, 4, 16, 2, 8, dtype=torch.float16) for i in range(2)}
    prefill, decode = connector("prefill"), connector("decode")
    try:
        prefill.register_kv_caches(prefill_caches)
        decode.register_kv_caches(decode_caches)
        lease = prefill._agent.lease([3], 60)
        decode.bind_connector_metadata(HaulerConnectorMetadata(loads={
            "req-3": LoadSpec(prefill.agent_metadata, [0], [3], lease=lease.id)}))
        decode.start_load_kv(None)
        for name in decode_caches:
            decode.wait_for_layer_load(name)
        finish(prefill, decode, "req-3")
        assert prefill._agent.leases() == []  # released by the one notification after the last layer
        with pytest.raises(InvalidArgument, match="layer 'nope' is not one of the registered"):
            decode.wait_for_layer_load("nope")
    finally:
        prefill.close()
        decode.close()

"""hauler's vLLM v1 KV connector (hauler.kv.vllm_connector) against vLLM's real
KVConnectorBase_V1: a decode worker pulls a request's blocks from a prefill worker through the
worker-side interface (register caches, start loads, wait per layer, report finished requests)."""
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
from hauler.kv.vllm_connector import HaulerConnector, HaulerConnectorMetadata, LoadSpec  # noqa: E402


def connector(engine_id):
    # VllmConfig needs a model; the base class reads only kv_transfer_config from it
    cfg = types.SimpleNamespace(kv_transfer_config=KVTransferConfig(kv_connector="HaulerConnector",
                                                                     kv_role="kv_both", engine_id=engine_id))
    return HaulerConnector(cfg, KVConnectorRole.WORKER, None)


def test_decode_pulls_a_request_through_the_connector():
    g = torch.Generator().manual_seed(3)
    prefill_caches = {f"layer.{i}": torch.randn(2, 16, 16, 2, 64, generator=g, dtype=torch.float32).half()
                      for i in range(3)}
    decode_caches = {f"layer.{i}": torch.zeros(2, 8, 16, 2, 64, dtype=torch.float16) for i in range(3)}
    prefill, decode = connector("prefill"), connector("decode")
    try:
        assert isinstance(decode, KVConnectorBase_V1)
        prefill.register_kv_caches(prefill_caches)
        decode.register_kv_caches(decode_caches)
        decode.bind_connector_metadata(HaulerConnectorMetadata(loads={
            "req-1": LoadSpec(prefill.agent_metadata, [1, 0, 5], [9, 2, 14])}))
        decode.start_load_kv(None)
        for name in decode_caches:
            decode.wait_for_layer_load(name)
        decode.clear_connector_metadata()
        deadline, sending, receiving = time.monotonic() + 30, None, None
        while (not sending or not receiving) and time.monotonic() < deadline:
            receiving = receiving or decode.get_finished(set())[1]
            sending = sending or prefill.get_finished(set())[0]
            time.sleep(0.01)
        assert receiving == {"req-1"} and sending == {"req-1"}
        for name, c in decode_caches.items():
            assert torch.equal(c[:, [1, 0, 5]], prefill_caches[name][:, [9, 2, 14]])
            assert not c[:, [2, 3, 4, 6, 7]].any()
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

"""A serving process for the hauler.kv.Agent tests: one Agent over one random KV cache
(tests/support/kv_ref.make_cache), driven by JSON lines on stdin, one JSON reply line each.

Commands ({"op": ...}):
  setup    kind seed L NB BS H D dtype transport name [lib] -> {"meta": b64}   (a fresh cache and agent;
           lib "emu_device": the cache in the GPU emulation's device memory, exported by CUDA IPC handles)
  connect  meta -> {"transport": name}
  read / write  local remote [notify lease layers heads dst_heads num_tokens timeout]
           -> {} or {"error": class name, "msg", "arrived", "missing"}
  dump     path -> {}  (every plane, np.savez)
  lease    blocks seconds -> {"id"};  leases -> {"ids"};  release id -> {"released"}
  notifications timeout -> {"notes": [[name, b64], ...]}
  exit
"""
import base64
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from hauler import kv  # noqa: E402
from hauler.kv.agent import Agent  # noqa: E402
from support.kv_ref import make_cache  # noqa: E402


def main():
    agent = cache = peer = None
    out = sys.stdout
    for line in sys.stdin:
        cmd = json.loads(line)
        op, reply = cmd["op"], {}
        try:
            if op == "setup":
                if agent is not None:
                    agent.close()
                lib = cmd.get("lib", "numpy")
                if lib == "emu_device":
                    from hauler import _core
                    _core._use_gpu_emulation(True)
                cache = make_cache(cmd["kind"], np.random.default_rng(cmd["seed"]), L=cmd["L"], NB=cmd["NB"],
                                   BS=cmd["BS"], H=cmd["H"], D=cmd["D"], dtype=cmd.get("dtype", "float16"), lib=lib)
                agent = Agent(cmd.get("name", "peer"), transport=cmd.get("transport", "auto"))
                reply["meta"] = base64.b64encode(agent.register(cache.layout)).decode()
            elif op == "connect":
                peer = agent.connect(base64.b64decode(cmd["meta"]))
                reply["transport"] = peer.transport_name
            elif op in ("read", "write"):
                notify = base64.b64decode(cmd["notify"]) if cmd.get("notify") is not None else None
                heads = tuple(cmd["heads"]) if cmd.get("heads") else None
                dst_heads = tuple(cmd["dst_heads"]) if cmd.get("dst_heads") else None
                t = getattr(agent, op)(peer, cmd["local"], cmd["remote"], notify=notify, lease=cmd.get("lease"),
                                       layers=cmd.get("layers"), heads=heads, dst_heads=dst_heads,
                                       num_tokens=cmd.get("num_tokens"))
                try:
                    t.wait(cmd.get("timeout", 30))
                except kv.TransferError as e:
                    reply = {"error": type(e).__name__, "msg": str(e),
                             "arrived": [int(b) for b in e.arrived_blocks], "missing": [int(b) for b in e.missing_blocks]}
            elif op == "dump":
                np.savez(cmd["path"], *[np.ascontiguousarray(v) for v in cache.planes])
            elif op == "lease":
                reply["id"] = agent.lease(cmd["blocks"], cmd["seconds"]).id
            elif op == "leases":
                reply["ids"] = [ls.id for ls in agent.leases()]
            elif op == "release":
                reply["released"] = agent.release(cmd["id"])
            elif op == "notifications":
                reply["notes"] = [[n, base64.b64encode(m).decode()] for n, m in
                                  agent.notifications(cmd.get("timeout", 0))]
            elif op == "exit":
                break
        except Exception as e:  # noqa: BLE001 -- reported to the test, which decides
            reply = {"error": type(e).__name__, "msg": str(e)}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    if agent is not None:
        agent.close()


if __name__ == "__main__":
    main()

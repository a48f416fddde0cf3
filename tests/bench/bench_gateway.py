"""Gateway eth_sendTransaction -> hash, against the local binary API's SUBMIT (issue 16).

One `python -m router run` (real signer on a Unix socket in this process's thread, anvil with
automine) serves both: the JSON-RPC gateway over HTTP (one kept-alive connection, `gas` given so
the node's eth_estimateGas is not in the figure) and the binary API over its Unix socket. Both
send transfers to fresh destinations, interleaved in blocks; the time is from the request to the
answer holding the hash (signed, journaled, broadcast). The binary API stays the fast path: the
ratio shows what JSON, HTTP and aiohttp cost on top.
"""

from __future__ import annotations

import http.client
import itertools
import json
import sys
import tempfile
from pathlib import Path

from _harness import Record, compare, tail_extra, time_interleaved

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))

from anvil_support import DEV_ADDR_0, free_port, start_anvil  # noqa: E402
from router_proc_support import RouterProcess  # noqa: E402
from signer_support import running_signer  # noqa: E402

from router.api import ApiClient  # noqa: E402
from router.intent import Intent  # noqa: E402

N = 300


def run() -> list[Record]:
    node = start_anvil()
    counter = itertools.count(1)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-gateway-") as tmp_name, \
                running_signer(Path(tmp_name)) as signer:
            tmp = Path(tmp_name)
            port = free_port()
            cfg = tmp / "router.toml"
            cfg.write_text(
                f'chain_id = {node.chain_id}\nsigner = "{signer.address}"\n'
                f'listen = "unix:{tmp / "router.sock"}"\nrpc = ["{node.rpc_url}"]\n'
                f'ws = ["{node.ws_url}"]\ngateway = "127.0.0.1:{port}"\njournal = "memory"\n')
            with RouterProcess(cfg), ApiClient(str(tmp / "router.sock")) as api:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)

                def gateway() -> None:
                    to = "0x" + (0xB0 << 152 | next(counter)).to_bytes(20, "big").hex()
                    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_sendTransaction",
                                       "params": [{"from": DEV_ADDR_0, "to": to, "value": "0x1",
                                                   "gas": "0x5208"}]})
                    conn.request("POST", "/", body, {"Content-Type": "application/json"})
                    answer = json.loads(conn.getresponse().read())
                    if "result" not in answer:
                        raise RuntimeError(f"gateway refused: {answer}")

                def binary() -> None:
                    i = next(counter)
                    api.submit(Intent(to=(0xB1 << 152 | i).to_bytes(20, "big"), value=1,
                                      id=f"bench-{i}"))

                samples, baseline = time_interleaved(gateway, binary, N, blocks=10, warmup=10)
                conn.close()
        return [compare("gateway eth_sendTransaction -> hash (HTTP JSON-RPC, gas given)",
                        samples, "binary API SUBMIT -> hash (Unix socket)", baseline,
                        extra=tail_extra(samples, baseline))]
    finally:
        node.stop()

"""The JSON-RPC gateway in process, against real anvil, the real router and the real signer:
what it answers itself, what it proxies, and every bad input with the error a client expects."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import coincurve
import pytest
from anvil_support import DEV_ADDR_0, Anvil
from Crypto.Hash import keccak
from gateway_support import call, gateway_on, post, recover_sender, sync_rpc
from router_support import dest, signer_over_unix, wait_for
from signer_support import DEV_POLICY

from enclave.policy import Policy
from router.errors import ConfigError
from router.events import EventKind
from router.listen import ListenAddress, parse_listen

pytestmark = pytest.mark.timeout(120)
ADDR = DEV_ADDR_0


def _err(answer: dict[str, object]) -> tuple[int, str]:
    assert "error" in answer, answer
    e = answer["error"]
    assert isinstance(e, dict)
    return int(e["code"]), str(e["message"])


def test_identity_send_receipt_status(anvil: Anvil) -> None:
    """eth_accounts / eth_chainId / net_version; a transfer sent through the gateway lands, its
    receipt comes back through the gateway (proxied), and sentinel_intentStatus knows it by hash
    and by id."""
    async def main() -> None:
        async with gateway_on(anvil) as (router, gw):
            assert (await call(gw.url, "eth_accounts"))["result"] == [ADDR]
            assert (await call(gw.url, "eth_chainId"))["result"] == hex(anvil.chain_id)
            assert (await call(gw.url, "net_version"))["result"] == str(anvil.chain_id)
            to = "0x" + dest(1).hex()
            ans = await call(gw.url, "eth_sendTransaction",
                             {"from": ADDR.lower(), "to": to, "value": hex(12345)})
            tx_hash = ans["result"]
            assert isinstance(tx_hash, str) and len(tx_hash) == 66
            receipt = None
            for _ in range(200):
                receipt = (await call(gw.url, "eth_getTransactionReceipt", tx_hash))["result"]
                if receipt is not None:
                    break
                await asyncio.sleep(0.05)
            assert receipt is not None and receipt["status"] == "0x1"
            assert receipt["transactionHash"] == tx_hash
            tx = (await call(gw.url, "eth_getTransactionByHash", tx_hash))["result"]
            assert recover_sender(tx) == ADDR and int(tx["value"], 16) == 12345
            assert int(tx["gas"], 16) == 21_000  # estimated by the node for a plain transfer
            await wait_for(lambda: router.stats()["tip"] >= int(receipt["blockNumber"], 16))
            status = (await call(gw.url, "sentinel_intentStatus", tx_hash))["result"]
            assert status["state"] == "landed" and status["hash"] == tx_hash
            assert status["block"] == receipt["blockNumber"] and status["nonce"] == tx["nonce"]
            again = (await call(gw.url, "sentinel_intentStatus", status["id"]))["result"]
            assert again == status
    asyncio.run(main())


def test_proxy_single_and_batch(anvil: Anvil) -> None:
    """Proxied calls keep the client's ids; a batch mixes local, proxied and bad items, answered
    in order; notifications get no answer; a method the node lacks is the node's -32601."""
    async def main() -> None:
        async with gateway_on(anvil) as (_, gw):
            one = await call(gw.url, "eth_blockNumber")
            assert one["id"] == 7 and int(one["result"], 16) >= 0
            batch = [
                {"jsonrpc": "2.0", "id": "a", "method": "eth_chainId", "params": []},
                {"jsonrpc": "2.0", "id": "b", "method": "eth_getBalance",
                 "params": [ADDR, "latest"]},
                {"jsonrpc": "2.0", "id": "c", "method": "eth_no_such_method", "params": []},
                {"jsonrpc": "1.0", "id": "d", "method": "eth_chainId"},
                {"jsonrpc": "2.0", "method": "eth_blockNumber", "params": []},  # notification
                17,
            ]
            status, answers = await post(gw.url, batch)
            assert status == 200 and [a["id"] for a in answers] == ["a", "b", "c", "d", None]
            assert answers[0]["result"] == hex(anvil.chain_id)
            assert int(answers[1]["result"], 16) == int(
                sync_rpc(anvil.rpc_url, "eth_getBalance", ADDR, "latest"), 16)
            assert _err(answers[2])[0] == -32601  # the node's answer, passed through
            assert _err(answers[3]) == (-32600, 'missing or wrong "jsonrpc" (must be "2.0")')
            assert _err(answers[4])[0] == -32600
            status, nothing = await post(gw.url, [{"jsonrpc": "2.0", "method": "eth_chainId"}])
            assert status == 204 and nothing is None
    asyncio.run(main())


def test_bad_inputs(anvil: Anvil) -> None:
    """Each bad input gets its JSON-RPC error; the router keeps working afterwards."""
    async def main() -> None:
        async with gateway_on(anvil) as (router, gw):
            url, to = gw.url, "0x" + dest(2).hex()
            assert _err((await post(url, None, raw=b'{"jsonrpc": "2.0", "id": 1, "meth'))[1]) \
                == (-32700, "parse error: the body is not valid JSON")
            assert _err((await post(url, None, raw=b"\xff\xfe"))[1])[0] == -32700
            assert _err((await post(url, []))[1]) == (-32600, "empty batch")
            code, msg = _err((await post(url, "hello"))[1])
            assert code == -32600 and "JSON object" in msg
            code, msg = _err((await post(url, [{"jsonrpc": "2.0", "id": 1,
                                                "method": "eth_chainId"}] * 1001))[1])
            assert code == -32005 and "1001" in msg
            status, ans = await post(url, None, raw=b"[" + b" " * (64 * 1024) + b"]")
            assert status == 413 and _err(ans)[0] == -32005 and "above the limit" in _err(ans)[1]
            async with aiohttp.ClientSession() as s, s.get(url) as r:
                assert r.status == 405 and (await r.json())["error"]["code"] == -32600

            async def send_err(tx: object) -> tuple[int, str]:
                return _err(await call(url, "eth_sendTransaction", tx))

            other = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
            code, msg = await send_err({"from": other, "to": to})
            assert code == -32000 and msg.startswith("unknown account 0x70997970C51812dc3A010C7d")
            bad_checksum = ADDR[:2] + ADDR[2].swapcase() + ADDR[3:]
            code, msg = await send_err({"from": bad_checksum, "to": to})
            assert code == -32602 and "params[0].from" in msg and "EIP-55" in msg
            code, msg = await send_err({"to": to})
            assert code == -32602 and "params[0].from" in msg
            code, msg = await send_err({"from": ADDR, "data": "0x6000"})
            assert code == -32602 and "params[0].to" in msg and "contract creation" in msg
            for field, value, needle in [
                ("value", 5, "params[0].value"), ("value", "12", "params[0].value"),
                ("value", "0xzz", "params[0].value"), ("gas", "0x", "params[0].gas"),
                ("data", "0x123", "params[0].data"), ("to", "0x1234", "params[0].to"),
                ("nonce", "0x99", "params[0].nonce"), ("gasPrice", "0x1", "params[0].gasPrice"),
                ("gas", hex(20_000), "params[0].gas"), ("chainId", "0x1", "params[0].chainId"),
                ("type", "0x3", "params[0].type"), ("gasLimit", "0x5208", "unknown fields"),
            ]:
                tx = {"from": ADDR, "to": to, field: value}
                code, msg = await send_err(tx)
                assert code == -32602 and needle in msg, (field, value, msg)
            code, msg = _err(await call(url, "eth_sendTransaction", {"from": ADDR, "to": to},
                                        "extra"))
            assert code == -32602 and "takes 1 parameters" in msg
            code, msg = _err(await call(url, "eth_sendTransaction", "0x00"))
            assert code == -32602 and "transaction object" in msg
            code, msg = _err(await call(url, "personal_unlockAccount", ADDR, "pw"))
            assert code == -32601 and "never proxied" in msg
            code, msg = _err(await call(url, "eth_subscribe", "newHeads"))
            assert code == -32601 and "WebSocket" in msg
            code, msg = _err(await call(url, "sentinel_intentStatus", "nope"))
            assert code == -32000 and "no intent" in msg
            # the router is unharmed: a good transaction still goes through
            ok = await call(url, "eth_sendTransaction", {"from": ADDR, "to": to, "value": "0x1"})
            assert len(ok["result"]) == 66 and router.stats()["submitted"] == 1
    asyncio.run(main())


def test_nonce_rule(anvil: Anvil) -> None:
    """A nonce equal to the router's next one is accepted, any other refused; eth_signTransaction
    needs one and refuses one a pending intent holds."""
    async def main() -> None:
        async with gateway_on(anvil) as (router, gw):
            to = "0x" + dest(3).hex()
            nxt = router.nonces.next_nonce
            assert nxt is not None
            ok = await call(gw.url, "eth_sendTransaction",
                            {"from": ADDR, "to": to, "nonce": hex(nxt)})
            assert "result" in ok, ok
            code, msg = _err(await call(gw.url, "eth_sendTransaction",
                                        {"from": ADDR, "to": to, "nonce": hex(nxt)}))
            assert code == -32602 and f"next nonce {nxt + 1}" in msg
            code, msg = _err(await call(gw.url, "eth_signTransaction", {"from": ADDR, "to": to}))
            assert code == -32602 and "params[0].nonce" in msg and "required" in msg
    asyncio.run(main())


def test_sign_transaction_and_messages(anvil: Anvil) -> None:
    """eth_signTransaction returns raw hex (web3signer's shape), account_signTransaction Clef's
    {raw, tx}; both recover to the signer and the raw bytes are accepted by the node.
    personal_sign / eth_sign are EIP-191 signatures by the same key."""
    async def main() -> None:
        async with gateway_on(anvil) as (router, gw):
            to = "0x" + dest(4).hex()
            nonce = hex(router.nonces.next_nonce or 0)
            raw = (await call(gw.url, "eth_signTransaction",
                              {"from": ADDR, "to": to, "value": "0x5", "nonce": nonce}))["result"]
            assert isinstance(raw, str) and raw.startswith("0x02")
            clef = (await call(gw.url, "account_signTransaction",
                               {"from": ADDR, "to": to, "value": "0x5", "nonce": nonce,
                                "gas": "0x5208", "gasPrice": hex(10**10)}))["result"]
            assert set(clef) == {"raw", "tx"} and clef["tx"]["gasPrice"] == hex(10**10)
            assert clef["tx"]["nonce"] == nonce and clef["tx"]["to"].lower() == to
            tx_hash = sync_rpc(anvil.rpc_url, "eth_sendRawTransaction", raw)
            tx = sync_rpc(anvil.rpc_url, "eth_getTransactionByHash", tx_hash)
            assert recover_sender(tx) == ADDR
            msg = b"hello sentinel"
            for method, params in [("personal_sign", ["0x" + msg.hex(), ADDR]),
                                   ("eth_sign", [ADDR, "0x" + msg.hex()])]:
                sig = bytes.fromhex((await call(gw.url, method, *params))["result"][2:])
                digest = keccak.new(digest_bits=256, data=b"\x19Ethereum Signed Message:\n14"
                                    + msg).digest()
                assert sig[64] in (27, 28)
                pub = coincurve.PublicKey.from_signature_and_message(
                    sig[:64] + bytes([sig[64] - 27]), digest, hasher=None)
                addr = keccak.new(digest_bits=256,
                                  data=pub.format(compressed=False)[1:]).digest()[-20:]
                assert "0x" + addr.hex() == ADDR.lower()
            code, m = _err(await call(gw.url, "personal_sign", "0x00",
                                      "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"))
            assert code == -32000 and "unknown account" in m
    asyncio.run(main())


def test_policy_refusals(anvil: Anvil) -> None:
    """The signer's policy refusals reach the client as -32003 with the signer's message: a value
    above max_value, and digest signing where the policy disables it."""
    text = DEV_POLICY.read_text().replace(
        'max_value = "1000000000000000000000000"', 'max_value = "1000"').replace(
        "sign_digest = true", "sign_digest = false")
    policy = Policy.from_toml(text)

    async def main() -> None:
        with signer_over_unix(policy) as signer:
            async with gateway_on(anvil, signer) as (router, gw):
                to = "0x" + dest(5).hex()
                code, msg = _err(await call(gw.url, "eth_sendTransaction",
                                            {"from": ADDR, "to": to, "value": hex(1001)}))
                assert code == -32003 and "max_value" in msg and "POLICY_DENIED" in msg
                code, msg = _err(await call(gw.url, "personal_sign", "0x00", ADDR))
                assert code == -32003 and "raw digest signing is disabled" in msg
                ok = await call(gw.url, "eth_sendTransaction",
                                {"from": ADDR, "to": to, "value": hex(1000)})
                assert "result" in ok and router.stats()["submitted"] == 1
    asyncio.run(main())


def test_fee_fields_and_gas_reach_the_intent(anvil: Anvil) -> None:
    """maxFeePerGas / maxPriorityFeePerGas become the intent's overrides and are what the signed
    transaction carries; one above the router's fee cap is refused (never silently ignored); no
    `gas` lets the router estimate."""
    async def main() -> None:
        async with gateway_on(anvil) as (router, gw):
            max_fee, tip = 10**11 + 7, 10**9 + 3
            ans = await call(gw.url, "eth_sendTransaction",
                             {"from": ADDR, "to": "0x" + dest(6).hex(),
                              "maxFeePerGas": hex(max_fee), "maxPriorityFeePerGas": hex(tip)})
            assert "result" in ans, ans
            tx = (await call(gw.url, "eth_getTransactionByHash", ans["result"]))["result"]
            assert int(tx["maxFeePerGas"], 16) == max_fee
            assert int(tx["maxPriorityFeePerGas"], 16) == tip
            assert int(tx["gas"], 16) == 21_000  # estimated by the router: a plain transfer
            status = (await call(gw.url, "sentinel_intentStatus", ans["result"]))["result"]
            handle = router.handle(status["id"])
            assert handle is not None and handle.intent.gas_estimated  # the router estimated
            cap = router.config.fees.max_fee_cap
            code, msg = _err(await call(gw.url, "eth_sendTransaction",
                                        {"from": ADDR, "to": "0x" + dest(7).hex(),
                                         "maxFeePerGas": hex(cap + 1)}))
            assert code == -32602 and "max_fee_cap" in msg, msg
            assert router.stats()["submitted"] == 1
    asyncio.run(main())


def test_websocket_subscriptions(anvil: Anvil) -> None:
    """Over one WebSocket: JSON-RPC calls, newHeads from the router's view after a mined block,
    and sentinel_intents notifications (events published on router.bus BY THE TEST: until the
    router publishes its own, this checks the relay, not the router), then eth_unsubscribe."""
    async def main() -> None:
        async with gateway_on(anvil) as (router, gw), aiohttp.ClientSession() as s, \
                s.ws_connect(gw.url.replace("http", "ws")) as ws:
            async def rpc(method: str, *params: object) -> dict[str, object]:
                await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": method,
                                              "method": method, "params": list(params)}))
                while True:
                    msg = json.loads((await ws.receive(timeout=10)).data)
                    if msg.get("id") == method:
                        return msg  # type: ignore[no-any-return]

            assert (await rpc("eth_chainId"))["result"] == hex(anvil.chain_id)
            heads = (await rpc("eth_subscribe", "newHeads"))["result"]
            intents = (await rpc("eth_subscribe", "sentinel_intents"))["result"]
            code, _ = _err(await rpc("eth_subscribe", "logs"))
            assert code == -32602
            before = router.view.tip.number if router.view.tip else -1
            sync_rpc(anvil.rpc_url, "evm_mine")
            router.bus.publish(EventKind.SIGNED, "ws-test", 3, tx_hash=b"\x11" * 32)  # by the test
            seen_head = seen_event = None
            while seen_head is None or seen_event is None:
                msg = json.loads((await ws.receive(timeout=10)).data)
                assert msg["method"] == "eth_subscription"
                p = msg["params"]
                if p["subscription"] == heads and int(p["result"]["number"], 16) > before:
                    seen_head = p["result"]
                if p["subscription"] == intents:
                    seen_event = p["result"]
            assert "transactions" not in seen_head and len(seen_head["hash"]) == 66
            assert seen_event["kind"] == "signed" and seen_event["id"] == "ws-test"
            assert seen_event["tx_hash"] == "0x" + "11" * 32
            assert (await rpc("eth_unsubscribe", intents))["result"] is True
            assert (await rpc("eth_unsubscribe", intents))["result"] is False
            await wait_for(lambda: router.bus.subscribers == 0, what="unsubscribed")
    asyncio.run(main())


@pytest.mark.parametrize("listen,allow,problem", [
    ("0.0.0.0:8645", False, "not a loopback"), ("gateway.internal:8645", False, "IP address"),
    ("127.0.0.1", False, "HOST:PORT"), ("127.0.0.1:99999", False, "0..65535"),
])
def test_listen_address_refused(listen: str, allow: bool, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_listen(listen, service="gateway", allow_remote=allow)


def test_listen_address_accepted() -> None:
    def parse(value: str, allow: bool = False) -> ListenAddress:
        return parse_listen(value, service="gateway", allow_remote=allow)

    assert parse("127.0.0.1:8645") == ListenAddress("127.0.0.1", 8645)
    assert parse("[::1]:1") == ListenAddress("::1", 1)
    assert parse("localhost:1") == ListenAddress("127.0.0.1", 1)
    assert parse("0.0.0.0:8645", allow=True) == ListenAddress("0.0.0.0", 8645)


def test_config_gateway_keys(tmp_path: Path) -> None:
    from router.config import load_config

    base = ('chain_id = 31337\nsigner = "unix:/x"\nlisten = "unix:/y"\n'
            'rpc = ["http://127.0.0.1:1"]\n')
    cfg = tmp_path / "r.toml"
    cfg.write_text(base + 'gateway = "127.0.0.1:8645"\n')
    assert load_config(cfg).gateway == ListenAddress("127.0.0.1", 8645)
    cfg.write_text(base)
    assert load_config(cfg).gateway is None
    cfg.write_text(base + 'gateway = "10.0.0.1:8645"\n')
    with pytest.raises(ConfigError, match="not a loopback"):
        load_config(cfg)
    cfg.write_text(base + 'gateway = "10.0.0.1:8645"\ngateway_allow_remote = true\n')
    assert load_config(cfg).gateway == ListenAddress("10.0.0.1", 8645)
    cfg.write_text(base + 'gateway = 8645\n')
    with pytest.raises(ConfigError, match="HOST:PORT"):
        load_config(cfg)
    cfg.write_text(base + 'gateway_allow_remote = "yes"\n')
    with pytest.raises(ConfigError, match="true or false"):
        load_config(cfg)

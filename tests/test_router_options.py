"""Per-intent options (issue 16): gas estimation, fee overrides within the policy, deadlines; their
JSON, SUBMIT wire and journal forms. Against real anvil and the real signer."""

from __future__ import annotations

import asyncio
import json
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from anvil_support import ROOT, Anvil
from router_support import SENDER, config_for, running_router, signer_over_unix, wait_for

from router.api import (
    E_GAS_ESTIMATE,
    SUBMIT_FIXED,
    ApiClient,
    ApiError,
    ApiServer,
    decode_submit,
    encode_submit,
)
from router.core import GAS_MARGIN_PERCENT, Router, gas_with_margin
from router.errors import GasEstimationFailed, MalformedInput
from router.events import EventKind
from router.fees import GWEI, FeePolicy
from router.intent import Intent
from router.journal import open_journal
from router.nonces import TxState

pytestmark = pytest.mark.timeout(120)


# --- a tiny contract, from raw bytecode ----------------------------------------------------------


def _runtime() -> bytes:
    """Stores its call's first word at slot 0; reverts with Error("zero") when that word is 0."""
    selector = bytes.fromhex("08c379a0").ljust(32, b"\0")
    revert = (b"\x7f" + selector + b"\x60\x00\x52"            # mstore(0, selector)
              + b"\x60\x20\x60\x04\x52"                       # mstore(4, 0x20)
              + b"\x60\x04\x60\x24\x52"                       # mstore(36, 4)
              + b"\x7f" + b"zero".ljust(32, b"\0") + b"\x60\x44\x52"  # mstore(68, "zero")
              + b"\x60\x64\x60\x00\xfd")                      # revert(0, 100)
    dest = 7 + len(revert)
    head = b"\x60\x00\x35\x80\x60" + bytes([dest]) + b"\x57"  # w = calldataload(0); w? jump
    return head + revert + b"\x5b\x60\x00\x55\x00"             # sstore(0, w); stop


def deploy(anvil: Anvil) -> bytes:
    """Deploy the contract from anvil's unlocked account #1 (not the router's sender)."""
    runtime = _runtime()
    init = bytes([0x60, len(runtime), 0x60, 12, 0x60, 0, 0x39, 0x60, len(runtime), 0x60, 0,
                  0xF3]) + runtime
    accounts = anvil.rpc("eth_accounts")
    assert isinstance(accounts, list)
    tx_hash = anvil.rpc("eth_sendTransaction", {"from": accounts[1], "data": "0x" + init.hex()})
    assert isinstance(tx_hash, str)
    rcpt = anvil.receipt(tx_hash)
    assert rcpt["status"] == "0x1"
    return bytes.fromhex(str(rcpt["contractAddress"])[2:])


def word(n: int) -> bytes:
    return n.to_bytes(32, "big")


def rlp_decode(b: bytes) -> tuple[object, bytes]:
    """One RLP item (bytes or nested lists) and the rest."""
    p = b[0]
    if p < 0x80:
        return b[:1], b[1:]
    if p < 0xB8:
        n = p - 0x80
        return b[1:1 + n], b[1 + n:]
    if p < 0xC0:
        ln = p - 0xB7
        n = int.from_bytes(b[1:1 + ln], "big")
        return b[1 + ln:1 + ln + n], b[1 + ln + n:]
    if p < 0xF8:
        n, start = p - 0xC0, 1
    else:
        ln = p - 0xF7
        n, start = int.from_bytes(b[1:1 + ln], "big"), 1 + ln
    body, items = b[start:start + n], []
    while body:
        item, body = rlp_decode(body)
        items.append(item)
    return items, b[start + n:]


def cancel_pooled(anvil: Anvil, flight: object) -> bool:
    """The flight's cancellation is signed and in the node's pool (so a mined block takes it)."""
    f = flight  # an InFlight
    if f.cancel_intent is None:  # type: ignore[attr-defined]
        return False
    tx = anvil.rpc("eth_getTransactionByHash", "0x" + f.hash.hex())  # type: ignore[attr-defined]
    return tx is not None


def signed_fields(raw: bytes) -> dict[str, int]:
    """chain id, nonce, fees and gas of a signed EIP-1559 transaction, decoded from its bytes."""
    assert raw[0] == 2
    items, rest = rlp_decode(raw[1:])
    assert rest == b"" and isinstance(items, list)
    names = ("chain_id", "nonce", "priority", "max_fee", "gas")
    return {n: int.from_bytes(v, "big") for n, v in zip(names, items[:5], strict=True)}  # type: ignore[arg-type]


# --- Intent, JSON and SUBMIT encodings ------------------------------------------------------------


def test_plain_intent_keeps_its_old_json_and_wire_forms() -> None:
    plain = Intent(to=b"\x11" * 20, value=5, data=b"\x01", gas=50_000, id="p")
    assert plain.to_json() == {"to": "0x" + "11" * 20, "value": 5, "data": "0x01",
                               "gas": 50_000, "id": "p"}
    # the original encoding (flags 0), packed by hand as an old client does
    old = SUBMIT_FIXED.pack(b"\x11" * 20, (5).to_bytes(32, "little"), 50_000, 0, 1, 1) + b"p\x01"
    assert encode_submit(plain) == old
    assert decode_submit(old) == plain
    assert Intent.from_json({"to": "0x" + "11" * 20, "value": 5, "data": "0x01", "gas": 50_000,
                             "id": "p"}) == plain


def test_options_round_trip_through_json_and_submit() -> None:
    full = Intent(to=b"\x22" * 20, value=1, gas=None, id="o", max_fee_per_gas=50 * GWEI,
                  max_priority_fee_per_gas=2 * GWEI, deadline=1_900_000_000.5)
    assert Intent.from_json(json.loads(json.dumps(full.to_json()))) == full
    assert decode_submit(encode_submit(full)) == full
    # the router's estimate fills `gas` but the intent still equals its request
    resolved = full.with_estimated_gas(52_000)
    assert resolved == full and hash(resolved) == hash(full) and resolved.gas_limit == 52_000
    assert Intent.from_json(resolved.to_json()).gas == 52_000
    assert Intent.from_json(resolved.to_json()) == full
    assert decode_submit(encode_submit(resolved)) == full
    assert Intent(to=b"\x22" * 20, gas=21_000, id="o") != Intent(to=b"\x22" * 20, gas=None, id="o")


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"max_fee_per_gas": 10, "max_priority_fee_per_gas": 11}, "above max_fee_per_gas"),
    ({"max_fee_per_gas": -1}, "max_fee_per_gas must be"),
    ({"max_priority_fee_per_gas": True}, "max_priority_fee_per_gas must be"),
    ({"deadline": -5}, "deadline must be"),
    ({"deadline": float("nan")}, "deadline must be"),
    ({"deadline": "soon"}, "deadline must be"),
    ({"gas": None, "gas_estimated": True}, "gas_estimated without"),
    ({"gas": 20_999}, "outside"),
], ids=["prio>max", "neg-fee", "bool-fee", "neg-deadline", "nan-deadline", "str-deadline",
        "estimated-none", "low-gas"])
def test_bad_options_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(MalformedInput, match=match):
        Intent(to=b"\x33" * 20, id="bad", **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize(("mangle", "match"), [
    (lambda p: p[:60] + struct.pack("<H", 0x10) + p[62:], "undefined bits"),
    (lambda p: p[:60] + struct.pack("<H", 0x2) + p[62:], "lengths say"),
    (lambda p: p[:52] + struct.pack("<Q", 21_000) + struct.pack("<H", 0x1) + p[62:],
     "carries gas 21000"),
    (lambda p: p + b"\x00", "lengths say"),
], ids=["unknown-flag", "missing-option", "estimate-with-gas", "trailing"])
def test_malformed_submit_options_are_refused(mangle: object, match: str) -> None:
    payload = encode_submit(Intent(to=b"\x44" * 20, gas=30_000, id="w"))
    with pytest.raises(ApiError, match=match):
        decode_submit(mangle(payload))  # type: ignore[operator]


def test_gas_margin() -> None:
    assert gas_with_margin(21_000) == 21_000  # a plain transfer's cost cannot vary
    assert gas_with_margin(43_266) == -(-43_266 * (100 + GAS_MARGIN_PERCENT) // 100)
    assert gas_with_margin(29_999_999) == 30_000_000
    with pytest.raises(GasEstimationFailed, match="above the intent maximum"):
        gas_with_margin(30_000_001)


# --- against the node ----------------------------------------------------------------------------


def test_gas_is_estimated_for_a_contract_call_and_idempotency_holds(anvil: Anvil) -> None:
    contract = deploy(anvil)

    async def main() -> None:
        async with running_router(anvil) as router:
            node = int(str(anvil.rpc("eth_estimateGas", {
                "from": SENDER, "to": "0x" + contract.hex(), "data": "0x" + word(7).hex()})), 16)
            assert node > 21_000
            assert await router.estimate_gas(contract, 0, word(7)) == gas_with_margin(node)
            request = Intent(to=contract, data=word(7), gas=None, id="call-7")
            handle = await router.submit(request)
            assert handle.intent.gas == gas_with_margin(node) and handle.intent.gas_estimated
            assert signed_fields(handle.flight.raw)["gas"] == gas_with_margin(node)
            rcpt = await handle.receipt(timeout=20)
            assert rcpt["status"] == "0x1"
            slot = anvil.rpc("eth_getStorageAt", "0x" + contract.hex(), "0x0", "latest")
            assert int(str(slot), 16) == 7
            calls = router.signer.calls
            assert await router.submit(request) is handle  # same id, same options
            assert router.signer.calls == calls  # nothing estimated into a mismatch, or signed
            with pytest.raises(MalformedInput, match="already used"):
                await router.submit(Intent(to=contract, data=word(7), gas=90_000, id="call-7"))

    asyncio.run(main())


def test_failed_estimation_is_refused_with_the_revert_reason(anvil: Anvil, tmp_path: Path) -> None:
    contract = deploy(anvil)
    sock = str(tmp_path / "api.sock")

    async def main() -> None:
        async with running_router(anvil) as router:
            before = router.nonces.next_nonce
            with pytest.raises(GasEstimationFailed, match="execution reverted: zero") as e:
                await router.submit(Intent(to=contract, data=word(0), gas=None, id="rev"))
            assert e.value.reason.endswith("zero") and e.value.code == 3
            assert router.nonces.next_nonce == before and router.handle("rev") is None
            async with ApiServer(router, sock):
                def over_api() -> ApiError:
                    with ApiClient(sock) as api, pytest.raises(ApiError) as err:
                        api.submit(Intent(to=contract, data=word(0), gas=None, id="rev2"))
                    return err.value

                err = await asyncio.to_thread(over_api)
                assert err.code == E_GAS_ESTIMATE and "reverted: zero" in str(err)

    asyncio.run(main())


def test_fee_overrides_are_what_is_signed_and_bumps_start_from_them(paused_anvil: Anvil) -> None:
    async def main() -> None:
        policy = FeePolicy(max_fee_cap=100 * GWEI)
        async with running_router(paused_anvil, fees=policy) as router:
            both = await router.submit(Intent(to=b"\x55" * 20, value=1, id="both",
                                              max_fee_per_gas=40 * GWEI,
                                              max_priority_fee_per_gas=3 * GWEI))
            f = signed_fields(both.flight.raw)
            assert (f["max_fee"], f["priority"]) == (40 * GWEI, 3 * GWEI)
            tx = paused_anvil.rpc("eth_getTransactionByHash", "0x" + both.flight.hash.hex())
            assert isinstance(tx, dict) and int(tx["maxFeePerGas"], 16) == 40 * GWEI
            prio = await router.submit(Intent(to=b"\x56" * 20, value=1, id="prio",
                                              max_priority_fee_per_gas=7 * GWEI))
            f = signed_fields(prio.flight.raw)
            assert f["priority"] == 7 * GWEI
            assert f["max_fee"] == min(router._base_fee() * 2 + 7 * GWEI, 100 * GWEI)
            # a cancellation (a replacement) starts from the override, bumped
            await router.cancel("both")
            f = signed_fields(both.flight.raw)
            assert f["max_fee"] >= 40 * GWEI * 113 // 100 and f["priority"] >= 3 * GWEI * 113 // 100
            for bad in (Intent(to=b"\x57" * 20, id="cap1", max_fee_per_gas=101 * GWEI),
                        Intent(to=b"\x57" * 20, id="cap2", max_priority_fee_per_gas=101 * GWEI)):
                calls, nonce = router.signer.calls, router.nonces.next_nonce
                with pytest.raises(MalformedInput, match="above the fee policy's max_fee_cap"):
                    await router.submit(bad)
                assert (router.signer.calls, router.nonces.next_nonce) == (calls, nonce)

    asyncio.run(main())


def test_deadline_cancels_a_pending_intent(paused_anvil: Anvil) -> None:
    async def main() -> None:
        async with running_router(paused_anvil) as router:
            col = router.events("late")
            with pytest.raises(MalformedInput, match="already passed"):
                await router.submit(Intent(to=b"\x66" * 20, id="past", deadline=time.time() - 1))
            handle = await router.submit(Intent(to=b"\x66" * 20, value=9, id="late",
                                                deadline=time.time() + 1.0))
            first = handle.flight.hash
            await wait_for(lambda: cancel_pooled(paused_anvil, handle.flight), timeout=10,
                           what="cancellation at the deadline")
            paused_anvil.rpc("evm_mine")
            await wait_for(lambda: handle.state is TxState.CANCELLED, what="cancelled")
            kinds = []
            while True:
                ev = await asyncio.wait_for(col.__anext__(), 5)
                kinds.append(ev.kind)
                if ev.kind is EventKind.CANCELLED:
                    break
            assert EventKind.REPLACED in kinds and kinds[0] is EventKind.SUBMITTED
            assert ev.reason is not None and "deadline" in ev.reason
            assert ev.tx_hash != first and ev.block_number == 1
            assert router.counters["deadline_cancelled"] == 1
            col.close()

    asyncio.run(main())


def test_restart_keeps_options(paused_anvil: Anvil, tmp_path: Path) -> None:
    """Options live in the journal: a restarted router knows them, answers a resubmit of the same
    request with the same handle (estimated gas included) and still honours a deadline."""
    journal_path = tmp_path / "journal.sqlite"
    keep = Intent(to=b"\x77" * 20, value=3, gas=None, id="keep", max_fee_per_gas=30 * GWEI,
                  max_priority_fee_per_gas=2 * GWEI, deadline=time.time() + 3600)
    soon = Intent(to=b"\x78" * 20, value=4, id="soon", deadline=time.time() + 2.5)

    def router_on(signer: object) -> Router:
        cfg = config_for(paused_anvil)
        journal = open_journal(str(journal_path), base_dir=tmp_path, chain_id=cfg.chain_id,
                               sender=cfg.sender)
        return Router(cfg, signer, journal=journal)  # type: ignore[arg-type]

    async def main() -> None:
        with signer_over_unix() as signer:
            first = router_on(signer)
            await first.start()
            try:
                h = await first.submit(keep)
                await first.submit(soon)
                gas = h.intent.gas
            finally:
                await first.close()
        with signer_over_unix() as signer:
            second = router_on(signer)
            col = second.events()
            await second.start()
            try:
                again = second.handle("keep")
                assert again is not None and again.intent == keep
                assert (again.intent.gas, again.intent.gas_estimated) == (gas, True)
                assert again.intent.max_fee_per_gas == 30 * GWEI
                assert again.intent.deadline == keep.deadline
                calls = second.signer.calls
                assert await second.submit(keep) is again and second.signer.calls == calls
                s = second.handle("soon")
                assert s is not None
                await wait_for(lambda: cancel_pooled(paused_anvil, s.flight), timeout=10,
                               what="deadline after restart")
                paused_anvil.rpc("evm_mine")
                await wait_for(lambda: s.state is TxState.CANCELLED, what="cancelled")
                # recovery published nothing retroactively; later steps were published
                evs = []
                while not col._queue.empty():
                    evs.append(await col.__anext__())
                assert EventKind.SUBMITTED not in {e.kind for e in evs}
                assert any(e.kind is EventKind.CANCELLED and e.intent_id == "soon" for e in evs)
                assert any(e.kind is EventKind.LANDED and e.intent_id == "keep" for e in evs)
                col.close()
            finally:
                await second.close()

    asyncio.run(main())


def test_submit_cli_options(anvil: Anvil, tmp_path: Path) -> None:
    contract = deploy(anvil)
    sock = str(tmp_path / "api.sock")

    async def main() -> None:
        async with running_router(anvil) as router:
            async with ApiServer(router, sock):
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "router", "submit", "--router", f"unix:{sock}",
                    "--to", "0x" + contract.hex(), "--data", "0x" + word(9).hex(),
                    "--gas", "estimate", "--priority-fee", str(2 * GWEI), "--deadline", "+600",
                    "--id", "cli-opt", "--wait", "--json", cwd=ROOT,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                out, err = await asyncio.wait_for(proc.communicate(), 60)
                assert proc.returncode == 0, err.decode()
                assert json.loads(out)["status"] == 1
                h = router.handle("cli-opt")
                assert h is not None and h.intent.gas_estimated
                assert h.intent.max_priority_fee_per_gas == 2 * GWEI
                assert h.intent.deadline is not None and h.intent.deadline > time.time() + 500
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "router", "submit", "--router", f"unix:{sock}",
                    "--to", "0x" + contract.hex(), "--deadline", "soon", cwd=ROOT,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                _, err = await asyncio.wait_for(proc.communicate(), 60)
                assert proc.returncode == 2 and b"--deadline" in err

    asyncio.run(main())


def test_fee_policy_fresh_with_overrides() -> None:
    """The one place first-signature fees are computed: the policy's, or an intent's overrides
    (checked against the cap) in their place."""
    policy = FeePolicy(priority_fee=2 * GWEI, base_fee_multiplier_percent=200,
                       max_fee_cap=100 * GWEI)
    assert policy.fresh(10 * GWEI) == (22 * GWEI, 2 * GWEI)
    assert policy.fresh(80 * GWEI) == (100 * GWEI, 2 * GWEI)  # capped
    assert policy.fresh(10 * GWEI, priority_fee=5 * GWEI) == (25 * GWEI, 5 * GWEI)
    assert policy.fresh(10 * GWEI, max_fee=7 * GWEI) == (7 * GWEI, 2 * GWEI)
    assert policy.fresh(10 * GWEI, max_fee=7 * GWEI, priority_fee=7 * GWEI) == (7 * GWEI, 7 * GWEI)
    with pytest.raises(ValueError, match="max_fee_per_gas .* above the fee policy's max_fee_cap"):
        policy.fresh(10 * GWEI, max_fee=101 * GWEI)
    with pytest.raises(ValueError, match="max_priority_fee_per_gas .* above"):
        policy.fresh(10 * GWEI, priority_fee=101 * GWEI)
    with pytest.raises(ValueError, match="priority fee .* above max_fee_per_gas"):
        policy.fresh(10 * GWEI, max_fee=3 * GWEI, priority_fee=4 * GWEI)

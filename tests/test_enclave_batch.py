"""SIGN_TX_BATCH: the codec, a real signer process over a Unix socket, per-transaction policy and
rate limit, malformed frames, and the in-process signer's batch call."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from anvil_support import DEV_KEY_0
from eth_account import Account
from signer_support import (
    DEV_POLICY,
    ROOT,
    dev_key,
    header,
    raw_connect,
    read_frame,
    running_signer,
)

from enclave import wire
from enclave.errors import ErrorCode, ProtocolError
from enclave.policy import Policy
from enclave.tx import TX_EIP1559, TX_LEGACY, UINT256_MAX, UnsignedTx, sign_tx
from enclave.wire import Op
from router.errors import MalformedInput, SignerError
from router.signer_client import SignerClient
from router.signing import InProcessSigner

pytestmark = pytest.mark.timeout(120)

DEV_ADDRESS = Account.from_key(DEV_KEY_0).address
TO = bytes.fromhex("a0b86991c6218b36c1d19d4a2e9eb0ce3606eb48")


def _tx(nonce: int, **changes: object) -> UnsignedTx:
    tx = UnsignedTx(TX_EIP1559, 31337, nonce, 21_000, TO, 1, b"", 2 * 10**9, 10**9)
    return tx._replace(**changes)


@contextmanager
def signer_process(tmp_path: Path, policy_text: str | None = None) -> Iterator[str]:
    """`python -m enclave serve` on a Unix socket in tmp_path (a real process); yields its address."""
    key_file = tmp_path / "dev.key"
    key_file.write_text(DEV_KEY_0.hex())
    policy = tmp_path / "policy.toml"
    policy.write_text(policy_text if policy_text is not None else DEV_POLICY.read_text())
    sock = tmp_path / "signer.sock"
    proc = subprocess.Popen(
        [sys.executable, "-m", "enclave", "serve", "--listen", f"unix:{sock}",
         "--dev-key-file", str(key_file), "--policy", str(policy), "--spin-us", "0"],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        yield f"unix:{sock}"
    finally:
        proc.terminate()
        proc.wait(10)


# --- codec ------------------------------------------------------------------------------------------


def test_batch_codec_round_trip() -> None:
    txs = [_tx(i, data=os.urandom(i)) for i in range(5)]
    items = wire.decode_sign_tx_batch(memoryview(wire.encode_sign_tx_batch(txs)))
    assert [wire.decode_sign_tx(item) for item in items] == txs
    answer = wire.BATCH_COUNT.pack(2, 0) + wire.encode_batch_signed(b"h" * 32, b"raw") + (
        wire.encode_batch_error(ErrorCode.POLICY_DENIED, "policy x: no")
    )
    assert wire.decode_sign_tx_batch_answer(answer, 2) == [
        (0, b"h" * 32 + b"raw"), (ErrorCode.POLICY_DENIED, b"policy x: no"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    "answer,expected,message",
    [
        (wire.BATCH_COUNT.pack(1, 0), 2, "1 results for 2 requests"),
        (wire.BATCH_COUNT.pack(1, 0) + b"\0\0", 1, "truncated at result 0"),
        (wire.BATCH_COUNT.pack(1, 0) + wire.BATCH_RESULT.pack(0, 40) + bytes(39), 1, "truncated in"),
        (wire.BATCH_COUNT.pack(1, 0) + wire.BATCH_RESULT.pack(0, 3) + b"abc", 1, "no signed transaction"),
        (wire.BATCH_COUNT.pack(1, 0) + wire.encode_batch_error(8, "x") + b"!", 1, "after the last"),
        (b"\0", 1, "has no count"),
    ],
)
def test_batch_answer_decoding_is_strict(answer: bytes, expected: int, message: str) -> None:
    with pytest.raises(ProtocolError, match=message) as info:
        wire.decode_sign_tx_batch_answer(answer, expected)
    assert info.value.code == ErrorCode.MALFORMED


@pytest.mark.parametrize("data_len", [0, 55, 56, 255, 256, 65535, 65536, wire.MAX_TX_DATA])
def test_signed_tx_overhead_bound_holds_at_the_wire_maxima(data_len: int) -> None:
    key = dev_key()
    u64 = (1 << 64) - 1
    for tx in (
        UnsignedTx(TX_EIP1559, u64, u64 - 1, u64, b"\xff" * 20, UINT256_MAX, b"\xff" * data_len,
                   UINT256_MAX, UINT256_MAX),
        UnsignedTx(TX_LEGACY, u64, u64 - 1, u64, b"\xff" * 20, UINT256_MAX, b"\xff" * data_len,
                   UINT256_MAX, 0),
    ):  # fmt: skip
        assert len(sign_tx(key, tx).raw) - data_len <= wire.SIGNED_TX_OVERHEAD


def test_client_side_encoding_refuses_bad_batches() -> None:
    with pytest.raises(ValueError, match="1..256 transactions"):
        wire.encode_sign_tx_batch([])
    with pytest.raises(ValueError, match="1..256 transactions"):
        wire.encode_sign_tx_batch([_tx(i) for i in range(257)])
    with pytest.raises(ValueError, match="transaction 1: tx_type"):
        wire.encode_sign_tx_batch([_tx(0), _tx(1, tx_type=5)])
    with pytest.raises(ValueError, match="answer to this batch could reach"):
        wire.encode_sign_tx_batch([_tx(0, data=bytes(wire.MAX_TX_DATA)), _tx(1, data=bytes(4000))])


# --- a real signer process --------------------------------------------------------------------------


def test_batch_signs_every_transaction_in_order(tmp_path: Path) -> None:
    with signer_process(tmp_path) as address, SignerClient.connect(address, spin_us=0) as client:
        txs = [_tx(i, data=os.urandom(i * 7), value=i) for i in range(10)]
        results = client.sign_tx_batch(txs)
        assert len(results) == 10
        for tx, signed in zip(txs, results, strict=True):
            assert not isinstance(signed, SignerError)
            assert Account.recover_transaction(signed.raw) == DEV_ADDRESS
            _assert_fields(tx, signed.raw)  # the i-th result is the i-th transaction
        stats = client.stats()
        assert stats.signed_txs == 10 and stats.presigned + stats.presign_fallbacks == 10


def _assert_fields(tx: UnsignedTx, raw: bytes) -> None:
    from eth_account.typed_transactions import TypedTransaction
    from hexbytes import HexBytes

    decoded = TypedTransaction.from_bytes(HexBytes(raw)).as_dict()
    assert (decoded["nonce"], decoded["value"], bytes(decoded["data"]), decoded["chainId"]) == (
        tx.nonce, tx.value, tx.data, tx.chain_id,
    )  # fmt: skip


PRODUCTION_LIKE = f"""
schema = 1
mode = "development"
chain_ids = [31337]
max_value = "100"
max_fee_per_gas = "1000000000000"
max_gas = 1000000
presign_pool = 32

[rate_limit]
per_second = 0.001
burst = {{burst}}

[[destinations]]
address = "0x{TO.hex()}"
"""


def test_policy_applies_per_transaction(tmp_path: Path) -> None:
    with signer_process(tmp_path, PRODUCTION_LIKE.format(burst=100)) as address:
        with SignerClient.connect(address, spin_us=0) as client:
            txs = [_tx(0), _tx(1, chain_id=1), _tx(2), _tx(3, value=101), _tx(4, to=b"\2" * 20)]
            results = client.sign_tx_batch(txs)
            kinds = [r.message.split(":")[0] if isinstance(r, SignerError) else "signed"
                     for r in results]  # fmt: skip
            assert kinds == [
                "signed", "policy chain_ids", "signed", "policy max_value", "policy destinations",
            ]  # fmt: skip
            for r in results:
                if isinstance(r, SignerError):
                    assert r.code == ErrorCode.POLICY_DENIED and r.name == "POLICY_DENIED"
                else:
                    assert Account.recover_transaction(r.raw) == DEV_ADDRESS
            stats = client.stats()
            assert (stats.signed_txs, stats.denials) == (2, 3)


def test_rate_limit_applies_per_transaction(tmp_path: Path) -> None:
    with signer_process(tmp_path, PRODUCTION_LIKE.format(burst=3)) as address:
        with SignerClient.connect(address, spin_us=0) as client:
            results = client.sign_tx_batch([_tx(i) for i in range(5)])
            assert [isinstance(r, SignerError) for r in results] == [False] * 3 + [True] * 2
            for r in results[3:]:
                assert isinstance(r, SignerError) and r.code == ErrorCode.RATE_LIMITED


def test_a_malformed_transaction_refuses_only_itself(tmp_path: Path) -> None:
    good = wire.encode_sign_tx(_tx(0))
    bad = bytearray(good)
    bad[0] = 5  # tx_type 5
    payload = wire.BATCH_COUNT.pack(3, 0) + b"".join(
        wire.BATCH_ITEM.pack(len(x)) + bytes(x) for x in (good, bad, good[:100])
    )
    with running_signer(tmp_path) as server, raw_connect(server) as sock:
        sock.sendall(header(Op.SIGN_TX_BATCH, 1, len(payload)) + payload)
        op, rid, body = read_frame(sock)
        assert (op, rid) == (Op.SIGN_TX_BATCH | wire.RESPONSE_BIT, 1)
        results = wire.decode_sign_tx_batch_answer(body, 3)
        assert results[0][0] == 0
        assert results[1][0] == ErrorCode.MALFORMED and b"tx_type 5" in results[1][1]
        assert results[2][0] == ErrorCode.BAD_LENGTH


def _item(tx: UnsignedTx) -> bytes:
    payload = wire.encode_sign_tx(tx)
    return wire.BATCH_ITEM.pack(len(payload)) + payload


_ONE = _item(_tx(0))


@pytest.mark.parametrize(
    "payload,code,message",
    [
        (b"\1", ErrorCode.MALFORMED, "has no count"),
        (wire.BATCH_COUNT.pack(0, 0), ErrorCode.MALFORMED, "of 0 transactions"),
        (wire.BATCH_COUNT.pack(257, 0) + _ONE * 257, ErrorCode.MALFORMED, "257 transactions \\(limit 256\\)"),
        (wire.BATCH_COUNT.pack(1, 1) + _ONE, ErrorCode.MALFORMED, "reserved field"),
        (wire.BATCH_COUNT.pack(2, 0) + _ONE, ErrorCode.MALFORMED, "2 transactions declared, 1 present"),
        (wire.BATCH_COUNT.pack(1, 0) + _ONE[:-1], ErrorCode.MALFORMED, "transaction 0 declares 148 bytes, 147 remain"),
        (wire.BATCH_COUNT.pack(1, 0) + _ONE + _ONE, ErrorCode.MALFORMED, "152 bytes after the 1 declared"),
        (wire.BATCH_COUNT.pack(1, 0) + _ONE[:2], ErrorCode.MALFORMED, "1 transactions declared, 0 present"),
        # 256 transactions of 300 bytes of calldata: the request fits a frame, the answer might not
        (wire.BATCH_COUNT.pack(256, 0) + _item(_tx(0, data=bytes(300))) * 256,
         ErrorCode.PAYLOAD_TOO_LARGE, "could reach 143876 bytes"),
    ],
    ids=["no-count", "n-0", "n-257", "reserved", "truncated-count", "truncated-item", "trailing",
         "truncated-length", "answer-too-large"],
)  # fmt: skip
def test_malformed_batch_frames_get_specific_errors(
    tmp_path: Path, payload: bytes, code: ErrorCode, message: str
) -> None:
    with running_signer(tmp_path) as server, raw_connect(server) as sock:
        assert len(payload) <= wire.MAX_PAYLOAD  # each case is a well-framed request
        sock.sendall(header(Op.SIGN_TX_BATCH, 4, len(payload)) + payload)
        op, rid, body = read_frame(sock)
        assert (op, rid) == (wire.OP_ERROR, 4)
        got_code, text = wire.decode_error(body)
        assert got_code == code
        assert re.search(message, text), text
        # Nothing was signed and the connection still serves.
        sock.sendall(header(Op.PING, 5, 0))
        assert read_frame(sock)[:2] == (Op.PING | wire.RESPONSE_BIT, 5)
        assert server.stats().signed_txs == 0


def test_client_refuses_bad_batches_before_sending(tmp_path: Path) -> None:
    with running_signer(tmp_path) as server, SignerClient.connect(str(server.address), spin_us=0) as c:
        with pytest.raises(MalformedInput, match="1..256"):
            c.sign_tx_batch([])
        with pytest.raises(MalformedInput, match="1..256"):
            c.sign_tx_batch([_tx(i) for i in range(257)])
        assert server.stats().requests == 0


def test_in_process_signer_batch() -> None:
    key = dev_key()  # no pool attached: deterministic, so results equal single signatures
    signer = InProcessSigner(key)
    txs = [_tx(0), _tx(1, tx_type=9), _tx(2)]
    results = signer.sign_tx_batch(txs)
    assert results[0] == signer.sign_tx(txs[0]) and results[2] == signer.sign_tx(txs[2])
    err = results[1]
    assert isinstance(err, SignerError) and err.code == ErrorCode.MALFORMED
    assert "unsupported transaction type 9" in err.message


def test_batch_policy_from_shipped_dev_policy_parses() -> None:
    assert Policy.from_toml(PRODUCTION_LIKE.format(burst=3)).presign_pool == 32

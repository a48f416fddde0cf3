"""The frame codec (enclave/wire.py): round trips and every decoding rule."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave import wire
from enclave.errors import ErrorCode, ProtocolError
from enclave.tx import TX_EIP1559, TX_LEGACY, UnsignedTx

TX = UnsignedTx(
    TX_EIP1559,
    1,
    5,
    21000,
    b"\x11" * 20,
    10**18,
    b"\xa9\x05\x9c\xbb" + bytes(64),
    3 * 10**10,
    10**9,
)

txs = st.builds(
    lambda t, chain, nonce, gas, to, value, data, fee, prio: UnsignedTx(
        t, chain, nonce, gas, to, value, data, fee, min(prio, fee) if t == TX_EIP1559 else 0
    ),
    st.sampled_from([TX_LEGACY, TX_EIP1559]),
    st.integers(min_value=1, max_value=2**64 - 1),
    st.integers(min_value=0, max_value=2**64 - 2),
    st.integers(min_value=0, max_value=2**64 - 1),
    st.one_of(st.none(), st.binary(min_size=20, max_size=20)),
    st.integers(min_value=0, max_value=2**256 - 1),
    st.binary(max_size=500),
    st.integers(min_value=0, max_value=2**256 - 1),
    st.integers(min_value=0, max_value=2**256 - 1),
)


@settings(deadline=None)  # timing is not the property; CI machines are shared
@given(txs)
def test_sign_tx_round_trip(tx: UnsignedTx) -> None:
    assert wire.decode_sign_tx(memoryview(wire.encode_sign_tx(tx))) == tx


def test_layout_is_the_documented_one() -> None:
    assert wire.HEADER_SIZE == 12 and wire.TX_FIXED_SIZE == 148
    payload = wire.encode_sign_tx(TX)
    assert payload[0] == 2 and payload[1] == 1 and payload[2:4] == b"\0\0"
    assert struct.unpack_from("<I", payload, 4)[0] == len(TX.data)
    assert struct.unpack_from("<Q", payload, 8)[0] == 1
    assert int.from_bytes(payload[32:64], "little") == 10**18
    assert payload[128:148] == TX.to and payload[148:] == TX.data
    frame = wire.pack_frame(wire.Op.SIGN_TX, 0x01020304, payload)
    assert frame[:4] == b"SN\x01\x04" and frame[4:8] == b"\x04\x03\x02\x01"
    assert struct.unpack_from("<I", frame, 8)[0] == len(payload)


def _mutate(offset: int, value: bytes, base: bytes | None = None) -> memoryview:
    b = bytearray(base if base is not None else wire.encode_sign_tx(TX))
    b[offset : offset + len(value)] = value
    return memoryview(b)


LEGACY = wire.encode_sign_tx(TX._replace(tx_type=TX_LEGACY, max_priority_fee_per_gas=0))


@pytest.mark.parametrize(
    "payload,code,match",
    [
        (memoryview(b"\x02" * 100), ErrorCode.BAD_LENGTH, "at least 148"),
        (_mutate(4, struct.pack("<I", 3)), ErrorCode.BAD_LENGTH, "data_len 3"),
        (_mutate(0, b"\x01"), ErrorCode.MALFORMED, "tx_type 1"),
        (_mutate(1, b"\x03"), ErrorCode.MALFORMED, "unknown flags"),
        (_mutate(2, b"\x01\x00"), ErrorCode.MALFORMED, "reserved"),
        (_mutate(1, b"\x00"), ErrorCode.MALFORMED, "has-to flag"),
        (_mutate(8, bytes(8)), ErrorCode.MALFORMED, "chain_id 0"),
        (_mutate(16, b"\xff" * 8), ErrorCode.MALFORMED, "EIP-2681"),
        (_mutate(96, b"\x01", LEGACY), ErrorCode.MALFORMED, "legacy transaction"),
        (_mutate(96, b"\xff" * 32), ErrorCode.MALFORMED, "above max_fee_per_gas"),
    ],
    ids=["short", "data-len", "type", "flags", "reserved", "to-without-flag", "chain-0",
         "nonce-max", "legacy-priority", "priority-above-max"],
)  # fmt: skip
def test_sign_tx_decoding_errors(payload: memoryview, code: ErrorCode, match: str) -> None:
    with pytest.raises(ProtocolError, match=match) as info:
        wire.decode_sign_tx(payload)
    assert info.value.code == code


def test_contract_creation_round_trip() -> None:
    tx = TX._replace(to=None)
    payload = wire.encode_sign_tx(tx)
    assert payload[1] == 0 and payload[128:148] == bytes(20)
    assert wire.decode_sign_tx(memoryview(payload)).to is None


@pytest.mark.parametrize(
    "tx,match",
    [(TX._replace(value=-1), "value"), (TX._replace(nonce=2**64), "nonce"),
     (TX._replace(to=b"\x01"), "to must be 20 bytes"), (TX._replace(tx_type=3), "tx_type"),
     (TX._replace(data=bytes(wire.MAX_TX_DATA + 1)), "data of"), (TX._replace(gas="1"), "gas")],
    ids=["negative", "nonce", "to", "type", "data", "type-of-gas"],
)  # fmt: skip
def test_encode_sign_tx_refuses_out_of_range(tx: UnsignedTx, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        wire.encode_sign_tx(tx)


@settings(deadline=None)  # timing is not the property; CI machines are shared
@given(st.binary(max_size=512), st.binary(max_size=512), st.binary(max_size=1024))
def test_attest_round_trip(nonce: bytes, user_data: bytes, public_key: bytes) -> None:
    got = wire.decode_attest(memoryview(wire.encode_attest(nonce, user_data, public_key)))
    assert got == (nonce or None, user_data or None, public_key or None)


@pytest.mark.parametrize(
    "payload,code,match",
    [
        (b"\x00" * 7, ErrorCode.BAD_LENGTH, "at least 8"),
        (struct.pack("<HHHH", 1, 0, 0, 0), ErrorCode.BAD_LENGTH, "sum to 9"),
        (struct.pack("<HHHH", 0, 0, 0, 1), ErrorCode.MALFORMED, "reserved"),
        (struct.pack("<HHHH", 513, 0, 0, 0) + bytes(513), ErrorCode.MALFORMED, "too long"),
        (struct.pack("<HHHH", 0, 0, 1025, 0) + bytes(1025), ErrorCode.MALFORMED, "too long"),
    ],
    ids=["short", "lengths", "reserved", "nonce-limit", "key-limit"],
)
def test_attest_decoding_errors(payload: bytes, code: ErrorCode, match: str) -> None:
    with pytest.raises(ProtocolError, match=match) as info:
        wire.decode_attest(memoryview(payload))
    assert info.value.code == code


def test_encode_attest_limits() -> None:
    with pytest.raises(ValueError, match="user_data of 513"):
        wire.encode_attest(user_data=bytes(513))


def test_error_frame_round_trip_and_truncation() -> None:
    frame = wire.encode_error(9, ErrorCode.POLICY_DENIED, "x" * 1000 + "é")
    magic, version, op, rid, n = wire.HEADER.unpack_from(frame)
    assert (op, rid) == (wire.OP_ERROR, 9)
    code, message = wire.decode_error(frame[12:])
    assert code == ErrorCode.POLICY_DENIED and message == "x" * wire.MAX_ERROR_MESSAGE
    with pytest.raises(ProtocolError):
        wire.decode_error(b"\x01")


def test_stats_round_trip() -> None:
    s = wire.Stats(1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
    assert wire.Stats.decode(s.encode()) == s
    with pytest.raises(ProtocolError, match="at least 64"):
        wire.Stats.decode(b"\x00" * 63)
    with pytest.raises(ProtocolError, match="multiple of 8"):
        wire.Stats.decode(b"\x00" * 65)


def test_stats_decodes_older_and_newer_records() -> None:
    """Counters are appended: a version-1 record (eight) reads with the new ones at 0, and a
    record from a newer signer with more counters reads its known prefix."""
    old = wire.STATS_STRUCT.pack(*range(1, 12))[:64]
    assert wire.Stats.decode(old) == wire.Stats(1, 2, 3, 4, 5, 6, 7, 8)
    newer = wire.Stats(*range(1, 12)).encode() + (99).to_bytes(8, "little")
    assert wire.Stats.decode(newer) == wire.Stats(*range(1, 12))


@pytest.mark.parametrize(
    "args,code",
    [((b"XX", 1, 0), ErrorCode.BAD_MAGIC), ((b"SN", 2, 0), ErrorCode.BAD_VERSION),
     ((b"SN", 1, wire.MAX_PAYLOAD + 1), ErrorCode.PAYLOAD_TOO_LARGE)],
    ids=["magic", "version", "too-large"],
)  # fmt: skip
def test_check_header(args: tuple[bytes, int, int], code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as info:
        wire.check_header(*args)
    assert info.value.code == code
    wire.check_header(b"SN", 1, wire.MAX_PAYLOAD)


def test_protocol_md_example_is_true() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "enclave" / "PROTOCOL.md").read_text()
    request = wire.pack_frame(wire.Op.PING, 7)
    answer = wire.pack_frame(wire.Op.PING | wire.RESPONSE_BIT, 7)
    assert " ".join(f"{b:02x}" for b in request) in doc
    assert " ".join(f"{b:02x}" for b in answer) in doc
    for code in ErrorCode:
        assert f"| {code.value:<4} | {code.name:<17} |" in doc
    assert f"MAX_PAYLOAD` = {wire.MAX_PAYLOAD}" in doc


def test_tx_data_limit_keeps_every_answer_in_a_frame() -> None:
    from signer_support import dev_key

    from enclave.tx import sign_tx

    big = 2**256 - 1
    for tx_type in (TX_LEGACY, TX_EIP1559):
        worst = UnsignedTx(
            tx_type, 2**64 - 1, 2**64 - 2, 2**64 - 1, b"\xff" * 20, big,
            b"\xff" * wire.MAX_TX_DATA, big, big if tx_type == TX_EIP1559 else 0,
        )  # fmt: skip
        signed = sign_tx(dev_key(), worst)
        assert 32 + len(signed.raw) <= wire.MAX_PAYLOAD
    payload = bytearray(wire.encode_sign_tx(TX._replace(data=bytes(wire.MAX_TX_DATA))))
    payload += b"\0"
    struct.pack_into("<I", payload, 4, wire.MAX_TX_DATA + 1)
    with pytest.raises(ProtocolError, match="limit 130048") as info:
        wire.decode_sign_tx(memoryview(payload))
    assert info.value.code == ErrorCode.PAYLOAD_TOO_LARGE

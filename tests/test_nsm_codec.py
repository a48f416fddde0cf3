"""The NSM CBOR codec against exact bytes, written out by hand from the serde encoding rules.

The GetRandom request and response prefix are the ones the Linux driver itself hard-codes
(drivers/misc/nsm.c), so those two pin us to the real module's format.
"""

from __future__ import annotations

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from enclave.nsm import _codec as c
from enclave.nsm.errors import NsmProtocolError


def t(s: str) -> str:
    """Hex of a short CBOR text string (major type 3, length < 24)."""
    assert len(s) < 24
    return f"{0x60 + len(s):02x}" + s.encode().hex()


PCR = bytes(range(48))

REQUESTS = [
    ("describe_nsm", c.DescribeNsm(), "6b" + "4465736372696265" + "4e534d"),
    # The driver's own hwrng request: 69 47657452616E646F6D
    ("get_random", c.GetRandom(), "6947657452616e646f6d"),
    ("describe_pcr_0", c.DescribePcr(0), "a1" + t("DescribePCR") + "a1" + t("index") + "00"),
    ("describe_pcr_23", c.DescribePcr(23), "a1" + t("DescribePCR") + "a1" + t("index") + "17"),
    ("describe_pcr_24", c.DescribePcr(24), "a1" + t("DescribePCR") + "a1" + t("index") + "1818"),
    ("lock_pcr_300", c.LockPcr(300), "a1" + t("LockPCR") + "a1" + t("index") + "19012c"),
    ("lock_pcrs_16", c.LockPcrs(16), "a1" + t("LockPCRs") + "a1" + t("range") + "10"),
    (
        "extend_pcr",
        c.ExtendPcr(16, b"\x01\x02"),
        "a1" + t("ExtendPCR") + "a2" + t("index") + "10" + t("data") + "420102",
    ),
    (
        "attestation_empty",
        c.Attestation(),
        "a1"
        + t("Attestation")
        + "a3"
        + t("user_data")
        + "f6"
        + t("nonce")
        + "f6"
        + t("public_key")
        + "f6",
    ),
    (
        "attestation_full",
        c.Attestation(user_data=b"", nonce=b"\xaa" * 24, public_key=b"\x30\x00"),
        "a1"
        + t("Attestation")
        + "a3"
        + t("user_data")
        + "40"
        + t("nonce")
        + "5818"
        + "aa" * 24
        + t("public_key")
        + "423000",
    ),
]

RESPONSES = [
    ("lock_pcr", c.LockPcrResponse(), t("LockPCR")),
    ("lock_pcrs", c.LockPcrsResponse(), t("LockPCRs")),
    ("error", c.ErrorResponse("ReadOnlyIndex"), "a1" + t("Error") + t("ReadOnlyIndex")),
    (
        "describe_pcr",
        c.DescribePcrResponse(lock=True, data=PCR),
        "a1" + t("DescribePCR") + "a2" + t("lock") + "f5" + t("data") + "5830" + PCR.hex(),
    ),
    (
        "extend_pcr",
        c.ExtendPcrResponse(PCR),
        "a1" + t("ExtendPCR") + "a1" + t("data") + "5830" + PCR.hex(),
    ),
    # The driver parses exactly this prefix: A1 69 "GetRandom" A1 66 "random", then a byte string.
    (
        "get_random",
        c.GetRandomResponse(b"\x07" * 3),
        "a16947657452616e646f6da16672616e646f6d" + "43070707",
    ),
    (
        "attestation",
        c.AttestationResponse(b"\x84" * 300),
        "a1" + t("Attestation") + "a1" + t("document") + "59012c" + "84" * 300,
    ),
    (
        "describe_nsm",
        c.DescribeNsmResponse(1, 0, 2, "i-x", 32, frozenset({1, 0}), "SHA384"),
        "a1"
        + t("DescribeNSM")
        + "a7"
        + t("version_major")
        + "01"
        + t("version_minor")
        + "00"
        + t("version_patch")
        + "02"
        + t("module_id")
        + t("i-x")
        + t("max_pcrs")
        + "1820"
        + t("locked_pcrs")
        + "820001"
        + t("digest")
        + t("SHA384"),
    ),
]


@pytest.mark.parametrize(
    ("request_", "hexbytes"), [r[1:] for r in REQUESTS], ids=[r[0] for r in REQUESTS]
)
def test_request_exact_bytes_round_trip(request_: c.Request, hexbytes: str) -> None:
    assert c.encode_request(request_).hex() == hexbytes
    assert c.decode_request(bytes.fromhex(hexbytes)) == request_


@pytest.mark.parametrize(
    ("response", "hexbytes"), [r[1:] for r in RESPONSES], ids=[r[0] for r in RESPONSES]
)
def test_response_exact_bytes_round_trip(response: c.Response, hexbytes: str) -> None:
    assert c.encode_response(response).hex() == hexbytes
    assert c.decode_response(bytes.fromhex(hexbytes)) == response


def test_attestation_request_missing_optional_fields_mean_none() -> None:
    # serde fills absent Option fields with None; the module accepts such requests.
    data = cbor2.dumps({"Attestation": {"nonce": b"n"}})
    assert c.decode_request(data) == c.Attestation(nonce=b"n")


BAD_REQUESTS = [
    ("empty", b"", "empty request"),
    ("not_cbor", b"\xff\xff", "not valid CBOR"),
    ("trailing", bytes.fromhex("6947657452616e646f6d00"), "1 bytes after"),
    ("unknown_unit", cbor2.dumps("Reboot"), "unknown request 'Reboot'"),
    ("unknown_struct", cbor2.dumps({"Reboot": {}}), "unknown request 'Reboot'"),
    ("two_entries", cbor2.dumps({"LockPCR": {"index": 1}, "X": 1}), "one-entry map"),
    ("fields_not_map", cbor2.dumps({"LockPCR": [1]}), "fields must be a map"),
    ("missing_index", cbor2.dumps({"LockPCR": {}}), "missing field 'index'"),
    ("index_text", cbor2.dumps({"LockPCR": {"index": "1"}}), r"LockPCR.index: wrong type str"),
    ("index_bool", cbor2.dumps({"LockPCR": {"index": True}}), "wrong type bool"),
    ("index_negative", cbor2.dumps({"DescribePCR": {"index": -1}}), "not a u16"),
    ("index_too_big", cbor2.dumps({"DescribePCR": {"index": 65536}}), "not a u16"),
    ("data_text", cbor2.dumps({"ExtendPCR": {"index": 1, "data": "x"}}), "wrong type str"),
    ("nonce_int", cbor2.dumps({"Attestation": {"nonce": 5}}), "Attestation.nonce: wrong type"),
    ("tagged", bytes.fromhex("d903e8") + cbor2.dumps("GetRandom"), "unexpected CBOR tag 1000"),
    (
        "too_large",
        cbor2.dumps({"ExtendPCR": {"index": 16, "data": b"x" * 5000}}),
        "exceeds the 4096",
    ),
]


@pytest.mark.parametrize(
    ("data", "message"), [b[1:] for b in BAD_REQUESTS], ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_request_is_a_protocol_error(data: bytes, message: str) -> None:
    with pytest.raises(NsmProtocolError, match=message):
        c.decode_request(data)


BAD_RESPONSES = [
    ("unknown_error", cbor2.dumps({"Error": "Oops"}), "unknown error code"),
    ("unknown_unit", cbor2.dumps("DescribeNSM"), "unknown response"),
    (
        "lock_not_bool",
        cbor2.dumps({"DescribePCR": {"lock": 1, "data": b""}}),
        "lock: wrong type int",
    ),
    (
        "bad_digest",
        cbor2.dumps(
            {
                "DescribeNSM": {
                    "version_major": 1,
                    "version_minor": 0,
                    "version_patch": 0,
                    "module_id": "m",
                    "max_pcrs": 32,
                    "locked_pcrs": [],
                    "digest": "MD5",
                }
            }
        ),
        "unknown digest",
    ),
    (
        "bad_locked",
        cbor2.dumps(
            {
                "DescribeNSM": {
                    "version_major": 1,
                    "version_minor": 0,
                    "version_patch": 0,
                    "module_id": "m",
                    "max_pcrs": 32,
                    "locked_pcrs": ["0"],
                    "digest": "SHA384",
                }
            }
        ),
        "entries must be u16",
    ),
    ("document_missing", cbor2.dumps({"Attestation": {}}), "missing field 'document'"),
    ("too_large", cbor2.dumps({"Attestation": {"document": b"x" * 0x3000}}), "exceeds the 12288"),
]


@pytest.mark.parametrize(
    ("data", "message"), [b[1:] for b in BAD_RESPONSES], ids=[b[0] for b in BAD_RESPONSES]
)
def test_bad_response_is_a_protocol_error(data: bytes, message: str) -> None:
    with pytest.raises(NsmProtocolError, match=message):
        c.decode_response(data)


@pytest.mark.parametrize(
    "bad",
    [c.DescribePcr(-1), c.LockPcr(70000), c.LockPcrs(True), c.ExtendPcr(1, "text")],  # type: ignore[arg-type]
    ids=["negative", "too_big", "bool", "text_data"],
)
def test_encoding_refuses_caller_misuse(bad: c.Request) -> None:
    with pytest.raises((ValueError, TypeError)):
        c.encode_request(bad)


@given(st.binary(max_size=300))
def test_decoders_never_crash_on_random_bytes(data: bytes) -> None:
    for decode in (c.decode_request, c.decode_response):
        try:
            decode(data)
        except NsmProtocolError:
            pass


@given(
    st.one_of(
        st.builds(c.DescribePcr, st.integers(0, 0xFFFF)),
        st.builds(c.ExtendPcr, st.integers(0, 0xFFFF), st.binary(max_size=64)),
        st.builds(c.LockPcrs, st.integers(0, 0xFFFF)),
        st.builds(
            c.Attestation,
            st.none() | st.binary(max_size=64),
            st.none() | st.binary(max_size=64),
            st.none() | st.binary(max_size=64),
        ),
    )
)
def test_request_round_trip_property(request_: c.Request) -> None:
    assert c.decode_request(c.encode_request(request_)) == request_

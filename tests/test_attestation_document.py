"""Parsing attestation documents: each malformed shape gets a specific error naming the field."""

from __future__ import annotations

import base64

import cbor2
import pytest
from attestation_support import TestPki, make_document, make_payload, sign_es384

from verify.attestation import MalformedAttestation, decode_document_text, parse_document
from verify.errors import MalformedInput


@pytest.fixture(scope="module")
def pki() -> TestPki:
    return TestPki.generate("doc")


def with_payload(pki: TestPki, payload: object) -> bytes:
    body = cbor2.dumps(payload)
    protected = cbor2.dumps({1: -35})
    return cbor2.dumps([protected, {}, body, sign_es384(pki.leaf_key, protected, body)])


def test_valid_document_model(pki: TestPki) -> None:
    signed = parse_document(make_document(pki))
    doc = signed.document
    assert signed.alg == -35
    assert doc.digest == "SHA384" and doc.module_id.endswith("encdoc")
    assert sorted(doc.pcrs) == list(range(16)) and all(len(v) == 48 for v in doc.pcrs.values())
    assert doc.public_key is None and doc.user_data == b"sentinel user data"
    assert len(doc.cabundle) == 4
    with pytest.raises(TypeError):
        doc.pcrs[0] = bytes(48)  # type: ignore[index]
    assert "cabundle" not in repr(doc)  # reprs stay readable: no DER blobs


def test_tag_18_and_empty_or_null_optional_fields(pki: TestPki) -> None:
    doc = parse_document(make_document(pki, tagged=True, nonce=b"", user_data=None)).document
    assert doc.nonce == b"" and doc.user_data is None
    payload = make_payload(pki)
    for key in ("public_key", "user_data", "nonce"):
        del payload[key]
    assert parse_document(with_payload(pki, payload)).document.nonce is None


def test_more_than_16_pcrs(pki: TestPki) -> None:
    pcrs = {i: bytes([i]) * 48 for i in range(32)}
    assert len(parse_document(make_document(pki, pcrs=pcrs)).document.pcrs) == 32


BAD_PAYLOADS = {
    "unknown field": ({"extra": 1}, "unknown fields 'extra'"),
    "digest": ({"digest": "SHA256"}, "got 'SHA256', expected 'SHA384'"),
    "timestamp bool": ({"timestamp": True}, "timestamp"),
    "timestamp negative": ({"timestamp": -5}, "timestamp"),
    "timestamp text": ({"timestamp": "now"}, "timestamp"),
    "module_id empty": ({"module_id": ""}, "module_id"),
    "module_id bytes": ({"module_id": b"x"}, "module_id"),
    "pcr 32 bytes": ({"pcrs": {0: bytes(32)}}, r"pcrs\[0\].*length 32 outside 48..48"),
    "pcr index 32": ({"pcrs": {32: bytes(48)}}, "index 32 not in 0..31"),
    "pcr index text": ({"pcrs": {"0": bytes(48)}}, "index '0'"),
    "pcrs empty": ({"pcrs": {}}, "pcrs"),
    "pcrs list": ({"pcrs": [bytes(48)]}, "pcrs"),
    "certificate empty": ({"certificate": b""}, "certificate"),
    "certificate too long": ({"certificate": bytes(1025)}, "length 1025 outside 1..1024"),
    "cabundle empty": ({"cabundle": []}, "cabundle"),
    "cabundle entry text": ({"cabundle": ["x"]}, r"cabundle\[0\]"),
    "nonce too long": ({"nonce": bytes(1025)}, r"\(nonce\): length 1025"),
    "user_data int": ({"user_data": 5}, r"\(user_data\): expected a byte string, got int"),
    "public_key text": ({"public_key": "k"}, "public_key"),
}


@pytest.mark.parametrize("case", sorted(BAD_PAYLOADS), ids=str)
def test_bad_payload_field(pki: TestPki, case: str) -> None:
    overrides, message = BAD_PAYLOADS[case]
    with pytest.raises(MalformedAttestation, match=message):
        parse_document(with_payload(pki, make_payload(pki, **overrides)))


@pytest.mark.parametrize("field", ["module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle"])
def test_missing_required_field(pki: TestPki, field: str) -> None:
    payload = make_payload(pki)
    del payload[field]
    with pytest.raises(MalformedAttestation, match=f"missing fields {field}"):
        parse_document(with_payload(pki, payload))


def cose(*members: object, tag: int | None = None) -> bytes:
    item: object = list(members)
    return cbor2.dumps(cbor2.CBORTag(tag, item) if tag is not None else item)


P = cbor2.dumps({1: -35})
BAD_ENVELOPES = {
    "empty": (b"", "empty input"),
    "not cbor": (b"\xff\xff", "not valid CBOR"),
    "truncated": (None, "not valid CBOR"),
    "trailing bytes": (None, "1 trailing bytes"),
    "map, not array": (cbor2.dumps({1: 2}), "array of 4"),
    "3 members": (cose(P, {}, b"x"), "array of 4"),
    "other tag": (cose(P, {}, b"x", b"s", tag=98), "CBOR tag 98"),
    "protected text": (cose("a", {}, b"x", b"s"), "protected header is not a byte string"),
    "unprotected list": (cose(P, [], b"x", b"s"), "unprotected header is not a map"),
    "unprotected non-empty": (cose(P, {4: b"kid"}, b"x", b"s"), "unprotected header is not empty"),
    "detached payload": (cose(P, {}, None, b"s"), "payload is not a byte string"),
    "signature text": (cose(P, {}, b"x", "s"), "signature is not a byte string"),
    "protected not a map": (cose(cbor2.dumps([1]), {}, b"x", b"s"), r"\(protected header\): expected a map"),
    "alg text": (cose(cbor2.dumps({1: "ES384"}), {}, b"x", b"s"), "alg is 'ES384'"),
    "payload not cbor": (cose(P, {}, b"\xff", b"s"), r"\(payload\): not valid CBOR"),
    "payload array": (cose(P, {}, cbor2.dumps([1]), b"s"), r"\(payload\): expected a map"),
    "too large": (b"\x84" + bytes(70000), "more than the 65536-byte limit"),
}


@pytest.mark.parametrize("case", sorted(BAD_ENVELOPES), ids=str)
def test_bad_envelope(pki: TestPki, case: str) -> None:
    data, message = BAD_ENVELOPES[case]
    good = make_document(pki)
    if case == "truncated":
        data = good[:-10]
    elif case == "trailing bytes":
        data = good + b"\x00"
    assert data is not None
    with pytest.raises(MalformedAttestation, match=message) as info:
        parse_document(data)
    assert isinstance(info.value, MalformedInput) and info.value.exit_code == 2


def test_text_input_forms(pki: TestPki) -> None:
    raw = make_document(pki)
    assert decode_document_text(raw) == raw
    assert decode_document_text(base64.b64encode(raw) + b"\n") == raw
    assert decode_document_text(base64.urlsafe_b64encode(raw).rstrip(b"=")) == raw
    wrapped = b"\n".join(base64.b64encode(raw)[i : i + 76] for i in range(0, 8000, 76))
    assert decode_document_text(wrapped) == raw
    with pytest.raises(MalformedAttestation, match="neither raw CBOR nor base64"):
        decode_document_text(b"not base64 !!")

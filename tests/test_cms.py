"""Opening KMS's CiphertextForRecipient (CMS EnvelopedData) with the enclave's ephemeral RSA key."""

from __future__ import annotations

import json

import pytest
from asn1crypto import cms
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from hypothesis import given, settings
from hypothesis import strategies as st
from kms_support import build_enveloped_data

from enclave._cms import CmsError, open_enveloped_data, parse_enveloped_data

SECRET = bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def spki(key: rsa.RSAPrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.parametrize(
    ("style", "chunk"),
    [("ber", 16), ("ber", 64), ("ber", 1000), ("der", 0)],
    ids=["ber_chunks_16", "ber_chunks_64", "ber_one_chunk", "der"],
)
def test_envelope_opens(key: rsa.RSAPrivateKey, style: str, chunk: int) -> None:
    data = build_enveloped_data(SECRET, spki(key), style=style, chunk=chunk or 64)
    if style == "ber":
        assert data[:2] == b"\x30\x80"  # indefinite length, as KMS sends it
    out = open_enveloped_data(data, key)
    assert isinstance(out, bytearray) and bytes(out) == SECRET


def test_plaintext_of_any_length(key: rsa.RSAPrivateKey) -> None:
    for n in (1, 15, 16, 17, 100):
        assert open_enveloped_data(build_enveloped_data(b"x" * n, spki(key)), key) == b"x" * n


def test_other_recipient_key_does_not_open(key: rsa.RSAPrivateKey) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(CmsError, match="no recipient's encrypted key opens"):
        open_enveloped_data(build_enveloped_data(SECRET, spki(other)), key)


def test_oaep_with_sha1_is_refused(key: rsa.RSAPrivateKey) -> None:
    data = build_enveloped_data(SECRET, spki(key), oaep_hash="sha1")
    with pytest.raises(CmsError, match="sha1/MGF1-sha1, expected sha256/sha256"):
        open_enveloped_data(data, key)


def test_aes128_content_is_refused(key: rsa.RSAPrivateKey) -> None:
    data = build_enveloped_data(SECRET, spki(key), content_algorithm="aes128_cbc")
    with pytest.raises(CmsError, match="aes128_cbc, expected aes256_cbc"):
        open_enveloped_data(data, key)


def test_bad_padding_is_refused(key: rsa.RSAPrivateKey) -> None:
    data = build_enveloped_data(b"\x00" * 32, spki(key), pad=False)
    with pytest.raises(CmsError, match="bad padding"):
        open_enveloped_data(data, key)


def test_not_enveloped_data_is_refused(key: rsa.RSAPrivateKey) -> None:
    data = cms.ContentInfo({"content_type": "data", "content": b"hello"}).dump()
    with pytest.raises(CmsError, match="content type is data, expected enveloped_data"):
        open_enveloped_data(data, key)


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"", "empty"), (b"\x30\x03\x02\x01", "not a well-formed"), (b"\x00" * 70000, "larger than")],
    ids=["empty", "truncated", "huge"],
)
def test_malformed_input_is_refused(key: rsa.RSAPrivateKey, data: bytes, message: str) -> None:
    with pytest.raises(CmsError, match=message):
        open_enveloped_data(data, key)


def test_truncated_envelope_is_refused(key: rsa.RSAPrivateKey) -> None:
    data = build_enveloped_data(SECRET, spki(key))
    for cut in (10, len(data) // 2, len(data) - 3):
        with pytest.raises(CmsError):
            open_enveloped_data(data[:cut], key)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_random_corruption_never_crashes(key: rsa.RSAPrivateKey, data: st.DataObject) -> None:
    envelope = bytearray(build_enveloped_data(SECRET, spki(key)))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(envelope) - 1))
        envelope[i] = data.draw(st.integers(0, 255))
    try:
        out = open_enveloped_data(bytes(envelope), key)
    except CmsError as e:
        assert SECRET.hex() not in str(e)
    else:
        assert isinstance(out, bytearray)


# --- AWS's published KMS response (tests/assets/kms/README.md) ---------------------------------


def test_real_kms_envelope_parses_to_the_published_parts(asset) -> None:
    data = asset("kms/ciphertext_for_recipient.ber").read_bytes()
    parts = json.loads(asset("kms/ciphertext_for_recipient.parts.json").read_text())
    envelope = parse_enveloped_data(data)
    assert envelope.encrypted_keys == (bytes.fromhex(parts["encrypted_key"]),)
    assert envelope.iv == bytes.fromhex(parts["iv"])
    assert envelope.ciphertext == bytes.fromhex(parts["ciphertext"])


def test_real_kms_envelope_with_our_key_is_refused_cleanly(asset, key: rsa.RSAPrivateKey) -> None:
    data = asset("kms/ciphertext_for_recipient.ber").read_bytes()
    with pytest.raises(CmsError, match="no recipient's encrypted key opens"):
        open_enveloped_data(data, key)


def test_test_server_envelopes_have_kms_layout(asset, key: rsa.RSAPrivateKey) -> None:
    """The test KMS's envelopes equal AWS's byte for byte outside the random fields."""
    real = asset("kms/ciphertext_for_recipient.ber").read_bytes()
    parts = json.loads(asset("kms/ciphertext_for_recipient.parts.json").read_text())
    ours = build_enveloped_data(SECRET, spki(key))  # 32-byte secret -> 48-byte content, as AWS's
    assert len(ours) == len(real)
    mine = parse_enveloped_data(ours)
    masked_real, masked_ours = bytearray(real), bytearray(ours)
    ski_at = real.index(bytes.fromhex("80 20".replace(" ", ""))) + 2
    for buf, values in (
        (masked_real, [bytes.fromhex(parts[k]) for k in ("encrypted_key", "iv", "ciphertext")]),
        (masked_ours, [mine.encrypted_keys[0], mine.iv, mine.ciphertext]),
    ):
        buf[ski_at : ski_at + 32] = bytes(32)
        for value in values:
            at = bytes(buf).index(value)
            buf[at : at + len(value)] = bytes(len(value))
    assert masked_ours == masked_real

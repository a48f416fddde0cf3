"""EIF signature section bytes, built by hand from the CBOR rules serde_cbor follows."""

from __future__ import annotations

import pytest

from verify._cose import CoseSign1
from verify.eif_sign import (
    LocalEifSigner,
    PcrSignature,
    decode_signature_entries,
    encode_pcr_info,
    encode_signature_entries,
    sign_pcr,
)


def cbor_uint(n: int) -> bytes:
    assert 0 <= n <= 0xFFFF
    if n < 24:
        return bytes([n])
    return bytes([0x18, n]) if n < 256 else bytes([0x19]) + n.to_bytes(2, "big")


def cbor_text(s: str) -> bytes:
    assert len(s) < 24
    return bytes([0x60 + len(s)]) + s.encode()


def cbor_byte_vector(data: bytes) -> bytes:
    """serde's Vec<u8>: an array (major type 4) of unsigned ints, not a byte string."""
    n = len(data)
    head = (
        bytes([0x80 + n])
        if n < 24
        else bytes([0x98, n])
        if n < 256
        else b"\x99" + n.to_bytes(2, "big")
    )
    return head + b"".join(cbor_uint(b) for b in data)


def test_pcr_info_payload_bytes() -> None:
    value = bytes(range(48))
    want = (
        b"\xa2"
        + cbor_text("register_index")
        + b"\x00"
        + cbor_text("register_value")
        + cbor_byte_vector(value)
    )
    assert encode_pcr_info(0, value) == want
    assert want[:4].hex() == "a26e7265" and want.endswith(b"\x18\x2f")


def test_signature_entries_bytes_and_round_trip() -> None:
    cert = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    cose = bytes.fromhex("d28444a1013822a04040")
    want = (
        b"\x81\xa2"
        + cbor_text("signing_certificate")
        + cbor_byte_vector(cert)
        + cbor_text("signature")
        + cbor_byte_vector(cose)
    )
    entry = PcrSignature(cert, cose)
    assert encode_signature_entries([entry]) == want
    assert decode_signature_entries(want) == (entry,)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (encode_signature_entries([PcrSignature(b"c", b"s")]) + b"\x00", "1 trailing byte"),
        (b"\xa0", "non-empty CBOR array"),
        (b"\x81\x01", "entry 0 is not a map"),
        (b"", "not valid CBOR"),
    ],
    ids=["trailing", "map", "int-entry", "empty"],
)
def test_decode_rejects(data: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decode_signature_entries(data)


def test_byte_strings_are_read_too() -> None:
    # Tolerated on input (a CBOR encoder using serde_bytes would write these), never written.
    data = (
        b"\x81\xa2"
        + cbor_text("signing_certificate")
        + b"\x41c"
        + cbor_text("signature")
        + b"\x41s"
    )
    assert decode_signature_entries(data) == (PcrSignature(b"c", b"s"),)


def test_cose_sign1_verifies_and_is_deterministic() -> None:
    signer = LocalEifSigner.generate()
    first = sign_pcr(signer, 0, b"\x42" * 48)
    assert first == sign_pcr(signer, 0, b"\x42" * 48)  # RFC 6979
    cose = CoseSign1.from_bytes(first)
    assert first[:7] == bytes.fromhex("8444a1013822a0")  # [bstr{1:-35}, {}, ...] untagged
    cose.verify(signer._key.public_key())
    tagged = b"\xd2" + first  # tag 18 is accepted on input
    assert CoseSign1.from_bytes(tagged) == cose


def test_local_signer_rejects_mismatched_or_wrong_curve_keys() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    a, b = LocalEifSigner.generate(), LocalEifSigner.generate()
    with pytest.raises(ValueError, match="does not match"):
        LocalEifSigner(a._key, b.certificate_pem)
    with pytest.raises(ValueError, match="P-384"):
        LocalEifSigner(ec.generate_private_key(ec.SECP256R1()), a.certificate_pem)


def test_local_signer_from_files(tmp_path) -> None:  # type: ignore[no-untyped-def]
    signer = LocalEifSigner.generate()
    (tmp_path / "key.pem").write_bytes(signer.private_key_pem())
    (tmp_path / "cert.pem").write_bytes(signer.certificate_pem)
    loaded = LocalEifSigner.from_files(tmp_path / "key.pem", tmp_path / "cert.pem")
    assert loaded.sign(b"m") == signer.sign(b"m")


def test_sign_eif_equals_signing_at_write_time(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from verify.eif import sign_eif, write_eif
    from verify.pcr import measure_eif

    signer, other = LocalEifSigner.generate(), LocalEifSigner.generate()
    common = {"kernel": b"k" * 5000, "cmdline": b"c", "ramdisks": [b"boot" * 100, b"app" * 100]}
    write_eif(tmp_path / "unsigned.eif", **common)
    write_eif(tmp_path / "direct.eif", **common, signer=signer)
    sign_eif(tmp_path / "unsigned.eif", tmp_path / "later.eif", signer)
    assert (tmp_path / "later.eif").read_bytes() == (tmp_path / "direct.eif").read_bytes()
    # re-signing in place with another key replaces the signature section
    sign_eif(tmp_path / "later.eif", tmp_path / "later.eif", other)
    m = measure_eif(tmp_path / "later.eif")
    m.check_sound()
    assert m.signature is not None and len(m.image.of_type(m.image.signature.type)) == 1
    assert m.signature.first.certificate_pem == other.certificate_pem
    assert m.pcrs[0] == measure_eif(tmp_path / "unsigned.eif").pcrs[0]


def test_sign_eif_refuses_corrupt_and_old_images(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from eif_support import build_raw

    from verify.eif import sign_eif
    from verify.errors import MalformedEif

    signer = LocalEifSigner.generate()
    raw = bytearray(build_raw([(1, b"k"), (2, b"c"), (3, b"r")]))
    raw[-1] ^= 1
    (tmp_path / "bad.eif").write_bytes(raw)
    with pytest.raises(MalformedEif, match="CRC32 mismatch"):
        sign_eif(tmp_path / "bad.eif", tmp_path / "out.eif", signer)
    (tmp_path / "v2.eif").write_bytes(build_raw([(1, b"k"), (2, b"c"), (3, b"r")], version=2))
    with pytest.raises(ValueError, match="needs EIF version 3"):
        sign_eif(tmp_path / "v2.eif", tmp_path / "out.eif", signer)
    assert not (tmp_path / "out.eif").exists()

"""PCRs, CRC and signatures against an independent computation (hashlib, zlib, cbor2 directly)."""

from __future__ import annotations

import hashlib
import struct
import tracemalloc
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from eif_support import build_raw, crc_of, expected_pcrs, fix_crc, pem_to_der, tpm_extend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from verify.eif import LocalEifSigner, write_eif
from verify.eif_sign import build_signature_section, encode_pcr_info
from verify.errors import MalformedEif, MalformedInput, SignatureInvalid
from verify.pcr import measure_eif

KERNEL = b"\x7fELF-ish kernel " * 700
CMDLINE = b"console=ttyS0 reboot=k"
SIGNER = LocalEifSigner.generate()


def _write(tmp_path: Path, ramdisks: list[bytes], **kw: object) -> Path:
    dest = tmp_path / "image.eif"
    write_eif(
        dest,
        kernel=kw.pop("kernel", KERNEL),
        cmdline=kw.pop("cmdline", CMDLINE),  # type: ignore[arg-type]
        ramdisks=ramdisks,
        **kw,
    )  # type: ignore[arg-type]
    return dest


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
@pytest.mark.parametrize("n_ramdisks", [1, 2, 3])
def test_pcrs_match_hashlib(tmp_path: Path, n_ramdisks: int, signed: bool) -> None:
    ramdisks = [bytes([65 + i]) * (5000 * (i + 1)) for i in range(n_ramdisks)]
    path = _write(tmp_path, ramdisks, signer=SIGNER if signed else None)
    m = measure_eif(path)
    want = expected_pcrs(KERNEL, CMDLINE, ramdisks, SIGNER.certificate_pem if signed else None)
    assert m.pcrs == want
    assert m.crc_ok is True
    assert m.is_signed is signed
    assert m.signature_ok is (True if signed else None)
    assert m.version == 4 and m.metadata is not None and m.metadata["ImageName"] == "sentinel"
    m.check_sound()


def test_single_ramdisk_pcr2_is_extend_of_empty_hash(tmp_path: Path) -> None:
    m = measure_eif(_write(tmp_path, [b"only"]))
    assert m.pcrs[2] == hashlib.sha384(bytes(48) + hashlib.sha384(b"").digest()).digest()


def test_empty_cmdline(tmp_path: Path) -> None:
    m = measure_eif(_write(tmp_path, [b"r0", b"r1"], cmdline=b""))
    assert m.pcrs == expected_pcrs(KERNEL, b"", [b"r0", b"r1"])
    assert m.cmdline == b""


def test_version3_without_metadata(tmp_path: Path) -> None:
    raw = build_raw([(1, KERNEL), (2, CMDLINE), (3, b"boot"), (3, b"app")], version=3)
    path = tmp_path / "v3.eif"
    path.write_bytes(raw)
    m = measure_eif(path)
    assert m.version == 3 and m.metadata is None
    assert m.pcrs == expected_pcrs(KERNEL, CMDLINE, [b"boot", b"app"])
    assert m.crc_ok is True
    assert "Metadata" not in m.describe()


def test_version1_has_no_crc_to_check(tmp_path: Path) -> None:
    raw = bytearray(build_raw([(1, b"k"), (2, b"c"), (3, b"r")], version=1))
    raw[544:548] = b"\0\0\0\0"
    path = tmp_path / "v1.eif"
    path.write_bytes(raw)
    m = measure_eif(path)
    assert m.crc_ok is None
    m.check_sound()


def test_pcrs_follow_file_order_not_writer(tmp_path: Path) -> None:
    # Hand-assembled (not our writer) with metadata between ramdisks: metadata is never measured.
    raw = build_raw([(1, b"K"), (2, b"C"), (3, b"R0"), (5, b"{}"), (3, b"R1")])
    path = tmp_path / "x.eif"
    path.write_bytes(raw)
    assert measure_eif(path).pcrs == expected_pcrs(b"K", b"C", [b"R0", b"R1"])


def test_unusual_order_kernel_after_second_ramdisk(tmp_path: Path) -> None:
    # nitro-cli's reader feeds kernel/cmdline to PCR0 and PCR1 wherever they sit in the file.
    raw = build_raw([(3, b"R0"), (1, b"K"), (3, b"R1"), (2, b"C"), (3, b"R2")])
    path = tmp_path / "odd.eif"
    path.write_bytes(raw)
    assert measure_eif(path, chunk_size=1).pcrs == {
        0: tpm_extend(b"R0" + b"K" + b"R1" + b"C" + b"R2"),
        1: tpm_extend(b"R0" + b"K" + b"C"),
        2: tpm_extend(b"R1" + b"R2"),
    }


def test_crc_mismatch_is_reported_and_raised(tmp_path: Path) -> None:
    path = _write(tmp_path, [b"r" * 100])
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(data)
    m = measure_eif(path)
    assert m.crc_ok is False and m.crc_computed == crc_of(bytes(data))
    with pytest.raises(MalformedEif, match=r"byte offset 544.*CRC32 mismatch"):
        m.check_sound()


def test_signature_section_encoding_is_nitro_cli_s(tmp_path: Path) -> None:
    path = _write(tmp_path, [b"ramdisk"], signer=SIGNER)
    m = measure_eif(path)
    section = m.image.signature
    assert section is not None
    body = path.read_bytes()[section.body_offset : section.end]
    # serde_cbor: array(1) of map(2) with text keys in struct order; Vec<u8> as arrays of ints.
    assert body.startswith(b"\x81\xa2\x73signing_certificate\x99")
    entries = cbor2.loads(body)
    assert list(entries[0]) == ["signing_certificate", "signature"]
    assert bytes(entries[0]["signing_certificate"]) == SIGNER.certificate_pem
    protected, unprotected, payload, signature = cbor2.loads(bytes(entries[0]["signature"]))
    assert protected == bytes.fromhex("a1013822")  # {1: -35}: ES384
    assert unprotected == {}
    assert cbor2.loads(payload) == {"register_index": 0, "register_value": list(m.pcrs[0])}
    assert len(signature) == 96
    to_sign = cbor2.dumps(["Signature1", protected, b"", payload])
    der = encode_dss_signature(
        int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big")
    )
    SIGNER._key.public_key().verify(der, to_sign, ec.ECDSA(hashes.SHA384()))
    assert m.pcrs[8] == tpm_extend(pem_to_der(SIGNER.certificate_pem))


def _replace_signature(path: Path, new_body: bytes) -> None:
    """Swap the signature section body, fixing its size fields and the CRC (a re-signed image)."""
    image = measure_eif(path).image
    sig = image.signature
    assert sig is not None
    data = bytearray(path.read_bytes()[: sig.offset])
    data += struct.pack(">HHQ", 4, 0, len(new_body)) + new_body
    struct.pack_into(">Q", data, 28 + 256 + 8 * sig.index, len(new_body))
    path.write_bytes(fix_crc(data))


def test_signature_over_another_pcr0_does_not_verify(tmp_path: Path) -> None:
    path = _write(tmp_path, [b"ramdisk"], signer=SIGNER)
    _replace_signature(path, build_signature_section(SIGNER, b"\x11" * 48))
    m = measure_eif(path)
    assert m.crc_ok is True and m.signature_ok is False
    assert "different PCR0" in (m.signature_error or "")
    with pytest.raises(SignatureInvalid, match="does not verify"):
        m.check_sound()


def test_signature_by_another_key_does_not_verify(tmp_path: Path) -> None:
    path = _write(tmp_path, [b"ramdisk"], signer=SIGNER)
    m0 = measure_eif(path)
    other = LocalEifSigner.generate()
    body = cbor2.loads(build_signature_section(other, m0.pcrs[0]))
    body[0]["signing_certificate"] = list(SIGNER.certificate_pem)  # claims SIGNER's certificate
    _replace_signature(path, cbor2.dumps(body))
    m = measure_eif(path)
    assert m.signature_ok is False and "does not verify" in (m.signature_error or "")


@pytest.mark.parametrize(
    ("body", "match"),
    [
        (b"\xff\x00garbage", "not valid CBOR"),
        (cbor2.dumps([]), "non-empty CBOR array"),
        (cbor2.dumps([{"signature": [1]}]), "lacks 'signing_certificate'"),
        (cbor2.dumps([{"signing_certificate": list(b"not a pem"), "signature": [1]}]), "not a PEM"),
        (cbor2.dumps([{"signing_certificate": [300], "signature": [1]}]), "not a byte vector"),
    ],
    ids=["garbage", "empty-list", "no-cert", "bad-pem", "bad-vector"],
)
def test_unparseable_signature_section_is_malformed(
    tmp_path: Path, body: bytes, match: str
) -> None:
    path = _write(tmp_path, [b"ramdisk"], signer=SIGNER)
    _replace_signature(path, body)
    with pytest.raises(MalformedEif, match=match) as info:
        measure_eif(path)
    assert "section 4 (signature)" in str(info.value) and "byte offset" in str(info.value)


def test_signer_never_shows_its_key() -> None:
    pem = SIGNER.private_key_pem()
    secret = pem.decode().splitlines()[1]
    assert secret not in repr(SIGNER) and "hidden" in repr(SIGNER)
    assert encode_pcr_info(0, b"\0" * 48).startswith(b"\xa2\x6eregister_index\x00")


def test_missing_file_is_malformed_input(tmp_path: Path) -> None:
    with pytest.raises(MalformedInput, match="no such EIF file"):
        measure_eif(tmp_path / "absent.eif")


def test_memory_does_not_grow_with_file_size(tmp_path: Path) -> None:
    peaks = []
    for mib in (8, 96):
        ramdisk = tmp_path / f"r{mib}"
        with open(ramdisk, "wb") as f:
            f.truncate(mib << 20)  # sparse: cheap to make, still read and hashed in full
        path = tmp_path / f"i{mib}.eif"
        write_eif(path, kernel=b"k", cmdline=b"", ramdisks=[ramdisk])
        ramdisk.unlink()
        tracemalloc.start()
        measure_eif(path)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
        path.unlink()
    assert peaks[1] < 16 << 20  # the buffer pool (8 x 1 MiB) and change
    assert peaks[1] < peaks[0] + (1 << 20)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_flipped_byte_is_caught(tmp_path: Path, data: st.DataObject) -> None:
    path = tmp_path / "f.eif"
    if not path.exists():
        write_eif(
            path,
            kernel=b"kernel" * 50,
            cmdline=b"c=1",
            ramdisks=[b"boot" * 40, b"app" * 30],
            signer=SIGNER,
        )
    good = path.read_bytes()
    clean = measure_eif(path).pcrs
    pos = data.draw(st.integers(0, len(good) - 1), label="pos")
    xor = data.draw(st.integers(1, 255), label="xor")
    bad = bytearray(good)
    bad[pos] ^= xor
    flipped = tmp_path / "flipped.eif"
    flipped.write_bytes(bad)
    try:
        m = measure_eif(flipped)
        m.check_sound()
    except (MalformedInput, SignatureInvalid):
        return  # caught: structure, CRC or signature
    pytest.fail(f"flip at {pos} went unnoticed (pcrs changed: {m.pcrs != clean})")


def test_version_downgrade_to_skip_the_crc_is_refused(tmp_path: Path) -> None:
    # Found by hypothesis: 4 ^ 5 == 1 turns a CRC-protected image into one "without a CRC".
    path = tmp_path / "v4.eif"
    write_eif(path, kernel=b"k" * 64, cmdline=b"c", ramdisks=[b"r" * 64], signer=SIGNER)
    raw = bytearray(path.read_bytes())
    raw[4:6] = (1).to_bytes(2, "big")
    downgraded = tmp_path / "v1.eif"
    downgraded.write_bytes(raw)
    m = measure_eif(downgraded)
    assert m.crc_ok is False
    with pytest.raises(MalformedEif, match="version field was altered"):
        m.check_sound()

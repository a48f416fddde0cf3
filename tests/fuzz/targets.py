"""The fuzz targets: each hostile-input parser, its property, and the inputs it starts from.

The property of every target: any byte string either parses or raises the module's own documented
error type. Anything else (another exception, a hang, runaway memory) is a finding. The same
`Target.run` is what hypothesis calls in `nox -s tests` (tests/fuzz/test_fuzz.py), what atheris calls
in `nox -s fuzz` (tests/fuzz/atheris_main.py), and what replays the committed corpus
(tests/assets/fuzz/<target>/).

Seeds (valid inputs the mutators start from) are built here from the real parts: the checked-in
AWS attestation documents and KMS envelope, the image's policies, frames from enclave.wire's own
encoders, EIFs written by tests/eif_support.py (an independent writer).
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ASSETS = ROOT / "tests" / "assets"
CORPUS = ASSETS / "fuzz"


@dataclass(frozen=True)
class Target:
    """One parser under fuzzing."""

    name: str
    #: Parse one input; returns normally or raises one of `allowed`.
    parse: Callable[[bytes], None]
    #: The documented error types (a subclass is fine).
    allowed: Callable[[], tuple[type[BaseException], ...]]
    #: Valid (or nearly valid) inputs the mutators start from.
    seeds: Callable[[], list[bytes]]
    #: Fragments worth splicing in (a libFuzzer-style dictionary).
    tokens: tuple[bytes, ...]
    #: Modules atheris instruments for coverage.
    modules: tuple[str, ...]
    #: Longest input generated.
    max_len: int = 4096
    #: Peak Python allocation allowed for one input during replay, in MiB.
    peak_mib: int = 64

    def run(self, data: bytes) -> None:
        """Apply the property to `data`: anything but the allowed errors propagates."""
        try:
            self.parse(data)
        except self.allowed():
            pass


# --- wire: the signer's frame decoder --------------------------------------------------------------


def _wire_parse(data: bytes) -> None:
    from enclave import wire

    if len(data) >= wire.HEADER_SIZE:
        magic, version, _op, _rid, length = wire.HEADER.unpack_from(data, 0)
        try:
            wire.check_header(magic, version, length)
        except _wire_error():
            pass  # the server answers with an error frame and reads on
    # The first byte picks the decoder, the rest is the payload (as the server slices it).
    which = data[0] % 6 if data else 0
    payload = memoryview(data)[1:]
    if which == 0:
        wire.decode_sign_tx(payload)
    elif which == 1:
        for item in wire.decode_sign_tx_batch(payload):
            try:
                wire.decode_sign_tx(item)
            except _wire_error():
                pass  # one bad item refuses only itself
    elif which == 2:
        wire.decode_sign_tx_batch_answer(payload, data[1] if len(data) > 1 else 1)
    elif which == 3:
        wire.decode_attest(payload)
    elif which == 4:
        wire.decode_error(payload)
    else:
        wire.Stats.decode(payload)


def _wire_error() -> tuple[type[BaseException], ...]:
    from enclave.errors import ProtocolError

    return (ProtocolError,)


def _wire_seeds() -> list[bytes]:
    from enclave import wire
    from enclave.tx import UnsignedTx

    tx = UnsignedTx(2, 1, 7, 21000, b"\x11" * 20, 10**18, b"\xa9\x05\x9c\xbb" + bytes(64), 10**9, 1)
    legacy = UnsignedTx(0, 31337, 0, 21000, None, 0, b"\x60\x00", 10**9, 0)
    one = wire.encode_sign_tx(tx)
    batch = wire.encode_sign_tx_batch([tx, legacy])
    answer = (
        wire.BATCH_COUNT.pack(2, 0)
        + wire.encode_batch_signed(bytes(32), b"\x02" + bytes(120))
        + wire.encode_batch_error(5, "denied")
    )
    stats = wire.STATS_STRUCT.pack(*range(wire.STATS_STRUCT.size // 8))
    return [
        b"\x00" + one,
        b"\x00" + wire.encode_sign_tx(legacy),
        b"\x01" + batch,
        b"\x02\x02" + answer[1:],  # byte 1 doubles as the expected count (2)
        b"\x03" + wire.encode_attest(nonce=b"n" * 32, user_data=b"u", public_key=b"k" * 65),
        b"\x04" + wire.encode_error(1, 5, "policy denied")[wire.HEADER_SIZE :],
        b"\x05" + stats,
        wire.pack_frame(wire.Op.SIGN_TX, 7, one),
    ]


WIRE = Target(
    name="wire",
    parse=_wire_parse,
    allowed=_wire_error,
    seeds=_wire_seeds,
    tokens=(b"SN\x01", b"\xff\xff\xff\xff", b"\x00\x01", b"\x01\x00", b"\x00" * 20, b"\xff" * 32),
    modules=("enclave.wire", "enclave.tx"),
    max_len=2048,
)

# --- attestation: COSE_Sign1 + the NSM document (the customers' verifier) ---------------------------


def _attestation_parse(data: bytes) -> None:
    from verify.attestation.document import decode_document_text, parse_document

    parse_document(decode_document_text(data))


def _attestation_error() -> tuple[type[BaseException], ...]:
    from verify.attestation.errors import MalformedAttestation

    return (MalformedAttestation,)


def _attestation_seeds() -> list[bytes]:
    import base64

    real = sorted((ASSETS / "attestation").glob("*.bin"))
    docs = [p.read_bytes() for p in real]
    return [*docs, base64.b64encode(docs[0]), base64.urlsafe_b64encode(docs[-1]).rstrip(b"=")]


_CBOR_TOKENS = (
    b"\xd2",  # tag 18
    b"\x84",  # array(4)
    b"\x9f",  # indefinite array
    b"\xbf",  # indefinite map
    b"\xff",  # break
    b"\x5f\x41\x00\xff",  # chunked byte string
    b"\xc2\x59\x10\x00",  # bignum, 4096-byte head
    b"\x1b\xff\xff\xff\xff\xff\xff\xff\xff",  # uint64 max
    b"\xa1\x01\x38\x22",  # {1: -35}
    b"\x69module_id",
    b"\x66digest",
    b"\x69timestamp",
    b"\x64pcrs",
    b"\x6bcertificate",
    b"\x68cabundle",
    b"\x65nonce",
    b"\xf6",  # null
    b"\xd9\xd9\xf7",  # self-describe tag
)

ATTESTATION = Target(
    name="attestation",
    parse=_attestation_parse,
    allowed=_attestation_error,
    seeds=_attestation_seeds,
    tokens=_CBOR_TOKENS,
    modules=("verify.attestation.document",),
    max_len=16384,
)

# --- cose: verify/_cose.py (EIF signatures' COSE_Sign1) ---------------------------------------------


def _cose_parse(data: bytes) -> None:
    from verify._cose import CoseSign1

    cose = CoseSign1.from_bytes(data)
    cose.protected_header()
    cose.verify(_p384_public())


@functools.cache
def _p384_public() -> object:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.derive_private_key(7, ec.SECP384R1()).public_key()


def _cose_error() -> tuple[type[BaseException], ...]:
    from cryptography.exceptions import InvalidSignature

    return (ValueError, InvalidSignature)


def _cose_seeds() -> list[bytes]:
    from verify._cose import ALG_ES384, CoseSign1, protected_for

    sig = bytes(range(96))
    return [
        CoseSign1(protected_for(ALG_ES384), {}, b"payload", sig).to_bytes(),
        b"\xd2" + CoseSign1(protected_for(-7), {}, b"", sig[:64]).to_bytes(),
        CoseSign1(b"", {}, b"x" * 48, sig).to_bytes(),
    ]


COSE = Target(
    name="cose",
    parse=_cose_parse,
    allowed=_cose_error,
    seeds=_cose_seeds,
    tokens=_CBOR_TOKENS,
    modules=("verify._cose",),
    max_len=4096,
)

# --- eif: the EIF reader, metadata and signature sections, the PCR pass ------------------------------


def _eif_parse(data: bytes) -> None:
    from verify.pcr import measure_eif

    fd, name = tempfile.mkstemp(prefix="sentinel-fuzz-", suffix=".eif")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        measure_eif(name, chunk_size=4096)
    finally:
        os.unlink(name)


def _eif_error() -> tuple[type[BaseException], ...]:
    from verify.errors import MalformedInput

    return (MalformedInput,)  # MalformedEif is one


def _eif_seeds() -> list[bytes]:
    import json
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from eif_support import build_raw

    from verify.eif_sign import LocalEifSigner, build_signature_section

    kernel, cmdline, ram = b"K" * 64, b"console=ttyS0\0", [b"R1" * 20, b"R2" * 9]
    meta = json.dumps({"ImageName": "sentinel", "ImageVersion": "0.2.0", "BuildMetadata": {}})
    signature = build_signature_section(LocalEifSigner.generate(), bytes(48))
    base = [(1, kernel), (2, cmdline), (3, ram[0]), (3, ram[1])]
    return [
        build_raw(base),
        build_raw([*base, (5, meta.encode())]),
        build_raw([*base, (4, signature), (5, meta.encode())]),
        build_raw(base[:3], version=1),
    ]


EIF = Target(
    name="eif",
    parse=_eif_parse,
    allowed=_eif_error,
    seeds=_eif_seeds,
    tokens=(b".eif", b"\x00\x04", b"\x00\x05", b"\x00\x03", b"\xff" * 8, b"{}", b"-----BEGIN"),
    modules=("verify.eif._reader", "verify.eif._format", "verify.eif._metadata", "verify.pcr",
             "verify.eif_sign", "verify._cose"),  # fmt: skip
    max_len=8192,
)

# --- policy: the enclave's TOML policy --------------------------------------------------------------


def _policy_parse(data: bytes) -> None:
    from enclave.policy import Policy

    Policy.from_toml(data, source="fuzz")


def _policy_error() -> tuple[type[BaseException], ...]:
    from enclave.errors import PolicyFileError

    return (PolicyFileError,)


def _policy_seeds() -> list[bytes]:
    return [
        (ROOT / "enclave" / "policy.toml").read_bytes(),
        (ROOT / "enclave" / "policy.dev.toml").read_bytes(),
    ]


POLICY = Target(
    name="policy",
    parse=_policy_parse,
    allowed=_policy_error,
    seeds=_policy_seeds,
    tokens=(
        b"nan", b"inf", b"-inf", b"1e999", b"0x", b"0o7", b"1_000", b'"', b"'''", b"[[destinations]]",
        b'address = "0x' + b"11" * 20 + b'"', b'selectors = ["0x"]', b"9" * 40, b"true", b"[]", b"{}",
        b"\n", b" = ", b"mode", b"production", b"sign_digest = true", b"presign_pool = ",
    ),  # fmt: skip
    modules=("enclave.policy", "tomllib"),
    max_len=8192,
)

# --- cms: KMS's CiphertextForRecipient (BER EnvelopedData) ------------------------------------------


def _cms_parse(data: bytes) -> None:
    from enclave._cms import open_enveloped_data

    open_enveloped_data(data, _rsa_key())


@functools.cache
def _rsa_key() -> object:
    from cryptography.hazmat.primitives.asymmetric import rsa

    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _cms_error() -> tuple[type[BaseException], ...]:
    from enclave._cms import CmsError

    return (CmsError,)


def _cms_seeds() -> list[bytes]:
    import sys

    sys.path.insert(0, str(ROOT / "tests"))
    from cryptography.hazmat.primitives import serialization
    from kms_support import build_enveloped_data

    spki = _rsa_key().public_key().public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return [
        (ASSETS / "kms" / "ciphertext_for_recipient.ber").read_bytes(),
        build_enveloped_data(b"\x42" * 32, spki, style="ber", chunk=16),
        build_enveloped_data(b"\x42" * 32, spki, style="der"),
    ]


CMS = Target(
    name="cms",
    parse=_cms_parse,
    allowed=_cms_error,
    seeds=_cms_seeds,
    tokens=(b"\x30\x80", b"\x00\x00", b"\x24\x80", b"\x04\x10", b"\x06\x09\x2a\x86\x48\x86\xf7\x0d",
            b"\x02\x01\x00", b"\x84\xff\xff\xff\xff", b"\xa0\x80", b"\x05\x00"),  # fmt: skip
    modules=("enclave._cms", "asn1crypto.core", "asn1crypto.cms", "asn1crypto.parser"),
    max_len=8192,
)

TARGETS: dict[str, Target] = {t.name: t for t in (WIRE, ATTESTATION, COSE, EIF, POLICY, CMS)}


def corpus_files(name: str) -> list[Path]:
    """The committed regression inputs of a target (tests/assets/fuzz/<name>/)."""
    d = CORPUS / name
    return sorted(p for p in d.iterdir() if p.is_file()) if d.is_dir() else []

"""A test PKI shaped like AWS Nitro's, and attestation documents signed with it.

Hardcoded keys and dates (tuf's generate_md.py rule) make every fixture byte-identical between runs:
keys derive from fixed integers and ECDSA signing is deterministic (RFC 6979). The shape follows the
real documents in tests/assets/attestation: root -> 3 CA levels -> a 3-hour signing certificate with
basicConstraints and keyUsage only, and a cabundle that starts with the root.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import cbor2
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

#: Issue time of the test PKI's signing certificate; documents default to 3 s later (as AWS's).
T0 = datetime(2025, 3, 1, 12, 0, 0, tzinfo=UTC)
ES384_PROTECTED = cbor2.dumps({1: -35})


def _key(seed: str) -> ec.EllipticCurvePrivateKey:
    scalar = int.from_bytes(hashlib.sha384(seed.encode()).digest(), "big")
    return ec.derive_private_key(scalar % (2**383) + 1, ec.SECP384R1())


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "US"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sentinel tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
        ]
    )


def _cert(
    *,
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    not_before: datetime,
    not_after: datetime,
    serial: int,
    path_length: int | None,
    ca: bool,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer.subject if issuer else _name(subject))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length if ca else None), True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), True
        ).add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        if issuer is not None:
            builder = builder.add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
            )
    else:
        # Like AWS's signing certificate: digitalSignature + nonRepudiation, no SAN, AKI or EKU.
        builder = builder.add_extension(
            x509.KeyUsage(True, True, False, False, False, False, False, False, False), False
        )
    return builder.sign(issuer_key, hashes.SHA384(), ecdsa_deterministic=True)


@dataclass
class TestPki:
    """root -> CA levels -> signing certificate, with every private key (for re-signing)."""

    root_key: ec.EllipticCurvePrivateKey
    root: x509.Certificate
    cas: list[tuple[ec.EllipticCurvePrivateKey, x509.Certificate]]
    leaf_key: ec.EllipticCurvePrivateKey
    leaf: x509.Certificate
    name: str = field(default="test")

    __test__ = False  # not a pytest test class

    @classmethod
    def generate(
        cls,
        name: str = "test",
        *,
        issued: datetime = T0,
        levels: int = 3,
        leaf_lifetime: timedelta = timedelta(hours=3),
    ) -> TestPki:
        root_key = _key(f"{name}/root")
        root = _cert(
            subject=f"{name}.root",
            key=root_key,
            issuer=None,
            issuer_key=root_key,
            not_before=datetime(2020, 1, 1, tzinfo=UTC),
            not_after=datetime(2050, 1, 1, tzinfo=UTC),
            serial=1,
            path_length=None,
            ca=True,
        )
        cas: list[tuple[ec.EllipticCurvePrivateKey, x509.Certificate]] = []
        parent, parent_key = root, root_key
        for level in range(levels):
            key = _key(f"{name}/ca{level}")
            cert = _cert(
                subject=f"{name}.ca{level}",
                key=key,
                issuer=parent,
                issuer_key=parent_key,
                not_before=issued - timedelta(days=5 - level),
                not_after=issued + timedelta(days=10 - 3 * level),
                serial=10 + level,
                path_length=levels - 1 - level,
                ca=True,
            )
            cas.append((key, cert))
            parent, parent_key = cert, key
        leaf_key = _key(f"{name}/leaf")
        leaf = _cert(
            subject=f"{name}.enclave",
            key=leaf_key,
            issuer=parent,
            issuer_key=parent_key,
            not_before=issued,
            not_after=issued + leaf_lifetime,
            serial=100,
            path_length=None,
            ca=False,
        )
        return cls(root_key, root, cas, leaf_key, leaf, name)

    @property
    def root_pem(self) -> bytes:
        return self.root.public_bytes(Encoding.PEM)

    def cabundle(self) -> list[bytes]:
        return [self.root.public_bytes(Encoding.DER)] + [
            c.public_bytes(Encoding.DER) for _, c in self.cas
        ]


def sign_es384(key: ec.EllipticCurvePrivateKey, protected: bytes, payload: bytes) -> bytes:
    """A COSE ES384 signature (r||s, 48 bytes each) over the Sig_structure for Signature1."""
    to_sign = cbor2.dumps(["Signature1", protected, b"", payload])
    der = key.sign(to_sign, ec.ECDSA(hashes.SHA384(), deterministic_signing=True))
    r, s = decode_dss_signature(der)
    return r.to_bytes(48, "big") + s.to_bytes(48, "big")


def default_pcrs() -> dict[int, bytes]:
    return {i: hashlib.sha384(f"pcr{i}".encode()).digest() for i in range(16)}


def make_payload(pki: TestPki, **overrides: object) -> dict[str, object]:
    """The payload map of a valid document; `overrides` replace fields (None-valued ones stay)."""
    payload: dict[str, object] = {
        "module_id": f"i-0123456789abcdef0-enc{pki.name}",
        "digest": "SHA384",
        "timestamp": int((pki.leaf.not_valid_before_utc + timedelta(seconds=3)).timestamp() * 1000),
        "pcrs": default_pcrs(),
        "certificate": pki.leaf.public_bytes(Encoding.DER),
        "cabundle": pki.cabundle(),
        "public_key": None,
        "user_data": b"sentinel user data",
        "nonce": bytes(range(32)),
    }
    payload.update(overrides)
    return payload


def make_document(
    pki: TestPki,
    *,
    protected: bytes = ES384_PROTECTED,
    tagged: bool = False,
    signing_key: ec.EllipticCurvePrivateKey | None = None,
    **overrides: object,
) -> bytes:
    """A signed COSE_Sign1 attestation document from `pki` (payload fields via `overrides`)."""
    payload = cbor2.dumps(make_payload(pki, **overrides))
    signature = sign_es384(signing_key or pki.leaf_key, protected, payload)
    item: object = [protected, {}, payload, signature]
    if tagged:
        item = cbor2.CBORTag(18, item)
    return cbor2.dumps(item)


def resign(document: bytes, key: ec.EllipticCurvePrivateKey, *, payload: bytes | None = None) -> bytes:
    """The same document (optionally with another payload) with a fresh valid signature by `key`."""
    protected, unprotected, old_payload, _ = cbor2.loads(document)
    body = old_payload if payload is None else payload
    return cbor2.dumps([protected, unprotected, body, sign_es384(key, protected, body)])


def run_cli(*args: str) -> tuple[int, str, str]:
    """`python -m verify ARGS` in this process: (exit code, stdout, stderr).

    The CLI's `logging.basicConfig` binds the root logger to whatever stderr is at its first call;
    an earlier in-process call would leave a handler on a long-closed capture stream (and logging
    prints "--- Logging error ---" tracebacks). Each call here starts from no root handlers.
    """
    from verify import _cli

    saved = logging.root.handlers[:]
    logging.root.handlers.clear()
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = _cli.main(list(args))
    finally:
        logging.root.handlers[:] = saved
    return code, out.getvalue(), err.getvalue()

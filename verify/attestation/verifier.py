"""Decide whether an attestation document comes from Nitro hardware and meets a policy.

Steps, in order (each a named check in reports):

1. ``cose``: CBOR and the COSE_Sign1 structure, protected header included.
2. ``alg``: the protected header names ES384.
3. ``payload``: the payload's fields and types exactly as AWS documents them.
4. ``certificates``: the signing certificate and every cabundle entry are DER X.509.
5. ``chain``: cabundle[0] is the pinned root, and the chain root -> cabundle[1:] -> certificate is
   valid at the validation time under cryptography's X.509 path validation (WebPKI CA profile; the
   Nitro leaf carries no SAN/AKI so it gets its own end-entity profile below).
6. ``timestamp``: the document was made while its signing certificate was valid.
7. ``signature``: ES384 over the COSE Sig_structure with the signing certificate's key.
8. the policy's checks (PCRs, nonce, user data, freshness), each by its own name.

No network access, ever: the root is pinned and there is no revocation to fetch.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.exceptions import UnsupportedAlgorithm as CryptoUnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning
from cryptography.x509 import verification as x509v

from verify._checks import CheckResult, CheckRunner, exit_code
from verify.attestation.document import (
    ALG_ES384,
    AttestationDocument,
    CoseSign1,
    Limits,
    SignedAttestation,
    parse_cose_sign1,
    parse_payload,
)
from verify.attestation.errors import (
    ChainInvalid,
    MalformedAttestation,
    SignatureInvalid,
    TimestampInvalid,
    UnsupportedAlgorithm,
)
from verify.attestation.policy import Check, leaf_checks
from verify.attestation.roots import aws_nitro_root, fingerprint

__all__ = [
    "DOCUMENT_TIME",
    "AttestationVerifier",
    "CheckResult",
    "VerificationReport",
    "VerifiedAttestation",
    "verify",
]


class _DocumentTime:
    def __repr__(self) -> str:
        return "DOCUMENT_TIME"


#: Validate the chain as of the document's own timestamp (audits of stored documents). Freshness
#: is then a policy matter (`MaxAge`); without it an old document verifies.
DOCUMENT_TIME: Final = _DocumentTime()

_P384_SIGNATURE = 96  # r || s, 48 bytes each (RFC 9053 §2.1)
_CHAIN_CACHE_SIZE = 64


@dataclass(frozen=True)
class VerificationReport:
    """Every check's outcome (for people and CI); true only when there were checks and all passed."""

    results: tuple[CheckResult, ...]
    attestation: SignedAttestation | None
    validated_at: datetime | None

    def __bool__(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)

    @property
    def failures(self) -> list[CheckResult]:
        return [r for r in self.results if not r.ok]

    @property
    def exit_code(self) -> int:
        """0 all passed; 2 when the input was malformed; 1 when a check refused it."""
        return exit_code(self.results)


@dataclass(frozen=True)
class VerifiedAttestation:
    """An authentic document that met the policy."""

    document: AttestationDocument
    cose: CoseSign1
    chain: tuple[x509.Certificate, ...]  # signing certificate first, pinned root last
    validated_at: datetime

    @property
    def pcrs(self) -> Mapping[int, bytes]:
        return self.document.pcrs


@dataclass(frozen=True)
class _TrustedIssuer:
    """A cabundle already validated up to the root: its last CA and the window all its CAs share."""

    issuer: x509.Certificate
    not_before: datetime
    not_after: datetime


def _require_basic_constraints_ee(
    _policy: x509v.Policy, _cert: x509.Certificate, ext: x509.BasicConstraints
) -> None:
    if ext.ca:
        raise ValueError("signing certificate is a CA (basicConstraints CA:TRUE)")


def _require_digital_signature(
    _policy: x509v.Policy, _cert: x509.Certificate, ext: x509.KeyUsage
) -> None:
    if not ext.digital_signature:
        raise ValueError("signing certificate's keyUsage lacks digitalSignature")


# The Nitro signing certificate has basicConstraints and keyUsage only (no SAN, AKI or EKU), so
# WebPKI's end-entity profile refuses it; CA certificates do meet WebPKI's CA profile.
_EE_POLICY = (
    x509v.ExtensionPolicy.permit_all()
    .require_present(x509.BasicConstraints, x509v.Criticality.AGNOSTIC, _require_basic_constraints_ee)
    .require_present(x509.KeyUsage, x509v.Criticality.AGNOSTIC, _require_digital_signature)
)
_CA_POLICY = x509v.ExtensionPolicy.webpki_defaults_ca()


def _load_certificates(doc: AttestationDocument) -> tuple[x509.Certificate, list[x509.Certificate]]:
    def load(der: bytes, field: str) -> x509.Certificate:
        try:
            with warnings.catch_warnings():
                # cryptography still loads what RFC 5280 forbids (e.g. non-positive serials) with
                # a deprecation warning; for hostile input that is a refusal, not a warning.
                warnings.simplefilter("error", CryptographyDeprecationWarning)
                return x509.load_der_x509_certificate(der)
        except (ValueError, x509.InvalidVersion, CryptographyDeprecationWarning) as e:
            raise MalformedAttestation(f"not a DER X.509 certificate: {e}", field=field) from e

    leaf = load(doc.certificate, "certificate")
    return leaf, [load(der, f"cabundle[{i}]") for i, der in enumerate(doc.cabundle)]


def _check_alg(alg: int | None) -> None:
    if alg != ALG_ES384:
        raise UnsupportedAlgorithm(f"protected header alg is {alg!r}, expected {ALG_ES384} (ES384)")


def _check_timestamp(leaf: x509.Certificate, made: datetime) -> None:
    if not leaf.not_valid_before_utc <= made <= leaf.not_valid_after_utc:
        raise TimestampInvalid(
            f"document timestamp {made.isoformat()} outside its signing certificate's validity "
            f"{leaf.not_valid_before_utc.isoformat()} .. {leaf.not_valid_after_utc.isoformat()}"
        )


def _check_signature(leaf: x509.Certificate, cose: CoseSign1) -> None:
    try:
        key = leaf.public_key()
    except (ValueError, CryptoUnsupportedAlgorithm) as e:
        raise MalformedAttestation(f"unusable public key: {e}", field="certificate") from e
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP384R1):
        raise SignatureInvalid("signing certificate's key is not EC P-384, which ES384 requires")
    sig = cose.signature
    if len(sig) != _P384_SIGNATURE:
        raise SignatureInvalid(f"signature is {len(sig)} bytes, expected {_P384_SIGNATURE} (r||s)")
    r, s = int.from_bytes(sig[:48], "big"), int.from_bytes(sig[48:], "big")
    try:
        key.verify(encode_dss_signature(r, s), cose.sig_structure(), ec.ECDSA(hashes.SHA384()))
    except (InvalidSignature, ValueError) as e:
        raise SignatureInvalid(
            "ES384 signature over the COSE Sig_structure does not verify with the signing "
            "certificate's key"
        ) from e


class AttestationVerifier:
    """Verifies documents against one pinned root, at a fixed or current time.

    Args:
        root: the trust anchor; `AttestationVerifier.aws_nitro()` pins AWS's.
        now: validation time for the chain: a UTC-aware datetime, `DOCUMENT_TIME` (each document's
            own timestamp), or None for the wall clock at each verification.
        limits: size bounds for parsing.
    """

    def __init__(
        self,
        *,
        root: x509.Certificate,
        now: datetime | _DocumentTime | None = None,
        limits: Limits | None = None,
    ) -> None:
        if isinstance(now, datetime) and now.utcoffset() is None:
            raise ValueError("now must be timezone-aware (UTC)")
        self._root = root
        self._root_der = root.public_bytes(Encoding.DER)
        self._root_fingerprint = fingerprint(root)
        self._now = now
        self._limits = limits or Limits()
        # Intermediates are shared by every document an instance makes for days; re-validating
        # them costs 3 of the 5 P-384 verifications, so validated bundles are remembered (keyed by
        # their exact bytes, bounded, and only within the window all their CAs are valid).
        self._chains: OrderedDict[tuple[bytes, ...], _TrustedIssuer] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def aws_nitro(cls, *, now: datetime | _DocumentTime | None = None) -> AttestationVerifier:
        """A verifier pinned to the shipped, fingerprint-checked AWS Nitro Enclaves root (G1)."""
        return cls(root=aws_nitro_root(), now=now)

    @property
    def root(self) -> x509.Certificate:
        return self._root

    def _validation_time(self, doc: AttestationDocument) -> datetime:
        if isinstance(self._now, _DocumentTime):
            return doc.timestamp
        return self._now or datetime.now(UTC)

    def _verify_chain(
        self, leaf: x509.Certificate, cabundle: list[x509.Certificate], raw: tuple[bytes, ...], at: datetime
    ) -> tuple[x509.Certificate, ...]:
        # (1) AWS puts the root first in cabundle; it must be exactly the pinned one.
        if raw[0] != self._root_der:
            raise ChainInvalid(
                f"cabundle[0] is not the pinned root: got SHA-256 {fingerprint(cabundle[0])}, "
                f"expected {self._root_fingerprint}"
            )
        with self._lock:
            trusted = self._chains.get(raw)
            if trusted is not None:
                self._chains.move_to_end(raw)
        if trusted is not None and trusted.not_before <= at <= trusted.not_after:
            # (2a) The bundle was validated to the root before and all its CAs are valid at `at`:
            # only the leaf's link remains, checked under the same policies.
            self._path(x509v.Store([trusted.issuer]), at, leaf, [])
            return (leaf, *reversed(cabundle))
        # (2b) Full path validation from the pinned root.
        built = self._path(x509v.Store([self._root]), at, leaf, cabundle[1:])
        expected = [leaf, *reversed(cabundle)]
        if built != expected:
            raise ChainInvalid(
                "cabundle is not the path from the root to the signing certificate, in order"
            )
        cas = cabundle[1:]
        if cas and not any(self._has_name_constraints(c) for c in cas):
            # Name constraints bind the leaf's names, which the shortcut in (2a) would not see.
            entry = _TrustedIssuer(
                issuer=cas[-1],
                not_before=max(c.not_valid_before_utc for c in cas),
                not_after=min(c.not_valid_after_utc for c in cas),
            )
            with self._lock:
                self._chains[raw] = entry
                while len(self._chains) > _CHAIN_CACHE_SIZE:
                    self._chains.popitem(last=False)
        return tuple(expected)

    @staticmethod
    def _has_name_constraints(cert: x509.Certificate) -> bool:
        try:
            cert.extensions.get_extension_for_class(x509.NameConstraints)
        except x509.ExtensionNotFound:
            return False
        return True

    @staticmethod
    def _path(
        store: x509v.Store, at: datetime, leaf: x509.Certificate, intermediates: list[x509.Certificate]
    ) -> list[x509.Certificate]:
        verifier = (
            x509v.PolicyBuilder()
            .store(store)
            .time(at)
            .extension_policies(ca_policy=_CA_POLICY, ee_policy=_EE_POLICY)
            .build_client_verifier()
        )
        try:
            return verifier.verify(leaf, intermediates).chain
        except (x509v.VerificationError, ValueError) as e:
            raise ChainInvalid(f"certificate chain invalid at {at.isoformat()}: {e}") from e

    def _evaluate(
        self, data: bytes, policy: Check, *, fail_fast: bool
    ) -> tuple[list[CheckResult], SignedAttestation | None, tuple[x509.Certificate, ...], datetime | None]:
        checks = CheckRunner(fail_fast=fail_fast)
        cose = checks.run("cose", lambda: parse_cose_sign1(data, limits=self._limits))
        if not isinstance(cose, CoseSign1):
            return checks.results, None, (), None
        checks.run("alg", _check_alg, cose.alg)
        doc = checks.run("payload", lambda: parse_payload(cose.payload, limits=self._limits))
        if not isinstance(doc, AttestationDocument):
            return checks.results, None, (), None
        signed = SignedAttestation(cose=cose, document=doc)
        at = self._validation_time(doc)
        chain: tuple[x509.Certificate, ...] = ()
        certs = checks.run("certificates", _load_certificates, doc)
        if isinstance(certs, tuple):
            leaf, cabundle = certs
            got = checks.run("chain", self._verify_chain, leaf, cabundle, doc.cabundle, at)
            if isinstance(got, tuple):
                chain = got
            checks.run("timestamp", _check_timestamp, leaf, doc.timestamp)
            checks.run("signature", _check_signature, leaf, signed.cose)
        for check in leaf_checks(policy):
            checks.run(check.name, check.verify, doc)
        return checks.results, signed, chain, at

    def verify(self, data: bytes, policy: Check) -> VerifiedAttestation:
        """Verify a raw document and apply `policy`; stops at the first failure.

        Raises:
            MalformedAttestation: the bytes are not an attestation document.
            UnsupportedAlgorithm, ChainInvalid, TimestampInvalid, SignatureInvalid: not authentic.
            PcrMismatch, NonceMismatch, UserDataMismatch, DocumentStale, ...: authentic, but the
                policy refuses it.
        """
        _, signed, chain, at = self._evaluate(data, policy, fail_fast=True)
        assert signed is not None and at is not None and chain  # fail_fast raised otherwise
        return VerifiedAttestation(
            document=signed.document, cose=signed.cose, chain=chain, validated_at=at
        )

    def report(self, data: bytes, policy: Check) -> VerificationReport:
        """Run every check that can run and return each outcome by name; never raises for bad input."""
        results, signed, _, at = self._evaluate(data, policy, fail_fast=False)
        return VerificationReport(results=tuple(results), attestation=signed, validated_at=at)


def verify(
    document: bytes, policy: Check, *, verifier: AttestationVerifier | None = None
) -> VerifiedAttestation:
    """Verify `document` against the AWS Nitro root at the current time and apply `policy`.

    Args:
        document: raw COSE_Sign1 bytes as the NSM returns them.
        policy: what the document must show, e.g. `AllOf([PcrEquals(0, ...), NonceEquals(n)])`.
        verifier: another root or a fixed time; `AttestationVerifier.aws_nitro()` by default.

    Raises:
        VerifyError: `MalformedAttestation` (exit 2) or a `VerificationError` naming the failed check.
    """
    return (verifier or _default_verifier()).verify(document, policy)


@functools.cache
def _default_verifier() -> AttestationVerifier:
    # One shared instance so its chain cache serves every call; it reads the wall clock per call.
    return AttestationVerifier.aws_nitro()

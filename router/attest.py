"""Check, before routing anything, that the signer on the other end is the enclave we expect.

The router asks the signer for an attestation document over a fresh random nonce and verifies it
with `verify.attestation`: the chain to the pinned root (AWS's Nitro root unless another is
configured, e.g. the NSM emulator's in development), the signature, the nonce, freshness, and
the PCRs published in a measurements file. Any failure stops the router before it signs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .errors import ConfigError, RouterError


class SignerNotTrusted(RouterError):
    """The signer's attestation document failed verification (exit 1)."""


class _Attesting(Protocol):
    def attest(self, *, nonce: bytes | None = None, user_data: bytes | None = None,
               public_key: bytes | None = None) -> bytes: ...


@dataclass(frozen=True)
class AttestationPolicy:
    """What the signer's document must show. `root_pem` None pins the AWS Nitro root."""

    pcrs: dict[int, bytes]
    root_pem: bytes | None = None
    max_age_seconds: float = 300.0

    @classmethod
    def from_files(cls, measurements: str | Path, *, root: str | Path | None = None,
                   indices: list[int] | None = None, max_age_seconds: float = 300.0
                   ) -> AttestationPolicy:
        """Raises ConfigError: unreadable/malformed measurements or root, or unknown indices."""
        from verify.errors import VerifyError
        from verify.measurements import load_measurements

        try:
            published = load_measurements(str(measurements))
        except VerifyError as e:
            raise ConfigError(f"attestation measurements: {e.diagnostics()}") from e
        wanted = sorted(published.pcrs) if indices is None else indices
        missing = [i for i in wanted if i not in published.pcrs]
        if missing or not wanted:
            raise ConfigError(f"attestation: PCRs {missing or wanted} not in {measurements}")
        root_pem = None
        if root is not None:
            try:
                root_pem = Path(root).read_bytes()
            except OSError as e:
                raise ConfigError(f"attestation root {root}: {e.strerror or e}") from e
        return cls({i: published.pcrs[i] for i in wanted}, root_pem, max_age_seconds)


def check_signer(client: _Attesting, policy: AttestationPolicy) -> dict[int, bytes]:
    """Attest the signer with a fresh nonce; returns the verified PCRs.

    Raises:
        SignerNotTrusted: the document is malformed, does not chain to the root, or fails a check
            (the message names the check, e.g. PCR0 got/expected).
        ConfigError: the configured root is not a PEM certificate.
    """
    from cryptography import x509

    from verify.attestation import AllOf, MaxAge, NonceEquals, pcrs_equal
    from verify.attestation.verifier import AttestationVerifier
    from verify.errors import VerifyError

    if policy.root_pem is None:
        verifier = AttestationVerifier.aws_nitro()
    else:
        try:
            verifier = AttestationVerifier(root=x509.load_pem_x509_certificate(policy.root_pem))
        except ValueError as e:
            raise ConfigError(f"attestation root is not a PEM certificate ({e})") from e
    nonce = os.urandom(32)
    document = client.attest(nonce=nonce)
    checks = AllOf([*pcrs_equal(policy.pcrs), NonceEquals(nonce), MaxAge(policy.max_age_seconds)])
    try:
        verified = verifier.verify(document, checks)
    except VerifyError as e:
        raise SignerNotTrusted(f"signer attestation refused: {e.diagnostics()}") from e
    return dict(verified.pcrs)

"""Check, before routing anything, that the signer on the other end is the enclave we expect.

The router asks the signer for its key (GET_KEY) and for an attestation document over a fresh
random nonce, and verifies the document with `verify.attestation`: the chain to the pinned root
(AWS's Nitro root unless another is configured, e.g. the NSM emulator's in development), the
signature, the nonce, freshness, the PCRs published in a measurements file, and that the document
binds the key GET_KEY reported (the signer puts its own key in `public_key`: enclave/PROTOCOL.md,
"Key binding"). Without that last check a relay could show one enclave's document and route the
signatures to another signer. Any failure stops the router before it signs.

`SignerCheck` runs the check on every connection of a `SignerClient` (its `on_connect`), so a
reconnect cannot silently reach another signer, and refuses a key other than the first one.
"""

from __future__ import annotations

import functools
import hmac
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .errors import ConfigError, RouterError

if TYPE_CHECKING:
    from verify.attestation import AttestationDocument, AttestationVerifier

    from .signer_client import KeyInfo

__all__ = ["AttestationPolicy", "AttestedSigner", "BindsSignerKey", "SignerCheck",
           "SignerNotTrusted", "check_signer"]


class SignerNotTrusted(RouterError):
    """The signer's attestation document failed verification (exit 1)."""


class _Attesting(Protocol):
    def attest(self, *, nonce: bytes | None = None, user_data: bytes | None = None) -> bytes: ...

    def address(self) -> KeyInfo: ...


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


@functools.lru_cache(maxsize=8)
def _verifier(root_pem: bytes | None) -> AttestationVerifier:
    """One verifier per root for the process: its cache of validated CA bundles then serves every
    check (reconnects, several routers), which saves 3 of 5 P-384 verifications per document. It
    reads the wall clock at each verification, so sharing it is safe."""
    from cryptography import x509

    from verify.attestation.verifier import AttestationVerifier

    if root_pem is None:
        return AttestationVerifier.aws_nitro()
    try:
        return AttestationVerifier(root=x509.load_pem_x509_certificate(root_pem))
    except ValueError as e:
        raise ConfigError(f"attestation root is not a PEM certificate ({e})") from e


@dataclass(frozen=True)
class AttestedSigner:
    """What a successful check established: the PCRs shown and the key they are bound to."""

    pcrs: dict[int, bytes]
    address: str
    public_key: bytes


class BindsSignerKey:
    """The document's public_key is the key the signer reports over GET_KEY (65-byte SEC1)."""

    name = "signer-key"

    def __init__(self, key: KeyInfo) -> None:
        self._key = key

    def verify(self, document: AttestationDocument) -> None:
        from verify.attestation import PublicKeyMismatch

        want = self._key.public_key
        got = document.public_key
        if got is None:
            raise PublicKeyMismatch(
                f"public_key: the document binds no key, expected the signer's key "
                f"{want.hex()} (address {self._key.address}); a signer older than the key "
                "binding cannot be trusted this way"
            )
        if not hmac.compare_digest(got, want):
            shown = got.hex() if len(got) <= 128 else f"{got[:64].hex()}... ({len(got)} bytes)"
            raise PublicKeyMismatch(
                f"public_key: the document binds {shown}, but the signer answering GET_KEY holds "
                f"{want.hex()} (address {self._key.address}): the attested enclave is not the "
                "one that would sign"
            )


def check_signer(client: _Attesting, policy: AttestationPolicy) -> AttestedSigner:
    """Attest the signer with a fresh nonce and check the document binds its key.

    Raises:
        SignerNotTrusted: the document is malformed, does not chain to the root, or fails a check
            (the message names the check, e.g. PCR0 got/expected, or signer-key).
        ConfigError: the configured root is not a PEM certificate.
        TransportError, SignerError: GET_KEY or ATTEST failed (e.g. no Secure Module).
    """
    from verify.attestation import AllOf, MaxAge, NonceEquals, pcrs_equal
    from verify.errors import VerifyError

    verifier = _verifier(policy.root_pem)
    key = client.address()
    nonce = os.urandom(32)
    document = client.attest(nonce=nonce)
    checks = AllOf([*pcrs_equal(policy.pcrs), NonceEquals(nonce), MaxAge(policy.max_age_seconds),
                    BindsSignerKey(key)])
    try:
        verified = verifier.verify(document, checks)
    except VerifyError as e:
        raise SignerNotTrusted(f"signer attestation refused: {e.diagnostics()}") from e
    return AttestedSigner(dict(verified.pcrs), key.address, key.public_key)


class SignerCheck:
    """`SignerClient(on_connect=SignerCheck(policy))`: attest every connection before use.

    The first success fixes the signer's key; a later connection to a signer holding another key
    (even a correctly attested one) is refused, since the router's sender is that first key.
    """

    def __init__(self, policy: AttestationPolicy) -> None:
        self.policy = policy
        self.attested: AttestedSigner | None = None
        self.checks = 0

    def __call__(self, client: _Attesting) -> None:
        """Raises: as `check_signer`, and SignerNotTrusted if the key differs from the first."""
        got = check_signer(client, self.policy)
        self.checks += 1
        first = self.attested
        if first is not None and not hmac.compare_digest(got.public_key, first.public_key):
            raise SignerNotTrusted(
                f"signer attestation refused: after a reconnect the signer holds key "
                f"{got.address}, not {first.address} (the key this router signs with)"
            )
        if first is None:
            self.attested = got

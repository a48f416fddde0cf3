"""Trust anchors: the AWS Nitro Enclaves root (G1) shipped in this package, or a root the caller names.

The AWS root is public data; shipping it and checking its fingerprint at load means a customer's
verdict never depends on fetching anything, and a tampered package fails loudly instead of trusting
a substituted root.
"""

from __future__ import annotations

import hashlib
from importlib import resources
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from verify.errors import MalformedInput, VerificationError

__all__ = ["AWS_NITRO_ROOT_G1_SHA256", "aws_nitro_root", "fingerprint", "load_root_pem"]

#: SHA-256 of the DER of the AWS Nitro Enclaves root certificate (G1), as AWS publishes it.
AWS_NITRO_ROOT_G1_SHA256 = "641a0321a3e244efe456463195d606317ed7cdcc3c1756e09893f3c68f79bb5b"
_AWS_ROOT_RESOURCE = "aws_nitro_root_g1.pem"


def fingerprint(cert: x509.Certificate) -> str:
    """Lower-case hex SHA-256 of the certificate's DER encoding."""
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def aws_nitro_root() -> x509.Certificate:
    """The AWS Nitro Enclaves root (G1) shipped with this package, fingerprint-checked.

    Raises:
        VerificationError: the shipped file does not hold the root AWS published.
    """
    pem = resources.files(__package__).joinpath(_AWS_ROOT_RESOURCE).read_bytes()
    cert = x509.load_pem_x509_certificate(pem)
    got = fingerprint(cert)
    if got != AWS_NITRO_ROOT_G1_SHA256:
        raise VerificationError(
            f"shipped AWS Nitro root has fingerprint {got}, expected {AWS_NITRO_ROOT_G1_SHA256}"
        )
    return cert


def load_root_pem(path: str | Path) -> x509.Certificate:
    """A caller-named root (e.g. the NSM emulator's CA) from a PEM file.

    Raises:
        MalformedInput: the file cannot be read or holds no PEM certificate.
    """
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise MalformedInput(f"cannot read root certificate {path}: {e.strerror}") from e
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as e:
        raise MalformedInput(f"{path} is not a PEM certificate: {e}") from e

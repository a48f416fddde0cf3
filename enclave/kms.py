"""Loading the signing key from AWS KMS so that its plaintext only ever exists inside the enclave.

The enclave holds only a KMS ciphertext blob of the 32-byte secp256k1 secret. At start it:

1. generates an ephemeral RSA-2048 key pair (memory only);
2. asks the NSM for an attestation document carrying that public key (DER SubjectPublicKeyInfo);
3. calls KMS `Decrypt` with `Recipient={"KeyEncryptionAlgorithm": "RSAES_OAEP_SHA_256",
   "AttestationDocument": <document>}`; KMS checks the document (and the key policy's
   `kms:RecipientAttestation:*` conditions on PCRs) and returns the plaintext only as
   `CiphertextForRecipient`, a CMS EnvelopedData for the attested public key;
4. opens that envelope with the ephemeral private key and builds the `SigningKey`.

A response that carries `Plaintext` instead is refused: it means the plaintext crossed the parent
instance in the clear (a KMS that ignored the Recipient). The secret never appears in logs, errors or
reprs; buffers holding it are overwritten once the key is built.

The operator-side helpers `generate_key_blob` / `encrypt_secret` produce the blob with KMS `Encrypt`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import coincurve
from botocore.exceptions import BotoCoreError, ClientError, ParamValidationError
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from enclave._cms import CmsError, open_enveloped_data
from enclave.errors import KeyLoadError
from enclave.keys import KeyOrigin, SigningKey, checksum_address
from enclave.nsm import Nsm

__all__ = [
    "RECIPIENT_KEY_ALGORITHM",
    "CmsError",
    "KmsError",
    "KmsKeyMismatch",
    "KmsRefused",
    "KmsResponseError",
    "KmsTransportError",
    "encrypt_secret",
    "generate_key_blob",
    "kms_client",
    "load_kms_key",
]

logger = logging.getLogger(__name__)

RECIPIENT_KEY_ALGORITHM = "RSAES_OAEP_SHA_256"
RSA_BITS = 2048
SECRET_BYTES = 32
# KMS ciphertext blobs of a 32-byte plaintext are ~180 bytes; anything past this is not one.
_MAX_BLOB_BYTES = 6144


class KmsError(KeyLoadError):
    """The key could not be loaded from KMS; the message never carries key material."""


class KmsTransportError(KmsError):
    """KMS could not be reached (endpoint, proxy, TLS, timeout)."""


class KmsRefused(KmsError):
    """KMS answered with an error (e.g. AccessDeniedException when the PCRs do not match the policy)."""

    def __init__(self, error_code: str, message: str) -> None:
        self.error_code = error_code
        super().__init__(f"KMS Decrypt refused: {error_code}: {message}")


class KmsKeyMismatch(KmsError):
    """The envelope opened to another key than the pinned one (policy `signer_address`).

    The content encryption is AES-CBC without a MAC: a flipped bit of the IV or ciphertext, by
    whoever relays KMS's answer, opens to a different 32-byte secret without any error. Only the
    resulting address tells, so a pinned address is the integrity check."""


class KmsResponseError(KmsError):
    """KMS answered, but not with a `CiphertextForRecipient` the enclave can use."""


def kms_client(
    region: str,
    *,
    endpoint_url: str | None = None,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
) -> Any:
    """A boto3 KMS client; inside an enclave `endpoint_url` is the local end of the vsock proxy."""
    import boto3

    return boto3.client(
        "kms",
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        aws_session_token=session_token,
    )


# At DEBUG, botocore logs whole request and response bodies: an Encrypt's Plaintext, or a Decrypt
# answer from a KMS that ignored the Recipient. Our calls run with these loggers at INFO or above.
_SDK_LOGGERS = ("botocore", "boto3", "urllib3")


@contextmanager
def _sdk_bodies_unlogged() -> Iterator[None]:
    names = [
        name
        for name in list(logging.root.manager.loggerDict)
        if any(name == p or name.startswith(p + ".") for p in _SDK_LOGGERS)
    ]
    saved = []
    for name in sorted(set(names) | set(_SDK_LOGGERS)):
        sdk_logger = logging.getLogger(name)
        if sdk_logger.getEffectiveLevel() < logging.INFO or (
            logging.NOTSET < sdk_logger.level < logging.INFO
        ):
            saved.append((sdk_logger, sdk_logger.level))
            sdk_logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        for sdk_logger, level in saved:
            sdk_logger.setLevel(level)


def _read_blob(blob: bytes | bytearray | str | os.PathLike[str]) -> bytes:
    if isinstance(blob, bytes | bytearray):
        data = bytes(blob)
        where = "key blob"
    else:
        path = Path(blob)
        where = f"key blob {path}"
        try:
            with path.open("rb") as f:
                data = f.read(_MAX_BLOB_BYTES + 1)
        except OSError as e:
            raise KmsError(f"{where}: cannot read ({e.strerror or type(e).__name__})") from None
    if not data:
        raise KmsError(f"{where} is empty")
    if len(data) > _MAX_BLOB_BYTES:
        raise KmsError(f"{where} is larger than {_MAX_BLOB_BYTES} bytes: not a KMS ciphertext")
    return data


def _client_error(e: ClientError) -> KmsRefused:
    error = e.response.get("Error", {}) if isinstance(e.response, dict) else {}
    code = str(error.get("Code") or "Unknown")
    message = str(error.get("Message") or "")[:200]
    return KmsRefused(code, message)


def _transport_error(operation: str, e: BotoCoreError) -> KmsTransportError:
    # Parameter validation messages quote parameter values, which may be the secret: name only.
    detail = "" if isinstance(e, ParamValidationError) else f": {e}"
    return KmsTransportError(f"KMS {operation} failed: {type(e).__name__}{detail}")


def load_kms_key(
    blob: bytes | bytearray | str | os.PathLike[str],
    *,
    nsm: Nsm,
    client: Any,
    key_id: str | None = None,
    encryption_context: Mapping[str, str] | None = None,
    expected_address: bytes | None = None,
) -> SigningKey:
    """The signing key whose KMS ciphertext is `blob` (bytes, or the path of a file holding them).

    Args:
        blob: the `CiphertextBlob` from KMS Encrypt of the 32-byte secp256k1 secret.
        nsm: the module that attests the ephemeral recipient key (device; emulator in development).
        client: a boto3 KMS client.
        key_id: the KMS key expected to have encrypted the blob (recommended: pins the key).
        encryption_context: the context the blob was encrypted with.
        expected_address: the 20-byte EVM address the key must have (policy `signer_address`).

    Raises:
        KmsTransportError: KMS unreachable.
        KmsRefused: KMS refused (policy, wrong key, bad ciphertext...).
        KmsResponseError: the answer carries `Plaintext` or no `CiphertextForRecipient`.
        CmsError: the envelope is malformed or does not open with the ephemeral key.
        KeyLoadError: the plaintext is not a 32-byte secp256k1 secret.
        KmsKeyMismatch: the key is not `expected_address`'s (a tampered envelope, or another blob).
        NsmError: the module could not attest.
    """
    ciphertext_blob = _read_blob(blob)
    # (1) an ephemeral recipient key that never leaves this function
    recipient = rsa.generate_private_key(public_exponent=65537, key_size=RSA_BITS)
    public_der = recipient.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # (2) the module vouches that this public key belongs to this enclave image
    document = nsm.attestation(public_key=public_der)
    # (3) KMS re-encrypts the plaintext to the attested key
    request: dict[str, Any] = {
        "CiphertextBlob": ciphertext_blob,
        "Recipient": {
            "KeyEncryptionAlgorithm": RECIPIENT_KEY_ALGORITHM,
            "AttestationDocument": document,
        },
    }
    if key_id is not None:
        request["KeyId"] = key_id
    if encryption_context:
        request["EncryptionContext"] = dict(encryption_context)
    try:
        with _sdk_bodies_unlogged():
            response = client.decrypt(**request)
    except ClientError as e:
        raise _client_error(e) from None
    except BotoCoreError as e:
        raise _transport_error("Decrypt", e) from None
    if response.get("Plaintext"):
        # Never look at it: its presence alone means the plaintext travelled outside the enclave.
        response["Plaintext"] = None
        raise KmsResponseError(
            "KMS returned Plaintext instead of CiphertextForRecipient: it ignored the Recipient, "
            "so the key crossed the parent instance in the clear; refusing it"
        )
    envelope = response.get("CiphertextForRecipient")
    if not envelope:
        raise KmsResponseError("KMS Decrypt response has no CiphertextForRecipient")
    # (4) open the envelope in memory
    secret = open_enveloped_data(envelope, recipient)
    try:
        if len(secret) != SECRET_BYTES:
            raise KeyLoadError(
                f"KMS plaintext is {len(secret)} bytes, expected a {SECRET_BYTES}-byte secp256k1 secret"
            )
        key = SigningKey(secret, origin=KeyOrigin.KMS)
    finally:
        secret[:] = bytes(len(secret))
    if expected_address is not None and key.address_bytes != expected_address:
        raise KmsKeyMismatch(
            f"the decrypted key is {key.address}, not the policy's signer_address "
            f"{checksum_address(expected_address)}: refusing it"
        )
    logger.info("loaded the signing key for %s from KMS key %s", key.address, response.get("KeyId"))
    return key


def encrypt_secret(
    client: Any,
    key_id: str,
    secret: bytes | bytearray,
    *,
    encryption_context: Mapping[str, str] | None = None,
) -> bytes:
    """KMS `Encrypt` of a 32-byte secp256k1 secret: the blob the enclave loads (operator side).

    Raises:
        KeyLoadError: `secret` is not a valid 32-byte secp256k1 secret.
        KmsRefused, KmsTransportError: KMS refused or could not be reached.
    """
    if len(secret) != SECRET_BYTES:
        raise KeyLoadError(f"a secp256k1 secret is {SECRET_BYTES} bytes (got {len(secret)})")
    try:
        coincurve.PrivateKey(bytes(secret))
    except ValueError:
        raise KeyLoadError("secret is not a valid secp256k1 scalar (0 < k < n)") from None
    request: dict[str, Any] = {"KeyId": key_id, "Plaintext": bytes(secret)}
    if encryption_context:
        request["EncryptionContext"] = dict(encryption_context)
    try:
        with _sdk_bodies_unlogged():
            response = client.encrypt(**request)
    except ClientError as e:
        raise _client_error(e) from None
    except BotoCoreError as e:
        raise _transport_error("Encrypt", e) from None
    return bytes(response["CiphertextBlob"])


def generate_key_blob(
    client: Any, key_id: str, *, encryption_context: Mapping[str, str] | None = None
) -> tuple[bytes, str]:
    """A new random signing key, returned only as (KMS blob, EVM address): the secret is discarded.

    Raises:
        KmsRefused, KmsTransportError: KMS refused or could not be reached.
    """
    while True:
        secret = bytearray(os.urandom(SECRET_BYTES))
        try:
            address = SigningKey(secret, origin=KeyOrigin.KMS).address
            break
        except KeyLoadError:  # a scalar outside 1..n-1: probability ~2**-128
            continue
    try:
        blob = encrypt_secret(client, key_id, secret, encryption_context=encryption_context)
    finally:
        secret[:] = bytes(SECRET_BYTES)
    return blob, address

"""moto's KMS as a real HTTP server on 127.0.0.1, taught the Decrypt `Recipient` parameter (tests only).

moto 5.2 ignores `Recipient` and answers with `Plaintext`. `RecipientKmsServer` patches moto's KMS
response handler, in this process where the threaded server runs, to answer as AWS documents it:
verify the attestation document (here against the emulator's root, where AWS pins the Nitro root),
apply `kms:RecipientAttestation:PCR<n>` style conditions, and return `CiphertextForRecipient` — a CMS
EnvelopedData to the document's public key (KeyTransRecipientInfo v2 by subjectKeyIdentifier,
RSAES-OAEP SHA-256, AES-256-CBC) in KMS's BER form (indefinite lengths, content in chunks) — and no
`Plaintext`. The product code talks to it through boto3 over HTTP like to AWS.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import boto3
from asn1crypto import algos, cms, core
from botocore.config import Config
from cryptography import x509
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from moto.kms.exceptions import AccessDeniedException, ValidationException
from moto.kms.responses import KmsResponse
from moto.server import ThreadedMotoServer
from nsm_support import DocumentInvalid, verify_document

REGION = "us-east-1"


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, value: bytes) -> bytes:
    return bytes([tag]) + _der_len(len(value)) + value


def _indefinite(tag: int, *parts: bytes) -> bytes:
    return bytes([tag, 0x80]) + b"".join(parts) + b"\x00\x00"


def oaep_sha256_algorithm(hash_name: str = "sha256") -> cms.KeyEncryptionAlgorithm:
    # KMS writes the digest AlgorithmIdentifiers with explicit NULL parameters.
    digest = {"algorithm": hash_name, "parameters": core.Null()}
    return cms.KeyEncryptionAlgorithm(
        {
            "algorithm": "rsaes_oaep",
            "parameters": algos.RSAESOAEPParams(
                {
                    "hash_algorithm": digest,
                    "mask_gen_algorithm": {"algorithm": "mgf1", "parameters": digest},
                }
            ),
        }
    )


def build_enveloped_data(
    plaintext: bytes,
    recipient_public_der: bytes,
    *,
    style: str = "ber",
    oaep_hash: str = "sha256",
    content_algorithm: str = "aes256_cbc",
    chunk: int = 4096,
    pad: bool = True,
) -> bytes:
    """A CMS EnvelopedData of `plaintext` to the RSA key `recipient_public_der` (SPKI DER).

    `pad=False` encrypts `plaintext` as it is (it must be whole blocks), to make bad padding.
    """
    public = serialization.load_der_public_key(recipient_public_der)
    key_len = 32 if content_algorithm == "aes256_cbc" else 16
    cek, iv = os.urandom(key_len), os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plaintext) + padder.finalize() if pad else plaintext
    enc = Cipher(algorithms.AES(cek), modes.CBC(iv)).encryptor()
    ciphertext = enc.update(padded) + enc.finalize()
    oaep_hash_obj = hashes.SHA256() if oaep_hash == "sha256" else hashes.SHA1()
    encrypted_key = public.encrypt(  # type: ignore[union-attr]
        cek,
        asym_padding.OAEP(
            mgf=asym_padding.MGF1(oaep_hash_obj), algorithm=oaep_hash_obj, label=None
        ),
    )
    # KMS's identifier is 32 bytes; what it hashes is not documented and nothing depends on it.
    ski = hashlib.sha256(recipient_public_der).digest()
    ktri = cms.KeyTransRecipientInfo(
        {
            "version": "v2",
            "rid": cms.RecipientIdentifier({"subject_key_identifier": ski}),
            "key_encryption_algorithm": oaep_sha256_algorithm(oaep_hash),
            "encrypted_key": encrypted_key,
        }
    )
    recipients = cms.RecipientInfos([cms.RecipientInfo({"ktri": ktri})])
    content_alg = cms.EncryptionAlgorithm({"algorithm": content_algorithm, "parameters": iv})
    if style == "der":
        info = cms.ContentInfo(
            {
                "content_type": "enveloped_data",
                "content": cms.EnvelopedData(
                    {
                        "version": "v2",
                        "recipient_infos": recipients,
                        "encrypted_content_info": {
                            "content_type": "data",
                            "content_encryption_algorithm": content_alg,
                            "encrypted_content": ciphertext,
                        },
                    }
                ),
            }
        )
        return info.dump()
    # KMS's form: indefinite lengths, the encrypted content as constructed [0] of octet strings.
    chunks = [_tlv(0x04, ciphertext[i : i + chunk]) for i in range(0, len(ciphertext), chunk)]
    eci = _indefinite(
        0x30,
        core.ObjectIdentifier("1.2.840.113549.1.7.1").dump(),
        content_alg.dump(),
        _indefinite(0xA0, *chunks),
    )
    enveloped = _indefinite(0x30, core.Integer(2).dump(), recipients.dump(), eci)
    return _indefinite(
        0x30,
        core.ObjectIdentifier("1.2.840.113549.1.7.3").dump(),
        _indefinite(0xA0, enveloped),
    )


def _blob_param(value: Any) -> bytes:
    return value if isinstance(value, bytes) else base64.b64decode(value)


class RecipientKmsServer:
    """A moto KMS server whose Decrypt honours `Recipient` like AWS KMS (see module docstring)."""

    def __init__(self, *, root: x509.Certificate) -> None:
        self.root = root
        self.required_pcrs: dict[int, bytes] = {}
        self.style = "ber"
        self.recipient_decrypts = 0
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.endpoint = ""
        self._relay_ports: list[int] = []

    def route_port(self, port: int) -> None:
        """Also answer as AWS for requests addressed to `port` (a relay in front of this server:
        requests are routed by their Host header's port)."""
        self._relay_ports.append(port)
        _HONOURING[port] = self

    def client(self, **config: Any) -> Any:
        return boto3.client(
            "kms",
            region_name=REGION,
            endpoint_url=self.endpoint,
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
            config=Config(retries={"max_attempts": 1}, **config),
        )

    def _decrypt(self, original: Any, response: KmsResponse) -> str:
        recipient = response._get_param("Recipient")
        if not recipient:
            return original(response)
        algorithm = recipient.get("KeyEncryptionAlgorithm")
        if algorithm != "RSAES_OAEP_SHA_256":
            raise ValidationException(f"KeyEncryptionAlgorithm {algorithm} is not supported")
        document = _blob_param(recipient.get("AttestationDocument", ""))
        try:
            # Like KMS: the chain must be valid now, not only at the document's own time.
            body = verify_document(document, self.root, at=dt.datetime.now(dt.UTC))
        except DocumentInvalid as e:
            raise ValidationException(f"invalid attestation document: {e}") from e
        for index, expected in self.required_pcrs.items():
            if body["pcrs"].get(index) != expected:
                raise AccessDeniedException(
                    f"kms:RecipientAttestation:PCR{index} condition not satisfied"
                )
        if not body["public_key"]:
            raise ValidationException("attestation document has no public_key")
        result = json.loads(original(response))
        plaintext = base64.b64decode(result.pop("Plaintext"))
        envelope = build_enveloped_data(plaintext, body["public_key"], style=self.style)
        result["CiphertextForRecipient"] = base64.b64encode(envelope).decode()
        result.setdefault("EncryptionAlgorithm", "SYMMETRIC_DEFAULT")
        self.recipient_decrypts += 1
        return json.dumps(result)

    @contextmanager
    def running(self, *, honour_recipient: bool = True) -> Iterator[RecipientKmsServer]:
        self._server.start()
        host, port = self._server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        if honour_recipient:
            _install(port, self)
        try:
            yield self
        finally:
            self._server.stop()
            for relay in self._relay_ports:
                _HONOURING.pop(relay, None)
            if honour_recipient:
                _uninstall(port)


# All moto servers of this process share KmsResponse: the patch routes by the port a request came to,
# so a plain moto server can run next to a Recipient-honouring one.
_HONOURING: dict[int, RecipientKmsServer] = {}
_ORIGINAL_DECRYPT = KmsResponse.decrypt


def _port_of(response: KmsResponse) -> int | None:
    host = str(response.headers.get("Host", ""))
    _, _, port = host.rpartition(":")
    return int(port) if port.isdigit() else None


def _patched_decrypt(response: KmsResponse) -> str:
    server = _HONOURING.get(_port_of(response) or -1)
    if server is None:
        return _ORIGINAL_DECRYPT(response)
    return server._decrypt(_ORIGINAL_DECRYPT, response)


def _install(port: int, server: RecipientKmsServer) -> None:
    _HONOURING[port] = server
    KmsResponse.decrypt = _patched_decrypt  # type: ignore[method-assign]


def _uninstall(port: int) -> None:
    _HONOURING.pop(port, None)
    if not _HONOURING:
        KmsResponse.decrypt = _ORIGINAL_DECRYPT  # type: ignore[method-assign]

"""Opening the CMS EnvelopedData that KMS returns as `CiphertextForRecipient` (RFC 5652).

Hazardous layer. KMS encrypts the plaintext for the enclave's ephemeral RSA key as a BER-encoded
ContentInfo (indefinite lengths allowed) of type envelopedData holding one KeyTransRecipientInfo
(recipient identified by subjectKeyIdentifier, key encrypted with RSAES-OAEP, SHA-256 and MGF1
SHA-256) and the content encrypted with AES-256-CBC (IV in the algorithm parameters, PKCS#7 padding),
the encrypted content possibly split into several octet-string chunks. asn1crypto parses the BER;
cryptography does the RSA and AES work. The plaintext is returned as a `bytearray` the caller wipes.

Errors never carry plaintext, content keys or the ciphertext itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from asn1crypto import cms as asn1_cms
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import padding as sym_padding
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from enclave.errors import KeyLoadError

__all__ = ["CmsError", "Envelope", "open_enveloped_data", "parse_enveloped_data"]

_MAX_CMS_BYTES = 64 * 1024
_AES_BLOCK_BITS = 128


class CmsError(KeyLoadError):
    """`CiphertextForRecipient` is not the EnvelopedData we expect, or it does not decrypt."""


def _check_oaep_sha256(algorithm: asn1_cms.KeyEncryptionAlgorithm) -> None:
    name = algorithm["algorithm"].native
    if name != "rsaes_oaep":
        raise CmsError(f"recipient key encryption is {name}, expected rsaes_oaep")
    params = algorithm["parameters"]
    # Absent OAEP parameters mean SHA-1 (RFC 4055), which KMS never uses for RSAES_OAEP_SHA_256.
    hash_name = params["hash_algorithm"]["algorithm"].native
    mgf = params["mask_gen_algorithm"]
    mgf_hash = mgf["parameters"]["algorithm"].native
    if hash_name != "sha256" or mgf["algorithm"].native != "mgf1" or mgf_hash != "sha256":
        raise CmsError(f"recipient OAEP uses {hash_name}/MGF1-{mgf_hash}, expected sha256/sha256")


@dataclass(frozen=True)
class Envelope:
    """The parts of a parsed EnvelopedData: encrypted content keys (one per recipient), IV, content."""

    encrypted_keys: tuple[bytes, ...]
    iv: bytes
    ciphertext: bytes


def parse_enveloped_data(data: bytes) -> Envelope:
    """Parse (BER or DER) and check algorithms; no decryption.

    Raises:
        CmsError: not an EnvelopedData of RSAES-OAEP-SHA256 recipients and AES-256-CBC content.
    """
    if not data:
        raise CmsError("CiphertextForRecipient is empty")
    if len(data) > _MAX_CMS_BYTES:
        raise CmsError(f"CiphertextForRecipient of {len(data)} bytes is larger than expected")
    try:
        info = asn1_cms.ContentInfo.load(bytes(data))
        content_type = info["content_type"].native
        if content_type != "enveloped_data":
            raise CmsError(f"CMS content type is {content_type}, expected enveloped_data")
        enveloped = info["content"]
        ktris = [ri.chosen for ri in enveloped["recipient_infos"] if ri.name == "ktri"]
        if not ktris:
            raise CmsError("no KeyTransRecipientInfo among the recipients")
        for ktri in ktris:
            _check_oaep_sha256(ktri["key_encryption_algorithm"])
        encrypted_keys = tuple(ktri["encrypted_key"].native for ktri in ktris)
        eci = enveloped["encrypted_content_info"]
        if eci["content_type"].native != "data":
            raise CmsError(f"encrypted content type is {eci['content_type'].native}, expected data")
        algorithm = eci["content_encryption_algorithm"]
        if algorithm["algorithm"].native != "aes256_cbc":
            raise CmsError(
                f"content encryption is {algorithm['algorithm'].native}, expected aes256_cbc"
            )
        iv = algorithm.encryption_iv
        ciphertext = eci["encrypted_content"].native
    except CmsError:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        # asn1crypto's messages may quote input bytes; name the failure, not the data.
        raise CmsError(
            f"CiphertextForRecipient is not a well-formed CMS EnvelopedData ({type(e).__name__})"
        ) from None
    if not isinstance(ciphertext, bytes) or not ciphertext or len(ciphertext) % 16:
        raise CmsError("encrypted content is missing or not a whole number of AES blocks")
    if not isinstance(iv, bytes) or len(iv) != 16:
        raise CmsError("AES-256-CBC IV is not 16 bytes")
    return Envelope(encrypted_keys=encrypted_keys, iv=iv, ciphertext=ciphertext)


def _unwrap_content_key(
    encrypted_keys: tuple[bytes, ...], private_key: rsa.RSAPrivateKey
) -> bytearray:
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    for encrypted_key in encrypted_keys:
        try:
            return bytearray(private_key.decrypt(encrypted_key, oaep))
        except ValueError:
            continue  # another recipient's key
    raise CmsError("no recipient's encrypted key opens with the enclave's key")


def open_enveloped_data(data: bytes, private_key: rsa.RSAPrivateKey) -> bytearray:
    """The plaintext inside a CMS EnvelopedData addressed to `private_key`.

    Raises:
        CmsError: not an EnvelopedData, algorithms other than RSAES-OAEP-SHA256 and AES-256-CBC,
            or the key / content does not decrypt.
    """
    envelope = parse_enveloped_data(data)
    content_key = _unwrap_content_key(envelope.encrypted_keys, private_key)
    if len(content_key) != 32:
        content_key[:] = bytes(len(content_key))
        raise CmsError(f"content key is {len(content_key)} bytes, expected 32 for AES-256")
    try:
        decryptor = Cipher(algorithms.AES(bytes(content_key)), modes.CBC(envelope.iv)).decryptor()
        padded = bytearray(decryptor.update(envelope.ciphertext) + decryptor.finalize())
        unpadder = sym_padding.PKCS7(_AES_BLOCK_BITS).unpadder()
        plaintext = bytearray(unpadder.update(bytes(padded)) + unpadder.finalize())
    except ValueError:
        raise CmsError("encrypted content does not decrypt (bad padding)") from None
    finally:
        content_key[:] = bytes(len(content_key))
    padded[:] = bytes(len(padded))
    return plaintext

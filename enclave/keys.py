"""The signer's secp256k1 key, held in memory only, and the development key-file loader.

`SigningKey` wraps libsecp256k1 (through coincurve). It exposes the public key, the EVM address and
`sign_digest`; nothing in it prints, pickles or compares the secret. Production keys come from KMS
(`enclave.kms.load_kms_key`); `load_dev_key` reads a hex file and marks the key `KeyOrigin.DEV`, which a
production policy refuses at start.
"""

from __future__ import annotations

import enum
import os
from pathlib import Path
from typing import Any

import coincurve

from enclave._keccak import keccak256
from enclave.errors import KeyLoadError
from enclave.presign import PresignPool

__all__ = ["KeyOrigin", "SigningKey", "checksum_address", "load_dev_key"]

_DEV_KEY_MAX_FILE = 4096  # a hex key with whitespace is ~66 bytes; refuse to slurp anything big


class KeyOrigin(enum.Enum):
    """Where a key came from; policy uses it (production refuses `DEV`)."""

    DEV = "dev"
    KMS = "kms"


def checksum_address(address: bytes) -> str:
    """EIP-55 mixed-case hex of a 20-byte address."""
    if len(address) != 20:
        raise ValueError(f"an EVM address is 20 bytes (got {len(address)})")
    lower = address.hex()
    nibbles = keccak256(lower.encode("ascii")).hex()
    return "0x" + "".join(
        c.upper() if c.isalpha() and int(n, 16) >= 8 else c
        for c, n in zip(lower, nibbles[:40], strict=True)
    )


class SigningKey:
    """A secp256k1 private key in memory; signs 32-byte digests.

    Args:
        secret: the 32-byte big-endian scalar. Callers should drop their copy once the key is built.
        origin: where it came from (`KeyOrigin.DEV` or `KeyOrigin.KMS`).

    Raises:
        KeyLoadError: the secret is not a valid secp256k1 scalar (message carries no key material).
    """

    __slots__ = (
        "_key", "_pool", "_secret", "_sign", "address", "address_bytes", "origin", "public_key"
    )

    def __init__(self, secret: bytes | bytearray, *, origin: KeyOrigin) -> None:
        if not isinstance(origin, KeyOrigin):
            raise TypeError("origin must be a KeyOrigin")
        if len(secret) != 32:
            raise KeyLoadError(f"a secp256k1 secret is 32 bytes (got {len(secret)})")
        try:
            key = coincurve.PrivateKey(bytes(secret))
        except ValueError:
            # `from None`: the library's exception is not ours to vouch for; keep secrets out of chains.
            raise KeyLoadError("secret is not a valid secp256k1 scalar (0 < k < n)") from None
        self._key = key
        self._sign = key.sign_recoverable
        self._secret = key.secret  # the library's own bytes, not a copy: the presigned path's tweak
        self._pool: PresignPool | None = None
        self.origin = origin
        #: Uncompressed SEC1 public key, 65 bytes (0x04 || X || Y).
        self.public_key: bytes = key.public_key.format(compressed=False)
        #: The EVM address: last 20 bytes of keccak-256(X || Y).
        self.address_bytes: bytes = keccak256(self.public_key[1:])[12:]
        #: EIP-55 checksummed form of `address_bytes`.
        self.address: str = checksum_address(self.address_bytes)

    def sign_digest(self, digest: bytes | bytearray | memoryview) -> bytes:
        """Sign a 32-byte digest: 65 bytes r || s || v, v the y-parity (0 or 1), s low (EIP-2).

        With a presignature pool attached, one presignature is spent (random k, see
        `enclave.presign`); without one, or when the pool is empty, libsecp256k1's deterministic
        RFC 6979 signature.

        Raises:
            ValueError: digest is not 32 bytes (caller misuse; the wire layer checks lengths first).
        """
        if type(digest) is not bytes:
            digest = bytes(digest)
        pool = self._pool
        if pool is not None:
            sig = pool.sign(self._secret, digest)
            if sig is not None:
                return sig
        return self._sign(digest, hasher=None)

    def use_presignatures(self, pool: PresignPool | None) -> None:
        """Sign through `pool` from now on (None: deterministic RFC 6979 signatures only)."""
        self._pool = pool

    @property
    def presign_pool(self) -> PresignPool | None:
        """The attached presignature pool, if any."""
        return self._pool

    def __repr__(self) -> str:
        return f"SigningKey(address={self.address}, origin={self.origin.value})"

    __str__ = __repr__

    def __reduce__(self) -> tuple[Any, ...]:
        raise TypeError(
            "SigningKey cannot be pickled or copied: keys stay in this process's memory"
        )

    def __copy__(self) -> SigningKey:
        raise TypeError("SigningKey cannot be copied")

    def __deepcopy__(self, memo: object) -> SigningKey:
        raise TypeError("SigningKey cannot be copied")


def load_dev_key(path: str | os.PathLike[str]) -> SigningKey:
    """Load a development key: a file holding 64 hex digits (optional 0x, surrounding whitespace).

    Raises:
        KeyLoadError: unreadable file, wrong length, not hex, or not a valid scalar. Messages give
            the path and sizes, never the file's content.
    """
    p = Path(path)
    try:
        with p.open("rb") as f:
            raw = f.read(_DEV_KEY_MAX_FILE + 1)
    except OSError as e:
        raise KeyLoadError(
            f"dev key file {p}: cannot read ({e.strerror or type(e).__name__})"
        ) from None
    if len(raw) > _DEV_KEY_MAX_FILE:
        raise KeyLoadError(f"dev key file {p}: larger than {_DEV_KEY_MAX_FILE} bytes")
    text = raw.strip()
    if text[:2] in (b"0x", b"0X"):
        text = text[2:]
    if len(text) != 64:
        raise KeyLoadError(f"dev key file {p}: expected 64 hex digits (got {len(text)} characters)")
    try:
        secret = bytes.fromhex(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise KeyLoadError(f"dev key file {p}: not hexadecimal") from None
    try:
        return SigningKey(secret, origin=KeyOrigin.DEV)
    except KeyLoadError as e:
        raise KeyLoadError(f"dev key file {p}: {e}") from None

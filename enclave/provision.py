"""Run-time provisioning of a production enclave's KMS key: one message from the parent instance.

A production image is the same for every fund: one published measurement, which each fund pins in
its own KMS key policy (`kms:RecipientAttestation:PCR*`). What differs per fund or per hour comes
after boot, from the parent over vsock:

- the KMS ciphertext of the signing key (safe to cross the parent: only an enclave whose
  attestation satisfies the key policy gets it re-encrypted to itself);
- AWS credentials of the parent's instance role (short-lived; an enclave has no instance metadata
  service, so they can only come from the parent, and they must never be baked into an image);
- optionally the KMS key id and encryption context (a key id baked into the image wins: see
  `enclave serve --kms-key-id`).

What the parent cannot choose is baked into the image and covered by PCR2: the region, the KMS
endpoint (TLS to its real host name, so the parent only ever relays ciphertext) and the policy.

Wire format (both directions): a 4-byte big-endian length, then one CBOR map.
Request: `{"v": 1, "blob": bytes, "aws": {"access_key_id": str, "secret_access_key": str,
"session_token": str}?, "key_id": str?, "context": {str: str}?}`.
Answer: `{"ok": true, "address": "0x..."}` or `{"ok": false, "error": str}`. A refused attempt
loses nothing: the enclave keeps listening until a key loads.

Unless the image pins the KMS key id, a parent could provision a key of its own. So once a KMS key
is loaded, `bind_key` extends PCR16 with its 20-byte EVM address and locks it: every later
attestation document of this enclave then says which key it signs with
(PCR16 = SHA-384(48 zero bytes || address), `expected_key_pcr`), and nothing can change it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import socket
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from enclave import transport
from enclave.errors import EnclaveError, KeyLoadError, TransportError
from enclave.keys import SigningKey
from enclave.nsm import Nsm

__all__ = [
    "KEY_PCR",
    "MAX_MESSAGE",
    "Provision",
    "ProvisionError",
    "ProvisionRefused",
    "bind_key",
    "decode_provision",
    "encode_provision",
    "expected_key_pcr",
    "receive_key",
    "send_provision",
]

logger = logging.getLogger(__name__)

VERSION = 1
#: A KMS blob is ~200 bytes and session credentials ~1.5 KiB; anything this large is not a message.
MAX_MESSAGE = 16 * 1024
_LENGTH = struct.Struct(">I")
#: The first PCR an enclave may extend (16..31); Sentinel records its signing key's address there.
KEY_PCR = 16
_AWS_FIELDS = ("access_key_id", "secret_access_key", "session_token")
_FIELDS = {"v", "blob", "aws", "key_id", "context"}


class ProvisionError(KeyLoadError):
    """A provisioning message is malformed (the message names the field, never its value)."""


class ProvisionRefused(KeyLoadError):
    """The enclave answered a provisioning attempt with an error (its diagnostics, no secrets)."""

    exit_code = 1


@dataclass(frozen=True, repr=False)
class Provision:
    """What the parent supplies at run time; `repr` never shows the credentials."""

    blob: bytes
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    key_id: str | None = None
    encryption_context: Mapping[str, str] | None = None

    def __repr__(self) -> str:
        creds = "set" if self.access_key_id else "none"
        return (
            f"Provision(blob=<{len(self.blob)} bytes>, key_id={self.key_id!r}, "
            f"credentials=<{creds}>)"
        )

    __str__ = __repr__


def encode_provision(p: Provision) -> bytes:
    """The framed message for `p`."""
    msg: dict[str, Any] = {"v": VERSION, "blob": bytes(p.blob)}
    if p.access_key_id is not None:
        msg["aws"] = {
            k: v
            for k, v in zip(
                _AWS_FIELDS, (p.access_key_id, p.secret_access_key, p.session_token), strict=True
            )
            if v is not None
        }
    if p.key_id is not None:
        msg["key_id"] = p.key_id
    if p.encryption_context:
        msg["context"] = dict(p.encryption_context)
    body = cbor2.dumps(msg)
    return _LENGTH.pack(len(body)) + body


def _text(value: object, field: str) -> str:
    if not isinstance(value, str) or not value or len(value) > 4096:
        raise ProvisionError(f"provisioning message: {field} must be a non-empty text string")
    return value


def decode_provision(body: bytes) -> Provision:
    """Parse one message body (without its length prefix).

    Raises:
        ProvisionError: not CBOR, not a map, an unknown or mistyped field, an unsupported version.
    """
    try:
        msg = cbor2.loads(body)
    except (cbor2.CBORError, ValueError, TypeError, RecursionError):
        raise ProvisionError("provisioning message is not one CBOR item") from None
    if not isinstance(msg, dict):
        raise ProvisionError(f"provisioning message: expected a map, got {type(msg).__name__}")
    unknown = sorted(str(k) for k in msg if k not in _FIELDS)
    if unknown:
        raise ProvisionError(f"provisioning message: unknown fields {', '.join(unknown)}")
    if msg.get("v") != VERSION:
        raise ProvisionError(f"provisioning message: version {msg.get('v')!r}, expected {VERSION}")
    blob = msg.get("blob")
    if not isinstance(blob, bytes) or not blob:
        raise ProvisionError("provisioning message: blob must be a non-empty byte string")
    creds: dict[str, str] = {}
    if "aws" in msg:
        aws = msg["aws"]
        if not isinstance(aws, dict) or set(aws) - set(_AWS_FIELDS):
            raise ProvisionError(
                "provisioning message: aws must be a map of access_key_id, secret_access_key, "
                "session_token"
            )
        creds = {k: _text(aws[k], f"aws.{k}") for k in aws}
        if "access_key_id" not in creds or "secret_access_key" not in creds:
            raise ProvisionError(
                "provisioning message: aws needs access_key_id and secret_access_key"
            )
    key_id = _text(msg["key_id"], "key_id") if "key_id" in msg else None
    context = None
    if "context" in msg:
        ctx = msg["context"]
        if not isinstance(ctx, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in ctx.items()
        ):
            raise ProvisionError("provisioning message: context must map text to text")
        context = dict(ctx)
    return Provision(
        blob,
        creds.get("access_key_id"),
        creds.get("secret_access_key"),
        creds.get("session_token"),
        key_id,
        context,
    )


def _recv_exact(conn: socket.socket, n: int, deadline: float | None) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            # One deadline for the whole message: a per-read timeout let a sender trickling a
            # byte at a time hold the listener (and the enclave's start) indefinitely.
            left = deadline - time.monotonic()
            if left <= 0:
                raise ProvisionError(f"message not complete in time ({len(buf)} of {n} bytes)")
            conn.settimeout(left)
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ProvisionError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def _read_message(conn: socket.socket, timeout: float | None = None) -> bytes:
    """One length-prefixed message, all of it within `timeout` seconds (None: the socket's own)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    (n,) = _LENGTH.unpack(_recv_exact(conn, _LENGTH.size, deadline))
    if not 0 < n <= MAX_MESSAGE:
        raise ProvisionError(f"provisioning message of {n} bytes (expected 1..{MAX_MESSAGE})")
    return _recv_exact(conn, n, deadline)


def _answer(conn: socket.socket, answer: dict[str, Any]) -> None:
    body = cbor2.dumps(answer)
    with contextlib.suppress(OSError):
        conn.sendall(_LENGTH.pack(len(body)) + body)


def receive_key(
    address: transport.Address | str,
    load: Callable[[Provision], SigningKey],
    *,
    read_timeout: float = 30.0,
    on_listening: Callable[[transport.Address], None] | None = None,
) -> SigningKey:
    """Listen on `address` until a parent sends a message from which `load` builds a key.

    Each attempt gets an answer; a malformed message or a refused load (KMS, policy) is answered
    with its diagnostics and the enclave keeps listening, so the parent can retry. The whole
    message must arrive within `read_timeout` seconds of the connection's acceptance.

    Raises:
        TransportError: cannot listen on `address`.
    """
    if isinstance(address, str):
        address = transport.parse_address(address)
    listener = transport.listen(address, backlog=1)
    try:
        bound = transport.listening_address(listener, address)
        logger.info("waiting for the parent's key provisioning on %s", bound)
        if on_listening is not None:
            on_listening(bound)
        while True:
            try:
                conn = transport.accept(listener, address)
            except OSError as e:
                raise TransportError(f"{bound}: accept failed ({e.strerror or e})") from e
            with conn:
                conn.settimeout(read_timeout)
                try:
                    message = _read_message(conn, read_timeout)
                    conn.settimeout(read_timeout)  # for the answer
                    key = load(decode_provision(message))
                except (OSError, EnclaveError) as e:
                    text = e.diagnostics() if isinstance(e, EnclaveError) else f"read failed: {e}"
                    logger.warning("key provisioning refused: %s", text)
                    _answer(conn, {"ok": False, "error": text})
                    continue
                _answer(conn, {"ok": True, "address": key.address})
                return key
    finally:
        listener.close()


def send_provision(
    address: transport.Address | str, provision: Provision, *, timeout: float = 120.0
) -> str:
    """Send `provision` to an enclave waiting in `receive_key`; returns the loaded key's address.

    Raises:
        TransportError: cannot connect, or the connection broke before an answer.
        ProvisionRefused: the enclave could not load the key (its diagnostics).
    """
    conn = transport.connect(address, timeout=timeout)
    with conn:
        conn.settimeout(timeout)
        try:
            conn.sendall(encode_provision(provision))
            answer = cbor2.loads(_read_message(conn))
        except (OSError, cbor2.CBORError, ValueError, ProvisionError) as e:
            raise TransportError(f"{address}: no provisioning answer ({e})") from None
    if not isinstance(answer, dict):
        raise TransportError(f"{address}: provisioning answer is not a map")
    if answer.get("ok") is True:
        return str(answer.get("address"))
    raise ProvisionRefused(f"the enclave refused the key: {answer.get('error')}")


def expected_key_pcr(address: bytes) -> bytes:
    """PCR16 of an enclave that loaded the key of the 20-byte EVM `address` (`bind_key`)."""
    if len(address) != 20:
        raise ValueError(f"an EVM address is 20 bytes (got {len(address)})")
    return hashlib.sha384(bytes(48) + address).digest()


def bind_key(nsm: Nsm, key: SigningKey) -> bytes:
    """Extend PCR16 with the key's address and lock it; returns the PCR's value.

    Raises:
        NsmError: the module refused (e.g. PCR16 already locked: a key was bound before).
    """
    value = nsm.extend_pcr(KEY_PCR, key.address_bytes)
    nsm.lock_pcr(KEY_PCR)
    logger.info("PCR%d binds the signing key %s", KEY_PCR, key.address)
    return value

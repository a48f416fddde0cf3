"""Parse an AWS Nitro Enclaves attestation document into a frozen, typed model.

The document is a COSE_Sign1 structure (RFC 9052 §4.2), untagged or with CBOR tag 18, whose payload
is a CBOR map with exactly the fields AWS documents (aws-nitro-enclaves-nsm-api,
docs/attestation_process.md)::

    AttestationDocument = {
        module_id: text, digest: "SHA384", timestamp: uint (ms since the epoch),
        pcrs: { + uint(0..31) => bstr .size 48 }, certificate: bstr (DER), cabundle: [+ bstr],
        ? public_key: bstr / nil, ? user_data: bstr / nil, ? nonce: bstr / nil,
    }

Parsing checks shape only; nothing here says the document can be trusted (that is `verifier.py`).
Input is hostile: sizes are bounded by `Limits`, and every decoding failure becomes
`MalformedAttestation` naming the field.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

import cbor2

from verify.attestation.cbor import CborError, decode_strict
from verify.attestation.errors import MalformedAttestation

__all__ = [
    "ALG_ES384",
    "AttestationDocument",
    "CoseSign1",
    "Limits",
    "SignedAttestation",
    "decode_document_text",
    "parse_cose_sign1",
    "parse_document",
    "parse_payload",
]

#: COSE algorithm identifier of ECDSA with SHA-384 (RFC 9053 §2.1).
ALG_ES384 = -35
#: COSE header label of the algorithm (RFC 9052 §3.1).
_HEADER_ALG = 1
#: COSE header label of the critical-headers list (RFC 9052 §3.1).
_HEADER_CRIT = 2
#: CBOR tag of COSE_Sign1 (RFC 9052 §2).
_TAG_COSE_SIGN1 = 18
_PCR_LENGTH = 48  # SHA-384, the only digest Nitro uses
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# AWS allows any uint64; Python datetimes end in year 9999, and no real document comes near it.
_MAX_TIMESTAMP_MS = int((datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC) - _EPOCH).total_seconds() * 1000)


@dataclass(frozen=True)
class Limits:
    """Bounds applied before and while decoding; the defaults are AWS's documented maxima."""

    max_document: int = 64 * 1024  # bytes; real documents are ~5 KiB
    max_certificate: int = 1024  # bytes, per certificate (AWS: cert = bstr .size (1..1024))
    max_cabundle: int = 16  # certificates
    max_user_field: int = 1024  # bytes of public_key, user_data, nonce
    max_pcrs: int = 32  # indices 0..31


@dataclass(frozen=True)
class CoseSign1:
    """The four members of a COSE_Sign1, with the protected header kept as its signed bytes."""

    protected: bytes
    unprotected: Mapping[Any, Any]
    payload: bytes = field(repr=False)
    signature: bytes = field(repr=False)
    alg: int | None = None  # from the protected header; None when it names none

    def sig_structure(self) -> bytes:
        """The bytes the signature covers: Sig_structure for "Signature1" with empty external_aad."""
        return cbor2.dumps(["Signature1", self.protected, b"", self.payload])


@dataclass(frozen=True)
class AttestationDocument:
    """The payload of an attestation document, fields exactly as AWS names them."""

    module_id: str
    digest: str
    timestamp_ms: int
    pcrs: Mapping[int, bytes]
    certificate: bytes = field(repr=False)
    cabundle: tuple[bytes, ...] = field(repr=False)
    public_key: bytes | None = None
    user_data: bytes | None = None
    nonce: bytes | None = None

    @property
    def timestamp(self) -> datetime:
        """The document's creation time, UTC, with millisecond precision."""
        return _EPOCH + timedelta(milliseconds=self.timestamp_ms)


@dataclass(frozen=True)
class SignedAttestation:
    """A parsed document: the COSE envelope and its decoded payload."""

    cose: CoseSign1
    document: AttestationDocument

    @property
    def alg(self) -> int | None:
        return self.cose.alg


def decode_document_text(data: bytes) -> bytes:
    """Raw CBOR as is; otherwise the text is taken as (URL-safe or standard) base64 of the CBOR.

    Any input whose first byte is not ASCII is raw CBOR (base64 text is ASCII; a COSE_Sign1 starts
    with an array or tag head, 0x80..0xdf), so every re-encoding of a document reaches the one
    strict decoder and is judged there, the same in the CLI and the library.

    Raises:
        MalformedAttestation: ASCII input that is not valid base64.
    """
    if not data or data[0] >= 0x80:
        return data
    text = b"".join(data.split())
    text += b"=" * (-len(text) % 4)  # tolerate unpadded base64
    try:
        return base64.b64decode(text.replace(b"-", b"+").replace(b"_", b"/"), validate=True)
    except (binascii.Error, ValueError) as e:
        raise MalformedAttestation("neither raw CBOR nor base64 text", field="document") from e


def _decode_one(data: bytes, field: str, *, tags: tuple[int, ...] = ()) -> Any:
    """Decode exactly one CBOR item with the strict decoder (verify/attestation/cbor.py)."""
    try:
        return decode_strict(data, tags=tags)
    except CborError as e:
        message = str(e)
        if "trailing bytes" in message:
            raise MalformedAttestation(message, field=field) from e
        raise MalformedAttestation(f"not valid CBOR: {message}", field=field) from e


def _bstr(value: Any, field: str, *, min_len: int, max_len: int) -> bytes:
    if not isinstance(value, bytes):
        raise MalformedAttestation(f"expected a byte string, got {type(value).__name__}", field=field)
    if not min_len <= len(value) <= max_len:
        raise MalformedAttestation(
            f"length {len(value)} outside {min_len}..{max_len} bytes", field=field
        )
    return value


def _optional_bstr(payload: Mapping[Any, Any], field: str, max_len: int) -> bytes | None:
    value = payload.get(field)
    if value is None:
        return None
    return _bstr(value, field, min_len=0, max_len=max_len)


_FIELDS = frozenset(
    {"module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle"}
    | {"public_key", "user_data", "nonce"}
)
_REQUIRED = ("module_id", "digest", "timestamp", "pcrs", "certificate", "cabundle")


def parse_payload(raw: bytes, *, limits: Limits | None = None) -> AttestationDocument:
    """Decode a COSE payload into the attestation document's fields, checking each type and size.

    Raises:
        MalformedAttestation: a field is missing, unknown, or of the wrong type or size.
    """
    limits = limits or Limits()
    payload = _decode_one(raw, "payload")
    if not isinstance(payload, dict):
        raise MalformedAttestation(f"expected a map, got {type(payload).__name__}", field="payload")
    unknown = sorted(repr(k) for k in payload if k not in _FIELDS)
    if unknown:
        raise MalformedAttestation(f"unknown fields {', '.join(unknown)}", field="payload")
    missing = [k for k in _REQUIRED if k not in payload]
    if missing:
        raise MalformedAttestation(f"missing fields {', '.join(missing)}", field="payload")

    module_id = payload["module_id"]
    if not isinstance(module_id, str) or not module_id:
        raise MalformedAttestation("expected non-empty text", field="module_id")
    digest = payload["digest"]
    if digest != "SHA384":
        raise MalformedAttestation(f"got {digest!r}, expected 'SHA384'", field="digest")
    timestamp = payload["timestamp"]
    # bool is an int in Python; CBOR true/false must not pass as a time.
    if type(timestamp) is not int or not 0 < timestamp <= _MAX_TIMESTAMP_MS:
        raise MalformedAttestation(f"expected a positive uint, got {timestamp!r}", field="timestamp")

    pcrs_in = payload["pcrs"]
    if not isinstance(pcrs_in, dict) or not 1 <= len(pcrs_in) <= limits.max_pcrs:
        raise MalformedAttestation(f"expected a map of 1..{limits.max_pcrs} entries", field="pcrs")
    pcrs: dict[int, bytes] = {}
    for index, value in pcrs_in.items():
        if type(index) is not int or not 0 <= index < limits.max_pcrs:
            raise MalformedAttestation(f"index {index!r} not in 0..{limits.max_pcrs - 1}", field="pcrs")
        pcrs[index] = _bstr(value, f"pcrs[{index}]", min_len=_PCR_LENGTH, max_len=_PCR_LENGTH)

    certificate = _bstr(
        payload["certificate"], "certificate", min_len=1, max_len=limits.max_certificate
    )
    cabundle_in = payload["cabundle"]
    if not isinstance(cabundle_in, list) or not 1 <= len(cabundle_in) <= limits.max_cabundle:
        raise MalformedAttestation(
            f"expected an array of 1..{limits.max_cabundle} certificates", field="cabundle"
        )
    cabundle = tuple(
        _bstr(c, f"cabundle[{i}]", min_len=1, max_len=limits.max_certificate)
        for i, c in enumerate(cabundle_in)
    )
    return AttestationDocument(
        module_id=module_id,
        digest=digest,
        timestamp_ms=timestamp,
        pcrs=MappingProxyType(dict(sorted(pcrs.items()))),
        certificate=certificate,
        cabundle=cabundle,
        public_key=_optional_bstr(payload, "public_key", limits.max_user_field),
        user_data=_optional_bstr(payload, "user_data", limits.max_user_field),
        nonce=_optional_bstr(payload, "nonce", limits.max_user_field),
    )


def parse_cose_sign1(data: bytes, *, limits: Limits | None = None) -> CoseSign1:
    """Decode the COSE_Sign1 envelope (untagged or tag 18) and its protected header.

    Raises:
        MalformedAttestation: not CBOR, not a COSE_Sign1, or a malformed protected header.
    """
    limits = limits or Limits()
    if not data:
        raise MalformedAttestation("empty input", field="document")
    if len(data) > limits.max_document:
        raise MalformedAttestation(
            f"{len(data)} bytes, more than the {limits.max_document}-byte limit", field="document"
        )
    item = _decode_one(data, "COSE_Sign1", tags=(_TAG_COSE_SIGN1,))
    if isinstance(item, cbor2.CBORTag):
        item = item.value
    if not isinstance(item, list) or len(item) != 4:
        raise MalformedAttestation("expected an array of 4 members", field="COSE_Sign1")
    protected, unprotected, payload, signature = item
    if not isinstance(protected, bytes):
        raise MalformedAttestation("protected header is not a byte string", field="COSE_Sign1")
    if not isinstance(unprotected, Mapping):
        raise MalformedAttestation("unprotected header is not a map", field="COSE_Sign1")
    if unprotected:
        # The NSM leaves it empty; anything there would be unauthenticated, so it is refused.
        raise MalformedAttestation("unprotected header is not empty", field="COSE_Sign1")
    if not isinstance(payload, bytes):
        # nil would mean a detached payload, which attestation documents never use.
        raise MalformedAttestation("payload is not a byte string", field="COSE_Sign1")
    if not isinstance(signature, bytes):
        raise MalformedAttestation("signature is not a byte string", field="COSE_Sign1")
    return CoseSign1(
        protected=protected,
        unprotected=MappingProxyType(dict(unprotected)),
        payload=payload,
        signature=signature,
        alg=_protected_alg(protected),
    )


def _protected_alg(protected: bytes) -> int | None:
    if not protected:
        return None
    header = _decode_one(protected, "protected header")
    if not isinstance(header, dict):
        raise MalformedAttestation("expected a map", field="protected header")
    alg = header.get(_HEADER_ALG)
    if alg is not None and type(alg) is not int:
        raise MalformedAttestation(f"alg is {alg!r}, not an integer", field="protected header")
    if _HEADER_CRIT in header:
        _check_crit(header[_HEADER_CRIT], header)
    return alg


def _check_crit(crit: Any, header: Mapping[Any, Any]) -> None:
    # RFC 9052 §3.1: a recipient must refuse a message whose crit names a label it does not
    # process. This verifier processes alg only, and alg may not be listed, so any crit is refused
    # with the reason spelled out.
    if not isinstance(crit, list) or not crit:
        raise MalformedAttestation("crit must be a non-empty array of labels", field="protected header")
    for label in crit:
        if type(label) not in (int, str):
            raise MalformedAttestation(f"crit label {label!r} is not int or text", field="protected header")
        if label not in header:
            raise MalformedAttestation(f"crit label {label!r} is absent from the header", field="protected header")
    raise MalformedAttestation(
        f"crit names header labels this verifier does not process: {crit!r}", field="protected header"
    )


def parse_document(data: bytes, *, limits: Limits | None = None) -> SignedAttestation:
    """Parse raw COSE_Sign1 bytes (untagged or tag 18) into a `SignedAttestation`.

    Args:
        data: the document as the NSM returns it (raw CBOR, not base64).
        limits: size bounds; AWS's documented maxima by default.

    Raises:
        MalformedAttestation: the bytes are not a well-formed attestation document; names the field.
    """
    cose = parse_cose_sign1(data, limits=limits)
    return SignedAttestation(cose=cose, document=parse_payload(cose.payload, limits=limits))

"""The NSM request/response codec: pure functions from records to the exact CBOR bytes and back.

Hazardous layer: this is the byte format shared by the kernel driver (/dev/nsm carries it unchanged
between user space and the module) and our emulator. It follows the NSM API's serde encoding of its
`Request`/`Response` enums (externally tagged, as serde_cbor writes them):

- a variant without fields is a CBOR text string: `"DescribeNSM"`, `"GetRandom"`, `"LockPCR"`;
- a variant with fields is a one-entry map `{variant: {field: value, ...}}`, fields in declaration
  order, text keys, integers in their shortest form, byte fields as byte strings, `None` as null;
- `Error(code)` is `{"Error": "<ErrorCode name>"}`; sets (locked PCRs) are arrays in ascending order.

Requests are limited to 0x1000 bytes and responses to 0x3000 bytes (the driver's buffers).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import cbor2

from enclave.nsm.errors import NsmProtocolError

__all__ = [
    "ERROR_CODES",
    "REQUEST_MAX_SIZE",
    "RESPONSE_MAX_SIZE",
    "Attestation",
    "AttestationResponse",
    "DescribeNsm",
    "DescribeNsmResponse",
    "DescribePcr",
    "DescribePcrResponse",
    "ErrorResponse",
    "ExtendPcr",
    "ExtendPcrResponse",
    "GetRandom",
    "GetRandomResponse",
    "LockPcr",
    "LockPcrResponse",
    "LockPcrs",
    "LockPcrsResponse",
    "Request",
    "Response",
    "decode_request",
    "decode_response",
    "encode_request",
    "encode_response",
]

REQUEST_MAX_SIZE = 0x1000
RESPONSE_MAX_SIZE = 0x3000

# The module's ErrorCode enum, in declaration order.
ERROR_CODES = (
    "Success",
    "InvalidArgument",
    "InvalidIndex",
    "InvalidResponse",
    "ReadOnlyIndex",
    "InvalidOperation",
    "BufferTooSmall",
    "InputTooLarge",
    "InternalError",
)

DIGESTS = ("SHA256", "SHA384", "SHA512")

_U16_MAX = 0xFFFF


# --- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DescribePcr:
    index: int


@dataclass(frozen=True)
class ExtendPcr:
    index: int
    data: bytes


@dataclass(frozen=True)
class LockPcr:
    index: int


@dataclass(frozen=True)
class LockPcrs:
    range: int


@dataclass(frozen=True)
class DescribeNsm:
    pass


@dataclass(frozen=True)
class Attestation:
    user_data: bytes | None = None
    nonce: bytes | None = None
    public_key: bytes | None = None


@dataclass(frozen=True)
class GetRandom:
    pass


Request = DescribePcr | ExtendPcr | LockPcr | LockPcrs | DescribeNsm | Attestation | GetRandom


# --- responses --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DescribePcrResponse:
    lock: bool
    data: bytes


@dataclass(frozen=True)
class ExtendPcrResponse:
    data: bytes


@dataclass(frozen=True)
class LockPcrResponse:
    pass


@dataclass(frozen=True)
class LockPcrsResponse:
    pass


@dataclass(frozen=True)
class DescribeNsmResponse:
    version_major: int
    version_minor: int
    version_patch: int
    module_id: str
    max_pcrs: int
    locked_pcrs: frozenset[int]
    digest: str


@dataclass(frozen=True)
class AttestationResponse:
    document: bytes

    def __repr__(self) -> str:  # documents are large; keep logs readable
        return f"AttestationResponse(document=<{len(self.document)} bytes>)"


@dataclass(frozen=True)
class GetRandomResponse:
    random: bytes

    def __repr__(self) -> str:  # random bytes may become key material: never show them
        return f"GetRandomResponse(random=<{len(self.random)} bytes>)"


@dataclass(frozen=True)
class ErrorResponse:
    code: str


Response = (
    DescribePcrResponse
    | ExtendPcrResponse
    | LockPcrResponse
    | LockPcrsResponse
    | DescribeNsmResponse
    | AttestationResponse
    | GetRandomResponse
    | ErrorResponse
)


# --- encoding ---------------------------------------------------------------------------------


def _u16(name: str, value: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _U16_MAX:
        raise ValueError(f"{name} must be an integer in 0..65535, got {value!r}")
    return value


def _opt_bytes(name: str, value: bytes | None) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, bytes | bytearray | memoryview):
        raise TypeError(f"{name} must be bytes or None, got {type(value).__name__}")
    return bytes(value)


def _request_obj(request: Request) -> object:
    if isinstance(request, DescribePcr):
        return {"DescribePCR": {"index": _u16("index", request.index)}}
    if isinstance(request, ExtendPcr):
        data = _opt_bytes("data", request.data)
        if data is None:
            raise TypeError("data must be bytes")
        return {"ExtendPCR": {"index": _u16("index", request.index), "data": data}}
    if isinstance(request, LockPcr):
        return {"LockPCR": {"index": _u16("index", request.index)}}
    if isinstance(request, LockPcrs):
        return {"LockPCRs": {"range": _u16("range", request.range)}}
    if isinstance(request, DescribeNsm):
        return "DescribeNSM"
    if isinstance(request, Attestation):
        return {
            "Attestation": {
                "user_data": _opt_bytes("user_data", request.user_data),
                "nonce": _opt_bytes("nonce", request.nonce),
                "public_key": _opt_bytes("public_key", request.public_key),
            }
        }
    if isinstance(request, GetRandom):
        return "GetRandom"
    raise TypeError(f"not an NSM request: {type(request).__name__}")


def encode_request(request: Request) -> bytes:
    """The exact CBOR bytes of `request` as the module expects them.

    Raises:
        ValueError, TypeError: a field is out of range or of the wrong type (caller misuse).
    """
    return cbor2.dumps(_request_obj(request))


def _response_obj(response: Response) -> object:
    if isinstance(response, DescribePcrResponse):
        return {"DescribePCR": {"lock": bool(response.lock), "data": bytes(response.data)}}
    if isinstance(response, ExtendPcrResponse):
        return {"ExtendPCR": {"data": bytes(response.data)}}
    if isinstance(response, LockPcrResponse):
        return "LockPCR"
    if isinstance(response, LockPcrsResponse):
        return "LockPCRs"
    if isinstance(response, DescribeNsmResponse):
        if response.digest not in DIGESTS:
            raise ValueError(f"digest must be one of {DIGESTS}, got {response.digest!r}")
        return {
            "DescribeNSM": {
                "version_major": _u16("version_major", response.version_major),
                "version_minor": _u16("version_minor", response.version_minor),
                "version_patch": _u16("version_patch", response.version_patch),
                "module_id": str(response.module_id),
                "max_pcrs": _u16("max_pcrs", response.max_pcrs),
                "locked_pcrs": sorted(_u16("locked_pcrs", i) for i in response.locked_pcrs),
                "digest": response.digest,
            }
        }
    if isinstance(response, AttestationResponse):
        return {"Attestation": {"document": bytes(response.document)}}
    if isinstance(response, GetRandomResponse):
        return {"GetRandom": {"random": bytes(response.random)}}
    if isinstance(response, ErrorResponse):
        if response.code not in ERROR_CODES:
            raise ValueError(f"unknown NSM error code {response.code!r}")
        return {"Error": response.code}
    raise TypeError(f"not an NSM response: {type(response).__name__}")


def encode_response(response: Response) -> bytes:
    """The exact CBOR bytes the module answers `response` with (used by the emulator)."""
    return cbor2.dumps(_response_obj(response))


# --- decoding ---------------------------------------------------------------------------------


def _loads(data: bytes, what: str, limit: int) -> object:
    if len(data) == 0:
        raise NsmProtocolError(f"empty {what}")
    if len(data) > limit:
        raise NsmProtocolError(f"{what} of {len(data)} bytes exceeds the {limit}-byte limit")
    fp = io.BytesIO(data)
    tags: list[int] = []

    def reject_tag(*args: object) -> object:
        # The protocol has no tags. cbor2's hook arguments changed across versions and it wraps what
        # a hook raises, so find the tag, remember it and fail below.
        tag = next((a for a in args if isinstance(a, cbor2.CBORTag)), None)
        tags.append(tag.tag if tag is not None else -1)
        raise ValueError("tag")

    try:
        obj = cbor2.CBORDecoder(fp, tag_hook=reject_tag).decode()
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError) as e:
        if tags:
            raise NsmProtocolError(f"unexpected CBOR tag {tags[0]}") from None
        raise NsmProtocolError(f"{what} is not valid CBOR: {type(e).__name__}") from e
    if fp.tell() != len(data):
        raise NsmProtocolError(f"{what} has {len(data) - fp.tell()} bytes after its CBOR value")
    return obj


def _split_variant(obj: object, what: str) -> tuple[str, object]:
    """(variant name, body) of an externally tagged enum value; body is None for unit variants."""
    if isinstance(obj, str):
        return obj, None
    if isinstance(obj, dict) and len(obj) == 1:
        ((name, body),) = obj.items()
        if isinstance(name, str):
            return name, body
    raise NsmProtocolError(f"{what} is not a variant name or a one-entry map")


def _fields(body: object, variant: str) -> dict[str, Any]:
    if not isinstance(body, dict) or not all(isinstance(k, str) for k in body):
        raise NsmProtocolError(f"{variant}: fields must be a map with text keys")
    return body


def _get(fields: dict[str, Any], variant: str, name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in fields:
        raise NsmProtocolError(f"{variant}: missing field {name!r}")
    value = fields[name]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise NsmProtocolError(f"{variant}.{name}: wrong type {type(value).__name__}")
    return value


def _get_u16(fields: dict[str, Any], variant: str, name: str) -> int:
    value = _get(fields, variant, name, int)
    if not 0 <= value <= _U16_MAX:
        raise NsmProtocolError(f"{variant}.{name}: {value} is not a u16")
    return int(value)


def _get_opt_bytes(fields: dict[str, Any], variant: str, name: str) -> bytes | None:
    # serde fills a missing Option field with None, so a missing key is accepted.
    value = fields.get(name)
    if value is None:
        return None
    if not isinstance(value, bytes):
        raise NsmProtocolError(f"{variant}.{name}: wrong type {type(value).__name__}")
    return value


_UNIT_REQUESTS: dict[str, Request] = {"DescribeNSM": DescribeNsm(), "GetRandom": GetRandom()}


def decode_request(data: bytes) -> Request:
    """Parse the CBOR bytes of a request (the module's, i.e. the emulator's, side).

    Raises:
        NsmProtocolError: not CBOR, an unknown operation, or a field missing or of the wrong type.
    """
    name, body = _split_variant(_loads(data, "request", REQUEST_MAX_SIZE), "request")
    if body is None:
        if name in _UNIT_REQUESTS:
            return _UNIT_REQUESTS[name]
        raise NsmProtocolError(f"unknown request {name[:40]!r}")
    fields = _fields(body, name)
    if name == "DescribePCR":
        return DescribePcr(_get_u16(fields, name, "index"))
    if name == "ExtendPCR":
        return ExtendPcr(_get_u16(fields, name, "index"), _get(fields, name, "data", bytes))
    if name == "LockPCR":
        return LockPcr(_get_u16(fields, name, "index"))
    if name == "LockPCRs":
        return LockPcrs(_get_u16(fields, name, "range"))
    if name == "Attestation":
        return Attestation(
            user_data=_get_opt_bytes(fields, name, "user_data"),
            nonce=_get_opt_bytes(fields, name, "nonce"),
            public_key=_get_opt_bytes(fields, name, "public_key"),
        )
    raise NsmProtocolError(f"unknown request {name[:40]!r}")


def decode_response(data: bytes) -> Response:
    """Parse the CBOR bytes the module answered with (the client's side).

    Raises:
        NsmProtocolError: not CBOR, an unknown variant, or a field missing or of the wrong type.
    """
    name, body = _split_variant(_loads(data, "response", RESPONSE_MAX_SIZE), "response")
    if body is None:
        if name == "LockPCR":
            return LockPcrResponse()
        if name == "LockPCRs":
            return LockPcrsResponse()
        raise NsmProtocolError(f"unknown response {name[:40]!r}")
    if name == "Error":
        if not isinstance(body, str) or body not in ERROR_CODES:
            raise NsmProtocolError("Error: unknown error code")
        return ErrorResponse(body)
    fields = _fields(body, name)
    if name == "DescribePCR":
        return DescribePcrResponse(
            lock=_get(fields, name, "lock", bool), data=_get(fields, name, "data", bytes)
        )
    if name == "ExtendPCR":
        return ExtendPcrResponse(_get(fields, name, "data", bytes))
    if name == "DescribeNSM":
        locked = _get(fields, name, "locked_pcrs", list)
        if not all(
            isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= _U16_MAX for i in locked
        ):
            raise NsmProtocolError("DescribeNSM.locked_pcrs: entries must be u16")
        digest = _get(fields, name, "digest", str)
        if digest not in DIGESTS:
            raise NsmProtocolError(f"DescribeNSM.digest: unknown digest {digest[:16]!r}")
        return DescribeNsmResponse(
            version_major=_get_u16(fields, name, "version_major"),
            version_minor=_get_u16(fields, name, "version_minor"),
            version_patch=_get_u16(fields, name, "version_patch"),
            module_id=_get(fields, name, "module_id", str),
            max_pcrs=_get_u16(fields, name, "max_pcrs"),
            locked_pcrs=frozenset(locked),
            digest=digest,
        )
    if name == "Attestation":
        return AttestationResponse(_get(fields, name, "document", bytes))
    if name == "GetRandom":
        return GetRandomResponse(_get(fields, name, "random", bytes))
    raise NsmProtocolError(f"unknown response {name[:40]!r}")

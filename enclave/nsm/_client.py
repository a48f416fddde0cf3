"""The `Nsm` operations expressed once over a byte round trip, shared by the device and the emulator.

Both implementations send the same CBOR request bytes and parse the same response bytes, so the
emulator exercises the very code that talks to /dev/nsm in production.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

from enclave.nsm import _codec as codec
from enclave.nsm.errors import NsmProtocolError, NsmRequestRejected

__all__ = ["CborNsm", "PcrState"]

_R = TypeVar("_R")

# A GetRandom answer carries at most this many bytes; get_random(n) asks repeatedly for more.
_MAX_RANDOM_ROUNDS = 4096


@dataclass(frozen=True)
class PcrState:
    """One PCR as DescribePCR reports it."""

    locked: bool
    value: bytes


class CborNsm:
    """Base of the NSM clients: subclasses provide `_roundtrip(request) -> response` bytes."""

    def _roundtrip(self, request: bytes) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def _call(self, request: codec.Request, operation: str, expected: type[_R]) -> _R:
        response = codec.decode_response(self._roundtrip(codec.encode_request(request)))
        if isinstance(response, codec.ErrorResponse):
            raise NsmRequestRejected(response.code, operation)
        if not isinstance(response, expected):
            raise NsmProtocolError(
                f"{operation}: got a {type(response).__name__}, expected {expected.__name__}"
            )
        return response

    def describe_nsm(self) -> codec.DescribeNsmResponse:
        """Version, module id, PCR count, locked PCRs and digest of the module."""
        r = self._call(codec.DescribeNsm(), "DescribeNSM", codec.DescribeNsmResponse)
        return r

    def describe_pcr(self, index: int) -> PcrState:
        """The value of PCR `index` and whether it is locked.

        Raises:
            NsmRequestRejected: `InvalidIndex` for an index past the module's PCR count.
        """
        r = self._call(codec.DescribePcr(index), "DescribePCR", codec.DescribePcrResponse)
        return PcrState(locked=r.lock, value=r.data)

    def extend_pcr(self, index: int, data: bytes) -> bytes:
        """Extend PCR `index` with `data` (new = H(old || data)) and return its new value.

        Raises:
            NsmRequestRejected: `ReadOnlyIndex` if the PCR is locked, `InvalidIndex` if out of range.
        """
        r = self._call(codec.ExtendPcr(index, bytes(data)), "ExtendPCR", codec.ExtendPcrResponse)
        return r.data

    def lock_pcr(self, index: int) -> None:
        """Make PCR `index` read-only until the enclave stops."""
        self._call(codec.LockPcr(index), "LockPCR", codec.LockPcrResponse)

    def lock_pcrs(self, range: int) -> None:  # noqa: A002 - the NSM API's own field name
        """Make PCRs 0 .. range-1 read-only until the enclave stops."""
        self._call(codec.LockPcrs(range), "LockPCRs", codec.LockPcrsResponse)

    def get_random(self, n: int) -> bytes:
        """`n` bytes of entropy from the module (asking as many times as needed).

        Raises:
            NsmProtocolError: the module keeps answering with no bytes.
        """
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be a non-negative integer, got {n!r}")
        out = bytearray()
        for _ in range(_MAX_RANDOM_ROUNDS):
            if len(out) >= n:
                break
            r = self._call(codec.GetRandom(), "GetRandom", codec.GetRandomResponse)
            if not r.random:
                raise NsmProtocolError("GetRandom: the module answered with no bytes")
            out += r.random
        if len(out) < n:
            raise NsmProtocolError(f"GetRandom: only {len(out)} of {n} bytes after many rounds")
        return bytes(out[:n])

    def attestation(
        self,
        *,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes:
        """A signed attestation document (raw, untagged COSE_Sign1) carrying the given fields.

        Raises:
            NsmRequestRejected: e.g. `InputTooLarge` when a field exceeds the module's limits.
        """
        request = codec.Attestation(user_data=user_data, nonce=nonce, public_key=public_key)
        r = self._call(request, "Attestation", codec.AttestationResponse)
        return r.document

"""A Nitro Secure Module emulator for development and tests; never used by a production image.

`EmulatedDevice.handle(request) -> response` plays the module's side of /dev/nsm: it parses the same
CBOR request bytes the device client sends and answers with the same CBOR response bytes, so
`EmulatedNsm` (a client over that device) runs the production client code unchanged.

Its attestation documents have AWS's exact format: an untagged COSE_Sign1 `[<<{1: -35}>>, {},
payload, 96-byte signature]` whose payload map holds, in AWS's order, module_id, digest "SHA384",
timestamp (ms), pcrs (every locked PCR, 48 bytes each), certificate (leaf, DER), cabundle (DER,
root first), public_key, user_data and nonce (null when absent). It is signed with ES384 by a leaf
under a 4-level chain from `EmulatorCa`. The module_id starts with "i-emulated" so no relying party
can take it for AWS hardware, and the chain only verifies against the emulator's root.

Module model (as on Nitro): 32 PCRs of SHA-384; PCRs 0-15 are set at boot and locked; the others
start at zero and can be extended (new = SHA-384(old || data)) until locked.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os
import secrets
import threading
from collections.abc import Callable, Mapping

import cbor2

from enclave.nsm import _codec as codec
from enclave.nsm._client import CborNsm
from enclave.nsm._cose import sign1_es384
from enclave.nsm.ca import EmulatorCa, IssuedChain
from enclave.nsm.errors import NsmProtocolError
from enclave.nsm.pcrs import PCR_BYTES, PCR_COUNT, PcrSource, load_pcrs

__all__ = ["MODULE_ID_PREFIX", "EmulatedDevice", "EmulatedNsm", "EmulatorCa"]

logger = logging.getLogger(__name__)

MODULE_ID_PREFIX = "i-emulated"
VERSION = (1, 0, 0)
BOOT_LOCKED_PCRS = 16
# A GetRandom answer's size; the client asks again for more.
RANDOM_CHUNK = 256
# Field limits of an attestation request (the attestation document's CDDL: bytes .size (0..1024)).
MAX_USER_FIELD = 1024
# Renew the leaf when less than this is left, so no document is signed by a nearly expired leaf.
_LEAF_RENEW_MARGIN = dt.timedelta(minutes=10)

Clock = Callable[[], dt.datetime]


def _utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_module_id() -> str:
    """An id shaped like AWS's `i-<instance>-enc<enclave>` that says it is emulated."""
    return f"{MODULE_ID_PREFIX}{secrets.token_hex(4)}-enc{secrets.token_hex(8)}"


class EmulatedDevice:
    """The module's side: CBOR request bytes in, CBOR response bytes out; never raises on input."""

    def __init__(
        self,
        *,
        ca: EmulatorCa,
        pcrs: Mapping[int, bytes] | None = None,
        module_id: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        self._ca = ca
        self._clock = clock or _utc_now
        self.module_id = module_id or new_module_id()
        if not self.module_id.startswith(MODULE_ID_PREFIX):
            raise ValueError(f"an emulated module_id must start with {MODULE_ID_PREFIX!r}")
        self._pcrs = [bytes(PCR_BYTES) for _ in range(PCR_COUNT)]
        for index, value in load_pcrs(pcrs or {}).items():
            self._pcrs[index] = value
        self._locked = set(range(BOOT_LOCKED_PCRS))
        self._lock = threading.Lock()
        self._chain: IssuedChain | None = None

    def __repr__(self) -> str:
        return f"EmulatedDevice(module_id={self.module_id!r})"

    @property
    def chain(self) -> IssuedChain:
        """The chain that signs documents now (issued or renewed on demand)."""
        with self._lock:
            return self._current_chain(self._now())

    def _now(self) -> dt.datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise ValueError("the emulator clock must return timezone-aware datetimes")
        return now

    def _current_chain(self, now: dt.datetime) -> IssuedChain:
        chain = self._chain
        if chain is None or not (chain.not_before <= now <= chain.not_after - _LEAF_RENEW_MARGIN):
            chain = self._ca.issue_chain(module_id=self.module_id, now=now)
            self._chain = chain
        return chain

    def handle(self, request: bytes) -> bytes:
        """Answer one request exactly as the module would (errors become `Error(code)`)."""
        try:
            decoded = codec.decode_request(request)
        except NsmProtocolError as e:
            too_large = len(request) > codec.REQUEST_MAX_SIZE
            logger.debug("emulator: malformed request: %s", e)
            return codec.encode_response(
                codec.ErrorResponse("InputTooLarge" if too_large else "InvalidArgument")
            )
        with self._lock:
            response = self._dispatch(decoded)
        return codec.encode_response(response)

    def _dispatch(self, request: codec.Request) -> codec.Response:
        if isinstance(request, codec.DescribeNsm):
            return codec.DescribeNsmResponse(
                version_major=VERSION[0],
                version_minor=VERSION[1],
                version_patch=VERSION[2],
                module_id=self.module_id,
                max_pcrs=PCR_COUNT,
                locked_pcrs=frozenset(self._locked),
                digest="SHA384",
            )
        if isinstance(request, codec.DescribePcr):
            if request.index >= PCR_COUNT:
                return codec.ErrorResponse("InvalidIndex")
            return codec.DescribePcrResponse(
                lock=request.index in self._locked, data=self._pcrs[request.index]
            )
        if isinstance(request, codec.ExtendPcr):
            if request.index >= PCR_COUNT:
                return codec.ErrorResponse("InvalidIndex")
            if request.index in self._locked:
                return codec.ErrorResponse("ReadOnlyIndex")
            value = hashlib.sha384(self._pcrs[request.index] + request.data).digest()
            self._pcrs[request.index] = value
            return codec.ExtendPcrResponse(value)
        if isinstance(request, codec.LockPcr):
            if request.index >= PCR_COUNT:
                return codec.ErrorResponse("InvalidIndex")
            self._locked.add(request.index)
            return codec.LockPcrResponse()
        if isinstance(request, codec.LockPcrs):
            if request.range > PCR_COUNT:
                return codec.ErrorResponse("InvalidIndex")
            self._locked.update(range(request.range))
            return codec.LockPcrsResponse()
        if isinstance(request, codec.GetRandom):
            return codec.GetRandomResponse(os.urandom(RANDOM_CHUNK))
        if isinstance(request, codec.Attestation):
            return self._attest(request)
        return codec.ErrorResponse("InvalidOperation")

    def _attest(self, request: codec.Attestation) -> codec.Response:
        for value in (request.user_data, request.nonce, request.public_key):
            if value is not None and len(value) > MAX_USER_FIELD:
                return codec.ErrorResponse("InputTooLarge")
        if request.public_key is not None and len(request.public_key) == 0:
            return codec.ErrorResponse("InvalidArgument")
        now = self._now()
        chain = self._current_chain(now)
        payload = cbor2.dumps(
            {
                "module_id": self.module_id,
                "digest": "SHA384",
                "timestamp": int(now.timestamp() * 1000),
                "pcrs": {i: self._pcrs[i] for i in sorted(self._locked)},
                "certificate": chain.certificate,
                "cabundle": list(chain.cabundle),
                "public_key": request.public_key,
                "user_data": request.user_data,
                "nonce": request.nonce,
            }
        )
        return codec.AttestationResponse(sign1_es384(payload, chain.leaf_key))


class EmulatedNsm(CborNsm):
    """An `Nsm` backed by `EmulatedDevice`, through the same CBOR bytes as `DeviceNsm`.

    Args:
        ca: the root that signs (default: a fresh one; pass `EmulatorCa.load(dir)` to pin it).
        pcrs: PCR values, or a source `load_pcrs` accepts (a JSON file, an EIF, fw_cfg's file).
        module_id: must start with "i-emulated" (default: a random one).
        clock: returns the current UTC time (tests pass a fixed one).

    Raises:
        NsmConfigError: the PCR source is unreadable or malformed.
    """

    def __init__(
        self,
        *,
        ca: EmulatorCa | None = None,
        pcrs: PcrSource | None = None,
        module_id: str | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.ca = ca or EmulatorCa.generate()
        self.device = EmulatedDevice(
            ca=self.ca,
            pcrs=load_pcrs(pcrs) if pcrs is not None else None,
            module_id=module_id,
            clock=clock,
        )

    def __repr__(self) -> str:
        return f"EmulatedNsm(module_id={self.device.module_id!r})"

    @property
    def root_pem(self) -> bytes:
        """The root certificate (PEM) that the documents chain to; relying parties pin it."""
        return self.ca.root_pem

    @property
    def module_id(self) -> str:
        return self.device.module_id

    def _roundtrip(self, request: bytes) -> bytes:
        return self.device.handle(request)

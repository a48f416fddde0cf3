"""Presignatures: offline/online ECDSA over secp256k1 (enclave/PROTOCOL.md, "Signing").

Offline (a background thread, `PresignPool.start_refill`): draw k uniform in [1, n-1], compute
R = k*G, keep (k^-1, r = R.x, y parity of R). Online (`PresignPool.sign`, the hot path): take one
entry and compute s = k^-1 * (z + r*d) mod n with libsecp256k1's constant-time scalar operations
(three calls into C, no point multiplication), normalise s to the low half, return r || s || v.

Each entry is used at most once (`collections.deque.popleft` is atomic), its secret buffers are
overwritten right after use, and nothing in it is ever written to disk or sent. Entries do not
depend on the key, so the pool may be filled before a key exists. Secret scalars live in bytearrays
read through cffi pointers, never in Python integers (PROTOCOL.md says where and why a blinded value
is one).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from coincurve._libsecp256k1 import ffi, lib  # type: ignore[import-not-found]
from coincurve.context import GLOBAL_CONTEXT

from enclave.errors import EnclaveError

__all__ = [
    "CURVE_ORDER",
    "MAX_POOL",
    "NonceSource",
    "PresignError",
    "PresignPool",
]

logger = logging.getLogger(__name__)

#: secp256k1 group order n.
CURVE_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
#: Largest pool a policy may ask for: each entry holds a few hundred bytes of Python objects.
MAX_POOL = 1 << 16

# Big-endian 32-byte strings compare like the integers they encode: public values (digests, r, s)
# are checked against the curve order without turning them into Python integers.
_N_BYTES = CURVE_ORDER.to_bytes(32, "big")
_HALF_N_BYTES = (CURVE_ORDER // 2).to_bytes(32, "big")
_ZERO32 = bytes(32)
_PARITY = (b"\x00", b"\x01")

_CTX = GLOBAL_CONTEXT.ctx
_tweak_mul = lib.secp256k1_ec_seckey_tweak_mul
_tweak_add = lib.secp256k1_ec_seckey_tweak_add
_negate = lib.secp256k1_ec_seckey_negate
_verify = lib.secp256k1_ec_seckey_verify
_from_buffer = ffi.from_buffer

#: One pool entry: (k^-1 buffer, its pointer, work buffer holding r, its pointer, r, parity).
_Entry = tuple[bytearray, Any, bytearray, Any, bytes, int]


class PresignError(EnclaveError):
    """Presignatures could not be prepared (the random source or libsecp256k1 failed)."""


class _RandomSource(Protocol):
    def get_random(self, n: int) -> bytes: ...


class _KernelRng:
    """The kernel CSPRNG read straight into a bytearray (no intermediate bytes object holding nonce
    material), through a descriptor opened once."""

    def __init__(self) -> None:
        os.getrandom(1)  # blocks until the kernel pool is initialised, like getrandom(2)
        self._fd = os.open("/dev/urandom", os.O_RDONLY | os.O_CLOEXEC)

    def __call__(self, buf: bytearray) -> None:
        view = memoryview(buf)
        try:
            while view:
                got = os.readv(self._fd, [view])
                if not got:
                    raise PresignError("/dev/urandom returned no bytes")
                view = view[got:]
        except OSError as e:
            raise PresignError(f"cannot read the kernel RNG: {e.strerror or type(e).__name__}") from e
        finally:
            view.release()

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:  # once: a second os.close could hit a descriptor reopened since
            with contextlib.suppress(OSError):
                os.close(fd)


class NonceSource:
    """Uniform scalars in [1, n-1]: kernel CSPRNG bytes, XORed with NSM GetRandom bytes when a
    module is given, rejection-sampled.

    Why uniform: a 32-byte string XORed with an independent one is uniform if either is (a one-time
    pad), so the NSM can only add entropy, never bias a good kernel RNG; rejecting candidates
    outside [1, n-1] and drawing again leaves the accepted value uniform on that range (n > 2^255,
    so a rejection has probability below 2^-127).

    Args:
        nsm: anything with `get_random(n) -> bytes` (device or emulator), or None.
        fill: writes random bytes into a bytearray in place; the kernel RNG by default (tests force
            a sequence here).
        nsm_chunk: bytes fetched from the NSM per call (one ioctl serves many scalars).
    """

    def __init__(
        self,
        nsm: _RandomSource | None = None,
        *,
        fill: Callable[[bytearray], None] | None = None,
        nsm_chunk: int = 4096,
    ) -> None:
        self._kernel: _KernelRng | None = None
        if fill is None:
            self._kernel = _KernelRng()
            fill = self._kernel
        self._fill = fill
        self._nsm = nsm
        self._nsm_chunk = max(32, nsm_chunk - nsm_chunk % 32)
        self._mix = bytearray()
        self._mix_at = 0
        #: Candidates refused by rejection sampling (outside [1, n-1]).
        self.rejected = 0

    def __repr__(self) -> str:
        return f"NonceSource(nsm={'yes' if self._nsm is not None else 'no'})"

    def scalar(self) -> tuple[bytearray, Any]:
        """A fresh uniform scalar in [1, n-1] in its own bytearray, and a cffi pointer to it.

        Raises:
            PresignError: a random source failed.
        """
        buf = bytearray(32)
        ptr = _from_buffer("unsigned char[]", buf)
        while True:
            self._fill(buf)
            if self._nsm is not None:
                self._xor_nsm(buf)
            if _verify(_CTX, ptr):  # constant time: 0 < candidate < n
                return buf, ptr
            self.rejected += 1

    def _xor_nsm(self, buf: bytearray) -> None:
        if self._mix_at + 32 > len(self._mix):
            try:
                fresh = self._nsm.get_random(self._nsm_chunk)  # type: ignore[union-attr]
                if len(fresh) < 32:
                    raise PresignError(f"{len(fresh)} bytes")
            except Exception as e:
                # The kernel RNG (which the NSM seeds at boot) is the source; the NSM only adds to
                # it, so a failing module costs that extra, never the signer.
                logger.warning("NSM GetRandom failed (%s): nonces from the kernel RNG alone",
                               type(e).__name__)
                self._nsm = None
                return
            _wipe(self._mix)
            self._mix = bytearray(fresh)
            self._mix_at = 0
        mix, at = self._mix, self._mix_at
        for i in range(32):
            buf[i] ^= mix[at + i]
            mix[at + i] = 0  # each NSM byte mixed once
        self._mix_at = at + 32

    def close(self) -> None:
        _wipe(self._mix)
        if self._kernel is not None:
            self._kernel.close()


def _wipe(buf: bytearray) -> None:
    buf[:] = bytes(len(buf))  # same length: overwritten in place, never reallocated


class PresignPool:
    """A pool of presignatures, refilled by a background thread.

    Args:
        size: entries kept ready (1 .. MAX_POOL).
        nonces: where k comes from (default: the kernel CSPRNG, no NSM).
        low_water: the refill thread wakes when fewer entries remain (default: 3/4 of `size`).

    Raises:
        ValueError: size or low_water out of range.
    """

    def __init__(
        self, size: int, *, nonces: NonceSource | None = None, low_water: int | None = None
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_POOL:
            raise ValueError(f"pool size must be an integer in 1..{MAX_POOL} (got {size!r})")
        low = size - size // 4 if low_water is None else low_water
        if not 0 <= low <= size:
            raise ValueError(f"low_water must be in 0..{size} (got {low})")
        self.size = size
        self.low_water = low
        self._nonces = nonces if nonces is not None else NonceSource()
        self._entries: deque[_Entry] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._idle: Callable[[], None] | None = None
        self._discard_lock = threading.Lock()
        self._discarded = False
        #: Signatures made from a presignature.
        self.presigned = 0
        #: Signatures that fell back to RFC 6979 (pool empty, or an edge case of the digest).
        self.fallbacks = 0
        #: Entries prepared since start (R.x >= n rejections not counted).
        self.prepared = 0

    def __repr__(self) -> str:
        return f"PresignPool(size={self.size}, ready={len(self._entries)})"

    def __len__(self) -> int:
        return len(self._entries)

    # --- offline ------------------------------------------------------------------------------------

    def _prepare(self) -> _Entry:
        """One presignature. k is drawn again when R.x >= n (so r = R.x and v is R's y parity)."""
        pub = ffi.new("secp256k1_pubkey *")
        ser = ffi.new("unsigned char[33]")
        ser_len = ffi.new("size_t *")
        while True:
            k, kp = self._nonces.scalar()
            try:
                if not lib.secp256k1_ec_pubkey_create(_CTX, pub, kp):
                    continue  # cannot happen for a verified scalar; draw again
                ser_len[0] = 33
                lib.secp256k1_ec_pubkey_serialize(
                    _CTX, ser, ser_len, pub, lib.SECP256K1_EC_COMPRESSED
                )
                point = bytes(ffi.buffer(ser, 33))  # public: R
                r = point[1:]
                if r >= _N_BYTES:
                    self._nonces.rejected += 1
                    continue
                kinv, kinvp = self._invert(k)
            finally:
                _wipe(k)
            work = bytearray(r)
            return kinv, kinvp, work, _from_buffer("unsigned char[]", work), r, point[0] & 1

    def _invert(self, k: bytearray) -> tuple[bytearray, Any]:
        """k^-1 mod n, blinded: libsecp256k1 has no scalar inverse, so invert k*b (b a fresh uniform
        scalar) with Python's pow, then multiply by b in constant time. k*b is uniform and
        independent of k, so neither the variable-time inversion nor the integer it leaves in
        memory tells anything about k without b, which is wiped."""
        b, bp = self._nonces.scalar()
        kb = bytearray(k)
        kbp = _from_buffer("unsigned char[]", kb)
        try:
            if not _tweak_mul(_CTX, kbp, bp):
                raise PresignError("scalar multiplication failed")
            inv = pow(int.from_bytes(kb, "big"), -1, CURVE_ORDER).to_bytes(32, "big")
            out = bytearray(inv)
            outp = _from_buffer("unsigned char[]", out)
            if not _tweak_mul(_CTX, outp, bp):
                raise PresignError("scalar multiplication failed")
            return out, outp
        finally:
            _wipe(kb)
            _wipe(b)
            del bp

    def fill(self, count: int | None = None) -> int:
        """Prepare entries until the pool is full (or `count` more); returns how many were added."""
        want = self.size - len(self._entries) if count is None else count
        added = 0
        append = self._entries.append
        while added < want and len(self._entries) < self.size:
            append(self._prepare())
            added += 1
        self.prepared += added
        return added

    # --- online -------------------------------------------------------------------------------------

    def sign(self, secret: bytes, digest: bytes) -> bytes | None:
        """r || s || v over a 32-byte `digest` with the key `secret`, from one presignature; None
        when the caller must sign with RFC 6979 instead (pool empty, digest 0 or >= n or not 32
        bytes, or z + r*d = 0 mod n). A taken entry is spent and wiped whatever happens.
        """
        if len(digest) != 32 or digest >= _N_BYTES or digest == _ZERO32:
            self.fallbacks += 1  # z = 0 mod n or z >= n: rare enough to leave to RFC 6979
            return None
        entries = self._entries
        try:
            kinv, kinvp, work, workp, r, parity = entries.popleft()  # atomic: one taker only
        except IndexError:
            self.fallbacks += 1
            self._wake.set()
            return None
        if len(entries) < self.low_water and not self._wake.is_set():
            self._wake.set()
        try:
            # work = r; r*d; + z; * k^-1  (libsecp256k1 zeroes `work` if a step fails)
            if not (
                _tweak_mul(_CTX, workp, secret)
                and _tweak_add(_CTX, workp, digest)
                and _tweak_mul(_CTX, workp, kinvp)
            ):
                self.fallbacks += 1
                return None
            s = bytes(work)  # public from here on
            if s > _HALF_N_BYTES:  # EIP-2 low s: (r, n - s) is the signature of -k, whose R flips y
                _negate(_CTX, workp)
                s = bytes(work)
                parity ^= 1
            self.presigned += 1
            return r + s + _PARITY[parity]
        finally:
            kinv[:] = _ZERO32
            work[:] = _ZERO32

    # --- refill thread ------------------------------------------------------------------------------

    def start_refill(
        self, *, avoid_cpu: int | None = None, idle: Callable[[], None] | None = None
    ) -> threading.Thread:
        """Start the refill thread: it fills the pool, then sleeps until it falls below low water.

        Args:
            avoid_cpu: the hot CPU; the thread pins itself to another one when the process may use
                one, and runs at the lowest priority (nice 19) either way.
            idle: called about once a second while the pool is full (e.g. garbage collection).
        """
        if self._thread is not None:
            raise RuntimeError("refill thread already started")
        self._idle = idle
        t = threading.Thread(
            target=self._refill_loop, args=(avoid_cpu,), name="sentinel-presign", daemon=True
        )
        self._thread = t
        t.start()
        return t

    def _refill_loop(self, avoid_cpu: int | None) -> None:
        others = sorted(os.sched_getaffinity(0) - ({avoid_cpu} if avoid_cpu is not None else set()))
        if avoid_cpu is not None and others:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(0, {others[0]})  # pid 0: this thread only
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        sleep = _sleep0
        try:
            while not self._stop.is_set():
                if len(self._entries) < self.size:
                    self._entries.append(self._prepare())
                    self.prepared += 1
                    sleep()  # hand the GIL to a waiting request between entries
                    continue
                self._wake.clear()
                if len(self._entries) >= self.low_water and not self._wake.wait(1.0):
                    if self._idle is not None and len(self._entries) >= self.size:
                        self._idle()
        except Exception as e:  # a failing RNG: stop refilling, signing falls back to RFC 6979
            logger.error("presignature refill stopped: %s", type(e).__name__)
        finally:
            if self._stop.is_set():  # close() may have given up waiting for this thread
                self._discard()

    def close(self, timeout: float = 5.0) -> None:
        """Stop the refill thread and wipe every unused entry.

        A refill thread still busy after `timeout` seconds (it runs at nice 19, and a loaded host
        can starve it) wipes the pool itself when it stops: the entries and the random source must
        not be torn down under a thread that may still append to or read from them.
        """
        self._stop.set()
        self._wake.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)
            if t.is_alive():
                logger.warning("presignature refill thread still busy after %g s; it wipes the "
                               "pool when it stops", timeout)  # fmt: skip
                return
        self._discard()

    def _discard(self) -> None:
        """Wipe every unused entry and close the nonce source, once."""
        with self._discard_lock:
            if self._discarded:
                return
            self._discarded = True
        while True:
            try:
                kinv, _, work, _, _, _ = self._entries.popleft()
            except IndexError:
                break
            _wipe(kinv)
            _wipe(work)
        self._nonces.close()


def _sleep0() -> None:
    time.sleep(0)

"""Ethereum's keccak-256 (original Keccak padding, not NIST SHA3) through pycryptodome's C core.

pycryptodome's public `keccak.new(...).digest()` allocates a state and two cffi objects per call (about
5 us); a transaction signature needs two hashes, which alone would cost a fifth of the signature. The
hot path therefore keeps one reset-able C state per thread and calls the same C functions the public
API calls. That reaches into pycryptodome's raw-library binding, so at import we check the fast path
against the public API on known vectors and fall back to the public API if anything differs or is
missing (a future pycryptodome release can make us slower, never wrong).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from Crypto.Hash import keccak as _public

__all__ = ["FAST_PATH", "keccak256"]

_RATE_PADDING = 0x01  # original Keccak padding (Ethereum), as opposed to SHA3's 0x06
_CAPACITY_BYTES = 64  # keccak-256: capacity 512 bits
_ROUNDS = 24


def _public_keccak256(data: bytes | bytearray | memoryview) -> bytes:
    return _public.new(digest_bits=256, data=data).digest()


def _make_fast() -> Callable[[bytes | bytearray | memoryview], bytes]:
    from Crypto.Hash.keccak import _raw_keccak_lib as lib  # type: ignore[attr-defined]
    from Crypto.Util._raw_api import VoidPointer, c_size_t, c_ubyte  # type: ignore[attr-defined]
    from Crypto.Util._raw_api import ffi as raw_ffi

    class _State:
        """One keccak-256 state and output buffer, reset before each use (single thread only)."""

        def __init__(self) -> None:
            ptr = VoidPointer()
            if lib.keccak_init(ptr.address_of(), c_size_t(_CAPACITY_BYTES), c_ubyte(_ROUNDS)):
                raise RuntimeError("keccak_init failed")
            self.state = ptr.get()
            self.out = bytearray(32)
            self.out_ptr = raw_ffi.from_buffer(self.out)

        def __del__(self) -> None:
            lib.keccak_destroy(self.state)

    local = threading.local()
    reset, absorb, digest = lib.keccak_reset, lib.keccak_absorb, lib.keccak_digest

    def fast(data: bytes | bytearray | memoryview) -> bytes:
        try:
            st = local.st
        except AttributeError:
            st = local.st = _State()
        s = st.state
        # cffi passes bytes as a const pointer directly; other buffers need a (cheap) view object.
        buf = data if type(data) is bytes else raw_ffi.from_buffer(data)
        if reset(s) or absorb(s, buf, len(data)) or digest(s, st.out_ptr, 32, _RATE_PADDING):
            raise RuntimeError("keccak C core failed")
        return bytes(st.out)

    return fast


def _select() -> tuple[Callable[[bytes | bytearray | memoryview], bytes], bool]:
    try:
        fast = _make_fast()
        for sample in (b"", b"abc", bytes(range(256)) * 3, bytearray(b"x" * 136)):
            if fast(sample) != _public_keccak256(sample):
                raise RuntimeError("fast keccak differs from the public API")
        # The known answer pins the variant (keccak, not SHA3) independently of pycryptodome.
        if fast(b"").hex() != "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470":
            raise RuntimeError("keccak-256 known answer mismatch")
    except Exception:  # any binding change: stay correct on the public API
        return _public_keccak256, False
    return fast, True


keccak256, FAST_PATH = _select()
keccak256.__doc__ = "keccak-256 digest (32 bytes) of data; thread-safe."

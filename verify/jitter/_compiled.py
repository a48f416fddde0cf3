"""The compiled spin loop: the same loop as `_spin.spin_python`, in 15 lines of C, built with cffi.

cffi's API mode is the well-kept route here (it is what pyca/cryptography builds with): the C source
below is compiled once per Python version at first use into a cache directory, which needs a C
compiler and the Python headers on the host. Where they are missing, `load()` says why and the
caller falls back to the Python loop, so the report always states which floor it measured.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from types import ModuleType

from enclave.cli import install_hint
from verify.jitter._spin import SMALL_LIMIT_NS, RawRun

__all__ = ["CompiledLoop", "load"]

logger = logging.getLogger(__name__)

CDEF = """
uint64_t sentinel_spin(uint64_t duration_ns, uint64_t *small, uint32_t small_len,
                       uint64_t *big, uint64_t big_cap, uint64_t *out);
"""

SOURCE = r"""
#include <stdint.h>
#include <time.h>

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Same contract as the Python loop: small[g]++ for short gaps, (offset, gap) pairs for stalls. */
uint64_t sentinel_spin(uint64_t duration_ns, uint64_t *small, uint32_t small_len,
                       uint64_t *big, uint64_t big_cap, uint64_t *out) {
    uint64_t start = now_ns(), end = start + duration_ns, prev = start, nbig = 0;
    while (prev < end) {
        uint64_t t = now_ns(), gap = t - prev;
        if (gap < small_len) {
            small[gap]++;
        } else {
            if (nbig < big_cap) { big[2 * nbig] = prev - start; big[2 * nbig + 1] = gap; }
            nbig++;
        }
        prev = t;
    }
    out[0] = nbig;
    out[1] = prev - start;
    return start;
}
"""

MODULE = "_sentinel_spin_" + hashlib.sha256((CDEF + SOURCE).encode()).hexdigest()[:16]


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    tag = sysconfig.get_config_var("SOABI") or f"py{sys.version_info[0]}{sys.version_info[1]}"
    return Path(base) / "sentinel" / "jitter" / f"{MODULE}-{tag}"


class CompiledLoop:
    def __init__(self, module: ModuleType) -> None:
        self._ffi = module.ffi
        self._lib = module.lib

    def spin(self, duration_ns: int, small_limit: int = SMALL_LIMIT_NS) -> RawRun:
        ffi = self._ffi
        cap = duration_ns // small_limit + 2  # more stalls than this cannot fit in the run
        small = ffi.new("uint64_t[]", small_limit)
        big = ffi.new("uint64_t[]", 2 * cap)
        out = ffi.new("uint64_t[2]")
        self._lib.sentinel_spin(duration_ns, small, small_limit, big, cap, out)
        nbig = min(int(out[0]), cap)
        flat = ffi.unpack(big, 2 * nbig)
        return RawRun(
            loop="compiled",
            elapsed_ns=int(out[1]),
            small=[int(v) for v in ffi.unpack(small, small_limit)],
            big=list(zip(flat[0::2], flat[1::2], strict=True)),
        )


def _import(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(MODULE, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load() -> tuple[CompiledLoop | None, str]:
    """The compiled loop, building it on first use; or (None, why not)."""
    cache = _cache_dir()
    built = sorted(cache.glob(f"{MODULE}*.so")) if cache.is_dir() else []
    if not built:
        try:
            import cffi
        except ImportError:
            return None, f"cffi is not installed (the 'jitter' extra: {install_hint('jitter')})"
        if shutil.which(os.environ.get("CC", "cc")) is None:
            return None, "no C compiler (cc) on this host"
        ffi = cffi.FFI()
        ffi.cdef(CDEF)
        ffi.set_source(MODULE, SOURCE)
        cache.parent.mkdir(parents=True, exist_ok=True)
        try:
            with tempfile.TemporaryDirectory(dir=cache.parent) as tmp:
                so = Path(ffi.compile(tmpdir=tmp, verbose=False))
                staging = Path(tmp) / "out"
                staging.mkdir()
                shutil.copy2(so, staging / so.name)
                try:
                    # Rename is atomic: concurrent first runs never see a half-written module.
                    os.rename(staging, cache)
                except OSError:
                    if not cache.is_dir():
                        raise
        except Exception as e:  # compiler errors surface as many types (CompileError, OSError, ...)
            logger.debug("building the compiled loop failed", exc_info=True)
            return None, f"building the compiled loop failed ({type(e).__name__}: {str(e)[:120]})"
        built = sorted(cache.glob(f"{MODULE}*.so"))
    if not built:
        return None, "the compiled loop's build left no module"
    try:
        return CompiledLoop(_import(built[0])), f"compiled with cffi (cached in {cache})"
    except ImportError as e:
        return None, f"the compiled loop does not load ({e})"

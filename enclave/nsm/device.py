"""The real Nitro Secure Module: CBOR messages through the Linux driver's raw ioctl on /dev/nsm.

The upstream driver (drivers/misc/nsm.c, include/uapi/linux/nsm.h) exposes one ioctl,
`NSM_IOCTL_RAW = _IOWR(0x0A, 0, struct nsm_raw)`, whose argument is two iovecs of u64 address and
u64 length: the request (at most 0x1000 bytes of CBOR) and a response buffer (0x3000 bytes). The
driver forwards the request bytes unchanged to the module over virtio and writes the answer into the
response buffer, setting `response.len` to its length. The bytes are those of `enclave.nsm._codec`.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from enclave.nsm._client import CborNsm
from enclave.nsm._codec import REQUEST_MAX_SIZE, RESPONSE_MAX_SIZE
from enclave.nsm.errors import (
    NsmProtocolError,
    NsmRequestRejected,
    NsmTransportError,
    NsmUnavailable,
)

__all__ = ["DEFAULT_PATH", "NSM_IOCTL_RAW", "DeviceNsm", "NsmIovec", "NsmRaw"]

logger = logging.getLogger(__name__)

DEFAULT_PATH = "/dev/nsm"
NSM_MAGIC = 0x0A

# asm-generic/ioctl.h: nr 8 bits, type 8 bits, size 14 bits, direction 2 bits (x86_64 and arm64).
_IOC_NRSHIFT = 0
_IOC_TYPESHIFT = 8
_IOC_SIZESHIFT = 16
_IOC_DIRSHIFT = 30
_IOC_WRITE = 1
_IOC_READ = 2


def _ioc(direction: int, kind: int, nr: int, size: int) -> int:
    return (
        (direction << _IOC_DIRSHIFT)
        | (kind << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
        | (size << _IOC_SIZESHIFT)
    )


class NsmIovec(ctypes.Structure):
    """struct nsm_iovec { __u64 addr; __u64 len; }"""

    _fields_ = [("addr", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class NsmRaw(ctypes.Structure):
    """struct nsm_raw { struct nsm_iovec request; struct nsm_iovec response; }"""

    _fields_ = [("request", NsmIovec), ("response", NsmIovec)]


NSM_IOCTL_RAW = _ioc(_IOC_READ | _IOC_WRITE, NSM_MAGIC, 0, ctypes.sizeof(NsmRaw))

#: The signature of `fcntl.ioctl(fd, request, arg, mutate_flag)`.
IoctlFn = Callable[[int, int, NsmRaw, bool], object]


class DeviceNsm(CborNsm):
    """A client of the Nitro Secure Module device.

    Args:
        path: the device node, /dev/nsm inside a Nitro Enclave.
        ioctl: the system call; only tests replace it (to play the kernel's part where no device
            exists), production always uses `fcntl.ioctl`.

    Raises:
        NsmUnavailable: the device node cannot be opened.
    """

    def __init__(
        self, path: str | os.PathLike[str] = DEFAULT_PATH, *, ioctl: IoctlFn | None = None
    ):
        self._path = str(path)
        self._ioctl: IoctlFn = ioctl if ioctl is not None else fcntl.ioctl
        self._lock = threading.Lock()
        try:
            self._fd: int | None = os.open(self._path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise NsmUnavailable(f"cannot open {self._path}: {os.strerror(e.errno or 0)}") from e
        logger.debug("opened %s", self._path)

    @property
    def path(self) -> Path:
        return Path(self._path)

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> DeviceNsm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DeviceNsm(path={self._path!r})"

    def _roundtrip(self, request: bytes) -> bytes:
        if len(request) > REQUEST_MAX_SIZE:
            # The driver would answer EMSGSIZE; refuse before the system call, as the NSM API does.
            raise NsmRequestRejected("InputTooLarge", f"a {len(request)}-byte request")
        request_buf = ctypes.create_string_buffer(bytes(request), len(request))
        response_buf = ctypes.create_string_buffer(RESPONSE_MAX_SIZE)
        raw = NsmRaw(
            NsmIovec(ctypes.addressof(request_buf), len(request)),
            NsmIovec(ctypes.addressof(response_buf), RESPONSE_MAX_SIZE),
        )
        with self._lock:
            if self._fd is None:
                raise NsmUnavailable(f"{self._path} is closed")
            try:
                self._ioctl(self._fd, NSM_IOCTL_RAW, raw, True)
            except OSError as e:
                if e.errno == errno.EMSGSIZE:
                    raise NsmRequestRejected("InputTooLarge", "request") from e
                raise NsmTransportError(
                    f"NSM_IOCTL_RAW on {self._path} failed: {os.strerror(e.errno or 0)}", e.errno
                ) from e
        length = raw.response.len
        if length > RESPONSE_MAX_SIZE:
            raise NsmProtocolError(
                f"the driver reported a {length}-byte response (buffer is {RESPONSE_MAX_SIZE})"
            )
        return response_buf.raw[:length]

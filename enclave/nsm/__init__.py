"""The Nitro Secure Module: the `Nsm` interface, the /dev/nsm client and a development emulator.

`open_nsm(allow_emulator)` is how the signer gets one: the device when /dev/nsm opens, otherwise the
emulator only if the caller allows it (development images); a production image gets `NsmUnavailable`
instead, never a silent fallback. The kernel command line can only take that permission away:
`sentinel.nsm=device` (see `REQUIRE_DEVICE_FLAG`) makes even a development image refuse the emulator,
which is how a conformance boot under QEMU's `nitro-enclave` machine proves the device path ran.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

from enclave.nsm._client import PcrState
from enclave.nsm._codec import DescribeNsmResponse as NsmDescription
from enclave.nsm.errors import (
    NsmConfigError,
    NsmError,
    NsmProtocolError,
    NsmRequestRejected,
    NsmTransportError,
    NsmUnavailable,
)
from enclave.nsm.pcrs import PcrSource

__all__ = [
    "Nsm",
    "NsmConfigError",
    "NsmDescription",
    "NsmError",
    "NsmProtocolError",
    "NsmRequestRejected",
    "NsmTransportError",
    "NsmUnavailable",
    "PcrState",
    "REQUIRE_DEVICE_FLAG",
    "device_required",
    "open_nsm",
]

logger = logging.getLogger(__name__)

#: On the kernel command line: the NSM must be the device, whatever the image allows. On Nitro the
#: command line is part of the measured EIF; QEMU appends `-append` to it.
REQUIRE_DEVICE_FLAG = "sentinel.nsm=device"
KERNEL_CMDLINE = Path("/proc/cmdline")


def device_required(cmdline_path: str | os.PathLike[str] = KERNEL_CMDLINE) -> bool:
    """True when the kernel command line carries `REQUIRE_DEVICE_FLAG` (unreadable: False)."""
    try:
        words = Path(cmdline_path).read_text().split()
    except OSError:
        return False
    return REQUIRE_DEVICE_FLAG in words


@runtime_checkable
class Nsm(Protocol):
    """What the signer needs from a Nitro Secure Module (device or emulator)."""

    def describe_nsm(self) -> NsmDescription: ...

    def describe_pcr(self, index: int) -> PcrState: ...

    def extend_pcr(self, index: int, data: bytes) -> bytes: ...

    def lock_pcr(self, index: int) -> None: ...

    def lock_pcrs(self, range: int) -> None: ...  # noqa: A002 - the NSM API's own name

    def get_random(self, n: int) -> bytes: ...

    def attestation(
        self,
        *,
        user_data: bytes | None = None,
        nonce: bytes | None = None,
        public_key: bytes | None = None,
    ) -> bytes: ...


def open_nsm(
    allow_emulator: bool,
    *,
    device_path: str | os.PathLike[str] | None = None,
    emulator_pcrs: PcrSource | None = None,
    emulator_ca_dir: str | os.PathLike[str] | None = None,
    fw_cfg_dir: str | os.PathLike[str] | None = None,
    cmdline_path: str | os.PathLike[str] = KERNEL_CMDLINE,
) -> Nsm:
    """The device at `device_path` (/dev/nsm), or the emulator when it is absent and allowed.

    Args:
        allow_emulator: True only for development images; production passes False.
        device_path: the device node (default /dev/nsm).
        emulator_pcrs: the emulator's PCR source (see `enclave.nsm.pcrs.load_pcrs`); by default the
            file QEMU passes through fw_cfg (`opt/sentinel/pcrs`) when present, else all-zero PCRs.
        emulator_ca_dir: a directory saved by `EmulatorCa.save` to pin the root; by default the PEM
            bundle QEMU passes through fw_cfg (`opt/sentinel/nsm-ca`) when present, else a new root.
        fw_cfg_dir: where the guest sees fw_cfg's `opt/sentinel` entries (tests point it elsewhere).
        cmdline_path: the kernel command line; `sentinel.nsm=device` in it forbids the emulator.

    Raises:
        NsmUnavailable: no device, and the emulator is not allowed.
        NsmConfigError: the emulator's PCR source or CA directory is malformed.
    """
    from enclave.nsm.device import DEFAULT_PATH, DeviceNsm

    path = device_path if device_path is not None else DEFAULT_PATH
    try:
        return DeviceNsm(path)
    except NsmUnavailable as e:
        if not allow_emulator:
            raise NsmUnavailable(f"{e}; the NSM emulator is not allowed in this image") from e
        if device_required(cmdline_path):
            raise NsmUnavailable(
                f"{e}; the kernel command line requires the device ({REQUIRE_DEVICE_FLAG})"
            ) from e
        reason = str(e)

    from enclave.nsm.ca import EmulatorCa
    from enclave.nsm.emulator import EmulatedNsm
    from enclave.nsm.pcrs import FW_CFG_CA, FW_CFG_DIR, FW_CFG_PCRS

    fw_cfg = Path(fw_cfg_dir) if fw_cfg_dir is not None else FW_CFG_DIR
    pcrs = emulator_pcrs
    if pcrs is None and (fw_cfg / FW_CFG_PCRS / "raw").exists():
        pcrs = fw_cfg / FW_CFG_PCRS / "raw"
    ca = None
    if emulator_ca_dir is not None:
        ca = EmulatorCa.load(emulator_ca_dir)
    elif (fw_cfg / FW_CFG_CA / "raw").exists():
        try:
            bundle = (fw_cfg / FW_CFG_CA / "raw").read_bytes()
        except OSError as e:
            raise NsmConfigError(f"cannot read the emulator CA from fw_cfg: {e.strerror}") from e
        ca = EmulatorCa.from_pem_bundle(bundle)
    nsm = EmulatedNsm(ca=ca, pcrs=pcrs)
    logger.warning(
        "no Nitro Secure Module (%s): using the NSM EMULATOR %s (development only; PCRs from %s)",
        reason,
        nsm.module_id,
        pcrs
        if isinstance(pcrs, str | os.PathLike)
        else ("a mapping" if pcrs else "nowhere: zeros"),
    )
    return nsm

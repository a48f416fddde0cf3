"""Boot an EIF, unmodified, in QEMU's `nitro-enclave` machine and talk to the guest.

QEMU's own loader (hw/core/eif.c) parses the EIF, checks its CRC, computes PCR0/1/2/8 and seeds its
`virtio-nsm` device with them; the guest sees that device as /dev/nsm through Debian's `nsm` driver.
Host <-> guest: the serial console (a file, for the guest's parseable lines) and the two
virtio-serial ports `nox -s boot` also uses (`sentinel.signer`: the signer protocol through the
devboot relay; `sentinel.control`: `nsm-check <nonce>` and `poweroff`).

Flags the machine needs here (measured, ../shared/FACTS.md): `acpi=on` (the machine turns ACPI off,
and Debian's cloud kernel finds virtio-mmio devices only through ACPI), `pit=on` (TSC calibration hangs
under TCG without it), a vhost-user-vsock backend on the `vsock` chardev (`vhost_user`).
"""

from __future__ import annotations

import base64
import json
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from enclave import wire
from enclave.devboot import NSMCHECK_PREFIX, SELFCHECK_PREFIX
from enclave.nsm import REQUIRE_DEVICE_FLAG
from nitro_qemu import NitroQemuError
from nitro_qemu.vhost_user import VhostUserVsock
from reproducible.boot.qemu import first_console_line, stop_process

SIGNER_PORT_NAME = "sentinel.signer"
CONTROL_PORT_NAME = "sentinel.control"
INIT_PREFIX = "sentinel-init: "  # reproducible/init/init.sh's first line
# The guest kernel's first lines once QEMU's loader has handed over the kernel and the initrd.
KERNEL_LOADED_MARKERS = ("] Linux version ", "] RAMDISK: [mem ")
SIGNER_VSOCK_PORT = 5000  # reproducible/rootfs.py: the signer listens on vsock:any:5000
MACHINE_OPTIONS = "acpi=on,pit=on,pic=on,rtc=on"
FIRMWARE_DIR = "/usr/share/qemu"  # Debian's qemu-system-data: the microvm BIOS (qboot)

_T = TypeVar("_T")


class MachineError(NitroQemuError):
    """QEMU refused to start, exited early, or the guest did not answer in time."""


@dataclass(frozen=True)
class LoaderResult:
    """What QEMU did with an EIF when asked only to load it."""

    accepted: bool
    exit_code: int | None
    output: str  # QEMU's stderr/stdout, e.g. "CRC mismatch. Expected ..."


class NitroMachine:
    """One `-M nitro-enclave` guest booting `eif`; a context manager that always stops QEMU.

    Args:
        qemu: the built `qemu-system-x86_64` (`nitro_qemu.build`).
        eif: the image, passed to `-kernel` exactly as built.
        workdir: sockets and the console log.
        require_device: append `sentinel.nsm=device` so the signer refuses the NSM emulator.
        guest_cid: the CID the vhost-user backend reports.
    """

    def __init__(
        self,
        qemu: Path,
        eif: Path,
        workdir: Path,
        *,
        require_device: bool = True,
        guest_cid: int = 16,
        memory_mib: int = 1024,
    ) -> None:
        self.qemu, self.eif, self.workdir = qemu, eif, workdir
        self.require_device = require_device
        self.memory_mib = memory_mib
        workdir.mkdir(parents=True, exist_ok=True)
        self.console_log = workdir / "console.log"
        self.vsock_socket = workdir / "vsock.sock"
        self.signer_socket = workdir / "signer.sock"
        self.control_socket = workdir / "control.sock"
        self.backend = VhostUserVsock(self.vsock_socket, guest_cid, data_plane=True)
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._control: socket.socket | None = None
        self.exit_code: int | None = None
        self.output = ""  # QEMU's stdout and stderr, once it has exited

    def command(self) -> list[str]:
        cmd = [
            str(self.qemu),
            "-M", f"nitro-enclave,vsock=vsock0,{MACHINE_OPTIONS}",
            "-L", FIRMWARE_DIR,
            # QEMU's default CPU model, as measured in ../shared/FACTS.md. (The one boot tried with
            # `-cpu max` hung in TSC calibration, the intermittent hang `start_booted` retries.)
            "-accel", "tcg", "-smp", "1", "-m", str(self.memory_mib),
            "-display", "none", "-monitor", "none", "-no-reboot",
            "-serial", f"file:{self.console_log}",
            "-kernel", str(self.eif),
            "-chardev", f"socket,id=vsock0,path={self.vsock_socket}",
            "-device", "virtio-serial-device",
            "-chardev", f"socket,id=signer,path={self.signer_socket},server=on,wait=off",
            "-device", f"virtserialport,chardev=signer,name={SIGNER_PORT_NAME}",
            "-chardev", f"socket,id=control,path={self.control_socket},server=on,wait=off",
            "-device", f"virtserialport,chardev=control,name={CONTROL_PORT_NAME}",
        ]
        if self.require_device:
            # Appended to the EIF's own cmdline by QEMU (not measured: PCRs stay the file's).
            cmd += ["-append", REQUIRE_DEVICE_FLAG]
        return cmd

    def __enter__(self) -> NitroMachine:
        if self.process is None:  # `start_booted` hands over a machine already running
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        for p in (self.console_log, self.signer_socket, self.control_socket):
            p.unlink(missing_ok=True)
        self.backend.start()
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            self.command(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def _drain_output(self) -> str:
        if self.process is None or self.process.stdout is None or self.process.stdout.closed:
            return ""
        out = self.process.stdout.read().decode(errors="replace")
        self.process.stdout.close()
        return out

    def stop(self) -> str:
        """Stop QEMU (if still running) and the backend; all of QEMU's own output."""
        if self._control is not None:
            self._control.close()
            self._control = None
        if self.process is not None:
            stop_process(self.process)
            self.exit_code = self.process.returncode
            self.output += self._drain_output()
            self.process = None
        self.backend.close()
        return self.output

    def console(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.console().splitlines()[-lines:])

    def wait_for_line(self, prefix: str, timeout: float) -> str:
        """The first whole console line starting with prefix.

        Raises:
            MachineError: QEMU exited first, or no such line within timeout.
        """
        return self.wait_for(lambda console: first_console_line(console, prefix), timeout,
                             repr(prefix))  # fmt: skip

    def wait_for(self, find: Callable[[str], _T | None], timeout: float, what: str) -> _T:
        """The first non-None `find(console)`, polled every 100 ms.

        Raises:
            MachineError: QEMU exited first (`exit_code` and `output` are then set), or nothing
                found within timeout.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = find(self.console())
            if found is not None:
                return found
            if self.process is not None and self.process.poll() is not None:
                self.exit_code = self.process.returncode
                self.output += self._drain_output()
                raise MachineError(
                    f"QEMU exited with {self.exit_code} before {what}: "
                    f"{self.output.strip()}\nconsole tail:\n{self.tail()}"
                )
            time.sleep(0.1)
        raise MachineError(f"no {what} on the console in {timeout:.0f} s; tail:\n{self.tail()}")

    def wait_json(self, prefix: str, timeout: float) -> dict[str, object]:
        line = self.wait_for_line(prefix, timeout)
        value = json.loads(line[len(prefix):])
        if not isinstance(value, dict):
            raise MachineError(f"{prefix!r} line is not a JSON object: {line[:200]}")
        return value

    def selfcheck(self, timeout: float = 300) -> dict[str, object]:
        return self.wait_json(SELFCHECK_PREFIX, timeout)

    def _control_send(self, line: str) -> None:
        if self._control is None:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(10)
            s.connect(str(self.control_socket))
            self._control = s
        self._control.sendall(line.encode() + b"\n")

    def nsm_check(self, nonce: bytes, timeout: float = 120) -> dict[str, object]:
        """Ask the guest's devboot to run every NSM call on /dev/nsm; its parsed report."""
        self._control_send(f"nsm-check {nonce.hex()}")
        return self.wait_json(NSMCHECK_PREFIX, timeout)

    def signer_attest(self, nonce: bytes, *, over_vsock: bool = False, timeout: float = 60) -> bytes:
        """ATTEST through the signer itself: the document its NSM produced.

        Args:
            over_vsock: reach the signer as the parent does, over VSOCK (port 5000) through the
                backend's data plane; otherwise through the devboot relay's virtio-serial port.

        Raises:
            MachineError: the signer answered with an error frame or not at all.
        """
        if over_vsock:
            s = self.backend.connect(SIGNER_VSOCK_PORT, timeout)
        else:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(timeout)
            s.connect(str(self.signer_socket))
        with s:
            s.settimeout(timeout)
            s.sendall(wire.pack_frame(wire.Op.ATTEST, 7, wire.encode_attest(nonce, None, None)))
            header = _recv_exact(s, wire.HEADER_SIZE)
            _magic, _version, op, _rid, n = wire.HEADER.unpack(header)
            body = _recv_exact(s, n)
        if op == wire.OP_ERROR:
            code, message = wire.decode_error(body)
            raise MachineError(f"signer refused ATTEST: code {code}: {message}")
        return body

    def power_off(self, timeout: float = 60) -> bool:
        """A clean power-off through the control port; True if QEMU exited by itself."""
        if self.process is None:
            return True
        try:
            self._control_send("poweroff")
            self.process.wait(timeout)
            return True
        except (OSError, subprocess.TimeoutExpired):
            return False


def start_booted(
    qemu: Path, eif: Path, workdir: Path, *, attempts: int = 3, init_timeout: float = 180
) -> tuple[NitroMachine, int]:
    """A started machine whose image's init has spoken, and how many boots it took.

    Under TCG on a loaded host the guest kernel sometimes fails to calibrate the TSC against the PIT
    ("tsc: Unable to calibrate against PIT" … "Marking TSC unstable") and then hangs before init;
    such a boot is stopped and retried with a fresh QEMU (measured: 2 of about 10 boots here).

    Raises:
        MachineError: no attempt reached init.
    """
    errors = []
    for attempt in range(1, attempts + 1):
        m = NitroMachine(qemu, eif, workdir / f"boot{attempt}")
        m.start()
        try:
            m.wait_for_line(INIT_PREFIX, init_timeout)
            return m, attempt
        except MachineError as e:
            m.stop()
            errors.append(str(e).splitlines()[-1])
    raise MachineError(f"{attempts} boots never reached init; last console lines: {errors}")


def load_only(qemu: Path, eif: Path, workdir: Path, timeout: float = 60) -> LoaderResult:
    """Start the machine on `eif` and see whether QEMU's loader accepts it.

    QEMU parses the whole EIF before the guest runs and exits with its error on a bad file. The
    loader has said yes once the guest kernel prints its banner and the ramdisk it was handed; the
    guest is stopped there. Waiting for the image's init instead made the control case flaky: under
    TCG on a loaded host a boot can stall in the kernel (see `start_booted`) after the loader is done.
    """
    m = NitroMachine(qemu, eif, workdir, require_device=False)
    m.start()
    try:
        try:
            m.wait_for(
                lambda console: all(marker in console for marker in KERNEL_LOADED_MARKERS) or None,
                timeout, "kernel banner",
            )  # fmt: skip
            return LoaderResult(True, None, "")
        except MachineError as e:
            exited = m.exit_code is not None  # QEMU's loader refused the file: its output says why
            m.stop()
            return LoaderResult(False, m.exit_code, m.output.strip() if exited else str(e))
    finally:
        m.stop()


def document_b64(report: dict[str, object]) -> bytes:
    value = report.get("attestation")
    if not isinstance(value, str):
        raise MachineError(f"nsm-check carries no attestation: {report.get('error')}")
    return base64.b64decode(value)


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise MachineError("the signer relay closed the connection")
        buf += chunk
    return bytes(buf)

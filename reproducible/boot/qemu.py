"""Boot exactly the measured bytes of an EIF under QEMU, as the Nitro hypervisor would load them.

The hypervisor boots the EIF's kernel with its cmdline and the ramdisks concatenated in order (the
kernel unpacks concatenated newc archives one after another). We do the same with the bytes our EIF
reader extracts, so what boots is what PCR0 measured. Host <-> guest channels:

- serial console (ttyS0) -> a log file, read for the guest's parseable lines;
- virtio-serial port `sentinel.signer` -> a Unix socket on the host; inside the guest a relay joins it
  to the signer's AF_VSOCK listener over vsock_loopback, so the signer's code is the production one;
- virtio-serial port `sentinel.control` -> a Unix socket the host uses to ask for a clean power-off;
- fw_cfg `opt/sentinel/*` -> files the emulated NSM reads (PCRs computed from the booted bytes, the
  emulator CA): the "hypervisor" side of the NSM, so nothing in the image changes for it.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reproducible.boot.errors import BootError, BootTimeout

logger = logging.getLogger(__name__)

SIGNER_PORT_NAME = "sentinel.signer"
CONTROL_PORT_NAME = "sentinel.control"
FW_CFG_PREFIX = "opt/sentinel/"


def stop_process(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL after `timeout` seconds; returns once the process is reaped."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def first_console_line(console: str, prefix: str) -> str | None:
    """The first whole line of a guest's console output that starts with `prefix` (stripped of
    CR, NUL and spaces), or None. Only whole lines: the guest may be half-way through writing
    the last one."""
    for line in console.rpartition("\n")[0].splitlines():
        line = line.strip("\r\x00 ")
        if line.startswith(prefix):
            return line
    return None


def kvm_usable() -> bool:
    """KVM only when /dev/kvm opens and the CPU advertises hardware virtualisation.

    On these machines /dev/kvm exists but the CPU lacks vmx, and a KVM guest dies in early boot, so
    the device node alone is not enough.
    """
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " vmx" in flags or " svm" in flags


def find_qemu() -> str:
    path = shutil.which("qemu-system-x86_64")
    if path is None:
        raise BootError(
            "qemu-system-x86_64 not found: install Debian's qemu-system-x86 (nox -s boot does)"
        )
    return path


@dataclass
class GuestConfig:
    kernel: Path
    initrd: Path
    cmdline: str
    workdir: Path
    memory_mib: int = 1024
    cpus: int | None = None  # None: 2 under KVM, 1 under TCG (see command())
    fw_cfg: dict[str, Path] = field(default_factory=dict)
    accel: str | None = None  # "kvm" | "tcg"; None = detect


class Guest:
    """One QEMU guest; use as a context manager so it is always stopped."""

    def __init__(self, config: GuestConfig) -> None:
        self.config = config
        self.accel = config.accel or ("kvm" if kvm_usable() else "tcg")
        self.console_log = config.workdir / "console.log"
        self.signer_socket = config.workdir / "signer.sock"
        self.control_socket = config.workdir / "control.sock"
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        # Multi-threaded TCG with 2 vCPUs sometimes oopses in early boot (int3 in sched_clock_cpu
        # while the kernel live-patches its text; seen in a CI dry run), so TCG gets one vCPU.
        self.cpus = config.cpus or (2 if self.accel == "kvm" else 1)

    def command(self) -> list[str]:
        c = self.config
        cpu = ["-cpu", "host"] if self.accel == "kvm" else ["-cpu", "max"]
        cmd = [
            find_qemu(),
            "-accel", self.accel, *cpu,
            "-m", str(c.memory_mib),
            "-smp", str(self.cpus),
            "-nographic", "-no-reboot", "-nodefaults",
            "-serial", f"file:{self.console_log}",
            "-kernel", str(c.kernel),
            "-initrd", str(c.initrd),
            "-append", c.cmdline,
            "-device", "virtio-serial-pci",
            "-chardev", f"socket,id=signer,path={self.signer_socket},server=on,wait=off",
            "-device", f"virtserialport,chardev=signer,name={SIGNER_PORT_NAME}",
            "-chardev", f"socket,id=control,path={self.control_socket},server=on,wait=off",
            "-device", f"virtserialport,chardev=control,name={CONTROL_PORT_NAME}",
        ]
        for name, path in sorted(c.fw_cfg.items()):
            cmd += ["-fw_cfg", f"name={FW_CFG_PREFIX}{name},file={path}"]
        return cmd

    def __enter__(self) -> Guest:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.config.workdir.mkdir(parents=True, exist_ok=True)
        for p in (self.console_log, self.signer_socket, self.control_socket):
            p.unlink(missing_ok=True)
        cmd = self.command()
        logger.info("starting %s", " ".join(cmd))
        self.started_at = time.monotonic()
        self.process = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )

    def console(self) -> str:
        try:
            return self.console_log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_line(self, prefix: str, timeout: float) -> str:
        """The first console line that starts with prefix; raises BootTimeout with the log tail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = first_console_line(self.console(), prefix)
            if line is not None:
                return line
            if self.process is not None and self.process.poll() is not None:
                raise BootError(
                    f"QEMU exited with {self.process.returncode} before {prefix!r}; "
                    f"console tail:\n{self.tail()}"
                )
            time.sleep(0.1)
        raise BootTimeout(f"no {prefix!r} on the console within {timeout:.0f} s; tail:\n{self.tail()}")

    def tail(self, lines: int = 30) -> str:
        return "\n".join(self.console().splitlines()[-lines:])

    def power_off(self, timeout: float = 30) -> bool:
        """Ask the guest's init for a clean power-off over the control port; True if it obeyed."""
        if self.process is None or self.process.poll() is not None:
            return True
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(str(self.control_socket))
                s.sendall(b"poweroff\n")
                self.process.wait(timeout)
                return True
        except (OSError, subprocess.TimeoutExpired) as e:
            logger.warning("guest did not power off cleanly: %s", e)
            return False

    def stop(self) -> None:
        if self.process is None:
            return
        stop_process(self.process)
        if self.process.stdout is not None:
            out = self.process.stdout.read().decode(errors="replace").strip()
            if out:
                logger.info("qemu said: %s", out)
            self.process.stdout.close()

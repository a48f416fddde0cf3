"""Conformance against an independent Nitro model: QEMU's `nitro-enclave` machine (issue 19).

`build` fetches Debian's QEMU source package and builds `qemu-system-x86_64` with the machine and its
`virtio-nsm` device; `vhost_user` is the vhost-user-vsock backend the machine needs; `machine` boots an
EIF in it and reads the guest's NSM report. `nox -s nitro-qemu` drives all three
(`python -m nitro_qemu build`, then tests/test_nitro_qemu*.py).
"""

from __future__ import annotations


class NitroQemuError(Exception):
    """Root of this package's errors: building, starting or talking to QEMU's Nitro machine."""

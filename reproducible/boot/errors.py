"""Errors of the QEMU boot check."""

from __future__ import annotations


class BootError(Exception):
    """The image could not be booted or did not behave as the boot check expects."""

    def diagnostics(self) -> str:
        return str(self)


class BootTimeout(BootError):
    """The guest did not reach an expected point in time."""

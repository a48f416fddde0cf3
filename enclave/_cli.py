"""Root of `python -m enclave` (also `sentinel-enclave`): argparse with one subcommand per module
(`enclave/_cmd_<name>.py`, listed in `COMMANDS`, each exposing `register(subparsers)`).

Handlers raise `EnclaveError` subclasses for every expected failure; `enclave.cli.run_cli` catches
them once, prints one line on stderr and exits with the error's `exit_code` (2 bad input or
configuration, 1 refused). `-v`, `--json` and `--version` work on every subcommand; `-v` re-raises
so developers get the traceback. Standard library only: this runs inside the enclave image.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

from enclave.cli import build_root_parser, prog_name, run_cli
from enclave.errors import EnclaveError

#: Subcommand modules, `enclave._cmd_<name>`.
COMMANDS: tuple[str, ...] = ("serve", "kms-blob", "provision", "emulator-root")


def build_parser(commands: Sequence[str] = COMMANDS) -> argparse.ArgumentParser:
    return build_root_parser(
        prog=prog_name("enclave"),
        description="The Sentinel signer (runs inside the enclave).",
        package="enclave",
        commands=commands,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status (0 ok, 1 refused, 2 bad input/usage)."""
    return run_cli(build_parser(), argv, EnclaveError, log_level=logging.INFO)

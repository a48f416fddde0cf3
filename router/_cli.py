"""Root of `python -m router` (also `sentinel-router`): argparse with one subcommand per module.

Each subcommand lives in `router/_cmd_<name>.py` and is listed in `COMMANDS` below (adding one is a
one-line edit). A subcommand module exposes::

    def register(subparsers: argparse._SubParsersAction) -> None:
        parser = subparsers.add_parser("name", help="...")
        parser.set_defaults(func=run)

    def run(args: argparse.Namespace) -> int: ...   # 0 ok, 1 failed, 2 malformed input

Handlers raise `RouterError` subclasses for every expected failure; this module catches them once,
prints one line on stderr and exits with the error's `exit_code`. Data goes to stdout, status for
people to stderr. `-v`, `--json` and `--version` work on every subcommand (enclave/cli.py); a
missing `router` extra is one line naming it, exit 2. `-v` re-raises for the traceback.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from enclave.cli import prog_name
from router.errors import RouterError

# The parser, the error handling and the two output channels are verify's (router already depends
# on verify for attestation); re-exported for the subcommand modules.
from verify._cli import emit_json, make_parser, print_error, run_cli, stderr_console

__all__ = ["COMMANDS", "add_signer_argument", "add_signer_timeouts", "build_parser", "emit_json",
           "main", "stderr_console"]

#: Subcommand modules, `router._cmd_<name>`; order is the order of `--help`.
COMMANDS: tuple[str, ...] = ("sign-tx", "address", "attest", "run", "submit", "watch")


def add_signer_argument(parser: argparse.ArgumentParser) -> None:
    """`--signer ADDR`, the signer's address, for the subcommands that talk to it directly."""
    parser.add_argument(
        "--signer",
        required=True,
        metavar="ADDR",
        help="unix:PATH | tcp:127.0.0.1:PORT | vsock:CID:PORT",
    )


def add_signer_timeouts(parser: argparse.ArgumentParser) -> None:
    """`--connect-timeout S` and `--timeout S`, the `SignerClient.connect` deadlines."""
    parser.add_argument(
        "--connect-timeout", type=float, default=5.0, metavar="S",
        help="keep retrying the connection for up to S seconds (default 5)",
    )  # fmt: skip
    parser.add_argument(
        # signer_client.DEFAULT_IO_TIMEOUT, literal so that --help does not import the client
        "--timeout", type=float, default=5.0, metavar="S",
        help="give up on a connected signer that has not answered within S seconds (default 5)",
    )  # fmt: skip


def build_parser(commands: Sequence[str] = COMMANDS) -> argparse.ArgumentParser:
    return make_parser(
        prog=prog_name("router"),
        description="Parent-side tools of Sentinel: talk to the enclave signer, route transactions.",
        package="router",
        commands=commands,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status (0 ok, 1 failed, 2 malformed input/usage)."""
    return run_cli(build_parser(), argv, RouterError, print_error=print_error)

"""Root of `python -m verify` (also `sentinel-verify`): argparse with one subcommand per module.

Each subcommand lives in `verify/_cmd_<name>.py` and is listed in `COMMANDS` below (adding one is a
one-line edit). A subcommand module exposes::

    def register(subparsers: argparse._SubParsersAction) -> None:
        parser = subparsers.add_parser("name", help="...")
        parser.set_defaults(func=run)

    def run(args: argparse.Namespace) -> int: ...   # 0 ok, 1 a check failed, 2 malformed input

Handlers raise `VerifyError` subclasses for every expected failure; `enclave.cli.run_cli` catches
them once, prints one line on stderr and exits with the error's `exit_code`. Data goes to stdout
(`emit_json`, with `--json`), status for people to stderr. `-v`, `--json` and `--version` are on
every subcommand (before or after its name); `-v` re-raises so developers get the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from rich.console import Console

from enclave.cli import build_root_parser, emit_json, prog_name, run_cli
from verify.errors import VerifyError
from verify.terminal import TerminalConsole, markup_safe

__all__ = ["COMMANDS", "build_parser", "emit_json", "main", "make_parser", "print_error",
           "run_cli", "stderr_console"]

#: Subcommand modules, `verify._cmd_<name>`; order is the order of `--help`.
COMMANDS: tuple[str, ...] = ("pcr", "attestation", "enclave", "measurements", "audit", "jitter")

#: Width when stderr is not a terminal: wide enough that no hash or table row wraps in a log.
LOG_WIDTH = 4096


def stderr_console() -> Console:
    """The console for people: rich output on stderr, never mixed into `--json` data.

    It shows control characters in what it renders as escapes (verify/terminal.py): text from a
    document, EIF or file never drives the terminal. Off a terminal (a log, a pipe) it does not
    wrap: a PCR is one line that grep and copy-paste find whole.
    """
    width = None if sys.stderr.isatty() or os.environ.get("COLUMNS") else LOG_WIDTH
    return TerminalConsole(file=sys.stderr, highlight=False, soft_wrap=True, width=width)


def print_error(message: str) -> None:
    """The one line every CLI prints for an expected failure."""
    stderr_console().print(f"[bold red]error:[/] {markup_safe(message)}")


def make_parser(
    *, prog: str, description: str, package: str, commands: Sequence[str]
) -> argparse.ArgumentParser:
    """The argparse root shared by `python -m verify` and `python -m router`."""
    return build_root_parser(prog=prog, description=description, package=package,
                             commands=commands)


def build_parser(commands: Sequence[str] = COMMANDS) -> argparse.ArgumentParser:
    return make_parser(
        prog=prog_name("verify"),
        description="Check Sentinel enclave images, measurements and attestations without trusting us.",
        package="verify",
        commands=commands,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status (0 ok, 1 check failed, 2 malformed/usage)."""
    return run_cli(build_parser(), argv, VerifyError, print_error=print_error)

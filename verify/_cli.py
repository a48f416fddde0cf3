"""Root of `python -m verify`: argparse with one subcommand per module.

Each subcommand lives in `verify/_cmd_<name>.py` and is listed in `COMMANDS` below (adding one is a
one-line edit). A subcommand module exposes::

    def register(subparsers: argparse._SubParsersAction) -> None:
        parser = subparsers.add_parser("name", help="...")
        parser.add_argument("--json", action="store_true", help="machine-readable result on stdout")
        parser.set_defaults(func=run)

    def run(args: argparse.Namespace) -> int: ...   # 0 ok, 1 a check failed, 2 malformed input

Handlers raise `VerifyError` subclasses for every expected failure; this module catches them once,
prints one line on stderr and exits with the error's `exit_code`. Data goes to stdout (`--json`),
status for people to stderr. `-v` re-raises so developers get the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from typing import Any, Protocol, cast

from rich.console import Console

from verify.errors import VerifyError
from verify.terminal import TerminalConsole, markup_safe

#: Subcommand modules, `verify._cmd_<name>`; order is the order of `--help`.
COMMANDS: tuple[str, ...] = ("pcr", "attestation", "enclave", "measurements", "audit", "jitter")

logger = logging.getLogger(__name__)


def stderr_console() -> Console:
    """The console for people: rich output on stderr, never mixed into `--json` data.

    It shows control characters in what it renders as escapes (verify/terminal.py): text from a
    document, EIF or file never drives the terminal.
    """
    return TerminalConsole(file=sys.stderr, highlight=False, soft_wrap=True)


def emit_json(obj: Any) -> None:
    """Write one JSON document to stdout (the machine-readable channel)."""
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


class _CliError(Protocol):
    exit_code: int

    def diagnostics(self) -> str: ...


def make_parser(
    *, prog: str, description: str, package: str, commands: Sequence[str]
) -> argparse.ArgumentParser:
    """The argparse root shared by `python -m verify` and `python -m router`: `-v` and one
    subcommand per `<package>._cmd_<name>` module."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="debug logging; re-raise errors with tracebacks",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in commands:
        module = importlib.import_module(f"{package}._cmd_{name.replace('-', '_')}")
        module.register(subparsers)
    return parser


def run_cli(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    error_type: type[Exception],
) -> int:
    """Parse, run the chosen subcommand, and turn `error_type` into one line and its exit code.

    `error_type` is the package's error root (it has `diagnostics()` and `exit_code`).
    """
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on usage errors and 0 on --help
        return int(e.code) if isinstance(e.code, int) else 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(func(args))
    except error_type as e:
        if args.verbose:
            raise
        err = cast(_CliError, e)
        stderr_console().print(f"[bold red]error:[/] {markup_safe(err.diagnostics())}")
        return err.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 1


def build_parser(commands: Sequence[str] = COMMANDS) -> argparse.ArgumentParser:
    return make_parser(
        prog="python -m verify",
        description="Check Sentinel enclave images, measurements and attestations without trusting us.",
        package="verify",
        commands=commands,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status (0 ok, 1 check failed, 2 malformed/usage)."""
    return run_cli(build_parser(), argv, VerifyError)

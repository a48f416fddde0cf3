"""What every Sentinel command line shares: `verify`, `router`, `enclave` and `reproducible`.

Standard library only: `python -m enclave` runs inside the enclave image, where neither rich nor
the other packages exist; the other CLIs build on this module (verify/_cli.py adds rich output).

- Global options `-v/--verbose`, `--json` and `--version` are accepted before and after the
  subcommand (`add_global_options` puts them on every parser with `SUPPRESS` defaults, so a
  subcommand's parser does not reset what was given before it).
- Usage errors, the package's expected errors, a missing optional extra and Ctrl-C each end in
  one line on stderr and an exit status, never a traceback (`-v` re-raises for developers).
- `--json`: every command and every exit status prints exactly one JSON object on stdout. While
  the command runs its stdout (Python's, and file descriptor 1 for child processes) goes to
  stderr; the object is what the command gave `emit_json` (or printed as JSON), with `"error"`
  added if it then failed, else `{"command", "ok", "exit_code"[, "error"]}`. A streaming command
  (`set_defaults(json_stream=True)`, e.g. `router watch`) writes JSON Lines itself, one object a
  line as things happen; a failure adds one last line `{"command", "ok", "exit_code", "error"}`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import logging
import os
import sys
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Protocol, cast

__all__ = [
    "DIST_NAME",
    "EXTRA_MODULES",
    "CliParser",
    "add_global_options",
    "build_root_parser",
    "emit_json",
    "install_hint",
    "missing_extra",
    "prog_name",
    "project_version",
    "run_cli",
]

#: The distribution's name on package indexes ("sentinel" there is an unrelated project).
DIST_NAME = "sentinel-nitro-signer"

#: Top-level modules of the optional extras (pyproject.toml) and the extra that provides each.
EXTRA_MODULES: dict[str, str] = {
    "websockets": "router",
    "aiohttp": "router",
    "psycopg": "router",
    "psycopg_binary": "router",
    "prometheus_client": "router",
    "docker": "build",
    "zstandard": "build",
    "matplotlib": "jitter",
    "cffi": "jitter",
}


class _PackageError(Protocol):
    exit_code: int

    def diagnostics(self) -> str: ...


class UsageError(Exception):
    """The command line does not parse (exit 2); raised instead of argparse's exit."""

    def __init__(self, message: str, usage: str) -> None:
        super().__init__(message)
        self.usage = usage


class _VersionRequested(Exception):
    pass


class CliParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are raised (`UsageError`) so `run_cli` reports them once,
    with `--json` too; its subcommand parsers are of the same class."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.format_usage())


class _VersionAction(argparse.Action):
    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.pop("default", None)
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        raise _VersionRequested()


def project_version() -> str:
    """The installed distribution's version, else the source tree's pyproject.toml, else
    "unknown" (the enclave image carries the package without metadata)."""
    from importlib import metadata

    try:
        return metadata.version(DIST_NAME)
    except metadata.PackageNotFoundError:
        pass
    try:
        text = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text("utf-8")
        return str(tomllib.loads(text)["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        return "unknown"


def prog_name(module: str) -> str:
    """`sentinel-<module>` when run through its console script, else `python -m <module>`."""
    invoked = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return invoked if invoked.startswith("sentinel-") else f"python -m {module}"


def install_hint(extra: str) -> str:
    """The pip command that adds `extra` (from the index, or `.[extra]` in a clone)."""
    return f"pip install '{DIST_NAME}[{extra}]' (from a clone: pip install '.[{extra}]')"


def missing_extra(error: ImportError) -> str | None:
    """The optional extra whose module `error` could not import, or None (then it is a bug)."""
    name = (getattr(error, "name", None) or "").split(".")[0]
    return EXTRA_MODULES.get(name)


def add_global_options(parser: argparse.ArgumentParser, *, root: bool = False) -> None:
    """`-v/--verbose`, `--json` and `--version` on `parser` and, recursively, its subcommands.

    The root's defaults are False; every subcommand's are `SUPPRESS`, so an option given before
    the subcommand survives the subcommand's parsing, and one given after it counts too. A
    subcommand's own `--json` (with its own help) is kept and given the `SUPPRESS` default.
    """
    default: Any = False if root else argparse.SUPPRESS
    existing = {s for a in parser._actions for s in a.option_strings}
    for action in parser._actions:
        if "--json" in action.option_strings or "--verbose" in action.option_strings:
            action.default = default
    if "--verbose" not in existing:
        parser.add_argument("-v", "--verbose", action="store_true", default=default,
                            help="debug logging; re-raise errors with tracebacks")
    if "--json" not in existing:
        parser.add_argument("--json", action="store_true", default=default,
                            help="exactly one JSON object on stdout, whatever the exit status")
    if "--version" not in existing:
        parser.add_argument("--version", action=_VersionAction, help="print the version and exit")
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):
                add_global_options(sub)


def build_root_parser(*, prog: str, description: str, package: str,
                      commands: Sequence[str]) -> CliParser:
    """The argparse root of a CLI: one subcommand per `<package>._cmd_<name>` module (each
    exposing `register(subparsers)`) and the global options on all of them."""
    parser = CliParser(prog=prog, description=description)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in commands:
        importlib.import_module(f"{package}._cmd_{name.replace('-', '_')}").register(subparsers)
    add_global_options(parser, root=True)
    return parser


@dataclass
class _JsonChannel:
    """Collects a command's JSON object while its stdout is diverted to stderr."""

    objects: list[Any] = field(default_factory=list)
    text: io.StringIO = field(default_factory=io.StringIO)

    @contextlib.contextmanager
    def diverted(self) -> Iterator[None]:
        global _channel
        real = sys.stdout
        real.flush()
        try:  # child processes inherit fd 1: point it at stderr for the command's duration
            saved_fd: int | None = os.dup(1)
            os.dup2(2, 1)
        except OSError:
            saved_fd = None
        sys.stdout = self.text
        _channel = self
        try:
            yield
        finally:
            _channel = None
            sys.stdout = real
            if saved_fd is not None:
                os.dup2(saved_fd, 1)
                os.close(saved_fd)

    def result(self, base: dict[str, Any], error: dict[str, str] | None) -> dict[str, Any]:
        text = self.text.getvalue()
        if text.strip():
            try:  # a command that prints its JSON itself
                self.objects.append(json.loads(text))
            except ValueError:
                sys.stderr.write(text)  # not JSON: for people, on stderr
        dicts = [o if isinstance(o, dict) else {"result": o} for o in self.objects]
        obj: dict[str, Any] = {}
        for d in dicts:
            obj.update(d)
        if not obj:
            obj = dict(base)
        if error is not None:
            obj["error"] = error
        return obj


_channel: _JsonChannel | None = None


def _write_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()


def emit_json(obj: Any) -> None:
    """Hand the command's machine-readable result to the CLI layer (written to stdout once the
    command ends; at once when no CLI is running, as in library use)."""
    if _channel is not None:
        _channel.objects.append(obj)
    else:
        _write_json(obj)


def _argv_wants_json(argv: Sequence[str]) -> bool:
    return "--json" in list(argv)[: list(argv).index("--")] if "--" in argv else "--json" in argv


def _command_name(args: argparse.Namespace) -> str | None:
    parts = [getattr(args, k, None) for k in ("command", "action")]
    named = [p for p in parts if isinstance(p, str)]
    return " ".join(named) or None


def _plain_error(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)


def run_cli(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None,
    error_type: type[Exception],
    *,
    print_error: Callable[[str], None] = _plain_error,
    log_level: int = logging.WARNING,
    call: Callable[[Callable[..., int], argparse.Namespace], int] = lambda f, a: f(a),
) -> int:
    """Parse `argv`, run the chosen subcommand and return the process exit status.

    `error_type` is the package's error root (`diagnostics()`, `exit_code`). Exit 2 for usage
    errors and missing extras, 130 for Ctrl-C; `print_error` shows the one line on stderr.

    Raises:
        BaseException: only with `-v`, the original error (for its traceback).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    wants_json = _argv_wants_json(argv)
    try:
        # help and version text are for people: on stderr when stdout carries JSON
        with contextlib.redirect_stdout(sys.stderr) if wants_json else contextlib.nullcontext():
            args = parser.parse_args(argv)
    except UsageError as e:
        sys.stderr.write(e.usage)
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        if wants_json:
            _write_json({"command": None, "ok": False, "exit_code": 2,
                         "error": {"type": "UsageError", "message": str(e)}})
        return 2
    except _VersionRequested:
        version = project_version()
        if wants_json:
            _write_json({"name": DIST_NAME, "version": version})
        else:
            print(f"{parser.prog} {version}")
        return 0
    except SystemExit as e:  # --help
        code = e.code if isinstance(e.code, int) else 0
        if wants_json:
            _write_json({"command": None, "ok": code == 0, "exit_code": code})
        return code
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else log_level,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    command = _command_name(args)
    streaming = args.json and getattr(args, "json_stream", False)
    channel = _JsonChannel() if args.json and not streaming else None
    error: dict[str, str] | None = None
    code = 1
    try:
        with channel.diverted() if channel is not None else contextlib.nullcontext():
            code, error = _invoke(parser, args, error_type, print_error, call)
    except BaseException as e:  # only -v gets here: the JSON object first, then the traceback
        code, error = 1, {"type": type(e).__name__, "message": str(e)}
        raise
    finally:
        if channel is not None:
            base = {"command": command, "ok": code == 0, "exit_code": code}
            _write_json(channel.result(base, error))
        elif streaming and error is not None:
            sys.stdout.write(json.dumps({"command": command, "ok": False, "exit_code": code,
                                         "error": error}) + "\n")
            sys.stdout.flush()
    return code


def _invoke(
    parser: argparse.ArgumentParser,
    args: argparse.Namespace,
    error_type: type[Exception],
    print_error: Callable[[str], None],
    call: Callable[[Callable[..., int], argparse.Namespace], int],
) -> tuple[int, dict[str, str] | None]:
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help(sys.stderr)
        return 2, {"type": "UsageError", "message": "no command given"}
    try:
        return int(call(func, args)), None
    except error_type as e:
        if args.verbose:
            raise
        err = cast(_PackageError, e)
        print_error(err.diagnostics())
        return err.exit_code, {"type": type(e).__name__, "message": err.diagnostics()}
    except ImportError as e:
        extra = missing_extra(e)
        if extra is None or args.verbose:
            raise
        message = (f"{parser.prog} {_command_name(args)} needs the '{extra}' extra "
                   f"(no module named {e.name!r}): {install_hint(extra)}")
        print_error(message)
        return 2, {"type": "MissingExtra", "message": message}
    except KeyboardInterrupt:
        print_error("interrupted")
        return 130, {"type": "KeyboardInterrupt", "message": "interrupted"}
    except BrokenPipeError:
        return 1, {"type": "BrokenPipeError", "message": "stdout closed"}

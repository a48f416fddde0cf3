"""The CLI layer every Sentinel command line shares (enclave/cli.py): `--json` gives exactly one
JSON object on stdout for every command and exit status, `-v`/`--json`/`--version` work after the
subcommand, a missing extra is one line (exit 2), and logs never wrap a hash."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from enclave.cli import CliParser, add_global_options, emit_json, run_cli
from verify.eif import write_eif
from verify.errors import MalformedInput, VerifyError
from verify.pcr import measure_eif

ROOT = Path(__file__).resolve().parents[1]
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
CLIS = ("verify", "router", "enclave", "reproducible")
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _cli(module: str, *argv: str, env: dict[str, str] | None = None,
         code: str | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-c", code, *argv] if code else [sys.executable, "-m", module, *argv]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env=env or ENV)


def _one_object(stdout: str) -> dict[str, object]:
    """json.loads fails on two documents or trailing text: this asserts "exactly one"."""
    obj = json.loads(stdout)
    assert isinstance(obj, dict), stdout
    return obj


def _parsers() -> dict[str, argparse.ArgumentParser]:
    from enclave._cli import build_parser as enclave_parser
    from reproducible._cli import _parser as reproducible_parser
    from router._cli import build_parser as router_parser
    from verify._cli import build_parser as verify_parser

    return {"verify": verify_parser(), "router": router_parser(), "enclave": enclave_parser(),
            "reproducible": reproducible_parser()}


def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                below = _command_paths(sub, (*prefix, name))
                paths.extend(below or [(*prefix, name)])
    return paths


EVERY_COMMAND = [(cli, path) for cli, p in _parsers().items() for path in _command_paths(p)]


def test_every_cli_has_the_expected_commands() -> None:
    names = {(cli, " ".join(path)) for cli, path in EVERY_COMMAND}
    for expected in [("verify", "pcr"), ("verify", "jitter"), ("router", "run"),
                     ("enclave", "serve"), ("reproducible", "build"),
                     ("reproducible", "inputs export")]:
        assert expected in names


@pytest.mark.parametrize("cli", CLIS)
def test_version_on_every_cli_and_after_a_subcommand(cli: str) -> None:
    done = _cli(cli, "--version")
    assert (done.returncode, done.stdout) == (0, f"python -m {cli} {VERSION}\n"), done.stderr
    first = next(path for c, path in EVERY_COMMAND if c == cli)
    after = _cli(cli, *first, "--version")
    assert (after.returncode, after.stdout) == (0, f"python -m {cli} {VERSION}\n"), after.stderr
    as_json = _cli(cli, "--json", "--version")
    assert as_json.returncode == 0
    assert _one_object(as_json.stdout) == {"name": "sentinel-nitro-signer", "version": VERSION}


@pytest.mark.parametrize(("cli", "path"), EVERY_COMMAND, ids=[f"{c}-{'-'.join(p)}" for c, p in EVERY_COMMAND])
def test_usage_error_of_every_command_is_one_json_object(
    cli: str, path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    from enclave._cli import main as enclave_main
    from reproducible._cli import main as reproducible_main
    from router._cli import main as router_main
    from verify._cli import main as verify_main

    main = {"verify": verify_main, "router": router_main, "enclave": enclave_main,
            "reproducible": reproducible_main}[cli]
    rc = main([*path, "--json", "--no-such-option"])
    out, err = capsys.readouterr()
    obj = _one_object(out)
    assert rc == 2 and obj["exit_code"] == 2 and obj["ok"] is False
    error = obj["error"]
    assert isinstance(error, dict) and error["type"] == "UsageError"
    assert f"error: {error['message']}" in err  # missing required arguments or the unknown option
    assert "usage:" in err and "Traceback" not in err


# One bad input per command, run as a real process: the error root's exit status and its message
# in one JSON object (before this, pcr, enclave and audit printed nothing on stdout).
BAD_INPUTS = [
    ("verify", ["--json", "pcr", "/nonexistent"], "MalformedInput"),
    ("verify", ["attestation", "/nonexistent", "--allow-no-policy", "--json"], "MalformedInput"),
    ("verify", ["enclave", "--measurements", "/nonexistent", "--json"], "MalformedMeasurements"),
    ("verify", ["measurements", "/nonexistent", "--key", "/nonexistent", "--json"], "MalformedInput"),
    ("verify", ["audit", "--cpus", "garbage", "--json"], "MalformedCpuList"),
    ("verify", ["jitter", "--duration", "-1", "--json"], "InvalidJitterOption"),
    ("router", ["sign-tx", "--signer", "unix:/nonexistent", "--tx", "/nonexistent", "--json"],
     "MalformedInput"),
    ("router", ["address", "--signer", "bogus", "--json"], "MalformedInput"),
    ("router", ["run", "--config", "/nonexistent", "--json"], "ConfigError"),
    ("router", ["submit", "--router", "unix:/nonexistent", "--to", "0x00", "--value", "1", "--json"],
     "MalformedInput"),
    ("enclave", ["serve", "--listen", "bogus", "--json"], "TransportError"),
    ("enclave", ["provision", "--enclave", "bogus", "--blob", "/nonexistent", "--json"],
     "KeyLoadError"),
    ("reproducible", ["lock", "--lock", "/nonexistent", "--dry-run", "--json"], "LockError"),
    ("reproducible", ["deploy", "--measurements", "/nonexistent", "--out", "{tmp}", "--json"],
     "DeployError"),
]


@pytest.mark.parametrize(("cli", "argv", "kind"), BAD_INPUTS,
                         ids=[f"{c}-{a[0] if a[0] != '--json' else a[1]}" for c, a, _ in BAD_INPUTS])
def test_bad_input_is_exit_2_and_one_json_object(
    cli: str, argv: list[str], kind: str, tmp_path: Path
) -> None:
    done = _cli(cli, *[a.replace("{tmp}", str(tmp_path / "out")) for a in argv])
    obj = _one_object(done.stdout)
    assert done.returncode == 2, done.stderr
    error = obj["error"]
    assert isinstance(error, dict) and error["type"] == kind
    assert error["message"] in done.stderr  # the same one line people read
    assert "Traceback" not in done.stderr


def _eif(path: Path) -> Path:
    write_eif(path, kernel=b"K" * 100, cmdline=b"console=ttyS0", ramdisks=[b"r0" * 10])
    return path


def test_exit_0_and_exit_1_each_print_one_json_object(tmp_path: Path) -> None:
    eif = _eif(tmp_path / "a.eif")
    ok = _cli("verify", "pcr", str(eif), "--json")
    assert ok.returncode == 0, ok.stderr
    described = _one_object(ok.stdout)
    pcr0 = measure_eif(eif).pcrs[0].hex()
    assert described["Measurements"]["PCR0"] == pcr0  # type: ignore[index]
    wrong = json.loads(ok.stdout)
    wrong["Measurements"]["PCR0"] = "00" * 48
    (tmp_path / "wrong.json").write_text(json.dumps(wrong))
    bad = _cli("verify", "pcr", str(eif), "--measurements", str(tmp_path / "wrong.json"), "--json")
    assert bad.returncode == 1, bad.stderr
    _one_object(bad.stdout)


def test_json_before_or_after_the_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    from verify._cli import main

    for argv in (["--json", "pcr", "/nonexistent"], ["pcr", "/nonexistent", "--json"]):
        assert main(argv) == 2
        assert _one_object(capsys.readouterr().out)["error"] == {
            "type": "MalformedInput", "message": "no such EIF file: /nonexistent"}
    assert main(["pcr", "/nonexistent"]) == 2
    assert capsys.readouterr().out == ""  # without --json, stdout stays empty


@pytest.mark.parametrize("argv", [["-v", "pcr", "/nonexistent"], ["pcr", "/nonexistent", "-v"]])
def test_verbose_before_or_after_the_subcommand_reraises(argv: list[str]) -> None:
    from verify._cli import main

    with pytest.raises(MalformedInput, match="no such EIF file"):
        main(argv)


def _talk(args: argparse.Namespace) -> int:
    print("chatter for people")  # not JSON: must end up on stderr
    subprocess.run(["sh", "-c", "echo child-output"], check=True)  # fd 1 of a child process
    if args.fail:
        raise MalformedInput("it went wrong")
    if args.emit:
        emit_json({"answer": 42})
    return 0


def _talk_parser() -> CliParser:
    parser = CliParser(prog="talk")
    sub = parser.add_subparsers(dest="command")
    talk = sub.add_parser("talk")
    talk.add_argument("--fail", action="store_true")
    talk.add_argument("--emit", action="store_true")
    talk.set_defaults(func=_talk)
    add_global_options(parser, root=True)
    return parser


@pytest.mark.parametrize(
    ("argv", "rc", "expected"),
    [
        (["talk"], 0, {"command": "talk", "ok": True, "exit_code": 0}),
        (["talk", "--emit"], 0, {"answer": 42}),
        (["talk", "--fail"], 2, {"command": "talk", "ok": False, "exit_code": 2,
                                 "error": {"type": "MalformedInput", "message": "it went wrong"}}),
    ],
    ids=["no-data", "data", "error"],
)
def test_stdout_carries_only_the_object(
    argv: list[str], rc: int, expected: dict[str, object], capfd: pytest.CaptureFixture[str]
) -> None:
    assert run_cli(_talk_parser(), [*argv, "--json"], VerifyError) == rc
    out, err = capfd.readouterr()
    assert _one_object(out) == expected
    assert "chatter for people" in err and "child-output" in err
    # without --json the command's own stdout is left alone
    assert run_cli(_talk_parser(), ["talk"], VerifyError) == 0
    out, _ = capfd.readouterr()
    assert out == "chatter for people\nchild-output\n"


_HIDE = "import sys\nfor m in {mods!r}: sys.modules[m] = None\nfrom {pkg}._cli import main\nraise SystemExit(main())"


@pytest.mark.parametrize(
    ("pkg", "hidden", "argv", "extra"),
    [
        ("router", ["websockets", "aiohttp", "psycopg"], ["run", "--config", "x.toml"], "router"),
        ("verify", ["matplotlib"], ["jitter", "--duration", "0.01", "--plot", "/tmp/j.png"], "jitter"),
        ("reproducible", ["docker"], ["build", "--from-image", "x", "--out", "{tmp}"], "build"),
    ],
    ids=["router", "jitter", "build"],
)
def test_missing_extra_is_one_line_naming_it(
    pkg: str, hidden: list[str], argv: list[str], extra: str, tmp_path: Path
) -> None:
    # sys.modules[name] = None is how Python itself marks a module as not importable.
    code = _HIDE.format(mods=hidden, pkg=pkg)
    args = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    for json_flag in ([], ["--json"]):
        done = _cli(pkg, *args, *json_flag, code=code)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        lines = [ln for ln in done.stderr.splitlines() if "error" in ln]
        assert len(lines) == 1, done.stderr
        assert f"'{extra}' extra" in lines[0]
        assert f"pip install 'sentinel-nitro-signer[{extra}]'" in lines[0]
        if json_flag:
            assert extra in str(_one_object(done.stdout)["error"])


def test_logs_do_not_wrap_hashes(tmp_path: Path) -> None:
    eif = _eif(tmp_path / "a.eif")
    env = {k: v for k, v in ENV.items() if k != "COLUMNS"}
    done = _cli("verify", "pcr", str(eif), env=env)  # stderr is a pipe, as in a log
    assert done.returncode == 0, done.stderr
    for value in measure_eif(eif).pcrs.values():
        assert any(value.hex() in line for line in done.stderr.splitlines()), done.stderr


def test_console_off_a_terminal_keeps_long_lines_and_table_cells_whole(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # reproducible's build prints "PCR0 <96 hex>" and the attestation table folds its detail
    # column: at rich's default 80 columns off a terminal both were cut in two in a log.
    from rich.table import Table

    from verify._cli import stderr_console

    monkeypatch.delenv("COLUMNS", raising=False)
    digest = "ab" * 48
    console = stderr_console()
    console.print(f"PCR0 {digest}", highlight=False)
    table = Table()
    for column in ("check", "result", "detail"):
        table.add_column(column, overflow="fold")
    table.add_row("pcrs", "FAIL", f"PCR0: got {digest}, expected {'cd' * 48}")
    console.print(table)
    err = capsys.readouterr().err
    assert f"PCR0 {digest}\n" in err
    assert any(f"PCR0: got {digest}, expected {'cd' * 48}" in line for line in err.splitlines())

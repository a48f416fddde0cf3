"""The README, run as written: its two set-up commands' set-up (nox from its own venv, with
Debian's externally managed python3 where there is one), the customers' install in a fresh venv
(the package index is the only network) and then every "Verifying" command, asserting exit codes.

Slow (a fresh venv and `pip install .`, a build): marked so, and run by `nox -s tests`.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DEBIAN_PYTHON = Path("/usr/bin/python3")
ATTESTATION_DOC = ROOT / "tests" / "assets" / "attestation" / "evervault_beta_valid_2022.bin"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1200)]


def sh_block(heading: str) -> list[str]:
    """The commands of the first ```sh block under `## heading`: continuations joined, trailing
    comments dropped."""
    section = README.split(f"\n## {heading}", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    lines = block.replace("\\\n", " ").splitlines()
    return [re.sub(r"\s+#\s.*$", "", line).strip() for line in lines if line.strip()]


def _noxfile_sessions() -> dict[str, str]:
    """Session name -> docstring, read from noxfile.py's source."""
    tree = ast.parse((ROOT / "noxfile.py").read_text())
    out = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and any(
            "session" in ast.unparse(d) for d in node.decorator_list
        ):
            name = node.name
            for d in node.decorator_list:
                if isinstance(d, ast.Call):
                    for kw in d.keywords:
                        if kw.arg == "name":
                            name = ast.literal_eval(kw.value)
            out[name] = ast.get_docstring(node) or ""
    return out


def test_setup_lines_work_from_a_fresh_venv_with_the_system_python(tmp_path: Path) -> None:
    lines = sh_block("Set-up")
    assert len(lines) == 2, lines
    env = {**os.environ, "NOXW_VENV": str(tmp_path / "nox-venv")}
    externally_managed = list(DEBIAN_PYTHON.parent.glob("../lib/python3*/EXTERNALLY-MANAGED"))
    if DEBIAN_PYTHON.exists() and externally_managed:
        env["PYTHON"] = str(DEBIAN_PYTHON)  # the interpreter issue 15 saw refuse `pip install`
    listing = ""
    for line in lines:
        words = shlex.split(line)
        assert words[0] == "./noxw" and words[1] == "-s", line
        # the line's set-up, then the session list in place of running the session itself
        done = subprocess.run([words[0], "-l"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-2000:]
        assert f"- {words[2]}" in done.stdout or f"* {words[2]}" in done.stdout, done.stdout
        listing = done.stdout
    assert (tmp_path / "nox-venv" / "bin" / "nox").exists()
    # `nox -l` shows each session's first docstring line: each must be the whole summary.
    for name, doc in _noxfile_sessions().items():
        first_paragraph = doc.split("\n\n")[0]
        assert "\n" not in first_paragraph, f"{name}: nox -l would cut {first_paragraph!r}"
        assert f"{name} -> {first_paragraph}" in listing, (name, listing)


def _clean_copy(dest: Path) -> Path:
    """The repository's tracked files, as a fresh clone has them (no build/, no venvs)."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        if (ROOT / name).is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    return dest


def _pcrs(path: Path) -> dict[str, str]:
    m = json.loads(path.read_text())["Measurements"]
    return {k: v for k, v in m.items() if k.startswith("PCR")}


def test_customer_install_then_every_verifying_command(tmp_path: Path) -> None:
    src = _clean_copy(tmp_path / "clone")
    home = tmp_path / "home"
    home.mkdir()
    base_env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    base_env["HOME"] = str(home)
    install = "\n".join(sh_block("For customers: install"))
    env_file = tmp_path / "customer.env"
    done = subprocess.run(["sh", "-ec", f"{install}\nenv -0 > {shlex.quote(str(env_file))}"],
                          cwd=src, env=base_env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    customer_env = dict(
        item.split("=", 1) for item in env_file.read_text().split("\0") if "=" in item
    )
    venv_bin = Path(customer_env["VIRTUAL_ENV"]) / "bin"
    assert str(venv_bin) in customer_env["PATH"]
    assert not (src / "build").exists(), "pip's build output went into build/ (the EIF's folder)"

    # What the Verifying commands read: an image built here, the published files, a document.
    work = tmp_path / "work"
    shutil.copytree(ROOT / "measurements", work / "measurements")
    built = subprocess.run([sys.executable, "-m", "reproducible", "build", "--out",
                            str(work / "build")], cwd=ROOT, capture_output=True, text=True,
                           timeout=900)
    assert built.returncode == 0, built.stderr[-3000:]
    commands = sh_block("Verifying")
    # the release the README verifies against: the pcr line's --measurements file
    published_file = re.search(r"--measurements (\S+)", commands[0])
    assert published_file is not None and "verify pcr" in commands[0], commands[0]
    published = _pcrs(work / published_file.group(1))
    ours = _pcrs(work / "build" / "measurements.json")
    same_image = 0 if ours == published else 1  # 1 until a release publishes this tree's PCRs
    (work / "describe.json").write_text(json.dumps([{
        "EnclaveName": "sentinel", "EnclaveID": "i-0123456789abcdef0-enc0123456789abcdef",
        "ProcessID": 4242, "EnclaveCID": 16, "NumberOfCPUs": 2, "CPUIDs": [1, 3],
        "MemoryMiB": 1024, "State": "RUNNING", "Flags": "NONE",
        "Measurements": {"HashAlgorithm": "Sha384 { ... }", **ours},
    }]))
    shutil.copy(ATTESTATION_DOC, work / "doc.bin")
    expected = {
        "pcr": same_image,
        "measurements": 0,  # signed by the dev key published beside it
        # a real AWS document from 2022: its chain has expired and its PCRs are not ours
        "attestation": 1,
        "enclave": same_image,
        "audit": None,  # depends on this host's tuning: checked against its own verdict
        "jitter": 0 if 1 in os.sched_getaffinity(0) else 2,  # --cpu 1 where there is one
    }
    assert [shlex.split(c)[3] for c in commands] == list(expected)
    for command in commands:
        name = shlex.split(command)[3]
        line = re.sub(r"\[([^\]]*)\]", r"\1", command)  # optional parts: given
        line = line.replace(" DOC ", " doc.bin ").replace(" HEX", " 00")
        run = subprocess.run(["sh", "-c", line], cwd=work, env=customer_env, capture_output=True,
                             text=True, timeout=300)
        assert "Traceback" not in run.stderr, (line, run.stderr)
        if expected[name] is None:
            report = json.loads(run.stdout)
            if "verdict" in report:
                assert run.returncode == (0 if report["verdict"] == "pass" else 1), run.stderr
            else:  # --cpus 2-3 on a machine without those CPUs: refused as input
                assert run.returncode == 2 and report["error"], (line, run.stderr)
        else:
            assert run.returncode == expected[name], (line, run.returncode, run.stderr[-2000:])

    # the console scripts, and the extras a customer install leaves out: one line, exit 2
    version = subprocess.run(["sentinel-verify", "--version"], env=customer_env, cwd=work,
                             capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("sentinel-verify ")
    for argv, extra in ((["sentinel-router", "run", "--config", "router.toml"], "router"),
                        (["sentinel-verify", "jitter", "--plot", "j.png"], "jitter")):
        run = subprocess.run(argv, env=customer_env, cwd=work, capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 2, (argv, run.stderr)
        assert "Traceback" not in run.stderr
        assert f"pip install 'sentinel-nitro-signer[{extra}]'" in run.stderr, run.stderr

"""The reproduce proof's source copies: committed content (git HEAD), varied mtimes."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from reproducible.reproduce import VARIANTS, copy_tree


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
                   cwd=repo, check=True, capture_output=True)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_copy_is_the_committed_tree_not_the_working_tree(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "enclave").mkdir(parents=True)
    (repo / "enclave" / "a.py").write_text("committed\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "c")
    (repo / "enclave" / "a.py").write_text("edited, not committed\n")
    (repo / "enclave" / "junk.py").write_text("untracked\n")
    dest = tmp_path / "copy"
    copy_tree(repo, dest, mtime=1_000_000_000)
    assert (dest / "enclave" / "a.py").read_text() == "committed\n"
    assert not (dest / "enclave" / "junk.py").exists()
    assert (dest / "enclave" / "a.py").stat().st_mtime != (repo / "enclave" / "a.py").stat().st_mtime
    assert abs((dest / "enclave" / "a.py").stat().st_mtime - 1_000_000_000) < 100


def test_copy_without_git_skips_build_dirs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    for rel in ("enclave/a.py", "build/sentinel.eif", ".venv/x", "enclave/__pycache__/a.pyc"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("x")
    dest = tmp_path / "copy"
    copy_tree(src, dest, mtime=None)
    got = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert got == ["enclave/a.py"]


def test_variants_differ_in_everything_the_issue_names() -> None:
    a, b = VARIANTS
    assert a.tz != b.tz and a.umask != b.umask and a.lc_all != b.lc_all
    assert a.mtime != b.mtime and a.hash_seed != b.hash_seed
    assert b.source_date_epoch is not None


def test_inputs_that_are_not_an_inputs_directory_are_refused_before_building(tmp_path: Path) -> None:
    import sys

    (tmp_path / "plain").mkdir()
    res = subprocess.run([sys.executable, "-m", "reproducible.reproduce", "--inputs",
                          str(tmp_path / "plain")], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parent.parent)
    assert res.returncode == 2
    assert "neither manifest.json" in res.stderr and "oci-layout" in res.stderr
    assert "build a" not in res.stderr  # nothing was built


def test_export_from_a_cache_without_the_inputs_fails_with_the_exports_code(tmp_path: Path) -> None:
    from rich.console import Console

    from reproducible.reproduce import ROOT, export_from

    with pytest.raises(SystemExit) as e:
        export_from(tmp_path / "empty-cache", ROOT, tmp_path / "inputs", Console(quiet=True))
    assert e.value.code == 2  # offline: an empty cache cannot be exported, nothing is fetched

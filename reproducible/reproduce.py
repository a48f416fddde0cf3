"""`python -m reproducible.reproduce`: the reproducibility proof that `nox -s reproduce` runs.

Two builds, each from its own fresh copy of the committed source tree (git HEAD) in its own temporary directory, with a
different TZ, umask, LC_ALL, HOME and source-file mtimes, and by default each with its own empty
cache and its inputs from a different source: build a from the configured Debian mirror and
package index, build b offline from an exported inputs directory alone (`--inputs DIR`, such as a
release's published one; otherwise `inputs export` of what build a fetched, every file re-checked
against the lock's sha256). `--warm` builds both from the user's cache instead (fast, not
independent). Both EIFs must have the same sha256, and their PCRs must equal the committed
measurements/<version>.json (each build runs with `--check`), as must the EIF's sha256 recorded
there. Exit 0 when all hold, 1 when something differs, 2 on usage or build errors.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from reproducible.build import published_path
from reproducible.cache import default_root, sha256_file

ROOT = Path(__file__).resolve().parent.parent
SKIP_DIRS = {".git", ".nox", ".venv", "build", "node_modules", "__pycache__", ".pytest_cache",
             ".ruff_cache", ".hypothesis", "sentinel.egg-info"}


@dataclass(frozen=True)
class Variant:
    name: str
    tz: str
    umask: int
    lc_all: str
    mtime: int | None  # None: leave the copy's mtimes at "now"
    hash_seed: str
    source_date_epoch: str | None  # a stray SOURCE_DATE_EPOCH must not win over the lock's


VARIANTS = (
    Variant("a", "UTC", 0o022, "C", None, "1", None),
    Variant("b", "Pacific/Kiritimati", 0o077, "C.UTF-8", 1_000_000_000, "4242", "1234567890"),
)


def _git_head_tar(root: Path) -> bytes | None:
    """The committed tree (HEAD) as a tar, when this is a git checkout: what gets published must
    be what was committed, not whatever the working tree holds at the moment."""
    if not (root / ".git").exists() or shutil.which("git") is None:
        return None
    res = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=root, capture_output=True)
    return res.stdout if res.returncode == 0 else None


def copy_tree(root: Path, dest: Path, mtime: int | None) -> None:
    """A fresh copy of the sources: git's HEAD when available, else every file outside build dirs."""
    dest.mkdir(parents=True, exist_ok=True)
    blob = _git_head_tar(root)
    if blob is not None:
        with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
            tar.extractall(dest, filter="data")
        files = [p for p in dest.rglob("*") if p.is_file()]
    else:
        files = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS)
            for f in sorted(filenames):
                src = Path(dirpath) / f
                target = dest / src.relative_to(root)
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, target)
                shutil.copymode(src, target)
                files.append(target)
    if mtime is not None:
        for target in files:
            rel = target.relative_to(dest)
            os.utime(target, (mtime + len(rel.parts), mtime + len(str(rel))))


def _env(v: Variant, src: Path, home: Path, cache: Path) -> dict[str, str]:
    env = {k: val for k, val in os.environ.items() if not k.startswith(("LC_", "SOURCE_DATE"))}
    env.update(TZ=v.tz, LC_ALL=v.lc_all, LANG=v.lc_all, HOME=str(home), PYTHONHASHSEED=v.hash_seed,
               XDG_CACHE_HOME=str(cache), PYTHONPATH=str(src), PYTHONDONTWRITEBYTECODE="1")
    if v.source_date_epoch is not None:
        env["SOURCE_DATE_EPOCH"] = v.source_date_epoch
    return env


def export_from(cache: Path, src: Path, dest: Path, console: Console) -> Path:
    """`inputs export` of the pins found in `cache` (offline: nothing is fetched) into `dest`.

    Raises:
        SystemExit: the export failed (its exit code).
    """
    env = dict(os.environ, XDG_CACHE_HOME=str(cache), PYTHONPATH=str(src),
               PYTHONDONTWRITEBYTECODE="1")
    console.print(f"[bold]export[/bold] the inputs build a fetched into {dest}", highlight=False)
    res = subprocess.run([sys.executable, "-m", "reproducible", "inputs", "export", str(dest),
                          "--offline"], cwd=src, env=env)
    if res.returncode != 0:
        raise SystemExit(res.returncode)
    return dest


def run_variant(v: Variant, root: Path, work: Path, cache: Path, console: Console,
                check: bool = True, inputs: Path | None = None) -> Path:
    """Build variant `v` in `work` with `cache`; with `inputs`, offline from that directory.

    Raises:
        SystemExit: the build failed (its exit code).
    """
    src = work / "src"
    copy_tree(root, src, v.mtime)
    home = work / "home"
    home.mkdir()
    env = _env(v, src, home, cache)
    out = work / "build"
    cmd = [sys.executable, "-m", "reproducible", "build", "--out", str(out)]
    if check:
        cmd.append("--check")
    if inputs is not None:
        cmd += ["--offline", "--inputs", str(inputs)]
    source = f"inputs {inputs}" if inputs is not None else "mirror and package index"
    console.print(f"[bold]build {v.name}[/bold]: TZ={v.tz} umask={v.umask:04o} LC_ALL={v.lc_all} "
                  f"mtimes={'now' if v.mtime is None else v.mtime} PYTHONHASHSEED={v.hash_seed} "
                  f"SOURCE_DATE_EPOCH={v.source_date_epoch or 'unset'} cache={cache} "
                  f"source={source} in {work}", highlight=False)
    res = subprocess.run(cmd, cwd=src, env=env, preexec_fn=lambda: os.umask(v.umask))
    if res.returncode != 0:
        raise SystemExit(res.returncode)
    return out / "sentinel.eif"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reproducible.reproduce", description=__doc__)
    p.add_argument("--keep", action="store_true", help="keep the temporary directories")
    p.add_argument("--publish", action="store_true",
                   help="release step: when both builds agree, write their measurements to "
                        "measurements/<version>.json instead of checking against it")
    p.add_argument("--warm", action="store_true",
                   help="build both from your own cache (fast; by default each build starts "
                        "from an empty cache of its own)")
    p.add_argument("--inputs", metavar="DIR", type=Path,
                   help="an exported inputs directory for build b (default: export build a's)")
    args = p.parse_args(argv)
    console = Console(file=sys.stderr)
    if args.inputs is not None:
        args.inputs = args.inputs.resolve()  # the builds run in other directories
        if not any((args.inputs / f).is_file() for f in ("manifest.json", "oci-layout")):
            console.print(f"[red]--inputs {args.inputs}: neither manifest.json (inputs export) "
                          "nor oci-layout (an OCI artifact)[/red]", highlight=False)
            return 2
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    assert default_root().parent == user_cache
    eifs = []
    tmps = []
    sources: dict[str, str] = {}
    try:
        for v in VARIANTS:
            work = Path(tempfile.mkdtemp(prefix=f"sentinel-reproduce-{v.name}-"))
            tmps.append(work)
            cache = user_cache if args.warm else work / "cache"
            inputs = None
            if v.name == "b" and not args.warm:
                inputs = args.inputs
            try:
                if v.name == "b" and not args.warm and inputs is None:
                    inputs = export_from(tmps[0] / "cache", tmps[0] / "src", work / "inputs",
                                         console)
                eifs.append(run_variant(v, ROOT, work, cache, console, check=not args.publish,
                                        inputs=inputs))
                sources[v.name] = (f"inputs {inputs}" if inputs is not None
                                   else "cache" if args.warm else "mirror")
            except SystemExit as e:
                console.print(f"[red]build {v.name} failed (exit {e.code})[/red]")
                if e.code == 1:
                    console.print("if the payload, the lock or the builder changed on purpose: "
                                  "`nox -s reproduce -- --publish`, then commit measurements/")
                return int(e.code or 2)
        digests = [sha256_file(e) for e in eifs]
        from reproducible.build import project_version

        published = published_path(ROOT / "measurements", project_version(), "development")
        for v, d in zip(VARIANTS, digests, strict=True):
            console.print(f"build {v.name}: sha256 {d}", highlight=False)
        if len(set(digests)) != 1:
            console.print("[red]NOT reproducible: the two EIFs differ[/red]")
            return 1
        recorded = None
        if published.is_file():
            recorded = json.loads(published.read_text()).get("Sentinel", {}).get("eif_sha256")
        if args.publish:
            published.write_bytes((eifs[0].parent / "measurements.json").read_bytes())
            console.print(f"[green]reproducible:[/green] published {published}", highlight=False)
            return 0
        if recorded != digests[0]:
            console.print(f"[red]EIF sha256 {digests[0]} differs from {published}'s "
                          f"{recorded}[/red]", highlight=False)
            return 1
        console.print(f"[green]reproducible:[/green] same sha256, PCRs and sha256 equal {published}",
                      highlight=False)
        print(json.dumps({"reproducible": True, "eif_sha256": digests[0],
                          "measurements": str(published), "sources": sources,
                          "empty_caches": not args.warm}))
        return 0
    finally:
        if not args.keep:
            for t in tmps:
                shutil.rmtree(t, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())

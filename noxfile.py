"""Every Sentinel workflow is a nox session: `nox -l` lists them.

The README's two set-up commands are `./noxw -s build-eif` and `./noxw -s tests` (nox from its own
venv: Debian's python3 refuses pip installs, PEP 668); both must work on a fresh Debian machine as
root, so sessions install what they need (apt, npm) when it is missing. `nox -l` shows each
session's first docstring line: keep it a whole sentence (tests/test_readme_setup.py checks it).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv|virtualenv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["lint", "tests"]

ROOT = Path(__file__).parent
BUILD = ROOT / "build"
NODE_DIR = ROOT / "tests" / "node"

# Debian packages the test suite drives for real (see README "What the tests use").
# postgresql: the router journal's active/standby backend (tests/postgres_support.py starts one).
TEST_APT_PACKAGES = [
    "qemu-system-x86", "podman", "busybox-static", "cpio", "xz-utils", "postgresql"
]


# Building QEMU's nitro-enclave machine from Debian's source (tests/nitro_qemu/build.py): libcbor and
# gnutls enable the machine and virtio-nsm; meson>=1.5 and pycotap come from PyPI (below).
NITRO_QEMU_APT_PACKAGES = [
    "qemu-system-x86", "dpkg-dev", "gcc", "make", "pkg-config", "ninja-build", "flex", "bison",
    "libcbor-dev", "libfdt-dev", "libgnutls28-dev", "libglib2.0-dev", "libpixman-1-dev",
]


def ensure_apt(session: nox.Session, packages: list[str]) -> None:
    """Install missing Debian packages; the sessions run as root on a fresh machine."""
    missing = [
        p
        for p in packages
        if subprocess.run(
            ["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True
        ).stdout.strip()
        != "install ok installed"
    ]
    if not missing:
        return
    if os.geteuid() != 0:
        session.error(f"missing Debian packages {missing}: install them (needs root)")
    env = {"DEBIAN_FRONTEND": "noninteractive"}
    session.run("apt-get", "update", "-q", external=True, env=env)
    session.run(
        "apt-get", "install", "-y", "-q", "--no-install-recommends", *missing, external=True, env=env
    )


def ensure_anvil(session: nox.Session) -> Path:
    """Install the pinned npm packages (tests/node/package-lock.json: anvil, cast, ethers)."""
    binary = NODE_DIR / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
    # The gateway's client tests need the other pinned tools too (cast, ethers): a node_modules
    # from before they were pinned is completed by the same `npm ci`.
    others = [NODE_DIR / "node_modules" / "@foundry-rs" / "cast-linux-amd64" / "bin" / "cast",
              NODE_DIR / "node_modules" / "ethers" / "package.json"]
    if not all(p.exists() for p in (binary, *others)):
        if shutil.which("npm") is None:
            ensure_apt(session, ["npm"])
        with session.chdir(NODE_DIR):
            session.run("npm", "ci", "--no-audit", "--no-fund", external=True)
    if not binary.exists():
        session.error(f"npm did not install anvil at {binary}")
    return binary


def install_project(session: nox.Session, extras: str = "test") -> None:
    session.install("-e", f".[{extras}]")


@nox.session
def tests(session: nox.Session) -> None:
    """The whole test suite, with every real part it needs (anvil, moto, QEMU, podman)."""
    ensure_apt(session, TEST_APT_PACKAGES)
    anvil = ensure_anvil(session)
    install_project(session)
    session.run(
        "pytest", "-m", "not boot and not nitro_qemu", *(session.posargs or ["-q"]),
        env={"SENTINEL_ANVIL": str(anvil)},
    )


@nox.session
def chaos(session: nox.Session) -> None:
    """Fault injection at length: `nox -s chaos -- --runs N [--seed S] [--intents N] [--keep]`.

    SIGKILLs the router, the signer and anvil and reorgs the chain while intents stream; each
    run's invariants are judged from the chain (tests/chaos/). Prints one line per run and a
    summary; exit 1 if any run lost, duplicated or stalled an intent.
    """
    anvil = ensure_anvil(session)
    install_project(session, "router")  # the harness needs the router's and signer's deps only
    session.run(
        "python", "-m", "chaos", *session.posargs,
        env={"SENTINEL_ANVIL": str(anvil), "PYTHONPATH": str(ROOT / "tests")},
    )


@nox.session
def fuzz(session: nox.Session) -> None:
    """Coverage-guided fuzzing at length: `nox -s fuzz -- [--seconds N] [--target NAME] [--keep-corpus]`.

    atheris runs each parser (frame decoder, attestation document, COSE, EIF, policy, CMS) for N
    seconds (default 60); crashes, hangs and out-of-memory inputs are copied into
    tests/assets/fuzz/<target>/, which `nox -s tests` replays (tests/fuzz/). Exit 1 on a new finding.
    """
    install_project(session)
    session.run(
        "python", "-m", "fuzz", *session.posargs, env={"PYTHONPATH": str(ROOT / "tests")}
    )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff over the whole tree."""
    session.install("ruff>=0.6")
    session.run("ruff", "check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict over every package and this file (configured in pyproject.toml)."""
    install_project(session)
    # nox itself: noxfile.py is checked too, and the session's venv does not otherwise have it.
    session.install("mypy>=1.10", "nox")
    session.run("mypy", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """Every benchmark; writes build/bench.json and prints a table (ratios against baselines)."""
    ensure_apt(session, TEST_APT_PACKAGES)
    anvil = ensure_anvil(session)
    install_project(session)
    session.run(
        "python",
        "tests/bench/run.py",
        "--out",
        str(BUILD / "bench.json"),
        *session.posargs,
        env={"SENTINEL_ANVIL": str(anvil)},
    )


@nox.session(name="build-eif")
def build_eif(session: nox.Session) -> None:
    """The main job: build build/sentinel.eif and build/measurements.json deterministically."""
    install_project(session, "build")
    session.run("python", "-m", "reproducible", "build", "--out", str(BUILD), *session.posargs)


@nox.session
def reproduce(session: nox.Session) -> None:
    """Two independent builds must give one EIF sha256, equal to measurements/<version>.json.

    The builds run in two fresh temp dirs (different TZ, umask, LC_ALL, HOME, source mtimes), each
    with its own empty cache: one from the mirror and package index, one offline from an exported
    inputs directory (`-- --inputs DIR` to use a published one). `-- --warm` reuses your cache
    (fast, not independent); `-- --publish` re-publishes.
    """
    install_project(session, "build")
    session.run("python", "-m", "reproducible.reproduce", *session.posargs)


@nox.session
def vendor(session: nox.Session) -> None:
    """Export every pinned input and a manifest into build/inputs (or `-- DIR`).

    `-- --oci DIR` writes an OCI artifact in an image layout, `-- --oci DIR.tar` an oci-archive.

    Published with a release; `build --inputs DIR` rebuilds from it after the registries moved on.
    """
    install_project(session, "build")
    dest = session.posargs or [str(BUILD / "inputs")]
    session.run("python", "-m", "reproducible", "inputs", "export", *dest)


@nox.session
def lock(session: nox.Session) -> None:
    """Refresh reproducible/lock.toml's pins from Debian and PyPI and print what changed."""
    install_project(session, "build")
    session.run("python", "-m", "reproducible", "lock", *session.posargs)


@nox.session
def boot(session: nox.Session) -> None:
    """Build the default image, then boot it under QEMU and check the signer inside end to end."""
    ensure_apt(session, ["qemu-system-x86"])
    anvil = ensure_anvil(session)
    install_project(session)
    session.run("python", "-m", "reproducible", "build", "--out", str(BUILD))
    session.run(
        "pytest", "-m", "boot", "-s", *(session.posargs or ["-q"]), env={"SENTINEL_ANVIL": str(anvil)}
    )


@nox.session(name="nitro-qemu")
def nitro_qemu(session: nox.Session) -> None:
    """Boot build/sentinel.eif in QEMU's `nitro-enclave` machine and check its virtio-nsm (issue 19).

    Builds qemu-system-x86_64 from Debian trixie's QEMU source package with libcbor (cached in
    ~/.cache/sentinel/nitro-qemu/<version>/), builds the image, then runs tests/test_nitro_qemu.py:
    PCRs from QEMU's own EIF loader against `verify pcr`, every NSM call through /dev/nsm, the
    loader's refusals. Prints the build time, boot times, PCR tables and each NSM call's result.
    """
    ensure_apt(session, NITRO_QEMU_APT_PACKAGES)
    install_project(session)
    session.install("meson>=1.5", "pycotap")  # QEMU's configure runs offline from this venv
    result = BUILD / "nitro-qemu.json"
    BUILD.mkdir(exist_ok=True)
    session.run(
        "python", "-m", "nitro_qemu", "build", "--json", str(result),
        env={"PYTHONPATH": str(ROOT / "tests")},
    )
    qemu = json.loads(result.read_text())["binary"]
    session.run("python", "-m", "reproducible", "build", "--out", str(BUILD))
    session.run(
        "pytest", "-m", "nitro_qemu", "-s", "tests/test_nitro_qemu.py",
        *(session.posargs or ["-q"]), env={"SENTINEL_NITRO_QEMU": qemu},
    )


@nox.session
def release(session: nox.Session) -> None:
    """Build the image, publish measurements/<version>.json with provenance, sign the release.

    Development signs with a local P-384 key (build/release-dev-key.pem, created when missing);
    production: `nox -s release -- --kms-key-id alias/sentinel-release` (AWS KMS, ECC_NIST_P384).
    """
    install_project(session, "build")
    session.run("python", "-m", "reproducible", "build", "--out", str(BUILD))
    # The release's inputs, to publish next to it (SENTINEL_INPUTS_FORMAT=oci: as an OCI
    # artifact, build/inputs-oci); SENTINEL_INPUTS_LOCATION names where they will be (a URL),
    # else the provenance records the export relative to the checkout (never an absolute path of
    # this machine). Either way the provenance records the export's manifest digest.
    oci = os.environ.get("SENTINEL_INPUTS_FORMAT", "dir") == "oci"
    inputs = BUILD / ("inputs-oci" if oci else "inputs")
    session.run("python", "-m", "reproducible", "inputs", "export", str(inputs), "--offline",
                *(["--oci"] if oci else []))
    location = os.environ.get("SENTINEL_INPUTS_LOCATION") or inputs.relative_to(ROOT).as_posix()
    session.run(
        "python", "-m", "reproducible", "release", "--build", str(BUILD),
        *(session.posargs or ["--generate-dev-key"]), "--deploy", str(BUILD / "deploy"),
        "--inputs-location", location, "--inputs", str(inputs),
    )


@nox.session
def deploy(session: nox.Session) -> None:
    """Write build/deploy/: KMS key policy, CloudFormation template and instance set-up.

    For measurements/<version>.json (`-- --measurements OLD.json --measurements NEW.json ...` for
    a rolling upgrade; options: `python -m reproducible deploy --help`).
    """
    install_project(session, "build")
    version = session.run(
        "python", "-c", "from reproducible.build import project_version; print(project_version())",
        silent=True,
    )
    args = session.posargs or ["--measurements", f"measurements/{str(version).strip()}.json"]
    session.run("python", "-m", "reproducible", "deploy", "--out", str(BUILD / "deploy"), *args)

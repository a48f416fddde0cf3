"""`python -m reproducible build`: pinned inputs -> sentinel.eif + measurements.json.

Nothing here reads the clock, the host name, the user or the locale into the output: timestamps come
from the lock's SOURCE_DATE_EPOCH, identity from the lock and pyproject. Every file is written under
the output directory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import tomllib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from reproducible import rootfs as rootfs_mod
from reproducible.cache import Cache, sha256_file
from reproducible.cpio import cpio_size, stream_cpio, write_cpio
from reproducible.errors import BuildError, LockError, MeasurementsDiffer
from reproducible.fetch import Fetched, fetch_all
from reproducible.layers import Verifier
from reproducible.lock import LOCK_PATH, Lock, load_lock
from reproducible.tree import Tree
from verify.eif import ByteSink, StreamedSection

log = logging.getLogger(__name__)

ROOT = rootfs_mod.ROOT
EIF_NAME = "sentinel.eif"
MEASUREMENTS_NAME = "measurements.json"


@dataclass(frozen=True)
class BuildOptions:
    out: Path
    lock_path: Path | None = None
    offline: bool = False
    blobs: Path | None = None
    from_oci: Path | None = None
    from_image: str | None = None
    check: bool = False
    publish: bool = False
    measurements_dir: Path | None = None
    enclave_dir: Path | None = None
    policy: Path | None = None
    cache_root: Path | None = None
    payload: str = "development"
    payload_config: Path | None = None
    keep_cpio: bool = False  # imported images: also keep customer.cpio in `out` (a second copy)
    inputs: Path | None = None  # a directory of pinned inputs (`--inputs`)


@dataclass
class BuildResult:
    eif: Path
    measurements: Path
    pcrs: dict[int, bytes]
    eif_sha256: str
    mode: str
    sections: list[dict[str, Any]]
    stages: dict[str, float] = field(default_factory=dict)
    kernel: str = "debian"
    payload: str = "development"

    def summary(self) -> dict[str, Any]:
        return {
            "eif": str(self.eif),
            "measurements": str(self.measurements),
            "eif_sha256": self.eif_sha256,
            "mode": self.mode,
            "kernel": self.kernel,
            "payload": self.payload,
            "pcrs": {f"PCR{i}": v.hex() for i, v in sorted(self.pcrs.items())},
            "sections": self.sections,
            "stages_seconds": {k: round(v, 3) for k, v in self.stages.items()},
        }


def project_version() -> str:
    try:
        return str(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError) as e:
        raise BuildError(f"cannot read the project version from {ROOT / 'pyproject.toml'}") from e


KERNELS = ("debian", "aws-blobs")
# Each payload flavour's own kernel: the image a flavour is meant for is named by the flavour alone.
_NATURAL_KERNEL = {"development": "debian", "production": "aws-blobs"}


def image_mode(kernel: str, payload: str) -> str:
    """The image's name in measurements and release files, from its two axes: `development`
    (Debian kernel, development payload), `production` (AWS blobs, production payload), and
    `<payload>-<kernel>` for the crossed builds (`development-aws-blobs`, `production-debian`)."""
    return payload if _NATURAL_KERNEL[payload] == kernel else f"{payload}-{kernel}"


def iso_time(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat()


def payload_digest(src: Path) -> str:
    """sha256 over the payload's files (sorted names and contents): the `enclave/` input's pin."""
    h = hashlib.sha256()
    for p in sorted(src.rglob("*"), key=lambda p: p.as_posix()):
        rel = p.relative_to(src).as_posix()
        if p.is_file() and "__pycache__" not in rel and p.suffix not in (".pyc", ".pyo"):
            h.update(rel.encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


class _Stages:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.times: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        t0 = time.perf_counter()
        with self.console.status(what):
            yield
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0


def _write_ramdisk(tree: Tree, dest: Path, epoch: int, console: Console, label: str) -> dict[str, Any]:
    total = tree.total_size()
    with Progress(TextColumn(f"cpio {label}"), BarColumn(), DownloadColumn(),
                  TransferSpeedColumn(), console=console, transient=True) as prog:
        task = prog.add_task(label, total=total)
        with open(dest, "wb") as f:
            stats = write_cpio(tree, f, mtime=epoch,
                               progress=lambda done: prog.update(task, completed=done))
    return {"file": dest.name, "size": stats.size, "entries": stats.entries, "sha256": stats.sha256}


def _streamed_ramdisk(tree: Tree, epoch: int, console: Console, verifier: Verifier,
                     ramdisks: list[dict[str, Any]]) -> StreamedSection:
    """The customer ramdisk as an EIF section written while the EIF is. The layers' digests
    are checked once their bytes are in, before the EIF is renamed into place: a mismatch leaves
    no image behind."""
    size = cpio_size(tree)
    info: dict[str, Any] = {"file": "customer.cpio", "size": size}
    ramdisks.append(info)

    def produce(sink: ByteSink) -> None:
        with Progress(TextColumn("cpio customer"), BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), console=console, transient=True) as prog:
            task = prog.add_task("customer", total=tree.total_size())
            info["entries"] = stream_cpio(tree, sink, mtime=epoch,
                                          progress=lambda done: prog.update(task, completed=done))
        verifier.verify()

    return StreamedSection(size, produce)


def _inputs(lock: Lock, fetched: Fetched | None, extra: list[dict[str, Any]]) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    for d in lock.debs:
        items.append({"kind": "deb", "role": d.role, "name": d.name, "version": d.version,
                      "sha256": d.sha256})
    for w in lock.wheels:
        items.append({"kind": "wheel", "name": w.name, "version": w.version,
                      "filename": w.filename, "sha256": w.sha256})
    return items + extra


def run_build(opts: BuildOptions, console: Console) -> BuildResult:
    """Build the image; see the module docstring.

    Raises:
        BuildError: any failure, with a specific subclass (see reproducible.errors).
    """
    with ExitStack() as stack:  # scratch directories of an import live until the EIF is written
        return _run_build(opts, console, stack)


def _run_build(opts: BuildOptions, console: Console, stack: ExitStack) -> BuildResult:
    from verify.eif import default_identity, write_measured_eif
    from verify.measurements import dump_measurements, measurements_document

    st = _Stages(console)
    t_start = time.perf_counter()
    out = opts.out
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise BuildError(f"cannot create output directory {out}: {e.strerror}") from e
    cache = Cache(opts.cache_root)
    lock_path = opts.lock_path or LOCK_PATH
    with st.stage("lock", "reading the lock"):
        lock = load_lock(lock_path)
        if not lock.debs or not lock.wheels:
            raise LockError(f"{lock_path} has no pins; run `nox -s lock`")
    epoch = lock.source_date_epoch
    from reproducible import flavours

    if opts.payload not in flavours.PAYLOADS:
        raise flavours.PayloadError(
            f"payload {opts.payload!r}: expected one of {', '.join(flavours.PAYLOADS)}"
        )
    imported = bool(opts.from_oci or opts.from_image)
    if imported and (opts.payload != "development" or opts.payload_config):
        raise flavours.PayloadError("--payload/--payload-config choose Sentinel's own payload, "
                                    "not an imported image's")
    if opts.payload_config and opts.payload != "production":
        raise flavours.PayloadError("--payload-config configures --payload production only")
    prod_config = (flavours.load_production_config(opts.payload_config)
                   if opts.payload == "production" else None)
    kernel_kind = "aws-blobs" if opts.blobs else "debian"
    mode = image_mode(kernel_kind, opts.payload)
    version = project_version()
    extra_inputs: list[dict[str, Any]] = []
    verifier: Verifier | None = None  # checks an imported image's layer digests

    with st.stage("fetch", "fetching pinned inputs (cache first)"):
        fetched = fetch_all(lock, cache, offline=opts.offline, inputs=opts.inputs,
                            progress=lambda msg: console.log(msg))

    with st.stage("kernel", "unpacking kernel and modules"):
        if opts.blobs:
            blobs = rootfs_mod.load_blobs(opts.blobs)
            kernel_path, cmdline = blobs.kernel, blobs.cmdline
            kernel_version = "aws-nitro-blobs"
            bootstrap = rootfs_mod.blobs_bootstrap(blobs)
            for name in rootfs_mod.BLOB_FILES.values():
                extra_inputs.append({"kind": "blob", "name": name,
                                     "sha256": sha256_file(opts.blobs / name)})
        else:
            parts = rootfs_mod.kernel_parts(lock, fetched, cache)
            kernel_path, cmdline = parts.image, lock.kernel.cmdline.encode()
            kernel_version = parts.version
            bootstrap = rootfs_mod.dev_bootstrap(lock, fetched, cache, parts)

    with st.stage("rootfs", "assembling the payload root filesystem"):
        if opts.from_oci or opts.from_image:
            from reproducible import oci

            # File contents are spooled next to the cache, not in `out`: the output directory
            # holds the EIF and no second copy of the image.
            scratch = stack.enter_context(cache.scratch("import-"))
            spool = scratch / "spool"
            # Layer digests are checked while the cpio is written, and before the EIF is.
            verifier = Verifier()
            stack.callback(verifier.close)
            if opts.from_oci:
                image = oci.load_oci(opts.from_oci, spool=spool, verifier=verifier)
            else:
                image = oci.load_from_docker(opts.from_image or "", scratch=scratch, spool=spool,
                                             verifier=verifier)
            rootfs, cmd, env = image.tree, image.cmd, image.env
            extra_inputs.append({"kind": "image", "name": image.name, "sha256": image.digest})
        else:
            enclave_dir = opts.enclave_dir or ROOT / "enclave"
            if prod_config is None:
                policy = opts.policy or enclave_dir / "policy.dev.toml"
                _check_policy(policy, "development")
                rootfs = rootfs_mod.sentinel_rootfs(lock, fetched, cache, enclave_dir, policy)
                cmd = rootfs_mod.PAYLOAD_CMD
            else:
                policy = opts.policy or enclave_dir / "policy.toml"
                _check_policy(policy, "production")
                rootfs = rootfs_mod.sentinel_rootfs(
                    lock, fetched, cache, enclave_dir, policy, dev_key=False,
                    extra_files=flavours.production_files(prod_config))
                cmd = flavours.production_cmd(prod_config, signer_port=rootfs_mod.SIGNER_PORT,
                                              policy="/" + rootfs_mod.POLICY_DEST)
                extra_inputs.append({"kind": "payload-config", "name": prod_config.source.name,
                                     "sha256": sha256_file(prod_config.source)})
            env = rootfs_mod.PAYLOAD_ENV
            extra_inputs.append({"kind": "source", "name": "enclave/",
                                 "sha256": payload_digest(enclave_dir)})
        customer = rootfs_mod.customer_ramdisk(rootfs, cmd, env)

    # An imported image's cpio is streamed straight into the EIF: no copy of it in `out`
    # (unless asked) and no second write of its bytes. Sentinel's own payload is small and
    # customers inspect its customer.cpio, so that one is kept.
    stream_customer = imported and not opts.keep_cpio
    with st.stage("cpio", "writing ramdisks"):
        ramdisks = [_write_ramdisk(bootstrap, out / "bootstrap.cpio", epoch, console, "bootstrap")]
        customer_source: Path | StreamedSection
        if stream_customer:
            assert verifier is not None
            customer_source = _streamed_ramdisk(customer, epoch, console, verifier, ramdisks)
        else:
            customer_source = out / "customer.cpio"
            ramdisks.append(_write_ramdisk(customer, customer_source, epoch, console, "customer"))
            if verifier is not None:
                verifier.verify()

    eif_path = out / EIF_NAME
    with st.stage("eif", "writing and measuring the EIF"):
        identity = default_identity(
            image_name="sentinel", image_version=version, build_time=iso_time(epoch),
            build_tool="sentinel-reproducible", build_tool_version=version,
            operating_system="Linux", kernel_version=kernel_version,
            custom_metadata={"mode": mode, "source_date_epoch": epoch,
                             "lock_sha256": sha256_file(lock_path)},
        )
        written = write_measured_eif(eif_path, kernel=kernel_path, cmdline=cmdline,
                                     ramdisks=[out / "bootstrap.cpio", customer_source],
                                     metadata=identity)
    if imported:
        shutil.rmtree(spool, ignore_errors=True)  # the EIF now holds the contents
    for info, digest in zip(ramdisks, written.ramdisk_sha256, strict=True):
        if info.setdefault("sha256", digest) != digest:  # a file changed before it was copied
            eif_path.unlink(missing_ok=True)
            raise BuildError(f"{info['file']} changed while the EIF was written")
    image_struct = written.image
    eif_sha = written.sha256
    sections = [{"type": s.type.label, "offset": s.offset, "size": s.size}
                for s in image_struct.sections]
    doc = measurements_document(written.pcrs, sentinel={
        "version": version, "mode": mode, "kernel": kernel_kind,
        "payload": "image" if imported else opts.payload,
        "source_date_epoch": epoch, "eif_sha256": eif_sha,
        "kernel_version": kernel_version, "cmdline": cmdline.decode("utf-8", "replace"),
        "sections": sections, "ramdisks": ramdisks,
        "inputs": _inputs(lock, fetched, extra_inputs),
    })
    meas_path = out / MEASUREMENTS_NAME
    dump_measurements(doc, meas_path)
    st.times["total"] = time.perf_counter() - t_start
    result = BuildResult(eif_path, meas_path, dict(written.pcrs), eif_sha, mode, sections, st.times,
                         kernel=kernel_kind, payload="image" if imported else opts.payload)
    report(result, console)
    if opts.publish:
        if opts.from_oci or opts.from_image:
            raise BuildError("--publish is for Sentinel's own image, not an imported one")
        dest = published_path(opts.measurements_dir or ROOT / "measurements", version, mode)
        dest.write_bytes(meas_path.read_bytes())
        console.print(f"published {dest}", highlight=False)
    if opts.check:
        check(result, version, opts.measurements_dir or ROOT / "measurements",
              custom=bool(opts.from_oci or opts.from_image), console=console)
    return result


def _check_policy(policy: Path, expected: str) -> None:
    """The policy must parse and suit the flavour: a development policy in a production image
    would sign under development rules; a production policy refuses the development key, so a
    development image with one could never start.

    Raises:
        BuildError: the policy is missing, malformed or of the other mode.
    """
    from enclave.errors import EnclaveError
    from enclave.policy import load_policy

    if not policy.is_file():
        raise BuildError(f"signer policy {policy} is missing")
    try:
        mode = load_policy(policy).mode
    except EnclaveError as e:
        raise BuildError(f"signer policy {policy}: {e.diagnostics()}") from None
    if mode != expected:
        raise BuildError(
            f"signer policy {policy}: mode {mode!r}, but the {expected} payload needs {expected!r}"
        )


def published_path(measurements_dir: Path, version: str, mode: str) -> Path:
    suffix = "" if mode == "development" else f"-{mode}"
    return measurements_dir / f"{version}{suffix}.json"


def check(result: BuildResult, version: str, measurements_dir: Path, *, custom: bool,
          console: Console) -> None:
    """Compare the built PCRs with the published ones.

    Raises:
        BuildError: nothing published for this version and mode, or a custom image.
        MeasurementsDiffer: a PCR differs (every differing PCR is named).
    """
    from verify.errors import VerifyError
    from verify.measurements import diff_pcrs, load_measurements

    if custom:
        raise BuildError("--check compares Sentinel's own image; an imported image has no "
                         "published measurements")
    path = published_path(measurements_dir, version, result.mode)
    if not path.is_file():
        raise BuildError(f"--check: no published measurements at {path}")
    try:
        published = load_measurements(path)
    except VerifyError as e:
        raise BuildError(f"--check: {e.diagnostics()}") from e
    diffs = diff_pcrs(published.pcrs, result.pcrs)
    if diffs:
        raise MeasurementsDiffer(
            f"built image differs from {path}:\n" + "\n".join("  " + d.describe() for d in diffs)
        )
    console.print(f"[green]check:[/green] PCRs equal {path}", highlight=False)


def report(result: BuildResult, console: Console) -> None:
    t = Table(title=f"sentinel.eif ({result.mode})", show_header=True)
    t.add_column("section")
    t.add_column("offset", justify="right")
    t.add_column("size", justify="right")
    for s in result.sections:
        t.add_row(s["type"], str(s["offset"]), f"{s['size']:,}")
    console.print(t)
    for i, v in sorted(result.pcrs.items()):
        console.print(f"PCR{i} {v.hex()}", highlight=False)
    console.print(f"sha256 {result.eif_sha256}  {result.eif}", highlight=False)
    console.print("stages: " + ", ".join(f"{k} {v:.2f}s" for k, v in result.stages.items()),
                  highlight=False)


def dumps_summary(result: BuildResult) -> str:
    return json.dumps(result.summary(), indent=2, sort_keys=True)

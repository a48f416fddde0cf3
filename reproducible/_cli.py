"""`python -m reproducible` (also `sentinel-reproducible`): build the enclave image, refresh the
lock, release, deploy. `-v`, `--json` and `--version` work on every subcommand (enclave/cli.py)."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from rich.console import Console

from enclave.cli import CliParser, add_global_options, prog_name, run_cli
from reproducible import _cmd_release
from reproducible.deploy import cli as _deploy_cli
from reproducible.errors import BuildError
from verify._cli import print_error, stderr_console

log = logging.getLogger("reproducible")


def _cmd_lock(args: argparse.Namespace, console: Console) -> int:
    from reproducible.cache import Cache
    from reproducible.fetch import refresh
    from reproducible.lock import LOCK_PATH, diff_locks, dump_lock, load_lock

    path = Path(args.lock or LOCK_PATH)
    old = load_lock(path)
    with console.status("resolving pins (apt-get update, pip resolve)"):
        new = refresh(old, Cache())
    changes = diff_locks(old if old.debs or old.wheels else None, new)
    text = dump_lock(new)
    if not args.dry_run:
        path.write_text(text, encoding="utf-8")
    for line in changes:
        console.print(line, markup=False)
    console.print(f"{len(changes)} change(s){' (dry run)' if args.dry_run else ''} in {path}")
    if args.json:
        print(json.dumps({"lock": str(path), "changes": changes}))
    return 0


def _cmd_inputs_export(args: argparse.Namespace, console: Console) -> int:
    from reproducible.cache import Cache
    from reproducible.inputs import export_inputs
    from reproducible.lock import LOCK_PATH, load_lock

    lock_path = Path(args.lock or LOCK_PATH)
    inputs = Path(args.inputs) if args.inputs else None
    if args.oci:
        from reproducible.build import project_version
        from reproducible.inputs import export_oci

        oci = export_oci(load_lock(lock_path), lock_path, Cache(), Path(args.dir),
                         ref_name=args.ref or project_version(), offline=args.offline,
                         inputs=inputs, progress=lambda msg: console.log(msg))
        console.print(f"{oci.count} inputs ({oci.size:,} bytes), OCI artifact {oci.dest} "
                      f"ref {oci.ref_name} manifest sha256:{oci.manifest_sha256}", highlight=False)
        if args.json:
            print(json.dumps({"dest": str(oci.dest), "ref": oci.ref_name, "count": oci.count,
                              "size": oci.size, "manifest": f"sha256:{oci.manifest_sha256}"}))
        return 0
    if args.ref:
        raise BuildError("--ref names the OCI artifact: it needs --oci")
    done = export_inputs(load_lock(lock_path), lock_path, Cache(), Path(args.dir),
                         offline=args.offline, inputs=inputs,
                         progress=lambda msg: console.log(msg))
    console.print(f"{done.count} inputs ({done.size:,} bytes), manifest {done.manifest}",
                  highlight=False)
    if args.json:
        print(json.dumps({"dest": args.dir, "count": done.count, "size": done.size,
                          "manifest": str(done.manifest)}))
    return 0


def _cmd_build(args: argparse.Namespace, console: Console) -> int:
    from reproducible.build import BuildOptions, run_build

    opts = BuildOptions(
        out=Path(args.out),
        lock_path=Path(args.lock) if args.lock else None,
        offline=args.offline,
        blobs=Path(args.blobs) if args.blobs else None,
        from_oci=Path(args.from_oci) if args.from_oci else None,
        from_image=args.from_image,
        check=args.check,
        publish=args.publish,
        measurements_dir=Path(args.measurements_dir) if args.measurements_dir else None,
        payload=args.payload,
        payload_config=Path(args.payload_config) if args.payload_config else None,
        policy=Path(args.policy) if args.policy else None,
        keep_cpio=args.keep_cpio,
        inputs=Path(args.inputs) if args.inputs else None,
    )
    result = run_build(opts, console)
    if args.json:
        print(json.dumps(result.summary(), indent=2, sort_keys=True))
    return 0


def _parser() -> argparse.ArgumentParser:
    p = CliParser(prog=prog_name("reproducible"), description=__doc__)
    # typed as plain ArgumentParser's: the release and deploy modules register on any parser
    sub: argparse._SubParsersAction[argparse.ArgumentParser] = p.add_subparsers(  # type: ignore[assignment]
        dest="command", required=True)
    b = sub.add_parser("build", help="build sentinel.eif and measurements.json")
    b.add_argument("--out", default="build", help="output directory (default: build)")
    b.add_argument("--lock", help="lock file (default: reproducible/lock.toml)")
    b.add_argument("--offline", action="store_true", help="use the cache only")
    b.add_argument("--blobs", help="kernel from AWS's blobs dir (bzImage, cmdline, init, nsm.ko) "
                   "instead of Debian's; the payload flavour is --payload")
    b.add_argument("--payload", choices=("development", "production"), default="development",
                   help="Sentinel payload flavour (default development: dev key, dev policy, NSM "
                   "emulator allowed; production: KMS key provisioned at run time, no emulator)")
    b.add_argument("--payload-config", metavar="FILE",
                   help="production payload's KMS settings (default "
                   "reproducible/payload/production.toml)")
    b.add_argument("--policy", metavar="FILE", help="signer policy to bake in (default: "
                   "enclave/policy.dev.toml, or enclave/policy.toml for --payload production)")
    src = b.add_mutually_exclusive_group()
    src.add_argument("--from-oci", help="payload from an OCI layout or `docker save` tarball")
    src.add_argument("--from-image", help="payload from an image of a Docker-compatible API")
    b.add_argument("--check", action="store_true",
                   help="compare PCRs with measurements/<version>.json; exit 1 on a difference")
    b.add_argument("--publish", action="store_true",
                   help="also write measurements/<version>.json (a release step)")
    b.add_argument("--measurements-dir", help="where published measurements live "
                   "(default: measurements/)")
    b.add_argument("--keep-cpio", action="store_true", help="with --from-oci/--from-image, also "
                   "keep customer.cpio in --out (a second full copy of the image)")
    b.add_argument("--inputs", metavar="DIR", help="pinned inputs (`inputs export`: a directory, "
                   "an OCI layout or its .tar) tried after the cache, before any network source")
    b.add_argument("--json", action="store_true", help="build summary as JSON on stdout")
    b.set_defaults(func=_cmd_build)
    lk = sub.add_parser("lock", help="refresh the lock's pins and print what changed")
    lk.add_argument("--lock", help="lock file (default: reproducible/lock.toml)")
    lk.add_argument("--dry-run", action="store_true", help="print changes, do not write")
    lk.add_argument("--json", action="store_true", help="changes as JSON on stdout")
    lk.set_defaults(func=_cmd_lock)
    inp = sub.add_parser("inputs", help="pinned inputs").add_subparsers(dest="action",
                                                                          required=True)
    ex = inp.add_parser("export", help="write every pinned input and manifest.json into DIR "
                        "(with --oci: an OCI artifact in the image layout DIR, or DIR.tar)")
    ex.add_argument("dir", metavar="DIR")
    ex.add_argument("--oci", action="store_true",
                    help="write an OCI image layout holding the inputs as one artifact (an "
                    "oci-archive file if DIR ends in .tar) instead of a plain directory")
    ex.add_argument("--ref", help="with --oci: the artifact's ref name in index.json (default: "
                    "the project version)")
    ex.add_argument("--json", action="store_true", help="what was written, as JSON on stdout")
    ex.add_argument("--lock", help="lock file (default: reproducible/lock.toml)")
    ex.add_argument("--offline", action="store_true", help="from the cache (and --inputs) only")
    ex.add_argument("--inputs", metavar="DIR", help="other exported inputs to read (a directory, "
                    "an OCI layout or its .tar)")
    ex.set_defaults(func=_cmd_inputs_export)
    _cmd_release.register(sub)
    _deploy_cli.register(sub)
    add_global_options(p, root=True)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit status (0 ok, 1 a check failed, 2 bad input/usage)."""
    parser = _parser()
    console = stderr_console()
    return run_cli(parser, argv, BuildError, print_error=print_error,
                   call=lambda func, args: int(func(args, console)))

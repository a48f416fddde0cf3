"""What goes into the two ramdisks.

- Customer ramdisk (PCR2, identical in development and production mode): `rootfs/` with the Python
  runtime from Debian, the wheels unpacked into dist-packages, the `enclave` package and its policy;
  `cmd` and `env` at the top, as nitro-cli lays them out for AWS's init.
- Bootstrap ramdisk: development mode has busybox-static, our init script and the kernel modules
  (decompressed, in load order); production mode lays out AWS's blobs as nitro-cli does (`init`,
  `nsm.ko`, and the mount-point directories).
"""

from __future__ import annotations

import fnmatch
import posixpath
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from reproducible import deb as deb_mod
from reproducible import kmod
from reproducible.cache import Cache
from reproducible.errors import BuildError, MalformedArtifact
from reproducible.fetch import Fetched
from reproducible.lock import Lock
from reproducible.tree import Tree, clean_path

ROOT = Path(__file__).resolve().parent.parent
INIT_SCRIPT = Path(__file__).with_name("init") / "init.sh"
SITE = "usr/lib/python3/dist-packages"
POLICY_DEST = "etc/sentinel/policy.toml"
DEV_KEY_SRC = Path(__file__).with_name("payload") / "dev-key.hex"
DEV_KEY_DEST = "etc/sentinel/dev-key.hex"
SIGNER_PORT = 5000
# The 0.1.0 image is a development build: public dev key, development policy, NSM emulator allowed
# when /dev/nsm is absent (QEMU); on Nitro hardware /dev/nsm exists and the device is used.
# CID "any" (VMADDR_CID_ANY): the signer answers the parent's CID and vsock_loopback alike.
PAYLOAD_CMD = ("/usr/bin/python3", "-m", "enclave", "serve",
               "--listen", f"vsock:any:{SIGNER_PORT}", "--policy", "/" + POLICY_DEST,
               "--dev-key-file", "/" + DEV_KEY_DEST, "--allow-nsm-emulator")
PAYLOAD_ENV = ("PATH=/usr/bin:/bin", "HOME=/", "LANG=C.UTF-8", "PYTHONDONTWRITEBYTECODE=1",
               "PYTHONUNBUFFERED=1", "PYTHON_COLORS=0")
# nitro-cli's layout (enclave_build's yaml_generator): the bootstrap ramdisk holds `dev/`, `init` and
# `nsm.ko`; the customer ramdisk `rootfs/{dev,run,sys,var,proc,tmp}`, `cmd` and `env`. AWS's init
# mounts proc, sysfs, tmpfs and devtmpfs on those rootfs directories, which must already exist.
MOUNT_POINTS = ("dev", "proc", "run", "sys", "tmp", "var")
NITRO_BOOTSTRAP_DIRS = ("dev",)
_DROP = ("usr/share/doc/", "usr/share/man/", "usr/share/lintian/", "usr/share/info/",
         "usr/share/locale/", "usr/share/bug/", "usr/share/binfmts/", "usr/lib/binfmt.d/",
         "usr/lib/x86_64-linux-gnu/gconv/", "usr/share/gdb/", "usr/share/python3/")
RUNTIME_FILTER = "runtime-v1"
KERNEL_FILTER = "kernel-v1"


def _keep_runtime(path: str) -> bool:
    return not any((path + "/").startswith(p) for p in _DROP) and "__pycache__" not in path


def _keep_kernel(path: str) -> bool:
    return path.startswith("boot/vmlinuz-") or path.endswith((".ko.xz", ".ko"))


@dataclass(frozen=True)
class KernelParts:
    image: Path
    version: str
    modules: list[kmod.Module]


def kernel_parts(lock: Lock, fetched: Fetched, cache: Cache) -> KernelParts:
    """The kernel image and the lock's modules (with dependencies) from the kernel package.

    Raises:
        BuildError: no kernel package, or no vmlinuz in it, or a missing module.
    """
    pins = lock.debs_for("kernel")
    if len(pins) != 1:
        raise BuildError(f"lock: expected exactly one kernel package, found {len(pins)}")
    pin = pins[0]
    files, members = deb_mod.unpack(cache, pin.label, fetched.debs[pin.name], pin.sha256,
                                    _keep_kernel, KERNEL_FILTER)
    images = [m for m in members if m.kind == "file" and m.path.startswith("boot/vmlinuz-")]
    if len(images) != 1:
        raise BuildError(f"{pin.label}: expected one boot/vmlinuz-*, found {len(images)}")
    available = {}
    for m in members:
        if m.kind == "file" and m.path.endswith((".ko.xz", ".ko")):
            available[kmod.canonical(m.path)] = (m.path, deb_mod.file_path(files, m).read_bytes())
    version = images[0].path.removeprefix("boot/vmlinuz-")
    return KernelParts(deb_mod.file_path(files, images[0]), version,
                       kmod.load_order(lock.kernel.modules, available))


def dev_bootstrap(lock: Lock, fetched: Fetched, cache: Cache, parts: KernelParts) -> Tree:
    """Development bootstrap ramdisk: busybox-static, init, modules in load order."""
    tree = Tree()
    for pin in lock.debs_for("bootstrap"):
        files, members = deb_mod.unpack(cache, pin.label, fetched.debs[pin.name], pin.sha256,
                                        _keep_runtime, RUNTIME_FILTER)
        busybox = [m for m in members if m.kind == "file" and m.path.endswith("bin/busybox")]
        if pin.name.startswith("busybox"):
            if len(busybox) != 1:
                raise BuildError(f"{pin.label}: no bin/busybox in the package")
            tree.add_file("bin/busybox", source=deb_mod.file_path(files, busybox[0]), mode=0o755)
    if "bin/busybox" not in tree:
        raise BuildError("lock: the bootstrap packages provide no busybox")
    tree.add_file("init", INIT_SCRIPT.read_bytes(), mode=0o755)
    order = []
    for m in parts.modules:
        tree.add_file(f"modules/{m.name}.ko", m.data, mode=0o644)
        order.append(m.name)
    tree.add_file("modules/order", ("\n".join(order) + "\n").encode())
    for d in (*MOUNT_POINTS, "rootfs"):
        tree.add_dir(d)
    tree.add_chardev("dev/console", 5, 1)
    return tree


@dataclass(frozen=True)
class Blobs:
    kernel: Path
    cmdline: bytes
    init: Path
    nsm: Path


BLOB_FILES = {"kernel": "bzImage", "cmdline": "cmdline", "init": "init", "nsm": "nsm.ko"}


def load_blobs(blobs: Path) -> Blobs:
    """AWS's blobs as nitro-cli installs them (/usr/share/nitro_enclaves/blobs).

    Raises:
        MalformedArtifact: a blob is missing or the cmdline is not one line of text.
    """
    missing = [f for f in BLOB_FILES.values() if not (blobs / f).is_file()]
    if missing:
        raise MalformedArtifact(f"--blobs {blobs}: missing {', '.join(missing)}")
    raw = (blobs / "cmdline").read_bytes()
    # nitro-cli reads the cmdline file as text; its trailing newline is not part of the cmdline.
    cmdline = raw.rstrip(b"\n")
    if b"\0" in cmdline or b"\n" in cmdline:
        raise MalformedArtifact(f"--blobs {blobs}: cmdline must be one line without NUL")
    return Blobs(blobs / "bzImage", cmdline, blobs / "init", blobs / "nsm.ko")


def blobs_bootstrap(blobs: Blobs) -> Tree:
    tree = Tree()
    tree.add_file("init", source=blobs.init, mode=0o755)
    tree.add_file("nsm.ko", source=blobs.nsm, mode=0o755)
    for d in NITRO_BOOTSTRAP_DIRS:
        tree.add_dir(d)
    return tree


def install_wheel(tree: Tree, wheel: Path, name: str, prefix: str = SITE,
                  drop: tuple[str, ...] = (), keep: tuple[str, ...] = ()) -> None:
    """Unpack a wheel the way an installer would (purelib/platlib into site), minus RECORD and
    the site-relative paths matching `drop` (fnmatch) unless they match `keep`.

    Raises:
        MalformedArtifact: not a zip, or a member escapes.
    """
    try:
        zf = zipfile.ZipFile(wheel)
    except (zipfile.BadZipFile, OSError) as e:
        raise MalformedArtifact(f"{name}: not a wheel (zip): {e}") from e
    with zf:
        for info in sorted(zf.infolist(), key=lambda i: i.filename):
            if info.is_dir():
                continue
            path = clean_path(info.filename, where=name)
            top, _, rest = path.partition("/")
            if top.endswith(".data"):
                kind, _, sub = rest.partition("/")
                if kind not in ("purelib", "platlib") or not sub:
                    continue  # scripts, headers and data have no place in the enclave
                path = sub
            elif top.endswith(".dist-info") and rest in ("RECORD", "INSTALLER", "REQUESTED"):
                continue
            if any(fnmatch.fnmatchcase(path, d) for d in drop) and not any(
                fnmatch.fnmatchcase(path, k) for k in keep
            ):
                continue
            mode = (info.external_attr >> 16) & 0o777 or 0o644
            tree.add_file(f"{prefix}/{path}", zf.read(info), mode=mode, where=name)


def add_package(tree: Tree, src: Path, dest: str, *, where: str) -> int:
    """Copy a source package (every file but bytecode caches), in sorted order."""
    if not src.is_dir():
        raise BuildError(f"payload package {src} is missing")
    n = 0
    for p in sorted(src.rglob("*"), key=lambda p: p.as_posix()):
        rel = p.relative_to(src).as_posix()
        if "__pycache__" in rel.split("/") or p.suffix in (".pyc", ".pyo") or not p.is_file():
            continue
        if p.is_symlink():
            raise BuildError(f"{where}: {rel} is a symlink; the payload must be plain files")
        tree.add_file(f"{dest}/{rel}", p.read_bytes(), mode=p.stat().st_mode & 0o777, where=where)
        n += 1
    return n


def sentinel_rootfs(lock: Lock, fetched: Fetched, cache: Cache, enclave_dir: Path,
                    policy: Path, *, dev_key: bool = True,
                    extra_files: Mapping[str, bytes] | None = None) -> Tree:
    """The Sentinel payload's root filesystem (what goes under `rootfs/`): `dev_key` for the
    development flavour, `extra_files` (rootfs path -> bytes) for the production one."""
    tree = Tree()
    # Debian trixie is merged-/usr; the ELF interpreter path is /lib64/ld-linux-x86-64.so.2.
    for link, target in (("bin", "usr/bin"), ("lib", "usr/lib"), ("lib64", "usr/lib64"),
                         ("sbin", "usr/sbin")):
        tree.add_symlink(link, target)
    for pin in lock.debs_for("runtime"):
        files, members = deb_mod.unpack(cache, pin.label, fetched.debs[pin.name], pin.sha256,
                                        _keep_runtime, RUNTIME_FILTER)
        deb_mod.add_to_tree(tree, files, members, where=pin.label)
    py = f"usr/bin/python{lock.python.version}"
    if py not in tree:
        raise BuildError(f"lock: no runtime package provides /{py}")
    tree.add_symlink("usr/bin/python3", posixpath.basename(py))
    for w in sorted(lock.wheels, key=lambda w: w.filename):
        install_wheel(tree, fetched.wheels[w.filename], w.label,
                      drop=lock.python.drop, keep=lock.python.keep)
    add_package(tree, enclave_dir, f"{SITE}/enclave", where="enclave/")
    if not policy.is_file():
        raise BuildError(f"signer policy {policy} is missing")
    tree.add_file(POLICY_DEST, policy.read_bytes())
    if dev_key:
        tree.add_file(DEV_KEY_DEST, DEV_KEY_SRC.read_bytes(), mode=0o600)
    for path, data in sorted((extra_files or {}).items()):
        tree.add_file(path, data, where="payload")
    return tree


def customer_ramdisk(rootfs: Tree, cmd: tuple[str, ...], env: tuple[str, ...]) -> Tree:
    """nitro-cli's customer ramdisk layout: `rootfs/...`, `cmd`, `env`.

    Raises:
        BuildError: empty cmd, or a cmd/env item with a newline (the files are line-based).
    """
    if not cmd:
        raise BuildError("the payload has no command (an image needs Entrypoint or Cmd)")
    for item in (*cmd, *env):
        if "\n" in item or "\0" in item:
            raise BuildError(f"cmd/env item {item!r} contains a newline or NUL")
    tree = Tree()
    tree.add_dir("rootfs")
    tree.merge(rootfs, "rootfs")
    for d in MOUNT_POINTS:
        if f"rootfs/{d}" not in tree:
            tree.add_dir(f"rootfs/{d}")
    tree.add_file("cmd", ("\n".join(cmd) + "\n").encode())
    tree.add_file("env", ("".join(e + "\n" for e in env)).encode())
    return tree


"""Kernel modules: pick them from the kernel package, order them by their dependencies, and
decompress them (`.ko.xz` -> `.ko`) at build time, since busybox's insmod takes plain modules."""

from __future__ import annotations

import lzma
import struct
from dataclasses import dataclass

from reproducible.errors import BuildError, MalformedArtifact


@dataclass(frozen=True)
class Module:
    name: str  # canonical: '-' replaced by '_'
    data: bytes  # decompressed ELF
    depends: tuple[str, ...]


def canonical(name: str) -> str:
    base = name.rsplit("/", 1)[-1]
    for ext in (".xz", ".zst", ".gz"):
        base = base.removesuffix(ext)
    return base.removesuffix(".ko").replace("-", "_")


def decompress(name: str, blob: bytes) -> bytes:
    if name.endswith(".xz"):
        try:
            return lzma.decompress(blob)
        except lzma.LZMAError as e:
            raise MalformedArtifact(f"module {name}: bad xz data: {e}") from e
    if name.endswith(".ko"):
        return blob
    raise MalformedArtifact(f"module {name}: unsupported compression")


def modinfo(name: str, elf: bytes) -> dict[str, list[str]]:
    """The `.modinfo` section's key=value strings of an ELF64 little-endian module.

    Raises:
        MalformedArtifact: not an ELF64 LE object or no .modinfo section.
    """
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise MalformedArtifact(f"module {name}: not an ELF64 little-endian object")
    try:
        e_shoff, = struct.unpack_from("<Q", elf, 0x28)
        e_shentsize, e_shnum, e_shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

        def section(i: int) -> tuple[int, int, int]:
            base = e_shoff + i * e_shentsize
            sh_name, = struct.unpack_from("<I", elf, base)
            sh_offset, sh_size = struct.unpack_from("<QQ", elf, base + 0x18)
            return sh_name, sh_offset, sh_size

        _, str_off, _ = section(e_shstrndx)
        for i in range(e_shnum):
            sh_name, off, size = section(i)
            end = elf.index(b"\0", str_off + sh_name)
            if elf[str_off + sh_name : end] == b".modinfo":
                info: dict[str, list[str]] = {}
                for item in elf[off : off + size].split(b"\0"):
                    if b"=" in item:
                        k, v = item.decode("utf-8", "replace").split("=", 1)
                        info.setdefault(k, []).append(v)
                return info
    except (struct.error, ValueError) as e:
        raise MalformedArtifact(f"module {name}: truncated ELF: {e}") from e
    raise MalformedArtifact(f"module {name}: no .modinfo section")


def load_order(wanted: tuple[str, ...], available: dict[str, tuple[str, bytes]]) -> list[Module]:
    """Modules in `wanted` plus their dependencies, dependencies first, otherwise in the order asked.

    Args:
        available: canonical name -> (file name, raw file bytes) for every module in the kernel package.

    Raises:
        BuildError: a wanted module or a dependency is not in the kernel package, or deps loop.
    """
    loaded: dict[str, Module] = {}
    order: list[Module] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in loaded:
            return
        if name in chain:
            raise BuildError(f"kernel modules: dependency loop {' -> '.join((*chain, name))}")
        if name not in available:
            via = f" (needed by {chain[-1]})" if chain else ""
            raise BuildError(f"kernel module {name!r}{via} is not in the kernel package")
        fname, raw = available[name]
        elf = decompress(fname, raw)
        deps = tuple(
            canonical(d) for v in modinfo(fname, elf).get("depends", []) for d in v.split(",") if d
        )
        for d in deps:
            visit(d, (*chain, name))
        mod = Module(name, elf, deps)
        loaded[name] = mod
        order.append(mod)

    for w in wanted:
        visit(canonical(w), ())
    return order

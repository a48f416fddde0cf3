"""One error root for the builder, split by where a failure came from."""

from __future__ import annotations


class BuildError(Exception):
    """Root of every error the builder reports; the CLI turns it into exit code 2 (or 1)."""

    exit_code = 2

    def diagnostics(self) -> str:
        return str(self)


class LockError(BuildError):
    """reproducible/lock.toml is missing, unreadable or inconsistent."""


class FetchError(BuildError):
    """A pinned input could not be obtained from its registry (transport or client failure)."""


class VersionVanished(FetchError):
    """The registry no longer offers the pinned version of an input."""


class OfflineMiss(FetchError):
    """`--offline` was asked for but an input is not in the cache."""


class InputUnavailable(FetchError):
    """No configured source (cache, inputs directory, registry, archive) serves a pinned input."""


class ArtifactMismatch(BuildError):
    """An artifact's sha256 is not the one pinned in the lock (tampered cache or registry)."""

    def __init__(self, name: str, expected: str, got: str, where: str) -> None:
        super().__init__(
            f"{name}: sha256 mismatch in {where} (got {got}, expected {expected}); refusing it"
        )
        self.name = name
        self.expected = expected
        self.got = got


class MalformedArtifact(BuildError):
    """An input archive (deb, wheel, OCI layout, docker save tarball) cannot be parsed."""


class UnsafePath(MalformedArtifact):
    """An archive member would land outside its root (`..`, absolute path, symlink escape)."""


class RamdiskLimit(BuildError):
    """The image holds something the initramfs format cannot: newc cpio sizes are 32-bit."""


class ImageSourceError(BuildError):
    """The container image source (docker-compatible API) failed or has no such image."""


class MeasurementsDiffer(BuildError):
    """`--check`: the built image's PCRs differ from the published measurements."""

    exit_code = 1

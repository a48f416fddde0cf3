"""Sign a built EIF (nitro-cli's signature section, hence PCR8) with a release key.

Every section of the builder's image is kept byte for byte (`verify.eif.sign_eif`, as nitro-cli's
signer does); PCR0-2 must come out unchanged, since they do not cover the signature, and the
measurements file is rewritten for the signed image (PCR8 added, EIF digest and section table
updated).
"""

from __future__ import annotations

from pathlib import Path

from reproducible.errors import BuildError
from verify.eif import EifSigner, read_eif, sign_eif
from verify.errors import VerifyError
from verify.measurements import dump_measurements, load_measurements, measurements_document
from verify.pcr import measure_eif
from verify.signed_release import sha256_file

__all__ = ["sign_built_eif"]


def _resign(src: Path, dest: Path, signer: EifSigner) -> None:
    if read_eif(src).is_signed:
        raise BuildError(f"{src} is already signed")
    sign_eif(src, dest, signer)


def sign_built_eif(build: Path, out: Path, signer: EifSigner) -> tuple[Path, Path]:
    """Write out/sentinel.eif (signed) and out/measurements.json from build/'s unsigned pair.

    Returns:
        The signed EIF and its measurements file.

    Raises:
        BuildError: the inputs are unreadable or already signed, or signing changed PCR0-2.
    """
    src, src_measurements = build / "sentinel.eif", build / "measurements.json"
    out.mkdir(parents=True, exist_ok=True)
    eif, measurements = out / "sentinel.eif", out / "measurements.json"
    try:
        published = load_measurements(src_measurements)
        _resign(src, eif, signer)
        before, after = measure_eif(src), measure_eif(eif)
    except (VerifyError, ValueError) as e:
        message = e.diagnostics() if isinstance(e, VerifyError) else str(e)
        raise BuildError(f"signing {src}: {message}") from e
    if not after.is_signed or not after.signature_ok or 8 not in after.pcrs:
        raise BuildError(f"{eif}: the signature section does not verify")
    for index in (0, 1, 2):
        if before.pcrs[index] != after.pcrs[index]:
            raise BuildError(f"signing changed PCR{index}; the image was not re-assembled faithfully")
    sentinel = dict(published.sentinel or {})
    sentinel["eif_sha256"] = sha256_file(eif)
    sentinel["sections"] = [
        {"type": s.type.label, "offset": s.offset, "size": s.size} for s in read_eif(eif).sections
    ]
    dump_measurements(
        measurements_document({**published.pcrs, 8: after.pcrs[8]}, sentinel=sentinel), measurements
    )
    return eif, measurements

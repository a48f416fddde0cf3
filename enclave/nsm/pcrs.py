"""Where the emulator learns the PCRs of the image it pretends to attest.

Sources, in the order a development setup usually has them:

- a mapping `{index: 48-byte value}` (hex strings accepted);
- a JSON file: our measurements file or nitro-cli's output (`{"Measurements": {"PCR0": "<hex>", ...}}`)
  or just the inner object (`{"HashAlgorithm": ..., "PCR0": "<hex>", ...}`);
- an EIF image, measured with `verify.pcr.measure_eif` when the `verify` package is installed (it is
  on developer machines and never inside the image);
- the QEMU boot passes the JSON form through fw_cfg, readable in the guest at `FW_CFG_PCRS_PATH`.

Which kind a file is comes from its first bytes, not its name (fw_cfg files have no extension).
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from enclave.nsm.errors import NsmConfigError

__all__ = [
    "FW_CFG_CA",
    "FW_CFG_DIR",
    "FW_CFG_PCRS",
    "FW_CFG_PCRS_PATH",
    "PCR_BYTES",
    "PCR_COUNT",
    "load_pcrs",
    "parse_pcrs_json",
]

# QEMU `-fw_cfg name=opt/sentinel/<NAME>,file=...` appears in the guest as FW_CFG_DIR/<NAME>/raw.
FW_CFG_DIR = Path("/sys/firmware/qemu_fw_cfg/by_name/opt/sentinel")
FW_CFG_PCRS = "pcrs"  # JSON: measurements / nitro-cli shape
FW_CFG_CA = "nsm-ca"  # PEM: emulator root certificate + its key (EmulatorCa.pem_bundle())
FW_CFG_PCRS_PATH = FW_CFG_DIR / FW_CFG_PCRS / "raw"
PCR_BYTES = 48
PCR_COUNT = 32
_EIF_MAGIC = b".eif"
_MAX_JSON_BYTES = 1 << 20

PcrSource = Mapping[int, bytes | str] | Mapping[str, bytes | str] | str | os.PathLike[str]


def _index(key: object) -> int:
    if isinstance(key, int) and not isinstance(key, bool):
        index = key
    elif isinstance(key, str):
        digits = key[3:] if key.upper().startswith("PCR") else key
        if not digits.isdigit():
            raise NsmConfigError(f"PCR key {key[:20]!r} is not an index or 'PCR<n>'")
        index = int(digits)
    else:
        raise NsmConfigError(f"PCR key of type {type(key).__name__} is not an index")
    if not 0 <= index < PCR_COUNT:
        raise NsmConfigError(f"PCR index {index} is out of range 0..{PCR_COUNT - 1}")
    return index


def _value(index: int, value: object) -> bytes:
    if isinstance(value, str):
        try:
            value = bytes.fromhex(value)
        except ValueError as e:
            raise NsmConfigError(f"PCR{index} is not hex") from e
    if not isinstance(value, bytes | bytearray):
        raise NsmConfigError(f"PCR{index} must be bytes or hex, got {type(value).__name__}")
    if len(value) != PCR_BYTES:
        raise NsmConfigError(f"PCR{index} has {len(value)} bytes, expected {PCR_BYTES} (SHA-384)")
    return bytes(value)


def _from_mapping(mapping: Mapping[Any, object]) -> dict[int, bytes]:
    out: dict[int, bytes] = {}
    for key, value in mapping.items():
        if isinstance(key, str) and not key.upper().startswith("PCR") and not key.isdigit():
            continue  # e.g. nitro-cli's "HashAlgorithm"
        index = _index(key)
        out[index] = _value(index, value)
    return out


def parse_pcrs_json(text: bytes | str) -> dict[int, bytes]:
    """PCRs from a measurements / nitro-cli JSON document.

    Raises:
        NsmConfigError: not JSON, no PCRs, or a PCR that is not 48 bytes of hex.
    """
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise NsmConfigError(f"PCR file is not JSON: {e}") from e
    if isinstance(doc, dict) and isinstance(doc.get("Measurements"), dict):
        doc = doc["Measurements"]
    if not isinstance(doc, dict):
        raise NsmConfigError("PCR JSON must be an object")
    pcrs = _from_mapping(doc)
    if not pcrs:
        raise NsmConfigError("PCR JSON names no PCR (expected keys like 'PCR0')")
    return pcrs


def _from_eif(path: Path) -> dict[int, bytes]:
    try:
        pcr = importlib.import_module("verify.pcr")
    except ImportError as e:
        raise NsmConfigError(
            f"{path} is an EIF, but measuring it needs the `verify` package (not installed here)"
        ) from e
    try:
        measured = pcr.measure_eif(path)
    except Exception as e:  # verify's own errors carry the reason; keep it, not the type
        raise NsmConfigError(f"cannot measure {path}: {e}") from e
    return {int(i): _value(int(i), v) for i, v in measured.pcrs.items()}


def load_pcrs(source: PcrSource) -> dict[int, bytes]:
    """The PCR values `{index: 48 bytes}` given by `source` (a mapping or a file path).

    Raises:
        NsmConfigError: the source is unreadable or malformed; the message says which part.
    """
    if isinstance(source, Mapping):
        return _from_mapping(source)
    path = Path(source)
    try:
        with path.open("rb") as f:
            head = f.read(len(_EIF_MAGIC))
            if head == _EIF_MAGIC:
                return _from_eif(path)
            data = head + f.read(_MAX_JSON_BYTES)
    except OSError as e:
        raise NsmConfigError(f"cannot read PCRs from {path}: {e.strerror}") from e
    if len(data) > _MAX_JSON_BYTES:
        raise NsmConfigError(f"{path} is larger than {_MAX_JSON_BYTES} bytes: not a PCR file")
    return parse_pcrs_json(data)

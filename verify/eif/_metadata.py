"""The version-4 metadata section: `EifIdentityInfo` as compact JSON.

nitro-cli serialises a fixed struct, so its keys come in declaration order (ImageName,
ImageVersion, BuildMetadata{BuildTime, BuildTool, BuildToolVersion, OperatingSystem,
KernelVersion}, DockerInfo, CustomMetadata) while free-form JSON values (DockerInfo,
CustomMetadata) come out with sorted keys. We encode the same way so identical identity
information gives identical bytes.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = [
    "BUILD_INFO_KEYS",
    "IDENTITY_KEYS",
    "decode_metadata",
    "default_identity",
    "encode_metadata",
]

IDENTITY_KEYS = ("ImageName", "ImageVersion", "BuildMetadata", "DockerInfo", "CustomMetadata")
BUILD_INFO_KEYS = ("BuildTime", "BuildTool", "BuildToolVersion", "OperatingSystem", "KernelVersion")
_FREE_FORM = ("DockerInfo", "CustomMetadata")


def default_identity(
    *,
    image_name: str = "sentinel",
    image_version: str = "0.1.0",
    build_time: str = "1970-01-01T00:00:00+00:00",
    build_tool: str = "sentinel-verify",
    build_tool_version: str = "0.1.0",
    operating_system: str = "Linux",
    kernel_version: str = "Unknown",
    docker_info: Any = None,
    custom_metadata: Any = None,
) -> dict[str, Any]:
    """An identity record in nitro-cli's shape. The default build time is the epoch, because a
    wall-clock time would make otherwise identical builds differ (pass SOURCE_DATE_EPOCH's)."""
    return {
        "ImageName": image_name,
        "ImageVersion": image_version,
        "BuildMetadata": {
            "BuildTime": build_time,
            "BuildTool": build_tool,
            "BuildToolVersion": build_tool_version,
            "OperatingSystem": operating_system,
            "KernelVersion": kernel_version,
        },
        "DockerInfo": {} if docker_info is None else docker_info,
        "CustomMetadata": custom_metadata,
    }


def _ordered(obj: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    out = {k: obj[k] for k in keys if k in obj}
    out.update((k, v) for k, v in obj.items() if k not in out)
    return out


def encode_metadata(metadata: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON with nitro-cli's key order.

    Raises:
        TypeError: `metadata` is not a JSON-serialisable dict.
    """
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    top = _ordered(metadata, IDENTITY_KEYS)
    if isinstance(top.get("BuildMetadata"), dict):
        top["BuildMetadata"] = _ordered(top["BuildMetadata"], BUILD_INFO_KEYS)
    for key in _FREE_FORM:
        if key in top:
            top[key] = json.loads(json.dumps(top[key], sort_keys=True))
    return json.dumps(top, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def decode_metadata(data: bytes) -> dict[str, Any]:
    """Parse a metadata section body.

    Raises:
        ValueError: not UTF-8 JSON, or not a JSON object.
    """
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"metadata is not UTF-8 JSON: {e}") from e
    if not isinstance(value, dict):
        raise ValueError(f"metadata is JSON {type(value).__name__}, expected an object")
    return value

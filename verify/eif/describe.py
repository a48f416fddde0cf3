"""`nitro-cli describe-eif`'s JSON, field for field, from an `EifMeasurements`.

Written from nitro-cli's source (aws-nitro-enclaves-cli `src/lib.rs` `describe_eif`,
`src/common/json_output.rs`; aws-nitro-enclaves-image-format `src/utils/eif_reader.rs`):

- key order is `EifDescribeInfo`'s declaration order: EifVersion, Measurements (a sorted map:
  HashAlgorithm, PCR0, PCR1, PCR2[, PCR8]), IsSigned, [SigningCertificate], CheckCRC,
  [SignatureCheck], [ImageName, ImageVersion, Metadata];
- CheckCRC is `header.eif_crc32 == computed` for every version (a bool, never null: a version-1
  image, which has no CRC, reads false unless its field happens to match);
- Metadata is `MetadataDescribeInfo`: BuildTime, BuildTool, BuildToolVersion, OperatingSystem,
  KernelVersion, DockerInfo, then CustomMetadata's members *flattened* into it (serde `flatten`),
  nothing for a null CustomMetadata;
- SigningCertificate is `SignCertificateInfo`: IssuerName (a sorted map from OpenSSL's long
  attribute names to values, as Rust's `{:?}` of the string with the quotes removed), Algorithm
  (OpenSSL's long name of the signature algorithm), NotBefore/NotAfter (`ASN1_TIME_print`:
  `Jan  1 00:00:00 2025 GMT`) and Signature (upper-case hex bytes joined by ':').
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cryptography import x509

from verify.measurements import HASH_ALGORITHM  # Rust `{:?}` of sha2's `Sha384` hasher

if TYPE_CHECKING:
    import datetime as _dt

    from verify.pcr import EifMeasurements

__all__ = ["describe_eif", "openssl_time", "signing_certificate_info"]

# OpenSSL's long names (OBJ_nid2ln), what `Asn1ObjectRef`'s Display prints; others print dotted.
_LONG_NAMES = {
    "2.5.4.3": "commonName",
    "2.5.4.4": "surname",
    "2.5.4.5": "serialNumber",
    "2.5.4.6": "countryName",
    "2.5.4.7": "localityName",
    "2.5.4.8": "stateOrProvinceName",
    "2.5.4.9": "streetAddress",
    "2.5.4.10": "organizationName",
    "2.5.4.11": "organizationalUnitName",
    "2.5.4.12": "title",
    "2.5.4.15": "businessCategory",
    "2.5.4.17": "postalCode",
    "2.5.4.42": "givenName",
    "2.5.4.43": "initials",
    "2.5.4.44": "generationQualifier",
    "2.5.4.46": "dnQualifier",
    "2.5.4.65": "pseudonym",
    "2.5.4.97": "organizationIdentifier",
    "1.2.840.113549.1.9.1": "emailAddress",
    "0.9.2342.19200300.100.1.1": "userId",
    "0.9.2342.19200300.100.1.25": "domainComponent",
    "1.3.6.1.4.1.311.60.2.1.3": "jurisdictionCountryName",
    "1.2.840.10045.4.3.2": "ecdsa-with-SHA256",
    "1.2.840.10045.4.3.3": "ecdsa-with-SHA384",
    "1.2.840.10045.4.3.4": "ecdsa-with-SHA512",
    "1.2.840.113549.1.1.5": "sha1WithRSAEncryption",
    "1.2.840.113549.1.1.10": "rsassaPss",
    "1.2.840.113549.1.1.11": "sha256WithRSAEncryption",
    "1.2.840.113549.1.1.12": "sha384WithRSAEncryption",
    "1.2.840.113549.1.1.13": "sha512WithRSAEncryption",
    "1.3.101.112": "ED25519",
    "1.3.101.113": "ED448",
}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\0": "\\0"}


def _long_name(oid: x509.ObjectIdentifier) -> str:
    return _LONG_NAMES.get(oid.dotted_string, oid.dotted_string)


def _rust_debug_unquoted(text: str) -> str:
    """Rust's `{:?}` of a str, then `.replace('"', "")` as nitro-cli does (so an escaped quote
    leaves its backslash)."""
    out = []
    for ch in text:
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif not ch.isprintable():
            out.append(f"\\u{{{ord(ch):x}}}")
        else:
            out.append(ch)
    return "".join(out).replace('"', "")


def openssl_time(when: _dt.datetime) -> str:
    """`ASN1_TIME_print`'s format, e.g. `Jan  1 00:00:00 2025 GMT` (the day space-padded)."""
    return (f"{_MONTHS[when.month - 1]} {when.day:2d} {when.hour:02d}:{when.minute:02d}:"
            f"{when.second:02d} {when.year} GMT")


def signing_certificate_info(cert: x509.Certificate) -> dict[str, Any]:
    """`SignCertificateInfo` of a signing certificate."""
    issuer: dict[str, str] = {}
    for attribute in cert.issuer:  # BTreeMap::insert: a repeated attribute keeps the last value
        value = attribute.value if isinstance(attribute.value, str) else attribute.value.hex()
        issuer[_long_name(attribute.oid)] = _rust_debug_unquoted(value)
    return {
        "IssuerName": dict(sorted(issuer.items())),
        "Algorithm": _long_name(cert.signature_algorithm_oid),
        "NotBefore": openssl_time(cert.not_valid_before_utc),
        "NotAfter": openssl_time(cert.not_valid_after_utc),
        "Signature": ":".join(f"{b:02X}" for b in cert.signature),
    }


def _metadata(md: dict[str, Any]) -> dict[str, Any]:
    build = md.get("BuildMetadata")
    build = build if isinstance(build, dict) else {}
    out: dict[str, Any] = {
        key: build.get(key)
        for key in ("BuildTime", "BuildTool", "BuildToolVersion", "OperatingSystem",
                    "KernelVersion")
    }  # fmt: skip
    out["DockerInfo"] = md.get("DockerInfo")
    custom = md.get("CustomMetadata")
    if isinstance(custom, dict):
        # serde writes the flattened members after the fields; a JSON reader keeps the last of
        # a repeated key, so a member named like a field reads as the member: same here.
        out.update(custom)
    elif custom is not None:
        # nitro-cli cannot flatten a non-object (it fails to print); ours keeps it visible.
        out["CustomMetadata"] = custom
    return out


def describe_eif(m: EifMeasurements) -> dict[str, Any]:
    """The `nitro-cli describe-eif` object for a measured EIF."""
    measurements: dict[str, Any] = {"HashAlgorithm": HASH_ALGORITHM}
    for index in sorted(m.pcrs):
        measurements[f"PCR{index}"] = m.pcrs[index].hex()
    out: dict[str, Any] = {
        "EifVersion": m.version,
        "Measurements": dict(sorted(measurements.items())),
        "IsSigned": m.signature is not None,
    }
    if m.signature is not None:
        out["SigningCertificate"] = signing_certificate_info(m.signature.certificate)
    out["CheckCRC"] = m.crc_expected == m.crc_computed
    if m.signature is not None:
        out["SignatureCheck"] = bool(m.signature_ok)
    if m.metadata is not None:
        out["ImageName"] = m.metadata.get("ImageName")
        out["ImageVersion"] = m.metadata.get("ImageVersion")
        out["Metadata"] = _metadata(m.metadata)
    return out

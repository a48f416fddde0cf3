"""The KMS key policy: decrypt only for the parent's role and only from an attested release.

KMS compares `kms:RecipientAttestation:*` keys with the attestation document the enclave sends in
Decrypt's `Recipient`; a request without one has no such keys, and StringEqualsIgnoreCase on an
absent key is false, so it is refused. One statement per release: conditions in one statement are
ANDed, values within one key ORed, so listing two releases' PCR0s in one statement would accept
release A's PCR0 with release B's PCR1.
"""

from __future__ import annotations

from typing import Any

from reproducible.deploy.release import Release

__all__ = ["ADMIN_ACTIONS", "ATTESTATION_PREFIX", "key_policy", "release_conditions"]

ATTESTATION_PREFIX = "kms:RecipientAttestation:"

#: The admin principal manages the key and encrypts the signing key into it, never decrypts.
#: No kms:* wildcard, no Decrypt/ReEncrypt/GenerateDataKey*, and no CreateGrant: a grant would
#: hand out Decrypt without the attestation condition. PutKeyPolicy stays (a rolling upgrade adds
#: the new release's statement); guard the admin principal accordingly.
ADMIN_ACTIONS = (
    "kms:CancelKeyDeletion",
    "kms:DescribeKey",
    "kms:DisableKey",
    "kms:EnableKey",
    "kms:Encrypt",
    "kms:GetKeyPolicy",
    "kms:GetKeyRotationStatus",
    "kms:ListResourceTags",
    "kms:PutKeyPolicy",
    "kms:ScheduleKeyDeletion",
    "kms:TagResource",
    "kms:UntagResource",
    "kms:EnableKeyRotation",
    "kms:DisableKeyRotation",
)


def release_conditions(release: Release) -> dict[str, str]:
    """`kms:RecipientAttestation:*` key -> required value for one release (ImageSha384 = PCR0)."""
    cond = {f"{ATTESTATION_PREFIX}ImageSha384": release.pcrs[0]}
    for index in release.pinned:
        cond[f"{ATTESTATION_PREFIX}PCR{index}"] = release.pcrs[index]
    return dict(sorted(cond.items()))


def _sid(version: str) -> str:
    # Sids are alphanumeric.
    return "DecryptFromRelease" + "".join(c if c.isalnum() else "x" for c in version)


def key_policy(releases: list[Release], parent: Any, admin: Any) -> dict[str, Any]:
    """The policy document; `parent` and `admin` are principal ARNs or CloudFormation intrinsics.

    Raises:
        ValueError: no release, or two releases with the same version.
    """
    versions = [r.version for r in releases]
    if not releases or len(set(versions)) != len(versions):
        raise ValueError(f"need distinct releases, got {versions}")
    statements: list[dict[str, Any]] = [
        {
            "Sid": "AdminManagesAndEncryptsNeverDecrypts",
            "Effect": "Allow",
            "Principal": {"AWS": admin},
            "Action": sorted(ADMIN_ACTIONS),
            "Resource": "*",
        }
    ]
    for release in releases:
        statements.append(
            {
                "Sid": _sid(release.version),
                "Effect": "Allow",
                "Principal": {"AWS": parent},
                "Action": "kms:Decrypt",
                "Resource": "*",
                "Condition": {"StringEqualsIgnoreCase": release_conditions(release)},
            }
        )
    return {"Version": "2012-10-17", "Id": "sentinel-signing-key", "Statement": statements}

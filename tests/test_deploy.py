"""`python -m reproducible deploy`: key policy, template (cfn-lint, moto's CloudFormation over HTTP),
instance set-up audited by `verify audit`, determinism and bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from reproducible._cli import main as reproducible_main
from reproducible.deploy import (
    DebugMeasurements,
    DeployOptions,
    EnclaveMemoryTooSmall,
    MissingPcrs,
    NoHostCore,
    generate_deployment,
)
from reproducible.deploy.errors import CpuLayoutError
from reproducible.deploy.host import kernel_cmdline
from reproducible.deploy.layout import plan_layout
from verify.audit import AuditOptions, HostTree, Status, run_audit
from verify.audit.tuning import LATENCY_TUNING, SettingKind

ROOT = Path(__file__).parent.parent
M010 = ROOT / "measurements" / "0.1.0.json"
M020 = ROOT / "measurements" / "0.2.0.json"
HOSTS = Path(__file__).parent / "assets" / "hosts"
PREFIX = "kms:RecipientAttestation:"


def pcrs_of(path: Path) -> dict[str, str]:
    block = json.loads(path.read_text())["Measurements"]
    return {k: v for k, v in block.items() if k.startswith("PCR")}


def measurements_with(tmp_path: Path, name: str, **pcrs: str | None) -> Path:
    doc = json.loads(M020.read_text())
    for key, value in pcrs.items():
        if value is None:
            doc["Measurements"].pop(key, None)
        else:
            doc["Measurements"][key] = value
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def deploy(*paths: Path, **options: Any) -> dict[str, bytes]:
    return generate_deployment(DeployOptions(measurements=list(paths), **options)).files


# -- the key policy, evaluated ---------------------------------------------------------------------


def evaluate(policy: dict[str, Any], principal: str, action: str, context: dict[str, str]) -> bool:
    """IAM's rules for the subset our policies use: an Allow statement applies when its principal
    and action match and every condition operator's every key holds; StringEqualsIgnoreCase on a
    key absent from the request is false. No statement here is Deny."""
    for st in policy["Statement"]:
        assert st["Effect"] == "Allow"
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        if st["Principal"]["AWS"] != principal or action not in actions:
            continue
        ok = True
        for operator, keys in st.get("Condition", {}).items():
            assert operator == "StringEqualsIgnoreCase", operator
            for key, wanted in keys.items():
                values = wanted if isinstance(wanted, list) else [wanted]
                got = context.get(key)
                ok = ok and got is not None and got.lower() in [v.lower() for v in values]
        if ok:
            return True
    return False


def attestation(pcrs: dict[str, str]) -> dict[str, str]:
    ctx = {f"{PREFIX}{k}": v for k, v in pcrs.items()}
    ctx[f"{PREFIX}ImageSha384"] = pcrs["PCR0"]
    return ctx


PARENT = "arn:aws:iam::111122223333:role/sentinel-parent"
ADMIN = "arn:aws:iam::111122223333:role/sentinel-admin"


def policy_for(*paths: Path) -> dict[str, Any]:
    files = deploy(*paths, parent_role_arn=PARENT, admin_arn=ADMIN)
    return json.loads(files["kms-key-policy.json"])


def test_policy_accepts_the_release_and_refuses_anything_else() -> None:
    policy = policy_for(M020)
    good = attestation(pcrs_of(M020))
    assert evaluate(policy, PARENT, "kms:Decrypt", good)
    # Upper-case hex is the same value (StringEqualsIgnoreCase).
    assert evaluate(policy, PARENT, "kms:Decrypt", {k: v.upper() for k, v in good.items()})
    other_pcr0 = dict(good, **{f"{PREFIX}PCR0": "ab" * 48, f"{PREFIX}ImageSha384": "ab" * 48})
    assert not evaluate(policy, PARENT, "kms:Decrypt", other_pcr0)
    only_pcr0_differs = dict(good, **{f"{PREFIX}PCR0": "ab" * 48})
    assert not evaluate(policy, PARENT, "kms:Decrypt", only_pcr0_differs)
    debug = attestation({k: "00" * 48 for k in pcrs_of(M020)})
    assert not evaluate(policy, PARENT, "kms:Decrypt", debug)
    assert not evaluate(policy, PARENT, "kms:Decrypt", {})  # no Recipient attestation at all
    # The admin encrypts and manages but never decrypts, attested or not; the parent never encrypts.
    assert evaluate(policy, ADMIN, "kms:Encrypt", {})
    assert not evaluate(policy, ADMIN, "kms:Decrypt", good)
    assert not evaluate(policy, PARENT, "kms:Encrypt", good)


def test_policy_has_no_wildcard_and_no_unconditioned_decrypt() -> None:
    policy = policy_for(M020)
    for st in policy["Statement"]:
        actions = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        assert all("*" not in a for a in actions), actions
        assert st["Principal"]["AWS"] != "*"
        risky = {"kms:Decrypt", "kms:ReEncryptFrom", "kms:CreateGrant", "kms:GenerateDataKey"}
        if risky & set(actions):
            assert actions == ["kms:Decrypt"]
            cond = st["Condition"]["StringEqualsIgnoreCase"]
            assert {f"{PREFIX}{k}" for k in ("ImageSha384", "PCR0", "PCR1", "PCR2")} <= set(cond)


def test_rolling_upgrade_allows_each_release_but_not_a_mix() -> None:
    policy = policy_for(M010, M020)
    old, new = attestation(pcrs_of(M010)), attestation(pcrs_of(M020))
    assert evaluate(policy, PARENT, "kms:Decrypt", old)
    assert evaluate(policy, PARENT, "kms:Decrypt", new)
    mixed = dict(new, **{f"{PREFIX}PCR2": old[f"{PREFIX}PCR2"]})
    assert old[f"{PREFIX}PCR2"] != new[f"{PREFIX}PCR2"]
    assert not evaluate(policy, PARENT, "kms:Decrypt", mixed)


def test_signed_release_pins_pcr8(tmp_path: Path) -> None:
    signed = measurements_with(tmp_path, "signed.json", PCR8="8a" * 48)
    policy = policy_for(signed)
    good = attestation(pcrs_of(signed))
    assert evaluate(policy, PARENT, "kms:Decrypt", good)
    assert not evaluate(policy, PARENT, "kms:Decrypt", dict(good, **{f"{PREFIX}PCR8": "8b" * 48}))
    unsigned = {k: v for k, v in good.items() if not k.endswith("PCR8")}
    assert not evaluate(policy, PARENT, "kms:Decrypt", unsigned)


# -- the template ----------------------------------------------------------------------------------


def write_template(tmp_path: Path, files: dict[str, bytes]) -> Path:
    path = tmp_path / "cloudformation.json"
    path.write_bytes(files["cloudformation.json"])
    return path


def cfn_lint(path: Path) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).parent / "cfn-lint"
    return subprocess.run([str(exe), "--format", "parseable", str(path)], capture_output=True, text=True)


def test_template_passes_cfn_lint(tmp_path: Path) -> None:
    good = cfn_lint(write_template(tmp_path, deploy(M010, M020)))
    errors = [line for line in good.stdout.splitlines() if ":E" in line]
    assert errors == [] and good.returncode in (0, 4, 8), good.stdout + good.stderr  # 4/8: W/I only
    # cfn-lint does find errors in this kind of template: drop a required property.
    broken = json.loads(deploy(M020)["cloudformation.json"])
    del broken["Resources"]["ParentSecurityGroup"]["Properties"]["GroupDescription"]
    bad_path = tmp_path / "broken.json"
    bad_path.write_text(json.dumps(broken))
    bad = cfn_lint(bad_path)
    assert bad.returncode & 2 and "GroupDescription" in bad.stdout, bad.stdout


def test_template_is_closed_and_enclave_enabled() -> None:
    template = json.loads(deploy(M020)["cloudformation.json"])
    res = template["Resources"]
    sg = res["ParentSecurityGroup"]["Properties"]
    assert "SecurityGroupIngress" not in sg
    assert not any(r["Type"] == "AWS::EC2::SecurityGroupIngress" for r in res.values())
    data = res["ParentLaunchTemplate"]["Properties"]["LaunchTemplateData"]
    assert data["EnclaveOptions"] == {"Enabled": True}
    assert data["IamInstanceProfile"] == {"Arn": {"Fn::GetAtt": ["ParentInstanceProfile", "Arn"]}}
    decrypt = [s for s in res["SigningKey"]["Properties"]["KeyPolicy"]["Statement"]
               if s["Action"] == "kms:Decrypt"]
    assert [s["Principal"]["AWS"] for s in decrypt] == [{"Fn::GetAtt": ["ParentRole", "Arn"]}]


@pytest.fixture
def moto_endpoint(monkeypatch: pytest.MonkeyPatch) -> Any:
    from moto.server import ThreadedMotoServer

    for key, value in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing"),
                       ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def test_template_creates_in_cloudformation_and_key_policy_reads_back(
    moto_endpoint: str, tmp_path: Path
) -> None:
    import boto3

    def client(name: str) -> Any:
        return boto3.client(name, region_name="us-east-1", endpoint_url=moto_endpoint)

    ec2 = client("ec2")
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock="10.0.0.0/24")["Subnet"]["SubnetId"]
    image = ec2.describe_images()["Images"][0]["ImageId"]
    cfn = client("cloudformation")
    cfn.create_stack(
        StackName="sentinel",
        TemplateBody=deploy(M010, M020)["cloudformation.json"].decode(),
        Parameters=[
            {"ParameterKey": "ImageId", "ParameterValue": image},
            {"ParameterKey": "VpcId", "ParameterValue": vpc},
            {"ParameterKey": "SubnetId", "ParameterValue": subnet},
            {"ParameterKey": "AdminPrincipalArn", "ParameterValue": ADMIN},
        ],
        Capabilities=["CAPABILITY_IAM"],
    )
    stack = cfn.describe_stacks(StackName="sentinel")["Stacks"][0]
    assert stack["StackStatus"] == "CREATE_COMPLETE", stack
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack["Outputs"]}
    raw = client("kms").get_key_policy(KeyId=outputs["SigningKeyArn"], PolicyName="default")["Policy"]
    # moto hands back a policy set through CloudFormation as the JSON object itself (KMS: a string).
    policy = raw if isinstance(raw, dict) else json.loads(raw)
    role_arn = outputs["ParentRoleArn"]
    assert role_arn.startswith("arn:aws:iam::") and ":role/" in role_arn
    for release in (M010, M020):
        assert evaluate(policy, role_arn, "kms:Decrypt", attestation(pcrs_of(release)))
    assert not evaluate(policy, role_arn, "kms:Decrypt", {})
    assert not evaluate(policy, ADMIN, "kms:Decrypt", attestation(pcrs_of(M020)))
    template = client("ec2").describe_launch_template_versions(
        LaunchTemplateId=outputs["LaunchTemplateId"]
    )["LaunchTemplateVersions"][0]["LaunchTemplateData"]
    assert template["EnclaveOptions"] == {"Enabled": True}
    groups = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc]}])
    ours = [g for g in groups["SecurityGroups"] if g["GroupName"] != "default"]
    assert len(ours) == 1 and ours[0]["IpPermissions"] == []

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


# -- the instance set-up, applied to a captured host and audited -----------------------------------


def widened_default(tmp_path: Path, vcpus: int) -> Path:
    """tests/assets/hosts/default (2 vCPUs, SMT off) grown to `vcpus` by copying cpu1's files."""
    tree = tmp_path / "host"
    shutil.copytree(HOSTS / "default", tree)
    cpu_dir = tree / "sys/devices/system/cpu"
    for cpu in range(2, vcpus):
        shutil.copytree(cpu_dir / "cpu1", cpu_dir / f"cpu{cpu}")
    (cpu_dir / "online").write_text(f"0-{vcpus - 1}\n")
    (tree / "sys/devices/system/node/node0/cpulist").write_text(f"0-{vcpus - 1}\n")
    return tree


def apply_deployment(tree: Path, files: dict[str, bytes]) -> None:
    """Do to the tree what the generated files do to a host, reading the generated files only."""
    from verify.audit.cmdline import parse_cmdline

    cmdline = files["host/etc/sentinel/kernel-cmdline"].decode().strip()
    proc_cmdline = tree / "proc/cmdline"
    proc_cmdline.write_text(proc_cmdline.read_text().split(" -- ")[0].strip() + " " + cmdline + "\n")
    parsed = parse_cmdline(cmdline)
    assert parsed is not None
    # clocksource= selects one of the available clock sources at boot.
    source = parsed.get("clocksource")
    if source is not None:
        clock = tree / "sys/devices/system/clocksource/clocksource0"
        assert source in (clock / "available_clocksource").read_text().split()
        (clock / "current_clocksource").write_text(source + "\n")
    cpu_dir = tree / "sys/devices/system/cpu"
    # What the booted kernel shows for isolcpus= and nohz_full=.
    for name, param in (("isolated", "isolcpus"), ("nohz_full", "nohz_full")):
        cpus = parsed.cpus(param)
        assert cpus is not None
        (cpu_dir / name).write_text(",".join(map(str, sorted(cpus))) + "\n")
    for line in files["host/etc/sysctl.d/60-sentinel-latency.conf"].decode().splitlines():
        if line and not line.startswith("#"):
            key, _, value = (part.strip() for part in line.partition("="))
            path = tree / "proc/sys" / key.replace(".", "/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(value + "\n")
    for line in files["host/usr/local/sbin/sentinel-tune"].decode().splitlines():
        if line.startswith("for f in "):
            pattern = line.split()[3].removesuffix(";")
            value = line.split("echo ")[1].split(" >")[0]
            # The capture holds only the files the audit read, so expand the glob over the IRQ
            # directories (as the shell does over a real /proc/irq).
            parent, _, leaf = pattern.lstrip("/").rpartition("/")
            dirs = [d for d in tree.glob(parent) if d.is_dir()]
            assert dirs, pattern
            for d in dirs:
                (d / leaf).write_text(value + "\n")
                if leaf == "smp_affinity_list":  # where the kernel then delivers the IRQ
                    (d / "effective_affinity_list").write_text(value + "\n")
        elif line.startswith("echo "):
            value, _, path = line.removeprefix("echo ").partition(" > ")
            target = tree / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            old = target.read_text() if target.exists() else ""
            if "[" in old:  # a sysfs choice file shows the selection in brackets
                words = old.replace("[", "").replace("]", "").split()
                value = " ".join(f"[{w}]" if w == value else w for w in words)
            target.write_text(value + "\n")
        elif line.startswith("systemctl disable --now "):
            service = line.split()[3].removesuffix(".service")
            for comm in (tree / "proc").glob("*/comm"):
                if comm.read_text().strip() == service:
                    shutil.rmtree(comm.parent)


def test_deployed_settings_make_the_audit_pass(tmp_path: Path) -> None:
    options = {"vcpus": 4, "threads_per_core": 1, "router_cores": 1, "enclave_cpus": 1}
    deployment = generate_deployment(DeployOptions(measurements=[M020], **options))
    layout = deployment.layout
    assert (layout.host, layout.router, layout.enclave) == ({0, 3}, {1}, {2})
    claimed = {c for s in LATENCY_TUNING for c in s.checks}
    before = run_audit(
        HostTree.from_path(widened_default(tmp_path / "before", 4)), AuditOptions(cpus=layout.router)
    ).by_id()
    assert sum(before[c].status is Status.FAIL for c in claimed) >= len(claimed) // 2
    tree = widened_default(tmp_path / "after", 4)
    apply_deployment(tree, deployment.files)
    after = run_audit(HostTree.from_path(tree), AuditOptions(cpus=layout.router)).by_id()
    failing = {c: (after[c].status, after[c].observed) for c in claimed if after[c].status is not Status.PASS}
    assert failing == {}
    assert after["cpu.housekeeping"].status is Status.PASS  # the host kept CPUs 0 and 3


def test_kernel_cmdline_follows_the_layout() -> None:
    layout = plan_layout(vcpus=16, threads_per_core=2, router_cores=2, enclave_cpus=4)
    # Core k is vCPUs k and k+8: host core 0 (0,8) plus 5-7,13-15; router cores 1-2; enclave 3-4.
    assert layout.router == {1, 2, 9, 10} and layout.enclave == {3, 4, 11, 12}
    assert layout.host == {0, 5, 6, 7, 8, 13, 14, 15}
    words = kernel_cmdline(layout).split()
    assert "isolcpus=managed_irq,domain,1-4,9-12" in words
    assert "nohz_full=1-4,9-12" in words and "rcu_nocbs=1-4,9-12" in words
    assert "irqaffinity=0,5-8,13-15" in words
    assert {"intel_idle.max_cstate=0", "transparent_hugepage=never"} <= set(words)
    cmdline_keys = [s.key for s in LATENCY_TUNING if s.kind is SettingKind.CMDLINE]
    assert [w.partition("=")[0] for w in words] == cmdline_keys


def test_audit_remedies_come_from_the_tuning_table() -> None:
    from verify.audit.checks import ALL_CHECKS

    by_id = {c.id: c for c in ALL_CHECKS}
    for setting in LATENCY_TUNING:
        for check_id in setting.checks:
            assert setting.remedy in by_id[check_id].remedy, (check_id, setting.remedy)


def test_allocator_units_and_proxy_follow_the_layout_and_release() -> None:
    files = deploy(M020, vcpus=8, threads_per_core=2, router_cores=1, enclave_cpus=4)
    allocator = files["host/etc/nitro_enclaves/allocator.yaml"].decode()
    assert "cpu_pool: 2-3,6-7\n" in allocator and "memory_mib: 512\n" in allocator
    enclave = files["host/etc/systemd/system/sentinel-enclave.service"].decode()
    assert "nitro-cli run-enclave --eif-path /opt/sentinel/releases/0.2.0/sentinel.eif" in enclave
    assert "--cpu-count 4 --memory 512" in enclave
    router = files["host/etc/systemd/system/sentinel-router.service"].decode()
    assert "CPUAffinity=1,5\n" in router and "Restart=always\n" in router
    health = files["host/etc/systemd/system/sentinel-health.service"].decode()
    assert "-m verify audit --json --cpus 1,5" in health and "-m verify enclave" in health
    proxy = files["host/usr/local/sbin/sentinel-vsock-proxy"].decode()
    assert 'endpoint="kms.$region.amazonaws.com"' in proxy
    assert proxy.count("allowlist") == 1 and "address: %s, port: 443" in proxy


def test_memory_defaults_to_four_times_the_eif_and_can_be_raised() -> None:
    doc = json.loads(M020.read_text())
    last = doc["Sentinel"]["sections"][-1]
    eif_mib = (last["offset"] + 12 + last["size"]) / (1 << 20)
    deployment = generate_deployment(DeployOptions(measurements=[M020], enclave_memory_mib=4096))
    assert deployment.enclave_memory_mib == 4096
    default = generate_deployment(DeployOptions(measurements=[M020])).enclave_memory_mib
    assert default >= 4 * eif_mib and default % 256 == 0


# -- determinism, CLI, bad input -------------------------------------------------------------------


def test_generation_is_deterministic(tmp_path: Path) -> None:
    args = ["deploy", "--measurements", str(M010), "--measurements", str(M020)]
    assert reproducible_main([*args, "--out", str(tmp_path / "a")]) == 0
    assert reproducible_main([*args, "--out", str(tmp_path / "b")]) == 0
    a = {p.relative_to(tmp_path / "a"): p.read_bytes() for p in (tmp_path / "a").rglob("*") if p.is_file()}
    b = {p.relative_to(tmp_path / "b"): p.read_bytes() for p in (tmp_path / "b").rglob("*") if p.is_file()}
    assert a == b and len(a) == 14
    manifest = json.loads(a[Path("manifest.json")])
    assert manifest["runs"] == "0.2.0" and [r["version"] for r in manifest["releases"]] == ["0.1.0", "0.2.0"]
    import hashlib

    for name, digest in manifest["files"].items():
        assert hashlib.sha256(a[Path(name)]).hexdigest() == digest
    # A different option gives different bytes (the output really depends on the inputs).
    assert deploy(M020, router_cores=2)["host/etc/sentinel/kernel-cmdline"] != deploy(M020)[
        "host/etc/sentinel/kernel-cmdline"
    ]


@pytest.mark.parametrize(
    ("make", "options", "error", "words"),
    [
        (lambda t: measurements_with(t, "debug.json", **{f"PCR{i}": "00" * 48 for i in (0, 1, 2)}),
         {}, DebugMeasurements, "debug-mode"),
        (lambda t: measurements_with(t, "nopcr1.json", PCR1=None), {}, MissingPcrs, "PCR1 missing"),
        (lambda t: M020, {"vcpus": 4, "threads_per_core": 2, "enclave_cpus": 2}, NoHostCore,
         "the host needs at least one core"),
        (lambda t: M020, {"enclave_cpus": 3}, CpuLayoutError, "whole cores"),
        (lambda t: M020, {"enclave_memory_mib": 256}, EnclaveMemoryTooSmall, "--enclave-memory-mib 256"),
    ],
    ids=["debug-build", "missing-pcr", "no-host-core", "half-core", "eif-larger-than-memory"],
)
def test_bad_input_is_a_clear_error(
    tmp_path: Path, make: Any, options: dict[str, int], error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words):
        generate_deployment(DeployOptions(measurements=[make(tmp_path)], **options))


def test_cli_bad_input_exits_2_with_the_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    debug = measurements_with(tmp_path, "debug.json", **{f"PCR{i}": "00" * 48 for i in (0, 1, 2)})
    code = reproducible_main(["deploy", "--measurements", str(debug), "--out", str(tmp_path / "o")])
    assert code == 2 and "debug-mode" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_release_names_its_deployment_in_the_provenance(tmp_path: Path) -> None:
    """`reproducible release --deploy DIR` writes the release's deployment and names every file,
    by SHA-256, in the signed provenance (runDetails.byproducts); the release still verifies."""
    import hashlib

    from test_release import build_output

    build = build_output(tmp_path / "build", version="9.9.9")
    out, deploy_dir = tmp_path / "measurements", tmp_path / "deploy"
    result = subprocess.run(
        [sys.executable, "-m", "reproducible", "release", "--build", str(build), "--out", str(out),
         "--key-file", str(tmp_path / "k.pem"), "--generate-dev-key", "--deploy", str(deploy_dir),
         "--public-key-out", str(tmp_path / "k.pub.pem")],
        capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    provenance = json.loads((out / "9.9.9.provenance.json").read_text())
    named = {b["name"]: b["digest"]["sha256"]
             for b in provenance["predicate"]["runDetails"]["byproducts"]}
    written = {f"deploy/{p.relative_to(deploy_dir)}": hashlib.sha256(p.read_bytes()).hexdigest()
               for p in deploy_dir.rglob("*") if p.is_file()}
    assert named == written and len(named) >= 10
    check = subprocess.run(
        [sys.executable, "-m", "verify", "measurements", str(out / "9.9.9.json"),
         "--key", str(tmp_path / "k.pub.pem"), "--provenance", str(out / "9.9.9.provenance.json")],
        capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert check.returncode == 0, check.stderr


def test_release_without_deploy_names_no_byproducts(tmp_path: Path) -> None:
    from test_release import build_output

    from reproducible.release import publish_release
    from reproducible.release_keys import LocalReleaseKey

    build = build_output(tmp_path / "build", version="9.9.8")
    artifacts = publish_release(
        eif=build / "sentinel.eif", measurements=build / "measurements.json",
        out_dir=tmp_path / "m", signer=LocalReleaseKey.generate(tmp_path / "k.pem"),
        builder_version="0.3.0")
    provenance = json.loads(artifacts.provenance.read_text())
    assert "byproducts" not in provenance["predicate"]["runDetails"]

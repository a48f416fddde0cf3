"""Payload flavours (`--payload development|production`) crossed with the kernel (`--blobs`).

PCR2 depends on the flavour only; a production image carries no dev key and no emulator
permission, and its /cmd loads the key through KMS with the settings of the payload config.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from oci_support import docker_save_tar
from test_reproducible_build import _SNAPSHOT, _blobs, _build, dev  # noqa: F401 (fixture)

from reproducible.build import BuildResult, published_path
from reproducible.cpio import read_cpio
from reproducible.errors import BuildError
from reproducible.flavours import PayloadError, load_production_config

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def _customer(result: BuildResult) -> dict[str, bytes]:
    members = read_cpio((result.eif.parent / "customer.cpio").read_bytes())
    return {m.name: m.data for m in members}


def _build_production(out: Path, **kw) -> BuildResult:
    snap = _SNAPSHOT["enclave"]  # the same enclave/ snapshot as the development builds
    return _build(out, payload="production", enclave_dir=snap, policy=snap / "policy.toml", **kw)


@pytest.fixture(scope="module")
def prod(dev: BuildResult, tmp_path_factory) -> BuildResult:  # noqa: F811
    return _build_production(tmp_path_factory.mktemp("prod") / "build")


def test_production_payload_has_no_dev_key_and_no_emulator(
    dev: BuildResult,  # noqa: F811
    prod: BuildResult,
) -> None:
    files = _customer(prod)
    cmd = files["cmd"].decode().splitlines()
    assert "rootfs/etc/sentinel/dev-key.hex" not in files
    assert "rootfs/etc/sentinel/dev-key.hex" in _customer(dev)
    assert "--allow-nsm-emulator" not in cmd and "--dev-key-file" not in cmd
    assert "--allow-nsm-emulator" in _customer(dev)["cmd"].decode().splitlines()
    config = load_production_config()
    i = cmd.index
    assert cmd[i("--kms-provision") + 1] == f"vsock:any:{config.provision_port}"
    assert cmd[i("--kms-region") + 1] == config.region
    assert cmd[i("--kms-endpoint-url") + 1] == f"https://kms.{config.region}.amazonaws.com"
    assert cmd[i("--kms-proxy") + 1] == config.proxy
    assert files["rootfs/etc/sentinel/policy.toml"] == (ROOT / "enclave" / "policy.toml").read_bytes()
    assert b'mode = "production"' in files["rootfs/etc/sentinel/policy.toml"]
    assert f"127.0.0.1\tkms.{config.region}.amazonaws.com" in files["rootfs/etc/hosts"].decode()
    # the flavour moves PCR2 (and PCR0), never the kernel's PCR1
    assert prod.pcrs[2] != dev.pcrs[2] and prod.pcrs[0] != dev.pcrs[0]
    assert prod.pcrs[1] == dev.pcrs[1]
    s = json.loads(prod.measurements.read_text())["Sentinel"]
    assert (s["mode"], s["kernel"], s["payload"]) == ("production-debian", "debian", "production")
    assert {i["kind"] for i in s["inputs"]} >= {"payload-config", "source"}
    d = json.loads(dev.measurements.read_text())["Sentinel"]
    assert (d["mode"], d["kernel"], d["payload"]) == ("development", "debian", "development")


def test_blobs_with_each_payload(dev: BuildResult, prod: BuildResult, tmp_path: Path) -> None:  # noqa: F811
    blobs = _blobs(tmp_path / "blobs")
    real = _build_production(tmp_path / "p", blobs=blobs)
    assert (real.mode, real.kernel, real.payload) == ("production", "aws-blobs", "production")
    assert real.pcrs[2] == prod.pcrs[2] and real.pcrs[1] != prod.pcrs[1]
    assert published_path(Path("m"), "0.1.0", real.mode) == Path("m/0.1.0-production.json")
    assert "--allow-nsm-emulator" not in _customer(real)["cmd"].decode()
    crossed = _build(tmp_path / "d", blobs=blobs)  # the development payload on AWS's kernel
    assert (crossed.mode, crossed.payload) == ("development-aws-blobs", "development")
    assert crossed.pcrs[2] == dev.pcrs[2] and crossed.pcrs[1] == real.pcrs[1]
    res = subprocess.run(
        [sys.executable, "-m", "verify", "pcr", str(real.eif), "--measurements", str(real.measurements)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr


def test_payload_config_is_in_pcr2(prod: BuildResult, tmp_path: Path) -> None:
    config = tmp_path / "fund.toml"
    key = "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    config.write_text(f'schema = 1\nregion = "eu-west-1"\nproxy = "vsock:3:8001"\n'
                      f'provision_port = 5001\nkey_id = "{key}"\n')  # fmt: skip
    fund = _build_production(tmp_path / "b", payload_config=config)
    cmd = _customer(fund)["cmd"].decode().splitlines()
    assert cmd[cmd.index("--kms-key-id") + 1] == key
    assert "https://kms.eu-west-1.amazonaws.com" in cmd and "vsock:3:8001" in cmd
    assert fund.pcrs[2] != prod.pcrs[2] and fund.pcrs[1] == prod.pcrs[1]


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "reproducible", "build", "--offline",
                           "--out", str(tmp_path / "o"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)  # fmt: skip


def test_flavour_misuse_is_refused(dev: BuildResult, tmp_path: Path) -> None:  # noqa: F811
    config = tmp_path / "c.toml"
    config.write_text('schema = 1\nregion = "us-east-1"\nproxy = "vsock:3:8000"\nprovision_port = 1\n')
    cases = {
        "config-without-production": (("--payload-config", str(config)), "--payload production only"),
        "imported-image": (("--payload", "production", "--from-oci", str(
            docker_save_tar(tmp_path / "i.tar", [[("a", "file", b"x")]], cmd=["/a"]))),
            "not an imported image's"),
        "dev-policy-in-production": (("--payload", "production", "--policy",
                                      str(ROOT / "enclave" / "policy.dev.toml")),
                                     "the production payload needs 'production'"),
        "production-policy-with-dev-key": (("--policy", str(ROOT / "enclave" / "policy.toml")),
                                           "the development payload needs 'development'"),
        "bad-flavour": (("--payload", "staging"), "invalid choice"),
    }  # fmt: skip
    for name, (args, message) in cases.items():
        res = _run(tmp_path, *args)
        text = " ".join(res.stderr.split())  # rich wraps long lines
        assert res.returncode == 2 and message in text, (name, res.stderr)
        assert "Traceback" not in res.stderr
    assert not (tmp_path / "o" / "sentinel.eif").exists()


BAD_CONFIGS = {
    "not-toml": ("region = ", "not TOML"),
    "unknown-key": ('schema = 1\nregion = "us-east-1"\nproxy = "vsock:3:8000"\nprovision_port = 5001'
                    '\nallow_emulator = true\n', "unknown keys allow_emulator"),
    "schema": ('schema = 2\n', "schema 2"),
    "region": ('schema = 1\nregion = "US East"\n', "not an AWS region"),
    "http-endpoint": ('schema = 1\nregion = "us-east-1"\nendpoint = "http://kms.example"\n',
                      "must be https://HOST"),
    "ip-endpoint": ('schema = 1\nregion = "us-east-1"\nendpoint = "https://10.0.0.1"\n',
                    "must be https://HOST"),
    "tcp-proxy": ('schema = 1\nregion = "us-east-1"\nproxy = "tcp:127.0.0.1:8000"\n',
                  "must be vsock:CID:PORT"),
    "port": ('schema = 1\nregion = "us-east-1"\nproxy = "vsock:3:8000"\nprovision_port = "5001"\n',
             "provision_port '5001'"),
    "key-id": ('schema = 1\nregion = "us-east-1"\nproxy = "vsock:3:8000"\nprovision_port = 5001\n'
               'key_id = "a b"\n', "not a KMS key id"),
}  # fmt: skip


@pytest.mark.parametrize("text,message", BAD_CONFIGS.values(), ids=BAD_CONFIGS.keys())
def test_bad_payload_configs_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(PayloadError, match=message) as e:
        load_production_config(path)
    assert isinstance(e.value, BuildError) and str(path) in str(e.value)
    with pytest.raises(PayloadError, match="cannot read"):
        load_production_config(tmp_path / "missing.toml")


def test_provision_port_cannot_be_the_signers(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('schema = 1\nregion = "us-east-1"\nproxy = "vsock:3:8000"\nprovision_port = 5000\n')
    res = _run(tmp_path, "--payload", "production", "--payload-config", str(config))
    assert res.returncode == 2 and "is the signer's port" in " ".join(res.stderr.split())


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("cpio") is None, reason="needs root + cpio")
def test_production_rootfs_refuses_the_emulator(prod: BuildResult, tmp_path: Path) -> None:
    with open(prod.eif.parent / "customer.cpio", "rb") as f:
        subprocess.run(["cpio", "-idm", "--quiet", "--no-absolute-filenames"], cwd=tmp_path,
                       stdin=f, check=True)  # fmt: skip
    cmd = (tmp_path / "cmd").read_text().splitlines()
    env = dict(line.split("=", 1) for line in (tmp_path / "env").read_text().splitlines())
    chroot = [shutil.which("chroot") or "chroot", str(tmp_path / "rootfs")]
    # No /dev/nsm here (as under QEMU): the production payload stops instead of emulating it.
    res = subprocess.run([*chroot, *cmd], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 1 and "emulator is not allowed" in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    # The KMS endpoint resolves to the loopback relay from /etc/hosts alone, and TLS has its roots.
    host = load_production_config().endpoint_host
    probe = (f"import socket, ssl, botocore.httpsession as h;"
             f" print(sorted({{a[4][0] for a in socket.getaddrinfo({host!r}, 443)}}));"
             f" ssl.create_default_context(cafile=h.get_cert_path(True))")  # fmt: skip
    res = subprocess.run([*chroot, cmd[0], "-c", probe], capture_output=True, text=True, env=env,
                         timeout=120)  # fmt: skip
    assert res.returncode == 0 and res.stdout.strip() == "['127.0.0.1']", res.stderr


@pytest.mark.boot
def test_booted_production_image_refuses_the_emulator(prod: BuildResult, anvil, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]  # noqa: E501
    # QEMU has no /dev/nsm: the development image falls back to the emulator, the production one
    # must stop instead. Booted for real, under the same init and kernel as the development image.
    from reproducible.boot.check import run_boot_check

    report = run_boot_check(prod.eif, prod.measurements, anvil.rpc_url, workdir=tmp_path,
                            boot_timeout=30)  # fmt: skip
    console = (tmp_path / "console.log").read_text(errors="replace")
    assert not report.ok and report.signer_address is None
    assert "error: cannot open /dev/nsm" in console
    assert "the NSM emulator is not allowed in this image" in console
    assert "NSM EMULATOR" not in console

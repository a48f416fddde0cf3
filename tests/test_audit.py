"""`verify audit`: captured trees (default, hardened, garbage), bad input, capture, the live host."""

from __future__ import annotations

import filecmp
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from verify._cli import main
from verify.audit import AuditOptions, HostTree, MalformedHostTree, Severity, Status, run_audit
from verify.audit.cmdline import parse_cmdline
from verify.audit.cpulist import format_cpulist, parse_cpulist, parse_cpumask

HOSTS = Path(__file__).parent / "assets" / "hosts"
ROOT = Path(__file__).parent.parent


def audit_tree(name: str | Path, **options: object):
    path = name if isinstance(name, Path) else HOSTS / name
    return run_audit(HostTree.from_path(path), AuditOptions(**options)).by_id()  # type: ignore[arg-type]


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict | None, str]:
    code = main(["audit", *argv])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if out.strip() else None), err


# -- parsers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0-3,8", {0, 1, 2, 3, 8}),
        ("", set()),
        ("(null)", set()),
        ("5", {5}),
        ("0-7:2/4", {0, 1, 4, 5}),
        ("3-1", None),
        ("0-", None),
        ("a", None),
        ("1,,2", None),
        ("0-99999999", None),
    ],
    ids=["ranges", "empty", "null", "single", "groups", "reversed", "open", "word", "hole", "huge"],
)
def test_parse_cpulist(text: str, expected: set[int] | None) -> None:
    got = parse_cpulist(text)
    assert got == (None if expected is None else frozenset(expected))


def test_cpumask_and_format() -> None:
    assert parse_cpumask("00000000,00000f01") == frozenset({0, 8, 9, 10, 11})
    assert parse_cpumask("zz") is None
    assert format_cpulist(frozenset({0, 1, 2, 5, 7, 8})) == "0-2,5,7-8"
    for cpus in ({1}, {0, 2, 4}, set(range(64))):
        assert parse_cpulist(format_cpulist(frozenset(cpus))) == frozenset(cpus)


def test_cmdline_parsing() -> None:
    c = parse_cmdline(
        'quiet isolcpus=nohz,domain,2-5 foo="a b" nohz-full=2-5 idle=halt idle=poll -- x=1'
    )
    assert c is not None
    assert c.cpus("isolcpus") == frozenset({2, 3, 4, 5})
    assert c.cpus("nohz_full") == frozenset({2, 3, 4, 5})  # '-' and '_' are the same to the kernel
    assert c.get("idle") == "poll"  # last one wins
    assert c.get("foo") == "a b"
    assert not c.has("x")  # init's arguments are not kernel parameters
    assert parse_cmdline('a="unbalanced b=1') is not None


# -- captured trees --------------------------------------------------------------------------------

# The acceptance list: THP, isolation, C-states, irqbalance (plus IRQ affinity, which follows).
FLAGGED_ON_DEFAULT = [
    "mem.thp.enabled",
    "mem.thp.defrag",
    "cpu.isolcpus",
    "cpu.nohz_full",
    "cpu.rcu_nocbs",
    "cpu.targets_isolated",
    "power.intel_idle",
    "power.processor_max_cstate",
    "irq.irqbalance",
    "irq.affinity",
]


def test_default_tree_flags_the_usual_suspects() -> None:
    results = audit_tree("default")
    for check_id in FLAGGED_ON_DEFAULT:
        assert results[check_id].status is Status.FAIL, (check_id, results[check_id])
    thp = (HOSTS / "default/sys/kernel/mm/transparent_hugepage/enabled").read_text()
    assert f"[{results['mem.thp.enabled'].observed}]" in thp
    comm = next(
        p for p in (HOSTS / "default/proc").glob("*/comm") if p.read_text().strip() == "irqbalance"
    )
    assert results["irq.irqbalance"].observed == f"running (pid {comm.parent.name})"


def test_hardened_tree_passes_everything() -> None:
    report = run_audit(HostTree.from_path(HOSTS / "hardened"))
    assert report.targets == "1" and report.targets_source == "isolated CPUs"
    assert report.passed(), [r for r in report.results if r.status is not Status.PASS]
    for check_id in FLAGGED_ON_DEFAULT:
        assert report.by_id()[check_id].status is Status.PASS
    assert report.counts()["unknown"] == 0
    assert 25 <= len(report.results) <= 40


def test_hardened_tree_fails_when_targets_include_the_housekeeping_cpu() -> None:
    results = audit_tree("hardened", cpus=frozenset({0, 1}))
    assert results["cpu.targets_isolated"].status is Status.FAIL
    assert "misses target CPUs 0" in results["cpu.targets_isolated"].note
    assert results["irq.affinity"].status is Status.FAIL


def test_pid_and_nic_options_on_captured_tree() -> None:
    results = audit_tree("default", pid=1, nic="eth0")
    assert results["numa.nic"].status is Status.PASS
    assert results["numa.process_memory"].status is Status.PASS
    assert audit_tree("default", nic="nope0")["numa.nic"].status is Status.UNKNOWN
    assert audit_tree("default")["numa.nic"].status is Status.NOT_APPLICABLE


def test_garbage_tree_never_crashes(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, err = cli(capsys, "--root", str(HOSTS / "garbage"), "--json")
    assert code in (0, 1) and doc is not None
    assert "Traceback" not in err
    statuses = {c["id"]: c["status"] for c in doc["checks"]}
    assert len(statuses) == len(doc["checks"])
    assert sum(1 for s in statuses.values() if s == "unknown") >= 20
    # Garbage must never read as a pass for the checks it damaged.
    for check_id in ("cpu.targets_isolated", "mem.thp.enabled", "mem.swap", "kernel.clocksource"):
        assert statuses[check_id] == "unknown"


_make_trees = importlib.util.spec_from_file_location("make_trees", HOSTS / "make_trees.py")
assert _make_trees is not None and _make_trees.loader is not None
make_trees = importlib.util.module_from_spec(_make_trees)
_make_trees.loader.exec_module(make_trees)

# One damaged file in an otherwise good capture -> that check is "unknown", the rest still run.
DAMAGE = [
    ("proc/sys/vm/swappiness", b"sixty\n", "mem.swappiness"),
    ("proc/sys/kernel/nmi_watchdog", b"", "kernel.nmi_watchdog"),
    ("proc/sys/kernel/sched_rt_runtime_us", b"9" * 5000, "kernel.rt_throttling"),
    ("sys/kernel/mm/transparent_hugepage/enabled", b"\n", "mem.thp.enabled"),
    ("proc/swaps", b"junk\n", "mem.swap"),
    (
        "sys/devices/system/clocksource/clocksource0/current_clocksource",
        b"\xc3\x28",
        "kernel.clocksource",
    ),
    ("sys/devices/system/cpu/isolated", b"\xff\xfe", "cpu.targets_isolated"),
    ("sys/devices/system/cpu/online", b"0-\n", "cpu.housekeeping"),
    ("proc/irq/default_smp_affinity", b"not-hex\n", "irq.default_affinity"),
    ("sys/devices/virtual/workqueue/cpumask", b",,,\n", "cpu.workqueue"),
    ("sys/devices/system/cpu/cpu0/cpuidle/state1/latency", b"abc\n", "power.cstates"),
    ("sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages", b"-x\n", "mem.hugepages"),
    ("sys/devices/system/node/node0/cpulist", b"0-1,\n", "numa.targets_node"),
    ("sys/kernel/mm/ksm/run", None, "mem.ksm"),
    ("proc/sys/kernel/timer_migration", "dir", "kernel.timer_migration"),
    ("proc/cmdline", None, "cpu.isolcpus"),
]


@pytest.mark.parametrize(("rel", "data", "check_id"), DAMAGE, ids=[d[2] for d in DAMAGE])
def test_single_damage_is_unknown(
    tmp_path: Path, rel: str, data: bytes | str | None, check_id: str
) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(HOSTS / "default", tree)
    target = tree / rel
    target.unlink()
    if data == "dir":
        target.mkdir()
    elif isinstance(data, bytes):
        target.write_bytes(data)
    results = audit_tree(tree)
    assert results[check_id].status is Status.UNKNOWN, results[check_id]
    assert results[check_id].note  # says why
    assert len(results) == len(audit_tree("default"))


def test_derived_trees_are_reproducible(tmp_path: Path) -> None:
    make_trees.main(tmp_path)
    for name in ("hardened", "garbage"):
        cmp = filecmp.dircmp(tmp_path / name, HOSTS / name)
        stack = [cmp]
        while stack:
            d = stack.pop()
            assert not (d.left_only or d.right_only or d.diff_files or d.funny_files), (
                name,
                d.left,
            )
            _, mismatch, errors = filecmp.cmpfiles(d.left, d.right, d.common_files, shallow=False)
            assert not mismatch and not errors, (name, d.left, mismatch, errors)
            stack.extend(d.subdirs.values())


# -- bad input from the user -----------------------------------------------------------------------


def _evil_tar(path: Path) -> Path:
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("../../etc/passwd")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"x\n"))
    return path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--root", "/nonexistent/capture"], "no such file or directory"),
        (["--root", str(HOSTS / "README.md")], "not a directory or a readable tar"),
        (["--cpus", "3-1"], "expected a CPU list"),
        (["--cpus", ""], "expected a CPU list"),
        (["--pid", "-4"], "expected a positive process id"),
        (
            ["--root", str(HOSTS / "default"), "--capture", "/nonexistent/dir/out.tar"],
            "cannot write",
        ),
        (["--fail-on", "critical"], "invalid choice"),
        (["--pid", "999999999"], "no such process"),
        (["--root", str(HOSTS / "default"), "--pid", "2"], "no such process"),
        (["--nic", "nope0"], "no such interface"),
        (["--nic", "../../etc"], "not an interface name"),
        (["--cpus", "0-4095"], "are not online"),
    ],
    ids=[
        "missing-root",
        "not-a-tar",
        "reversed-cpus",
        "empty-cpus",
        "negative-pid",
        "capture-dir",
        "bad-severity",
        "no-such-pid",
        "pid-not-captured",
        "no-such-nic",
        "nic-traversal",
        "offline-cpus",
    ],
)
def test_bad_input_exits_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    code, _, err = cli(capsys, *argv)
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_tar_expanding_too_far_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from verify.audit import tree as tree_module

    monkeypatch.setattr(tree_module, "MAX_TAR_BYTES", 4096)
    bomb = tmp_path / "bomb.tar.gz"
    with tarfile.open(bomb, "w:gz") as tar:
        for i in range(3):
            info = tarfile.TarInfo(f"proc/junk{i}")
            info.size = 2000
            tar.addfile(info, io.BytesIO(b"\0" * 2000))
    assert bomb.stat().st_size < 4096
    with pytest.raises(MalformedHostTree, match="expands beyond"):
        HostTree.from_path(bomb)


def test_tar_member_escaping_the_tree_is_rejected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, "--root", str(_evil_tar(tmp_path / "evil.tar")))
    assert code == 2 and "escapes the tree" in err


def test_symlink_out_of_a_captured_tree_is_not_followed(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    shutil.copytree(HOSTS / "hardened", tree)
    outside = tmp_path / "outside"
    outside.write_text("always [madvise] never\n")
    thp = tree / "sys/kernel/mm/transparent_hugepage/enabled"
    thp.unlink()
    thp.symlink_to(outside)
    result = audit_tree(tree)["mem.thp.enabled"]
    assert result.status is Status.UNKNOWN


def test_empty_check_list_is_not_a_pass() -> None:
    with pytest.raises(ValueError, match="no checks"):
        run_audit(HostTree.from_path(HOSTS / "hardened"), checks=[])


def test_exit_codes_follow_the_verdict(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(capsys, "--root", str(HOSTS / "hardened"))[0] == 0
    code, doc, err = cli(capsys, "--root", str(HOSTS / "default"), "--json")
    assert code == 1 and doc is not None and doc["verdict"] == "fail"
    assert err.splitlines()[0].startswith("FAIL")  # the verdict comes first
    # Only high-severity failures count with --fail-on high; default still has some.
    code, doc, _ = cli(capsys, "--root", str(HOSTS / "default"), "--json", "--fail-on", "high")
    assert code == 1 and doc is not None
    highs = [c for c in doc["checks"] if c["status"] == "fail" and c["severity"] == "high"]
    assert highs and doc["fail_on"] == "high"


# -- capture ---------------------------------------------------------------------------------------


def test_capture_round_trip_is_exact_and_deterministic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a, b = tmp_path / "a.tar", tmp_path / "b.tar"
    args = ("--root", str(HOSTS / "default"), "--pid", "1", "--nic", "eth0", "--json")
    code_a, doc_a, _ = cli(capsys, *args, "--capture", str(a))
    code_b, _, _ = cli(capsys, *args, "--capture", str(b))
    assert code_a == code_b == 0
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as tar:
        members = tar.getmembers()
    assert all(m.isfile() and m.mtime == 0 and m.uid == 0 and not m.uname for m in members)
    names = sorted(m.name for m in members)
    assert names == [n for n in names if (HOSTS / "default" / n).is_file()]  # only files it read
    _, doc_c, _ = cli(capsys, "--root", str(a), "--pid", "1", "--nic", "eth0", "--json")
    assert doc_a is not None and doc_c is not None
    assert doc_a["checks"] == doc_c["checks"]


def test_live_capture_reproduces_live_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "live.tar"
    _, live, _ = cli(capsys, "--json", "--capture", str(out))
    _, replay, _ = cli(capsys, "--root", str(out), "--json")
    assert live is not None and replay is not None
    assert live["checks"] == replay["checks"]
    assert live["target_cpus"] == replay["target_cpus"]


# -- the live host -----------------------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


LIVE_INTS = {
    "mem.swappiness": "/proc/sys/vm/swappiness",
    "mem.numa_balancing": "/proc/sys/kernel/numa_balancing",
    "mem.ksm": "/sys/kernel/mm/ksm/run",
    "mem.zone_reclaim": "/proc/sys/vm/zone_reclaim_mode",
    "kernel.timer_migration": "/proc/sys/kernel/timer_migration",
    "kernel.rt_throttling": "/proc/sys/kernel/sched_rt_runtime_us",
    "kernel.stat_interval": "/proc/sys/vm/stat_interval",
}


def test_live_json_agrees_with_proc_and_sys(capsys: pytest.CaptureFixture[str]) -> None:
    code, doc, _ = cli(capsys, "--json")
    assert code in (0, 1) and doc is not None
    checks = {c["id"]: c for c in doc["checks"]}
    compared = 0
    for check_id, path in LIVE_INTS.items():
        raw = _read(path)
        if raw is None:
            assert checks[check_id]["status"] == "unknown"
            continue
        assert checks[check_id]["observed"] == raw, check_id
        compared += 1
    cmdline = _read("/proc/cmdline") or ""
    if "nowatchdog" not in cmdline.split() and (raw := _read("/proc/sys/kernel/nmi_watchdog")):
        assert checks["kernel.nmi_watchdog"]["observed"] == raw
    thp = _read("/sys/kernel/mm/transparent_hugepage/enabled")
    if thp is not None:
        selected = re.search(r"\[(\w+)\]", thp)
        assert selected and checks["mem.thp.enabled"]["observed"] == selected.group(1)
        compared += 1
    clock = _read("/sys/devices/system/clocksource/clocksource0/current_clocksource")
    if clock is not None:
        assert checks["kernel.clocksource"]["observed"] == clock
        compared += 1
    isolated = _read("/sys/devices/system/cpu/isolated")
    online = _read("/sys/devices/system/cpu/online")
    assert doc["target_cpus"] == (isolated or online)
    kernel_args = cmdline.split(" -- ")[0].split()
    has_isolcpus = any(a.startswith("isolcpus=") for a in kernel_args)
    assert (checks["cpu.isolcpus"]["observed"] == "absent") is (not has_isolcpus)
    irqs = [p for p in Path("/proc/irq").iterdir() if p.name.isdigit()]
    if irqs:
        assert re.search(rf"\bof {len(irqs)} IRQs\b", checks["irq.affinity"]["observed"])
    swaps = (_read("/proc/swaps") or "").splitlines()[1:]
    assert (checks["mem.swap"]["observed"] == "no active swap") is (not swaps)
    assert compared >= 5


@pytest.fixture
def fake_irqbalance(tmp_path: Path):
    """A real process whose name is irqbalance (a copy of sleep), so detection is tested live."""
    exe = tmp_path / "irqbalance"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", exe)
    proc = subprocess.Popen([str(exe), "60"])
    # Popen can return before exec() has renamed the task (the close-on-exec pipe closes first).
    deadline = time.monotonic() + 10
    while _read(f"/proc/{proc.pid}/comm") != "irqbalance" and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def test_live_irqbalance_detected(fake_irqbalance: subprocess.Popen[bytes]) -> None:
    result = run_audit(HostTree.live()).by_id()["irq.irqbalance"]
    assert result.status is Status.FAIL
    pid = re.fullmatch(r"running \(pid (\d+)\)", result.observed)
    assert pid and _read(f"/proc/{pid.group(1)}/comm") == "irqbalance"


def test_live_pid_targets_its_cpus() -> None:
    cpu = max(os.sched_getaffinity(0))
    proc = subprocess.Popen(["sleep", "30"])
    try:
        os.sched_setaffinity(proc.pid, {cpu})
        report = run_audit(HostTree.live(), AuditOptions(pid=proc.pid))
        assert report.targets == str(cpu)
        assert report.by_id()["numa.process_memory"].status is not Status.NOT_APPLICABLE
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root to drop to nobody"
)
def test_works_without_root() -> None:
    drop = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    probe = subprocess.run(
        [*drop, "-c", "import verify.audit"], cwd=ROOT, capture_output=True, env=env, timeout=60
    )
    if probe.returncode != 0:
        pytest.skip(
            "user nobody cannot read this checkout or its Python (e.g. a clone under /root)"
        )
    proc = subprocess.run(
        [*drop, "-m", "verify", "audit", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode in (0, 1), proc.stderr
    assert "Traceback" not in proc.stderr
    doc = json.loads(proc.stdout)
    assert len(doc["checks"]) == len(run_audit(HostTree.live()).results)


def test_severity_threshold_filters_failures() -> None:
    report = run_audit(HostTree.from_path(HOSTS / "default"))
    assert len(report.failed(Severity.HIGH)) < len(report.failed(Severity.LOW))


def test_readme_lists_every_check() -> None:
    from verify.audit.checks import ALL_CHECKS

    readme = (ROOT / "verify" / "audit" / "README.md").read_text()
    for check in ALL_CHECKS:
        assert f"`{check.id}`" in readme, check.id

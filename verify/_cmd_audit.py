"""`python -m verify audit`: audit a host's latency configuration from /proc and /sys, no root needed."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from rich.console import Console
from rich.table import Table
from rich.text import Text

from verify.audit import (
    AuditOptions,
    AuditReport,
    HostTree,
    MalformedCpuList,
    Severity,
    Status,
    run_audit,
    write_capture,
)
from verify.audit.cpulist import format_cpulist, parse_cpulist
from verify.errors import MalformedInput

_STATUS_STYLE = {
    Status.PASS: "green",
    Status.FAIL: "bold red",
    Status.UNKNOWN: "yellow",
    Status.NOT_APPLICABLE: "dim",
}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="audit this host's /proc and /sys against a low-latency profile",
        description="Static audit of a host's latency configuration (CPU isolation, IRQs, power "
        "management, memory, timers, NUMA). Needs no root: an unreadable file is reported as "
        "'unknown'. Exit 0 when no check at or above --fail-on failed, 1 otherwise.",
    )
    parser.add_argument("--cpus", metavar="LIST", help="the latency-critical CPUs, e.g. 2-7,10")
    parser.add_argument(
        "--pid", type=int, metavar="PID", help="audit for this process's CPUs and memory"
    )
    parser.add_argument("--nic", metavar="IFACE", help="check this network interface's NUMA node")
    parser.add_argument(
        "--root",
        metavar="DIR|TAR",
        help="read a captured tree (directory or --capture tar) instead of /",
    )
    parser.add_argument(
        "--capture",
        metavar="OUT.tar",
        help="also write exactly the files the audit read to a deterministic tar (exits 0 once written)",
    )
    parser.add_argument(
        "--fail-on",
        choices=[s.value for s in Severity],
        default=Severity.LOW.value,
        help="lowest severity whose failure makes the verdict fail (default: low, i.e. any)",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable report on stdout")
    parser.set_defaults(func=run)


_IFNAME = re.compile(r"^(?!\.{1,2}$)[A-Za-z0-9_.:@-]{1,15}$")  # IFNAMSIZ is 16 with the NUL


def _options(args: argparse.Namespace, tree: HostTree) -> AuditOptions:
    """Check the user's --cpus/--pid/--nic against the host (or capture) they describe."""
    cpus = None
    if args.cpus is not None:
        cpus = parse_cpulist(args.cpus)
        if not cpus:
            raise MalformedCpuList(f"--cpus {args.cpus!r}: expected a CPU list such as 2-7,10")
        online = parse_cpulist(tree.read("/sys/devices/system/cpu/online"))
        if online is not None and not cpus <= online:
            raise MalformedCpuList(
                f"--cpus {args.cpus}: CPUs {format_cpulist(cpus - online)} are not online "
                f"(online: {format_cpulist(online)})"
            )
    if args.pid is not None:
        if args.pid <= 0:
            raise MalformedInput(f"--pid {args.pid}: expected a positive process id")
        if tree.read(f"/proc/{args.pid}/status") is None:
            raise MalformedInput(f"--pid {args.pid}: no such process (no /proc/{args.pid}/status)")
    if args.nic is not None:
        if not _IFNAME.match(args.nic):
            raise MalformedInput(f"--nic {args.nic!r}: not an interface name")
        if tree.read(f"/sys/class/net/{args.nic}/address") is None:
            raise MalformedInput(
                f"--nic {args.nic}: no such interface (no /sys/class/net/{args.nic})"
            )
    return AuditOptions(cpus=cpus, pid=args.pid, nic=args.nic)


def run(args: argparse.Namespace) -> int:
    from verify._cli import emit_json, stderr_console

    if args.root is not None:
        tree, source = HostTree.from_path(args.root), f"captured tree {args.root}"
    else:
        tree, source = HostTree.live(), "live host"
    options = _options(args, tree)
    report = run_audit(tree, options, source=source)
    fail_on = Severity(args.fail_on)
    console = stderr_console()
    _print_report(console, report, fail_on)
    if args.json:
        emit_json(report.to_json(fail_on))
    if args.capture is not None:
        dest = Path(args.capture)
        try:
            count = write_capture(dest, tree.files_read)
        except OSError as e:
            raise MalformedInput(f"--capture {dest}: cannot write ({e.strerror})") from e
        console.print(f"captured {count} files to {dest} (read it back with --root {dest})")
        return 0
    return 0 if report.passed(fail_on) else 1


def _print_report(console: Console, report: AuditReport, fail_on: Severity) -> None:
    counts = report.counts()
    failed = report.failed(fail_on)
    if failed:
        high = sum(1 for r in failed if r.severity is Severity.HIGH)
        console.print(
            f"[bold red]FAIL[/]: {len(failed)} of {len(report.results)} checks failed "
            f"({high} high severity); {counts['unknown']} unknown"
        )
    else:
        console.print(
            f"[bold green]PASS[/]: no check at or above '{fail_on.value}' failed; "
            f"{counts['unknown']} unknown, {counts['n/a']} not applicable"
        )
    console.print(
        Text(f"source: {report.source}; target CPUs: {report.targets} ({report.targets_source})")
    )
    table = Table(show_lines=False)
    for col in ("status", "severity", "check", "observed", "expected"):
        table.add_column(col, overflow="fold")
    for r in report.results:
        table.add_row(
            Text(r.status.value, style=_STATUS_STYLE[r.status]),
            r.severity.value,
            Text.assemble(r.id, "\n", (r.title, "dim")),
            Text.assemble(r.observed, *(("\n", (r.note, "dim")) if r.note else ())),
            Text(r.expected),
        )
    console.print(table)
    for r in report.results:
        if r.status is Status.FAIL:
            console.print(Text.assemble((r.id, "bold"), f" ({r.latency}): {r.remedy}"))

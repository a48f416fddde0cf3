"""Derive the `hardened` and `garbage` host trees from the captured `default` tree.

Usage: python tests/assets/hosts/make_trees.py [OUT_DIR]   (default: next to this file)

`default/` is a real capture (see README.md). The other two are derived from it here, file by file,
so that every difference is written down and the result is reproducible: run this script and the
trees are byte-identical to the checked-in ones (tests/test_audit_trees.py checks that).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

HERE = Path(__file__).parent

#: Kernel parameters of a tuned-latency host (tuned's latency-performance/realtime profiles,
#: Rigtorp's low-latency guide), for this capture's 2-CPU topology: CPU 0 keeps the OS, CPU 1 is
#: the latency CPU.
HARDENED_CMDLINE = (
    "isolcpus=managed_irq,domain,1 nohz_full=1 rcu_nocbs=1 irqaffinity=0 "
    "intel_idle.max_cstate=0 processor.max_cstate=1 idle=poll transparent_hugepage=never "
    "nowatchdog nosoftlockup tsc=reliable skew_tick=1 hugepagesz=1G hugepages=2"
)

#: File -> content on the hardened host (what the kernel shows after the settings above and the
#: sysctls below: vm.swappiness=10, vm.stat_interval=10, kernel.timer_migration=0,
#: kernel.sched_rt_runtime_us=-1, kernel.nmi_watchdog=0, kernel.soft_watchdog=0).
HARDENED_FILES: dict[str, str] = {
    "sys/devices/system/cpu/isolated": "1\n",
    "sys/devices/system/cpu/nohz_full": "1\n",
    "sys/kernel/mm/transparent_hugepage/enabled": "always madvise [never]\n",
    "sys/kernel/mm/transparent_hugepage/defrag": "always defer defer+madvise madvise [never]\n",
    "sys/kernel/mm/transparent_hugepage/khugepaged/defrag": "0\n",
    "sys/kernel/mm/hugepages/hugepages-1048576kB/nr_hugepages": "2\n",
    "sys/module/intel_idle/parameters/max_cstate": "0\n",
    "sys/module/processor/parameters/max_cstate": "1\n",
    "sys/devices/virtual/workqueue/cpumask": "1\n",
    "proc/irq/default_smp_affinity": "1\n",
    "proc/sys/vm/swappiness": "10\n",
    "proc/sys/vm/stat_interval": "10\n",
    "proc/sys/kernel/timer_migration": "0\n",
    "proc/sys/kernel/sched_rt_runtime_us": "-1\n",
    "proc/sys/kernel/soft_watchdog": "0\n",
    # A bare-metal host has cpufreq (the captured VM has none): governor performance, min = max,
    # turbo off, as `cpupower frequency-set -g performance -d 3.0GHz -u 3.0GHz` leaves it.
    "sys/devices/system/cpu/intel_pstate/no_turbo": "1\n",
    **{
        f"sys/devices/system/cpu/cpu{cpu}/cpufreq/{leaf}": value
        for cpu in (0, 1)
        for leaf, value in (
            ("scaling_governor", "performance\n"),
            ("scaling_min_freq", "3000000\n"),
            ("scaling_max_freq", "3000000\n"),
        )
    },
}

#: Garbage: every kind of damage a broken capture or an odd kernel can show. None may crash.
GARBAGE_FILES: dict[str, bytes] = {
    "proc/cmdline": b'isolcpus=1-  nohz_full=banana rcu_nocbs="unbalanced idle=poll\n',
    "sys/devices/system/cpu/online": b"0-\n",
    "sys/devices/system/cpu/isolated": b"\xff\xfe\x00garbage",
    "sys/kernel/mm/transparent_hugepage/enabled": b"\n",
    "sys/kernel/mm/transparent_hugepage/defrag": b"always defer never\n",
    "proc/swaps": b"this is not a swaps file\n",
    "proc/sys/vm/swappiness": b"sixty\n",
    "proc/sys/kernel/nmi_watchdog": b"",
    "proc/sys/kernel/sched_rt_runtime_us": b"9" * 5000 + b"\n",
    "sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages": b"-x\n",
    "sys/devices/system/cpu/cpu0/cpuidle/state1/latency": b"abc\n",
    "proc/interrupts": b"\x00\x01\x02 nonsense : : :\n",
    "proc/irq/24/effective_affinity_list": b"zz\n",
    "proc/irq/default_smp_affinity": b"not-hex\n",
    "sys/devices/virtual/workqueue/cpumask": b",,,\n",
    "sys/devices/system/node/node0/cpulist": b"0-1,\n",
    "proc/1/status": b"Cpus_allowed_list:\t9999999-1\nMems_allowed_list:\t?\n",
    "sys/devices/system/clocksource/clocksource0/current_clocksource": b"\xc3\x28\n",
}
#: Files removed from the garbage tree (missing is as common as garbage).
GARBAGE_REMOVED = (
    "proc/sys/kernel/soft_watchdog",
    "sys/kernel/mm/ksm/run",
    "proc/sys/vm/zone_reclaim_mode",
    "sys/module/intel_idle/parameters/max_cstate",
)
#: Files replaced by directories (a read must fail cleanly, not raise IsADirectoryError).
GARBAGE_DIRS = ("proc/sys/kernel/timer_migration", "sys/devices/system/cpu/smt/active")


def _copy_default(dest: Path) -> None:
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(HERE / "default", dest)


def make_hardened(dest: Path) -> None:
    _copy_default(dest)
    cmdline = (dest / "proc/cmdline").read_text()
    # Kernel parameters go before the " -- " that starts init's arguments.
    head, sep, tail = cmdline.rstrip("\n").partition(" -- ")
    (dest / "proc/cmdline").write_text(f"{head} {HARDENED_CMDLINE}{' -- ' if sep else ''}{tail}\n")
    for rel, text in HARDENED_FILES.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    # Device IRQs are all steered to the housekeeping CPU 0.
    for irq_file in sorted((dest / "proc/irq").glob("*/effective_affinity_list")):
        irq_file.write_text("0\n")
    # irqbalance is uninstalled on a tuned host: drop its process entry.
    for comm in sorted((dest / "proc").glob("*/comm")):
        if comm.read_text().strip() == "irqbalance":
            shutil.rmtree(comm.parent)


def make_garbage(dest: Path) -> None:
    _copy_default(dest)
    for rel, data in GARBAGE_FILES.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    for rel in GARBAGE_REMOVED:
        (dest / rel).unlink()
        # git keeps no empty directories: prune them so a fresh clone holds the same tree.
        parent = (dest / rel).parent
        while parent != dest and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent
    for rel in GARBAGE_DIRS:
        (dest / rel).unlink()
        (dest / rel).mkdir()
        (dest / rel / "x").write_text("1\n")


def main(out: Path) -> None:
    make_hardened(out / "hardened")
    make_garbage(out / "garbage")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)

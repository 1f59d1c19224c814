"""How many CPUs this process may really use: the default worker count.

``os.cpu_count()`` counts the host's CPUs. In a container or a systemd slice the usable share
is smaller, and one worker per host CPU then means workers fighting over a quota (throttling,
latency spikes). ``available_cpus()`` takes the smallest of:

* the CPUs the process may run on (``os.sched_getaffinity``: ``taskset``, cpusets,
  ``docker run --cpuset-cpus``, Kubernetes' static CPU manager);
* the CFS quota, rounded up: cgroup v2 ``cpu.max`` (``"200000 100000"`` = 2 CPUs; ``max`` = no
  limit; Kubernetes ``resources.limits.cpu``, ``docker run --cpus``, systemd ``CPUQuota=``), or
  cgroup v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``.

It reads the cgroup of this process (``/proc/self/cgroup``), and at least 1 is returned.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def _quota_v2(text: str) -> float | None:
    parts = text.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    quota, period = int(parts[0]), int(parts[1])
    return quota / period if quota > 0 and period > 0 else None


def _quota_v1(quota_text: str, period_text: str) -> float | None:
    quota, period = int(quota_text), int(period_text)
    return quota / period if quota > 0 and period > 0 else None


def _own_cgroup_dirs(root: Path, proc_cgroup: str) -> list[Path]:
    """Directories holding this process's CPU limits, innermost first, up to the root (a
    limit set on a parent slice applies too)."""
    rels = []
    for line in proc_cgroup.splitlines():
        hier, _, rest = line.partition(":")
        controllers, _, rel = rest.partition(":")
        if hier == "0" and controllers == "":  # v2 unified
            rels.append(("", rel))
        elif "cpu" in controllers.split(","):  # v1 cpu controller
            rels.append((controllers, rel))
    out = []
    for controllers, rel in rels:
        base = root / controllers if controllers else root
        if controllers and not base.is_dir():
            base = root / "cpu"  # v1 mounts are often named cpu,cpuacct with a cpu link
        p = base / rel.lstrip("/")
        while True:
            out.append(p)
            if p == base or p.parent == p:
                break
            p = p.parent
    out.append(root)
    return out


def cgroup_cpu_limit(root: str | os.PathLike = "/sys/fs/cgroup",
                     proc_cgroup: str | None = None) -> float | None:
    """The tightest CFS quota over this process's cgroup and its parents, in CPUs; None
    when unlimited or unknown."""
    root = Path(root)
    if proc_cgroup is None:
        try:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            proc_cgroup = ""
    limits = []
    for d in _own_cgroup_dirs(root, proc_cgroup):
        try:
            v2 = d / "cpu.max"
            if v2.is_file():
                q = _quota_v2(v2.read_text())
            elif (d / "cpu.cfs_quota_us").is_file():
                q = _quota_v1((d / "cpu.cfs_quota_us").read_text(), (d / "cpu.cfs_period_us").read_text())
            else:
                continue
        except (OSError, ValueError):
            continue
        if q is not None:
            limits.append(q)
    return min(limits) if limits else None


def available_cpus(root: str | os.PathLike = "/sys/fs/cgroup", proc_cgroup: str | None = None) -> int:
    """CPUs this process may use: affinity, capped by the cgroup quota (rounded up), >= 1."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
    limit = cgroup_cpu_limit(root, proc_cgroup)
    if limit is not None:
        n = min(n, math.ceil(limit))
    return max(1, n)

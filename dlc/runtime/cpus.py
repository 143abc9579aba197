"""How many threads onnxruntime runs a session on when a command names none.

os.cpu_count() counts the machine's CPUs, but a process may use fewer: its affinity (taskset, a
container's cpuset) and its cgroup's CPU quota (docker --cpus, a Kubernetes CPU limit). A
container limited to 2 CPUs on a 64-core host would otherwise get 64 threads time-sliced onto 2.
OMP_NUM_THREADS, when set, decides, as it does for PyTorch and NumPy: torchrun sets it to 1 for
each of several workers on one machine, and Ray to the CPUs it gives a worker (dlc's own local
Ray gives each of N workers 1/N of the CPUs: dlc/distributed/launch.py), so that N workers share
the cores instead of each taking them all.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from dlc.errors import UsageError

ROOT = Path("/sys/fs/cgroup")


def default_threads(env=None, root: Path = ROOT, membership: str | None = None) -> int:
    """OMP_NUM_THREADS (its first entry: OpenMP allows a list per nesting level), else the CPUs
    this process may use: its affinity capped by its cgroup quota, rounded up."""
    env = os.environ if env is None else env
    given = env.get("OMP_NUM_THREADS", "").strip()
    if given:
        first = given.split(",")[0].strip()
        if not first.isdigit() or int(first) < 1:
            raise UsageError(f"OMP_NUM_THREADS must be a positive whole number, got '{given}'")
        return int(first)
    return usable_cpus(root, membership)


def usable_cpus(root: Path = ROOT, membership: str | None = None) -> int:
    """The CPUs this process may use: its affinity capped by its cgroup quota, rounded up."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    quota = cgroup_quota(root, membership)
    return max(1, min(cpus or 1, math.ceil(quota))) if quota else (cpus or 1)


def cgroup_quota(root: Path = ROOT, membership: str | None = None) -> float | None:
    """The tightest CPU quota, in CPUs, over this process's cgroup and its ancestors (cgroup v2
    `cpu.max`: "QUOTA PERIOD" or "max ..."; v1 `cpu.cfs_quota_us` / `cpu.cfs_period_us`, -1 for
    none); None without one. `membership`: /proc/self/cgroup's text."""
    if membership is None:
        try:
            membership = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    quotas = []
    for line in membership.splitlines():
        _, controllers, path = (line.split(":", 2) + ["", ""])[:3]
        if controllers == "":  # v2, the unified hierarchy
            quotas += _walk(root, path, ("cpu.max",), _v2)
        elif "cpu" in controllers.split(","):
            quotas += _walk(root / controllers, path, ("cpu.cfs_quota_us", "cpu.cfs_period_us"),
                            _v1)
    return min(quotas, default=None)


def _walk(base: Path, path: str, files: tuple, parse) -> list[float]:
    """The quotas set in the cgroup at `path` under `base` and in its ancestors up to `base`."""
    found, own = [], base / path.strip("/")
    for folder in (own, *[p for p in own.parents if p.is_relative_to(base)]):
        try:
            quota = parse(*[(folder / f).read_text().split() for f in files])
        except (OSError, ValueError, IndexError):
            quota = None
        if quota:
            found.append(quota)
    return found


def _v2(cpu_max: list) -> float | None:
    return None if cpu_max[0] == "max" else int(cpu_max[0]) / int(cpu_max[1])


def _v1(quota: list, period: list) -> float | None:
    return int(quota[0]) / int(period[0]) if int(quota[0]) > 0 else None

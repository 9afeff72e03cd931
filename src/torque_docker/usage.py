"""Per-container usage and live limits: the per-process model's accounting and control.

Usage is read from each container's own cgroup (cgroup v1 as Docker 20.10 sets it up,
cgroup v2 where the host has it), the same numbers Docker's stats show, without the
second-long sampling of the stats API.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

from .errors import RequestError
from .resources import parse_size

CGROUP_ROOT = Path("/sys/fs/cgroup")

#: Shell one-liner run inside a container (through the job's alias) by the job starter.
INSIDE = ("c=/sys/fs/cgroup; "
          "u=$(cat $c/cpuacct/cpuacct.usage 2>/dev/null || awk '/^usage_usec/{print $2*1000}' $c/cpu.stat 2>/dev/null); "
          "m=$(cat $c/memory/memory.max_usage_in_bytes 2>/dev/null || cat $c/memory.peak 2>/dev/null); "
          "s=$(stat -c %Y /proc/1 2>/dev/null); echo \"${u:-0} ${m:-0} ${s:-0} $(date +%s)\"")


@dataclass(frozen=True)
class Usage:
    name: str
    cpu_seconds: float
    peak_bytes: int
    started: float
    ended: float


def parse_inside(name: str, line: str) -> Optional[Usage]:
    try:
        cpu_ns, peak, started, ended = (float(x) for x in line.split()[:4])
    except ValueError:
        return None
    return Usage(name, cpu_ns / 1e9, int(peak), started, ended)


def host_usage(pid: int, name: str, started: float) -> Optional[Usage]:
    """Usage of a running container from the host, via its init process's cgroups."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return None
    paths: Dict[str, str] = {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") or [""]:
            paths[controller] = path
    cpu = peak = 0.0
    try:
        if "cpuacct" in paths:
            cpu = int((CGROUP_ROOT / "cpuacct" / paths["cpuacct"].lstrip("/") / "cpuacct.usage").read_text()) / 1e9
            peak = int((CGROUP_ROOT / "memory" / paths["memory"].lstrip("/") / "memory.max_usage_in_bytes").read_text())
        elif "" in paths:
            base = CGROUP_ROOT / paths[""].lstrip("/")
            stat = dict(l.split() for l in (base / "cpu.stat").read_text().splitlines())
            cpu = int(stat.get("usage_usec", 0)) / 1e6
            peak_file = base / "memory.peak"
            peak = int(peak_file.read_text()) if peak_file.exists() else 0
    except (OSError, ValueError, KeyError):
        return None
    return Usage(name, cpu, int(peak), started, time.time())


def table(rows: Sequence[Usage], jobid: str) -> str:
    lines = [f"torque-docker: usage per container of job {jobid}",
             f"  {'container':<34} {'cpu s':>9} {'peak MiB':>9}  {'started':<8}  {'ended':<8}"]
    for row in rows:
        lines.append(f"  {row.name:<34} {row.cpu_seconds:>9.2f} {row.peak_bytes / 2**20:>9.1f}  "
                     f"{time.strftime('%H:%M:%S', time.localtime(row.started)):<8}  "
                     f"{time.strftime('%H:%M:%S', time.localtime(row.ended)):<8}")
    return "\n".join(lines) + "\n"


def limit_changes(cpus: Optional[float], memory: Optional[str], cpuset: Optional[str]) -> Dict[str, object]:
    """Docker update arguments for a live change; memory without extra swap (HPC nodes)."""
    changes: Dict[str, object] = {}
    if cpus is not None:
        if cpus <= 0:
            raise RequestError("--cpus must be positive", "e.g. --cpus 1.5")
        changes.update(cpu_period=100000, cpu_quota=int(cpus * 100000))
    if memory is not None:
        size = parse_size(memory)
        if size < 6 * 2**20:
            raise RequestError("--memory below 6 MiB cannot hold a container", "e.g. --memory 2gb")
        changes.update(mem_limit=size, memswap_limit=size)
    if cpuset is not None:
        changes.update(cpuset_cpus=cpuset)
    if not changes:
        raise RequestError("nothing to change", "give --cpus, --memory and/or --cpuset")
    return changes

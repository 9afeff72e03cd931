"""CPU and memory a job's containers get on this node.

Every container is limited to the cores the job owns here (docs/design.md, MPI trap 6: without a cpuset
several containers each bind their first rank to core 0). Torque's own job cpuset is
authoritative when Torque runs with cgroups; otherwise a node-local allocator hands out
cores no running job holds. Pure functions here; the allocation table lives in state.py.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import List, Mapping, Optional, Sequence

from .errors import RequestError

CPUSET_ROOTS = ("/sys/fs/cgroup/cpuset/torque", "/sys/fs/cgroup/torque")
_UNITS = {"b": 1, "kb": 1024, "mb": 1024 ** 2, "gb": 1024 ** 3, "tb": 1024 ** 4,
          "w": 8, "kw": 8 * 1024, "mw": 8 * 1024 ** 2, "gw": 8 * 1024 ** 3}


def parse_cpu_list(text: str) -> List[int]:
    """``0-3,8,10-11`` -> [0, 1, 2, 3, 8, 10, 11]."""
    cpus: List[int] = []
    for part in text.strip().split(","):
        if not part:
            continue
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


def format_cpu_list(cpus: Sequence[int]) -> str:
    return ",".join(str(c) for c in sorted(cpus))


def torque_cpuset(jobid: str, roots: Sequence[str] = CPUSET_ROOTS) -> Optional[List[int]]:
    """The job's cpus from Torque's cgroup (it exists, filled in, before the prologues run)."""
    for root in roots:
        for name in ("cpuset.cpus", "cpuset.cpus.effective"):
            path = Path(root) / jobid / name
            try:
                cpus = parse_cpu_list(path.read_text())
            except (OSError, ValueError):
                continue
            if cpus:
                return cpus
    return None


def node_cpus() -> List[int]:
    return sorted(os.sched_getaffinity(0))


def choose_cores(available: Sequence[int], holders: Mapping[int, Sequence[str]], count: int) -> List[int]:
    """Cores nobody holds first; only when the node is oversubscribed (more slots than free
    cores), the least used ones as well."""
    free = [c for c in available if not holders.get(c)]
    if len(free) >= count:
        return free[:count]
    busy = sorted((c for c in available if holders.get(c)), key=lambda c: (len(holders[c]), c))
    chosen = list(free)
    while len(chosen) < count and (busy or chosen):
        pool = busy or list(available)
        chosen.append(pool[(len(chosen) - len(free)) % len(pool)])
    return chosen


def parse_size(text: str) -> int:
    """Torque sizes (``4gb``, ``512mb``, ``100kb``, ``2048``) in bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([kmgt]?[bw])?\s*", text.lower())
    if not match:
        raise RequestError(f"cannot read the memory size {text!r}", "write it as Torque does, e.g. 4gb or 512mb")
    return int(match.group(1)) * _UNITS[match.group(2) or "b"]


#: Docker refuses a container memory limit below 6 MB ("Minimum memory limit allowed is
#: 6MB", daemon/daemon_unix.go linuxMinMemory).
DOCKER_MIN_MEMORY = 6 * 1024 ** 2


def memory_limit(resources: Mapping[str, str], model: str, slots_here: int, num_nodes: int) -> Optional[int]:
    """Bytes for one container: pmem per slot, else mem spread over the job's nodes.

    A limit Docker would refuse is the request's mistake, refused here on every node
    before anything starts (a sister must never fail for it: that takes its node down)."""
    if resources.get("pmem"):
        per_slot = parse_size(resources["pmem"])
        limit = per_slot if model == "process" else per_slot * max(slots_here, 1)
        asked = f"pmem={resources['pmem']}"
    elif resources.get("mem"):
        per_node = parse_size(resources["mem"]) // max(num_nodes, 1)
        limit = per_node // max(slots_here, 1) if model == "process" else per_node
        asked = f"mem={resources['mem']}"
    else:
        return None
    if limit < DOCKER_MIN_MEMORY:
        raise RequestError(f"{asked} gives each container {limit} bytes of memory; Docker needs at least 6 MiB",
                           "ask for pmem=6mb or more per slot (mem= is shared by all the job's containers)")
    return limit

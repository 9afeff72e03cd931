"""The node's devices every container gets: ``[devices] paths``.

An HPC job needs the node's interconnect (``/dev/infiniband``: verbs, rdma_cm) or an
accelerator's control nodes (``/dev/kfd``, ``/dev/dri``) inside its containers, exactly as
on the host. Docker passes device NODES, not directories, so a directory in the list stands
for the device nodes below it, found when the job starts (a driver reload may renumber them).

The form of each entry is checked when the config is read (the admin's error); that each
path exists and is a character or block device (or a directory holding some) is checked
when a job starts, as a fault of the node (its driver or hardware is missing: the job is
requeued elsewhere), and reported by ``torque-docker check``.
"""
from __future__ import annotations

import os
import stat
from typing import List, Sequence, Tuple

from .errors import NodeFault

Device = Tuple[str, str]      # (path on the host, path in the container)

#: Container paths that are RDMA devices: they need memlock unlimited to register memory.
RDMA_PATHS = ("/dev/infiniband", "/dev/rdma_cm")
MAX_NODES = 4096              # a directory with more device nodes than this is not a fabric


def parse_entry(word: str) -> Device:
    """``HOST[:CONTAINER]``: absolute paths, the container's under /dev (the default: HOST)."""
    host, sep, inside = word.partition(":")
    inside = inside if sep else host
    for what, path in (("host", host), ("container", inside)):
        if not path.startswith("/") or ".." in path.split("/"):
            raise ValueError(f"{word!r}: the {what} path must be absolute, without '..'")
    inside = "/" + os.path.normpath(inside).lstrip("/")
    if not inside.startswith("/dev/"):
        raise ValueError(f"{word!r}: the container path must lie under /dev")
    return "/" + os.path.normpath(host).lstrip("/"), inside


def parse(value: str) -> Tuple[Device, ...]:
    out: List[Device] = []
    for word in value.replace(",", " ").split():
        entry = parse_entry(word)
        if any(entry[1] == other[1] for other in out):
            raise ValueError(f"{entry[1]} is given twice")
        out.append(entry)
    return tuple(out)


def _is_device(mode: int) -> bool:
    return stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def resolve(entries: Sequence[Device]) -> Tuple[Device, ...]:
    """Every device node the entries stand for, as (host, container) pairs.

    Raises NodeFault naming the entry when a path is missing, is not a device, or is a
    directory without device nodes: the site said this node has it, and it does not."""
    fix = "load the device's driver on this node, or correct [devices] paths in the config"
    out: List[Device] = []
    for host, inside in entries:
        try:
            mode = os.stat(host).st_mode
        except OSError as exc:
            raise NodeFault(f"device {host} ([devices] paths) is missing on this node ({exc.strerror})", fix) from None
        if _is_device(mode):
            out.append((host, inside))
            continue
        if not stat.S_ISDIR(mode):
            raise NodeFault(f"{host} ([devices] paths) is neither a character or block device nor a directory", fix)
        found: List[Device] = []
        for root, dirs, files in os.walk(host):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(root, name)
                try:
                    if _is_device(os.stat(path).st_mode):
                        found.append((path, os.path.join(inside, os.path.relpath(path, host))))
                except OSError:
                    continue
            if len(found) > MAX_NODES:
                raise NodeFault(f"{host} ([devices] paths) holds more than {MAX_NODES} device nodes", fix)
        if not found:
            raise NodeFault(f"directory {host} ([devices] paths) holds no device nodes", fix)
        out.extend(found)
    return tuple(out)


def is_rdma(entries: Sequence[Device]) -> bool:
    """Does the list pass an RDMA device (by its path in the container)?"""
    return any(inside == p or inside.startswith(p + "/") for _, inside in entries for p in RDMA_PATHS)


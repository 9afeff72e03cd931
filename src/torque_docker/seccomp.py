"""The seccomp profile job containers get, and whether Open MPI's single-copy path (CMA) works in it.

Docker's default seccomp profile refuses ``process_vm_readv`` and ``process_vm_writev``
unless the container has CAP_SYS_PTRACE (which job containers never get). Open MPI's
shared-memory transport (btl vader) uses exactly these two calls ("CMA") to copy a large
message straight from one rank's memory into another's; without them it copies every
message twice through a shared buffer. The package's profile is Docker's default plus
one rule that allows those two calls, nothing else. It adds no reach: the kernel lets a
process read or write another's memory this way only where it could ``ptrace`` it (same
uid, target dumpable, Yama's ptrace_scope), and Docker's default profile already allows
``ptrace`` itself on kernels from 4.8 on. A container sees only its own PID namespace,
whose processes all run as the job's user.

Docker wants the profile's text, not its path (``--security-opt seccomp=FILE`` is read by
the CLI), so the prologue reads the file the site names; root must not read a file a user
could change, so it has to be root's and not writable by others.

Regenerate the shipped profile from the Docker version a site runs (its source tree has
``profiles/seccomp/default.json``)::

    python3 -m torque_docker.seccomp /path/to/default.json > /etc/torque-docker/seccomp-cma.json
"""
from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from .errors import ConfigError

CMA_CALLS = ("process_vm_readv", "process_vm_writev")
CMA_COMMENT = ("torque-docker: Open MPI's single-copy (CMA) transfers between a job's ranks; "
               "the kernel allows them only where ptrace is allowed")
YAMA = "/proc/sys/kernel/yama/ptrace_scope"


def cma_rule() -> Dict[str, Any]:
    return {"names": list(CMA_CALLS), "action": "SCMP_ACT_ALLOW", "args": [], "comment": CMA_COMMENT,
            "includes": {}, "excludes": {}}


def add_cma(profile: Dict[str, Any]) -> Dict[str, Any]:
    """Docker's profile plus the CMA rule (idempotent: an existing rule is replaced, not doubled)."""
    out = dict(profile)
    out["syscalls"] = [r for r in profile.get("syscalls", []) if r.get("comment") != CMA_COMMENT] + [cma_rule()]
    return out


def _unconditional_allows(profile: Dict[str, Any]) -> List[str]:
    names: List[str] = []
    for rule in profile.get("syscalls") or []:
        if rule.get("action") == "SCMP_ACT_ALLOW" and not rule.get("args") and not (rule.get("includes") or {}).get("caps"):
            names += rule.get("names") or ([rule["name"]] if rule.get("name") else [])
    return names


def allows_cma(profile: Dict[str, Any]) -> bool:
    """True if a container without capabilities may call both CMA system calls."""
    allowed = _unconditional_allows(profile)
    return all(call in allowed for call in CMA_CALLS)


def problem(profile: Any) -> Optional[str]:
    """Why a profile must not be used, or None. Allowing by default is being unconfined."""
    if not isinstance(profile, dict) or not isinstance(profile.get("syscalls"), list):
        return "is not a Docker seccomp profile (no 'syscalls' list)"
    action = str(profile.get("defaultAction", ""))
    if not action.startswith(("SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_TRAP")):
        return f"has defaultAction {action or 'missing'}: a profile that allows by default is no confinement"
    return None


def load(path: str) -> str:
    """The profile's text, checked: root's, not writable by others, a real profile."""
    def refuse(why: str) -> ConfigError:
        return ConfigError(f"[docker] seccomp_profile {path} {why}",
                           "point it at a root-owned profile such as the shipped /etc/torque-docker/seccomp-cma.json, "
                           "or leave it empty for Docker's default")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise refuse(f"cannot be read ({exc.strerror})") from None
    with os.fdopen(fd, "r") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
            raise refuse("must be a regular file owned by root and writable by root only")
        text = handle.read()
    try:
        profile = json.loads(text)
    except ValueError as exc:
        raise refuse(f"is not JSON ({exc})") from None
    why = problem(profile)
    if why:
        raise refuse(why)
    return text


_loaded: Dict[str, str] = {}


def profile_text(cfg: Any) -> str:
    """The text of the site's profile ("" for Docker's default), read once per hook."""
    path = cfg.docker_seccomp_profile
    if path and path not in _loaded:
        _loaded[path] = load(path)
    return _loaded.get(path, "") if path else ""


def yama_scope() -> Optional[int]:
    """Yama's ptrace_scope, None without Yama. From 2 on, no process may read another's memory."""
    try:
        return int(Path(YAMA).read_text().strip() or "0")
    except (OSError, ValueError):
        return None


def cma_works(profile_text: str) -> bool:
    """Can ranks in a container with this profile use CMA? (Open MPI itself asks Yama for scope 1.)"""
    scope = yama_scope()
    return bool(profile_text) and allows_cma(json.loads(profile_text)) and (scope is None or scope <= 1)


def main(argv: List[str]) -> int:
    if len(argv) != 1:
        print("usage: python3 -m torque_docker.seccomp DOCKER_DEFAULT_JSON > seccomp-cma.json", file=sys.stderr)
        return 2
    profile = json.loads(Path(argv[0]).read_text())
    why = problem(profile)
    if why:
        print(f"torque-docker: {argv[0]} {why}", file=sys.stderr)
        return 1
    sys.stdout.write(json.dumps(add_cma(profile), indent="\t") + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

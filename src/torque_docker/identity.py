"""The job user as the node knows it, and what that user may reach on the host.

Containers run with the user's uid, gid and supplementary groups, never root. A bind
mount bypasses the permission checks of the directories above its source, so before a
host path is mounted we check, as the user, that the user could reach it anyway.
"""
from __future__ import annotations

import grp
import os
import pwd
import subprocess
import sys
from dataclasses import dataclass
from typing import Sequence, Tuple

from .errors import NodeFault, PolicyError


@dataclass(frozen=True)
class UserInfo:
    name: str
    uid: int
    gid: int
    home: str
    shell: str
    gecos: str
    groups: Tuple[Tuple[str, int], ...]   # (name, gid), primary first

    @property
    def gids(self) -> Tuple[int, ...]:
        return tuple(g for _, g in self.groups)


def lookup(user: str, group: str = "") -> UserInfo:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise NodeFault(f"user {user!r} is not known on this node",
                        "the node's passwd (LDAP/SSSD) must know every job user") from None
    if entry.pw_uid == 0:
        raise PolicyError("container jobs do not run as root", "submit the job as an ordinary user")
    gid = entry.pw_gid
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            pass
    gids = [gid] + [g for g in os.getgrouplist(user, entry.pw_gid) if g != gid]
    groups = []
    for g in gids:
        try:
            groups.append((grp.getgrgid(g).gr_name, g))
        except KeyError:
            groups.append((f"g{g}", g))
    return UserInfo(user, entry.pw_uid, gid, entry.pw_dir, entry.pw_shell or "/bin/sh",
                    entry.pw_gecos, tuple(groups))


_CHECK = "import os,sys\nfor p in sys.argv[1:]:\n    print(int(os.path.isdir(p) and os.access(p, os.R_OK | os.X_OK)))\n"


def reachable_dirs(user: UserInfo, paths: Sequence[str]) -> Tuple[bool, ...]:
    """Which paths the user can open as directories on the host, checked as the user."""
    if not paths:
        return ()
    try:
        result = subprocess.run(
            [sys.executable, "-I", "-c", _CHECK, *paths], capture_output=True, text=True, timeout=20,
            user=user.uid, group=user.gid, extra_groups=list(user.gids), cwd="/", env={"PATH": "/bin:/usr/bin"},
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise NodeFault(f"cannot check paths as {user.name}: {exc}") from None
    answers = result.stdout.split()
    if result.returncode != 0 or len(answers) != len(paths):
        raise NodeFault(f"cannot check paths as {user.name}: {result.stderr.strip()[:200]}")
    return tuple(a == "1" for a in answers)

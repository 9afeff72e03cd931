"""The job user as the node knows it, what that user may reach on the host, and the ids
a container's processes really got.

Containers run with the user's uid, gid and supplementary groups, never root. A bind
mount bypasses the permission checks of the directories above its source, so before a
host path is mounted we check, as the user, that the user could reach it anyway (and
that it is the very object root pinned, see hostpath.py).

Docker and runc look the gids up by NAME in an /etc/group first (the image's, then the
container's), so what a container gets is not simply what was asked for: after start,
every process of it is read from the host's /proc and must have exactly the user's ids.
"""
from __future__ import annotations

import grp
import os
import pwd
import subprocess
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .errors import ContainerFault, NodeFault, PolicyError
from .hostpath import Pinned


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


#: Run as the user. Each argument is KIND:DEV:INO:PATH; KIND is dir or file, DEV:INO (may be
#: empty) the object root pinned. A directory must open for reading and allow search
#: (fchdir), a file must be a regular file open for reading; and with DEV:INO given, what the
#: user reaches at PATH must be that very object (a path swapped meanwhile is refused).
_CHECK = """import os,sys,stat
for a in sys.argv[1:]:
    kind, dev, ino, p = a.split(':', 3)
    try:
        if kind == 'file':
            fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_NOCTTY)
        else:
            fd = os.open(p, os.O_RDONLY | os.O_DIRECTORY)
            os.fchdir(fd)
        st = os.fstat(fd)
        os.close(fd)
        ok = (stat.S_ISREG(st.st_mode) if kind == 'file' else True) and (not dev or (str(st.st_dev), str(st.st_ino)) == (dev, ino))
    except OSError:
        ok = False
    print(int(ok))
"""


def reachable_dirs(user: UserInfo, paths: Sequence["str | Pinned"]) -> Tuple[bool, ...]:
    """Which paths the user can open on the host, checked as the user: directories (read and
    search), or for pinned files, regular files they can read. For a pinned path, what the
    user reaches there must be the object root holds open (see hostpath.py)."""
    if not paths:
        return ()
    args = []
    for item in paths:
        if isinstance(item, Pinned):
            args.append(f"{item.kind}:{item.dev}:{item.ino}:{item.path}")
        else:
            args.append(f"dir:::{item}")
    try:
        # -S: the check needs nothing of site-packages, and the site module costs every prologue ~20 ms.
        result = subprocess.run(
            [sys.executable, "-I", "-S", "-c", _CHECK, *args], capture_output=True, text=True, timeout=20,
            user=user.uid, group=user.gid, extra_groups=list(user.gids), cwd="/", env={"PATH": "/bin:/usr/bin"},
        )
    except (OSError, subprocess.SubprocessError) as exc:
        # Run as the user: the user's own limits (processes, memory) can make it fail.
        raise ContainerFault(f"cannot check paths as {user.name}: {exc}") from None
    answers = result.stdout.split()
    if result.returncode != 0 or len(answers) != len(paths):
        raise ContainerFault(f"cannot check paths as {user.name}: {result.stderr.strip()[:200]}")
    return tuple(a == "1" for a in answers)


# --------------------------------------------------------------------------- after start
def _status_fields(text: str) -> Dict[str, List[int]]:
    fields: Dict[str, List[int]] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep and name in ("Uid", "Gid", "Groups"):
            fields[name] = [int(v) for v in value.split()]
    return fields


def ids_problem(status_text: str, user: UserInfo) -> Optional[str]:
    """Why a process with this /proc/PID/status does not run as exactly the job's user
    (all four uids, all four gids, and the supplementary groups the host gives the user);
    None when it does."""
    fields = _status_fields(status_text)
    if set(fields) != {"Uid", "Gid", "Groups"}:
        return "its ids cannot be read"
    if fields["Uid"] != [user.uid] * 4:
        return f"uids {' '.join(map(str, fields['Uid']))}, not {user.uid}"
    if fields["Gid"] != [user.gid] * 4:
        return f"gids {' '.join(map(str, fields['Gid']))}, not {user.gid}"
    if set(fields["Groups"]) != set(user.gids):
        return (f"groups {' '.join(map(str, sorted(set(fields['Groups']))))}, "
                f"not {' '.join(map(str, sorted(set(user.gids))))}")
    return None


def _read_proc(pid: int, name: str) -> str:
    """A file of /proc/PID, opened below a descriptor of that process's directory without
    following links (procfs content is the kernel's; nothing the user controls is followed)."""
    dir_fd = os.open(f"/proc/{int(pid)}", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        with os.fdopen(fd, "r") as handle:
            return handle.read(1 << 16)
    finally:
        os.close(dir_fd)


def process_tree(pid: int, limit: int = 4096) -> List[int]:
    """pid and its descendants now (through /proc/PID/task/TID/children)."""
    seen: List[int] = []
    todo = [int(pid)]
    while todo and len(seen) < limit:
        current = todo.pop()
        if current in seen:
            continue
        seen.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            if not tid.isdigit():
                continue
            try:
                children = _read_proc(current, f"task/{tid}/children")
            except OSError:
                continue
            todo += [int(c) for c in children.split() if c.isdigit()]
    return seen


def container_ids_problem(pid: int, user: UserInfo) -> Optional[str]:
    """Check every process of a container, from its init (``pid``, the host pid Docker
    reports) down. The caller confirms afterwards that the container still runs with the
    same init pid, so the pid was not reused in between."""
    for process in process_tree(pid):
        try:
            text = _read_proc(process, "status")
        except (FileNotFoundError, ProcessLookupError):
            continue                      # it exited meanwhile (an exiting task's files answer ESRCH)
        except OSError as exc:
            return f"process {process} cannot be read ({exc.strerror})"
        problem = ids_problem(text, user)
        if problem:
            name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Name:")), "?")
            return f"process {process} ({name}) has {problem}"
    return None

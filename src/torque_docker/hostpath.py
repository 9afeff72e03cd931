"""Host paths that root hands to Docker, pinned so that what Docker mounts is what was checked.

A path is only a name. Between the prologue's check of a user's directory (``qsub -d``,
``mount=``, a tarball) and the moment runc mounts it, whoever owns a directory on the way
can swap it for a symlink, to ``/run`` say, where Docker's socket lives. So every such
path is opened once, one component at a time and never following a symlink
(``O_PATH | O_NOFOLLOW``), and everything after that goes through the descriptor:

- the checks (policy, and "can the user reach this very object": see identity.py) are
  made on what the descriptor holds;
- a directory is bind-mounted FROM the descriptor (``mount(/proc/self/fd/N, ...)``: the
  kernel mounts the object the descriptor refers to, not a name) onto a root-owned
  staging point ``<state_dir>/mnt/<job>/<n>``, and Docker is given the staging point.
  Only root can change what is mounted there;
- a tarball is read from the descriptor.

The same module mounts the per-job tmpfs that holds the job's files, and takes every
mount down again before anything removes a directory (a recursive delete that crossed
into a user's bind-mounted home would delete the user's files).
"""
from __future__ import annotations

import ctypes
import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

from .errors import ContainerFault, NodeFault, RequestError

MS_NOSUID, MS_NODEV, MS_BIND, MS_REC = 0x2, 0x4, 0x1000, 0x4000
MNT_DETACH, UMOUNT_NOFOLLOW = 0x2, 0x8

_libc = None


def _c():
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
        _libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return _libc


class PathChanged(RequestError):
    """A path the user named changed while it was being checked: their doing, never a node fault."""


@dataclass(eq=False)
class Pinned:
    """An open descriptor of one host object, and the path it was found at."""

    path: str
    fd: int
    dev: int
    ino: int
    kind: str                 # "dir" (an O_PATH descriptor) or "file" (open for reading)
    closed: bool = field(default=False, repr=False)

    @property
    def proc_path(self) -> str:
        """A name for the object itself, valid in this process only."""
        return f"/proc/self/fd/{self.fd}"

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)

    def __del__(self) -> None:      # a safety net; callers close what they pin
        try:
            self.close()
        except OSError:
            pass


def pin(path: str, kind: str = "dir") -> Pinned:
    """Open ``path`` (absolute, symlinks already resolved by the caller) without following
    any symlink on the way; a directory, or for ``kind="file"`` a regular file opened for
    reading (never a FIFO or device: it is looked at through O_PATH before it is opened).

    Raises PathChanged when a component is (now) a symlink or not a directory, or when the
    object was moved while we walked to it: the caller resolved the path a moment ago, so
    either the user is racing us or they gave a path that is not what it seems.
    """
    if not path.startswith("/"):
        raise PathChanged(f"{path!r} is not an absolute path", "give an absolute path")
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise PathChanged(f"{path} contains '.' or '..'", "give a plain absolute path")
    fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
            if not (last and kind == "file"):
                flags |= os.O_DIRECTORY
            try:
                next_fd = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    where = "/" + "/".join(parts[:i + 1])
                    raise PathChanged(f"{where} is a symlink or not a directory now (it was a moment ago)",
                                      "do not change the paths of a job while it starts") from None
                raise
            os.close(fd)
            fd = next_fd
        info = os.fstat(fd)
        if kind == "file":
            if not stat.S_ISREG(info.st_mode):
                raise PathChanged(f"{path} is not a regular file", "give a file made by 'docker save'")
            opened = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
            os.close(fd)
            fd = opened
        here = os.readlink(f"/proc/self/fd/{fd}")
        if here != "/" + "/".join(parts):
            raise PathChanged(f"{path} moved to {here} while it was being checked",
                              "do not change the paths of a job while it starts")
        return Pinned(path, fd, info.st_dev, info.st_ino, kind)
    except BaseException:
        os.close(fd)
        raise


def close_all(pins: Sequence[Optional[Pinned]]) -> None:
    for pinned in pins:
        if pinned is not None:
            pinned.close()


# --------------------------------------------------------------------------- mounts
def _mount(source: Optional[str], target: str, fstype: Optional[str], flags: int, data: Optional[str]) -> None:
    enc = (lambda s: None if s is None else os.fsencode(s))
    if _c().mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        code = ctypes.get_errno()
        raise NodeFault(f"cannot mount {source or fstype} on {target}: {os.strerror(code)}",
                        "the hooks must run as root with CAP_SYS_ADMIN (pbs_mom runs them so)")


def bind_pinned(pinned: Pinned, target: Path) -> None:
    """Bind-mount the pinned directory (with what is mounted below it, as Docker would) on target.

    The source is a user's directory, and what the user put there (or mounted there) can make
    the mount fail: never a proven fault of the node (a sister's would take the node down)."""
    try:
        _mount(pinned.proc_path, str(target), None, MS_BIND | MS_REC, None)
    except NodeFault as exc:
        raise ContainerFault(exc.message, exc.fix) from None


def mount_tmpfs(target: Path, size: str, mode: int) -> None:
    """A root-owned tmpfs of at most ``size`` on target, without setuid or devices. Not
    noexec: the job's script on it is run as a command, as pbs_mom runs it."""
    _mount("tmpfs", str(target), "tmpfs", MS_NOSUID | MS_NODEV, f"size={size},mode={mode:o},uid=0,gid=0")


def unmount(path: Path, limit: int = 16) -> int:
    """Take every mount stacked on ``path`` off (lazily: busy ones go when released).
    Returns how many; 0 when nothing was mounted there. Never follows a symlink."""
    done = 0
    for _ in range(limit):
        if _c().umount2(os.fsencode(str(path)), MNT_DETACH | UMOUNT_NOFOLLOW) != 0:
            code = ctypes.get_errno()
            if code in (errno.EINVAL, errno.ENOENT):
                return done            # not a mount point (any more)
            raise NodeFault(f"cannot unmount {path}: {os.strerror(code)}")
        done += 1
    return done


def _unescape(field_: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal (\\040 ...)."""
    out, i = [], 0
    while i < len(field_):
        if field_[i] == "\\" and len(field_[i + 1:i + 4]) == 3 and field_[i + 1:i + 4].isdigit():
            out.append(chr(int(field_[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field_[i])
            i += 1
    return "".join(out)


def mounts_under(path: Path) -> List[str]:
    """Mount points at or below path in this mount namespace."""
    root = str(path).rstrip("/")
    found = []
    with open("/proc/self/mountinfo") as handle:
        for line in handle:
            fields = line.split()
            if len(fields) > 4:
                point = _unescape(fields[4])
                if point == root or point.startswith(root + "/"):
                    found.append(point)
    return found


def stage(pins: Sequence[Pinned], stage_dir: Path) -> List[str]:
    """Bind every pinned directory on its own root-owned staging point; their paths, in order."""
    stage_dir.mkdir(mode=0o700, parents=False, exist_ok=True)
    os.chmod(stage_dir, 0o700)
    points = []
    for n, pinned in enumerate(pins):
        point = stage_dir / str(n)
        if point.is_symlink():
            raise NodeFault(f"{point} is a symlink", "remove it; the state directory must not contain links")
        point.mkdir(mode=0o700, exist_ok=True)
        unmount(point)
        bind_pinned(pinned, point)
        points.append(str(point))
    return points


def unstage(stage_dir: Path) -> None:
    """Take the staging mounts of a job down and remove their (then empty) points. Only
    rmdir, never a recursive delete: what is mounted there is a user's data."""
    if not stage_dir.exists():
        return
    for point in sorted(stage_dir.iterdir()):
        unmount(point)
        if point.is_dir() and not point.is_symlink():
            point.rmdir()
        else:
            point.unlink()
    stage_dir.rmdir()

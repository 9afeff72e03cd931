"""Node-local state: per-job directories, port reservations, the original nodefile.

It lives in the configured state_dir, never in ``$PBS_HOME/aux`` (pbs_mom deletes
unknown files there at start-up). Port allocation is serialised with a file lock so
concurrent jobs on one node never pick the same port.

Locks: ``flock`` needs nothing but an open descriptor, and read access is enough to get
one, so a lock file any user can open is a lock any user can hold (and stall every
prologue on the node). Every lock (ports, cores, attempts, images) is a 0600 file in
``<state_dir>/locks``, a root-only 0700 directory, opened without following links.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import stat
import time
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from filelock import Timeout

from .errors import ContainerFault, NodeFault
from .records import JobRecord
from .torque import safe_jobid

LOCK_TIMEOUT = 30.0
LOCK_DIR = "locks"


class LockTimeout(Timeout):
    """The lock stayed held past its bound (a filelock Timeout, which callers already catch)."""


def open_lock_file(path: "str | Path") -> int:
    """A lock file's descriptor: created 0600, opened without following links or blocking;
    an existing file of another owner or a wider mode (an older version's, made under umask
    022) is made root's 0600 first, so nobody else can open it any more."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NodeFault(f"the lock {path} is not a regular file", "remove it")
        if info.st_uid != os.geteuid() or info.st_mode & 0o077:
            os.fchown(fd, os.geteuid(), os.getegid())
            os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def flock_within(fd: int, operation: int, timeout: float, pause: float = 0.01, max_pause: float = 0.2) -> bool:
    """``flock(fd, operation)`` (LOCK_EX or LOCK_SH), retried until ``timeout`` seconds have
    passed, the pause doubling up to ``max_pause``: False when it stayed held. Never blocks
    in the kernel, so a hook's bound holds whatever holds the lock."""
    deadline = time.monotonic() + max(timeout, 0)
    while True:
        try:
            fcntl.flock(fd, operation | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(pause)
            pause = min(pause * 2, max_pause)


class NodeLock:
    """An exclusive ``flock`` on a root-only file, bounded in time; re-entrant in one object.

    The file is created 0600 and opened with O_NOFOLLOW; an existing file of the wrong
    owner or mode (made by an older version under umask 022) is set to root 0600 before
    it is used, so no one else can open it any more.
    """

    def __init__(self, path: "str | Path", timeout: float = LOCK_TIMEOUT) -> None:
        self.lock_file = str(path)
        self.timeout = timeout
        self._fd: Optional[int] = None
        self._depth = 0

    @property
    def is_locked(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "NodeLock":
        if self._fd is not None:
            self._depth += 1
            return self
        fd = open_lock_file(self.lock_file)
        try:
            if not flock_within(fd, fcntl.LOCK_EX, self.timeout):
                raise LockTimeout(self.lock_file)
        except BaseException:
            os.close(fd)
            raise
        self._fd, self._depth = fd, 1
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        self._depth -= 1
        if self._depth > 0:
            return
        fd, self._fd = self._fd, None
        try:
            fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def __enter__(self) -> "NodeLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _refuse_foreign_dir(directory: Path) -> None:
    """Root writes only where nobody else can: a directory someone else owns or may write
    into could hold a planted FIFO, symlink or hard link by the next name we use."""
    info = os.stat(directory)
    if info.st_uid not in (0, os.geteuid()) or info.st_mode & 0o022:
        raise NodeFault(f"refusing to write into {directory}: others than root can write there",
                        "the state, SSH and job directories must be root's, mode 0755 or stricter")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_file(path: Path, data: "str | bytes", mode: int, uid: int = -1, gid: int = -1) -> None:
    """Atomic write with the final owner and mode set before the file appears.

    The temporary file has an unpredictable name and is created exclusively, without
    following links and without blocking, in a directory only root can write to."""
    path = Path(path)
    _refuse_foreign_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(6).hex()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.fchmod(fd, mode)
            if uid != -1 or gid != -1:
                os.fchown(fd, uid, gid)
            _write_all(fd, data.encode() if isinstance(data, str) else data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def ensure_dir(path: Path, mode: int, uid: int = -1, gid: int = -1) -> Path:
    """mkdir -p with the mode really set: hooks run under umask 077 (docs/torque-facts.md), which
    would silently make a 0755 directory 0700 and lock the job user out."""
    path = Path(path)
    if path.is_symlink():
        raise NodeFault(f"{path} is a symlink", "remove it; the state directory must not contain links")
    path.mkdir(parents=True, exist_ok=True)
    if uid != -1 or gid != -1:
        os.chown(path, uid, gid)
    os.chmod(path, mode)
    return path


def write_in_place(path: Path, data: str) -> None:
    """Rewrite without changing the inode (bind mounts and open handles see the new text).

    Opened without following a link and without blocking (a FIFO without a reader fails at
    once instead of hanging the hook), and written only when it is a regular file."""
    fd = os.open(path, os.O_WRONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NodeFault(f"{path} is not a regular file", "remove it; torque-docker writes only regular files")
        os.ftruncate(fd, 0)
        _write_all(fd, data.encode())
    finally:
        os.close(fd)


class NodeState:
    def __init__(self, state_dir: str) -> None:
        self.root = Path(state_dir)

    def ensure(self) -> None:
        for sub in ("", "jobs"):
            ensure_dir(self.root / sub, 0o755)
        self.lock_dir()

    def lock_dir(self) -> Path:
        """Root-only: nobody else may open (so flock) a lock file (see the module docstring)."""
        return ensure_dir(self.root / LOCK_DIR, 0o700, os.geteuid(), os.getegid())

    # ---- per-job directory ------------------------------------------------
    def job_dir(self, jobid: str) -> Path:
        return self.root / "jobs" / safe_jobid(jobid)

    def ctr_dir(self, jobid: str) -> Path:
        """Owned by the job user, 0700: keys and the container's configs (mounted at /run/torque-docker)."""
        return self.job_dir(jobid) / "ctr"

    def job_ids(self) -> List[str]:
        out = []
        for path in sorted((self.root / "jobs").glob("*/job.json")):
            try:
                jobid = JobRecord.from_json(path.read_text()).jobid
            except (OSError, ValueError):
                continue
            if jobid:
                out.append(jobid)
        return out

    def load_job(self, jobid: str) -> JobRecord:
        """The job's record on this node; an empty one (nothing made) when there is none or it is unreadable."""
        try:
            return JobRecord.from_json((self.job_dir(jobid) / "job.json").read_text(), jobid)
        except (OSError, ValueError):
            return JobRecord(jobid)

    def save_job(self, record: JobRecord) -> None:
        write_file(self.job_dir(record.jobid) / "job.json", record.to_json(), 0o600)

    # ---- attempts (requeue loops) -----------------------------------------
    def count_attempt(self, jobid: str) -> int:
        with self._lock():
            path = self.root / "attempts.json"
            table = _read_json(path)
            table[jobid] = table.get(jobid, 0) + 1
            write_file(path, json.dumps(table), 0o600)
            return table[jobid]

    def forget_attempts(self, jobid: str) -> None:
        with self._lock():
            path = self.root / "attempts.json"
            table = _read_json(path)
            if table.pop(jobid, None) is not None:
                write_file(path, json.dumps(table), 0o600)

    # ---- cores ------------------------------------------------------------
    def allocate_cores(self, jobid: str, count: int, available: Sequence[int]) -> List[int]:
        """Cores for jobid on this node, none held by another running job while any are free."""
        from .resources import choose_cores
        with self._lock():
            path = self.root / "cores.json"
            table = _read_json(path)
            holders: Dict[int, List[str]] = {}
            for core, jobs in table.items():
                holders[int(core)] = [j for j in jobs if j != jobid]
            chosen = choose_cores(available, holders, count)
            for cpu in chosen:
                holders.setdefault(cpu, []).append(jobid)
            write_file(path, json.dumps({str(c): j for c, j in sorted(holders.items()) if j}), 0o600)
            return chosen

    def release_cores(self, jobid: str) -> None:
        with self._lock():
            path = self.root / "cores.json"
            table = _read_json(path)
            kept = {c: [j for j in jobs if j != jobid] for c, jobs in table.items()}
            kept = {c: j for c, j in kept.items() if j}
            if kept != table:
                write_file(path, json.dumps(kept), 0o600)

    # ---- images -----------------------------------------------------------
    def image_lock(self, key: str, timeout: float) -> NodeLock:
        """The per-node lock on one image: concurrent pulls or loads of it wait, not repeat."""
        import hashlib
        name = hashlib.sha256(key.encode()).hexdigest()[:20]
        return NodeLock(self.lock_dir() / f"image-{name}.lock", timeout=timeout)

    # ---- ports ------------------------------------------------------------
    def _lock(self) -> NodeLock:
        """The node lock: ports, cores and attempts tables."""
        return NodeLock(self.lock_dir() / "node.lock", timeout=LOCK_TIMEOUT)

    def reserve_port(self, jobid: str, address: str, candidates: Sequence[int], skip: Iterable[int] = ()) -> int:
        """Take the first candidate no job holds and nothing listens on; record it for jobid."""
        skip = set(skip)
        try:
            with self._lock():
                path = self.root / "ports.json"
                table = _read_json(path)
                for port in candidates:
                    key = f"{address}:{port}"
                    if port in skip or key in table or not port_is_free(address, port):
                        continue
                    table[key] = {"job": jobid, "time": time.time()}
                    write_file(path, json.dumps(table, indent=0, sort_keys=True), 0o600)
                    return port
        except LockTimeout:
            raise NodeFault(f"the node lock {self.root / LOCK_DIR / 'node.lock'} is held for over {LOCK_TIMEOUT:.0f} s",
                            "look for a hung torque-docker process on this node") from None
        # Any user's processes can hold ports in the range: not a proven fault of the node.
        raise ContainerFault(f"none of the job's {len(candidates)} candidate ports on {address} is free",
                             "widen [network] port_range or port_candidates, or look for what holds the ports")

    def release_ports(self, jobid: str, ports: Optional[Iterable[str]] = None) -> int:
        """Drop the job's reservations (all of them, or the given ``addr:port`` keys)."""
        with self._lock():
            path = self.root / "ports.json"
            table = _read_json(path)
            wanted = set(ports) if ports is not None else None
            keep = {k: v for k, v in table.items()
                    if v.get("job") != jobid or (wanted is not None and k not in wanted)}
            removed = len(table) - len(keep)
            if removed:
                write_file(path, json.dumps(keep, indent=0, sort_keys=True), 0o600)
            return removed

    def reserved_ports(self) -> Dict[str, Dict[str, Any]]:
        return _read_json(self.root / "ports.json")


def _read_json(path: Path) -> Dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except ValueError:
        return {}


def port_is_free(address: str, port: int) -> bool:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        return True
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES):
            return False
        raise NodeFault(f"cannot bind {address}:{port}: {exc}",
                        "is [network] listen_address an address of this node?") from None
    finally:
        sock.close()

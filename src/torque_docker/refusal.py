"""Telling users why their container job was refused, where they will look.

On a real Torque 6.1.3 an MS prologue exit 1 aborts the job and its .o/.e are NOT
delivered (docs/torque-facts.md), so a message printed by the prologue is invisible. Two ways
out, both used:

1. With our job starter installed, the prologue records the reason and exits 0; the job
   "starts", the starter prints the reason to the job's stderr and exits 1 without running
   the script. The user gets the .e (and exit_status 1) as for any failed job.
2. Always, the reason is also written, as the job user, to
   ``$PBS_O_WORKDIR/torque-docker-<jobid>.refused`` (home when the working directory is
   unusable). Without the starter the prologue then exits 1 (abort, never requeue).

A refused job's script never runs, on the host or anywhere.
"""
from __future__ import annotations

import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Optional

from .errors import TorqueDockerError, printable

_WRITER = (
    "import os,sys\n"
    "path=sys.argv[1]\n"
    "fd=os.open(path, os.O_WRONLY|os.O_CREAT|os.O_TRUNC|os.O_NOFOLLOW, 0o644)\n"
    "os.write(fd, sys.stdin.buffer.read()); os.close(fd)\n"
)


def explanation(jobid: str, error: BaseException, attempts: int = 0) -> str:
    if isinstance(error, TorqueDockerError):
        reason, fix = error.message, error.fix
    else:
        reason, fix = f"internal error: {error!r}", "tell the admin; this is a bug in torque-docker"
    reason, fix, jobid = printable(reason), printable(fix), printable(jobid)
    head = f"torque-docker: job {jobid} was not started: {reason}"
    node_side = isinstance(error, TorqueDockerError) and error.node_fault and not error.user_error
    if attempts:
        head += f" ({'node fault, ' if node_side else ''}{attempts} attempts)"
    lines = [head]
    if node_side:    # the site's or the node's mistake: never worded as the user's to fix
        lines.append("torque-docker: this is a fault of the node or of the site's set-up, not of your job; "
                     "tell the admin" + (f", whose fix is: {fix}" if fix else ""))
    elif fix:
        lines.append(f"torque-docker: what to do: {fix}")
    lines.append("torque-docker: the job script did not run.")
    return "\n".join(lines) + "\n"


def file_name(jobid: str) -> str:
    return f"torque-docker-{jobid.replace('/', '_')}.refused"


def write_as_user(user: str, directory: str, name: str, text: str) -> Optional[str]:
    """Write text into the user's directory AS the user (never follow their symlinks as root)."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return None
    if entry.pw_uid == 0:
        return None
    for folder in (directory, entry.pw_dir):
        if not folder or not os.path.isabs(folder):
            continue
        path = str(Path(folder) / name)
        try:
            result = subprocess.run([sys.executable, "-I", "-c", _WRITER, path],
                                    input=text.encode("utf-8", "backslashreplace"),
                                    capture_output=True, timeout=20, user=entry.pw_uid, group=entry.pw_gid,
                                    extra_groups=os.getgrouplist(user, entry.pw_gid), cwd="/",
                                    env={"PATH": "/bin:/usr/bin"})
        except (OSError, subprocess.SubprocessError):
            continue
        if result.returncode == 0:
            return path
    return None

"""The sweep: containers and state of jobs pbs_mom no longer knows.

pbs_mom can purge a job without running its epilogues (an aborted start on the sisters,
a kill with the sync flag; docs/torque-facts.md), and a prologue killed by $prologalarm leaves
containers that dockerd keeps running. Every prologue sweeps its node, and admins can run
``torque-docker gc`` (a systemd timer does every 10 minutes).

When in doubt, keep. A job is removed only when all of these hold: it is older than the
grace period; no prologue of it runs on this node right now (a sister's pbs_mom writes
the job's file only after prologue.parallel); and two reads of pbs_mom's job files, a
moment apart, both lack its id, and so does a last one under the job's lock right before
its teardown. The ids come from inside the files (momjobs.py), because
file names follow the job's file prefix, not its id (array subjobs, long ids, renamed
prefixes, multi-mom ports). If the files cannot be read, nothing is removed and the
reason is logged.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, TextIO

from . import config as config_mod
from . import momjobs
from .errors import NodeFault
from .log import Log
from .state import NodeState, flock_within, open_lock_file

if TYPE_CHECKING:
    from .runtime import Runtime

RECHECK_PAUSE = 0.5       # seconds between the two reads of the job files before a removal
HOOK_LOCK_WAIT = 120.0    # a prologue waits at most this long for a sweep tearing down its slot


def mom_knows(pbs_home: str, jobid: str) -> bool:
    """Does pbs_mom hold a job file of ``jobid``? True as well when the files cannot be read."""
    try:
        return jobid in momjobs.held_jobs(pbs_home)
    except momjobs.JobFilesUnreadable:
        return True


def job_of_server(jobid: str, server: str) -> bool:
    """Is ``jobid`` (``123.server[.domain]``, ``45[2].server``) a job of Torque server ``server``?"""
    suffix = jobid.split(".", 1)[1] if "." in jobid else ""
    if not suffix:
        return False
    return suffix == server or suffix.startswith(server + ".") or server.startswith(suffix + ".")


# ------------------------------------------------------------------------- running hooks
def _hook_lock(cfg: config_mod.Config, jobid: str) -> Path:
    """One of 256 lock files per node (no file per job to clean up). Jobs sharing a file only
    make the sweep keep one more job for a round."""
    slot = hashlib.sha256(jobid.encode("utf-8", "surrogateescape")).hexdigest()[:2]
    return Path(cfg.paths_state_dir) / "locks" / f"hooks-{slot}.lock"


def _open_lock(path: Path) -> int:
    """In the state directory's root-only lock directory, 0600 (state.py: a lock another
    user could open is a lock another user could hold)."""
    NodeState(str(path.parent.parent)).ensure()
    return open_lock_file(path)


@contextlib.contextmanager
def hook_running(cfg: config_mod.Config, jobid: str, wait: float = HOOK_LOCK_WAIT) -> Iterator[None]:
    """Held (shared) while a prologue sets the job up: no sweep removes the job meanwhile.

    A sister's pbs_mom writes the job's file only after prologue.parallel returns
    (src/resmom/mom_comm.c im_join_job_as_sister), so during set-up the file cannot vouch
    for the job; and a requeued job may start again here while a sweep removes its last
    run. A sweep tearing a job down holds the lock exclusively, so the prologue waits.
    """
    try:
        fd = _open_lock(_hook_lock(cfg, jobid))
    except OSError:
        yield          # an unusable state dir: the prologue fails on it itself, and says why
        return
    try:
        if not flock_within(fd, fcntl.LOCK_SH, wait, pause=0.1, max_pause=0.1):
            raise NodeFault(f"a sweep has held the lock {_hook_lock(cfg, jobid)} for over {wait:.0f} s",
                            "look for a hung 'torque-docker gc' on this node")
        yield
    finally:
        os.close(fd)


def _claim(cfg: config_mod.Config, jobid: str) -> Optional[int]:
    """The lock of jobid, exclusively, or None when a hook of it (or of a job sharing the slot) runs."""
    fd = _open_lock(_hook_lock(cfg, jobid))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


# ------------------------------------------------------------------------- the sweep
def gc(cfg: config_mod.Config, pbs_home: str, *, grace: float = 600.0, server: str = "", log: Optional[Log] = None,
       out: Optional[TextIO] = None, runtime: Optional["Runtime"] = None, skip: str = "") -> Dict[str, List[str]]:
    """Remove containers and state of jobs pbs_mom no longer knows. Never touches a known job,
    nor anything younger than ``grace`` seconds, nor a job whose prologue runs now.

    A job is found through any trace it left on this node: a container labelled with this
    node's name, a job directory in the state dir, or a port reservation. ``server`` limits
    the sweep to job ids of that Torque server (nodes or test sites sharing one Docker daemon
    under the same node names must not judge each other's jobs).
    """
    from .runtime import L_JOB, Runtime
    from .teardown import teardown

    runtime = runtime or Runtime.from_config(cfg)
    now = time.time()
    candidates: Dict[str, float] = {}

    def seen(jobid: str, when: float) -> None:
        if jobid and (not server or job_of_server(jobid, server)):
            candidates[jobid] = max(candidates.get(jobid, 0.0), when)

    for info in runtime.containers(host=cfg.node_name()):
        seen(info.labels.get(L_JOB, ""), float(info.created or 0))
    state = NodeState(cfg.paths_state_dir)
    for jobid in state.job_ids():
        seen(jobid, state.load_job(jobid).started)
    for reservation in state.reserved_ports().values():
        seen(str(reservation.get("job", "")), float(reservation.get("time", 0)))
    report: Dict[str, List[str]] = {"removed": [], "kept": [], "errors": []}
    due = sorted(j for j, created in candidates.items() if j != skip and now - created >= grace)
    gone: List[str] = []
    if due:
        try:
            held = momjobs.held_jobs(pbs_home)
            gone = [j for j in due if j not in held]
            if gone:      # a second read, a moment later: a listing can miss a file being renamed
                time.sleep(RECHECK_PAUSE)
                held = momjobs.held_jobs(pbs_home)
                gone = [j for j in gone if j not in held]
        except momjobs.JobFilesUnreadable as exc:
            message = f"gc: kept every job ({len(due)} due): {exc}"
            report["errors"].append(message)
            if log is not None:
                log.warning("", message)
            if out is not None:
                print(message, file=out)
            gone = []
    for jobid in sorted(candidates):
        claim = _claim(cfg, jobid) if jobid in gone else None
        if claim is not None and mom_knows(pbs_home, jobid):
            # Read again under the lock: tearing down the jobs before this one can take
            # minutes, and a requeued job may have come back and been set up meanwhile.
            os.close(claim)
            claim = None
        if claim is None:
            report["kept"].append(jobid)
            continue
        try:
            result = teardown(cfg, jobid, runtime=runtime, log=log)
        finally:
            os.close(claim)
        report["removed"].append(jobid)
        report["errors"] += [f"{jobid}: {e}" for e in result.errors]
        if log is not None:
            log.info(jobid, f"gc: pbs_mom no longer knows the job: removed {result.removed} container(s)"
                     + (f"; errors: {'; '.join(result.errors)}" if result.errors else ""))
        if out is not None:
            print(f"gc: job {jobid}: removed {result.removed} container(s)"
                  + (f"; errors: {'; '.join(result.errors)}" if result.errors else ""), file=out)
    return report


def server_of(jobid: str) -> str:
    """``123.server.domain`` -> ``server.domain``: a prologue sweeps only its own server's jobs."""
    return jobid.split(".", 1)[1] if "." in jobid else ""

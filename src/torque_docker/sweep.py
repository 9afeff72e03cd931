"""The sweep: containers and state of jobs pbs_mom no longer knows.

pbs_mom can purge a job without running its epilogues (an aborted start on the sisters,
a kill with the sync flag; docs/torque-facts.md), and a prologue killed by $prologalarm leaves
containers that dockerd keeps running. Every prologue sweeps its node, and admins can run
``torque-docker gc`` (a systemd timer does every 10 minutes). It never touches a job mom
knows, nor anything younger than the grace period (a job being set up right now).
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Dict, List

from . import config as config_mod


def mom_knows(pbs_home: str, jobid: str) -> bool:
    """pbs_mom keeps ``mom_priv/jobs/<jobid>.JB`` from the job's arrival to its purge."""
    jobs = Path(pbs_home) / "mom_priv" / "jobs"
    return (jobs / f"{jobid}.JB").exists()


def job_of_server(jobid: str, server: str) -> bool:
    """Is ``jobid`` (``123.server[.domain]``, ``45[2].server``) a job of Torque server ``server``?"""
    suffix = jobid.split(".", 1)[1] if "." in jobid else ""
    if not suffix:
        return False
    return suffix == server or suffix.startswith(server + ".") or server.startswith(suffix + ".")


def gc(cfg: config_mod.Config, pbs_home: str, *, grace: float = 600.0, server: str = "", log=None,
       out=None, runtime=None, skip: str = "") -> Dict[str, List[str]]:
    """Remove containers and state of jobs pbs_mom no longer knows. Never touches a known job,
    nor anything younger than ``grace`` seconds (a job being set up right now).

    A job is found through any trace it left on this node: a container labelled with this
    node's name, a job directory in the state dir, or a port reservation. ``server`` limits
    the sweep to job ids of that Torque server (nodes or test sites sharing one Docker daemon
    under the same node names must not judge each other's jobs).
    """
    from . import lifecycle
    from .runtime import L_JOB
    from .state import NodeState

    runtime = runtime or lifecycle.runtime_for(cfg)
    now = time.time()
    candidates: Dict[str, float] = {}

    def seen(jobid: str, when: float) -> None:
        if jobid and (not server or job_of_server(jobid, server)):
            candidates[jobid] = max(candidates.get(jobid, 0.0), when)

    for info in runtime.containers(host=cfg.node_name()):
        seen(info.labels.get(L_JOB, ""), float(info.created or 0))
    state = NodeState(cfg.paths_state_dir)
    for jobid in state.job_ids():
        seen(jobid, float(state.load_job(jobid).get("started", 0)))
    for reservation in state.reserved_ports().values():
        seen(str(reservation.get("job", "")), float(reservation.get("time", 0)))
    report: Dict[str, List[str]] = {"removed": [], "kept": [], "errors": []}
    for jobid, created in sorted(candidates.items()):
        if jobid == skip or mom_knows(pbs_home, jobid) or now - created < grace:
            report["kept"].append(jobid)
            continue
        result = lifecycle.teardown(cfg, jobid, runtime=runtime, log=log)
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

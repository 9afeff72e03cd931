"""The job starter: the one place that can change the job's environment and where it runs.

pbs_mom execs ``[starter, shell]`` as the job user, with stdin a pipe holding the path of
the job script and its ``-F`` arguments (docs/torque-facts.md). For a job without an image we
exec the shell at once, untouched. For a container job we export the launcher settings
(both MPIs use ssh with the job's aliases) and, with ``run=container``, run the script in
the mother superior's container through the job's own SSH alias: the starter runs as the
user, so it cannot use the Docker socket, and needs no privilege this way.

Kept light on imports: it runs in front of every job on the node.
"""
from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

CTR_DIR = "/run/torque-docker"
STARTER_FILE = "starter.json"

#: Launcher settings every container job gets (docs/design.md, "What Docker, sshd and MPI taught us").
LAUNCHER_ENV: Dict[str, str] = {
    "OMPI_MCA_plm": "rsh",                             # never TM: ranks must go through ssh into containers
    "OMPI_MCA_plm_rsh_agent": "ssh",
    "OMPI_MCA_ras": "^tm",                             # the allocation is the rewritten nodefile
    "OMPI_MCA_orte_set_default_slots": "none",         # count nodefile lines, not cores seen in a container
    "OMPI_MCA_btl_vader_single_copy_mechanism": "none",  # CMA is blocked by Docker's seccomp profile
    "OMPI_MCA_btl_tcp_if_exclude": "127.0.0.1/8,sppp,docker0",
    "OMPI_MCA_oob_tcp_if_exclude": "127.0.0.1/8,sppp,docker0",
    "HYDRA_LAUNCHER": "ssh",                           # MPICH: ssh, not a TM/PBS launcher
    "HYDRA_BOOTSTRAP": "ssh",
}


def job_info(jobid: str, starter_path: str) -> Optional[dict]:
    """What the MS prologue left for the starter (user-owned, in the job's directory).

    None means "not a container job". A record that exists but cannot be read is a
    refusal: a container job's script must never run on the host by accident.
    """
    from .config import load, path_from_pbs_home
    from .torque import pbs_home_from, safe_jobid
    try:
        cfg = load(path_from_pbs_home(str(pbs_home_from(starter_path, os.getcwd()))))
        path = Path(cfg.paths_state_dir) / "jobs" / safe_jobid(jobid) / "ctr" / STARTER_FILE
    except Exception as exc:
        return {"refusal": f"torque-docker: job {jobid}: cannot read the node's configuration ({exc}); "
                           "the job did not run, please tell the admin"}
    if not path.exists() and not path.parent.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        return {"refusal": f"torque-docker: job {jobid}: the container set-up is incomplete ({exc}); "
                           "the job did not run, please tell the admin"}


def filtered_env(environ: Mapping[str, str], deny: Sequence[str], allow: Sequence[str]) -> Dict[str, str]:
    """The job's variables that make sense inside the image (host paths and loaders do not)."""
    out: Dict[str, str] = {}
    for name, value in environ.items():
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in deny):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in allow):
            out[name] = value
    return out


def read_job_line(stream) -> List[str]:
    """The script path and -F arguments pbs_mom writes into the starter's stdin."""
    line = stream.readline()
    if not line.strip():
        return []
    try:
        return shlex.split(line)
    except ValueError:          # an unbalanced quote in qsub -F: keep the words as they are
        return line.split()


def remote_command(workdir: str, env: Mapping[str, str], shell: str, script: str, args: Sequence[str]) -> str:
    """A command line for the container: record our pid (to signal the whole job), then exec."""
    assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(env.items()))
    return (f"echo $$ > {CTR_DIR}/job.pid; cd {shlex.quote(workdir)} || exit 1; "
            f"exec env -i {assignments} {shlex.quote(shell)} {shlex.quote(script)} "
            + " ".join(shlex.quote(a) for a in args))


def main(argv: Sequence[str]) -> int:
    shell = argv[1] if len(argv) > 1 else "/bin/sh"
    jobid = os.environ.get("PBS_JOBID", "")
    batch = len(argv) == 2 and os.environ.get("PBS_ENVIRONMENT") in ("PBS_BATCH", "PBS_INTERACTIVE")
    info = job_info(jobid, argv[0]) if jobid and batch else None
    if info is None:
        # Not a container job, or a TM-spawned task: exactly what pbs_mom would have run.
        if len(argv) < 2:
            print("torque-docker: the job starter was run without a command", file=sys.stderr)
            return 1
        os.execv(argv[1], list(argv[1:]))
    if info.get("refusal"):
        print(info["refusal"], file=sys.stderr, flush=True)
        return 1
    os.environ.update(LAUNCHER_ENV)
    os.environ["TORQUE_DOCKER_SSH_CONFIG"] = info.get("ssh_config", "")
    os.environ["TORQUE_DOCKER_ALIAS"] = info.get("alias", "")
    if os.environ.get("PBS_NODEFILE"):    # plain `mpirun prog` uses the job's slots, as with TM
        os.environ["OMPI_MCA_orte_default_hostfile"] = os.environ["PBS_NODEFILE"]
    if info.get("run") != "container":
        # run=host: the paper's way, ranks still land in containers.
        if not info.get("usage_table"):
            os.execv(shell, [shell])
        code = subprocess.call([shell])          # same stdin (the job line), same session
        print_usage(info)
        return exit_like(code)
    if os.environ.get("PBS_ENVIRONMENT") == "PBS_INTERACTIVE":
        argv_ = interactive_argv(info, shell, os.getcwd(), os.environ)
        os.execv(argv_[0], argv_)    # qsub -I: the user's terminal, a login shell in the container
    return run_in_container(info, shell, sys.stdin)


def container_env(info: dict, environ: Mapping[str, str]) -> Dict[str, str]:
    """The job's environment as it should be inside the image."""
    env = filtered_env(environ, info.get("env_deny", []), info.get("env_pass", ["*"]))
    env.update(LAUNCHER_ENV)
    env["PATH"] = info.get("path") or "/usr/local/bin:/usr/bin:/bin"   # the image's, not the host's
    env["PBS_NODEFILE"] = f"{CTR_DIR}/nodefile"                          # the rewritten one, seen inside
    env["OMPI_MCA_orte_default_hostfile"] = env["PBS_NODEFILE"]
    env.setdefault("HOME", environ.get("HOME", "/"))
    return env


def interactive_argv(info: dict, shell: str, cwd: str, environ: Mapping[str, str]) -> List[str]:
    """ssh with a terminal into the MS container, starting a login shell where Torque would."""
    env = container_env(info, environ)
    assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(env.items()))
    login = info.get("shell", shell)
    command = (f"cd {shlex.quote(cwd)} 2>/dev/null || cd; "
               f"exec env -i {assignments} {shlex.quote(login)} -l")
    return ["/usr/bin/ssh", "-tt", "-o", "LogLevel=ERROR", info["alias"], command]


def run_in_container(info: dict, shell: str, stdin) -> int:
    words = read_job_line(stdin)
    if not words:
        print("torque-docker: the job starter got no job script on stdin", file=sys.stderr)
        return 1
    script_path, args = words[0], words[1:]
    ctr_host = Path(info["ctr_dir"])
    script_in_ctr = f"{CTR_DIR}/job-script"
    # The script lives in mom_priv/jobs on the host; the container sees the job's directory.
    text = Path(script_path).read_bytes()
    fd = os.open(ctr_host / "job-script", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o700)
    with os.fdopen(fd, "wb") as handle:
        handle.write(text)
    env = container_env(info, os.environ)
    command = remote_command(os.getcwd(), env, info.get("shell", shell), script_in_ctr, args)
    ssh = ["/usr/bin/ssh", "-T", "-o", "LogLevel=ERROR", info["alias"], command]
    # Its own session: pbs_mom signals every process of the job's session on qdel, and an
    # ssh killed first would cut the script's output and exit status. The starter forwards
    # the signal into the container instead; the epilogue removing the containers ends ssh
    # in any case.
    child = subprocess.Popen(ssh, stdin=subprocess.DEVNULL, start_new_session=True)

    def forward(signum, _frame):
        # qdel / walltime: stop the script and everything it started in the container.
        subprocess.run(["/usr/bin/ssh", "-T", "-o", "LogLevel=ERROR", info["alias"],
                        f"kill -{signum} -- -$(cat {CTR_DIR}/job.pid) 2>/dev/null; "
                        f"kill -{signum} $(cat {CTR_DIR}/job.pid) 2>/dev/null"],
                       stdin=subprocess.DEVNULL, timeout=10, check=False)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, forward)
    while True:
        try:
            code = child.wait()
            break
        except InterruptedError:
            continue
    if info.get("usage_table"):
        print_usage(info)
    return code if code >= 0 else 128 - code


def exit_like(code: int) -> int:
    """Die of the same signal as the child did, so Torque records 256+N as it would."""
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return 128 - code
    return code


def job_aliases() -> List[str]:
    try:
        lines = Path(os.environ["PBS_NODEFILE"]).read_text().split()
    except (KeyError, OSError):
        return []
    return list(dict.fromkeys(lines))


def print_usage(info: dict) -> None:
    """The per-container usage table at the end of the job's .o (model=process, or verbose)."""
    from concurrent.futures import ThreadPoolExecutor
    from .usage import INSIDE, parse_inside, table

    def one(alias: str):
        try:
            out = subprocess.run(["/usr/bin/ssh", "-T", "-o", "LogLevel=ERROR", alias, INSIDE],
                                 stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20).stdout
        except subprocess.SubprocessError:
            return None
        return parse_inside(alias, out.strip())

    aliases = job_aliases()
    if not aliases:
        return
    with ThreadPoolExecutor(max_workers=min(16, len(aliases))) as pool:
        rows = [r for r in pool.map(one, aliases) if r]
    if rows:
        sys.stdout.write(table(rows, info.get("jobid", "")))
        sys.stdout.flush()

"""The job starter: the one place that can change the job's environment and where it runs.

pbs_mom runs ``$job_starter`` for three things (Torque's src/resmom/start_exec.c;
docs/torque-facts.md):

- the batch job: ``[starter, shell]`` with stdin a pipe holding the path of the job
  script and its ``-F`` arguments; ``shell`` is what mom chose (``qsub -S``, else the
  user's login shell) and would have run as ``-bash`` (a login shell) without a starter;
- an interactive job (``PBS_ENVIRONMENT=PBS_INTERACTIVE``): ``[starter, shell]`` on the
  user's terminal;
- every task spawned through the task manager (pbsdsh, TM-enabled launchers), on every
  node: ``[starter, program, args...]`` with no shell and no script on stdin (stdin is
  /dev/null or a socket), environment the job's plus PBS_TASKNUM / PBS_VNODENUM; mom would
  have run ``execvp(program)`` on the job's PATH.

For a job without a container request the starter is invisible: it does exactly what
mom would have done (the same exec, argv, environment, signal dispositions and file
descriptors). For a container job, the batch script, the interactive shell and the TM
tasks run inside the job's containers, as the user, reached through the job's own SSH
aliases: the starter runs as the user, so it cannot use the Docker socket, and needs no
privilege this way.

What the starter knows about a job it reads from a record the mother superior's (or a
sister's) prologue wrote, as root, where the user cannot change it; where that record
lives comes from the node's configuration, found only through root-controlled files
(never through the job's environment, which the user sets).

Kept light on imports: it runs in front of every job and every TM task on the node.
"""
from __future__ import annotations

import fnmatch
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

from .records import StarterInfo

CTR_DIR = "/run/torque-docker"
RECORD = "starter.json"          # in <state_dir>/jobs/<jobid>/, written by the prologues as root
ENV_FILE = "job.env"             # the job's environment for ssh logins into its containers
RUN_DIR = "run"                  # the user's own directory in the job files: pid and status of each run
DEFAULT_PBS_HOME = "/var/spool/torque"
FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)

#: Launcher settings every container job gets (docs/design.md, "What Docker, sshd and MPI taught us").
LAUNCHER_ENV: Dict[str, str] = {
    "OMPI_MCA_plm": "rsh",                             # never TM: ranks must go through ssh into containers
    "OMPI_MCA_plm_rsh_agent": "ssh",
    "OMPI_MCA_ras": "^tm",                             # the allocation is the rewritten nodefile
    "OMPI_MCA_orte_set_default_slots": "none",         # count nodefile lines, not cores seen in a container
    "OMPI_MCA_btl_vader_single_copy_mechanism": "none",  # unless record.cma: see launcher_env
    "OMPI_MCA_btl_tcp_if_exclude": "127.0.0.1/8,sppp,docker0",
    "OMPI_MCA_oob_tcp_if_exclude": "127.0.0.1/8,sppp,docker0",
    "HYDRA_LAUNCHER": "ssh",                           # MPICH: ssh, not a TM/PBS launcher
    "HYDRA_BOOTSTRAP": "ssh",
}


def launcher_env(record: StarterInfo) -> Dict[str, str]:
    """LAUNCHER_ENV for this job: Docker's default seccomp profile refuses CMA's
    process_vm_readv, so Open MPI must not try it unless the prologue recorded that the
    containers got a profile allowing it (``cma``); then Open MPI picks its own default."""
    env = dict(LAUNCHER_ENV)
    if record.cma:
        del env["OMPI_MCA_btl_vader_single_copy_mechanism"]
    return env


#: Per-process or per-login variables that the job's environment file must not carry to
#: other containers: sshd and the session set their own, a task has its own numbers.
NOT_SHARED = ("PBS_TASKNUM", "PBS_VNODENUM", "PBS_NODENUM", "TORQUE_DOCKER_ALIAS", "SHELL", "HOME", "USER",
              "LOGNAME", "PWD", "OLDPWD", "SHLVL", "_", "IFS", "TERM", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")
#: The GPU variables: each container's own (the prologue's record, gpus.py), never the host's
#: (mom numbers the job's GPUs as the host does; a container sees only its own, from 0).
GPU_VARS = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")
NOT_SHARED_PREFIXES = ("SSH_", "_td_")    # sshd's own (SSH_ORIGINAL_COMMAND...), the session's

#: Shells that take ``-l`` for a login shell (an interactive job's shell in a container).
LOGIN_FLAG_SHELLS = ("sh", "bash", "dash", "zsh", "ksh", "ksh93", "mksh", "tcsh", "fish")

ROOT_REFUSAL = ("torque-docker: the job starter is running as root ($job_starter_run_privileged is set in "
                "pbs_mom's config): it would run this job with root's rights, so the job did not run; "
                "please tell the admin (remove $job_starter_run_privileged from mom_priv/config and "
                "restart pbs_mom)")


# ----------------------------------------------------------------------------- entry
def main(argv: Sequence[str]) -> int:
    # Python ignores SIGXFSZ; pbs_mom's jobs have it at its default (mom ignores only SIGPIPE,
    # which Python ignores too, so that one is already as mom hands it on).
    signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
    if os.geteuid() == 0:
        print(ROOT_REFUSAL, file=sys.stderr, flush=True)
        return 1
    entries = original_environ()
    environ = environ_dict(entries)
    kind = classify(argv, environ, sys.stdin)
    if kind is None:
        print("torque-docker: the job starter was run without a command", file=sys.stderr)
        return 1
    jobid = environ.get("PBS_JOBID", "")
    record = job_record(jobid, argv[0]) if jobid else None
    pbs_home = pbs_home_of(argv[0])
    if record is None:
        return run_plain(kind, argv, pbs_home, entries)
    if record.refusal:
        print(record.refusal, file=sys.stderr, flush=True)
        return 1
    if kind == "task":
        return run_task(record, list(argv[1:]), environ)
    shell = argv[1]
    env = dict(environ)
    env.update(launcher_env(record))
    env["TORQUE_DOCKER_SSH_CONFIG"] = record.ssh_config
    env["TORQUE_DOCKER_ALIAS"] = record.alias
    if env.get("PBS_NODEFILE"):    # plain `mpirun prog` uses the job's slots, as with TM
        env["OMPI_MCA_orte_default_hostfile"] = env["PBS_NODEFILE"]
    if record.run != "container":
        # run=host: the paper's way, ranks still land in containers. MPICH's mpiexec would
        # hand the host's whole environment (PATH, LD_LIBRARY_PATH, ...) to every rank; the
        # ranks take the job's environment from the containers' ssh logins instead.
        env["HYDRA_ENV"] = "none"
    share_job_env(record, container_env(record, env))
    if record.run != "container":
        login = mom_option(pbs_home, "source_login_interactive" if kind == "interactive" else "source_login_batch")
        if not record.usage_table:
            exec_shell(shell, login, [os.fsencode(f"{k}={v}") for k, v in env.items()])
        code = subprocess.call([shell_argv0(shell, login)], executable=shell, env=env, restore_signals=False)
        print_usage(record, env)
        return exit_like(code)
    missing = missing_shell_message(record, shell)
    if kind == "interactive":
        argv_ = interactive_argv(record, shell, os.getcwd(), env, check=missing,
                                 login=mom_option(pbs_home, "source_login_interactive"))
        os.execv(argv_[0], argv_)    # qsub -I: the user's terminal, the shell in the container
    return run_in_container(record, shell, sys.stdin, env, missing)


def original_environ() -> List[bytes]:
    """The environment exactly as pbs_mom gave it. Python changes its own copy (it adds
    LC_CTYPE under a C locale, PEP 538), so the kernel's record of it is read instead."""
    try:
        with open("/proc/self/environ", "rb") as handle:
            return [entry for entry in handle.read().split(b"\0") if entry]
    except OSError:
        return [os.fsencode(f"{k}={v}") for k, v in os.environ.items()]


def environ_dict(entries: Sequence[bytes]) -> Dict[str, str]:
    out: Dict[str, str] = {}
    for entry in entries:
        name, sep, value = entry.partition(b"=")
        if sep:
            out[os.fsdecode(name)] = os.fsdecode(value)
    return out


def classify(argv: Sequence[str], environ: Mapping[str, str], stdin) -> Optional[str]:
    """batch, interactive or task: what pbs_mom is starting (see the module docstring).

    A TM task always gets PBS_ENVIRONMENT=PBS_BATCH, even in an interactive job, and never
    a pipe on stdin (/dev/null, or a socket with TM_STDIN_PORT): only the batch job's shell
    reads its script path from a pipe (Torque's default build, SHELL_INVOKE)."""
    if len(argv) < 2:
        return None
    if len(argv) == 2 and environ.get("PBS_ENVIRONMENT") == "PBS_INTERACTIVE":
        return "interactive"
    if len(argv) == 2 and environ.get("PBS_ENVIRONMENT") == "PBS_BATCH":
        try:
            if stat.S_ISFIFO(os.fstat(stdin.fileno()).st_mode):
                return "batch"
        except (OSError, ValueError, AttributeError):
            pass
    return "task"


# ----------------------------------------------------------------------------- where the record is
def pbs_home_of(argv0: str) -> Path:
    """``$PBS_HOME`` of the pbs_mom that started us: the parent of mom_priv, where ``install``
    puts the starter (``$job_starter`` is an absolute path, and mom passes it as argv[0]).
    Never the working directory or the environment: both are the user's."""
    here = Path(os.path.abspath(argv0)).parent
    return here.parent if here.name == "mom_priv" else Path(DEFAULT_PBS_HOME)


def trusted_config_path(pbs_home: Path) -> str:
    """The node's config file as the hooks see it: ``TORQUE_DOCKER_CONF`` from the root-owned
    ``$PBS_HOME/pbs_environment`` (what pbs_mom gives its scripts), else the fixed default.
    The job's own ``TORQUE_DOCKER_CONF`` is ignored: a user could point it anywhere."""
    from .config import DEFAULT_PATH, ENV_VAR
    try:
        text = (pbs_home / "pbs_environment").read_text()
    except OSError:
        return DEFAULT_PATH
    for line in text.splitlines():
        name, sep, value = line.partition("=")
        if sep and name.strip() == ENV_VAR and value.strip():
            return value.strip()
    return DEFAULT_PATH


def job_record(jobid: str, argv0: str) -> Optional[StarterInfo]:
    """What this node's prologue left for the starter, or None for a job without containers.

    A job directory without a readable, root-owned record is a refusal: a container job's
    script or task must never run on the host by accident."""
    from .config import load
    from .torque import safe_jobid
    try:
        cfg = load(trusted_config_path(pbs_home_of(argv0)))
        job_dir = Path(cfg.paths_state_dir) / "jobs" / safe_jobid(jobid)
    except Exception as exc:
        return StarterInfo.refused(f"torque-docker: job {jobid}: cannot read the node's configuration ({exc}); "
                                   "the job did not run, please tell the admin")
    try:
        fd = os.open(job_dir / RECORD, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        if not job_dir.exists():
            return None
        return StarterInfo.refused(f"torque-docker: job {jobid}: the container set-up on this node is incomplete "
                                   f"(no {RECORD}); the job did not run, please tell the admin")
    except OSError as exc:
        return StarterInfo.refused(f"torque-docker: job {jobid}: cannot read the container set-up ({exc}); "
                                   "the job did not run, please tell the admin")
    try:
        info = os.fstat(fd)
        if info.st_uid != 0 or not stat.S_ISREG(info.st_mode) or info.st_mode & 0o022:
            return StarterInfo.refused(f"torque-docker: job {jobid}: {job_dir / RECORD} was not written by root; "
                                       "the job did not run, please tell the admin")
        with os.fdopen(fd, "rb", closefd=False) as handle:
            return StarterInfo.from_json(handle.read().decode("utf-8"))
    except (OSError, ValueError) as exc:
        return StarterInfo.refused(f"torque-docker: job {jobid}: the container set-up is unreadable ({exc}); "
                                   "the job did not run, please tell the admin")
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------- jobs without containers
def mom_option(pbs_home: Path, name: str, default: bool = True) -> bool:
    """A boolean of pbs_mom's config (mom_priv/config is root's and readable by all), parsed
    as mom does (src/resmom/parse_config.c setbool()); mom's default when absent."""
    from .torque import MomConfig
    return MomConfig.of(pbs_home).flag(name, default)


def shell_argv0(shell: str, login: bool) -> str:
    """argv[0] mom gives the job's shell (start_exec.c source_login_shells_or_not())."""
    name = os.path.basename(shell)
    return "-" + name if login else name


_KEEP: list = []      # ctypes arrays the C library must see until exec


def _c_array(items: Sequence[bytes]):
    import ctypes
    array = (ctypes.c_char_p * (len(items) + 1))(*items, None)
    _KEEP.append(array)
    return array


def exec_shell(shell: str, login: bool, env: Sequence[bytes]) -> None:
    """Become the job's shell exactly as pbs_mom would have run it without a starter:
    execve() of the path with argv[0] "-name" (a login shell) unless mom's config says not."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.execve.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p]
    libc.execve(os.fsencode(shell), _c_array([os.fsencode(shell_argv0(shell, login))]), _c_array(env))
    # start_exec.c: "PBS: exec of shell '%s' failed".
    print(f"PBS: exec of shell '{shell}' failed ({os.strerror(ctypes.get_errno())})", file=sys.stderr, flush=True)
    os._exit(254)


def exec_task(argv: Sequence[str], env: Sequence[bytes]) -> None:
    """execvp() the task as pbs_mom does (become_the_jobs_subprocess: environ is the task's,
    then execvp): the C library's own lookup on the job's PATH, a file without ``#!`` run by
    /bin/sh; on failure ``PBS: prog: error`` on stderr and exit 254."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    ctypes.c_void_p.in_dll(libc, "environ").value = ctypes.cast(_c_array(env), ctypes.c_void_p).value
    libc.execvp.argtypes = [ctypes.c_char_p, ctypes.c_void_p]
    libc.execvp(os.fsencode(argv[0]), _c_array([os.fsencode(a) for a in argv]))
    errno = ctypes.get_errno()
    os.write(2, os.fsencode(f"PBS: {argv[0]}: {os.strerror(errno)}\n"))
    os._exit(254)


def run_plain(kind: str, argv: Sequence[str], pbs_home: Path, env: Sequence[bytes]) -> int:
    if kind == "task":
        exec_task(argv[1:], env)
    option = "source_login_interactive" if kind == "interactive" else "source_login_batch"
    exec_shell(argv[1], mom_option(pbs_home, option), env)
    return 254      # not reached


# ----------------------------------------------------------------------------- environment
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


def container_env(info: StarterInfo, environ: Mapping[str, str], alias: Optional[str] = None) -> Dict[str, str]:
    """The job's environment as it should be inside the image."""
    env = filtered_env(environ, info.env_deny, info.env_pass)
    env.update(launcher_env(info))
    env["PATH"] = info.path or "/usr/local/bin:/usr/bin:/bin"   # the image's, not the host's
    env["PBS_NODEFILE"] = f"{CTR_DIR}/nodefile"                          # the rewritten one, seen inside
    env["OMPI_MCA_orte_default_hostfile"] = env["PBS_NODEFILE"]
    env["TORQUE_DOCKER_SSH_CONFIG"] = f"{CTR_DIR}/ssh_config"           # the job's SSH config, inside
    env["TORQUE_DOCKER_ALIAS"] = alias or info.alias
    for name in GPU_VARS:
        env.pop(name, None)
    env.update({k: v for k, v in info.gpu_vars(env["TORQUE_DOCKER_ALIAS"]).items() if k in GPU_VARS})
    env.pop("HYDRA_ENV", None)        # run=host's setting for the host's mpiexec only
    env.setdefault("HOME", environ.get("HOME", "/"))
    return env


def env_file_text(env: Mapping[str, str]) -> str:
    """The job's environment as POSIX sh assignments: every ssh login into the job's
    containers sources it (the sshd's ForceCommand session), so ranks that MPI launchers
    start over ssh get the same variables as the batch script."""
    lines = ["# torque-docker: the job's environment, written by the job starter (as the user)"]
    for name, value in sorted(env.items()):
        if (name in NOT_SHARED or name.startswith(NOT_SHARED_PREFIXES)
                or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name)):
            continue
        lines.append(f"{name}={shlex.quote(value)}; export {name}")
    return "\n".join(lines) + "\n"


def share_job_env(record: StarterInfo, env: Mapping[str, str]) -> None:
    """Put the job's environment where ssh logins into every container of the job read it:
    this node's job directory (its containers mount it), and through one ssh login each,
    every other node's. The file is the user's own; root never reads it."""
    from concurrent.futures import ThreadPoolExecutor
    text = env_file_text(env)
    # The prologue made the file, the user's own, in the root-owned job files: written in
    # place (nothing may be created there by the user).
    fd = os.open(Path(record.ctr_dir) / ENV_FILE, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    others = [a for a in record.node_aliases[1:] if a]
    if not others:
        return

    def push(alias: str) -> Optional[str]:
        command = f"umask 077; cat > {CTR_DIR}/{ENV_FILE}"
        try:
            result = subprocess.run(ssh_argv(alias, command), input=text.encode("utf-8", "surrogateescape"),
                                    capture_output=True, timeout=30)
        except subprocess.TimeoutExpired:
            return f"{alias}: timed out"
        return None if result.returncode == 0 else f"{alias}: {result.stderr.decode(errors='replace').strip()[:200]}"

    with ThreadPoolExecutor(max_workers=min(16, len(others))) as pool:
        failures = [f for f in pool.map(push, others) if f]
    if failures:
        print(f"torque-docker: warning: the job's environment did not reach every node ({'; '.join(failures)}); "
              f"ranks there see only the image's", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- in the container
#: First line of every command torque-docker itself runs in a container: the job's ssh
#: session (templates/session.j2) runs those with /bin/sh, whatever the user's login shell.
MARK = "# torque-docker\n"


def ssh_argv(alias: str, command: str, tty: bool = False) -> List[str]:
    return ["/usr/bin/ssh", "-tt" if tty else "-T", "-o", "LogLevel=ERROR", alias, MARK + command]


def read_job_line(stream) -> str:
    """The line pbs_mom writes into the starter's stdin: the script's path and the -F arguments."""
    line = stream.readline()
    return line if line.strip() else ""


def missing_shell_message(record: StarterInfo, shell: str) -> str:
    """The one line a user sees when the image lacks the shell Torque chose for the job."""
    from .errors import printable
    try:
        import pwd
        login = pwd.getpwuid(os.getuid()).pw_shell
    except (KeyError, ImportError):
        login = ""
    source = "your login shell; no #PBS -S was given" if shell == login else "from #PBS -S"
    return printable(f"torque-docker: job {record.jobid}: the job's shell {shell} ({source}) is not in "
                     f"image {record.image or '?'}; the script did not run: name a shell the image has with "
                     f"#PBS -S (e.g. #PBS -S /bin/bash), or add {shell} to the image")


def remote_command(workdir: str, env: Mapping[str, str], program: Sequence[str], run_id: str,
                   check: str = "", ctr_dir: str = CTR_DIR) -> str:
    """A command line for the container (run by the user's shell there through sshd).

    It records its process group (the sshd session: the whole job inside) for forwarded
    signals, enters the working directory, refuses with ``check`` when the program is not
    in the image, then runs ``program`` with exactly ``env`` as a child, so that it can
    still write the program's exit status after a forwarded signal killed the program
    (ssh itself reports a remote signal as 255)."""
    assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(env.items()))
    base = f"{ctr_dir}/{RUN_DIR}/run-{run_id}"
    words = " ".join(shlex.quote(a) for a in program)
    test = ""
    if check:
        exe = shlex.quote(program[0])
        test = f"[ -f {exe} ] && [ -x {exe} ] || {{ printf '%s\\n' {shlex.quote(check)} >&2; exit 127; }}; "
    return (f"read -r _ _ _ _ g _ < /proc/$$/stat; echo $g > {base}.pid; "
            f"cd {shlex.quote(workdir)} || exit 1; {test}"
            f"trap : TERM INT HUP USR1 USR2; env -i {assignments} {words} ; echo $? > {base}.status")


def run_id() -> str:
    return f"{os.uname().nodename}-{os.getpid()}"


def run_remote(record: StarterInfo, alias: str, command: str, rid: str, stdin_data: Optional[bytes]) -> int:
    """ssh into alias, forward signals pbs_mom sends (one for one), return the remote status."""
    ctr = Path(record.ctr_dir)
    # Its own session: pbs_mom signals every process of the job's session on qdel, and an ssh
    # killed first would cut the script's output and exit status. The starter forwards each
    # signal into the container instead; the epilogue removing the containers ends ssh in any case.
    child = subprocess.Popen(ssh_argv(alias, command),
                             stdin=subprocess.PIPE if stdin_data is not None else None,
                             start_new_session=True)
    if stdin_data is not None and child.stdin is not None:
        try:
            child.stdin.write(stdin_data)
            child.stdin.close()
        except OSError:
            pass
    forwarded: List[int] = []

    def forward(signum, _frame) -> None:
        forwarded.append(signum)
        pid_file = ctr / RUN_DIR / f"run-{rid}.pid"
        import time
        deadline = time.monotonic() + 5
        group = ""
        while time.monotonic() < deadline and child.poll() is None:
            try:
                group = pid_file.read_text().strip()
            except OSError:
                group = ""
            if group.isdigit():
                break
            time.sleep(0.05)
        if not group.isdigit():
            return
        # One signal for the one mom sent: to the process group of the job inside.
        name = signal.Signals(signum).name[3:]        # dash's kill takes "-s NAME -- -GROUP"
        subprocess.run(ssh_argv(alias, f"kill -s {name} -- -{group} 2>/dev/null"),
                       stdin=subprocess.DEVNULL, timeout=15, check=False)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    while True:
        try:
            code = child.wait()
            break
        except InterruptedError:
            continue
    for sig in FORWARDED:
        signal.signal(sig, signal.SIG_DFL)
    status_file = ctr / RUN_DIR / f"run-{rid}.status"
    try:
        text = status_file.read_text().strip()
        if text.isdigit():
            code = int(text)
            # The shell reports a death by signal N as 128+N: when N is a signal we forwarded,
            # die of it as the program did, so Torque records 256+N as without containers.
            if code > 128 and (code - 128) in forwarded:
                code = -(code - 128)
    except OSError:
        pass
    for suffix in (".pid", ".status"):
        try:
            (ctr / RUN_DIR / f"run-{rid}{suffix}").unlink()
        except OSError:
            pass
    return code


def run_in_container(record: StarterInfo, shell: str, stdin, environ: Mapping[str, str], missing: str = "") -> int:
    line = read_job_line(stdin)
    if not line:
        print("torque-docker: the job starter got no job script on stdin", file=sys.stderr)
        return 1
    script_path, sep, rest = line.rstrip("\n").partition(" ")
    ctr_host = Path(record.ctr_dir)
    # The script lives in mom_priv/jobs on the host; the container sees the job's directory.
    text = Path(script_path).read_bytes()
    fd = os.open(ctr_host / "job-script", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o700)
    with os.fdopen(fd, "wb") as handle:
        handle.write(text)
    # Torque's way (SHELL_INVOKE): the shell reads "SCRIPT ARGS" on stdin and runs the script
    # as a command, so a "#!" line is honoured and -S picks the program that reads that line.
    job_line = f"{CTR_DIR}/job-script{sep}{rest}\n".encode("utf-8", "surrogateescape")
    env = container_env(record, environ)
    rid = run_id()
    command = remote_command(os.getcwd(), env, [shell], rid, check=missing)
    code = run_remote(record, record.alias, command, rid, job_line)
    if record.usage_table:
        print_usage(record, environ)
    return exit_like(code)


def task_alias(record: StarterInfo, environ: Mapping[str, str]) -> str:
    """The container of a TM task: its node's (model=node), or its slot's (model=process: the
    nodefile line PBS_VNODENUM names, when that container is on this node)."""
    local = [a for a in record.local_aliases if a] or [record.alias]
    if record.model == "process":
        try:
            lines = (Path(record.ctr_dir) / "nodefile").read_text().split()
            alias = lines[int(environ.get("PBS_VNODENUM", ""))]
            if alias in local:
                return alias
        except (OSError, ValueError, IndexError, KeyError):
            pass
    return local[0]


def run_task(record: StarterInfo, argv: List[str], environ: Mapping[str, str]) -> int:
    """A TM task of a container job: the same program, arguments and environment rules as
    the batch script, in its container, as the user, its status back to the spawner."""
    alias = task_alias(record, environ)
    env = container_env(record, environ, alias)
    rid = run_id()
    command = remote_command(os.getcwd(), env, argv, rid)
    try:
        stdin_is_null = os.path.samestat(os.fstat(0), os.stat(os.devnull))
    except OSError:
        stdin_is_null = True
    return exit_like(run_remote(record, alias, command, rid, b"" if stdin_is_null else None))


def interactive_argv(info: StarterInfo, shell: str, cwd: str, environ: Mapping[str, str], check: str = "",
                     login: bool = True) -> List[str]:
    """ssh with a terminal into the MS container, starting the job's shell where Torque would."""
    env = container_env(info, environ)
    assignments = " ".join(shlex.quote(f"{k}={v}") for k, v in sorted(env.items()))
    test = ""
    if check:
        exe = shlex.quote(shell)
        test = f"[ -f {exe} ] && [ -x {exe} ] || {{ printf '%s\\n' {shlex.quote(check)} >&2; exit 127; }}; "
    flag = " -l" if login and os.path.basename(shell) in LOGIN_FLAG_SHELLS else ""
    command = (f"cd {shlex.quote(cwd)} 2>/dev/null || cd; {test}"
               f"exec env -i {assignments} {shlex.quote(shell)}{flag}")
    return ssh_argv(info.alias, command, tty=True)


def exit_like(code: int) -> int:
    """Die of the same signal as the child did, so Torque records 256+N as it would."""
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return 128 - code
    return code


# ----------------------------------------------------------------------------- usage table
def job_aliases(environ: Mapping[str, str]) -> List[str]:
    try:
        lines = Path(environ["PBS_NODEFILE"]).read_text().split()
    except (KeyError, OSError):
        return []
    return list(dict.fromkeys(lines))


def print_usage(info: StarterInfo, environ: Mapping[str, str]) -> None:
    """The per-container usage table at the end of the job's .o (model=process, or verbose)."""
    from concurrent.futures import ThreadPoolExecutor
    from .usage import INSIDE, parse_inside, table

    def one(alias: str):
        try:
            out = subprocess.run(ssh_argv(alias, INSIDE), stdin=subprocess.DEVNULL, capture_output=True,
                                 text=True, timeout=20).stdout
        except subprocess.SubprocessError:
            return None
        return parse_inside(alias, out.strip())

    aliases = job_aliases(environ)
    if not aliases:
        return
    with ThreadPoolExecutor(max_workers=min(16, len(aliases))) as pool:
        rows = [r for r in pool.map(one, aliases) if r]
    if rows:
        sys.stdout.write(table(rows, info.jobid))
        sys.stdout.flush()

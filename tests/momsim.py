"""A pbs_mom simulator: runs the real hook executables exactly as Torque 6.1's pbs_mom would.

Used by the integration tests and the demo. Stdlib only; runs under Debian's /usr/bin/python3
(3.11) as root. Several simulated nodes share this one machine: each node is a directory
``<root>/<node>/`` that plays the part of that node's ``$PBS_HOME``.

Every behaviour below follows docs/torque-facts.md ("facts" in the comments: the
section is named) and, where that file is silent, Torque's src/resmom/prolog.c and
catch_child.c (run_pelog, check_pelog_permissions, setup_pelog_arguments,
setup_pelog_environment, get_child_exit_status, run_epilogues).  Where the simulator is not
faithful, a comment says so, starting with "NOT FAITHFUL".

Life of one ``Cluster.run(job)`` (facts: "Which scripts run, where, as whom, when"):

1. MS receives the job: ``mom_priv/jobs/<prefix>.JB`` and ``.SC`` (script, user, 0500).
2. Join: every sister runs ``prologue.parallel`` (root) then ``prologue.user.parallel``
   (user), and only then writes its ``.JB``; sisters run concurrently, MS waits for all.
   Any non-zero on a sister -> that node DOWN, the job is requeued, the other sisters purge
   without epilogues, the MS prologue never runs.
3. MS: nodefile ``aux/<jobid>`` (root, 0644), spool ``.OU``/``.ER`` opened, then
   ``prologue`` (root) and ``prologue.user`` (user), output appended to the spool files.
   Exit 1 -> aborted (C, -2, output NOT delivered); other failure -> requeued (Q, -3).
   Either way the sisters purge without epilogues and the MS epilogues still run.
4. The batch script: the user's login shell reading the script path from a pipe on stdin
   (or ``$job_starter`` with ``[starter, shell]``), as the user, own session, umask 077.
5. Sisters: ``epilogue.user.parallel`` then ``epilogue.parallel``; then MS: ``epilogue.user``
   then ``epilogue`` (catch_child.c run_epilogues: the user script first on both).
6. Output copied to ``<workdir>/<name>.o<seq>`` / ``.e<seq>`` (unless aborted by a prologue
   exit 1), spool files removed, nodefile and job files purged.

Job files are named after the job's FILE PREFIX, never its id (``file_prefix()``): the id
cut to 61 characters, changed by the server when that name is taken
(``stale_server_file()``); ``N-i.server`` for array subjob ``N[i].server``
(``new_array()``); a multi-mom node (``multi_mom={"node": port}``) appends its port.  The
``.JB`` is XML as Torque 6 writes it (``job_file_xml()``) and is rewritten through a
``.JC`` copy for as long as the job runs (``rewrite_interval``).

TM tasks (facts: "TM tasks through the job starter"; Torque's start_exec.c start_process and
become_the_jobs_subprocess): while a job's script runs, the mother superior listens for task
manager requests on 127.0.0.1 at the port the job sees as ``PBS_MOMPORT``.  ``pbsdsh_text()``
is a small ``pbsdsh`` (bash) a test puts where the job can run it; ``Cluster.spawn_task()`` does
the same from the test itself.  A task runs on the node of its vnode, as the user, in its own
session, with the job's environment plus PBS_TASKNUM / PBS_VNODENUM, in PBS_O_INITDIR or the
home, stdin /dev/null, stdout/stderr appended to the job's .o/.e, through that node's
``$job_starter`` as ``[starter, task argv...]``, looked up with execvp() on the job's PATH.

A requeued job is NOT started again (real Torque restarts it at once, forever: facts
"Exit codes"); ``JobResult.state == "Q"`` tells the caller it would be.

All simulated nodes share this machine's hostname: a hook that needs to know which node it
is on must get that from its node's pbs_environment (``pbs_environment_extra``), which a
real site can set the same way.  ``Cluster.addresses`` / ``ensure_hosts()`` give each node
name its own loopback address (127.0.1.10, ...).

Usage::

    c = Cluster(Path("/var/tmp/sim"), ["tdnode0", "tdnode1"], prologalarm=60,
                pbs_environment_extra={"tdnode1": {"TD_NODE": "tdnode1"}})
    c.install_hook("tdnode0", "prologue", Path("hooks/prologue"))
    r = c.run(Job(jobid=c.new_jobid(), user="tduser", script="#!/bin/bash\\nhostname\\n",
                  nodes=[("tdnode0", 2), ("tdnode1", 2)],
                  resources={"other": "image=x;model=node", "walltime": "00:05:00"}))
    r.state, r.exit_status, r.stdout, r.runs("prologue")[0].rc
"""

from __future__ import annotations

import concurrent.futures
import datetime as _dt
import grp
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

__all__ = [
    "Job",
    "HookRun",
    "JobResult",
    "Cluster",
    "ensure_hosts",
    "ensure_user",
    "node_addresses",
    "torque_num_nodes_ppn",
    "resource_list_string",
    "parse_walltime",
    "format_hms",
    "HOOK_NAMES",
]

# mom_priv script names (facts: the table "Which scripts run, where, as whom, when").
HOOK_NAMES = (
    "prologue",
    "prologue.user",
    "prologue.parallel",
    "prologue.user.parallel",
    "epilogue",
    "epilogue.user",
    "epilogue.parallel",
    "epilogue.user.parallel",
    "epilogue.precancel",
)

# Exit status codes mom reports (Torque's job.h JOB_EXEC_*).
JOB_EXEC_FAIL2 = -2        # start aborted, not requeued (MS prologue exit 1)
JOB_EXEC_RETRY = -3        # start failed, job requeued
JOB_EXEC_OVERLIMIT_WT = -11  # killed for exceeding walltime

KILL_DELAY = 2.0           # mom's default kill_delay between SIGTERM and SIGKILL
PELOG_GIVE_UP = 5.0        # get_child_exit_status(): alarm(5) after the SIGKILL, then -5
RESC_BUF = 2048            # prolog.c: char resc_list[2048]
POLL = 0.01

# Resources the server sends to mom (facts: "Arguments", resource list format).
RESOURCES_TO_MOM = (
    "nodes", "neednodes", "walltime", "cput", "pcput", "mem", "pmem", "vmem", "pvmem",
    "ncpus", "procs", "other", "gres", "taskspn", "prologue", "epilogue", "file", "nice",
    "size",
)
# Accepted by qsub but never reach mom or the scripts (facts: "How a job can ask").
RESOURCES_DROPPED = ("image", "software")

_HOSTS_BEGIN = "# BEGIN momsim simulated nodes (tests/momsim.py)"
_HOSTS_END = "# END momsim simulated nodes"


# --------------------------------------------------------------------------------------
# Data classes
# --------------------------------------------------------------------------------------

@dataclass
class Job:
    jobid: str                              # e.g. "101.simserver"
    user: str                               # non-root job user (must exist in /etc/passwd)
    script: str                             # text of the batch script
    nodes: list[tuple[str, int]]            # exec_host order [(node, ppn), ...]; first = MS
    resources: dict[str, str] = field(default_factory=dict)  # extra Resource_List entries
    name: str = "STDIN"
    queue: str = "batch"
    account: str = ""
    workdir: Optional[str] = None           # PBS_O_WORKDIR; default the user's home
    variables: dict[str, str] = field(default_factory=dict)  # qsub -v
    args: list[str] = field(default_factory=list)            # qsub -F
    kill_after: Optional[float] = None      # qdel after this many seconds of the script
    nodes_spec: Optional[str] = None        # nodes= as the user wrote it; default derived
    jobtype: Optional[str] = None           # qsub -T TYPE: prologue.TYPE tried first
    submit_host: Optional[str] = None       # PBS_O_HOST; default the server (jobid suffix)
    shell: Optional[str] = None             # qsub -S path_list ("path[@host],..."), see choose_shell
    interactive: Optional[str] = None       # qsub -I: what the user types into the terminal


@dataclass
class HookRun:
    node: str
    script: str              # hook name, e.g. "prologue.parallel"
    argv: list[str]          # full argv, argv[0] = script path (so argv[1] is $1)
    rc: Optional[int]        # what mom acts on: exit code, -1 bad permissions, -4 timeout,
                             # -5 unkillable, 255 exec failed, errno when stat failed
    elapsed: float
    timed_out: bool
    stdout: str
    stderr: str
    path: str = ""           # the file actually run (prologue.TYPE when -T matched)
    run_as: str = "root"
    signal: Optional[int] = None   # set when the script died of a signal (mom: rc 0!)
    message: str = ""        # mom's log message for a failure (pelog_err text)
    started: float = 0.0     # time.time() at start


@dataclass
class JobResult:
    state: str               # "C" completed/aborted, "Q" requeued
    exit_status: int         # as qstat -f shows
    delivered: bool          # were .o/.e copied to the workdir
    stdout: str              # delivered .o, or the spool .OU left behind
    stderr: str
    hook_runs: list[HookRun]
    down_nodes: list[str]
    spool_paths: tuple[Path, Path]
    output_paths: Optional[tuple[Path, Path]] = None   # delivered .o/.e paths
    session_id: int = 0
    resources_used: str = ""
    exec_host: str = ""
    log: list[str] = field(default_factory=list)   # mom-log-like event lines
    sim_timed_out: bool = False               # the simulator's own safety bound fired
    terminal: str = ""                        # qsub -I: what the user's terminal showed
    tasks: list = field(default_factory=list) # TaskRun of every TM task of the job

    def runs(self, script: str, node: Optional[str] = None) -> list[HookRun]:
        """The HookRuns of one script name (optionally on one node)."""
        return [h for h in self.hook_runs
                if h.script == script and (node is None or h.node == node)]


@dataclass
class TaskRun:
    """One TM task (pbsdsh, tm_spawn) and its obit."""
    node: str
    vnode: int
    tasknum: int
    argv: list
    status: Optional[int] = None   # exit code, 256+N for signal N (as the job's exit_status)
    pid: int = 0


@dataclass
class _Ctx:
    """Per-run state, what mom keeps in its job struct."""
    job: Job
    pw: pwd.struct_passwd
    group: str
    groups: list
    ms: str
    sisters: list
    nodes_spec: str
    resc_list: str
    np: int
    workdir: str
    server: str
    prefix: str = ""         # the job's file prefix (server's choice, see file_prefix())
    jobname: str = ""        # Job_Name as mom has it (an array subjob's carries "-<index>")
    exec_host: str = ""
    session_id: int = 0
    exit_status: int = 0
    resc_used: str = ""
    has_nodefile: bool = False
    substate: int = 40       # JOB_SUBSTATE_PRERUN until the batch script starts
    holding: set = field(default_factory=set)   # nodes whose mom holds the job (its .JB)
    files_lock: threading.Lock = field(default_factory=threading.Lock)
    log: list = field(default_factory=list)
    shell: str = "/bin/sh"          # what set_shell() chose on the MS
    cookie: str = ""                # PBS_JOBCOOKIE, one per job (TM requests must carry it)
    tm_port: int = 0                # PBS_MOMPORT: where the simulated mom takes TM requests
    task_seq: int = 1               # task ids: the job's shell is task 1
    tasks: list = field(default_factory=list)     # TaskRun
    sessions: set = field(default_factory=set)    # live session ids of the job (shell, tasks)
    termed: set = field(default_factory=set)      # pids that already got mom's one SIGTERM
    ending: bool = False
    terminal: str = ""              # qsub -I: what the terminal showed
    tm_server: Optional[socket.socket] = None


# --------------------------------------------------------------------------------------
# Pure helpers (unit tested)
# --------------------------------------------------------------------------------------

def _strtol(s: str) -> tuple[int, str]:
    """C strtol(s, &end, 10) for non-negative decimal: (value, rest). 0 when no digits."""
    i = 0
    while i < len(s) and s[i] in " \t":
        i += 1
    j = i
    if j < len(s) and s[j] in "+-":
        j += 1
    k = j
    while k < len(s) and s[k].isdigit():
        k += 1
    if k == j:
        return 0, s
    return int(s[i:k]), s[k:]


def torque_num_nodes_ppn(spec: str) -> tuple[int, int]:
    """PBS_NUM_NODES / PBS_NUM_PPN exactly as prolog.c setup_pelog_environment (and
    InitUserEnv) compute them from the nodes= string.  Quirks kept on purpose: a spec that
    starts with a host name ("nA:ppn=2+nB:ppn=1") gives num_nodes 0 and ppn 1; ppn is the
    first "ppn=" only."""
    num_nodes, _ = _strtol(spec)
    num_ppn = 1
    if num_nodes != 0:
        idx = spec.find("ppn=")
        if idx >= 0:
            num_ppn, _ = _strtol(spec[idx + 4:])
        rest = spec
        while True:
            p = rest.find("+")
            if p < 0:
                break
            rest = rest[p + 1:]
            n, rest = _strtol(rest)
            num_nodes += n
    return num_nodes, num_ppn


def derive_nodes_spec(nodes: list) -> str:
    """Default nodes= value: "2:ppn=4" when uniform, else "nA:ppn=2+nB:ppn=1"."""
    ppns = {p for _, p in nodes}
    if len(ppns) == 1:
        return f"{len(nodes)}:ppn={nodes[0][1]}"
    return "+".join(f"{n}:ppn={p}" for n, p in nodes)


def resource_list_string(entries: list, buflen: int = RESC_BUF) -> str:
    """prolog.c resc_to_string(): name=value joined by commas.  An entry that does not
    fit in what is left of the 2 KB buffer is skipped silently (facts "Arguments": "silently
    cut at about 2 KB")."""
    out = []
    for name, value in entries:
        need = len(name) + len(value) + 3
        if need >= buflen:
            continue
        if out:
            buflen -= 1
        out.append(f"{name}={value}")
        buflen -= need
    return ",".join(out)


# --------------------------------------------------------------------------------------
# Job file names and contents (facts: "GPUs and the job file"; Torque 6.1 source)
# --------------------------------------------------------------------------------------

PBS_JOBBASE = 61          # src/include/server_limits.h: a file prefix is at most 61 characters
JOB_FILE, JOB_FILE_COPY, JOB_SCRIPT, JOB_TASKS = ".JB", ".JC", ".SC", ".TK"   # pbs_job.h
PBS_QS_VERSION = 0x00020302                 # src/include/pbs_ifl.h, written as <version>
JOB_STATE_RUNNING, JOB_SUBSTATE_PRERUN, JOB_SUBSTATE_RUNNING = 4, 40, 42
JOB_UNION_TYPE_MOM = 3


def array_parts(jobid: str) -> Optional[tuple[str, int, str]]:
    """``52[1].vm`` -> ("52", 1, "vm"); None for a job that is not an array subjob."""
    head, dot, host = jobid.partition(".")
    if not head.endswith("]") or "[" not in head:
        return None
    seq, index = head[:-1].split("[", 1)
    if not seq.isdigit() or not index.isdigit():
        return None
    return seq, int(index), host if dot else ""


def _bump(prefix: str) -> str:
    """determine_job_file_name(): ``(*pc)++`` on the last printable character, where
    pc walks back over characters that are not printable (a bumped '~' becomes DEL)."""
    chars = list(prefix)
    i = len(chars) - 1
    while i > 0 and not (32 <= ord(chars[i]) < 127):
        i -= 1
    if i <= 0 and not (32 <= ord(chars[0]) < 127):
        raise ValueError(f"job file {prefix!r} corrupt (PBSE_JOB_FILE_CORRUPT)")
    chars[i] = chr(ord(chars[i]) + 1)
    return "".join(chars)


def file_prefix(jobid: str, taken) -> str:
    """The job's file prefix as the server makes it; ``taken`` holds the names already in
    server_priv/jobs.  A job: its id cut to 61 characters, bumped while taken
    (src/server/req_quejob.c determine_job_file_name).  An array subjob ``N[i].host``:
    ``N-i.host`` cut to 61, never bumped: when taken the server does not create the
    subjob (src/server/job_func.c job_clone returns 1), and neither do we."""
    parts = array_parts(jobid)
    if parts is not None:
        seq, index, host = parts
        prefix = (f"{seq}-{index}.{host}" if host else f"{seq}-{index}")[:PBS_JOBBASE]
        if prefix in taken:
            raise ValueError(f"the server would not create subjob {jobid}: {prefix}.JB exists")
        return prefix
    prefix = jobid[:PBS_JOBBASE]
    while prefix in taken:
        prefix = _bump(prefix)
    return prefix


def default_output_name(name: str, jobid: str, key: str) -> str:
    """``STDIN.o52`` / ``STDIN.o52-1`` (src/server/svr_jobfunc.c default_std), built from the
    array's name: job_clone then appends ``-<index>`` to the job name and both paths."""
    seq = str(int("0" + "".join(ch for ch in jobid.split(".", 1)[0].split("[", 1)[0] if ch.isdigit())))
    parts = array_parts(jobid)
    return f"{name}.{key}{seq}" + (f"-{parts[1]}" if parts else "")


def _xml_text(value: str) -> str:
    """Element text with ``& < >`` as entities, control characters as character references
    (which XML 1.0 parsers refuse: the reader must not care).

    NOT FAITHFUL: saveJobToXML hands values to libxml2's xmlNewChild, which reads them as
    XML: ``&name;`` is written back verbatim (markup between ``&`` and ``;`` included), an
    unterminated ``&`` or a character reference libxml2 refuses empties the whole value
    (measured with libxml2 2.9). Here every ``&`` is escaped; tests/unit/test_momjobs.py
    reads files with such verbatim markup."""
    out = []
    for ch in str(value):
        if ch == "&":
            out.append("&amp;")
        elif ch == "<":
            out.append("&lt;")
        elif ch == ">":
            out.append("&gt;")
        elif ord(ch) < 32 and ch not in "\t\n":
            out.append(f"&#{ord(ch)};")
        else:
            out.append(ch)
    return "".join(out)


def job_file_xml(jobid: str, prefix: str, *, substate: int, user: str, group: str, uid: int, gid: int,
                 jobname: str, queue: str, server: str, exec_host: str, resources: list,
                 variables: dict, nodeid: int, mtime: int) -> str:
    """A .JB as pbs_mom 6.1 writes it: src/server/job_recov.c saveJobToXML (built into
    pbs_mom): add_fix_fields, add_union_fields (the MOM record type), add_attributes,
    add_mom_fields; xmlSaveFormatFileEnc indents by two spaces."""
    fix = [("version", PBS_QS_VERSION), ("state", JOB_STATE_RUNNING), ("substate", substate),
           ("server_flags", 0), ("start_time", mtime), ("jobid", jobid), ("fileprefix", prefix),
           ("queue", queue), ("destination_queue", ""), ("record_type", JOB_UNION_TYPE_MOM),
           ("svr_addr", 2130706433), ("exit_status", 0), ("execution_uid", uid), ("execution_gid", gid)]
    lines = ['<?xml version="1.0"?>', "<job>"]
    for tag, value in fix:
        lines.append(f"  <{tag}>{_xml_text(value)}</{tag}>" if value != "" else f"  <{tag}/>")
    lines.append("  <attributes>")
    attributes = [("Job_Name", jobname), ("Job_Owner", f"{user}@{server}"), ("job_state", "R"),
                  ("queue", queue), ("server", server), ("exec_host", exec_host), ("mtime", mtime),
                  ("euser", user), ("egroup", group), ("hashname", prefix)]
    parts = array_parts(jobid)
    if parts:
        attributes.append(("job_array_id", parts[1]))
    for tag, value in attributes:
        lines.append(f'    <{tag} flags="1">{_xml_text(value)}</{tag}>')
    lines.append("    <Resource_List>")
    for name, value in resources:
        lines.append(f'      <{name} flags="1">{_xml_text(value)}</{name}>')
    lines.append("    </Resource_List>")
    listed = ",".join(f"{k}={v}" for k, v in variables.items())
    lines.append(f'    <Variable_List flags="1">{_xml_text(listed)}</Variable_List>')
    lines.append("  </attributes>")
    for tag, value in (("socket_stdout", -1), ("socket_stderr", -1), ("taskid", 1), ("nodeid", nodeid)):
        lines.append(f"  <{tag}>{value}</{tag}>")
    lines.append("</job>")
    return "\n".join(lines) + "\n"


def parse_walltime(value: str) -> int:
    """Torque time value -> seconds: "SS", "MM:SS", "HH:MM:SS" (fractions ignored)."""
    parts = value.strip().split(":")
    if not 1 <= len(parts) <= 3 or not all(p.split(".")[0].isdigit() for p in parts):
        raise ValueError(f"bad time value {value!r}")
    secs = 0
    for p in parts:
        secs = secs * 60 + int(p.split(".")[0])
    return secs


def choose_shell(path_list: Optional[str], login_shell: str, node: str) -> str:
    """The shell pbs_mom runs the job with (src/resmom/linux/mom_start.c set_shell()): the
    login shell, unless qsub -S gave a list "path[@host],...": an entry for this host wins
    at once; an entry without a host is taken but a later one may replace it."""
    shell = login_shell
    for entry in (path_list or "").split(","):
        if not entry:
            continue
        path, at, host = entry.partition("@")
        if at:
            if node.startswith(host):      # strncmp(mom_host, host, strlen(host))
                return path
        else:
            shell = path
    return shell


def setbool(value: str) -> Optional[bool]:
    """mom_priv/config booleans (src/resmom/parse_config.c setbool()); None: not understood."""
    v = value.strip()
    if v[:1] in ("t", "T", "y", "Y", "1"):
        return True
    if v[:1] in ("f", "F", "n", "N", "0"):
        return False
    if v.lower() == "on":
        return True
    if v.lower() == "off":
        return False
    return None


def format_hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def node_addresses(node_names: list, base: str = "127.0.1.", start: int = 10) -> dict:
    """Default address plan for simulated nodes: tdnode0 -> 127.0.1.10, ..."""
    return {n: f"{base}{start + i}" for i, n in enumerate(node_names)}


def ensure_hosts(mapping: dict, hosts_file: str | Path = "/etc/hosts") -> None:
    """Idempotently put "ADDRESS NAME" lines for simulated nodes into a marked block of
    /etc/hosts so the names resolve like a real cluster's nodes.  Entries already in the
    block are kept (merged, new address wins).  The file is rewritten in place (not
    renamed): in a container /etc/hosts is usually a bind mount."""
    path = Path(hosts_file)
    text = path.read_text() if path.exists() else ""
    lines = text.splitlines()
    before, block, after = [], {}, []
    state = 0
    for line in lines:
        if state == 0 and line.strip() == _HOSTS_BEGIN:
            state = 1
            continue
        if state == 1 and line.strip() == _HOSTS_END:
            state = 2
            continue
        if state == 1:
            f = line.split()
            if len(f) >= 2 and not f[0].startswith("#"):
                for name in f[1:]:
                    block[name] = f[0]
        elif state == 0:
            before.append(line)
        else:
            after.append(line)
    block.update(mapping)
    new_block = [_HOSTS_BEGIN] + [f"{addr} {name}" for name, addr in sorted(block.items())]
    new_block.append(_HOSTS_END)
    new_text = "\n".join(before + new_block + after) + "\n"
    if new_text != text:
        with open(path, "r+" if path.exists() else "w") as fh:
            fh.seek(0)
            fh.write(new_text)
            fh.truncate()


PBSDSH = r"""#!/bin/bash
# pbsdsh of the pbs_mom simulator (tests/momsim.py): asks the job's mother superior, at
# 127.0.0.1:$PBS_MOMPORT with the job's cookie (as tm_init() does), to spawn PROGRAM as a TM
# task on every vnode of the job, on vnode N (-n N), on the first N (-c N), or once per
# distinct name in $PBS_NODEFILE (-u). As Torque's pbsdsh: the tasks' output goes to the job's
# .o/.e, each task that ends non-zero is reported on stderr, and pbsdsh itself exits 0.
# NOT FAITHFUL: -e, -E, -o, -h, -s and -v are not supported; no reconnect.
id="pbsdsh()"
vnodes=all
while getopts "c:n:u" opt; do
    case $opt in
        c) vnodes=$(seq -s ' ' 0 $((OPTARG - 1))) ;;
        n) vnodes=$OPTARG ;;
        u) vnodes=$(awk '!seen[$0]++ {printf "%d ", NR - 1}' "$PBS_NODEFILE") ;;
        *) echo "usage: pbsdsh [-c copies|-n node|-u] program [args]..." >&2; exit 1 ;;
    esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || { echo "usage: pbsdsh [-c copies|-n node|-u] program [args]..." >&2; exit 1; }
[ -n "$PBS_ENVIRONMENT" ] || { echo "$id: not executing under PBS" >&2; exit 1; }
exec 3<>"/dev/tcp/127.0.0.1/$PBS_MOMPORT" || { echo "$id: tm_init failed" >&2; exit 1; }
{
    echo "cookie $PBS_JOBCOOKIE"
    echo "vnodes $vnodes"
    for a in "$@"; do printf 'arg %s
' "$(printf %s "$a" | base64 -w0)"; done
    echo end
} >&3
while read -r kw a b <&3; do
    case $kw in
        task) [ "$b" = 0 ] || echo "$id: task $a exit status $b" >&2 ;;
        error) echo "$id: $a $b" >&2; exit 1 ;;
        done) exit 0 ;;
    esac
done
echo "$id: lost the connection to mom" >&2
exit 2
"""


def pbsdsh_text() -> str:
    """The simulator's pbsdsh (bash): put it where the job can run it, e.g. its workdir."""
    return PBSDSH


def ensure_user(name: str = "tduser", uid: int = 2001, home: str | None = None,
                shell: str = "/bin/bash") -> pwd.struct_passwd:
    """Create a job user (useradd -m) if missing; return its passwd entry."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    home = home or f"/home/{name}"
    subprocess.run(["useradd", "-m", "-u", str(uid), "-d", home, "-s", shell, name],
                   check=True, timeout=60, stdin=subprocess.DEVNULL)
    os.chmod(home, 0o755)
    return pwd.getpwnam(name)


# --------------------------------------------------------------------------------------
# Process helpers
# --------------------------------------------------------------------------------------

def _proc_stat(pid: int) -> Optional[tuple[str, int]]:
    """(state, session id) of a process from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read().decode("ascii", "replace")
    except OSError:
        return None
    rest = data[data.rfind(")") + 2:].split()
    try:
        return rest[0], int(rest[3])
    except (IndexError, ValueError):
        return None


def session_pids(sid: int) -> list[int]:
    """Live (non-zombie) processes of a session, as mom's pelogalm()/kill_job() find
    them: by scanning /proc."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        st = _proc_stat(int(entry))
        if st and st[1] == sid and st[0] != "Z":
            out.append(int(entry))
    return out


def kill_session(sid: int, sig: int) -> int:
    """Send sig to every process of the session (prolog.c pelogalm(); kill_job()).
    Processes that left the session (setsid, or started through dockerd) are NOT hit, as
    on a real node (facts: "Timeout")."""
    n = 0
    for pid in session_pids(sid):
        try:
            os.kill(pid, sig)
            n += 1
        except (ProcessLookupError, PermissionError):
            pass
    try:
        os.killpg(sid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    return n


def signal_job(sids, sig: int, termed: set) -> None:
    """mom's kill_job()/kill_task() (src/resmom/linux/mom_mach.c) for a job's sessions: every
    live process of each session is found in /proc.  SIGTERM goes out ONCE per process, as
    killpg(pid) (a process that leads no group gets nothing of its own: its group leader's
    signal reached it); any other signal goes to each process with kill()."""
    for sid in list(sids):
        for pid in session_pids(sid):
            try:
                if sig == signal.SIGTERM:
                    if pid in termed:
                        continue
                    termed.add(pid)
                    os.killpg(pid, sig)
                else:
                    os.kill(pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def _reap_later(pid: int) -> None:
    def waiter():
        try:
            os.waitpid(pid, 0)
        except ChildProcessError:
            pass
    threading.Thread(target=waiter, daemon=True).start()


_LIBC = None


def _job_child(tty: bool = False, execvp: Optional[list] = None, env: Optional[dict] = None,
               name: str = ""):
    """What pbs_mom's child does after fork, before the job runs (runs in the child).

    Signals: mom ignores SIGPIPE (mom_main.c) and fork_me() resets only CHLD, HUP, INT and
    TERM to default, so every job process starts with SIGPIPE ignored; the rest default
    (subprocess's restore_signals already undid Python's SIGPIPE/SIGXFSZ settings).
    tty: make stdin the controlling terminal (qsub -I's pty).  execvp: exec it here with
    the C library's execvp() (a TM task, become_the_jobs_subprocess())."""
    import ctypes
    global _LIBC
    if execvp is not None and _LIBC is None:
        _LIBC = ctypes.CDLL(None, use_errno=True)
    if execvp is not None:
        args = (ctypes.c_char_p * (len(execvp) + 1))(
            *[a.encode("utf-8", "surrogateescape") for a in execvp], None)
        _LIBC.execvp.argtypes = [ctypes.c_char_p, ctypes.c_void_p]

    def child() -> None:
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        if tty:
            import fcntl
            import termios
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        if execvp is not None:
            # subprocess applies close_fds only after preexec_fn returns, and this one never
            # returns: close them here. Otherwise every descriptor this process holds without
            # close-on-exec (whatever started pytest handed it) reaches the task: none of
            # them is pbs_mom's, a daemon that hands a task its stdin, stdout and stderr.
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            # environ = the task's (start_exec.c: environ = vtable.v_envp), then execvp():
            # the C library searches the PATH of that environment.
            os.environ.clear()
            os.environ.update(env or {})
            _LIBC.execvp(args[0], args)
            err = ctypes.get_errno()
            os.write(2, f"PBS: {name}: {os.strerror(err)}\n".encode())
            os._exit(254)
    return child


def _drain(fd: int, timeout: Optional[float], raw: bool = False):
    """Read what is waiting on a pty master (bounded by timeout; None: until EOF/EIO)."""
    import select
    out = bytearray()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        wait = 0.5 if deadline is None else max(0.0, deadline - time.monotonic())
        ready, _, _ = select.select([fd], [], [], wait)
        if not ready:
            if deadline is None or time.monotonic() >= deadline:
                break
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:          # EIO: the slave side is closed
            break
        if not data:
            break
        out += data
        if deadline is not None and time.monotonic() >= deadline:
            break
    return bytes(out) if raw else out.decode("utf-8", "replace")


def _wait4_nohang(pid: int):
    try:
        wpid, status, ru = os.wait4(pid, os.WNOHANG)
    except ChildProcessError:
        return True, None, None
    if wpid == 0:
        return False, None, None
    return True, status, ru


# --------------------------------------------------------------------------------------
# The cluster
# --------------------------------------------------------------------------------------

class Cluster:
    """Simulated Torque nodes on this machine, each with its own $PBS_HOME."""

    def __init__(self, root: Path, node_names: list[str], *, prologalarm: int = 300,
                 job_starter: str | None = None,
                 pbs_environment_extra: dict[str, dict[str, str]] | None = None,
                 server: str = "simserver",
                 max_job_seconds: float = 600.0,
                 multi_mom: dict[str, int] | None = None,
                 tmpdir: bool = False,
                 rewrite_interval: float = 0.02) -> None:
        if os.geteuid() != 0:
            raise PermissionError("the mom simulator must run as root (like pbs_mom)")
        if len(set(node_names)) != len(node_names) or not node_names:
            raise ValueError("node names must be unique and non-empty")
        self.root = Path(root).absolute()
        self.node_names = list(node_names)
        self.server = server
        self.max_job_seconds = max_job_seconds  # simulator's own bound on a batch script
        self.addresses = node_addresses(self.node_names)
        self._jobseq = 100
        self._lock = threading.Lock()
        # pbs_mom -m: the node's files carry its port (pbs_rm_port) after the prefix.
        self.multi_mom = dict(multi_mom or {})
        # mom_priv/config $tmpdir: each node's is <root>/tmpdir-<node> (1777: TMakeTmpDir
        # creates the job's directory as the job's user).
        self.tmpdir = tmpdir
        # How often a running job's .JB is rewritten (0: never).  NOT FAITHFUL (on
        # purpose): pbs_mom rewrites it on every change of the job (src/resmom/mom_comm.c,
        # requests.c, start_exec.c call job_save), far less often than this; and the
        # simulator pauses inside the write and between unlink and link, so a reader that
        # trips on a half-written .JC or on the moment without a .JB is caught by tests.
        self.rewrite_interval = rewrite_interval
        self.server_files: set[str] = set()    # names in server_priv/jobs (file prefixes)
        self._prefixes: dict[str, str] = {}    # job id -> its file prefix
        self._held: dict[str, set[str]] = {n: set() for n in node_names}
        self._running: dict = {}               # jobid -> _Ctx while its script runs (TM)
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)
        # Every directory from / down must be traversable by the job user (user scripts,
        # the .SC under mom_priv/jobs).  We only chmod what we own (the root); an ancestor
        # without o+x (e.g. pytest's 0700 tmp dirs) is an error: use /var/tmp.
        for anc in self.root.parents:
            if not os.stat(anc).st_mode & stat.S_IXOTH:
                raise ValueError(f"{anc} is not traversable by other users (mode "
                                 f"{oct(os.stat(anc).st_mode & 0o7777)}); put the "
                                 f"simulator root elsewhere, e.g. under /var/tmp")
        extra = pbs_environment_extra or {}
        for node in self.node_names:
            self._make_node(node, prologalarm, job_starter, extra.get(node, {}))

    # ---- layout ---------------------------------------------------------------------

    def _make_node(self, node: str, prologalarm: int, job_starter: str | None,
                   env_extra: dict) -> None:
        home = self.pbs_home(node)
        # Modes as a Torque install makes them: mom_priv and jobs 0751, spool and
        # undelivered 1777, aux 0755.
        for sub, mode in (("", 0o755), ("mom_priv", 0o751), ("mom_priv/jobs", 0o751),
                          ("aux", 0o755), ("spool", 0o1777), ("undelivered", 0o1777),
                          ("mom_logs", 0o755)):
            d = home / sub if sub else home
            d.mkdir(parents=True, exist_ok=True)
            os.chown(d, 0, 0)
            os.chmod(d, mode)
        cfg = [f"$pbsserver {self.server}", f"$prologalarm {int(prologalarm)}"]
        if job_starter:
            cfg.append(f"$job_starter {job_starter}")
        self._write_root_file(home / "mom_priv" / "config", "\n".join(cfg) + "\n", 0o644)
        env_lines = ["PATH=/bin:/usr/bin"] + [f"{k}={v}" for k, v in env_extra.items()]
        self._write_root_file(home / "pbs_environment", "\n".join(env_lines) + "\n", 0o644)

    @staticmethod
    def _write_root_file(path: Path, text: str, mode: int) -> None:
        path.write_text(text)
        os.chown(path, 0, 0)
        os.chmod(path, mode)

    def pbs_home(self, node: str) -> Path:
        return self.root / node

    def mom_priv(self, node: str) -> Path:
        return self.pbs_home(node) / "mom_priv"

    def nodefile(self, node: str, jobid: str) -> Path:
        return self.pbs_home(node) / "aux" / jobid

    def file_prefix(self, jobid: str) -> str:
        """The job's file prefix, chosen by the server when the job is created (new_jobid,
        new_array) or, for a job id made elsewhere, when it is first run."""
        with self._lock:
            if jobid not in self._prefixes:
                prefix = file_prefix(jobid, self.server_files)
                self.server_files.add(prefix)
                self._prefixes[jobid] = prefix
            return self._prefixes[jobid]

    def stale_server_file(self, prefix: str) -> None:
        """A file of that name is left in server_priv/jobs: the next job whose id (cut to 61
        characters) is that name gets another prefix (file_prefix())."""
        with self._lock:
            self.server_files.add(prefix)

    def job_file(self, node: str, jobid: str, suffix: str = JOB_FILE) -> Path:
        """``mom_priv/jobs/<prefix>[<port>]<suffix>`` (src/server/job_recov.c job_save,
        src/resmom/mom_req_quejob.c for the .SC, mom_comm.c for the .TK)."""
        port = self.multi_mom.get(node)
        return self.mom_priv(node) / "jobs" / f"{self.file_prefix(jobid)}{port or ''}{suffix}"

    def mom_knows(self, node: str, jobid: str) -> bool:
        """Does this node's mom hold the job (from its arrival to its purge)?  Asked of the
        simulator's memory: while pbs_mom rewrites the .JB there are moments without one."""
        with self._lock:
            return jobid in self._held[node]

    def hooks_log(self, node: str) -> Path:
        return self.pbs_home(node) / "mom_logs" / "hooks.log"

    def read_config(self, node: str) -> dict:
        """mom_priv/config of a node, re-read on every run (like a HUP'd mom), so a test
        may edit it.  Returns {"prologalarm": int, "job_starter": str|None,
        "job_starter_run_privileged": bool, "source_login_batch": bool,
        "source_login_interactive": bool} with pbs_mom's defaults (parse_config.c)."""
        out = {"prologalarm": 300, "job_starter": None, "job_starter_run_privileged": False,
               "source_login_batch": True, "source_login_interactive": True}
        try:
            text = (self.mom_priv(node) / "config").read_text()
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            f = line.split(None, 1)
            if len(f) == 2 and f[0] == "$prologalarm":
                out["prologalarm"] = int(f[1].strip())
            elif len(f) == 2 and f[0] == "$job_starter":
                out["job_starter"] = f[1].strip()
            elif len(f) == 2 and f[0][1:] in ("job_starter_run_privileged", "source_login_batch",
                                              "source_login_interactive") and f[0][0] == "$":
                value = setbool(f[1])
                if value is not None:       # mom ignores what setbool() does not understand
                    out[f[0][1:]] = value
        return out

    def pbs_environment(self, node: str) -> dict:
        """The node's pbs_environment as mom loads it: VAR=VALUE lines."""
        env = {}
        try:
            text = (self.pbs_home(node) / "pbs_environment").read_text()
        except FileNotFoundError:
            return env
        for line in text.splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                k, v = line.split("=", 1)
                env[k.strip()] = v
        return env

    def install_hook(self, node: str, name: str, source: Path, *, mode: int = 0o500,
                     uid: int = 0, symlink: bool = False) -> Path:
        """Put a script into a node's mom_priv.  Copied (owner uid, group 0, mode), or
        with symlink=True a symlink to source (then source's own owner/mode count: mom
        stat()s, following the link)."""
        if "/" in name or name in ("", ".", ".."):
            raise ValueError(f"bad hook name {name!r}")
        dest = self.mom_priv(node) / name
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        source = Path(source)
        if symlink:
            dest.symlink_to(source.absolute())
        else:
            dest.write_bytes(source.read_bytes())
            os.chown(dest, uid, 0)
            os.chmod(dest, mode)
        return dest

    def remove_hook(self, node: str, name: str) -> None:
        dest = self.mom_priv(node) / name
        if dest.is_symlink() or dest.exists():
            dest.unlink()

    def new_jobid(self, server: Optional[str] = None) -> str:
        """qsub: the next ``N.server`` (``server`` may be longer, e.g. a domain name)."""
        with self._lock:
            self._jobseq += 1
            jobid = f"{self._jobseq}.{server or self.server}"
        self.file_prefix(jobid)
        return jobid

    @property
    def next_sequence(self) -> int:
        """The sequence number the next new_jobid() or new_array() will use."""
        with self._lock:
            return self._jobseq + 1

    def new_array(self, indices, server: Optional[str] = None) -> list[str]:
        """qsub -t: the subjob ids ``N[i].server`` of one new array, in the order given."""
        indices = [int(i) for i in indices]
        if not indices or len(set(indices)) != len(indices) or min(indices) < 0:
            raise ValueError("array indices must be distinct and >= 0")
        with self._lock:
            self._jobseq += 1
            seq = self._jobseq
        jobids = [f"{seq}[{i}].{server or self.server}" for i in indices]
        for jobid in jobids:
            self.file_prefix(jobid)
        return jobids

    # ---- one job --------------------------------------------------------------------

    def _context(self, job: Job) -> _Ctx:
        if not job.nodes:
            raise ValueError("job.nodes is empty")
        nodes = [(str(n), int(p)) for n, p in job.nodes]
        names = [n for n, _ in nodes]
        if len(set(names)) != len(names):
            raise ValueError("a node may appear only once in job.nodes")
        for n, p in nodes:
            if n not in self.node_names:
                raise ValueError(f"unknown node {n!r}")
            if p < 1:
                raise ValueError(f"ppn must be >= 1 ({n})")
        job.nodes = nodes
        pw = pwd.getpwnam(job.user)
        if pw.pw_uid == 0:
            raise ValueError("Torque refuses jobs of root (acl_roots): use a normal user")
        spec = job.nodes_spec or derive_nodes_spec(nodes)
        entries = [("nodes", spec)]
        extra = []
        for k, v in job.resources.items():
            k, v = str(k), str(v)
            if k in ("nodes", "neednodes"):
                raise ValueError("give nodes via Job.nodes / Job.nodes_spec")
            if k in RESOURCES_DROPPED:
                continue  # accepted by qsub, never reaches mom (facts)
            if k not in RESOURCES_TO_MOM:
                # facts: qsub -l rejects unknown resource names.
                raise ValueError(f"qsub: submit error (Unknown resource type  "
                                 f"Resource_List.{k})")
            if "," in v:
                # facts: a comma splits the resource list (qsub would read a new resource).
                raise ValueError(f"resource {k}={v!r}: commas split -l values")
            extra.append((k, v))
        # Order like the facts' real example: nodes, walltime, neednodes, the rest.
        # Facts: "order not guaranteed" - hooks must not rely on it.
        entries += [e for e in extra if e[0] == "walltime"]
        entries.append(("neednodes", spec))
        entries += [e for e in extra if e[0] != "walltime"]
        return _Ctx(
            job=job, pw=pw,
            group=grp.getgrgid(pw.pw_gid).gr_name,
            groups=os.getgrouplist(pw.pw_name, pw.pw_gid),
            ms=nodes[0][0], sisters=[n for n, _ in nodes[1:]],
            nodes_spec=spec,
            resc_list=resource_list_string(entries),
            np=sum(p for _, p in nodes),
            workdir=job.workdir or pw.pw_dir,
            server=job.jobid.split(".", 1)[1] if "." in job.jobid else self.server,
            prefix=self.file_prefix(job.jobid),
            # job_clone (src/server/job_func.c) names a subjob "<name>-<index>".
            jobname=f"{job.name}-{array_parts(job.jobid)[1]}" if array_parts(job.jobid) else job.name,
            exec_host="+".join(f"{n}/0-{p - 1}" if p > 1 else f"{n}/0" for n, p in nodes),
            shell=choose_shell(job.shell, pw.pw_shell or "/bin/sh", nodes[0][0]),
            cookie=secrets.token_hex(16).upper(),
        )

    def _log(self, ctx: _Ctx, node: str, text: str) -> None:
        line = f"{_dt.datetime.now().strftime('%m/%d/%Y %H:%M:%S.%f')[:-3]};{node};" \
               f"{ctx.job.jobid};{text}"
        ctx.log.append(line)
        try:
            with open(self.pbs_home(node) / "mom_logs" / "momsim.log", "a") as fh:
                fh.write(line + "\n")
        except OSError:
            pass

    def spool_paths(self, jobid: str, node: str | None = None) -> tuple[Path, Path]:
        """``spool/<prefix>.OU`` / ``.ER`` (src/resmom/start_exec.c std_file_name: no port)."""
        spool = self.pbs_home(node or self.node_names[0]) / "spool"
        prefix = self.file_prefix(jobid)
        return spool / f"{prefix}.OU", spool / f"{prefix}.ER"

    def _open_std_files(self, ctx: _Ctx) -> None:
        """Create the job's spool .OU/.ER (owned by the user, 0600), as open_std_file()."""
        for p in self.spool_paths(ctx.job.jobid, ctx.ms):
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            os.fchown(fd, ctx.pw.pw_uid, ctx.pw.pw_gid)
            os.close(fd)

    def _variables(self, ctx: _Ctx) -> dict:
        """The job's Variable_List as pbs_mom holds it: qsub's PBS_O_* first, then the job's
        -v variables in order (and an array subjob's PBS_ARRAYID)."""
        j = ctx.job
        variables = {"PBS_O_QUEUE": j.queue, "PBS_O_HOME": ctx.pw.pw_dir, "PBS_O_WORKDIR": ctx.workdir,
                     "PBS_O_HOST": j.submit_host or ctx.server, "PBS_O_SERVER": ctx.server}
        variables.update({str(k): str(v) for k, v in j.variables.items()})
        parts = array_parts(j.jobid)
        if parts:
            variables["PBS_ARRAYID"] = str(parts[1])
        return variables

    def _job_envvar(self, ctx: _Ctx, prefix: str) -> Optional[str]:
        """requests.c get_job_envvar(): the FIRST Variable_List entry (``NAME=value``) that
        merely starts with ``prefix`` (attr_fn_arst.c arst_string: strncmp of the prefix's
        length), its text after the first '='. So BEOWULF_JOB_MAPX=... counts as BEOWULF_JOB_MAP."""
        for name, value in self._variables(ctx).items():
            entry = f"{name}={value}"
            if entry.startswith(prefix):
                return entry.split("=", 1)[1]
        return None

    def _job_save(self, ctx: _Ctx, node: str, pause: float = 0.0) -> None:
        """job_save() (src/server/job_recov.c): the new XML into ``<prefix>.JC``, unlink the
        ``.JB``, link the ``.JC`` to it, unlink the ``.JC``.  Root, 0644 (facts)."""
        j = ctx.job
        variables = self._variables(ctx)
        text = job_file_xml(
            j.jobid, ctx.prefix, substate=ctx.substate, user=ctx.pw.pw_name, group=ctx.group,
            uid=ctx.pw.pw_uid, gid=ctx.pw.pw_gid, jobname=ctx.jobname, queue=j.queue, server=ctx.server,
            exec_host=ctx.exec_host, resources=[tuple(e.split("=", 1)) for e in ctx.resc_list.split(",") if "=" in e],
            variables=variables, nodeid=0 if node == ctx.ms else ctx.sisters.index(node) + 1,
            mtime=int(time.time())).encode()
        jb, jc = self.job_file(node, j.jobid), self.job_file(node, j.jobid, JOB_FILE_COPY)
        fd = os.open(jc, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.fchmod(fd, 0o644)
            half = len(text) // 2
            os.write(fd, text[:half])
            if pause:
                time.sleep(pause)
            os.write(fd, text[half:])
        finally:
            os.close(fd)
        try:
            os.unlink(jb)
        except FileNotFoundError:
            pass
        if pause:
            time.sleep(pause)
        os.link(jc, jb)
        os.unlink(jc)

    def _hold(self, ctx: _Ctx, node: str) -> None:
        """The job arrives on a node's mom: its .JB appears and is kept up to date."""
        with ctx.files_lock:
            self._job_save(ctx, node)
            ctx.holding.add(node)
        with self._lock:
            self._held[node].add(ctx.job.jobid)

    def _rewrite_while_held(self, ctx: _Ctx, stop: threading.Event) -> None:
        """Keep rewriting the job's .JB on every node holding it (see rewrite_interval)."""
        while not stop.wait(self.rewrite_interval):
            with ctx.files_lock:
                for node in sorted(ctx.holding):
                    self._job_save(ctx, node, pause=0.002)

    def job_tmpdir(self, node: str, jobid: str) -> Optional[Path]:
        """TTmpDirName (src/resmom/start_exec.c): "$tmpdir/<jobid>" when mom has $tmpdir."""
        return self.root / f"tmpdir-{node}" / jobid if self.tmpdir else None

    def _make_tmpdir(self, ctx: _Ctx, node: str) -> None:
        """TMakeTmpDir (src/resmom/start_exec.c): as the job's user, mkdirtree(dir, 0755);
        on the MS in start_exec before the join, on a sister when it joins (mom_comm.c),
        both before any prologue."""
        path = self.job_tmpdir(node, ctx.job.jobid)
        if path is None:
            return
        path.parent.mkdir(exist_ok=True)
        os.chmod(path.parent, 0o1777)
        path.mkdir(mode=0o755, exist_ok=True)
        os.chown(path, ctx.pw.pw_uid, ctx.pw.pw_gid)
        os.chmod(path, 0o755)

    def _purge(self, ctx: _Ctx, node: str) -> None:
        """mom_job_purge (src/resmom/mom_job_func.c): nodefile, .SC, .TK, then the .JB;
        the job's $tmpdir directory goes too (MOM_HAS_TMPDIR). Spool files are not touched here."""
        path = self.job_tmpdir(node, ctx.job.jobid)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)
        if node == ctx.ms:
            self.gpufile(ctx.job.jobid, node).unlink(missing_ok=True)   # mom_job_func.c: <jobid>gpu
        with ctx.files_lock:
            ctx.holding.discard(node)
            paths = [self.nodefile(node, ctx.job.jobid)] + [
                self.job_file(node, ctx.job.jobid, suffix)
                for suffix in (JOB_SCRIPT, JOB_TASKS, JOB_FILE_COPY, JOB_FILE)]
            for path in paths:
                try:
                    path.unlink()
                except FileNotFoundError:
                    pass
        with self._lock:
            self._held[node].discard(ctx.job.jobid)
        self._log(ctx, node, "job purged")

    def run(self, job: Job) -> JobResult:
        ctx = self._context(job)
        stop = threading.Event()
        rewriter = threading.Thread(target=self._rewrite_while_held, args=(ctx, stop), daemon=True)
        if self.rewrite_interval > 0:
            rewriter.start()
        try:
            return self._run(ctx)
        finally:
            stop.set()
            if rewriter.is_alive():
                rewriter.join()
            # The server purges the job; its file name is free again.
            with self._lock:
                self.server_files.discard(ctx.prefix)

    def _run(self, ctx: _Ctx) -> JobResult:
        job = ctx.job
        jobid = job.jobid
        ms = ctx.ms
        runs: list[HookRun] = []
        down: list[str] = []
        ou, er = self.spool_paths(jobid, ms)
        exec_host = ctx.exec_host
        sim_timed_out = False

        # 1. MS receives the job: .JB and the script .SC (user, 0500: the user's shell
        #    executes it).  Both are named after the job's file prefix.
        self._hold(ctx, ms)
        sc = self.job_file(ms, jobid, JOB_SCRIPT)
        sc.write_text(job.script)
        os.chown(sc, ctx.pw.pw_uid, ctx.pw.pw_gid)
        os.chmod(sc, 0o500)
        self._log(ctx, ms, f"job received, exec_host={exec_host}")

        # 2. Join: sisters run prologue.parallel then prologue.user.parallel.  They run
        #    concurrently (each sister mom blocks on its own), MS waits for all (facts:
        #    "Every sister's prologue.parallel has FINISHED before the MS prologue").
        self._make_tmpdir(ctx, ms)

        def join(node: str) -> list[HookRun]:
            self._make_tmpdir(ctx, node)
            out = []
            for hook in ("prologue.parallel", "prologue.user.parallel"):
                r = self._run_pelog(ctx, node, hook, io="log")
                if r is not None:
                    out.append(r)
                    if r.rc != 0:
                        return out
            # Facts "GPUs and the job file": a sister's .JB appears only after its
            # prologues (src/resmom/mom_comm.c im_join_job_as_sister: job_save after
            # run_prologue_scripts).
            self._hold(ctx, node)
            return out

        joined = self._on_sisters(ctx.sisters, join)
        failed = []
        for node in ctx.sisters:
            runs.extend(joined[node])
            if any(r.rc != 0 for r in joined[node]):
                failed.append(node)

        started = False
        if failed:
            # Facts "Exit codes": the sister rejects the join, the node's message is set
            # to "ERROR: prolog/epilog failed ..." and with down_on_error the server
            # marks it DOWN; the job is requeued.  The failing sister drops the job; the
            # others purge WITHOUT epilogue.parallel (facts "Ordering").  The MS prologue
            # never runs, and no nodefile is written (the join comes first).
            down = failed
            for node in ctx.sisters:
                self._purge(ctx, node)
                if node in failed:
                    self._log(ctx, node, "join rejected: prolog/epilog failed; node DOWN")
            ctx.exit_status = JOB_EXEC_RETRY
            # The MS epilogue does run here:
            # facts "Ordering": "The MS epilogue runs even when the prologue failed or
            # never ran" (-3 for an aborted start) - mom's exec_bail() leaves the job
            # EXITING and scan_for_exiting() runs the MS epilogues with $10 = -3.
            state = "Q"
        else:
            # 3. MS: nodefile, spool files, prologue, prologue.user.
            self._write_nodefile(ctx)
            self._write_gpufile(ctx)
            self._open_std_files(ctx)
            aborted_rc = None
            for hook in ("prologue", "prologue.user"):
                r = self._run_pelog(ctx, ms, hook, io="std")
                if r is None:
                    continue
                runs.append(r)
                if r.rc != 0:
                    aborted_rc = r.rc
                    break
            if aborted_rc is not None:
                # Facts "Exit codes": 1 -> aborted (C, -2, not requeued); anything else
                # (incl. -1 permissions, -4 timeout) -> requeued (-3), but an interactive
                # job is aborted on any non-zero.  Sisters purge without epilogue.parallel
                # (facts "Ordering").
                abort = aborted_rc == 1 or job.interactive is not None
                ctx.exit_status = JOB_EXEC_FAIL2 if abort else JOB_EXEC_RETRY
                state = "C" if abort else "Q"
                self._log(ctx, ms, f"prolog failed, exit {aborted_rc}: "
                                   f"{'job aborted' if abort else 'job requeued'}")
                for node in ctx.sisters:
                    self._purge(ctx, node)
            else:
                # 4. The batch script.  Its top task is saved in the .TK (task_save,
                #    src/resmom/mom_comm.c).
                started = True
                state = "C"
                ctx.substate = JOB_SUBSTATE_RUNNING
                self._write_root_file(self.job_file(ms, jobid, JOB_TASKS), "", 0o600)
                sim_timed_out = self._run_batch(ctx, runs)
                # 5a. Sisters: epilogue.user.parallel then epilogue.parallel, then purge.
                def finish(node: str) -> list[HookRun]:
                    out = []
                    for hook in ("epilogue.user.parallel", "epilogue.parallel"):
                        r = self._run_pelog(ctx, node, hook, io="log")
                        if r is not None:
                            out.append(r)
                    self._purge(ctx, node)
                    return out
                ended = self._on_sisters(ctx.sisters, finish)
                for node in ctx.sisters:
                    runs.extend(ended[node])

        # 5b. MS epilogues, always (facts "Ordering"); exit codes only logged.
        if (not os.path.exists(ou) or not os.path.exists(er)) and any(
                os.path.lexists(self.mom_priv(ms) / h) for h in ("epilogue.user", "epilogue")):
            self._open_std_files(ctx)  # open_std_file() creates them for the epilogue
        for hook in ("epilogue.user", "epilogue"):
            r = self._run_pelog(ctx, ms, hook, io="std")
            if r is not None:
                runs.append(r)
                if r.rc != 0:
                    self._log(ctx, ms, f"{hook} failed w/rc={r.rc} (ignored)")

        # 6. Output: not delivered when a prologue exit 1 aborted the start (facts "Exit
        #    codes": the .OU/.ER stay in $PBS_HOME/spool).  Requeued jobs do get their
        #    .o/.e copied back (facts "Exit codes": "each start overwrites the user's .o/.e").
        delivered = False
        output_paths = None
        stdout_text = stderr_text = ""
        if ctx.exit_status != JOB_EXEC_FAIL2:
            delivered, output_paths = self._deliver(ctx)
        if delivered:
            stdout_text = _read(output_paths[0])
            stderr_text = _read(output_paths[1])
        else:
            stdout_text, stderr_text = _read(ou), _read(er)
        self._purge(ctx, ms)
        self._log(ctx, ms, f"job done: state={state} exit_status={ctx.exit_status} "
                           f"started={started} delivered={delivered}")
        return JobResult(
            state=state, exit_status=ctx.exit_status, delivered=delivered,
            stdout=stdout_text, stderr=stderr_text, hook_runs=runs, down_nodes=down,
            spool_paths=(ou, er), output_paths=output_paths,
            session_id=ctx.session_id, resources_used=ctx.resc_used, exec_host=exec_host,
            log=ctx.log, sim_timed_out=sim_timed_out,
            terminal=ctx.terminal, tasks=list(ctx.tasks),
        )

    def _on_sisters(self, sisters: list, fn) -> dict:
        if not sisters:
            return {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(sisters)) as ex:
            futs = {n: ex.submit(fn, n) for n in sisters}
            return {n: f.result() for n, f in futs.items()}

    def gpufile(self, jobid: str, ms: str) -> Path:
        return self.pbs_home(ms) / "aux" / f"{jobid}gpu"

    def job_gpus(self, ctx: _Ctx) -> list:
        """The GPUs "the server chose": [(node, index)] in exec_host order.  NOT FAITHFUL:
        the server picks free GPUs of each node; the simulator takes gpu0..gpuN-1 of every
        node, listed from the highest index down (as the facts' example shows one node's)."""
        per_chunk = []
        for chunk in ctx.nodes_spec.split("+"):
            fields = chunk.split(":")
            gpus = next((int(f[5:]) for f in fields[1:] if f.startswith("gpus=") and f[5:].isdigit()), 0)
            per_chunk += [gpus] * (int(fields[0]) if fields[0].isdigit() else 1)
        return [(node, i) for (node, _), n in zip(ctx.job.nodes, per_chunk) for i in reversed(range(n))]

    def _write_gpufile(self, ctx: _Ctx) -> None:
        """Facts "GPUs and the job file": before the MS prologue, aux/<jobid>gpu holds one
        line per GPU, host-gpuN (start_exec.c: write_attr_to_file(exec_gpus, "gpu"))."""
        gpus = self.job_gpus(ctx)
        if gpus:
            self._write_root_file(self.gpufile(ctx.job.jobid, ctx.ms),
                                  "".join(f"{node}-gpu{i}\n" for node, i in gpus), 0o644)

    def _write_nodefile(self, ctx: _Ctx) -> None:
        # Facts "The nodefile": one line per slot in exec_host order, root, 0644, written
        # before the MS prologue.  start_exec.c write_nodes_to_file(): when the job has a
        # variable found by get_job_envvar("BEOWULF_JOB_MAP") (a PREFIX match), its value
        # split on ':' (strtok: empty fields skipped) is written instead, one per line.
        # ($nodefile_suffix is not modelled: the simulated moms have none.)
        beowulf = self._job_envvar(ctx, "BEOWULF_JOB_MAP")
        if beowulf is not None:
            lines = [host for host in beowulf.split(":") if host]
        else:
            lines = [n for n, p in ctx.job.nodes for _ in range(p)]
        self._write_root_file(self.nodefile(ctx.ms, ctx.job.jobid),
                              "".join(f"{line}\n" for line in lines), 0o644)
        ctx.has_nodefile = True

    # ---- prologue / epilogue --------------------------------------------------------

    def _pelog_env(self, ctx: _Ctx, node: str, hook: str) -> dict:
        """setup_pelog_environment(): pbs_environment + the PBS_* additions.  Nothing
        else: no HOME, USER, PBS_JOBID (facts "Environment of the scripts")."""
        env = self.pbs_environment(node)
        nn, ppn = torque_num_nodes_ppn(ctx.nodes_spec)
        env["PBS_RESOURCE_NODES"] = ctx.nodes_spec
        env["PBS_NUM_NODES"] = str(nn)
        env["PBS_NUM_PPN"] = str(ppn)
        env["PBS_NP"] = str(ctx.np)
        gres = ctx.job.resources.get("gres")
        if gres is not None:
            env["PBS_RESOURCE_GRES"] = str(gres)
        v = ctx.job.variables
        if "PBS_CPUCLOCK" in v:
            env["PBS_CPUCLOCK"] = str(v["PBS_CPUCLOCK"])
        if "PBS_SCHED_HINT" in v:
            env["PBS_SCHED_HINT"] = str(v["PBS_SCHED_HINT"])
        tmp = self.job_tmpdir(node, ctx.job.jobid)
        if tmp is not None:
            env["TMPDIR"] = str(tmp)     # prolog.c setup_pelog_environment: TTmpDirName
        env["PBS_NODENUM"] = str(0 if node == ctx.ms else ctx.sisters.index(node) + 1)
        env["PBS_MSHOST"] = ctx.ms
        if node == ctx.ms and ctx.has_nodefile:
            env["PBS_NODEFILE"] = str(self.nodefile(node, ctx.job.jobid))
        env["PBS_O_WORKDIR"] = ctx.workdir
        # prolog.c: the first Variable_List entry starting "BEOWULF_JOB_MAP=" (with the '=',
        # unlike the nodefile's prefix match above).
        for name, value in self._variables(ctx).items():
            if f"{name}=".startswith("BEOWULF_JOB_MAP="):
                env["BEOWULF_JOB_MAP"] = value
                break
        if ".user" not in hook and hook != "epilogue.precancel":
            for k, val in v.items():
                if str(k).startswith("MOAB_"):
                    env[str(k)] = str(val)
        return env

    def _pelog_argv(self, ctx: _Ctx, node: str, hook: str, path: str) -> list:
        """setup_pelog_arguments() + the 6.1 script-path argument (facts "Arguments")."""
        j = ctx.job
        argv = [path, j.jobid, ctx.pw.pw_name, ctx.group, ctx.jobname]
        script = str(self.job_file(ctx.ms, j.jobid, JOB_SCRIPT))
        if hook.startswith("epilogue"):
            argv += [str(ctx.session_id) if node == ctx.ms else "0",
                     ctx.resc_list, ctx.resc_used, j.queue, j.account,
                     str(ctx.exit_status), script if node == ctx.ms else ""]
            # NOT FAITHFUL (unknown): on sisters $5 (session id) is "0" and $7/$10 repeat
            # the MS values; a real sister reports its own (usually empty) usage.
        else:
            argv += [ctx.resc_list, j.queue, j.account]
            if node == ctx.ms:
                argv.append(script)   # $8: absent on sisters (facts)
        return argv

    def _run_pelog(self, ctx: _Ctx, node: str, hook: str, *, io: str) -> Optional[HookRun]:
        """run_pelog(): returns None when the script does not exist (skipped silently).

        io: "std"  -> append to the job's spool .OU/.ER (MS, batch job);
            "log"  -> mom's own stdout (real: /dev/null) -> <node>/mom_logs/hooks.log;
            "null" -> /dev/null (epilogue.precancel); captured for the HookRun only.
        """
        as_user = ".user" in hook or hook == "epilogue.precancel"
        spec = self.mom_priv(node) / hook
        path = spec
        if ctx.job.jobtype:   # qsub -T: prologue.TYPE first, fall back (facts)
            typed = spec.with_name(f"{hook}.{ctx.job.jobtype}")
            if os.path.exists(typed):
                path = typed
        argv = self._pelog_argv(ctx, node, hook, str(path))
        run_as = ctx.pw.pw_name if as_user else "root"

        def failed(rc: int, msg: str) -> HookRun:
            text = f"prolog/epilog failed, file: {path}, exit: {rc}, {msg}"
            self._log(ctx, node, text)
            return HookRun(node=node, script=hook, argv=argv, rc=rc, elapsed=0.0,
                           timed_out=False, stdout="", stderr="", path=str(path),
                           run_as=run_as, message=text, started=time.time())

        # check_if_pelog_exists(): stat() follows symlinks; missing -> skipped.
        # NOT FAITHFUL (minor): real mom stats user scripts after becoming the user
        # (root squashing); we stat as root.
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        except OSError as e:
            return failed(e.errno or -1, "cannot stat")
        # check_pelog_permissions(): regular, uid 0, owner r+x, not g/o writable; the
        # user kinds must also be r+x by others.
        mode = st.st_mode
        if (st.st_uid != 0 or not stat.S_ISREG(mode)
                or (mode & (stat.S_IRUSR | stat.S_IXUSR)) != (stat.S_IRUSR | stat.S_IXUSR)
                or mode & (stat.S_IWGRP | stat.S_IWOTH)):
            return failed(-1, "permission Error")
        if as_user and (mode & (stat.S_IROTH | stat.S_IXOTH)) != (stat.S_IROTH | stat.S_IXOTH):
            return failed(-1, "permission Error")

        env = self._pelog_env(ctx, node, hook)
        if as_user:
            cwd = ctx.pw.pw_dir
        else:
            cwd = str(self.mom_priv(node))
        cfg = self.read_config(node)
        # Facts "Timeout": the whole session is SIGKILLed at about $prologalarm - 10 s.
        # NOT FAITHFUL (on purpose): prolog.c get_child_exit_status() arms
        # alarm(min($prologalarm, job_start_timeout - 10)), job_start_timeout = 300, so
        # the default 300 gives 290 s as here, but a small $prologalarm (e.g. 12) would
        # really fire at 12 s, not 2 s.  Killing earlier is the stricter test.
        alarm = max(cfg["prologalarm"] - 10, 1)

        std_offsets = None
        if io == "std":
            ou, er = self.spool_paths(ctx.job.jobid, ctx.ms)
            fd_out = os.open(ou, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            fd_err = os.open(er, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            std_offsets = (os.fstat(fd_out).st_size, os.fstat(fd_err).st_size)
            out_f = err_f = None
        else:
            out_f = tempfile.TemporaryFile()
            err_f = tempfile.TemporaryFile()
            fd_out, fd_err = out_f.fileno(), err_f.fileno()

        pre_err = b""
        if as_user and not os.path.isdir(cwd):
            # change_directory_as_needed(): warn only, run in the current directory.
            pre_err = (f"PBS: chdir to {cwd} failed: No such file or directory (running "
                       f"user {'prologue' if hook.startswith('pro') else 'epilogue'} in "
                       f"current directory)").encode()
            os.write(fd_err, pre_err)
            cwd = str(self.mom_priv(node))

        kw = {}
        if as_user:
            kw = dict(user=ctx.pw.pw_uid, group=ctx.pw.pw_gid, extra_groups=ctx.groups)
        started = time.time()
        t0 = time.monotonic()
        timed_out = False
        sig = None
        rc: Optional[int]
        try:
            proc = subprocess.Popen(
                argv, executable=str(path), stdin=subprocess.DEVNULL, stdout=fd_out,
                stderr=fd_err, cwd=cwd, env=env, start_new_session=True, umask=0o077,
                close_fds=True, **kw)
        except OSError as e:
            # execv failed: the child writes this to its stderr and exit(255).
            os.write(fd_err, f"execv of {path} failed: {e.strerror}\n".encode())
            rc = 255
            proc = None
        if proc is not None:
            killed_at = None
            rc = None
            while True:
                done, status, _ = _wait4_nohang(proc.pid)
                if done:
                    proc.returncode = 0
                    if timed_out:
                        rc = -4
                    elif status is None:
                        rc = -3   # wait interrupted / lost child
                    elif os.WIFEXITED(status):
                        rc = os.WEXITSTATUS(status)
                    else:
                        # get_child_exit_status(): run_exit stays 0 when the script
                        # died of a signal that was not mom's own alarm kill.
                        sig = os.WTERMSIG(status)
                        rc = 0
                    break
                now = time.monotonic()
                if killed_at is None and now - t0 >= alarm:
                    kill_session(proc.pid, signal.SIGKILL)
                    killed_at = now
                    timed_out = True
                elif killed_at is not None and now - killed_at >= PELOG_GIVE_UP:
                    rc = -5   # "prolog/epilog timeout occurred, cannot kill child"
                    proc.returncode = -9
                    _reap_later(proc.pid)
                    break
                time.sleep(POLL)
        elapsed = time.monotonic() - t0

        if io == "std":
            os.close(fd_out)
            os.close(fd_err)
            ou, er = self.spool_paths(ctx.job.jobid, ctx.ms)
            out_text = _read_from(ou, std_offsets[0])
            err_text = _read_from(er, std_offsets[1])
        else:
            out_f.seek(0)
            err_f.seek(0)
            out_text = out_f.read().decode("utf-8", "replace")
            err_text = err_f.read().decode("utf-8", "replace")
            out_f.close()
            err_f.close()
            with open(self.hooks_log(node), "a") as fh:
                fh.write(f"=== {_dt.datetime.now().isoformat(timespec='seconds')} "
                         f"{ctx.job.jobid} {hook} rc={rc}"
                         f"{' TIMEOUT' if timed_out else ''} ===\n")
                if out_text:
                    fh.write(out_text if out_text.endswith("\n") else out_text + "\n")
                if err_text:
                    fh.write(err_text if err_text.endswith("\n") else err_text + "\n")
        msg = ""
        if rc == -4:
            msg = f"prolog/epilog failed, file: {path}, exit: -4, prolog/epilog timeout " \
                  f"occurred, child cleaned up"
        elif rc == -5:
            msg = f"prolog/epilog failed, file: {path}, exit: -5, prolog/epilog timeout " \
                  f"occurred, cannot kill child"
        elif rc not in (0, None):
            msg = f"prolog/epilog failed, file: {path}, exit: {rc}, nonzero p/e exit status"
        self._log(ctx, node, f"ran {hook} as {run_as}: rc={rc} in {elapsed:.2f}s"
                             + (f" ({msg})" if msg else ""))
        return HookRun(node=node, script=hook, argv=argv, rc=rc, elapsed=elapsed,
                       timed_out=timed_out, stdout=out_text, stderr=err_text,
                       path=str(path), run_as=run_as, signal=sig, message=msg,
                       started=started)

    # ---- the batch script -----------------------------------------------------------

    def _job_env(self, ctx: _Ctx) -> dict:
        """The batch job's environment (InitUserEnv, src/resmom/start_exec.c).
        NOT FAITHFUL (omitted): PBS_O_PATH/PBS_O_SHELL/PBS_O_LANG/... (qsub copies of
        the submitter's environment), PBS_MICFILE, PBS_VERSION."""
        j, pw = ctx.job, ctx.pw
        nn, ppn = torque_num_nodes_ppn(ctx.nodes_spec)
        env = {str(k): str(v) for k, v in j.variables.items()}   # qsub -v
        if array_parts(j.jobid):
            # job_clone adds PBS_ARRAYID to the subjob's Variable_List.
            env["PBS_ARRAYID"] = str(array_parts(j.jobid)[1])
        interactive = j.interactive is not None
        # mom's own variables win over -v values of the same name.
        env.update({
            "PBS_JOBID": j.jobid,
            "PBS_JOBNAME": ctx.jobname,
            "PBS_NODEFILE": str(self.nodefile(ctx.ms, j.jobid)),
            "PBS_O_WORKDIR": ctx.workdir,
            "PBS_O_HOME": pw.pw_dir,
            "PBS_O_HOST": j.submit_host or ctx.server,
            "PBS_O_QUEUE": j.queue,
            "PBS_QUEUE": j.queue,
            "PBS_SERVER": ctx.server,
            "PBS_ENVIRONMENT": "PBS_INTERACTIVE" if interactive else "PBS_BATCH",
            "PBS_NODENUM": "0",
            "PBS_TASKNUM": "1",
            "PBS_VNODENUM": "0",
            # The simulated mom's TM port (real: pbs_mom's, 15003 by default).
            "PBS_MOMPORT": str(ctx.tm_port or 15003),
            "PBS_JOBCOOKIE": ctx.cookie,
            "PBS_NUM_NODES": str(nn),
            "PBS_NUM_PPN": str(ppn),
            "PBS_NP": str(ctx.np),
            "HOME": pw.pw_dir,
            "USER": pw.pw_name,
            "LOGNAME": pw.pw_name,
            "SHELL": ctx.shell,                       # InitUserEnv(): set_shell()'s choice
        })
        # The job's own PATH (qsub -v PATH=..., -V) wins over mom's, as in InitUserEnv().
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        if not interactive:
            env["ENVIRONMENT"] = "BATCH"              # setup_batch_job()
        tmp = self.job_tmpdir(ctx.ms, j.jobid)
        if tmp is not None:
            env["TMPDIR"] = str(tmp)     # InitUserEnv: "setup TMPDIR"
        gpus = self.job_gpus(ctx)
        if gpus:
            # InitUserEnv (start_exec.c): the gpu file and every node's indices, in its order.
            env["PBS_GPUFILE"] = str(self.gpufile(j.jobid, ctx.ms))
            env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for _, i in gpus)
        if "walltime" in j.resources:
            env["PBS_WALLTIME"] = str(parse_walltime(str(j.resources["walltime"])))
        return env

    def _run_batch(self, ctx: _Ctx, runs: list) -> bool:
        """Run the batch script (or qsub -I's shell) on the MS; sets ctx.exit_status,
        session_id, resc_used, and for interactive jobs ctx.terminal.  Returns True when the
        simulator's own max_job_seconds bound fired."""
        j, pw = ctx.job, ctx.pw
        ms = ctx.ms
        shell = ctx.shell
        interactive = j.interactive is not None
        sc = self.job_file(ms, j.jobid, JOB_SCRIPT)
        cfg = self.read_config(ms)
        starter = cfg["job_starter"]
        login = cfg["source_login_interactive" if interactive else "source_login_batch"]
        if starter:
            # argv = [starter, <shell full path>]; same stdin and env (facts "$job_starter";
            # start_exec.c mom_jobstarter_execute_job() overwrites the "-bash" argv[0]).
            argv, exe = [starter, shell], starter
        else:
            # source_login_shells_or_not(): argv[0] is "-" + basename (a login shell, bash
            # reads /etc/profile) unless $source_login_batch / _interactive is false.
            name = os.path.basename(shell)
            argv, exe = ["-" + name if login else name], shell
        # become_the_user unless a privileged job starter ($job_starter_run_privileged).
        as_root = bool(starter) and cfg["job_starter_run_privileged"]
        ids = {} if as_root else dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=ctx.groups)
        self._start_tm(ctx)
        env = self._job_env(ctx)
        ou, er = self.spool_paths(j.jobid, ms)
        master = None
        if interactive:
            # qsub -I: the shell's stdin/stdout/stderr are a pty (its controlling terminal);
            # no script on stdin.  NOT FAITHFUL: the user's typing is given all at once, and
            # the prologue's output went to the spool .OU instead of the terminal.
            master, slave = os.openpty()
            in_fd = fd_out = fd_err = slave
        else:
            fd_out = os.open(ou, os.O_WRONLY | os.O_APPEND)
            fd_err = os.open(er, os.O_WRONLY | os.O_APPEND)
            # Default build (facts "$job_starter"): stdin is a pipe holding the script
            # path and the -F arguments.
            stdin_text = " ".join([str(sc)] + [shlex.quote(str(a)) for a in j.args]) + "\n"
            in_fd, w_fd = os.pipe()
            os.write(w_fd, stdin_text.encode())
            os.close(w_fd)
        cwd = pw.pw_dir if os.path.isdir(pw.pw_dir) else "/"
        walltime = parse_walltime(str(j.resources["walltime"])) \
            if "walltime" in j.resources else None
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv, executable=exe, stdin=in_fd, stdout=fd_out, stderr=fd_err, cwd=cwd,
                env=env, start_new_session=True, umask=0o077, close_fds=True,
                preexec_fn=_job_child(tty=interactive), **ids)
        except OSError as e:
            os.write(fd_err, f"PBS: exec of {exe} failed: {e.strerror}\n".encode())
            for fd in {in_fd, fd_out, fd_err}:
                os.close(fd)
            if master is not None:
                ctx.terminal = _drain(master, None)
            ctx.exit_status = 255
            ctx.resc_used = self._resc_used(None, 0.0)
            self._stop_tm(ctx)
            return False
        for fd in {in_fd, fd_out, fd_err}:
            os.close(fd)
        terminal = bytearray()
        if master is not None:
            os.write(master, j.interactive.encode())
        sid = proc.pid
        ctx.session_id = sid
        ctx.sessions.add(sid)
        self._log(ctx, ms, f"job started, session {sid}: {argv}")

        reason = None
        term_at = kill_at = None
        status = ru = None
        sim_timed_out = False
        while True:
            if master is not None:
                terminal += _drain(master, POLL, raw=True)
            done, status, ru = _wait4_nohang(proc.pid)
            if done:
                proc.returncode = 0
                break
            now = time.monotonic() - t0
            if term_at is None:
                if j.kill_after is not None and now >= j.kill_after:
                    reason = "qdel"
                    self._log(ctx, ms, "qdel: running epilogue.precancel, SIGTERM to job")
                    # Facts: epilogue.precancel runs on qdel, as the job user, output to
                    # /dev/null.  Run before the signal (mom does it before kill_job).
                    r = self._run_pelog(ctx, ms, "epilogue.precancel", io="null")
                    if r is not None:
                        runs.append(r)
                elif walltime is not None and now >= walltime:
                    reason = "walltime"
                    # NOT FAITHFUL: real mom checks limits every $check_poll_time
                    # (45 s default), so the kill comes up to that much late.
                    with open(er, "ab") as fh:
                        fh.write(f"=>> PBS: job killed: walltime {int(now)} exceeded "
                                 f"limit {walltime}\n".encode())
                elif now >= self.max_job_seconds:
                    reason = "simulator"
                    sim_timed_out = True
                    self._log(ctx, ms, f"SIMULATOR bound max_job_seconds="
                                       f"{self.max_job_seconds} reached: killing job")
                if reason:
                    signal_job(ctx.sessions, signal.SIGTERM, ctx.termed)
                    term_at = time.monotonic()
            elif kill_at is None and time.monotonic() - term_at >= KILL_DELAY:
                signal_job(ctx.sessions, signal.SIGKILL, ctx.termed)
                kill_at = time.monotonic()
            elif kill_at is not None and time.monotonic() - kill_at >= 10:
                # Unkillable (D state): give up waiting, bounded.
                self._log(ctx, ms, "job process would not die; giving up")
                _reap_later(proc.pid)
                proc.returncode = -9
                status = None
                break
            if master is None:
                time.sleep(POLL)
        wall = time.monotonic() - t0
        # When the top task exits mom kills what is left of the job: the session and every
        # TM task (mother_superior_cleanup: kill_job(SIGKILL, "local task termination")).
        ctx.ending = True
        signal_job(ctx.sessions, signal.SIGKILL, ctx.termed)
        self._stop_tm(ctx)
        if master is not None:
            terminal += _drain(master, 0.5, raw=True)
            os.close(master)
            ctx.terminal = terminal.decode("utf-8", "replace")

        if reason == "walltime":
            ctx.exit_status = JOB_EXEC_OVERLIMIT_WT
        elif status is None:
            ctx.exit_status = 256 + signal.SIGKILL
        elif os.WIFEXITED(status):
            ctx.exit_status = os.WEXITSTATUS(status)
        else:
            ctx.exit_status = 256 + os.WTERMSIG(status)
        ctx.resc_used = self._resc_used(ru, wall)
        self._log(ctx, ms, f"job ended: exit_status={ctx.exit_status}"
                           + (f" ({reason})" if reason else ""))
        return sim_timed_out

    # ---- TM: tasks spawned through the task manager (pbsdsh) -----------------------

    def _start_tm(self, ctx: _Ctx) -> None:
        """The MS mom's TM service for this job: TCP on 127.0.0.1 (tm_init() connects to
        localhost:PBS_MOMPORT).  NOT FAITHFUL: a line protocol of the simulator's own
        instead of Torque's DIS-encoded TM requests, and one port per job instead of mom's
        one port; requests must carry the job's cookie, as TM's do."""
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", 0))
        server.listen(16)
        server.settimeout(0.2)
        ctx.tm_port = server.getsockname()[1]
        ctx.tm_server = server
        with self._lock:
            self._running[ctx.job.jobid] = ctx
        threading.Thread(target=self._tm_loop, args=(ctx, server), daemon=True).start()

    def _stop_tm(self, ctx: _Ctx) -> None:
        with self._lock:
            self._running.pop(ctx.job.jobid, None)
        server = ctx.tm_server
        if server is not None:
            ctx.tm_server = None
            server.close()
        # Tasks still being waited for end with the job (their sessions were killed).
        deadline = time.monotonic() + 15
        while any(t.status is None for t in ctx.tasks) and time.monotonic() < deadline:
            time.sleep(POLL)

    def _tm_loop(self, ctx: _Ctx, server: socket.socket) -> None:
        while ctx.tm_server is server:
            try:
                conn, _ = server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._tm_request, args=(ctx, conn), daemon=True).start()

    def _tm_request(self, ctx: _Ctx, conn: socket.socket) -> None:
        """One pbsdsh: "cookie C", "vnodes all|N ...", "arg BASE64"..., "end"; answered
        with "task INDEX STATUS" per task as each ends, then "done"."""
        import base64
        try:
            conn.settimeout(30)
            fh = conn.makefile("rwb", buffering=0)
            cookie, vnodes, argv = "", "all", []
            for raw in fh:
                word, _, rest = raw.decode("ascii", "replace").strip().partition(" ")
                if word == "cookie":
                    cookie = rest
                elif word == "vnodes":
                    vnodes = rest
                elif word == "arg":
                    argv.append(base64.b64decode(rest).decode("utf-8", "surrogateescape"))
                elif word == "end":
                    break
            if not secrets.compare_digest(cookie, ctx.cookie) or not argv:
                fh.write(b"error tm_init failed (bad cookie or no program)\n")
                return
            slots = [n for n, p in ctx.job.nodes for _ in range(p)]
            if vnodes == "all":
                chosen = list(range(len(slots)))
            else:
                chosen = [int(v) for v in vnodes.split()]
                if any(not 0 <= v < len(slots) for v in chosen):
                    fh.write(f"error only {len(slots)} nodes available\n".encode())
                    return
            conn.settimeout(None)
            done = threading.Condition()
            results = []

            def one(index: int, vnode: int) -> None:
                status = self.spawn_task(ctx.job.jobid, vnode, argv)
                with done:
                    results.append((index, status))
                    done.notify()

            for index, vnode in enumerate(chosen):
                threading.Thread(target=one, args=(index, vnode), daemon=True).start()
            sent = 0
            while sent < len(chosen):
                with done:
                    while len(results) == sent:
                        done.wait()
                    index, status = results[sent]
                sent += 1
                fh.write(f"task {index} {status}\n".encode())
            fh.write(b"done\n")
        except (OSError, ValueError) as exc:
            self._log(ctx, ctx.ms, f"TM request failed: {exc}")
        finally:
            conn.close()

    def spawn_task(self, jobid: str, vnode: int, argv: list,
                   env_extra: Optional[dict] = None) -> int:
        """tm_spawn(): run argv as a task of the running job on the node holding vnode
        (its line in the nodefile); returns the task's exit status (256+N for signal N)
        once it ended.  Facts "TM tasks through the job starter"; start_exec.c
        start_process() and become_the_jobs_subprocess()."""
        with self._lock:
            ctx = self._running.get(jobid)
            if ctx is None or ctx.ending:
                raise ValueError(f"job {jobid} is not running")
            ctx.task_seq += 1
            tasknum = ctx.task_seq
        j, pw = ctx.job, ctx.pw
        slots = [n for n, p in j.nodes for _ in range(p)]
        node = slots[vnode]
        env = self._job_env(ctx)
        # initialize_subprocess_environment(): tasks are always "batch"; InitUserEnv() with
        # a task: PBS_TASKNUM, this node's PBS_NODENUM; mom_comm.c adds PBS_VNODENUM.  No
        # SHELL (InitUserEnv gets no shell for tasks) unless the job's own variables have
        # one, no PBS_NP (TMomFinalizeChild only), PBS_NODEFILE only where mom wrote it.
        env["PBS_ENVIRONMENT"], env["ENVIRONMENT"] = "PBS_BATCH", "BATCH"
        env["PBS_TASKNUM"] = str(tasknum)
        env["PBS_VNODENUM"] = str(vnode)
        env["PBS_NODENUM"] = str(0 if node == ctx.ms else ctx.sisters.index(node) + 1)
        env.pop("PBS_NP", None)
        tmp = self.job_tmpdir(node, j.jobid)
        if tmp is not None:
            env["TMPDIR"] = str(tmp)      # InitUserEnv() on the task's node: its own $tmpdir
        if "SHELL" in j.variables:
            env["SHELL"] = str(j.variables["SHELL"])
        else:
            env.pop("SHELL", None)
        if node != ctx.ms:
            env.pop("PBS_NODEFILE", None)
        env.update(env_extra or {})        # tm_spawn()'s envp (pbsdsh -e/-E)
        cfg = self.read_config(node)
        starter = cfg["job_starter"]
        run = [starter] + list(argv) if starter else list(argv)
        as_root = bool(starter) and cfg["job_starter_run_privileged"]
        ids = {} if as_root else dict(user=pw.pw_uid, group=pw.pw_gid, extra_groups=ctx.groups)
        # change_to_subprocess_directory(): PBS_O_INITDIR (qsub -d) if set, else the home.
        cwd = str(j.variables.get("PBS_O_INITDIR") or pw.pw_dir)
        ou, er = self.spool_paths(j.jobid, ctx.ms)
        task = TaskRun(node=node, vnode=vnode, tasknum=tasknum, argv=list(argv))
        ctx.tasks.append(task)
        fd_out = os.open(ou, os.O_WRONLY | os.O_APPEND)
        fd_err = os.open(er, os.O_WRONLY | os.O_APPEND)
        try:
            # The child execs with execvp() itself (in _job_child), as mom does: the
            # program is looked up on the task's own PATH, /bin/sh runs a file without
            # "#!"; on failure "PBS: prog: error" and exit 254 (become_the_jobs_subprocess).
            proc = subprocess.Popen(
                ["/bin/false"], stdin=subprocess.DEVNULL, stdout=fd_out, stderr=fd_err,
                cwd=cwd if os.path.isdir(cwd) else "/", env=env, start_new_session=True,
                umask=0o077, close_fds=True,
                preexec_fn=_job_child(execvp=run, env=env, name=str(argv[0])), **ids)
        finally:
            os.close(fd_out)
            os.close(fd_err)
        task.pid = proc.pid
        ctx.sessions.add(proc.pid)
        self._log(ctx, node, f"task {tasknum} (vnode {vnode}) started, session {proc.pid}: {run}")
        _, status = os.waitpid(proc.pid, 0)
        proc.returncode = 0
        ctx.sessions.discard(proc.pid)
        task.status = os.WEXITSTATUS(status) if os.WIFEXITED(status) else 256 + os.WTERMSIG(status)
        self._log(ctx, node, f"task {tasknum} ended: {task.status}")
        return task.status

    @staticmethod
    def _resc_used(ru, wall: float) -> str:
        """resources_used as encode_used() lists it.
        NOT FAITHFUL: vmem is the max RSS (mom samples /proc for the real vmem)."""
        cput = (ru.ru_utime + ru.ru_stime) if ru is not None else 0.0
        rss = ru.ru_maxrss if ru is not None else 0
        return (f"cput={format_hms(cput)},energy_used=0,mem={rss}kb,vmem={rss}kb,"
                f"walltime={format_hms(wall)}")

    # ---- delivery -------------------------------------------------------------------

    def _deliver(self, ctx: _Ctx):
        """Copy spool .OU/.ER to <workdir>/<name>.o<seq>/.e<seq> as the user, then remove
        the spool files.  NOT FAITHFUL: real mom copies with cp only when $usecp maps
        the destination, else scp to PBS_O_HOST; and on failure it moves the files to
        $PBS_HOME/undelivered (here they stay in spool and delivered is False)."""
        j, pw = ctx.job, ctx.pw
        ou, er = self.spool_paths(j.jobid, ctx.ms)
        if not ou.exists() and not er.exists():
            return False, None
        dests = (Path(ctx.workdir) / default_output_name(j.name, j.jobid, "o"),
                 Path(ctx.workdir) / default_output_name(j.name, j.jobid, "e"))
        ok = True
        for src, dst in zip((ou, er), dests):
            if not src.exists():
                continue
            try:
                p = subprocess.run(
                    ["/bin/cp", "-f", str(src), str(dst)], user=pw.pw_uid, group=pw.pw_gid,
                    extra_groups=ctx.groups, umask=0o077, cwd="/", stdin=subprocess.DEVNULL,
                    capture_output=True, timeout=60, env={"PATH": "/bin:/usr/bin"})
                if p.returncode != 0:
                    ok = False
                    self._log(ctx, ctx.ms, f"delivery of {src} to {dst} failed: "
                                           f"{p.stderr.decode(errors='replace').strip()}")
            except subprocess.TimeoutExpired:
                ok = False
        if not ok:
            return False, None
        for src in (ou, er):
            try:
                src.unlink()
            except FileNotFoundError:
                pass
        return True, dests


def _read(path) -> str:
    try:
        return Path(path).read_bytes().decode("utf-8", "replace")
    except (FileNotFoundError, TypeError):
        return ""


def _read_from(path: Path, offset: int) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""


# --------------------------------------------------------------------------------------
# qsub on a submit host: the submit filter, then the directives (facts: "Submit filter")
# --------------------------------------------------------------------------------------

QSUB_OPTIONS = "a:A:b:c:C:d:D:e:EfF:hi:Ij:J:k:K:l:L:m:M:nN:o:p:P:q:r:S:t:T:u:v:Vw:W:Xxz"
SUBMIT_FILTER_ADMIN_REJECT = 255


class QsubError(Exception):
    """qsub exited non-zero (3 after a filter's refusal); nothing was queued."""

    def __init__(self, message: str, stderr: str) -> None:
        super().__init__(message)
        self.stderr = stderr


def _qsub_filter_command(filter_path: str, args: list) -> str:
    # facts: the filter path followed by each of qsub's arguments in single quotes.
    # (Torque 6.1.3 passes -C's prefix as a backslash and the raw text, unquoted:
    # qsub_functions.c; done the same here.)
    command, after_c = filter_path, False
    for arg in args:
        command += " " + ("\\" + arg if after_c else f"'{arg}'")
        after_c = not after_c and arg == "-C"
    return command


def _qsub_directives(script: bytes, prefix: str) -> list:
    """Option words of the #PBS lines qsub reads: up to the first command (a line whose
    first non-blank character is not '#', except lines starting with ':' or '#!');
    CR before LF dropped, a trailing backslash continues the directive.
    NOT FAITHFUL: words are split with shlex (qsub's make_argv knows no shell escapes
    inside double quotes) and fgets' 32 KiB line pieces are not modelled."""
    words: list = []
    lines = script.decode("utf-8", "surrogateescape").split("\n")
    i = 0
    while i < len(lines):
        line = lines[i].removesuffix("\r")
        body = line.lstrip(" \t\v\f\r")
        if prefix and body.startswith(prefix):
            text = body[len(prefix):]
            while text.endswith("\\") and i + 1 < len(lines):
                i += 1
                text = text[:-1] + lines[i]
            words += shlex.split(text)
        elif not (line.startswith(":") or line.startswith("#!")) and body and not body.startswith("#"):
            break
        i += 1
    return words


def _qsub_resources(words: list) -> dict:
    """-l values, name by name, the last one winning (NOT FAITHFUL: no quoted values)."""
    import getopt
    opts, _ = getopt.gnu_getopt(words, QSUB_OPTIONS)
    found: dict = {}
    for flag, value in opts:
        if flag == "-l":
            for item in value.split(","):
                name, sep, val = item.partition("=")
                if sep and name.strip():
                    found[name.strip()] = val
    return found


def _qsub_option(words: list, flag: str) -> Optional[str]:
    """The last value of one qsub option (e.g. -S, the job's shell path list)."""
    import getopt
    opts, _ = getopt.gnu_getopt(words, QSUB_OPTIONS)
    values = [value for name, value in opts if name == flag]
    return values[-1] if values else None


def qsub(cluster: Cluster, script: str | bytes, args: list, *, user: str, placement: list,
         submit_filter: str | None = None, cwd: str | None = None, env: dict | None = None) -> Job:
    """Submit as qsub does on a submit host and return the Job the server would queue.

    The filter (if any) runs as the user through /bin/sh -c, script on stdin, stdout into
    a file; exit 255 / other non-zero refuse with qsub's messages (facts). The filtered
    script's directives give the resources, qsub's own -l options win resource by
    resource (facts). ``placement`` is the scheduler's choice of [(node, ppn)]: qsub
    does not place jobs. Resources Torque keeps but never sends to mom (``image``) are
    dropped by Cluster.run as before."""
    import getopt
    data = script.encode() if isinstance(script, str) else script
    pw = pwd.getpwnam(user)
    cwd = cwd or pw.pw_dir
    opts, _ = getopt.gnu_getopt(list(args), QSUB_OPTIONS)
    prefix = "#PBS"
    for flag, value in opts:
        if flag == "-C":
            prefix = value
    if submit_filter:
        fd, out_path = tempfile.mkstemp(prefix="qsub.")
        os.close(fd)
        os.chown(out_path, pw.pw_uid, pw.pw_gid)
        try:
            done = subprocess.run(["/bin/sh", "-c", _qsub_filter_command(submit_filter, list(args)) + " >" + out_path],
                                  input=data, stderr=subprocess.PIPE, cwd=cwd, user=pw.pw_uid, group=pw.pw_gid,
                                  extra_groups=os.getgrouplist(user, pw.pw_gid), timeout=120,
                                  env=env or {"PATH": "/bin:/usr/bin", "HOME": pw.pw_dir, "USER": user})
            filtered = Path(out_path).read_bytes()
        finally:
            os.unlink(out_path)
        stderr = done.stderr.decode("utf-8", "replace")
        if done.returncode == SUBMIT_FILTER_ADMIN_REJECT:
            raise QsubError("qsub: Your job has been administratively rejected by the queueing system.", stderr)
        if done.returncode != 0:
            raise QsubError("qsub: submit filter returned an error code, aborting job submission.", stderr)
        data = filtered
    directives = _qsub_directives(data, prefix)
    command_line = [w for flag, value in opts for w in (flag, value)]
    resources = _qsub_resources(directives)
    resources.update(_qsub_resources(command_line))
    nodes_spec = resources.pop("nodes", None)
    resources.pop("neednodes", None)
    # -S (the job's shell path list, chosen from on the node by set_shell()): the command
    # line wins over the script's directive, as for every option.
    shell = _qsub_option(command_line, "-S") or _qsub_option(directives, "-S")
    return Job(jobid=cluster.new_jobid(), user=user, script=data.decode("utf-8", "surrogateescape"),
               nodes=placement, resources=resources, workdir=cwd, nodes_spec=nodes_spec, shell=shell)

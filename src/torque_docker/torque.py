"""What pbs_mom hands a hook: argv positions, environment, cwd (docs/torque-facts.md).

Only this module knows Torque's argv layout, so the rest of the package deals in a
HookContext and never in ``sys.argv[5]``.
"""
from __future__ import annotations

import os
import re
import stat
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Mapping, NamedTuple, Optional, Sequence, Tuple

from .errors import NodeFault, RequestError

PROLOGUES = ("prologue", "prologue.parallel")
EPILOGUES = ("epilogue", "epilogue.parallel")


class JobSize(NamedTuple):
    np: int            # PBS_NP: slots in all
    num_nodes: int     # PBS_NUM_NODES
    num_ppn: int       # PBS_NUM_PPN


@dataclass(frozen=True)
class HookContext:
    kind: str                 # prologue | prologue.parallel | epilogue | epilogue.parallel
    jobid: str
    user: str
    group: str
    jobname: str
    resource_list: str
    node_index: int
    pbs_home: Path
    workdir: str
    nodefile: Optional[Path]  # MS only
    exit_status: Optional[int] = None  # epilogues only
    environ: Mapping[str, str] = field(default_factory=dict)   # what pbs_mom gave the hook

    @property
    def is_ms(self) -> bool:
        return self.kind in ("prologue", "epilogue")

    @property
    def is_prologue(self) -> bool:
        return self.kind in PROLOGUES

    def _env(self, name: str) -> str:
        return self.environ.get(name, "")

    @property
    def mshost(self) -> str:
        """``PBS_MSHOST``: the mother superior's name, as every node of the job is told it."""
        return self._env("PBS_MSHOST")

    @property
    def size(self) -> "JobSize":
        """The job's slots and nodes as pbs_mom tells a hook (0 where it does not)."""
        counts = [self._env(name) for name in ("PBS_NP", "PBS_NUM_NODES", "PBS_NUM_PPN")]
        return JobSize(*(int(c) if c.isdigit() else 0 for c in counts))

    @property
    def tmpdir(self) -> str:
        """The job's own directory under mom's ``$tmpdir``, when mom has one ('' otherwise).

        mom makes ``$tmpdir/<jobid>`` as the job's user and puts it in ``TMPDIR`` of the
        prologues and of the job, before any prologue, on every node (src/resmom/start_exec.c:
        TTmpDirName, TMakeTmpDir; src/resmom/mom_comm.c for a sister's join), and removes it
        with the job (src/resmom/mom_job_func.c). The prologue's environment is mom's, not
        the job's, and only a path named after the job is taken."""
        value = self._env("TMPDIR")
        if value.startswith("/") and ".." not in value.split("/") and os.path.basename(value.rstrip("/")) == self.jobid:
            return "/" + os.path.normpath(value).lstrip("/")
        return ""


    @property
    def gpu_file(self) -> Path:
        """Where pbs_mom lists the GPUs the server chose for the job, on the MS only:
        ``$PBS_HOME/aux/<jobid>gpu``, one ``HOST-gpuN`` line per GPU, written before the MS
        prologue (src/resmom/start_exec.c; docs/torque-facts.md "GPUs"). A sister has none."""
        return self.pbs_home / "aux" / f"{self.jobid}gpu"

def pbs_home_from(argv0: str, cwd: str) -> Path:
    """``$PBS_HOME``: the parent of mom_priv, where the hook lives and runs (cwd)."""
    for candidate in (Path(os.path.abspath(argv0)).parent, Path(cwd)):
        if candidate.name == "mom_priv":
            return candidate.parent
    return Path("/var/spool/torque")


def _padded(argv: Sequence[str]) -> List[str]:
    """pbs_mom's argv with every position this module reads present (a missing one is '')."""
    return list(argv) + [""] * 12


def resource_list_of(kind: str, argv: Sequence[str]) -> str:
    """The job's resource list: ``$5`` of a prologue, ``$6`` of an epilogue (docs/torque-facts.md)."""
    return _padded(argv)[5 if kind in PROLOGUES else 6]


def job_and_user(argv: Sequence[str]) -> Tuple[str, str]:
    """``$1`` and ``$2`` of every hook: the job id and the job's user name."""
    args = _padded(argv)
    return args[1], args[2]


def context_from(kind: str, argv: Sequence[str], environ: Mapping[str, str], cwd: Optional[str] = None) -> HookContext:
    args = _padded(argv)
    resource_list, exit_status = resource_list_of(kind, argv), None
    if kind not in PROLOGUES:
        try:
            exit_status = int(args[10])
        except ValueError:
            exit_status = None
    try:
        node_index = int(environ.get("PBS_NODENUM", "0") or "0")
    except ValueError:
        node_index = 0
    if kind in ("prologue", "epilogue"):
        node_index = 0
    pbs_home = pbs_home_from(args[0], cwd or os.getcwd())
    nodefile = None
    if kind in ("prologue", "epilogue"):
        nodefile = Path(environ.get("PBS_NODEFILE") or pbs_home / "aux" / args[1])
    return HookContext(kind=kind, jobid=args[1], user=args[2], group=args[3], jobname=args[4],
                       resource_list=resource_list, node_index=node_index, pbs_home=pbs_home,
                       workdir=environ.get("PBS_O_WORKDIR", ""), nodefile=nodefile,
                       exit_status=exit_status, environ=dict(environ))


@dataclass(frozen=True)
class MomConfig:
    """pbs_mom's own config, ``mom_priv/config`` (root's, readable by all): the one reader
    of it. Lines are ``$name value``; a name given twice takes its last value, as mom's
    parser (src/resmom/parse_config.c) sets each in turn."""

    path: Path
    entries: Tuple[Tuple[str, str], ...] = ()      # (``$name``, value) in file order

    @classmethod
    def read(cls, path: "str | Path") -> "MomConfig":
        """The file at ``path``; an unreadable or missing one has no entries (mom's defaults)."""
        try:
            text = Path(path).read_text(errors="replace")
        except OSError:
            text = ""
        entries = []
        for line in text.splitlines():
            words = line.split(None, 1)
            if words:
                entries.append((words[0], words[1].strip() if len(words) > 1 else ""))
        return cls(Path(path), tuple(entries))

    @classmethod
    def of(cls, pbs_home: "str | Path") -> "MomConfig":
        return cls.read(Path(pbs_home) / "mom_priv" / "config")

    def values(self, name: str) -> List[str]:
        """Every value of ``$name``, in file order."""
        return [value for key, value in self.entries if key == f"${name}"]

    def flag(self, name: str, default: bool) -> bool:
        """A boolean as mom's setbool() reads it: the last word it understands wins."""
        result = default
        for word in self.values(name):
            if word[:1] in ("t", "T", "y", "Y", "1") or word.lower() == "on":
                result = True
            elif word[:1] in ("f", "F", "n", "N", "0") or word.lower() == "off":
                result = False
        return result

    def number(self, name: str, default: int) -> int:
        """A whole number (``$prologalarm 300``); ``default`` when absent or unreadable."""
        found = [int(v) for v in self.values(name) if v.isdigit()]
        return found[-1] if found else default

    def job_starter(self) -> Optional[str]:
        """The ``$job_starter`` pbs_mom runs (its last line), or None without one."""
        starters = self.values("job_starter")
        return starters[-1] if starters else None

    def starter_is_ours(self) -> bool:
        """Is torque-docker's job starter pbs_mom's ``$job_starter``? Only then can a script move
        into a container."""
        return "torque-docker" in (self.job_starter() or "")


_SAFE = re.compile(r"[^A-Za-z0-9_.-]")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*", re.ASCII)


def safe_jobid(jobid: str) -> str:
    """A job id fit for a file name (Torque ids are ``NUM.server``, arrays ``NUM[IDX].server``)."""
    if not jobid or jobid in (".", ".."):
        raise RequestError(f"bad job id {jobid!r}", "this is pbs_mom's argument $1; is the hook run by pbs_mom?")
    return _SAFE.sub("_", jobid)[:200]


def job_tag(jobid: str) -> str:
    """The job's part of host aliases and container names: lower case, DNS-safe."""
    tag = re.sub(r"[^a-z0-9]+", "-", jobid.lower()).strip("-")
    if len(tag) > 40:
        import hashlib
        tag = tag[:31].rstrip("-") + "-" + hashlib.sha256(jobid.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return tag or "job"


_JOBID = re.compile(r"[0-9]+(?:\[[0-9]*\])?(?:\.[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)?", re.ASCII)
_USER = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?", re.ASCII)


def check_identity(jobid: str, user: str) -> None:
    """pbs_mom's $1 and $2 end up in SSH configs every user's ssh reads: take only the forms
    Torque produces (``NUM[IDX].server``, a POSIX user name), never a line break or a space."""
    if not _JOBID.fullmatch(jobid):
        raise NodeFault(f"{jobid!r} is not a Torque job id", "torque-docker hooks must be run by pbs_mom")
    if not _USER.fullmatch(user):
        raise NodeFault(f"the job user name {user!r} cannot be used in SSH configuration",
                        "user names must be POSIX names (letters, digits, '_', '.', '-')")


def parse_exec_host(text: str) -> List[str]:
    """Torque's ``exec_host`` (``n1/0-3+n2/0,2+n3/1``) as one host per slot, in its order.

    Without BEOWULF_JOB_MAP pbs_mom writes exactly this to the nodefile: one line per
    vnode, vnodes in exec_host order (src/resmom/start_exec.c: write_nodes_to_file)."""
    hosts: List[str] = []
    for part in text.strip().split("+"):
        host, sep, spec = part.rpartition("/")
        if not sep or len(host) > 253 or not _HOSTNAME.fullmatch(host):
            raise NodeFault(f"cannot read exec_host {text[:200]!r}", "is this pbs_mom's job file?")
        count = 0
        for piece in spec.split(","):
            lo, _, hi = piece.partition("-")
            if not lo.isdigit() or not (hi or lo).isdigit() or int(hi or lo) < int(lo):
                raise NodeFault(f"cannot read exec_host {text[:200]!r}", "is this pbs_mom's job file?")
            count += int(hi or lo) - int(lo) + 1
        hosts.extend([host] * count)
    return hosts


def job_file_exec_host(pbs_home: Path, jobid: str) -> Optional[str]:
    """``exec_host`` from the mother superior's own job file, or None.

    pbs_mom saves each job as XML in ``mom_priv/jobs`` (``<job><jobid>...</jobid>...
    <attributes><exec_host>...``, src/server/job_recov.c saveJobToXML) before the prologue
    runs; the server wrote exec_host. The file's name need not be the job id and pbs_mom
    rewrites it through a ``.JC`` (see momjobs), so every complete root-owned file not
    writable by others is read, a few times if the job's is missing. A job file whose
    attributes may hold the job's own markup raises momjobs.UserMarkup."""
    from . import momjobs
    directory = momjobs.jobs_dir(pbs_home)
    for attempt in range(momjobs.SCAN_TRIES):
        if attempt:
            time.sleep(momjobs.SCAN_PAUSE)
        try:
            names = sorted(os.listdir(directory), key=lambda n: (not n.startswith(jobid.split("[")[0]), n))
        except OSError:
            return None
        for name in names:
            if not name.endswith((momjobs.JOB_FILE, momjobs.JOB_FILE_COPY)):
                continue
            path = directory / name
            try:
                info = os.lstat(path)
                if not stat.S_ISREG(info.st_mode) or info.st_uid != 0 or info.st_mode & 0o022:
                    continue
                data = momjobs.read_job_bytes(path)
                if momjobs.parse_job_file(data).jobid != jobid:
                    continue
                return momjobs.exec_host_of(data) or None
            except momjobs.UserMarkup:
                raise
            except (OSError, momjobs.BadJobFile):
                continue
    return None


def assigned_hosts(ctx: "HookContext") -> List[str]:
    """The job's slots as the server assigned them, one host per slot: from exec_host,
    checked against PBS_NP and PBS_MSHOST. Never from the nodefile: a job's own variables
    can make pbs_mom write anything there (``-v BEOWULF_JOB_MAP=a:b``, and any variable
    whose name merely starts so: src/resmom/start_exec.c write_nodes_to_file reads it with
    a prefix match, src/lib/Libattr/attr_fn_arst.c arst_string)."""
    from .momjobs import UserMarkup
    try:
        text = job_file_exec_host(ctx.pbs_home, ctx.jobid)
    except UserMarkup:
        raise RequestError("a value of this job (its environment, -N, -A, -e or -o) holds an '&NAME;' that "
                           "pbs_mom writes into its job file as markup, so the nodes the server assigned "
                           "cannot be read from it",
                           "remove the '&...;' from the job's variables, name, account and output paths") from None
    if text is None:
        raise NodeFault(f"no exec_host for job {ctx.jobid} in pbs_mom's job files ({ctx.pbs_home}/mom_priv/jobs/*.JB)",
                        "torque-docker plans from exec_host in the XML job files of Torque 6; is this "
                        "hook run by such a pbs_mom?")
    hosts = parse_exec_host(text)
    np = ctx.size.np
    if np and np != len(hosts):
        raise NodeFault(f"exec_host {text[:200]} holds {len(hosts)} slots, PBS_NP says {np}",
                        "pbs_mom's job file and its environment disagree; look at this node's pbs_mom")
    if ctx.mshost and hosts[0] != ctx.mshost:
        raise NodeFault(f"exec_host {text[:200]} does not start with this node ({ctx.mshost})",
                        "pbs_mom's job file and its environment disagree; look at this node's pbs_mom")
    return hosts


def read_nodefile(text: str) -> List[str]:
    """Host names, one per slot; blank lines ignored."""
    hosts = [line.strip() for line in text.splitlines() if line.strip()]
    for host in hosts:
        if len(host) > 253 or not _HOSTNAME.fullmatch(host):
            raise RequestError(f"the nodefile holds {host!r}, which is not a host name",
                               "do not set BEOWULF_JOB_MAP for container jobs")
    return hosts


def slots_by_host(hosts: Sequence[str]) -> "OrderedDict[str, List[int]]":
    """Host -> the nodefile line numbers (slots) it owns, hosts in exec_host order."""
    table: "OrderedDict[str, List[int]]" = OrderedDict()
    for index, host in enumerate(hosts):
        table.setdefault(host, []).append(index)
    return table


def nodes_request(resources: Mapping[str, str]) -> str:
    """The job's node request as the server allocates from it: ``neednodes`` (the server
    copies ``nodes`` into it at submission and a scheduler may rewrite it;
    src/server/resc_def_all.c, req_runjob.c assign_hosts), else ``nodes`` (qsub's, in the
    submit filter)."""
    return resources.get("neednodes") or resources.get("nodes") or ""


def node_chunks(spec: str) -> List[str]:
    """A ``nodes=`` value cut into its node requests as Torque reads it: each ``#global``
    at the end is stripped and appended as ``:global`` to every ``+``-separated request,
    the last global first (``mod_spec`` and its callers in src/server/node_manager.c), then
    the value is split on ``+`` and ``|``. ``2:ppn=4#excl`` is ``["2:ppn=4:excl"]``,
    ``n1+n2#gpus=1`` is ``["n1:gpus=1", "n2:gpus=1"]``."""
    base, sep, globs = spec.partition("#")
    if sep:
        for glob in reversed(globs.split("#")):
            base = base.replace("+", f":{glob}+") + f":{glob}"
    return re.split(r"[+|]", base)


def parse_nodes_spec(spec: str) -> List[Tuple[Optional[str], int, int]]:
    """``nodes=`` into [(name or None, count, ppn)]: ``2:ppn=4``, ``n1:ppn=4+n2:ppn=2``, ``3``,
    ``2#ppn=4`` (a global: see ``node_chunks``)."""
    parts: List[Tuple[Optional[str], int, int]] = []
    for chunk in node_chunks(spec):
        fields = chunk.split(":")
        head, ppn = fields[0], 1
        for extra in fields[1:]:
            if extra.startswith("ppn="):
                try:
                    ppn = int(extra[4:])
                except ValueError:
                    raise RequestError(f"cannot read ppn in nodes={spec}", "write nodes=N:ppn=M") from None
        if head.isdigit():
            parts.append((None, int(head), ppn))
        elif head:
            parts.append((head, 1, ppn))
    return parts

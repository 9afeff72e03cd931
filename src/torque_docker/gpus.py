"""GPUs a job asks for with ``gpus=N`` in its ``nodes=`` request, and only those, in its containers.

Which GPUs: Torque tells only the mother superior which GPUs it chose
(``$PBS_HOME/aux/<jobid>gpu``, one ``host-gpuN`` line per GPU); a sister learns only the
count during ``prologue.parallel`` (its job file is written after the join;
docs/torque-facts.md "GPUs"). So the MS reads the file (its own node's lines) and a sister
does what the site chose in ``[gpus] sister``:

- ``refuse``: a job that asks for GPUs on a sister is refused (the MS sees that in the
  ``nodes=`` request and refuses before anything starts);
- ``whole-node``: the sister gives the node's GPUs when the job asked for as many as the
  node has (then Torque can have chosen no other set), and refuses otherwise;
- ``cgroup``: the sister reads Torque's devices cgroup of the job (Torque built with
  cgroups allows the job exactly its GPUs' device nodes); no Torque devices cgroups at all
  is the node's fault, the job's alone missing is not proven (``read_cgroup``).

What Torque chose (the gpu file, the cgroup) is what the job gets, whatever count the
``nodes=`` request says (``for_node``); the request is read as Torque reads it (``per_node``).

How: ``[gpus] method``: ``devices`` passes each GPU's device node (``[gpus] devices``) plus
the node-wide ones (``shared_devices``) and binds the site's driver files read-only;
``nvidia-runtime`` asks Docker for the GPUs by index (a device request with driver
``nvidia``, as ``docker run --gpus``), and the NVIDIA runtime mounts the driver; ``none``
(the default) gives containers no GPUs and refuses GPU jobs. In every container that gets
no GPU through the NVIDIA runtime, ``NVIDIA_VISIBLE_DEVICES=void``: an image that says
``all`` (CUDA images do) would otherwise get every GPU of a node whose Docker runs the
NVIDIA runtime by default.

With one container per process, the node's GPUs are split among its containers in slot
order (see ``split``). Inside, ``CUDA_VISIBLE_DEVICES`` is ``0..k-1`` (the container sees
only its k GPUs, which CUDA numbers from 0 in host order) and ``NVIDIA_VISIBLE_DEVICES``
the host indices (nvidia-runtime). The ssh logins into a container (MPI ranks, pbsdsh
tasks) read them from ``gpus.env`` in the job's files, the job starter from its record.
"""
from __future__ import annotations

import os
import re
import shlex
import stat
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .devices import Device, parse_entry
from .errors import NODE_ERRNOS, NodeFault, PolicyError, TorqueDockerError
from .torque import node_chunks, nodes_request

METHODS = ("none", "devices", "nvidia-runtime")
SISTER_CHOICES = ("refuse", "whole-node", "cgroup")
MAX_GPUS = 64                 # per node; more device nodes than this are not GPUs
MAX_FILE = 64 * 1024          # a gpu file of one job is a few lines
#: Torque's devices cgroup of a job: <root>/<jobid>/devices.list (src/resmom/trq_cgroups.c).
DEVICES_ROOTS = ("/sys/fs/cgroup/devices/torque",)
GPU_VARS = ("CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES")
#: dockerd registers the device driver "nvidia" (docker run --gpus) when it finds this on its PATH.
HOOK = "nvidia-container-runtime-hook"
HOOK_DIRS = ("/usr/bin", "/usr/local/bin", "/usr/sbin", "/usr/local/sbin", "/bin", "/sbin")
ENV_FILE = "gpus.env"         # in the job's files: per container, sourced by every ssh login
_GPU_LINE = re.compile(r"(?P<host>[A-Za-z0-9][A-Za-z0-9._-]{0,252})-gpu/?(?P<index>[0-9]{1,3})", re.ASCII)


# ----------------------------------------------------------------------------- the request
MAX_NODES = 100000            # node requests counted; more than any Torque cluster has
_DIGITS = re.compile(r"[0-9]{1,9}")     # Torque's number(): ASCII digits (str.isdigit takes '²' too)


def per_node(nodes_spec: str) -> List[int]:
    """GPUs asked for on each node, in the order of the request's nodes (exec_host's), read
    as Torque reads them (``proplist`` in src/server/node_manager.c): ``2:ppn=4:gpus=2``
    gives [2, 2], ``n1:gpus=1+n2`` [1, 0], ``2:ppn=4:gpus=2#excl`` [2, 2], ``2:ppn=1#gpus=2``
    [2, 2] (a ``#`` global goes to every node request; ``torque.node_chunks``); the last
    ``gpus=`` of a request counts. Raises PolicyError (the user's) for a value that asks
    for GPUs in a form not read exactly: a count of GPUs or nodes that is not a positive
    number, an empty request or field. A value without ``gpus=`` asks for none, whatever
    else is in it (the server judges the rest)."""
    asks = "gpus=" in nodes_spec
    out: List[int] = []

    def refuse(why: str) -> PolicyError:
        return PolicyError(f"cannot read the GPUs asked for in nodes={nodes_spec[:200]}: {why}",
                           "write nodes=N:ppn=M:gpus=G (G a number, e.g. nodes=1:ppn=4:gpus=2), "
                           "node requests joined by + and a #global at the end only")
    for chunk in node_chunks(nodes_spec):
        fields = chunk.split(":")
        head = fields[0]
        if _DIGITS.fullmatch(head):
            count, rest = int(head), fields[1:]
            if count < 1 and asks:
                raise refuse(f"{chunk!r} asks for no node")
        else:
            count, rest = 1, (fields if "=" in head else fields[1:])
            if not head and asks:
                raise refuse(f"an empty node request in {chunk!r}" if chunk else "an empty node request")
        gpus = 0
        for extra in rest:
            key, sep, value = extra.partition("=")
            if not extra and asks:
                raise refuse(f"an empty field in {chunk!r}")
            if key == "gpus" and sep:
                if not (_DIGITS.fullmatch(value) and int(value) > 0):
                    raise refuse(f"gpus={value[:20]!r} is not a positive number")
                gpus = int(value)
        out.extend([gpus] * min(count, MAX_NODES - len(out)))
    return out


def requested(nodes_spec: str) -> int:
    """Total GPUs of a ``nodes=`` value: ``2:ppn=4:gpus=2`` asks for 4, ``n1:gpus=1+n2`` for 1."""
    return sum(per_node(nodes_spec))


def refuse_requested(resources: Mapping[str, str], method: str = "none", sister: str = "refuse") -> None:
    """Raise PolicyError when the job asks for GPUs this site cannot give its containers:
    the method is ``none``, or GPUs on a sister where sisters refuse them. The same words
    at qsub (the submit filter) and in the MS prologue; never the node's fault, since every
    node of the site would answer the same."""
    spec = nodes_request(resources)
    asked = per_node(spec)
    count = sum(asked)
    if not count:
        return
    if method == "none":
        raise PolicyError(f"the job asks for {count} GPU(s) (gpus= in nodes={spec}), and this site gives "
                          "containers no GPUs ([gpus] method = none)",
                          "run GPU jobs without image=, drop gpus= if the job needs no GPU, or ask the admin")
    if sister == "refuse" and any(asked[1:]):
        raise PolicyError(f"the job asks for GPUs on more than its first node (nodes={spec}); this site gives "
                          "container jobs GPUs on the first node only ([gpus] sister = refuse): only there "
                          "does Torque say which GPUs it chose",
                          "ask for GPUs on one node (e.g. nodes=1:ppn=4:gpus=2), or ask the admin")


# ----------------------------------------------------------------------------- the site's config
def parse_devices(value: str) -> Tuple[Device, ...]:
    """``[gpus] devices``: one ``HOST[:CONTAINER]`` pattern with ``%d`` for the GPU's index
    (``/dev/nvidia%d``), or a list of device nodes, the GPU of index i being the i-th."""
    words = [w for w in re.split(r"[\s,]+", value) if w]
    if any("%d" in w for w in words):
        if len(words) != 1:
            raise ValueError("give either one pattern with %d or a list of device nodes, not both")
        host, sep, inside = words[0].partition(":")
        inside = inside if sep else host
        if host.count("%d") != 1 or inside.count("%d") != 1 or "%" in host.replace("%d", "") + inside.replace("%d", ""):
            raise ValueError(f"{words[0]!r}: %d must appear once on each side, and no other %")
        parse_entry(f"{host.replace('%d', '0')}:{inside.replace('%d', '0')}")
        return ((host, inside),)
    out: List[Device] = []
    for word in words:
        entry = parse_entry(word)
        if any(entry[1] == other[1] for other in out):
            raise ValueError(f"{entry[1]} is given twice")
        out.append(entry)
    if len(out) > MAX_GPUS:
        raise ValueError(f"more than {MAX_GPUS} GPUs")
    return tuple(out)


def parse_files(value: str) -> Tuple[Tuple[str, str], ...]:
    """``[gpus] driver_files``: ``HOST[:CONTAINER]`` absolute paths bound read-only."""
    out: List[Tuple[str, str]] = []
    for word in (w for w in re.split(r"[\s,]+", value) if w):
        host, sep, inside = word.partition(":")
        inside = inside if sep else host
        for path in (host, inside):
            if not path.startswith("/") or ".." in path.split("/") or path.rstrip("/") == "":
                raise ValueError(f"{word!r}: paths must be absolute, without '..', not /")
        inside = os.path.normpath(inside)
        if inside.split("/")[1] in ("proc", "sys", "dev", "run"):
            raise ValueError(f"{word!r}: the container path may not lie under /proc, /sys, /dev or /run")
        if any(inside == o for _, o in out):
            raise ValueError(f"{inside} is given twice")
        out.append((os.path.normpath(host), inside))
    return tuple(out)


def config_problem(values: Mapping[str, object]) -> str:
    """A cross-option rule of config.py: ``devices`` needs its device nodes listed."""
    if values["gpus_method"] == "devices" and not values["gpus_devices"]:
        return "method = devices needs [gpus] devices (e.g. /dev/nvidia%d)"
    return ""


# ----------------------------------------------------------------------------- the node's GPUs
def _is_char(path: str) -> bool:
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


def node_gpus(entries: Sequence[Device]) -> Tuple[Device, ...]:
    """This node's GPU device nodes by index: the listed ones, or the pattern's from 0 up to
    the first index without a character device."""
    if len(entries) == 1 and "%d" in entries[0][0]:
        host, inside = entries[0]
        out: List[Device] = []
        for i in range(MAX_GPUS):
            path = host.replace("%d", str(i))
            if not _is_char(path):
                break
            out.append((path, inside.replace("%d", str(i))))
        return tuple(out)
    return tuple(entries)


def check_char_devices(entries: Sequence[Device], key: str) -> None:
    """Each is a character device on this node, else the node's fault (the driver is missing)."""
    for host, _ in entries:
        if not _is_char(host):
            raise NodeFault(f"GPU device {host} ([gpus] {key}) is missing here or not a character device",
                            "load the NVIDIA driver on this node (nvidia-smi creates the device nodes), "
                            f"or correct [gpus] {key}")


def driver_binds(files: Sequence[Tuple[str, str]]) -> List[Tuple[str, str, bool]]:
    """The site's driver files as read-only binds, each (after its links) a file or directory
    whose every component is root's and writable by no one else, and for a directory
    everything in it (``_check_tree``): a user who could change one would run code in
    every GPU job."""
    out: List[Tuple[str, str, bool]] = []
    fix = "install the NVIDIA driver's user-space files on this node, or correct [gpus] driver_files"
    for host, inside in files:
        real = os.path.realpath(host)
        path = "/"
        for part in [""] + [p for p in real.split("/") if p]:
            path = os.path.join(path, part)
            try:
                st = os.lstat(path)
            except OSError as exc:
                raise NodeFault(f"driver file {host} ([gpus] driver_files) is missing here ({exc.strerror})", fix) from None
            if st.st_uid != 0 or st.st_mode & 0o022:
                raise NodeFault(f"driver file {host} ([gpus] driver_files): {path} is not root's alone "
                                f"(owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o})",
                                "make it root's and writable only by root, or remove it from [gpus] driver_files")
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            raise NodeFault(f"driver file {host} ([gpus] driver_files) is neither a file nor a directory", fix)
        if stat.S_ISDIR(st.st_mode):
            _check_tree(host, real)
        out.append((real, inside, True))
    return out


MAX_TREE = 10000              # entries under one listed directory; more is not a driver's


def _check_tree(host: str, top: str) -> None:
    """Everything under a listed directory, by lstat (no link followed): files and
    directories root's and writable by no one else, links root's (they resolve inside the
    container, in the image), nothing else (a device node would reach the container)."""
    pending, seen = [top], 0
    while pending:
        directory = pending.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError as exc:
            raise NodeFault(f"driver directory {host} ([gpus] driver_files): cannot list {directory} "
                            f"({exc.strerror})", "make it root's and readable, or remove it from [gpus] driver_files") from None
        for entry in entries:
            seen += 1
            if seen > MAX_TREE:
                raise NodeFault(f"driver directory {host} ([gpus] driver_files) holds more than {MAX_TREE} entries",
                                "list the driver's files themselves, or a smaller directory")
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                raise NodeFault(f"driver directory {host} ([gpus] driver_files): {entry.path} ({exc.strerror})",
                                "install the NVIDIA driver's user-space files on this node, or correct "
                                "[gpus] driver_files") from None
            kind = stat.S_IFMT(st.st_mode)
            if kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
                raise NodeFault(f"driver directory {host} ([gpus] driver_files) holds {entry.path}, which is "
                                "neither a file, a directory nor a link", "remove it, or list the driver's files themselves")
            if st.st_uid != 0 or (kind != stat.S_IFLNK and st.st_mode & 0o022):
                raise NodeFault(f"driver directory {host} ([gpus] driver_files): {entry.path} is not root's alone "
                                f"(owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o})",
                                "make it root's and writable only by root, or remove the directory from "
                                "[gpus] driver_files")
            if kind == stat.S_IFDIR:
                pending.append(entry.path)


# ----------------------------------------------------------------------------- which GPUs the job got here
def read_gpu_file(path: str, host: str) -> List[int]:
    """The GPU indices of ``host`` in Torque's gpu file of the job, in the file's order.

    Root reads it; pbs_mom wrote it, yet it is checked like anything else: a regular file of
    root's that no one else may write, opened without following a link or blocking, every
    line ``HOST-gpuN`` (also ``HOST-gpu/N``, exec_gpus' own form), no GPU twice. A file that
    is missing or wrong is the node's fault (pbs_mom's set-up), never the user's."""
    fix = "check that pbs_mom is built with GPU support (--enable-nvidia-gpus) and the server's nodes file gives this node gpus="
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise NodeFault(f"the job asks for GPUs, but pbs_mom wrote no gpu file ({path})", fix) from None
    except OSError as exc:
        raise NodeFault(f"cannot open the job's gpu file {path} ({exc.strerror})", fix) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022 or st.st_size > MAX_FILE:
            raise NodeFault(f"the job's gpu file {path} is not a small regular file of root's that only root "
                            "may write", "remove it; pbs_mom writes it before the prologue")
        data = os.read(fd, MAX_FILE + 1)
    finally:
        os.close(fd)
    indices: List[int] = []
    for n, raw in enumerate(data.decode("ascii", errors="replace").splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        match = _GPU_LINE.fullmatch(line)
        if not match:
            raise NodeFault(f"the job's gpu file {path}, line {n}: {line[:80]!r} is not HOST-gpuN", fix)
        if match.group("host") != host and match.group("host").split(".")[0] != host.split(".")[0]:
            continue
        index = int(match.group("index"))
        if index in indices:
            raise NodeFault(f"the job's gpu file {path} names GPU {index} of {host} twice", fix)
        indices.append(index)
    return indices


#: Run in a child that joins the job's devices cgroup: for each major:minor, can it mknod a
#: node of it (the cgroup's "m" right, which Torque denies with "r" and "w")? Nothing is
#: opened. Root runs it, so it makes its nodes only in a directory of root's alone (argv[2],
#: opened without following a link, its owner and mode checked on the descriptor) and by
#: names relative to that descriptor: never in $TMPDIR, which pbs_mom points at the job
#: user's directory. The first pair is a control (/dev/null's 1:3, which Torque never
#: denies): when even that is refused, mknod says nothing about the cgroup here.
#: Exit codes: 0 the answer on stdout, 2 cannot join, 3 the directory, 4 mknod failed.
_PROBE = r"""
import errno, os, stat, sys
try:
    with open(sys.argv[1], "w") as tasks:
        tasks.write(str(os.getpid()))
except OSError as exc:
    sys.stderr.write("cannot join the cgroup: %s\n" % exc)
    sys.exit(2)
try:
    fd = os.open(sys.argv[2], os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        raise OSError(errno.EPERM, "not a directory of root's alone")
except OSError as exc:
    sys.stderr.write("probe directory %s: %s\n" % (sys.argv[2], exc))
    sys.exit(3)
ok = []
for n, pair in enumerate(sys.argv[3:]):
    major, minor = (int(x) for x in pair.split(":"))
    name = "%d.%d" % (os.getpid(), n)
    try:
        os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        pass
    try:
        os.mknod(name, 0o600 | stat.S_IFCHR, os.makedev(major, minor), dir_fd=fd)
    except OSError as exc:
        if exc.errno == errno.EPERM:
            continue
        sys.stderr.write("mknod %s: %s\n" % (pair, exc))
        sys.exit(4)
    os.unlink(name, dir_fd=fd)
    ok.append(str(n))
print(" ".join(ok))
"""
CONTROL = "1:3"               # /dev/null: Torque's cgroup denies GPUs only
PROBE_DIR = "probe"           # under the state dir, root's 0700: where the probe makes its nodes


def _majmin(host: str) -> str:
    rdev = os.stat(host).st_rdev
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def probe_dir(state_dir: str) -> str:
    """The probe's directory: root's alone (0700) under the node's state dir."""
    from .state import NodeState, ensure_dir
    state = NodeState(state_dir)
    state.ensure()
    return str(ensure_dir(state.root / PROBE_DIR, 0o700, os.geteuid(), os.getegid()))


def _probe(jobid: str, cgroup: str, pairs: Sequence[str], where: str) -> List[int]:
    """Which of ``pairs`` a child in the cgroup may mknod (positions in ``pairs``).

    The child runs isolated from the hook's environment (``-I -S``, a fixed PATH, cwd /):
    pbs_mom gives the prologue the job's TMPDIR and more. Its failures are nobody's proven
    fault (a qdel can remove the cgroup under it): the MS requeues a bounded number of times."""
    import subprocess
    import sys
    fix = "run 'torque-docker check' on this node; [gpus] sister = cgroup needs Torque's cgroup v1 devices controller"
    try:
        done = subprocess.run([sys.executable, "-I", "-S", "-c", _PROBE, os.path.join(cgroup, "tasks"), where,
                               CONTROL, *pairs], capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL, env={"PATH": "/bin:/usr/bin"}, cwd="/")
    except OSError as exc:
        error = NodeFault if exc.errno in NODE_ERRNOS else TorqueDockerError
        raise error(f"cannot look into Torque's devices cgroup of job {jobid} ({exc.strerror})", fix) from None
    except subprocess.TimeoutExpired:
        raise TorqueDockerError(f"looking into Torque's devices cgroup of job {jobid} took over 30 s", fix) from None
    words = done.stdout.split()
    if done.returncode != 0 or not all(w.isdigit() and int(w) <= len(pairs) for w in words):
        raise TorqueDockerError(f"cannot look into Torque's devices cgroup of job {jobid}: "
                                f"{(done.stderr.strip().splitlines() or ['no answer'])[-1][:200]}", fix)
    if "0" not in words:
        raise TorqueDockerError(f"cannot look into Torque's devices cgroup of job {jobid}: even /dev/null's "
                                f"number may not be made in {where}", fix)
    return [int(w) - 1 for w in words if w != "0"]


def _cgroup_name(root: str, jobid: str) -> str:
    """The job's cgroup directory under ``root``: ``<jobid>``, or, made by a pbs_mom in
    multi-mom mode, ``<jobid>.<port>`` (docs/torque-facts.md "GPUs"); "" when neither is
    there. Two ports' cgroups of one job (two moms of this host in the job) cannot be told
    apart from here: refused, nobody's proven fault."""
    if os.path.isdir(os.path.join(root, jobid)):
        return jobid
    try:
        names = sorted(n for n in os.listdir(root) if re.fullmatch(re.escape(jobid) + r"\.[0-9]{1,5}", n))
    except OSError:
        return ""
    if len(names) > 1:
        raise TorqueDockerError(f"pbs_moms of several ports hold a devices cgroup of job {jobid} here "
                                f"({', '.join(names[:4])}): which is this one's cannot be told",
                                "run one pbs_mom per node with [gpus] sister = cgroup, or choose another [gpus] sister")
    return names[0] if names else ""


def read_cgroup(jobid: str, gpus_here: Sequence[Device], roots: Optional[Sequence[str]] = None,
                where: str = "") -> List[int]:
    """The indices of this node's GPUs that Torque's devices cgroup of the job lets it use.

    Torque (src/resmom/trq_cgroups.c, trq_cg_add_devices_to_cgroup) writes a ``c 195:N rwm``
    line into the job's ``devices.deny`` for every GPU NOT given to the job; the cgroup
    otherwise allows everything, and the kernel then shows only ``a *:* rwm`` in
    ``devices.list``. So a short-lived child joins the cgroup (``<jobid>``, multi-mom ``<jobid>.<port>``) and tries to mknod each GPU's
    major:minor in ``where`` (root's alone; see ``_PROBE``); what it may make, the job may
    use. A cgroup whose list is a plain allow-list is read directly. No Torque devices
    cgroups at all is the node's fault (the site said Torque restricts jobs to their GPUs
    here); only this job's missing is not proven (a qdel removes it)."""
    fix = "run pbs_mom with cgroups (--enable-cgroups) on this node, or choose another [gpus] sister"
    roots = DEVICES_ROOTS if roots is None else roots
    if "/" in jobid or jobid in ("", ".", ".."):
        raise NodeFault(f"job id {jobid!r} cannot name a cgroup", fix)
    text: Optional[str] = None
    found = ""
    for root in roots:
        name = _cgroup_name(root, jobid)
        if not name:
            continue
        try:
            fd = os.open(os.path.join(root, name, "devices.list"), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            text = os.read(fd, MAX_FILE).decode("ascii", errors="replace")
        finally:
            os.close(fd)
        found = os.path.join(root, name)
        break
    if text is None:
        if not any(os.path.isdir(root) for root in roots):
            raise NodeFault(f"Torque's devices cgroup of job {jobid} is not there ({', '.join(roots)} is missing)",
                            fix)
        # pbs_mom makes it before the prologues; a qdel meanwhile removes it: not proven the node's
        raise TorqueDockerError(f"Torque's devices cgroup of job {jobid} is not there (in {', '.join(roots)})", fix)
    pairs: List[Tuple[int, str]] = []
    for index, (host, _) in enumerate(gpus_here):
        try:
            pairs.append((index, _majmin(host)))
        except OSError:
            continue
    lines = [line.split() for line in text.splitlines() if len(line.split()) >= 2]
    if not any(words[0] == "a" for words in lines):         # an allow-list: read it
        allowed = {words[1] for words in lines if words[0] == "c"}
        return [index for index, pair in pairs if pair in allowed]
    if not where:
        raise TorqueDockerError("no directory to probe Torque's devices cgroup in", "report this as a bug")
    return [pairs[n][0] for n in _probe(jobid, found, [pair for _, pair in pairs], where)]


# ----------------------------------------------------------------------------- into containers
@dataclass(frozen=True)
class Share:
    """What one container gets: device nodes, the NVIDIA runtime's GPU indices, variables."""

    devices: Tuple[Device, ...] = ()
    device_ids: Tuple[str, ...] = ()
    env: Dict[str, str] = field(default_factory=dict)
    indices: Tuple[int, ...] = ()       # host indices, for messages


NO_GPUS = Share(env={"NVIDIA_VISIBLE_DEVICES": "void"})


def split(indices: Sequence[int], containers: int) -> List[Tuple[int, ...]]:
    """The node's GPUs among its containers in slot order, as even as possible: with k GPUs
    and p containers, k >= p gives each a contiguous run of k//p or k//p+1; k < p gives
    each one GPU, consecutive containers sharing it (ranks 0-1 on GPU a, 2-3 on b, ...)."""
    k = len(indices)
    if not k or containers < 1:
        return [() for _ in range(max(containers, 0))]
    if k >= containers:
        return [tuple(indices[i * k // containers:(i + 1) * k // containers]) for i in range(containers)]
    return [(indices[i * k // containers],) for i in range(containers)]


def shares(method: str, gpus_here: Sequence[Device], shared: Sequence[Device], indices: Sequence[int],
           containers: int) -> List[Share]:
    """One Share per container of this node (slot order)."""
    if not indices:
        return [NO_GPUS] * containers
    out = []
    for part in split(indices, containers):
        env = {"CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in range(len(part)))}
        if method == "nvidia-runtime":
            env["NVIDIA_VISIBLE_DEVICES"] = ",".join(str(i) for i in part)
            out.append(Share(device_ids=tuple(str(i) for i in part), env=env, indices=part))
        else:
            env["NVIDIA_VISIBLE_DEVICES"] = "void"
            out.append(Share(devices=tuple(gpus_here[i] for i in part) + tuple(shared), env=env, indices=part))
    return out


def for_node(cfg, resources: Mapping[str, str], *, is_ms: bool, node_index: int, jobid: str,
             gpu_file: str, containers: int, log=None) -> List[Share]:
    """The shares of this node's containers for a job: NO_GPUS for each when the job asks for
    no GPU here. Raises PolicyError when the site cannot honour the request (the user's),
    NodeFault when this node does not have what the site says it has.

    What Torque chose (the MS's gpu file, a sister's cgroup) is what the job gets: a count
    other than the request's is logged, never the node's fault (the request is the user's
    text, and the resource list reaching a hook can be cut short); none at all for a job
    that asks for some here is nobody's proven fault (the MS requeues, then explains)."""
    spec = nodes_request(resources)
    refuse_requested(resources, cfg.gpus_method, cfg.gpus_sister)
    wanted = per_node(spec)
    here = wanted[node_index] if node_index < len(wanted) else 0
    if not here:
        return [NO_GPUS] * containers
    gpus_here = node_gpus(cfg.gpus_devices)
    node = cfg.node_name()
    if is_ms:
        indices = read_gpu_file(gpu_file, node)
    elif cfg.gpus_sister == "whole-node":
        if here != len(gpus_here):
            raise PolicyError(f"the job asks for {here} GPU(s) on node {node}, which has {len(gpus_here)}: "
                              "on a node other than its first, this site gives GPUs only to a job that asks "
                              "for all of them ([gpus] sister = whole-node)",
                              f"ask for gpus={len(gpus_here)} on every node but the first, or for GPUs on one node")
        indices = list(range(len(gpus_here)))
    else:   # cgroup (refuse never gets here: refuse_requested)
        indices = read_cgroup(jobid, gpus_here, where=probe_dir(cfg.paths_state_dir))
    indices = sorted(indices)           # host order: CUDA numbers a container's GPUs so
    source = "the gpu file pbs_mom wrote" if is_ms else "Torque's devices cgroup"
    if not indices:
        raise TorqueDockerError(f"the job asks for {here} GPU(s) on {node}, and {source} gives it none",
                                f"check that Torque's name of this node is {node} ([network] node_name), that "
                                "pbs_mom is built with GPU support (and cgroups, for [gpus] sister = cgroup) and "
                                "that the server's nodes file gives this node its gpus=")
    if len(indices) != here and log is not None:
        log.warning(jobid, f"the job asks for {here} GPU(s) on {node}, and {source} gives it "
                           f"{len(indices)} ({','.join(map(str, indices))}): it gets those")
    beyond = [i for i in indices if i >= len(gpus_here)]
    if beyond:
        raise NodeFault(f"Torque gave the job GPU {beyond[0]} of {node}, which has GPU device nodes for "
                        f"{len(gpus_here)} ([gpus] devices)",
                        "load the NVIDIA driver on this node, or correct [gpus] devices or the server's gpus= for it")
    if cfg.gpus_method == "devices":
        check_char_devices([gpus_here[i] for i in indices], "devices")
        check_char_devices(cfg.gpus_shared_devices, "shared_devices")
    return shares(cfg.gpus_method, gpus_here, cfg.gpus_shared_devices, indices, containers)


def sister_hint(cfg, resources: Mapping[str, str]) -> str:
    """Words for the MS's message when a sister's container is missing: with ``whole-node``
    a sister refuses a job that asks for fewer GPUs than it has, and only it knows its count."""
    try:
        asked = per_node(nodes_request(resources))
    except PolicyError:                 # refused at the prologue already
        return ""
    if cfg.gpus_method == "none" or cfg.gpus_sister != "whole-node" or not any(asked[1:]):
        return ""
    return ("; if it is the GPUs: on a node other than its first, this site gives GPUs only to a job "
            "that asks for all of that node's GPUs ([gpus] sister = whole-node)")


def share_of(per: Sequence[Share], position: int) -> Share:
    """The share of the container at ``position`` in the node's plan (none when not planned)."""
    return per[position] if position < len(per) else NO_GPUS


def binds_for(cfg, per: Sequence[Share]) -> List[Tuple[str, str, bool]]:
    """The driver files to bind when a container of this node gets GPU device nodes."""
    if cfg.gpus_method != "devices" or not any(share.indices for share in per):
        return []
    return driver_binds(cfg.gpus_driver_files)


def env_file_text(aliases: Sequence[str], per: Sequence[Share]) -> str:
    """``gpus.env``: the GPU variables of each container by its alias (the session reads the
    container's host name into TORQUE_DOCKER_ALIAS before sourcing it)."""
    lines = ["# torque-docker: the GPU variables of each container of this node (written by the prologue)",
             'case "$TORQUE_DOCKER_ALIAS" in']
    for alias, share in zip(aliases, per):
        sets = "; ".join(f"{k}={shlex.quote(v)}; export {k}" for k, v in sorted(share.env.items()))
        unsets = " ".join(k for k in GPU_VARS if k not in share.env)
        lines.append(f"    {shlex.quote(alias)}) {sets}{'; unset ' + unsets if unsets else ''} ;;")
    lines.append("esac")
    return "\n".join(lines) + "\n"


def describe(cfg) -> str:
    """What ``torque-docker check`` says about GPUs on this node."""
    method = cfg.gpus_method
    if method == "none":
        return "GPUs: method none (GPU jobs are refused)"
    found = node_gpus(cfg.gpus_devices)
    text = (f"GPUs: method {method}, sisters: {cfg.gpus_sister}; {len(found)} GPU(s): "
            + (" ".join(h for h, _ in found[:16]) or "none"))
    if method == "devices":
        text += "; shared: " + (" ".join(h for h, _ in cfg.gpus_shared_devices) or "none")
        text += "; driver files: " + (" ".join(h for h, _ in cfg.gpus_driver_files) or "none")
    if method == "nvidia-runtime":
        text += ("; Docker is given NVML indices, taken to be Torque's numbers (the /dev/nvidiaN minors): "
                 "check compares them when nvidia-smi is installed (by hand: nvidia-smi -q | grep -i 'minor number')")
    return text


SMI = "nvidia-smi"


def smi_index_minors() -> Optional[List[Tuple[int, int]]]:
    """(NVML index, /dev/nvidiaN minor) of each GPU as nvidia-smi reports them; None when
    nvidia-smi is not installed or does not answer plainly (nothing to compare)."""
    import subprocess
    found = next((os.path.join(d, SMI) for d in HOOK_DIRS if os.access(os.path.join(d, SMI), os.X_OK)), "")
    if not found:
        return None
    try:
        done = subprocess.run([found, "--query-gpu=index,minor_number", "--format=csv,noheader,nounits"],
                              capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
                              env={"PATH": "/bin:/usr/bin"}, cwd="/")
    except (OSError, subprocess.TimeoutExpired):
        return None
    pairs = [tuple(w.strip() for w in line.split(",")) for line in done.stdout.splitlines() if line.strip()]
    if done.returncode != 0 or not all(len(p) == 2 and p[0].isdigit() and p[1].isdigit() for p in pairs):
        return None
    return [(int(p[0]), int(p[1])) for p in pairs]


def check_node(cfg) -> None:
    """Raise NodeFault when the node lacks what ``[gpus]`` says it has (for ``check``)."""
    if cfg.gpus_method == "none":
        return
    if not node_gpus(cfg.gpus_devices):
        raise NodeFault(f"[gpus] method = {cfg.gpus_method}, but no GPU device node of [gpus] devices is here",
                        "load the NVIDIA driver on this node, or correct [gpus] devices")
    if cfg.gpus_method == "devices":
        check_char_devices(cfg.gpus_shared_devices, "shared_devices")
        driver_binds(cfg.gpus_driver_files)
    if cfg.gpus_method == "nvidia-runtime" and not any(
            os.access(os.path.join(d, HOOK), os.X_OK) for d in HOOK_DIRS):
        raise NodeFault(f"[gpus] method = nvidia-runtime, but {HOOK} is not installed here (dockerd offers "
                        "the 'nvidia' device driver only with it)",
                        "install the NVIDIA Container Toolkit on this node, or set [gpus] method = devices")
    if cfg.gpus_method == "nvidia-runtime":
        differ = [(index, minor) for index, minor in smi_index_minors() or () if index != minor]
        if differ:
            raise NodeFault(f"[gpus] method = nvidia-runtime gives Docker NVML indices, and here NVML's GPU "
                            f"{differ[0][0]} is /dev/nvidia{differ[0][1]}, the GPU Torque numbers "
                            f"{differ[0][1]}: jobs would get other GPUs than Torque gave them",
                            "set [gpus] method = devices on this node (it passes /dev/nvidiaN by Torque's number)")

"""The life of a container job on one node: set up in the prologues, torn down in the epilogues.

Data flows one way: HookContext -> JobRequest -> plan -> runtime -> rendered files ->
state. Set-up either completes or removes what it made; teardown runs every step even
when some fail, and is safe to run any number of times (pbs_mom may skip or repeat
epilogues, see docs/torque-facts.md).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from . import devices, gpus, hostpath, keys, plan, policy, probe, render, resources, seccomp, sweep
from .config import Config
from .connect import CTR_DIR, GROUP_DIR, RELAY, connect_job, image_tag, node_hosts
from .errors import (ConfigError, ContainerFault, ImageBusy, ImageError, NodeFault, PolicyError, RequestError,
                     TorqueDockerError, no_sshd, sshd_exited)
from .gpus import Share
from .identity import UserInfo, container_ids_problem, lookup, reachable_dirs
from .jobcontext import JobContext, Timer
from .log import Log
from .records import JobRecord, StartedContainer, StarterInfo
from .request import JobRequest, Mount, is_reference, parse_resource_list, request_from_resource_list
from .runtime import (L_ALIAS, L_HOST, L_JOB, L_NODE, L_PORT, L_SLOT, L_USER, ContainerSpec, Runtime)
from .state import NodeState, ensure_dir, write_file, write_in_place
from .teardown import stage_dir, teardown
from .torque import HookContext, MomConfig, assigned_hosts, check_identity, safe_jobid

STARTER_RECORD = "starter.json"  # the job starter's record, in the job directory (root's)


@dataclass
class Setup:
    """What a prologue made; enough to undo it."""

    jobid: str
    containers: List[StartedContainer] = field(default_factory=list)
    summary: str = ""


# --------------------------------------------------------------------------- prologue
def prologue(ctx: HookContext, cfg: Config, log: Log) -> Setup:
    timer = Timer()
    request = request_from_resource_list(ctx.resource_list)     # the user's mistakes first
    check_identity(ctx.jobid, ctx.user)
    image = policy.resolve_image(request.image, cfg)
    model = request.model or cfg.jobs_default_model
    run = run_mode(request, cfg, ctx.pbs_home) if ctx.is_ms else "host"
    extra_mounts = policy.check_mounts(request.mounts, cfg)
    ulimits = policy.container_ulimits(request.ulimits, cfg, devices.is_rdma(cfg.devices_paths))
    requested = parse_resource_list(ctx.resource_list)
    gpus.refuse_requested(requested, cfg.gpus_method, cfg.gpus_sister)
    user = lookup(ctx.user, ctx.group)
    secret = keys.load_secret(cfg.paths_secret_file)
    identity = keys.JobIdentity.of(ctx)          # job ids repeat: bind the keys to who runs it
    secrets_ = keys.JobSecrets.derive(secret, identity)

    def ports(node_index: int, slot: int) -> List[int]:
        return keys.candidate_ports(secret, identity, node_index, slot, cfg.network_port_range,
                                    cfg.network_port_candidates)

    note = ""
    if ctx.is_ms:
        # What the server assigned (exec_host), never the nodefile, which the job's own
        # variables can fill (BEOWULF_JOB_MAP); the nodefile is rewritten from the plan.
        hosts = assigned_hosts(ctx)
        note = nodefile_note(ctx, hosts)
        nodes = plan.plan_job(ctx.jobid, hosts, model, ports)
        local = nodes[0]
        slots_here: Optional[int] = len(local.containers[0].nodefile_slots) if model == "node" else len(local.containers)
        num_nodes = len(nodes)
        for node in nodes[1:]:   # a limit Docker refuses on a sister: the user hears it from here
            resources.memory_limit(requested, model, sum(len(c.nodefile_slots) for c in node.containers), num_nodes)
    else:
        try:
            slots_here = plan.local_slot_count(ctx.node_index, requested, ctx.size.num_ppn, ctx.size.num_nodes)
        except RequestError:
            if model == "process":
                raise
            slots_here = None        # per-node: one container anyway, just not pinned
        count = 1 if model == "node" or slots_here is None else slots_here
        nodes, local = [], plan.plan_local(ctx.jobid, ctx.node_index, count, model, ports)
        num_nodes = ctx.size.num_nodes or 1
    mem_limit = resources.memory_limit(requested, model, slots_here or 1, num_nodes)
    passed = devices.resolve(cfg.devices_paths)     # the node's fault when the site's devices are missing
    gpu_shares = gpus.for_node(cfg, requested, is_ms=ctx.is_ms, node_index=ctx.node_index, jobid=ctx.jobid,
                               gpu_file=str(ctx.gpu_file), containers=len(local.containers), log=log)
    timer.step("plan")

    state = NodeState(cfg.paths_state_dir)
    state.ensure()
    runtime = Runtime.from_config(cfg)
    sweep_node(cfg, ctx, runtime, log)
    # A requeued job starts again from scratch on this node.
    teardown(cfg, ctx.jobid, runtime=runtime, nodefile=ctx.nodefile if ctx.is_ms else None, log=log)
    reference = ensure_image(runtime, image, cfg, log, ctx.jobid, pinned_fault=ctx.is_ms, user=user)
    image_id = runtime.image_id(reference) or reference
    shown = image.asked if image.tarball else reference
    check_image_groups(runtime, state, image_id, shown, user, {L_JOB: ctx.jobid, L_HOST: cfg.node_name()})
    volumes = runtime.image_volumes(image_id)
    timer.step("image")

    job = JobContext(hook=ctx, cfg=cfg, log=log, state=state, runtime=runtime, user=user, secrets=secrets_,
                     address=cfg.listen_address(), image=reference, image_id=image_id, timer=timer)
    binds = job_binds(user, ctx.workdir, extra_mounts, state.ctr_dir(ctx.jobid),
                      forbidden=policy.forbidden_sources(cfg), site=policy.default_mounts(cfg),
                      tmpdir=ctx.tmpdir)
    setup = Setup(ctx.jobid)
    try:
        tmpfs = container_tmpfs(volumes, binds, cfg.jobs_tmp_size, shown)
        ensure_dir(state.job_dir(ctx.jobid), 0o755)
        # The record first: whatever is mounted below for this job, gc finds the job by it.
        record = JobRecord(jobid=ctx.jobid, user=user.name, node_index=ctx.node_index, host=job.host,
                           ms=ctx.is_ms, image=reference, started=time.time())
        state.save_job(record)
        prepare_job_dir(state, ctx.jobid, user, secrets_, cfg, ms=ctx.is_ms)
        staged = stage_binds(state, ctx.jobid, binds) + gpus.binds_for(cfg, gpu_shares)
        write_file(state.ctr_dir(ctx.jobid) / gpus.ENV_FILE,
                   gpus.env_file_text([c.alias for c in local.containers], gpu_shares), 0o644)
        timer.step("files")
        cores = resources.torque_cpuset(ctx.jobid)
        if cores is None and slots_here:
            cores = state.allocate_cores(ctx.jobid, slots_here, resources.node_cpus())
        limits = ContainerLimits(cores=tuple(cores or ()), mem_limit=mem_limit, model=model,
                                 cgroup_parent=cgroup_parent(cfg, ctx.jobid), tmpfs=tmpfs,
                                 ulimits=ulimits, devices=passed, gpus=tuple(gpu_shares))
        started = start_containers(job, local, staged, limits)
        setup.containers = started
        record = replace(record, containers=tuple(started))
        state.save_job(record)
        fit_login_shell(job, started[0].id)
        timer.step("start")
        if ctx.is_ms:
            connect_job(ctx, cfg, state, user, nodes, started, job.address, secrets_, timer, image_id, reference,
                        assigned=hosts)
            state.save_job(replace(record, ssh_config=str(host_ssh_config(cfg, ctx.jobid)), nodefile=str(ctx.nodefile),
                                   aliases=tuple(c.alias for n in nodes for c in n.containers)))
        write_starter_file(state, ctx.jobid, user, cfg, run if ctx.is_ms else "sister",
                           alias=started[0].alias, path=runtime.image_path(reference),
                           usage_table=model == "process" or cfg.log_verbose, image=reference, model=model,
                           local_aliases=[c.alias for c in started],
                           node_aliases=[n.containers[0].alias for n in nodes],
                           gpu_env={c.alias: share.env for c, share in zip(local.containers, gpu_shares)})
        where = (f"{len(nodes)} node(s) x {len(local.containers)} container(s)" if ctx.is_ms
                 else f"{len(started)} container(s)")
        setup.summary = (f"torque-docker: job {ctx.jobid}: image {shown} ({image_id[:19]}), model {model}, run {run}, "
                         f"{where}, ready in {timer.total:.1f} s") + (f"\ntorque-docker: job {ctx.jobid}: {note}" if note else "")
        if note:
            log.warning(ctx.jobid, note)
        log.info(ctx.jobid, f"{ctx.kind} ready on {cfg.node_name()}: {setup.summary} [{timer.line()}]")
        return setup
    except BaseException:
        undone = teardown(cfg, ctx.jobid, runtime=runtime, nodefile=ctx.nodefile if ctx.is_ms else None, log=log)
        for error in undone.errors:
            log.error(ctx.jobid, f"cleanup after failed {ctx.kind}: {error}")
        raise
    finally:
        hostpath.close_all([b.pin for b in binds])


def nodefile_note(ctx: HookContext, assigned: Sequence[str]) -> str:
    """A word for the job when pbs_mom's nodefile was not the assigned slots (the job set
    BEOWULF_JOB_MAP): it is replaced anyway, this only says why it changed."""
    try:
        lines = [line.strip() for line in Path(str(ctx.nodefile)).read_text(errors="replace").splitlines()
                 if line.strip()]
    except OSError:
        return ""
    # pbs_mom's $nodefile_suffix may follow each host name.
    if len(lines) == len(assigned) and all(line.startswith(host) for line, host in zip(lines, assigned)):
        return ""
    return (f"the nodefile pbs_mom wrote ({len(lines)} line(s), from BEOWULF_JOB_MAP?) is not the "
            f"{len(assigned)} slot(s) the server assigned; the job gets the assigned slots")


def sweep_node(cfg: Config, ctx: HookContext, runtime: Runtime, log: Log) -> None:
    """Remove what jobs mom no longer knows left on this node; never fails the job."""
    try:
        sweep.gc(cfg, str(ctx.pbs_home), grace=cfg.jobs_sweep_grace, server=sweep.server_of(ctx.jobid),
                 log=log, runtime=runtime, skip=ctx.jobid)
    except Exception as exc:
        log.warning(ctx.jobid, f"sweep failed: {exc}")


def run_mode(request: JobRequest, cfg: Config, pbs_home: Path) -> str:
    if not MomConfig.of(pbs_home).starter_is_ours():
        if request.run == "container":
            raise PolicyError("run=container needs the torque-docker job starter, which this node lacks",
                              "use run=host, or ask the admin to run 'torque-docker install' (it sets $job_starter)")
        return "host"
    return request.run or cfg.jobs_default_run


def write_starter_file(state: NodeState, jobid: str, user: UserInfo, cfg: Config, run: str, alias: str,
                       path: str = "", refusal: str = "", usage_table: bool = False, image: str = "",
                       model: str = "node", local_aliases: Sequence[str] = (), node_aliases: Sequence[str] = (),
                       gpu_env: Optional[Dict[str, Dict[str, str]]] = None) -> None:
    """What the job starter (running as the user) needs on this node (records.StarterInfo):
    where and how to run the script and the TM tasks, or why the job was refused. Root's, in
    the root-owned job directory, readable by the job's group: the user can read it but
    neither change nor remove it (a refusal must hold)."""
    info = StarterInfo(
        jobid=jobid, run=run, alias=alias, ctr_dir=str(state.ctr_dir(jobid)), shell=user.shell,
        ssh_config=str(host_ssh_config(cfg, jobid)), env_deny=tuple(cfg.env_deny), env_pass=tuple(cfg.env_pass),
        path=path, refusal=refusal, usage_table=usage_table, image=image, model=model,
        local_aliases=tuple(local_aliases), node_aliases=tuple(node_aliases),
        gpu_env=tuple(f"{alias} {name}={value}" for alias, env in sorted((gpu_env or {}).items())
                      for name, value in sorted(env.items())),
        # Open MPI may use its single-copy path (CMA) only where the containers' profile allows it.
        cma=bool(run != "refused" and cfg.docker_seccomp_profile and seccomp.cma_works(seccomp.profile_text(cfg))))
    write_file(state.job_dir(jobid) / STARTER_RECORD, info.to_json(), 0o640, uid=0, gid=user.gid)


def host_ssh_config(cfg: Config, jobid: str) -> Path:
    """The job's SSH config for the host's ssh (found through the drop-in's Include)."""
    return Path(cfg.ssh_include_dir) / f"{safe_jobid(jobid)}.conf"


def record_refusal(cfg: Config, jobid: str, user_name: str, text: str, refusal_file: Optional[str] = None) -> None:
    """Leave the reason for the job starter, which prints it to the .e instead of running the script."""
    user = lookup(user_name)
    state = NodeState(cfg.paths_state_dir)
    state.ensure()
    job_dir, ctr = state.job_dir(jobid), state.ctr_dir(jobid)
    ensure_dir(job_dir, 0o755)
    ensure_dir(ctr, 0o711)
    state.save_job(JobRecord(jobid=jobid, user=user.name, refused=True, started=time.time(), host=cfg.node_name(),
                             refusal_file=refusal_file or ""))
    write_starter_file(state, jobid, user, cfg, "refused", alias="", refusal=text.rstrip("\n"))


def fit_login_shell(job: JobContext, ident: str) -> None:
    """sshd refuses every login of a user whose shell does not exist, so the containers' passwd
    names the user's login shell only when the image has it, else /bin/sh. (The job's own
    shell is another matter: the job starter checks the one Torque chose.)"""
    user = job.user
    if user.shell and user.shell != "/bin/sh" and not job.runtime.has_file(ident, user.shell):
        write_in_place(job.state.ctr_dir(job.jobid) / "passwd",
                       render.passwd_text(user.name, user.uid, user.gid, user.gecos, user.home, "/bin/sh"))


def ensure_image(runtime: Runtime, image: policy.ImageChoice, cfg: Config, log: Log, jobid: str,
                 lock_timeout: Optional[float] = None, pinned_fault: bool = True, user: Optional[UserInfo] = None,
                 retag: bool = False) -> str:
    """The image on this node, pulled or loaded when needed. One pull or load of an image
    at a time per node: concurrent jobs wait for it instead of fetching it again.

    A pinned digest (``name:tag@sha256:...``, from qsub's filter with [images] pin) that
    is missing while pulls are off is this node's fault (the admin stages it), so the MS
    requeues (bounded by [jobs] max_attempts). A sister passes ``pinned_fault=False``:
    users can write any digest, and a user's text must never mark a node down; the
    sister's admin log and the MS's failed probe say what happened.

    A tarball (image=file:) is opened by root without following links, without blocking,
    as a regular file only, and only when the job's user can read it; it is loaded without
    the tags it carries and used by image id (see Runtime.load_private), so it never
    changes an image anyone else asks for by name. ``retag`` (the admin's ``stage``) then
    applies those of its tags the site's [images] allowed list permits."""
    if image.tarball:
        try:
            tarball = hostpath.pin(image.tarball, "file")
        except (FileNotFoundError, NotADirectoryError):
            raise PolicyError(f"image tarball {image.tarball} does not exist", "give the path of a file made by "
                              "'docker save'") from None
        except hostpath.PathChanged as exc:
            raise PolicyError(f"image tarball {exc.message}", exc.fix) from None
        try:
            if user is not None and not reachable_dirs(user, [tarball])[0]:
                raise PolicyError(f"image tarball {image.tarball} is not a file {user.name} can read",
                                  "give a tarball you can read")
            with _image_lock(cfg, image.tarball, lock_timeout):
                loaded = runtime.load_private(tarball.fd)
        finally:
            tarball.close()
        if not loaded.ids:
            raise ImageError(f"{image.tarball} holds no image", "make it with 'docker save NAME:TAG > file.tar'")
        applied = []
        if retag:
            for tag in loaded.tags:
                if is_reference(tag) and cfg.image_allowed(tag):
                    runtime.tag(loaded.ids[0], tag)
                    applied.append(tag)
        log.info(jobid, f"loaded {image.tarball}: {', '.join(loaded.ids)} without its tags "
                        f"({', '.join(loaded.tags) or 'none'})" + (f"; tagged {', '.join(applied)}" if applied else ""))
        return applied[0] if applied else loaded.ids[0]
    present = runtime.image_id(image.reference) is not None
    if cfg.images_pull == "always" or (not present and cfg.images_pull == "missing"):
        with _image_lock(cfg, image.reference, lock_timeout):
            if cfg.images_pull == "missing" and runtime.image_id(image.reference) is not None:
                return image.reference          # another job pulled it while we waited
            try:
                runtime.pull(image.reference, cfg.images_pull_timeout)
            except ImageError:
                if not present:
                    raise
                log.warning(jobid, f"pull of {image.reference} failed; using the local copy")
    elif not present and "@sha256:" in image.reference:
        raise ImageError(f"pinned image {image.reference} is not on node {cfg.node_name()} and the site does "
                         f"not pull images", f"stage it on this node: torque-docker stage {image.reference}",
                         user_error=not pinned_fault, node_fault=pinned_fault)
    elif not present:
        raise ImageError(f"image {image.reference} is not on this node and the site does not pull images",
                         "ask the admin to stage it with 'torque-docker stage IMAGE'")
    return image.reference


@contextlib.contextmanager
def _image_lock(cfg: Config, key: str, timeout: Optional[float]) -> Iterator[None]:
    from .state import LockTimeout
    lock = NodeState(cfg.paths_state_dir).image_lock(key, cfg.images_pull_timeout if timeout is None else timeout)
    try:
        lock.acquire()
    except LockTimeout:
        raise ImageBusy(key, lock.timeout) from None
    try:
        yield
    finally:
        lock.release()


class Bind(Tuple[str, str, bool]):
    """``(host source, container target, read only)``; for a user-chosen directory also the
    descriptor it was checked through (``pin``), from which it is staged (see hostpath.py)."""

    pin: Optional[hostpath.Pinned]

    def __new__(cls, source: str, target: str, read_only: bool, pin: Optional[hostpath.Pinned] = None) -> "Bind":
        self = tuple.__new__(cls, (source, target, read_only))   # mypy: the 3 fields, as the base says
        self.pin = pin
        return self


def _pin_dir(path: str, missing: TorqueDockerError) -> hostpath.Pinned:
    try:
        return hostpath.pin(path, "dir")
    except (FileNotFoundError, NotADirectoryError):
        raise missing from None
    except OSError as exc:
        raise RequestError(f"{path} cannot be opened ({exc.strerror})", "give a directory you can read") from None


def job_binds(user: UserInfo, workdir: str, extra: Sequence[Mount], ctr_dir: Path,
              forbidden: Sequence[str] = policy.FORBIDDEN_SOURCES, site: Sequence[Mount] = (),
              tmpdir: str = "") -> List[Bind]:
    """Host paths the containers see: the job's files, the user's home and working directory,
    the mounts the job asked for (``extra``, checked by policy.check_mounts) and the site's
    ``[mounts] default`` (``site``: a problem with those is the admin's, a ConfigError).

    The job's files are root's (see prepare_job_dir). Every other source is resolved, then
    pinned (opened without following links), checked through the pin against the policy
    and, as the user, for reach; the prologue stages the pins, so Docker mounts exactly the
    objects checked here. The caller closes the pins (hostpath.close_all)."""
    binds = [
        Bind(str(ctr_dir), CTR_DIR, False),
        Bind(str(ctr_dir / "passwd"), "/etc/passwd", True),
        Bind(str(ctr_dir / "group"), "/etc/group", True),
        Bind(str(ctr_dir / "ssh_config"), "/etc/ssh/ssh_config", True),
        Bind(str(ctr_dir / "hosts"), "/etc/hosts", True),
    ]
    home = os.path.realpath(user.home)
    wanted: List[Tuple[str, str, bool, TorqueDockerError]] = [   # (real source, target, ro, error if missing)
        (home, user.home, False, NodeFault(f"the home directory {user.home} of {user.name} is not reachable on this node",
                                           "mount the home file system on this node"))]
    own_dirs = [user.home]
    if workdir and os.path.isabs(workdir):
        real = policy.check_workdir(workdir, forbidden)
        if not (real == home or real.startswith(home.rstrip("/") + "/")):
            own_dirs.append(real)
            wanted.append((real, real, False, RequestError(f"the working directory {workdir} cannot be reached by "
                                                           f"{user.name}", "submit from a directory you can read")))
    for mount in extra:
        if mount.target in own_dirs or mount.target in (dst for _, dst, _ in binds):
            raise RequestError(f"mount target {mount.target} is already the job's home or working directory",
                               "mount it somewhere else, e.g. under /data")
        if mount.target in {m.target for m in site}:
            raise RequestError(f"mount target {mount.target} is already a mount of this site ([mounts] default)",
                               "mount it somewhere else, e.g. under /data")
        wanted.append((os.path.realpath(mount.source), mount.target, mount.read_only,
                       RequestError(f"mount source {mount.source} is not a directory {user.name} can read",
                                    "ask for a directory you can read")))
    tmp_index = -1
    if tmpdir and tmpdir not in own_dirs:
        if tmpdir in {m.target for m in extra} | {m.target for m in site}:
            raise RequestError(f"mount target {tmpdir} is the job's $TMPDIR", "mount it somewhere else, e.g. under /data")
        # pbs_mom made it, as the job's user, before any prologue: gone now means its owner (or
        # root) removed it, which no one can tell apart here; never the node's fault, so the
        # MS requeues (bounded) instead of a sister marking its node down.
        tmp_index = len(wanted)
        wanted.append((os.path.realpath(tmpdir), tmpdir, False,
                       TorqueDockerError(f"the job's $TMPDIR {tmpdir}, made by pbs_mom, is gone from this node",
                                         "do not remove the $TMPDIR directories of jobs; if it recurs, tell the "
                                         "admin to check $tmpdir in mom_priv/config")))
    for mount in site:
        wanted.append((os.path.realpath(mount.source), mount.target, mount.read_only,
                       ConfigError(f"[mounts] default {mount} is not a directory {user.name} can read on this node",
                                   "fix [mounts] default, or make the directory reachable on every node")))
    pins: List[hostpath.Pinned] = []
    try:
        for n, (source, target, _, missing) in enumerate(wanted):
            pinned = _pin_dir(source, missing)
            pins.append(pinned)
            problem = policy.host_path_problem(pinned.path, target, forbidden)
            if problem and n >= len(wanted) - len(site):
                raise ConfigError(f"[mounts] default {source} {problem}", "remove it from [mounts] default")
            if problem and target != user.home:
                raise PolicyError(f"{source} {problem}", "mount a data directory of your own instead")
        ok = reachable_dirs(user, pins)
        for n, ((source, target, read_only, missing), pinned, reachable) in enumerate(zip(wanted, pins, ok)):
            if not reachable and n == 0:    # the home is there, but closed to its owner: the user's doing
                raise RequestError(f"your home directory {user.home} cannot be read by you ({user.name})",
                                   "let yourself in again: chmod u+rx ~")
            if not reachable and n == tmp_index:    # the user's own directory, closed by its owner
                raise RequestError(f"the job's $TMPDIR {target} cannot be read by you ({user.name})",
                                   "leave the $TMPDIR directories of your jobs open to yourself (chmod u+rwx)")
            if not reachable:
                raise missing
            binds.append(Bind(source, target, read_only, pinned))
    except BaseException:
        hostpath.close_all(pins)
        raise
    return binds


def stage_binds(state: NodeState, jobid: str, binds: Sequence[Bind]) -> List[Tuple[str, str, bool]]:
    """The binds Docker gets: every pinned source replaced by its root-owned staging point."""
    ensure_dir(state.root / "mnt", 0o700)
    points = iter(hostpath.stage([b.pin for b in binds if b.pin is not None], stage_dir(state, jobid)))
    return [(next(points) if b.pin is not None else b[0], b[1], b[2]) for b in binds]


def prepare_job_dir(state: NodeState, jobid: str, user: UserInfo, secrets_: keys.JobSecrets, cfg: Config,
                    log_level: str = "ERROR", ms: bool = True) -> None:
    """The job's files on this node, seen in its containers at /run/torque-docker.

    ``<job dir>/ctr`` is a tmpfs of ``[jobs] files_size`` (the containers write there, so it
    must not fill the node's disk), owned by root, mode 0711: the user can neither create
    nor replace anything in it, so no path Docker or runc opens at a container's start (the
    directory itself, passwd, group, hosts, ssh_config) can be swapped by the user, and root
    never writes into a place the user controls. Files the user must own are made here by
    root, in place: the private keys (ssh and sshd refuse keys others own), the SSH files the
    mother superior pushes into sister containers through the job's own ssh (ssh_config,
    hosts), and the job starter's script, pid and environment files."""
    job_dir, ctr = state.job_dir(jobid), state.ctr_dir(jobid)
    ensure_dir(job_dir, 0o755)
    if ctr.exists() or ctr.is_symlink():       # left by an earlier attempt whose teardown failed
        hostpath.unmount(ctr)
        if hostpath.mounts_under(ctr):
            raise NodeFault(f"{ctr} is still mounted", "unmount it; torque-docker gc retries")
        shutil.rmtree(ctr) if ctr.is_dir() and not ctr.is_symlink() else ctr.unlink()
    ensure_dir(ctr, 0o711)
    hostpath.mount_tmpfs(ctr, cfg.jobs_files_size, 0o711)
    mine = dict(uid=user.uid, gid=user.gid)
    write_file(ctr / "ssh_host_ed25519_key", secrets_.host_key.private_openssh, 0o600, **mine)
    write_file(ctr / "ssh_host_ed25519_key.pub", secrets_.host_key.public_openssh + "\n", 0o644)
    write_file(ctr / "id_ed25519", secrets_.user_key.private_openssh, 0o600, **mine)
    write_file(ctr / "id_ed25519.pub", secrets_.user_key.public_openssh + "\n", 0o644)
    write_file(ctr / "authorized_keys", secrets_.user_key.public_openssh + "\n", 0o644)
    host_key = " ".join(secrets_.host_key.public_openssh.split()[:2])
    write_file(ctr / "known_hosts", render.render("known_hosts.j2", cfg.paths_template_dir,
                                                  alias_pattern=plan.alias_pattern(jobid), host_key=host_key), 0o644)
    write_file(ctr / "sshd_config", render.render("sshd_config.j2", cfg.paths_template_dir, jobid=jobid,
                                                  user=user.name, ctr_dir=CTR_DIR,
                                                  token=secrets_.token,
                                                  log_level=log_level), 0o644)
    write_file(ctr / "session", render.render("session.j2", cfg.paths_template_dir, jobid=jobid, ctr_dir=CTR_DIR),
               0o644)
    write_file(ctr / "passwd", render.passwd_text(user.name, user.uid, user.gid, user.gecos, user.home, user.shell),
               0o644)
    write_file(ctr / "group", render.group_text(user.name, user.groups), 0o644)
    write_file(ctr / "ssh_config", f"# torque-docker: job {jobid}: written by the mother superior's prologue\n",
               0o644, **mine)
    for name in ("hosts", "hosts-launcher"):
        write_file(ctr / name, render.hosts_text([], node_hosts()), 0o644, **mine)
    write_file(ctr / "job-script", "", 0o700, **mine)
    write_file(ctr / "job.pid", "", 0o644, **mine)
    write_file(ctr / "job.env", "", 0o600, **mine)    # the starter writes the job's environment in place
    write_file(ctr / "nodefile", "", 0o644, **mine)   # the MS pushes the rewritten one into sisters
    write_file(ctr / RELAY, "", 0o644, **mine)        # the push's relay to other sisters (connect.relay_script)
    # The SSH config's group files of a large job (render.ssh_config): the MS writes its own
    # as root; a sister's arrive with the MS's push, through the job's ssh, as the user.
    if ms:
        ensure_dir(ctr / GROUP_DIR, 0o755)
    else:
        ensure_dir(ctr / GROUP_DIR, 0o755, user.uid, user.gid)
    ensure_dir(ctr / "run", 0o700, user.uid, user.gid)  # the starter's pid and status file of each run


@dataclass(frozen=True)
class ContainerLimits:
    cores: Tuple[int, ...] = ()       # the job's cores on this node (empty: not pinned)
    mem_limit: Optional[int] = None   # bytes per container
    model: str = "node"
    cgroup_parent: Optional[str] = None
    tmpfs: Tuple[Tuple[str, str], ...] = ()   # (path, size): /tmp and the image's VOLUMEs
    ulimits: Tuple[Tuple[str, int, int], ...] = ()   # (name, soft, hard): policy.container_ulimits
    devices: Tuple[Tuple[str, str], ...] = ()        # (host, container) device nodes: devices.resolve
    gpus: Tuple[Share, ...] = ()                     # per container of the node, in plan order: gpus.for_node

    def cpuset(self, slot: int) -> Optional[str]:
        if not self.cores:
            return None
        if self.model == "process":
            return str(self.cores[slot % len(self.cores)])
        return resources.format_cpu_list(self.cores)


def cgroup_parent(cfg: Config, jobid: str) -> Optional[str]:
    """``torque``: under the job's own Torque cgroup, so Torque accounts and kills with the job."""
    if cfg.cgroups_parent == "torque":
        return f"/torque/{jobid}"
    return cfg.cgroups_parent or None


def start_containers(job: JobContext, local: plan.NodePlan, binds: Sequence[Tuple[str, str, bool]],
                     limits: ContainerLimits = ContainerLimits()) -> List[StartedContainer]:
    """Start this node's containers in parallel; each returns once its sshd answers.

    With model=process the first container owns an IPC namespace the others join, so the
    ranks of a node can share memory (/dev/shm, SysV) across containers.
    """
    cfg, runtime, state, user = job.cfg, job.runtime, job.state, job.user
    image, image_id, address = job.image, job.image_id, job.address
    deadline = time.monotonic() + cfg.ssh_ready_timeout
    host = job.host
    # Where mpirun runs with run=container (the MS's first container), the other containers
    # of its own node must not resolve: Open MPI would take them for itself (docs/design.md, MPI trap 2).
    launcher_hosts = job.is_ms and len(local.containers) > 1

    first = local.containers[0]

    def ipc_mode(container: plan.ContainerPlan) -> Optional[str]:
        if len(local.containers) < 2 or cfg.jobs_process_ipc == "private":
            return None
        return "shareable" if container is first else f"container:{first.name}"

    def one(container: plan.ContainerPlan) -> StartedContainer:
        tried: List[int] = []
        share = gpus.share_of(limits.gpus, local.containers.index(container))
        ctoken = probe.container_token(job.secrets.token, job.node_index, container.slot)
        while True:
            port = state.reserve_port(job.jobid, address, container.candidates, skip=tried)
            tried.append(port)
            spec = ContainerSpec(
                image=image, name=container.name, hostname=container.alias,
                command=(cfg.ssh_sshd_path, "-D", "-e", "-f", f"{CTR_DIR}/sshd_config",
                         "-o", f"VersionAddendum={ctoken}" + (f"-{image_tag(image_id)}" if image_id else ""),
                         "-o", f"ListenAddress={address}:{port}"),
                user=f"{user.uid}:{user.gid}", group_add=tuple(str(g) for g in user.gids[1:]),
                labels={L_JOB: job.jobid, L_HOST: host, L_NODE: str(job.node_index), L_SLOT: str(container.slot),
                        L_ALIAS: container.alias, L_USER: user.name, L_PORT: str(port)},
                binds=tuple(binds), shm_size=cfg.jobs_shm_size,
                cpuset_cpus=limits.cpuset(container.slot),
                mem_limit=str(limits.mem_limit) if limits.mem_limit else None,
                ipc_mode=ipc_mode(container),
                cgroup_parent=limits.cgroup_parent,
                pids_limit=cfg.jobs_pids_limit or None, ulimits=limits.ulimits, tmpfs=limits.tmpfs,
                devices=limits.devices + share.devices, env=tuple(sorted(share.env.items())), gpu_ids=share.device_ids,
                read_only=cfg.jobs_read_only_root,
                seccomp=seccomp.profile_text(cfg),
            )
            if launcher_hosts and container.slot == 0:
                spec = replace(spec, binds=tuple((src.replace("/hosts", "/hosts-launcher") if dst == "/etc/hosts"
                                                  else src, dst, ro) for src, dst, ro in spec.binds))
            ident = runtime.start(spec)
            try:
                probe.wait_for_sshd(address, port, ctoken, deadline,
                                    still_running=lambda: runtime.state(ident)[0] in ("running", "created"))
                problem = ids_problem(runtime, ident, user)
                if problem:
                    runtime.remove(ident)
                    state.release_ports(job.jobid, [f"{address}:{port}"])
                    raise ImageError(f"image {image}: the container does not run as exactly {user.name}'s ids: "
                                     f"{problem}; it was removed",
                                     "use an image whose /etc/group and /etc/passwd have no names that are numbers",
                                     user_error=True)
                return StartedContainer(id=ident, name=container.name, alias=container.alias, port=port,
                                        slot=container.slot, address=address)
            except ContainerFault as exc:
                logs = runtime.logs(ident)
                runtime.remove(ident)
                state.release_ports(job.jobid, [f"{address}:{port}"])
                busy = "Address already in use" in logs or "Bind to port" in logs
                if busy and len(tried) < len(container.candidates) and time.monotonic() < deadline:
                    continue   # somebody took the port between our check and sshd's bind
                if f"exec {cfg.ssh_sshd_path} failed" in logs or "executable file not found" in logs:
                    raise no_sshd(image, cfg.ssh_sshd_path) from None
                if isinstance(exc, probe.SshdExited) and not busy:
                    raise sshd_exited(image, cfg.ssh_sshd_path, logs) from None
                raise type(exc)(f"{exc.message}; container log: {logs[-300:] or 'empty'}", exc.fix) from None

    results: List[StartedContainer] = [one(first)]     # the others join its IPC namespace
    containers = list(local.containers[1:])
    first_error: Optional[BaseException] = None
    with ThreadPoolExecutor(max_workers=max(1, min(16, len(containers)))) as pool:
        futures = [pool.submit(one, c) for c in containers]
        for future in futures:
            try:
                results.append(future.result())
            except BaseException as exc:   # wait for all, then report the first
                first_error = first_error or exc
    if first_error is not None:
        raise first_error
    return results


def ids_problem(runtime: Runtime, ident: str, user: UserInfo) -> Optional[str]:
    """Does every process of a started container run with exactly the job user's uid, gid
    and host supplementary groups? Read by root from the host's /proc at the container's
    init pid; the pid is confirmed afterwards (still that container's running init), so a
    reused pid cannot answer for it. None when all is well."""
    status, pid = runtime.init_pid(ident)
    if not pid:
        return f"it is {status}, not running"
    problem = container_ids_problem(pid, user)
    again, pid_after = runtime.init_pid(ident)
    if (again, pid_after) != ("running", pid):
        return f"its init changed while it was checked ({status} {pid} -> {again} {pid_after})"
    return problem


NUMERIC_NAME = re.compile(r"[0-9]+")


def misleading_group_lines(text: bytes) -> List[Tuple[str, int]]:
    """Lines of an /etc/group that Docker would take for another gid: Docker looks each
    ``--group-add`` gid up by NAME first, so a line ``5000:x:0:`` turns gid 5000 into 0.
    Read with Docker's own rules (runc's libcontainer/user: lines split at newlines, one
    trailing CR dropped, empty lines skipped, the gid an Atoi with errors read as 0)."""
    found: List[Tuple[str, int]] = []
    for raw in text.split(b"\n"):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if len(line) > 65536:
            raise ImageError("its /etc/group has a line longer than Docker reads (64 KiB)",
                             "fix the image's /etc/group")
        fields = line.split(b":")
        name = fields[0].decode("ascii", "replace")
        if not line or not NUMERIC_NAME.fullmatch(name):
            continue
        gid_text = fields[2].decode("ascii", "replace") if len(fields) > 2 else ""
        gid = int(gid_text) if re.fullmatch(r"[+-]?[0-9]{1,18}", gid_text) else 0
        if gid != int(name):
            found.append((name, gid))
    return found


def check_image_groups(runtime: Runtime, state: NodeState, image_id: str, image: str, user: UserInfo,
                       labels: Dict[str, str]) -> None:
    """Refuse, before any container of the job starts, an image whose /etc/group would give
    the job a group it does not have on the host. The image (by id) cannot change between
    this read and Docker's at the container's start. runc's own lookup (after the mounts)
    reads the job's /etc/group, which is root's (see render.group_text). The result per
    image id is kept in the state directory."""
    wanted = {str(g) for g in user.gids[1:]}        # Docker looks these up; the primary gid is numeric
    if not wanted:
        return
    cache_dir = ensure_dir(state.root / "image-groups", 0o700)
    cache = cache_dir / f"{image_id.split(':')[-1][:64]}.json"
    try:
        lines = [(str(n), int(g)) for n, g in json.loads(cache.read_text())]
    except (OSError, ValueError, TypeError):
        try:
            lines = misleading_group_lines(runtime.image_file(image_id, "/etc/group", labels) or b"")
        except ImageError as exc:
            raise ImageError(f"image {image}: {exc.message}", exc.fix, user_error=True) from None
        write_file(cache, json.dumps(lines), 0o600)
    bad = [(n, g) for n, g in lines if n in wanted]
    if bad:
        described = ", ".join(f"'{n}' with gid {g}" for n, g in bad)
        raise ImageError(f"image {image} names groups in its /etc/group like the job's group ids ({described}): "
                         f"Docker would give the job those gids instead of its own",
                         "remove or rename those lines of the image's /etc/group (group names that are numbers)",
                         user_error=True)


def container_tmpfs(volumes: Sequence[str], binds: Sequence[Tuple[str, str, bool]], size: str,
                    image: str) -> Tuple[Tuple[str, str], ...]:
    """/tmp, and every VOLUME the image declares, as a tmpfs of ``size``: a VOLUME would
    otherwise become an anonymous Docker volume on the node's disk, unbounded, and
    outliving the container unless removed with it. The image's files under a VOLUME
    path are therefore not seen (Docker would copy them into the new volume); the
    directory keeps its mode and owner from the image (runc sets them). A VOLUME
    that is one of the job's mount targets is that mount; one inside a job's mount
    (its home, say) is refused: it would be created in the user's directory on the host."""
    targets = [dst for _, dst, _ in binds]
    out = [("/tmp", size)]
    for volume in volumes:
        path = "/" + os.path.normpath(volume).strip("/")
        if path in targets or path == "/tmp" or policy._under(path, ["/proc", "/sys", "/dev"]):
            continue
        inside = [t for t in targets if policy._under(path, [t])]
        if path == "/" or inside:
            raise ImageError(f"image {image} declares VOLUME {volume} inside {inside[0] if inside else '/'}, "
                             f"which the job mounts from the host",
                             "remove that VOLUME from the image (or mount elsewhere)")
        out.append((path, size))
    return tuple(out)

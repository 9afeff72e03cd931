"""``torque-docker check``: a doctor for one node. Each failed check prints why and how to fix.

Every check runs even when others fail, and prints one line: ``OK``, ``WARN`` (works, but
look at it), ``FAIL`` (jobs will fail or the node is unsafe) or ``SKIP`` (cannot be
checked because something it needs failed). The exit status is 1 when anything FAILs.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import keys
from .config import Config, config_path
from .errors import TorqueDockerError
from .install import HOOKS, PACKAGE_HOOKS, PATH_LINE_MARK, _hook_text, is_ours, runs_starter_as_root
from .torque import MomConfig

SSH_CONFIG = "/etc/ssh/ssh_config"
NOBODY = 65534                      # what job users look like to the starter's import check
CHECK_LABEL = "torque-docker.check"  # containers check starts (never a job's label: gc/ps ignore them)

OK, WARN, FAIL, SKIP = "OK", "WARN", "FAIL", "SKIP"


class Warn(Exception):
    """Raised by a check that passes with a caveat."""


def pelog_permission_problem(path: Path) -> Optional[str]:
    """pbs_mom's check_pelog_permissions: regular file, uid 0, owner r+x, not group/other writable."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "missing (pbs_mom would skip it silently)"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_uid != 0:
        return f"owned by uid {info.st_uid}, pbs_mom requires root"
    if (info.st_mode & 0o500) != 0o500:
        return f"mode {info.st_mode & 0o777:o} lacks owner read+execute"
    if info.st_mode & 0o022:
        return f"mode {info.st_mode & 0o777:o} is group/other writable; pbs_mom refuses it"
    return None


def interpreter(path: Path) -> Tuple[str, List[str]]:
    """The ``#!`` interpreter of a script and its arguments."""
    with open(path, "rb") as handle:
        first = handle.readline().decode("utf-8", "replace").strip()
    if not first.startswith("#!"):
        return "", []
    words = first[2:].split()
    return (words[0], words[1:]) if words else ("", [])


def path_prelude(path: Path) -> str:
    """The hook's line that names the package's directories (it runs Python with -S), to run
    before the import that is checked."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    found = [line for line in lines if line.rstrip().endswith(PATH_LINE_MARK)]
    return f"import sys\n{found[0]}\n" if found else ""


def imports_package(python: str, args: List[str], module: str, uid: Optional[int] = None,
                    prelude: str = "") -> Optional[str]:
    """Can ``python`` import ``module`` the way pbs_mom (or a job user, given uid) runs it?
    ``prelude``: the script's own lines that run before its import (its module path)."""
    if not python:
        return "has no #! line"
    if not os.access(python, os.X_OK):
        return f"its interpreter {python} is missing or not executable"
    kwargs: Dict[str, Any] = {} if uid is None else dict(user=uid, group=uid, extra_groups=[])
    try:
        result = subprocess.run([python, *args, "-c", f"{prelude}import {module}"], capture_output=True, text=True,
                                timeout=60, cwd="/", env={"PATH": "/bin:/usr/bin"}, stdin=subprocess.DEVNULL,
                                **kwargs)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"cannot run {python}: {exc}"
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        who = "root" if uid is None else f"uid {uid}"
        return f"{python} cannot import {module} as {who}: {last}"
    return None


def config_problems(cfg: Config) -> List[str]:
    """What is wrong with a config across its options. Each option alone is checked when
    the file is read (``config.parse_text``: a bad value never loads), so this only re-runs
    the cross-option rules, for a Config built in code; each problem names its [section] key."""
    from .config import rule_problems
    return rule_problems(cfg.values)


def prologalarm(mom_priv: Path) -> int:
    """pbs_mom's ``$prologalarm`` (seconds; mom's default 300)."""
    return MomConfig.read(mom_priv / "config").number("prologalarm", 300)


def run_checks(cfg: Optional[Config], pbs_home: str, *, config_error: Optional[str] = None,
               image: Optional[str] = None, fingerprint: str = "", ssh_config: str = SSH_CONFIG,
               out=sys.stdout) -> int:
    """Check this node; print one line per check; return 1 if any check FAILs, else 0."""
    results: List[Tuple[str, str]] = []
    notes: List[str] = []               # facts worth showing (fingerprint, versions)
    mom_priv = Path(pbs_home) / "mom_priv"

    def check(name: str, fn: Callable[[], Optional[str]], needs_config: bool = True) -> bool:
        if needs_config and cfg is None:
            results.append((SKIP, f"{name}: needs a valid config"))
            return False
        try:
            problem, level = fn(), FAIL
        except Warn as exc:
            problem, level = str(exc), WARN
        except TorqueDockerError as exc:
            problem, level = str(exc), FAIL
        except Exception as exc:
            problem, level = f"{type(exc).__name__}: {exc}", FAIL
        results.append((OK, f"{name}: ok") if problem is None else (level, f"{name}: {problem}"))
        return problem is None

    # ---- configuration ----------------------------------------------------------
    def config_file() -> Optional[str]:
        if config_error:
            return config_error
        assert cfg is not None
        if not Path(cfg.path).exists():
            raise Warn(f"{cfg.path} does not exist: every option has its default "
                       f"('torque-docker config' prints them)")
        return None
    check(f"config {cfg.path if cfg else config_path()}", config_file, needs_config=False)

    def config_values() -> Optional[str]:
        assert cfg is not None
        problems = config_problems(cfg)
        for directory in cfg.images_tarball_dirs + cfg.mounts_allowed:
            if not os.path.isdir(directory):
                problems.append(f"{directory} (in [images] tarball_dirs or [mounts] allowed) is not a directory")
        return "; ".join(problems) or None
    check("config values", config_values)

    def timeouts() -> Optional[str]:
        assert cfg is not None
        alarm = prologalarm(mom_priv)
        budget = cfg.images_pull_timeout + cfg.ssh_ready_timeout
        if budget >= alarm - 10:
            raise Warn(f"[images] pull_timeout + [ssh] ready_timeout = {budget:.0f} s, but pbs_mom kills the "
                       f"prologue at $prologalarm - 10 = {alarm - 10} s: a slow pull would requeue the job; "
                       f"lower them or stage images ('torque-docker stage')")
        return None
    check("timeouts vs $prologalarm", timeouts)

    # ---- mom_priv -------------------------------------------------------------------
    for hook in HOOKS:
        path = mom_priv / hook

        def hook_check(path: Path = path) -> Optional[str]:
            problem = pelog_permission_problem(path)
            if problem:
                return f"{problem} (run 'torque-docker install --mom-priv {mom_priv}')"
            python, args = interpreter(path)
            problem = imports_package(python, args, "torque_docker.cli", prelude=path_prelude(path))
            if problem:
                return problem if is_ours(path) else f"not torque-docker's hook ({problem})"
            if not is_ours(path):
                raise Warn("not torque-docker's hook: it must call torque_docker's run_hook itself")
            if path.read_text() not in (_hook_text(PACKAGE_HOOKS / hook, python),
                                        _hook_text(PACKAGE_HOOKS / hook, python, site=True)):
                raise Warn("differs from the shipped hook: rerun 'torque-docker install' after an upgrade")
            return None
        check(f"hook {path}", hook_check, needs_config=False)

    def starter() -> Optional[str]:
        config = mom_priv / "config"
        current = MomConfig.read(config).job_starter()
        if current is None:
            raise Warn(f"no $job_starter in {config}: run=container is unavailable and Open MPI counts the "
                       f"container's cores, not the nodefile's slots (run 'torque-docker install')")
        if runs_starter_as_root(config):
            return (f"{config} sets $job_starter_run_privileged: the starter would run as root with the job's "
                    f"environment, so it refuses every job; remove that line and restart pbs_mom")
        path = Path(current)
        try:
            info = os.stat(path)
        except OSError:
            return f"$job_starter {path} does not exist (run 'torque-docker install')"
        if info.st_mode & 0o005 != 0o005 or not stat.S_ISREG(info.st_mode):
            return f"$job_starter {path} is not executable by job users (mode {info.st_mode & 0o777:o}, 0755 needed)"
        if info.st_uid != 0 or info.st_mode & 0o022:
            return (f"$job_starter {path} can be changed by others than root (uid {info.st_uid}, mode "
                    f"{info.st_mode & 0o777:o}): any user could run code as every other user")
        python, args = interpreter(path)
        if python:
            return imports_package(python, args, "torque_docker.starter", uid=NOBODY)
        return None
    check("job starter", starter, needs_config=False)

    def job_files() -> Optional[str]:
        """The sweep's eyes: the job ids in pbs_mom's job files (momjobs.py)."""
        from .momjobs import JobFilesUnreadable, held_jobs
        try:
            held = held_jobs(pbs_home)
        except JobFilesUnreadable as exc:
            raise Warn(f"{exc.message}: the sweep (gc and every prologue) removes nothing until they can "
                       f"be read; {exc.fix}") from None
        notes.append(f"pbs_mom holds {len(held)} job(s) here")
        return None
    check("pbs_mom job files", job_files, needs_config=False)

    # ---- node set-up ----------------------------------------------------------------
    def secret() -> Optional[str]:
        assert cfg is not None
        mine = keys.fingerprint(keys.load_secret(cfg.paths_secret_file))
        notes.append(f"secret fingerprint: {mine} (must be the same on every node)")
        if fingerprint and fingerprint != mine:
            return (f"{cfg.paths_secret_file} has fingerprint {mine}, not {fingerprint}: copy the "
                    f"cluster's secret to this node (root, 0400)")
        return None
    check("site secret", secret)

    def docker() -> Optional[str]:
        from .runtime import Runtime
        assert cfg is not None
        runtime = Runtime.from_config(cfg)
        runtime.ping()
        version = runtime.version()
        notes.append(f"docker: {cfg.docker_endpoint} answers, server {version}")
        return None
    docker_ok = check("docker", docker)

    def seccomp_profile() -> Optional[str]:
        from . import seccomp
        assert cfg is not None
        if not cfg.docker_seccomp_profile:
            notes.append("seccomp: Docker's default profile; Open MPI's single-copy path (CMA) stays off "
                         "([docker] seccomp_profile)")
            return None
        try:
            text = seccomp.profile_text(cfg)
        except TorqueDockerError as exc:
            return f"{exc.message}: {exc.fix}"
        if not seccomp.allows_cma(json.loads(text)):
            raise Warn(f"{cfg.docker_seccomp_profile} does not allow process_vm_readv/writev: "
                       "Open MPI's single-copy path stays off")
        if not seccomp.cma_works(text):
            raise Warn(f"Yama's ptrace_scope is {seccomp.yama_scope()} (2 or more): no process may read another's "
                       "memory, Open MPI's single-copy path stays off")
        notes.append(f"seccomp: {cfg.docker_seccomp_profile}, Open MPI's single-copy path (CMA) on")
        return None
    check("seccomp profile", seccomp_profile)

    def fabric() -> Optional[str]:
        """The devices, ulimits and GPU method containers get here: FAIL when a device the
        site lists is missing (jobs would be requeued off this node)."""
        from . import devices, limits
        assert cfg is not None
        rdma = devices.is_rdma(cfg.devices_paths)
        notes.append(f"limits: containers get {limits.show(limits.site_ulimits(cfg.limits_ulimits, rdma))}; "
                     f"jobs may ask up to {limits.show(cfg.limits_user_max) if cfg.limits_user_max else 'those'}")
        if not cfg.devices_paths:
            notes.append("devices: none ([devices] paths is empty)")
            return None
        found = devices.resolve(cfg.devices_paths)
        notes.append(f"devices: {len(found)} node(s): " + " ".join(inside for _, inside in found[:16])
                     + (" ..." if len(found) > 16 else ""))
        return None
    check("devices and limits", fabric)

    def gpu_method() -> Optional[str]:
        """How containers get GPUs here and what the node has: FAIL when [gpus] names devices,
        driver files or a runtime the node lacks (GPU jobs would be requeued off it)."""
        from . import gpus
        assert cfg is not None
        notes.append(gpus.describe(cfg))
        gpus.check_node(cfg)
        return None
    check("GPUs", gpu_method)

    def ssh_include() -> Optional[str]:
        assert cfg is not None
        dropin = Path(cfg.ssh_dropin)
        if not dropin.exists():
            return f"the ssh drop-in {dropin} is missing (run 'torque-docker install')"
        if not re.search(r"^\s*Include\s+" + re.escape(cfg.ssh_include_dir) + r"/\*\.conf\s*$",
                         dropin.read_text(), re.M | re.I):
            return f"{dropin} does not include {cfg.ssh_include_dir}/*.conf (run 'torque-docker install')"
        main = Path(ssh_config)
        text = main.read_text() if main.exists() else ""
        pattern = re.compile(r"^\s*Include\s+(\S*" + re.escape(str(dropin.parent)) + r"/\*\.conf|"
                             + re.escape(str(dropin)) + r")\s*$", re.M | re.I)
        if not pattern.search(text):
            return (f"{main} has no 'Include {dropin.parent}/*.conf': users' ssh (and mpirun) will not "
                    f"find the job aliases")
        return None
    check("ssh include", ssh_include)

    def listen() -> Optional[str]:
        from .state import port_is_free
        assert cfg is not None
        address = cfg.listen_address()
        port_is_free(address, 0)          # raises when the address is not this node's
        return None
    check("listen address", listen)

    def state_dir() -> Optional[str]:
        assert cfg is not None
        path = Path(cfg.paths_state_dir)
        if not path.exists():
            raise Warn(f"{path} does not exist yet (the first job creates it)")
        info = os.stat(path)
        if info.st_uid != 0 or info.st_mode & 0o022:
            return (f"{path} is writable by others than root (uid {info.st_uid}, mode {info.st_mode & 0o777:o}): "
                    f"users could tamper with job keys; chown root {path} && chmod 0755 {path}")
        return None
    check("state directory", state_dir)

    def templates() -> Optional[str]:
        from . import render
        assert cfg is not None
        site = Path(cfg.paths_template_dir)
        if not site.is_dir():
            return None
        shipped = {p.name for p in render.PACKAGE_TEMPLATES.glob("*.j2")}
        problems = []
        for path in sorted(site.iterdir()):
            if path.name not in shipped:
                problems.append(f"{path.name} overrides nothing (shipped: {', '.join(sorted(shipped))})")
                continue
            try:
                render.environment(str(site)).get_template(path.name)
            except Exception as exc:
                problems.append(f"{path}: {exc}")
        return "; ".join(problems) or None
    check("site templates", templates)

    wanted = image if image is not None else (cfg.check_image if cfg is not None else "")
    if wanted:
        if docker_ok and cfg is not None:     # docker_ok implies a config
            site_cfg: Config = cfg
            check(f"image {wanted}", lambda: image_problem(site_cfg, wanted))
        else:
            results.append((SKIP, f"image {wanted}: needs docker"))

    for level, line in results:
        print(f"{level:<4} {line}", file=out)
    for note in notes:
        print(f"     {note}", file=out)
    failed = sum(1 for level, _ in results if level == FAIL)
    warned = sum(1 for level, _ in results if level == WARN)
    print(f"checks: {sum(1 for level, _ in results if level == OK)} ok, {warned} warning(s), "
          f"{failed} failing", file=out)
    return 1 if failed else 0


def image_problem(cfg: Config, image: str, timeout: float = 60.0) -> Optional[str]:
    """Start the image the way a job does (non-root, no capabilities), test its sshd with the
    job's own sshd_config and keys (``sshd -t``), and look for the ssh client. Removes what it starts."""
    from . import keys as keys_mod, lifecycle, policy, seccomp
    from .identity import lookup
    from .runtime import ContainerSpec, Runtime
    from .state import NodeState
    from .teardown import release_job_files

    choice = policy.resolve_image(image, cfg)
    if choice.tarball:
        return "give an image name, not a tarball (stage the tarball first)"
    runtime = Runtime.from_config(cfg)
    if runtime.image_id(choice.reference) is None:
        return f"{choice.reference} is not on this node (run 'torque-docker stage {image}')"
    user = lookup("nobody")
    work = Path(tempfile.mkdtemp(prefix="torque-docker-check-"))
    os.chmod(work, 0o755)
    jobid = f"check-{os.getpid()}-{int(time.time())}"
    try:
        state = NodeState(str(work))
        state.ensure()
        secrets_ = keys_mod.JobSecrets.derive(os.urandom(32), keys_mod.JobIdentity(jobid, user.name, "", ""))
        lifecycle.prepare_job_dir(state, jobid, user, secrets_, cfg)
        ctr = state.ctr_dir(jobid)
        binds = ((str(ctr), lifecycle.CTR_DIR, True), (str(ctr / "passwd"), "/etc/passwd", True),
                 (str(ctr / "group"), "/etc/group", True))
        runs = (("sshd", (cfg.ssh_sshd_path, "-t", "-f", f"{lifecycle.CTR_DIR}/sshd_config")),
                ("ssh client", ("ssh", "-V")))
        for what, command in runs:
            spec = ContainerSpec(image=choice.reference, name=f"torque-docker-{jobid}-{what.split()[-1]}",
                                 hostname="torque-docker-check", command=command,
                                 user=f"{user.uid}:{user.gid}", group_add=(), labels={CHECK_LABEL: jobid},
                                 binds=binds, shm_size=cfg.jobs_shm_size, seccomp=seccomp.profile_text(cfg))
            ident = runtime.start(spec)
            try:
                deadline = time.monotonic() + timeout
                status, code = runtime.state(ident)
                while status in ("created", "running") and time.monotonic() < deadline:
                    time.sleep(0.1)
                    status, code = runtime.state(ident)
                if status in ("created", "running"):
                    return f"'{' '.join(command)}' did not finish within {timeout:.0f} s"
                if code in (126, 127):   # tini (docker --init) could not exec it
                    return (f"{choice.reference} has no {command[0]} that the job user can run; install "
                            f"openssh-server and openssh-client in the image, or set [ssh] sshd_path")
                if code != 0:
                    logs = runtime.logs(ident, tail=5).replace("\n", " | ")
                    return (f"{what} does not work in {choice.reference} as a non-root user "
                            f"('{' '.join(command)}' exited {code}: {logs or 'no output'}); the image needs "
                            f"openssh-server and openssh-client")
            finally:
                runtime.remove(ident)
        return None
    finally:
        try:
            release_job_files(NodeState(str(work)), jobid)   # its tmpfs first: never delete through a mount
            shutil.rmtree(work, ignore_errors=True)
        except Exception:       # still mounted: left for the admin rather than deleted through the mount
            pass

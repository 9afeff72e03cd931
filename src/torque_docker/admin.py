"""``torque-docker``: the admin's command on each compute node (and, for qsub's filter, submit hosts); its sub-commands are in build_parser()."""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from typing import Optional, Sequence

from . import config as config_mod
from . import keys
from .errors import ImageBusy, ImageError, TorqueDockerError
from .install import install, uninstall
from .sweep import gc

DEFAULT_PBS_HOME = "/var/spool/torque"


# ----------------------------------------------------------------------------- stage
def image_lock(cfg: config_mod.Config, key: str, timeout: float):
    """The per-node lock on one image (shared with the prologue's pulls)."""
    from .state import NodeState
    return NodeState(cfg.paths_state_dir).image_lock(key, timeout)


def stage(cfg: config_mod.Config, image: str, *, timeout: float = 1800.0, refresh: bool = False,
          lock_timeout: Optional[float] = None, out=sys.stdout) -> str:
    """Pull an image, or load an allowed tarball, onto this node ahead of the jobs that need it.

    The same policy as a job's request applies (aliases, [images] allowed, tarball_dirs),
    so an admin cannot stage what users may not run. The pull is bounded by ``timeout``
    (not [images] pull_timeout, which must fit pbs_mom's $prologalarm), and it ignores
    [images] pull = never: staging is how such sites get images.
    """

    from . import lifecycle, policy
    from .log import Log
    from .runtime import Runtime

    choice = policy.resolve_image(image, cfg)
    key = choice.tarball or choice.reference
    stage_cfg = replace(cfg, images_pull="always" if refresh else "missing", images_pull_timeout=timeout)
    wait = timeout if lock_timeout is None else lock_timeout
    started = time.monotonic()
    try:
        runtime = Runtime.from_config(cfg)
        before = None if choice.tarball else runtime.image_id(choice.reference)
        reference = lifecycle.ensure_image(runtime, choice, stage_cfg,
                                           Log(cfg.log_destination, cfg.node_name()), "stage", lock_timeout=wait,
                                           retag=True)
        image_id, digest = runtime.image_digest(reference)
    except ImageBusy:
        raise TorqueDockerError(f"another process holds the lock on {key} for over {wait:.0f} s",
                                "wait for the other pull or load to finish, or look for a hung one") from None
    except ImageError as exc:   # the job-side advice ("ask the admin to stage it") is no help here
        raise ImageError(exc.message, "check the name, that this node reaches the registry, and 'docker login' "
                                      "for a private one", user_error=False) from None
    if choice.tarball:
        how = f"loaded from {choice.tarball}"
    elif before is None:
        how = "pulled"
    elif before != image_id:
        how = "updated"
    else:
        how = "already present" + (", registry has nothing newer" if refresh else "")
    print(f"staged {reference} ({image_id[:19]}{', ' + digest if digest else ''}): {how} "
          f"in {time.monotonic() - started:.1f} s", file=out)
    return reference


# ----------------------------------------------------------------------------- gc / ps
def ps(cfg: config_mod.Config, out=sys.stdout) -> int:
    from .runtime import L_ALIAS, L_JOB, L_PORT, L_USER, Runtime
    rows = [(c.labels.get(L_JOB, ""), c.labels.get(L_USER, ""), c.labels.get(L_ALIAS, ""),
             c.labels.get(L_PORT, ""), c.status, c.name)
            for c in Runtime.from_config(cfg).containers(host=cfg.node_name())]
    width = max([20] + [len(row[0]) for row in rows])     # array subjobs and FQDN servers run long
    print(f"{'JOB':<{width}} {'USER':<10} {'ALIAS':<32} {'PORT':<6} {'STATE':<10} CONTAINER", file=out)
    for row in sorted(rows):
        print(f"{row[0]:<{width}} {row[1]:<10} {row[2]:<32} {row[3]:<6} {row[4]:<10} {row[5]}", file=out)
    return 0


def change_limits(cfg: config_mod.Config, jobid: str, *, slot: Optional[int] = None, cpus: Optional[float] = None,
                  memory: Optional[str] = None, cpuset: Optional[str] = None, log=None, out=sys.stdout) -> int:
    """Live limits (the paper's future work): docker update, then read back and log."""
    from .runtime import L_SLOT, Runtime
    from .usage import limit_changes
    changes = limit_changes(cpus, memory, cpuset)
    runtime = Runtime.from_config(cfg)
    targets = [c for c in runtime.containers(jobid=jobid, host=cfg.node_name()) if c.status == "running"
               and (slot is None or c.labels.get(L_SLOT) == str(slot))]
    if not targets:
        raise TorqueDockerError(f"job {jobid} has no running container{'' if slot is None else f' in slot {slot}'} "
                                f"on {cfg.node_name()}", "check the job id and node with 'torque-docker ps'")
    for container in sorted(targets, key=lambda c: c.name):
        before = runtime.limits(container.id)
        runtime.update(container.id, **changes)
        after = runtime.limits(container.id)
        line = f"limits {container.name}: {before} -> {after}"
        print(line, file=out)
        if log is not None:
            log.info(jobid, line)
    return 0


# ----------------------------------------------------------------------------- main
DESCRIPTION = "Run Torque (PBS) jobs in Docker containers: set up and look after this compute node."
EPILOG = ("'torque-docker COMMAND --help' shows a command's options. Each step is explained in "
          "docs/admin-guide.md (the RPM installs it under /usr/share/doc/torque-docker/docs/).")


def build_parser() -> argparse.ArgumentParser:
    """The command line; --help is plain text (no reST) and argparse lists every sub-command."""
    parser = argparse.ArgumentParser(prog="torque-docker", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--config", help=f"config file (default ${config_mod.ENV_VAR} or {config_mod.DEFAULT_PATH})")
    sub = parser.add_subparsers(dest="command", required=True)
    pbs_home = os.environ.get("PBS_HOME", DEFAULT_PBS_HOME)
    p = sub.add_parser("install", help="install the hooks into pbs_mom's mom_priv")
    p.add_argument("--mom-priv", default=f"{pbs_home}/mom_priv")
    p.add_argument("--python", default=sys.executable, help="interpreter for the hooks (default: this one)")
    p.add_argument("--no-job-starter", action="store_true")
    p.add_argument("--no-ssh-dropin", action="store_true")
    p.add_argument("--force", action="store_true", help="replace a site's own hooks or $job_starter")
    p.add_argument("--submit-filter", action="store_true",
                   help="on a login/submit host: only set qsub's SUBMITFILTER (keeps and runs a site's own filter)")
    p.add_argument("--pbs-home", default=pbs_home, help="with --submit-filter: where torque.cfg is")
    p = sub.add_parser("uninstall", help="remove the hooks, $job_starter and ssh drop-in that install wrote")
    p.add_argument("--mom-priv", default=f"{pbs_home}/mom_priv")
    p.add_argument("--keep-ssh-dropin", action="store_true")
    p.add_argument("--submit-filter", action="store_true", help="only remove the submit filter (torque.cfg restored)")
    p.add_argument("--pbs-home", default=pbs_home, help="with --submit-filter: where torque.cfg is")
    p = sub.add_parser("lint", help="check a job script (and qsub arguments) as qsub's submit filter would")
    p.add_argument("script", help="the job script ('-' for stdin)")
    p.add_argument("qsub_args", nargs=argparse.REMAINDER, help="qsub's arguments, e.g. -l image=debian:12")
    p = sub.add_parser("keygen", help="create the site secret (once; copy it to every node)")
    p.add_argument("--force", action="store_true")
    sub.add_parser("fingerprint", help="show the site secret's fingerprint (compare across nodes)")
    sub.add_parser("ps", help="list job containers on this node")
    p = sub.add_parser("gc", help="remove containers and state of jobs pbs_mom no longer knows")
    p.add_argument("--pbs-home", default=pbs_home)
    p.add_argument("--grace", type=float, default=600.0, help="skip anything younger (seconds)")
    p.add_argument("--server", default="", help="only jobs of this Torque server (job ids NUM.SERVER)")
    p = sub.add_parser("stage", help="pull an image, or load an allowed tarball (file:/path), onto this node")
    p.add_argument("image", help="a reference, a site alias, or file:/path/x.tar in an allowed directory")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds the pull may take (default 1800)")
    p.add_argument("--refresh", action="store_true", help="pull even when the image is present")
    p.add_argument("--lock-timeout", type=float, default=None,
                   help="seconds to wait for another stager of the same image (default: --timeout)")
    p = sub.add_parser("check", help="check this node's set-up; exits non-zero with reasons")
    p.add_argument("--pbs-home", default=pbs_home)
    p.add_argument("--image", default=None,
                   help="also prove this image can run a job's sshd (default: [check] image, if set)")
    p.add_argument("--fingerprint", default="", help="fail unless the site secret has this fingerprint")
    p.add_argument("--ssh-config", default="/etc/ssh/ssh_config",
                   help="the ssh client's system config that must include the drop-in")
    p.add_argument("--submit-host", action="store_true",
                   help="check a login/submit host's qsub submit filter instead of a compute node")
    sub.add_parser("config", help="print the default config file")
    p = sub.add_parser("limits", help="change a running job's container limits on this node (docker update)")
    p.add_argument("jobid")
    p.add_argument("--slot", type=int, default=None, help="only this container slot (model=process)")
    p.add_argument("--cpus", type=float, default=None, help="CPU quota in cores, e.g. 1.5")
    p.add_argument("--memory", default=None, help="memory limit, Torque style (2gb, 512mb)")
    p.add_argument("--cpuset", default=None, help="cores, e.g. 2-3")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))

    if args.config:
        os.environ[config_mod.ENV_VAR] = args.config
    if args.command == "config":
        sys.stdout.write(config_mod.render_defaults())
        return 0
    if args.command == "lint":
        from .submit import lint
        return lint(args.script, args.qsub_args, out=sys.stdout)
    if args.command == "check" and args.submit_host:
        from . import submitadmin
        healthy, lines = submitadmin.state(args.pbs_home)
        print("\n".join(lines))
        return 0 if healthy else 1
    if args.command == "check":
        # A broken config is one of the things check reports, not a reason to stop.
        from .check import run_checks
        cfg, problems = config_mod.check_file()      # every problem of the file, not just the first
        problem = "; ".join(str(p) for p in problems) or None
        return run_checks(cfg, args.pbs_home, config_error=problem, image=args.image,
                          fingerprint=args.fingerprint, ssh_config=args.ssh_config, out=sys.stdout)
    cfg = config_mod.load()
    if args.command == "install" and args.submit_filter:
        from . import submitadmin
        submitadmin.install(args.pbs_home, python=args.python)
        return 0
    if args.command == "uninstall" and args.submit_filter:
        from . import submitadmin
        submitadmin.uninstall(args.pbs_home)
        return 0
    if args.command == "install":
        install(args.mom_priv, python=args.python, job_starter=not args.no_job_starter,
                dropin=not args.no_ssh_dropin, cfg=cfg, force=args.force)
        return 0
    if args.command == "uninstall":
        uninstall(args.mom_priv, cfg=cfg, dropin=not args.keep_ssh_dropin)
        return 0
    if args.command == "keygen":
        print(f"wrote {cfg.paths_secret_file}: {keys.generate_secret(cfg.paths_secret_file, force=args.force)}")
        return 0
    if args.command == "fingerprint":
        print(keys.fingerprint(keys.load_secret(cfg.paths_secret_file)))
        return 0
    if args.command == "ps":
        return ps(cfg)
    if args.command == "stage":
        stage(cfg, args.image, timeout=args.timeout, refresh=args.refresh, lock_timeout=args.lock_timeout)
        return 0
    if args.command == "limits":
        from .log import Log
        return change_limits(cfg, args.jobid, slot=args.slot, cpus=args.cpus, memory=args.memory,
                             cpuset=args.cpuset, log=Log(cfg.log_destination, cfg.node_name()))
    if args.command == "gc":
        from .log import Log
        report = gc(cfg, args.pbs_home, grace=args.grace, server=args.server,
                    log=Log(cfg.log_destination, cfg.node_name()), out=sys.stdout)
        print(f"gc: {len(report['removed'])} job(s) cleaned, {len(report['kept'])} kept, "
              f"{len(report['errors'])} error(s)")
        return 1 if report["errors"] else 0
    return 2

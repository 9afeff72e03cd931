"""``torque-docker``: the admin's command (install, keygen, check, ps, gc, stage, limits)."""
from __future__ import annotations

import argparse
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from . import config as config_mod
from . import keys, render
from .errors import ConfigError, TorqueDockerError

HOOKS = ("prologue", "prologue.parallel", "epilogue", "epilogue.parallel")
STARTER = "job-starter"
STARTER_NAME = "torque-docker-starter"     # its name in mom_priv
PACKAGE_HOOKS = Path(__file__).resolve().parent / "hooks"
DEFAULT_PBS_HOME = "/var/spool/torque"


def _hook_text(source: Path, python: str) -> str:
    """The shipped hook with its interpreter line pointed at the Python that has the package."""
    lines = source.read_text().splitlines(keepends=True)
    if lines and lines[0].startswith("#!"):
        lines[0] = f"#!{python} -s\n"
    return "".join(lines)


def install(mom_priv: str, *, python: str = sys.executable, job_starter: bool = True,
            dropin: bool = True, cfg: Optional[config_mod.Config] = None, force: bool = False,
            out=sys.stdout) -> None:
    """Put the hooks where pbs_mom runs them, with the owner and mode it demands."""
    cfg = cfg or config_mod.load()
    target = Path(mom_priv)
    if not target.is_dir():
        raise ConfigError(f"{mom_priv} is not a directory", "give pbs_mom's mom_priv, e.g. /var/spool/torque/mom_priv")
    for name in HOOKS:
        path = target / name
        if path.exists() and not force and "torque_docker" not in path.read_text(errors="replace"):
            raise ConfigError(f"{path} exists and is not torque-docker's",
                              "merge it by hand, or rerun with --force to replace it")
        _write_root(path, _hook_text(PACKAGE_HOOKS / name, python), 0o500)
        print(f"installed {path} (root, 0500)", file=out)
    if job_starter:
        starter = target / STARTER_NAME
        _write_root(starter, _hook_text(PACKAGE_HOOKS / STARTER, python), 0o755)
        set_job_starter(target / "config", str(starter), force=force)
        print(f"installed {starter} and set $job_starter in {target / 'config'} (restart pbs_mom to apply)", file=out)
    conf = Path(cfg.path or config_mod.config_path())
    if not conf.exists():
        conf.parent.mkdir(parents=True, exist_ok=True)
        _write_root(conf, config_mod.render_defaults(), 0o644)
        print(f"wrote the default config {conf}", file=out)
    if dropin:
        path = Path(cfg.ssh_dropin)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_root(path, render.render("ssh_dropin.j2", cfg.paths_template_dir, include_dir=cfg.ssh_include_dir), 0o644)
        print(f"wrote {path}", file=out)
    for directory in (cfg.paths_state_dir, cfg.ssh_include_dir):
        Path(directory).mkdir(mode=0o755, parents=True, exist_ok=True)
    if not Path(cfg.paths_secret_file).exists():
        print(f"note: no site secret at {cfg.paths_secret_file}: run 'torque-docker keygen' on ONE node "
              f"and copy the file (root, 0400) to every node", file=out)


def _write_root(path: Path, text: str, mode: int) -> None:
    from .state import write_file
    write_file(path, text, mode, uid=0, gid=0)


def set_job_starter(config_file: Path, starter: str, *, force: bool = False) -> None:
    lines = config_file.read_text().splitlines() if config_file.exists() else []
    out, done = [], False
    for line in lines:
        if re.match(r"\s*\$job_starter\s", line):
            current = line.split(None, 1)[1].strip() if len(line.split(None, 1)) > 1 else ""
            if current != starter and STARTER_NAME not in current and not force:
                raise ConfigError(f"{config_file} already has '$job_starter {current}'",
                                  "torque-docker needs its own starter; merge by hand or use --force")
            if not done:
                out.append(f"$job_starter {starter}")
                done = True
            continue
        out.append(line)
    if not done:
        out.append(f"$job_starter {starter}")
    _write_root(config_file, "\n".join(out) + "\n", 0o644)


# ----------------------------------------------------------------------------- gc / ps
def mom_knows(pbs_home: str, jobid: str) -> bool:
    """pbs_mom keeps ``mom_priv/jobs/<jobid>.JB`` from the job's arrival to its purge."""
    jobs = Path(pbs_home) / "mom_priv" / "jobs"
    return (jobs / f"{jobid}.JB").exists()


def gc(cfg: config_mod.Config, pbs_home: str, *, grace: float = 600.0, log=None, out=None) -> Dict[str, List[str]]:
    """Remove containers and state of jobs pbs_mom no longer knows. Never touches a known job,
    nor anything younger than ``grace`` seconds (a job being set up right now)."""
    from . import lifecycle
    from .runtime import L_JOB
    from .state import NodeState

    runtime = lifecycle.runtime_for(cfg)
    now = time.time()
    candidates: Dict[str, float] = {}
    for info in runtime.containers(host=cfg.node_name()):
        jobid = info.labels.get(L_JOB, "")
        created = float(info.created or 0)
        candidates[jobid] = max(candidates.get(jobid, 0.0), created)
    state = NodeState(cfg.paths_state_dir)
    for jobid in state.job_ids():
        record = state.load_job(jobid)
        candidates[jobid] = max(candidates.get(jobid, 0.0), float(record.get("started", 0)))
    report: Dict[str, List[str]] = {"removed": [], "kept": [], "errors": []}
    for jobid, created in sorted(candidates.items()):
        if not jobid or mom_knows(pbs_home, jobid) or now - created < grace:
            report["kept"].append(jobid)
            continue
        result = lifecycle.teardown(cfg, jobid, runtime=runtime, log=log)
        report["removed"].append(jobid)
        report["errors"] += [f"{jobid}: {e}" for e in result.errors]
        if out is not None:
            print(f"gc: job {jobid}: removed {result.removed} container(s)"
                  + (f"; errors: {'; '.join(result.errors)}" if result.errors else ""), file=out)
    return report


def ps(cfg: config_mod.Config, out=sys.stdout) -> int:
    from . import lifecycle
    from .runtime import L_ALIAS, L_JOB, L_PORT, L_USER
    rows = [(c.labels.get(L_JOB, ""), c.labels.get(L_USER, ""), c.labels.get(L_ALIAS, ""),
             c.labels.get(L_PORT, ""), c.status, c.name)
            for c in lifecycle.runtime_for(cfg).containers(host=cfg.node_name())]
    print(f"{'JOB':<20} {'USER':<10} {'ALIAS':<32} {'PORT':<6} {'STATE':<10} CONTAINER", file=out)
    for row in sorted(rows):
        print(f"{row[0]:<20} {row[1]:<10} {row[2]:<32} {row[3]:<6} {row[4]:<10} {row[5]}", file=out)
    return 0


# ----------------------------------------------------------------------------- main
def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="torque-docker", description=__doc__)
    parser.add_argument("--config", help=f"config file (default ${config_mod.ENV_VAR} or {config_mod.DEFAULT_PATH})")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("install", help="install the hooks into pbs_mom's mom_priv")
    p.add_argument("--mom-priv", default=f"{DEFAULT_PBS_HOME}/mom_priv")
    p.add_argument("--python", default=sys.executable, help="interpreter for the hooks (default: this one)")
    p.add_argument("--no-job-starter", action="store_true")
    p.add_argument("--no-ssh-dropin", action="store_true")
    p.add_argument("--force", action="store_true", help="replace a site's own hooks or $job_starter")
    p = sub.add_parser("keygen", help="create the site secret (once; copy it to every node)")
    p.add_argument("--force", action="store_true")
    sub.add_parser("fingerprint", help="show the site secret's fingerprint (compare across nodes)")
    sub.add_parser("ps", help="list job containers on this node")
    p = sub.add_parser("gc", help="remove containers and state of jobs pbs_mom no longer knows")
    p.add_argument("--pbs-home", default=os.environ.get("PBS_HOME", DEFAULT_PBS_HOME))
    p.add_argument("--grace", type=float, default=600.0, help="skip anything younger (seconds)")
    p = sub.add_parser("check", help="check this node's set-up; exits non-zero with reasons")
    p.add_argument("--pbs-home", default=os.environ.get("PBS_HOME", DEFAULT_PBS_HOME))
    sub.add_parser("config", help="print the default config file")
    args = parser.parse_args(list(argv))

    if args.config:
        os.environ[config_mod.ENV_VAR] = args.config
    if args.command == "config":
        sys.stdout.write(config_mod.render_defaults())
        return 0
    cfg = config_mod.load()
    if args.command == "install":
        install(args.mom_priv, python=args.python, job_starter=not args.no_job_starter,
                dropin=not args.no_ssh_dropin, cfg=cfg, force=args.force)
        return 0
    if args.command == "keygen":
        print(f"wrote {cfg.paths_secret_file}: {keys.generate_secret(cfg.paths_secret_file, force=args.force)}")
        return 0
    if args.command == "fingerprint":
        print(keys.fingerprint(keys.load_secret(cfg.paths_secret_file)))
        return 0
    if args.command == "ps":
        return ps(cfg)
    if args.command == "gc":
        from .log import Log
        report = gc(cfg, args.pbs_home, grace=args.grace, log=Log(cfg.log_destination, cfg.node_name()),
                    out=sys.stdout)
        print(f"gc: {len(report['removed'])} job(s) cleaned, {len(report['kept'])} kept, "
              f"{len(report['errors'])} error(s)")
        return 1 if report["errors"] else 0
    if args.command == "check":
        from .check import run_checks
        return run_checks(cfg, args.pbs_home, out=sys.stdout)
    return 2

"""Putting torque-docker into pbs_mom's ``mom_priv`` and taking it out again: the hooks, the
job starter and its ``$job_starter`` line, the ssh drop-in. Used by ``torque-docker
install``/``uninstall`` (admin.py) and by the checks that compare a node with what install
writes (check.py, submitadmin.py), none of which import each other for it.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

from . import config as config_mod
from . import render
from .errors import ConfigError
from .torque import MomConfig

HOOKS = ("prologue", "prologue.parallel", "epilogue", "epilogue.parallel")
STARTER = "job-starter"
STARTER_NAME = "torque-docker-starter"     # its name in mom_priv
PACKAGE_HOOKS = Path(__file__).resolve().parent / "hooks"


PATH_LINE_MARK = "# torque-docker: package directories"


def _hook_text(source: Path, python: str, site: bool = False) -> str:
    """The shipped hook with its interpreter line pointed at the Python that has the package.

    The four mom_priv hooks run that Python with -S (no site module: its .pth files cost
    every job's start tens of ms) and name the directories its site module would have added
    (package_dirs); the job starter keeps the site module (-s). ``site``: the form the RPM
    ships in libexec (-s, no directories named), which works too, only slower."""
    lines = source.read_text().splitlines(keepends=True)
    fast = bool(lines) and lines[0].split()[1:] == ["-S"] and not site
    if lines and lines[0].startswith("#!"):
        lines[0] = f"#!{python} {'-S' if fast else '-s'}\n"
    if fast:
        lines = [f"sys.path += {package_dirs(python)!r}  {PATH_LINE_MARK}\n"
                 if line.rstrip().endswith(PATH_LINE_MARK) else line for line in lines]
    return "".join(lines)


_package_dirs: Dict[str, List[str]] = {}


def package_dirs(python: str) -> List[str]:
    """What ``python -s`` has on its module path beyond ``python -S``: the site-packages
    directories and what their .pth files add (the package itself, when installed
    editable), in the site module's order. Asked of that interpreter, without the
    caller's PYTHONPATH."""
    if python not in _package_dirs:
        code = "import json, sys; print(json.dumps(sys.path))"

        def module_path(flag: str) -> List[str]:
            try:
                done = subprocess.run([python, flag, "-c", code], capture_output=True, text=True, timeout=60,
                                      cwd="/", env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL)
                return [str(p) for p in json.loads(done.stdout)] if done.returncode == 0 else []
            except (OSError, subprocess.SubprocessError, ValueError):
                return []

        bare = set(module_path("-S"))
        found = [p for p in dict.fromkeys(module_path("-s")) if p and p not in bare]
        if not found:
            raise ConfigError(f"{python} does not say where its packages are ('{python} -s -c \"import sys; "
                              f"print(sys.path)\"' failed)", "give --python the interpreter that has torque_docker")
        _package_dirs[python] = found
    return _package_dirs[python]


def install(mom_priv: str, *, python: str = sys.executable, job_starter: bool = True,
            dropin: bool = True, cfg: Optional[config_mod.Config] = None, force: bool = False,
            out=sys.stdout) -> None:
    """Put the hooks where pbs_mom runs them, with the owner and mode it demands."""
    cfg = cfg or config_mod.load()
    target = Path(mom_priv)
    if not target.is_dir():
        raise ConfigError(f"{mom_priv} is not a directory", "give pbs_mom's mom_priv, e.g. /var/spool/torque/mom_priv")
    if job_starter and runs_starter_as_root(target / "config"):
        raise ConfigError(f"{target / 'config'} sets $job_starter_run_privileged: pbs_mom would run the job "
                          f"starter as root with the job's environment (the starter refuses to run so)",
                          "remove that line from mom_priv/config, then rerun install and restart pbs_mom")
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


def runs_starter_as_root(config_file: Path) -> bool:
    """Does pbs_mom's config say ``$job_starter_run_privileged true``? (parsed as mom's setbool():
    the last line wins, a value mom does not understand changes nothing)."""
    return MomConfig.read(config_file).flag("job_starter_run_privileged", False)


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


def is_ours(path: Path) -> bool:
    """Is this mom_priv script one that ``install`` wrote (or a link to the packaged hooks)?"""
    try:
        return "torque_docker" in path.read_text(errors="replace")
    except OSError:
        return False


def uninstall(mom_priv: str, *, cfg: Optional[config_mod.Config] = None, dropin: bool = True,
              out=sys.stdout) -> List[str]:
    """Undo ``install``: our hooks, our starter and its ``$job_starter`` line, the ssh drop-in.

    A site's own scripts are left in place (and named). The config, the secret and the
    state directory stay: they are the site's. Run it BEFORE removing the package: hooks
    left in mom_priv without the library would fail every job on the node.
    """
    cfg = cfg or config_mod.load()
    target = Path(mom_priv)
    if not target.is_dir():
        raise ConfigError(f"{mom_priv} is not a directory", "give pbs_mom's mom_priv, e.g. /var/spool/torque/mom_priv")
    removed: List[str] = []
    for name in HOOKS + (STARTER_NAME,):
        path = target / name
        if not (path.exists() or path.is_symlink()):
            continue
        if is_ours(path) or (path.is_symlink() and not path.exists()):
            path.unlink()
            removed.append(str(path))
            print(f"removed {path}", file=out)
        else:
            print(f"kept {path}: not torque-docker's", file=out)
    config_file = target / "config"
    if config_file.exists():
        lines = config_file.read_text().splitlines()
        keep = [line for line in lines
                if not (re.match(r"\s*\$job_starter\s", line) and STARTER_NAME in line)]
        if keep != lines:
            _write_root(config_file, "".join(f"{line}\n" for line in keep), 0o644)
            removed.append(f"$job_starter in {config_file}")
            print(f"removed the $job_starter line from {config_file} (restart pbs_mom to apply)", file=out)
    if dropin:
        path = Path(cfg.ssh_dropin)
        if path.exists() and "torque-docker" in path.read_text(errors="replace"):
            path.unlink()
            removed.append(str(path))
            print(f"removed {path}", file=out)
    return removed

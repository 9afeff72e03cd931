"""Installing the submit filter on a login/submit host, removing it, and checking it.

qsub reads ``SUBMITFILTER`` from ``$PBS_HOME/torque.cfg`` the way Torque 6.1.3's
src/lib/Libifl/torquecfg.c does: everything after a ``#`` up to the line's end is blanked,
then the FIRST occurrence of the word anywhere in the file is taken and the next word
(white space or ``=`` separated) is the filter's path; the path must exist or qsub
refuses every job ("invalid submit filter"). Without the setting qsub falls back to
``/usr/local/sbin/torque_submitfilter`` if that file exists (qsub_functions.c).

So ``install`` comments out a site's own ``SUBMITFILTER`` line (marked, so ``uninstall``
can put it back byte for byte), puts ours first, and records the site's filter (or the
legacy default that our setting would silently replace) next to the config; our filter
runs it first and filters its output. A site filter is never dropped.
"""
from __future__ import annotations

import os
import stat
import sys
from pathlib import Path
from typing import List, Optional, Tuple

from . import submit
from .errors import ConfigError

FILTER_SOURCE = "submit-filter"                    # in the package's hooks/
FILTER_NAME = "torque-docker-submit-filter"        # its name in $PBS_HOME
LEGACY_FILTER = "/usr/local/sbin/torque_submitfilter"
MARK = "#torque-docker# "                          # our comment before a site's own line
KEY = "SUBMITFILTER"


def active_filter(text: str) -> str:
    """The filter qsub would run for this torque.cfg text ('' when none is set)."""
    blanked = "\n".join(line.split("#", 1)[0] for line in text.split("\n"))
    at = blanked.find(KEY)
    if at < 0:
        return ""
    words = blanked[at:].replace("=", " ").split(None, 2)
    return words[1] if len(words) > 1 else ""


def filter_text(python: str, package_dir: str, site_config: Optional[str] = None) -> str:
    """The shipped filter with its interpreter, package directory and site config filled in.

    The config path is fixed in the filter (this process's, i.e. the admin's, by default):
    it also locates the record of the site's own filter, and the filter runs as the user,
    whose environment must not choose either."""
    from .install import PACKAGE_HOOKS
    from .config import ENV_VAR, config_path
    lines = (PACKAGE_HOOKS / FILTER_SOURCE).read_text().splitlines(keepends=True)
    out = []
    for line in lines:
        if line.startswith("#!"):
            line = f"#!{python} -IS\n"
        elif line.startswith("sys.path.insert(0,") and "package directory" in line:
            line = f"sys.path.insert(0, {package_dir!r})  # torque-docker: package directory\n"
        elif line.startswith("os.environ[") and "site config" in line:
            line = f"os.environ[{ENV_VAR!r}] = {site_config or config_path()!r}  # torque-docker: site config\n"
        out.append(line)
    return "".join(out)


def package_dir() -> str:
    return str(Path(submit.__file__).resolve().parent.parent)


def _cfg_path(pbs_home: str) -> Path:
    return Path(pbs_home) / "torque.cfg"


def install(pbs_home: str, *, python: str = sys.executable, legacy: str = LEGACY_FILTER,
            out=sys.stdout) -> str:
    """Set SUBMITFILTER to our filter, chaining to whatever qsub ran before. Idempotent."""
    from .install import _write_root
    home = Path(pbs_home)
    if not home.is_dir():
        raise ConfigError(f"{pbs_home} is not a directory", "give the submit host's PBS_HOME, e.g. /var/spool/torque")
    ours = home / FILTER_NAME
    _write_root(ours, filter_text(python, package_dir()), 0o755)
    cfg_file = _cfg_path(pbs_home)
    text = cfg_file.read_text() if cfg_file.exists() else ""
    current = active_filter(text)
    chain = Path(submit.chain_path())
    if current == str(ours):
        print(f"{cfg_file} already runs {ours}; refreshed it", file=out)
        return str(ours)
    previous = current or (legacy if legacy and os.path.exists(legacy) else "")
    if previous and _runs_our_filter(previous):
        previous = ""              # e.g. the RPM's copy set by hand: never run ours twice
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    kept = [MARK + line if KEY in line.split("#", 1)[0] else line for line in lines]
    new = "".join(f"{line}\n" for line in [f"{KEY} {ours}"] + kept)
    if previous:
        chain.parent.mkdir(parents=True, exist_ok=True)
        _write_root(chain, previous + "\n", 0o644)
    elif chain.exists():
        chain.unlink()
    _write_root(cfg_file, new, 0o644)
    print(f"installed {ours} and set {KEY} in {cfg_file}"
          + (f"; it runs the site's filter {previous} first" if previous else ""), file=out)
    return str(ours)


def uninstall(pbs_home: str, *, out=sys.stdout) -> List[str]:
    """Undo ``install``: torque.cfg as it was, the chain record and our filter gone."""
    from .install import _write_root
    removed: List[str] = []
    cfg_file = _cfg_path(pbs_home)
    ours = Path(pbs_home) / FILTER_NAME
    if cfg_file.exists():
        lines = cfg_file.read_text().split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        keep = [line[len(MARK):] if line.startswith(MARK) else line for line in lines
                if line.split("#", 1)[0].split()[:2] != [KEY, str(ours)]]
        if keep != lines:
            if keep:
                _write_root(cfg_file, "".join(f"{line}\n" for line in keep), 0o644)
            else:
                cfg_file.unlink()
            removed.append(f"{KEY} in {cfg_file}")
            print(f"restored {cfg_file}", file=out)
    chain = Path(submit.chain_path())
    if chain.exists():
        chain.unlink()
        removed.append(str(chain))
    if ours.exists():
        ours.unlink()
        removed.append(str(ours))
        print(f"removed {ours}", file=out)
    return removed


def state(pbs_home: str) -> Tuple[bool, List[str]]:
    """(healthy, lines) for ``torque-docker check --submit-host``."""
    lines: List[str] = []
    ok = True
    cfg_file = _cfg_path(pbs_home)
    text = cfg_file.read_text() if cfg_file.exists() else ""
    current = active_filter(text)
    ours = str(Path(pbs_home) / FILTER_NAME)
    if not current:
        return False, [f"FAIL submit filter: no {KEY} in {cfg_file}; run 'torque-docker install --submit-filter'"]
    if current != ours:
        return False, [f"FAIL submit filter: {cfg_file} runs {current}, not torque-docker's {ours}"]
    mode = _mode(ours)
    if mode is None:
        return False, [f"FAIL submit filter: {cfg_file} names {ours}, which does not exist (qsub refuses every job)"]
    if not mode & stat.S_IXOTH:
        ok = False
        lines.append(f"FAIL submit filter: {ours} is not executable by every user")
    else:
        lines.append(f"ok   submit filter: {KEY} {ours}")
    conf = filter_config(ours)
    previous = submit.chained_filter(conf)
    if previous:
        pmode = _mode(previous)
        if pmode is None or not pmode & stat.S_IXOTH:
            ok = False
            lines.append(f"FAIL submit filter: the site's filter {previous} it runs first is missing or not executable")
        else:
            lines.append(f"ok   submit filter: runs the site's filter {previous} first")
    if not os.path.exists(conf):
        ok = False
        lines.append(f"FAIL submit filter: no {conf} here: copy the nodes' config so that qsub applies the site's policy")
    return ok, lines


def filter_config(path: str) -> str:
    """The site config the installed filter fixes in its text (filter_text), which is what
    qsub's runs use: not the environment of whoever runs the check."""
    import ast
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return submit.CONFIG_DEFAULT
    for line in text.splitlines():
        if line.startswith("os.environ[") and "site config" in line:
            value = line.split("=", 1)[1].split("#", 1)[0].strip()
            try:
                found = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                break
            if isinstance(found, str):
                return found
    return submit.CONFIG_DEFAULT


def _runs_our_filter(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            return b"torque_docker.submit" in handle.read(65536)
    except OSError:
        return False


def _mode(path: str) -> Optional[int]:
    try:
        return os.stat(path).st_mode
    except OSError:
        return None

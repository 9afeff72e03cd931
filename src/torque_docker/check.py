"""``torque-docker check``: a doctor for one node. Each failed check prints why and how to fix."""
from __future__ import annotations

import os
import re
import stat
import sys
from pathlib import Path
from typing import Callable, List, Optional, Tuple

from . import keys
from .config import Config
from .errors import TorqueDockerError

HOOKS = ("prologue", "prologue.parallel", "epilogue", "epilogue.parallel")


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


def run_checks(cfg: Config, pbs_home: str, out=sys.stdout) -> int:
    results: List[Tuple[bool, str]] = []

    def check(name: str, fn: Callable[[], Optional[str]]) -> None:
        try:
            problem = fn()
        except TorqueDockerError as exc:
            problem = str(exc)
        except Exception as exc:
            problem = f"{type(exc).__name__}: {exc}"
        results.append((problem is None, f"{name}: {problem or 'ok'}"))

    mom_priv = Path(pbs_home) / "mom_priv"
    for hook in HOOKS:
        check(f"hook {mom_priv / hook}", lambda hook=hook: pelog_permission_problem(mom_priv / hook))

    def starter() -> Optional[str]:
        config = mom_priv / "config"
        text = config.read_text() if config.exists() else ""
        lines = [l for l in text.splitlines() if l.split()[:1] == ["$job_starter"]]
        if not lines:
            return f"no $job_starter in {config}: run=container is unavailable (run 'torque-docker install')"
        path = lines[-1].split(None, 1)[1].strip()
        if not os.access(path, os.X_OK) or os.stat(path).st_mode & 0o005 != 0o005:
            return f"$job_starter {path} is not executable by job users (mode 0755 needed)"
        return None
    check("job starter", starter)

    def secret() -> Optional[str]:
        print(f"  secret fingerprint: {keys.fingerprint(keys.load_secret(cfg.paths_secret_file))} "
              f"(must be the same on every node)", file=out)
        return None
    check("site secret", secret)

    def docker() -> Optional[str]:
        from .lifecycle import runtime_for
        runtime_for(cfg).client.ping()
        return None
    check("docker", docker)

    def ssh_include() -> Optional[str]:
        dropin = Path(cfg.ssh_dropin)
        if not dropin.exists() or cfg.ssh_include_dir not in dropin.read_text():
            return f"{dropin} does not include {cfg.ssh_include_dir}/*.conf (run 'torque-docker install')"
        main = Path("/etc/ssh/ssh_config")
        text = main.read_text() if main.exists() else ""
        pattern = re.compile(r"^\s*Include\s+(\S*ssh_config\.d/\*\.conf|" + re.escape(str(dropin)) + r")", re.M | re.I)
        if not pattern.search(text):
            return f"{main} has no 'Include {dropin.parent}/*.conf': users' ssh will not find job aliases"
        return None
    check("ssh include", ssh_include)

    def listen() -> Optional[str]:
        cfg.listen_address()
        return None
    check("listen address", listen)

    for ok, line in results:
        print(("OK   " if ok else "FAIL ") + line, file=out)
    failed = sum(1 for ok, _ in results if not ok)
    print(f"checks: {len(results) - failed} ok, {failed} failing", file=out)
    return 1 if failed else 0

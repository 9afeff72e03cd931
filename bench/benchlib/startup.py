"""Start-up and teardown cost of a container job, through the real hooks, against a floor.

The floor is what any container-per-node scheme must pay at least, measured in the same
run on the same daemon: ``docker run -d`` of the same image with sshd as a non-root user
on the host network, until that sshd sends its banner; then ``docker rm -f``. N
containers are started in parallel (one CLI call each) and removed with one ``docker rm
-f``. The hooks are timed as the simulated pbs_mom sees them (fork to exit), and the MS
prologue's per-step line in the admin log says where the time went.
"""
from __future__ import annotations

import os
import re
import secrets
import socket
import statistics
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from torque_docker import probe

from .site import IMAGE, NODES, UID, BenchSite

FLOOR_ADDRESS = "127.0.2.20"       # not a node address: the floor never competes for the hooks' ports
FLOOR_PORTS = range(41000, 42000)  # outside the hooks' default range (40000-40999)
FLOOR_LABEL = "torque-docker-bench.floor"
STEP_LINE = re.compile(r"job=(?P<job>\S+) node=(?P<node>\S+) (?P<kind>prologue(?:\.parallel)?) ready on \S+: .*"
                       r"\[(?P<steps>[^\]]*)\]\s*$")


# ----------------------------------------------------------------------------- floor
def read_banner(address: str, port: int, timeout: float = 1.0) -> str:
    """The product's own banner probe (the floor must wait exactly as the hooks do)."""
    return probe.read_banner(address, port, timeout) or ""


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind((FLOOR_ADDRESS, port))
            return True
        except OSError:
            return False


class Floor:
    """Bare containers with sshd, for the floor. All carry FLOOR_LABEL=<run id>."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        self.dir = Path(tempfile.mkdtemp(prefix="td-bench-floor-", dir="/var/tmp"))
        os.chmod(self.dir, 0o755)
        self.token = "floor-" + secrets.token_hex(6)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(self.dir / "hostkey")], check=True)
        os.chown(self.dir / "hostkey", UID, UID)
        (self.dir / "sshd_config").write_text(
            "HostKey /run/bench/hostkey\nPidFile none\nUsePAM no\nPasswordAuthentication no\n"
            f"KbdInteractiveAuthentication no\nVersionAddendum {self.token}\n")
        self._next = iter(FLOOR_PORTS)

    def _ports(self, n: int) -> List[int]:
        out = []
        for port in self._next:
            if _port_free(port):
                out.append(port)
                if len(out) == n:
                    return out
        self._next = iter(FLOOR_PORTS)
        return self._ports(n)

    def start(self, n: int, timeout: float = 60.0) -> Dict[str, object]:
        """Start n containers in parallel; wall time until every sshd answered."""
        ports = self._ports(n)

        def one(port: int) -> str:
            cid = subprocess.run(
                ["docker", "run", "-d", "--network", "host", "--user", f"{UID}:{UID}",
                 "--label", f"{FLOOR_LABEL}={self.run_id}", "-v", f"{self.dir}:/run/bench:ro", IMAGE,
                 "/usr/sbin/sshd", "-D", "-e", "-f", "/run/bench/sshd_config",
                 "-o", f"ListenAddress={FLOOR_ADDRESS}:{port}"],
                capture_output=True, text=True, check=True).stdout.strip()
            deadline = time.monotonic() + timeout
            delay = 0.005
            while not read_banner(FLOOR_ADDRESS, port).endswith(self.token):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"floor sshd on port {port} did not answer")
                time.sleep(delay)
                delay = min(delay * 1.5, 0.05)
            return cid

        t0 = time.monotonic()
        with ThreadPoolExecutor(max_workers=n) as pool:
            ids = list(pool.map(one, ports))
        return {"ids": ids, "seconds": time.monotonic() - t0}

    def remove(self, ids: Sequence[str]) -> float:
        t0 = time.monotonic()
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=True)
        return time.monotonic() - t0

    def close(self) -> None:
        ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label={FLOOR_LABEL}={self.run_id}"],
                             capture_output=True, text=True).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
        subprocess.run(["rm", "-rf", str(self.dir)])


# ----------------------------------------------------------------------------- hooks
def parse_steps(log_text: str) -> Dict[tuple, Dict[str, float]]:
    """(jobid, node, kind) -> {step: seconds} from the prologues' 'ready' lines."""
    out: Dict[tuple, Dict[str, float]] = {}
    for line in log_text.splitlines():
        m = STEP_LINE.search(line)
        if not m:
            continue
        steps = {}
        for item in m.group("steps").split():
            name, _, value = item.partition("=")
            try:
                steps[name] = float(value.rstrip("s"))
            except ValueError:
                pass
        out[(m.group("job"), m.group("node"), m.group("kind"))] = steps
    return out


def hook_job(site: BenchSite, model: str, slots: int, variant: str = "") -> Dict[str, object]:
    """One 2-node job of `slots` slots per node: every hook's wall time and steps."""
    ms, sister = list(NODES)
    job = site.job("#!/bin/bash\ntrue\n", [(ms, slots), (sister, slots)], f"image={IMAGE};model={model}",
                   name=f"start-{model}-{slots}")
    result = site.cluster.run(job)
    row: Dict[str, object] = {"jobid": job.jobid, "variant": variant or model, "model": model, "slots": slots,
                              "ok": result.exit_status == 0 and result.state == "C"}
    for hook, node, role in (("prologue", ms, "ms"), ("prologue.parallel", sister, "sister"),
                             ("epilogue", ms, "ms"), ("epilogue.parallel", sister, "sister")):
        runs = result.runs(hook, node)
        if runs:
            kind = hook.split(".")[0]
            row[f"{kind}_{role}"] = runs[0].elapsed
            row[f"{kind}_{role}_rc"] = runs[0].rc
    if not row["ok"]:
        row["error"] = (result.stderr.strip() or result.stdout.strip())[-600:]
    row["leftover_containers"] = len(site.containers_of(job.jobid))
    return row


def attach_steps(site: BenchSite, rows: List[Dict[str, object]]) -> None:
    try:
        steps = parse_steps(site.log_file.read_text())
    except OSError:
        return
    ms, sister = list(NODES)
    for row in rows:
        for node, kind, role in ((ms, "prologue", "ms"), (sister, "prologue.parallel", "sister")):
            found = steps.get((row["jobid"], node, kind))
            if found:
                row[f"steps_{role}"] = found


# A variant: (name, model, extra pbs_environment for the hooks). The starred ones are a
# what-if, not the product as shipped: SETUPTOOLS_USE_DISTUTILS=stdlib keeps setuptools'
# distutils shim (pulled in by the Docker SDK's `import distutils.spawn`) out of every hook.
VARIANTS = {
    "node": ("node", {}),
    "process": ("process", {}),
    "node*": ("node", {"SETUPTOOLS_USE_DISTUTILS": "stdlib"}),
    "process*": ("process", {"SETUPTOOLS_USE_DISTUTILS": "stdlib"}),
}


def run(site: BenchSite, run_id: str, slot_counts: Sequence[int], reps: int, variants: Sequence[str],
        say=print) -> Dict[str, object]:
    """Interleaved: every repetition measures the floors and every (variant, slots) hook job."""
    floor = Floor(run_id)
    floor_rows: List[Dict[str, object]] = []
    hook_rows: List[Dict[str, object]] = []
    try:
        # Warm-up: the image's layers into the page cache, the daemon's first-call costs.
        warm = floor.start(1)
        floor.remove(warm["ids"])
        for rep in range(reps):
            order = list(slot_counts) if rep % 2 == 0 else list(reversed(slot_counts))
            for slots in order:
                for n in sorted({1, slots}):
                    started = floor.start(n)
                    rm = floor.remove(started["ids"])
                    floor_rows.append({"rep": rep, "containers": n, "start": started["seconds"], "rm": rm})
                for variant in (variants if rep % 2 == 0 else list(reversed(variants))):
                    model, env = VARIANTS[variant]
                    site.set_hook_env(env)
                    try:
                        row = hook_job(site, model, slots, variant)
                    finally:
                        site.set_hook_env({})
                    row["rep"] = rep
                    hook_rows.append(row)
                    status = "ok" if row["ok"] else f"FAILED: {str(row.get('error', ''))[:200]}"
                    say(f"  start-up rep {rep + 1}/{reps} {variant:8s} slots={slots:2d}: "
                        f"prologue MS {row.get('prologue_ms', float('nan')):.2f}s "
                        f"sister {row.get('prologue_sister', float('nan')):.2f}s, "
                        f"epilogue MS {row.get('epilogue_ms', float('nan')):.2f}s "
                        f"sister {row.get('epilogue_sister', float('nan')):.2f}s  {status}")
        attach_steps(site, hook_rows)
    finally:
        floor.close()
    return {"floor": floor_rows, "hooks": hook_rows, "profile": profile(site)}


# ----------------------------------------------------------------------------- where the time goes
def _median_time(argv: Sequence[str], n: int = 5, env: Optional[dict] = None) -> float:
    times = []
    for _ in range(n):
        t0 = time.monotonic()
        subprocess.run(argv, capture_output=True, env=env, check=True)
        times.append(time.monotonic() - t0)
    return statistics.median(times)


def profile(site: BenchSite) -> Dict[str, float]:
    """Fixed costs every hook pays before its first timed step, and some inside the steps."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": site.pythonpath}
    py = ["/usr/bin/python3", "-s", "-c"]
    # As the installed hooks start: -S, and the package's directories named (install.package_dirs).
    from torque_docker import install
    hook = ["/usr/bin/python3", "-S", "-c", f"import sys; sys.path += {install.package_dirs('/usr/bin/python3')!r}\n"]
    epilogue_set = "from torque_docker import cli, config, lifecycle, torque, log, state, engine\n"
    out = {
        "hook_python_start": _median_time(hook[:3] + ["pass"], env=env),
        "hook_imports_epilogue": _median_time(hook[:3] + [hook[3] + epilogue_set], env=env),
        "hook_imports_prologue": _median_time(hook[:3] + [hook[3] + epilogue_set + (
            "from torque_docker import sweep, render, keys\nimport jinja2\n"
            "keys.JobSecrets.derive(bytes(32), keys.JobIdentity('1.x', 'u', 'g', 'n'))\n")], env=env),
        "python_start": _median_time(py + ["pass"], env=env),
        "import_cli": _median_time(py + ["import torque_docker.cli"], env=env),
        "import_lifecycle": _median_time(py + ["import torque_docker.lifecycle"], env=env),
        "import_lifecycle_stdlib_distutils": _median_time(py + ["import torque_docker.lifecycle"],
                                                          env={**env, "SETUPTOOLS_USE_DISTUTILS": "stdlib"}),
        "import_docker_sdk": _median_time(py + ["import docker"], env=env),
        "import_distutils_spawn": _median_time(py + ["import distutils.spawn"], env=env),
        "import_jinja2": _median_time(py + ["import jinja2"], env=env),
        "import_cryptography_ed25519": _median_time(
            py + ["from cryptography.hazmat.primitives.asymmetric import ed25519"], env=env),
    }
    code = (
        "import time,statistics\n"
        "from torque_docker import keys, render, config, lifecycle, runtime\n"
        f"cfg = config.load({str(site.configs['bnode0'])!r})\n"
        f"secret = keys.load_secret({str(site.secret)!r})\n"
        "def t(f, n=20):\n"
        "    xs=[]\n"
        "    for _ in range(n):\n"
        "        t0=time.perf_counter(); f(); xs.append(time.perf_counter()-t0)\n"
        "    return statistics.median(xs)\n"
        "job = keys.JobIdentity('1.x', 'u', 'g', 'bnode0')\n"
        "first=time.perf_counter(); keys.JobSecrets.derive(secret, job); first=time.perf_counter()-first\n"
        "print('derive_keys_first', first)\n"
        "print('derive_keys', t(lambda: keys.JobSecrets.derive(secret, job)))\n"
        "first=time.perf_counter(); render.render('sshd_config.j2', cfg.paths_template_dir, jobid='1.x', user='u', "
        "ctr_dir='/run', token='t', log_level='ERROR'); first=time.perf_counter()-first\n"
        "print('render_first', first)\n"
        "print('docker_client', t(lambda: runtime.Runtime.from_config(cfg), n=5))\n"
    )
    res = subprocess.run(py + [code], capture_output=True, text=True, env=env)
    for line in res.stdout.splitlines():
        name, _, value = line.partition(" ")
        try:
            out[name] = float(value)
        except ValueError:
            pass
    if res.returncode != 0:
        out["profile_error"] = res.stderr.strip()[-300:]  # type: ignore[assignment]
    return out

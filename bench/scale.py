#!/usr/bin/python3
"""The mother superior's work as a job grows: 2 to 1,000 nodes, and 64 x 64 per-process.

    /usr/bin/python3 bench/scale.py [--sizes node:2x16,node:1000x16,process:64x64] [--out DIR]

Only the MS is real: its connect step is the product's own (``connect.connect_job``: probe,
SSH config, push, nodefile), run against stand-in sisters (tests/standins.py) that answer
on the network like the containers prologue.parallel starts: the right banner token on the
candidate each took, an honest key exchange with the job's host key, every tenth one past
two candidates another job holds. A real OpenSSH login to any stand-in (the MS's push,
the first ``mpirun`` hop) is relayed to a real sshd in a container of the test image with
a sister's job files (``prepare_job_dir``) and the product's sshd_config and session: one
container of its own for each sister the MS logs into (it relays the push from its own
files), one shared by all the others. Every sister's share of the push and of the hop
therefore runs on this one machine, which a real cluster spreads over its nodes. The epilogue's MS part (``teardown.teardown``) runs with the real
Docker runtime. Must run as root (job files are a tmpfs, owned as on a node).

Writes DIR/scale.json and DIR/scale.md (default bench/reported/scale-<time>/).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "src"))

import standins  # noqa: E402

from torque_docker import connect, lifecycle, plan, teardown  # noqa: E402
from torque_docker.jobcontext import Timer  # noqa: E402
from torque_docker.identity import lookup  # noqa: E402
from torque_docker.log import Log  # noqa: E402
from torque_docker.runtime import Runtime  # noqa: E402
from torque_docker.state import NodeState  # noqa: E402

IMAGE = "torque-docker-test/openmpi:latest"
USER = "tduser"
RELAY_ADDRESS = "127.9.0.1"
# The 1,000-node job last: its push saturates this machine (every sister's login runs here).
DEFAULT_SIZES = "node:2x16,node:10x16,node:33x16,node:100x16,process:2x64,process:64x64,node:1000x16"


def free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


def median_run(argv: List[str], n: int = 7) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class RealSshd:
    """One real sshd (the test image's) with a sister's job files: what stand-ins relay logins to."""

    def __init__(self, job: standins.ScaleJob, root: Path, name: str = "sister", startups: int = 200) -> None:
        self.user = lookup(USER)
        self.state = NodeState(str(root / f"{name}-state"))
        self.state.ensure()
        self.jobid = job.ctx.jobid
        lifecycle.prepare_job_dir(self.state, self.jobid, self.user, job.secrets, job.cfg, log_level="ERROR",
                                  ms=False)
        ctr = self.state.ctr_dir(self.jobid)
        self.port = free_port(RELAY_ADDRESS)
        binds = [f"{ctr}:{lifecycle.CTR_DIR}", f"{ctr}/passwd:/etc/passwd:ro", f"{ctr}/group:/etc/group:ro",
                 f"{ctr}/ssh_config:/etc/ssh/ssh_config:ro", f"{ctr}/hosts:/etc/hosts:ro"]
        argv = ["docker", "run", "-d", "--rm", "--network", "host", "--user", f"{self.user.uid}:{self.user.gid}",
                "--cap-drop", "ALL", "--label", "torque-docker-bench.scale=1"]
        for bind in binds:
            argv += ["-v", bind]
        argv += [IMAGE, "/usr/sbin/sshd", "-D", "-e", "-f", f"{lifecycle.CTR_DIR}/sshd_config",
                 "-o", f"ListenAddress={RELAY_ADDRESS}:{self.port}", "-o", f"MaxStartups={startups}:30:{2 * startups}"]
        self.ident = subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                socket.create_connection((RELAY_ADDRESS, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise SystemExit("bench: the relay sshd did not start: "
                         + subprocess.run(["docker", "logs", self.ident], capture_output=True, text=True).stderr)

    def close(self) -> None:
        subprocess.run(["docker", "rm", "-f", self.ident], capture_output=True)
        teardown.release_job_files(self.state, self.jobid)


def one_size(model: str, nodes: int, slots: int, base: int, root: Path, log: Log) -> Dict[str, object]:
    work = root / f"{model}-{nodes}x{slots}"
    work.mkdir(parents=True)
    jobid = f"{base}.scale"
    t0 = time.perf_counter()
    job = standins.scale_job(work, nodes, slots, model, base=(127, base), jobid=jobid, user_name=USER)
    # What grows in the prologue before the connect step: the plan from exec_host.
    start = time.perf_counter()
    plan.plan_job(jobid, job.hosts, model, lambda n, s: job.nodes[n].containers[s].candidates)
    plan_seconds = time.perf_counter() - start
    # The sisters the MS logs into relay the push from their own files, so each gets a real
    # sshd (and job files) of its own; all the others, which only write, share one.
    children = [alias for alias, _ in connect.split_tree([n.containers[0].alias for n in job.nodes[1:]],
                                                         connect.push_fanout(len(job.nodes) - 1))]
    # The shared one takes every leaf's login at once (on a cluster each sister takes one).
    sshd = RealSshd(job, work, startups=max(200, 2 * len(job.nodes)))
    with ThreadPoolExecutor(max_workers=8) as pool:
        own = dict(zip(children, pool.map(lambda a: RealSshd(job, work, a), children)))
    for sister in job.sisters:
        if sister.alias in own:
            sister.relay = [RELAY_ADDRESS, own[sister.alias].port]
    row: Dict[str, object] = {"model": model, "nodes": nodes, "slots": slots,
                              "containers": sum(len(n.containers) for n in job.nodes), "plan": plan_seconds}
    try:
        with standins.Standins(job.sisters, job.secrets.host_key.private_openssh, work,
                               relay=(RELAY_ADDRESS, sshd.port)):
            # The MS's own files, as its prologue left them (tmpfs, root's, keys the user's).
            lifecycle.prepare_job_dir(job.state, jobid, lookup(USER), job.secrets, job.cfg, log_level="ERROR")
            timer = Timer()
            logins = connect.connect_job(job.ctx, job.cfg, job.state, lookup(USER), job.nodes, job.local_started,
                                         job.address, job.secrets, timer, assigned=job.hosts)
            row.update({name: seconds for name, seconds in timer.steps})
            row["connect"] = timer.total
            row["ms_logins"] = logins
            host_config = Path(job.cfg.ssh_include_dir) / f"{jobid.replace('/', '_')}.conf"
            last = job.nodes[-1].containers[-1].alias
            row["config_lines"] = len(host_config.read_text().splitlines())
            row["parse"] = median_run(["ssh", "-G", "-F", str(host_config), last])
            # The first mpirun hop: a real login to the last alias (relayed to the real sshd), as the user.
            hop = ["runuser", "-u", USER, "--", "ssh", "-F", str(host_config), last, "# torque-docker\ntrue"]
            row["hop"] = median_run(hop)
        start = time.perf_counter()
        undone = teardown.teardown(job.cfg, jobid, runtime=Runtime(job.cfg.docker_endpoint, 30),
                                    nodefile=job.ctx.nodefile, log=log)
        row["epilogue"] = time.perf_counter() - start
        row["epilogue_errors"] = undone.errors
    finally:
        sshd.close()
        for one in own.values():
            one.close()
        try:      # whatever happened: the MS's tmpfs and files (teardown's last step, idempotent)
            teardown.release_job_files(job.state, jobid)
        except Exception as exc:
            print(f"bench: cleanup of {jobid}: {exc}", file=sys.stderr)
    row["wall"] = time.perf_counter() - t0
    return row


def failures(root: Path) -> Dict[str, object]:
    """1,000 nodes: ten sisters answer 5 s late; then the same with one that never answers.
    The product's probe (probe.find_ports) and connect step (connect.connect_job)."""
    from torque_docker import probe
    from torque_docker.errors import ContainerFault
    out: Dict[str, object] = {}
    slow = [100 * k + 7 for k in range(10)]
    work = root / "slow"
    work.mkdir()
    job = standins.scale_job(work, 1000, 1, "node", base=(127, 40), jobid="40.scale", user_name=USER,
                             slow=slow, slow_delay=5.0)
    targets = {s.alias: (s.address, s.candidates, s.token) for s in job.sisters if s.address != job.address}
    with standins.Standins(job.sisters, job.secrets.host_key.private_openssh, work):
        start = time.perf_counter()
        found = probe.find_ports(targets, time.monotonic() + job.cfg.ssh_ready_timeout,
                                 job.secrets.host_key.public_openssh)
        out["slow_probe"] = time.perf_counter() - start
    out["slow_found"] = f"{len(found)}/{len(targets)}"
    work = root / "dead"
    work.mkdir()
    job = standins.scale_job(work, 1000, 1, "node", base=(127, 41), jobid="41.scale", user_name=USER,
                             dead=[613], ready_timeout=15.0)
    with standins.Standins(job.sisters, job.secrets.host_key.private_openssh, work):
        start = time.perf_counter()
        try:
            connect.connect_job(job.ctx, job.cfg, job.state, lookup(USER), job.nodes, job.local_started,
                                job.address, job.secrets, Timer(), assigned=job.hosts)
            out["dead_error"] = "none"
        except ContainerFault as exc:
            out["dead_error"] = exc.message
        out["dead_gave_up_after"] = time.perf_counter() - start
        out["dead_ready_timeout"] = job.cfg.ssh_ready_timeout
        out["dead_node"] = job.nodes[613].host
    return out


def markdown(rows: List[Dict[str, object]], meta: Dict[str, object]) -> str:
    steps = ["plan", "probe", "render", "push", "nodefile", "connect", "parse", "hop", "epilogue"]
    head = "| job | containers | config lines | MS logins | "
    out = [f"# Scale: the mother superior's work by job size ({meta['when']}, {meta['commit']})", "",
           "Seconds (medians of 7 for parse and hop). plan: plan_job from exec_host; probe .. nodefile: the "
           "steps of connect.connect_job; connect: their sum (the part of the MS prologue that grows with the "
           "job); parse: `ssh -G` of the last alias; hop: a real `ssh` login to the last alias with the job's "
           "config; epilogue: the MS's teardown.teardown.", "",
           head + " | ".join(steps) + " |",
           "|---|---|---|---|" + "---|" * len(steps)]
    for r in rows:
        out.append(f"| {r['model']} {r['nodes']}x{r['slots']} | {r['containers']} | {r['config_lines']} | {r.get('ms_logins')} | "
                   + " | ".join(f"{float(r.get(s, 0)):.3f}" for s in steps) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default=DEFAULT_SIZES)
    parser.add_argument("--out", default="")
    parser.add_argument("--failure", action="store_true", help="only the failure runs (slow and dead sisters)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: run as root")
    when = time.strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else BENCH / "reported" / f"scale-{when}"
    out.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="td-scale-", dir="/var/tmp"))
    os.chmod(root, 0o755)
    log = Log(str(root / "admin.log"), "scale-ms")
    if args.failure:
        result = failures(root)
        (out / "failure.json").write_text(json.dumps(result, indent=1))
        print(json.dumps(result, indent=1))
        return
    rows = []
    for n, size in enumerate(args.sizes.split(",")):
        model, shape = size.split(":")
        nodes, slots = (int(x) for x in shape.split("x"))
        row = one_size(model, nodes, slots, 20 + n, root, log)
        rows.append(row)
        print(json.dumps(row), flush=True)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    meta = {"when": when, "commit": commit, "cpus": os.cpu_count()}
    (out / "scale.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (out / "scale.md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()

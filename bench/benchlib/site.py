"""A simulated Torque site of the benchmark's own, with the real hooks installed.

Like scripts/demo.py and tests/integration/conftest.py, but apart from them so that
benchmarks and tests can share one Docker daemon at the same time: nodes ``bnode0``,
``bnode1`` on 127.0.2.x (the tests use tdnode* on 127.0.1.x), server name ``bench`` (so
job ids, container names and SSH aliases differ), state and logs under a directory of
its own in /var/tmp. Everything it makes is removed by ``close()``.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "src"))

import momsim  # noqa: E402

from torque_docker import admin, config, keys  # noqa: E402
from torque_docker.runtime import L_HOST, L_JOB  # noqa: E402
from torque_docker.torque import safe_jobid  # noqa: E402

NODES: Dict[str, str] = {"bnode0": "127.0.2.10", "bnode1": "127.0.2.11"}
SERVER = "bench"
USER, UID = "tduser", 2001
IMAGE = "torque-docker-test/bench:latest"


class BenchSite:
    def __init__(self, prologalarm: int = 300) -> None:
        if os.geteuid() != 0:
            raise SystemExit("bench: run as root (the simulator plays pbs_mom)")
        momsim.ensure_hosts(NODES)
        momsim.ensure_user(USER, UID)
        os.chmod(pwd.getpwnam(USER).pw_dir, 0o755)
        self.root = Path(tempfile.mkdtemp(prefix="td-bench-", dir="/var/tmp"))
        os.chmod(self.root, 0o755)
        self.secret = self.root / "secret"
        keys.generate_secret(str(self.secret))
        self.log_file = self.root / "torque-docker.log"
        self.configs: Dict[str, Path] = {}
        # The profile the package ships (Docker's default plus CMA's two calls), root's copy as
        # a site would have it in /etc/torque-docker: Open MPI's single-copy path is on.
        self.seccomp_profile = self.root / "seccomp-cma.json"
        shutil.copyfile(REPO / "packaging" / "seccomp-cma.json", self.seccomp_profile)
        os.chmod(self.seccomp_profile, 0o644)
        for node, address in NODES.items():
            conf = self.root / f"{node}.conf"
            conf.write_text(f"[docker]\nseccomp_profile = {self.seccomp_profile}\n"
                            f"[network]\nnode_name = {node}\nlisten_address = {address}\n"
                            f"[paths]\nstate_dir = {self.root}/state-{node}\nsecret_file = {self.secret}\n"
                            f"[log]\ndestination = file:{self.log_file}\n")
            self.configs[node] = conf
        # PYTHONPATH: the hooks (and the job starter, through the job's variables) run this
        # checkout's code whatever copy of the package /usr/bin/python3 has installed.
        self.pythonpath = str(REPO / "src")
        env = {n: {config.ENV_VAR: str(c), "PYTHONPATH": self.pythonpath} for n, c in self.configs.items()}
        self.cluster = momsim.Cluster(self.root / "cluster", list(NODES), prologalarm=prologalarm,
                                      server=SERVER, pbs_environment_extra=env)
        for node in NODES:
            admin.install(str(self.cluster.pbs_home(node) / "mom_priv"), python="/usr/bin/python3",
                          job_starter=True, dropin=True, cfg=config.load(str(self.configs[node])),
                          out=open(os.devnull, "w"))
        self.workdir = Path(pwd.getpwnam(USER).pw_dir) / "td-bench" / self.root.name
        self.install_dir(self.workdir)
        self.jobids: List[str] = []

    def set_hook_env(self, extra: Dict[str, str]) -> None:
        """Rewrite every node's pbs_environment (what the hooks get) with extra variables."""
        for node, conf in self.configs.items():
            lines = ["PATH=/bin:/usr/bin", f"{config.ENV_VAR}={conf}", f"PYTHONPATH={self.pythonpath}"]
            lines += [f"{k}={v}" for k, v in extra.items()]
            path = self.cluster.pbs_home(node) / "pbs_environment"
            path.write_text("\n".join(lines) + "\n")
            os.chown(path, 0, 0)
            os.chmod(path, 0o644)

    @staticmethod
    def install_dir(path: Path) -> None:
        subprocess.run(["install", "-d", "-o", USER, "-g", USER, "-m", "0755", str(path)], check=True)

    def job(self, script: str, nodes: Sequence[Tuple[str, int]], other: Optional[str], name: str = "bench",
            walltime: str = "00:30:00") -> "momsim.Job":
        resources = {"walltime": walltime}
        if other:
            resources["other"] = other
        jobid = self.cluster.new_jobid()
        self.jobids.append(jobid)
        return momsim.Job(jobid=jobid, user=USER, script=script, nodes=list(nodes), resources=resources,
                          workdir=str(self.workdir), name=name, variables={"PYTHONPATH": self.pythonpath})

    def containers_of(self, jobid: Optional[str] = None) -> List[str]:
        """Ids of containers this site's hooks made (all jobs, or one)."""
        label = f"{L_JOB}={jobid}" if jobid else L_JOB
        out = subprocess.run(["docker", "ps", "-a", "--no-trunc", "--filter", f"label={label}",
                              "--format", "{{.ID}} {{.Label \"" + L_JOB + "\"}} {{.Label \"" + L_HOST + "\"}}"],
                             capture_output=True, text=True).stdout.split("\n")
        ids = []
        for line in out:
            parts = line.split()
            if len(parts) == 3 and parts[1].endswith("." + SERVER) and parts[2] in NODES:
                ids.append(parts[0])
        return ids

    def close(self) -> None:
        """Remove every container, SSH config, state and file of this site, whatever happened."""
        ids = self.containers_of()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)
        for node in NODES:
            include = Path(config.load(str(self.configs[node])).ssh_include_dir)
            for jobid in self.jobids:
                (include / f"{safe_jobid(jobid)}.conf").unlink(missing_ok=True)
        shutil.rmtree(self.workdir, ignore_errors=True)
        shutil.rmtree(self.root, ignore_errors=True)

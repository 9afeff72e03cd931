"""The main job: a real containerised MPI job through the installed hooks.

Two simulated Torque nodes (tdnode0, tdnode1 on 127.0.1.x) share this machine's Docker
daemon; the hooks are installed into each node's mom_priv exactly as on a cluster, and
the simulator runs them as pbs_mom would. The job asks for `-l other=image=...` and runs
`mpirun -hostfile $PBS_NODEFILE -np 4` on a program compiled inside the image.
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import momsim  # noqa: E402

from torque_docker import admin, config, keys  # noqa: E402

NODES = {"tdnode0": "127.0.1.10", "tdnode1": "127.0.1.11"}
SCRIPT = """#!/bin/bash
#PBS -l nodes=2:ppn=2,walltime=00:05:00
#PBS -l other=image=torque-docker-test/openmpi:latest
cd "$PBS_O_WORKDIR"
echo "running in: $(cat /etc/torque-docker-test-marker 2>/dev/null || echo the host) as $(id -un)"
echo "PBS_NODEFILE: $(tr '\\n' ' ' < "$PBS_NODEFILE")"
mpirun -hostfile "$PBS_NODEFILE" -np 4 /opt/tdtest/mpi_hello
"""


def main() -> int:
    momsim.ensure_hosts(NODES)
    root = Path(tempfile.mkdtemp(prefix="td-demo-", dir="/var/tmp"))
    os.chmod(root, 0o755)
    secret = root / "secret"
    keys.generate_secret(str(secret))
    confs = {}
    for node, address in NODES.items():
        confs[node] = root / f"{node}.conf"
        confs[node].write_text(f"[network]\nnode_name = {node}\nlisten_address = {address}\n"
                               f"[paths]\nstate_dir = {root}/state-{node}\nsecret_file = {secret}\n"
                               f"[log]\ndestination = file:{root}/torque-docker.log\n")
    cluster = momsim.Cluster(root / "cluster", list(NODES), server="demo",
                             pbs_environment_extra={n: {config.ENV_VAR: str(c)} for n, c in confs.items()})
    for node in NODES:
        admin.install(str(cluster.pbs_home(node) / "mom_priv"), python="/usr/bin/python3",
                      cfg=config.load(str(confs[node])), out=open(os.devnull, "w"))
    workdir = Path("/home/tduser/td-demo")
    subprocess.run(["install", "-d", "-o", "tduser", "-g", "tduser", str(workdir)], check=True)
    job = momsim.Job(jobid=cluster.new_jobid(), user="tduser", script=SCRIPT, name="demo",
                     nodes=[("tdnode0", 2), ("tdnode1", 2)], workdir=str(workdir),
                     resources={"walltime": "00:05:00", "other": "image=torque-docker-test/openmpi:latest"})
    print(f"$ qsub demo.pbs   # job {job.jobid}, user tduser, nodes tdnode0 x2 + tdnode1 x2\n")
    result = cluster.run(job)
    print(f"--- {result.output_paths[0] if result.output_paths else 'stdout'} ---")
    print(result.stdout, end="")
    if result.stderr.strip():
        print(f"--- stderr ---\n{result.stderr}", end="")
    ranks = [l for l in result.stdout.splitlines() if l.startswith("rank=")]
    inside = [l for l in ranks if "marker=inside-the-openmpi-image" in l and "uid=2001" in l]
    left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=torque-docker.job={job.jobid}"],
                          capture_output=True, text=True).stdout.split()
    print(f"\njob state {result.state}, exit status {result.exit_status}; "
          f"{len(inside)}/4 ranks ran inside containers as tduser; containers left after the epilogues: {len(left)}")
    ok = result.exit_status == 0 and len(inside) == 4 and not left
    print("DEMO OK" if ok else "DEMO FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

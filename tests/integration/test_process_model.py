"""One container per slot, pinned to its own core, sharing IPC with its node's siblings."""
import os
import re
import threading
from pathlib import Path

import pytest

from conftest import OPENMPI_IMAGE

HERE = Path(__file__).resolve().parent

CPUSET_SCRIPT = """#!/bin/bash
mpirun -hostfile "$PBS_NODEFILE" -np 4 --bind-to none \\
  bash -c 'echo "alias=$(hostname) cpus=$(cat /sys/fs/cgroup/cpuset/cpuset.cpus) allowed=$(grep Cpus_allowed_list /proc/self/status | cut -f2)"'
"""


def test_two_by_two_each_rank_in_its_own_container_on_its_own_core(site, docker_client):
    job = site.job(CPUSET_SCRIPT, [("tdnode0", 2), ("tdnode1", 2)], other=f"image={OPENMPI_IMAGE};model=process")
    result = site.cluster.run(job)
    rows = re.findall(r"alias=(\S+) cpus=(\S+) allowed=(\S+)", result.stdout)
    assert len(rows) == 4, result.stdout + result.stderr
    assert len({alias for alias, _, _ in rows}) == 4                 # four containers
    for alias, cpus, allowed in rows:
        assert cpus == allowed and "," not in cpus and "-" not in cpus   # exactly one CPU each
    by_node = {}
    for alias, cpus, _ in rows:
        by_node.setdefault(alias.rsplit("-", 1)[0], set()).add(cpus)
    assert all(len(cores) == 2 for cores in by_node.values())        # distinct cores on each node
    assert site.leftovers(docker_client, job.jobid) == []


def test_two_running_jobs_on_a_node_never_share_a_core(site):
    script = "#!/bin/bash\nssh $(head -1 $PBS_NODEFILE) cat /sys/fs/cgroup/cpuset/cpuset.cpus\nsleep 6\n"
    results = {}

    def run(name):
        results[name] = site.cluster.run(site.job(script, [("tdnode0", 1)],
                                                  other=f"image={OPENMPI_IMAGE};model=process;run=host"))

    threads = [threading.Thread(target=run, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    cores = [results[n].stdout.splitlines()[1].strip() for n in ("a", "b")]
    assert all(re.fullmatch(r"\d+", c) for c in cores), cores
    assert cores[0] != cores[1]
    held = site.state_dir("tdnode0") / "cores.json"
    assert held.read_text() in ("{}", "")                            # released by the epilogues


SHM_SCRIPT = """#!/bin/bash
first=$(head -1 $PBS_NODEFILE)
ssh $first mpicc -o $PBS_O_WORKDIR/mpi_shm $PBS_O_WORKDIR/mpi_shm.c
mpirun -hostfile "$PBS_NODEFILE" -np 2 $PBS_O_WORKDIR/mpi_shm
"""


def shm_job(site):
    job = site.job(SHM_SCRIPT, [("tdnode0", 2)], other=f"image={OPENMPI_IMAGE};model=process;run=host")
    source = Path(job.workdir) / "mpi_shm.c"
    source.write_text((HERE / "mpi_shm.c").read_text())
    return job


def test_ranks_in_sibling_containers_share_memory(site):
    result = site.cluster.run(shm_job(site))
    assert "rank=1 shm=ok read=written-by-rank-0" in result.stdout, result.stdout + result.stderr
    assert result.exit_status == 0


def test_without_ipc_sharing_the_same_run_fails(make_site):
    site = make_site(nodes=1, extra_config="[jobs]\nprocess_ipc = private\n")
    result = site.cluster.run(shm_job(site))
    assert "rank=1 shm=fail" in result.stdout, result.stdout + result.stderr
    assert result.exit_status != 0


def test_usage_table_closes_the_o_file(site):
    script = "#!/bin/bash\nmpirun -np 2 bash -c 'x=0; for i in $(seq 1 200000); do x=$((x+i)); done; echo done'\n"
    job = site.job(script, [("tdnode0", 1), ("tdnode1", 1)], other=f"image={OPENMPI_IMAGE};model=process")
    result = site.cluster.run(job)
    assert result.stdout.count("done") == 2, result.stdout + result.stderr
    head = result.stdout.index(f"torque-docker: usage per container of job {job.jobid}")
    rows = re.findall(r"^  (td-\S+)\s+([\d.]+)\s+([\d.]+)\s+(\d\d:\d\d:\d\d)\s+(\d\d:\d\d:\d\d)$",
                      result.stdout[head:], re.M)
    assert sorted(r[0].rsplit("-", 2)[1] for r in rows) == ["n0", "n1"]
    assert all(float(cpu) > 0.05 and float(mem) > 0 for _, cpu, mem, _, _ in rows), rows
    log = site.log_file.read_text()
    assert f"job={job.jobid} node=tdnode1 usage td-" in log      # sisters account in the admin log


def test_live_limits_change_a_running_container(site, docker_client):
    import subprocess
    import time
    script = "#!/bin/bash\nsleep 30\n"
    job = site.job(script, [("tdnode0", 2)], other=f"image={OPENMPI_IMAGE};model=process;run=host",
                   kill_after=25)
    thread = threading.Thread(target=lambda: site.cluster.run(job))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(docker_client.containers.list(
                filters={"label": f"torque-docker.job={job.jobid}"})) < 2:
            time.sleep(0.2)
        env = {"PATH": "/usr/bin:/bin", "TORQUE_DOCKER_CONF": str(site.configs["tdnode0"]),
               "PYTHONPATH": os.environ["PYTHONPATH"]}
        done = subprocess.run(["/usr/bin/python3", "-m", "torque_docker.cli", "limits", job.jobid, "--slot", "1",
                               "--cpus", "0.5", "--memory", "256mb"], capture_output=True, text=True, env=env,
                              timeout=60)
        assert done.returncode == 0, done.stderr
        containers = {c.labels["torque-docker.slot"]: c for c in
                      docker_client.containers.list(filters={"label": f"torque-docker.job={job.jobid}"})}
        changed = containers["1"].attrs["HostConfig"]
        assert changed["CpuQuota"] == 50000 and changed["CpuPeriod"] == 100000
        assert changed["Memory"] == 256 * 2**20
        untouched = containers["0"].attrs["HostConfig"]
        assert untouched["CpuQuota"] == 0 and untouched["Memory"] == 0
        assert "limits td-" in done.stdout and "'cpus': 0.5" in done.stdout
        assert f"job={job.jobid} node=tdnode0 limits td-" in site.log_file.read_text()
        wrong = subprocess.run(["/usr/bin/python3", "-m", "torque_docker.cli", "limits", "999.nojob", "--cpus", "1"],
                               capture_output=True, text=True, env=env, timeout=60)
        assert wrong.returncode == 1 and "has no running container" in wrong.stderr
    finally:
        thread.join(timeout=120)


def _torque_cgroup(jobid, cpus):
    """What Torque built --enable-cgroups does before the prologues: the job's cpuset."""
    root = Path("/sys/fs/cgroup/cpuset/torque")
    made = []
    for path in (root, root / jobid):
        if not path.exists():
            path.mkdir()
            made.append(path)
    for path, value in ((root, None), (root / jobid, cpus)):
        parent = path.parent
        (path / "cpuset.mems").write_text((parent / "cpuset.mems").read_text())
        (path / "cpuset.cpus").write_text(value or (parent / "cpuset.cpus").read_text())
    return made


def _rmdir_tree(path):
    for child in sorted(path.glob("*/"), key=lambda p: -len(p.parts)):
        if child.is_dir() and (child / "cgroup.procs").exists():
            _rmdir_tree(child)
    try:
        path.rmdir()
    except OSError:
        pass


@pytest.mark.parametrize("array", [False, True], ids=["job", "array-subjob"])
def test_torque_cpuset_and_cgroup_parent(make_site, docker_client, array):
    """Torque names a job's cgroup after its id, an array subjob's too (torque/52[1].server)."""
    site = make_site(nodes=1, extra_config="[cgroups]\nparent = torque\n")
    script = ("#!/bin/bash\nssh $(head -1 $PBS_NODEFILE) "
              "'cat /sys/fs/cgroup/cpuset/cpuset.cpus; grep cpuset /proc/self/cgroup'\n")
    other = f"image={OPENMPI_IMAGE};model=process;run=host"
    job = site.array(script, [[("tdnode0", 1)]], other=other)[0] if array else site.job(script, [("tdnode0", 1)], other=other)
    last_core = str(max(__import__("os").sched_getaffinity(0)))
    made = _torque_cgroup(job.jobid, last_core)
    try:
        result = site.cluster.run(job)
        lines = result.stdout.splitlines()
        assert lines[1] == last_core, result.stdout + result.stderr      # Torque's cpuset, not the allocator's
        assert f":/torque/{job.jobid}/" in lines[2]                       # parented under the job's cgroup
    finally:
        for sub in ("cpuset", "cpu", "cpuacct", "memory", "pids", "blkio", "devices", "freezer", "systemd"):
            _rmdir_tree(Path(f"/sys/fs/cgroup/{sub}/torque/{job.jobid}"))
        for path in reversed(made):
            _rmdir_tree(path)

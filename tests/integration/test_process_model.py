"""Issue 4: one container per slot, pinned to its own core, sharing IPC with its node's siblings."""
import re
import threading
from pathlib import Path

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
    nodefile = re.search(r"nodefile: (.*)", result.stdout)
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

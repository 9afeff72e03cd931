"""The foundation, end to end: a real MPI job through the real hooks, every rank in a container."""
import re

from conftest import OPENMPI_IMAGE, USER

MPI_SCRIPT = """#!/bin/bash
cd "$PBS_O_WORKDIR"
echo "nodefile: $(tr '\\n' ' ' < "$PBS_NODEFILE")"
mpirun -hostfile "$PBS_NODEFILE" -np 4 /opt/tdtest/mpi_hello
"""


def rank_lines(text):
    return sorted(line for line in text.splitlines() if line.startswith("rank="))


def test_two_nodes_two_slots_every_rank_in_a_container(site, docker_client):
    job = site.job(MPI_SCRIPT, [("tdnode0", 2), ("tdnode1", 2)], other=f"image={OPENMPI_IMAGE};run=host")
    result = site.cluster.run(job)
    assert result.state == "C" and result.exit_status == 0, result.stderr
    ranks = rank_lines(result.stdout)
    assert len(ranks) == 4, result.stdout + result.stderr
    tag = re.sub(r"[^a-z0-9]+", "-", job.jobid.lower())
    hosts = sorted(re.search(r"host=(\S+)", line).group(1) for line in ranks)
    assert hosts == [f"td-{tag}-n0"] * 2 + [f"td-{tag}-n1"] * 2
    for line in ranks:
        assert "uid=2001" in line and "marker=inside-the-openmpi-image" in line
    assert "ring=4" in "".join(ranks)                      # the ranks really talked
    assert f"nodefile: td-{tag}-n0 td-{tag}-n0 td-{tag}-n1 td-{tag}-n1" in result.stdout
    first, last = result.stdout.splitlines()[0], result.stdout.splitlines()[-1]
    assert first.startswith(f"torque-docker: job {job.jobid}: image {OPENMPI_IMAGE}")
    assert "teardown" in last and "cleanly" in last
    assert site.leftovers(docker_client, job.jobid) == []


def test_job_without_image_runs_untouched_on_the_host(site, docker_client):
    script = "#!/bin/bash\ncat $PBS_NODEFILE\ntest -e /etc/torque-docker-test-marker && echo IN-IMAGE || echo ON-HOST\nid -u\n"
    job = site.job(script, [("tdnode0", 1), ("tdnode1", 1)])
    result = site.cluster.run(job)
    assert result.exit_status == 0, result.stderr
    assert result.stdout.split() == ["tdnode0", "tdnode1", "ON-HOST", "2001"]
    assert "torque-docker" not in result.stdout + result.stderr
    # No container was ever made for it (other test runs may share the daemon: look by job).
    assert docker_client.containers.list(all=True, filters={"label": f"torque-docker.job={job.jobid}"}) == []
    for node in site.nodes:
        assert not (site.state_dir(node) / "jobs" / job.jobid).exists()
    assert any(r.script == "prologue" and r.rc == 0 for r in result.hook_runs)
    log = site.log_file.read_text() if site.log_file.exists() else ""
    assert job.jobid not in log                       # the hooks did nothing at all for it


def test_ssh_alias_works_on_the_host_and_inside_every_container(site):
    script = """#!/bin/bash
for a in $(sort -u $PBS_NODEFILE); do
  for b in $(sort -u $PBS_NODEFILE); do
    echo "$a->$b: $(ssh $a ssh $b 'id -un; cat /etc/torque-docker-test-marker' | tr '\\n' ' ')"
  done
done
"""
    result = site.cluster.run(site.job(script, [("tdnode0", 1), ("tdnode1", 1)],
                                       other=f"image={OPENMPI_IMAGE};run=host"))
    hops = [line for line in result.stdout.splitlines() if "->" in line]
    assert len(hops) == 4, result.stdout + result.stderr
    for line in hops:
        assert line.rstrip().endswith(f": {USER} inside-the-openmpi-image"), line


def test_run_container_uses_the_image_mpirun(site, docker_client):
    script = """#!/bin/bash
cat /etc/torque-docker-test-marker
echo "pwd=$(pwd) home=$HOME"
command -v mpirun
mpirun -hostfile "$PBS_NODEFILE" -np 4 /opt/tdtest/mpi_hello
"""
    job = site.job(script, [("tdnode0", 2), ("tdnode1", 2)], other=f"image={OPENMPI_IMAGE}")
    result = site.cluster.run(job)
    assert result.exit_status == 0, result.stdout + result.stderr
    assert "inside-the-openmpi-image" in result.stdout.splitlines()[1]
    assert "pwd=/home/tduser home=/home/tduser" in result.stdout
    assert len(rank_lines(result.stdout)) == 4
    assert all("marker=inside-the-openmpi-image" in line for line in rank_lines(result.stdout))
    assert site.leftovers(docker_client, job.jobid) == []

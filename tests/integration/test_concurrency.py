"""Concurrency. Many container jobs on one node at once, and one user's jobs side by side."""
import re
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import OPENMPI_IMAGE

JOBS = 20


@pytest.mark.slow
def test_twenty_concurrent_jobs_on_one_node(site, docker_client):
    script = """#!/bin/bash
me=$(head -1 $PBS_NODEFILE)
echo "alias=$me answered=$(ssh $me hostname) marker=$(cat /etc/torque-docker-test-marker)"
sleep 3
"""
    jobs = [site.job(script, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}") for _ in range(JOBS)]
    with ThreadPoolExecutor(max_workers=JOBS) as pool:
        results = list(pool.map(site.cluster.run, jobs))
    for job, result in zip(jobs, results):
        assert result.exit_status == 0, (job.jobid, result.stdout, result.stderr)
        match = re.search(r"alias=(\S+) answered=(\S+) marker=(\S+)", result.stdout)
        assert match, result.stdout + result.stderr
        assert match.group(1) == match.group(2)                  # its own container, nobody else's
        assert match.group(3) == "inside-the-openmpi-image"
    log = site.log_file.read_text()
    assert log.count("prologue ready on tdnode0") == JOBS
    for job in jobs:
        assert site.leftovers(docker_client, job.jobid) == []
    assert (site.state_dir("tdnode0") / "ports.json").read_text().strip() in ("{}", "")


def test_two_jobs_of_one_user_on_the_same_nodes(site, docker_client):
    script = "#!/bin/bash\nmpirun -np 4 /opt/tdtest/mpi_hello\nsleep 2\n"
    jobs = [site.job(script, [("tdnode0", 2), ("tdnode1", 2)], other=f"image={OPENMPI_IMAGE}") for _ in range(2)]
    results = {}
    threads = [threading.Thread(target=lambda j=j: results.__setitem__(j.jobid, site.cluster.run(j))) for j in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    for job in jobs:
        result = results[job.jobid]
        ranks = [l for l in result.stdout.splitlines() if l.startswith("rank=")]
        assert len(ranks) == 4, result.stdout + result.stderr
        tag = re.sub(r"[^a-z0-9]+", "-", job.jobid.lower())
        # Only its own containers: every host a rank reports is one of this job's aliases.
        hosts = re.findall(r"host=(\S+)", result.stdout)
        assert len(hosts) == 4 and all(h.startswith(f"td-{tag}-n") for h in hosts), result.stdout
        assert site.leftovers(docker_client, job.jobid) == []

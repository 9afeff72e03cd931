"""The package's seccomp profile ([docker] seccomp_profile): Open MPI's single-copy path (CMA)
works between a job's ranks, and nothing else Docker's default refuses becomes possible.

Same jobs with Docker's default profile (no setting) are the control: there the same
calls fail, so these tests fail on the code as it was before the setting existed."""
from __future__ import annotations

import pwd
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import OPENMPI_IMAGE, OTHER_USER, wait_for
from torque_docker.runtime import L_JOB

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

PROBE_SCRIPT = """#!/bin/bash
cd "$PBS_O_WORKDIR"
gcc -o sysprobe sysprobe.c || exit 5
for i in $(seq 1 300); do [ -s /tmp/other.pid ] && break; sleep 0.2; done
echo "other=$(stat -c %u /proc/$(cat /tmp/other.pid))"
./sysprobe "$(cat /tmp/other.pid)"
"""

CMA_SCRIPT = """#!/bin/bash
cd "$PBS_O_WORKDIR"
echo "single_copy=${OMPI_MCA_btl_vader_single_copy_mechanism-unset}"
mpicc -o cma_mpi cma_mpi.c || exit 5
mpirun -np 2 --mca btl_vader_single_copy_mechanism cma ./cma_mpi
echo "cma_exit=$?"
mpirun -np 2 ./cma_mpi
echo "default_exit=$?"
"""

CMA_MPI = r"""
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
/* 4 MiB from rank 0 to rank 1 (vader sends large messages by CMA when it may). */
int main(int argc, char **argv)
{
    int rank, n = 4 << 20, bad = 0;
    MPI_Init(&argc, &argv);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    unsigned char *buf = malloc(n);
    for (int i = 0; i < n; i++) buf[i] = rank == 0 ? (unsigned char)(i * 7) : 0;
    if (rank == 0) MPI_Send(buf, n, MPI_BYTE, 1, 0, MPI_COMM_WORLD);
    else {
        MPI_Recv(buf, n, MPI_BYTE, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        for (int i = 0; i < n; i++) bad += buf[i] != (unsigned char)(i * 7);
        printf("received 4MiB bad=%d\n", bad);
    }
    MPI_Finalize();
    return bad != 0;
}
"""


def with_profile(site, profile: bool):
    """The site as an admin sets it up: the shipped profile, root's, named in the config."""
    if profile:
        path = site.root / "seccomp-cma.json"
        shutil.copyfile(REPO / "packaging" / "seccomp-cma.json", path)
        path.chmod(0o644)
        site.reconfigure(f"[docker]\nseccomp_profile = {path}\n")
    return site


def lines(text: str) -> dict:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@pytest.mark.parametrize("profile", [True, False], ids=["package-profile", "docker-default"])
def test_job_container_allows_cma_to_its_own_processes_only(make_site, docker_client, profile):
    site = with_profile(make_site(nodes=1), profile)
    job = site.job(PROBE_SCRIPT, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}")
    (Path(job.workdir) / "sysprobe.c").write_text((HERE / "sysprobe.c").read_text())
    result = {}
    runner = threading.Thread(target=lambda: result.update(run=site.cluster.run(job)))
    other = pwd.getpwnam(OTHER_USER)
    runner.start()
    try:
        def container():
            found = docker_client.containers.list(filters={"label": f"{L_JOB}={job.jobid}"})
            return found[0] if found else None
        wait_for(lambda: container() is not None, 60, "the job's container")
        # Another user's process in the job's container (as if it got there somehow): the
        # job's processes must not be able to read or trace it, profile or not.
        subprocess.run(["docker", "exec", "-d", "-u", f"{other.pw_uid}:{other.pw_gid}", container().id, "sh", "-c",
                        "echo $$ > /tmp/other.tmp && mv /tmp/other.tmp /tmp/other.pid && exec sleep 120"],
                       check=True, timeout=60)
    finally:
        runner.join(timeout=240)
    assert not runner.is_alive(), "the job did not end"
    run = result["run"]
    seen = lines(run.stdout)
    assert seen.get("other") == str(other.pw_uid), run.stdout + run.stderr
    same_user = "ok" if profile else "EPERM"
    assert seen["process_vm_readv same-user"] == same_user, run.stdout
    assert seen["process_vm_writev same-user"] == same_user, run.stdout
    assert seen["process_vm_readv other-user"] == "EPERM", run.stdout
    assert seen["ptrace other-user"] == "EPERM", run.stdout
    assert seen["keyctl"] == "EPERM", run.stdout
    assert seen["unshare user"] == "EPERM", run.stdout
    assert run.exit_status == 0
    assert site.leftovers(docker_client, job.jobid) == []


@pytest.mark.parametrize("profile", [True, False], ids=["package-profile", "docker-default"])
def test_open_mpi_single_copy_in_a_job_container(make_site, docker_client, profile):
    site = with_profile(make_site(nodes=1), profile)
    job = site.job(CMA_SCRIPT, [("tdnode0", 2)], other=f"image={OPENMPI_IMAGE};model=node")
    (Path(job.workdir) / "cma_mpi.c").write_text(CMA_MPI)
    run = site.cluster.run(job)
    seen = lines(run.stdout)
    # The starter forces Open MPI off CMA only where the containers refuse it.
    assert seen.get("single_copy") == ("unset" if profile else "none"), run.stdout + run.stderr
    # Asked for CMA explicitly: works with the profile, fails (EPERM) under Docker's default.
    # (Open MPI 4.1 reports the refused read as "Read -1, expected 4194304, errno = 1".)
    refused = "expected 4194304, errno = 1" in run.stderr
    assert refused is not profile, run.stdout + run.stderr
    if profile:
        assert seen["cma_exit"] == "0" and run.stdout.count("received 4MiB bad=0") == 2, run.stdout + run.stderr
    # What a job gets without asking: correct either way.
    assert seen["default_exit"] == "0", run.stdout + run.stderr
    assert site.leftovers(docker_client, job.jobid) == []

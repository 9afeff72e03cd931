"""A refused container job always leaves the user a readable explanation, and its
script never runs. The simulator models Torque's non-delivery of .o/.e after a prologue
exit 1, so a message that only went to the .e would be caught here."""
from pathlib import Path

import pytest

from conftest import NOSSHD_IMAGE, OPENMPI_IMAGE

SCRIPT = "#!/bin/bash\necho SCRIPT-RAN\ntouch \"$PBS_O_WORKDIR/script-ran-$PBS_JOBID\"\n"

CASES = {
    # name: (other=..., extra site config, words the explanation must hold)
    "malformed": ("image=debian:12;model=vm", "", ["model=vm is not known", "use model=node"]),
    "unknown-key": ("image=debian:12;colour=red", "", ["unknown key 'colour'", "valid keys are image, model, run, mount"]),
    "bad-name": ("image=Not A Name", "", ["is not a valid image name", "NAME[:TAG]"]),
    "image-missing": ("image=lab/does-not-exist:1", "[images]\npull = never\n",
                      ["lab/does-not-exist:1 is not on this node", "torque-docker stage"]),
    "not-allowed": (f"image={OPENMPI_IMAGE}", "[images]\nallowed = lab/*\n",
                    ["is not allowed on this cluster (allowed: lab/*)", "[images] allowed"]),
    "no-sshd": (f"image={NOSSHD_IMAGE}", "", ["has no /usr/sbin/sshd", "install openssh-server"]),
}


def check_explained(site, job, result, words):
    refused = Path(job.workdir) / f"torque-docker-{job.jobid}.refused"
    assert refused.exists(), "the explanation file is missing"
    text = refused.read_text()
    assert f"job {job.jobid} was not started" in text
    for word in words:
        assert word in text, text
    assert "the job script did not run" in text
    assert refused.stat().st_uid == 2001                       # written as the user
    assert "SCRIPT-RAN" not in result.stdout
    assert not (Path(job.workdir) / f"script-ran-{job.jobid}").exists()
    return text


@pytest.mark.parametrize("case", sorted(CASES))
def test_refusal_with_the_job_starter_lands_in_the_e_file(make_site, docker_client, case):
    other, extra, words = CASES[case]
    site = make_site(extra_config=extra)
    job = site.job(SCRIPT, [("tdnode0", 1), ("tdnode1", 1)], other=other)
    result = site.cluster.run(job)
    text = check_explained(site, job, result, words)
    assert result.state == "C" and result.delivered
    assert result.exit_status == 1
    assert text.strip() in result.stderr                       # the .e carries the same explanation
    assert site.leftovers(docker_client, job.jobid) == []


@pytest.mark.parametrize("case", ["unknown-key", "not-allowed", "no-sshd"])
def test_refusal_without_the_job_starter_aborts_and_leaves_the_file(make_site, docker_client, case):
    other, extra, words = CASES[case]
    site = make_site(extra_config=extra, job_starter=False)
    job = site.job(SCRIPT, [("tdnode0", 1)], other=other)
    result = site.cluster.run(job)
    assert result.runs("prologue")[0].rc == 1                   # abort, never requeue
    assert result.state == "C" and not result.delivered          # Torque keeps .o/.e in spool
    check_explained(site, job, result, words)
    assert site.leftovers(docker_client, job.jobid) == []


def test_node_fault_requeues_a_bounded_number_of_times_then_explains(make_site, docker_client):
    site = make_site(nodes=1, extra_config="[docker]\nendpoint = unix:///nonexistent/docker.sock\n")
    job = site.job(SCRIPT, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}")
    outcomes = []
    for _ in range(3):
        result = site.cluster.run(job)
        outcomes.append((result.state, result.runs("prologue")[0].rc))
    assert outcomes[:2] == [("Q", 2), ("Q", 2)]                   # node fault: requeued
    assert outcomes[2] == ("C", 0)                                # then refused through the starter
    text = check_explained(site, job, result, ["Docker daemon", "does not answer", "3 attempts"])
    assert "start dockerd" in text
    assert result.exit_status == 1


def test_setup_and_teardown_lines_frame_the_o_file(site):
    result = site.cluster.run(site.job("#!/bin/bash\necho body\n", [("tdnode0", 1), ("tdnode1", 1)],
                                       other=f"image={OPENMPI_IMAGE}"))
    lines = result.stdout.splitlines()
    assert lines[0].startswith("torque-docker: job ") and "ready in" in lines[0] and "2 node(s)" in lines[0]
    assert lines[1] == "body"
    assert lines[2].startswith("torque-docker: job ") and "teardown" in lines[2]
    assert len(lines) == 3


def test_sister_decisions_reach_the_admin_log(site):
    job = site.job("#!/bin/bash\ntrue\n", [("tdnode0", 1), ("tdnode1", 1)], other=f"image={OPENMPI_IMAGE}")
    site.cluster.run(job)
    log = site.log_file.read_text()
    assert f"job={job.jobid} node=tdnode1 prologue.parallel ready" in log
    assert f"job={job.jobid} node=tdnode1 removed 1 container(s)" in log

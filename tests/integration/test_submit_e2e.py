"""Jobs submitted through qsub's filter (momsim.qsub models qsub on a submit host, the
filter installed by `torque-docker install --submit-filter`), then run by the simulated
moms with real Docker: the short form reaches the nodes, mistakes never queue a job."""
import os

import pytest

import momsim
from conftest import OPENMPI_IMAGE, USER
from torque_docker import submitadmin


@pytest.fixture()
def submit_host(make_site):
    """A two-node site and a submit host (its own PBS_HOME and config) with the filter."""
    site = make_site(nodes=2)
    home = site.root / "submit-host"
    home.mkdir()
    conf = site.root / "submit-host.conf"
    conf.write_text(f"[images]\nallowed = {OPENMPI_IMAGE} debian:*\n")
    os.chmod(conf, 0o644)
    old = os.environ.get("TORQUE_DOCKER_CONF")
    os.environ["TORQUE_DOCKER_CONF"] = str(conf)
    try:
        submitadmin.install(str(home), python="/usr/bin/python3", legacy="", out=open(os.devnull, "w"))
    finally:
        if old is None:
            os.environ.pop("TORQUE_DOCKER_CONF")
        else:
            os.environ["TORQUE_DOCKER_CONF"] = old
    site.submit_filter = str(home / submitadmin.FILTER_NAME)
    site.submit_env = {"PATH": "/bin:/usr/bin", "TORQUE_DOCKER_CONF": str(conf)}
    return site


def qsub(site, script, args, filtered=True):
    return momsim.qsub(site.cluster, script, args, user=USER, placement=[("tdnode0", 1), ("tdnode1", 1)],
                       submit_filter=site.submit_filter if filtered else None, cwd=site.workdir(),
                       env=site.submit_env)


SCRIPT = ("#!/bin/bash\n#PBS -l nodes=2:ppn=1,walltime=00:05:00\n#PBS -l image=" + OPENMPI_IMAGE + "\n"
          "#PBS -l other=model=process\necho \"ran on $(hostname)\"\n")


def test_short_form_runs_in_containers_only_through_the_filter(submit_host, docker_client):
    site = submit_host
    job = qsub(site, SCRIPT, [])
    assert job.resources["other"] == f"image={OPENMPI_IMAGE};model=process"
    result = site.cluster.run(job)
    assert result.exit_status == 0, result.stderr
    first = result.stdout.splitlines()[0]
    assert first.startswith(f"torque-docker: job {job.jobid}: image {OPENMPI_IMAGE} ") and "model process" in first
    assert "ran on td-" in result.stdout                        # the script ran in the first container
    assert site.leftovers(docker_client, job.jobid) == []
    # Without the filter Torque keeps -l image= but never sends it to the moms: no container.
    plain = site.cluster.run(qsub(site, SCRIPT.replace("#PBS -l other=model=process\n", ""), [], filtered=False))
    assert plain.exit_status == 0 and "torque-docker:" not in plain.stdout and "ran on td-" not in plain.stdout


def test_short_form_on_the_command_line(submit_host, docker_client):
    site = submit_host
    job = qsub(site, "#!/bin/bash\necho \"ran on $(hostname)\"\n", ["-l", f"image={OPENMPI_IMAGE}", "-N", "cli"])
    result = site.cluster.run(job)
    assert result.exit_status == 0, result.stderr
    assert "ran on td-" in result.stdout
    assert site.leftovers(docker_client, job.jobid) == []


@pytest.mark.parametrize("args,script,words", [
    (["-l", "image=evil/miner:1"], "echo\n", "is not allowed on this cluster"),
    ([], f"#PBS -l other=image={OPENMPI_IMAGE};model=vm\necho\n", "model=vm is not known"),
    (["-l", f"image={OPENMPI_IMAGE}", "-l", "other=model=process"], "echo\n", "cannot reach the nodes"),
])
def test_mistakes_never_queue_a_job(submit_host, args, script, words):
    site = submit_host
    before = site.cluster.new_jobid()
    with pytest.raises(momsim.QsubError) as refused:
        qsub(site, script, args)
    assert str(refused.value).startswith("qsub: Your job has been administratively rejected")
    lines = refused.value.stderr.splitlines()
    assert lines[0].startswith("torque-docker: job not submitted: ") and words in lines[0]
    assert lines[1].startswith("torque-docker: what to do: ")
    assert site.cluster.new_jobid() == f"{int(before.split('.')[0]) + 1}.{site.server}"   # nothing took a job id

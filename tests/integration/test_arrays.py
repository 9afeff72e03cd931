"""Array subjobs, long job ids and multi-mom nodes: the sweep must know them while they run.

pbs_mom names a job's files after its file prefix (``52[1].s`` -> ``52-1.s.JB``, ids cut to
61 characters, prefixes the server renamed, a multi-mom port appended), and rewrites the
``.JB`` while the job runs (the simulator does so continuously). A running job of any of
these shapes must survive ``torque-docker gc --grace 0`` and the sweep in other jobs'
prologues, and be swept once pbs_mom has purged it without its epilogues.
"""
from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

from conftest import OPENMPI_IMAGE, wait_for
import test_faults
from test_faults import SILENT_SSHD

from torque_docker import admin
from torque_docker.runtime import L_JOB
from torque_docker.torque import job_tag, safe_jobid

silent_sshd_image = test_faults.silent_sshd_image     # the fixture, shared
CLI = "import sys; from torque_docker.cli import main; sys.exit(main())"
IMAGE = f"image={OPENMPI_IMAGE}"


def cli(site, node, *args, timeout=180):
    return subprocess.run([sys.executable, "-c", CLI, "--config", str(site.configs[node]), *args],
                          capture_output=True, text=True, timeout=timeout, cwd="/")


def containers_of(client, jobid, status=None):
    found = client.containers.list(all=True, filters={"label": f"{L_JOB}={jobid}"})
    return sorted(c.id for c in found if status is None or c.status == status)


def held_script(workdir: Path) -> str:
    """Runs in the job's container until the test releases it; its last line proves that
    nothing killed it."""
    return (f"#!/bin/bash\ntouch '{workdir}/started-'\"$PBS_JOBID\"\n"
            f"for i in $(seq 3000); do [ -e '{workdir}/release' ] && break; sleep 0.1; done\n"
            f"echo \"last line of $PBS_JOBID\"\n")


def survive_then_sweep(site, client, jobs):
    """While ``jobs`` run: gc --grace 0 on every node, then another container job whose
    prologues sweep with a grace of 1 s; every job keeps its containers. Then pbs_mom purges them
    without epilogues, and gc removes what they left."""
    workdir = Path(jobs[0].workdir)
    results = {}
    threads = [threading.Thread(target=lambda j=j: results.__setitem__(j.jobid, site.cluster.run(j)))
               for j in jobs]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: all((workdir / f"started-{j.jobid}").exists() for j in jobs), 240,
                 "every job's script to start in its container")
        before = {j.jobid: containers_of(client, j.jobid, "running") for j in jobs}
        assert all(before.values()), before

        for node in site.nodes:
            done = cli(site, node, "gc", "--pbs-home", str(site.cluster.pbs_home(node)), "--server", site.server,
                       "--grace", "0")
            assert done.returncode == 0, done.stdout + done.stderr
            assert re.search(r"gc: 0 job\(s\) cleaned, \d+ kept, 0 error\(s\)", done.stdout), done.stdout

        time.sleep(1.5)                               # every job is past the grace below
        site.reconfigure("[jobs]\nsweep_grace = 1\n")
        other = site.job("#!/bin/bash\necho other-ran\n", [(n, 1) for n in site.nodes], other=IMAGE)
        ran = site.cluster.run(other)
        assert ran.exit_status == 0 and "other-ran" in ran.stdout, ran.stdout + ran.stderr
        assert {j.jobid: containers_of(client, j.jobid, "running") for j in jobs} == before
        log = site.log_file.read_text()
        for job in jobs:
            assert not re.search(rf"job={re.escape(job.jobid)} node=\S+ gc: pbs_mom no longer knows", log), log

        # pbs_mom purges the jobs without their epilogues (docs/torque-facts.md: a sync kill does).
        for node in site.nodes:
            site.cluster.remove_hook(node, "epilogue")
            site.cluster.remove_hook(node, "epilogue.parallel")
    finally:
        (workdir / "release").touch()
        for thread in threads:
            thread.join(300)
    for job in jobs:
        result = results[job.jobid]
        assert result.exit_status == 0, result.stdout + result.stderr
        assert f"last line of {job.jobid}" in result.stdout, result.stdout + result.stderr
        assert containers_of(client, job.jobid) == before[job.jobid]       # left behind, as on a real node

    removed = []
    for node in site.nodes:
        done = cli(site, node, "gc", "--pbs-home", str(site.cluster.pbs_home(node)), "--server", site.server,
                   "--grace", "0")
        assert done.returncode == 0, done.stdout + done.stderr
        removed += re.findall(r"gc: job (\S+): removed", done.stdout)
    assert sorted(set(removed)) == sorted(j.jobid for j in jobs)
    for job in jobs:
        assert site.leftovers(client, job.jobid) == []


def test_array_subjobs_on_one_node_survive_sweeps_until_purged(make_site, docker_client):
    site = make_site(nodes=2)
    jobs = site.array(held_script(Path(site.workdir())), [[("tdnode0", 1)]] * 3, other=IMAGE)
    assert [j.jobid.split(".")[0].split("[")[1] for j in jobs] == ["1]", "2]", "3]"]
    survive_then_sweep(site, docker_client, jobs)


def test_array_subjobs_on_two_nodes_survive_sweeps_until_purged(make_site, docker_client):
    site = make_site(nodes=2)
    jobs = site.array(held_script(Path(site.workdir())), [[("tdnode0", 1), ("tdnode1", 1)]] * 2, other=IMAGE)
    survive_then_sweep(site, docker_client, jobs)


def test_long_renamed_job_ids_survive_sweeps_until_purged(make_site, docker_client):
    """Ids longer than 61 characters: the file prefix is cut, here also renamed by the server
    (a stale file of that name), and an array subjob's is cut too."""
    site = make_site(nodes=2)
    server = f"{site.server}.headnode.{'cluster' * 6}.example.org"
    site.cluster.stale_server_file(f"{site.cluster.next_sequence}.{server}"[:61])
    long_job = site.job(held_script(Path(site.workdir())), [("tdnode0", 1), ("tdnode1", 1)], other=IMAGE,
                        jobid=site.cluster.new_jobid(server=server))
    subjob = site.job(held_script(Path(site.workdir())), [("tdnode1", 1)], other=IMAGE,
                      jobid=site.cluster.new_array([1], server=server)[0])
    for job in (long_job, subjob):
        assert len(job.jobid) > 61 and len(site.cluster.file_prefix(job.jobid)) == 61
    assert site.cluster.file_prefix(long_job.jobid) != long_job.jobid[:61]          # renamed
    survive_then_sweep(site, docker_client, [long_job, subjob])


def test_multi_mom_nodes_survive_sweeps_until_purged(make_site, docker_client):
    site = make_site(nodes=2, multi_mom={"tdnode0": 15003, "tdnode1": 15005})
    jobs = site.array(held_script(Path(site.workdir())), [[("tdnode0", 1), ("tdnode1", 1)], [("tdnode1", 1)]],
                      other=IMAGE)
    jobs.append(site.job(held_script(Path(site.workdir())), [("tdnode0", 1)], other=IMAGE))
    survive_then_sweep(site, docker_client, jobs)


MPI_SCRIPT = """#!/bin/bash
echo "inside: PBS_JOBID=$PBS_JOBID PBS_ARRAYID=$PBS_ARRAYID $(cat /etc/torque-docker-test-marker)"
echo "nodefile: $(tr '\\n' ' ' < "$PBS_NODEFILE")"
touch "$PBS_O_WORKDIR/started-$PBS_JOBID"
for i in $(seq 3000); do [ -e "$PBS_O_WORKDIR/release" ] && break; sleep 0.1; done
mpirun -hostfile "$PBS_NODEFILE" -np 4 /opt/tdtest/mpi_hello
"""


def test_mpi_hello_as_an_array_subjob_across_two_nodes(site, docker_client):
    """A real array subjob end to end: the starter runs the script in the MS container, every
    rank runs in a container named after the subjob, ps and limits know it, and nothing of
    it is left after the epilogues."""
    workdir = Path(site.workdir())
    job, = site.array(MPI_SCRIPT, [[("tdnode0", 2), ("tdnode1", 2)]], other=IMAGE)
    jobid = job.jobid
    assert re.fullmatch(r"\d+\[1\]\." + site.server, jobid)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(result=site.cluster.run(job)))
    thread.start()
    try:
        wait_for(lambda: (workdir / f"started-{jobid}").exists(), 240, "the subjob's script")
        ps = cli(site, "tdnode0", "ps")
        rows = [line.split()[:3] for line in ps.stdout.splitlines()[1:]]
        assert ps.returncode == 0 and [jobid, "tduser", f"td-{job_tag(jobid)}-n0"] in rows, ps.stdout + ps.stderr
        limits = cli(site, "tdnode1", "limits", jobid, "--cpus", "1.5")
        assert limits.returncode == 0 and f"td-{job_tag(jobid)}-n1" in limits.stdout, limits.stdout + limits.stderr
        for node in site.nodes:
            assert (site.state_dir(node) / "jobs" / safe_jobid(jobid)).is_dir()
    finally:
        (workdir / "release").touch()
        thread.join(300)
    result = outcome["result"]
    assert result.exit_status == 0, result.stdout + result.stderr
    tag = job_tag(jobid)
    assert tag == jobid.replace("[", "-").replace("].", "-")
    assert f"inside: PBS_JOBID={jobid} PBS_ARRAYID=1 inside-the-openmpi-image" in result.stdout
    assert f"nodefile: td-{tag}-n0 td-{tag}-n0 td-{tag}-n1 td-{tag}-n1" in result.stdout
    ranks = sorted(line for line in result.stdout.splitlines() if line.startswith("rank="))
    assert len(ranks) == 4, result.stdout + result.stderr
    hosts = sorted(re.search(r"host=(\S+)", line).group(1) for line in ranks)
    assert hosts == [f"td-{tag}-n0"] * 2 + [f"td-{tag}-n1"] * 2
    assert all("marker=inside-the-openmpi-image" in line and "uid=2001" in line for line in ranks)
    assert "ring=4" in "".join(ranks)
    assert result.stdout.splitlines()[0].startswith(f"torque-docker: job {jobid}: image")
    assert "cleanly" in result.stdout.splitlines()[-1]
    assert result.output_paths[0].name == f"STDIN.o{jobid.split('[')[0]}-1"
    assert site.leftovers(docker_client, jobid) == []


def test_a_sister_being_set_up_is_not_swept(make_site, docker_client, silent_sshd_image):
    """A sister's pbs_mom writes the job's file only after prologue.parallel returns: while
    that runs (here: waiting for an sshd that never answers), gc --grace 0 must keep the job."""
    site = make_site(nodes=2)
    site.configs["tdnode0"].write_text(site.config_text("tdnode0", f"[images]\naliases =\n    lab = {OPENMPI_IMAGE}\n"))
    site.configs["tdnode1"].write_text(site.config_text(
        "tdnode1", f"[ssh]\nsshd_path = {SILENT_SSHD}\nready_timeout = 20\n"
                   f"[images]\naliases =\n    lab = {silent_sshd_image}\n"))
    job, = site.array("#!/bin/bash\ntrue\n", [[("tdnode0", 1), ("tdnode1", 1)]], other="image=lab")
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(result=site.cluster.run(job)))
    thread.start()
    try:
        wait_for(lambda: containers_of(docker_client, job.jobid), 60, "the sister's container")
        assert not site.cluster.mom_knows("tdnode1", job.jobid)          # no job file there yet
        report = admin.gc(site.config("tdnode1"), str(site.cluster.pbs_home("tdnode1")), grace=0,
                          server=site.server)
        assert report["removed"] == [] and job.jobid in report["kept"], report
        assert containers_of(docker_client, job.jobid)
    finally:
        thread.join(120)
    # An sshd that never answers may be the image's doing: the sister leaves it to the MS,
    # which finds the container missing and requeues; no node goes down.
    assert outcome["result"].state == "Q" and outcome["result"].down_nodes == []
    assert site.leftovers(docker_client, job.jobid) == []


def test_a_refused_array_subjob_is_explained_and_never_runs(site, docker_client):
    """The refusal reaches the job starter through the subjob's state directory (safe_jobid)."""
    from test_refusals import SCRIPT, check_explained
    job, = site.array(SCRIPT, [[("tdnode0", 1), ("tdnode1", 1)]], other="image=debian:12;colour=red")
    result = site.cluster.run(job)
    text = check_explained(site, job, result, ["unknown key 'colour'"])
    assert result.exit_status == 1 and text.strip() in result.stderr
    assert site.leftovers(docker_client, job.jobid) == []

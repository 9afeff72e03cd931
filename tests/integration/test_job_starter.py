"""The batch script inside the container, through the job starter."""
import time

from conftest import MPICH_IMAGE, OPENMPI_IMAGE


def test_script_runs_in_the_image_as_the_user_with_exit_code_stderr_v_and_F(site, docker_client):
    script = """#!/bin/bash
cat /etc/torque-docker-test-marker
grep ^ID= /etc/os-release
id -u; id -un
echo "FOO=$FOO args=$# [$1] [$2]"
echo "PBS_JOBID=$PBS_JOBID PBS_O_WORKDIR=$PBS_O_WORKDIR"
echo "to-stderr" >&2
exit 3
"""
    job = site.job(script, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}",
                   variables={"FOO": "bar"}, args=["one", "two words"])
    result = site.cluster.run(job)
    out = result.stdout.splitlines()
    assert out[1] == "inside-the-openmpi-image", result.stdout + result.stderr
    assert out[2] == "ID=debian"
    assert out[3:5] == ["2001", "tduser"]
    assert out[5] == "FOO=bar args=2 [one] [two words]"
    assert out[6] == f"PBS_JOBID={job.jobid} PBS_O_WORKDIR={job.workdir}"
    assert result.stderr.strip() == "to-stderr"
    assert result.exit_status == 3
    assert site.leftovers(docker_client, job.jobid) == []


def test_host_path_variables_do_not_leak_into_the_image(site):
    script = "#!/bin/bash\necho \"PATH=$PATH\"\necho \"LD=${LD_LIBRARY_PATH-unset}\"\necho \"KEEP=$KEEP\"\n"
    job = site.job(script, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}",
                   variables={"LD_LIBRARY_PATH": "/host/lib", "KEEP": "yes"})
    result = site.cluster.run(job)
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in result.stdout
    assert "LD=unset" in result.stdout and "KEEP=yes" in result.stdout


def test_qdel_stops_the_script_inside_the_container(site, docker_client):
    script = """#!/bin/bash
trap 'echo got-TERM-inside-$(cat /etc/torque-docker-test-marker); exit 7' TERM
echo started
sleep 600 &
wait
"""
    job = site.job(script, [("tdnode0", 1), ("tdnode1", 1)], other=f"image={OPENMPI_IMAGE}", kill_after=4)
    begun = time.monotonic()
    result = site.cluster.run(job)
    took = time.monotonic() - begun
    assert "started" in result.stdout
    assert "got-TERM-inside-inside-the-openmpi-image" in result.stdout, result.stdout + result.stderr
    assert took < 120, "a qdel'ed job must not run on"      # a bound, not a benchmark: sleep is 600 s
    assert result.runs("epilogue")[0].rc == 0
    assert site.leftovers(docker_client, job.jobid) == []
    leftover = docker_client.containers.list(all=True, filters={"label": f"torque-docker.job={job.jobid}"})
    assert leftover == []


def test_tm_tasks_and_non_batch_commands_pass_through(site):
    """The starter also wraps TM tasks (argv beyond the shell): they run unchanged on the host."""
    import subprocess
    starter = site.cluster.pbs_home("tdnode0") / "mom_priv" / "torque-docker-starter"
    out = subprocess.run([str(starter), "/bin/echo", "tm-task"], capture_output=True, text=True,
                         env={"PATH": "/bin:/usr/bin", "PBS_JOBID": "999.none", "PBS_ENVIRONMENT": "PBS_BATCH"},
                         user="tduser", timeout=30)
    assert out.stdout == "tm-task\n" and out.returncode == 0


def test_two_node_mpich_job_launches_with_no_flags(site):
    script = """#!/bin/bash
mpiexec -n 4 /opt/tdtest/mpi_hello
"""
    result = site.cluster.run(site.job(script, [("tdnode0", 2), ("tdnode1", 2)], other=f"image={MPICH_IMAGE}",
                                       resources={"walltime": "00:00:30"}))
    ranks = [line for line in result.stdout.splitlines() if line.startswith("rank=")]
    assert len(ranks) == 4, result.stdout + result.stderr
    # Not asserted: the exit status. Debian's MPICH 4.0.2 (ch4:ucx) hangs in MPI_Finalize in
    # about 1 run of 3 when both simulated nodes are one machine (Open MPI does not); the
    # walltime then ends the job. Listed under Known issues in the README.
    assert all("marker=inside-the-mpich-image" in line and "uid=2001" in line for line in ranks)
    assert {line.split("host=")[1].split()[0].rsplit("-", 1)[1] for line in ranks} == {"n0", "n1"}


def test_two_node_openmpi_job_launches_with_no_flags(site):
    result = site.cluster.run(site.job("#!/bin/bash\nmpirun /opt/tdtest/mpi_hello\n",
                                       [("tdnode0", 2), ("tdnode1", 2)], other=f"image={OPENMPI_IMAGE}"))
    ranks = [line for line in result.stdout.splitlines() if line.startswith("rank=")]
    assert len(ranks) == 4, result.stdout + result.stderr
    assert {line.split("host=")[1].split()[0].rsplit("-", 1)[1] for line in ranks} == {"n0", "n1"}


def test_interactive_session_is_a_login_shell_in_the_container(site):
    """qsub -I: the simulator gives the job's shell a pseudo-terminal and types into it; the
    starter opens ssh -tt into the first node's container and starts the shell there."""
    typed = ('echo "tty=$(tty | cut -c1-8) marker=$(cat /etc/torque-docker-test-marker) pwd=$(pwd) '
             'env=$PBS_ENVIRONMENT"\nexit 5\n')
    job = site.job("", [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}", interactive=typed)
    result = site.cluster.run(job)
    assert "tty=/dev/pts marker=inside-the-openmpi-image pwd=/home/tduser env=PBS_INTERACTIVE" in result.terminal, \
        result.terminal + result.stderr
    assert result.exit_status == 5

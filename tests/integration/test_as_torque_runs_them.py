"""Jobs run as Torque runs them, with the job starter installed.

- A job that asks for no image is untouched: its batch shell, interactive shell and TM tasks
  (pbsdsh) get exactly what pbs_mom gives them without the starter (program lookup, argv,
  environment, signal dispositions, file descriptors, exit status, output).
- A container job's script runs with the shell Torque chose (qsub -S, else the login shell),
  inside the container; a shell the image lacks fails the job at once with one line.
- Every rank sees the job's environment, on every node, with both MPIs, both models and
  both run modes.
- The node's host names resolve inside the containers.
- One TERM per TERM pbs_mom sends, for the script and for TM tasks in containers.
- TM tasks of a container job run in the job's containers.
- The starter takes its configuration only from root's files, keeps its record where the
  user cannot change it, and refuses to run as root.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import re
import subprocess
from pathlib import Path

import pytest

import momsim
from conftest import MPICH_IMAGE, OPENMPI_IMAGE, USER

IMAGE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
MARKER = "inside-the-openmpi-image"


@contextlib.contextmanager
def without_starter(site):
    """The same nodes with no $job_starter line (pbs_mom's config is re-read for every job)."""
    saved = {}
    for node in site.nodes:
        path = site.cluster.mom_priv(node) / "config"
        saved[path] = path.read_text()
        path.write_text("".join(line + "\n" for line in saved[path].splitlines()
                                if not line.startswith("$job_starter")))
    try:
        yield
    finally:
        for path, text in saved.items():
            path.write_text(text)


def install_pbsdsh(site) -> str:
    path = Path(site.workdir()) / "pbsdsh"
    path.write_text(momsim.pbsdsh_text())
    os.chmod(path, 0o755)
    return str(path)


def normalize(text: str, jobid: str) -> str:
    """What differs between two runs of one job anyway: its id, pipes' inodes, terminals."""
    text = text.replace(jobid, "JOBID").replace(jobid.split(".")[0] + ".", "SEQ.")
    text = re.sub(r"pipe:\[\d+\]", "pipe:[N]", text)
    text = re.sub(r"socket:\[\d+\]", "socket:[N]", text)
    return re.sub(r"/dev/pts/\d+", "/dev/pts/N", text)


# What a job's processes can tell about how they were started. The job's environment
# without what differs per job (id, cookie, TM port); "$@" of the script.
# The descriptors are listed by one plain command, never a pipeline: a shell holds the read
# end of a pipeline's pipe (fd 3) until it has started the pipeline's last command, so
# `ls /proc/$$/fd | awk` sometimes saw that pipe in the very shell it listed (dash and bash
# alike, with or without pbs_mom or the starter); a plain command's shell only waits.
REPORT = r"""
echo "top=$(tr '\0' ' ' < /proc/$PPID/cmdline)| exe=$(readlink /proc/$PPID/exe)"
grep -E '^(SigIgn|SigBlk|Uid|Gid|Groups)' /proc/self/status
find /proc/$PPID/fd -mindepth 1 -printf 'fd %f -> %l\n'
echo "umask=$(umask) pwd=$(pwd) args=$#:$*"
env -0 | sort -z | tr '\0' '\n' | grep -v -E '^(PBS_JOBID|PBS_JOBCOOKIE|PBS_MOMPORT|_)='
"""


# ------------------------------------------------------------------ jobs that ask for no image
def test_a_plain_batch_job_is_untouched_by_the_starter(site):
    def run():
        job = site.job("#!/bin/bash\n" + REPORT + "echo to-stderr >&2\nexit 3\n", [("tdnode0", 1)],
                       args=["one", "two words"], variables={"FOO": "bar"})
        result = site.cluster.run(job)
        return result, normalize(result.stdout, job.jobid), normalize(result.stderr, job.jobid)

    with_starter, out_with, err_with = run()
    with without_starter(site):
        plain, out_plain, err_plain = run()
    assert "top=-bash | exe=/usr/bin/bash" in out_plain, out_plain + err_plain
    assert "FOO=bar" in out_plain and "args=2:one two words" in out_plain
    assert out_with == out_plain
    assert err_with == err_plain == "to-stderr\n"
    assert with_starter.exit_status == plain.exit_status == 3


def test_a_plain_interactive_job_is_untouched_by_the_starter(site):
    typed = REPORT.replace("$PPID", "$$").replace("\n", "; ").strip("; ") + "\nexit 4\n"

    def run():
        job = site.job("", [("tdnode0", 1)], interactive=typed)
        result = site.cluster.run(job)
        return result, normalize(result.terminal, job.jobid)

    with_starter, terminal_with = run()
    with without_starter(site):
        plain, terminal_plain = run()
    assert "top=" in terminal_plain and "PBS_ENVIRONMENT=PBS_INTERACTIVE" in terminal_plain, terminal_plain
    assert terminal_with == terminal_plain
    assert with_starter.exit_status == plain.exit_status == 4


def test_plain_tm_tasks_find_their_program_on_the_job_path_as_without_the_starter(site):
    """pbsdsh -u hostname: the task's program by name, looked up on the job's PATH; a file without
    '#!' run by /bin/sh; a missing program reported as pbs_mom does."""
    pbsdsh = install_pbsdsh(site)
    workdir = site.workdir()
    tool = Path(workdir) / "taskreport"        # no "#!": execvp() hands it to /bin/sh
    tool.write_text("echo \"task=$PBS_TASKNUM vnode=$PBS_VNODENUM node=$PBS_NODENUM\"\n"
                    + REPORT.replace("$PPID", "$$"))
    os.chmod(tool, 0o755)
    subprocess.run(["chown", f"{USER}:{USER}", str(tool)], check=True)
    script = f"""#!/bin/bash
{pbsdsh} -u hostname
{pbsdsh} -n 1 taskreport 'a b' c
{pbsdsh} -n 0 no-such-program
echo pbsdsh-exit=$?
"""

    def run():
        job = site.job(script, [("tdnode0", 1), ("tdnode1", 1)],
                       variables={"PATH": f"{workdir}:/usr/bin:/bin", "FOO": "bar"})
        result = site.cluster.run(job)
        return result, normalize(result.stdout, job.jobid), normalize(result.stderr, job.jobid)

    with_starter, out_with, err_with = run()
    assert out_with.count(os.uname().nodename + "\n") == 2, out_with + err_with     # hostname, on both nodes
    assert "Traceback" not in err_with
    assert "PBS: no-such-program: No such file or directory" in err_with
    assert "pbsdsh(): task 0 exit status 254" in err_with and "pbsdsh-exit=0" in out_with
    assert "vnode=1 node=1" in out_with and "args=2:a b c" in out_with and "FOO=bar" in out_with
    assert "fd 0 -> /dev/null\nfd 1 -> " in out_with           # the task's descriptors are listed
    assert [t.status for t in with_starter.tasks] == [0, 0, 0, 254]
    with without_starter(site):
        plain, out_plain, err_plain = run()
    # The task numbers differ (the batch job's own number is not reset): drop them.
    out_with, out_plain = (re.sub(r"(task=|PBS_TASKNUM=)\d+", r"\1N", t) for t in (out_with, out_plain))
    assert out_with == out_plain
    assert err_with == err_plain
    assert [t.status for t in plain.tasks] == [0, 0, 0, 254]


# ------------------------------------------------------------------ the job's shell in the container
SHELL_SEEN = ("echo \"shell=$(readlink /proc/$PPID/exe) SHELL=$SHELL\"\n"
              "echo \"marker=$(cat /etc/torque-docker-test-marker 2>/dev/null)\"\n")


@pytest.mark.parametrize("shell,exe", [(None, "/usr/bin/bash"), ("/bin/sh", "/usr/bin/dash"),
                                       ("/bin/bash", "/usr/bin/bash")])
def test_the_script_runs_with_the_shell_torque_chose_inside_the_container(site, shell, exe):
    """No '#!' line: the shell Torque chose (qsub -S, else the login shell) runs the script,
    in the container, as on a node without containers."""
    result = site.cluster.run(site.job(SHELL_SEEN, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}", shell=shell))
    assert f"shell={exe} SHELL={shell or '/bin/bash'}" in result.stdout, result.stdout + result.stderr
    assert f"marker={MARKER}" in result.stdout
    with without_starter(site):
        plain = site.cluster.run(site.job(SHELL_SEEN, [("tdnode0", 1)], shell=shell))
    assert f"shell={exe} SHELL={shell or '/bin/bash'}" in plain.stdout


def test_perl_as_the_shell_reads_the_job_line_as_under_torque(site):
    """-S /usr/bin/perl: perl gets what any shell gets from pbs_mom, the line naming the script,
    and fails on it as perl, exactly as on a node without containers (never bash running perl code)."""
    script = "#!/usr/bin/perl\nmy $x = 1;\nprint \"perl-ran-the-file\\n\";\n"
    inside = site.cluster.run(site.job(script, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}",
                                       shell="/usr/bin/perl"))
    with without_starter(site):
        plain = site.cluster.run(site.job(script, [("tdnode0", 1)], shell="/usr/bin/perl"))
    for result in (inside, plain):
        assert "at - line 1" in result.stderr and "perl-ran-the-file" not in result.stdout, result.stderr
    assert "command not found" not in inside.stderr
    assert inside.exit_status == plain.exit_status == 255


def test_a_shell_missing_from_the_image_fails_the_job_at_once_with_one_line(site):
    script = "print('python ran')\n"
    result = site.cluster.run(site.job(script, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}",
                                       shell="/usr/bin/python3"))
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("torque-docker: job ") and "the job's shell /usr/bin/python3 (from #PBS -S) " \
        f"is not in image {OPENMPI_IMAGE}; the script did not run" in lines[0], lines[0]
    assert "#PBS -S /bin/bash" in lines[0]
    assert result.exit_status == 127 and "python ran" not in result.stdout


@pytest.fixture
def user_with_a_shell_the_image_lacks():
    """A job user whose login shell (python3) exists on the nodes but not in the test image."""
    name = "tdshell"
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/usr/bin/python3", name], check=True)
    os.chmod(pwd.getpwnam(name).pw_dir, 0o755)
    assert pwd.getpwnam(name).pw_shell == "/usr/bin/python3"
    return name


def test_a_login_shell_missing_from_the_image_fails_the_job_unless_S_names_another(site, user_with_a_shell_the_image_lacks):
    user = user_with_a_shell_the_image_lacks
    job = site.job("echo should-not-run\n", [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}", user=user)
    result = site.cluster.run(job)
    assert result.stderr.splitlines() == [
        f"torque-docker: job {job.jobid}: the job's shell /usr/bin/python3 (your login shell; no #PBS -S was given) is "
        f"not in image {OPENMPI_IMAGE}; the script did not run: name a shell the image has with #PBS -S "
        f"(e.g. #PBS -S /bin/bash), or add /usr/bin/python3 to the image"], result.stderr
    assert result.exit_status == 127 and "should-not-run" not in result.stdout
    # With -S, the same user's job runs: sshd inside accepts the user (its passwd names /bin/sh).
    ok = site.cluster.run(site.job(SHELL_SEEN, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}", user=user,
                                   shell="/bin/bash"))
    assert f"shell=/usr/bin/bash SHELL=/bin/bash\nmarker={MARKER}" in ok.stdout, ok.stdout + ok.stderr
    # Interactive: the same one line on the terminal.
    typed = "echo typed-into-python\n"
    inter = site.cluster.run(site.job("", [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}", user=user,
                                      interactive=typed))
    assert "the job's shell /usr/bin/python3 (your login shell; no #PBS -S was given) is not in image" \
        in inter.terminal, inter.terminal
    assert inter.exit_status == 127


# ------------------------------------------------------------------ the job's environment on every rank
RANK = "echo \"rank FOO=$FOO JOB=$PBS_JOBID LD=${LD_LIBRARY_PATH-unset} PATH=$PATH host=$(hostname)\""


@pytest.mark.parametrize("mpi", ["openmpi", "mpich"])
@pytest.mark.parametrize("model", ["node", "process"])
@pytest.mark.parametrize("run", ["container", "host"])
def test_every_rank_sees_the_job_environment(site, mpi, model, run):
    image = OPENMPI_IMAGE if mpi == "openmpi" else MPICH_IMAGE
    if mpi == "openmpi":
        launch = "mpirun.openmpi -np 4" if run == "host" else "mpirun -np 4"
    else:
        launch = "mpiexec.hydra -n 4" if run == "host" else "mpiexec -n 4"
    script = f"#!/bin/bash\n{launch} bash -c '{RANK}'\n"
    job = site.job(script, [("tdnode0", 2), ("tdnode1", 2)], other=f"image={image};model={model};run={run}",
                   variables={"FOO": "bar", "LD_LIBRARY_PATH": "/host/lib"}, resources={"walltime": "00:00:40"})
    result = site.cluster.run(job)
    ranks = [line for line in result.stdout.splitlines() if line.startswith("rank ")]
    assert len(ranks) == 4, result.stdout + result.stderr
    for line in ranks:
        assert f"FOO=bar JOB={job.jobid} LD=unset PATH={IMAGE_PATH} host=td-" in line, line
    assert {line.split("host=")[1].split("-n")[-1][0] for line in ranks} == {"0", "1"}
    # MPICH 4.0.2 may hang in MPI_Finalize on this single-machine simulator (README, known
    # issues): the walltime then ends the job; the ranks' output above is what is tested.


# ------------------------------------------------------------------ host names inside the containers
def test_the_nodes_host_names_resolve_inside_every_container(site):
    script = """#!/bin/bash
echo "ms: $(getent hosts tdnode0 tdnode1 | awk '{print $2 "=" $1}' | tr '\\n' ' ')"
alias1=$(sed -n 2p $PBS_NODEFILE)
ssh $alias1 "getent hosts tdnode0 tdnode1" | awk '{print "sister: " $2 "=" $1}'
echo "own: $(getent hosts $TORQUE_DOCKER_ALIAS | awk '{print $1}')"
"""
    result = site.cluster.run(site.job(script, [("tdnode0", 1), ("tdnode1", 1)], other=f"image={OPENMPI_IMAGE}"))
    assert "ms: tdnode0=127.0.1.10 tdnode1=127.0.1.11" in result.stdout, result.stdout + result.stderr
    assert "sister: tdnode0=127.0.1.10" in result.stdout and "sister: tdnode1=127.0.1.11" in result.stdout
    assert "own: 127.0.1.10" in result.stdout


def test_sibling_aliases_still_do_not_resolve_where_mpirun_runs(site):
    """model=process: node names resolve in the first container, its siblings' aliases still do
    not (Open MPI would take them for itself and start their ranks there)."""
    script = """#!/bin/bash
sibling=$(sed -n 2p $PBS_NODEFILE)
getent hosts $sibling >/dev/null && echo sibling-resolves || echo sibling-unknown
getent hosts tdnode1 >/dev/null && echo node-resolves
"""
    result = site.cluster.run(site.job(script, [("tdnode0", 2)], other=f"image={OPENMPI_IMAGE};model=process"))
    assert "sibling-unknown" in result.stdout and "node-resolves" in result.stdout, result.stdout + result.stderr


# ------------------------------------------------------------------ signals
TRAP = """#!/bin/bash
trap 'echo TRAPPED; exit 3' TERM
echo started
sleep 600 &
wait
echo after-wait
"""


@pytest.mark.parametrize("how", ["qdel", "walltime"])
def test_the_script_in_the_container_gets_one_term(site, how):
    kill = {"kill_after": 6} if how == "qdel" else {"resources": {"walltime": "00:00:06"}}
    result = site.cluster.run(site.job(TRAP, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}", **kill))
    assert "started" in result.stdout
    assert result.stdout.count("TRAPPED") == 1, result.stdout + result.stderr
    assert "after-wait" not in result.stdout
    # The top shell dies of the TERM, as pbs_mom's batch shell does: 256+15 (walltime: -11).
    assert result.exit_status == (271 if how == "qdel" else -11)


# ------------------------------------------------------------------ TM tasks of container jobs
TASK = "echo \"task vnode=$PBS_VNODENUM host=$(hostname) marker=$(cat /etc/torque-docker-test-marker) uid=$(id -u) " \
       "FOO=$FOO PATH=$PATH\""


@pytest.mark.parametrize("run", ["container", "host"])
def test_tm_tasks_run_in_the_containers_of_their_nodes(site, run):
    pbsdsh = install_pbsdsh(site)
    script = f"""#!/bin/bash
{pbsdsh} -u sh -c '{TASK}'
{pbsdsh} -n 1 sh -c 'echo to-stderr >&2; exit 3'
echo pbsdsh-done
"""
    job = site.job(script, [("tdnode0", 1), ("tdnode1", 1)], other=f"image={OPENMPI_IMAGE};run={run}",
                   variables={"FOO": "bar"})
    result = site.cluster.run(job)
    tasks = sorted(line for line in result.stdout.splitlines() if line.startswith("task "))
    assert len(tasks) == 2, result.stdout + result.stderr
    for vnode, line in enumerate(tasks):
        assert line.startswith(f"task vnode={vnode} host=td-") and line.split("host=")[1].split()[0].endswith(
            f"-n{vnode}"), line
        assert f"marker={MARKER} uid=2001 FOO=bar PATH={IMAGE_PATH}" in line, line
    assert "to-stderr" in result.stderr and "pbsdsh(): task 0 exit status 3" in result.stderr
    assert "pbsdsh-done" in result.stdout


def test_tm_tasks_of_the_process_model_run_in_their_slots_container(site):
    pbsdsh = install_pbsdsh(site)
    script = f"#!/bin/bash\n{pbsdsh} sh -c 'echo \"task vnode=$PBS_VNODENUM host=$(hostname)\"'\n"
    result = site.cluster.run(site.job(script, [("tdnode0", 2)], other=f"image={OPENMPI_IMAGE};model=process"))
    tasks = sorted(line for line in result.stdout.splitlines() if line.startswith("task "))
    assert [line.split("host=")[1].rsplit("-", 1)[1] for line in tasks] == ["s0", "s1"], result.stdout + result.stderr


def test_a_tm_task_in_a_container_gets_one_term_on_qdel(site):
    pbsdsh = install_pbsdsh(site)
    task = "trap 'echo TASK-TRAPPED; exit 5' TERM; echo task-started; sleep 600 & wait"
    script = f"#!/bin/bash\ntrap '' TERM\n{pbsdsh} -n 1 bash -c \"{task}\"\n"
    result = site.cluster.run(site.job(script, [("tdnode0", 1), ("tdnode1", 1)], other=f"image={OPENMPI_IMAGE}",
                                       kill_after=8))
    assert "task-started" in result.stdout, result.stdout + result.stderr
    assert result.stdout.count("TASK-TRAPPED") == 1, result.stdout + result.stderr


# ------------------------------------------------------------------ what is shown where
def test_the_ssh_config_variable_names_a_file_inside_the_container(site):
    script = "#!/bin/bash\necho \"cfg=$TORQUE_DOCKER_SSH_CONFIG\"; test -r \"$TORQUE_DOCKER_SSH_CONFIG\" && echo readable\n"
    result = site.cluster.run(site.job(script, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}"))
    assert "cfg=/run/torque-docker/ssh_config\nreadable" in result.stdout, result.stdout + result.stderr


def test_a_refused_jobs_output_points_to_the_reason(site):
    job = site.job("#!/bin/bash\necho ran\n", [("tdnode0", 1)], other="image=debian:12;colour=red")
    result = site.cluster.run(job)
    refused = Path(job.workdir) / f"torque-docker-{job.jobid}.refused"
    assert f"torque-docker: job {job.jobid} was refused and its script did not run: the reason is in the " \
           f"job's .e file and in {refused}" in result.stdout, result.stdout
    assert "unknown key 'colour'" in result.stderr and refused.exists() and "ran" not in result.stdout


# ------------------------------------------------------------------ the starter's own safety
def test_the_job_environment_cannot_point_the_starter_at_another_config(site):
    """qsub -v TORQUE_DOCKER_CONF=$HOME/x.conf with a state directory that does not exist: the
    starter still finds the refusal the prologue recorded; the script does not run."""
    workdir = Path(site.workdir())
    fake = workdir / "x.conf"
    fake.write_text("[paths]\nstate_dir = /nonexistent/torque-docker\n")
    job = site.job(f"#!/bin/bash\ntouch {workdir}/script-ran\n", [("tdnode0", 1)], other="image=debian:12;colour=red",
                   variables={"TORQUE_DOCKER_CONF": str(fake)})
    result = site.cluster.run(job)
    assert not (workdir / "script-ran").exists()
    assert "unknown key 'colour'" in result.stderr and result.exit_status == 1


def test_the_starter_record_is_roots_and_the_user_cannot_remove_it(site):
    job = site.job("", [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE};run=host")
    record = site.state_dir("tdnode0") / "jobs" / job.jobid / "starter.json"
    job.script = (f"#!/bin/bash\nstat -c 'owner=%u mode=%a' {record}\n"
                  f"head -c1 {record} >/dev/null && echo readable\n"
                  f"rm -f {record} 2>/dev/null; echo tampered >> {record} 2>/dev/null; test -s {record} && "
                  f"grep -q '\"run\": \"host\"' {record} && echo intact\n")
    result = site.cluster.run(job)
    assert "owner=0 mode=640\nreadable\nintact" in result.stdout, result.stdout + result.stderr


def test_a_privileged_starter_refuses_to_run_the_job(site):
    workdir = Path(site.workdir())
    with open(site.cluster.mom_priv("tdnode0") / "config", "a") as fh:
        fh.write("$job_starter_run_privileged true\n")
    result = site.cluster.run(site.job(f"#!/bin/bash\ntouch {workdir}/ran-as-root\n", [("tdnode0", 1)]))
    assert not (workdir / "ran-as-root").exists()
    assert result.stderr.startswith("torque-docker: the job starter is running as root "
                                    "($job_starter_run_privileged is set"), result.stderr
    assert result.exit_status == 1

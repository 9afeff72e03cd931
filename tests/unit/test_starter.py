"""The job starter without Docker: what it is started for, where it finds its record, and that
for a job without containers it does exactly what pbs_mom would have done itself."""
from __future__ import annotations

import io
import json
import os
import pwd
import signal
import subprocess
from pathlib import Path

import pytest

from torque_docker import admin, config, render, starter
from torque_docker import install as install_mod
from torque_docker.records import StarterInfo

REPO = Path(__file__).resolve().parents[2]
NOBODY = pwd.getpwnam("nobody").pw_uid
SHELLS = [s for s in ("/bin/dash", "/usr/bin/bash") if os.path.exists(s)]


def mom_like():
    """pbs_mom's child: SIGPIPE ignored (mom ignores it, fork_me() does not reset it)."""
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)


@pytest.fixture
def node(tmp_path):
    """A PBS_HOME whose pbs_environment names a config whose state_dir is under tmp_path; the
    starter installed in its mom_priv, runnable by nobody (pytest's tmp dirs are 0700)."""
    root = tmp_path / "node"
    (root / "mom_priv").mkdir(parents=True)
    conf = root / "td.conf"
    conf.write_text(f"[paths]\nstate_dir = {root}/state\n")
    (root / "pbs_environment").write_text(f"PATH=/bin:/usr/bin\n{config.ENV_VAR}={conf}\n")
    hook = root / "mom_priv" / install_mod.STARTER_NAME
    hook.write_text(f"#!/usr/bin/python3 -s\nimport sys\nsys.path.insert(0, {str(REPO / 'src')!r})\n"
                    + (REPO / "hooks" / "job-starter").read_text().split("\n", 1)[1])
    hook.chmod(0o755)
    for path in [tmp_path, *tmp_path.parents]:
        if path == Path("/"):
            break
        path.chmod(path.stat().st_mode | 0o011)      # traversable by the job user
    root.chmod(0o755)
    return root


def run_starter(node: Path, args, env, stdin=None, user: int = NOBODY, input_bytes=None):
    return subprocess.run([str(node / "mom_priv" / install_mod.STARTER_NAME), *args], env=env, stdin=stdin,
                          input=input_bytes, capture_output=True, timeout=30, user=user, group=user,
                          extra_groups=[], cwd="/", preexec_fn=mom_like)


def env0(text: bytes) -> dict:
    return dict(item.split("=", 1) for item in text.decode().split("\0") if item)


BASE_ENV = {"PATH": "/usr/bin:/bin", "PBS_ENVIRONMENT": "PBS_BATCH", "PBS_JOBID": "7.srv", "HOME": "/",
            "FOO": "a b 'c' $(x)", "PBS_TASKNUM": "2", "PBS_VNODENUM": "1"}


# ----------------------------------------------------------------------------- what is being started
def test_classify_tells_the_batch_shell_from_tm_tasks_and_interactive_shells(tmp_path):
    read_end, write_end = os.pipe()
    with open(read_end, "rb") as pipe, open(os.devnull, "rb") as null:
        assert starter.classify(["s", "/bin/bash"], {"PBS_ENVIRONMENT": "PBS_BATCH"}, pipe) == "batch"
        assert starter.classify(["s", "/bin/bash"], {"PBS_ENVIRONMENT": "PBS_BATCH"}, null) == "task"
        assert starter.classify(["s", "hostname"], {"PBS_ENVIRONMENT": "PBS_BATCH"}, null) == "task"
        assert starter.classify(["s", "echo", "x"], {"PBS_ENVIRONMENT": "PBS_BATCH"}, pipe) == "task"
        assert starter.classify(["s", "/bin/bash"], {"PBS_ENVIRONMENT": "PBS_INTERACTIVE"}, null) == "interactive"
        assert starter.classify(["s"], {}, null) is None
    os.close(write_end)


def test_config_comes_from_roots_files_never_from_the_job(node, monkeypatch):
    monkeypatch.setenv(config.ENV_VAR, "/home/mallory/x.conf")
    argv0 = str(node / "mom_priv" / install_mod.STARTER_NAME)
    assert starter.pbs_home_of(argv0) == node
    assert starter.trusted_config_path(node) == str(node / "td.conf")
    assert starter.pbs_home_of("/usr/libexec/torque-docker/job-starter") == Path(starter.DEFAULT_PBS_HOME)
    (node / "pbs_environment").write_text("PATH=/bin:/usr/bin\n")
    assert starter.trusted_config_path(node) == config.DEFAULT_PATH


def test_the_record_must_be_roots(node):
    argv0 = str(node / "mom_priv" / install_mod.STARTER_NAME)
    assert starter.job_record("7.srv", argv0) is None                    # no job directory: no containers
    job_dir = node / "state" / "jobs" / "7.srv"
    job_dir.mkdir(parents=True)
    assert "incomplete" in starter.job_record("7.srv", argv0).refusal
    record = job_dir / starter.RECORD
    record.write_text(json.dumps({"run": "container"}))
    record.chmod(0o640)
    assert starter.job_record("7.srv", argv0) == StarterInfo(run="container")
    os.chown(record, NOBODY, -1)
    assert "was not written by root" in starter.job_record("7.srv", argv0).refusal
    os.chown(record, 0, -1)
    record.chmod(0o646)
    assert "was not written by root" in starter.job_record("7.srv", argv0).refusal


# ----------------------------------------------------------------------------- a job without containers
def test_a_tm_task_is_execvp_with_exactly_the_jobs_environment(node):
    direct = subprocess.run(["env", "-0"], env=BASE_ENV, capture_output=True, timeout=30, preexec_fn=mom_like)
    via = run_starter(node, ["env", "-0"], BASE_ENV, stdin=subprocess.DEVNULL)
    assert via.returncode == 0, via.stderr
    assert via.stdout == direct.stdout                  # same variables, same order, no LC_CTYPE added
    assert "LC_CTYPE" not in env0(via.stdout)


def test_a_tm_task_keeps_argv_and_signal_dispositions(node, tmp_path):
    report = "printf '%s|' \"$0\" \"$@\"; grep -E '^Sig(Ign|Blk|Cgt)' /proc/self/status"
    args = ["sh", "-c", report, "zero", "a b", ""]
    direct = subprocess.run(args, env=BASE_ENV, capture_output=True, timeout=30, preexec_fn=mom_like)
    via = run_starter(node, args, BASE_ENV, stdin=subprocess.DEVNULL)
    assert via.stdout == direct.stdout and via.stdout.startswith(b"zero|a b||")


def test_a_tm_task_program_is_looked_up_like_execvp_does(node, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool = bin_dir / "noshebang"
    tool.write_text("echo \"run by $(readlink /proc/$$/exe)\"\n")       # execvp: ENOEXEC -> /bin/sh
    tool.chmod(0o755)
    bin_dir.chmod(0o755)
    env = dict(BASE_ENV, PATH=f"{bin_dir}:/usr/bin:/bin")
    via = run_starter(node, ["noshebang"], env, stdin=subprocess.DEVNULL)
    assert via.returncode == 0 and via.stdout.decode().startswith("run by /usr/bin/dash"), via.stderr
    missing = run_starter(node, ["no-such-program", "x"], env, stdin=subprocess.DEVNULL)
    assert (missing.returncode, missing.stderr) == (254, b"PBS: no-such-program: No such file or directory\n")


def test_the_batch_shell_is_a_login_shell_reading_the_job_line(node, tmp_path):
    script = tmp_path / "1.srv.SC"
    script.write_text("printf 'top=%s\\n' \"$(tr '\\0' ' ' < /proc/$PPID/cmdline)\"\n/usr/bin/env -0 > "
                      f"{tmp_path}/env; echo \"args=$*\"\nexit 4\n")
    script.chmod(0o755)
    out = tmp_path / "env"
    out.touch()
    out.chmod(0o666)
    read_end, write_end = os.pipe()
    os.write(write_end, f"{script} one 'two words'\n".encode())
    os.close(write_end)
    with open(read_end, "rb") as pipe:
        via = run_starter(node, ["/bin/sh"], BASE_ENV, stdin=pipe)
    assert via.returncode == 4, via.stderr
    assert via.stdout.decode().splitlines() == ["top=-sh ", "args=one two words"]
    seen = env0(out.read_bytes())
    for name in ("PWD", "OLDPWD", "PATH"):      # the shell's own; PATH: the login shell read /etc/profile
        seen.pop(name, None)
    assert seen == {k: v for k, v in BASE_ENV.items() if k != "PATH"}
    (node / "mom_priv" / "config").write_text("$source_login_batch false\n")
    read_end, write_end = os.pipe()
    os.write(write_end, f"{script}\n".encode())
    os.close(write_end)
    with open(read_end, "rb") as pipe:
        via = run_starter(node, ["/bin/sh"], BASE_ENV, stdin=pipe)
    assert via.stdout.decode().splitlines()[0] == "top=sh "


def test_the_starter_refuses_to_run_as_root(node):
    as_root = run_starter(node, ["/bin/sh"], BASE_ENV, stdin=subprocess.DEVNULL, user=0)
    assert as_root.returncode == 1
    assert as_root.stderr.decode().startswith("torque-docker: the job starter is running as root "
                                              "($job_starter_run_privileged is set")
    assert as_root.stdout == b""


def test_install_refuses_a_privileged_starter_and_writes_nothing(tmp_path):
    mom_priv = tmp_path / "mom_priv"
    mom_priv.mkdir()
    (mom_priv / "config").write_text("$pbsserver s\n$job_starter_run_privileged TRUE\n")
    cfg = config.parse_text(f"[paths]\nstate_dir = {tmp_path}/state\n", str(tmp_path / "td.conf"))
    with pytest.raises(config.ConfigError, match="job_starter_run_privileged"):
        admin.install(str(mom_priv), cfg=cfg, dropin=False, out=io.StringIO())
    assert sorted(p.name for p in mom_priv.iterdir()) == ["config"]
    for text, expected in (("$job_starter_run_privileged true\n$job_starter_run_privileged off\n", False),
                           ("$job_starter_run_privileged maybe\n", False), ("$job_starter_run_privileged 1\n", True)):
        (mom_priv / "config").write_text(text)
        assert install_mod.runs_starter_as_root(mom_priv / "config") is expected


# ----------------------------------------------------------------------------- the environment for ssh logins
HOSTILE = {"A": "x'y\"z", "B": "$(touch pwned) `id` ${HOME}", "C": "line1\nline2", "D": "", "E": "\\ * ? [a]",
           "PATH": "/opt/x/bin:/usr/bin:/bin", "SSH_ORIGINAL_COMMAND": "evil", "SHELL": "/bin/evil", "IFS": "x"}


@pytest.mark.parametrize("shell", SHELLS)
def test_the_env_file_gives_a_shell_exactly_the_jobs_variables(tmp_path, shell):
    path = tmp_path / "job.env"
    path.write_text(starter.env_file_text(HOSTILE))
    out = subprocess.run([shell, "-c", f". {path}; env -0"], env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                         timeout=20, cwd=tmp_path)
    seen = env0(out.stdout)
    expected = {k: v for k, v in HOSTILE.items() if k not in ("SSH_ORIGINAL_COMMAND", "SHELL", "IFS")}
    assert {k: v for k, v in seen.items() if k in HOSTILE} == expected
    assert not list(tmp_path.rglob("pwned"))


@pytest.mark.parametrize("shell", SHELLS)
def test_the_ssh_session_adds_the_job_environment_and_runs_the_command(tmp_path, shell):
    ctr = tmp_path / "ctr"
    ctr.mkdir()
    session = ctr / "session"
    session.write_text(render.render("session.j2", None, jobid="1.srv", ctr_dir=str(ctr)))
    (ctr / "job.env").write_text(starter.env_file_text({"FOO": "bar baz", "PATH": "/usr/bin:/bin"}))
    base = {"PATH": "/usr/local/bin:/usr/bin:/bin", "SHELL": shell, "HOME": str(tmp_path)}

    def login(command=None):
        env = dict(base) if command is None else dict(base, SSH_ORIGINAL_COMMAND=command)
        return subprocess.run(["/bin/sh", str(session)], env=env, capture_output=True, text=True, timeout=20,
                              stdin=subprocess.DEVNULL).stdout

    assert login('echo "$FOO|$PATH|$SHELL|$TORQUE_DOCKER_ALIAS|$(readlink /proc/$$/exe)"') == \
        f"bar baz|/usr/bin:/bin|{shell}|{os.uname().nodename}|{os.path.realpath(shell)}\n"
    assert login(starter.MARK + "readlink /proc/$$/exe") == os.path.realpath("/bin/sh") + "\n"


# ----------------------------------------------------------------------------- hosts inside the containers
def test_hosts_file_keeps_the_nodes_names_and_adds_the_aliases():
    node = ("127.0.0.1\tlocalhost\n# a comment\n10.0.0.1 n01 n01.cluster\n10.0.0.2 n02\n"
            "10.9.9.9 td-42-srv-n1 # a stale alias must not shadow the container\n")
    text = render.hosts_text([("10.0.0.1", "td-42-srv-n0"), ("10.0.0.2", "td-42-srv-n1")], node)
    assert text == ("127.0.0.1\tlocalhost\n# a comment\n10.0.0.1 n01 n01.cluster\n10.0.0.2 n02\n"
                    "# torque-docker: the job's containers\n10.0.0.1\ttd-42-srv-n0\n10.0.0.2\ttd-42-srv-n1\n")
    bare = render.hosts_text([("10.0.0.1", "td-42-srv-n0")], "10.0.0.1 n01\n")
    assert bare.startswith("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n10.0.0.1 n01\n")


def test_missing_shell_line_says_which_shell_where_it_came_from_and_what_to_do():
    me = pwd.getpwuid(os.getuid()).pw_shell
    line = starter.missing_shell_message(StarterInfo(jobid="7.srv", image="lab/x:1"), "/usr/bin/zsh")
    assert line == ("torque-docker: job 7.srv: the job's shell /usr/bin/zsh (from #PBS -S) is not in image lab/x:1; "
                    "the script did not run: name a shell the image has with #PBS -S (e.g. #PBS -S /bin/bash), "
                    "or add /usr/bin/zsh to the image")
    assert "(your login shell; no #PBS -S was given)" in starter.missing_shell_message(StarterInfo(), me)

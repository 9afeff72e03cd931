import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from torque_docker import cli
from torque_docker.teardown import teardown as teardown_job
from torque_docker.config import parse_text
from torque_docker.errors import (ConfigError, ContainerFault, ImageError, NodeFault, NotOurs, PolicyError,
                                  RequestError)
from torque_docker.state import NodeState

HOOKS = Path(__file__).resolve().parents[2] / "hooks"


@pytest.mark.parametrize("kind,error,code", [
    ("prologue", None, 0),
    ("prologue", RequestError("x"), 1),
    ("prologue", PolicyError("x"), 1),
    ("prologue", ImageError("x", user_error=True), 1),
    ("prologue", ImageError("x", user_error=False), 2),
    ("prologue", NodeFault("x"), 2),
    ("prologue", ValueError("bug"), 2),
    ("prologue.parallel", RequestError("x"), 0),   # the MS refuses it; never mark the node down
    ("prologue.parallel", NodeFault("x"), 2),
    ("prologue.parallel", ConfigError("x"), 2),    # the site's mistake: this node cannot run jobs
    ("prologue.parallel", OSError(errno.ENOSPC, "full"), 2),
    # What the job (its image, its request) or another user may have caused: never a node down.
    ("prologue.parallel", ContainerFault("x"), 0),
    ("prologue.parallel", ImageError("x", user_error=False), 0),
    ("prologue.parallel", ImageError("x", user_error=True), 0),
    ("prologue.parallel", ValueError("bug"), 0),
    ("prologue.parallel", OSError(errno.ELOOP, "a link"), 0),
    ("prologue", ContainerFault("x"), 2),
    ("prologue", ConfigError("x"), 2),             # never aborted as if the user had asked wrong
    ("epilogue", NodeFault("x"), 0),
    ("epilogue.parallel", ValueError("bug"), 0),
    ("prologue", NotOurs(), 0),
])
def test_exit_codes_follow_torque(kind, error, code):
    assert cli.hook_exit_code(kind, error) == code


def test_hook_leaves_other_jobs_alone_without_importing_docker():
    """A job without an image: exit 0 at once, nothing heavy imported."""
    code = ("import sys; from torque_docker.cli import run_hook; "
            "rc = run_hook('prologue', ['prologue', '1.s', 'u', 'g', 'n', 'nodes=1,walltime=1:00:00', 'q', '', '']);"
            "print(rc, 'docker' in sys.modules, 'torque_docker.lifecycle' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["0", "False", "False"]


def test_malformed_request_on_ms_exits_1_with_message(tmp_path):
    conf = tmp_path / "td.conf"
    conf.write_text(f"[paths]\nstate_dir = {tmp_path}/state\n[log]\ndestination = none\n")
    env = {"PATH": "/bin:/usr/bin", "TORQUE_DOCKER_CONF": str(conf)}
    result = subprocess.run([sys.executable, str(HOOKS / "prologue"), "7.s", "u", "g", "n",
                             "nodes=1,other=image=debian;colour=red", "q", "", ""],
                            capture_output=True, text=True, env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("torque-docker: job 7.s was not started: unknown key 'colour'")
    assert "valid keys are image, model, run, mount" in result.stderr


def test_port_reservation_skips_taken_and_busy_ports(tmp_path):
    state = NodeState(str(tmp_path))
    state.ensure()
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    busy_port = busy.getsockname()[1]
    try:
        first = state.reserve_port("1.s", "127.0.0.1", [busy_port, 41001, 41002])
        assert first == 41001
        assert state.reserve_port("2.s", "127.0.0.1", [41001, 41002]) == 41002
        with pytest.raises(ContainerFault, match="none of the job.s 1 candidate ports"):   # never a node down
            state.reserve_port("3.s", "127.0.0.1", [41001])
        assert state.release_ports("1.s") == 1
        assert state.reserve_port("3.s", "127.0.0.1", [41001]) == 41001
        assert oct(os.stat(tmp_path / "ports.json").st_mode & 0o777) == "0o600"
    finally:
        busy.close()


class FlakyRuntime:
    """Unit-test fake: removing one container fails, the others must still go."""

    def __init__(self):
        self.removed = []

    def containers(self, jobid=None, host=None):
        from torque_docker.runtime import ContainerInfo
        return [ContainerInfo(i, i, "running", {}) for i in ("a", "bad", "c")]

    def remove(self, ident):
        if ident == "bad":
            raise NodeFault("docker said no")
        self.removed.append(ident)
        return True


def test_teardown_runs_every_step_despite_failures(tmp_path):
    cfg = parse_text(f"[paths]\nstate_dir = {tmp_path}/state\n[ssh]\ninclude_dir = {tmp_path}/ssh\n")
    state = NodeState(cfg.paths_state_dir)
    state.ensure()
    state.job_dir("5.s").mkdir()
    state.reserve_port("5.s", "127.0.0.1", [41500])
    (tmp_path / "ssh").mkdir()
    (tmp_path / "ssh" / "5.s.conf").write_text("Host x\n")
    runtime = FlakyRuntime()
    result = teardown_job(cfg, "5.s", runtime=runtime)
    assert sorted(runtime.removed) == ["a", "c"]
    assert result.removed == 2
    assert any("docker said no" in e for e in result.errors)
    assert state.reserved_ports() == {}                     # later steps still ran
    assert not (tmp_path / "ssh" / "5.s.conf").exists()
    assert state.job_dir("5.s").exists()                    # kept for gc while containers remain
    runtime2 = FlakyRuntime()
    runtime2.containers = lambda jobid=None, host=None: []
    again = teardown_job(cfg, "5.s", runtime=runtime2)
    assert again.errors == [] and not state.job_dir("5.s").exists()


def job_context(ctx, cfg, state, runtime, user):
    """A prologue's JobContext around fakes: image "img", address 127.0.0.1."""
    from torque_docker import keys
    from torque_docker.jobcontext import JobContext
    from torque_docker.log import NULL
    secrets = keys.JobSecrets.derive(b"\x01" * 32, keys.JobIdentity(ctx.jobid, ctx.user, ctx.group, "n0"))
    return JobContext(hook=ctx, cfg=cfg, log=NULL, state=state, runtime=runtime, user=user, secrets=secrets,
                      address="127.0.0.1", image="img", image_id="")


def test_port_taken_between_check_and_bind_moves_to_the_next_candidate(tmp_path, monkeypatch):
    """The race the lock cannot prevent (another program binds after our check): sshd
    fails with 'Address already in use', the container is removed and the next candidate used."""
    from torque_docker import lifecycle, plan, probe
    from torque_docker.identity import UserInfo
    from torque_docker.torque import HookContext

    cfg = parse_text(f"[paths]\nstate_dir = {tmp_path}/state\n[network]\nnode_name = n0\n")
    state = NodeState(cfg.paths_state_dir)
    state.ensure()
    monkeypatch.setattr("torque_docker.state.port_is_free", lambda address, port: True)

    class Runtime:
        def __init__(self):
            self.started, self.removed = [], []

        def start(self, spec):
            self.started.append(spec)
            return f"c{len(self.started)}"

        def state(self, ident):
            return ("exited", 255) if ident == "c1" else ("running", None)

        def logs(self, ident):
            return "Bind to port 41001 on 127.0.0.1 failed: Address already in use." if ident == "c1" else ""

        def remove(self, ident):
            self.removed.append(ident)
            return True

        def init_pid(self, ident):
            return "running", 4242

    def wait(address, port, token, deadline, still_running, interval=0.02):
        if not still_running():
            raise probe.SshdExited("sshd in the container exited before answering")

    monkeypatch.setattr(probe, "wait_for_sshd", wait)
    monkeypatch.setattr(lifecycle, "container_ids_problem", lambda pid, user: None)   # no real process here
    runtime = Runtime()
    ctx = HookContext(kind="prologue", jobid="9.s", user="u", group="u", jobname="n", resource_list="",
                      node_index=0, pbs_home=tmp_path, workdir="", nodefile=None, environ={})
    user = UserInfo("u", 2001, 2001, "/home/u", "/bin/sh", "", (("u", 2001),))
    local = plan.NodePlan(0, "n0", (plan.ContainerPlan(0, 0, "td-9-s-n0", (41001, 41002)),))
    started = lifecycle.start_containers(job_context(ctx, cfg, state, runtime, user), local, [])
    assert [c.port for c in started] == [41002]
    assert runtime.removed == ["c1"]
    assert "ListenAddress=127.0.0.1:41001" in runtime.started[0].command[-1]
    assert "ListenAddress=127.0.0.1:41002" in runtime.started[1].command[-1]
    assert list(state.reserved_ports()) == ["127.0.0.1:41002"]


@pytest.mark.parametrize("logs,running,error,user_error", [
    ("sshd: no hostkeys available -- exiting.", False, ImageError, True),    # the image's sshd: the user's
    ("", True, ContainerFault, False),                                       # never answers: nobody's proven
])
def test_an_sshd_that_fails_is_never_a_fault_of_the_node(tmp_path, monkeypatch, logs, running, error, user_error):
    """The image decides how its sshd behaves: a sister must not take its node down for it."""
    from torque_docker import lifecycle, plan, probe
    from torque_docker.errors import is_node_fault
    from torque_docker.identity import UserInfo
    from torque_docker.torque import HookContext

    cfg = parse_text(f"[paths]\nstate_dir = {tmp_path}/state\n[network]\nnode_name = n0\n[ssh]\nready_timeout = 0.3\n")
    state = NodeState(cfg.paths_state_dir)
    state.ensure()
    monkeypatch.setattr("torque_docker.state.port_is_free", lambda address, port: True)
    monkeypatch.setattr(probe, "read_banner", lambda *a, **k: None)

    class Runtime:
        removed = []

        def start(self, spec):
            return "c1"

        def state(self, ident):
            return ("running", None) if running else ("exited", 1)

        def logs(self, ident):
            return logs

        def remove(self, ident):
            self.removed.append(ident)
            return True

    ctx = HookContext(kind="prologue.parallel", jobid="9.s", user="u", group="u", jobname="n", resource_list="",
                      node_index=1, pbs_home=tmp_path, workdir="", nodefile=None, environ={})
    user = UserInfo("u", 2001, 2001, "/home/u", "/bin/sh", "", (("u", 2001),))
    local = plan.NodePlan(1, "", (plan.ContainerPlan(1, 0, "td-9-s-n1", (41001, 41002)),))
    runtime = Runtime()
    with pytest.raises(error) as info:
        lifecycle.start_containers(job_context(ctx, cfg, state, runtime, user), local, [])
    assert info.value.user_error is user_error and not is_node_fault(info.value)
    assert cli.hook_exit_code("prologue.parallel", info.value) == 0
    assert runtime.removed == ["c1"] and state.reserved_ports() == {}
    if logs:
        assert logs in info.value.message


# ----------------------------------------------------------------------------- locks
def lock_files(state: NodeState):
    """Take every kind of lock the node uses once: ports, cores, attempts, an image, the
    sweep's hook lock."""
    from torque_docker import sweep
    state.ensure()
    state.reserve_port("1.s", "127.0.0.1", [0])
    state.allocate_cores("1.s", 1, [0])
    state.count_attempt("1.s")
    with state.image_lock("lab/x:1", timeout=1):
        pass
    with sweep.hook_running(parse_text(f"[paths]\nstate_dir = {state.root}\n"), "1.s"):
        pass
    return sorted(p for p in state.root.rglob("*") if p.name.endswith(".lock"))


def test_every_lock_is_a_0600_file_in_a_0700_directory_whatever_the_umask(tmp_path):
    old = os.umask(0o022)          # what stage, gc, the timer and a sister may run under
    try:
        locks = lock_files(NodeState(str(tmp_path / "state")))
    finally:
        os.umask(old)
    assert {p.parent for p in locks} == {tmp_path / "state" / "locks"}
    assert len(locks) == 3                                   # node.lock, the image's, the hook lock
    assert (tmp_path / "state" / "locks").stat().st_mode & 0o777 == 0o700
    for path in locks:
        assert path.stat().st_mode & 0o777 == 0o600, path
        assert path.stat().st_uid == os.geteuid()


def test_a_lock_file_left_world_readable_is_taken_back(tmp_path):
    state = NodeState(str(tmp_path / "state"))
    locks = tmp_path / "state" / "locks"
    locks.mkdir(parents=True, mode=0o755)
    (locks / "node.lock").write_text("")
    os.chmod(locks / "node.lock", 0o644)
    state.count_attempt("1.s")
    assert (locks / "node.lock").stat().st_mode & 0o777 == 0o600
    assert locks.stat().st_mode & 0o777 == 0o700


def test_a_symlinked_lock_is_refused(tmp_path):
    from torque_docker.state import NodeLock
    target = tmp_path / "elsewhere"
    target.write_text("")
    (tmp_path / "x.lock").symlink_to(target)
    with pytest.raises(OSError):
        NodeLock(tmp_path / "x.lock", timeout=0.1).acquire()


def test_a_held_lock_times_out_and_is_reentrant(tmp_path):
    from filelock import Timeout
    from torque_docker.state import NodeLock
    held = NodeLock(tmp_path / "x.lock", timeout=0.1)
    with held:
        with held:                                           # the same object: re-entrant
            assert held.is_locked
        assert held.is_locked
        with pytest.raises(Timeout):                         # another open file: excluded
            NodeLock(tmp_path / "x.lock", timeout=0.2).acquire()
    assert not held.is_locked
    with NodeLock(tmp_path / "x.lock", timeout=0.1):
        pass


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_another_user_cannot_open_any_lock():
    """flock needs only an open descriptor: a user who can open a lock file can hold it."""
    import shutil
    import tempfile
    top = Path(tempfile.mkdtemp(prefix="td-locks-", dir="/var/tmp"))   # reachable by nobody, like /var/lib
    os.chmod(top, 0o755)
    root = top / "state"
    try:
        lock_files(NodeState(str(root)))
        assert root.stat().st_mode & 0o777 == 0o755                     # the state root itself is open
        held = _held_by_nobody(root)
    finally:
        shutil.rmtree(top, ignore_errors=True)
    assert held == "[]"


def _held_by_nobody(root: Path) -> str:
    probe = ("import fcntl,os,sys\nheld=[]\nfor d,_,fs in os.walk(sys.argv[1]):\n"
             "    for f in fs:\n        p=os.path.join(d,f)\n        try:\n"
             "            fd=os.open(p,os.O_RDONLY); fcntl.flock(fd,fcntl.LOCK_EX|fcntl.LOCK_NB); held.append(p)\n"
             "        except OSError: pass\nprint(held)\n")
    return subprocess.run([sys.executable, "-c", probe, str(root)], user=65534, group=65534, extra_groups=[],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("error,attempts,head,advice", [
    (RequestError("model=vm is not known", "use model=node"), 0,
     "was not started: model=vm is not known", "what to do: use model=node"),
    (ConfigError("/etc/td.conf:3: [jobs] shm_size = 'lots': is not a size", "fix the value"), 1,
     "(node fault, 1 attempts)", "not of your job; tell the admin, whose fix is: fix the value"),
    (ImageError("pinned image x is not on node n1", "stage it", user_error=False, node_fault=True), 3,
     "(node fault, 3 attempts)", "tell the admin, whose fix is: stage it"),
    (ContainerFault("the job's container on n2 did not start", "ask the admin"), 3,
     "did not start (3 attempts)", "what to do: ask the admin"),
])
def test_the_explanation_never_gives_the_user_the_sites_fix(error, attempts, head, advice):
    from torque_docker import refusal
    text = refusal.explanation("7.srv", error, attempts)
    assert head in text.splitlines()[0] and advice in text.splitlines()[1], text

"""Unit tests of the pbs_mom simulator (tests/momsim.py).  No Docker needed; root needed.

Hooks are small /bin/sh scripts written here that dump $0 "$@", env, pwd, umask and uid
into files, so each test can check what mom handed them.  (Fixtures live here rather than
in a conftest.py so this file stays self-contained.)
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
import momsim  # noqa: E402
from momsim import Cluster, Job  # noqa: E402

# The simulator acts as pbs_mom (root): without root these tests fail rather than skip,
# so a run that proves nothing cannot look green.

USER = "tduser"
UID = 2001
NODES = ["tdnode0", "tdnode1", "tdnode2"]
BASE_ENV = {"PATH", "PWD", "PBS_MSHOST", "PBS_NODENUM", "PBS_O_WORKDIR", "PBS_RESOURCE_NODES",
            "PBS_NUM_NODES", "PBS_NUM_PPN", "PBS_NP"}   # PWD: set by /bin/sh itself


# ------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="session")
def job_user():
    if os.geteuid() != 0:
        pytest.fail("the mom simulator needs root (it acts as pbs_mom)")
    return momsim.ensure_user(USER, UID, f"/home/{USER}", "/bin/bash")


class Sim:
    """A test workspace: a Cluster plus an output dir the hooks (root or user) write to."""

    def __init__(self, root: Path, **kw):
        self.root = root
        self.out = root / "out"
        self.out.mkdir()
        os.chmod(self.out, 0o777)
        (self.out / "order").touch()
        os.chmod(self.out / "order", 0o666)
        self.wd = root / "wd"
        self.wd.mkdir()
        os.chown(self.wd, UID, UID)
        self.cluster = Cluster(root / "cluster", NODES, **kw)

    def hook(self, node: str, name: str, *, rc: int = 0, extra: str = "", mode: int = 0o500,
             uid: int = 0, symlink: bool = False) -> Path:
        """Install a dumping hook; it appends "node:name" to out/order."""
        d = self.out / f"{node}.{name}"
        jobs = self.cluster.mom_priv(node) / "jobs"
        text = f"""#!/bin/sh
d={d}
mkdir -p "$d"
printf '%s\\0' "$0" "$@" > "$d/argv"
/usr/bin/env -0 > "$d/env"
pwd > "$d/cwd"
umask > "$d/umask"
/usr/bin/id -u > "$d/uid"
echo "{node}:{name}" >> {self.out}/order
# Does this node's mom hold job $1? Its id is inside a .JB (or a complete .JC while the
# .JB is rewritten); a file may vanish between the glob and the read, so look again.
for i in 1 2 3 4 5; do
  cat {jobs}/*.JB {jobs}/*.JC 2>/dev/null | grep -q -F -x "  <jobid>$1</jobid>" && {{ echo yes > "$d/jb"; break; }}
  sleep 0.01
done
if [ -n "$PBS_NODEFILE" ] && [ -f "$PBS_NODEFILE" ]; then
  cat "$PBS_NODEFILE" > "$d/nodefile"; /usr/bin/stat -c '%a %U' "$PBS_NODEFILE" > "$d/nodefile_mode"
fi
{extra}
exit {rc}
"""
        src = self.root / f"src.{node}.{name}"
        src.write_text(text)
        if symlink:
            os.chown(src, uid, 0)
            os.chmod(src, mode)
        return self.cluster.install_hook(node, name, src, mode=mode, uid=uid, symlink=symlink)

    def dump(self, node: str, name: str) -> "Dump":
        return Dump(self.out / f"{node}.{name}")

    def order(self) -> list:
        return (self.out / "order").read_text().split()

    def job(self, nodes, script="#!/bin/bash\necho hello\n", **kw) -> Job:
        kw.setdefault("workdir", str(self.wd))
        return Job(jobid=self.cluster.new_jobid(), user=USER, script=script, nodes=nodes, **kw)


class Dump:
    def __init__(self, d: Path):
        self.d = d

    @property
    def ran(self) -> bool:
        return (self.d / "argv").exists()

    @property
    def argv(self) -> list:
        return (self.d / "argv").read_bytes().decode().split("\0")[:-1]

    @property
    def env(self) -> dict:
        out = {}
        for item in (self.d / "env").read_bytes().decode().split("\0"):
            if item:
                k, v = item.split("=", 1)
                out[k] = v
        return out

    def text(self, name: str) -> str:
        p = self.d / name
        return p.read_text().strip() if p.exists() else ""


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        st = momsim._proc_stat(pid)
        if st is None or st[0] == "Z":
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


@pytest.fixture
def make_sim(job_user):
    made = []

    def make(**kw) -> Sim:
        root = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="momsim-test-"))
        os.chmod(root, 0o755)
        s = Sim(root, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        shutil.rmtree(s.root, ignore_errors=True)


@pytest.fixture
def sim(make_sim) -> Sim:
    return make_sim(pbs_environment_extra={"tdnode1": {"TD_NODE": "tdnode1", "LANG": "C"}})


# ------------------------------------------------------------------------- pure helpers

def test_num_nodes_ppn_like_torque():
    f = momsim.torque_num_nodes_ppn
    assert f("2:ppn=4") == (2, 4)
    assert f("3") == (3, 1)
    assert f("1:ppn=2+1:ppn=1") == (2, 2)
    # A spec starting with a host name: strtol gives 0, Torque then skips everything.
    assert f("nA:ppn=2+nB:ppn=1") == (0, 1)


def test_derive_nodes_spec():
    assert momsim.derive_nodes_spec([("a", 4), ("b", 4)]) == "2:ppn=4"
    assert momsim.derive_nodes_spec([("a", 2), ("b", 1)]) == "a:ppn=2+b:ppn=1"


def test_resource_list_string_skips_what_does_not_fit():
    assert momsim.resource_list_string([("nodes", "1"), ("walltime", "00:01:00")]) == \
        "nodes=1,walltime=00:01:00"
    big = "x" * 3000
    assert momsim.resource_list_string([("nodes", "1"), ("other", big), ("gres", "g")]) == \
        "nodes=1,gres=g"


def test_parse_and_format_times():
    assert momsim.parse_walltime("01:00:05") == 3605
    assert momsim.parse_walltime("90") == 90
    assert momsim.parse_walltime("2:03") == 123
    assert momsim.format_hms(3725.7) == "01:02:05"
    with pytest.raises(ValueError):
        momsim.parse_walltime("soon")


def test_ensure_hosts_idempotent(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("127.0.0.1 localhost\n")
    momsim.ensure_hosts({"tdnode0": "127.0.1.10"}, hosts)
    momsim.ensure_hosts({"tdnode0": "127.0.1.10"}, hosts)
    momsim.ensure_hosts({"tdnode1": "127.0.1.11"}, hosts)
    text = hosts.read_text()
    assert text.startswith("127.0.0.1 localhost\n")
    assert text.count("127.0.1.10 tdnode0") == 1 and "127.0.1.11 tdnode1" in text
    assert text.count("BEGIN momsim") == 1
    assert momsim.node_addresses(["a", "b"]) == {"a": "127.0.1.10", "b": "127.0.1.11"}


# ------------------------------------------------------------------------------ layout

def test_layout(sim):
    c = sim.cluster
    for node in NODES:
        home = c.pbs_home(node)
        assert stat.S_IMODE(os.stat(home / "mom_priv").st_mode) == 0o751
        assert stat.S_IMODE(os.stat(home / "mom_priv" / "jobs").st_mode) == 0o751
        assert stat.S_IMODE(os.stat(home / "spool").st_mode) == 0o1777
        assert (home / "aux").is_dir()
        assert "$prologalarm 300" in (home / "mom_priv" / "config").read_text()
    assert (c.pbs_home("tdnode0") / "pbs_environment").read_text() == "PATH=/bin:/usr/bin\n"
    assert c.pbs_environment("tdnode1") == {"PATH": "/bin:/usr/bin", "TD_NODE": "tdnode1",
                                            "LANG": "C"}
    # every ancestor traversable by others
    for anc in c.root.parents:
        assert os.stat(anc).st_mode & stat.S_IXOTH


def test_root_under_private_dir_is_refused(tmp_path, job_user):
    priv = tmp_path / "private"
    priv.mkdir()
    os.chmod(priv, 0o700)
    with pytest.raises(ValueError, match="traversable"):
        Cluster(priv / "c", ["n0"])


def test_job_starter_in_config(make_sim):
    s = make_sim(prologalarm=20, job_starter="/usr/local/bin/starter")
    cfg = s.cluster.read_config("tdnode2")
    assert cfg == {"prologalarm": 20, "job_starter": "/usr/local/bin/starter",
                   "job_starter_run_privileged": False, "source_login_batch": True,
                   "source_login_interactive": True}
    with open(s.cluster.mom_priv("tdnode2") / "config", "a") as fh:
        fh.write("$job_starter_run_privileged True\n$source_login_batch off\n"
                 "$source_login_interactive maybe\n")
    cfg = s.cluster.read_config("tdnode2")
    assert cfg["job_starter_run_privileged"] is True and cfg["source_login_batch"] is False
    assert cfg["source_login_interactive"] is True     # not a boolean mom knows: unchanged


def test_bad_resources_rejected(sim):
    with pytest.raises(ValueError, match="Unknown resource type"):
        sim.cluster.run(sim.job([("tdnode0", 1)], resources={"bogus": "1"}))
    with pytest.raises(ValueError, match="comma"):
        sim.cluster.run(sim.job([("tdnode0", 1)], resources={"other": "a=1,b=2"}))


# --------------------------------------------------------------------- a normal job

def test_two_node_job_order_argv_env(sim):
    c = sim.cluster
    for node, name in (("tdnode0", "prologue"), ("tdnode0", "epilogue"),
                       ("tdnode1", "prologue.parallel"), ("tdnode1", "epilogue.parallel")):
        sim.hook(node, name, extra=f"echo OUT-{name}; echo ERR-{name} >&2")
    script = f"#!/bin/bash\necho job:run >> {sim.out}/order\necho hello\necho oops >&2\nexit 3\n"
    job = sim.job([("tdnode0", 2), ("tdnode1", 2)], script,
                  resources={"walltime": "00:05:00", "other": "image=x;model=node",
                             "image": "dropped"},
                  account="acct1")
    r = c.run(job)

    assert (r.state, r.exit_status, r.delivered) == ("C", 3, True)
    assert sim.order() == ["tdnode1:prologue.parallel", "tdnode0:prologue", "job:run",
                           "tdnode1:epilogue.parallel", "tdnode0:epilogue"]
    sc = str(c.job_file("tdnode0", job.jobid, ".SC"))
    resc = "nodes=2:ppn=2,walltime=00:05:00,neednodes=2:ppn=2,other=image=x;model=node"

    pro = sim.dump("tdnode0", "prologue")
    assert pro.argv == [str(c.mom_priv("tdnode0") / "prologue"), job.jobid, USER, USER,
                        "STDIN", resc, "batch", "acct1", sc]
    par = sim.dump("tdnode1", "prologue.parallel")
    assert par.argv[1:] == [job.jobid, USER, USER, "STDIN", resc, "batch", "acct1"]  # no $8

    epi = sim.dump("tdnode0", "epilogue")
    a = epi.argv
    assert len(a) == 12
    assert a[1:5] == [job.jobid, USER, USER, "STDIN"]
    assert a[5] == str(r.session_id) and r.session_id > 0
    assert a[6] == resc
    assert a[7].startswith("cput=") and ",walltime=" in a[7] and a[7] == r.resources_used
    assert a[8:12] == ["batch", "acct1", "3", sc]
    epar = sim.dump("tdnode1", "epilogue.parallel").argv
    assert len(epar) == 12 and epar[10] == "3" and epar[11] == ""

    # Environment: pbs_environment + PBS_* only; no HOME/USER/PBS_JOBID.
    env = pro.env
    assert set(env) == BASE_ENV | {"PBS_NODEFILE"}
    assert env["PATH"] == "/bin:/usr/bin"
    assert env["PBS_NODENUM"] == "0" and env["PBS_MSHOST"] == "tdnode0"
    assert env["PBS_O_WORKDIR"] == str(sim.wd)
    assert (env["PBS_NUM_NODES"], env["PBS_NUM_PPN"], env["PBS_NP"]) == ("2", "2", "4")
    assert env["PBS_RESOURCE_NODES"] == "2:ppn=2"
    assert env["PBS_NODEFILE"] == str(c.nodefile("tdnode0", job.jobid))
    senv = par.env
    assert set(senv) == BASE_ENV | {"TD_NODE", "LANG"}
    assert senv["PBS_NODENUM"] == "1" and senv["TD_NODE"] == "tdnode1"

    for node, name in (("tdnode0", "prologue"), ("tdnode1", "prologue.parallel"),
                       ("tdnode0", "epilogue"), ("tdnode1", "epilogue.parallel")):
        d = sim.dump(node, name)
        assert d.text("cwd") == str(c.mom_priv(node))
        assert d.text("umask") == "0077"
        assert d.text("uid") == "0"
        # The job's file is there during its hooks, except on a sister during
        # prologue.parallel: pbs_mom saves it after the join's prologues.
        assert d.text("jb") == ("" if name == "prologue.parallel" else "yes"), (node, name)

    # Nodefile: written before the prologue, 0644 root, one line per slot; gone after.
    assert pro.text("nodefile").split() == ["tdnode0"] * 2 + ["tdnode1"] * 2
    assert pro.text("nodefile_mode") == "644 root"
    assert not c.nodefile("tdnode0", job.jobid).exists()
    for node in ("tdnode0", "tdnode1"):
        assert not c.mom_knows(node, job.jobid)
    assert not c.job_file("tdnode0", job.jobid, ".SC").exists()

    # Output: prologue at the top, epilogue at the bottom; delivered, owned by the user.
    assert r.stdout.splitlines() == ["OUT-prologue", "hello", "OUT-epilogue"]
    assert r.stderr.splitlines() == ["ERR-prologue", "oops", "ERR-epilogue"]
    o, e = r.output_paths
    assert o == sim.wd / f"STDIN.o{job.jobid.split('.')[0]}" and e.name.startswith("STDIN.e")
    assert os.stat(o).st_uid == UID and os.stat(e).st_uid == UID
    assert not r.spool_paths[0].exists() and not r.spool_paths[1].exists()

    # HookRuns: sister output recorded and logged to the node's hooks.log.
    (hp,) = r.runs("prologue.parallel")
    assert hp.node == "tdnode1" and hp.rc == 0 and hp.stdout.strip() == "OUT-prologue.parallel"
    assert "OUT-prologue.parallel" in c.hooks_log("tdnode1").read_text()
    assert r.runs("prologue")[0].stdout.strip() == "OUT-prologue"
    assert r.down_nodes == []


def test_user_hooks_run_as_user(sim):
    c = sim.cluster
    for node, name in (("tdnode0", "prologue"), ("tdnode0", "prologue.user"),
                       ("tdnode0", "epilogue.user"), ("tdnode0", "epilogue"),
                       ("tdnode1", "prologue.parallel"), ("tdnode1", "prologue.user.parallel"),
                       ("tdnode1", "epilogue.user.parallel"), ("tdnode1", "epilogue.parallel")):
        sim.hook(node, name, mode=0o555 if ".user" in name else 0o500)
    r = c.run(sim.job([("tdnode0", 1), ("tdnode1", 1)]))
    assert (r.state, r.exit_status) == ("C", 0)
    assert sim.order() == [
        "tdnode1:prologue.parallel", "tdnode1:prologue.user.parallel",
        "tdnode0:prologue", "tdnode0:prologue.user",
        "tdnode1:epilogue.user.parallel", "tdnode1:epilogue.parallel",
        "tdnode0:epilogue.user", "tdnode0:epilogue"]
    for node, name in (("tdnode0", "prologue.user"), ("tdnode0", "epilogue.user"),
                       ("tdnode1", "prologue.user.parallel"),
                       ("tdnode1", "epilogue.user.parallel")):
        d = sim.dump(node, name)
        assert d.text("uid") == str(UID)
        assert d.text("cwd") == f"/home/{USER}"
        assert d.text("umask") == "0077"
        assert "HOME" not in d.env and "USER" not in d.env
    assert len(sim.dump("tdnode0", "prologue.user").argv) == 9
    assert len(sim.dump("tdnode1", "prologue.user.parallel").argv) == 8


def test_user_hook_must_be_readable_and_executable_by_others(sim):
    sim.hook("tdnode0", "prologue.user", mode=0o500)
    r = sim.cluster.run(sim.job([("tdnode0", 1)]))
    (h,) = r.runs("prologue.user")
    assert h.rc == -1 and "permission Error" in h.message
    assert not sim.dump("tdnode0", "prologue.user").ran
    assert (r.state, r.exit_status) == ("Q", -3)


# --------------------------------------------------------------------- the batch script

def test_batch_script_env_args_and_identity(sim):
    script = f"""#!/bin/bash
d={sim.out}/job
mkdir -p $d
printf '%s\\0' "$0" "$@" > $d/argv
/usr/bin/env -0 > $d/env
pwd > $d/cwd; umask > $d/umask; id -u > $d/uid; id -G > $d/groups
echo to-stderr >&2
exit 3
"""
    job = sim.job([("tdnode0", 2)], script, variables={"FOO": "bar baz"},
                  args=["a b", "c"], name="myjob", queue="q1")
    r = sim.cluster.run(job)
    assert (r.state, r.exit_status, r.delivered) == ("C", 3, True)
    assert "to-stderr" in r.stderr
    assert r.output_paths[0].name == f"myjob.o{job.jobid.split('.')[0]}"
    d = Dump(sim.out / "job")
    assert d.argv == [str(sim.cluster.job_file("tdnode0", job.jobid, ".SC")), "a b", "c"]
    env = d.env
    assert env["FOO"] == "bar baz"
    assert env["PBS_JOBID"] == job.jobid and env["PBS_JOBNAME"] == "myjob"
    assert env["PBS_QUEUE"] == "q1" and env["PBS_ENVIRONMENT"] == "PBS_BATCH"
    assert env["PBS_O_WORKDIR"] == str(sim.wd)
    assert env["PBS_NODEFILE"] == str(sim.cluster.nodefile("tdnode0", job.jobid))
    assert (env["PBS_NUM_NODES"], env["PBS_NUM_PPN"], env["PBS_NP"]) == ("1", "2", "2")
    assert env["HOME"] == env["PBS_O_HOME"] == f"/home/{USER}"
    assert env["USER"] == env["LOGNAME"] == USER and env["SHELL"] == "/bin/bash"
    assert "/usr/bin" in env["PATH"].split(":")
    assert d.text("uid") == str(UID) and d.text("umask") == "0077"
    assert d.text("cwd") == f"/home/{USER}"


def test_job_starter_gets_starter_and_shell(make_sim):
    root_hint = Path(tempfile.mkdtemp(dir="/var/tmp", prefix="momsim-starter-"))
    os.chmod(root_hint, 0o777)
    try:
        starter = root_hint / "starter.sh"
        starter.write_text(f"""#!/bin/sh
cat > {root_hint}/stdin
printf '%s\\0' "$0" "$@" > {root_hint}/argv
/usr/bin/id -u > {root_hint}/uid
exec "$@" < {root_hint}/stdin
""")
        os.chmod(starter, 0o755)
        s = make_sim(job_starter=str(starter))
        job = s.job([("tdnode0", 1)], "#!/bin/bash\necho via-starter \"$@\"\n", args=["x y"])
        r = s.cluster.run(job)
        sc = s.cluster.job_file("tdnode0", job.jobid, ".SC")
        assert (root_hint / "argv").read_bytes().decode().split("\0")[:-1] == \
            [str(starter), "/bin/bash"]
        assert (root_hint / "stdin").read_text() == f"{sc} 'x y'\n"
        assert (root_hint / "uid").read_text().strip() == str(UID)
        assert r.exit_status == 0 and "via-starter x y" in r.stdout
    finally:
        shutil.rmtree(root_hint, ignore_errors=True)


def test_prologue_rewrites_nodefile_job_sees_it(sim):
    sim.hook("tdnode0", "prologue",
             extra="printf 'alias-a\\nalias-b\\n' > \"$PBS_NODEFILE\"")
    r = sim.cluster.run(sim.job([("tdnode0", 1), ("tdnode1", 1)],
                                "#!/bin/bash\ncat $PBS_NODEFILE\n"))
    assert r.stdout.split() == ["alias-a", "alias-b"]


def test_kill_after_qdel_gives_271_and_precancel(sim):
    sim.hook("tdnode0", "epilogue")
    sim.hook("tdnode0", "epilogue.precancel", mode=0o555)
    t0 = time.monotonic()
    r = sim.cluster.run(sim.job([("tdnode0", 1)], "#!/bin/bash\nsleep 30\n", kill_after=0.5))
    assert time.monotonic() - t0 < 5
    assert (r.state, r.exit_status) == ("C", 271)
    assert sim.dump("tdnode0", "epilogue").argv[10] == "271"
    assert sim.dump("tdnode0", "epilogue.precancel").text("uid") == str(UID)


def test_leftover_session_processes_killed_when_shell_exits(sim):
    # The top (login) shell dies of the qdel SIGTERM even when the script traps it; mom
    # then SIGKILLs whatever is left in the job's session.
    script = f"#!/bin/bash\ntrap '' TERM\nsleep 30 & echo $! > {sim.out}/sleep.pid\nwait\n"
    r = sim.cluster.run(sim.job([("tdnode0", 1)], script, kill_after=0.3))
    assert r.exit_status == 256 + 15
    pid = int((sim.out / "sleep.pid").read_text())
    assert _gone_within(pid, 2.0), "leftover job process survived"


def set_job_starter(sim, body: str, more_config: str = "") -> None:
    """A shell job starter on tdnode0 that runs ``body`` then execs the job, and its
    ``$job_starter`` line (with ``more_config``) in mom's config."""
    starter = sim.root / "starter.sh"
    starter.write_text(f"#!/bin/sh\n{body}exec \"$@\"\n")
    os.chmod(starter, 0o755)
    with open(sim.cluster.mom_priv("tdnode0") / "config", "a") as fh:
        fh.write(f"$job_starter {starter}\n{more_config}")


def test_term_ignored_gets_sigkill_after_kill_delay(sim):
    # A job starter that ignores SIGTERM (ignored signals stay ignored across exec):
    # mom sends SIGKILL kill_delay (2 s) later.  The config is re-read on every run.
    set_job_starter(sim, "trap '' TERM\n")
    t0 = time.monotonic()
    r = sim.cluster.run(sim.job([("tdnode0", 1)], "#!/bin/bash\nsleep 30\n", kill_after=0.2))
    assert 1.8 < time.monotonic() - t0 < 6
    assert r.exit_status == 256 + 9


def test_walltime_exceeded(sim):
    sim.hook("tdnode0", "epilogue")
    r = sim.cluster.run(sim.job([("tdnode0", 1)], "#!/bin/bash\nsleep 30\n",
                                resources={"walltime": "00:00:01"}))
    assert r.exit_status == -11
    assert "walltime" in r.stderr
    assert sim.dump("tdnode0", "epilogue").argv[10] == "-11"


# ----------------------------------------------------------------- permissions, timeouts

@pytest.mark.parametrize("mode,uid", [(0o777, 0), (0o500, UID), (0o520, 0), (0o400, 0)])
def test_bad_permissions_not_run_and_requeue(sim, mode, uid):
    sim.hook("tdnode0", "prologue", mode=mode, uid=uid)
    sim.hook("tdnode0", "epilogue")
    r = sim.cluster.run(sim.job([("tdnode0", 1)]))
    (h,) = r.runs("prologue")
    assert h.rc == -1 and not sim.dump("tdnode0", "prologue").ran
    assert (r.state, r.exit_status) == ("Q", -3)
    assert sim.dump("tdnode0", "epilogue").argv[10] == "-3"


def test_symlinked_hook_is_followed(sim):
    sim.hook("tdnode0", "prologue", mode=0o700, symlink=True)
    sim.hook("tdnode0", "epilogue", mode=0o777, symlink=True)   # target group/other-writable
    r = sim.cluster.run(sim.job([("tdnode0", 1)]))
    assert os.path.islink(sim.cluster.mom_priv("tdnode0") / "prologue")
    assert r.runs("prologue")[0].rc == 0 and sim.dump("tdnode0", "prologue").ran
    assert r.runs("epilogue")[0].rc == -1 and not sim.dump("tdnode0", "epilogue").ran


def test_missing_hooks_skipped(sim):
    r = sim.cluster.run(sim.job([("tdnode0", 1), ("tdnode1", 1)]))
    assert (r.state, r.exit_status, r.delivered) == ("C", 0, True)
    assert r.hook_runs == [] and r.stdout == "hello\n"


def test_prologalarm_kills_whole_session(make_sim):
    s = make_sim(prologalarm=12)
    s.hook("tdnode0", "prologue",
           extra=f"sleep 60 & echo $! > {s.out}/sleep.pid; wait")
    t0 = time.monotonic()
    r = s.cluster.run(s.job([("tdnode0", 1)]))
    took = time.monotonic() - t0
    (h,) = r.runs("prologue")
    assert h.timed_out and h.rc == -4 and 1.5 < h.elapsed < 4
    assert took < 6
    assert (r.state, r.exit_status) == ("Q", -3)
    pid = int((s.out / "sleep.pid").read_text())
    assert _gone_within(pid, 2.0), "a process of the prologue's session survived"


def test_prologue_killed_by_signal_counts_as_success(sim):
    # prolog.cpp: run_exit stays 0 when WIFEXITED is false (and it was not the alarm).
    sim.hook("tdnode0", "prologue", extra="kill -9 $$")
    r = sim.cluster.run(sim.job([("tdnode0", 1)]))
    (h,) = r.runs("prologue")
    assert h.rc == 0 and h.signal == 9
    assert (r.state, r.exit_status) == ("C", 0)


def test_jobtype_prefers_typed_prologue(sim):
    sim.hook("tdnode0", "prologue")
    sim.hook("tdnode0", "prologue.special")
    r = sim.cluster.run(sim.job([("tdnode0", 1)], jobtype="special"))
    (h,) = r.runs("prologue")
    assert h.path.endswith("prologue.special")
    assert sim.dump("tdnode0", "prologue.special").ran
    assert not sim.dump("tdnode0", "prologue").ran


# -------------------------------------------------------------------- failure semantics

def test_ms_prologue_exit1_aborts_output_stays_in_spool(sim):
    c = sim.cluster
    sim.hook("tdnode0", "prologue", rc=1,
             extra="echo 'torque-docker: image x not allowed; use -l other=image=y' >&2")
    sim.hook("tdnode0", "epilogue", extra="echo EPI-OUT")
    sim.hook("tdnode1", "prologue.parallel")
    sim.hook("tdnode1", "epilogue.parallel")
    job = sim.job([("tdnode0", 1), ("tdnode1", 1)],
                  f"#!/bin/bash\necho job:run >> {sim.out}/order\n")
    r = c.run(job)
    assert (r.state, r.exit_status, r.delivered) == ("C", -2, False)
    assert sim.order() == ["tdnode1:prologue.parallel", "tdnode0:prologue", "tdnode0:epilogue"]
    assert not sim.dump("tdnode1", "epilogue.parallel").ran
    assert sim.dump("tdnode0", "epilogue").argv[10] == "-2"
    assert sim.dump("tdnode0", "epilogue").argv[5] == "0"     # no session: never started
    assert sim.dump("tdnode0", "epilogue").argv[7] == ""      # no resources used
    ou, er = r.spool_paths
    assert ou.exists() and er.exists()
    assert "image x not allowed" in er.read_text() and "image x not allowed" in r.stderr
    assert "EPI-OUT" in r.stdout
    assert list(sim.wd.iterdir()) == []
    assert not c.mom_knows("tdnode0", job.jobid) and not c.mom_knows("tdnode1", job.jobid)
    assert not c.nodefile("tdnode0", job.jobid).exists()


def test_ms_prologue_exit2_requeues(sim):
    sim.hook("tdnode0", "prologue", rc=2)
    sim.hook("tdnode0", "epilogue")
    sim.hook("tdnode1", "epilogue.parallel")
    r = sim.cluster.run(sim.job([("tdnode0", 1), ("tdnode1", 1)]))
    assert (r.state, r.exit_status) == ("Q", -3)
    assert sim.dump("tdnode0", "epilogue").argv[10] == "-3"
    assert not sim.dump("tdnode1", "epilogue.parallel").ran
    assert r.delivered   # a requeue copies the .o/.e back (overwriting)


def test_sister_prologue_failure_marks_node_down(sim):
    c = sim.cluster
    sim.hook("tdnode1", "prologue.parallel", rc=1)
    sim.hook("tdnode2", "prologue.parallel")
    sim.hook("tdnode2", "epilogue.parallel")
    sim.hook("tdnode0", "prologue")
    sim.hook("tdnode0", "epilogue")
    job = sim.job([("tdnode0", 1), ("tdnode1", 1), ("tdnode2", 1)])
    r = c.run(job)
    assert (r.state, r.exit_status) == ("Q", -3)
    assert r.down_nodes == ["tdnode1"]
    assert not sim.dump("tdnode0", "prologue").ran
    assert not sim.dump("tdnode2", "epilogue.parallel").ran
    # facts "Ordering": the MS epilogue still runs ($10 = -3); no nodefile was written.
    epi = sim.dump("tdnode0", "epilogue")
    assert epi.argv[10] == "-3" and "PBS_NODEFILE" not in epi.env
    for node in ("tdnode0", "tdnode1", "tdnode2"):
        assert not c.mom_knows(node, job.jobid)


def test_epilogue_exit_code_ignored(sim):
    sim.hook("tdnode0", "epilogue", rc=7)
    sim.hook("tdnode1", "epilogue.parallel", rc=7)
    r = sim.cluster.run(sim.job([("tdnode0", 1), ("tdnode1", 1)]))
    assert (r.state, r.exit_status, r.delivered, r.down_nodes) == ("C", 0, True, [])
    assert r.runs("epilogue")[0].rc == 7


# ------------------------------------------------------ job files: prefixes, arrays, multi-mom
# The product's reader (src/torque_docker/momjobs.py) reads what the simulator writes: the
# simulator's files must be what pbs_mom writes, or the product's tests prove nothing.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from torque_docker import momjobs  # noqa: E402


def job_files(listing: str) -> set:
    """File names in a hook's ``ls`` of mom_priv/jobs. pbs_mom rewrites the .JB through a
    .JC (unlink, link): an ls can see either, or both; both mean the job file."""
    return {name[:-3] + ".JB" if name.endswith(".JC") else name for name in listing.split()}


def test_file_prefix_rules():
    f = momsim.file_prefix
    assert f("52.vm", set()) == "52.vm"
    assert f("52[1].vm", set()) == "52-1.vm"                    # job_clone
    assert f("52[17]", set()) == "52-17"
    long_id = "123." + "n" * 70
    assert f(long_id, set()) == long_id[:61] and len(f(long_id, set())) == momsim.PBS_JOBBASE
    assert f("52[1]." + "n" * 70, set()) == ("52-1." + "n" * 70)[:61]
    # determine_job_file_name bumps the last printable character while the name is taken.
    assert f("52.vm", {"52.vm"}) == "52.vn"
    assert f("52.vm", {"52.vm", "52.vn"}) == "52.vo"
    assert f("52.v~", {"52.v~"}) == "52.v\x7f"                 # '~' + 1 is DEL ...
    assert f("52.v~", {"52.v~", "52.v\x7f"}) == "52.w\x7f"     # ... which is skipped next time
    with pytest.raises(ValueError, match="would not create subjob"):
        f("52[1].vm", {"52-1.vm"})
    assert momsim.array_parts("52[1].vm") == ("52", 1, "vm")
    assert momsim.array_parts("52.vm") is None and momsim.array_parts("52[].vm") is None
    assert momsim.default_output_name("STDIN", "52[3].vm", "o") == "STDIN.o52-3"
    assert momsim.default_output_name("run", "52.vm", "e") == "run.e52"


def test_job_file_xml_is_what_torque_writes_and_the_product_reads():
    text = momsim.job_file_xml("52[1].vm", "52-1.vm", substate=42, user="u", group="g", uid=1, gid=2,
                               jobname="STDIN-1", queue="batch", server="vm", exec_host="n0/0",
                               resources=[("nodes", "1"), ("other", "image=x;model=node")],
                               variables={"A": "1&<2>", "ESC": "\x1b[1m"}, nodeid=0, mtime=5)
    assert text.startswith('<?xml version="1.0"?>\n<job>\n  <version>131842</version>\n')
    assert "  <jobid>52[1].vm</jobid>\n  <fileprefix>52-1.vm</fileprefix>\n" in text
    assert "A=1&amp;&lt;2&gt;,ESC=&#27;[1m" in text and '<job_array_id flags="1">1</job_array_id>' in text
    assert momjobs.parse_job_file(text.encode()) == momjobs.JobFile("52[1].vm", "52-1.vm")


def test_array_subjob_files_arguments_and_output(sim):
    """qsub -t 1-2 on two nodes: every file is named after the prefix N-i.server, the
    hooks and the job see the id N[i].server, the job name gets -i, the output N-i."""
    c = sim.cluster
    for node, name in (("tdnode0", "prologue"), ("tdnode1", "prologue.parallel"), ("tdnode0", "epilogue")):
        sim.hook(node, name, extra=f"ls {c.mom_priv(node) / 'jobs'} > \"$d/jobs\"")
    first, second = c.new_array([1, 2])
    seq = first.split("[")[0]
    assert (first, second) == (f"{seq}[1].simserver", f"{seq}[2].simserver")
    job = sim.job([("tdnode0", 1), ("tdnode1", 1)], "#!/bin/bash\necho id=$PBS_JOBID name=$PBS_JOBNAME "
                  "array=$PBS_ARRAYID\n")
    job.jobid = first
    r = c.run(job)
    assert (r.state, r.exit_status) == ("C", 0)
    prefix = f"{seq}-1.simserver"
    pro = sim.dump("tdnode0", "prologue")
    assert pro.argv[1] == first and pro.argv[4] == "STDIN-1"
    assert pro.argv[8] == str(c.mom_priv("tdnode0") / "jobs" / f"{prefix}.SC")
    assert pro.env["PBS_NODEFILE"] == str(c.pbs_home("tdnode0") / "aux" / first)   # aux/<jobid>
    assert {f"{prefix}.JB", f"{prefix}.SC"} <= job_files(pro.text("jobs"))
    assert sim.dump("tdnode0", "prologue").text("jb") == "yes"
    assert {f"{prefix}.JB", f"{prefix}.TK"} <= job_files(sim.dump("tdnode0", "epilogue").text("jobs"))
    assert sim.dump("tdnode1", "prologue.parallel").text("jobs") == ""          # not yet
    assert r.stdout.split() == [f"id={first}", "name=STDIN-1", "array=1"]
    assert r.output_paths[0] == sim.wd / f"STDIN.o{seq}-1"
    assert all(not any((c.mom_priv(n) / "jobs").iterdir()) for n in ("tdnode0", "tdnode1"))


def test_multi_mom_node_appends_its_port(make_sim):
    s = make_sim(multi_mom={"tdnode0": 15003})
    c = s.cluster
    s.hook("tdnode0", "prologue", extra=f"ls {c.mom_priv('tdnode0') / 'jobs'} > \"$d/jobs\"")
    s.hook("tdnode1", "epilogue.parallel", extra=f"ls {c.mom_priv('tdnode1') / 'jobs'} > \"$d/jobs\"")
    (jobid,) = c.new_array([4])
    job = s.job([("tdnode0", 1), ("tdnode1", 1)])
    job.jobid = jobid
    assert c.run(job).exit_status == 0
    prefix = c.file_prefix(jobid)
    assert job_files(s.dump("tdnode0", "prologue").text("jobs")) == {f"{prefix}15003.JB", f"{prefix}15003.SC"}
    assert job_files(s.dump("tdnode1", "epilogue.parallel").text("jobs")) == {f"{prefix}.JB"}   # an ordinary mom
    assert s.dump("tdnode0", "prologue").argv[8].endswith(f"/{prefix}15003.SC")


def test_long_and_renamed_prefixes(sim):
    c = sim.cluster
    long_id = c.new_jobid(server="head." + "cluster" * 9 + ".example.org")
    assert len(long_id) > momsim.PBS_JOBBASE and c.file_prefix(long_id) == long_id[:61]
    c.stale_server_file(f"{c.next_sequence}.simserver")       # a file left in server_priv/jobs
    renamed = c.new_jobid()
    assert c.file_prefix(renamed) == renamed[:-1] + "s"      # simserver -> simserves
    sim.hook("tdnode0", "prologue", extra=f"ls {c.mom_priv('tdnode0') / 'jobs'} > \"$d/jobs\"")
    for jobid in (long_id, renamed):
        job = sim.job([("tdnode0", 1)])
        job.jobid = jobid
        assert c.run(job).exit_status == 0
        assert f"{c.file_prefix(jobid)}.JB" in job_files(sim.dump("tdnode0", "prologue").text("jobs"))
        assert sim.dump("tdnode0", "prologue").text("jb") == "yes"


def test_the_job_file_is_rewritten_while_the_job_runs(sim):
    """pbs_mom's job_save links a new file in place of the .JB: its inode changes. The
    product's reader must see the job in every answer it gives meanwhile."""
    c = sim.cluster
    flag = sim.out / "release"
    job = sim.job([("tdnode0", 1), ("tdnode1", 1)],
                  f"#!/bin/bash\nfor i in $(seq 1200); do [ -e {flag} ] && exit 0; sleep 0.05; done\nexit 3\n")
    result = {}
    thread = threading.Thread(target=lambda: result.update(r=c.run(job)))
    thread.start()
    inodes = {n: set() for n in ("tdnode0", "tdnode1")}
    answers = []
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and min(len(i) for i in inodes.values()) < 3:
            for node in inodes:
                try:
                    inodes[node].add(os.stat(c.job_file(node, job.jobid)).st_ino)
                except FileNotFoundError:
                    pass
                if not c.mom_knows(node, job.jobid):
                    continue                   # not arrived yet (a sister: after its prologues)
                try:
                    answers.append(job.jobid in momjobs.held_jobs(c.pbs_home(node), pause=0.005))
                except momjobs.JobFilesUnreadable:
                    pass
            time.sleep(0.01)
    finally:
        flag.touch()
        thread.join(60)
    assert min(len(i) for i in inodes.values()) >= 3, inodes
    assert answers and all(answers)
    assert result["r"].exit_status == 0


# ---------------------------------------------------------------------------- qsub model
def _filter(sim, body: str) -> str:
    path = sim.root / "filter"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_qsub_reads_directives_until_the_first_command_and_cmdline_wins(sim):
    job = momsim.qsub(sim.cluster, "#!/bin/sh\r\n#PBS -l walltime=1:00,mem=1gb\r\n#PBS -l image=x \\\n"
                                   "\n: not a command\necho hi\n#PBS -l other=late\n",
                      ["-l", "mem=2gb"], user=USER, placement=[("tdnode0", 1)], cwd=str(sim.wd))
    assert job.resources == {"walltime": "1:00", "mem": "2gb", "image": "x"}
    job = momsim.qsub(sim.cluster, "#X -l other=a\n#PBS -l other=b\n", ["-C", "#X"], user=USER,
                      placement=[("tdnode0", 1)], cwd=str(sim.wd))
    assert job.resources == {"other": "a"}


def test_qsub_runs_the_filter_as_the_user_with_quoted_args_and_its_output_is_the_job(sim):
    seen = sim.out / "seen"
    path = _filter(sim, f"id -u > {seen}; for a in \"$@\"; do echo \"[$a]\" >> {seen}; done\n"
                        "cat; echo '#PBS -l other=added'\n")
    job = momsim.qsub(sim.cluster, "#!/bin/sh\n", ["-N", "a b", "-C", "#PBS", "-l", "walltime=1"], user=USER,
                      placement=[("tdnode0", 1)], submit_filter=path, cwd=str(sim.wd))
    assert seen.read_text().split("\n") == [str(UID), "[-N]", "[a b]", "[-C]", "[#PBS]", "[-l]", "[walltime=1]", ""]
    assert job.script == "#!/bin/sh\n#PBS -l other=added\n" and job.resources["other"] == "added"


@pytest.mark.parametrize("rc,words", [(255, "administratively rejected"), (3, "submit filter returned an error")])
def test_qsub_filter_refusal(sim, rc, words):
    path = _filter(sim, f"echo why >&2; exit {rc}\n")
    with pytest.raises(momsim.QsubError) as refused:
        momsim.qsub(sim.cluster, "echo\n", [], user=USER, placement=[("tdnode0", 1)], submit_filter=path,
                    cwd=str(sim.wd))
    assert words in str(refused.value) and refused.value.stderr == "why\n"


# ------------------------------------------------------------------ the job's shell (-S)

def test_choose_shell_like_set_shell():
    f = momsim.choose_shell
    assert f(None, "/bin/bash", "tdnode0") == "/bin/bash"
    assert f("/bin/sh", "/bin/bash", "tdnode0") == "/bin/sh"
    assert f("/bin/zsh@tdnode1,/bin/sh", "/bin/bash", "tdnode0") == "/bin/sh"
    assert f("/bin/sh,/bin/zsh@tdnode0,/bin/dash", "/bin/bash", "tdnode0") == "/bin/zsh"   # a host match wins
    assert f("/bin/sh,/bin/dash", "/bin/bash", "tdnode0") == "/bin/dash"     # the last wildcard
    assert (momsim.setbool("TRUE"), momsim.setbool("off"), momsim.setbool("x")) == (True, False, None)


# The top shell (the parent of the script's process) is the one mom started.
SHELL_REPORT = ("printf 'argv0=%s\\n' \"$(tr '\\0' ' ' < /proc/$PPID/cmdline)\"\n"
                "echo \"exe=$(readlink /proc/$PPID/exe) SHELL=$SHELL\"\n"
                "grep -E '^Sig(Ign|Blk)' /proc/self/status\n")


def test_S_chooses_the_shell_that_reads_the_job_line_as_a_login_shell(sim):
    # No "#!" line: the shell Torque chose runs the script itself (a file without one).
    r = sim.cluster.run(sim.job([("tdnode0", 1)], SHELL_REPORT, shell="/bin/sh"))
    assert "argv0=-sh \nexe=/usr/bin/dash SHELL=/bin/sh" in r.stdout, r.stdout + r.stderr
    r = sim.cluster.run(sim.job([("tdnode0", 1)], SHELL_REPORT))
    assert "argv0=-bash \nexe=/usr/bin/bash SHELL=/bin/bash" in r.stdout, r.stdout + r.stderr
    with open(sim.cluster.mom_priv("tdnode0") / "config", "a") as fh:
        fh.write("$source_login_batch false\n")
    r = sim.cluster.run(sim.job([("tdnode0", 1)], SHELL_REPORT))
    assert "argv0=bash \n" in r.stdout


def test_job_processes_start_with_sigpipe_ignored_like_under_pbs_mom(sim):
    # mom ignores SIGPIPE and its fork_me() resets only CHLD/HUP/INT/TERM: jobs inherit it.
    r = sim.cluster.run(sim.job([("tdnode0", 1)], SHELL_REPORT))
    ignored = int(next(line.split()[1] for line in r.stdout.splitlines() if line.startswith("SigIgn")), 16)
    assert ignored & (1 << (13 - 1)), "SIGPIPE must be ignored"
    assert not ignored & (1 << (25 - 1)), "SIGXFSZ must not be ignored"


def test_qdel_sends_one_term_per_process(sim):
    script = "#!/bin/bash\ntrap 'echo TRAPPED' TERM\nfor i in $(seq 100); do sleep 0.1; done\n"
    r = sim.cluster.run(sim.job([("tdnode0", 1)], script, kill_after=1.0))
    assert r.stdout.count("TRAPPED") == 1, r.stdout
    assert r.exit_status == 256 + 15          # the top shell dies of the TERM, as under mom


def test_privileged_starter_runs_as_root(sim):
    set_job_starter(sim, "echo \"starter-uid=$(id -u) job=$PBS_JOBID\"\n", "$job_starter_run_privileged true\n")
    job = sim.job([("tdnode0", 1)], "#!/bin/bash\necho script-uid=$(id -u)\n")
    r = sim.cluster.run(job)
    assert f"starter-uid=0 job={job.jobid}" in r.stdout
    assert "script-uid=0" in r.stdout        # what the setting really does: the job as root


def test_interactive_job_runs_the_shell_on_a_terminal(sim):
    typed = 'echo "tty=$(tty | cut -c1-8) env=$PBS_ENVIRONMENT argv0=$0"\nexit 4\n'
    r = sim.cluster.run(sim.job([("tdnode0", 1)], "", interactive=typed))
    assert "tty=/dev/pts env=PBS_INTERACTIVE argv0=-bash" in r.terminal, r.terminal
    assert r.exit_status == 4


# ----------------------------------------------------------------------------- TM tasks

def _pbsdsh(sim) -> str:
    path = sim.wd / "pbsdsh"
    path.write_text(momsim.pbsdsh_text())
    os.chmod(path, 0o755)
    return str(path)


def test_pbsdsh_spawns_tasks_by_name_on_the_job_path_as_the_user(sim):
    pbsdsh = _pbsdsh(sim)
    report = "echo task=$PBS_TASKNUM vnode=$PBS_VNODENUM node=$PBS_NODENUM env=$PBS_ENVIRONMENT " \
             "uid=$(id -u) cwd=$(pwd) sid=$(($(ps -o sid= $$)==$$)) nodefile=${PBS_NODEFILE:+yes}"
    script = f"""#!/bin/bash
{pbsdsh} -u sh -c '{report}'
{pbsdsh} -n 1 false
{pbsdsh} -n 0 no-such-program
{pbsdsh} -n 9 true
echo pbsdsh-exit=$?
"""
    r = sim.cluster.run(sim.job([("tdnode0", 2), ("tdnode1", 1)], script))
    lines = sorted(line for line in r.stdout.splitlines() if line.startswith("task="))
    assert [line.split()[1:] for line in lines] == [
        ["vnode=0", "node=0", "env=PBS_BATCH", f"uid={UID}", f"cwd=/home/{USER}", "sid=1", "nodefile=yes"],
        ["vnode=2", "node=1", "env=PBS_BATCH", f"uid={UID}", f"cwd=/home/{USER}", "sid=1", "nodefile="]], r.stdout
    assert len({line.split()[0] for line in lines}) == 2          # distinct task numbers
    assert "pbsdsh(): task 0 exit status 1" in r.stderr
    assert "PBS: no-such-program: No such file or directory" in r.stderr
    assert "pbsdsh(): task 0 exit status 254" in r.stderr
    assert "pbsdsh(): only 3 nodes available" in r.stderr and "pbsdsh-exit=1" in r.stdout
    assert [(t.node, t.vnode, t.status) for t in r.tasks][:2] in (
        [("tdnode0", 0, 0), ("tdnode1", 2, 0)], [("tdnode1", 2, 0), ("tdnode0", 0, 0)])


def test_a_tm_task_gets_none_of_the_descriptors_of_the_process_running_the_simulator(sim):
    """The simulator execs a task from subprocess's preexec_fn, before subprocess would apply
    close_fds: a descriptor this process holds without close-on-exec must still not reach it."""
    pbsdsh = _pbsdsh(sim)
    read_end, write_end = os.pipe()
    stray = os.dup2(write_end, 200, inheritable=True)
    try:
        task = 'find /proc/$$/fd -mindepth 1 -printf "fd %f -> %l\\n"'
        r = sim.cluster.run(sim.job([("tdnode0", 1)], f"#!/bin/bash\n{pbsdsh} -n 0 sh -c '{task}'\n"))
    finally:
        for fd in (read_end, write_end, stray):
            os.close(fd)
    fds = [line.split()[1] for line in r.stdout.splitlines() if line.startswith("fd ")]
    assert {"0", "1", "2"} <= set(fds), r.stdout + r.stderr
    assert str(stray) not in fds and not any("pipe:" in line for line in r.stdout.splitlines()), r.stdout


def test_tm_task_goes_through_the_job_starter_without_a_shell(make_sim):
    s = make_sim()
    starter = s.root / "starter.sh"
    starter.write_text(f"""#!/bin/sh
printf '%s\\0' "$0" "$@" >> {s.out}/starter-argv
[ -p /dev/stdin ] && echo pipe >> {s.out}/stdin-kind || echo other >> {s.out}/stdin-kind
exec "$@"
""")
    os.chmod(starter, 0o755)
    for node in ("tdnode0", "tdnode1"):
        with open(s.cluster.mom_priv(node) / "config", "a") as fh:
            fh.write(f"$job_starter {starter}\n")
    pbsdsh = _pbsdsh(s)
    r = s.cluster.run(s.job([("tdnode0", 1), ("tdnode1", 1)], f"#!/bin/bash\n{pbsdsh} -n 1 echo 'a b' c\n"))
    argvs = (s.out / "starter-argv").read_bytes().decode().split("\0")[:-1]
    assert argvs == [str(starter), "/bin/bash", str(starter), "echo", "a b", "c"]
    assert (s.out / "stdin-kind").read_text().split() == ["pipe", "other"]
    assert "a b c" in r.stdout and r.tasks[0].node == "tdnode1"


def test_qsub_takes_the_shell_from_S_command_line_first(sim):
    script = "#!/bin/sh\n#PBS -S /bin/sh\n" + SHELL_REPORT
    job = momsim.qsub(sim.cluster, script, [], user=USER, placement=[("tdnode0", 1)], cwd=str(sim.wd))
    assert job.shell == "/bin/sh"
    assert "exe=/usr/bin/dash SHELL=/bin/sh" in sim.cluster.run(job).stdout
    job = momsim.qsub(sim.cluster, script, ["-S", "/bin/zsh@tdnode9,/bin/bash"], user=USER,
                      placement=[("tdnode0", 1)], cwd=str(sim.wd))
    assert job.shell == "/bin/zsh@tdnode9,/bin/bash"
    assert "exe=/usr/bin/bash SHELL=/bin/bash" in sim.cluster.run(job).stdout


def test_tmpdir_made_as_the_user_before_the_prologues_and_removed_with_the_job(make_sim):
    """$tmpdir: TTmpDirName/TMakeTmpDir (start_exec.c, mom_comm.c), removed at purge."""
    s = make_sim(tmpdir=True)
    check = 'stat -c "%a %U" "$TMPDIR" > "$d/tmpdir"'
    s.hook("tdnode0", "prologue", extra=check)
    s.hook("tdnode1", "prologue.parallel", extra=check)
    job = s.job([("tdnode0", 1), ("tdnode1", 1)], "#!/bin/bash\necho \"JOB $TMPDIR\"\n")
    r = s.cluster.run(job)
    assert r.exit_status == 0, r.stderr
    for node, hook in (("tdnode0", "prologue"), ("tdnode1", "prologue.parallel")):
        dump = s.dump(node, hook)
        assert dump.env["TMPDIR"] == str(s.cluster.job_tmpdir(node, job.jobid))
        assert dump.text("tmpdir") == f"755 {USER}"
        assert not s.cluster.job_tmpdir(node, job.jobid).exists()
    assert f"JOB {s.cluster.job_tmpdir('tdnode0', job.jobid)}" in r.stdout


def test_no_tmpdir_unless_mom_has_one(sim):
    sim.hook("tdnode0", "prologue")
    r = sim.cluster.run(sim.job([("tdnode0", 1)]))
    assert r.exit_status == 0 and "TMPDIR" not in sim.dump("tdnode0", "prologue").env
    assert sim.cluster.job_tmpdir("tdnode0", "1.x") is None


def test_gpu_job_gets_the_gpu_file_and_indices_as_torque_gives_them(sim):
    """Facts "GPUs and the job file": aux/<jobid>gpu before the MS prologue, PBS_GPUFILE and
    CUDA_VISIBLE_DEVICES (all nodes' indices, in order) in the job, gpus= in $5."""
    sim.hook("tdnode0", "prologue", extra=f'cat "{sim.cluster.pbs_home("tdnode0")}/aux/$1gpu" > "$d/gpufile"')
    job = sim.job([("tdnode0", 1), ("tdnode1", 1)], "#!/bin/bash\necho \"GPUS $PBS_GPUFILE $CUDA_VISIBLE_DEVICES\"\n",
                  nodes_spec="tdnode0:ppn=1:gpus=1+tdnode1:ppn=1:gpus=2")
    r = sim.cluster.run(job)
    assert r.exit_status == 0, r.stderr
    assert sim.dump("tdnode0", "prologue").text("gpufile").split() == ["tdnode0-gpu0", "tdnode1-gpu1", "tdnode1-gpu0"]
    assert "nodes=tdnode0:ppn=1:gpus=1+tdnode1:ppn=1:gpus=2" in sim.dump("tdnode0", "prologue").argv[5]
    assert f"GPUS {sim.cluster.gpufile(job.jobid, 'tdnode0')} 0,1,0" in r.stdout
    assert not sim.cluster.gpufile(job.jobid, "tdnode0").exists()


def test_no_gpu_file_without_gpus(sim):
    sim.hook("tdnode0", "prologue", extra=f'ls "{sim.cluster.pbs_home("tdnode0")}/aux/" > "$d/aux"')
    job = sim.job([("tdnode0", 1)], "#!/bin/bash\necho \"GPUS [$PBS_GPUFILE] [$CUDA_VISIBLE_DEVICES]\"\n")
    r = sim.cluster.run(job)
    assert "GPUS [] []" in r.stdout and "gpu" not in sim.dump("tdnode0", "prologue").text("aux")


# ------------------------------------------------------------------------------ nodefile and job file

def _nodefile_and_env(sim, variables):
    sim.hook("tdnode0", "prologue")
    job = sim.job([("tdnode0", 2), ("tdnode1", 1)], variables=variables)
    sim.cluster.run(job)
    pro = sim.dump("tdnode0", "prologue")
    return pro.text("nodefile").split(), pro.env


def test_beowulf_job_map_replaces_the_nodefile_and_reaches_the_env(sim):
    """start_exec.c write_nodes_to_file: the job's own variable becomes the nodefile."""
    lines, env = _nodefile_and_env(sim, {"BEOWULF_JOB_MAP": "evil1:evil2::evil3"})
    assert lines == ["evil1", "evil2", "evil3"]              # strtok skips the empty field
    assert env["BEOWULF_JOB_MAP"] == "evil1:evil2::evil3"    # prolog.c passes it to the scripts


def test_a_variable_that_only_starts_like_beowulf_job_map_still_writes_the_nodefile(sim):
    """get_job_envvar is a prefix match, prolog.c's check is not: the prologue cannot see it."""
    lines, env = _nodefile_and_env(sim, {"BEOWULF_JOB_MAPX": "evil1:evil1"})
    assert lines == ["evil1", "evil1"]
    assert "BEOWULF_JOB_MAP" not in env and "BEOWULF_JOB_MAPX" not in env


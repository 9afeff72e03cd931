"""[gpus]: which GPUs a job got on a node (Torque's gpu file, a sister's choice), how they
are split among containers, what a container is started with, and every refusal."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from torque_docker import config, errors, gpus
from torque_docker.errors import ConfigError, NodeFault, PolicyError, TorqueDockerError
from torque_docker.runtime import ContainerSpec, Runtime


# ----------------------------------------------------------------------------- the request
def test_gpus_per_node_follow_the_request_in_node_order():
    assert gpus.per_node("2:ppn=4:gpus=2") == [2, 2]
    assert gpus.per_node("n1:ppn=2:gpus=1+n2:ppn=2") == [1, 0]
    assert gpus.per_node("3") == [0, 0, 0]
    assert gpus.requested("2:ppn=4:gpus=2+n9:gpus=3") == 7


@pytest.mark.parametrize("spec, expected", [
    ("2:ppn=4:gpus=2#excl", [2, 2]),               # Torque strips #excl and appends it to every request
    ("2:ppn=4:gpus=2#shared", [2, 2]),
    ("2:ppn=1#gpus=2", [2, 2]),                     # a global gpus= asks on every node
    ("n1:ppn=2+n2:ppn=2#gpus=1", [1, 1]),
    ("2:gpus=1+n3:gpus=2#excl", [1, 1, 2]),
    ("2:gpus=1#gpus=3", [3, 3]),                    # appended after: the last gpus= of a request counts
    ("2#gpus=2#gpus=3", [2, 2]),                    # the last global is appended first (mod_spec order)
    ("n1:gpus=1|n2:gpus=2", [1, 2]),
    ("gpus=2", [2]),                                # a request without a count or name is one node
    ("3#excl", [0, 0, 0]),
    ("n1::ppn=2", [0]),                             # no gpus=: the server judges the rest
    ("\u00b2:gpus=1", [1]),                          # not ASCII digits: a name (one node), never int()'s crash
])
def test_gpus_are_read_like_torque_reads_them(spec, expected):
    assert gpus.per_node(spec) == expected


@pytest.mark.parametrize("spec", ["2:gpus=2x", "2:gpus=", "2:gpus=-1", "2:gpus=0", "1:ppn=2#gpus=two", "n1+:gpus=1",
                                  "0:gpus=1", "2::gpus=1", "n1:gpus=1+", "2:gpus=1#", "2:gpus=\u00b2"])
def test_a_gpu_request_not_read_exactly_is_refused_as_the_users(spec):
    with pytest.raises(PolicyError, match="cannot read the GPUs") as info:
        gpus.refuse_requested({"nodes": spec}, "devices", "cgroup")
    assert info.value.user_error and not info.value.node_fault and "nodes=N:ppn=M:gpus=G" in info.value.fix


def test_globals_cannot_slip_gpus_past_the_sites_refusals():
    with pytest.raises(PolicyError, match="method = none"):
        gpus.refuse_requested({"nodes": "1:ppn=1#gpus=2"})
    with pytest.raises(PolicyError, match="sister = refuse"):
        gpus.refuse_requested({"nodes": "2:ppn=1#gpus=2"}, "devices", "refuse")
    with pytest.raises(PolicyError, match="sister = refuse"):
        gpus.refuse_requested({"nodes": "2:ppn=4:gpus=2#excl"}, "devices", "refuse")


def test_the_servers_neednodes_is_read_before_nodes():
    """The server allocates from neednodes (a scheduler may rewrite it), so the node order
    and counts are its; the plan's slot count reads the same."""
    from torque_docker.plan import local_slot_count
    both = {"nodes": "1:ppn=2", "neednodes": "n1:ppn=2+n2:ppn=3:gpus=1"}
    assert gpus.per_node(gpus.nodes_request(both)) == [0, 1]
    assert local_slot_count(1, both) == 3
    assert local_slot_count(1, {"nodes": "2#ppn=5"}) == 5


def test_the_site_without_gpus_refuses_a_gpu_job_as_the_users():
    with pytest.raises(PolicyError) as info:
        gpus.refuse_requested({"nodes": "1:ppn=1:gpus=1"})
    assert "[gpus] method = none" in info.value.message and info.value.user_error and not info.value.node_fault
    gpus.refuse_requested({"nodes": "1:ppn=1"})                                  # no GPUs: nothing to refuse
    with pytest.raises(PolicyError):                   # only neednodes (as the server may pass it)
        gpus.refuse_requested({"neednodes": "1:ppn=1:gpus=1"})
    gpus.refuse_requested({"nodes": "1:ppn=1:gpus=2"}, "devices", "refuse")     # the first node only: fine


def test_gpus_on_a_sister_are_refused_only_where_sisters_refuse():
    with pytest.raises(PolicyError, match=r"more than its first node.*sister = refuse"):
        gpus.refuse_requested({"nodes": "2:ppn=1:gpus=1"}, "devices", "refuse")
    with pytest.raises(PolicyError):
        gpus.refuse_requested({"nodes": "n1+n2:gpus=1"}, "nvidia-runtime", "refuse")
    for sister in ("whole-node", "cgroup"):
        gpus.refuse_requested({"nodes": "2:ppn=1:gpus=1"}, "devices", sister)


# ----------------------------------------------------------------------------- the config
def test_devices_are_a_pattern_or_a_list():
    assert gpus.parse_devices("/dev/nvidia%d") == (("/dev/nvidia%d", "/dev/nvidia%d"),)
    assert gpus.parse_devices("/srv/g%d:/dev/nvidia%d") == (("/srv/g%d", "/dev/nvidia%d"),)
    assert gpus.parse_devices("/dev/nvidia2 /dev/nvidia0") == (("/dev/nvidia2", "/dev/nvidia2"),
                                                              ("/dev/nvidia0", "/dev/nvidia0"))
    for bad, words in (("/dev/nvidia%d /dev/nvidia0", "not both"), ("/dev/nvidia%d:/dev/nvidia0", "once on each side"),
                       ("/dev/n%d%s", "no other %"), ("/dev/nvidia0 /srv/x:/dev/nvidia0", "given twice"),
                       ("/dev/nvidia%d:/opt/g%d", "under /dev"), ("dev/nvidia%d", "absolute")):
        with pytest.raises(ValueError, match=words):
            gpus.parse_devices(bad)


def test_driver_files_stay_out_of_the_containers_special_trees():
    assert gpus.parse_files("/usr/bin/nvidia-smi /opt/nv/lib:/usr/local/nvidia/lib") == (
        ("/usr/bin/nvidia-smi", "/usr/bin/nvidia-smi"), ("/opt/nv/lib", "/usr/local/nvidia/lib"))
    for bad in ("lib/x", "/usr/lib/../etc/shadow", "/x:/dev/x", "/x:/run/torque-docker/id", "/x:/proc/1", "/:/x",
                "/a:/x /b:/x"):
        with pytest.raises(ValueError):
            gpus.parse_files(bad)


def test_config_rejects_unknown_keys_and_a_devices_method_without_devices():
    with pytest.raises(ConfigError, match="unknown key 'count' in \\[gpus\\]"):
        config.parse_text("[gpus]\ncount = 4\n", "/etc/td.conf")
    with pytest.raises(ConfigError, match="method = devices needs \\[gpus\\] devices"):
        config.parse_text("[gpus]\nmethod = devices\ndevices =\n", "/etc/td.conf")
    assert config.defaults().gpus_method == "none"


# ----------------------------------------------------------------------------- stand-in GPUs
def fake(root: Path, count: int = 4) -> Path:
    dev = root / "dev"
    dev.mkdir()
    for i, minor in zip(range(count), (3, 5, 7, 8)):
        os.mknod(dev / f"nvidia{i}", 0o666 | stat.S_IFCHR, os.makedev(1, minor))
    os.mknod(dev / "nvidiactl", 0o666 | stat.S_IFCHR, os.makedev(1, 9))
    return dev


def cfg_for(dev: Path, method: str = "devices", sister: str = "refuse") -> config.Config:
    return config.parse_text(f"[paths]\nstate_dir = {dev.parent / 'state'}\n"
                             f"[network]\nnode_name = n1\n[gpus]\nmethod = {method}\n"
                             f"devices = {dev}/nvidia%d:/dev/nvidia%d\nshared_devices = {dev}/nvidiactl:/dev/nvidiactl\n"
                             f"sister = {sister}\n")


def test_a_pattern_counts_the_gpus_from_0_to_the_first_missing(tmp_path):
    dev = fake(tmp_path, 3)
    (dev / "nvidia4").write_text("not a device")
    found = gpus.node_gpus(((f"{dev}/nvidia%d", "/dev/nvidia%d"),))
    assert found == tuple((f"{dev}/nvidia{i}", f"/dev/nvidia{i}") for i in range(3))


# ----------------------------------------------------------------------------- the MS's gpu file
def gpu_file(path: Path, text: str, mode: int = 0o644) -> str:
    path.write_text(text)
    os.chmod(path, mode)
    return str(path)


def test_the_gpu_file_gives_this_nodes_gpus_only(tmp_path):
    path = gpu_file(tmp_path / "1.srvgpu", "n1-gpu3\nn10-gpu0\nn1-gpu/1\n\nnode-n1-gpu2\n")
    assert gpus.read_gpu_file(path, "n1") == [3, 1]
    assert gpus.read_gpu_file(path, "n1.cluster.example") == [3, 1]      # the short name is Torque's


@pytest.mark.parametrize("text,words", [
    ("n1-gpu0\nrm -rf /\n", "line 2"),
    ("n1-gpu0\nn1-gpu0\n", "GPU 0 of n1 twice"),
    ("n1-gpu99999\n", "line 1"),
    ("n1-gpu-1\n", "line 1"),
])
def test_a_malformed_gpu_file_is_the_nodes_fault(tmp_path, text, words):
    with pytest.raises(NodeFault, match=words) as info:
        gpus.read_gpu_file(gpu_file(tmp_path / "g", text), "n1")
    assert not info.value.user_error


def test_the_gpu_file_is_read_without_following_links_and_only_when_roots_alone(tmp_path):
    real = gpu_file(tmp_path / "real", "n1-gpu0\n")
    os.symlink(real, tmp_path / "link")
    with pytest.raises(NodeFault, match="cannot open"):
        gpus.read_gpu_file(str(tmp_path / "link"), "n1")
    with pytest.raises(NodeFault, match="only root"):
        gpus.read_gpu_file(gpu_file(tmp_path / "w", "n1-gpu0\n", 0o666), "n1")
    os.chown(real, 65534, 65534)
    with pytest.raises(NodeFault, match="only root"):
        gpus.read_gpu_file(real, "n1")
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(NodeFault):                     # opened without blocking, then refused
        gpus.read_gpu_file(str(tmp_path / "fifo"), "n1")
    with pytest.raises(NodeFault, match="wrote no gpu file"):
        gpus.read_gpu_file(str(tmp_path / "none"), "n1")


# ----------------------------------------------------------------------------- a sister's cgroup
def test_an_allow_list_cgroup_names_the_jobs_gpus_by_major_minor(tmp_path):
    dev = fake(tmp_path)
    here = gpus.node_gpus(((f"{dev}/nvidia%d", "/dev/nvidia%d"),))
    job = tmp_path / "cg" / "7.srv"
    job.mkdir(parents=True)
    (job / "devices.list").write_text("c 1:3 rwm\nc 1:8 rwm\nc 195:255 rwm\nb 8:0 r\n")
    assert gpus.read_cgroup("7.srv", here, [str(tmp_path / "cg")]) == [0, 3]
    with pytest.raises(TorqueDockerError, match="not there") as info:     # the job's only: a qdel can do that
        gpus.read_cgroup("8.srv", here, [str(tmp_path / "cg")])
    assert "--enable-cgroups" in info.value.fix and not info.value.node_fault
    with pytest.raises(NodeFault, match="is missing"):                     # no Torque cgroups at all: the node's
        gpus.read_cgroup("8.srv", here, [str(tmp_path / "no-cg")])


def test_a_multi_mom_cgroup_carries_the_port(tmp_path):
    """A pbs_mom in multi-mom mode names the job's cgroup <jobid>.<port>: found when the
    plain name is not there; two ports' cgroups of one job are refused, as no node's fault."""
    dev = fake(tmp_path)
    here = gpus.node_gpus(((f"{dev}/nvidia%d", "/dev/nvidia%d"),))
    root = tmp_path / "cg"
    (root / "7.srv.15003").mkdir(parents=True)
    (root / "7.srv.15003" / "devices.list").write_text("c 1:5 rwm\n")
    (root / "17.srv.15003").mkdir()                          # another job's: never taken for 7.srv
    (root / "17.srv.15003" / "devices.list").write_text("c 1:3 rwm\n")
    assert gpus.read_cgroup("7.srv", here, [str(root)]) == [1]
    (root / "7.srv").mkdir()                                 # the plain name wins
    (root / "7.srv" / "devices.list").write_text("c 1:8 rwm\n")
    assert gpus.read_cgroup("7.srv", here, [str(root)]) == [3]
    (root / "7.srv" / "devices.list").unlink()
    (root / "7.srv").rmdir()
    (root / "7.srv.15004").mkdir()
    with pytest.raises(TorqueDockerError, match="several ports") as info:
        gpus.read_cgroup("7.srv", here, [str(root)])
    assert not info.value.node_fault
    with pytest.raises(NodeFault):
        gpus.read_cgroup("../7.srv", here, [str(tmp_path / "cg")])


def deny_style(tmp_path: Path, count: int = 3):
    dev = fake(tmp_path, count)
    here = gpus.node_gpus(((f"{dev}/nvidia%d", "/dev/nvidia%d"),))
    job = tmp_path / "cg" / "7.srv"
    job.mkdir(parents=True)
    (job / "devices.list").write_text("a *:* rwm\n")
    (job / "tasks").write_text("")
    return here, job, gpus.probe_dir(str(tmp_path / "state"))


def test_torques_deny_style_cgroup_is_probed_from_inside_it(tmp_path):
    """Torque denies the other GPUs (devices.deny) and the kernel lists only 'a *:* rwm': a
    child joins the cgroup (writes its pid to tasks) and tries mknod of each GPU. Here the
    cgroup is a stand-in directory (this machine has no cgroup v1 devices controller), so
    the child may make every node: what is tested is the plumbing, the denial is the kernel's."""
    here, job, where = deny_style(tmp_path)
    assert stat.S_IMODE(os.stat(where).st_mode) == 0o700 and os.stat(where).st_uid == os.geteuid()
    assert gpus.read_cgroup("7.srv", here, [str(tmp_path / "cg")], where=where) == [0, 1, 2]
    assert (job / "tasks").read_text().isdigit()          # the child joined it, not the hook
    assert os.listdir(where) == []                        # every node it made is gone
    (job / "tasks").unlink()
    (job / "tasks").mkdir()         # joining fails: nobody's proven fault (a qdel removes the cgroup)
    with pytest.raises(TorqueDockerError, match="cannot look into Torque's devices cgroup of job 7.srv") as info:
        gpus.read_cgroup("7.srv", here, [str(tmp_path / "cg")], where=where)
    assert not info.value.node_fault and not info.value.user_error


def test_the_cgroup_probe_never_works_in_the_job_users_tmpdir(tmp_path, monkeypatch):
    """pbs_mom gives the prologue TMPDIR=<the job user's directory>: root's probe must not make
    (or unlink) anything there, nor follow a link planted for it; the child gets no
    environment of the hook's, runs in /, and ignores PYTHON* variables (-I)."""
    here, job, where = deny_style(tmp_path)
    users = tmp_path / "users-tmp"
    users.mkdir(mode=0o777)
    os.chmod(users, 0o1777)
    monkeypatch.setenv("TMPDIR", str(users))
    monkeypatch.setenv("PYTHONPATH", str(users))
    seen = []
    real_run = subprocess.run

    def spy(argv, **kwargs):
        seen.append((argv, kwargs))
        return real_run(argv, **kwargs)
    monkeypatch.setattr(subprocess, "run", spy)
    assert gpus.read_cgroup("7.srv", here, [str(tmp_path / "cg")], where=where) == [0, 1, 2]
    assert os.listdir(users) == []
    (argv, kwargs), = seen
    assert argv[1:4] == ["-I", "-S", "-c"] and argv[5:7] == [str(job / "tasks"), where]
    assert kwargs["env"] == {"PATH": "/bin:/usr/bin"} and kwargs["cwd"] == "/"
    # The directory must be root's alone, and is not followed when it is a link.
    os.rmdir(where)
    os.symlink(users, where)
    with pytest.raises(TorqueDockerError, match="probe directory") as info:
        gpus.read_cgroup("7.srv", here, [str(tmp_path / "cg")], where=where)
    assert not info.value.node_fault and os.listdir(users) == []
    os.unlink(where)
    assert stat.S_IMODE(os.stat(gpus.probe_dir(str(tmp_path / "state"))).st_mode) == 0o700
    os.chmod(where, 0o755)
    with pytest.raises(TorqueDockerError, match="not a directory of root's alone"):
        gpus.read_cgroup("7.srv", here, [str(tmp_path / "cg")], where=where)


def test_only_eperm_from_mknod_means_denied(tmp_path, monkeypatch):
    """EPERM is the cgroup's no. Without the right to mknod at all (here: the child runs as
    nobody, so even the control /dev/null is refused) the probe says nothing: a failure, no
    GPU taken as denied. Any other error of the child is a failure that is nobody's proven
    fault, even words like 'read-only file system' (never a sister's node-down)."""
    import pwd
    nobody = pwd.getpwnam("nobody")
    here, _, _ = deny_style(tmp_path)
    where = tempfile.mkdtemp(prefix="probe-")          # pytest's own directories are root's 0700
    try:
        os.chown(where, nobody.pw_uid, nobody.pw_gid)
        as_nobody = dict(user=nobody.pw_uid, group=nobody.pw_gid, capture_output=True, text=True, cwd="/")
        done = subprocess.run([sys.executable, "-I", "-S", "-c", gpus._PROBE, "/dev/null", where, "1:3", "1:5"],
                              **as_nobody)
        assert done.returncode == 0 and done.stdout.split() == []      # EPERM: denied, nothing made
        assert os.listdir(where) == []
        real_run = subprocess.run
        monkeypatch.setattr(subprocess, "run", lambda argv, **kw: real_run(
            argv[:5] + ["/dev/null"] + argv[6:], **{**kw, **as_nobody}))
        with pytest.raises(TorqueDockerError, match="even /dev/null's number may not be made") as info:
            gpus.read_cgroup("7.srv", here, [str(tmp_path / "cg")], where=where)
        assert not info.value.node_fault
    finally:
        os.rmdir(where)
    failed = subprocess.CompletedProcess([], 4, "", "mknod 1:5: [Errno 30] Read-only file system\n")
    monkeypatch.setattr(subprocess, "run", lambda argv, **kw: failed)
    with pytest.raises(TorqueDockerError, match="Read-only file system") as info:
        gpus.read_cgroup("7.srv", here, [str(tmp_path / "cg")], where=where)
    assert not info.value.node_fault and not errors.is_node_fault(info.value)
    answered = subprocess.CompletedProcess([], 0, "0 9\n", "")          # a position it was never given
    monkeypatch.setattr(subprocess, "run", lambda argv, **kw: answered)
    with pytest.raises(TorqueDockerError, match="cannot look into"):
        gpus.read_cgroup("7.srv", here, [str(tmp_path / "cg")], where=where)


# ----------------------------------------------------------------------------- shares
def test_gpus_are_split_among_containers_in_slot_order_as_evenly_as_possible():
    assert gpus.split([0, 1, 2, 3], 2) == [(0, 1), (2, 3)]
    assert gpus.split([0, 1, 2], 2) == [(0,), (1, 2)]
    assert gpus.split([4, 5], 1) == [(4, 5)]
    assert gpus.split([0, 1], 3) == [(0,), (0,), (1,)]        # fewer GPUs: shared, each container one
    assert gpus.split([0, 1, 2, 3], 4) == [(0,), (1,), (2,), (3,)]
    assert gpus.split([], 2) == [(), ()]


def test_shares_by_method():
    here = tuple((f"/h/nvidia{i}", f"/dev/nvidia{i}") for i in range(4))
    shared = (("/h/ctl", "/dev/nvidiactl"),)
    one, two = gpus.shares("devices", here, shared, [1, 2, 3], 2)
    assert one.devices == (here[1], shared[0]) and one.device_ids == ()
    assert two.devices == (here[2], here[3], shared[0])
    assert two.env == {"CUDA_VISIBLE_DEVICES": "0,1", "NVIDIA_VISIBLE_DEVICES": "void"}
    (runtime,) = gpus.shares("nvidia-runtime", here, shared, [2, 3], 1)
    assert runtime.devices == () and runtime.device_ids == ("2", "3")
    assert runtime.env == {"CUDA_VISIBLE_DEVICES": "0,1", "NVIDIA_VISIBLE_DEVICES": "2,3"}
    assert gpus.shares("devices", here, shared, [], 2) == [gpus.NO_GPUS, gpus.NO_GPUS]
    assert gpus.NO_GPUS.env == {"NVIDIA_VISIBLE_DEVICES": "void"} and not gpus.NO_GPUS.devices


def for_node(cfg, nodes: str, tmp_path: Path, *, ms: bool = True, index: int = 0, text: str = "", containers: int = 1):
    path = tmp_path / "aux" / "9.srvgpu"
    path.parent.mkdir(exist_ok=True)
    if text:
        gpu_file(path, text)
    return gpus.for_node(cfg, {"nodes": nodes}, is_ms=ms, node_index=index, jobid="9.srv", gpu_file=str(path),
                         containers=containers)


def test_the_ms_gives_the_gpus_torque_chose_in_host_order(tmp_path):
    cfg = cfg_for(fake(tmp_path))
    got = for_node(cfg, "n1:ppn=2:gpus=2", tmp_path, text="n1-gpu3\nn1-gpu1\nn2-gpu0\n", containers=2)
    assert [s.indices for s in got] == [(1,), (3,)]
    assert got[0].devices == ((f"{tmp_path}/dev/nvidia1", "/dev/nvidia1"), (f"{tmp_path}/dev/nvidiactl", "/dev/nvidiactl"))
    assert for_node(cfg, "n1:ppn=2", tmp_path, containers=2) == [gpus.NO_GPUS, gpus.NO_GPUS]


class Said:
    def __init__(self):
        self.lines = []

    def warning(self, jobid, message):
        self.lines.append((jobid, message))


def test_the_ms_refuses_what_its_node_cannot_have(tmp_path):
    cfg = cfg_for(fake(tmp_path, 2))
    with pytest.raises(NodeFault, match="GPU 3 of n1, which has GPU device nodes for 2"):
        for_node(cfg, "n1:gpus=1", tmp_path, text="n1-gpu3\n")
    (tmp_path / "dev" / "nvidiactl").unlink()
    with pytest.raises(NodeFault, match="nvidiactl \\(\\[gpus\\] shared_devices\\) is missing here"):
        for_node(cfg, "n1:gpus=1", tmp_path, text="n1-gpu0\n")


def test_the_gpu_file_is_torques_choice_whatever_the_request_says(tmp_path):
    """The request is the user's text (and the resource list can be cut): a count other than
    the gpu file's is never the node's fault; the job gets the file's GPUs, and it is logged.
    A file naming none of this node's GPUs is nobody's proven fault."""
    cfg = cfg_for(fake(tmp_path, 2))
    said = Said()
    path = tmp_path / "aux" / "9.srvgpu"
    path.parent.mkdir()
    gpu_file(path, "n1-gpu1\n")
    got = gpus.for_node(cfg, {"nodes": "n1:gpus=2"}, is_ms=True, node_index=0, jobid="9.srv", gpu_file=str(path),
                        containers=1, log=said)
    assert [s.indices for s in got] == [(1,)]
    assert said.lines == [("9.srv", "the job asks for 2 GPU(s) on n1, and the gpu file pbs_mom wrote gives it 1 (1): "
                                    "it gets those")]
    gpu_file(path, "n2-gpu0\n")
    with pytest.raises(TorqueDockerError, match="gives it none") as info:
        for_node(cfg, "n1:gpus=2", tmp_path)
    assert not info.value.node_fault and not info.value.user_error and "node_name" in info.value.fix


def test_a_sister_with_whole_node_takes_all_or_refuses(tmp_path):
    cfg = cfg_for(fake(tmp_path, 2), sister="whole-node")
    got = for_node(cfg, "2:ppn=1:gpus=2", tmp_path, ms=False, index=1)
    assert [s.indices for s in got] == [(0, 1)]
    with pytest.raises(PolicyError, match="asks for 1 GPU\\(s\\) on node n1, which has 2") as info:
        for_node(cfg, "2:ppn=1:gpus=1", tmp_path, ms=False, index=1)
    assert "gpus=2" in info.value.fix
    assert for_node(cfg, "n0:gpus=2+n1", tmp_path, ms=False, index=1) == [gpus.NO_GPUS]   # none asked here


def test_the_ms_says_why_a_sisters_container_may_be_missing(tmp_path):
    cfg = cfg_for(fake(tmp_path, 2), sister="whole-node")
    assert "asks for all of that node's GPUs" in gpus.sister_hint(cfg, {"nodes": "2:ppn=1:gpus=1"})
    assert gpus.sister_hint(cfg, {"nodes": "n1:gpus=1+n2"}) == ""           # no GPUs on a sister
    assert gpus.sister_hint(cfg_for(tmp_path / "dev", sister="cgroup"), {"nodes": "2:gpus=1"}) == ""


def test_a_sister_with_cgroup_reads_torques_cgroup(tmp_path, monkeypatch):
    cfg = cfg_for(fake(tmp_path), sister="cgroup")
    job = tmp_path / "cg" / "9.srv"
    job.mkdir(parents=True)
    (job / "devices.list").write_text("c 1:5 rwm\nc 1:7 rwm\n")
    monkeypatch.setattr(gpus, "DEVICES_ROOTS", (str(tmp_path / "cg"),))
    got = for_node(cfg, "2:ppn=2:gpus=2", tmp_path, ms=False, index=1, containers=2)
    assert [s.indices for s in got] == [(1,), (2,)]
    (job / "devices.list").write_text("c 1:5 rwm\n")              # fewer than asked: what Torque allows
    got = for_node(cfg, "2:ppn=2:gpus=2", tmp_path, ms=False, index=1, containers=2)
    assert [s.indices for s in got] == [(1,), (1,)]
    (job / "devices.list").write_text("c 1:1 rwm\n")              # none: nobody's proven fault
    with pytest.raises(TorqueDockerError, match="Torque's devices cgroup gives it none") as info:
        for_node(cfg, "2:ppn=2:gpus=2", tmp_path, ms=False, index=1)
    assert not info.value.node_fault
    monkeypatch.setattr(gpus, "DEVICES_ROOTS", (str(tmp_path / "none"),))
    with pytest.raises(NodeFault, match="devices cgroup of job 9.srv is not there"):
        for_node(cfg, "2:ppn=2:gpus=2", tmp_path, ms=False, index=1)


def test_driver_files_must_be_roots_alone(tmp_path):
    real = os.path.realpath(sys.executable)
    assert gpus.driver_binds(((sys.executable, "/usr/bin/python3-x"),)) == [(real, "/usr/bin/python3-x", True)]
    mine = tmp_path / "libcuda.so.1"
    mine.write_text("")
    with pytest.raises(NodeFault, match="is not root's alone"):      # /tmp (or the test dir) is others' to write
        gpus.driver_binds(((str(mine), str(mine)),))
    with pytest.raises(NodeFault, match="missing here"):
        gpus.driver_binds((("/usr/lib/no-such-libcuda.so", "/usr/lib/x"),))


def test_a_driver_directory_is_checked_to_its_last_entry(tmp_path, monkeypatch):
    """A root 0755 directory that holds a 0666 library is not root's alone: every entry,
    by lstat, and a bounded number of them. (The tree is under pytest's directory, whose
    ancestors include /tmp, so the walk is called as driver_binds calls it.)"""
    walked = []
    monkeypatch.setattr(gpus, "_check_tree", lambda host, real: walked.append((host, real)))
    assert gpus.driver_binds((("/etc", "/x"),)) == [("/etc", "/x", True)] and walked == [("/etc", "/etc")]
    monkeypatch.undo()
    top = tmp_path / "drv"
    (top / "sub").mkdir(parents=True)
    os.chmod(top, 0o755)
    lib = top / "sub" / "libcuda.so.1"
    lib.write_text("")
    os.chmod(lib, 0o644)
    os.symlink("libcuda.so.1", top / "sub" / "libcuda.so")                 # resolves inside the container
    gpus._check_tree(str(top), str(top))
    os.chmod(lib, 0o666)
    with pytest.raises(NodeFault, match=r"libcuda.so.1 is not root's alone \(owner uid 0, mode 666\)"):
        gpus._check_tree(str(top), str(top))
    os.chmod(lib, 0o644)
    os.chown(lib, 65534, 0)
    with pytest.raises(NodeFault, match="not root's alone"):
        gpus._check_tree(str(top), str(top))
    os.chown(lib, 0, 0)
    os.chmod(top / "sub", 0o775)
    with pytest.raises(NodeFault, match="sub is not root's alone"):
        gpus._check_tree(str(top), str(top))
    os.chmod(top / "sub", 0o755)
    os.mkfifo(top / "sub" / "fifo")
    with pytest.raises(NodeFault, match="neither a file, a directory nor a link"):
        gpus._check_tree(str(top), str(top))
    os.unlink(top / "sub" / "fifo")
    monkeypatch.setattr(gpus, "MAX_TREE", 2)
    with pytest.raises(NodeFault, match="more than 2 entries"):
        gpus._check_tree(str(top), str(top))


def test_every_login_gets_its_containers_gpu_variables(tmp_path):
    text = gpus.env_file_text(["j-n0-s0", "j-n0-s1", "j-n0-s2"],
                              [gpus.Share(env={"CUDA_VISIBLE_DEVICES": "0,1", "NVIDIA_VISIBLE_DEVICES": "2,3"}),
                               gpus.Share(env={"CUDA_VISIBLE_DEVICES": "0"}), gpus.NO_GPUS])
    (tmp_path / "gpus.env").write_text(text)
    script = f'. {tmp_path}/gpus.env; echo "${{CUDA_VISIBLE_DEVICES-unset}} ${{NVIDIA_VISIBLE_DEVICES-unset}}"'
    seen = [subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, check=True,
                           env={"TORQUE_DOCKER_ALIAS": alias, "CUDA_VISIBLE_DEVICES": "7",
                                "NVIDIA_VISIBLE_DEVICES": "all"}).stdout.strip()
            for alias in ("j-n0-s0", "j-n0-s1", "j-n0-s2")]
    assert seen == ["0,1 2,3", "0 unset", "unset void"]


def test_the_starter_gives_the_batch_script_its_containers_gpu_variables():
    from torque_docker import starter
    from torque_docker.records import StarterInfo
    record = StarterInfo(alias="j-n0-s0", gpu_env=("j-n0-s0 CUDA_VISIBLE_DEVICES=0", "j-n0-s0 NVIDIA_VISIBLE_DEVICES=void",
                                                   "j-n0-s1 CUDA_VISIBLE_DEVICES=0,1"))
    env = starter.container_env(record, {"CUDA_VISIBLE_DEVICES": "3,1", "HOME": "/h"})
    assert env["CUDA_VISIBLE_DEVICES"] == "0" and env["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert starter.container_env(record, {}, "j-n0-s1")["CUDA_VISIBLE_DEVICES"] == "0,1"     # a TM task's container
    env = starter.container_env(StarterInfo(alias="j-n0-s0"), {"CUDA_VISIBLE_DEVICES": "3,1", "HOME": "/h"})
    assert "CUDA_VISIBLE_DEVICES" not in env                   # the host's numbering never goes in
    assert "CUDA_VISIBLE_DEVICES" not in starter.env_file_text({"CUDA_VISIBLE_DEVICES": "3", "X": "1"})
    # the record keeps them through JSON, as the prologue writes it and the starter reads it
    assert StarterInfo.from_json(record.to_json()).gpu_vars("j-n0-s1") == {"CUDA_VISIBLE_DEVICES": "0,1"}


# ----------------------------------------------------------------------------- what Docker is asked for
class FakeEngine:
    """Docker's Engine API as runtime.py calls it (engine.py): what a container is created with."""

    def __init__(self) -> None:
        self.config: dict = {}

    def create(self, config, name=None):
        self.config = dict(config)
        return "abc"

    def start(self, ident):
        pass


def started_with(spec: ContainerSpec) -> dict:
    runtime = Runtime("unix:///nonexistent/docker.sock", 5)
    runtime.engine = FakeEngine()        # type: ignore[assignment]
    assert runtime.start(spec) == "abc"
    return runtime.engine.config


def test_the_nvidia_runtime_gets_a_device_request_for_exactly_the_containers_gpus():
    """Not tried against a real NVIDIA runtime: this is what docker run --gpus '"device=2,3"' sends."""
    base = ContainerSpec(image="i", name="n", hostname="h", command=("sshd",), user="1:1", group_add=(),
                         labels={}, binds=())
    kwargs = started_with(ContainerSpec(**{**base.__dict__, "gpu_ids": ("2", "3"),
                                           "env": (("CUDA_VISIBLE_DEVICES", "0,1"), ("NVIDIA_VISIBLE_DEVICES", "2,3"))}))
    (request,) = kwargs["HostConfig"]["DeviceRequests"]
    assert request["Driver"] == "nvidia" and request["DeviceIDs"] == ["2", "3"] and request["Capabilities"] == [["gpu"]]
    assert request["Count"] == 0          # the ids, never "all"
    assert kwargs["Env"] == ["CUDA_VISIBLE_DEVICES=0,1", "NVIDIA_VISIBLE_DEVICES=2,3"]
    plain = started_with(ContainerSpec(**{**base.__dict__, "env": (("NVIDIA_VISIBLE_DEVICES", "void"),),
                                          "devices": (("/h/nvidia1", "/dev/nvidia1"),)}))
    assert "DeviceRequests" not in plain["HostConfig"]
    assert plain["HostConfig"]["Devices"] == [{"PathOnHost": "/h/nvidia1", "PathInContainer": "/dev/nvidia1",
                                               "CgroupPermissions": "rwm"}]
    assert plain["Env"] == ["NVIDIA_VISIBLE_DEVICES=void"]


def test_an_nvidia_hook_that_fails_on_the_image_is_no_node_fault():
    """nvidia-container-cli mounts the driver into the image's file system, so the image can
    make it fail with the node-trouble words ('read-only file system'): a ContainerFault
    (requeue, bounded), never a sister's node-down."""
    from torque_docker.engine import EngineError
    from torque_docker.errors import ContainerFault
    text = ("OCI runtime create failed: error running hook #0: error running hook: exit status 1, stderr: "
            "nvidia-container-cli: mount error: file creation failed: /merged/usr/lib64/libcuda.so.1: "
            "read-only file system: unknown")

    class Refusing(FakeEngine):
        def start(self, ident):
            raise EngineError(500, text)

        def remove(self, ident, **kwargs):
            raise EngineError(404, "gone")
    runtime = Runtime("unix:///nonexistent/docker.sock", 5)
    runtime.engine = Refusing()          # type: ignore[assignment]
    spec = ContainerSpec(image="i", name="n", hostname="h", command=("sshd",), user="1:1", group_add=(),
                         labels={}, binds=(), gpu_ids=("0",))
    with pytest.raises(ContainerFault, match="an OCI hook failed") as info:
        runtime.start(spec)
    assert not errors.is_node_fault(info.value) and "nvidia-smi" in info.value.fix
    text = "error running hook #0: nvidia-container-cli: ldcache error: open /etc/ld.so.cache: no such file or directory"
    with pytest.raises(ContainerFault, match="an OCI hook failed"):     # not "the image has no sshd"
        runtime.start(spec)


def test_check_describes_the_method(tmp_path):
    dev = fake(tmp_path, 2)
    cfg = cfg_for(dev, sister="cgroup")
    assert gpus.describe(cfg) == (f"GPUs: method devices, sisters: cgroup; 2 GPU(s): {dev}/nvidia0 {dev}/nvidia1; "
                                  f"shared: {dev}/nvidiactl; driver files: none")
    gpus.check_node(cfg)
    assert gpus.describe(config.defaults()) == "GPUs: method none (GPU jobs are refused)"
    monkey = cfg_for(dev, method="nvidia-runtime")
    if not any(os.access(os.path.join(d, gpus.HOOK), os.X_OK) for d in gpus.HOOK_DIRS):
        with pytest.raises(NodeFault, match="nvidia-container-runtime-hook is not installed"):
            gpus.check_node(monkey)


def test_check_compares_nvml_indices_with_torques_numbers(tmp_path, monkeypatch):
    """nvidia-runtime hands Docker NVML indices; Torque numbers GPUs by /dev/nvidiaN's minor.
    check says so, and FAILs where nvidia-smi shows they differ."""
    dev = fake(tmp_path, 2)
    cfg = cfg_for(dev, method="nvidia-runtime")
    assert "nvidia-smi -q | grep -i 'minor number'" in gpus.describe(cfg)
    monkeypatch.setattr(os, "access", lambda path, mode: True)            # the hook "installed"
    monkeypatch.setattr(gpus, "smi_index_minors", lambda: [(0, 0), (1, 1)])
    gpus.check_node(cfg)
    monkeypatch.setattr(gpus, "smi_index_minors", lambda: None)             # nothing to compare with
    gpus.check_node(cfg)
    monkeypatch.setattr(gpus, "smi_index_minors", lambda: [(0, 1), (1, 0)])
    with pytest.raises(NodeFault, match="NVML's GPU 0 is /dev/nvidia1") as info:
        gpus.check_node(cfg)
    assert "method = devices" in info.value.fix



def test_nvidia_smis_answer_is_read_or_ignored(tmp_path, monkeypatch):
    smi = tmp_path / "nvidia-smi"
    monkeypatch.setattr(gpus, "HOOK_DIRS", (str(tmp_path),))
    assert gpus.smi_index_minors() is None                                  # not installed
    smi.write_text("#!/bin/sh\nprintf '0, 1\\n1, 0\\n'\n")
    smi.chmod(0o755)
    assert gpus.smi_index_minors() == [(0, 1), (1, 0)]
    smi.write_text("#!/bin/sh\necho 'NVIDIA-SMI has failed'; exit 9\n")
    assert gpus.smi_index_minors() is None

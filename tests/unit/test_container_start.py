"""The pure parts of the container start path a hostile user or image aims at: pinning a
path without following links, the image's /etc/group read the way Docker reads it, the
ids a container process must have, a tarball stream with its tags taken out, what a VOLUME
becomes, and a forbidden set that follows the configured Docker endpoint.

Each test failed on the code before these defences existed (the functions did not exist,
or the policy accepted what is refused here)."""
from __future__ import annotations

import io
import json
import os
import tarfile

import pytest

from torque_docker import config, hostpath, lifecycle, policy, render
from torque_docker.errors import ImageError, PolicyError, RequestError
from torque_docker.identity import UserInfo, ids_problem
from torque_docker.request import Mount
from torque_docker.runtime import untagged_tar


# ----------------------------------------------------------------------------- pinning
def test_pin_follows_no_link_and_opens_no_fifo(tmp_path):
    (tmp_path / "real" / "sub").mkdir(parents=True)
    (tmp_path / "real" / "image.tar").write_bytes(b"tar")
    os.symlink(tmp_path / "real", tmp_path / "link")
    os.symlink("/run", tmp_path / "real" / "to-run")
    os.mkfifo(tmp_path / "real" / "pipe.tar")
    pinned = hostpath.pin(str(tmp_path / "real" / "sub"))
    try:
        assert (pinned.dev, pinned.ino) == (os.stat(tmp_path / "real" / "sub").st_dev,
                                            os.stat(tmp_path / "real" / "sub").st_ino)
        assert os.readlink(pinned.proc_path) == str(tmp_path / "real" / "sub")
    finally:
        pinned.close()
    tarball = hostpath.pin(str(tmp_path / "real" / "image.tar"), "file")
    try:
        assert os.read(tarball.fd, 10) == b"tar"
    finally:
        tarball.close()
    for path, kind in ((tmp_path / "link" / "sub", "dir"), (tmp_path / "real" / "to-run", "dir"),
                       (tmp_path / "link" / "image.tar", "file"), (tmp_path / "real" / "pipe.tar", "file"),
                       (tmp_path / "real" / "sub", "file"), (tmp_path / "real" / "image.tar", "dir")):
        with pytest.raises(hostpath.PathChanged) as info:   # a FIFO open would block here
            hostpath.pin(str(path), kind)
        assert info.value.user_error and info.value.fix


def test_job_binds_refuse_a_directory_swapped_after_the_check(tmp_path, monkeypatch):
    """check_workdir resolves the path; if it is a symlink by the time it is pinned, refuse."""
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    user = UserInfo("alice", 1000, 1000, str(home), "/bin/sh", "", (("alice", 1000),))
    monkeypatch.setattr(lifecycle, "reachable_dirs", lambda user, paths: tuple(True for _ in paths))
    real_check = policy.check_workdir

    def check_then_swap(workdir, forbidden=policy.FORBIDDEN_SOURCES):
        real = real_check(workdir, forbidden)
        os.rename(work, tmp_path / "work.real")
        os.symlink("/run", work)
        return real

    monkeypatch.setattr(policy, "check_workdir", check_then_swap)
    with pytest.raises(hostpath.PathChanged):
        lifecycle.job_binds(user, str(work), [], tmp_path / "ctr")


def test_job_binds_hold_the_checked_objects(tmp_path, monkeypatch):
    home, data = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    data.mkdir()
    user = UserInfo("alice", 1000, 1000, str(home), "/bin/sh", "", (("alice", 1000),))
    seen = []
    monkeypatch.setattr(lifecycle, "reachable_dirs", lambda user, paths: seen.extend(paths) or tuple(True for _ in paths))
    binds = lifecycle.job_binds(user, "", [Mount(str(data), "/data", True)], tmp_path / "ctr")
    try:
        pinned = [b for b in binds if b.pin is not None]
        assert [(b[0], b[1], b[2]) for b in pinned] == [(str(home), str(home), False), (str(data), "/data", True)]
        assert seen == [b.pin for b in pinned]             # the user is asked about the same objects
        for bind in pinned:
            assert (bind.pin.dev, bind.pin.ino) == (os.stat(bind[0]).st_dev, os.stat(bind[0]).st_ino)
    finally:
        hostpath.close_all([b.pin for b in binds])


def test_a_bad_site_mount_is_the_admins_error_not_the_users(tmp_path, monkeypatch):
    from torque_docker.errors import ConfigError
    home = tmp_path / "home"
    home.mkdir()
    user = UserInfo("alice", 1000, 1000, str(home), "/bin/sh", "", (("alice", 1000),))
    monkeypatch.setattr(lifecycle, "reachable_dirs", lambda user, paths: tuple(True for _ in paths))
    for source in ("/run", str(tmp_path / "missing")):
        with pytest.raises(ConfigError) as info:
            lifecycle.job_binds(user, "", [], tmp_path / "ctr", site=[Mount(source, "/site", True)])
        assert not info.value.user_error and "[mounts] default" in info.value.message
    (tmp_path / "data").mkdir()
    with pytest.raises(PolicyError):                  # the same path asked for by the user is theirs
        lifecycle.job_binds(user, "", [Mount("/run", "/site", True)], tmp_path / "ctr")


def test_a_jobs_tmpdir_its_owner_removed_or_closed_is_never_the_nodes_fault(tmp_path, monkeypatch):
    """pbs_mom makes $TMPDIR as the job's user before the prologues; the user can remove it or
    close it (it is theirs) before a sister's prologue looks. A node fault there would let
    any user mark nodes down."""
    from torque_docker.errors import TorqueDockerError, is_node_fault
    home, tmp = tmp_path / "home", tmp_path / "tmpdir" / "7.srv"
    home.mkdir()
    user = UserInfo("alice", 1000, 1000, str(home), "/bin/sh", "", (("alice", 1000),))
    monkeypatch.setattr(lifecycle, "reachable_dirs", lambda user, paths: tuple(True for _ in paths))
    with pytest.raises(TorqueDockerError) as gone:                         # removed
        lifecycle.job_binds(user, "", [], tmp_path / "ctr", tmpdir=str(tmp))
    assert "$TMPDIR" in gone.value.message and not is_node_fault(gone.value) and not gone.value.user_error
    tmp.mkdir(parents=True)
    monkeypatch.setattr(lifecycle, "reachable_dirs", lambda user, paths: tuple(p.path != str(tmp) for p in paths))
    with pytest.raises(RequestError) as closed:                           # closed to its owner
        lifecycle.job_binds(user, "", [], tmp_path / "ctr", tmpdir=str(tmp))
    assert "cannot be read by you" in closed.value.message and not is_node_fault(closed.value)
    monkeypatch.setattr(lifecycle, "reachable_dirs", lambda user, paths: tuple(True for _ in paths))
    binds = lifecycle.job_binds(user, "", [], tmp_path / "ctr", tmpdir=str(tmp))
    try:
        assert (str(tmp), str(tmp), False) in [tuple(b) for b in binds]
    finally:
        hostpath.close_all([b.pin for b in binds])


# ----------------------------------------------------------------------------- groups and ids
def test_group_lines_docker_would_misread():
    text = (b"root:x:0:\n5000:x:0:\r\nusers:x:100:\n2001:x:2001:\n\n7:x:+9:\n12:x:junk:\n"
            b"42\n13:x:13:\n 5:x:0:\n")
    assert lifecycle.misleading_group_lines(text) == [("5000", 0), ("7", 9), ("12", 0), ("42", 0)]
    assert lifecycle.misleading_group_lines(b"") == []
    with pytest.raises(ImageError):
        lifecycle.misleading_group_lines(b"5000:x:0:" + b"u," * 40000 + b"\n")


def test_the_containers_group_file_has_no_name_runc_could_misread():
    text = render.group_text("alice", [("alice", 1000), ("5000", 5000), ("+7", 7), ("we ird", 8), ("root", 0)])
    assert lifecycle.misleading_group_lines(text.encode()) == []
    assert text.splitlines() == ["root:x:0:", "alice:x:1000:alice", "g5000:x:5000:alice", "g7:x:7:alice",
                                 "g8:x:8:alice"]


STATUS = "Name:\tsshd\nUid:\t{u}\t{u}\t{u}\t{u}\nGid:\t{g}\t{g}\t{g}\t{g}\nGroups:\t{groups}\nNoNewPrivs:\t1\n"


@pytest.mark.parametrize("uid,gid,groups,problem", [
    (2001, 2001, "2001 2103", None),
    (2001, 2001, "2103 2001 ", None),
    (2001, 2001, "0 2001", "groups 0 2001, not 2001 2103"),
    (2001, 2001, "2001", "groups 2001, not 2001 2103"),
    (2001, 0, "2001 2103", "gids 0 0 0 0, not 2001"),
    (0, 2001, "2001 2103", "uids 0 0 0 0, not 2001"),
])
def test_ids_a_container_process_must_have(uid, gid, groups, problem):
    user = UserInfo("alice", 2001, 2001, "/home/alice", "/bin/sh", "", (("alice", 2001), ("proj", 2103)))
    assert ids_problem(STATUS.format(u=uid, g=gid, groups=groups), user) == problem
    assert ids_problem("Name:\tx\n", user) == "its ids cannot be read"


# ----------------------------------------------------------------------------- tarballs
def docker_save_like(tags, extra=()):
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        for name, payload in [("abc/layer.tar", b"layer"), ("cfg.json", b"{}"),
                              ("manifest.json", json.dumps([{"Config": "cfg.json", "RepoTags": tags,
                                                             "Layers": ["abc/layer.tar"]}]).encode()),
                              ("repositories", json.dumps({"lab/x": {"1": "abc"}}).encode()), *extra]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return data.getvalue()


def test_a_tarball_stream_loses_every_tag():
    index = json.dumps({"manifests": [{"annotations": {"io.containerd.image.name": "lab/openfoam:11",
                                                        "org.opencontainers.image.ref.name": "11", "x": "y"}}]})
    out = io.BytesIO()
    claimed = untagged_tar(io.BytesIO(docker_save_like(["lab/openfoam:11", "lab/x:1"], [("index.json", index.encode())])),
                           out)
    assert claimed == ["lab/openfoam:11", "lab/x:1", "11"]
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as tar:
        names = tar.getnames()
        assert "repositories" not in names and "abc/layer.tar" in names
        manifest = json.loads(tar.extractfile("manifest.json").read())
        assert manifest == [{"Config": "cfg.json", "RepoTags": None, "Layers": ["abc/layer.tar"]}]
        assert json.loads(tar.extractfile("index.json").read()) == {"manifests": [{"annotations": {"x": "y"}}]}
        assert tar.extractfile("abc/layer.tar").read() == b"layer"


def test_a_tarball_without_manifest_is_refused():
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("repositories")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"{}"))
    with pytest.raises(ImageError, match="no manifest.json"):
        untagged_tar(io.BytesIO(data.getvalue()), io.BytesIO())


def test_the_allowed_list_applies_to_tarballs(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "x.tar").write_bytes(b"")
    strict = config.parse_text(f"[images]\nallowed = lab/*\ntarball_dirs = {tmp_path}/images\n")
    with pytest.raises(PolicyError, match="is not allowed on this cluster"):
        policy.resolve_image(f"file:{tmp_path}/images/x.tar", strict)
    listed = config.parse_text(f"[images]\nallowed = lab/* file:{tmp_path}/images/*\ntarball_dirs = {tmp_path}/images\n")
    assert policy.resolve_image(f"file:{tmp_path}/images/x.tar", listed).tarball == f"{tmp_path}/images/x.tar"


# ----------------------------------------------------------------------------- volumes, forbidden paths
def test_volumes_become_sized_tmpfs_never_inside_a_job_mount():
    binds = [("/s/ctr", "/run/torque-docker", False), ("/s/mnt/0", "/home/alice", False), ("/s/mnt/1", "/data", True)]
    assert lifecycle.container_tmpfs(["/var/lib/pg", "/data", "/tmp", "/dev/shm", "/home"], binds, "64m", "img") == (
        ("/tmp", "64m"), ("/var/lib/pg", "64m"), ("/home", "64m"))
    for volume in ("/home/alice/x", "/run/torque-docker/k", "/"):
        with pytest.raises(ImageError) as info:
            lifecycle.container_tmpfs([volume], binds, "64m", "img")
        assert info.value.user_error


def test_the_forbidden_set_follows_the_configured_endpoint(tmp_path):
    sock = tmp_path / "sockets" / "docker.sock"
    sock.parent.mkdir()
    sock.touch()
    cfg = config.parse_text(f"[docker]\nendpoint = unix://{sock}\n[mounts]\nallowed = {tmp_path}\n")
    for source in (str(sock.parent), str(tmp_path)):
        with pytest.raises(PolicyError, match="never mounted"):
            policy.check_mounts([Mount(source, "/data", True)], cfg)
    with pytest.raises(PolicyError, match="never mounted"):
        policy.check_workdir(str(sock.parent), policy.forbidden_sources(cfg))
    (tmp_path / "data").mkdir()
    assert policy.check_mounts([Mount(str(tmp_path / "data"), "/data", True)], cfg)[0].source == str(tmp_path / "data")


def test_job_files_are_written_without_following_or_blocking(tmp_path):
    from torque_docker.errors import NodeFault
    from torque_docker.state import write_file, write_in_place
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(OSError):                      # no reader: fails at once instead of hanging
        write_in_place(tmp_path / "fifo", "x")
    os.symlink("/etc/hostname", tmp_path / "link")
    with pytest.raises(OSError):
        write_in_place(tmp_path / "link", "x")
    reader = os.open(tmp_path / "fifo", os.O_RDONLY | os.O_NONBLOCK)
    try:                                               # with a reader: refused as not a regular file
        with pytest.raises(NodeFault, match="not a regular file"):
            write_in_place(tmp_path / "fifo", "x")
    finally:
        os.close(reader)
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o777)
    os.chmod(open_dir, 0o777)
    with pytest.raises(NodeFault, match="others than root can write there"):
        write_file(open_dir / "f", "x", 0o644)
    write_file(tmp_path / "ok", "text", 0o640)
    assert (tmp_path / "ok").read_text() == "text" and [p.name for p in tmp_path.iterdir() if ".tmp" in p.name] == []
    assert (tmp_path / "ok").stat().st_mode & 0o777 == 0o640


def test_dockers_words_for_node_trouble_count_only_when_no_job_directory_is_named():
    from torque_docker.runtime import node_trouble
    staged = "/var/spool/torque-docker/mnt/7.srv/1"
    assert node_trouble("error mounting: no space left on device", [staged])
    assert node_trouble("Cannot connect to the Docker daemon at unix:///var/run/docker.sock")
    # a user's directory (their FUSE mount, say) answering EIO through the staged bind
    assert not node_trouble(f'error mounting "{staged}" to rootfs: input/output error', [staged])
    assert not node_trouble("invalid mount config: permission denied", [staged])


def test_an_nvidia_hooks_error_is_never_node_trouble():
    """nvidia-container-cli mounts the driver into the image's file system: an image whose
    /usr/lib64 links into a read-only path makes it say 'read-only file system'. That must
    not take a sister's node down (the words alone would)."""
    from torque_docker.runtime import node_trouble
    text = ("OCI runtime create failed: runc create failed: unable to start container process: error during "
            "container init: error running hook #0: error running hook: exit status 1, stdout: , stderr: "
            "nvidia-container-cli: mount error: file creation failed: /var/lib/docker/overlay2/x/merged/usr/lib64/"
            "libcuda.so.1: read-only file system: unknown")
    assert node_trouble(text.split("error running hook #0: ")[0] + "read-only file system")   # the words alone
    assert not node_trouble(text)
    assert not node_trouble("nvidia-container-cli: initialization error: input/output error")
    assert not node_trouble("error running hook: exit status 1, stderr: no space left on device")


def test_a_process_that_exits_while_its_ids_are_read_is_no_problem(monkeypatch):
    """The MS's probe makes the sister's sshd fork a child per connection; one that exits
    while root reads it answers ESRCH ("No such process"): gone, so it runs with no ids.
    Taking it for a problem refused good jobs as the image's fault."""
    import errno as errno_mod

    from torque_docker import identity
    user = UserInfo("alice", 1000, 1000, "/home/alice", "/bin/sh", "", (("alice", 1000),))
    status = "Name:\tsshd\nUid:\t1000\t1000\t1000\t1000\nGid:\t1000\t1000\t1000\t1000\nGroups:\t1000 \n"

    def read(pid, name):
        if pid == 11:
            raise ProcessLookupError(errno_mod.ESRCH, "No such process")
        if pid == 12:
            raise PermissionError(errno_mod.EACCES, "Permission denied")
        return status

    monkeypatch.setattr(identity, "process_tree", lambda pid: [10, 11])
    monkeypatch.setattr(identity, "_read_proc", read)
    assert identity.container_ids_problem(10, user) is None
    monkeypatch.setattr(identity, "process_tree", lambda pid: [10, 12])     # alive but unreadable: a problem
    assert "cannot be read" in identity.container_ids_problem(10, user)

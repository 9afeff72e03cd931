"""[devices] and [limits]: the site's device nodes and ulimits, and what a job may ask for.

Device nodes are stand-ins made with mknod (char 1:3, what /dev/null is) under a temp dir."""
from __future__ import annotations

import os
import stat

import pytest

from torque_docker import config, devices, limits, policy
from torque_docker.errors import ConfigError, NodeFault, PolicyError, RequestError
from torque_docker.request import parse_other


def mknod(path, major=1, minor=3, kind=stat.S_IFCHR):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mknod(path, 0o666 | kind, os.makedev(major, minor))
    return str(path)


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mknod needs root")


# ----------------------------------------------------------------------------- devices
def test_device_entries_parse_host_and_container_paths():
    assert devices.parse("/dev/infiniband, /srv/fake/kfd:/dev/kfd") == (
        ("/dev/infiniband", "/dev/infiniband"), ("/srv/fake/kfd", "/dev/kfd"))


@pytest.mark.parametrize("text,words", [
    ("dev/kfd", "absolute"), ("/dev/../etc/passwd", "without '..'"), ("/srv/x:/etc/x", "lie under /dev"),
    ("/a:/dev/x /b:/dev/x", "given twice"),
])
def test_bad_device_entries_are_the_admins_error_at_config_load(text, words):
    with pytest.raises(ConfigError, match=words) as info:
        config.parse_text(f"[devices]\npaths = {text}\n", "/etc/td.conf")
    assert "/etc/td.conf:2" in str(info.value)


@needs_root
def test_a_directory_stands_for_the_device_nodes_below_it(tmp_path):
    ib = tmp_path / "infiniband"
    a = mknod(ib / "uverbs0")
    b = mknod(ib / "sub" / "umad0", 1, 5)
    (ib / "README").write_text("not a device")
    kfd = mknod(tmp_path / "kfd", 7, 0, stat.S_IFBLK)       # a block device counts too
    got = devices.resolve(((str(ib), "/dev/infiniband"), (kfd, "/dev/kfd")))
    assert got == ((a, "/dev/infiniband/uverbs0"), (b, "/dev/infiniband/sub/umad0"), (kfd, "/dev/kfd"))


@needs_root
def test_missing_or_non_device_paths_are_a_fault_of_the_node(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    for path, words in ((tmp_path / "nope", "is missing on this node"), (tmp_path / "file", "neither a character"),
                        (tmp_path / "empty", "holds no device nodes")):
        with pytest.raises(NodeFault, match=words) as info:
            devices.resolve(((str(path), "/dev/x"),))
        assert not info.value.user_error and "[devices] paths" in info.value.fix


def test_rdma_is_known_by_the_container_path():
    assert devices.is_rdma((("/srv/fake/ib", "/dev/infiniband"),))
    assert devices.is_rdma((("/dev/infiniband/uverbs0", "/dev/infiniband/uverbs0"),))
    assert not devices.is_rdma((("/dev/kfd", "/dev/kfd"), ("/dev/infinibandx", "/dev/infinibandx")))


# ----------------------------------------------------------------------------- limits
def cfg(text=""):
    return config.parse_text(text)


def test_memlock_is_unlimited_with_rdma_unless_the_site_sets_it():
    assert policy.container_ulimits((), cfg(), rdma=True) == (("memlock", -1, -1),)
    assert policy.container_ulimits((), cfg(), rdma=False) == ()
    site = cfg("[limits]\nulimits = memlock=65536 nofile=1024:4096\n")
    assert policy.container_ulimits((), site, rdma=True) == (("memlock", 65536, 65536), ("nofile", 1024, 4096))


def test_a_job_may_raise_a_limit_up_to_user_max_and_lower_any_the_site_sets():
    site = cfg("[limits]\nulimits = nofile=1024:4096 core=0\nuser_max = nofile=65536 stack=unlimited\n")
    asked = parse_other("image=debian:12;ulimit=nofile=65536;ulimit=stack=unlimited").ulimits
    assert policy.container_ulimits(asked, site, rdma=False) == (
        ("core", 0, 0), ("nofile", 65536, 65536), ("stack", -1, -1))
    # the site's own value bounds a name user_max does not list: core may stay 0, not grow
    assert policy.container_ulimits((("core", 0, 0),), site, rdma=False)[-1] == ("core", 0, 0)
    with pytest.raises(PolicyError, match="above this site's bound of 0"):
        policy.container_ulimits((("core", -1, -1),), site, rdma=False)


@pytest.mark.parametrize("asked,words", [
    ("ulimit=nofile=65537", "ulimit nofile 65537 is above this site's bound of 65536"),
    ("ulimit=nofile=1:unlimited", "ulimit nofile unlimited is above"),
    ("ulimit=rtprio=10", "not something this site lets a job set"),
])
def test_a_request_above_the_bound_is_the_users_error(asked, words):
    site = cfg("[limits]\nuser_max = nofile=65536\n")
    with pytest.raises(PolicyError, match=words) as info:
        policy.container_ulimits(parse_other(f"image=debian:12;{asked}").ulimits, site, rdma=False)
    assert info.value.user_error


@pytest.mark.parametrize("asked,words", [
    ("ulimit=nofile", "must be NAME=SOFT"), ("ulimit=bogus=1", "must be NAME=SOFT"),
    ("ulimit=nofile=9:8", "soft limit is above"), ("ulimit=nofile=x", "is not a number"),
    ("ulimit=nofile=1;ulimit=nofile=2", "given twice"), ("ulimit=nofile=1:2:3", "must be NAME=SOFT"),
])
def test_malformed_ulimit_requests_are_the_users_error(asked, words):
    with pytest.raises(RequestError, match=words) as info:
        parse_other(f"image=debian:12;{asked}")
    assert info.value.user_error and "ulimit=NAME=SOFT[:HARD]" in info.value.fix


def test_the_old_jobs_ulimits_key_names_its_new_place():
    with pytest.raises(ConfigError, match=r"\[jobs\] ulimits has moved to \[limits\] ulimits") as info:
        config.parse_text("[jobs]\nulimits = nofile=1024\n", "/etc/td.conf")
    assert "/etc/td.conf:2" in str(info.value) and "under [limits]" in info.value.fix


def test_show_writes_what_check_prints():
    assert limits.show((("memlock", -1, -1), ("nofile", 1024, 4096))) == "memlock=unlimited:unlimited nofile=1024:4096"
    assert limits.show(()) == "the Docker daemon's"


# ----------------------------------------------------------------------------- GPUs
def test_gpus_requested_counts_every_node_of_the_request():
    from torque_docker import gpus
    assert gpus.requested("2:ppn=4:gpus=2") == 4
    assert gpus.requested("n1:ppn=1:gpus=1+n2:ppn=1:gpus=2") == 3
    assert gpus.requested("n1:ppn=1+2:ppn=2") == 0
    assert gpus.requested("") == 0


def test_a_container_job_asking_for_gpus_is_refused_as_the_users_request():
    from torque_docker import gpus
    with pytest.raises(PolicyError, match=r"asks for 2 GPU\(s\)") as info:
        gpus.refuse_requested({"nodes": "1:ppn=1:gpus=2"})
    assert info.value.user_error
    gpus.refuse_requested({"nodes": "1:ppn=2"})

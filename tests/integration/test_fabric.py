"""The node's fabric in containers: [devices] nodes and [limits] ulimits, through the
simulator against real Docker. The devices are stand-ins made with mknod (char 1:3 and
1:5, what /dev/null and /dev/zero are) in a temporary directory mapped to /dev/infiniband;
no real InfiniBand or GPU was used."""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path
from typing import List

from conftest import OPENMPI_IMAGE, requeued_as_node_fault

SCRIPT = """#!/bin/bash
ls /dev/infiniband | sort | sed 's/^/IB /'
stat -c 'KIND %F %t:%T' /dev/infiniband/uverbs0
echo hi > /dev/infiniband/uverbs0 && echo WROTE
echo "MEMLOCK $(ulimit -Sl) $(ulimit -Hl)"
grep 'Max open files' /proc/self/limits | awk '{print "NOFILE", $4, $5}'
grep 'Max stack size' /proc/self/limits | awk '{print "STACK", $4, $5}'
"""


def body(result) -> List[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if not line.startswith("torque-docker:")]


def fake_fabric(root: Path) -> Path:
    ib = root / "fakedev" / "infiniband"
    ib.mkdir(parents=True)
    for name, minor in (("uverbs0", 3), ("rdma_cm", 5)):
        os.mknod(ib / name, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
        os.chmod(ib / name, 0o666)
    (ib / "README").write_text("not a device: not passed\n")
    return ib


def fabric_config(ib: Path, memlock: str = "memlock=4194304 ") -> str:
    return (f"[devices]\npaths = {ib}:/dev/infiniband\n"
            f"[limits]\nulimits = {memlock}nofile=1024:4096 stack=8388608\nuser_max = nofile=8192\n")


def dockerd_can_raise_limits() -> bool:
    """Has the Docker daemon CAP_SYS_RESOURCE (runc raises rlimits above its own with it)?
    On this test machine it has not, and its memlock hard limit is 8 MiB."""
    import subprocess
    pid = subprocess.run(["pidof", "dockerd"], capture_output=True, text=True).stdout.split()
    if not pid:
        return False
    for line in Path(f"/proc/{pid[0]}/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) & (1 << 24))
    return False


def test_the_sites_devices_and_ulimits_reach_the_container(make_site, docker_client, tmp_path):
    ib = fake_fabric(tmp_path)
    site = make_site(nodes=1, extra_config=fabric_config(ib))
    job = site.job(SCRIPT, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE};ulimit=nofile=2048:8192")
    result = site.cluster.run(job)
    assert result.exit_status == 0, result.stdout + result.stderr
    # memlock: the site's (4 MiB; KiB from ulimit); nofile: the job's, within user_max;
    # stack: the site's (bytes in the config, bytes in /proc)
    assert body(result) == ["IB rdma_cm", "IB uverbs0", "KIND character special file 1:3", "WROTE",
                            "MEMLOCK 4096 4096", "NOFILE 2048 8192", "STACK 8388608 8388608"], \
        result.stdout + result.stderr
    assert site.leftovers(docker_client, job.jobid) == []


def test_rdma_devices_get_memlock_unlimited_or_a_clear_node_fault(make_site, docker_client, tmp_path):
    """Without a memlock of the site's, RDMA devices give memlock unlimited. A daemon that
    cannot raise it (no CAP_SYS_RESOURCE, as here) is the node's fault, said plainly."""
    site = make_site(nodes=1, extra_config=fabric_config(fake_fabric(tmp_path), memlock=""))
    job = site.job(SCRIPT, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}")
    result = site.cluster.run(job)
    if dockerd_can_raise_limits():
        assert result.exit_status == 0, result.stdout + result.stderr
        assert "MEMLOCK unlimited unlimited" in body(result), result.stdout + result.stderr
    else:
        requeued_as_node_fault(site, result, "could not give container", "memlock=unlimited:unlimited",
                               "LimitMEMLOCK=infinity")
    assert site.leftovers(docker_client, job.jobid) == []


def test_a_ulimit_above_the_sites_bound_is_the_users_error(make_site, docker_client, tmp_path):
    site = make_site(nodes=1, extra_config=fabric_config(fake_fabric(tmp_path)))
    job = site.job(SCRIPT, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE};ulimit=nofile=65536")
    result = site.cluster.run(job)
    assert result.runs("prologue")[0].rc in (0, 1) and result.exit_status == 1     # aborted, never requeued
    assert "ulimit nofile 65536 is above this site's bound of 8192" in result.stderr, result.stderr
    assert "IB uverbs0" not in result.stdout
    assert site.leftovers(docker_client, job.jobid) == []


def test_a_missing_device_is_the_nodes_fault(make_site, docker_client, tmp_path):
    ib = fake_fabric(tmp_path)
    site = make_site(nodes=1, extra_config=fabric_config(ib))
    shutil.rmtree(ib)                 # the driver is gone after the config was written
    job = site.job(SCRIPT, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}")
    result = site.cluster.run(job)
    requeued_as_node_fault(site, result, f"device {ib} ([devices] paths) is missing on this node")
    assert site.leftovers(docker_client, job.jobid) == []


def test_check_reports_the_devices_and_limits_it_sees(make_site, tmp_path):
    import subprocess
    import sys
    ib = fake_fabric(tmp_path)
    site = make_site(nodes=1, extra_config=fabric_config(ib))
    cli = "import sys; from torque_docker.cli import main; sys.exit(main())"
    done = subprocess.run([sys.executable, "-c", cli, "--config", str(site.configs["tdnode0"]), "check",
                           "--pbs-home", str(site.cluster.pbs_home("tdnode0"))],
                          capture_output=True, text=True, timeout=180, cwd="/")
    text = done.stdout + done.stderr
    assert "OK   devices and limits: ok" in text, text
    assert "devices: 2 node(s): /dev/infiniband/rdma_cm /dev/infiniband/uverbs0" in text, text
    assert ("limits: containers get memlock=4194304:4194304 nofile=1024:4096 stack=8388608:8388608; "
            "jobs may ask up to nofile=8192:8192") in text, text


TMPDIR_SCRIPT = """#!/bin/bash
echo "TMPDIR $TMPDIR"
touch "$TMPDIR/written-inside" && echo WROTE-TMPDIR
stat -c 'OWNER %U' "$TMPDIR"
grep -E ' /tmp ' /proc/mounts | awk '{print "MOUNT", $2, $3}'
"""


def test_torques_tmpdir_for_the_job_is_the_same_path_inside(make_site, docker_client):
    """mom's $tmpdir/<jobid> (TMPDIR of the job) is bound at its own path; /tmp stays the tmpfs."""
    site = make_site(nodes=1, tmpdir=True)
    job = site.job(TMPDIR_SCRIPT, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}")
    expected = site.cluster.job_tmpdir("tdnode0", job.jobid)
    result = site.cluster.run(job)
    assert result.exit_status == 0, result.stdout + result.stderr
    assert body(result) == [f"TMPDIR {expected}", "WROTE-TMPDIR", f"OWNER {job.user}", "MOUNT /tmp tmpfs"], \
        result.stdout + result.stderr
    assert not expected.exists()                # mom removed it with the job
    assert site.leftovers(docker_client, job.jobid) == []


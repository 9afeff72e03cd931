"""The admin's commands that act on a node: gc, stage, uninstall (real Docker, simulated moms)."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from conftest import OPENMPI_IMAGE, checkout_python, wait_for

from torque_docker import admin, sweep
from torque_docker.runtime import L_JOB

CLI = "import sys; from torque_docker.cli import main; sys.exit(main())"


def cli(site, node, *args, timeout=120):
    return subprocess.run([sys.executable, "-c", CLI, "--config", str(site.configs[node]), *args],
                          capture_output=True, text=True, timeout=timeout, cwd="/")


def job_containers(client, jobid):
    return client.containers.list(all=True, filters={"label": f"{L_JOB}={jobid}"})




# ----------------------------------------------------------------------------- gc
def test_gc_removes_a_leaked_job_and_leaves_a_running_one_alone(make_site, docker_client):
    site = make_site(nodes=2)
    nodes = [("tdnode0", 1), ("tdnode1", 1)]
    other = f"image={OPENMPI_IMAGE};run=host"

    # Job A leaks: pbs_mom purges it without running the epilogues (docs/torque-facts.md: an
    # aborted start or a sync kill does that), so its containers, state and ports stay.
    for node in site.nodes:
        site.cluster.remove_hook(node, "epilogue")
        site.cluster.remove_hook(node, "epilogue.parallel")
    leaked = site.job("#!/bin/bash\ntrue\n", nodes, other=other)
    result = site.cluster.run(leaked)
    assert result.exit_status == 0, result.stdout + result.stderr
    assert not any(site.cluster.mom_knows(n, leaked.jobid) for n in site.nodes)
    assert len(job_containers(docker_client, leaked.jobid)) == 2
    assert {"port reservation on tdnode0", "job directory on tdnode1"} <= set(site.leftovers(docker_client, leaked.jobid))
    for node in site.nodes:
        admin.install(str(site.cluster.mom_priv(node)), python=checkout_python(site.root), cfg=site.config(node),
                      out=open(os.devnull, "w"))

    # Job B is running (its script waits for a flag) while gc runs on both nodes.
    flag = site.root / "release-b"
    started = Path(site.workdir()) / "b-started"
    script = (f"#!/bin/bash\ntouch {started}\n"
              f"for i in $(seq 600); do [ -e {flag} ] && exit 0; sleep 0.1; done\nexit 3\n")
    running = site.job(script, nodes, other=other)
    outcome = {}
    thread = threading.Thread(target=lambda: outcome.update(result=site.cluster.run(running)), daemon=True)
    thread.start()
    try:
        wait_for(started.exists, 90, "job B's script to start")
        assert all(site.cluster.mom_knows(n, running.jobid) for n in site.nodes)

        # The default grace keeps anything younger than 10 minutes (a job being set up).
        for node in site.nodes:
            done = cli(site, node, "gc", "--pbs-home", str(site.cluster.pbs_home(node)), "--server", site.server)
            assert done.returncode == 0, done.stdout + done.stderr
            assert "gc: 0 job(s) cleaned, 2 kept, 0 error(s)" in done.stdout, done.stdout
        assert len(job_containers(docker_client, leaked.jobid)) == 2

        for node in site.nodes:
            done = cli(site, node, "gc", "--pbs-home", str(site.cluster.pbs_home(node)), "--server", site.server,
                       "--grace", "0")
            assert done.returncode == 0, done.stdout + done.stderr
            assert f"gc: job {leaked.jobid}: removed 1 container(s)" in done.stdout, done.stdout
            assert "gc: 1 job(s) cleaned, 1 kept, 0 error(s)" in done.stdout, done.stdout
        assert site.leftovers(docker_client, leaked.jobid) == []
        alive = job_containers(docker_client, running.jobid)
        assert len(alive) == 2 and all(c.status == "running" for c in alive)
        assert any(p.name.startswith(running.jobid) for p in (site.state_dir("tdnode1") / "jobs").iterdir())
    finally:
        flag.touch()
        thread.join(120)
    assert not thread.is_alive()
    assert outcome["result"].exit_status == 0, outcome["result"].stdout + outcome["result"].stderr
    assert site.leftovers(docker_client, running.jobid) == []


def test_gc_finds_a_job_by_its_port_reservation_alone(make_site, docker_client):
    site = make_site(nodes=1)
    from torque_docker.state import NodeState
    state = NodeState(str(site.state_dir("tdnode0")))
    state.ensure()
    ghost = f"999.{site.server}"
    state.reserve_port(ghost, "127.0.1.10", [40990, 40991])
    report = admin.gc(site.config("tdnode0"), str(site.cluster.pbs_home("tdnode0")), grace=0, server=site.server)
    assert report["removed"] == [ghost] and report["errors"] == []
    assert ghost not in (site.state_dir("tdnode0") / "ports.json").read_text()


@pytest.mark.parametrize("jobid,server,ours", [
    ("12.srv", "srv", True), ("12.srv.example.org", "srv", True), ("12.srv", "srv.example.org", True),
    ("12[3].srv", "srv", True), ("12.srv2", "srv", False), ("12.other", "srv", False), ("12", "srv", False),
])
def test_gc_server_filter(jobid, server, ours):
    assert sweep.job_of_server(jobid, server) is ours


# ----------------------------------------------------------------------------- stage
@pytest.fixture
def tiny_image(docker_client):
    """A one-file image made here (no registry needed), removed afterwards."""
    tag = f"torque-docker-test/tiny:{uuid.uuid4().hex[:8]}"
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("hello.txt")
        payload = b"staged\n"
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    subprocess.run(["docker", "import", "-", tag], input=data.getvalue(), check=True, capture_output=True, timeout=60)
    yield tag
    subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=60)


def test_stage_loads_a_tarball_from_an_allowed_directory_only(make_site, docker_client, tiny_image):
    site = make_site(nodes=1)
    site.reconfigure(f"[images]\ntarball_dirs = {site.root}/tarballs\n")
    (site.root / "tarballs").mkdir()
    (site.root / "elsewhere").mkdir()
    for where in ("tarballs", "elsewhere"):
        subprocess.run(["docker", "save", "-o", str(site.root / where / "tiny.tar"), tiny_image], check=True, timeout=60)
    subprocess.run(["docker", "rmi", tiny_image], check=True, capture_output=True, timeout=60)

    refused = cli(site, "tdnode0", "stage", f"file:{site.root}/elsewhere/tiny.tar")
    assert refused.returncode == 1
    assert "outside the directories the site allows" in refused.stderr
    with pytest.raises(Exception):
        docker_client.images.get(tiny_image)

    done = cli(site, "tdnode0", "stage", f"file:{site.root}/tarballs/tiny.tar")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"staged {tiny_image} (sha256:") and f"loaded from {site.root}/tarballs/tiny.tar" in done.stdout
    assert docker_client.images.get(tiny_image).id


def test_stage_applies_aliases_and_the_allowed_list(make_site):
    site = make_site(nodes=1)
    site.reconfigure(f"[images]\nallowed = torque-docker-test/* registry.invalid/*\n"
                     f"aliases =\n    mpi = {OPENMPI_IMAGE}\n")
    done = cli(site, "tdnode0", "stage", "mpi")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"staged {OPENMPI_IMAGE} (sha256:") and ": already present in" in done.stdout

    refused = cli(site, "tdnode0", "stage", "debian:12")
    assert refused.returncode == 1
    assert "image debian:12 is not allowed on this cluster (allowed: torque-docker-test/* registry.invalid/*)" in refused.stderr

    started = time.monotonic()
    failed = cli(site, "tdnode0", "stage", "registry.invalid/lab/none:1", "--timeout", "20")
    assert failed.returncode == 1
    assert "registry.invalid/lab/none:1" in failed.stderr and ("cannot be pulled" in failed.stderr
                                                              or "took longer than 20 s" in failed.stderr)
    assert time.monotonic() - started < 60


def test_stage_waits_for_the_per_node_image_lock(make_site):
    site = make_site(nodes=1)
    lock = admin.image_lock(site.config("tdnode0"), OPENMPI_IMAGE, timeout=5)
    with lock:   # a pull (--refresh) waits for the lock; an image already present needs none
        blocked = cli(site, "tdnode0", "stage", OPENMPI_IMAGE, "--refresh", "--lock-timeout", "1")
        present = cli(site, "tdnode0", "stage", OPENMPI_IMAGE, "--lock-timeout", "1")
    assert present.returncode == 0 and "already present" in present.stdout
    assert blocked.returncode == 1
    assert f"another process holds the lock on {OPENMPI_IMAGE}" in blocked.stderr
    done = cli(site, "tdnode0", "stage", OPENMPI_IMAGE, "--lock-timeout", "1")
    assert done.returncode == 0, done.stderr


# ----------------------------------------------------------------------------- uninstall
def test_uninstall_removes_only_what_install_wrote(make_site, docker_client):
    site = make_site(nodes=1)
    dropin = site.root / "ssh_config.d" / "90-torque-docker.conf"
    site.reconfigure(f"[ssh]\ndropin = {dropin}\n")
    mom_priv = site.cluster.mom_priv("tdnode0")
    admin.install(str(mom_priv), python=checkout_python(site.root), cfg=site.config("tdnode0"), out=open(os.devnull, "w"))
    assert dropin.exists()
    own = mom_priv / "prologue.parallel"
    own.write_text("#!/bin/sh\n# the site's own script\nexit 0\n")
    os.chmod(own, 0o500)

    done = cli(site, "tdnode0", "uninstall", "--mom-priv", str(mom_priv))
    assert done.returncode == 0, done.stderr
    assert f"kept {own}: not torque-docker's" in done.stdout
    assert sorted(p.name for p in mom_priv.iterdir() if p.is_file()) == ["config", "prologue.parallel"]
    config = (mom_priv / "config").read_text()
    assert "$job_starter" not in config and "$prologalarm 120" in config
    assert not dropin.exists()
    assert site.secret.exists() and site.configs["tdnode0"].exists()

    # Jobs still run on the node, on the host: nothing of torque-docker is left in the way.
    job = site.job("#!/bin/bash\necho plain\n", [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}")
    result = site.cluster.run(job)
    assert result.exit_status == 0 and result.stdout.strip() == "plain", result.stdout + result.stderr
    assert job_containers(docker_client, job.jobid) == []

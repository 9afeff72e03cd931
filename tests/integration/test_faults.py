"""Faults. Each one: the job gets the right outcome and a clear message, and the
node is left clean (at once, or by the sweep that every prologue and `gc` run)."""
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import OPENMPI_IMAGE, derived_image

from torque_docker import admin

SLEEPER = "#!/bin/bash\necho started\nsleep 8\n"
SILENT_IMAGE = "torque-docker-test/silent-sshd"
SILENT_SSHD = "/usr/local/sbin/silent-sshd"


@pytest.fixture(scope="module")
def silent_sshd_image(docker_client, images):
    """An image whose "sshd" runs and never listens: the readiness wait must be bounded."""
    dockerfile = (f"FROM {images['openmpi']}\n"
                  f"RUN printf '#!/bin/sh\\nexec sleep 3600\\n' > {SILENT_SSHD} && chmod 755 {SILENT_SSHD}\n")
    with derived_image(docker_client, dockerfile, SILENT_IMAGE) as tag:
        yield tag


def run_hook(site, node, hook, argv_tail, extra_env=None):
    """Run an installed hook exactly as the simulator would (env from pbs_environment, cwd mom_priv)."""
    mom_priv = site.cluster.pbs_home(node) / "mom_priv"
    env = {"PATH": "/bin:/usr/bin", "TORQUE_DOCKER_CONF": str(site.configs[node]), "PBS_NODENUM": "0"}
    env.update(extra_env or {})
    return subprocess.run([str(mom_priv / hook), *argv_tail], cwd=mom_priv, env=env, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


def test_epilogue_without_prologue_and_twice_is_clean(site):
    rl = f"nodes=1,other=image={OPENMPI_IMAGE}"
    for _ in range(2):
        done = run_hook(site, "tdnode0", "epilogue", ["77.nowhere", "tduser", "tduser", "x", "0", rl, "", "batch",
                                                    "", "-3", ""])
        assert done.returncode == 0, done.stderr
        assert "teardown on tdnode0 finished cleanly (0 container(s) removed)" in done.stdout


def test_epilogue_with_docker_down_exits_0_and_gc_cleans_later(site, docker_client):
    job = site.job(SLEEPER, [("tdnode0", 1), ("tdnode1", 1)], other=f"image={OPENMPI_IMAGE}", kill_after=4)
    good = {n: site.configs[n].read_text() for n in site.nodes}

    def break_docker_when_running():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if len(docker_client.containers.list(filters={"label": f"torque-docker.job={job.jobid}"})) == 2:
                break
            time.sleep(0.1)
        for node in site.nodes:
            site.configs[node].write_text(good[node] + "[docker]\nendpoint = unix:///nonexistent/docker.sock\n")

    breaker = threading.Thread(target=break_docker_when_running)
    breaker.start()
    result = site.cluster.run(job)
    breaker.join()
    assert [r.rc for r in result.runs("epilogue.parallel") + result.runs("epilogue")] == [0, 0]
    assert "teardown on tdnode0 finished with errors" in result.stdout
    assert "torque-docker gc will retry" in site.log_file.read_text()
    assert len(site.leftovers(docker_client, job.jobid)) >= 2          # the containers are still there
    for node in site.nodes:                                              # Docker is back: gc cleans
        site.configs[node].write_text(good[node])
        report = admin.gc(site.config(node), str(site.cluster.pbs_home(node)), grace=0, server=site.server)
        assert report["errors"] == []
    assert site.leftovers(docker_client, job.jobid) == []


class HangingDocker:
    """A Unix socket that accepts and never answers: a hung dockerd."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(path)
        self.sock.listen(64)
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                self.conns.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self):
        self.sock.close()
        for conn in self.conns:
            conn.close()


def test_hanging_docker_at_prologue_requeues_within_bounds(make_site):
    site = make_site(nodes=1, extra_config="")
    hang = HangingDocker(str(site.root / "hung.sock"))
    try:
        site.reconfigure(f"[docker]\nendpoint = unix://{site.root}/hung.sock\napi_timeout = 3\n")
        begun = time.monotonic()
        result = site.cluster.run(site.job(SLEEPER, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}"))
        took = time.monotonic() - begun
    finally:
        hang.close()
    assert result.state == "Q" and result.runs("prologue")[0].rc == 2     # node fault: requeue
    assert not result.runs("prologue")[0].timed_out                       # our bound, not prologalarm
    assert took < 60
    assert "does not answer" in site.log_file.read_text()


def test_sshd_that_never_answers_is_bounded_and_cleaned(make_site, docker_client, silent_sshd_image):
    site = make_site(nodes=1, extra_config=f"[ssh]\nready_timeout = 3\nsshd_path = {SILENT_SSHD}\n")
    job = site.job(SLEEPER, [("tdnode0", 1)], other=f"image={silent_sshd_image}")
    result = site.cluster.run(job)
    assert result.runs("prologue")[0].rc == 2
    assert not result.runs("prologue")[0].timed_out                    # our bound, well before prologalarm
    assert "did not answer" in site.log_file.read_text()
    assert site.leftovers(docker_client, job.jobid) == []                 # the failed start undid itself


def test_sshd_that_exits_at_start_is_refused_with_its_log(make_site, docker_client):
    """The image decides how its sshd behaves: the job is refused (never requeued), and no
    sister would take its node down for it (test_attacks_node.py)."""
    site = make_site(nodes=1, extra_config="[ssh]\nsshd_path = /bin/false\n")
    job = site.job(SLEEPER, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}")
    result = site.cluster.run(job)
    assert result.runs("prologue")[0].rc == 0 and result.exit_status == 1      # refused through the starter
    told = (Path(job.workdir) / f"torque-docker-{job.jobid}.refused").read_text()
    assert "/bin/false in image" in told and "exited at start (container log:" in told, told
    assert "exited at start" in site.log_file.read_text()
    assert site.leftovers(docker_client, job.jobid) == []


def test_port_range_exhausted_is_a_node_fault_with_the_fix(make_site, docker_client):
    site = make_site(nodes=1, extra_config="[network]\nport_range = 45100-45115\nport_candidates = 16\n")
    held = []
    try:
        for port in range(45100, 45116):
            sock = socket.socket()
            sock.bind(("127.0.1.10", port))
            sock.listen()
            held.append(sock)
        job = site.job(SLEEPER, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}")
        result = site.cluster.run(job)
    finally:
        for sock in held:
            sock.close()
    assert result.runs("prologue")[0].rc == 2
    log = site.log_file.read_text()
    assert "none of the job's 16 candidate ports on 127.0.1.10 is free" in log
    assert "widen [network] port_range" in log
    assert site.leftovers(docker_client, job.jobid) == []


def test_partial_start_sister_fault_then_sweep_by_the_next_prologue(make_site, docker_client):
    site = make_site(nodes=3, extra_config="[jobs]\nsweep_grace = 1\n")
    broken = site.configs["tdnode2"].read_text() + "[docker]\nendpoint = unix:///nonexistent/docker.sock\n"
    site.configs["tdnode2"].write_text(broken)
    job = site.job(SLEEPER, [("tdnode0", 1), ("tdnode1", 1), ("tdnode2", 1)], other=f"image={OPENMPI_IMAGE}")
    result = site.cluster.run(job)
    assert result.state == "Q" and result.down_nodes == ["tdnode2"]      # a real node fault marks it down
    assert result.runs("prologue") == []                                # the MS never started
    # Torque purged the job on tdnode1 without epilogue.parallel: its container is left ...
    assert [c.labels["torque-docker.host"] for c in docker_client.containers.list(
        all=True, filters={"label": f"torque-docker.job={job.jobid}"})] == ["tdnode1"]
    time.sleep(1.5)
    # ... until the next prologue on tdnode1 sweeps it, leaving the new job alone.
    second = site.job("#!/bin/bash\ntrue\n", [("tdnode1", 1)], other=f"image={OPENMPI_IMAGE}")
    assert site.cluster.run(second).exit_status == 0
    assert site.leftovers(docker_client, job.jobid) == []
    assert f"job={job.jobid} node=tdnode1 gc: pbs_mom no longer knows the job" in site.log_file.read_text()


def test_sister_user_error_never_marks_the_node_down(make_site):
    site = make_site(nodes=2)
    result = site.cluster.run(site.job(SLEEPER, [("tdnode0", 1), ("tdnode1", 1)], other="image=debian:12;colour=red"))
    assert [r.rc for r in result.runs("prologue.parallel")] == [0]
    assert result.down_nodes == []


def test_prologue_killed_by_prologalarm_leaks_only_until_gc(make_site, docker_client, silent_sshd_image):
    """A sister's prologue.parallel killed by $prologalarm: pbs_mom purges the job there without
    any epilogue, and dockerd keeps the container. gc removes it, never a running job's."""
    site = make_site(nodes=2, prologalarm=12)                            # killed at about 2 s
    site.configs["tdnode1"].write_text(site.config_text("tdnode1", f"[ssh]\nsshd_path = {SILENT_SSHD}\n"
                                                                   f"[images]\naliases =\n    lab = {silent_sshd_image}\n"))
    site.configs["tdnode0"].write_text(site.config_text("tdnode0", f"[images]\naliases =\n    lab = {OPENMPI_IMAGE}\n"))
    job = site.job(SLEEPER, [("tdnode0", 1), ("tdnode1", 1)], other="image=lab")
    result = site.cluster.run(job)
    assert result.runs("prologue.parallel")[0].timed_out and result.state == "Q"
    assert result.down_nodes == ["tdnode1"]
    assert site.leftovers(docker_client, job.jobid) != []                 # dockerd keeps what it started
    site.configs["tdnode1"].write_text(site.config_text("tdnode1"))      # the node is repaired
    running = site.job("#!/bin/bash\nsleep 6\n", [("tdnode1", 1)], other=f"image={OPENMPI_IMAGE}")
    thread = threading.Thread(target=lambda: site.cluster.run(running))
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not docker_client.containers.list(
                filters={"label": f"torque-docker.job={running.jobid}"}):
            time.sleep(0.1)
        report = admin.gc(site.config("tdnode1"), str(site.cluster.pbs_home("tdnode1")), grace=0,
                          server=site.server)
        assert job.jobid in report["removed"] and running.jobid not in report["removed"]
        assert site.leftovers(docker_client, job.jobid) == []
        assert docker_client.containers.list(filters={"label": f"torque-docker.job={running.jobid}"}) != []
    finally:
        thread.join(timeout=120)


def test_nodes_with_different_images_under_one_name_are_caught(make_site, docker_client):
    """The MS pins the image: each sister announces its image id in the sshd banner."""
    from conftest import MPICH_IMAGE
    site = make_site(nodes=2)
    for node, target in (("tdnode0", OPENMPI_IMAGE), ("tdnode1", MPICH_IMAGE)):
        site.configs[node].write_text(site.config_text(node, f"[images]\naliases =\n    lab = {target}\n"))
    job = site.job(SLEEPER, [("tdnode0", 1), ("tdnode1", 1)], other="image=lab")
    result = site.cluster.run(job)
    assert result.runs("prologue")[0].rc == 2                           # node fault: requeue
    log = site.log_file.read_text()
    assert "tdnode1 runs image" in log and "stage the same image on every node" in log
    # the same name resolving to one image everywhere is fine
    site.configs["tdnode1"].write_text(site.config_text("tdnode1", f"[images]\naliases =\n    lab = {OPENMPI_IMAGE}\n"))
    again = site.cluster.run(site.job("#!/bin/bash\ntrue\n", [("tdnode0", 1), ("tdnode1", 1)], other="image=lab"))
    assert again.exit_status == 0, again.stderr
    # The refused start's sister container was purged by Torque without epilogue.parallel:
    # the node's next sweep removes it.
    report = admin.gc(site.config("tdnode1"), str(site.cluster.pbs_home("tdnode1")), grace=0, server=site.server)
    assert job.jobid in report["removed"]
    assert site.leftovers(docker_client, job.jobid) == []

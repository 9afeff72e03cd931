"""Attacks on a node's shared machinery, each tried as a hostile user would, against the
real hooks, Docker and sshd through the simulator: a reused job id, requests and images
that make a sister fail, another user holding locks or ports or faking a container's
banner, a job variable that rewrites the nodefile, and the site's own mistakes.

Every attack is a test that failed before the fix it proves (a kept key opened another
user's job, a sister marked its node down, ...). Hostile images are built here from the
test image and removed afterwards; processes started as the other user are ended by pid.
"""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ADDRESSES, OPENMPI_IMAGE, OTHER_USER, USER, derived_image
from test_isolation import HeldJob, as_user, ctr_dir, direct_ssh_args, identity, ssh_as, user_tempdir

from torque_docker import admin, keys, probe
from torque_docker.lifecycle import image_tag
from torque_docker.plan import alias_for
from torque_docker.runtime import L_JOB
from torque_docker.state import NodeState

SLEEPER = "#!/bin/bash\necho started\nsleep 2\n"
SCRIPT = "#!/bin/bash\necho SCRIPT-RAN\n"


def refusal(job) -> str:
    path = Path(job.workdir) / f"torque-docker-{job.jobid}.refused"
    assert path.exists(), "the user was not told why"
    return path.read_text()


def sweep(site) -> None:
    """What a sister's next prologue or the gc timer does: Torque purges a refused job's
    sisters without epilogue.parallel (the simulator does so too)."""
    for node in site.nodes:
        admin.gc(site.config(node), str(site.cluster.pbs_home(node)), grace=0, server=site.server)


# ----------------------------------------------------------------------------- a reused job id
def test_a_kept_key_does_not_open_another_users_later_job_with_the_same_id(make_site, docker_client):
    """Job ids repeat (a new server database, wrap-around). User A keeps the key of job
    1234.<server>; later user B's job gets the same id. A's key must not open B's sshd,
    and B's job shares no key, token or candidate port with A's."""
    site = make_site(nodes=2)
    jobid = f"1234.{site.server}"
    other = f"image={OPENMPI_IMAGE};run=host"
    nodes = [("tdnode0", 1), ("tdnode1", 1)]
    secret = keys.load_secret(str(site.secret))
    with user_tempdir(USER) as tmp:
        first = HeldJob(site, nodes, other=other, user=USER)
        first.job.jobid = jobid
        with first:
            kept = tmp / "kept-key"
            shutil.copy(ctr_dir(site, "tdnode0", jobid) / "id_ed25519", kept)     # A's own key: A may keep it
            os.chown(kept, pwd.getpwnam(USER).pw_uid, -1)
            os.chmod(kept, 0o600)
            a_host_key = (ctr_dir(site, "tdnode1", jobid) / "ssh_host_ed25519_key.pub").read_text().split()[1]
            address, port = first.endpoint(docker_client, alias_for(jobid, 1))
            inside = ssh_as(USER, direct_ssh_args(kept, address, port, USER) + ["echo IN"])
            assert inside.returncode == 0 and inside.stdout.split() == ["IN"], inside.stderr     # control
            a_banner = probe.read_banner(address, port)
        assert first.release().exit_status == 0

        second = HeldJob(site, nodes, other=other, user=OTHER_USER)
        second.job.jobid = jobid
        with second:
            for node_index in (0, 1):
                address, port = second.endpoint(docker_client, alias_for(jobid, node_index))
                denied = ssh_as(USER, direct_ssh_args(kept, address, port, OTHER_USER) + ["echo IN"])
                assert denied.returncode == 255 and "IN" not in denied.stdout.split(), denied
                assert "Permission denied" in denied.stderr, denied.stderr
            b_host_key = (ctr_dir(site, "tdnode1", jobid) / "ssh_host_ed25519_key.pub").read_text().split()[1]
            b_banner = probe.read_banner(*second.endpoint(docker_client, alias_for(jobid, 1)))
        assert second.release().exit_status == 0

    assert a_host_key != b_host_key
    assert a_banner.split()[-1] != b_banner.split()[-1]                         # the tokens differ
    ident_a, ident_b = identity(first.job, USER), identity(second.job, OTHER_USER)
    assert ident_a.jobid == ident_b.jobid and ident_a.user != ident_b.user
    cfg = site.config("tdnode1")
    for node_index in (0, 1):                  # (tests/unit/test_keys.py: no candidate in common)
        ports_a, ports_b = (keys.candidate_ports(secret, ident, node_index, 0, cfg.network_port_range,
                                                 cfg.network_port_candidates) for ident in (ident_a, ident_b))
        assert ports_a != ports_b
    assert site.leftovers(docker_client, jobid) == []


# ----------------------------------------------------------------------------- users cannot take nodes down
EXITING_SSHD = "torque-docker-test/exiting-sshd"


@pytest.fixture(scope="module")
def exiting_sshd_image(docker_client, images):
    """An image whose sshd exits at once, saying why on stderr."""
    recipe = (f"FROM {images['openmpi']}\n"
              "RUN printf '#!/bin/sh\\necho \"sshd: this image breaks sshd on purpose\" >&2\\nexit 1\\n' "
              "> /usr/sbin/sshd && chmod 755 /usr/sbin/sshd\n")
    with derived_image(docker_client, recipe, EXITING_SSHD) as tag:
        yield tag


LOOPED_SHELL = "torque-docker-test/looped-shell"


@pytest.fixture(scope="module")
def looped_shell_image(docker_client, images):
    """An image whose /bin/bash (the test user's login shell) is a symlink loop: Docker
    answers a question about that path with HTTP 500."""
    recipe = (f"FROM {images['openmpi']}\n"
              "RUN rm -f /bin/bash /usr/bin/bash && ln -s bash /usr/bin/bash && { [ -L /bin ] || ln -s bash /bin/bash; }\n")
    with derived_image(docker_client, recipe, LOOPED_SHELL) as tag:
        yield tag


def no_node_down(result) -> None:
    assert result.down_nodes == [], result.log
    runs = result.runs("prologue.parallel")
    assert runs and all(r.rc == 0 for r in runs), [(r.node, r.rc) for r in runs]


def test_a_memory_request_docker_refuses_takes_no_node_down(site, docker_client):
    job = site.job(SCRIPT, [("tdnode0", 1), ("tdnode1", 1)], other=f"image={OPENMPI_IMAGE}",
                   resources={"pmem": "1kb"})
    result = site.cluster.run(job)
    no_node_down(result)
    text = refusal(job)
    assert "pmem=1kb" in text and "Docker needs at least 6 MiB" in text and "pmem=6mb" in text
    assert result.exit_status == 1 and "SCRIPT-RAN" not in result.stdout       # refused, never requeued
    assert text.strip() in result.stderr
    assert docker_client.containers.list(all=True, filters={"label": f"{L_JOB}={job.jobid}"}) == []


def test_an_image_whose_sshd_exits_at_once_takes_no_node_down(site, docker_client, exiting_sshd_image):
    job = site.job(SCRIPT, [("tdnode0", 1), ("tdnode1", 1)], other=f"image={exiting_sshd_image}")
    result = site.cluster.run(job)
    no_node_down(result)
    text = refusal(job)
    assert "exited at start" in text and "breaks sshd on purpose" in text, text
    assert result.exit_status == 1 and "SCRIPT-RAN" not in result.stdout
    assert "not a fault of this node: left to the mother superior" in site.log_file.read_text()
    sweep(site)
    assert site.leftovers(docker_client, job.jobid) == []


def test_an_image_whose_registry_does_not_resolve_takes_no_node_down(site, docker_client):
    job = site.job(SCRIPT, [("tdnode0", 1), ("tdnode1", 1)], other="image=registry.invalid/lab/x:1")
    result = site.cluster.run(job)
    no_node_down(result)
    text = refusal(job)
    assert "registry.invalid/lab/x:1" in text and "does not resolve" in text, text
    assert "check the image name" in text
    assert result.exit_status == 1 and "SCRIPT-RAN" not in result.stdout


def test_an_image_that_breaks_dockers_look_at_the_login_shell_takes_no_node_down(site, docker_client,
                                                                                 looped_shell_image):
    """The prologue asks Docker whether the user's login shell exists in the image; the image
    can make that question fail. The containers then give the user /bin/sh, and the job runs."""
    job = site.job("#!/bin/sh\nssh -o BatchMode=yes \"$(sed -n 2p $PBS_NODEFILE)\" 'echo IN-$(hostname)'\n",
                   [("tdnode0", 1), ("tdnode1", 1)], other=f"image={looped_shell_image};run=host")
    result = site.cluster.run(job)
    no_node_down(result)
    assert result.exit_status == 0 and f"IN-{alias_for(job.jobid, 1)}" in result.stdout, result.stdout + result.stderr
    assert site.leftovers(docker_client, job.jobid) == []


PORT_HOLDER = r"""
import socket, sys, time
address, lo, hi = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
held = []
for port in range(lo, hi + 1):
    s = socket.socket()
    s.bind((address, port))
    s.listen(1)
    held.append(s)
print("ready", flush=True)
time.sleep(600)
"""


class AsOtherUser:
    """A process of the OTHER user (a real uid), ended by its pid, pass or fail."""

    def __init__(self, code: str, *args: str) -> None:
        pw = pwd.getpwnam(OTHER_USER)
        self.proc = subprocess.Popen([sys.executable, "-c", code, *args], user=pw.pw_uid, group=pw.pw_gid,
                                     extra_groups=os.getgrouplist(OTHER_USER, pw.pw_gid), cwd="/",
                                     env={"PATH": "/usr/bin:/bin"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.stop()
            raise AssertionError(f"the other user's process did not start: {line} {self.proc.stderr.read()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)


@pytest.mark.parametrize("where", ["every node", "the sister only"])
def test_another_users_processes_holding_the_port_range_take_no_node_down(make_site, docker_client, where):
    site = make_site(nodes=2, extra_config="[network]\nport_range = 45200-45215\nport_candidates = 16\n"
                                           "[jobs]\nmax_attempts = 1\n")
    address = "0.0.0.0" if where == "every node" else ADDRESSES["tdnode1"]
    holder = AsOtherUser(PORT_HOLDER, address, "45200", "45215")
    try:
        job = site.job(SCRIPT, [("tdnode0", 1), ("tdnode1", 1)], other=f"image={OPENMPI_IMAGE}")
        result = site.cluster.run(job)
    finally:
        holder.stop()
    no_node_down(result)
    text = refusal(job)
    if where == "every node":    # the MS meets the cause itself and says it
        assert f"none of the job's 16 candidate ports on {ADDRESSES['tdnode0']} is free" in text, text
    else:                        # the MS sees the sister's container missing and says where
        assert "the job's container on tdnode1 did not start" in text, text
    assert "none of the job's 16 candidate ports on 127.0.1.11 is free" in site.log_file.read_text()
    assert result.exit_status == 1 and "SCRIPT-RAN" not in result.stdout
    assert site.leftovers(docker_client, job.jobid) == []


# ----------------------------------------------------------------------------- locks
LOCK_GRABBER = r"""
import fcntl, os, sys
held = []
for top in sys.argv[1:]:
    for d, _, files in os.walk(top):
        for f in files:
            path = os.path.join(d, f)
            try:
                fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                held.append(path)
            except OSError:
                pass
print("held", held, flush=True)
"""


def test_no_user_can_hold_a_lock_of_the_node(make_site):
    """flock needs only an open descriptor: any lock file a user can open, a user can hold
    (and stall every prologue of the node). Made under umask 022 as stage, gc and the timer run."""
    site = make_site(nodes=2, extra_config="[jobs]\ndefault_model = process\n")
    result = site.cluster.run(site.job(SLEEPER, [("tdnode0", 2), ("tdnode1", 2)], other=f"image={OPENMPI_IMAGE}"))
    assert result.exit_status == 0, result.stderr
    old = os.umask(0o022)
    try:
        for node in site.nodes:
            state = NodeState(str(site.state_dir(node)))
            state.count_attempt("99.nowhere")
            state.forget_attempts("99.nowhere")
            with admin.image_lock(site.config(node), OPENMPI_IMAGE, timeout=5):
                pass
    finally:
        os.umask(old)
    locks = [p for node in site.nodes for p in site.state_dir(node).rglob("*.lock")]
    assert len(locks) >= 4, locks                                  # node and image locks on both nodes
    grab = as_user(OTHER_USER, [sys.executable, "-c", LOCK_GRABBER] + [str(site.state_dir(n)) for n in site.nodes])
    assert grab.returncode == 0, grab.stderr
    assert grab.stdout.strip() == "held []", grab.stdout
    for path in locks:
        assert path.stat().st_mode & 0o777 == 0o600 and path.stat().st_uid == 0, path
        assert path.parent.stat().st_mode & 0o777 == 0o700, path.parent


# ----------------------------------------------------------------------------- BEOWULF_JOB_MAP
@pytest.mark.parametrize("variable", ["BEOWULF_JOB_MAP", "BEOWULF_JOB_MAPX"])
def test_a_job_variable_never_steers_the_plan(make_site, docker_client, variable):
    """pbs_mom writes the nodefile from the job's BEOWULF_JOB_MAP (or any variable whose name
    starts so): the plan must come from what the server assigned, and so must the nodefile
    the job finally sees."""
    site = make_site(nodes=3)
    flood = ":".join(["tdnode2"] * 6 + ["tdnode0"] * 6 + ["evil.example.org"])
    script = "#!/bin/bash\necho \"NODEFILE $(tr '\\n' ' ' < \"$PBS_NODEFILE\")\"\n"
    job = site.job(script, [("tdnode0", 1), ("tdnode1", 1)], other=f"image={OPENMPI_IMAGE}",
                   variables={variable: flood})
    result = site.cluster.run(job)
    assert result.exit_status == 0, result.stdout + result.stderr
    n0, n1 = alias_for(job.jobid, 0), alias_for(job.jobid, 1)
    assert f"NODEFILE {n0} {n1} " in result.stdout, result.stdout
    assert "is not the 2 slot(s) the server assigned" in result.stdout           # and the user hears why
    assert "evil.example.org" not in site.log_file.read_text()                  # never probed or named
    assert site.leftovers(docker_client, job.jobid) == []


# ----------------------------------------------------------------------------- a fake banner
FAKE_SSHD = r"""
import socket, sys, threading
address, banner = sys.argv[1], sys.argv[2]
def serve(sock):
    while True:
        conn, _ = sock.accept()
        conn.sendall(banner.encode() + b"\r\n")
        conn.close()
for port in sys.argv[3:]:
    s = socket.socket()
    s.bind((address, int(port)))
    s.listen(16)
    threading.Thread(target=serve, args=(s,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait(600)
"""


def test_a_fake_banner_on_the_sister_does_not_win(make_site, docker_client):
    """Another user on the sister node answers with the job's banner (anyone who connects to
    the real sshd reads it) on the candidate ports before and after the one the container
    takes: the mother superior must still find the container, by its host key."""
    site = make_site(nodes=2)
    job = site.job("#!/bin/bash\nssh -o BatchMode=yes \"$(sed -n 2p $PBS_NODEFILE)\" 'echo FROM-$(hostname)'\n",
                   [("tdnode0", 1), ("tdnode1", 1)], other=f"image={OPENMPI_IMAGE};run=host")
    cfg = site.config("tdnode1")
    secret = keys.load_secret(str(site.secret))
    ident = identity(job)
    candidates = keys.candidate_ports(secret, ident, 1, 0, cfg.network_port_range, cfg.network_port_candidates)
    token = probe.container_token(keys.JobSecrets.derive(secret, ident).token, 1, 0)
    banner = f"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u10 {token}-{image_tag(docker_client.images.get(OPENMPI_IMAGE).id)}"
    fakes = [candidates[0]] + candidates[2:]              # the container gets candidates[1]
    faker = AsOtherUser(FAKE_SSHD, ADDRESSES["tdnode1"], banner, *map(str, fakes))
    try:
        assert probe.read_banner(ADDRESSES["tdnode1"], candidates[-1]) == banner     # the fakes answer
        result = site.cluster.run(job)
    finally:
        faker.stop()
    assert result.exit_status == 0, result.stdout + result.stderr
    assert f"FROM-{alias_for(job.jobid, 1)}" in result.stdout
    assert site.leftovers(docker_client, job.jobid) == []


# ----------------------------------------------------------------------------- the site's mistakes
@pytest.mark.parametrize("mistake,words", [
    ("[mounts]\ndefault = scratch:/data\n", "[mounts] default = 'scratch:/data'"),
    ("[jobs]\nshm_size = lots\n", "[jobs] shm_size = 'lots'"),
])
def test_the_sites_mistake_is_never_blamed_on_the_user(make_site, docker_client, mistake, words):
    """Before: both loaded, and at job time the user was told to fix their request."""
    site = make_site(nodes=1)
    conf = site.configs["tdnode0"]
    good = conf.read_text()
    conf.write_text(good + mistake + "[jobs]\nmax_attempts = 1\n")    # explained at once
    job = site.job(SCRIPT, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}")
    try:
        result = site.cluster.run(job)
    finally:
        conf.write_text(good)
    assert result.runs("prologue")[0].rc != 1                # never the abort that says "your request"
    told = refusal(job)
    assert words in told and f"{conf}:" in told, told
    assert "not of your job" in told and "tell the admin" in told, told
    assert "what to do:" not in told, told                      # no fix addressed to the user
    assert "SCRIPT-RAN" not in result.stdout
    assert words in site.log_file.read_text()                   # the admin log names it too


def test_a_sister_with_a_broken_config_is_a_node_fault(make_site):
    """The site's mistake on a sister: that node cannot run jobs, and says so by going down."""
    site = make_site(nodes=2)
    good = site.configs["tdnode1"].read_text()
    site.configs["tdnode1"].write_text(good + "[jobs]\nshm_size = lots\n")
    try:
        result = site.cluster.run(site.job(SCRIPT, [("tdnode0", 1), ("tdnode1", 1)], other=f"image={OPENMPI_IMAGE}"))
    finally:
        site.configs["tdnode1"].write_text(good)
    assert result.down_nodes == ["tdnode1"] and result.state == "Q"
    assert "[jobs] shm_size = 'lots'" in site.log_file.read_text()
    assert "a fault of this node: pbs_mom marks it down" in site.log_file.read_text()

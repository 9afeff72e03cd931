"""Integration fixtures: a simulated Torque cluster whose hooks are the real installed ones,
against the real Docker daemon, with real sshd in containers and real mpirun.

Nothing here is skipped when Docker is missing: these tests are the proof that the
product works, so a missing daemon is a failure (scripts/setup.sh provides one).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import docker
import fcntl
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

import momsim  # noqa: E402

from torque_docker import admin, config, keys, momjobs  # noqa: E402
from torque_docker.runtime import L_JOB  # noqa: E402
from torque_docker.state import flock_within  # noqa: E402
from torque_docker.sweep import job_of_server  # noqa: E402
from torque_docker.torque import safe_jobid  # noqa: E402

REPO = HERE.parent.parent
NODES = ["tdnode0", "tdnode1", "tdnode2"]
ADDRESSES = {name: f"127.0.1.{10 + i}" for i, name in enumerate(NODES)}
OPENMPI_IMAGE = "torque-docker-test/openmpi:latest"
MPICH_IMAGE = "torque-docker-test/mpich:latest"
NOSSHD_IMAGE = "torque-docker-test/nosshd:latest"
USER = "tduser"
OTHER_USER = "tduser2"


def pytest_collection_modifyitems(items):
    for item in items:
        if HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    client = docker.from_env(version="auto", timeout=60)
    try:
        client.ping()
    except Exception as exc:  # a failure, not a skip: see the module docstring
        pytest.fail(f"no Docker daemon ({exc}); run scripts/setup.sh as root")
    return client


@pytest.fixture(scope="session")
def images(docker_client) -> Dict[str, str]:
    for flavour in ("openmpi", "mpich", "nosshd"):
        subprocess.run(["bash", str(REPO / "tests/images/build-test-image.sh"), flavour], check=True,
                       stdout=subprocess.DEVNULL)
    return {"openmpi": OPENMPI_IMAGE, "mpich": MPICH_IMAGE, "nosshd": NOSSHD_IMAGE}


#: Integration runs of several checkouts on one machine take turns: they share node names,
#: addresses and the Docker daemon, and 2 cores do not time 2 suites faithfully.
RUN_LOCK = "/var/tmp/torque-docker-integration.lock"
RUN_LOCK_WAIT = 3600.0


@pytest.fixture(scope="session", autouse=True)
def one_integration_run_at_a_time():
    fd = os.open(RUN_LOCK, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    if not flock_within(fd, fcntl.LOCK_EX, RUN_LOCK_WAIT, pause=1.0, max_pause=1.0):
        pytest.fail(f"another integration run held {RUN_LOCK} for {RUN_LOCK_WAIT:.0f} s")
    yield
    os.close(fd)


def build_image(client, dockerfile: str, name: str = "torque-docker-test/attack") -> str:
    """A derived image tagged by a hash of its recipe (removed by the caller: remove_image)."""
    tag = f"{name}-{hashlib.sha256(dockerfile.encode()).hexdigest()[:12]}:latest"
    client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, forcerm=True,
                        network_mode="none", pull=False, timeout=300)
    return tag


def remove_image(client, ref: str) -> None:
    with contextlib.suppress(docker.errors.APIError):
        client.images.remove(ref, force=True)


@contextlib.contextmanager
def derived_image(client, dockerfile: str, name: str) -> Iterator[str]:
    """build_image for the length of a with block (a module fixture's image)."""
    tag = build_image(client, dockerfile, name)
    try:
        yield tag
    finally:
        remove_image(client, tag)


def checkout_python(root: Path) -> str:
    """An interpreter for the hooks this site installs that imports this checkout's package
    (see tests/conftest.py): /usr/bin/python3 with the checkout's src first on its path.

    A venv of the system's Python (its packages included) whose .pth puts src first: no
    PYTHONPATH in the hooks' environment, which the job starter would hand on to every job."""
    venv = root / "venv"
    if not venv.exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", "--system-site-packages", str(venv)],
                       check=True)
        for site_dir in venv.glob("lib/python3*/site-packages"):
            (site_dir / "torque_docker_checkout.pth").write_text(
                f"import sys; sys.path.insert(0, {str(REPO / 'src')!r})\n")
    return str(venv / "bin" / "python3")


@pytest.fixture(scope="session", autouse=True)
def hosts_and_users(one_integration_run_at_a_time):
    if os.geteuid() != 0:
        pytest.fail("integration tests run as root (they act as pbs_mom)")
    momsim.ensure_hosts(ADDRESSES)
    for name, uid in ((USER, 2001), (OTHER_USER, 2002)):
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "-m", "-u", str(uid), "-s", "/bin/bash", name], check=True)
        if pwd.getpwnam(name).pw_uid != uid:     # the tests check ids inside containers against it
            pytest.fail(f"this machine has a user {name} with uid {pwd.getpwnam(name).pw_uid}; the tests need "
                        f"uid {uid}: remove that user (the tests create it) or give it uid {uid}")
        os.chmod(pwd.getpwnam(name).pw_dir, 0o755)


def requeued_as_node_fault(site, result, *words: str) -> None:
    """The MS prologue exited 2 (Torque requeues the job) and the admin log says why."""
    assert result.state == "Q" and result.runs("prologue")[0].rc == 2, result.stdout + result.stderr
    log = site.log_file.read_text()
    assert all(word in log for word in words), log


def wait_for(predicate, timeout: float, what: str) -> None:
    """Poll until predicate() is true; every wait in the tests has a bound."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Site:
    """One simulated cluster with torque-docker installed on every node."""

    def __init__(self, root: Path, nodes: List[str], prologalarm: int, job_starter: bool,
                 extra_config: str = "", multi_mom: Optional[Dict[str, int]] = None, tmpdir: bool = False) -> None:
        self.root = root
        self.nodes = nodes
        self.secret = root / "secret"
        self.log_file = root / "torque-docker.log"
        self.configs: Dict[str, Path] = {}
        for node in nodes:
            conf = root / f"{node}.conf"
            conf.write_text(self.config_text(node, extra_config))
            self.configs[node] = conf
        keys.generate_secret(str(self.secret))
        # A server name of its own keeps job ids (so container names) apart from any other
        # site running at the same time on this Docker daemon. Letters and digits only: a
        # temporary directory's random tail may end in "_", which job tags drop, and tests
        # spell the expected tags out.
        self.server = "s" + re.sub(r"[^a-z0-9]", "", root.name.rsplit("-", 1)[-1].lower())
        self.cluster = momsim.Cluster(root / "cluster", nodes, prologalarm=prologalarm, server=self.server,
                                      pbs_environment_extra={n: {config.ENV_VAR: str(self.configs[n])}
                                                             for n in nodes},
                                      multi_mom=multi_mom, tmpdir=tmpdir)
        for node in nodes:
            admin.install(str(self.cluster.pbs_home(node) / "mom_priv"), python=checkout_python(root),
                          job_starter=job_starter, dropin=True, cfg=self.config(node),
                          out=open(os.devnull, "w"))

    def config_text(self, node: str, extra: str = "") -> str:
        return (f"[network]\nnode_name = {node}\nlisten_address = {ADDRESSES[node]}\n"
                f"[paths]\nstate_dir = {self.root}/state-{node}\nsecret_file = {self.secret}\n"
                f"[log]\ndestination = file:{self.log_file}\n" + extra)

    def config(self, node: str) -> config.Config:
        return config.load(str(self.configs[node]))

    def reconfigure(self, extra: str) -> None:
        for node in self.nodes:
            self.configs[node].write_text(self.config_text(node, extra))

    def state_dir(self, node: str) -> Path:
        return self.root / f"state-{node}"

    def workdir(self, user: str = USER) -> str:
        path = Path(pwd.getpwnam(user).pw_dir) / "tdjobs" / self.root.name
        subprocess.run(["install", "-d", "-o", user, "-g", user, "-m", "0755", str(path)], check=True)
        return str(path)

    def job(self, script: str, nodes, other: str = "", user: str = USER, **kwargs) -> momsim.Job:
        """A job of this site; ``jobid`` may be given (e.g. an array subjob from ``array``)."""
        resources = {"walltime": "00:05:00"}
        if other:
            resources["other"] = other
        resources.update(kwargs.pop("resources", {}))
        jobid = kwargs.pop("jobid", None) or self.cluster.new_jobid()
        return momsim.Job(jobid=jobid, user=user, script=script, nodes=nodes,
                          resources=resources, workdir=kwargs.pop("workdir", None) or self.workdir(user),
                          **kwargs)

    def array(self, script: str, placements, other: str = "", **kwargs) -> List[momsim.Job]:
        """qsub -t 1-N: one subjob ``M[i].server`` per placement (its nodes), indices from 1."""
        jobids = self.cluster.new_array(range(1, len(placements) + 1))
        return [self.job(script, nodes, other, jobid=jobid, **kwargs) for jobid, nodes in zip(jobids, placements)]

    def leftovers(self, client: docker.DockerClient, jobid: str) -> List[str]:
        """Everything of jobid still on any node: containers, ports, state, SSH files."""
        found = [f"container {c.name}" for c in client.containers.list(all=True, filters={"label": f"{L_JOB}={jobid}"})]
        for node in self.nodes:
            state = self.state_dir(node)
            ports = state / "ports.json"
            if ports.exists() and jobid in ports.read_text():
                found.append(f"port reservation on {node}")
            if (state / "jobs" / safe_jobid(jobid)).exists():
                found.append(f"job directory on {node}")
            ssh = Path(self.config(node).ssh_include_dir)
            if (ssh / f"{safe_jobid(jobid)}.conf").exists():
                found.append(f"ssh config on {node}")
        return found


SERVERS: List[str] = []        # every test site's Torque server name, for the leak check


@pytest.fixture(scope="session", autouse=True)
def no_leaks_after_the_session(docker_client):
    """After every integration test: nothing of any test job may be left on the node.

    Each test's own fixture already removes what it made, so this counts what the PRODUCT
    left behind before that: it checks after each site's jobs ended (see make_site)."""
    yield
    leaks = LEAKS[:]
    print(f"\ntorque-docker leak check: {len(SERVERS)} test sites, {len(leaks)} leak(s) found after the jobs ended")
    assert leaks == [], leaks


LEAKS: List[str] = []


@pytest.fixture
def make_site(docker_client, images) -> Iterator:
    """Factory of Sites; every container any of them made is removed afterwards, pass or fail."""
    made: List[Site] = []

    def factory(nodes: int = 2, prologalarm: int = 120, job_starter: bool = True, extra_config: str = "",
                multi_mom: Optional[Dict[str, int]] = None, tmpdir: bool = False) -> Site:
        root = Path(tempfile.mkdtemp(prefix="td-it-", dir="/var/tmp"))
        os.chmod(root, 0o755)
        site = Site(root, NODES[:nodes], prologalarm, job_starter, extra_config, multi_mom, tmpdir)
        made.append(site)
        return site

    yield factory
    for site in made:
        # What the product left: containers, ports, job dirs and ssh files of jobs that ended
        # (pbs_mom no longer knows them). Tests that leak on purpose sweep before they end.
        SERVERS.append(site.server)
        for node in site.nodes:
            # The jobs pbs_mom still holds, read as the product's sweep reads them: job files
            # are named after file prefixes (array subjobs, long ids), not job ids.
            try:
                running = momjobs.held_jobs(site.cluster.pbs_home(node))
            except momjobs.JobFilesUnreadable as exc:
                LEAKS.append(f"job files on {node}: {exc}")
                running = frozenset()
            for container in docker_client.api.containers(all=True, filters={"label": f"torque-docker.host={node}"}):
                jobid = (container.get("Labels") or {}).get(L_JOB, "")
                if job_of_server(jobid, site.server) and jobid not in running:
                    LEAKS.append(f"container {container['Names'][0]} of ended job {jobid}")
            ports = site.state_dir(node) / "ports.json"
            if ports.exists() and ports.read_text().strip() not in ("", "{}"):
                LEAKS.append(f"port reservations on {node}: {ports.read_text().strip()}")
        # The low-level list does not inspect each container: other test runs on this daemon
        # may remove theirs between the list and an inspect.
        for container in docker_client.api.containers(all=True, filters={"label": L_JOB}):
            if job_of_server((container.get("Labels") or {}).get(L_JOB, ""), site.server):
                try:
                    docker_client.api.remove_container(container["Id"], force=True)
                except docker.errors.NotFound:
                    pass
        for node in site.nodes:
            ssh = Path(site.config(node).ssh_include_dir)
            state = site.state_dir(node)
            if ssh.exists() and (state / "jobs").exists():
                for job in (state / "jobs").iterdir():
                    (ssh / f"{job.name}.conf").unlink(missing_ok=True)
        # Jobs left running (a failed test) keep their staging mounts, which ARE the user's
        # home or directories: take every mount under the site down before deleting it.
        from torque_docker import hostpath
        for point in sorted(hostpath.mounts_under(site.root), key=len, reverse=True):
            hostpath.unmount(Path(point))
        if hostpath.mounts_under(site.root):
            LEAKS.append(f"mounts left under {site.root}: {hostpath.mounts_under(site.root)}")
        else:
            shutil.rmtree(site.workdir(), ignore_errors=True)
            shutil.rmtree(site.root, ignore_errors=True)


@pytest.fixture
def site(make_site) -> Site:
    return make_site()

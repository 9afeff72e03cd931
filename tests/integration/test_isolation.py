"""Isolation and least privilege, proven against the real hooks, Docker and sshd.

A job of user A is held running (its script waits for a flag; ``kill_after`` bounds it
in any case) while the test inspects its containers from the host and from inside, and
acts as user B (``tduser2``, a real uid with its own groups) against A's keys, ports and
aliases. Every negative check has a positive control beside it, so a check that passes
only because the target was missing or unreachable fails instead.
"""
from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import os
import pwd
import re
import shutil
import stat
import subprocess
import tempfile
import threading
import uuid
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from conftest import ADDRESSES, OPENMPI_IMAGE, OTHER_USER, USER, wait_for

from torque_docker import keys
from torque_docker.runtime import L_ALIAS, L_HOST, L_JOB, L_PORT
from torque_docker.torque import safe_jobid

DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")
CAP_FIELDS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")


# ----------------------------------------------------------------------------- helpers


def as_user(name: str, argv: List[str], timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    """Run argv as a real login of name: its uid, primary gid and supplementary groups only
    (``user=`` alone would keep root's gid and groups and make B stronger than B is)."""
    pw = pwd.getpwnam(name)
    env = {"HOME": pw.pw_dir, "USER": name, "LOGNAME": name, "PATH": "/usr/bin:/bin"}
    return subprocess.run(argv, user=pw.pw_uid, group=pw.pw_gid, extra_groups=os.getgrouplist(name, pw.pw_gid),
                          env=env, cwd=pw.pw_dir, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL, **kwargs)


def job_containers(client, jobid):
    return client.containers.list(all=True, filters={"label": f"{L_JOB}={jobid}"}, ignore_removed=True)


def ctr_dir(site, node: str, jobid: str) -> Path:
    return site.state_dir(node) / "jobs" / safe_jobid(jobid) / "ctr"


def proc_status(text: str) -> Dict[str, str]:
    fields = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            fields[name.strip()] = " ".join(value.split())
    return fields


class HeldJob:
    """A container job whose script runs until released; the test acts while it runs."""

    def __init__(self, site, nodes, other: str, user: str = USER, bound: float = 240) -> None:
        self.site = site
        tag = uuid.uuid4().hex[:8]
        self.flag = site.root / f"release-{tag}"
        self.started = Path(site.workdir(user)) / f"started-{tag}"
        script = (f"#!/bin/bash\ntouch {self.started}\n"
                  f"for i in $(seq {int(bound * 10)}); do [ -e {self.flag} ] && exit 0; sleep 0.1; done\nexit 3\n")
        # kill_after is the outer bound: even a test that never releases the job ends it.
        self.job = site.job(script, nodes, other=other, user=user, kill_after=bound + 30)
        self.outcome: Dict[str, object] = {}
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.outcome["result"] = self.site.cluster.run(self.job)
        except BaseException as exc:  # reported by release()
            self.outcome["error"] = exc

    def __enter__(self) -> "HeldJob":
        self.thread.start()
        try:
            wait_for(lambda: self.started.exists() or not self.thread.is_alive(), 120, f"job {self.job.jobid} to start")
        except BaseException:
            self.release()
            raise
        if not self.started.exists():
            self.release()
            result = self.outcome.get("result")
            raise AssertionError(f"job {self.job.jobid} ended before its script started: "
                                 f"{self.outcome.get('error') or (result.stdout + result.stderr)}")
        return self

    def release(self):
        self.flag.touch()
        self.thread.join(300)
        assert not self.thread.is_alive(), f"job {self.job.jobid} did not end within 300 s of its release"
        if "error" in self.outcome:
            raise self.outcome["error"]
        return self.outcome["result"]

    def __exit__(self, *exc) -> None:
        if self.thread.is_alive() or "result" not in self.outcome:
            self.release()

    def containers(self, client):
        return job_containers(client, self.job.jobid)

    def aliases(self, client) -> List[str]:
        return sorted(c.labels[L_ALIAS] for c in self.containers(client))

    def endpoint(self, client, alias: str):
        """(address, port) of the sshd behind alias, from the container's labels."""
        for c in self.containers(client):
            if c.labels[L_ALIAS] == alias:
                return ADDRESSES[c.labels[L_HOST]], int(c.labels[L_PORT])
        raise AssertionError(f"no container has alias {alias}")


def ssh_as(name: str, args: List[str], timeout: float = 60) -> subprocess.CompletedProcess:
    return as_user(name, ["/usr/bin/ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10", *args], timeout=timeout)


def direct_ssh_args(key: Path, address: str, port: int, login: str) -> List[str]:
    """ssh straight to a container's sshd, ignoring every config (no alias, no known_hosts)."""
    return ["-F", "/dev/null", "-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null", "-o", "GlobalKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR", "-p", str(port), "-l", login, address]


@contextlib.contextmanager
def user_tempdir(name: str) -> Iterator[Path]:
    pw = pwd.getpwnam(name)
    path = Path(tempfile.mkdtemp(prefix="td-iso-", dir="/var/tmp"))
    try:
        os.chown(path, pw.pw_uid, pw.pw_gid)
        os.chmod(path, 0o700)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# ----------------------------------------------------------------------------- never root, no privileges
INSIDE = r"""
for s in /proc/[0-9]*/status; do echo "== $s"; cat "$s" 2>/dev/null; done
echo "== self"; cat /proc/self/status
for p in /var/run/docker.sock /run/docker.sock; do test -S $p && echo "SOCKET-PRESENT $p" || echo "socket-absent $p"; done
find / \( -path /proc -o -path /sys -o -path /dev \) -prune -o \( -type s -name '*docker*.sock' -print \) 2>/dev/null \
  | sed 's/^/FOUND-SOCKET /'
echo "PASSWD $(cut -d: -f1,3 /etc/passwd | tr '\n' ' ')"
echo END-OF-REPORT
"""


def check_container_from_the_host(site, container, jobid: str) -> None:
    """docker inspect and the host's /proc view of every process in one job container."""
    user = pwd.getpwnam(USER)
    groups = sorted(os.getgrouplist(USER, user.pw_gid))
    c = container
    c.reload()
    assert c.status == "running", c.name
    cfg, host = c.attrs["Config"], c.attrs["HostConfig"]
    assert cfg["User"] == f"{user.pw_uid}:{user.pw_gid}", c.name
    assert "ALL" in (host.get("CapDrop") or []), c.name
    assert not host.get("CapAdd"), c.name
    assert any(o.split("=")[0].split(":")[0] == "no-new-privileges" and not o.endswith(("false", "=0"))
               for o in host.get("SecurityOpt") or []), host.get("SecurityOpt")
    assert host.get("Privileged") is False and not host.get("Devices"), c.name
    assert host.get("PidMode", "") != "host" and host.get("UsernsMode", "") != "host", c.name
    # The Docker socket is never mounted, and only the job's own directory and the home are:
    # the home through its root-owned staging point, which holds the very home directory.
    job_ctr = str(ctr_dir(site, c.labels[L_HOST], jobid))
    staging = str(site.state_dir(c.labels[L_HOST]) / "mnt" / safe_jobid(jobid))
    home = os.stat(user.pw_dir)
    for mount in c.attrs["Mounts"]:
        source = mount.get("Source", "")
        assert mount["Type"] == "bind", mount
        assert os.path.realpath(source) not in {os.path.realpath(s) for s in DOCKER_SOCKETS}, mount
        assert "docker.sock" not in source and "docker.sock" not in mount["Destination"], mount
        if source.startswith(staging + "/"):
            assert mount["Destination"] == user.pw_dir, mount
            assert (os.stat(source).st_dev, os.stat(source).st_ino) == (home.st_dev, home.st_ino), mount
        else:
            assert source == job_ctr or source.startswith(job_ctr + "/"), mount

    # Every process of the container, whatever started it (docker top lists them by host pid).
    pids = [int(row[0]) for row in c.top(ps_args="-o pid")["Processes"]]
    seen = []
    for pid in pids:
        try:
            status = proc_status(Path(f"/proc/{pid}/status").read_text())
        except FileNotFoundError:
            continue                                # exited meanwhile
        seen.append(status.get("Name"))
        where = f"{c.name} host pid {pid} ({status.get('Name')})"
        assert status["Uid"].split() == [str(user.pw_uid)] * 4, where + " Uid " + status["Uid"]
        assert status["Gid"].split() == [str(user.pw_gid)] * 4, where + " Gid " + status["Gid"]
        assert sorted(int(g) for g in status["Groups"].split()) == groups, where
        assert status["NoNewPrivs"] == "1", where
        for name in CAP_FIELDS:
            assert int(status[name], 16) == 0, f"{where}: {name}={status[name]}"
    assert "docker-init" in seen and "sshd" in seen, (c.name, seen)     # init and the job's sshd at least


def check_container_from_inside(alias: str) -> None:
    """The container's own /proc, and what the job user can find there, over the job's alias."""
    user = pwd.getpwnam(USER)
    done = as_user(USER, ["/usr/bin/ssh", alias, INSIDE])
    assert done.returncode == 0 and "END-OF-REPORT" in done.stdout, (alias, done.stderr)
    blocks = re.split(r"^== (\S+)\n", done.stdout, flags=re.M)[1:]
    statuses = {name: proc_status(body) for name, body in zip(blocks[::2], blocks[1::2])}
    procs = {n: s for n, s in statuses.items() if n.startswith("/proc/") and "Uid" in s}
    names = {s.get("Name") for s in procs.values()}
    assert "docker-init" in names and any("sshd" in (n or "") for n in names), (alias, names)
    for name, status in procs.items():
        assert status["Uid"].split() == [str(user.pw_uid)] * 4, f"{alias} {name} ({status.get('Name')}) Uid {status['Uid']}"
        assert status["Gid"].split() == [str(user.pw_gid)] * 4, f"{alias} {name} ({status.get('Name')}) Gid {status['Gid']}"
    me = statuses["self"]
    assert me["NoNewPrivs"] == "1", alias
    for name in CAP_FIELDS:
        assert int(me[name], 16) == 0, f"{alias}: {name}={me[name]}"
    assert "SOCKET-PRESENT" not in done.stdout and "FOUND-SOCKET" not in done.stdout, done.stdout[-2000:]
    assert done.stdout.count("socket-absent") == 2
    [accounts] = re.findall(r"^PASSWD (.*)$", done.stdout, re.M)
    assert sorted(accounts.split()) == ["root:0", f"{USER}:{user.pw_uid}"], accounts   # nobody else is known inside


def test_container_processes_run_as_the_user_with_no_privileges(site, docker_client):
    # Per-process model on two nodes: three containers, two of them sharing an IPC namespace.
    with HeldJob(site, [("tdnode0", 2), ("tdnode1", 1)], other=f"image={OPENMPI_IMAGE};model=process;run=host") as held:
        containers = held.containers(docker_client)
        assert len(containers) == 3, [c.name for c in containers]
        for container in containers:
            check_container_from_the_host(site, container, held.job.jobid)
        for alias in held.aliases(docker_client):
            check_container_from_inside(alias)
        result = held.release()
    assert result.exit_status == 0, result.stdout + result.stderr
    assert site.leftovers(docker_client, held.job.jobid) == []


# ----------------------------------------------------------------------------- no-new-privileges
SUID = "/usr/local/bin/suid-id"


@pytest.fixture
def suid_image(docker_client, images):
    """The test image plus a setuid-root copy of id(1); removed afterwards, pass or fail."""
    tag = f"torque-docker-test/suid-{uuid.uuid4().hex[:10]}:latest"
    dockerfile = (f"FROM {OPENMPI_IMAGE}\n"
                  f"RUN cp /usr/bin/id {SUID} && chown 0:0 {SUID} && chmod 4755 {SUID}\n")
    try:
        docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=tag, rm=True, forcerm=True,
                                   network_mode="none", pull=False, timeout=300)
        yield tag
    finally:
        with contextlib.suppress(Exception):
            docker_client.images.remove(tag, force=True, noprune=False)


def run_once(client, image: str, command: List[str], **kwargs) -> str:
    """docker run, bounded, always removed; returns the output."""
    container = client.containers.run(image, command, detach=True, name=f"td-iso-{uuid.uuid4().hex[:10]}",
                                      network_mode="none", **kwargs)
    try:
        status = container.wait(timeout=60)
        output = container.logs().decode()
        assert status["StatusCode"] == 0, output
        return output
    finally:
        container.remove(force=True)


def test_setuid_root_binary_in_the_image_gains_nothing(site, docker_client, suid_image):
    uid = pwd.getpwnam(USER).pw_uid
    # Controls: the same binary as the same uid without no-new-privileges IS root, with all
    # capabilities dropped too (so it is no-new-privileges that holds, not the cap drop).
    probe = [SUID, "-u"]
    assert run_once(docker_client, suid_image, probe, user=f"{uid}").split() == ["0"]
    assert run_once(docker_client, suid_image, probe, user=f"{uid}:{uid}", cap_drop=["ALL"]).split() == ["0"]
    assert run_once(docker_client, suid_image, probe, user=f"{uid}:{uid}", cap_drop=["ALL"],
                    security_opt=["no-new-privileges"]).split() == [str(uid)]

    script = f"""#!/bin/bash
echo "mode=$(stat -c '%a:%u' {SUID})"
echo "euid=$({SUID} -u) ruid=$({SUID} -ur) egid=$({SUID} -g)"
echo "whoami=$(id -u)"
"""
    job = site.job(script, [("tdnode0", 1), ("tdnode1", 1)], other=f"image={suid_image}")   # run=container
    result = site.cluster.run(job)
    assert result.exit_status == 0, result.stdout + result.stderr
    assert f"image {suid_image}" in result.stdout.splitlines()[0]
    assert "mode=4755:0" in result.stdout, result.stdout              # the binary really is setuid root
    assert f"euid={uid} ruid={uid} egid={uid}" in result.stdout, result.stdout
    assert f"whoami={uid}" in result.stdout
    # On the sister too, through the job's alias.
    sister = f"""#!/bin/bash
ssh $(tail -1 "$PBS_NODEFILE") '{SUID} -u; stat -c %a:%u {SUID}'
"""
    job2 = site.job(sister, [("tdnode0", 1), ("tdnode1", 1)], other=f"image={suid_image};run=host")
    result2 = site.cluster.run(job2)
    assert result2.exit_status == 0, result2.stdout + result2.stderr
    body = [line for line in result2.stdout.splitlines() if not line.startswith("torque-docker:")]
    assert body == [str(uid), "4755:0"], result2.stdout
    for j in (job, job2):
        assert site.leftovers(docker_client, j.jobid) == []


# ----------------------------------------------------------------------------- user B against job A
def test_another_user_cannot_read_the_key_log_in_or_use_the_aliases(site, docker_client):
    b = pwd.getpwnam(OTHER_USER)
    with HeldJob(site, [("tdnode0", 1), ("tdnode1", 1)], other=f"image={OPENMPI_IMAGE};run=host") as held, \
            user_tempdir(OTHER_USER) as bdir:
        jobid = held.job.jobid
        aliases = held.aliases(docker_client)
        assert len(aliases) == 2
        for node in site.nodes:
            ctr = ctr_dir(site, node, jobid)
            # A can (so the files are there); B cannot, and the reason is permission.
            for path in (ctr / "id_ed25519", ctr / "ssh_host_ed25519_key"):
                assert as_user(USER, ["cat", str(path)]).stdout.startswith("-----BEGIN OPENSSH PRIVATE KEY")
                denied = as_user(OTHER_USER, ["cat", str(path)])
                assert denied.returncode != 0 and "Permission denied" in denied.stderr, (path, denied)
                assert "PRIVATE KEY" not in denied.stdout
            assert as_user(USER, ["cat", str(ctr / "known_hosts")]).returncode == 0     # A reaches its files
            listing = as_user(OTHER_USER, ["ls", str(ctr)])
            assert listing.returncode != 0 and "Permission denied" in listing.stderr, listing
            job_json = ctr.parent / "job.json"
            denied = as_user(OTHER_USER, ["cat", str(job_json)])
            assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied

        # B's own key, straight at A's sshd: refused, as A's login and as B's own.
        made = as_user(OTHER_USER, ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(bdir / "id_b")])
        assert made.returncode == 0, made.stderr
        # Control: the same command with A's key (copied for B by root) gets in, so the port and
        # address are right and a refusal below is sshd refusing B's key.
        stolen = bdir / "id_a"
        shutil.copy(ctr_dir(site, "tdnode0", jobid) / "id_ed25519", stolen)
        os.chown(stolen, b.pw_uid, b.pw_gid)
        os.chmod(stolen, 0o600)
        for alias in aliases:
            address, port = held.endpoint(docker_client, alias)
            control = ssh_as(OTHER_USER, direct_ssh_args(stolen, address, port, USER) + ["echo IN-$(id -u)"])
            assert control.returncode == 0 and control.stdout.split() == ["IN-2001"], (alias, control.stderr)
            for login in (USER, OTHER_USER):
                tried = ssh_as(OTHER_USER, direct_ssh_args(bdir / "id_b", address, port, login) + ["echo IN-$(id -u)"])
                assert tried.returncode == 255 and "IN-" not in tried.stdout, (alias, login, tried)
                assert "Permission denied" in tried.stderr, (alias, login, tried.stderr)

        # A's aliases, as B: refused (B reads A's config but not A's key nor A's known_hosts).
        for alias in aliases:
            mine = as_user(USER, ["/usr/bin/ssh", alias, "echo IN-$(id -u)"])
            assert mine.returncode == 0 and mine.stdout.split() == ["IN-2001"], mine.stderr   # the alias works for A
            # As is: B cannot read A's known_hosts, so ssh stops at the host key.
            tried = ssh_as(OTHER_USER, [alias, "echo IN-$(id -u)"])
            assert tried.returncode == 255 and "IN-" not in tried.stdout, (alias, tried)
            assert re.search(r"Permission denied|Host key verification failed", tried.stderr), tried.stderr
            # Past the host key check, with A's identity (unreadable) and with B's own key: sshd refuses.
            no_host_check = ["-o", "StrictHostKeyChecking=no", "-o", f"UserKnownHostsFile={bdir}/known_hosts"]
            for extra in ([], ["-i", str(bdir / "id_b")]):
                tried = ssh_as(OTHER_USER, no_host_check + extra + [alias, "echo IN-$(id -u)"])
                assert tried.returncode == 255 and "IN-" not in tried.stdout, (alias, extra, tried)
                assert "Permission denied" in tried.stderr, (alias, extra, tried.stderr)
        result = held.release()
    assert result.exit_status == 0, result.stdout + result.stderr
    assert site.leftovers(docker_client, held.job.jobid) == []


# ----------------------------------------------------------------------------- modes
def mode_owner(path: Path):
    info = os.lstat(path)
    return stat.S_IMODE(info.st_mode), info.st_uid


def test_state_and_ssh_files_have_owner_only_modes(site, docker_client):
    user = pwd.getpwnam(USER)
    secret_text = site.secret.read_text().strip()
    with HeldJob(site, [("tdnode0", 1), ("tdnode1", 1)], other=f"image={OPENMPI_IMAGE};run=host") as held:
        jobid = held.job.jobid
        private = {}
        for node in site.nodes:
            state = site.state_dir(node)
            job_dir = state / "jobs" / safe_jobid(jobid)
            ctr = job_dir / "ctr"
            # The job's files: root's directory (a tmpfs), the user owns only what they must.
            expected = {
                state / "ports.json": (0o600, 0),
                state / "cores.json": (0o600, 0),
                state / "mnt": (0o700, 0),
                job_dir / "job.json": (0o600, 0),
                job_dir / "starter.json": (0o640, 0),      # the job starter's record: the user reads it only
                job_dir: (0o755, 0),
                ctr: (0o711, 0),
                ctr / "passwd": (0o644, 0),
                ctr / "group": (0o644, 0),
                ctr / "sshd_config": (0o644, 0),
                ctr / "authorized_keys": (0o644, 0),
                ctr / "known_hosts": (0o644, 0),
                ctr / "id_ed25519": (0o600, user.pw_uid),
                ctr / "ssh_host_ed25519_key": (0o600, user.pw_uid),
                ctr / "ssh_config": (0o644, user.pw_uid),
                ctr / "hosts": (0o644, user.pw_uid),
            }
            for path, want in expected.items():
                assert path.exists(), f"{node}: {path} is missing"
                got = mode_owner(path)
                assert got == want, f"{node}: {path} is {got[0]:o} uid {got[1]}, want {want[0]:o} uid {want[1]}"
            assert jobid in (state / "ports.json").read_text()           # the reservation is really there
            assert any(line.split()[4] == str(ctr) and " - tmpfs " in line
                       for line in open("/proc/self/mountinfo")), f"{ctr} is not a tmpfs"
            # Nothing in the state directory is writable by group or others, nothing is a link out
            # (mnt/ holds the staged user directories: root-only, not walked).
            for root, dirs, files in os.walk(state):
                if Path(root) == state:
                    dirs.remove("mnt")
                for name in dirs + files:
                    path = Path(root) / name
                    mode, _ = mode_owner(path)
                    assert not path.is_symlink(), path
                    assert not mode & 0o022, f"{path} is {mode:o}"
            # Private keys are readable by their owner only, and only the job user owns files in ctr/.
            for path in ctr.iterdir():
                mode, owner = mode_owner(path)
                if path.is_dir() and path.name == "ssh.d":
                    # the SSH config's per-group Host blocks of large jobs (HostName and Port only):
                    # root's on the MS, the user's where the push wrote them; never writable by others
                    assert owner in (user.pw_uid, 0) and not mode & 0o022, (path, oct(mode))
                    assert all(b"PRIVATE KEY" not in f.read_bytes() for f in path.iterdir()), path
                    continue
                if path.is_dir():          # run/: the starter's pid and status files, the user's
                    assert path.name == "run" and owner == user.pw_uid and mode & 0o077 == 0, (path, oct(mode))
                    continue
                if b"PRIVATE KEY" in path.read_bytes():
                    assert mode & 0o077 == 0, f"{path} holds a private key and is {mode:o}"
                    private[path.name] = path.read_text()
                assert owner in (user.pw_uid, 0), path
        assert set(private) == {"id_ed25519", "ssh_host_ed25519_key"}, sorted(private)

        # The host's ssh config: root 0644, no secrets (no key material, no site secret, no token).
        host_config = Path(site.config("tdnode0").ssh_include_dir) / f"{safe_jobid(jobid)}.conf"
        assert mode_owner(host_config) == (0o644, 0)
        assert mode_owner(host_config.parent)[0] & 0o022 == 0 and mode_owner(host_config.parent)[1] == 0
        text = host_config.read_text()
        assert all(f"Host {a}" in text for a in held.aliases(docker_client))
        token = keys.JobSecrets.derive(keys.load_secret(str(site.secret)), identity(held.job)).token
        assert "PRIVATE KEY" not in text and secret_text not in text and token not in text
        for body in private.values():
            core = "".join(body.splitlines()[1:-1])
            assert core[:40] not in text
        dropin = Path(site.config("tdnode0").ssh_dropin)
        assert mode_owner(dropin) == (0o644, 0)

        # The admin log (it names users and jobs) is not for other users either.
        assert mode_owner(site.log_file)[0] & 0o007 == 0 and mode_owner(site.log_file)[1] == 0

        # The site secret: root, 0400, and neither user can read it.
        assert mode_owner(site.secret) == (0o400, 0)
        for name in (USER, OTHER_USER):
            denied = as_user(name, ["cat", str(site.secret)])
            assert denied.returncode != 0 and "Permission denied" in denied.stderr, (name, denied)
            assert secret_text not in denied.stdout
        result = held.release()
    assert result.exit_status == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------- keys
def raw(pair: keys.KeyPair) -> bytes:
    """The 32-byte Ed25519 private key inside an OpenSSH private key file."""
    key = serialization.load_ssh_private_key(pair.private_openssh, password=None)
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def identity(job, user: str = "") -> keys.JobIdentity:
    """What pbs_mom tells every node of a simulated job: $1-$3 and PBS_MSHOST."""
    import grp
    pw = pwd.getpwnam(user or job.user)
    return keys.JobIdentity(job.jobid, pw.pw_name, grp.getgrgid(pw.pw_gid).gr_name, job.nodes[0][0])


def test_key_derivation_is_hmac_of_the_job_and_keys_differ_between_jobs(tmp_path):
    path = tmp_path / "secret"
    keys.generate_secret(str(path))
    assert mode_owner(path) == (0o400, 0)
    secret = keys.load_secret(str(path))

    def seed(purpose: str, jobid: str) -> bytes:
        """HMAC-SHA256 of the length-prefixed purpose, job id, user, group and mother superior."""
        parts = [purpose, jobid, "alice", "users", "n01"]
        message = b"torque-docker job secrets v2" + b"".join(len(p).to_bytes(4, "big") + p.encode() for p in parts)
        return hmac.new(secret, message, hashlib.sha256).digest()

    def expected_public(purpose: str, jobid: str) -> str:
        public = Ed25519PrivateKey.from_private_bytes(seed(purpose, jobid)).public_key()
        return public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()

    jobs = [f"{n}.server" for n in range(100, 120)]
    derived = {j: keys.JobSecrets.derive(secret, keys.JobIdentity(j, "alice", "users", "n01")) for j in jobs}
    for jobid, s in derived.items():
        assert s.user_key.public_openssh.split()[:2] == expected_public("user-key", jobid).split()[:2]
        assert s.host_key.public_openssh.split()[:2] == expected_public("host-key", jobid).split()[:2]
        assert raw(s.user_key) == seed("user-key", jobid) and raw(s.host_key) == seed("host-key", jobid)
        # The same on every node (the OpenSSH file has random check bytes, the key does not).
        again = keys.JobSecrets.derive(secret, keys.JobIdentity(jobid, "alice", "users", "n01"))
        assert again.token == s.token and raw(again.user_key) == raw(s.user_key)
        assert again.user_key.public_openssh == s.user_key.public_openssh
        assert again.host_key.public_openssh == s.host_key.public_openssh
    publics = [s.user_key.public_openssh.split()[1] for s in derived.values()]
    hosts = [s.host_key.public_openssh.split()[1] for s in derived.values()]
    tokens = [s.token for s in derived.values()]
    assert len(set(publics + hosts)) == 2 * len(jobs) and len(set(tokens)) == len(jobs)
    # Job N's private key material does not give job N+1's key: loading N's private key
    # yields N's public key, never N+1's, and N+1's seed is not N's under any simple shift.
    for a, b in zip(jobs, jobs[1:]):
        key_a = serialization.load_ssh_private_key(derived[a].user_key.private_openssh, password=None)
        pub_from_a = key_a.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                     serialization.PublicFormat.OpenSSH).decode()
        assert pub_from_a.split()[1] == derived[a].user_key.public_openssh.split()[1]
        assert pub_from_a.split()[1] != derived[b].user_key.public_openssh.split()[1]
        assert raw(derived[a].user_key) != raw(derived[b].user_key)
        assert raw(derived[a].user_key) != raw(derived[a].host_key)
    # Another site's secret gives other keys for the same job id.
    other = bytes(x ^ 0xFF for x in secret)
    assert keys.JobSecrets.derive(other, keys.JobIdentity(jobs[0], "alice", "users", "n01")).user_key.public_openssh \
        != derived[jobs[0]].user_key.public_openssh


def test_two_running_jobs_have_their_own_keys_and_neither_opens_the_other(site, docker_client):
    secret = keys.load_secret(str(site.secret))
    other = f"image={OPENMPI_IMAGE};run=host"
    with HeldJob(site, [("tdnode0", 1)], other=other) as first, HeldJob(site, [("tdnode0", 1)], other=other) as second:
        with user_tempdir(USER) as tmp:
            pub = {}
            for held in (first, second):
                ctr = ctr_dir(site, "tdnode0", held.job.jobid)
                on_disk = (ctr / "id_ed25519.pub").read_text().split()[:2]
                assert on_disk == keys.JobSecrets.derive(secret, identity(held.job)).user_key.public_openssh.split()[:2]
                pub[held.job.jobid] = on_disk[1]
                copy = tmp / f"key-{safe_jobid(held.job.jobid)}"
                shutil.copy(ctr / "id_ed25519", copy)
                os.chown(copy, pwd.getpwnam(USER).pw_uid, -1)
                os.chmod(copy, 0o600)
            assert len(set(pub.values())) == 2
            for held, stranger in ((first, second), (second, first)):
                [alias] = held.aliases(docker_client)
                address, port = held.endpoint(docker_client, alias)
                own = tmp / f"key-{safe_jobid(held.job.jobid)}"
                foreign = tmp / f"key-{safe_jobid(stranger.job.jobid)}"
                ok = ssh_as(USER, direct_ssh_args(own, address, port, USER) + ["echo IN"])
                assert ok.returncode == 0 and ok.stdout.split() == ["IN"], ok.stderr      # control
                no = ssh_as(USER, direct_ssh_args(foreign, address, port, USER) + ["echo IN"])
                assert no.returncode == 255 and "IN" not in no.stdout.split(), no
                assert "Permission denied" in no.stderr, no.stderr
        results = [first.release(), second.release()]
    for result in results:
        assert result.exit_status == 0, result.stdout + result.stderr


# ----------------------------------------------------------------------------- mount requests
SCRIPT = "#!/bin/bash\necho SCRIPT-RAN\ntouch \"$PBS_O_WORKDIR/script-ran-$PBS_JOBID\"\n"

# name: (source under the site's data dir or absolute, words of the explanation, extra allowed paths)
MOUNT_CASES = {
    "outside": ("/etc", "is outside the paths the site allows", ""),
    "parent-of-allowed": ("{root}", "is outside the paths the site allows", ""),
    "sibling-prefix": ("{data}-evil", "is outside the paths the site allows", ""),
    "symlink-to-outside": ("{data}/link-etc", "is outside the paths the site allows", ""),
    "symlink-dir-in-path": ("{data}/link-root/state-tdnode0", "which is never mounted into containers", ""),   # the state dir
    "docker-socket": ("/var/run/docker.sock", "which is never mounted into containers", ""),
    "docker-socket-run": ("/run/docker.sock:/data", "which is never mounted into containers", ""),
    "docker-socket-via-symlink": ("{data}/link-sock", "which is never mounted into containers", ""),
    "docker-socket-dir-allowed": ("/run/docker.sock", "which is never mounted into containers", " /run /var/run"),
    "docker-lib-via-symlink": ("{data}/link-lib", "which is never mounted into containers", " /var/lib"),
    "dotdot": ("{data}/../state-tdnode0", "contains '..'", ""),
}


def mount_site(make_site, extra_allowed: str = ""):
    site = make_site(nodes=1)
    data = site.root / "data"
    user = pwd.getpwnam(USER)
    (data / "mine").mkdir(parents=True)
    (data / "mine" / "hello").write_text("hello-from-data\n")
    for path in (data, data / "mine", data / "mine" / "hello"):
        os.chown(path, user.pw_uid, user.pw_gid)
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    (site.root / "data-evil").mkdir()
    os.chmod(site.root / "data-evil", 0o755)
    # Links a user could plant under an allowed directory.
    os.symlink("/etc", data / "link-etc")
    os.symlink(str(site.root), data / "link-root")
    os.symlink("/var/run/docker.sock", data / "link-sock")
    os.symlink("/var/lib/docker", data / "link-lib")
    site.reconfigure(f"[mounts]\nallowed = {data}{extra_allowed}\n")
    return site, data


@pytest.mark.parametrize("case", sorted(MOUNT_CASES))
def test_mount_outside_the_allowed_paths_is_refused(make_site, docker_client, case):
    source, words, extra = MOUNT_CASES[case]
    site, data = mount_site(make_site, extra)
    source = source.format(data=data, root=site.root)
    job = site.job(SCRIPT, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE};mount={source}")
    result = site.cluster.run(job)
    refused = Path(job.workdir) / f"torque-docker-{job.jobid}.refused"
    assert refused.exists(), result.stdout + result.stderr
    text = refused.read_text()
    assert f"job {job.jobid} was not started" in text and words in text, text
    assert "the job script did not run" in text
    assert result.exit_status == 1 and result.runs("prologue")[0].rc == 0   # refused through the starter
    assert "SCRIPT-RAN" not in result.stdout + result.stderr
    assert not (Path(job.workdir) / f"script-ran-{job.jobid}").exists()
    assert job_containers(docker_client, job.jobid) == []
    assert site.leftovers(docker_client, job.jobid) == []


def test_mount_under_the_allowed_path_works_and_the_socket_stays_out(make_site, docker_client):
    """The positive control of the refusals above: same site, same policy, an allowed path."""
    site, data = mount_site(make_site)
    script = ("#!/bin/bash\ncat /data/hello\ntouch /data/written 2>/dev/null && echo WRITABLE || echo READ-ONLY\n"
              "test -S /var/run/docker.sock && echo SOCKET || echo NO-SOCKET\n")
    job = site.job(script, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE};mount={data}/mine:/data:ro")
    result = site.cluster.run(job)
    assert result.exit_status == 0, result.stdout + result.stderr
    body = [line for line in result.stdout.splitlines() if not line.startswith("torque-docker:")]
    assert body == ["hello-from-data", "READ-ONLY", "NO-SOCKET"], result.stdout + result.stderr
    assert not (data / "mine" / "written").exists()
    assert site.leftovers(docker_client, job.jobid) == []


# ----------------------------------------------------------------------------- the working directory
# PBS_O_WORKDIR is the user's choice (qsub -d DIR) and is bind-mounted like a mount request.
WORKDIR_SCRIPT = """#!/bin/bash
echo SCRIPT-RAN
ssh $(head -1 "$PBS_NODEFILE") 'for p in /var/run/docker.sock /run/docker.sock; do test -S $p && echo SOCKET-INSIDE $p; done
echo "init=$(cat /proc/1/comm)"'
"""
WORKDIRS = {"run": "/run", "var-run": "/var/run", "proc": "/proc", "slash": "/", "ctr-dir": "/run/torque-docker"}


@pytest.mark.parametrize("case", sorted(WORKDIRS))
def test_a_working_directory_never_brings_host_internals_into_the_container(site, docker_client, case):
    workdir = WORKDIRS[case]
    job = site.job(WORKDIR_SCRIPT, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE};run=host", workdir=workdir)
    result = site.cluster.run(job)
    output = result.stdout + result.stderr
    # Either way, a user's choice is never a node fault (that would requeue it, exit > 1).
    assert result.runs("prologue")[0].rc in (0, 1), (result.runs("prologue")[0].rc, output)
    assert result.state == "C", output
    if "SCRIPT-RAN" in output:
        # Run, but without the host's internals: no Docker socket, the container's own /proc.
        assert "SOCKET-INSIDE" not in output, output
        assert "init=docker-init" in output, output
    else:
        # Refused: the explanation lands in the workdir or, when the user cannot write there, the home.
        name = f"torque-docker-{job.jobid}.refused"
        places = [Path(workdir) / name, Path(pwd.getpwnam(USER).pw_dir) / name]
        found = [p for p in places if p.exists()]
        try:
            assert found and f"job {job.jobid} was not started" in found[0].read_text(), output
            assert result.exit_status == 1, output
        finally:
            for path in found:
                path.unlink()
    assert site.leftovers(docker_client, job.jobid) == []

"""Attacks on the container start path, as a hostile user or image would make them, against
the real hooks, Docker, runc and sshd through the simulator.

The attacker has a shell on the node as the job user (tduser) while their job starts, an
image of their own (built here from the test image), and ``qsub`` options. Every test
here failed on the code before the defence it proves: a racer as the user swapped the
job's files or directories between the prologue's checks and Docker's use of them, an
image's /etc/group gave the job gid 0, a tarball re-tagged the site's image, a FIFO hung
the prologue, a prologue killed at $prologalarm requeued forever, VOLUMEs and /tmp filled
the node's disk, a fork loop had no bound. Each attack has a positive control beside it
(the racer really ran and found its target; the same job without the attack works), so a
test cannot pass because the attack never happened.
"""
from __future__ import annotations

import contextlib
import grp
import io
import json
import os
import pwd
import signal
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path
from typing import Iterator, List

import pytest

from conftest import OPENMPI_IMAGE, OTHER_USER, USER, build_image, remove_image

from torque_docker import admin, lifecycle
from torque_docker.identity import lookup
from torque_docker.runtime import L_HOST, L_JOB, ContainerSpec, Runtime


# ----------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def racer(user: str, code: str, *args: str) -> Iterator[dict]:
    """Run a Python loop as ``user`` (their uid, gid and groups) next to the test; yields a
    dict that gets the loop's last output line (its counters) once it stopped."""
    pw = pwd.getpwnam(user)
    report: dict = {}
    proc = subprocess.Popen([sys.executable, "-I", "-c", code, *args], user=pw.pw_uid, group=pw.pw_gid,
                            extra_groups=os.getgrouplist(user, pw.pw_gid), cwd="/", env={"PATH": "/usr/bin:/bin"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        yield report
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate(timeout=30)
        lines = out.split()
        report.update(dict(zip(lines[::2], (int(x) for x in lines[1::2]))), stderr=err)


#: The racers' common frame: counters printed when the test stops them (SIGTERM).
RACER_FRAME = r"""
import os, signal, stat, sys, time
count = {}
def bump(name):
    count[name] = count.get(name, 0) + 1
def stop(*_):
    print(" ".join(f"{k} {v}" for k, v in count.items()), flush=True)
    os._exit(0)
signal.signal(signal.SIGTERM, stop)
jobs = sys.argv[1] + "/jobs"
def job_dirs():
    try:
        return os.listdir(jobs)
    except OSError:
        return []
"""


def body(result) -> List[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if not line.startswith("torque-docker:")]


def refusal_text(job) -> str:
    for place in (Path(job.workdir), Path(pwd.getpwnam(job.user).pw_dir)):
        path = place / f"torque-docker-{job.jobid}.refused"
        if path.exists():
            text = path.read_text()
            path.unlink()
            return text
    return ""


@pytest.fixture(scope="module")
def group_image(docker_client, images):
    """An image whose /etc/group names groups after the gids of tduser (2001) and tduser3's
    project group (2103), with gid 0: Docker and runc look gids up by NAME first."""
    tag = build_image(docker_client, f"FROM {OPENMPI_IMAGE}\n"
                                     "RUN printf '2103:x:0:\\n2001:x:0:\\n5000:x:0:\\n' >> /etc/group\n")
    yield tag
    remove_image(docker_client, tag)


GROUPED_USER, PROJECT_GROUP, PROJECT_GID = "tduser3", "tdproj3", 2103


@pytest.fixture(scope="module")
def grouped_user(hosts_and_users):
    """A job user with a supplementary group (what --group-add carries), made once."""
    try:
        assert grp.getgrnam(PROJECT_GROUP).gr_gid == PROJECT_GID, f"{PROJECT_GROUP} exists with another gid"
    except KeyError:
        subprocess.run(["groupadd", "-g", str(PROJECT_GID), PROJECT_GROUP], check=True)
    try:
        assert pwd.getpwnam(GROUPED_USER).pw_uid == 2003, f"{GROUPED_USER} exists with another uid"
    except KeyError:
        subprocess.run(["useradd", "-m", "-u", "2003", "-G", PROJECT_GROUP, "-s", "/bin/bash", GROUPED_USER], check=True)
    if PROJECT_GID not in os.getgrouplist(GROUPED_USER, pwd.getpwnam(GROUPED_USER).pw_gid):
        subprocess.run(["usermod", "-aG", PROJECT_GROUP, GROUPED_USER], check=True)
    os.chmod(pwd.getpwnam(GROUPED_USER).pw_dir, 0o755)
    return GROUPED_USER


GROUPS_SCRIPT = """#!/bin/bash
for h in $(sort -u "$PBS_NODEFILE"); do
  ssh "$h" 'grep -h "^Groups" /proc/1/status /proc/self/status' | sed "s/^/$h /"
done
echo GROUPS-DONE
"""


def groups_seen(result) -> List[List[int]]:
    return [sorted(int(g) for g in line.split(":", 1)[1].split()) for line in body(result) if " Groups:" in line]


# ----------------------------------------------------------------------------- supplementary groups
def test_a_second_job_of_the_user_cannot_swap_the_group_file_runc_reads(site, docker_client, group_image):
    """The job's /etc/group is bind-mounted from the job directory; runc reads it AFTER the
    mounts to resolve the gids, by name first. When the user could replace it there, a
    group file naming '2001' with gid 0 gave the job gid 0."""
    racer_code = RACER_FRAME + r"""
evil = "root:x:0:\n2001:x:0:\ntduser:x:0:tduser\n"
while True:
    for job in job_dirs():
        ctr = f"{jobs}/{job}/ctr"
        try:
            if os.stat(ctr + "/group").st_uid == os.getuid():
                continue
            bump("seen")
            with open(ctr + "/.g", "w") as handle:
                handle.write(evil)
            os.rename(ctr + "/.g", ctr + "/group")
            bump("swapped")
        except OSError:
            pass
    time.sleep(0.001)
"""
    job = site.job(GROUPS_SCRIPT, [("tdnode0", 2)], other=f"image={OPENMPI_IMAGE};model=process")
    with racer(USER, racer_code, str(site.state_dir("tdnode0"))) as report:
        result = site.cluster.run(job)
    assert report.get("seen", 0) > 0, report                # the racer found the job's files
    assert result.exit_status == 0, result.stdout + result.stderr
    assert "GROUPS-DONE" in result.stdout
    seen = groups_seen(result)
    assert len(seen) == 4 and all(groups == [2001] for groups in seen), (seen, report)
    assert report.get("swapped", 0) == 0, report
    assert site.leftovers(docker_client, job.jobid) == []


def test_an_image_group_named_like_a_users_gid_is_refused(make_site, docker_client, group_image, grouped_user):
    """Docker resolves --group-add 2103 in the IMAGE's /etc/group by name: '2103:x:0:' gave
    the job gid 0 (docker run --group-add 2103 ... id: groups=2003,0(2103))."""
    site = make_site(nodes=1)
    control = site.cluster.run(site.job(GROUPS_SCRIPT, [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}",
                                        user=grouped_user))
    assert control.exit_status == 0, control.stdout + control.stderr
    assert groups_seen(control) == [[2003, PROJECT_GID]] * 2                  # the group is really carried
    # runc looks the gids up again, by name, in the container's /etc/group AFTER the mounts:
    # the job's own (root's) file, so the image's '2001:x:0:' cannot touch tduser's primary gid.
    primary = site.cluster.run(site.job(GROUPS_SCRIPT, [("tdnode0", 1)], other=f"image={group_image}"))
    assert groups_seen(primary) == [[2001]] * 2, primary.stdout + primary.stderr

    job = site.job(GROUPS_SCRIPT, [("tdnode0", 1)], other=f"image={group_image}", user=grouped_user)
    result = site.cluster.run(job)
    assert groups_seen(result) == [], result.stdout                          # nothing ran with those groups
    assert result.exit_status == 1 and result.state == "C", result.stdout + result.stderr
    text = refusal_text(job)
    assert f"names groups in its /etc/group like the job's group ids ('{PROJECT_GID}' with gid 0)" in text, text
    assert "the job script did not run" in text
    assert site.leftovers(docker_client, job.jobid) == []


@pytest.fixture(scope="module")
def looped_group_image(docker_client, images):
    """An image whose /etc/group leads through a directory symlink loop: Docker's look at
    that path fails with HTTP 500 ("too many links")."""
    tag = build_image(docker_client, f"FROM {OPENMPI_IMAGE}\n"
                                     "RUN ln -s /loop-b /loop-a && ln -s /loop-a /loop-b && "
                                     "mv /etc/group /etc/group.real && ln -s /loop-a/group /etc/group\n")
    yield tag
    remove_image(docker_client, tag)


def test_an_image_whose_group_file_breaks_dockers_read_takes_no_node_down(site, docker_client, looped_group_image,
                                                                        grouped_user):
    """The prologues read the image's /etc/group through Docker (for users with supplementary
    groups); the image can make that read fail. That is the image's fault, said to the user,
    and no sister exits non-zero (which would mark its node down)."""
    job = site.job(GROUPS_SCRIPT, [("tdnode0", 1), ("tdnode1", 1)], other=f"image={looped_group_image}",
                   user=grouped_user)
    result = site.cluster.run(job)
    assert result.down_nodes == [], result.log
    runs = result.runs("prologue.parallel")
    assert runs and all(r.rc == 0 for r in runs), [(r.node, r.rc) for r in runs]
    assert result.exit_status == 1 and result.state == "C", result.stdout + result.stderr
    text = refusal_text(job)
    assert "cannot read /etc/group in the image" in text and "too many links" in text, text
    assert "/var/lib/docker" not in text, text                    # Docker's storage paths stay out
    assert site.leftovers(docker_client, job.jobid) == []


def test_a_container_with_other_ids_than_the_users_is_found_after_start(site, docker_client, group_image, grouped_user):
    """The check after start, on a container started past the prologue's refusal (as a
    Docker that resolved names differently would): every process is read from the host."""
    user = lookup(grouped_user)
    runtime = Runtime("unix:///var/run/docker.sock", 30)
    jobid = f"{uuid.uuid4().hex[:6]}.{site.server}"
    made = []
    try:
        for image, expected in ((OPENMPI_IMAGE, None), (group_image, f"groups 0 2003, not 2003 {PROJECT_GID}")):
            spec = ContainerSpec(image=image, name=f"td-attack-{uuid.uuid4().hex[:10]}", hostname="x",
                                 command=("sleep", "60"), user=f"{user.uid}:{user.gid}", group_add=(str(PROJECT_GID),),
                                 labels={L_JOB: jobid, L_HOST: "tdnode0"}, binds=())
            ident = runtime.start(spec)
            made.append(ident)
            problem = lifecycle.ids_problem(runtime, ident, user)
            if expected is None:
                assert problem is None
            else:
                assert problem is not None and expected in problem and "(docker-init)" in problem, problem
    finally:
        for ident in made:
            runtime.remove(ident)


# ----------------------------------------------------------------------------- bind mounts
SWAP_RACER = RACER_FRAME + r"""
victim, target = sys.argv[2], sys.argv[3]
known = set()
while True:
    names = set(job_dirs())
    if names - known:                      # a prologue got past its checks: swap now
        known |= names
        bump("seen")
        try:
            os.rename(victim, victim + ".real")
            os.symlink(target, victim)
            bump("swapped")
        except OSError:
            pass
        while os.path.exists(jobs) and os.listdir(jobs):
            time.sleep(0.005)
        try:
            os.unlink(victim)
            os.rename(victim + ".real", victim)
        except OSError:
            pass
    time.sleep(0.0005)
"""


@pytest.mark.parametrize("how", ["workdir", "mount"])
def test_a_directory_swapped_for_a_symlink_after_the_check_is_never_what_docker_mounts(make_site, docker_client, how):
    site = make_site(nodes=1)
    own = site.root / "scratch"             # tduser's, like /scratch/tduser: outside the home (which is mounted whole)
    victim = own / "race"
    victim.mkdir(parents=True)
    for path in (own, victim):
        os.chown(path, pwd.getpwnam(USER).pw_uid, pwd.getpwnam(USER).pw_gid)
        os.chmod(path, 0o755)
    if how == "mount":
        site.reconfigure(f"[mounts]\nallowed = {own}\n")
    other = f"image={OPENMPI_IMAGE};run=host" + (f";mount={victim}:/data" if how == "mount" else "")
    script = (f"#!/bin/bash\nssh $(head -1 \"$PBS_NODEFILE\") 'for p in {victim}/docker.sock /data/docker.sock; "
              f"do test -S $p && echo SOCKET-INSIDE $p; done; stat -c \"ROOT-OF-MOUNT %U\" "
              f"{'/data' if how == 'mount' else victim}; echo INSIDE-OK'\n")
    outcomes = []
    with racer(USER, SWAP_RACER, str(site.state_dir("tdnode0")), str(victim), "/run") as report:
        for _ in range(4):
            job = site.job(script, [("tdnode0", 1)], other=other,
                           workdir=str(victim) if how == "workdir" else None)
            result = site.cluster.run(job)
            text = result.stdout + result.stderr
            assert "SOCKET-INSIDE" not in text, text
            assert result.runs("prologue")[0].rc in (0, 1), text          # never a node fault
            outcomes.append("ran" if "INSIDE-OK" in text else "refused")
            if "INSIDE-OK" in text:                                       # what is mounted is the user's directory
                assert f"ROOT-OF-MOUNT {USER}" in text, text
            refusal_text(job)
            assert site.leftovers(docker_client, job.jobid) == []
    assert report.get("swapped", 0) >= 2, report                         # the attack really ran
    assert "ran" in outcomes, outcomes


def test_the_configured_docker_socket_is_never_mounted(make_site, docker_client):
    """[docker] endpoint elsewhere than /run/docker.sock: that socket is as forbidden."""
    site = make_site(nodes=1)
    allowed = site.root / "data"                    # like /scratch; the job's own workdir is elsewhere
    sockets = allowed / "sockets"
    sockets.mkdir(parents=True)
    for path in (allowed, sockets):
        os.chmod(path, 0o755)
    sock = sockets / "docker.sock"
    sock.touch()
    subprocess.run(["mount", "--bind", "/run/docker.sock", str(sock)], check=True)
    try:
        site.reconfigure(f"[docker]\nendpoint = unix://{sock}\n[mounts]\nallowed = {allowed}\n")
        control = site.cluster.run(site.job("#!/bin/bash\necho CONTROL-RAN\n", [("tdnode0", 1)],
                                            other=f"image={OPENMPI_IMAGE}"))
        assert "CONTROL-RAN" in control.stdout, control.stdout + control.stderr    # the endpoint works
        job = site.job("#!/bin/bash\ntest -S /data/docker.sock && echo SOCKET-INSIDE\necho SCRIPT-RAN\n",
                       [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE};mount={sockets}:/data")
        result = site.cluster.run(job)
        assert "SOCKET-INSIDE" not in result.stdout and "SCRIPT-RAN" not in result.stdout, result.stdout
        assert result.exit_status == 1
        assert "never mounted into containers" in refusal_text(job)
    finally:
        subprocess.run(["umount", str(sock)], check=False)
    assert site.leftovers(docker_client, job.jobid) == []


# ----------------------------------------------------------------------------- image tarballs
def claiming_tarball(image: str, path: Path, claims: str) -> None:
    """``docker save`` of image, rewritten to claim the tag ``claims`` (manifest and repositories)."""
    saved = path.with_suffix(".saved")
    subprocess.run(["docker", "save", "-o", str(saved), image], check=True, timeout=300)
    repo, _, tag = claims.rpartition(":")
    with tarfile.open(saved) as tin, tarfile.open(path, "w") as tout:
        for member in tin:
            data = tin.extractfile(member) if member.isreg() else None
            if member.name == "manifest.json":
                manifest = json.loads(data.read())
                manifest[0]["RepoTags"] = [claims]
                payload = json.dumps(manifest).encode()
            elif member.name == "repositories":
                payload = json.dumps({repo: {tag: "x"}}).encode()
            else:
                tout.addfile(member, data)
                continue
            member.size = len(payload)
            tout.addfile(member, io.BytesIO(payload))
    saved.unlink()


def test_a_tarball_never_moves_a_tag_and_answers_to_the_allowed_list(make_site, docker_client):
    site = make_site(nodes=1)
    base_id = docker_client.images.get(OPENMPI_IMAGE).id
    site_tag = f"torque-docker-test/site-{uuid.uuid4().hex[:8]}:1"            # an image everybody asks for
    docker_client.images.get(OPENMPI_IMAGE).tag(site_tag)
    marked = build_image(docker_client, f"FROM {OPENMPI_IMAGE}\nRUN echo from-the-tarball > /marker\n")
    tarballs, others = site.root / "tarballs", site.root / "others"
    for directory in (tarballs, others):
        directory.mkdir()
        os.chmod(directory, 0o755)
    try:
        marked_id = docker_client.images.get(marked).id
        claiming_tarball(marked, tarballs / "x.tar", site_tag)
        (others / "x.tar").write_bytes(b"refused before it is opened")
        for directory in (tarballs, others):
            os.chmod(directory / "x.tar", 0o644)
        remove_image(docker_client, marked)                                   # the tarball brings it back
        site.reconfigure(f"[images]\ntarball_dirs = {tarballs} {others}\n"
                         f"allowed = torque-docker-test/* file:{tarballs}/*\n")
        marker = "#!/bin/bash\ncat /marker 2>/dev/null || echo NO-MARKER\n"
        loaded = site.cluster.run(site.job(marker, [("tdnode0", 1)], other=f"image=file:{tarballs}/x.tar"))
        assert body(loaded) == ["from-the-tarball"], loaded.stdout + loaded.stderr
        assert docker_client.images.get(site_tag).id == base_id                # the site's tag did not move
        assert docker_client.images.get(marked_id).tags == []                  # loaded without any tag
        others_job = site.job(marker, [("tdnode0", 1)], other=f"image={site_tag}")
        everyone = site.cluster.run(others_job)
        assert body(everyone) == ["NO-MARKER"], everyone.stdout + everyone.stderr
        refused_job = site.job(marker, [("tdnode0", 1)], other=f"image=file:{others}/x.tar")
        refused = site.cluster.run(refused_job)
        assert refused.exit_status == 1 and "NO-MARKER" not in refused.stdout
        assert f"image file:{others}/x.tar is not allowed on this cluster" in refusal_text(refused_job)
    finally:
        remove_image(docker_client, site_tag)
        with contextlib.suppress(Exception):
            remove_image(docker_client, marked_id)


def test_a_tarball_that_is_a_fifo_or_not_the_users_is_refused_at_once(make_site, docker_client):
    site = make_site(nodes=1, prologalarm=30)                       # a hang would end at about 20 s
    tarballs = site.root / "tarballs"
    tarballs.mkdir()
    os.chmod(tarballs, 0o755)
    os.mkfifo(tarballs / "pipe.tar")
    os.chmod(tarballs / "pipe.tar", 0o666)
    private = tarballs / "private.tar"
    private.write_bytes(b"not even a tar")
    other = pwd.getpwnam(OTHER_USER)
    os.chown(private, other.pw_uid, other.pw_gid)
    os.chmod(private, 0o600)
    site.reconfigure(f"[images]\ntarball_dirs = {tarballs}\n")
    for name, words in (("pipe.tar", "is not a regular file"), ("private.tar", f"is not a file {USER} can read")):
        job = site.job("#!/bin/bash\necho SCRIPT-RAN\n", [("tdnode0", 1)], other=f"image=file:{tarballs}/{name}")
        result = site.cluster.run(job)
        prologue = result.runs("prologue")[0]
        assert not prologue.timed_out and prologue.rc == 0, (name, prologue)     # refused through the starter
        assert result.exit_status == 1 and "SCRIPT-RAN" not in result.stdout
        assert words in refusal_text(job), name
        assert site.leftovers(docker_client, job.jobid) == []


# ----------------------------------------------------------------------------- volumes and bounds
VOLUME_SCRIPT = """#!/bin/bash
cat /vol/f 2>/dev/null || echo NO-IMAGE-DATA
grep ' /vol ' /proc/mounts | awk '{print "MOUNT", $3, $4}'
"""


@pytest.fixture(scope="module")
def volume_image(docker_client, images):
    """An image declaring a VOLUME with data in it, writable by anyone."""
    tag = build_image(docker_client, f"FROM {OPENMPI_IMAGE}\nRUN mkdir /vol && echo image-data > /vol/f && "
                                     "chmod 1777 /vol\nVOLUME /vol\n")
    yield tag
    remove_image(docker_client, tag)


def test_image_volumes_leave_nothing_behind(make_site, docker_client, volume_image):
    """A VOLUME became an anonymous volume on the node's disk that outlived the container."""
    site = make_site(nodes=1)
    before = {v.id for v in docker_client.volumes.list()}
    job = site.job(VOLUME_SCRIPT, [("tdnode0", 1)], other=f"image={volume_image}")
    result = site.cluster.run(job)
    assert result.exit_status == 0, result.stdout + result.stderr
    lines = body(result)
    assert len(lines) == 2 and lines[0] == "NO-IMAGE-DATA", lines
    assert lines[1].startswith("MOUNT tmpfs ") and "size=1048576k" in lines[1], lines      # 1g, the default
    assert {v.id for v in docker_client.volumes.list()} - before == set()
    # Torque purged a job without its epilogue: gc removes its container, and nothing else stays.
    site.cluster.remove_hook("tdnode0", "epilogue")
    lost = site.job(VOLUME_SCRIPT, [("tdnode0", 1)], other=f"image={volume_image}")
    assert site.cluster.run(lost).exit_status == 0
    assert site.leftovers(docker_client, lost.jobid) != []
    report = admin.gc(site.config("tdnode0"), str(site.cluster.pbs_home("tdnode0")), grace=0, server=site.server)
    assert lost.jobid in report["removed"] and report["errors"] == [], report
    assert site.leftovers(docker_client, lost.jobid) == []
    assert {v.id for v in docker_client.volumes.list()} - before == set()


BOUNDS_SCRIPT = """#!/bin/bash
echo "PIDS-MAX $(cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max 2>/dev/null)"
echo "NOFILE $(ulimit -Sn) $(ulimit -Hn)"
sh -c 'i=0; while [ $i -lt 300 ]; do sleep 4 & i=$((i+1)); done; echo ALL-FORKED' 2>&1 | grep -o -m1 'ALL-FORKED\\|Cannot fork'
sleep 6
dd if=/dev/zero of=/tmp/big bs=1M count=16 2>&1 | grep -o -m1 'No space left on device' | sed 's/^/TMP /'
dd if=/dev/zero of=/vol/big bs=1M count=16 2>&1 | grep -o -m1 'No space left on device' | sed 's/^/VOL /'
dd if=/dev/zero of=/run/torque-docker/hosts-launcher bs=1M count=4 2>&1 | grep -o -m1 'No space left on device' | sed 's/^/FILES /'
: > /run/torque-docker/hosts-launcher
touch /usr/local/evil 2>&1 | grep -o -m1 'Read-only file system' | sed 's/^/ROOT /'
touch /tmp/small && echo TMP-WRITABLE
grep -E ' /tmp | /run/torque-docker ' /proc/mounts | awk '{print "MOUNT", $2, $3}' | sort
echo END
"""


def test_a_job_cannot_exhaust_the_nodes_processes_memory_or_disk(make_site, docker_client, volume_image):
    site = make_site(nodes=1, extra_config="[limits]\nulimits = nofile=512:1024\n[jobs]\npids_limit = 64\ntmp_size = 8m\n"
                                           "files_size = 2m\nread_only_root = yes\n")
    job = site.job(BOUNDS_SCRIPT, [("tdnode0", 1)], other=f"image={volume_image}")
    result = site.cluster.run(job)
    assert result.exit_status == 0, result.stdout + result.stderr
    assert body(result) == ["PIDS-MAX 64", "NOFILE 512 1024", "Cannot fork", "TMP No space left on device",
                            "VOL No space left on device", "FILES No space left on device", "ROOT Read-only file system", "TMP-WRITABLE",
                            "MOUNT /run/torque-docker tmpfs", "MOUNT /tmp tmpfs", "END"], result.stdout + result.stderr
    assert site.leftovers(docker_client, job.jobid) == []


# ----------------------------------------------------------------------------- root's writes, attempts
def test_a_fifo_planted_in_the_job_directory_never_hangs_the_prologue(make_site, docker_client):
    """Root wrote the job's ssh_config in a directory the user owned: a FIFO there blocked
    the prologue until $prologalarm, and the job was requeued."""
    site = make_site(nodes=1, prologalarm=40)
    racer_code = RACER_FRAME + r"""
while True:
    for job in job_dirs():
        path = f"{jobs}/{job}/ctr/ssh_config"
        try:
            if stat.S_ISREG(os.lstat(path).st_mode):
                bump("seen")
                os.unlink(path)
                os.mkfifo(path)
                bump("planted")
        except OSError:
            pass
    time.sleep(0.001)
"""
    job = site.job("#!/bin/bash\necho SCRIPT-RAN\n", [("tdnode0", 1)], other=f"image={OPENMPI_IMAGE}")
    with racer(USER, racer_code, str(site.state_dir("tdnode0"))) as report:
        result = site.cluster.run(job)
    assert report.get("seen", 0) > 0, report
    prologue = result.runs("prologue")[0]
    assert not prologue.timed_out and prologue.rc == 0, (prologue, report)
    assert result.exit_status == 0 and "SCRIPT-RAN" in result.stdout, result.stdout + result.stderr
    assert report.get("planted", 0) == 0, report
    assert site.leftovers(docker_client, job.jobid) == []


def test_a_prologue_killed_at_prologalarm_still_counts_its_attempt(make_site, docker_client):
    """The attempt was counted after the work: a prologue killed by pbs_mom never counted it,
    and Torque requeued the job for ever."""
    silent = build_image(docker_client, f"FROM {OPENMPI_IMAGE}\n"
                                        "RUN printf '#!/bin/sh\\nexec sleep 3600\\n' > /usr/local/sbin/silent && "
                                        "chmod 755 /usr/local/sbin/silent\n")
    site = make_site(nodes=1, prologalarm=12,                        # killed at about 2 s
                     extra_config="[jobs]\nmax_attempts = 2\n[ssh]\nready_timeout = 60\n"
                                  "sshd_path = /usr/local/sbin/silent\n")
    try:
        job = site.job("#!/bin/bash\necho SCRIPT-RAN\n", [("tdnode0", 1)], other=f"image={silent}")
        attempts = site.state_dir("tdnode0") / "attempts.json"
        for attempt in (1, 2):
            result = site.cluster.run(job)                          # Torque requeues: the same job again
            assert result.runs("prologue")[0].timed_out and result.state == "Q", result.runs("prologue")
            assert json.loads(attempts.read_text()).get(job.jobid) == attempt
        result = site.cluster.run(job)
        prologue = result.runs("prologue")[0]
        assert not prologue.timed_out and prologue.rc == 0, prologue            # refused at once, through the starter
        assert result.state == "C" and result.exit_status == 1 and "SCRIPT-RAN" not in result.stdout
        assert "failed or was stopped 2 times on this node" in refusal_text(job)
        assert job.jobid not in json.loads(attempts.read_text())
        assert site.leftovers(docker_client, job.jobid) == []
    finally:
        remove_image(docker_client, silent)

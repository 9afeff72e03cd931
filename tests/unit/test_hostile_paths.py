"""Hostile paths against the mount and image policy, on a real directory tree.

The tree holds symlinks a user could plant under an allowed directory: to /etc, to the
Docker socket, to /proc, to '..', to a sibling whose name shares the allowed root's
prefix, loops and chains. Whatever path is asked for, nothing outside the allowed roots
and nothing forbidden may be accepted, and what is accepted is the resolved path (no
symlink left for Docker to follow). ``test_bug_*`` are defects found here (xfail strict).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from hostile_strategies import ARGV_TEXT, MOUNT_SPECS, budget, no_slash
from torque_docker import config, lifecycle, policy
from torque_docker.errors import PolicyError, RequestError, TorqueDockerError
from torque_docker.identity import UserInfo
from torque_docker.request import Mount, parse_mount

FORBIDDEN_REAL = sorted({os.path.realpath(p) for p in policy.FORBIDDEN_SOURCES} | set(policy.FORBIDDEN_SOURCES))
HIDDEN_TARGETS = ("/", "/etc", "/run/torque-docker", "/etc/passwd", "/etc/group", "/proc", "/sys", "/dev")


def under(path: str, roots) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def check_user_error(exc: TorqueDockerError) -> None:
    assert exc.user_error is True and exc.message.strip() and exc.fix.strip()


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("tree")
    allowed = root / "allowed"
    for d in ("allowed/sub/deep", "allowed/own", "allowed-evil/x", "outside/secret", "images/sub", "home/alice"):
        (root / d).mkdir(parents=True)
    (root / "images" / "x.tar").write_text("tar")
    (root / "outside" / "secret" / "data").write_text("secret")
    links = {
        "allowed/link_etc": "/etc", "allowed/link_sock": "/var/run/docker.sock", "allowed/link_proc": "/proc/self",
        "allowed/link_up": "..", "allowed/link_outside": "../outside", "allowed/link_in": "sub",
        "allowed/link_abs_in": str(allowed / "sub" / "deep"), "allowed/loop": "loop", "allowed/chain1": "chain2",
        "allowed/chain2": "/etc", "allowed/link_root": "/", "allowed/link_evil": "../allowed-evil",
        "allowed/link_dev": "/dev", "allowed/link_secret": "/etc/torque-docker", "allowed/sub/deep/back": "../../..",
        "linkroot": "allowed", "images/link_out.tar": "../outside/secret/data", "images/link_shadow": "/etc/shadow",
        "images/sub/up": "../..",
    }
    for name, target in links.items():
        os.symlink(target, root / name)
    return root


NAMES = ["sub", "deep", "own", "back", "link_etc", "link_sock", "link_proc", "link_up", "link_outside", "link_in",
         "link_abs_in", "loop", "chain1", "link_root", "link_evil", "link_dev", "link_secret", "..", ".", "",
         "docker.sock", "self", "torque-docker", "allowed", "allowed-evil", "outside", "secret", "linkroot",
         "images", "x.tar", "link_out.tar", "link_shadow", "up", "passwd", "shadow"]
COMPONENTS = st.lists(st.one_of(st.sampled_from(NAMES), ARGV_TEXT.map(no_slash)), max_size=6)
BASES = ["allowed", "", "linkroot", "allowed-evil", "outside", "images", "/", "/var/run", "/run", "/proc", "/etc",
         "/dev", "/sys", "/var/lib/docker"]


def path_in(tree: Path, base: str, components) -> str:
    start = base if base.startswith("/") else str(tree / base) if base else str(tree)
    return "/".join([start.rstrip("/") or ""] + list(components)) or "/"


def configs(tree: Path):
    return {
        "allowed": config.parse_text(f"[mounts]\nallowed = {tree}/allowed\n"),
        "via a symlinked root": config.parse_text(f"[mounts]\nallowed = {tree}/linkroot\n"),
        "everything": config.parse_text("[mounts]\nallowed = /\n"),
        "nothing": config.parse_text(""),
    }


@budget(600)
@given(st.sampled_from(BASES), COMPONENTS, st.sampled_from(["/data", "/scratch", "/", "/etc", "/proc/x", "/dev/shm",
                                                           "/run/torque-docker/keys", "/sys", "/etc/passwd"]),
       st.booleans())
@example("allowed", ["link_etc", "shadow"], "/data", False)
@example("allowed", ["link_sock"], "/data", False)
@example("allowed", ["link_up", "outside", "secret"], "/data", True)
@example("allowed", ["sub", "deep", "back", "outside"], "/data", True)
@example("allowed", ["link_evil", "x"], "/data", True)
@example("allowed", ["loop"], "/data", True)
@example("/var/run", ["docker.sock"], "/data", True)
def test_check_mounts_never_accepts_a_path_outside_or_forbidden(tree, base, components, target, read_only):
    source = path_in(tree, base, components)
    for name, cfg in configs(tree).items():
        allowed = [os.path.realpath(a) for a in cfg.mounts_allowed]
        try:
            out = policy.check_mounts([Mount(source, target, read_only)], cfg)
        except PolicyError as exc:
            check_user_error(exc)
            continue
        (mount,) = out
        assert mount.source == os.path.realpath(source), name
        assert os.path.realpath(mount.source) == mount.source          # nothing left for Docker to follow
        assert under(mount.source, allowed), (name, source, mount.source)
        assert mount.source != "/" and not under(mount.source, FORBIDDEN_REAL), (name, source)
        assert not under(mount.source, [str(tree / "outside"), str(tree / "allowed-evil")]) or name == "everything"
        assert os.path.normpath(mount.target) not in HIDDEN_TARGETS
        assert not under(os.path.normpath(mount.target), ("/run/torque-docker", "/proc", "/sys", "/dev"))
        assert (mount.target, mount.read_only) == (target, read_only)


@budget(300)
@given(MOUNT_SPECS)
def test_parsed_mounts_through_policy_are_user_errors_or_inside(tree, text):
    """The real path: parse_mount, then check_mounts, under an allowed root holding planted links."""
    cfg = configs(tree)["allowed"]
    text = text.replace("/scratch", f"{tree}/allowed").replace("/etc", f"{tree}/allowed/link_etc")
    try:
        (mount,) = policy.check_mounts([parse_mount(text)], cfg)
    except (RequestError, PolicyError) as exc:
        check_user_error(exc)
        return
    assert under(mount.source, [str(tree / "allowed")]) and os.path.realpath(mount.source) == mount.source


@pytest.mark.parametrize("source", ["/run", "/var/run", "/var", "/var/lib", "/etc", "/", "/sys/fs", "/dev/shm"])
def test_a_parent_of_a_forbidden_path_is_refused_even_when_everything_is_allowed(source):
    """With [mounts] allowed = / (or /var, /run), mount=/run would bring /run/docker.sock along."""
    cfg = config.parse_text("[mounts]\nallowed = /\n")
    with pytest.raises(PolicyError) as info:
        policy.check_mounts([Mount(source, "/data", True)], cfg)
    check_user_error(info.value)


# ----------------------------------------------------------------------------- image tarballs
@budget(300)
@given(st.sampled_from(["images", "allowed", "", "/etc", "/"]), COMPONENTS)
@example("images", ["link_out.tar"])
@example("images", ["link_shadow"])
@example("images", ["sub", "up", "outside", "secret", "data"])
@example("images", ["..", "outside", "secret", "data"])
def test_image_tarballs_only_from_the_allowed_directories(tree, base, components):
    cfg = config.parse_text(f"[images]\ntarball_dirs = {tree}/images\n")
    asked = "file:" + path_in(tree, base, components)
    try:
        choice = policy.resolve_image(asked, cfg)
    except PolicyError as exc:
        check_user_error(exc)
        return
    assert choice.tarball == os.path.realpath(choice.tarball)
    assert under(choice.tarball, [os.path.realpath(tree / "images")])
    assert choice.reference == ""


# ----------------------------------------------------------------------------- binds of a job
@pytest.fixture(scope="module")
def alice(tree):
    return UserInfo("alice", 1000, 1000, str(tree / "home" / "alice"), "/bin/bash", "", (("alice", 1000),))


@pytest.fixture(scope="module")
def every_dir_reachable():
    """identity.reachable_dirs runs a subprocess as the user; here every directory is reachable,
    which is what the real check answers for /, /proc, /dev, /run or /var/run."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lifecycle, "reachable_dirs", lambda user, paths: tuple(True for _ in paths))
        yield


OWN_TARGETS = {"/run/torque-docker", "/etc/passwd", "/etc/group", "/etc/ssh/ssh_config", "/etc/hosts"}


def check_binds(binds, tree, user, extra):
    sources_targets = [(src, dst) for src, dst, _ in binds]
    ctr = str(tree / "state" / "ctr")
    for src, dst in sources_targets:
        if src == ctr or src.startswith(ctr + "/"):
            assert dst in OWN_TARGETS
            continue
        real = os.path.realpath(src)
        assert real != "/" and not under(real, FORBIDDEN_REAL), f"{src} is bound into the container"
    targets = [dst for _, dst in sources_targets]
    assert len(targets) == len(set(targets)), f"duplicate mount points: {targets}"


def hostile_workdir(s: str):
    """Any text as PBS_O_WORKDIR: relative ones are ignored by job_binds, absolute ones are put
    under the tree ('..' removed: a workdir outside it is test_bug_workdir_is_bound_...)."""
    return (None, s) if not s.startswith("/") else ("allowed", [s.replace("..", "").lstrip("/")])


WORKDIRS = st.one_of(
    st.tuples(st.sampled_from(["allowed", "home/alice", "outside", ""]),
              st.lists(st.sampled_from(["sub", "deep", "own", ".", "link_in", "link_evil"]), max_size=4)),
    ARGV_TEXT.map(hostile_workdir),
)


@budget(400)
@given(WORKDIRS, st.lists(st.sampled_from(["sub", "own", "sub/deep", "link_in"]), max_size=3, unique=True))
def test_job_binds_of_ordinary_workdirs_are_safe(tree, alice, every_dir_reachable, workdir, mount_dirs):
    base, rest = workdir
    workdir = rest if base is None else path_in(tree, base, rest)
    cfg = configs(tree)["allowed"]
    extra = policy.check_mounts([Mount(str(tree / "allowed" / d), f"/data{i}", True)
                                 for i, d in enumerate(mount_dirs)], cfg)
    try:
        binds = lifecycle.job_binds(alice, workdir, extra, tree / "state" / "ctr")
    except (RequestError, PolicyError) as exc:
        check_user_error(exc)
        return
    check_binds(binds, tree, alice, extra)


@pytest.mark.parametrize("workdir", ["/var/run", "/run", "/proc", "/sys/fs", "/dev", "/", "/etc", "/var/lib",
                                     "/run/torque-docker"])
def test_a_workdir_holding_host_internals_is_a_user_error(tree, alice, every_dir_reachable, workdir):
    """PBS_O_WORKDIR is the submitter's (cd /var/run && qsub): it passes the mount policy."""
    try:
        binds = lifecycle.job_binds(alice, workdir, [], tree / "state" / "ctr")
    except (PolicyError, RequestError) as exc:
        check_user_error(exc)
        return
    check_binds(binds, tree, alice, [])
    for src, _, _ in binds:
        real = os.path.realpath(src)
        assert not any(under(f, [real]) for f in FORBIDDEN_REAL), f"{src} holds a forbidden path"


@pytest.mark.parametrize("targets", [["/etc/hosts"], ["/etc/ssh/ssh_config"], ["/run/torque-docker/x"], ["/etc"]])
def test_mounts_on_the_packages_own_targets_are_refused(tree, alice, every_dir_reachable, targets):
    cfg = configs(tree)["allowed"]
    with pytest.raises(PolicyError) as info:
        policy.check_mounts([Mount(str(tree / "allowed" / "sub"), t, True) for t in targets], cfg)
    check_user_error(info.value)


@pytest.mark.parametrize("targets", [["/data", "/data"], ["HOME"], ["/data", "/data/"]])
def test_bug_duplicate_mount_targets_reach_docker(tree, alice, every_dir_reachable, targets):
    """Two requested mounts on one target, or one on the user's home (bound by the package):
    check_mounts takes them, Docker refuses the container ('Duplicate mount point', HTTP 400),
    runtime.start raises NodeFault and the MS prologue REQUEUES a user's mistake.
    Fix: policy.check_mounts (or lifecycle.job_binds) refuses a target given twice, the home
    and the working directory with a RequestError."""
    cfg = configs(tree)["allowed"]
    mounts = [parse_mount(f"{tree}/allowed/sub:{alice.home if t == 'HOME' else t}:ro") for t in targets]
    try:
        extra = policy.check_mounts(mounts, cfg)
        binds = lifecycle.job_binds(alice, "", extra, tree / "state" / "ctr")
    except (RequestError, PolicyError):
        return
    check_binds(binds, tree, alice, extra)

"""The shipped seccomp profile is Docker's default plus exactly the two CMA calls; a site's
profile is read only when root owns it and it confines; the job starter lets Open MPI use
CMA only when the prologue recorded that the containers allow it."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from torque_docker import config, seccomp, starter
from torque_docker.errors import ConfigError
from torque_docker.identity import UserInfo
from torque_docker.lifecycle import STARTER_RECORD, write_starter_file
from torque_docker.records import StarterInfo
from torque_docker.state import NodeState

SHIPPED = Path(__file__).resolve().parents[2] / "packaging" / "seccomp-cma.json"
SINGLE_COPY = "OMPI_MCA_btl_vader_single_copy_mechanism"


def shipped() -> dict:
    return json.loads(SHIPPED.read_text())


def without_cma_rule(profile: dict) -> dict:
    return dict(profile, syscalls=[r for r in profile["syscalls"] if r.get("comment") != seccomp.CMA_COMMENT])


def allowed_for_no_caps(profile: dict) -> set:
    return set(seccomp._unconditional_allows(profile))


def test_shipped_profile_is_its_base_plus_one_rule_for_exactly_the_cma_calls():
    profile, base = shipped(), without_cma_rule(shipped())
    assert len(profile["syscalls"]) == len(base["syscalls"]) + 1
    assert profile == seccomp.add_cma(base)
    assert allowed_for_no_caps(profile) - allowed_for_no_caps(base) == set(seccomp.CMA_CALLS)
    assert seccomp.allows_cma(profile) and not seccomp.allows_cma(base)
    assert seccomp.problem(profile) is None and profile["defaultAction"] == "SCMP_ACT_ERRNO"


def test_shipped_profile_keeps_what_dockers_default_refuses_without_capabilities():
    allowed = allowed_for_no_caps(shipped())
    for call in ("keyctl", "add_key", "request_key", "unshare", "mount", "umount2", "setns", "bpf",
                 "kexec_load", "init_module", "open_by_handle_at", "perf_event_open", "kcmp", "pidfd_getfd"):
        assert call not in allowed, call


def test_add_cma_is_idempotent_and_the_generator_writes_the_shipped_file(tmp_path, capsys):
    base = tmp_path / "default.json"
    base.write_text(json.dumps(without_cma_rule(shipped())))
    assert seccomp.add_cma(seccomp.add_cma(shipped())) == shipped()
    assert seccomp.main([str(base)]) == 0
    assert capsys.readouterr().out == SHIPPED.read_text()


def write_profile(path: Path, profile, mode=0o644, uid=0) -> str:
    path.write_text(profile if isinstance(profile, str) else json.dumps(profile))
    os.chmod(path, mode)
    os.chown(path, uid, 0)
    return str(path)


@pytest.mark.parametrize("case,reason", [
    ("group-writable", "writable by root only"),
    ("not root's", "writable by root only"),
    ("symlink", "cannot be read"),
    ("missing", "cannot be read"),
    ("not json", "is not JSON"),
    ("allows by default", "no confinement"),
    ("no syscalls", "not a Docker seccomp profile"),
])
def test_load_refuses_what_root_must_not_use(tmp_path, case, reason):
    good = shipped()
    path = tmp_path / "p.json"
    if case == "group-writable":
        write_profile(path, good, mode=0o664)
    elif case == "not root's":
        write_profile(path, good, uid=65534)
    elif case == "symlink":
        target = write_profile(tmp_path / "real.json", good)
        path.symlink_to(target)
    elif case == "not json":
        write_profile(path, "{")
    elif case == "allows by default":
        write_profile(path, dict(good, defaultAction="SCMP_ACT_ALLOW"))
    elif case == "no syscalls":
        write_profile(path, {"defaultAction": "SCMP_ACT_ERRNO"})
    with pytest.raises(ConfigError) as err:
        seccomp.load(str(path))
    assert reason in err.value.message and "seccomp_profile" in err.value.message and err.value.fix


def test_load_gives_the_text_docker_needs(tmp_path):
    path = write_profile(tmp_path / "p.json", shipped())
    assert json.loads(seccomp.load(path)) == shipped()


@pytest.mark.parametrize("scope,works", [(None, True), ("0", True), ("1", True), ("2", False), ("3", False)])
def test_cma_works_only_where_yama_lets_a_process_read_another(tmp_path, monkeypatch, scope, works):
    yama = tmp_path / "ptrace_scope"
    if scope is not None:
        yama.write_text(scope + "\n")
    monkeypatch.setattr(seccomp, "YAMA", str(yama))
    assert seccomp.cma_works(SHIPPED.read_text()) is works
    assert seccomp.cma_works(json.dumps(without_cma_rule(shipped()))) is False


@pytest.mark.parametrize("info,single_copy", [
    ({}, "none"), ({"cma": False}, "none"), ({"cma": "yes"}, "none"), ({"cma": True}, None)])
def test_launcher_env_leaves_single_copy_to_open_mpi_only_when_cma_works(info, single_copy):
    env = starter.launcher_env(StarterInfo.from_json(json.dumps(info)))
    assert env.get(SINGLE_COPY) == single_copy
    assert {k: v for k, v in env.items() if k != SINGLE_COPY} == \
        {k: v for k, v in starter.LAUNCHER_ENV.items() if k != SINGLE_COPY}
    full = StarterInfo.from_json(json.dumps(dict(info, env_deny=[], env_pass=["*"])))
    assert starter.container_env(full, {"HOME": "/home/u"}).get(SINGLE_COPY) == single_copy


@pytest.mark.parametrize("profile,recorded", [("", False), ("cma", True), ("base", False)])
def test_prologue_records_cma_for_the_starter(tmp_path, monkeypatch, profile, recorded):
    monkeypatch.setattr(seccomp, "YAMA", str(tmp_path / "no-yama"))
    monkeypatch.setattr(seccomp, "_loaded", {})
    text = ""
    if profile:
        body = shipped() if profile == "cma" else without_cma_rule(shipped())
        text = "[docker]\nseccomp_profile = " + write_profile(tmp_path / "p.json", body) + "\n"
    cfg = config.parse_text(text + f"[paths]\nstate_dir = {tmp_path / 'state'}\n")
    state = NodeState(cfg.paths_state_dir)
    state.ensure()
    user = UserInfo("u", os.getuid(), os.getgid(), "/", "/bin/sh", "", (("u", os.getgid()),))
    state.job_dir("1.srv").mkdir(parents=True)
    write_starter_file(state, "1.srv", user, cfg, "container", alias="td-1")
    info = json.loads((state.job_dir("1.srv") / STARTER_RECORD).read_text())
    assert info["cma"] is recorded

"""`torque-docker check` on simulated nodes: a healthy node passes, and every way a node can
be misconfigured makes check print the reason on a FAIL line and exit non-zero."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest

from conftest import MPICH_IMAGE, NOSSHD_IMAGE, OPENMPI_IMAGE

from torque_docker.check import CHECK_LABEL

NODE = "tdnode0"
REPO = Path(__file__).resolve().parents[2]
CLI = "import sys; from torque_docker.cli import main; sys.exit(main())"


def run_check(site, *extra: str, ssh_config: str = "/etc/ssh/ssh_config") -> Tuple[int, str, Dict[str, List[str]]]:
    """Run the real command; return (exit status, output, {level: [lines]})."""
    result = subprocess.run(
        [sys.executable, "-c", CLI, "--config", str(site.configs[NODE]), "check",
         "--pbs-home", str(site.cluster.pbs_home(NODE)), "--ssh-config", ssh_config, *extra],
        capture_output=True, text=True, timeout=180, cwd="/")
    text = result.stdout + result.stderr
    levels: Dict[str, List[str]] = {"OK": [], "WARN": [], "FAIL": [], "SKIP": []}
    for line in result.stdout.splitlines():
        word = line.split(" ", 1)[0]
        if word in levels:
            levels[word].append(line)
    return result.returncode, text, levels


@pytest.fixture
def node(make_site):
    """A one-node site whose config is put back afterwards (the fixture's cleanup reads it)."""
    site = make_site(nodes=1)
    original = site.configs[NODE].read_text()
    yield site
    site.configs[NODE].write_text(original)


def rewrite_config(site, old: str, new: str) -> None:
    path = site.configs[NODE]
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def mom_priv(site) -> Path:
    return site.cluster.mom_priv(NODE)


def no_check_containers(docker_client) -> bool:
    return docker_client.containers.list(all=True, filters={"label": CHECK_LABEL}) == []


def test_healthy_node_passes_and_proves_the_image(node, docker_client):
    site = node
    code, text, levels = run_check(site, "--image", OPENMPI_IMAGE)
    assert code == 0, text
    assert levels["FAIL"] == [] and levels["SKIP"] == [], text
    assert any(line.startswith(f"OK   image {OPENMPI_IMAGE}") for line in levels["OK"]), text
    for hook in ("prologue", "prologue.parallel", "epilogue", "epilogue.parallel"):
        assert f"OK   hook {mom_priv(site) / hook}: ok" in levels["OK"], text
    for name in ("job starter", "site secret", "docker", "ssh include", "listen address", "state directory"):
        assert any(line.startswith(f"OK   {name}:") for line in levels["OK"]), (name, text)
    # The simulated nodes' $prologalarm (120 s) is shorter than the default pull budget.
    assert any("timeouts vs $prologalarm" in line and "110 s" in line for line in levels["WARN"]), text
    fingerprint = re.search(r"secret fingerprint: (SHA256:\w+)", text).group(1)
    code, text, _ = run_check(site, "--fingerprint", fingerprint)
    assert code == 0, text
    assert no_check_containers(docker_client)


def _hook_mode(site):
    os.chmod(mom_priv(site) / "prologue", 0o775)


def _hook_owner(site):
    os.chown(mom_priv(site) / "epilogue.parallel", 2001, 0)


def _hook_missing(site):
    (mom_priv(site) / "prologue.parallel").unlink()


def _hook_interpreter(site):
    path = mom_priv(site) / "epilogue"
    first, rest = path.read_text().split("\n", 1)
    path.write_text("#!/usr/bin/python2.4 -s\n" + rest)


def _secret_missing(site):
    site.secret.unlink()


def _secret_mode(site):
    os.chmod(site.secret, 0o644)


def _secret_other_cluster(site):
    return ["--fingerprint", "SHA256:0123456789abcdef"]


def _config_unknown_key(site):
    site.configs[NODE].write_text(site.configs[NODE].read_text() + "[network]\nport_rnge = 40000-40100\n")


def _config_bad_value(site):
    rewrite_config(site, "[log]\n", "[jobs]\nshm_size = lots\n[log]\n")


def _config_alias_not_allowed(site):
    rewrite_config(site, "[log]\n", "[images]\nallowed = torque-docker-test/*\naliases =\n    deb = debian:12\n[log]\n")


def _docker_dead(site):
    dead = site.root / "dead.sock"
    dead.touch()
    rewrite_config(site, "[log]\n", f"[docker]\nendpoint = unix://{dead}\napi_timeout = 5\n[log]\n")


def _dropin_missing(site):
    rewrite_config(site, "[log]\n", f"[ssh]\ndropin = {site.root}/ssh_config.d/90-torque-docker.conf\n[log]\n")


def _dropin_wrong_dir(site):
    dropin = site.root / "ssh_config.d" / "90-torque-docker.conf"
    dropin.parent.mkdir()
    dropin.write_text("Include /somewhere/else/*.conf\n")
    rewrite_config(site, "[log]\n", f"[ssh]\ndropin = {dropin}\n[log]\n")


def _ssh_config_without_include(site):
    plain = site.root / "ssh_config"
    plain.write_text("Host *\n    SendEnv LANG LC_*\n")
    return ["--ssh-config", str(plain)]


def _starter_not_executable(site):
    os.chmod(mom_priv(site) / "torque-docker-starter", 0o700)


def _starter_writable(site):
    os.chmod(mom_priv(site) / "torque-docker-starter", 0o777)


def _starter_gone(site):
    (mom_priv(site) / "torque-docker-starter").unlink()


def _starter_privileged(site):
    with open(mom_priv(site) / "config", "a") as fh:
        fh.write("$job_starter_run_privileged true\n")


def _listen_not_local(site):
    rewrite_config(site, "listen_address = 127.0.1.10", "listen_address = 192.0.2.77")


def _state_dir_writable(site):
    os.chmod(site.state_dir(NODE), 0o777)


def _site_templates(site, name: str, text: str) -> None:
    (site.root / "templates").mkdir()
    (site.root / "templates" / name).write_text(text)
    rewrite_config(site, "[paths]\n", f"[paths]\ntemplate_dir = {site.root}/templates\n")


def _template_syntax(site):
    _site_templates(site, "ssh_config.j2", "{% for c in containers %}\nHost {{ c.alias }\n")


def _bad_sshd_template(site):
    from torque_docker.render import PACKAGE_TEMPLATES
    _site_templates(site, "sshd_config.j2", (PACKAGE_TEMPLATES / "sshd_config.j2").read_text() + "NoSuchSshdKeyword yes\n")
    return ["--image", OPENMPI_IMAGE]


def _image_without_sshd(site):
    return ["--image", NOSSHD_IMAGE]


def _image_missing(site):
    return ["--image", "torque-docker-test/not-on-this-node:1"]


def _image_from_config(site):
    site.configs[NODE].write_text(site.configs[NODE].read_text() + f"[check]\nimage = {NOSSHD_IMAGE}\n")


def _profile(site, mode: int = 0o644, edit=None) -> Path:
    import json
    path = site.root / "seccomp-cma.json"
    profile = json.loads((REPO / "packaging" / "seccomp-cma.json").read_text())
    path.write_text(json.dumps(edit(profile) if edit else profile))
    path.chmod(mode)
    text = site.configs[NODE].read_text().split("[docker]\nseccomp_profile")[0]
    site.configs[NODE].write_text(text + f"[docker]\nseccomp_profile = {path}\n")
    return path


def _seccomp_writable(site):
    _profile(site, mode=0o666)


def _seccomp_unconfined(site):
    _profile(site, edit=lambda p: dict(p, defaultAction="SCMP_ACT_ALLOW"))


def _device_missing(site):
    site.configs[NODE].write_text(site.configs[NODE].read_text()
                                  + "[devices]\npaths = /nonexistent/infiniband:/dev/infiniband\n")


def _gpu_missing(site):
    site.configs[NODE].write_text(site.configs[NODE].read_text()
                                  + "[gpus]\nmethod = devices\ndevices = /nonexistent/nvidia%d:/dev/nvidia%d\n")


# (case, break the node, the failing check's name, words its reason must hold)
CASES: List[Tuple[str, Callable, str, str]] = [
    ("hook group-writable", _hook_mode, "hook ", "mode 775 is group/other writable; pbs_mom refuses it"),
    ("hook not root's", _hook_owner, "hook ", "owned by uid 2001, pbs_mom requires root"),
    ("hook missing", _hook_missing, "hook ", "missing (pbs_mom would skip it silently)"),
    ("hook interpreter gone", _hook_interpreter, "hook ", "its interpreter /usr/bin/python2.4 is missing"),
    ("secret missing", _secret_missing, "site secret", "is missing; run 'torque-docker keygen'"),
    ("secret readable", _secret_mode, "site secret", "is readable by others (mode 644"),
    ("secret of another cluster", _secret_other_cluster, "site secret", "not SHA256:0123456789abcdef"),
    ("config unknown key", _config_unknown_key, "config ", "unknown key 'port_rnge' in [network]; valid keys"),
    ("config bad value", _config_bad_value, "config ", "[jobs] shm_size = 'lots': is not a size like 1g"),
    ("alias not allowed", _config_alias_not_allowed, "config ", "deb = debian:12 is not in [images] allowed"),
    ("docker unreachable", _docker_dead, "docker", "does not answer (cannot connect to the Docker daemon at "
                                                   "unix:///"),
    ("ssh drop-in missing", _dropin_missing, "ssh include", "90-torque-docker.conf is missing"),
    ("ssh drop-in elsewhere", _dropin_wrong_dir, "ssh include", "does not include /run/torque-docker/ssh/*.conf"),
    ("ssh_config lacks Include", _ssh_config_without_include, "ssh include", "has no 'Include"),
    ("starter not executable", _starter_not_executable, "job starter", "not executable by job users (mode 700"),
    ("starter writable", _starter_writable, "job starter", "can be changed by others than root"),
    ("starter missing", _starter_gone, "job starter", "torque-docker-starter does not exist"),
    ("starter run as root", _starter_privileged, "job starter", "sets $job_starter_run_privileged: the starter "
                                                                 "would run as root"),
    ("listen address not local", _listen_not_local, "listen address", "192.0.2.77"),
    ("state dir writable", _state_dir_writable, "state directory", "writable by others than root"),
    ("template syntax", _template_syntax, "site templates", "ssh_config.j2"),
    ("sshd rejects site template", _bad_sshd_template, "image ", "NoSuchSshdKeyword"),
    ("image without sshd", _image_without_sshd, "image ", "has no /usr/sbin/sshd that the job user can run"),
    ("image not staged", _image_missing, "image ", "is not on this node (run 'torque-docker stage"),
    ("[check] image", _image_from_config, "image ", NOSSHD_IMAGE),
    ("seccomp profile writable", _seccomp_writable, "seccomp profile", "writable by root only"),
    ("seccomp profile unconfined", _seccomp_unconfined, "seccomp profile", "no confinement"),
    ("device missing", _device_missing, "devices and limits", "device /nonexistent/infiniband ([devices] paths) is missing"),
    ("GPU driver missing", _gpu_missing, "GPUs", "[gpus] method = devices, but no GPU device node of [gpus] devices is here"),
]


@pytest.mark.parametrize("case,breaker,name,reason", CASES, ids=[c[0] for c in CASES])
def test_each_misconfiguration_fails_with_its_reason(node, docker_client, case, breaker, name, reason):
    site = node
    extra = breaker(site) or []
    code, text, levels = run_check(site, *extra)
    assert code == 1, text
    assert len(levels["FAIL"]) == 1, text                 # exactly this problem, nothing else
    line = levels["FAIL"][0]
    assert line.startswith(f"FAIL {name}"), text
    assert reason in line, text
    assert no_check_containers(docker_client)


def test_seccomp_profile_is_reported_and_proved_with_the_image(node, docker_client):
    site = node
    code, text, levels = run_check(site)
    assert code == 0 and "seccomp: Docker's default profile" in text, text
    _profile(site)
    code, text, levels = run_check(site, "--image", OPENMPI_IMAGE)
    assert code == 0 and levels["FAIL"] == [], text
    assert "OK   seccomp profile: ok" in levels["OK"] and "single-copy path (CMA) on" in text, text
    assert any(line.startswith(f"OK   image {OPENMPI_IMAGE}") for line in levels["OK"]), text
    _profile(site, edit=lambda p: dict(p, syscalls=p["syscalls"][:-1]))     # without the CMA rule
    code, text, levels = run_check(site)
    assert code == 0 and any(line.startswith("WARN seccomp profile:") and "stays off" in line
                             for line in levels["WARN"]), text
    assert no_check_containers(docker_client)


def test_invalid_config_still_checks_what_does_not_need_it(node):
    site = node
    _config_unknown_key(site)
    lineno = len(site.configs[NODE].read_text().splitlines())
    os.chmod(mom_priv(site) / "prologue", 0o777)
    code, text, levels = run_check(site)
    assert code == 1
    assert [line.split(":")[0] for line in levels["FAIL"]] == [
        f"FAIL config {site.configs[NODE]}", f"FAIL hook {mom_priv(site) / 'prologue'}"], text
    assert (f"FAIL config {site.configs[NODE]}: {site.configs[NODE]}:{lineno}: unknown key 'port_rnge' in [network]; "
            f"valid keys there: node_name, listen_address, port_range, port_candidates") in text
    assert any(line.startswith("SKIP docker") for line in levels["SKIP"]), text


def test_outdated_or_foreign_hooks_warn(node):
    site = node
    hook = mom_priv(site) / "epilogue"
    hook.write_text(hook.read_text() + "# an older release's hook\n")
    code, text, levels = run_check(site)
    assert code == 0, text
    assert any("epilogue: differs from the shipped hook" in line for line in levels["WARN"]), text


def test_mpich_image_is_usable_too(node, docker_client):
    site = node
    code, text, levels = run_check(site, "--image", MPICH_IMAGE)
    assert code == 0 and any(line.startswith(f"OK   image {MPICH_IMAGE}") for line in levels["OK"]), text
    assert no_check_containers(docker_client)


def test_unreadable_job_files_are_a_warning_that_names_them(node):
    """The sweep keeps every job while a job file cannot be read; check says so and why."""
    site = node
    code, text, levels = run_check(site)
    assert any(line.startswith("OK   pbs_mom job files: ok") for line in levels["OK"]), text
    assert "pbs_mom holds 0 job(s) here" in text
    broken = mom_priv(site) / "jobs" / "55-1.sim.JB"
    broken.write_text('<?xml version="1.0"?>\n<job>\n  <version>131842</version>\n  <jobid>55[1].sim</jo')
    try:
        code, text, levels = run_check(site)
    finally:
        broken.unlink()
    assert code == 0, text                                   # jobs still run: a warning, not a failure
    [line] = [line for line in levels["WARN"] if "pbs_mom job files" in line]
    assert "55-1.sim.JB" in line and "removes nothing" in line, line

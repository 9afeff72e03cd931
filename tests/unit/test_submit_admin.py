"""``torque-docker install --submit-filter`` / ``uninstall --submit-filter`` / ``check
--submit-host`` / ``lint`` through the real command line, on a throw-away PBS_HOME.

qsub reads torque.cfg as Torque 6.1.3's torquecfg.c does: text after '#' blanked, the
first occurrence of SUBMITFILTER wins; ``submitadmin.active_filter`` is that reading.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from torque_docker import submitadmin


def cli(*args, env=None, cwd=None, stdin=b""):
    return subprocess.run([sys.executable, "-m", "torque_docker.cli", *args], input=stdin, capture_output=True,
                          env=env, cwd=cwd, timeout=60)


@pytest.fixture()
def host(tmp_path):
    home = tmp_path / "pbs_home"
    home.mkdir()
    conf = tmp_path / "etc" / "torque-docker.conf"
    conf.parent.mkdir()
    conf.write_text("[images]\nallowed = debian:*\n")
    env = dict(os.environ, TORQUE_DOCKER_CONF=str(conf))
    return home, conf, env


@pytest.mark.parametrize("before", [
    None,
    "",
    "SERVERHOST head\nQSUBSLEEP 2\n",
    "SERVERHOST head\n# SUBMITFILTER /old/commented\n",
])
def test_install_then_uninstall_restores_torque_cfg(host, before):
    home, conf, env = host
    cfg = home / "torque.cfg"
    if before is not None:
        cfg.write_text(before)
    done = cli("install", "--submit-filter", "--pbs-home", str(home), env=env)
    assert done.returncode == 0, done.stderr
    ours = home / submitadmin.FILTER_NAME
    assert submitadmin.active_filter(cfg.read_text()) == str(ours)
    assert os.stat(ours).st_mode & 0o777 == 0o755 and os.stat(ours).st_uid == 0
    assert not (conf.parent / "submit-filter.chain").exists()
    again = cli("install", "--submit-filter", "--pbs-home", str(home), env=env)   # idempotent
    assert again.returncode == 0 and cfg.read_text().count("SUBMITFILTER") == 1 + (before or "").count("SUBMITFILTER")
    done = cli("uninstall", "--submit-filter", "--pbs-home", str(home), env=env)
    assert done.returncode == 0, done.stderr
    assert not ours.exists()
    if before:
        assert cfg.read_text() == before
    else:
        assert not cfg.exists()


def test_a_sites_filter_is_chained_never_dropped(host, tmp_path):
    home, conf, env = host
    theirs = tmp_path / "site_filter"
    theirs.write_text("#!/bin/sh\ncat\n")
    theirs.chmod(0o755)
    before = f"SERVERHOST head\nSUBMITFILTER={theirs}  # the site's\nSUBMITFILTER /second/ignored\n"
    (home / "torque.cfg").write_text(before)
    assert submitadmin.active_filter(before) == str(theirs)
    assert cli("install", "--submit-filter", "--pbs-home", str(home), env=env).returncode == 0
    text = (home / "torque.cfg").read_text()
    assert submitadmin.active_filter(text) == str(home / submitadmin.FILTER_NAME)
    assert (conf.parent / "submit-filter.chain").read_text() == f"{theirs}\n"
    check = cli("check", "--submit-host", "--pbs-home", str(home), env=env)
    assert check.returncode == 0, check.stdout
    assert f"runs the site's filter {theirs} first" in check.stdout.decode()
    assert cli("uninstall", "--submit-filter", "--pbs-home", str(home), env=env).returncode == 0
    assert (home / "torque.cfg").read_text() == before
    assert not (conf.parent / "submit-filter.chain").exists()


def test_legacy_default_filter_is_chained(host, tmp_path, monkeypatch):
    """Without SUBMITFILTER qsub runs /usr/local/sbin/torque_submitfilter if it exists;
    setting ours would silently drop it."""
    home, conf, env = host
    legacy = tmp_path / "torque_submitfilter"
    legacy.write_text("#!/bin/sh\ncat\n")
    legacy.chmod(0o755)
    monkeypatch.setenv("TORQUE_DOCKER_CONF", str(conf))
    submitadmin.install(str(home), python="/usr/bin/python3", legacy=str(legacy), out=open(os.devnull, "w"))
    assert (conf.parent / "submit-filter.chain").read_text() == f"{legacy}\n"


def test_check_reports_each_broken_state(host, tmp_path):
    home, conf, env = host
    cfg = home / "torque.cfg"

    def check():
        done = cli("check", "--submit-host", "--pbs-home", str(home), env=env)
        return done.returncode, done.stdout.decode()

    rc, out = check()
    assert rc == 1 and "no SUBMITFILTER" in out
    cfg.write_text("SUBMITFILTER /usr/local/bin/other\n")
    rc, out = check()
    assert rc == 1 and "runs /usr/local/bin/other, not torque-docker's" in out
    assert cli("install", "--submit-filter", "--pbs-home", str(home), env=env).returncode == 0
    (conf.parent / "submit-filter.chain").write_text("/nonexistent/filter\n")
    rc, out = check()
    assert rc == 1 and "/nonexistent/filter it runs first is missing" in out
    (conf.parent / "submit-filter.chain").unlink()
    rc, out = check()
    assert rc == 0 and out.startswith("ok   submit filter: SUBMITFILTER ")
    conf.unlink()
    rc, out = check()
    assert rc == 1 and "copy the nodes' config" in out
    conf.write_text("")
    # the config the installed filter names, not the one of the admin's shell
    elsewhere = dict(env, TORQUE_DOCKER_CONF=str(tmp_path / "elsewhere.conf"))       # missing
    assert cli("check", "--submit-host", "--pbs-home", str(home), env=elsewhere).returncode == 0
    conf.unlink()
    assert cli("check", "--submit-host", "--pbs-home", str(home), env=elsewhere).returncode == 1
    conf.write_text("")
    (home / submitadmin.FILTER_NAME).unlink()
    rc, out = check()
    assert rc == 1 and "does not exist (qsub refuses every job)" in out


def test_lint_shows_the_request_the_nodes_will_see(host, tmp_path):
    home, conf, env = host
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n#PBS -l nodes=1\n#PBS -l image=debian:12\n#PBS -l other=model=process\nhostname\n")
    done = cli("lint", str(script), env=env, cwd=str(tmp_path))
    assert done.returncode == 0, done.stdout
    assert done.stdout.decode().splitlines() == [
        "torque-docker: ok: the nodes will see -l other=image=debian:12;model=process",
        "torque-docker: qsub's filter adds the line: #PBS -l other=image=debian:12;model=process",
    ]
    assert script.read_text().count("other=") == 1          # lint changes nothing


def test_lint_with_qsub_arguments_and_a_refusal(host, tmp_path):
    home, conf, env = host
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\nhostname\n")
    done = cli("lint", str(script), "-l", "image=lab/x:1", env=env, cwd=str(tmp_path))
    assert done.returncode == 1
    assert done.stdout.decode().splitlines() == [
        "torque-docker: job not submitted: image lab/x:1 is not allowed on this cluster (allowed: debian:*)",
        "torque-docker: what to do: use an allowed image or ask the admin to add it to [images] allowed",
    ]
    done = cli("lint", str(script), "-l", "nodes=1", env=env, cwd=str(tmp_path))
    assert done.returncode == 0
    assert "no container request" in done.stdout.decode()
    done = cli("lint", "-", "-l", "image=debian:12", env=env, cwd=str(tmp_path), stdin=b"hostname\n")
    assert done.returncode == 0 and "other=image=debian:12" in done.stdout.decode()


def test_active_filter_reads_torque_cfg_like_torquecfg_c():
    assert submitadmin.active_filter("") == ""
    assert submitadmin.active_filter("#SUBMITFILTER /a\n") == ""
    assert submitadmin.active_filter("X 1 # SUBMITFILTER /a\nSUBMITFILTER\t/b\n") == "/b"
    assert submitadmin.active_filter("SUBMITFILTER=/c extra\nSUBMITFILTER /d\n") == "/c"


def test_shipped_filter_text():
    text = submitadmin.filter_text("/opt/py/bin/python3", "/opt/site-packages")
    assert text.startswith("#!/opt/py/bin/python3 -IS\n")
    assert "sys.path.insert(0, '/opt/site-packages')  # torque-docker: package directory\n" in text
    assert Path(submitadmin.package_dir(), "torque_docker", "submit.py").exists()


def test_our_own_filter_set_by_hand_is_replaced_not_chained(host, tmp_path):
    """An admin who pointed SUBMITFILTER at the RPM's copy: chaining it would run ours twice."""
    home, conf, env = host
    rpm_copy = tmp_path / "submit-filter"
    rpm_copy.write_text(submitadmin.filter_text("/usr/bin/python3", submitadmin.package_dir()))
    rpm_copy.chmod(0o755)
    before = f"SUBMITFILTER {rpm_copy}\n"
    (home / "torque.cfg").write_text(before)
    assert cli("install", "--submit-filter", "--pbs-home", str(home), env=env).returncode == 0
    assert not (conf.parent / "submit-filter.chain").exists()
    assert submitadmin.active_filter((home / "torque.cfg").read_text()) == str(home / submitadmin.FILTER_NAME)
    assert cli("uninstall", "--submit-filter", "--pbs-home", str(home), env=env).returncode == 0
    assert (home / "torque.cfg").read_text() == before

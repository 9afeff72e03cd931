"""The submit filter, run exactly as qsub runs it (torque-facts.md, "Submit filter";
src/cmds/qsub_functions.c of Torque 6.1.3):

    /bin/sh -c "FILTER 'arg1' 'arg2' ... >TMPFILE"     (after -C: \\PREFIX, unquoted)

with the job script on stdin, as the submitting user; exit 0 submits TMPFILE, 255 is
"administratively rejected", any other non-zero "submit filter returned an error code".
What qsub does with the filtered script is read with qsubparse (a port of qsub's
directive and -l parsing); the tests also check the literal text.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import List, Sequence, Tuple

import pytest

from torque_docker import qsubparse, refusal, submit, submitadmin
from torque_docker.errors import TorqueDockerError
from torque_docker.request import request_from_resource_list

QSUB_REJECT = 255


def qsub_command(filter_path: str, args: Sequence[str], outfile: str) -> str:
    """The popen() command line qsub 6.1.3 builds (qsub_functions.c, get_script)."""
    command, after_c = filter_path, False
    for arg in args:
        command += " "
        if after_c:                     # the -C prefix: a backslash and the raw text
            command += "\\" + arg
            after_c = False
            continue
        after_c = arg == "-C"
        command += f"'{arg}'"
    return command + " >" + outfile


def run_filter(filter_path: str, args: Sequence[str], script: bytes, cwd: str, env=None,
               user=None) -> Tuple[int, bytes, str]:
    """qsub's popen(): stdout into a file qsub made (mkstemp in /tmp, owned by the user)."""
    fd, outfile = tempfile.mkstemp(prefix="qsub.")
    os.close(fd)
    try:
        if user is not None:
            os.chown(outfile, user.pw_uid, user.pw_gid)
        done = subprocess.run(["/bin/sh", "-c", qsub_command(filter_path, args, outfile)], input=script,
                              stderr=subprocess.PIPE, cwd=cwd, env=env, timeout=60,
                              **({} if user is None else {"user": user.pw_uid, "group": user.pw_gid}))
        out = Path(outfile).read_bytes()
    finally:
        os.unlink(outfile)
    return done.returncode, out, done.stderr.decode("utf-8", "replace")


@pytest.fixture()
def tmp_path():
    """Like pytest's, but under a directory every user may enter (the filter runs as the user)."""
    root = tempfile.mkdtemp(prefix="td-submit-")
    os.chmod(root, 0o755)
    yield Path(root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture()
def site(tmp_path, monkeypatch):
    """A submit host: PBS_HOME with the filter installed, a site config next to it."""
    home = tmp_path / "pbs_home"
    home.mkdir()
    conf = tmp_path / "etc" / "torque-docker.conf"
    conf.parent.mkdir()
    (tmp_path / "scratch" / "me").mkdir(parents=True)
    conf.write_text(f"[images]\nallowed = debian:* lab/*\n[mounts]\nallowed = {tmp_path / 'scratch'}\n")
    monkeypatch.setenv("TORQUE_DOCKER_CONF", str(conf))
    submitadmin.install(str(home), python="/usr/bin/python3", legacy="", out=open(os.devnull, "w"))
    work = tmp_path / "work"
    work.mkdir()

    class Site:
        root = tmp_path
        pbs_home = home
        config = conf
        filter = str(home / submitadmin.FILTER_NAME)
        cwd = str(work)
        env = {"PATH": "/bin:/usr/bin", "TORQUE_DOCKER_CONF": str(conf), "HOME": str(tmp_path)}

        def run(self, args: Sequence[str], script: bytes) -> Tuple[int, bytes, str]:
            return run_filter(self.filter, args, script, self.cwd, self.env)

    return Site()


def qsub_sees(args: Sequence[str], filtered: bytes) -> dict:
    """The resources qsub sends after reading the filtered script with these arguments."""
    return qsubparse.read_submission(args, filtered).resources


def minus_one_line(filtered: bytes, original: bytes) -> bytes:
    """The filtered script with exactly one line (the added directive) removed, if that gives the original."""
    lines = filtered.splitlines(keepends=True)
    for i in range(len(lines)):
        if b"".join(lines[:i] + lines[i + 1:]) in (original, original + b"\n", original + b"\r\n"):
            return lines[i]
    raise AssertionError(f"not the original plus one line:\n{filtered!r}\n{original!r}")


# ----------------------------------------------------------------------------- pass-through
NOT_CONTAINER = [
    b"#!/bin/bash\n#PBS -l nodes=2:ppn=4,walltime=1:00:00\nmpirun ./a.out\n",
    b"echo no directives at all\n",
    b"",
    b"#!/bin/sh\r\n#PBS -N crlf\r\necho hi\r\n",
    b"#!/bin/sh\necho first\n#PBS -l image=debian:12\n#PBS -l other=image=debian:12\n",   # after the first command
    b"#PBS -l other=model=process\n",                       # other= without an image is not ours
    b"#!/bin/sh\n# the word image in a comment, image=debian:12\necho image\n",
    b"\xff\xfe binary \x00 junk \x80\n#PBS -l walltime=1\n",
    b"no trailing newline",
]


@pytest.mark.parametrize("script", NOT_CONTAINER)
def test_jobs_without_an_image_pass_through_byte_for_byte(site, script):
    rc, out, err = site.run(["-l", "nodes=1", "-N", "x y"], script)
    assert (rc, out, err) == (0, script, "")


def test_directive_after_the_first_command_is_not_read(site):
    script = b"#!/bin/sh\ncd $HOME\n#PBS -l image=debian:12\n"
    assert site.run([], script) == (0, script, "")


def test_a_different_prefix_hides_pbs_lines(site):
    script = b"#!/bin/sh\n#PBS -l image=debian:12\necho\n"
    assert site.run(["-C", "#MY"], script) == (0, script, "")


# ----------------------------------------------------------------------------- the short form
def test_short_form_in_the_script_becomes_one_other_line(site):
    script = b"#!/bin/bash\n#PBS -l nodes=2:ppn=4\n#PBS -l image=lab/openfoam:11\n\ncd $PBS_O_WORKDIR\nmpirun x\n"
    rc, out, err = site.run([], script)
    assert rc == 0, err
    assert minus_one_line(out, script) == b"#PBS -l other=image=lab/openfoam:11\n"
    assert out.index(b"#PBS -l other=") < out.index(b"cd $PBS_O_WORKDIR")
    assert qsub_sees([], out)["other"] == "image=lab/openfoam:11"
    assert request_from_resource_list(f"other={qsub_sees([], out)['other']}").image == "lab/openfoam:11"


def test_short_form_joins_the_other_keys_into_one_request(site):
    script = b"#PBS -l image=debian:12\n#PBS -l other=model=process;run=host\necho\n"
    rc, out, err = site.run([], script)
    assert rc == 0, err
    assert qsub_sees([], out)["other"] == "image=debian:12;model=process;run=host"
    request = request_from_resource_list("other=" + qsub_sees([], out)["other"])
    assert (request.image, request.model, request.run) == ("debian:12", "process", "host")


def test_short_form_on_the_command_line_is_carried_by_the_script(site):
    script = b"#!/bin/sh\necho hello\n"
    args = ["-l", "image=debian:12,walltime=10", "job.sh"]
    rc, out, err = site.run(args, script)
    assert rc == 0, err
    assert out == b"#!/bin/sh\n#PBS -l other=image=debian:12\necho hello\n"
    assert qsub_sees(args, out)["other"] == "image=debian:12"


def test_command_line_image_with_script_other_keys(site):
    script = b"#PBS -l other=model=process\necho\n"
    args = ["-l", "image=debian:12"]
    rc, out, err = site.run(args, script)
    assert rc == 0, err
    assert qsub_sees(args, out)["other"] == "image=debian:12;model=process"


def test_long_form_on_the_command_line_passes_unchanged(site):
    script = b"#!/bin/sh\necho\n"
    assert site.run(["-l", "other=image=debian:12;model=process"], script) == (0, script, "")


def test_long_form_in_the_script_passes_unchanged(site):
    script = b"#PBS -l other=image=debian:12\necho\n"
    assert site.run([], script) == (0, script, "")


def test_both_forms_naming_the_same_image_pass_unchanged(site):
    script = b"#PBS -l image=debian:12\n#PBS -l other=image=debian:12;model=node\necho\n"
    assert site.run([], script) == (0, script, "")


def test_custom_prefix_is_used_for_the_added_line(site):
    script = b"#!/bin/sh\n#MY -l image=debian:12\necho\n"
    args = ["-C", "#MY"]
    rc, out, err = site.run(args, script)
    assert rc == 0, err
    assert minus_one_line(out, script) == b"#MY -l other=image=debian:12\n"
    assert qsub_sees(args, out)["other"] == "image=debian:12"


def test_crlf_script_from_stdin(site):
    """qsub refuses a CRLF script FILE itself, but a script on stdin reaches the filter."""
    script = b"#!/bin/sh\r\n#PBS -l image=debian:12\r\necho hi\r\n"
    rc, out, err = site.run([], script)
    assert rc == 0, err
    assert minus_one_line(out, script) == b"#PBS -l other=image=debian:12\r\n"
    assert qsub_sees([], out)["other"] == "image=debian:12"


def test_continued_directive_and_indented_prefix(site):
    script = b"#!/bin/sh\n   #PBS -l nodes=1,\\\nimage=debian:12\n: colon lines are not commands\necho\n"
    rc, out, err = site.run([], script)
    assert rc == 0, err
    assert out.index(b"#PBS -l other=image=debian:12\n") < out.index(b"echo")
    assert qsub_sees([], out)["other"] == "image=debian:12"


def test_no_directives_and_no_shebang(site):
    rc, out, err = site.run(["-l", "image=debian:12"], b"hostname")
    assert rc == 0, err
    assert out == b"#PBS -l other=image=debian:12\nhostname"


def test_script_of_only_directives_without_final_newline(site):
    rc, out, err = site.run([], b"#PBS -l image=debian:12")
    assert rc == 0, err
    assert out == b"#PBS -l image=debian:12\n#PBS -l other=image=debian:12\n"


def test_mount_path_with_a_space_survives_the_directive(site):
    src = site.root / "scratch" / "me" / "a b"
    src.mkdir()
    args = ["-l", "image=debian:12"]
    script = f"#PBS -l other='mount={src}:/data'\necho\n".encode()
    rc, out, err = site.run(args, script)
    assert rc == 0, err
    assert qsub_sees(args, out)["other"] == f"image=debian:12;mount={src}:/data"


# ----------------------------------------------------------------------------- refusals
def refused(site, args, script) -> List[str]:
    rc, out, err = site.run(args, script)
    assert rc == QSUB_REJECT, (rc, out, err)
    lines = err.splitlines()
    assert len(lines) == 2, err
    assert lines[0].startswith("torque-docker: job not submitted: ")
    assert lines[1].startswith("torque-docker: what to do: ")
    return lines


def test_command_line_other_hides_a_short_form(site):
    lines = refused(site, ["-l", "image=debian:12", "-l", "other=model=process"], b"echo\n")
    assert "-l other=model=process on qsub's command line" in lines[0]
    assert "qsub -l other=image=debian:12;model=process" in lines[1]


def test_command_line_other_hides_the_scripts_short_form(site):
    refused(site, ["-l", "other=run=host"], b"#PBS -l image=debian:12\necho\n")


def test_two_images(site):
    lines = refused(site, [], b"#PBS -l image=debian:12\n#PBS -l other=image=debian:11\necho\n")
    assert "two images" in lines[0]


PROLOGUE_REFUSES = [
    "image=debian:12;colour=blue",
    "image=debian:12;model=vm",
    "image=debian:12;run=nowhere",
    "image=debian:12;model=node;model=process",
    "image=",
    "image=Lab/Upper:1",
    "image=debian:12;mount=relative/path",
    "image=debian:12;mount=/a:/b:/c:/d",
]


@pytest.mark.parametrize("other", PROLOGUE_REFUSES)
@pytest.mark.parametrize("form", ["script", "cmdline"])
def test_request_mistakes_are_refused_with_the_prologues_two_lines(site, other, form):
    try:
        request_from_resource_list(f"other={other}")
    except TorqueDockerError as exc:
        prologue = refusal.explanation("1.srv", exc).splitlines()
    else:
        pytest.fail("the prologue accepts it")
    script, args = (f"#PBS -l other={other}\necho\n".encode(), []) if form == "script" else \
        (b"echo\n", ["-l", f"other={other}"])
    lines = refused(site, args, script)
    assert lines[0].split(": job not submitted: ", 1)[1] == prologue[0].split(" was not started: ", 1)[1]
    assert lines[1] == prologue[1]


def test_image_outside_the_sites_list(site):
    lines = refused(site, [], b"#PBS -l image=evil/miner:1\necho\n")
    assert "evil/miner:1 is not allowed on this cluster" in lines[0]


def test_mount_outside_the_allowed_roots(site):
    lines = refused(site, ["-l", "other=image=debian:12;mount=/etc:/data"], b"echo\n")
    assert "outside the paths the site allows" in lines[0]


def test_missing_mount_source(site):
    missing = site.root / "scratch" / "nope"
    lines = refused(site, ["-l", f"other=image=debian:12;mount={missing}"], b"echo\n")
    assert f"mount source {missing} is not a directory you can read" in lines[0]


def test_working_directory_docker_must_not_mount(site):
    site.cwd = "/proc"
    lines = refused(site, ["-l", "image=debian:12"], b"echo\n")
    assert "working directory /proc" in lines[0]


@pytest.mark.parametrize("resources,words", [
    ("mem=lots", "cannot read the memory size 'lots'"),
    ("mem=4mb,nodes=1", "Docker needs at least 6 MiB"),
    ("pmem=1mb,nodes=1:ppn=4", "Docker needs at least 6 MiB"),
])
def test_memory_docker_refuses(site, resources, words):
    lines = refused(site, ["-l", resources], b"#PBS -l other=image=debian:12;model=process\necho\n")
    assert words in lines[0]


def test_memory_docker_accepts(site):
    script = b"#PBS -l other=image=debian:12\necho\n"
    assert site.run(["-l", "mem=64mb,nodes=2:ppn=2"], script) == (0, script, "")


def test_without_a_site_config_only_the_syntax_is_checked(site):
    site.config.unlink()
    rc, out, err = site.run(["-l", "image=evil/miner:1"], b"echo\n")
    assert rc == 0 and b"other=image=evil/miner:1" in out
    assert "no site config" in err
    refused(site, ["-l", "other=image=debian:12;model=vm"], b"echo\n")


def test_broken_site_config_is_the_admins_error_not_a_rejection(site):
    site.config.write_text("[images]\nallowed = *\nbogus = 1\n")
    rc, out, err = site.run(["-l", "image=debian:12"], b"echo\n")
    assert rc == 1 and out == b""
    assert "unknown key 'bogus'" in err
    # ...and a job without an image never reads it
    assert site.run([], b"echo\n") == (0, b"echo\n", "")


def test_the_submitting_user_runs_it(site):
    """As an unprivileged user, from a directory of theirs (the filter needs no root)."""
    import pwd
    try:
        user = pwd.getpwnam("tduser")
    except KeyError:
        pytest.fail("the test user tduser is missing (scripts/setup.sh creates it)")
    for path in (site.root, site.pbs_home, site.config.parent, site.root / "scratch"):
        os.chmod(path, 0o755)
    os.chmod(site.config, 0o644)
    home = site.root / "home"
    home.mkdir()
    os.chown(home, user.pw_uid, user.pw_gid)
    env = dict(site.env, HOME=str(home))
    assert run_filter(site.filter, ["-l", "image=debian:12"], b"echo\n", str(home), env, user) == \
        (0, b"#PBS -l other=image=debian:12\necho\n", "")
    rc, out, err = run_filter(site.filter, ["-l", "image=evil/x:1"], b"echo\n", str(home), env, user)
    assert rc == QSUB_REJECT and "not allowed on this cluster" in err


def test_user_python_environment_cannot_break_it(site):
    env = dict(site.env, PYTHONHOME="/nonexistent", PYTHONPATH="/nonexistent", PYTHONSTARTUP="/etc/passwd")
    assert run_filter(site.filter, [], b"echo\n", site.cwd, env) == (0, b"echo\n", "")


# ----------------------------------------------------------------------------- chaining
def site_with_a_filter(tmp_path, monkeypatch, config_text: str, filter_text: str):
    """A submit host's PBS_HOME whose torque.cfg has the site's own SUBMITFILTER, and our
    config (in TORQUE_DOCKER_CONF): (pbs_home, config file, the site's filter)."""
    home = tmp_path / "pbs_home"
    home.mkdir()
    conf = tmp_path / "etc" / "torque-docker.conf"
    conf.parent.mkdir()
    conf.write_text(config_text)
    monkeypatch.setenv("TORQUE_DOCKER_CONF", str(conf))
    theirs = tmp_path / "site-filter"
    theirs.write_text(filter_text)
    theirs.chmod(0o755)
    return home, conf, theirs


def test_a_sites_filter_runs_first_and_its_rejection_stands(tmp_path, monkeypatch):
    home, conf, theirs = site_with_a_filter(
        tmp_path, monkeypatch, "",
        "#!/bin/sh\nfor a in \"$@\"; do [ \"$a\" = reject ] && { echo 'site: no' >&2; exit 255; }; done\n"
        "read first; echo \"$first\"; echo '#PBS -A project42'; cat\n")
    cfg_text = f"SERVERHOST head\nSUBMITFILTER {theirs}\n"
    (home / "torque.cfg").write_text(cfg_text)
    submitadmin.install(str(home), python="/usr/bin/python3", legacy="", out=open(os.devnull, "w"))
    ours = str(home / submitadmin.FILTER_NAME)
    assert submitadmin.active_filter((home / "torque.cfg").read_text()) == ours
    env = {"PATH": "/bin:/usr/bin", "TORQUE_DOCKER_CONF": str(conf)}
    rc, out, err = run_filter(ours, ["-l", "image=debian:12"], b"#!/bin/sh\necho\n", str(tmp_path), env)
    assert rc == 0, err
    assert out == b"#!/bin/sh\n#PBS -A project42\n#PBS -l other=image=debian:12\necho\n"
    rc, out, err = run_filter(ours, ["-N", "reject"], b"echo\n", str(tmp_path), env)
    assert (rc, out) == (255, b"") and "site: no" in err
    submitadmin.uninstall(str(home), out=open(os.devnull, "w"))
    assert (home / "torque.cfg").read_text() == cfg_text
    assert not (home / submitadmin.FILTER_NAME).exists()
    assert not Path(submit.chain_path()).exists()


def test_the_users_environment_chooses_neither_the_site_filter_nor_the_policy(tmp_path, monkeypatch):
    """The filter runs as the user: pointing TORQUE_DOCKER_CONF elsewhere must not skip the
    site's own filter (qsub ran it unskippably before install) nor the site's image policy."""
    home, conf, theirs = site_with_a_filter(tmp_path, monkeypatch, "[images]\nallowed = debian:*\n",
                                            "#!/bin/sh\necho '#PBS -A project42'; cat\n")
    (home / "torque.cfg").write_text(f"SUBMITFILTER {theirs}\n")
    submitadmin.install(str(home), python="/usr/bin/python3", legacy="", out=open(os.devnull, "w"))
    ours = str(home / submitadmin.FILTER_NAME)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "torque-docker.conf").write_text("[images]\nallowed = *\n")
    for elsewhere in ("/nonexistent/torque-docker.conf", str(mine / "torque-docker.conf")):
        env = {"PATH": "/bin:/usr/bin", "TORQUE_DOCKER_CONF": elsewhere}
        rc, out, err = run_filter(ours, [], b"#!/bin/sh\necho\n", str(tmp_path), env)
        assert (rc, out) == (0, b"#PBS -A project42\n#!/bin/sh\necho\n"), err
        rc, out, err = run_filter(ours, ["-l", "image=evil/x:1"], b"echo\n", str(tmp_path), env)
        assert (rc, out) == (submit.EXIT_REJECT, b""), err
        assert "evil/x:1" in err


# ----------------------------------------------------------------------------- the fast path
def test_filter_imports_nothing_heavy_for_a_job_without_an_image(site):
    """What a job without an image costs every qsub: the interpreter and our two parsers."""
    with open(site.filter) as handle:
        text = handle.read().replace(" -IS\n", " -ISXimporttime\n", 1)
    probe = site.root / "filter-importtime"
    probe.write_text(text)
    probe.chmod(0o755)
    rc, out, err = run_filter(str(probe), ["-l", "nodes=1"], b"#PBS -l walltime=1\necho\n", site.cwd, site.env)
    assert (rc, out) == (0, b"#PBS -l walltime=1\necho\n")
    loaded = {line.split("|")[-1].strip() for line in err.splitlines() if line.startswith("import time:")}
    assert "torque_docker.submit" in loaded
    heavy = {"docker", "jinja2", "cryptography", "filelock", "typing", "dataclasses", "site",
             "torque_docker.config", "torque_docker.policy", "subprocess", "socket", "ipaddress"}
    assert not loaded & heavy, loaded & heavy


def test_config_location_constants_match_config_py():
    from torque_docker import config
    assert (submit.CONFIG_ENV, submit.CONFIG_DEFAULT) == (config.ENV_VAR, config.DEFAULT_PATH)


def test_a_line_longer_than_qsubs_buffer_is_never_split(site):
    """qsub reads 32767 bytes at a time: the second piece of a long comment starts with no
    '#' and ends directive reading there; the added line must go before the long line."""
    long_comment = b"# " + b"x" * 40000 + b"; touch /tmp/split\n"
    script = b"#!/bin/sh\n#PBS -l image=debian:12\n" + long_comment + b"echo\n"
    rc, out, err = site.run([], script)
    assert rc == 0, err
    assert out == b"#!/bin/sh\n#PBS -l image=debian:12\n#PBS -l other=image=debian:12\n" + long_comment + b"echo\n"
    assert qsub_sees([], out)["other"] == "image=debian:12"


def test_a_ulimit_above_the_sites_bound_is_refused_at_qsub(site):
    site.config.write_text(site.config.read_text() + "[limits]\nulimits = nofile=1024:4096\nuser_max = nofile=65536\n")
    lines = refused(site, ["-l", "other=image=debian:12;ulimit=nofile=131072"], b"echo\n")
    assert "ulimit nofile 131072 is above this site's bound of 65536" in lines[0]
    lines = refused(site, ["-l", "other=image=debian:12;ulimit=stack=unlimited"], b"echo\n")
    assert "not something this site lets a job set" in lines[0]


def test_a_ulimit_within_the_sites_bound_passes_qsub(site):
    site.config.write_text(site.config.read_text() + "[limits]\nuser_max = nofile=65536\n")
    rc, out, err = site.run(["-l", "other=image=debian:12;ulimit=nofile=65536"], b"echo\n")
    assert rc == 0, err


def test_a_gpu_request_is_refused_at_qsub_where_the_site_gives_none(site):
    lines = refused(site, ["-l", "nodes=1:ppn=1:gpus=1", "-l", "other=image=debian:12"], b"echo\n")
    assert "asks for 1 GPU(s)" in lines[0] and "gives containers no GPUs ([gpus] method = none)" in lines[0]


def test_a_gpu_request_passes_qsub_where_the_site_gives_gpus(site):
    site.config.write_text(site.config.read_text() + "[gpus]\nmethod = devices\n")
    rc, out, err = site.run(["-l", "nodes=1:ppn=1:gpus=1", "-l", "other=image=debian:12"], b"echo\n")
    assert rc == 0, err


def test_gpus_on_a_second_node_are_refused_at_qsub_where_sisters_refuse_them(site):
    site.config.write_text(site.config.read_text() + "[gpus]\nmethod = devices\nsister = refuse\n")
    lines = refused(site, ["-l", "nodes=2:ppn=1:gpus=1", "-l", "other=image=debian:12"], b"echo\n")
    assert "GPUs on more than its first node" in lines[0] and "[gpus] sister = refuse" in lines[0]
    site.config.write_text(site.config.read_text().replace("sister = refuse", "sister = whole-node"))
    rc, out, err = site.run(["-l", "nodes=2:ppn=1:gpus=1", "-l", "other=image=debian:12"], b"echo\n")
    assert rc == 0, err


@pytest.mark.parametrize("spelled", ['other=ima\\ge=base:1', 'other="ima"ge=base:1', "other=im'a'ge=base:1",
                                     'other=ima\\\nge=base:1'])
def test_an_image_word_split_by_what_qsub_removes_is_still_read(spelled):
    """qsub reads a directive's words with quotes and backslashes removed: the cheap first test
    must not let such a request past the filter's checks (and its pinning) unread."""
    script = f"#!/bin/sh\n#PBS -l {spelled}\necho hi\n".encode()
    assert submit.plan([], script).request == "image=base:1"

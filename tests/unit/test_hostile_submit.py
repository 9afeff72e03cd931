"""Hostile scripts and qsub arguments against the submit filter.

What reaches the filter (torque-facts.md, "Submit filter"): qsub's arguments (C strings:
no NUL, any other byte) and the job script on stdin (any bytes: qsub checks only script
FILES for text and CRLF, never stdin). The filter runs as the user, so a crash is no
privilege problem, but it is every qsub of the cluster: it must never crash, must leave
jobs without an image exactly as they were, and whatever it submits must give the nodes
the request it validated.
"""
from __future__ import annotations

import os
import subprocess

from hypothesis import given
from hypothesis import strategies as st

from hostile_strategies import ANY_TEXT, ARGV_TEXT, OTHER, budget, strip_nul
from torque_docker import config, qsubparse, submit
from torque_docker.errors import TorqueDockerError

LINES = [
    "#!/bin/bash", "#PBS -l image=debian:12", "#PBS -l image=lab/x:1", "#PBS -l other=model=process",
    "#PBS -l other=image=debian:12", "#PBS -l nodes=2:ppn=4,walltime=1:00:00", "  #PBS -l image=debian:12",
    "#PBS -l image=debian:12 \\", "#PBS -l 'other=image=debian:12;mount=/a b'", "#PBS -N 'unmatched",
    "#MY -l image=debian:12", "#PBS", "#PBS -l", "#PBS -l image=", "#PBS -lother=image=x", ": comment",
    "echo hello", "", "#", "#PBS -l mem=1mb", "\t", "image=debian:12", "#PBS -l other=image=debian:12;run=host",
]
EOLS = ["\n", "\r\n", "\r", "", "\\\n"]


def _script(parts) -> bytes:
    return "".join(line + eol for line, eol in parts).encode("utf-8", "surrogateescape")


def _line(pair) -> str:
    return pair[0] + pair[1]


def _other_arg(other: str) -> str:
    return "other=" + strip_nul(other)


def _no_image(text) -> bool:
    return (b"image" if isinstance(text, bytes) else "image") not in text


def _sh_safe(args) -> bool:
    """qsub puts -C's prefix into its shell command line unquoted (Torque's own hole, the
    user's own shell): only plain prefixes here, the tests run as root."""
    import re
    return all("'" not in a for a in args) and all(
        re.fullmatch(r"[#A-Za-z0-9]*", args[i + 1]) for i, a in enumerate(args[:-1]) if a == "-C") and \
        (not args or args[-1] != "-C")


SCRIPT_LINES = st.one_of(st.sampled_from(LINES), st.sampled_from(LINES), ANY_TEXT,
                         st.tuples(st.sampled_from(["#PBS -l other=", "#PBS -l image=", "#PBS "]), ANY_TEXT).map(_line))
SCRIPTS = st.one_of(st.lists(st.tuples(SCRIPT_LINES, st.sampled_from(EOLS)), max_size=8).map(_script),
                    st.binary(max_size=200))
ARG_WORDS = st.one_of(st.sampled_from(["-l", "-C", "#MY", "#PBS", "", "-I", "-N", "-d", "--", "-", "job.sh",
                                       "image=debian:12", "other=model=process", "image=debian:12,nodes=1",
                                       "other=image=debian:11", "-limage=x", "mem=1mb"]),
                      ARGV_TEXT, OTHER.map(_other_arg))
ARGS = st.lists(ARG_WORDS, max_size=8)


def check_verdict(args, script: bytes, verdict: submit.Verdict) -> None:
    if not verdict.rewritten:
        assert verdict.script == script
        if verdict.request:
            assert qsubparse.read_submission(args, script).resources["other"] == verdict.request
        return
    # exactly one line more, before the first command, and qsub reads the validated request from it
    assert len(verdict.script) > len(script)
    assert qsubparse.read_submission(args, verdict.script).resources["other"] == verdict.request
    assert "image" in qsubparse.read_submission(args, script).resources


@budget(400)
@given(SCRIPTS, ARGS)
def test_filter_plan_never_crashes_and_submits_what_it_validated(script, args):
    try:
        verdict = submit.plan(args, script)
    except TorqueDockerError as exc:
        assert exc.user_error and exc.message and exc.fix
        return
    check_verdict(args, script, verdict)


@budget(300)
@given(st.binary(max_size=300).filter(_no_image), st.lists(ARGV_TEXT.filter(_no_image), max_size=6))
def test_filter_leaves_jobs_without_image_untouched(script, args):
    verdict = submit.plan(args, script)
    assert verdict.script == script and not verdict.request


@budget(200)
@given(SCRIPTS, ARGS)
def test_filter_with_site_policy_refuses_only_with_two_lines(script, args):
    cfg = config.parse_text("[images]\nallowed = debian:* lab/*\n[mounts]\nallowed = /tmp\n", "/dev/null")
    try:
        verdict = submit.plan(args, script)
        if verdict.request:
            submit.check(verdict, cfg, "/tmp")
    except TorqueDockerError as exc:
        assert exc.user_error, exc
        lines = submit.refusal_lines(exc).splitlines()
        assert len(lines) == 2 and all(line.startswith("torque-docker: ") for line in lines)
        return
    check_verdict(args, script, verdict)


@budget(25)
@given(SCRIPTS, st.lists(ARG_WORDS, max_size=5).filter(_sh_safe))
def test_filter_through_sh_as_qsub_runs_it(script, args):
    """The real executable under /bin/sh -c: 0 or 255, never a traceback; 0 gives the plan's script."""
    from test_submit_filter import run_filter
    home = os.environ.get("TD_HOSTILE_FILTER")
    assert home, "the module fixture sets it"
    rc, out, err = run_filter(home, args, script, "/tmp", {"PATH": "/bin:/usr/bin", "TORQUE_DOCKER_CONF": "/nonexistent/x"})
    # qsub quotes arguments without escaping: one holding a quote breaks its own command line.
    assert "Traceback" not in err
    if rc == 0:
        assert out == submit.plan(args, script).script
    else:
        assert rc == submit.EXIT_REJECT and err.startswith("torque-docker: job not submitted: "), (rc, err)


def setup_module(module):
    import tempfile
    from torque_docker import submitadmin
    root = tempfile.mkdtemp(prefix="td-hostile-filter-")
    path = os.path.join(root, submitadmin.FILTER_NAME)
    with open(path, "w") as handle:
        handle.write(submitadmin.filter_text("/usr/bin/python3", submitadmin.package_dir()))
    os.chmod(path, 0o755)
    os.environ["TD_HOSTILE_FILTER"] = path
    module._root = root


def teardown_module(module):
    import shutil
    shutil.rmtree(module._root, ignore_errors=True)
    os.environ.pop("TD_HOSTILE_FILTER", None)


def test_sh_quoting_model_matches_sh():
    """The harness's command line gives the filter exactly qsub's arguments (no quote inside)."""
    from test_submit_filter import qsub_command
    args = ["-l", "image=x y", "-C", "#MY", "$(id)", "a;b"]
    done = subprocess.run(["/bin/sh", "-c", qsub_command("printf '%s\\n'", args, "/dev/stdout")],
                          capture_output=True, text=True, timeout=10)
    assert done.stdout.splitlines() == args

"""What torque.py reads of pbs_mom's hand-over: the environment as HookContext properties,
argv positions, and mom_priv/config through its one reader (MomConfig)."""
from pathlib import Path

import pytest

from torque_docker import torque
from torque_docker.torque import MomConfig


def context(environ, jobid="7.srv", kind="prologue.parallel"):
    return torque.context_from(kind, ["/x/mom_priv/prologue.parallel", jobid, "u", "g", "name", "other=image=a"],
                               environ, cwd="/")


@pytest.mark.parametrize("value,expected", [
    ("/scratch/7.srv", "/scratch/7.srv"), ("/scratch//7.srv/", "/scratch/7.srv"),
    ("/scratch/8.srv", ""), ("scratch/7.srv", ""), ("/scratch/../etc/7.srv", ""), ("", "")])
def test_tmpdir_is_only_mom_s_directory_named_after_the_job(value, expected):
    assert context({"TMPDIR": value}).tmpdir == expected


def test_counts_and_the_mother_superior_come_from_the_environment():
    ctx = context({"PBS_NP": "8", "PBS_NUM_NODES": "2", "PBS_NUM_PPN": "x", "PBS_MSHOST": "n0", "PBS_NODENUM": "1"})
    assert (ctx.size, ctx.mshost, ctx.node_index) == ((8, 2, 0), "n0", 1)
    assert not ctx.is_ms and ctx.resource_list == "other=image=a" and ctx.pbs_home == Path("/x")


def test_argv_positions_of_prologues_and_epilogues():
    argv = ["p", "7.srv", "alice", "grp", "name", "five", "six"]
    assert torque.resource_list_of("prologue", argv) == "five"
    assert torque.resource_list_of("epilogue.parallel", argv) == "six"
    assert torque.resource_list_of("epilogue", ["p"]) == ""
    assert torque.job_and_user(argv) == ("7.srv", "alice")


def test_mom_config_is_read_as_mom_reads_it(tmp_path):
    config = tmp_path / "mom_priv" / "config"
    config.parent.mkdir()
    config.write_text("$prologalarm 60\n$prologalarm 90\n$job_starter /x/mom_priv/torque-docker-starter\n"
                      "$job_starter_run_privileged true\n$job_starter_run_privileged maybe\n"
                      "$source_login_batch False\n\n# a comment\n")
    mom = MomConfig.of(tmp_path)
    assert mom.number("prologalarm", 300) == 90                     # the last one, as mom sets them in turn
    assert mom.flag("job_starter_run_privileged", False) is True    # a word mom does not know changes nothing
    assert mom.flag("source_login_batch", True) is False
    assert mom.flag("source_login_interactive", True) is True       # mom's default when absent
    assert mom.job_starter() == "/x/mom_priv/torque-docker-starter" and mom.starter_is_ours()
    config.write_text("$job_starter /usr/local/bin/site-starter\n")
    assert not MomConfig.of(tmp_path).starter_is_ours()
    missing = MomConfig.of(tmp_path / "nowhere")
    assert missing.job_starter() is None and missing.number("prologalarm", 300) == 300

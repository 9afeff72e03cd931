"""What a failed mother superior prologue becomes (hookrun.Hook.ms_prologue_failed): a node
fault is requeued while attempts are left, then refused like a user's error; a refusal goes
to the job starter when it is installed, else to the spool .ER (cli.py maps the outcomes)."""
import json

import pytest

from torque_docker import cli, config
from torque_docker.errors import NodeFault, RequestError
from torque_docker.hookrun import REFUSED, REFUSED_TO_STARTER, REQUEUE, Hook
from torque_docker.records import StarterInfo
from torque_docker.state import NodeState


@pytest.fixture
def hook(tmp_path, monkeypatch):
    conf = tmp_path / "td.conf"
    conf.write_text(f"[paths]\nstate_dir = {tmp_path}/state\n[log]\ndestination = none\n[jobs]\nmax_attempts = 2\n")
    monkeypatch.setenv("TORQUE_DOCKER_CONF", str(conf))
    (tmp_path / "mom_priv").mkdir()
    argv = [str(tmp_path / "mom_priv" / "prologue"), "5.srv", "nobody", "nogroup", "n", "other=image=x"]
    made = Hook("prologue", argv, {})
    made.cfg = config.load()
    return made


def test_a_node_fault_is_requeued_until_the_last_attempt(hook, capsys):
    hook.attempt = 1
    assert hook.ms_prologue_failed(NodeFault("disk full", "free some")) == REQUEUE
    hook.attempt = 2
    assert hook.ms_prologue_failed(NodeFault("disk full", "free some")) == REFUSED
    err = capsys.readouterr().err
    assert "disk full" in err and "(node fault, 2 attempts)" in err and "tell the admin" in err
    assert NodeState(hook.cfg.paths_state_dir).count_attempt("5.srv") == 1      # forgotten once refused


def test_a_refusal_goes_to_the_job_starter_when_it_is_installed(hook, tmp_path, capsys):
    (tmp_path / "mom_priv" / "config").write_text(f"$job_starter {tmp_path}/mom_priv/torque-docker-starter\n")
    assert hook.ms_prologue_failed(RequestError("no such model", "write model=node")) == REFUSED_TO_STARTER
    assert capsys.readouterr().err == ""
    state = NodeState(hook.cfg.paths_state_dir)
    info = StarterInfo.from_json((state.job_dir("5.srv") / "starter.json").read_text())
    assert info.run == "refused" and "no such model" in info.refusal and "write model=node" in info.refusal
    assert state.load_job("5.srv").refused
    assert json.loads((state.job_dir("5.srv") / "job.json").read_text())["user"] == "nobody"


def test_the_entry_maps_the_outcomes_to_torque_s_codes(monkeypatch):
    for outcome, code in ((REQUEUE, cli.EXIT_REQUEUE), (REFUSED_TO_STARTER, cli.EXIT_OK), (REFUSED, cli.EXIT_ABORT)):
        def run(self):
            raise NodeFault("broken")
        monkeypatch.setattr(Hook, "run", run)
        monkeypatch.setattr(Hook, "ms_prologue_failed", lambda self, error, outcome=outcome: outcome)
        assert cli.run_hook("prologue", ["p", "5.srv", "u", "g", "n", "other=image=x"]) == code

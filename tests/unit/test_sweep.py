"""The sweep's decisions, with a fake Docker: which jobs it removes and which it keeps.

The job files are as pbs_mom names them (the file prefix, not the job id); the full
story with real containers is tests/integration/test_arrays.py.
"""
from __future__ import annotations

import threading
from pathlib import Path

import pytest

from torque_docker import momjobs, sweep
from torque_docker.config import parse_text
from torque_docker.runtime import L_HOST, L_JOB, ContainerInfo
from torque_docker.state import NodeState

SAMPLE = (Path(__file__).resolve().parents[1] / "data" / "jobfiles" / "52-1.vm.JB").read_text()


def job_file(jobid: str, prefix: str) -> str:
    return (SAMPLE.replace("<jobid>52[1].vm</jobid>", f"<jobid>{jobid}</jobid>")
            .replace("<fileprefix>52-1.vm</fileprefix>", f"<fileprefix>{prefix}</fileprefix>"))


class FakeDocker:
    """Containers of this node, one per job, created long ago."""

    def __init__(self, jobs):
        self.live = {f"c-{j}": j for j in jobs}
        self.removed = []

    def containers(self, jobid=None, host=None):
        return [ContainerInfo(i, i, "running", {L_JOB: j, L_HOST: "n0"}, "1000")
                for i, j in sorted(self.live.items()) if jobid in (None, j)]

    def remove(self, ident):
        self.removed.append(self.live.pop(ident))
        return True


@pytest.fixture
def node(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep, "RECHECK_PAUSE", 0.0)
    cfg = parse_text(f"[paths]\nstate_dir = {tmp_path}/state\n[ssh]\ninclude_dir = {tmp_path}/ssh\n"
                     f"[network]\nnode_name = n0\n")
    NodeState(cfg.paths_state_dir).ensure()
    jobs = tmp_path / "pbs" / "mom_priv" / "jobs"
    jobs.mkdir(parents=True)
    return cfg, tmp_path / "pbs", jobs


def test_running_array_subjobs_are_kept_purged_ones_removed(node):
    cfg, pbs_home, jobs = node
    (jobs / "52-1.s.JB").write_text(job_file("52[1].s", "52-1.s"))
    (jobs / "52-2.s15003.JB").write_text(job_file("52[2].s", "52-2.s"))      # a multi-mom pbs_mom
    docker = FakeDocker(["52[1].s", "52[2].s", "52[3].s"])                   # 52[3] was purged
    report = sweep.gc(cfg, str(pbs_home), grace=0, server="s", runtime=docker)
    assert report == {"removed": ["52[3].s"], "kept": ["52[1].s", "52[2].s"], "errors": []}
    assert docker.removed == ["52[3].s"]
    assert sweep.mom_knows(str(pbs_home), "52[1].s") and not sweep.mom_knows(str(pbs_home), "52[3].s")


def test_files_that_cannot_be_read_keep_every_job(node):
    cfg, pbs_home, jobs = node
    (jobs / "52-1.s.JB").write_text(job_file("52[1].s", "52-1.s")[:500])   # half written
    docker = FakeDocker(["52[1].s", "9.s"])
    report = sweep.gc(cfg, str(pbs_home), grace=0, server="s", runtime=docker)
    assert report["removed"] == [] and docker.removed == []
    assert report["kept"] == ["52[1].s", "9.s"]
    assert len(report["errors"]) == 1 and "kept every job (2 due)" in report["errors"][0]
    assert "52-1.s.JB" in report["errors"][0]
    assert sweep.mom_knows(str(pbs_home), "9.s")          # in doubt: known


def test_a_wrong_pbs_home_removes_nothing(node):
    cfg, pbs_home, _ = node
    docker = FakeDocker(["9.s"])
    report = sweep.gc(cfg, str(pbs_home / "elsewhere"), grace=0, server="s", runtime=docker)
    assert report["removed"] == [] and "cannot list" in report["errors"][0]


def test_a_job_file_seen_by_the_second_read_keeps_the_job(node, monkeypatch):
    """A directory listing can miss a file job_save is renaming: removal needs two reads."""
    cfg, pbs_home, _ = node
    answers = iter([frozenset(), frozenset({"9.s"})])
    monkeypatch.setattr(momjobs, "held_jobs", lambda home: next(answers))
    docker = FakeDocker(["9.s"])
    assert sweep.gc(cfg, str(pbs_home), grace=0, server="s", runtime=docker)["removed"] == []


def test_nothing_is_read_when_nothing_is_due(node, monkeypatch):
    """Every prologue sweeps: with no candidate past the grace period the job files stay unread."""
    cfg, pbs_home, _ = node
    monkeypatch.setattr(momjobs, "held_jobs", lambda home: pytest.fail("read without need"))
    docker = FakeDocker(["9.s"])
    assert sweep.gc(cfg, str(pbs_home), grace=10 ** 12, server="s", runtime=docker)["kept"] == ["9.s"]
    assert sweep.gc(cfg, str(pbs_home), grace=0, server="s", runtime=docker, skip="9.s")["kept"] == ["9.s"]


def test_a_job_whose_prologue_runs_is_kept_and_a_prologue_waits_for_a_sweep(node):
    """A sister's pbs_mom writes the job file only after prologue.parallel: the hook's lock
    vouches for the job meanwhile."""
    cfg, pbs_home, _ = node
    docker = FakeDocker(["9.s"])
    with sweep.hook_running(cfg, "9.s"):
        report = sweep.gc(cfg, str(pbs_home), grace=0, server="s", runtime=docker)
    assert report["removed"] == [] and report["kept"] == ["9.s"]

    claim = sweep._claim(cfg, "9.s")                       # a sweep tearing 9.s down
    assert claim is not None
    entered = threading.Event()

    def prologue():
        with sweep.hook_running(cfg, "9.s", wait=30):
            entered.set()

    thread = threading.Thread(target=prologue)
    thread.start()
    assert not entered.wait(0.3)                           # waits while the sweep holds it
    import os
    os.close(claim)
    thread.join(30)
    assert entered.is_set()
    with pytest.raises(sweep.NodeFault, match="held the lock"):
        claim = sweep._claim(cfg, "9.s")
        try:
            with sweep.hook_running(cfg, "9.s", wait=0.2):
                pass
        finally:
            os.close(claim)
    assert sweep.gc(cfg, str(pbs_home), grace=0, server="s", runtime=docker)["removed"] == ["9.s"]


def test_a_job_that_comes_back_while_others_are_torn_down_is_kept(node):
    """The job files are read before any teardown; removing the jobs before one can take
    minutes, and a requeued job may arrive and be set up meanwhile: it must not be the
    sweep's to remove any more."""
    cfg, pbs_home, jobs = node

    class SlowDocker(FakeDocker):
        def remove(self, ident):
            if self.live.get(ident) == "1.s":          # while 1.s goes, 2.s is back on the node
                (jobs / "2.s.JB").write_text(job_file("2.s", "2.s"))
            return super().remove(ident)

    docker = SlowDocker(["1.s", "2.s"])
    report = sweep.gc(cfg, str(pbs_home), grace=0, server="s", runtime=docker)
    assert report["removed"] == ["1.s"] and report["kept"] == ["2.s"]
    assert docker.removed == ["1.s"]

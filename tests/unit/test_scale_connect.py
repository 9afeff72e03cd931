"""The mother superior's connect step with many sisters: stand-in sister containers
(tests/standins.py) answer on the network as the real ones do, and the product's own
probe, SSH config and connect step run against them."""
from __future__ import annotations

import fnmatch
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import standins  # noqa: E402

from torque_docker import connect, plan, probe, render  # noqa: E402
from torque_docker.errors import ContainerFault  # noqa: E402
from torque_docker.jobcontext import Timer  # noqa: E402


def targets_of(job):
    return {s.alias: (s.address, s.candidates, s.token) for s in job.sisters if s.address != job.address}


def test_one_dead_sister_out_of_200_is_the_one_missing(tmp_path):
    job = standins.scale_job(tmp_path, 200, 1, "node", base=(127, 4), dead=[137])
    # the dead one holds the probe to its deadline: long enough for 199 key exchanges on a loaded machine
    with standins.Standins(job.sisters, job.secrets.host_key.private_openssh, tmp_path):
        found = probe.find_ports(targets_of(job), time.monotonic() + 10.0, job.secrets.host_key.public_openssh)
    dead = plan.alias_for(job.ctx.jobid, 137)
    assert set(targets_of(job)) - set(found) == {dead}
    for sister in job.sisters:      # each at the candidate it took, past the ones another job holds
        if sister.alias in found:
            assert found[sister.alias][0] == sister.candidates[sister.at]


def test_connect_names_the_dead_node_and_requeues(tmp_path):
    job = standins.scale_job(tmp_path, 200, 1, "node", base=(127, 5), dead=[61], ready_timeout=10.0)
    with standins.Standins(job.sisters, job.secrets.host_key.private_openssh, tmp_path):
        with pytest.raises(ContainerFault) as caught:
            connect.connect_job(job.ctx, job.cfg, job.state, job.user, job.nodes, job.local_started, job.address,
                                job.secrets, Timer(), assigned=job.hosts)
    # ContainerFault is not a user error: cli requeues the job (exit 2), as before.
    assert job.nodes[61].host in caught.value.message
    assert job.nodes[60].host + "," not in caught.value.message and job.nodes[62].host not in caught.value.message


def test_slow_sisters_are_waited_for_together(tmp_path):
    """Eight sisters answer 2.5 s late, the deadline is 15 s: only a probe that waits for all
    of them at once finds them all (one after the other would need 20 s). Generous bounds:
    the 40 stand-ins' key exchanges share a loaded test machine with the probe."""
    slow = list(range(3, 11))
    job = standins.scale_job(tmp_path, 40, 1, "node", base=(127, 6), slow=slow, slow_delay=2.5)
    passes = {}
    with standins.Standins(job.sisters, job.secrets.host_key.private_openssh, tmp_path):
        found = probe.find_ports(targets_of(job), time.monotonic() + 15.0, job.secrets.host_key.public_openssh,
                                 passes=passes)
    assert set(found) == set(targets_of(job))
    slow_aliases = {plan.alias_for(job.ctx.jobid, n) for n in slow}
    assert all(passes[a] >= 2 for a in slow_aliases)
    assert all(passes[a] == 1 for a in targets_of(job) if a not in slow_aliases)


@pytest.mark.parametrize("count,model", [(65, "node"), (1000, "node"), (12, "process"), (64 * 64, "process")])
def test_every_alias_is_in_exactly_one_group(count, model):
    if model == "node":
        aliases = [plan.alias_for("9.srv", n) for n in range(count)]
    else:
        aliases = [plan.alias_for("9.srv", n, s) for n in range(count // 64 or 1) for s in range(64)]
    patterns = {render.ssh_group_pattern(a, len(aliases)) for a in aliases}
    for alias in aliases:
        assert sum(fnmatch.fnmatchcase(alias, p) for p in patterns) == 1
    assert len(patterns) < len(aliases) / 4     # groups hold several aliases each


def test_grouped_config_gives_ssh_each_alias_exactly(tmp_path):
    """ssh itself (-G prints what it would use) finds every container through the groups,
    with strict host key checking against the job's known_hosts, and ignores the job's
    config for another job whose tag starts like this one's."""
    containers = [{"alias": plan.alias_for("9.srv", n), "address": f"10.1.{n // 256}.{n % 256}", "port": 40000 + n}
                  for n in range(1000)]
    config = render.ssh_config("9.srv", "alice", containers, identity_file="/k/id", known_hosts="/k/known_hosts",
                               group_dir=str(tmp_path / "g"))
    assert config.groups and len(config.main.splitlines()) < 250
    (tmp_path / "g").mkdir()
    for name, text in config.groups.items():
        (tmp_path / "g" / name).write_text(text)
    (tmp_path / "main").write_text(config.main)
    for n in (0, 7, 10, 99, 100, 555, 999):
        out = subprocess.run(["ssh", "-G", "-F", str(tmp_path / "main"), containers[n]["alias"]],
                             capture_output=True, text=True, check=True).stdout.splitlines()
        assert f"hostname {containers[n]['address']}" in out and f"port {40000 + n}" in out
        assert "stricthostkeychecking true" in out and "userknownhostsfile /k/known_hosts" in out
        assert "hostkeyalias td-9-srv-n0" in out and "user alice" in out
    other = subprocess.run(["ssh", "-G", "-F", str(tmp_path / "main"), plan.alias_for("9.srv.n1", 0)],
                           capture_output=True, text=True, check=True).stdout.splitlines()
    assert "user alice" not in other and "userknownhostsfile /k/known_hosts" not in other

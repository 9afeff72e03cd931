"""Planning and rendering are pure: sample nodefiles in, expected files out."""
from pathlib import Path

import pytest

from torque_docker import plan, render
from torque_docker.errors import ConfigError, RequestError
from torque_docker.torque import job_tag, parse_nodes_spec, read_nodefile

DATA = Path(__file__).resolve().parent.parent / "data"


def fake_ports(node, slot):
    return [40000 + node * 100 + slot]


@pytest.mark.parametrize("sample", ["two-by-two", "single", "uneven"])
@pytest.mark.parametrize("model", ["node", "process"])
def test_rewritten_nodefile_matches_expected(sample, model):
    hosts = read_nodefile((DATA / "nodefiles" / f"{sample}.txt").read_text())
    nodes = plan.plan_job("42.srv", hosts, model, fake_ports)
    text = render.rewrite_nodefile(hosts, plan.slot_alias(nodes))
    assert text == (DATA / "expected" / f"{sample}.{model}.nodefile").read_text()


def test_plan_counts_and_slots():
    hosts = read_nodefile((DATA / "nodefiles" / "uneven.txt").read_text())
    nodes = plan.plan_job("42.srv", hosts, "node", fake_ports)
    assert [(n.host, len(n.containers), n.containers[0].ncpus) for n in nodes] == [
        ("cn-a.cluster", 1, 3), ("cn-b.cluster", 1, 1), ("cn-c.cluster", 1, 2)]
    assert nodes[2].containers[0].nodefile_slots == (4, 5)
    process = plan.plan_job("42.srv", hosts, "process", fake_ports)
    assert [len(n.containers) for n in process] == [3, 1, 2]
    assert process[0].containers[2].candidates == (40002,)


def test_aliases_never_look_local():
    for alias in plan.slot_alias(plan.plan_job("1.localhost", ["localhost"], "node", fake_ports)).values():
        assert alias != "localhost" and not alias.startswith("localhost")


def test_job_tag_is_dns_safe_and_bounded():
    assert job_tag("123[4].Server.Example.org") == "123-4-server-example-org"
    long = job_tag("9" * 80 + ".server")
    assert len(long) <= 40 and long != job_tag("9" * 79 + "8.server")


def test_empty_nodefile_is_refused():
    with pytest.raises(RequestError):
        plan.plan_job("1.s", [], "node", fake_ports)


def test_bad_nodefile_line_is_refused():
    with pytest.raises(RequestError, match="BEOWULF_JOB_MAP"):
        read_nodefile("n1\n$(reboot)\n")


@pytest.mark.parametrize("spec,index,expected", [
    ("2:ppn=4", 1, 4), ("n1:ppn=4+n2:ppn=2", 1, 2), ("n1:ppn=4+n2:ppn=2", 0, 4), ("3", 2, 1),
    ("2:ppn=3+1:ppn=5", 2, 5),
])
def test_local_slot_count_from_nodes_spec(spec, index, expected):
    assert plan.local_slot_count(index, {"nodes": spec}) == expected


def test_local_slot_count_fallbacks():
    assert plan.local_slot_count(3, {}, num_ppn=6) == 6
    assert plan.local_slot_count(1, {"procs": "8"}, num_nodes=2) == 4
    with pytest.raises(RequestError, match="cannot tell how many slots"):
        plan.local_slot_count(1, {})


def test_parse_nodes_spec():
    assert parse_nodes_spec("n1:ppn=4+2:ppn=2:gpus=1") == [("n1", 1, 4), (None, 2, 2)]


def test_ssh_config_matches_expected_file():
    config = render.ssh_config("42.srv", "alice",
                               [dict(alias="td-42-srv-n0", address="10.0.0.1", port=40001),
                                dict(alias="td-42-srv-n1", address="10.0.0.2", port=40002)],
                               identity_file="/state/jobs/42.srv/ctr/id_ed25519",
                               known_hosts="/state/jobs/42.srv/ctr/known_hosts", group_dir="/g")
    assert config.main == (DATA / "expected" / "two-by-two.ssh_config").read_text()
    assert config.groups == {}


def test_sshd_config_has_what_a_non_root_sshd_needs():
    text = render.render("sshd_config.j2", None, jobid="1.s", user="alice", ctr_dir="/run/torque-docker",
                         token="tdabc", log_level="ERROR")
    for line in ("UsePAM no", "PidFile none", "AllowUsers alice", "PasswordAuthentication no",
                 "AuthorizedKeysFile /run/torque-docker/authorized_keys"):
        assert line in text


def test_missing_template_variable_fails_loudly():
    with pytest.raises(ConfigError, match="'user' is undefined"):
        render.render("sshd_config.j2", None, jobid="1", token="t", ctr_dir="/x", log_level="INFO")


def test_site_template_overrides_the_shipped_one(tmp_path):
    (tmp_path / "known_hosts.j2").write_text("# site\n{{ alias_pattern }} {{ host_key }}\n")
    text = render.render("known_hosts.j2", str(tmp_path), alias_pattern="td-1-n*", host_key="ssh-ed25519 AAA")
    assert text == "# site\ntd-1-n* ssh-ed25519 AAA\n"
    assert render.render("known_hosts.j2", None, alias_pattern="p", host_key="k") == "p k\n"


def test_passwd_and_group_hold_root_and_the_user_only():
    assert render.passwd_text("alice", 1000, 100, "Alice: A\n", "/home/alice", "/bin/bash") == (
        "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:100:Alice A:/home/alice:/bin/bash\n")
    assert render.group_text("alice", [("users", 100), ("lab", 2000)]) == (
        "root:x:0:\nusers:x:100:alice\nlab:x:2000:alice\n")

"""The mother superior plans from what the server assigned (exec_host in pbs_mom's job
file), never from the nodefile: a job's own variables can make pbs_mom write anything
there (BEOWULF_JOB_MAP, and any variable whose name only starts so)."""
from __future__ import annotations

import os
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from torque_docker import torque
from torque_docker.errors import NodeFault
from torque_docker.torque import HookContext


@pytest.mark.parametrize("text,hosts", [
    ("n1/0", ["n1"]),
    ("n1/0-3+n2/0-3", ["n1"] * 4 + ["n2"] * 4),
    ("n1/0,2-3+n2.cluster.org/1", ["n1"] * 3 + ["n2.cluster.org"]),
    ("n1/0+n2/0+n1/1", ["n1", "n2", "n1"]),          # exec_host order is the nodefile's order
])
def test_exec_host_gives_one_host_per_slot(text, hosts):
    assert torque.parse_exec_host(text) == hosts


@pytest.mark.parametrize("text", ["", "n1", "n1/", "n1/x", "n1/3-1", "-oProxyCommand=x/0", "a b/0", "n1/0+"])
def test_a_broken_exec_host_is_a_node_fault(text):
    with pytest.raises(NodeFault, match="cannot read exec_host"):
        torque.parse_exec_host(text)


def job_file(pbs_home: Path, jobid: str, exec_host: str, name: str = "", uid: int = 0, mode: int = 0o644) -> Path:
    jobs = pbs_home / "mom_priv" / "jobs"
    jobs.mkdir(parents=True, exist_ok=True)
    job = ET.Element("job")
    ET.SubElement(job, "jobid").text = jobid
    attributes = ET.SubElement(job, "attributes")
    ET.SubElement(attributes, "Variable_List", flags="1").text = "BEOWULF_JOB_MAP=evil:evil,X=<exec_host>e/0</exec_host>"
    ET.SubElement(attributes, "exec_host", flags="1").text = exec_host
    path = jobs / (name or f"{jobid}.JB")
    path.write_text('<?xml version="1.0"?>\n' + ET.tostring(job, encoding="unicode"))
    os.chown(path, uid, -1)
    os.chmod(path, mode)
    return path


def context(pbs_home: Path, jobid: str = "7.srv", **env) -> HookContext:
    return HookContext(kind="prologue", jobid=jobid, user="u", group="g", jobname="n", resource_list="",
                       node_index=0, pbs_home=pbs_home, workdir="", nodefile=pbs_home / "aux" / jobid,
                       environ={"PBS_MSHOST": "n1", "PBS_NP": "3", **env})


pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="pbs_mom's job files are root's")


def test_the_plan_comes_from_exec_host_whatever_the_nodefile_says(tmp_path):
    job_file(tmp_path, "7.srv", "n1/0-1+n2/0")
    (tmp_path / "aux").mkdir()
    (tmp_path / "aux" / "7.srv").write_text("evil\nevil\nevil\n")
    assert torque.assigned_hosts(context(tmp_path)) == ["n1", "n1", "n2"]


def test_the_job_file_is_found_by_its_content_also_with_a_mom_port_in_its_name(tmp_path):
    job_file(tmp_path, "7.srv", "n9/0-2", name="7.srv15002.JB")
    job_file(tmp_path, "17.srv", "n1/0", name="17.srv.JB")          # another job's file is not taken
    assert torque.job_file_exec_host(tmp_path, "7.srv") == "n9/0-2"
    assert torque.job_file_exec_host(tmp_path, "1.srv") is None


@pytest.mark.parametrize("uid,mode", [(2001, 0o644), (0, 0o666)])
def test_a_job_file_others_could_write_is_not_believed(tmp_path, uid, mode):
    job_file(tmp_path, "7.srv", "n1/0-1+n2/0", uid=uid, mode=mode)
    assert torque.job_file_exec_host(tmp_path, "7.srv") is None
    with pytest.raises(NodeFault, match="no exec_host for job 7.srv"):
        torque.assigned_hosts(context(tmp_path))


def test_a_symlinked_job_file_is_not_followed(tmp_path):
    real = job_file(tmp_path, "7.srv", "n1/0-1+n2/0", name="real.xml")     # not a *.JB itself
    (real.parent / "7.srv.JB").symlink_to(real)
    assert torque.job_file_exec_host(tmp_path, "7.srv") is None


@pytest.mark.parametrize("env,words", [({"PBS_NP": "4"}, "holds 3 slots, PBS_NP says 4"),
                                       ({"PBS_MSHOST": "n2"}, "does not start with this node (n2)")])
def test_exec_host_must_agree_with_what_pbs_mom_told_the_prologue(tmp_path, env, words):
    job_file(tmp_path, "7.srv", "n1/0-1+n2/0")
    with pytest.raises(NodeFault, match=words.replace("(", r"\(").replace(")", r"\)")):
        torque.assigned_hosts(context(tmp_path, **env))


def test_a_job_file_that_is_not_xml_is_passed_over(tmp_path):
    path = job_file(tmp_path, "7.srv", "n1/0")
    path.write_bytes(b"\x00binary job struct of an older pbs_mom")
    assert torque.job_file_exec_host(tmp_path, "7.srv") is None


def test_a_job_file_caught_mid_rewrite_is_still_found(tmp_path):
    """pbs_mom rewrites the .JB through a .JC (unlink, link): a moment with only the .JC."""
    job_file(tmp_path, "7.srv", "n1/0-1+n2/0", name="7.srv.JC")
    assert torque.job_file_exec_host(tmp_path, "7.srv") == "n1/0-1+n2/0"


def test_a_job_file_the_job_marked_up_is_the_users_error(tmp_path):
    """libxml2 writes a job's '&NAME;' back verbatim: a user could add an exec_host of their
    own to their job file. Such a file is not believed, and the user is told why."""
    from torque_docker.errors import RequestError
    path = job_file(tmp_path, "7.srv", "n1/0-1+n2/0")
    text = path.read_text().replace("BEOWULF_JOB_MAP=evil:evil", "X=&</Variable_List><exec_host>n1/0-2</exec_host>"
                                                                  "<Variable_List>;")
    path.write_text(text)
    with pytest.raises(RequestError, match="'&NAME;'") as info:
        torque.assigned_hosts(context(tmp_path))
    assert info.value.user_error and "remove the '&...;'" in info.value.fix

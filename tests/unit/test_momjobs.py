"""Reading pbs_mom's job files: which jobs it holds, whatever the files are called.

tests/data/jobfiles/52-1.vm.JB is laid out as Torque 6.1 writes a running array subjob
(src/server/job_recov.c saveJobToXML: the fixed fields, the union fields, <attributes>,
the mom fields).
"""
from __future__ import annotations

import os
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from torque_docker.momjobs import (BadJobFile, JobFile, JobFilesUnreadable, UserMarkup, exec_host_of, held_jobs,
                                   parse_job_file)

SAMPLE = (Path(__file__).resolve().parents[1] / "data" / "jobfiles" / "52-1.vm.JB").read_bytes()


def job_xml(jobid: str, prefix: str, variables: str = "PBS_O_HOME=/home/alice") -> bytes:
    """A job file with the given id and prefix, the rest as in the sample."""
    text = SAMPLE.decode()
    text = text.replace("<jobid>52[1].vm</jobid>", f"<jobid>{jobid}</jobid>")
    text = text.replace("<fileprefix>52-1.vm</fileprefix>", f"<fileprefix>{prefix}</fileprefix>")
    start = text.index("<Variable_List")
    end = text.index("</Variable_List>")
    return (text[:start] + f'<Variable_List flags="1">{variables}' + text[end:]).encode()


@pytest.fixture
def pbs_home(tmp_path):
    (tmp_path / "mom_priv" / "jobs").mkdir(parents=True)
    return tmp_path


def put(pbs_home: Path, name: str, data: bytes) -> Path:
    path = pbs_home / "mom_priv" / "jobs" / name
    path.write_bytes(data)
    return path


# ------------------------------------------------------------------------- one file
def test_the_sample_names_its_job_and_prefix():
    assert parse_job_file(SAMPLE) == JobFile("52[1].vm", "52-1.vm")


def test_user_text_that_xml_forbids_does_not_blind_the_reader():
    """The job's environment may hold an escape character (here in PROMPT): a strict XML
    parser refuses the whole file, the reader must not."""
    with pytest.raises(ET.ParseError):
        ET.fromstring(SAMPLE)
    assert parse_job_file(job_xml("7.vm", "7.vm", "A=&#x1;&#27;b,C=x&y")).jobid == "7.vm"


#: What libxml2 2.9 writes for Variable_List values holding ``&...;`` (saveJobToXML passes
#: them to xmlNewChild, which keeps an entity reference's name verbatim, markup and all):
#: measured by calling xmlNewChild and xmlSaveFormatFileEnc as job_recov.c does.
RAW_MARKUP = [
    "X=&</Variable_List>;",                                                     # unbalanced
    "X=&</Variable_List></attributes><jobid>1.vm</jobid><attributes><Variable_List>;",   # a second id
    "X=&<job>;",
]


@pytest.mark.parametrize("variables", RAW_MARKUP)
def test_markup_in_a_users_environment_neither_blinds_nor_adds_a_job(variables, pbs_home):
    """Any user can put these into their job's environment (qsub -v or -V); the sweep of the
    whole node must still read every job file, and only the job's own id."""
    data = job_xml("52[1].vm", "52-1.vm", variables)
    assert variables.encode() in data
    assert parse_job_file(data) == JobFile("52[1].vm", "52-1.vm")
    put(pbs_home, "52-1.vm.JB", data)
    put(pbs_home, "9.vm.JB", job_xml("9.vm", "9.vm"))
    assert held_jobs(pbs_home, tries=1) == {"52[1].vm", "9.vm"}
    end = data.rindex(b"</job>")
    for cut in (end, end - 20, data.index(b"</Variable_List>") + 3):
        with pytest.raises(BadJobFile):
            parse_job_file(data[:cut])


def test_every_cut_of_a_file_is_unreadable_never_a_job():
    """pbs_mom writes the new version into a .JC while the sweep may read it: any cut short
    of the closing </job> must be refused."""
    end = SAMPLE.rindex(b"</job>") + len(b"</job>")
    for cut in range(end):
        with pytest.raises(BadJobFile):
            parse_job_file(SAMPLE[:cut])
    assert parse_job_file(SAMPLE[:end]).jobid == "52[1].vm"


@pytest.mark.parametrize("data", [
    b"",
    b"\x00\x02\x03\x02" + b"52[1].vm\x00" * 4 + b"\x00" * 200,          # a binary (pre-6.0) job file
    b"jobid=52[1].vm\n",
    b"<?xml version=\"1.0\"?>\n<array><jobid>52[1].vm</jobid></array>\n",
    b"<job><jobid>1.vm</jobid></job><job><jobid>2.vm</jobid></job>",
    b"<job><attributes><jobid>52[1].vm</jobid></attributes></job>",       # not the job's own field
    b"<job><jobid>1.vm</jobid><jobid>2.vm</jobid></job>",
    b"<job><jobid>1.vm 2.vm</jobid></job>",
    b"<job><jobid></jobid></job>",
    b"<job><jobid><x/>1.vm</jobid></job>",
    b"<job><!-- c --><jobid>1.vm</jobid></job>",
    b"<job><jobid>1.vm</jobid></attributes></job>",
    b"<job><jobid>1.vm</jobid></job>trailing",
    b"<job><jobid>1.vm&x</jobid></job>",
], ids=lambda d: repr(d[:30]))
def test_garbage_is_unreadable(data):
    with pytest.raises(BadJobFile):
        parse_job_file(data)


def test_a_minimal_file_and_entities_in_the_id():
    assert parse_job_file(b"<job>\n<jobid>12[3].a&#46;b</jobid>\n</job>\n") == JobFile("12[3].a.b", "")


# ------------------------------------------------------------------------- the directory
def test_ids_come_from_inside_the_files_whatever_their_names(pbs_home):
    """Array subjobs, a cut prefix, a prefix the server renamed, a multi-mom port."""
    long_id = "1234." + "head" * 16 + ".example.org"                      # 80 characters
    assert len(long_id) > 61
    files = {
        "52-1.vm.JB": ("52[1].vm", "52-1.vm"),
        "52-2.vm15003.JB": ("52[2].vm", "52-2.vm"),                       # pbs_mom -m, port 15003
        long_id[:61] + ".JB": (long_id, long_id[:61]),
        "77.vn.JB": ("77.vm", "77.vn"),                                   # renamed: 77.vm existed
    }
    for name, (jobid, prefix) in files.items():
        put(pbs_home, name, job_xml(jobid, prefix))
    put(pbs_home, "52-1.vm.SC", b"#!/bin/sh\n")
    put(pbs_home, "52-2.vm15003.TK", b"\x00" * 64)
    assert held_jobs(pbs_home) == {"52[1].vm", "52[2].vm", long_id, "77.vm"}


def test_a_complete_copy_without_its_job_file_is_a_held_job(pbs_home):
    """job_save unlinks the .JB before it links the new .JC in its place."""
    put(pbs_home, "52-1.vm.JC", SAMPLE)
    assert held_jobs(pbs_home) == {"52[1].vm"}


def test_a_half_written_copy_beside_its_job_file_is_normal(pbs_home):
    put(pbs_home, "52-1.vm.JB", SAMPLE)
    put(pbs_home, "52-1.vm.JC", SAMPLE[:700])
    assert held_jobs(pbs_home) == {"52[1].vm"}


@pytest.mark.parametrize("name", ["52-1.vm.JB", "52-1.vm.JC"])
def test_a_half_written_file_alone_means_cannot_read(pbs_home, name):
    put(pbs_home, "9.vm.JB", job_xml("9.vm", "9.vm"))
    put(pbs_home, name, SAMPLE[:700])
    with pytest.raises(JobFilesUnreadable, match=name.replace(".", r"\.")) as caught:
        held_jobs(pbs_home, tries=2, pause=0)
    assert "keeps every job" in caught.value.fix


def test_a_missing_job_directory_means_cannot_read(tmp_path):
    """A wrong --pbs-home must not make every job look unknown."""
    with pytest.raises(JobFilesUnreadable, match="cannot list") as caught:
        held_jobs(tmp_path / "nowhere")
    assert "--pbs-home" in caught.value.fix


def test_a_fifo_is_unreadable_and_does_not_hang(pbs_home):
    os.mkfifo(pbs_home / "mom_priv" / "jobs" / "5.vm.JB")
    with pytest.raises(JobFilesUnreadable, match="not a regular file"):
        held_jobs(pbs_home, tries=1)


def test_a_file_rewritten_without_pause_is_never_missed(pbs_home):
    """pbs_mom's job_save, as fast as Python can: write the .JC in pieces, unlink the .JB,
    link, unlink the .JC. Every answer either holds the job or is 'cannot read'."""
    jobs = pbs_home / "mom_priv" / "jobs"
    put(pbs_home, "52-1.vm.JB", SAMPLE)
    stop = threading.Event()

    def job_save():
        while not stop.is_set():
            with open(jobs / "52-1.vm.JC", "wb") as handle:
                for start in range(0, len(SAMPLE), 512):
                    handle.write(SAMPLE[start:start + 512])
                    handle.flush()
            os.unlink(jobs / "52-1.vm.JB")
            os.link(jobs / "52-1.vm.JC", jobs / "52-1.vm.JB")
            os.unlink(jobs / "52-1.vm.JC")

    writer = threading.Thread(target=job_save)
    writer.start()
    answers = []
    try:
        for _ in range(300):
            try:
                answers.append(held_jobs(pbs_home, tries=6, pause=0.001))
            except JobFilesUnreadable:
                answers.append(None)
    finally:
        stop.set()
        writer.join()
    held = [a for a in answers if a is not None]
    assert held, "no read succeeded: the test proved nothing"
    assert all(a == {"52[1].vm"} for a in held)


# ------------------------------------------------------------------------- exec_host
def test_exec_host_of_the_sample():
    assert exec_host_of(SAMPLE) == "vm/0"            # escaped text and character references are fine


#: A user's tries to steer the plan: markup in a value (libxml2 writes '&...;' verbatim).
STEER = [
    "X=&</Variable_List><exec_host>evil/0-99</exec_host><Variable_List>;",             # a second one
    "X=&</Variable_List></attributes><attributes><exec_host>evil/0</exec_host><Variable_List>;",
    "X=&</Variable_List><wrap>;",                                                       # unbalanced
    "X=&nbsp;",                                                                          # any foreign entity
]


@pytest.mark.parametrize("variables", STEER)
def test_attributes_a_user_may_have_marked_up_are_not_believed(variables):
    data = job_xml("52[1].vm", "52-1.vm", variables)
    assert parse_job_file(data).jobid == "52[1].vm"      # the sweep still reads the id
    with pytest.raises(UserMarkup):
        exec_host_of(data)


def test_escaped_text_that_looks_like_markup_is_only_text():
    data = job_xml("7.vm", "7.vm", "X=&lt;/Variable_List&gt;&lt;exec_host&gt;evil/0&lt;/exec_host&gt;,Y=a&amp;b")
    assert exec_host_of(data) == "vm/0"


@pytest.mark.parametrize("data,words", [
    (b"<job><jobid>7.s</jobid><attributes></attributes></job>", "0 <exec_host>"),
    (b"<job><jobid>7.s</jobid><exec_host>evil/0</exec_host><attributes></attributes></job>", "0 <exec_host>"),
    (b"<job><jobid>7.s</jobid><attributes><exec_host>a/0</exec_host><exec_host>b/0</exec_host></attributes></job>",
     "2 <exec_host>"),
    (b"<job><jobid>7.s</jobid><attributes><x><exec_host>a/0</exec_host></x></attributes></job>", "0 <exec_host>"),
])
def test_exactly_one_exec_host_directly_in_the_attributes(data, words):
    with pytest.raises(BadJobFile, match=words):
        exec_host_of(data)

"""The records a job leaves on a node (records.py): one way to and from JSON each, and a
reading that never crashes on what another version or a torn write left."""
import json

import pytest

from torque_docker.records import JobRecord, StartedContainer, StarterInfo
from torque_docker.state import NodeState


def test_a_job_record_comes_back_as_written(tmp_path):
    state = NodeState(str(tmp_path / "state"))
    state.ensure()
    state.job_dir("7.srv").mkdir()
    record = JobRecord(jobid="7.srv", user="u", host="n0", node_index=1, ms=False, image="lab/x:1",
                       containers=(StartedContainer("c1", "td-7", "td-7-srv-n1", 41001, 0, "10.0.0.2"),),
                       started=12.5, aliases=("td-7-srv-n0", "td-7-srv-n1"))
    state.save_job(record)
    assert state.load_job("7.srv") == record
    assert state.job_ids() == ["7.srv"]
    on_disk = json.loads((state.job_dir("7.srv") / "job.json").read_text())
    assert on_disk["containers"] == [{"id": "c1", "name": "td-7", "alias": "td-7-srv-n1", "port": 41001,
                                      "slot": 0, "address": "10.0.0.2"}]


def test_a_missing_or_torn_job_record_is_an_empty_one(tmp_path):
    state = NodeState(str(tmp_path / "state"))
    state.ensure()
    assert state.load_job("8.srv") == JobRecord("8.srv")
    state.job_dir("8.srv").mkdir()
    (state.job_dir("8.srv") / "job.json").write_text('{"jobid": "8.srv", "contai')
    assert state.load_job("8.srv") == JobRecord("8.srv")


@pytest.mark.parametrize("text,expected", [
    # an older version's record: only some keys
    ('{"jobid": "9.s", "containers": [{"id": "a"}], "started": 3}',
     JobRecord("9.s", containers=(StartedContainer(id="a"),), started=3.0)),
    # wrong types take the defaults, never a crash in the teardown
    ('{"jobid": 5, "containers": "x", "ms": "yes", "started": "soon", "aliases": [1, "a"]}',
     JobRecord("given", aliases=("a",))),
    ('[1, 2]', JobRecord("given")),
])
def test_reading_a_job_record_is_forgiving(text, expected):
    assert JobRecord.from_json(text, "given") == expected


def test_the_starter_record_round_trips_and_keeps_its_keys():
    info = StarterInfo(jobid="1.s", run="container", alias="td-1-s-n0", ctr_dir="/x", env_deny=("PATH",),
                       local_aliases=("td-1-s-n0",), cma=True)
    text = info.to_json()
    assert StarterInfo.from_json(text) == info
    assert '"run": "container"' in text and json.loads(text)["env_deny"] == ["PATH"]
    assert StarterInfo.from_json('{"cma": "yes", "env_pass": "*"}') == StarterInfo()
    assert StarterInfo.refused("no").refusal == "no"
    with pytest.raises(ValueError):
        StarterInfo.from_json("not json")

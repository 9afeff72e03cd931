"""CPU and memory limits of a job's containers (resources.py): Torque's sizes, the memory
limit per model and slot count, cpu lists, the node allocator, and the job's cpuset read
from a fake cgroup tree."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from torque_docker import resources
from torque_docker.errors import RequestError

GB = 1024 ** 3
MB = 1024 ** 2


# ----------------------------------------------------------------------------- sizes
@pytest.mark.parametrize("text,expected", [
    ("2048", 2048), ("100b", 100), ("100kb", 100 * 1024), ("512mb", 512 * MB), ("4gb", 4 * GB),
    ("1tb", 1024 * GB), ("4GB", 4 * GB), (" 4gb ", 4 * GB),
    ("1w", 8), ("2kw", 2 * 8 * 1024), ("1mw", 8 * MB), ("1gw", 8 * GB),     # Torque's words: 8 bytes
])
def test_parse_size_reads_torque_units(text, expected):
    assert resources.parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "gb", "4 g", "4.5gb", "-1gb", "4xb", "4gb4", "lots"])
def test_parse_size_refuses_what_torque_would_not_write(text):
    with pytest.raises(RequestError) as err:
        resources.parse_size(text)
    assert err.value.user_error and "4gb" in err.value.fix


# ----------------------------------------------------------------------------- memory limits
def test_no_memory_request_means_no_limit():
    assert resources.memory_limit({}, "node", 4, 2) is None
    assert resources.memory_limit({"walltime": "01:00:00", "mem": "", "pmem": ""}, "process", 4, 2) is None


@pytest.mark.parametrize("model,slots,expected", [
    ("process", 4, 2 * GB),      # one container per slot: pmem each
    ("node", 4, 8 * GB),         # one container holds the node's 4 slots
    ("node", 1, 2 * GB),
    ("node", 0, 2 * GB),         # slot count unknown on a sister: at least one slot
])
def test_pmem_is_per_slot(model, slots, expected):
    assert resources.memory_limit({"pmem": "2gb"}, model, slots, 3) == expected


@pytest.mark.parametrize("model,slots,nodes,expected", [
    ("node", 4, 2, 4 * GB),      # mem is per job: spread over its nodes
    ("node", 4, 1, 8 * GB),
    ("process", 4, 2, 1 * GB),   # and over the slots of a node
    ("process", 2, 4, 1 * GB),
    ("node", 4, 0, 8 * GB),      # number of nodes unknown: treat as one
])
def test_mem_is_per_job(model, slots, nodes, expected):
    assert resources.memory_limit({"mem": "8gb"}, model, slots, nodes) == expected


def test_pmem_wins_over_mem():
    assert resources.memory_limit({"mem": "100gb", "pmem": "1gb"}, "process", 2, 1) == 1 * GB


def test_a_bad_memory_request_is_the_users_error():
    with pytest.raises(RequestError):
        resources.memory_limit({"mem": "eight gigs"}, "node", 1, 1)


# ----------------------------------------------------------------------------- cpu lists
@pytest.mark.parametrize("text,expected", [
    ("0", [0]), ("0-3", [0, 1, 2, 3]), ("0-3,8,10-11\n", [0, 1, 2, 3, 8, 10, 11]), ("", []), ("\n", []),
    ("5,", [5]),
])
def test_parse_cpu_list(text, expected):
    assert resources.parse_cpu_list(text) == expected


def test_format_cpu_list_is_sorted_and_reads_back():
    assert resources.format_cpu_list([3, 1, 2]) == "1,2,3"
    assert resources.parse_cpu_list(resources.format_cpu_list([7, 0, 4])) == [0, 4, 7]


def test_node_cpus_are_the_ones_this_process_may_use():
    assert resources.node_cpus() == sorted(os.sched_getaffinity(0))


# ----------------------------------------------------------------------------- the allocator
def test_choose_cores_takes_free_cores_first():
    holders = {0: ["1.srv"], 1: [], 2: ["2.srv"]}
    assert resources.choose_cores([0, 1, 2, 3], holders, 2) == [1, 3]


def test_choose_cores_when_oversubscribed_adds_the_least_used():
    holders = {0: ["1.srv", "2.srv"], 1: ["3.srv"], 2: [], 3: ["4.srv"]}
    # one free core (2), then the least used busy ones in order: 1 and 3 (one holder each), then 0
    assert resources.choose_cores([0, 1, 2, 3], holders, 4) == [2, 1, 3, 0]


def test_choose_cores_wraps_around_when_more_slots_than_cores():
    assert resources.choose_cores([0, 1], {}, 5) == [0, 1, 0, 1, 0]
    assert resources.choose_cores([0, 1], {0: ["x"], 1: ["y"]}, 3) == [0, 1, 0]


# ----------------------------------------------------------------------------- Torque's cpuset
def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_torque_cpuset_reads_the_jobs_cgroup(tmp_path):
    root = tmp_path / "cpuset" / "torque"
    write(root / "12.srv" / "cpuset.cpus", "2-3,6\n")
    write(root / "13.srv" / "cpuset.cpus", "0\n")
    assert resources.torque_cpuset("12.srv", [str(root)]) == [2, 3, 6]


def test_torque_cpuset_none_without_torque_cgroups(tmp_path):
    assert resources.torque_cpuset("12.srv", [str(tmp_path / "nothing"), str(tmp_path / "either")]) is None


def test_torque_cpuset_falls_back_to_the_effective_list_and_the_next_root(tmp_path):
    v1, v2 = tmp_path / "cpuset" / "torque", tmp_path / "torque"
    write(v1 / "12.srv" / "cpuset.cpus", "")               # empty: not filled in
    write(v1 / "12.srv" / "cpuset.cpus.effective", "4-5")
    assert resources.torque_cpuset("12.srv", [str(v1), str(v2)]) == [4, 5]
    write(v2 / "14.srv" / "cpuset.cpus", "1")
    assert resources.torque_cpuset("14.srv", [str(v1), str(v2)]) == [1]


def test_torque_cpuset_skips_an_unreadable_list(tmp_path):
    root = tmp_path / "torque"
    write(root / "12.srv" / "cpuset.cpus", "garbage")
    write(root / "12.srv" / "cpuset.cpus.effective", "7")
    assert resources.torque_cpuset("12.srv", [str(root)]) == [7]


@pytest.mark.parametrize("asked,model,slots,nodes", [
    ({"pmem": "1kb"}, "node", 1, 1),
    ({"pmem": "5mb"}, "process", 4, 1),
    ({"mem": "20mb"}, "process", 4, 2),          # 2.5 MB per container
    ({"pmem": "0"}, "node", 1, 1),
])
def test_memory_below_what_docker_accepts_is_the_requests_mistake(asked, model, slots, nodes):
    """Docker refuses limits under 6 MB; found at container start on a sister, that took the
    node down. The request is refused on every node before anything starts."""
    with pytest.raises(RequestError, match="Docker needs at least 6 MiB") as info:
        resources.memory_limit(asked, model, slots, nodes)
    assert info.value.user_error and "pmem=6mb" in info.value.fix


def test_docker_s_floor_itself_is_accepted():
    assert resources.memory_limit({"pmem": "6mb"}, "process", 1, 1) == 6 * MB
    assert resources.memory_limit({"mem": "12mb"}, "process", 2, 1) == 6 * MB

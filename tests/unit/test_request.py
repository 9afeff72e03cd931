import pytest

from torque_docker.errors import NotOurs, RequestError
from torque_docker.request import (Mount, is_container_job, parse_other, parse_resource_list,
                                   request_from_resource_list)


def test_resource_list_keeps_equals_inside_values():
    rl = "nodes=2:ppn=4,walltime=01:00:00,neednodes=2:ppn=4,other=image=lab/x:11;model=process"
    assert parse_resource_list(rl)["other"] == "image=lab/x:11;model=process"
    assert parse_resource_list(rl)["nodes"] == "2:ppn=4"


def test_the_real_torque_example_from_torque_facts():
    other = ("image=registry.example.org:5000/lab/x:11@sha256:" + "a" * 64 +
             ";model=process;mount=/scratch:/data:ro")
    req = parse_other(other)
    assert req.image == "registry.example.org:5000/lab/x:11@sha256:" + "a" * 64
    assert req.model == "process"
    assert req.mounts == (Mount("/scratch", "/data", True),)


@pytest.mark.parametrize("rl", ["nodes=1", "nodes=1,other=foo", "other=imagex=1", ""])
def test_jobs_without_image_are_not_ours(rl):
    assert not is_container_job(rl)
    with pytest.raises(NotOurs):
        request_from_resource_list(rl)


def test_defaults_are_left_to_the_site():
    req = parse_other("image=debian:12")
    assert (req.model, req.run, req.mounts) == (None, None, ())


def test_repeated_mounts_and_empty_pairs():
    req = parse_other("image=debian;;mount=/a;mount=/b:/c:rw;")
    assert req.mounts == (Mount("/a", "/a", False), Mount("/b", "/c", False))


@pytest.mark.parametrize("other,needle", [
    ("image=debian;color=red", "unknown key 'color'"),
    ("image=debian;model=vm", "model=vm is not known"),
    ("image=debian;run=gpu", "run=gpu is not known"),
    ("image=debian;image=ubuntu", "given twice"),
    ("image=", "has no value"),
    ("image=Debian Bad", "not a valid image name"),
    ("image=debian;mount=relative/path", "not an absolute path"),
    ("image=debian;mount=/a/../etc", "'..'"),
    ("image=debian;mount=/a:/b:/c", "not SRC[:DST][:ro]"),
    ("image=file:relative.tar", "absolute path"),
])
def test_malformed_requests_name_the_problem_and_the_form(other, needle):
    with pytest.raises(RequestError) as info:
        parse_other(other)
    assert needle in str(info.value)
    assert info.value.user_error


def test_unknown_key_message_lists_valid_keys():
    with pytest.raises(RequestError) as info:
        parse_other("image=debian;modle=node")
    assert "image, model, run, mount" in str(info.value)


"""Every config key: a valid value (parsed to what the code uses), an invalid one (an error
naming the file, line, key and fix, raised when the file is read: a hook never runs with a
value it cannot use, and never blames a job's user for it), and an unknown key in every
section."""
from __future__ import annotations

from typing import Any, Dict, NamedTuple, Tuple

import pytest

from torque_docker import config
from torque_docker.check import config_problems
from torque_docker.errors import ConfigError


class Case(NamedTuple):
    valid: str                 # value as written in the file
    parsed: Any                # what the Config attribute holds then
    invalid: str               # a value that must be refused
    reason: str                # words of the refusal
    where: str = "parse"       # parse: the parser refuses it; resolve: listen_address()


CASES: Dict[Tuple[str, str], Case] = {
    ("docker", "endpoint"): Case("tcp://10.0.0.5:2376", "tcp://10.0.0.5:2376", "localhost:2375",
                                 "is not a Docker address", "check"),
    ("docker", "api_timeout"): Case("12.5", 12.5, "0", "between 0 and 3600"),
    ("docker", "seccomp_profile"): Case("/etc/td//seccomp-cma.json", "/etc/td/seccomp-cma.json", "seccomp-cma.json",
                                        "absolute path"),
    ("network", "node_name"): Case("n042", "n042", "no-such-node.invalid", "cannot resolve node name", "resolve"),
    ("network", "listen_address"): Case("10.1.2.3", "10.1.2.3", "node01", "does not appear to be an IPv4 or IPv6"),
    ("network", "port_range"): Case("50000-50015", (50000, 50015), "50000-50014", "at least 16 ports"),
    ("network", "port_candidates"): Case("8", 8, "65", "between 1 and 64"),
    ("ssh", "sshd_path"): Case("/opt/ssh/sbin//sshd", "/opt/ssh/sbin/sshd", "sshd", "absolute path"),
    ("ssh", "include_dir"): Case("/run/td/ssh/", "/run/td/ssh", "run/td/ssh", "absolute path"),
    ("ssh", "dropin"): Case("/etc/ssh/ssh_config.d/50-td.conf", "/etc/ssh/ssh_config.d/50-td.conf",
                            "50-td.conf", "absolute path"),
    ("ssh", "ready_timeout"): Case("90", 90.0, "-5", "between 0 and 3600"),
    ("paths", "state_dir"): Case("/srv/td/state", "/srv/td/state", "./state", "absolute path"),
    ("paths", "secret_file"): Case("/etc/td/secret", "/etc/td/secret", "secret", "absolute path"),
    ("paths", "template_dir"): Case("/etc/td/templates", "/etc/td/templates", "templates", "absolute path"),
    ("jobs", "default_model"): Case("process", "process", "vm", "must be one of: node, process"),
    ("jobs", "default_run"): Case("host", "host", "vm", "must be one of: container, host"),
    ("jobs", "shm_size"): Case("512m", "512m", "lots", "is not a size like 1g"),
    ("jobs", "max_attempts"): Case("5", 5, "0", "between 1 and 100"),
    ("jobs", "process_ipc"): Case("private", "private", "none", "must be one of: shared, private"),
    ("jobs", "sweep_grace"): Case("30", 30.0, "-1", "seconds between 0 and 3600"),
    ("jobs", "pids_limit"): Case("4096", 4096, "-1", "between 0 and 4194304"),
    ("jobs", "tmp_size"): Case("256M", "256m", "100k", "at least 1m"),
    ("jobs", "read_only_root"): Case("yes", True, "sometimes", "must be yes or no"),
    ("jobs", "files_size"): Case("4m", "4m", "lots", "a size like 64m or 1g"),
    ("devices", "paths"): Case("/dev/infiniband /srv/fake/kfd:/dev/kfd",
                               (("/dev/infiniband", "/dev/infiniband"), ("/srv/fake/kfd", "/dev/kfd")),
                               "/dev/kfd:/opt/kfd", "the container path must lie under /dev"),
    ("gpus", "method"): Case("devices", "devices", "cuda", "must be one of: none, devices, nvidia-runtime"),
    ("gpus", "devices"): Case("/srv/fake/gpu%d:/dev/nvidia%d", (("/srv/fake/gpu%d", "/dev/nvidia%d"),),
                              "/dev/nvidia%d%d", "%d must appear once on each side"),
    ("gpus", "shared_devices"): Case("/dev/nvidiactl", (("/dev/nvidiactl", "/dev/nvidiactl"),),
                                     "/dev/nvidiactl:/opt/ctl", "the container path must lie under /dev"),
    ("gpus", "driver_files"): Case("/usr/lib/libcuda.so.1 /opt/nv/bin:/usr/local/nvidia/bin",
                                   (("/usr/lib/libcuda.so.1", "/usr/lib/libcuda.so.1"),
                                    ("/opt/nv/bin", "/usr/local/nvidia/bin")),
                                   "/usr/lib/libcuda.so.1:/proc/x", "may not lie under /proc"),
    ("gpus", "sister"): Case("cgroup", "cgroup", "guess", "must be one of: refuse, whole-node, cgroup"),
    ("limits", "ulimits"): Case("nofile=1024:4096 core=0 memlock=unlimited",
                                (("nofile", 1024, 4096), ("core", 0, 0), ("memlock", -1, -1)),
                                "nofile=4096:1024", "the soft limit is above the hard one"),
    ("limits", "user_max"): Case("nofile=65536 stack=unlimited", (("nofile", 65536, 65536), ("stack", -1, -1)),
                                 "nofile=1 nofile=2", "nofile is given twice"),
    ("images", "allowed"): Case("lab/*, docker.io/library/debian:*", ("lab/*", "docker.io/library/debian:*"),
                                "lab/* 'debian'", "can never match an image reference"),
    ("images", "aliases"): Case("\n    foam = lab/openfoam:11\n    py=lab/python:3", {"foam": "lab/openfoam:11", "py": "lab/python:3"},
                                "\n    foam lab/openfoam:11", "must look like 'name = registry/image:tag'"),
    ("images", "pull"): Case("never", "never", "sometimes", "must be one of: missing, never, always"),
    ("images", "pin"): Case("required", "required", "yes", "must be one of: off, submit, required"),
    ("images", "pull_timeout"): Case("600", 600.0, "7200", "between 0 and 3600"),
    ("images", "tarball_dirs"): Case("/srv/images /data/img", ("/srv/images", "/data/img"), "/srv/images images",
                                     "absolute path"),
    ("mounts", "default"): Case("/scratch:/scratch:ro", ("/scratch:/scratch:ro",), "scratch:/scratch",
                                "is not an absolute path"),
    ("mounts", "allowed"): Case("/scratch, /data", ("/scratch", "/data"), "scratch", "absolute path"),
    ("env", "deny"): Case("LD_* SECRET_TOKEN", ("LD_*", "SECRET_TOKEN"), "LD_PRELOAD=x", "can never match a variable name"),
    ("env", "pass"): Case("OMP_* PBS_*", ("OMP_*", "PBS_*"), "OMP_$X", "can never match a variable name"),
    ("cgroups", "parent"): Case("torque", "torque", "my slice", "contains white space"),
    ("log", "destination"): Case("file:/var/log/td.log", "file:/var/log/td.log", "stdout", "syslog, none or file:"),
    ("log", "verbose"): Case("off", False, "maybe", "must be yes or no"),
    ("check", "image"): Case("lab/sshd-test:1", "lab/sshd-test:1", "evil/x:1", "evil/x:1 is not in [images] allowed"),
}
# Keys whose invalid case needs other settings to be judged.
CONTEXT = {("check", "image"): "[images]\nallowed = lab/*\n"}


def test_every_option_has_a_case():
    assert {(o.section, o.key) for o in config.OPTIONS} == set(CASES)


def options():
    return [pytest.param(o, CASES[(o.section, o.key)], id=f"{o.section}.{o.key}") for o in config.OPTIONS]


def text_for(option, value: str) -> str:
    return f"# site config\n[{option.section}]\n{option.key} = {value}\n" + CONTEXT.get((option.section, option.key), "")


@pytest.mark.parametrize("option,case", options())
def test_valid_value(option, case):
    cfg = config.parse_text(text_for(option, case.valid), "/etc/td.conf")
    assert getattr(cfg, f"{option.section}_{option.key}") == case.parsed
    assert cfg.origin[f"{option.section}_{option.key}"] == "/etc/td.conf:3"
    assert config_problems(cfg) == []


@pytest.mark.parametrize("option,case", options())
def test_invalid_value(option, case):
    text = text_for(option, case.invalid)
    if case.where == "parse":
        with pytest.raises(ConfigError) as info:
            config.parse_text(text, "/etc/td.conf")
        message = str(info.value)
        assert message.startswith(f"/etc/td.conf:3: [{option.section}] {option.key} = "), message
        assert case.reason in message
        assert f"(default: {option.default or 'empty'})" in message     # the fix names the default
    else:
        with pytest.raises(ConfigError) as info:
            config.parse_text(text).listen_address()
        assert case.reason in str(info.value) and case.invalid in str(info.value)


@pytest.mark.parametrize("option,case", options())
def test_the_default_is_valid_and_documented(option, case):
    parsed = option.parse(option.default)
    assert config.defaults().values[f"{option.section}_{option.key}"] == parsed
    assert f"# {option.help}\n#{option.key} = {option.default}\n" in config.render_defaults()


@pytest.mark.parametrize("section", sorted({o.section for o in config.OPTIONS}))
def test_unknown_key_in_every_section(section):
    with pytest.raises(ConfigError) as info:
        config.parse_text(f"\n[{section}]\nbogus_key = 1\n", "/etc/td.conf")
    message = str(info.value)
    assert message.startswith(f"/etc/td.conf:3: unknown key 'bogus_key' in [{section}]")
    valid = [o.key for o in config.OPTIONS if o.section == section]
    assert message.endswith("valid keys there: " + ", ".join(valid))


def test_a_key_in_the_wrong_section_is_unknown_there():
    with pytest.raises(ConfigError, match=r"x.conf:2: unknown key 'port_range' in \[ssh\]"):
        config.parse_text("[ssh]\nport_range = 40000-40999\n", "x.conf")


def test_keys_are_case_sensitive():
    with pytest.raises(ConfigError, match="unknown key 'Port_Range'"):
        config.parse_text("[network]\nPort_Range = 40000-40999\n", "x.conf")


# More values each key must refuse when the file is read (the site's mistake must never
# reach a job, where it would read as the user's).
MORE_INVALID = [
    ("network", "node_name", "bad name!", "must be a host name"),
    ("ssh", "include_dir", "/run/td ssh", "without spaces or control characters"),
    ("paths", "state_dir", "/var/lib/td\tx", "without spaces or control characters"),
    ("jobs", "shm_size", "0", "is not a size like 1g"),
    ("jobs", "shm_size", "1.5g", "is not a size like 1g"),
    ("jobs", "sweep_grace", "soon", "seconds between 0 and 3600"),
    ("images", "aliases", "\n    Foam! = lab/x:1", "is not one users can write"),
    ("images", "aliases", "\n    foam = Lab/X", "is not an image reference"),
    ("images", "aliases", "\n    foam = lab/x:1\n    foam = lab/x:2", "is given twice"),
    ("mounts", "default", "/scratch:/data /x/../etc", "contains '..'"),
    ("mounts", "default", "/scratch:data", "is not an absolute path"),
    ("cgroups", "parent", "/torque/../../system.slice", "without '..'"),
    ("log", "destination", "file:/var/log/td log", "without spaces"),
    ("check", "image", "Not An Image", "is not an image name"),
    ("docker", "endpoint", "unix://", "is not a Docker address"),
]


@pytest.mark.parametrize("section,key,value,reason", MORE_INVALID, ids=[f"{c[0]}.{c[1]}={c[2]!r}" for c in MORE_INVALID])
def test_more_invalid_values_are_refused_when_read(section, key, value, reason):
    option = next(o for o in config.OPTIONS if (o.section, o.key) == (section, key))
    with pytest.raises(ConfigError) as info:
        config.parse_text(text_for(option, value), "/etc/td.conf")
    assert str(info.value).startswith(f"/etc/td.conf:3: [{section}] {key} = "), str(info.value)
    assert reason in str(info.value)


def test_an_alias_to_an_image_nobody_may_run_is_the_sites_mistake():
    """Before: loaded fine, and a job asking for the alias was refused as if the user had
    asked for a forbidden image."""
    with pytest.raises(ConfigError) as info:
        config.parse_text("[images]\nallowed = lab/*\naliases =\n    foam = lab/openfoam:11\n"
                          "    evil = docker.io/evil/x:1\n", "/etc/td.conf")
    assert str(info.value).startswith("/etc/td.conf:3: [images] aliases = ")
    assert "evil = docker.io/evil/x:1 is not in [images] allowed" in str(info.value)
    assert "foam = lab/openfoam:11 is" not in str(info.value)              # only the culprit is named


def test_check_file_lists_every_problem_at_once(tmp_path):
    path = tmp_path / "td.conf"
    path.write_text("[jobs]\nshm_size = lots\n[mounts]\ndefault = scratch:/data\n[network]\nport_rnge = 1\n")
    cfg, problems = config.check_file(str(path))
    assert cfg is None
    assert [str(p).split(":")[1] for p in problems] == ["2", "4", "6"]
    assert "shm_size" in str(problems[0]) and "mounts] default" in str(problems[1]) and "port_rnge" in str(problems[2])
    with pytest.raises(ConfigError, match=r"td.conf:2: \[jobs\] shm_size"):     # a hook stops at the first
        config.load(str(path))
    good = tmp_path / "good.conf"
    good.write_text("[jobs]\nshm_size = 2g\n")
    cfg, problems = config.check_file(str(good))
    assert problems == [] and cfg.jobs_shm_size == "2g"


def test_cross_option_rules_are_shared_with_check():
    values = dict(config.defaults().values, images_allowed=("lab/*",), images_aliases={"x": "evil/x:1"})
    assert config_problems(config.Config.from_values(values)) == ["[images] aliases: x = evil/x:1 is not in [images] allowed"]

import re

import pytest

from torque_docker import config
from torque_docker.errors import ConfigError


def test_empty_file_gives_defaults():
    cfg = config.parse_text("")
    assert cfg.network_port_range == (40000, 40999)
    assert cfg.jobs_default_model == "node"
    assert cfg.images_allowed == ("*",)


def test_missing_file_gives_defaults(tmp_path):
    assert config.load(str(tmp_path / "none.conf")).ssh_sshd_path == "/usr/sbin/sshd"


def test_values_parse():
    cfg = config.parse_text("""
[network]
port_range = 50000-50100
listen_address = 10.1.2.3
[images]
allowed = lab/* docker.io/library/debian:*
aliases =
    openfoam = lab/openfoam:11
    py = lab/python:3.12
[log]
verbose = yes
""")
    assert cfg.network_port_range == (50000, 50100)
    assert cfg.listen_address() == "10.1.2.3"
    assert cfg.images_aliases == {"openfoam": "lab/openfoam:11", "py": "lab/python:3.12"}
    assert cfg.image_allowed("lab/x:1") and not cfg.image_allowed("evil/x")
    assert cfg.log_verbose is True


@pytest.mark.parametrize("text,needle", [
    ("[network]\nport_rnge = 1-2\n", "x.conf:2: unknown key 'port_rnge' in [network]"),
    ("[netwrk]\n", "x.conf:1: unknown section [netwrk]"),
    ("port_range = 1\n", "outside any section"),
    ("[network]\nport_range = 80-90\n", "x.conf:2: [network] port_range"),
    ("[network]\nport_range = 40000-40001\n", "at least 16 ports"),
    ("[network]\nlisten_address = nowhere\n", "listen_address"),
    ("[jobs]\ndefault_model = vm\n", "must be one of: node, process"),
    ("[jobs]\ndefault_model = node\ndefault_model = process\n", "set twice (first at x.conf:2)"),
    ("[paths]\nstate_dir = relative\n", "absolute path"),
    ("[log]\ndestination = stdout\n", "syslog, none or file:"),
    ("[images]\naliases =\n    broken\n", "name = registry/image:tag"),
    ("[network]\njust words\n", "expected 'key = value'"),
])
def test_errors_name_file_line_and_fix(text, needle):
    with pytest.raises(ConfigError) as info:
        config.parse_text(text, "x.conf")
    assert needle in str(info.value)


def test_unknown_key_lists_valid_keys_of_its_section():
    with pytest.raises(ConfigError) as info:
        config.parse_text("[ssh]\nsshd = /x\n", "x.conf")
    assert "sshd_path" in str(info.value) and "include_dir" in str(info.value)


def test_rendered_defaults_parse_back_to_defaults():
    text = config.render_defaults()
    uncommented = "\n".join(line[1:] if re.match(r"#\w+ = ", line) else line for line in text.splitlines())
    assert config.parse_text(uncommented).values == config.defaults().values


def test_every_option_is_documented_in_the_default_file():
    text = config.render_defaults()
    for option in config.OPTIONS:
        assert f"#{option.key} = " in text


def test_auto_listen_address_refuses_loopback(monkeypatch):
    monkeypatch.setattr(config.socket, "gethostbyname", lambda name: "127.0.1.1")
    with pytest.raises(ConfigError, match="loopback address"):
        config.parse_text("[network]\nnode_name = n1\n").listen_address()
    monkeypatch.setattr(config.socket, "gethostbyname", lambda name: "10.1.0.7")
    assert config.parse_text("[network]\nnode_name = n1\n").listen_address() == "10.1.0.7"

"""The committed packaging files agree with the code, so they cannot drift apart."""
from __future__ import annotations

import configparser
import re
from pathlib import Path

from torque_docker import __version__, config
from torque_docker import install as install_mod

PACKAGING = Path(__file__).resolve().parents[2] / "packaging"
SPEC = (PACKAGING / "torque-docker.spec").read_text()


def test_committed_default_config_is_render_defaults():
    """Regenerate with: torque-docker config > packaging/torque-docker.conf"""
    assert (PACKAGING / "torque-docker.conf").read_text() == config.render_defaults()


def test_committed_default_config_parses_to_the_defaults():
    assert config.parse_text((PACKAGING / "torque-docker.conf").read_text()).values == config.defaults().values


def test_spec_version_is_the_package_version():
    assert re.search(r"^Version:\s+(\S+)$", SPEC, re.M).group(1) == __version__


def test_spec_installs_every_hook_with_the_mode_pbs_mom_demands():
    loop = re.search(r"^for hook in (.+); do$", SPEC, re.M).group(1).split()
    assert sorted(loop) == sorted(install_mod.HOOKS + (install_mod.STARTER,))
    for hook in install_mod.HOOKS:
        assert f"%attr(0500,root,root) %{{_libexecdir}}/%{{name}}/{hook}\n" in SPEC
    assert f"%attr(0755,root,root) %{{_libexecdir}}/%{{name}}/{install_mod.STARTER}\n" in SPEC


def test_spec_config_is_noreplace_and_mom_priv_is_never_touched():
    assert "%config(noreplace) %attr(0644,root,root) %{_sysconfdir}/%{name}/torque-docker.conf\n" in SPEC
    install = SPEC.split("\n%install\n", 1)[1].split("\n%check\n", 1)[0]
    code = "\n".join(line for line in install.splitlines() if not line.lstrip().startswith("#"))
    assert "%{buildroot}%{_libexecdir}/%{name}" in code and "mom_priv" not in code and "spool" not in code


def test_spec_requires_rhel_packages():
    requires = set(re.findall(r"^Requires:\s+(.+?)\s*$", SPEC, re.M))
    assert {"python3 >= 3.9", "python3-docker", "python3-jinja2", "python3-filelock", "python3-cryptography",
            "openssh-clients"} <= requires


def test_gc_units():
    service = configparser.ConfigParser(strict=False, interpolation=None)
    service.optionxform = str
    service.read_string((PACKAGING / "systemd/torque-docker-gc.service").read_text())
    assert service["Service"]["Type"] == "oneshot"
    assert service["Service"]["ExecStart"] == "/usr/bin/torque-docker gc"
    timer = configparser.ConfigParser(strict=False, interpolation=None)
    timer.optionxform = str
    timer.read_string((PACKAGING / "systemd/torque-docker-gc.timer").read_text())
    assert timer["Timer"]["OnUnitActiveSec"] == "10min"
    assert timer["Install"]["WantedBy"] == "timers.target"


def test_spec_ships_the_submit_filter_pointing_at_the_installed_package():
    from torque_docker import submitadmin
    assert "%attr(0755,root,root) %{_libexecdir}/%{name}/submit-filter\n" in SPEC
    install = SPEC.split("\n%install\n", 1)[1].split("\n%check\n", 1)[0]
    assert "install -p -m 0755 hooks/submit-filter %{buildroot}%{_libexecdir}/%{name}/submit-filter" in install
    # the sed expressions must match the shipped file's lines, or the RPM's filter imports nothing
    shipped = (install_mod.PACKAGE_HOOKS / submitadmin.FILTER_SOURCE).read_text().splitlines()
    assert shipped[0].startswith("#!") and "'1s|^#!.*|#!%{__python3} -IS|'" in install
    pattern = re.search(r"-e 's\|\^(sys\.path\.insert\(0, \.\*# torque-docker: package directory)\$\|", install).group(1)
    assert sum(bool(re.fullmatch(pattern.replace("(", r"\(").replace(")", r"\)"), line)) for line in shipped) == 1

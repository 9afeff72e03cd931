"""``torque-docker --help``: plain text, and every sub-command the parser has is listed with its help."""
from __future__ import annotations

import argparse
import re

import pytest

from torque_docker import admin


def subcommands() -> dict:
    [action] = [a for a in admin.build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return {choice.dest: choice.help for choice in action._choices_actions}


def help_text(capsys, argv) -> str:
    with pytest.raises(SystemExit) as done:
        admin.main(argv)
    assert done.value.code == 0
    return capsys.readouterr().out


def test_help_lists_every_subcommand_with_its_help(capsys):
    text = help_text(capsys, ["--help"])
    commands = subcommands()
    assert {"install", "uninstall", "keygen", "fingerprint", "config", "check", "ps", "gc", "stage",
            "limits"} <= set(commands)
    for name, summary in commands.items():
        assert summary, f"sub-command {name} has no help line"
        first_words = " ".join(summary.split()[:3])
        listed = re.search(rf"^    {re.escape(name)}\s+(.*(?:\n {{10,}}.*)*)", text, re.M)
        assert listed and " ".join(listed.group(1).split()).startswith(first_words), (name, text)


def test_help_is_plain_text_and_names_no_subset_of_the_commands(capsys):
    text = help_text(capsys, ["--help"])
    assert "`" not in text            # no reST markup from a docstring
    assert "admin-guide.md" in text
    # The only list of commands is argparse's own, so none can be left out of it.
    description = text.split("positional arguments:")[0]
    assert not [name for name in subcommands() if re.search(rf"\b{name}\b", description.split("\n\n", 1)[1])]


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_subcommand_has_its_own_help(capsys, name):
    text = help_text(capsys, [name, "--help"])
    assert text.startswith(f"usage: torque-docker {name}")

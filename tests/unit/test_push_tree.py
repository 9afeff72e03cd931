"""The push's tree: the mother superior logs into at most 16 sisters, each writes the job's
files and passes them on (connect.relay_script, run by a real /bin/sh). Here ``ssh`` is a
stand-in that runs the remote command in a private mount namespace where the alias's own
directory is /run/torque-docker, as the container's bind mount would be."""
from __future__ import annotations

import os
import shutil
import stat
from pathlib import Path

import pytest

from torque_docker import connect
from torque_docker.errors import NodeFault

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"),
                                reason="needs root and unshare(1) for a mount namespace per stand-in container")

FAKE_SSH = """#!/bin/sh
# stand-in ssh: ... ALIAS COMMAND, stdin passed on
for last; do command=$last; done
n=$#
alias=$(eval "echo \\${$((n - 1))}")
if grep -qx "$alias" "$FAKE_ROOT/dead"; then exit 255; fi
echo "$alias" >> "$FAKE_ROOT/logins-$PPID-$$"
exec unshare -m sh -c 'mount --bind "$1" /run/torque-docker && exec sh -c "$2"' sh "$FAKE_ROOT/$alias" "$command"
"""


@pytest.fixture
def fake(tmp_path, monkeypatch):
    ssh = tmp_path / "bin" / "ssh"
    ssh.parent.mkdir()
    ssh.write_text(FAKE_SSH)
    ssh.chmod(ssh.stat().st_mode | stat.S_IXUSR)
    (tmp_path / "dead").write_text("")
    monkeypatch.setenv("FAKE_ROOT", str(tmp_path))
    monkeypatch.setenv("PATH", f"{ssh.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(connect, "SSH", str(ssh))
    os.makedirs("/run/torque-docker", exist_ok=True)
    return tmp_path


def sisters(root: Path, count: int):
    aliases = [f"td-1-t-n{n}" for n in range(1, count + 1)]
    for alias in aliases:
        (root / alias / "ssh.d").mkdir(parents=True)
    return aliases


def logins(root: Path):
    return sorted(line for f in root.glob("logins-*") for line in f.read_text().split())


FILES = {"ssh.d/0.conf": "Host a\n    Port 1\n", "ssh_config": "Include x\n\nHost *\n", "hosts": "1.2.3.4 a\n",
         "nodefile": "a\na\n"}


def test_split_tree_gives_every_alias_once_to_at_most_fanout_children():
    aliases = [f"a{n}" for n in range(999)]
    tree = connect.split_tree(aliases, 16)
    assert len(tree) <= 16
    assert sorted([c for c, _ in tree] + [a for _, sub in tree for a in sub]) == sorted(aliases)
    assert connect.split_tree(["x"], 16) == [("x", [])]


def test_every_sister_gets_the_files_through_the_tree(fake):
    aliases = sisters(fake, 40)
    made = connect.push_container_files(fake / "cfg", aliases, FILES, fanout=4)
    assert made == 4                           # the MS's own logins: one per child of the root
    assert logins(fake) == sorted(aliases)     # every sister once, most of them by a relay
    for alias in aliases:
        for name, text in FILES.items():
            assert (fake / alias / name).read_text() == text


def test_a_dead_relay_costs_its_subtree_a_direct_push_and_is_named(fake):
    aliases = sisters(fake, 40)
    (fake / "dead").write_text("td-1-t-n1\ntd-1-t-n13\n")   # a child of the MS, and one deeper
    with pytest.raises(NodeFault) as caught:
        connect.push_container_files(fake / "cfg", aliases, FILES, fanout=4)
    assert "td-1-t-n1:" in caught.value.message and "td-1-t-n13:" in caught.value.message
    for alias in aliases:
        if alias not in ("td-1-t-n1", "td-1-t-n13"):
            assert (fake / alias / "nodefile").read_text() == FILES["nodefile"], alias


def test_a_sister_that_cannot_write_is_named_and_its_share_still_served(fake):
    """Served means said so: a relay whose files cannot be written stops before relaying,
    so its share is pushed to directly; it alone is named."""
    aliases = sisters(fake, 40)
    shutil.rmtree(fake / "td-1-t-n1" / "ssh.d")         # where it keeps the payload
    with pytest.raises(NodeFault) as caught:
        connect.push_container_files(fake / "cfg", aliases, FILES, fanout=4)
    assert "td-1-t-n1:" in caught.value.message and "td-1-t-n2:" not in caught.value.message
    for alias in aliases[1:]:
        assert (fake / alias / "nodefile").read_text() == FILES["nodefile"], alias

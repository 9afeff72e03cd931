"""Text the package writes: sshd/ssh configs, known_hosts, passwd/group, the nodefile.

All functions here are pure (input -> text), so they are tested against expected files.
Templates come from the site's directory first (admins may override any of them), then
from the package; a missing variable is an error, never an empty string.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from . import plan
from .errors import ConfigError

if TYPE_CHECKING:
    import jinja2      # imported where a template is rendered: the epilogues never pay for it

PACKAGE_TEMPLATES = Path(__file__).resolve().parent / "templates"
SHARED_TEMPLATES = Path("/usr/share/torque-docker/templates")

_environments: Dict[str, "jinja2.Environment"] = {}


def environment(site_dir: Optional[str] = None) -> "jinja2.Environment":
    import jinja2
    key = site_dir or ""
    if key not in _environments:
        search = [p for p in (site_dir, str(SHARED_TEMPLATES), str(PACKAGE_TEMPLATES)) if p]
        _environments[key] = jinja2.Environment(
            loader=jinja2.FileSystemLoader(search),
            undefined=jinja2.StrictUndefined,
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
            autoescape=False,
        )
    return _environments[key]


def render(name: str, site_dir: Optional[str] = None, **variables: object) -> str:
    import jinja2
    try:
        text = environment(site_dir).get_template(name).render(**variables)
        return text.rstrip("\n") + "\n"   # exactly one final newline, whatever the template's ending
    except jinja2.UndefinedError as exc:
        raise ConfigError(f"template {name}: {exc.message}",
                          "a site template in the template_dir uses a variable the package does not provide") from None
    except jinja2.TemplateError as exc:
        raise ConfigError(f"template {name}: {exc}", "fix or remove the site's copy of the template") from None


def passwd_text(user: str, uid: int, gid: int, gecos: str, home: str, shell: str) -> str:
    """The container's /etc/passwd: root and the job user only (sshd needs the user to exist)."""
    return (f"root:x:0:0:root:/root:/bin/sh\n"
            f"{user}:x:{uid}:{gid}:{_clean(gecos)}:{home}:{shell}\n")


def group_text(user: str, groups: Sequence[tuple]) -> str:
    """The container's /etc/group: root and the user's groups ``(name, gid)``.

    runc looks every supplementary gid up in this file by NAME first (a group named
    ``5000`` with gid 0 would turn gid 5000 into 0), so a name that is a number, or is
    not a plain name, is written as ``g<gid>``."""
    lines = ["root:x:0:"]
    for name, gid in groups:
        if gid != 0:
            safe = name if name and not name.lstrip("+-").isdigit() and not any(c in name for c in ":,\n\r \t") \
                else f"g{gid}"
            lines.append(f"{safe}:x:{gid}:{user}")
    return "\n".join(lines) + "\n"


def _clean(text: str) -> str:
    return "".join(ch for ch in text if ch not in ":\n\r\0")


def hosts_text(entries: Iterable[Tuple[str, str]], node_hosts: Optional[str] = None) -> str:
    """The containers' /etc/hosts: the node's own ``/etc/hosts`` (every name the node resolves
    from it resolves inside too; localhost when it has none), then ``address alias`` per
    container. A node line that names an alias is left out: an alias resolves only to its
    container, never to something that could look local to MPI."""
    entries = list(entries)
    aliases = {alias for _, alias in entries}
    lines: List[str] = []
    for line in (node_hosts or "").splitlines():
        names = line.split("#", 1)[0].split()[1:]
        if not aliases.intersection(names):
            lines.append(line.rstrip())
    if not any("localhost" in line.split("#", 1)[0].split()[1:] for line in lines):
        lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"] + lines
    if node_hosts is not None:
        lines.append("# torque-docker: the job's containers")
    lines += [f"{address}\t{alias}" for address, alias in entries]
    return "\n".join(lines) + "\n"


def rewrite_nodefile(hosts: Sequence[str], slot_alias: Mapping[int, str]) -> str:
    """Torque's format (one line per slot) with each slot's container alias."""
    return "".join(f"{slot_alias[i]}\n" for i in range(len(hosts)))


# A job with more containers than this gets its aliases in groups, one file per group,
# each included only by ssh when the alias asked for matches the group's pattern: every
# ssh of the job then parses a few hundred lines instead of one block per container
# (docs/design.md, "How it works"; docs/performance.md, "Scale").
GROUP_FROM = 64

_NODE_ALIAS = re.compile(r"^(?P<head>.*-n)(?P<node>[0-9]+)$")
_SLOT_ALIAS = re.compile(r"^(?P<head>.*-n[0-9]+-s)(?P<slot>[0-9]+)$")


@dataclass(frozen=True)
class SshConfig:
    main: str                 # the file ssh is given (-F, Include, /etc/ssh/ssh_config)
    groups: Dict[str, str]    # file name (in group_dir) -> its Host blocks


def ssh_group_pattern(alias: str, count: int) -> str:
    """The ssh Host pattern of the group ``alias`` is in, for a job of ``count`` containers.

    Per-process aliases (``...-n<node>-s<slot>``) are grouped by node (``...-n7-s*``);
    per-node aliases by their node number with its last ``k`` digits as ``?`` (``...-n12?``
    holds n120..n129), ``k`` chosen so that groups hold about sqrt(count). The patterns of
    two groups never match the same alias of the job (``?`` is exactly one character)."""
    slot = _SLOT_ALIAS.match(alias)
    if slot:
        return slot.group("head") + "*"
    node = _NODE_ALIAS.match(alias)
    if not node:
        return alias
    digits = node.group("node")
    k = max(1, int(math.log10(max(count, 1)) / 2))
    k = min(k, len(digits))
    return node.group("head") + digits[:len(digits) - k] + "?" * k


def ssh_config(jobid: str, user: str, containers: Sequence[Mapping[str, Any]], identity_file: str,
               known_hosts: str, group_dir: str, template_dir: Optional[str] = None) -> SshConfig:
    """The job's SSH config: one ``Host alias`` block (HostName, Port) per container, then
    one block for every alias of the job with what they share (user, key, strict host key
    checking against the job's known_hosts under one HostKeyAlias: all containers of a job
    have the same host key). Above GROUP_FROM containers the per-container blocks go into
    group files under ``group_dir``, which the main file includes per group pattern."""
    common = dict(jobid=jobid, user=user, identity_file=identity_file, known_hosts=known_hosts,
                  alias_pattern=plan.alias_pattern(jobid), host_key_alias=plan.alias_for(jobid, 0))
    if len(containers) <= GROUP_FROM:
        return SshConfig(render("ssh_config.j2", template_dir, containers=list(containers), buckets=[], **common), {})
    grouped: Dict[str, List[Mapping[str, Any]]] = {}
    for c in containers:
        grouped.setdefault(ssh_group_pattern(str(c["alias"]), len(containers)), []).append(c)
    groups: Dict[str, str] = {}
    buckets = []
    for n, (pattern, members) in enumerate(grouped.items()):
        name = f"{n}.conf"
        groups[name] = "".join(f"Host {c['alias']}\n    HostName {c['address']}\n    Port {c['port']}\n"
                               for c in members)
        buckets.append({"pattern": pattern, "path": f"{group_dir.rstrip('/')}/{name}"})
    return SshConfig(render("ssh_config.j2", template_dir, containers=[], buckets=buckets, **common), groups)

"""Text the package writes: sshd/ssh configs, known_hosts, passwd/group, the nodefile.

All functions here are pure (input -> text), so they are tested against expected files.
Templates come from the site's directory first (admins may override any of them), then
from the package; a missing variable is an error, never an empty string.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import jinja2

from .errors import ConfigError

PACKAGE_TEMPLATES = Path(__file__).resolve().parent / "templates"
SHARED_TEMPLATES = Path("/usr/share/torque-docker/templates")

_environments: Dict[str, jinja2.Environment] = {}


def environment(site_dir: Optional[str] = None) -> jinja2.Environment:
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

"""Site configuration: defaults first, then /etc/torque-docker/torque-docker.conf, parsed strictly.

A hook that runs thousands of times a day as root must not guess: an unknown key, a bad
value or a duplicate is an error that names the file, the line and the fix (as pyxis
does). Every option has a default, so an empty or missing file is a working config.

The file location can be moved with ``TORQUE_DOCKER_CONF``; pbs_mom gives its scripts
only what ``$PBS_HOME/pbs_environment`` holds, so that is where a site (or the test
simulator, which runs several nodes on one machine) sets it.
"""
from __future__ import annotations

import fnmatch
import ipaddress
import os
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from . import devices, limits
from .errors import ConfigError

DEFAULT_PATH = "/etc/torque-docker/torque-docker.conf"
ENV_VAR = "TORQUE_DOCKER_CONF"


def _text(value: str) -> str:
    return value


def _path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must be an absolute path")
    return os.path.normpath(value)


def _optional_path(value: str) -> str:
    return _path(value) if value else ""


def _int_range(lo: int, hi: int) -> Callable[[str], int]:
    def parse(value: str) -> int:
        number = int(value)
        if not lo <= number <= hi:
            raise ValueError(f"must be between {lo} and {hi}")
        return number
    return parse


def _seconds(value: str) -> float:
    number = float(value)
    if not 0 < number <= 3600:
        raise ValueError("must be a number of seconds between 0 and 3600")
    return number


def _port_range(value: str) -> Tuple[int, int]:
    match = re.fullmatch(r"\s*(\d+)\s*-\s*(\d+)\s*", value)
    if not match:
        raise ValueError("must look like 40000-40999")
    lo, hi = int(match.group(1)), int(match.group(2))
    if not 1024 <= lo <= hi <= 65535:
        raise ValueError("must lie within 1024-65535 with the low end first")
    if hi - lo < 15:
        raise ValueError("must hold at least 16 ports")
    return lo, hi


def _choice(*choices: str) -> Callable[[str], str]:
    def parse(value: str) -> str:
        if value not in choices:
            raise ValueError(f"must be one of: {', '.join(choices)}")
        return value
    return parse


def _address(value: str) -> str:
    if value == "auto":
        return value
    ipaddress.ip_address(value)
    return value


def _bool(value: str) -> bool:
    lowered = value.lower()
    if lowered in ("yes", "true", "on", "1"):
        return True
    if lowered in ("no", "false", "off", "0"):
        return False
    raise ValueError("must be yes or no")


def _words(value: str) -> Tuple[str, ...]:
    return tuple(w for w in re.split(r"[\s,]+", value) if w)


def _paths(value: str) -> Tuple[str, ...]:
    return tuple(_path(w) for w in _words(value))


def _aliases(value: str) -> Dict[str, str]:
    """``name = reference`` pairs, one per (continuation) line."""
    aliases: Dict[str, str] = {}
    for line in value.splitlines():
        line = line.strip()
        if not line:
            continue
        name, sep, ref = (part.strip() for part in line.partition("="))
        if not sep or not name or not ref:
            raise ValueError(f"alias {line!r} must look like 'name = registry/image:tag'")
        aliases[name] = ref
    return aliases


def _size(value: str) -> str:
    """A size as Docker and mount(8) write it (512m, 1g, 65536k, bytes), at least 1 MiB."""
    match = re.fullmatch(r"([0-9]+)([kmgKMG]?)", value)
    if not match:
        raise ValueError("must be a size like 64m or 1g")
    if int(match.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[match.group(2).lower()] < 1 << 20:
        raise ValueError("must be at least 1m")
    return value.lower()


def _ulimits(value: str) -> Tuple[Tuple[str, int, int], ...]:
    """``name=soft[:hard]`` words (Docker's --ulimit form); -1 or unlimited for no limit."""
    return limits.parse(value)


def _devices(value: str) -> Tuple[Tuple[str, str], ...]:
    return devices.parse(value)


def _log(value: str) -> str:
    if value in ("syslog", "none") or value.startswith("file:/"):
        return value
    raise ValueError("must be syslog, none or file:/absolute/path")


@dataclass(frozen=True)
class Option:
    section: str
    key: str
    parse: Callable[[str], Any]
    default: str
    help: str


#: Every option, with its default as it would be written in the file.
OPTIONS: List[Option] = [
    Option("docker", "endpoint", _text, "unix:///var/run/docker.sock", "Docker daemon address"),
    Option("docker", "api_timeout", _seconds, "30", "seconds one Docker API call may take"),
    Option("docker", "seccomp_profile", _optional_path, "", "seccomp profile of job containers, root's file (empty: Docker's default, which stops Open MPI's single-copy path; /etc/torque-docker/seccomp-cma.json: Docker's default plus the two calls it needs)"),
    Option("network", "node_name", _text, "", "this node's name in Torque (default: the host name)"),
    Option("network", "listen_address", _address, "auto", "address sshd listens on in containers (auto: this node's name resolved)"),
    Option("network", "port_range", _port_range, "40000-40999", "ports for sshd in containers"),
    Option("network", "port_candidates", _int_range(1, 64), "16", "candidate ports per container"),
    Option("ssh", "sshd_path", _path, "/usr/sbin/sshd", "sshd inside the image"),
    Option("ssh", "include_dir", _path, "/run/torque-docker/ssh", "where per-job SSH configs for the host's ssh are written"),
    Option("ssh", "dropin", _path, "/etc/ssh/ssh_config.d/90-torque-docker.conf", "ssh_config drop-in that includes them"),
    Option("ssh", "ready_timeout", _seconds, "60", "seconds to wait for every sshd to answer"),
    Option("paths", "state_dir", _path, "/var/lib/torque-docker", "node-local state (ports, jobs); not $PBS_HOME/aux"),
    Option("paths", "secret_file", _path, "/etc/torque-docker/secret", "site secret, identical on every node, root only"),
    Option("paths", "template_dir", _path, "/etc/torque-docker/templates", "site templates that override the shipped ones"),
    Option("jobs", "default_model", _choice("node", "process"), "node", "model when the job names none"),
    Option("jobs", "default_run", _choice("container", "host"), "container", "where the batch script runs when the job says nothing (container needs the job starter)"),
    Option("jobs", "shm_size", _text, "1g", "size of /dev/shm in each container"),
    Option("jobs", "process_ipc", _choice("shared", "private"), "shared", "model=process: containers of a node share one IPC namespace (shared memory between ranks)"),
    Option("jobs", "sweep_grace", _seconds, "600", "the prologue's sweep leaves anything younger alone (seconds)"),
    Option("jobs", "max_attempts", _int_range(1, 100), "3", "node-fault requeues of one job on a node before it is aborted"),
    Option("jobs", "pids_limit", _int_range(0, 4194304), "8192", "most processes and threads in one container (0: no limit; a fork bomb stops here)"),
    Option("jobs", "tmp_size", _size, "1g", "size of the tmpfs at /tmp, and at every VOLUME the image declares, in each container"),
    Option("jobs", "read_only_root", _bool, "no", "the image's file system is read-only in containers (only /tmp, /dev/shm, the job's files and mounts are writable)"),
    Option("jobs", "files_size", _size, "16m", "size of the per-job tmpfs that holds the job's keys and SSH files (/run/torque-docker in containers)"),
    Option("devices", "paths", _devices, "", "device nodes every container gets, HOST[:CONTAINER] (e.g. /dev/infiniband /dev/kfd; a directory: the device nodes below it)"),
    Option("limits", "ulimits", _ulimits, "", "ulimits of every container, NAME=SOFT[:HARD] words, e.g. nofile=65536 core=0 (empty: the Docker daemon's; memlock is unlimited when [devices] passes RDMA devices and this sets none)"),
    Option("limits", "user_max", _ulimits, "", "highest ulimits a job may ask for with ulimit=NAME=SOFT[:HARD] (a name not here: at most the site's own value)"),
    Option("images", "allowed", _words, "*", "image patterns users may ask for (fnmatch on the full reference)"),
    Option("images", "aliases", _aliases, "", "short names for images, one 'name = reference' per line"),
    Option("images", "pull", _choice("missing", "never", "always"), "missing", "when to pull"),
    Option("images", "pull_timeout", _seconds, "120", "seconds a pull may take (keep under $prologalarm)"),
    Option("images", "pin", _choice("off", "submit", "required"), "off", "at qsub (submit filter): rewrite a tag to the digest it names now, so every node and requeue runs that build; submit: unpinned with a warning when it cannot, required: refuse then"),
    Option("images", "tarball_dirs", _paths, "", "directories users may load image tarballs from (image=file:/path)"),
    Option("mounts", "default", _words, "", "bind mounts every container gets (SRC[:DST][:ro])"),
    Option("mounts", "allowed", _paths, "", "directories under which users may ask for mounts"),
    Option("env", "deny", _words, "PATH LD_LIBRARY_PATH LD_PRELOAD MANPATH MODULEPATH LOADEDMODULES _LMFILES_ PYTHONPATH PYTHONHOME BASH_ENV ENV", "job variables not carried into the container (fnmatch patterns)"),
    Option("env", "pass", _words, "*", "job variables carried into the container (fnmatch patterns, after deny)"),
    Option("cgroups", "parent", _text, "", "cgroup parent for containers ('torque' puts them under the job's Torque cgroup)"),
    Option("log", "destination", _log, "syslog", "admin log: syslog, none or file:/path"),
    Option("log", "verbose", _bool, "no", "more detail in the job's .o"),
    Option("check", "image", _text, "", "image 'torque-docker check' starts (as nobody, sshd -t) to prove jobs can run; empty: none"),
]

_BY_NAME = {(o.section, o.key): o for o in OPTIONS}

#: Keys that moved: naming the old one is an error that names the new one.
MOVED = {("jobs", "ulimits"): ("limits", "ulimits")}


@dataclass(frozen=True)
class Config:
    """Parsed configuration; attribute names are ``section_key``."""

    values: Dict[str, Any]
    path: str = ""
    origin: Dict[str, str] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def node_name(self) -> str:
        return self.values["network_node_name"] or socket.gethostname()

    def listen_address(self) -> str:
        """The address this node's containers listen on; ``auto`` resolves the node name."""
        address = self.values["network_listen_address"]
        if address != "auto":
            return address
        resolved = resolve_address(self.node_name())
        if ipaddress.ip_address(resolved).is_loopback:
            # Debian maps the host's own name to 127.0.1.1: other nodes could never reach it.
            raise ConfigError(f"this node's name {self.node_name()} resolves to {resolved}, a loopback address",
                              "set [network] listen_address to the address other nodes reach this one on")
        return resolved

    def image_allowed(self, reference: str) -> bool:
        return any(fnmatch.fnmatchcase(reference, pattern) for pattern in self.images_allowed)


def resolve_address(name: str) -> str:
    """IPv4 address of a node name, refusing loopback-only answers for real nodes is the
    admin's call (the simulator uses 127.0.1.x on purpose)."""
    try:
        return socket.gethostbyname(name)
    except OSError as exc:
        raise ConfigError(f"cannot resolve node name {name!r} ({exc})",
                          "set [network] listen_address in the config or fix name resolution") from None


def defaults() -> Config:
    return Config({f"{o.section}_{o.key}": o.parse(o.default) for o in OPTIONS})


def parse_text(text: str, path: str = "<string>") -> Config:
    """Parse INI text strictly: known sections and keys only, each at most once."""
    values = dict(defaults().values)
    origin: Dict[str, str] = {}
    section: Optional[str] = None
    pending: Optional[Tuple[Option, int, List[str]]] = None

    def finish() -> None:
        if pending is None:
            return
        option, lineno, parts = pending
        raw = "\n".join(parts).strip()
        name = f"{option.section}_{option.key}"
        try:
            values[name] = option.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{path}:{lineno}: [{option.section}] {option.key} = {raw!r}: {exc}",
                              f"fix the value (default: {option.default or 'empty'})") from None
        origin[name] = f"{path}:{lineno}"

    sections = sorted({o.section for o in OPTIONS})
    for lineno, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if line[0] in " \t" and pending is not None:
            pending[2].append(stripped)
            continue
        finish()
        pending = None
        if stripped.startswith("["):
            if not stripped.endswith("]"):
                raise ConfigError(f"{path}:{lineno}: bad section header {stripped!r}", "write it as [name]")
            section = stripped[1:-1].strip()
            if section not in sections:
                raise ConfigError(f"{path}:{lineno}: unknown section [{section}]",
                                  f"valid sections: {', '.join(sections)}")
            continue
        key, sep, value = stripped.partition("=")
        key = key.strip()
        if not sep:
            raise ConfigError(f"{path}:{lineno}: expected 'key = value', got {stripped!r}",
                              "write options as key = value under a [section]")
        if section is None:
            raise ConfigError(f"{path}:{lineno}: {key!r} is outside any section",
                              "put it under its [section]")
        option = _BY_NAME.get((section, key))
        if option is None and (section, key) in MOVED:
            new_section, new_key = MOVED[(section, key)]
            raise ConfigError(f"{path}:{lineno}: [{section}] {key} has moved to [{new_section}] {new_key}",
                              f"write it as '{new_key} = ...' under [{new_section}] (same form)")
        if option is None:
            valid = ", ".join(o.key for o in OPTIONS if o.section == section)
            raise ConfigError(f"{path}:{lineno}: unknown key {key!r} in [{section}]",
                              f"valid keys there: {valid}")
        name = f"{section}_{key}"
        if name in origin:
            raise ConfigError(f"{path}:{lineno}: [{section}] {key} is set twice (first at {origin[name]})",
                              "keep one of them")
        origin[name] = f"{path}:{lineno}"
        pending = (option, lineno, [value.strip()])
    finish()
    return Config(values, path, origin)


def config_path(environ: Optional[Mapping[str, str]] = None) -> str:
    env: Mapping[str, str] = os.environ if environ is None else environ
    return env.get(ENV_VAR) or DEFAULT_PATH


def path_from_pbs_home(pbs_home: str) -> str:
    """The config path for a program pbs_mom starts WITHOUT its pbs_environment (the job
    starter gets the job's environment instead): what that file sets, else the default."""
    if os.environ.get(ENV_VAR):
        return os.environ[ENV_VAR]
    try:
        for line in Path(pbs_home, "pbs_environment").read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep and name.strip() == ENV_VAR and value.strip():
                return value.strip()
    except OSError:
        pass
    return DEFAULT_PATH


def load(path: Optional[str] = None) -> Config:
    """Load the node's config; a missing file means all defaults."""
    path = path or config_path()
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return Config(defaults().values, path)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}", "check the file's permissions") from None
    return parse_text(text, path)


def render_defaults() -> str:
    """The default config file text, every option commented out with its help."""
    out = ["# torque-docker site configuration. Every option is shown with its default.",
           "# Unknown keys are errors. Options are described in docs/admin-guide.md."]
    section = None
    for option in OPTIONS:
        if option.section != section:
            section = option.section
            out += ["", f"[{section}]"]
        out.append(f"# {option.help}")
        out.append(f"#{option.key} = {option.default}")
    return "\n".join(out) + "\n"

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
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar

from . import devices, gpus, limits
from .errors import ConfigError

DEFAULT_PATH = "/etc/torque-docker/torque-docker.conf"
ENV_VAR = "TORQUE_DOCKER_CONF"


ENDPOINT_SCHEMES = ("unix://", "tcp://", "http://", "https://", "ssh://", "npipe://")
_BLANK_OR_CONTROL = re.compile(r"[\x00-\x20\x7f-\x9f]")
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*", re.ASCII)
_PATTERN_CHARS = {
    "image": re.compile(r"[A-Za-z0-9._/:@*?\[\]!-]+"),   # what can occur in an image reference
    "variable": re.compile(r"[A-Za-z0-9_*?\[\]!-]+"),     # ... in an environment variable's name
}


# Validators: one per kind of value, each takes the text as written and returns the typed
# value or raises ValueError saying what is wrong. parse_text() runs them as the file is
# read (a hook never starts with a value it cannot use) and check_file() runs the same
# ones to list every problem at once for `torque-docker check`.
def _text(value: str) -> str:
    return value


def _path(value: str) -> str:
    if not value.startswith("/"):
        raise ValueError("must be an absolute path")
    if _BLANK_OR_CONTROL.search(value):
        raise ValueError("must be an absolute path without spaces or control characters")
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
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
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


def _endpoint(value: str) -> str:
    scheme = next((s for s in ENDPOINT_SCHEMES if value.startswith(s)), "")
    if not scheme or len(value) == len(scheme) or _BLANK_OR_CONTROL.search(value):
        raise ValueError("is not a Docker address (unix:///var/run/docker.sock, tcp://host:2376, ssh://user@host)")
    return value


def _node_name(value: str) -> str:
    if value and (len(value) > 253 or not _HOSTNAME.fullmatch(value)):
        raise ValueError("must be a host name (letters, digits, '-', '.'), as Torque names the node")
    return value


def _docker_size(value: str) -> str:
    """A size Docker takes for --shm-size (``1g``, ``512m``, ``65536``); kept as written."""
    match = re.fullmatch(r"([0-9]+)([bkmg]?)", value.lower())
    if not match or int(match.group(1)) == 0:
        raise ValueError("is not a size like 1g or 512m")
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


def _patterns(kind: str) -> Callable[[str], Tuple[str, ...]]:
    """fnmatch patterns that can match something of ``kind`` (image reference, variable name)."""
    def parse(value: str) -> Tuple[str, ...]:
        words = _words(value)
        for word in words:
            if not _PATTERN_CHARS[kind].fullmatch(word):
                raise ValueError(f"pattern {word!r} can never match {'an image reference' if kind == 'image' else 'a variable name'}")
        return words
    return parse


def _paths(value: str) -> Tuple[str, ...]:
    return tuple(_path(w) for w in _words(value))


def _aliases(value: str) -> Dict[str, str]:
    """``name = reference`` pairs, one per (continuation) line."""
    from .request import ALIAS, is_reference
    aliases: Dict[str, str] = {}
    for line in value.splitlines():
        line = line.strip()
        if not line:
            continue
        name, sep, ref = (part.strip() for part in line.partition("="))
        if not sep or not name or not ref:
            raise ValueError(f"alias {line!r} must look like 'name = registry/image:tag'")
        if not ALIAS.match(name):
            raise ValueError(f"alias name {name!r} is not one users can write (letters, digits, '.', '_', '-')")
        if not is_reference(ref):
            raise ValueError(f"alias {name} = {ref}: {ref!r} is not an image reference (NAME[:TAG][@sha256:DIGEST])")
        if name in aliases:
            raise ValueError(f"alias {name} is given twice")
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


def _mounts(value: str) -> Tuple[str, ...]:
    """Bind mounts as a job would write them (SRC[:DST][:ro])."""
    from .errors import TorqueDockerError
    from .request import parse_mount
    words = _words(value)
    for word in words:
        try:
            parse_mount(word)
        except TorqueDockerError as exc:
            raise ValueError(exc.message if len(words) == 1 else f"{word!r}: {exc.message}") from None
    return words


def _cgroup_parent(value: str) -> str:
    if re.search(r"\s", value):
        raise ValueError("contains white space")
    if _BLANK_OR_CONTROL.search(value) or ".." in value.split("/"):
        raise ValueError("must be 'torque', a cgroup path or a systemd slice, without '..' or control characters")
    return value


def _image_name(value: str) -> str:
    from .request import ALIAS, is_reference
    if value and not (is_reference(value) or ALIAS.match(value)):
        raise ValueError("is not an image name (NAME[:TAG]) or an alias")
    return value


def _log(value: str) -> str:
    if value in ("syslog", "none"):
        return value
    if value.startswith("file:/"):
        _path(value[5:])
        return value
    raise ValueError("must be syslog, none or file:/absolute/path")


@dataclass(frozen=True)
class Option:
    section: str
    key: str
    parse: Callable[[str], Any]
    default: str
    help: str

    @property
    def name(self) -> str:
        """The Config attribute: ``section_key``."""
        return f"{self.section}_{self.key}"


T = TypeVar("T")


def _option(parse: Callable[[str], T], default: str, help: str) -> T:
    """A Config field: its value is ``parse(text)``; the default is written as in the file."""
    meta = {"parse": parse, "default": default, "help": help}
    if isinstance(parse(default), dict):                  # a mutable default: one per Config
        return field(default_factory=lambda: parse(default), metadata=meta)
    return field(default=parse(default), metadata=meta)


_DENY = "PATH LD_LIBRARY_PATH LD_PRELOAD MANPATH MODULEPATH LOADEDMODULES _LMFILES_ PYTHONPATH PYTHONHOME BASH_ENV ENV"


@dataclass(frozen=True)
class Config:
    """The site configuration, one typed attribute per option (``section_key``), each
    parsed and checked by its validator when read (see parse_text). ``OPTIONS`` is made
    from these fields, so the file's keys, the defaults and the help live here only."""

    docker_endpoint: str = _option(_endpoint, "unix:///var/run/docker.sock", "Docker daemon address")
    docker_api_timeout: float = _option(_seconds, "30", "seconds one Docker API call may take")
    docker_seccomp_profile: str = _option(_optional_path, "", "seccomp profile of job containers, root's file (empty: Docker's default, which stops Open MPI's single-copy path; /etc/torque-docker/seccomp-cma.json: Docker's default plus the two calls it needs)")
    network_node_name: str = _option(_node_name, "", "this node's name in Torque (default: the host name)")
    network_listen_address: str = _option(_address, "auto", "address sshd listens on in containers (auto: this node's name resolved)")
    network_port_range: Tuple[int, int] = _option(_port_range, "40000-40999", "ports for sshd in containers")
    network_port_candidates: int = _option(_int_range(1, 64), "16", "candidate ports per container")
    ssh_sshd_path: str = _option(_path, "/usr/sbin/sshd", "sshd inside the image")
    ssh_include_dir: str = _option(_path, "/run/torque-docker/ssh", "where per-job SSH configs for the host's ssh are written")
    ssh_dropin: str = _option(_path, "/etc/ssh/ssh_config.d/90-torque-docker.conf", "ssh_config drop-in that includes them")
    ssh_ready_timeout: float = _option(_seconds, "60", "seconds to wait for every sshd to answer")
    paths_state_dir: str = _option(_path, "/var/lib/torque-docker", "node-local state (ports, jobs); not $PBS_HOME/aux")
    paths_secret_file: str = _option(_path, "/etc/torque-docker/secret", "site secret, identical on every node, root only")
    paths_template_dir: str = _option(_path, "/etc/torque-docker/templates", "site templates that override the shipped ones")
    jobs_default_model: str = _option(_choice("node", "process"), "node", "model when the job names none")
    jobs_default_run: str = _option(_choice("container", "host"), "container", "where the batch script runs when the job says nothing (container needs the job starter)")
    jobs_shm_size: str = _option(_docker_size, "1g", "size of /dev/shm in each container")
    jobs_process_ipc: str = _option(_choice("shared", "private"), "shared", "model=process: containers of a node share one IPC namespace (shared memory between ranks)")
    jobs_sweep_grace: float = _option(_seconds, "600", "the prologue's sweep leaves anything younger alone (seconds)")
    jobs_max_attempts: int = _option(_int_range(1, 100), "3", "node-fault requeues of one job on a node before it is aborted")
    jobs_pids_limit: int = _option(_int_range(0, 4194304), "8192", "most processes and threads in one container (0: no limit; a fork bomb stops here)")
    jobs_tmp_size: str = _option(_size, "1g", "size of the tmpfs at /tmp, and at every VOLUME the image declares, in each container")
    jobs_read_only_root: bool = _option(_bool, "no", "the image's file system is read-only in containers (only /tmp, /dev/shm, the job's files and mounts are writable)")
    jobs_files_size: str = _option(_size, "16m", "size of the per-job tmpfs that holds the job's keys and SSH files (/run/torque-docker in containers)")
    devices_paths: Tuple[Tuple[str, str], ...] = _option(_devices, "", "device nodes every container gets, HOST[:CONTAINER] (e.g. /dev/infiniband /dev/kfd; a directory: the device nodes below it)")
    gpus_method: str = _option(_choice(*gpus.METHODS), "none", "how containers get the GPUs Torque gave the job: devices (device nodes and driver files), nvidia-runtime (Docker's device requests) or none (GPU jobs are refused)")
    gpus_devices: Tuple[Tuple[str, str], ...] = _option(gpus.parse_devices, "/dev/nvidia%d", "each GPU's device node by index, HOST[:CONTAINER]: one pattern with %d, or a list (the i-th is GPU i)")
    gpus_shared_devices: Tuple[Tuple[str, str], ...] = _option(_devices, "/dev/nvidiactl /dev/nvidia-uvm", "method devices: device nodes every container with a GPU also gets (character devices)")
    gpus_driver_files: Tuple[Tuple[str, str], ...] = _option(gpus.parse_files, "", "method devices: the driver's user-space files bound read-only into containers with a GPU, HOST[:CONTAINER] (root's, writable by no one else)")
    gpus_sister: str = _option(_choice(*gpus.SISTER_CHOICES), "refuse", "how a node other than the job's first learns its GPUs: refuse (GPU jobs there are refused), whole-node (only a job that asks for all of the node's), cgroup (Torque's devices cgroup)")
    limits_ulimits: Tuple[Tuple[str, int, int], ...] = _option(_ulimits, "", "ulimits of every container, NAME=SOFT[:HARD] words, e.g. nofile=65536 core=0 (empty: the Docker daemon's; memlock is unlimited when [devices] passes RDMA devices and this sets none)")
    limits_user_max: Tuple[Tuple[str, int, int], ...] = _option(_ulimits, "", "highest ulimits a job may ask for with ulimit=NAME=SOFT[:HARD] (a name not here: at most the site's own value)")
    images_allowed: Tuple[str, ...] = _option(_patterns("image"), "*", "image patterns users may ask for (fnmatch on the full reference)")
    images_aliases: Dict[str, str] = _option(_aliases, "", "short names for images, one 'name = reference' per line")
    images_pull: str = _option(_choice("missing", "never", "always"), "missing", "when to pull")
    images_pull_timeout: float = _option(_seconds, "120", "seconds a pull may take (keep under $prologalarm)")
    images_pin: str = _option(_choice("off", "submit", "required"), "off", "at qsub (submit filter): rewrite a tag to the digest it names now, so every node and requeue runs that build; submit: unpinned with a warning when it cannot, required: refuse then")
    images_tarball_dirs: Tuple[str, ...] = _option(_paths, "", "directories users may load image tarballs from (image=file:/path)")
    mounts_default: Tuple[str, ...] = _option(_mounts, "", "bind mounts every container gets (SRC[:DST][:ro])")
    mounts_allowed: Tuple[str, ...] = _option(_paths, "", "directories under which users may ask for mounts")
    env_deny: Tuple[str, ...] = _option(_patterns("variable"), _DENY, "job variables not carried into the container (fnmatch patterns)")
    env_pass: Tuple[str, ...] = _option(_patterns("variable"), "*", "job variables carried into the container (fnmatch patterns, after deny)")
    cgroups_parent: str = _option(_cgroup_parent, "", "cgroup parent for containers ('torque' puts them under the job's Torque cgroup)")
    log_destination: str = _option(_log, "syslog", "admin log: syslog, none or file:/path")
    log_verbose: bool = _option(_bool, "no", "more detail in the job's .o")
    check_image: str = _option(_image_name, "", "image 'torque-docker check' starts (as nobody, sshd -t) to prove jobs can run; empty: none")
    # Where it was read: the file, and per option its line (for messages that name them).
    path: str = field(default="", compare=False)
    origin: Dict[str, str] = field(default_factory=dict, compare=False)

    @classmethod
    def from_values(cls, values: Mapping[str, Any], path: str = "", origin: Optional[Dict[str, str]] = None) -> "Config":
        """A Config from parsed values by attribute name (``section_key``); the rest default."""
        return cls(**values, path=path, origin=dict(origin or {}))

    @property
    def values(self) -> Dict[str, Any]:
        """Every option's value by attribute name (``section_key``)."""
        return {o.name: getattr(self, o.name) for o in OPTIONS}

    def node_name(self) -> str:
        return self.network_node_name or socket.gethostname()

    def listen_address(self) -> str:
        """The address this node's containers listen on; ``auto`` resolves the node name."""
        address = self.network_listen_address
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


#: Every option, in the file's order, with its default as it would be written in the file.
OPTIONS: List[Option] = [
    Option(f.name.partition("_")[0], f.name.partition("_")[2], f.metadata["parse"], f.metadata["default"],
           f.metadata["help"])
    for f in fields(Config) if "parse" in f.metadata]

_BY_NAME = {(o.section, o.key): o for o in OPTIONS}

#: Keys that moved: naming the old one is an error that names the new one.
MOVED = {("jobs", "ulimits"): ("limits", "ulimits")}


def resolve_address(name: str) -> str:
    """IPv4 address of a node name, refusing loopback-only answers for real nodes is the
    admin's call (the simulator uses 127.0.1.x on purpose)."""
    try:
        return socket.gethostbyname(name)
    except OSError as exc:
        raise ConfigError(f"cannot resolve node name {name!r} ({exc})",
                          "set [network] listen_address in the config or fix name resolution") from None


def defaults() -> Config:
    return Config()


@dataclass(frozen=True)
class Rule:
    """A check that needs several options: ``problem(values)`` says what is wrong with the
    first of ``names`` given the others ('' when nothing is)."""

    names: Tuple[str, ...]
    problem: Callable[[Dict[str, Any]], str]
    fix: str


def _aliases_allowed(values: Dict[str, Any]) -> str:
    bad = [f"{name} = {ref}" for name, ref in values["images_aliases"].items()
           if not _allowed(ref, values["images_allowed"])]
    return f"{', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not in [images] allowed" if bad else ""


def _check_image_allowed(values: Dict[str, Any]) -> str:
    image = values["check_image"]
    reference = values["images_aliases"].get(image, image)
    if image and not _allowed(reference, values["images_allowed"]):
        return f"{reference} is not in [images] allowed"
    if image and reference == image and not is_image_reference(image):
        return f"{image} is neither an image reference nor an alias of [images] aliases"
    return ""


def _allowed(reference: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(reference, pattern) for pattern in patterns)


def is_image_reference(text: str) -> bool:
    from .request import is_reference
    return is_reference(text)


#: Checks across options, run after every option parsed (an alias no user may run would
#: refuse jobs at run time as if the user had asked for a forbidden image).
RULES: List[Rule] = [
    Rule(("images_aliases", "images_allowed"), _aliases_allowed,
         "add the image to [images] allowed or remove the alias"),
    Rule(("check_image", "images_aliases", "images_allowed"), _check_image_allowed,
         "name an allowed image or alias"),
    Rule(("gpus_devices", "gpus_method"), gpus.config_problem, "list the GPUs' device nodes or choose another method"),
]


def parse_text(text: str, path: str = "<string>", problems: Optional[List[ConfigError]] = None) -> Config:
    """Parse INI text strictly: known sections and keys only, each at most once, every
    value valid on its own and with the others (``RULES``).

    Raises the first problem as a ConfigError naming the file, line, key and fix; with a
    ``problems`` list, appends every problem there instead and goes on (a bad value keeps
    its default), which is what ``torque-docker check`` shows.
    """
    values = defaults().values
    origin: Dict[str, str] = {}
    raw_values: Dict[str, str] = {}
    section: Optional[str] = None
    pending: Optional[Tuple[Option, int, List[str]]] = None

    def fail(error: ConfigError) -> None:
        if problems is None:
            raise error
        problems.append(error)

    def finish() -> None:
        if pending is None:
            return
        option, lineno, parts = pending
        raw = "\n".join(parts).strip()
        name = f"{option.section}_{option.key}"
        origin[name] = f"{path}:{lineno}"
        raw_values[name] = raw
        try:
            values[name] = option.parse(raw)
        except ValueError as exc:
            fail(ConfigError(f"{path}:{lineno}: [{option.section}] {option.key} = {raw!r}: {exc}",
                             f"fix the value (default: {option.default or 'empty'})"))

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
                fail(ConfigError(f"{path}:{lineno}: bad section header {stripped!r}", "write it as [name]"))
                section = None
                continue
            section = stripped[1:-1].strip()
            if section not in sections:
                fail(ConfigError(f"{path}:{lineno}: unknown section [{section}]",
                                 f"valid sections: {', '.join(sections)}"))
            continue
        key, sep, value = stripped.partition("=")
        key = key.strip()
        if not sep:
            fail(ConfigError(f"{path}:{lineno}: expected 'key = value', got {stripped!r}",
                             "write options as key = value under a [section]"))
            continue
        if section is None:
            fail(ConfigError(f"{path}:{lineno}: {key!r} is outside any section", "put it under its [section]"))
            continue
        option = _BY_NAME.get((section, key))
        if option is None and (section, key) in MOVED:
            new_section, new_key = MOVED[(section, key)]
            raise ConfigError(f"{path}:{lineno}: [{section}] {key} has moved to [{new_section}] {new_key}",
                              f"write it as '{new_key} = ...' under [{new_section}] (same form)")
        if option is None:
            if section in sections:
                valid = ", ".join(o.key for o in OPTIONS if o.section == section)
                fail(ConfigError(f"{path}:{lineno}: unknown key {key!r} in [{section}]",
                                 f"valid keys there: {valid}"))
            continue
        name = f"{section}_{key}"
        if name in origin:
            fail(ConfigError(f"{path}:{lineno}: [{section}] {key} is set twice (first at {origin[name]})",
                             "keep one of them"))
            continue
        origin[name] = f"{path}:{lineno}"
        pending = (option, lineno, [value.strip()])
    finish()
    for rule in RULES:
        problem = rule.problem(values)
        if problem:
            name = rule.names[0]
            option = next(o for o in OPTIONS if o.name == name)
            where = origin.get(name, path)
            shown = f" = {raw_values[name]!r}" if name in raw_values else ""
            fail(ConfigError(f"{where}: [{option.section}] {option.key}{shown}: {problem}",
                             f"{rule.fix} (default: {option.default or 'empty'})"))
    return Config.from_values(values, path, origin)


def rule_problems(values: Dict[str, Any]) -> List[str]:
    """The cross-option rules on values already parsed (a Config built in code, not read)."""
    out = []
    for rule in RULES:
        problem = rule.problem(values)
        if problem:
            section, _, key = rule.names[0].partition("_")
            out.append(f"[{section}] {key}: {problem}")
    return out


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
    """Load the node's config; a missing file means all defaults. Every value is checked
    here, so a site's mistake stops a hook as a ConfigError (a node fault, never blamed on
    the job's user) before any job-time code can misread it."""
    path = path or config_path()
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return Config(path=path)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc}", "check the file's permissions") from None
    return parse_text(text, path)


def lenient(path: Optional[str] = None) -> Config:
    """What can be read of a config that does not load: every valid value, defaults for
    the rest. Only for reporting a ConfigError (the admin log, the attempts count), never
    to run a job with."""
    path = path or config_path()
    try:
        return parse_text(Path(path).read_text(), path, [])
    except OSError:
        return Config(path=path)


def check_file(path: Optional[str] = None) -> Tuple[Optional[Config], List[ConfigError]]:
    """Every problem of the config file at once (for ``torque-docker check``), and the
    Config when there are none."""
    path = path or config_path()
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return Config(path=path), []
    except OSError as exc:
        return None, [ConfigError(f"cannot read {path}: {exc}", "check the file's permissions")]
    problems: List[ConfigError] = []
    cfg = parse_text(text, path, problems)
    return (None if problems else cfg), problems


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

"""The records a job leaves on a node, each with exactly one way to and from JSON.

- ``JobRecord`` (``<state_dir>/jobs/<jobid>/job.json``, root's, 0600): what a prologue
  made, so that a teardown, an epilogue or the sweep can undo it later, maybe from another
  version of the package.
- ``StartedContainer``: one container of the job on this node, inside the JobRecord.
- ``StarterInfo`` (``starter.json`` beside it, root's, readable by the job's group): what
  the job starter, running as the user, needs to run the script and the TM tasks, or the
  reason the job was refused.

Standard library only: the job starter imports this in front of every job and TM task.
Reading is forgiving by design: a key that is missing or of the wrong type takes its
default (a record an older version wrote, or a torn one, must still be undone or refused,
never crash the teardown); writing always writes every key.
"""
from __future__ import annotations

import json
from dataclasses import MISSING, dataclass, fields
from typing import Any, Dict, Mapping, Tuple, Type, TypeVar

R = TypeVar("R")


def _coerce(value: Any, default: Any) -> Any:
    """``value`` if it has the type of ``default`` (tuples of str from a JSON list), else ``default``."""
    if isinstance(default, bool):
        return value if isinstance(value, bool) else default
    if isinstance(default, float):
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default
    if isinstance(default, int):
        return value if isinstance(value, int) and not isinstance(value, bool) else default
    if isinstance(default, str):
        return value if isinstance(value, str) else default
    if isinstance(default, tuple):
        return tuple(v for v in value if isinstance(v, str)) if isinstance(value, list) else default
    return default


def _from_mapping(cls: Type[R], data: Any, **special: Any) -> R:
    """An instance of the dataclass ``cls`` from a JSON object, each field coerced to its
    default's type; ``special`` gives the fields the caller has already converted."""
    source: Mapping[str, Any] = data if isinstance(data, dict) else {}
    values: Dict[str, Any] = {}
    for f in fields(cls):
        if f.name in special:
            values[f.name] = special[f.name]
        elif f.name in source:
            values[f.name] = _coerce(source[f.name], "" if f.default is MISSING else f.default)
    return cls(**values)


def _to_mapping(record: Any) -> Dict[str, Any]:
    """Every field, tuples as JSON lists."""
    return {f.name: list(v) if isinstance(v := getattr(record, f.name), tuple) else v for f in fields(record)}


@dataclass(frozen=True)
class StartedContainer:
    """One of the job's containers on this node, as started and proven (its sshd answered)."""

    id: str = ""
    name: str = ""
    alias: str = ""
    port: int = 0
    slot: int = 0
    address: str = ""

    def to_dict(self) -> Dict[str, Any]:
        return _to_mapping(self)

    @classmethod
    def from_dict(cls, data: Any) -> "StartedContainer":
        return _from_mapping(cls, data)


@dataclass(frozen=True)
class JobRecord:
    """What a prologue made on this node (job.json); enough to undo it."""

    jobid: str
    user: str = ""
    host: str = ""
    node_index: int = 0
    ms: bool = False
    image: str = ""
    containers: Tuple[StartedContainer, ...] = ()
    started: float = 0.0
    refused: bool = False
    refusal_file: str = ""
    ssh_config: str = ""
    nodefile: str = ""
    aliases: Tuple[str, ...] = ()

    def to_json(self) -> str:
        data = _to_mapping(self)
        data["containers"] = [c.to_dict() for c in self.containers]
        return json.dumps(data, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: "str | bytes", jobid: str = "") -> "JobRecord":
        """The record in ``text``; ``jobid`` when the text names none. ValueError when it is not JSON."""
        data = json.loads(text)
        data = data if isinstance(data, dict) else {}
        listed = data.get("containers")
        containers = tuple(StartedContainer.from_dict(c) for c in listed if isinstance(c, dict)) \
            if isinstance(listed, list) else ()
        name = data.get("jobid")
        return _from_mapping(cls, data, jobid=name if isinstance(name, str) and name else jobid,
                             containers=containers)


@dataclass(frozen=True)
class StarterInfo:
    """What the job starter needs on this node (starter.json): where and how to run the
    script and the TM tasks, or why the job was refused (``refusal``)."""

    jobid: str = ""
    run: str = ""                    # container | host | sister | refused
    alias: str = ""                  # the node's first container
    ctr_dir: str = ""                # the job's files on the host (seen inside at /run/torque-docker)
    shell: str = ""
    ssh_config: str = ""
    env_deny: Tuple[str, ...] = ()
    env_pass: Tuple[str, ...] = ("*",)
    path: str = ""                   # the image's PATH
    refusal: str = ""
    usage_table: bool = False
    image: str = ""
    model: str = "node"
    local_aliases: Tuple[str, ...] = ()
    node_aliases: Tuple[str, ...] = ()
    cma: bool = False                # Open MPI may use its single-copy path (the containers' seccomp allows it)
    gpu_env: Tuple[str, ...] = ()    # "ALIAS NAME=VALUE": each container's GPU variables (gpus.py)

    def gpu_vars(self, alias: str) -> Dict[str, str]:
        """The GPU variables of the container ``alias`` (none when it has no entry)."""
        out: Dict[str, str] = {}
        for entry in self.gpu_env:
            who, _, assignment = entry.partition(" ")
            name, sep, value = assignment.partition("=")
            if who == alias and sep and name:
                out[name] = value
        return out

    def to_json(self) -> str:
        return json.dumps(_to_mapping(self), indent=1)

    @classmethod
    def from_json(cls, text: "str | bytes") -> "StarterInfo":
        """The record in ``text``. ValueError when it is not JSON."""
        return _from_mapping(cls, json.loads(text))

    @classmethod
    def refused(cls, text: str) -> "StarterInfo":
        return cls(run="refused", refusal=text)

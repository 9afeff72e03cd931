"""What a prologue knows about its job on this node once the request is checked and the
image is there: one frozen object the set-up steps take instead of long parameter lists.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, List, Tuple

from .config import Config
from .identity import UserInfo
from .keys import JobSecrets
from .log import Log
from .state import NodeState
from .torque import HookContext

if TYPE_CHECKING:
    from .runtime import Runtime


class Timer:
    """Per-step wall times, reported in one line so slow steps and nodes stand out."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.last = self.start
        self.steps: List[Tuple[str, float]] = []

    def step(self, name: str) -> None:
        now = time.monotonic()
        self.steps.append((name, now - self.last))
        self.last = now

    @property
    def total(self) -> float:
        return time.monotonic() - self.start

    def line(self) -> str:
        return " ".join(f"{name}={seconds:.2f}s" for name, seconds in self.steps)


@dataclass(frozen=True)
class JobContext:
    """One job's set-up on one node: who, where, with what keys and which image."""

    hook: HookContext           # what pbs_mom handed the hook
    cfg: Config
    log: Log
    state: NodeState
    runtime: "Runtime"
    user: UserInfo
    secrets: JobSecrets         # derived from the site secret and the job's identity
    address: str                # where this node's containers listen
    image: str                  # the reference (or id) Docker runs
    image_id: str
    timer: Timer = field(default_factory=Timer)

    @property
    def jobid(self) -> str:
        return self.hook.jobid

    @property
    def node_index(self) -> int:
        return self.hook.node_index

    @property
    def is_ms(self) -> bool:
        return self.hook.is_ms

    @property
    def host(self) -> str:
        """This node's name in Torque (and in the containers' labels)."""
        return self.cfg.node_name()

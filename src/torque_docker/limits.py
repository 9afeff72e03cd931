"""Ulimits of containers: the site's (``[limits] ulimits``) and what a job may ask for.

Docker gives a container its daemon's ulimits (memlock 64 KiB on Debian's dockerd), and
RDMA verbs pin memory: with a small memlock, MPI over InfiniBand fails in a container while
it works on the host. So the site sets the containers' ulimits in one place, a job may ask
for its own with ``-l other=...;ulimit=NAME=SOFT[:HARD]``, and the site bounds each such
request by ``[limits] user_max`` (a name not listed there may not be raised by a job above
the site's own value). The same functions run in the prologue and in the submit filter, so
a refusal reaches the user at qsub where the submit host has the site's config.
"""
from __future__ import annotations

import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .errors import PolicyError, RequestError

NAMES = ("core", "cpu", "data", "fsize", "locks", "memlock", "msgqueue", "nice", "nofile", "nproc",
         "rss", "rtprio", "rttime", "sigpending", "stack")
UNLIMITED = -1

Ulimit = Tuple[str, int, int]     # (name, soft, hard); -1 is unlimited


def _number(word: str, part: str) -> int:
    if part in ("unlimited", "-1"):
        return UNLIMITED
    if part.isdigit() and len(part) <= 19:
        return int(part)
    raise ValueError(f"{word!r}: {part!r} is not a number or 'unlimited'")


def _above(a: int, b: int) -> bool:
    """Is limit ``a`` larger than limit ``b`` (unlimited is the largest)?"""
    if a == UNLIMITED:
        return b != UNLIMITED
    return b != UNLIMITED and a > b


def parse_one(word: str) -> Ulimit:
    """``NAME=SOFT[:HARD]`` (Docker's --ulimit form); one number sets both."""
    name, sep, rest = word.partition("=")
    if not sep or name not in NAMES:
        raise ValueError(f"{word!r} must be NAME=SOFT[:HARD] with NAME one of {', '.join(NAMES)}")
    parts = rest.split(":")
    if len(parts) not in (1, 2):
        raise ValueError(f"{word!r} must be NAME=SOFT[:HARD]")
    numbers = [_number(word, p) for p in parts]
    soft, hard = numbers[0], numbers[-1]
    if _above(soft, hard):
        raise ValueError(f"{word!r}: the soft limit is above the hard one")
    return name, soft, hard


def parse(value: str) -> Tuple[Ulimit, ...]:
    """White space or comma separated ``NAME=SOFT[:HARD]`` words, each name once."""
    out: List[Ulimit] = []
    for word in (w for w in re.split(r"[\s,]+", value) if w):
        limit = parse_one(word)
        if any(n == limit[0] for n, _, _ in out):
            raise ValueError(f"{limit[0]} is given twice")
        out.append(limit)
    return tuple(out)


def parse_request(words: Sequence[str]) -> Tuple[Ulimit, ...]:
    """The job's ``ulimit=`` values (syntax only): the user's error when malformed."""
    out: List[Ulimit] = []
    for word in words:
        try:
            limit = parse_one(word)
        except ValueError as exc:
            raise RequestError(f"ulimit={word}: {exc}", "write ulimit=NAME=SOFT[:HARD], e.g. ulimit=nofile=65536 "
                                                        "or ulimit=stack=unlimited") from None
        if any(n == limit[0] for n, _, _ in out):
            raise RequestError(f"ulimit {limit[0]} is given twice", "give each ulimit once, as ulimit=NAME=SOFT[:HARD]")
        out.append(limit)
    return tuple(out)


def site_ulimits(site: Iterable[Ulimit], rdma: bool) -> Tuple[Ulimit, ...]:
    """The site's ulimits, plus memlock unlimited when RDMA devices are passed and the site
    set no memlock of its own (verbs pin the memory they register)."""
    out = list(site)
    if rdma and not any(n == "memlock" for n, _, _ in out):
        out.append(("memlock", UNLIMITED, UNLIMITED))
    return tuple(out)


def bounded(asked: Sequence[Ulimit], site: Sequence[Ulimit], user_max: Sequence[Ulimit]) -> Tuple[Ulimit, ...]:
    """The job's ulimits checked against the site: each hard limit at most ``user_max``'s
    hard limit for that name, or else the site's own (so a job may always lower a limit).
    Raises PolicyError (the user's error) above the bound."""
    maxima: Dict[str, int] = {n: hard for n, _, hard in site}
    maxima.update({n: hard for n, _, hard in user_max})
    for name, _, hard in asked:
        bound: Optional[int] = maxima.get(name)
        if bound is None:
            raise PolicyError(f"ulimit={name}=... is not something this site lets a job set",
                              "drop it, or ask the admin to add it to [limits] user_max")
        if _above(hard, bound):
            shown = "unlimited" if bound == UNLIMITED else str(bound)
            raise PolicyError(f"ulimit {name} {'unlimited' if hard == UNLIMITED else hard} is above this site's "
                              f"bound of {shown}", f"ask for at most {name}={shown}")
    return tuple(asked)


def merged(site: Sequence[Ulimit], asked: Sequence[Ulimit]) -> Tuple[Ulimit, ...]:
    """The container's ulimits: the job's own (already bounded) replace the site's by name."""
    names = {n for n, _, _ in asked}
    return tuple(u for u in site if u[0] not in names) + tuple(asked)


def show(ulimits: Sequence[Ulimit]) -> str:
    def one(n: int) -> str:
        return "unlimited" if n == UNLIMITED else str(n)
    return " ".join(f"{n}={one(s)}:{one(h)}" for n, s, h in ulimits) or "the Docker daemon's"

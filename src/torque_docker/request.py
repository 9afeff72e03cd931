"""What the job asked for: the ``other=`` entry of Torque's resource list.

``-l other=STRING`` is the only free-form resource that reaches the hooks
(docs/torque-facts.md); commas split the resource list, so our pairs are separated by ``;``:
``other=image=lab/openfoam:11;model=process;mount=/scratch:/data:ro``.
A job whose ``other`` holds no ``image=`` is not ours and must be left untouched.
"""
from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from . import limits
from .errors import NotOurs, RequestError

VALID_KEYS = ("image", "model", "run", "mount", "ulimit")
FORM = "-l other=image=NAME[:TAG][;model=node|process][;run=container|host][;mount=SRC[:DST][:ro]][;ulimit=NAME=SOFT[:HARD]]"

# Docker's reference grammar, simplified: [registry[:port]/]path[:tag][@algo:hex].
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
# Docker takes the first part for a registry only when it has a dot or a port, or is
# localhost; otherwise it is a (lower case) path component.
_HOSTPART = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
_DOMAIN = (rf"(?:(?:{_HOSTPART}(?:\.{_HOSTPART})+(?::[0-9]+)?|{_HOSTPART}:[0-9]+|localhost)/)")
_REFERENCE = re.compile(
    rf"^(?:{_DOMAIN})?{_COMPONENT}(?:/{_COMPONENT})*(?::[\w][\w.-]{{0,127}})?(?:@sha256:[0-9a-f]{{64}})?$",
    re.ASCII,
)
MAX_REFERENCE = 255     # Docker's limit on a repository name
ALIAS = _ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$", re.ASCII)   # a site alias users may write


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    read_only: bool

    def __str__(self) -> str:
        return f"{self.source}:{self.target}{':ro' if self.read_only else ''}"


@dataclass(frozen=True)
class JobRequest:
    image: str
    model: Optional[str] = None   # None: the site default
    run: Optional[str] = None     # None: the site default
    mounts: Tuple[Mount, ...] = field(default_factory=tuple)
    ulimits: Tuple[Tuple[str, int, int], ...] = field(default_factory=tuple)   # bounded by policy, not here


def is_reference(text: str) -> bool:
    """A name Docker accepts as an image reference."""
    return len(text) <= MAX_REFERENCE and bool(_REFERENCE.match(text))


def parse_resource_list(text: str) -> Dict[str, str]:
    """``name=value,name=value`` into a dict; the value keeps any further ``=``."""
    resources: Dict[str, str] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if sep and name:
            resources[name.strip()] = value
    return resources


def is_container_job(resource_list: str) -> bool:
    """Cheap test the hooks make before importing anything heavy."""
    other = parse_resource_list(resource_list).get("other", "")
    return any(p.partition("=")[0].strip() == "image" for p in other.split(";"))


def parse_other(other: str) -> JobRequest:
    """Parse the ``other=`` value. Raises NotOurs when no image is asked for."""
    pairs: List[Tuple[str, Optional[str]]] = []     # value None: a key without '='
    for part in other.split(";"):
        part = part.strip()
        if not part:
            continue
        key, sep, rest = part.partition("=")
        pairs.append((key.strip(), rest.strip() if sep else None))
    if not any(key == "image" for key, _ in pairs):
        raise NotOurs()

    seen: Dict[str, str] = {}
    mounts: List[Mount] = []
    ulimit_words: List[str] = []
    for key, value in pairs:
        if key not in VALID_KEYS:
            raise RequestError(f"unknown key {key!r} in -l other={other}",
                               f"valid keys are {', '.join(VALID_KEYS)}; the form is {FORM}")
        if value is None or value == "":
            raise RequestError(f"{key!r} has no value in -l other={other}", f"write {key}=VALUE; the form is {FORM}")
        if key == "mount":
            mounts.append(parse_mount(value))
            continue
        if key == "ulimit":
            ulimit_words.append(value)
            continue
        if key in seen:
            raise RequestError(f"{key!r} is given twice in -l other={other}", "give it once")
        seen[key] = value

    image = seen["image"]
    if len(image) > MAX_REFERENCE or not (image.startswith("file:") or _REFERENCE.match(image) or _ALIAS.match(image)):
        raise RequestError(f"{image!r} is not a valid image name",
                           "use NAME[:TAG][@sha256:DIGEST] in lower case (e.g. image=debian:12), "
                           "a site alias, or file:/path/image.tar")
    if image.startswith("file:") and not image[5:].startswith("/"):
        raise RequestError(f"{image!r} needs an absolute path", "write image=file:/path/to/image.tar")
    model = seen.get("model")
    if model not in (None, "node", "process"):
        raise RequestError(f"model={model} is not known", "use model=node (one container per node) or model=process (one per slot)")
    run = seen.get("run")
    if run not in (None, "container", "host"):
        raise RequestError(f"run={run} is not known", "use run=container (script in the container) or run=host")
    return JobRequest(image=image, model=model, run=run, mounts=tuple(mounts),
                      ulimits=limits.parse_request(ulimit_words))


def parse_mount(text: str) -> Mount:
    parts = text.split(":")
    read_only = False
    if len(parts) > 1 and parts[-1] in ("ro", "rw"):
        read_only = parts.pop() == "ro"
    if len(parts) > 2 or not parts[0]:
        raise RequestError(f"mount={text} is not SRC[:DST][:ro]", "e.g. mount=/scratch/me:/data:ro")
    source = parts[0]
    target = parts[1] if len(parts) == 2 else source
    for what, path in (("source", source), ("target", target)):
        if not path.startswith("/"):
            raise RequestError(f"mount {what} {path!r} is not an absolute path", "write mount=/abs/src[:/abs/dst][:ro]")
        if ".." in path.split("/") or any(unicodedata.category(ch) in ("Cc", "Cs", "Zl", "Zp") for ch in path):
            raise RequestError(f"mount {what} {path!r} contains '..' or control characters", "give a plain absolute path")
    return Mount(_normal(source), _normal(target), read_only)


def _normal(path: str) -> str:
    """normpath keeps a leading '//' (POSIX allows it a meaning); to Docker it is '/'."""
    return "/" + os.path.normpath(path).lstrip("/")


def request_from_resource_list(resource_list: str) -> JobRequest:
    return parse_other(parse_resource_list(resource_list).get("other", ""))

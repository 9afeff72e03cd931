"""Site policy applied to a request: which images, which mounts.

Decisions are pure given the config and the filesystem, and each refusal names the
policy setting, so users know what to ask their admin for.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from .config import Config
from .errors import PolicyError
from .request import Mount, parse_mount

FORBIDDEN_SOURCES = ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd", "/var/lib/docker",
                     "/etc/torque-docker", "/proc", "/sys", "/dev")


@dataclass(frozen=True)
class ImageChoice:
    reference: str          # what Docker is asked for
    tarball: Optional[str]  # set for image=file:/path
    asked: str              # what the user wrote


def resolve_image(asked: str, cfg: Config) -> ImageChoice:
    if asked.startswith("file:"):
        path = os.path.normpath(asked[5:])
        real = os.path.realpath(path)
        dirs = [os.path.realpath(d) for d in cfg.images_tarball_dirs]
        if not any(real == d or real.startswith(d.rstrip("/") + "/") for d in dirs):
            where = ", ".join(cfg.images_tarball_dirs) or "none are allowed on this cluster"
            raise PolicyError(f"image tarball {path} is outside the directories the site allows ({where})",
                              "put the tarball in an allowed directory, or use a registry image")
        return ImageChoice(reference="", tarball=real, asked=asked)
    reference = cfg.images_aliases.get(asked, asked)
    if not cfg.image_allowed(reference):
        raise PolicyError(f"image {reference} is not allowed on this cluster "
                          f"(allowed: {' '.join(cfg.images_allowed)})",
                          "use an allowed image or ask the admin to add it to [images] allowed")
    return ImageChoice(reference=reference, tarball=None, asked=asked)


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


def check_mounts(requested: Sequence[Mount], cfg: Config) -> List[Mount]:
    """Requested mounts, sources resolved through symlinks and checked against [mounts] allowed."""
    allowed = [os.path.realpath(a) for a in cfg.mounts_allowed]
    out: List[Mount] = []
    for mount in requested:
        real = os.path.realpath(mount.source)
        if _under(real, FORBIDDEN_SOURCES) or real == "/":
            raise PolicyError(f"mount={mount} reaches {real}, which is never mounted into containers",
                              "mount a data directory instead")
        if not _under(real, allowed):
            where = ", ".join(cfg.mounts_allowed) or "none on this cluster"
            raise PolicyError(f"mount={mount} is outside the paths the site allows ({where})",
                              "ask for a path under an allowed directory")
        if mount.target in ("/", "/etc", "/run/torque-docker", "/etc/passwd", "/etc/group", "/proc", "/sys", "/dev") \
                or _under(mount.target, ("/run/torque-docker", "/proc", "/sys", "/dev")):
            raise PolicyError(f"mount={mount} would hide {mount.target} in the container", "choose another target")
        out.append(Mount(real, mount.target, mount.read_only))
    return out


def default_mounts(cfg: Config) -> List[Mount]:
    return [parse_mount(text) for text in cfg.mounts_default]

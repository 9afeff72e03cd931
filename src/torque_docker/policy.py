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
from .request import Mount, is_reference, parse_mount

FORBIDDEN_SOURCES = ("/var/run/docker.sock", "/run/docker.sock", "/run/containerd", "/var/lib/docker",
                     "/etc/torque-docker", "/proc", "/sys", "/dev")


def forbidden_sources(cfg: Config) -> Tuple[str, ...]:
    """What is never mounted on this node: the fixed set, plus the Docker endpoint this node
    is configured with (a socket elsewhere than /run/docker.sock is just as much root), the
    site secret and the state directory (it holds other jobs' staging mounts and keys);
    each as written and resolved through symlinks."""
    paths = list(FORBIDDEN_SOURCES)
    endpoint = cfg.docker_endpoint
    if endpoint.startswith("unix://"):
        paths.append(endpoint[len("unix://"):])
    paths += [cfg.paths_secret_file, cfg.paths_state_dir]
    out: List[str] = []
    for path in paths:
        if path.startswith("/"):
            for form in (os.path.normpath(path), os.path.realpath(path)):
                if form not in out:
                    out.append(form)
    return tuple(out)


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
        # The allowed list applies to tarballs too, as file:PATH (the default '*' allows all):
        # what a tarball says it is (its tags) is the user's to write, so it proves nothing.
        if not cfg.image_allowed(f"file:{real}"):
            raise PolicyError(f"image file:{real} is not allowed on this cluster "
                              f"(allowed: {' '.join(cfg.images_allowed)})",
                              "use an allowed image or ask the admin to add file:DIR/* to [images] allowed")
        return ImageChoice(reference="", tarball=real, asked=asked)
    reference = cfg.images_aliases.get(asked, asked)
    if not is_reference(reference):
        raise PolicyError(f"image {asked} is neither a valid image name nor an alias of this site"
                          + (f" (aliases: {' '.join(sorted(cfg.images_aliases))})" if cfg.images_aliases else ""),
                          "use NAME[:TAG][@sha256:DIGEST] in lower case (e.g. image=debian:12), or a site alias")
    if not cfg.image_allowed(reference):
        raise PolicyError(f"image {reference} is not allowed on this cluster "
                          f"(allowed: {' '.join(cfg.images_allowed)})",
                          "use an allowed image or ask the admin to add it to [images] allowed")
    return ImageChoice(reference=reference, tarball=None, asked=asked)


def _under(path: str, roots: Sequence[str]) -> bool:
    return any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)


HIDDEN_TARGETS = ("/", "/etc", "/etc/passwd", "/etc/group", "/etc/hosts", "/etc/ssh", "/etc/ssh/ssh_config")
PROTECTED_TARGET_TREES = ("/run/torque-docker", "/proc", "/sys", "/dev")


def host_path_problem(real: str, target: str, forbidden: Sequence[str] = FORBIDDEN_SOURCES) -> Optional[str]:
    """Why a resolved host path may not be bind-mounted at target ('' reads as allowed).

    A source is refused when it is, or lies under, or CONTAINS something never to be
    mounted (mounting /run brings Docker's socket along)."""
    if real == "/" or _under(real, forbidden) or any(_under(f, [real]) for f in forbidden):
        return (f"reaches {real}, which is never mounted into containers "
                f"(it is or holds Docker's socket, /proc, /sys, /dev, the site's secret or torque-docker's state)")
    if target in HIDDEN_TARGETS or _under(target, PROTECTED_TARGET_TREES):
        return f"would hide {target} in the container"
    return None


def check_mounts(requested: Sequence[Mount], cfg: Config) -> List[Mount]:
    """Requested mounts, sources resolved through symlinks and checked against [mounts] allowed."""
    allowed = [os.path.realpath(a) for a in cfg.mounts_allowed]
    forbidden = forbidden_sources(cfg)
    out: List[Mount] = []
    targets = set()
    for mount in requested:
        if mount.target in targets:
            raise PolicyError(f"two mounts share the target {mount.target}", "give each mount its own target")
        targets.add(mount.target)
        real = os.path.realpath(mount.source)
        if _under(real, forbidden):           # the socket itself: say so, not just "outside"
            raise PolicyError(f"mount={mount} {host_path_problem(real, mount.target, forbidden)}",
                              "mount a data directory instead")
        if not _under(real, allowed):
            where = ", ".join(cfg.mounts_allowed) or "none on this cluster"
            raise PolicyError(f"mount={mount} is outside the paths the site allows ({where})",
                              "ask for a path under an allowed directory")
        problem = host_path_problem(real, mount.target, forbidden)
        if problem:   # even where the admin allowed a parent (e.g. /run)
            raise PolicyError(f"mount={mount} {problem}", "mount a data directory at another target instead")
        out.append(Mount(real, mount.target, mount.read_only))
    return out


def check_workdir(workdir: str, forbidden: Sequence[str] = FORBIDDEN_SOURCES) -> str:
    """The job's working directory (qsub -d, user-chosen) resolved, if it may be mounted."""
    real = os.path.realpath(workdir)
    problem = host_path_problem(real, real, forbidden)
    if problem:
        raise PolicyError(f"the job's working directory {workdir} {problem}",
                          "submit from (or qsub -d) a directory of your own, e.g. under your home or scratch")
    return real


def default_mounts(cfg: Config) -> List[Mount]:
    """The site's mounts; the config reader refused bad ones already, and should one get
    here anyway it is the site's mistake, never the job's (a ConfigError, not a RequestError)."""
    from .errors import ConfigError, RequestError
    out = []
    for text in cfg.mounts_default:
        try:
            out.append(parse_mount(text))
        except RequestError as exc:
            raise ConfigError(f"[mounts] default {text!r}: {exc.message}", "the admin must fix the config") from None
    return out


def container_ulimits(requested: Sequence[Tuple[str, int, int]], cfg: Config,
                      rdma: bool) -> Tuple[Tuple[str, int, int], ...]:
    """The containers' ulimits: the site's ([limits] ulimits, memlock unlimited with RDMA
    devices), with the job's ``ulimit=`` requests bounded by [limits] user_max."""
    from . import limits
    site = limits.site_ulimits(cfg.limits_ulimits, rdma)
    return limits.merged(site, limits.bounded(requested, site, cfg.limits_user_max))

"""Everything that talks to Docker, and the only module that imports ``docker``.

Errors from the SDK are turned into the package's own here, with the fix in the message,
so the rest of the code never sees a docker exception.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

import docker
from docker.errors import APIError, DockerException, ImageNotFound, NotFound
from docker.types import Mount as DockerMount

from .errors import ImageError, NodeFault, no_sshd

LABEL = "torque-docker"          # every container we make carries LABEL.job etc.
L_JOB, L_HOST, L_NODE, L_SLOT = f"{LABEL}.job", f"{LABEL}.host", f"{LABEL}.node-index", f"{LABEL}.slot"
L_ALIAS, L_USER, L_PORT = f"{LABEL}.alias", f"{LABEL}.user", f"{LABEL}.port"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"   # Docker's own default


@dataclass(frozen=True)
class ContainerSpec:
    image: str
    name: str
    hostname: str
    command: Tuple[str, ...]
    user: str                               # "uid:gid"
    group_add: Tuple[str, ...]
    labels: Dict[str, str]
    binds: Tuple[Tuple[str, str, bool], ...]  # (host path, container path, read only)
    shm_size: str = "64m"
    cpuset_cpus: Optional[str] = None
    mem_limit: Optional[str] = None
    ipc_mode: Optional[str] = None
    cgroup_parent: Optional[str] = None
    seccomp: str = ""                       # a profile's text (Docker takes the text, not a path); "": Docker's default


@dataclass(frozen=True)
class ContainerInfo:
    id: str
    name: str
    status: str
    labels: Dict[str, str]
    created: str = ""


class Runtime:
    def __init__(self, endpoint: str, timeout: float) -> None:
        try:
            self.client = docker.DockerClient(base_url=endpoint, version="auto", timeout=int(max(timeout, 1)))
        except DockerException as exc:
            raise NodeFault(f"the Docker daemon at {endpoint} does not answer ({_short(exc)})",
                            "start dockerd on this node (systemctl start docker)") from None

    # ---- images -----------------------------------------------------------
    def image_id(self, reference: str) -> Optional[str]:
        try:
            return self.client.images.get(reference).id
        except ImageNotFound:
            return None
        except APIError as exc:
            if exc.status_code == 400:      # "invalid reference format": the user's name, not the node
                raise ImageError(f"Docker does not accept the image name {reference} ({_short(exc)})",
                                 "use NAME[:TAG] in lower case, e.g. image=debian:12") from None
            raise NodeFault(f"Docker failed to look up image {reference}: {_short(exc)}") from None
        except DockerException as exc:
            raise NodeFault(f"Docker failed to look up image {reference}: {_short(exc)}") from None

    def image_digest(self, reference: str) -> Tuple[str, str]:
        """(image id, repo digest or '') of a local image."""
        image = self.client.images.get(reference)
        digests = image.attrs.get("RepoDigests") or []
        return image.id, (digests[0] if digests else "")

    def image_path(self, reference: str) -> str:
        """The PATH the image declares (Docker's default when it declares none)."""
        try:
            env = self.client.images.get(reference).attrs.get("Config", {}).get("Env") or []
        except (APIError, DockerException):
            env = []
        for item in env:
            if item.startswith("PATH="):
                return item[5:]
        return DEFAULT_PATH

    def pull(self, reference: str, timeout: float) -> str:
        """Pull with a bound: a pull that cannot finish before prologalarm must fail clearly."""
        result: Dict[str, Any] = {}

        def work() -> None:
            try:
                result["image"] = self.client.images.pull(reference)
            except Exception as exc:  # reported below
                result["error"] = exc

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        thread.join(timeout)
        if thread.is_alive():
            raise ImageError(f"pulling {reference} took longer than {timeout:.0f} s",
                             "ask the admin to stage it ('torque-docker stage IMAGE') or try again later",
                             user_error=False)
        if "error" in result:
            exc = result["error"]
            user = isinstance(exc, (ImageNotFound, NotFound)) or "not found" in str(exc).lower() \
                or "denied" in str(exc).lower()
            raise ImageError(f"image {reference} is not on this node and cannot be pulled ({_short(exc)})",
                             "check the name and tag, or ask the admin to stage it", user_error=user) from None
        return self.image_id(reference) or ""

    def load(self, path: str) -> List[str]:
        try:
            with open(path, "rb") as handle:
                images = self.client.images.load(handle)
        except OSError as exc:
            raise ImageError(f"cannot read the image tarball {path}: {exc.strerror}",
                             "give a readable file made by 'docker save'") from None
        except (APIError, DockerException) as exc:
            raise ImageError(f"Docker cannot load {path}: {_short(exc)}", "give a file made by 'docker save'") from None
        return [tag for image in images for tag in (image.tags or [image.id])]

    # ---- containers ---------------------------------------------------------
    def start(self, spec: ContainerSpec) -> str:
        kwargs = dict(
            image=spec.image, command=list(spec.command), name=spec.name, hostname=spec.hostname,
            detach=True, network_mode="host", user=spec.user, group_add=list(spec.group_add),
            labels=spec.labels, security_opt=["no-new-privileges"] + ([f"seccomp={spec.seccomp}"] if spec.seccomp else []),
            cap_drop=["ALL"], init=True,
            mounts=[DockerMount(target=dst, source=src, type="bind", read_only=ro) for src, dst, ro in spec.binds],
            shm_size=spec.shm_size, stdin_open=False, tty=False,
        )
        if spec.cpuset_cpus:
            kwargs["cpuset_cpus"] = spec.cpuset_cpus
        if spec.mem_limit:
            kwargs["mem_limit"] = spec.mem_limit
        if spec.ipc_mode:
            kwargs["ipc_mode"] = spec.ipc_mode
        if spec.cgroup_parent:
            kwargs["cgroup_parent"] = spec.cgroup_parent
        try:
            return self.client.containers.run(**kwargs).id
        except ImageNotFound:
            raise ImageError(f"image {spec.image} is not on this node", "check the image name") from None
        except APIError as exc:
            text = _short(exc)
            self.remove(spec.name)
            if "executable file not found" in text or "no such file or directory" in text:
                raise no_sshd(spec.image, spec.command[0]) from None
            raise NodeFault(f"Docker could not start container {spec.name}: {text}") from None
        except DockerException as exc:
            raise NodeFault(f"Docker could not start container {spec.name}: {_short(exc)}") from None

    def has_file(self, ident: str, path: str) -> bool:
        """Is ``path`` in the container's file system? Docker's archive endpoint answers a HEAD
        with the file's stat (resolved inside the container), without copying anything."""
        api = self.client.api
        try:
            response = api.head(api._url("/containers/{0}/archive", ident), params={"path": path},
                                timeout=api.timeout)
        except DockerException as exc:
            raise NodeFault(f"Docker failed to look into container {ident[:12]}: {_short(exc)}") from None
        except OSError as exc:
            raise NodeFault(f"Docker failed to look into container {ident[:12]}: {exc}") from None
        if response.status_code == 404:
            return False
        if response.status_code >= 400:
            raise NodeFault(f"Docker failed to look into container {ident[:12]}: HTTP {response.status_code}")
        return True

    def state(self, ident: str) -> Tuple[str, Optional[int]]:
        """(status, exit code) of a container; ('gone', None) when it no longer exists."""
        try:
            attrs = self.client.api.inspect_container(ident)
        except NotFound:
            return "gone", None
        except (APIError, DockerException) as exc:
            raise NodeFault(f"Docker failed to inspect {ident}: {_short(exc)}") from None
        state = attrs.get("State", {})
        return state.get("Status", "unknown"), state.get("ExitCode")

    def logs(self, ident: str, tail: int = 5) -> str:
        try:
            return self.client.api.logs(ident, tail=tail).decode("utf-8", "replace").strip()
        except (APIError, DockerException):
            return ""

    def remove(self, ident: str) -> bool:
        """Force-remove; True when it existed. Never raises for 'already gone'."""
        try:
            self.client.api.remove_container(ident, force=True)
            return True
        except NotFound:
            return False
        except APIError as exc:
            if exc.status_code == 409 and "already in progress" in str(exc):
                return True
            raise NodeFault(f"Docker could not remove {ident}: {_short(exc)}") from None
        except DockerException as exc:
            raise NodeFault(f"Docker could not remove {ident}: {_short(exc)}") from None

    def containers(self, jobid: Optional[str] = None, host: Optional[str] = None) -> List[ContainerInfo]:
        labels = [L_JOB if jobid is None else f"{L_JOB}={jobid}"]
        if host is not None:
            labels.append(f"{L_HOST}={host}")
        try:
            found = self.client.api.containers(all=True, filters={"label": labels})
        except (APIError, DockerException) as exc:
            raise NodeFault(f"Docker failed to list containers: {_short(exc)}") from None
        return [ContainerInfo(c["Id"], (c.get("Names") or ["/?"])[0].lstrip("/"), c.get("State", ""),
                              c.get("Labels") or {}, str(c.get("Created", "")))
                for c in found]

    def update(self, ident: str, **limits: object) -> None:
        try:
            self.client.api.update_container(ident, **limits)
        except (APIError, DockerException) as exc:
            raise NodeFault(f"Docker could not update {ident}: {_short(exc)}") from None

    def limits(self, ident: str) -> Dict[str, object]:
        """What Docker enforces now: read back after a live change."""
        host = self.client.api.inspect_container(ident).get("HostConfig", {})
        quota, period = host.get("CpuQuota") or 0, host.get("CpuPeriod") or 0
        return {"cpus": round(quota / period, 3) if quota > 0 and period else None,
                "memory": host.get("Memory") or None, "cpuset": host.get("CpusetCpus") or None}

    def usage(self, ident: str):
        """Usage so far of a running container (None when it is not running)."""
        from .usage import host_usage
        try:
            attrs = self.client.api.inspect_container(ident)
        except (APIError, DockerException):
            return None
        state = attrs.get("State", {})
        if not state.get("Pid"):
            return None
        from datetime import datetime, timezone
        try:
            started = datetime.fromisoformat(state.get("StartedAt", "")[:26].rstrip("Z")).replace(
                tzinfo=timezone.utc).timestamp()
        except ValueError:
            started = 0.0
        return host_usage(state["Pid"], attrs.get("Name", "").lstrip("/"), started)


def _short(exc: BaseException) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return " ".join(str(text).split())[:300]
